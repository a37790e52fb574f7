"""Reading and typing: every malformed record is quarantined with its reason, file and line."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from pipelines.data.config import DataConfig
from pipelines.data.engine import parse_batch
from pipelines.data.quarantine import read_quarantine
from pipelines.data.readers import (
    FILE_ID_SHIFT,
    DataInputError,
    ParseSpec,
    expand_inputs,
    probe_inputs,
    read_csv_rows,
    read_jsonl_lines,
    read_text_units,
)
from pipelines.data.schema import coerce_column
from pipelines.data.stats import Reporter, StatsCollector
from pipelines.data.steps import BatchContext

JSONL = b"\n".join(
    [
        b'{"text": "good one", "score": 1.5}',
        b'{"text": "broken',
        b"\xff\xfe not utf-8",
        b"",
        b"[1, 2]",
        b'{"text": 5}',
        b'{"score": 3}',
        b'{"text": "bad score", "score": "high"}',
        b'{"text": "string score", "score": "2.5"}',
        b'{"text": "missing score"}',
    ]
)


def _parse(table, fmt, tmp_path, columns=None):
    collector = StatsCollector()
    spec = ParseSpec(0, fmt, "utf-8", None, "text", columns or {"score": "float"}, {7: "in.file"})
    ctx = BatchContext(Reporter(collector, remote=False), str(tmp_path / "q"), {}, "t")
    out = parse_batch(table, spec, {"row_id": "int", "text": "str", **(columns or {"score": "float"})}, ctx)
    return out.to_pandas(), collector.snapshot()["read:0"], read_quarantine(str(tmp_path / "q"))


def test_jsonl_quarantine_reasons_lines_and_accounting(tmp_path):
    table = next(read_jsonl_lines(io.BytesIO(JSONL), 7))
    df, counts, bad = _parse(table, "jsonl", tmp_path)
    assert df["text"].tolist() == ["good one", "string score", "missing score"]
    assert df["score"].tolist()[:2] == [1.5, 2.5] and pd.isna(df["score"].iloc[2])
    assert df["row_id"].tolist() == [(7 << FILE_ID_SHIFT) | line for line in (1, 9, 10)]
    reasons = {(b["reason"], b["line"]) for b in bad}
    assert reasons == {
        ("bad_json", 2),
        ("bad_encoding", 3),
        ("not_an_object", 5),
        ("bad_type:text", 6),
        ("missing_column:text", 7),
        ("bad_type:score", 8),
    }
    assert all(b["source_file"] == "in.file" for b in bad)
    enc = next(b for b in bad if b["reason"] == "bad_encoding")
    assert enc["raw"].startswith("\\xff\\xfe") and enc["raw_base64"]
    assert (
        counts["records"]
        == 9
        == counts["rows_out"] + sum(v for k, v in counts.items() if k.startswith("quar"))
    )


def test_csv_bad_rows_and_types(tmp_path):
    data = b'text,score\nhello there,1\n"multi\nline",2\ntoo,many,fields\nbad,x\n\xff,3\n'
    table = next(read_csv_rows(io.BytesIO(data), 7, "utf-8"))
    df, counts, bad = _parse(table, "csv", tmp_path)
    assert df["text"].tolist() == ["hello there", "multi\nline"]
    assert df["score"].tolist() == [1.0, 2.0]
    assert {(b["reason"], b["line"]) for b in bad} == {
        ("bad_csv_row", 5),
        ("bad_type:score", 6),
        ("bad_encoding", 7),
    }
    assert counts["records"] == 5


@pytest.mark.parametrize(
    "unit,expected", [("file", ["a b\n\nc\nd"]), ("paragraph", ["a b", "c\nd"]), ("line", ["a b", "c", "d"])]
)
def test_text_units(tmp_path, unit, expected):
    table = next(read_text_units(b"a b\n\nc\nd", 0, unit))
    df, _, _ = _parse(table, "text", tmp_path, columns={})
    assert df["text"].tolist() == expected


def test_coercion_rules():
    values, bad = coerce_column([1, "2", 2.0, 2.5, "x", None, True], "int")
    assert values[:3] == [1, 2, 2] and bad.tolist() == [False, False, False, True, True, False, True]
    values, bad = coerce_column(["yes", "0", 1, "maybe"], "bool")
    assert values[:3] == [True, False, True] and bad.tolist() == [False, False, False, True]


def test_expand_and_probe_name_the_problem(tmp_path):
    (tmp_path / "a.csv").write_text("body,score\nhi,1\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    cfg = DataConfig.model_validate(
        {
            "inputs": [{"path": str(tmp_path / "a.csv")}, {"path": str(tmp_path / "b.jsonl")}],
            "columns": {"score": "float"},
            "operators": [{"op": "zscore_outliers", "columns": ["score"]}],
        }
    )
    inputs = expand_inputs(cfg)
    assert [i.format for i in inputs] == ["csv", "jsonl"]
    problems = probe_inputs(cfg, inputs)
    assert any("a.csv" in p and "no text column 'text'" in p and "text_field" in p for p in problems)
    assert not any("'score'" in p for p in problems)  # the CSV has it; the JSONL's records lack it: missing
    cfg2 = cfg.model_copy(update={"inputs": cfg.inputs[1:]})
    (p,) = probe_inputs(cfg2, expand_inputs(cfg2))
    assert "no input has column 'score'" in p and "zscore_outliers" in p
    with pytest.raises(DataInputError, match="no such file"):
        expand_inputs(DataConfig.model_validate({"inputs": [{"path": str(tmp_path / "none.jsonl")}]}))
