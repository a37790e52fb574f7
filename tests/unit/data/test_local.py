"""The whole chain in one process (the Ray engine's reference): accounting, quarantine, every kind."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

from pipelines.data.config import DataConfig
from pipelines.data.local import run_clean_local
from pipelines.data.quarantine import read_quarantine


def _write(tmp_path):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(60):
        rows.append(
            {
                "text": f"Document number {i} talks about the weather and the river in the valley.",
                "t": i,
                "score": float(rng.normal(10, 1)),
                "g": "ab"[i % 2],
            }
        )
    rows[5]["score"] = 90.0  # an outlier
    rows[7]["score"] = None
    rows[8]["text"] = rows[9]["text"]  # an exact duplicate (row 9 goes)
    lines = [json.dumps(r) for r in rows] + ['{"text": "cut', '{"text": "x", "score": "abc"}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return rows


def test_local_chain_accounting_and_results(tmp_path):
    rows = _write(tmp_path)
    cfg = DataConfig.model_validate(
        {
            "inputs": [{"path": str(tmp_path / "in.jsonl")}],
            "columns": {"t": "int", "score": "float", "g": "str"},
            "operators": [
                {"op": "exact_dedup"},
                {"op": "zscore_outliers", "columns": ["score"], "threshold": 3},
                {"op": "fill_missing", "strategy": "median", "columns": ["score"]},
                {
                    "op": "moving_average",
                    "columns": ["score"],
                    "order_by": "t",
                    "group_by": ["g"],
                    "window": 3,
                    "suffix": "_ma",
                },
                {"op": "lowercase", "output": "low"},
            ],
        }
    )
    stats_json = run_clean_local(cfg, str(tmp_path / "out"))
    assert stats_json["balanced"] and stats_json["rows_in"] == 62
    assert stats_json["quarantined"] == {"bad_json": 1, "bad_type:score": 1}
    assert stats_json["dropped"] == {"exact_duplicate": 1, "zscore_outlier": 1}
    assert {q["reason"] for q in read_quarantine(str(tmp_path / "out" / "quarantine"))} == {
        "bad_json",
        "bad_type:score",
    }
    out = pd.read_parquet(tmp_path / "out" / "clean")
    # the same chain written with pandas/scipy
    ref = pd.DataFrame(rows).drop(index=9)
    z = np.abs(stats.zscore(ref["score"], nan_policy="omit"))
    ref = ref[~(z > 3)].copy()
    ref["score"] = ref["score"].fillna(ref["score"].median())
    ref = ref.sort_values("t")
    ref["score_ma"] = ref.groupby("g")["score"].transform(lambda s: s.rolling(3, min_periods=1).mean())
    out = out.sort_values("t").reset_index(drop=True)
    np.testing.assert_allclose(out["score"], ref["score"])
    np.testing.assert_allclose(out["score_ma"], ref["score_ma"])
    assert out["low"].tolist() == [t.lower() for t in ref["text"]]
    ops = {o["op"]: o for o in stats_json["operators"]}
    assert ops["zscore_outliers"]["stats"]["mean(score)"] > 10
    assert ops["exact_dedup"]["clusters"]["duplicates"] == 1
