"""GPTQ: the weights it returns lie on the quantization grid, and the layer output error on calibration
inputs is smaller than round-to-nearest's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.compress import gptq, quantize
from pipelines.compress.calibration import input_hessians
from pipelines.compress.config import QuantizeMethod


@pytest.mark.parametrize("scheme", ["W4A16", "W8A8"])
def test_gptq_beats_rtn_on_layer_output(ctx, scheme):
    torch.manual_seed(0)
    model = ctx.load_model()
    lin = model.model.layers[1].mlp.down_proj
    # correlated input features (as real activations are): where GPTQ's error feedback pays off
    x = torch.randn(512, 24) @ torch.randn(24, 192) + 0.1 * torch.randn(512, 192)
    h = 2.0 * x.T @ x / x.shape[0]
    args = quantize.scheme_for(scheme, 32).weights
    q, scale, zp = gptq.gptq_layer(lin.weight, h, args)
    rs, rz = quantize.rtn_qparams(lin.weight, args)
    rtn = quantize.fake_quantize(lin.weight, rs, rz, args)
    w = lin.weight.detach()
    err_gptq = (x @ (q - w).T).norm()
    err_rtn = (x @ (rtn - w).T).norm()
    assert err_gptq < 0.7 * err_rtn
    # on the grid: q / scale are integers within the range
    reps = w.shape[1] // scale.shape[1]
    levels = q / scale.repeat_interleave(reps, dim=1)
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    lo, hi = (-8, 7) if scheme == "W4A16" else (-128, 127)
    assert levels.round().min() >= lo and levels.round().max() <= hi


def test_gptq_float8_lies_on_e4m3_and_beats_nearest_on_output():
    torch.manual_seed(0)
    w = 0.15 * torch.randn(300, 96)  # an embedding-like table: vocab rows x hidden columns
    mix = torch.randn(16, 96)

    def states(n):  # correlated hidden states, as a head's inputs are
        return torch.randn(n, 16) @ mix + 0.1 * torch.randn(n, 96)

    x = states(1024)
    q = gptq.gptq_float8(w, 2.0 * x.T @ x / x.shape[0])
    assert torch.equal(q, q.to(torch.float8_e4m3fn).float())  # every value is an e4m3 value
    nearest = w.to(torch.float8_e4m3fn).float()
    unseen = states(256)  # the output error is smaller on inputs the Hessian did not see, too
    assert (unseen @ (q - w).T).norm() < 0.7 * (unseen @ (nearest - w).T).norm()


def test_hessians_are_symmetric_psd(ctx):
    model = ctx.load_model()
    layers = dict(quantize.quantized_linears(model))
    hs = input_hessians(model, ctx.calib(2), {k: layers[k] for k in list(layers)[:2]})
    for h in hs.values():
        torch.testing.assert_close(h, h.T)
        assert torch.linalg.eigvalsh(h).min() > -1e-4


def test_gptq_method_writes_loadable_folder(ctx, tmp_path):
    out = str(tmp_path / "gptq")
    info = quantize.apply(
        ctx, QuantizeMethod(scheme="W4A16", group_size=32, algorithm="gptq", calibration_samples=2), out
    )
    assert info["algorithm"] == "gptq" and info["calibration_tokens"] == 2 * 64
    qc = json.loads(Path(out, "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized"
    from pipelines.compress.measure import load_for_eval

    logits = load_for_eval(out)(input_ids=ctx.calib(1)).logits
    assert torch.isfinite(logits).all()


def test_smoothquant_preserves_function_and_shrinks_outliers(ctx):
    from pipelines.compress.smoothquant import smooth

    model = ctx.load_model()
    # an outlier input channel, as LLM activations have: scale one RMSNorm weight up
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[3] = 40.0
    x = ctx.calib(2)
    with torch.no_grad():
        before = model(input_ids=x).logits
    info = smooth(model, x, alpha=0.5)
    with torch.no_grad():
        after = model(input_ids=x).logits
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-3)
    assert info["activation_absmax_after"] < info["activation_absmax_before"]


def test_smoothing_refused_for_w4a16():
    with pytest.raises(ValueError, match="W8A8 only"):
        QuantizeMethod(scheme="W4A16", smoothing=0.5)
