"""The DeepSpeed config, optimizer and LR schedule a `PretrainConfig` asks for.

The optimizer is created here rather than in the DeepSpeed config: DeepSpeed's own Adam variants are
JIT-compiled C++/CUDA ops (30+ s the first time on a CPU), while `torch.optim.AdamW` needs nothing and
works with every ZeRO stage (`zero_allow_untested_optimizer`). Only optimizer offload uses DeepSpeed's
CPU Adam, which is what makes offloading fast.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.train.config import PretrainConfig


def deepspeed_config(cfg: PretrainConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The `config` for `deepspeed.initialize`."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=on_gpu,
            reduce_scatter=True,
            reduce_bucket_size=50_000_000,
            allgather_bucket_size=50_000_000,
        )
    if cfg.zero_stage == 3:
        # the export gathers the full 16-bit weights on rank 0 (save_16bit_model)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if cfg.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # raylm logs itself
        "wall_clock_breakdown": False,
    }
    if cfg.grad_clip > 0:
        config["gradient_clipping"] = cfg.grad_clip
    return config


def lr_multiplier(step: int, cfg: PretrainConfig) -> float:
    """LR / peak LR after `step` optimizer steps: linear warm-up, then cosine/linear decay to min_lr_ratio
    at max_steps (constant afterwards)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases, norms and (1-D) scales. A parameter
    partitioned at construction (ZeRO-3) is judged by its full shape (`ds_shape`)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        ndim = len(p.ds_shape) if hasattr(p, "ds_shape") else p.ndim
        (decay if ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model, cfg: PretrainConfig, on_gpu: bool):
    """AdamW over `model`: DeepSpeed's CPU Adam with optimizer offload, else torch's (fused on GPUs)."""
    import torch

    groups = param_groups(model, cfg.weight_decay)
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=cfg.betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=on_gpu or None)


def make_scheduler(optimizer, cfg: PretrainConfig):
    """LambdaLR over `optimizer`'s groups. Handed to `deepspeed.initialize` as a callable, so that it is
    built over the optimizer DeepSpeed wraps (ZeRO's own param groups)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
