"""`raylm doctor`: what is installed and working on this machine, as a table.

Each check is independent and never raises: a broken piece shows up as a failed row with the reason, so
the table is useful exactly when something is wrong.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.assets import asset_paths

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    name: str
    status: str
    detail: str


def _version(module: str) -> str:
    return getattr(importlib.import_module(module), "__version__", "?")


def check_python() -> Check:
    ok = sys.version_info[:2] in ((3, 11), (3, 12))
    return Check("python", OK if ok else WARN, f"{platform.python_version()} ({sys.executable})")


def check_torch() -> Check:
    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    cuda = ""
    if torch.cuda.is_available():
        cuda = f", CUDA {torch.version.cuda} with {torch.cuda.device_count()} GPU(s)"
    return Check("torch", OK, f"{torch.__version__}, CPU ISA {isa}, {torch.get_num_threads()} threads{cuda}")


def check_ray() -> Check:
    return Check("ray", OK, _version("ray"))


def check_deepspeed() -> Check:
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return Check("deepspeed", OK, f"{deepspeed.__version__}, accelerator {acc.device_name()} "
                                  f"(comm backend {acc.communication_backend_name()})")


def check_vllm() -> Check:
    import vllm
    from vllm.platforms import current_platform

    return Check("vllm", OK, f"{vllm.__version__}, platform {current_platform.device_type}")


def check_memory() -> Check:
    import psutil

    vm = psutil.virtual_memory()
    gib = vm.available / 1024**3
    return Check("memory", OK if gib >= 8 else WARN, f"{gib:.1f} GiB free of {vm.total / 1024**3:.1f} GiB, "
                                                     f"{os.cpu_count()} CPUs")


def check_disk() -> Check:
    root = asset_paths().root
    probe = root if root.exists() else root.parent if root.parent.exists() else os.path.expanduser("~")
    free = shutil.disk_usage(probe).free / 1024**3
    return Check("disk", OK if free >= 10 else WARN, f"{free:.1f} GiB free at {probe}")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def asset_checks() -> list[Check]:
    from cluster.assets.prepare import check_assets

    rows = []
    for name, (ok, detail) in check_assets().items():
        rows.append(Check(name, OK if ok else FAIL, detail if ok else f"{detail} (run `make setup`)"))
    return rows


def check_matmul_peak() -> Check:
    """The matmul peak MFU divides by, re-measured (all cores, or the GPU) and cached for training."""
    from pipelines.train.flops import matmul_peak

    device = "cuda" if _has_cuda() else "cpu"
    fp32 = matmul_peak("fp32", device, remeasure=True) / 1e9
    bf16 = matmul_peak("bf16", device, remeasure=True) / 1e9
    note = "" if device == "cuda" or bf16 > fp32 else " (bf16 emulated on this CPU: pretraining uses fp32)"
    return Check("matmul_peak", OK, f"fp32 {fp32:,.0f} GFLOP/s, bf16 {bf16:,.1f} GFLOP/s on {device}{note}")


LIBRARY_CHECKS: list[Callable[[], Check]] = [
    check_python, check_torch, check_ray, check_deepspeed, check_vllm, check_memory, check_disk,
    check_matmul_peak,
]


def run_checks() -> list[Check]:
    rows = []
    for fn in LIBRARY_CHECKS:
        name = fn.__name__.removeprefix("check_")
        try:
            rows.append(fn())
        except Exception as exc:  # a doctor reports what is broken instead of crashing on it
            rows.append(Check(name, FAIL, f"{type(exc).__name__}: {exc}"))
    try:
        rows += asset_checks()
    except Exception as exc:
        rows.append(Check("assets", FAIL, f"{type(exc).__name__}: {exc}"))
    return rows
