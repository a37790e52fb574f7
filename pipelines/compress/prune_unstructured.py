"""Unstructured pruning: zero individual weights of the decoder's Linear layers to an exact sparsity.

magnitude: within each layer, the weights of smallest |W|. wanda (Sun et al., 2023): score |W_ij| *
||X_j|| (X_j the layer's j-th input feature over calibration text), compared within each output row, so
every row keeps the same number of weights. Both produce exactly round(sparsity * numel) zeros per layer.
The folder is written dense (vLLM has no unstructured-sparse kernels on CPU; compressed-tensors 0.17 has
dropped its sparse formats), so size and speed do not change: what this measures is the quality cost.
"""

from __future__ import annotations

import torch

from pipelines.compress.calibration import decoder_linears, input_sq_norms


def prune_weight_(weight: torch.Tensor, score: torch.Tensor, sparsity: float, per_row: bool) -> None:
    """Zero the lowest-scoring weights in place: round(sparsity * n) per row (per_row) or per matrix."""
    if per_row:
        k = round(sparsity * weight.shape[1])
        if k:
            idx = torch.topk(score, k, dim=1, largest=False).indices
            weight.scatter_(1, idx, 0.0)
    else:
        k = round(sparsity * weight.numel())
        if k:
            idx = torch.topk(score.flatten(), k, largest=False).indices
            weight.view(-1)[idx] = 0.0


@torch.no_grad()
def prune_unstructured(
    model, sparsity: float, criterion: str, calibration: torch.Tensor | None = None
) -> dict:
    """Prune the model in place; returns the achieved sparsity over the pruned layers."""
    layers = decoder_linears(model)
    norms = input_sq_norms(model, calibration, layers) if criterion == "wanda" else {}
    zeros = total = 0
    for name, module in layers.items():
        w = module.weight.data
        if criterion == "wanda":
            score = w.abs() * norms[name].sqrt().unsqueeze(0)
            prune_weight_(w, score, sparsity, per_row=True)
        else:
            prune_weight_(w, w.abs(), sparsity, per_row=False)
        zeros += int((w == 0).sum())
        total += w.numel()
    return {
        "sparsity_achieved": round(zeros / total, 6),
        "pruned_layers": len(layers),
        "pruned_weights": zeros,
    }


def apply(ctx, cfg, out_dir: str) -> dict:
    model = ctx.load_model()
    info = prune_unstructured(model, cfg.sparsity, cfg.criterion, ctx.calib(cfg.calibration_samples))
    ctx.save(model, out_dir)
    return info
