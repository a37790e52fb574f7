"""The data benchmark's smoke test: `--quick` runs the baseline script and raylm on 1k documents and
writes its JSON and markdown (it needs the bundled corpus and WordNet: `make setup`)."""

from __future__ import annotations

import json

import pytest

from benchmarks import data_bench

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.assets]


def test_quick_benchmark_runs_and_agrees(assets, tmp_path):
    out = tmp_path / "data.json"
    data_bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    row = result["sizes"]["1000"]
    assert result["ratio"] == row["ratio"] > 0
    assert row["raylm"]["rows_in"] == row["baseline"]["rows_in"] == 1000
    assert row["agreement"]["row_agreement"] > 0.99
    assert row["raylm"]["peak_pss_mb"] > 0 and row["baseline"]["peak_pss_mb"] > 0
    assert "| 1,000 |" in out.with_suffix(".md").read_text()
