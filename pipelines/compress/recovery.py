"""A short recovery fine-tune after a structural change: next-token loss with AdamW on calibration
windows, in this process. A few dozen steps on a small model take a minute on a CPU; a longer recovery
is continued pretraining on Ray Train + DeepSpeed (`pretrain.init_from: <the compressed folder>`;
pipelines/recipes/recover-pruned.yaml), which scales to GPUs and checkpoints."""

from __future__ import annotations

import math
import time

import torch
from transformers import get_constant_schedule, get_cosine_schedule_with_warmup

WARMUP_CAP = 0.1
"""A cosine recovery warms up for at most this fraction of its steps (so a short one still decays)."""


def warmup_steps(steps: int, wanted: int) -> int:
    """The warm-up a cosine recovery of `steps` steps uses: `wanted`, capped at WARMUP_CAP of the steps."""
    return min(wanted, math.floor(steps * WARMUP_CAP))


def train_on_windows(
    model,
    windows: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    loss_fn,
    schedule: str = "constant",
    warmup: int = 0,
) -> dict:
    """Train `model`'s trainable parameters in place for `steps` AdamW steps (gradients clipped at 1),
    cycling over `windows`; `loss_fn(x)` gives the loss of one batch of windows. The learning rate is
    `lr` throughout (schedule "constant") or rises linearly over `warmup` steps and then decays to 0 by
    a cosine over the rest ("cosine", transformers' schedule). Returns first/last loss."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"recovery schedule must be constant or cosine, not {schedule!r}")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    if schedule == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    else:
        sched = get_constant_schedule(opt)
    losses = []
    t0 = time.perf_counter()
    n = len(windows)
    for step in range(steps):
        x = windows[torch.arange(step * batch_size, (step + 1) * batch_size) % n]
        loss = loss_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return {
        "steps": steps,
        "schedule": schedule if schedule == "constant" else f"cosine, warm-up {warmup}",
        "distinct_windows": n,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "train_s": round(time.perf_counter() - t0, 1),
    }


MAX_RECOVERY_WINDOWS = 4096
"""At most this many distinct training windows (1M tokens at 256 a window); a longer recovery cycles."""


def recovery_windows(ctx, steps: int, batch_size: int = 4) -> torch.Tensor:
    """The windows a recovery of `steps` steps reads: a new window for every sample (up to
    MAX_RECOVERY_WINDOWS, and up to what `train_text` holds: fortunes.jsonl gives about 2,700 windows of
    256 tokens), so a longer recovery sees more text instead of repeating the same windows; past that it
    cycles. (Until Dec 6 it cycled over at most 64.)"""
    return ctx.train_windows(min(MAX_RECOVERY_WINDOWS, steps * batch_size))


def recovery_finetune(
    model,
    windows: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 4,
    schedule: str = "constant",
    warmup: int = 0,
) -> dict:
    """Next-token fine-tuning of `model` in place (see `train_on_windows`)."""
    return train_on_windows(
        model, windows, steps, lr, batch_size, lambda x: model(input_ids=x, labels=x).loss, schedule, warmup
    )


def recover(ctx, model, cfg) -> dict:
    """The recovery a method's `recovery_*` keys ask for (steps, lr, schedule, warm-up), on fresh
    windows of `compress.train_text`; returns what `train_on_windows` reports."""
    steps = cfg.recovery_steps
    return recovery_finetune(
        model,
        recovery_windows(ctx, steps),
        steps,
        cfg.recovery_lr,
        schedule=cfg.recovery_schedule,
        warmup=warmup_steps(steps, cfg.recovery_warmup_steps),
    )
