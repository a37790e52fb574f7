"""Knowledge distillation into a shallower student (Hinton et al., 2015).

The student is the teacher with fewer decoder layers (initialised from the teacher's layers: those with
the highest block influence are kept, as in `prune_structured`), so it is a standard Llama config that
vLLM loads. It trains on calibration text against the teacher's soft targets:

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, next token)

By default this runs in-process (plain PyTorch, AdamW): a few dozen steps of a 135M model fit in minutes
on a CPU. `ray_train: true` runs the same loop on Ray Train workers, data-parallel, the teacher in every
worker (`pipelines.compress.distill_ray`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipelines.compress.prune_structured import block_influence, pruned_model
from pipelines.compress.recovery import train_on_windows


def distill_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    """Soft-target KL (scaled by T^2, so its gradients keep their size as T changes) mixed with the
    hard next-token cross-entropy."""
    t = temperature
    s = student_logits[:, :-1].float()
    te = teacher_logits[:, :-1].float()
    kl = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(te / t, -1), log_target=True, reduction="batchmean")
    kl = kl / s.shape[1]  # batchmean over [batch, seq, vocab] divides by batch only: make it per token
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels[:, 1:].reshape(-1))
    return alpha * t * t * kl + (1 - alpha) * ce


def student_layers(teacher, layers: int, windows: torch.Tensor) -> list[int]:
    """The teacher's `layers` most influential decoder layers (block influence), in order."""
    bi = block_influence(teacher, windows)
    return sorted(torch.argsort(bi, descending=True)[:layers].tolist())


def student_plan(c, keep: list[int]) -> dict:
    """The pruning plan of a student that keeps whole layers (every head and MLP channel)."""
    return {
        "layers": keep,
        "heads": {i: list(range(c.num_attention_heads)) for i in keep},
        "channels": {i: list(range(c.intermediate_size)) for i in keep},
    }


def make_student(teacher, layers: int, windows: torch.Tensor) -> torch.nn.Module:
    """A copy of the teacher keeping its `layers` most influential decoder layers (in order)."""
    return pruned_model(teacher, student_plan(teacher.config, student_layers(teacher, layers, windows)))


def distill(
    teacher,
    student,
    windows: torch.Tensor,
    steps: int,
    lr: float,
    temperature: float,
    alpha: float,
    batch_size: int,
) -> dict:
    teacher.eval()

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(input_ids=x).logits
        return distill_loss(student(input_ids=x).logits, t_logits, x, temperature, alpha)

    return train_on_windows(student, windows, steps, lr, batch_size, loss_fn)


def apply(ctx, cfg, out_dir: str) -> dict:
    teacher = ctx.load_model()
    keep = student_layers(teacher, cfg.student_layers, ctx.calib(8))
    windows = ctx.train_windows(cfg.train_samples)
    info = {
        "student_layers": cfg.student_layers,
        "kept_teacher_layers": keep,
        "teacher_layers": teacher.config.num_hidden_layers,
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        "distinct_windows": len(windows),
    }
    if cfg.ray_train:
        from pipelines.compress.distill_ray import distill_on_ray

        del teacher  # the workers load their own
        student, trained = distill_on_ray(ctx.base, keep, windows, cfg)
    else:
        student = pruned_model(teacher, student_plan(teacher.config, keep))
        trained = distill(
            teacher, student, windows, cfg.steps, cfg.lr, cfg.temperature, cfg.alpha, cfg.batch_size
        )
    info.update(trained)
    ctx.save(student, out_dir)
    return info
