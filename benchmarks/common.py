"""What every benchmark reports beside its numbers: the machine it ran on and how busy that machine was.

Other processes on a 2-core machine change every figure; a result without its load average cannot be
judged, so each benchmark samples `os.getloadavg()` while each system runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
from pathlib import Path
from typing import Any


class LoadSampler:
    """`os.getloadavg()` every few seconds while a system runs (a context manager)."""

    def __init__(self, every_s: float = 5.0):
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg())
            self._stop.wait(every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        one = [s[0] for s in self.samples] or [os.getloadavg()[0]]
        return {
            "samples": len(self.samples),
            "load1_mean": round(statistics.fmean(one), 2),
            "load1_max": round(max(one), 2),
            "load1_min": round(min(one), 2),
            "at_end": [round(x, 2) for x in os.getloadavg()],
        }


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, CPU features that decide the bf16 path, library versions."""
    import psutil
    import torch

    cpu = platform.processor() or ""
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = text.split()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }
