"""Data faults (issue 10, item 3): an input folder with a truncated gzip file, invalid UTF-8, malformed JSON
lines, wrong column types and empty files. The data run completes; every bad record is in the quarantine
with a reason; rows in = rows out + rows dropped (by reason) + rows quarantined, exactly. The figures go to
benchmarks/results/reliability.json (section `data_faults`)."""

from __future__ import annotations

import gzip
import json

import pytest

from cluster.config import parse_recipe
from cluster.orchestrate import run_recipe
from cluster.runtime import ray_session
from pipelines.data.quarantine import read_quarantine
from tests.reliability.results import record_result

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GOOD = 60


def doc(i: int) -> str:
    return f"Record number {i} tells a plain story about the harbour, the ships and the people of the town."


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    (root / "jsonl").mkdir()
    lines = [json.dumps({"text": doc(i), "score": float(i % 7)}) for i in range(GOOD)]
    lines += [
        '{"text": "cut off in the middle',  # malformed JSON
        '["a list", "not an object"]',  # valid JSON, not a record
        json.dumps({"text": doc(100_000), "score": "seven"}),  # wrong type for a float column
        json.dumps({"text": doc(100_001), "score": {"nested": 1}}),  # wrong type again
    ]
    body = "\n".join(lines).encode() + b"\n" + b'{"text": "invalid \xff\xfe utf-8 here"}\n'
    (root / "jsonl" / "main.jsonl").write_bytes(body)
    # a gzip file cut in half: its first records are readable, the rest is lost and must be counted
    gz_lines = [json.dumps({"text": doc(2000 + i), "score": 1.0}) for i in range(20_000)]
    full = gzip.compress(("\n".join(gz_lines) + "\n").encode())
    (root / "jsonl" / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    (root / "jsonl" / "empty.jsonl").write_bytes(b"")
    (root / "jsonl" / "empty.jsonl.gz").write_bytes(b"")  # not even a gzip header
    (root / "table.csv").write_text(
        "text,score\n"
        + "".join(f'"{doc(300_000 + i)}",{i}\n' for i in range(10))
        + f'"{doc(300_100)}",not-a-number\n'
    )
    (root / "empty.csv").write_bytes(b"")
    (root / "text").mkdir()
    (root / "text" / "a.txt").write_text(doc(400_000))
    (root / "text" / "empty.txt").write_bytes(b"")
    return root, len(gz_lines)


def test_a_faulty_folder_completes_and_every_row_is_accounted_for(faulty, tmp_path):
    root, gz_total = faulty
    run_dir = tmp_path / "run"
    cfg = parse_recipe(f"""
name: faults
run_dir: {run_dir}
cluster: {{num_cpus: 2}}
data:
  inputs:
    - {{path: {root}/jsonl, format: jsonl}}
    - {{path: {root}/table.csv}}
    - {{path: {root}/empty.csv}}
    - {{path: {root}/text, format: text}}
  columns: {{score: float}}
  operators:
    - {{op: normalize_whitespace}}
    - {{op: exact_dedup}}
""")
    with ray_session(num_cpus=2):
        run_recipe(cfg, only={"data"})
    stage = run_dir / "data"
    stats = json.loads((stage / "stats.json").read_text())
    quarantine = read_quarantine(str(stage / "quarantine"))
    reasons: dict[str, int] = {}
    for q in quarantine:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
        assert q["source_file"], q  # every quarantined record names its file

    # the identity, exactly, and the quarantine folder holds what stats.json counts
    assert stats["balanced"], stats["identity"]
    assert stats["rows_in"] == stats["rows_out"] + stats["dropped_total"] + stats["quarantined_total"]
    assert stats["quarantined_total"] == len(quarantine)
    # every fault is there with its reason
    assert reasons.get("bad_json", 0) >= 1
    assert reasons.get("not_an_object", 0) == 1
    assert reasons.get("bad_encoding", 0) == 1
    assert reasons.get("corrupt_file", 0) == 1
    (corrupt,) = [q for q in quarantine if q["reason"] == "corrupt_file"]
    assert corrupt["source_file"].endswith("truncated.jsonl.gz") and corrupt["line"] > 1
    wrong_type = sum(n for r, n in reasons.items() if "type" in r or "number" in r or "value" in r)
    assert wrong_type >= 3, reasons  # two JSON records and one CSV row with a non-number score
    # the good records of the truncated gzip before the cut were kept
    gz_read = corrupt["line"] - 1
    assert 0 < gz_read < gz_total
    kept_min = GOOD + 10 + 1 + gz_read
    assert stats["rows_out"] >= kept_min - 1, stats  # a record cut at the break may be quarantined instead

    record_result(
        "data_faults",
        {
            "rows_in": stats["rows_in"],
            "rows_out": stats["rows_out"],
            "dropped": stats["dropped_total"],
            "quarantined": stats["quarantined_total"],
            "quarantined_by_reason": reasons,
            "truncated_gzip_records_recovered": gz_read,
            "truncated_gzip_records_written": gz_total,
            "balanced": stats["balanced"],
        },
    )
