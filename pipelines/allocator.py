"""The memory allocator of raylm's compute processes (Ray Train workers, vLLM replicas on CPU).

Why: a training step frees and re-allocates the same large activation and gradient buffers every
micro-batch. glibc's malloc serves buffers above its mmap threshold (32 MiB at most) with fresh `mmap`s
and gives them back with `munmap`, so every step pays page faults and zeroing in the kernel: a plain
2-thread bf16 loop on the 2-core development VM spent ~20% of its time in the kernel and ran at 8,400
tokens/s; the same loop with tcmalloc preloaded spent ~0% there and ran at 12,500 (docs/pretrain.md).
vLLM's CPU guide and Intel's PyTorch guides preload tcmalloc for the same reason. An allocator is chosen
when a process starts, so it goes into the processes' environment (`LD_PRELOAD`): Ray Train's
`RunConfig.worker_runtime_env` for training workers, the deployment's `runtime_env` for vLLM replicas on
CPU (serving/app.py); nothing in raylm's code changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pipelines.config_base import SectionConfig

Allocator = Literal["auto", "tcmalloc", "system"]

# Debian/Ubuntu's libtcmalloc-minimal4 (what `make setup` and the images install), then other layouts.
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


class AllocatorSection(SectionConfig):
    """The `allocator` key that `pretrain` and `finetune` share (their Ray Train workers)."""

    allocator: Allocator = "auto"
    """Memory allocator of the Ray Train worker processes. auto: tcmalloc where the driver's node has
    libtcmalloc-minimal4 (Debian package; every node of a cluster needs it at the same path), else
    glibc's. tcmalloc: refuse to start without it. system: glibc's malloc. tcmalloc keeps freed memory
    for reuse, so a worker's RSS stays near its peak."""


def find_tcmalloc() -> str | None:
    """The path of libtcmalloc_minimal on this node, or None."""
    return next((p for p in TCMALLOC_PATHS if Path(p).is_file()), None)


def allocator_env(allocator: Allocator, key: str = "allocator") -> dict[str, str]:
    """Environment variables that give a new worker process `allocator` ({} for glibc's). `key` names the
    recipe key in the error when tcmalloc is asked for and missing."""
    if allocator == "system":
        return {}
    path = find_tcmalloc()
    if path is None:
        if allocator == "tcmalloc":
            raise ValueError(
                f"{key}: tcmalloc asked for, but libtcmalloc_minimal.so.4 is in none of "
                f"{', '.join(TCMALLOC_PATHS)} (apt-get install libtcmalloc-minimal4; or set {key}: auto)"
            )
        return {}
    preload = " ".join(x for x in (path, os.environ.get("LD_PRELOAD", "")) if x)
    # tcmalloc prints a line for every allocation above 1 GiB by default (a 1B model's buffers)
    return {"LD_PRELOAD": preload, "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40)}


def loaded_allocator() -> str:
    """The allocator this process runs with: "tcmalloc" when libtcmalloc is mapped into it (Linux's
    /proc/self/maps), else "glibc"; "unknown" where /proc is not there."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return "tcmalloc" if "libtcmalloc" in maps else "glibc"
