"""SmoothQuant (Xiao et al., 2023) for W8A8: move activation outliers into the weights before quantizing.

For a Linear y = x W^T whose input comes from a scalable op (an RMSNorm's weight, or up_proj's output
for down_proj), per-input-channel factors s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha) rescale
x_j -> x_j / s_j (folded into the preceding op's weight) and W_:,j -> W_:,j * s_j: the function is
unchanged, but the activations that W8A8 quantizes per token have smaller outliers. The mappings are the
Llama ones llm-compressor uses: input_layernorm -> q/k/v_proj, post_attention_layernorm -> gate/up_proj,
up_proj -> down_proj.
"""

from __future__ import annotations

import torch

from pipelines.compress.calibration import collect_inputs


@torch.no_grad()
def input_absmax(model, windows: torch.Tensor, layers: dict) -> dict[str, torch.Tensor]:
    acc: dict[str, torch.Tensor] = {}

    def reduce(name, x):
        m = x.abs().amax(0)
        acc[name] = torch.maximum(acc[name], m) if name in acc else m

    collect_inputs(model, windows, layers, reduce)
    return acc


@torch.no_grad()
def smooth(model, windows: torch.Tensor, alpha: float = 0.5) -> dict:
    """Apply SmoothQuant's rescaling to every decoder layer in place (the model's outputs are unchanged up
    to float rounding). Returns the largest activation abs-max before and after, over the smoothed
    layers."""
    groups = []
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        groups.append((block.input_layernorm.weight, [a.q_proj, a.k_proj, a.v_proj]))
        groups.append((block.post_attention_layernorm.weight, [m.gate_proj, m.up_proj]))
        groups.append((m.up_proj.weight, [m.down_proj]))  # rows of up_proj scale down_proj's inputs
    first = {f"g{i}": lins[0] for i, (_, lins) in enumerate(groups)}
    amax = input_absmax(model, windows, first)
    before = max(float(v.max()) for v in amax.values())
    for i, (prev, lins) in enumerate(groups):
        x_max = amax[f"g{i}"].clamp(min=1e-5)
        w_max = torch.cat([lin.weight.abs() for lin in lins], dim=0).amax(0).clamp(min=1e-5)
        s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
        if prev.dim() == 1:
            prev.div_(s)
        else:  # up_proj's output rows
            prev.div_(s.unsqueeze(1))
        for lin in lins:
            lin.weight.mul_(s.unsqueeze(0))
    after = max(float(v.max()) for v in input_absmax(model, windows, first).values())
    return {
        "smoothing_alpha": alpha,
        "activation_absmax_before": round(before, 2),
        "activation_absmax_after": round(after, 2),
    }
