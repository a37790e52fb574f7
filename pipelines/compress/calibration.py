"""Collecting what calibration-based methods need from a forward pass over calibration text: per-Linear
input statistics, gathered with forward hooks on a plain transformers model."""

from __future__ import annotations

from collections.abc import Callable

import torch


def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    """The Linear layers inside the decoder blocks (embedding and output head excluded)."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in f".{n}"
    }


@torch.no_grad()
def collect_inputs(
    model,
    windows: torch.Tensor,
    layers: dict[str, torch.nn.Linear],
    reduce: Callable[[str, torch.Tensor], None],
    batch_size: int = 4,
) -> None:
    """Run the windows through the model, calling `reduce(name, x)` with each listed layer's input
    [tokens, in_features] (float32)."""
    hooks = []
    for name, module in layers.items():

        def hook(_m, args, _name=name):
            x = args[0]
            reduce(_name, x.reshape(-1, x.shape[-1]).float())

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        for i in range(0, len(windows), batch_size):
            model(input_ids=windows[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()


def input_sq_norms(
    model, windows: torch.Tensor, layers: dict[str, torch.nn.Linear]
) -> dict[str, torch.Tensor]:
    """sum over tokens of x_j^2 per input feature j, per layer (Wanda's ||X_j||^2)."""
    acc: dict[str, torch.Tensor] = {}

    def reduce(name, x):
        s = (x * x).sum(0)
        acc[name] = acc[name] + s if name in acc else s

    collect_inputs(model, windows, layers, reduce)
    return acc


def input_hessians(
    model, windows: torch.Tensor, layers: dict[str, torch.nn.Linear]
) -> dict[str, torch.Tensor]:
    """2/n * X^T X per layer (GPTQ's Hessian of the layer's squared output error)."""
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def reduce(name, x):
        h = x.T @ x
        acc[name] = acc[name] + h if name in acc else h
        count[name] = count.get(name, 0) + x.shape[0]

    collect_inputs(model, windows, layers, reduce)
    return {k: 2.0 * v / count[k] for k, v in acc.items()}
