"""Model FLOPs of a training step, and the measured matmul peak that MFU divides them by.

Model FLOPs count the matmuls of one forward and backward (backward = 2x forward) without the recompute of
activation checkpointing, as in the PaLM paper's MFU: per token, 2 FLOPs per weight a token meets in a
matmul, plus the attention scores and their weighted sum (4 x context x attention width per layer; a
causal or block mask is not discounted). `tests/unit/train` checks the formula against torch's
`FlopCounterMode` on the tiny presets.

The peak is measured, not taken from a data sheet: the best of a few square matmuls in the training dtype
with the threads a worker has (CPU) or on its GPU, cached per host/device/dtype/threads in
`$RAYLM_HOME/matmul_peak.json` (each new measurement keeps the maximum, so a reading taken while the
machine was busy is replaced by a better one; `raylm doctor` re-measures).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pipelines.assets import raylm_home


def forward_flops_per_sequence(family: str, hf_cfg, enc_len: int, dec_len: int = 0) -> float:
    """Matmul FLOPs of one forward pass over one sequence (encoder-decoder: enc_len source tokens and
    dec_len target tokens)."""
    c = hf_cfg
    if family == "decoder":
        h, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
        hd = getattr(c, "head_dim", None) or h // heads
        kv = c.num_key_value_heads
        per_token = layers * (2 * h * heads * hd + 2 * h * kv * hd + 3 * h * c.intermediate_size)
        per_token += h * c.vocab_size
        return 2 * per_token * enc_len + layers * 4 * enc_len * enc_len * heads * hd
    if family == "encoder":
        h, layers = c.hidden_size, c.num_hidden_layers
        per_token = layers * (4 * h * h + 2 * h * c.intermediate_size) + h * h + h * c.vocab_size
        return 2 * per_token * enc_len + layers * 4 * enc_len * enc_len * h
    # encoder-decoder (T5): inner = heads x d_kv; gated feed-forward has 3 matrices (2 without gating)
    h, inner = c.d_model, c.num_heads * c.d_kv
    ff = (3 if c.is_gated_act else 2) * h * c.d_ff
    enc = c.num_layers * (2 * (4 * h * inner + ff) * enc_len + 4 * enc_len * enc_len * inner)
    dec_self = 2 * (4 * h * inner + ff) * dec_len + 4 * dec_len * dec_len * inner
    dec_cross = 2 * 2 * h * inner * dec_len + 2 * 2 * h * inner * enc_len + 4 * dec_len * enc_len * inner
    head = 2 * h * c.vocab_size * dec_len
    return enc + c.num_decoder_layers * (dec_self + dec_cross) + head


def train_flops_per_sequence(family: str, hf_cfg, enc_len: int, dec_len: int = 0) -> float:
    """Forward + backward (3x forward)."""
    return 3 * forward_flops_per_sequence(family, hf_cfg, enc_len, dec_len)


# ------------------------------------------------------------------------------------------------
# Matmul peak


def _cache_file() -> Path:
    return raylm_home() / "matmul_peak.json"


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw", "cpu")
    except Exception:
        return "cpu"


def peak_key(dtype_name: str, device: str = "cpu", threads: int | None = None) -> str:
    import torch

    threads = threads or torch.get_num_threads()
    return (
        f"{socket.gethostname()}|{_device_name(device)}|{dtype_name}|{threads if device == 'cpu' else 'gpu'}"
    )


def measure_matmul_peak(
    dtype_name: str, device: str = "cpu", size: int | None = None, repeats: int = 5, budget_s: float = 3.0
) -> float:
    """FLOP/s of the best of `repeats` [n x n] @ [n x n] matmuls in this dtype, with this process's torch
    threads (CPU) or on this GPU."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    n = size or (8192 if device.startswith("cuda") else 2048)
    if size is None:
        # a dtype the hardware only emulates (bf16 on an AVX2 CPU) is ~100x slower: size the matmul from a
        # small probe so that one takes about a quarter of a second
        probe = torch.randn(256, 256, device=device).to(dtype)
        torch.matmul(probe, probe)
        sync()
        t0 = time.perf_counter()
        torch.matmul(probe, probe)
        sync()
        rate = 2 * 256**3 / max(time.perf_counter() - t0, 1e-9)
        n = max(256, min(n, int((0.25 * rate / 2) ** (1 / 3)) // 64 * 64))
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: kernels chosen, pages touched
    sync()
    best, start = 0.0, time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
        if time.perf_counter() - start > budget_s:
            break
    return best


def read_peak_cache() -> dict[str, float]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def matmul_peak(dtype_name: str, device: str = "cpu", remeasure: bool = False) -> float:
    """The cached matmul peak for this host/device/dtype/threads; measured (and cached) when missing or
    when `remeasure`. The cache keeps the best measurement seen."""
    key = peak_key(dtype_name, device)
    cache = read_peak_cache()
    if key in cache and not remeasure:
        return float(cache[key])
    value = measure_matmul_peak(dtype_name, device)
    cache = read_peak_cache()  # another process may have written meanwhile
    cache[key] = max(value, float(cache.get(key, 0.0)))
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return cache[key]
