"""Quantization writes compressed-tensors folders: integer weights, scales, a quantization_config vLLM
reads; transformers loads them back with weights within half a quantization step of the originals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from pipelines.compress import quantize
from pipelines.compress.config import QuantizeMethod
from pipelines.compress.measure import load_for_eval, stored_parameters, weights_bytes
from pipelines.compress.text import perplexity


def _tensors(folder: str) -> dict[str, torch.Tensor]:
    out = {}
    for p in Path(folder).glob("*.safetensors"):
        with safe_open(str(p), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118
                out[k] = f.get_tensor(k)
    return out


@pytest.mark.parametrize(
    ("scheme", "fmt", "stored", "max_steps"),
    [("W8A8", "int-quantized", "weight", 0.5), ("W4A16", "pack-quantized", "weight_packed", 0.5)],
)
def test_rtn_folder_format_and_error_bound(ctx, tmp_path, scheme, fmt, stored, max_steps):
    out = str(tmp_path / scheme)
    quantize.apply(ctx, QuantizeMethod(scheme=scheme, group_size=32), out)
    qc = json.loads(Path(out, "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    assert qc["ignore"] == ["lm_head"]
    t = _tensors(out)
    key = f"model.layers.0.mlp.down_proj.{stored}"
    assert key in t
    if scheme == "W8A8":
        assert t[key].dtype == torch.int8
        assert t["model.layers.0.mlp.down_proj.weight_scale"].shape == (64, 1)
    else:
        assert t[key].dtype == torch.int32 and t[key].shape == (64, 192 // 8)  # 8 int4 per int32
        assert t["model.layers.0.mlp.down_proj.weight_scale"].shape == (64, 192 // 32)
    # transformers decompresses; each weight is within half a step (its scale) of the original
    base = ctx.load_model()
    back = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    w0 = base.model.layers[1].self_attn.q_proj.weight
    w1 = back.model.layers[1].self_attn.q_proj.weight.float()
    scale = t["model.layers.1.self_attn.q_proj.weight_scale"].float()
    scale = scale.repeat_interleave(w0.shape[1] // scale.shape[1], dim=1)
    assert torch.all((w0 - w1).abs() <= max_steps * scale + 1e-6)
    assert not torch.equal(w0, w1)  # it was quantized
    # the 4-bit folder stores fewer bytes per parameter than the 8-bit one, both fewer than float32
    bpp = weights_bytes(out) / stored_parameters(out)
    assert bpp < (2.5 if scheme == "W8A8" else 2.0)
    assert stored_parameters(out) == sum(p.numel() for p in base.parameters())  # tied: counted once


def test_w8a8_perplexity_close_to_base(ctx, eval_windows, tmp_path):
    base_ppl = perplexity(ctx.load_model(), eval_windows)
    out = str(tmp_path / "q")
    quantize.apply(ctx, QuantizeMethod(scheme="W8A8"), out)
    q_ppl = perplexity(load_for_eval(out), eval_windows)
    assert abs(q_ppl / base_ppl - 1) < 0.02


def test_fake_quantize_matches_library_grid():
    from compressed_tensors.quantization import QuantizationArgs

    args = QuantizationArgs(num_bits=4, strategy="group", group_size=8, symmetric=True)
    w = torch.randn(4, 16)
    scale, zp = quantize.rtn_qparams(w, args)
    q = quantize.fake_quantize(w, scale, zp, args)
    levels = (q.view(4, 2, 8) / scale.unsqueeze(-1)).round()
    assert levels.min() >= -8 and levels.max() <= 7
    assert torch.allclose(q.view(4, 2, 8), levels * scale.unsqueeze(-1), atol=1e-6)


def test_unknown_scheme_refused_naming_the_loadable_ones():
    with pytest.raises(ValueError, match="W8A8, W4A16"):
        QuantizeMethod(scheme="W3A5")
    assert QuantizeMethod(scheme="w4a16").scheme == "W4A16"


def test_group_size_that_does_not_divide_is_refused(tiny_base):
    from pipelines.compress.checks import CompressInputError, base_shape, check_methods

    with pytest.raises(CompressInputError, match=r"group_size 128 does not divide.*\[64, 192\]"):
        check_methods([QuantizeMethod(scheme="W4A16", group_size=128)], base_shape(tiny_base))


def test_float8_embedding_storage_halves_embedding_and_loads(ctx, tmp_path, eval_windows):
    plain, small = str(tmp_path / "w8"), str(tmp_path / "w8e")
    quantize.apply(ctx, QuantizeMethod(scheme="W8A8"), plain)
    info = quantize.apply(ctx, QuantizeMethod(scheme="W8A8", embedding_storage="float8"), small)
    emb = _tensors(small)["model.embed_tokens.weight"]
    assert emb.dtype == torch.float8_e4m3fn
    assert info["embedding_bytes_saved"] == emb.numel() * 3  # float32 -> 1 byte
    assert abs(weights_bytes(plain) - weights_bytes(small) - info["embedding_bytes_saved"]) < 1024  # header
    a, b = load_for_eval(plain), load_for_eval(small)
    wa, wb = a.model.embed_tokens.weight, b.model.embed_tokens.weight
    assert wb.dtype == torch.float32 and (wa - wb).norm() / wa.norm() < 0.05  # cast back on load
    assert perplexity(b, eval_windows) < 1.05 * perplexity(a, eval_windows)


def test_float8_embedding_by_gptq_has_smaller_head_error_than_nearest(ctx, tmp_path):
    from pipelines.compress.calibration import collect_inputs

    model = ctx.load_model()
    assert quantize.tied_head(model)
    calib = ctx.calib(4)
    values, timing = quantize.embedding_float8_gptq(model, calib, dampening=0.01)
    assert timing["embedding_gptq_s"] >= 0
    assert torch.equal(values, values.to(torch.float8_e4m3fn).float())  # on the e4m3 grid
    states = []
    collect_inputs(model, calib, {"lm_head": model.lm_head}, lambda _n, x: states.append(x))
    x, w = torch.cat(states), model.lm_head.weight.detach()
    nearest = w.to(torch.float8_e4m3fn).float()
    assert (x @ (values - w).T).norm() < 0.9 * (x @ (nearest - w).T).norm()  # the logits move less
    # the stage writes exactly those values, and records how they were chosen
    out = str(tmp_path / "gptq")
    info = quantize.apply(ctx, QuantizeMethod(scheme="W8A8", embedding_storage="float8"), out)
    assert info["embedding_rounding"] == "gptq"
    torch.testing.assert_close(_tensors(out)["model.embed_tokens.weight"].float(), values)
    near = quantize.apply(
        ctx, QuantizeMethod(scheme="W8A8", embedding_storage="float8", embedding_rounding="nearest"),
        str(tmp_path / "near"),
    )
    assert near["embedding_rounding"] == "nearest"
