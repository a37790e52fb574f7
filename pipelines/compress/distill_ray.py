"""Distillation on Ray Train (`distill` with `ray_train: true`): the same student and loss as
`pipelines.compress.distill`, trained data-parallel by `num_workers` Ray Train workers, each holding the
teacher beside its student replica (torch DDP averages the student's gradients).

The workers start the way every raylm training loop does (`pipelines.train.loop.start_worker`: DeepSpeed's
accelerator and its gloo/NCCL process group over Ray Train's) and the trainer is raylm's
(`pipelines.train.stage.make_trainer`: scaling, checkpoint storage, restarts). Rank 0 returns the trained
student as the run's checkpoint, which the driver reads back (on a multi-node cluster the teacher folder
must be on storage every node reads, as for the finetune stage's base model).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


def distill_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function: build the student from the teacher, train it on this worker's
    share of the windows, rank 0 reports it as a checkpoint."""
    from pipelines.train.loop import start_worker

    worker = start_worker(config, config["cpus_per_worker"])
    import ray.train
    from transformers import AutoModelForCausalLM

    from pipelines.compress.distill import distill, student_plan
    from pipelines.compress.prune_structured import pruned_model

    torch.manual_seed(config["seed"])
    teacher = AutoModelForCausalLM.from_pretrained(config["teacher"], dtype=torch.float32).eval()
    student = pruned_model(teacher, student_plan(teacher.config, config["keep"])).train()
    windows = torch.tensor(config["windows"], dtype=torch.long)[worker.rank :: worker.world]
    trained = student
    if worker.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(student)
    info = distill(
        teacher,
        trained,
        windows,
        config["steps"],
        config["lr"],
        config["temperature"],
        config["alpha"],
        config["batch_size"],
    )
    metrics = {**info, "world": worker.world}
    if worker.rank == 0:
        with tempfile.TemporaryDirectory() as d:
            student.save_pretrained(d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


def distill_on_ray(teacher_dir: str, keep: list[int], windows: torch.Tensor, cfg, seed: int = 0):
    """Train the student on Ray Train; returns (student model, info). Starts a local Ray when none is
    connected (as `TorchTrainer.fit` does)."""
    from transformers import AutoModelForCausalLM

    from pipelines.assets import asset_paths
    from pipelines.train.stage import make_trainer

    section = SimpleNamespace(
        num_workers=cfg.num_workers, cpus_per_worker=cfg.cpus_per_worker, keep_checkpoints=1, max_failures=0
    )
    config = {
        "teacher": str(Path(teacher_dir).resolve()),
        "keep": keep,
        "windows": windows.tolist(),
        "steps": cfg.steps,
        "lr": cfg.lr,
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        # each worker takes every world-th window: the global batch stays batch_size per worker
        "batch_size": cfg.batch_size,
        "seed": seed,
        "on_gpu": False,
        "cpus_per_worker": cfg.cpus_per_worker,
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR", str(asset_paths().torch_extensions)),
    }
    root = tempfile.mkdtemp(prefix="raylm-distill-")
    trainer = make_trainer(distill_loop_per_worker, config, section, False, "distill", root)
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        student = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    info = {
        k: v
        for k, v in (result.metrics or {}).items()
        if k in ("first_loss", "last_loss", "train_s", "steps")
    }
    info["ray_train_workers"] = result.metrics.get("world", cfg.num_workers)
    return student, info
