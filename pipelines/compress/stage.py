"""The compress stage body: measure the base model, apply each method to a fresh copy of it, write each
result to `<out>/<name>/` with its own manifest, measure it, and write the comparison report."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch

from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import CompressConfig
from pipelines.compress.context import CompressContext, folder_dtype
from pipelines.compress.measure import measure_folder, vllm_speed
from pipelines.compress.text import TextError, interleaved_calibration
from pipelines.run_folder import (
    MANIFEST,
    Manifest,
    config_hash,
    input_record,
    join,
    library_versions,
    read_json,
    write_manifest,
)

# method tag -> module with `apply(ctx, method_cfg, out_dir) -> info`
METHOD_MODULES = {
    "quantize": "pipelines.compress.quantize",
    "prune_structured": "pipelines.compress.prune_structured",
    "prune_unstructured": "pipelines.compress.prune_unstructured",
    "low_rank": "pipelines.compress.low_rank",
    "distill": "pipelines.compress.distill",
    "weight_share": "pipelines.compress.weight_share",
    "layer_drop": "pipelines.compress.layer_drop",
}


def is_stage_folder(folder: str) -> bool:
    """A folder without a manifest, or with one a raylm stage wrote. (The asset cache's models carry a
    manifest of another shape, which the stage contract cannot read.)"""
    manifest = read_json(join(folder, MANIFEST))
    return manifest is None or "stage" in manifest


def base_record(folder: str) -> dict:
    """How a method's manifest records its base: the stage record, or just the path for an asset."""
    return (
        input_record(folder)
        if is_stage_folder(folder)
        else {"path": folder, "stage": None, "fingerprint": None}
    )


def preflight(cfg: CompressConfig, base: str) -> dict:
    """Check every method against the base model's shape; raises CompressInputError naming the keys."""
    shape = base_shape(base)
    check_methods(cfg.methods, shape)
    from pathlib import Path

    problems = []
    if not Path(_resolve(cfg.heldout)).is_file():
        problems.append(f"compress.heldout: {cfg.heldout} is not a file")
    for i, path in enumerate(cfg.calibration_text or []):
        if not Path(_resolve(path)).is_file():
            problems.append(f"compress.calibration_text[{i}]: {path} is not a file")
    trains = any(
        getattr(m, "recovery_steps", 0) or m.method in ("distill", "layer_drop") for m in cfg.methods
    )
    if trains and not Path(_resolve(cfg.train_text)).is_file():
        problems.append(
            f"compress.train_text: {cfg.train_text} is not a file (recovery / distillation train on it)"
        )
    if problems:
        raise CompressInputError(problems)
    return shape


def _calibration_windows(cfg: CompressConfig) -> int:
    return max(8, *(getattr(m, "calibration_samples", 0) for m in cfg.methods))


def run_compress(
    cfg: CompressConfig,
    base: str,
    out_dir: str,
    seed: int = 0,
    log: Callable[[str], None] = print,
    on_result: Callable[[dict, dict], None] | None = None,
) -> dict:
    """Apply and measure every method; `on_result(base_metrics, results so far)` is called after each
    method (a long benchmark keeps what it has measured if it is stopped)."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    preflight(cfg, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.model_max_length = 10**9  # the held-out text is cut into windows here, not by the tokenizer
    try:
        heldout = _resolve(cfg.heldout)
        files = [_resolve(f) for f in cfg.calibration_text] if cfg.calibration_text else [heldout]
        eval_w, calib_w = interleaved_calibration(
            tokenizer, files, heldout, cfg.seq_len, cfg.eval_tokens, _calibration_windows(cfg)
        )
    except TextError as exc:
        raise CompressInputError([str(exc)]) from None
    ctx = CompressContext(
        train_text=_resolve(cfg.train_text),
        base=base,
        tokenizer=tokenizer,
        calibration=calib_w,
        evaluation=eval_w,
        dtype=folder_dtype(base, cfg.dtype),
    )
    log(f"compress: base {base}: measuring ({eval_w.numel()} held-out tokens)")
    base_metrics = _measure(base, tokenizer, eval_w, cfg)
    log(
        f"compress: base perplexity {base_metrics['perplexity']:.3f}, "
        f"{base_metrics['size_bytes'] / 1e6:.1f} MB"
    )
    results = {}
    for m in cfg.methods:
        name = m.folder_name()
        folder = join(out_dir, name)
        log(f"compress: {name} ...")
        t0 = time.perf_counter()
        started = datetime.now(UTC).isoformat(timespec="seconds")
        info = importlib.import_module(METHOD_MODULES[m.method]).apply(ctx, m, folder)
        took = time.perf_counter() - t0
        metrics = _measure(folder, tokenizer, eval_w, cfg)
        metrics.update(_relative(metrics, base_metrics))
        metrics["method_info"] = info
        settings = m.model_dump(mode="json")
        write_manifest(
            folder,
            Manifest(
                stage=f"compress/{name}",
                config=settings,
                config_hash=config_hash(settings),
                inputs={"base": base_record(base)},
                metrics=metrics,
                timings={"compress_s": round(took, 2)},
                versions=library_versions(),
                created_at=started,
            ),
        )
        results[name] = {"method": m.method, "settings": settings, "compress_s": round(took, 2), **metrics}
        if on_result is not None:
            on_result(base_metrics, results)
        log(
            f"compress: {name}: perplexity {metrics['perplexity']:.3f} ({metrics['perplexity_ratio']:.3f}x), "
            f"size {metrics['size_ratio']:.3f}x, {metrics['bytes_per_parameter']:.3f} B/param, "
            f"{metrics['hf_tokens_per_s']:.1f} tok/s (transformers)"
        )
    from pipelines.compress.report import write_report

    write_report(out_dir, base, base_metrics, results)
    # first: what `raylm`'s run summary shows (its first keys), one line per method
    summary = {
        name: f"ppl x{r['perplexity_ratio']:.3f} size x{r['size_ratio']:.3f}" for name, r in results.items()
    }
    return {"summary": summary, "base": {"path": base, **base_metrics}, "methods": results}


def _measure(folder: str, tokenizer, eval_w, cfg: CompressConfig) -> dict:
    metrics = measure_folder(folder, tokenizer, eval_w, cfg.gen_tokens)
    if cfg.measure_vllm:
        v = vllm_speed(folder, cfg.gen_tokens)
        metrics["vllm"] = v
        if "tokens_per_s" in v:
            metrics["vllm_tokens_per_s"] = round(v["tokens_per_s"], 2)
        if "batch_tokens_per_s" in v:
            metrics["vllm_batch_tokens_per_s"] = round(v["batch_tokens_per_s"], 2)
    return metrics


def _relative(m: dict, base: dict) -> dict:
    out = {
        "perplexity_ratio": round(m["perplexity"] / base["perplexity"], 4),
        "size_ratio": round(m["size_bytes"] / base["size_bytes"], 4),
        "parameter_ratio": round(m["parameters"] / base["parameters"], 4),
        "hf_speedup": round(m["hf_tokens_per_s"] / base["hf_tokens_per_s"], 3),
    }
    pairs = (("vllm_tokens_per_s", "vllm_speedup"), ("vllm_batch_tokens_per_s", "vllm_batch_speedup"))
    for key, ratio in pairs:
        if key in m and key in base:
            out[ratio] = round(m[key] / base[key], 3)
    return out


def _resolve(path: str) -> str:
    from pipelines.assets import resolve_path

    return resolve_path(path)
