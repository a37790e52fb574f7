"""The memory allocators of raylm's compute processes: glibc's or tcmalloc for Ray Train workers and vLLM
replicas on CPU, and the pool Arrow (Ray Data's blocks) allocates from in every Ray worker.

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
ArrowPool = Literal["auto", "jemalloc", "mimalloc", "system"]
ARROW_POOL_VAR = "ARROW_DEFAULT_MEMORY_POOL"  # Arrow reads it when a process first allocates

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


# Why Arrow's pool matters: pyarrow's wheels allocate from mimalloc by default. In the data stage's
# passes over a Parquet checkpoint, Ray Data's reader decodes up to a block (128 MiB) at a time on
# Arrow's threads and the task frees the buffers on its own thread; mimalloc kept those pages, so a Ray
# worker grew to 1.0-1.5 GB at 800k documents while Arrow reported 126 MB allocated, and the stage's
# peak grew from 2.1 GB at 200k documents to 3.8-4.3 GB at 800k. jemalloc, which pyarrow also ships
# and which returns freed pages after a decay time, gave 1.7-1.8 and 2.6 GB, and the 800k run was no
# slower (147-165 s against 153-173 s; docs/data.md, "Where the memory goes"). A pool is chosen when a
# process first allocates, so it goes into the environment of the Ray processes, like the allocator
# above.


def arrow_pool_env(pool: ArrowPool, key: str = "cluster.arrow_memory_pool") -> dict[str, str]:
    """`{ARROW_DEFAULT_MEMORY_POOL: ...}` for new Ray processes; {} keeps Arrow's default. auto: jemalloc
    where this pyarrow build has it. `key` names the recipe key in the error for a pool it lacks."""
    import pyarrow as pa

    available = pa.supported_memory_backends()
    if pool == "auto":
        return {ARROW_POOL_VAR: "jemalloc"} if "jemalloc" in available else {}
    if pool not in available:
        raise ValueError(
            f"{key}: {pool} asked for, but this pyarrow build has only {', '.join(available)} "
            f"(set {key}: auto)"
        )
    return {ARROW_POOL_VAR: pool}
