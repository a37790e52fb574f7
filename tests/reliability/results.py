"""The reliability suite's figures: each test adds its section to benchmarks/results/reliability.json
(read-modify-write, one section per test), so the latest run of every item is kept side by side."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability.json"


def record_result(section: str, figures: dict[str, Any]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[section] = {
        **figures,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
    }
    if "server_errors_5xx" not in data:
        data["server_errors_5xx"] = None  # set by the API fuzzing (api_fuzz.py, run by test_serve_app.py)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"[reliability] {section}: {json.dumps(figures, sort_keys=True)}")
