"""The data and tokenize stages end to end on a local Ray (2 CPUs), over every input format: a folder of
text files, JSONL, CSV, Parquet (one file corrupt) and a Hugging Face dataset saved to disk, each with
malformed records. Checks the accounting identity, the quarantine, equality with the in-process
reference runner, the packed sequences and tokenizer, skip-on-rerun, and early failure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.config import RecipeError, parse_recipe
from cluster.orchestrate import plan_stages, run_recipe
from cluster.runtime import ray_session
from pipelines.data.local import run_local, sorted_frame
from pipelines.data.quarantine import read_quarantine
from pipelines.data.stage import preflight
from tests.s3_server import local_s3

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SUBJECTS = [
    "The old farmer",
    "A young teacher",
    "The river pilot",
    "My neighbour",
    "The careful baker",
    "An engineer from the city",
    "The village doctor",
    "A quiet student",
]
ACTIONS = [
    "walked to the market and bought",
    "wrote a long letter about",
    "spent the whole evening reading about",
    "told the children a story about",
    "could not stop thinking about",
]
OBJECTS = [
    "the price of bread in the winter",
    "the ships that came up the river",
    "the history of the old bridge",
    "a garden full of roses and apple trees",
    "the storm that broke the windows of the school",
]


def sentence(i: int) -> str:
    return (
        f"{SUBJECTS[i % 8]} {ACTIONS[(i // 8) % 5]} {OBJECTS[(i // 40) % 5]}, and it was the {i}th time "
        f"that this had happened in the town."
    )


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, started before Ray so its workers reach it (tests/s3_server.py)."""
    with local_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def local_ray(s3_endpoint):
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    # text folder: one document per file, one file with invalid UTF-8
    (root / "text").mkdir()
    for i in range(12):
        (root / "text" / f"doc{i:02d}.txt").write_text(sentence(i) + "\n\n" + sentence(i + 100))
    (root / "text" / "broken.txt").write_bytes(b"caf\xe9 au lait is what the old farmer drank in the morning")
    # JSONL: good records, a duplicate, a near duplicate, PII, a corrupt line, bad bytes, a wrong type
    lines = [json.dumps({"text": sentence(200 + i), "score": float(rng.normal(10, 1))}) for i in range(40)]
    lines.append(json.dumps({"text": sentence(200), "score": 10.0}))  # exact duplicate of the first
    lines.append(json.dumps({"text": sentence(201).replace("town.", "town!"), "score": 9.0}))
    lines.append(
        json.dumps({"text": sentence(250) + " Write to ann@example.org or call 555-123-4567.", "score": 11.0})
    )
    lines.append(json.dumps({"text": sentence(251), "score": 500.0}))  # an outlier
    lines.append(json.dumps({"text": sentence(252), "score": None}))  # missing: filled with the mean
    lines.append('{"text": "cut off')
    lines.append(json.dumps({"text": sentence(253), "score": "lots"}))
    data = "\n".join(lines).encode() + b"\n" + b'{"text": "bad \xff byte"}\n'
    (root / "docs.jsonl").write_bytes(data)
    # CSV with a numeric column, a row with too many fields, a bad number
    csv_rows = ["text,score"] + [f'"{sentence(300 + i)}",{rng.normal(10, 1):.3f}' for i in range(30)]
    csv_rows += [f'"{sentence(331)}",1,2', f'"{sentence(332)}",ten']
    (root / "table.csv").write_text("\n".join(csv_rows) + "\n")
    # Parquet: one good file, one corrupt
    (root / "pq").mkdir()
    pq.write_table(
        pa.table({"body": [sentence(400 + i) for i in range(25)], "score": rng.normal(10, 1, 25)}),
        root / "pq" / "good.parquet",
    )
    (root / "pq" / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    # A Hugging Face dataset saved to disk
    import datasets

    datasets.Dataset.from_dict(
        {"text": [sentence(500 + i) for i in range(20)], "score": list(rng.normal(10, 1, 20))}
    ).save_to_disk(str(root / "hf"))
    return root


# what the malformed records of `inputs` (none in the HF dataset) end up as, by reason
EXPECTED_QUARANTINE = {
    "bad_csv_row": 1,
    "bad_encoding": 2,
    "bad_json": 1,
    "bad_type:score": 2,
    "unreadable_file": 1,
}

LOCAL_INPUTS = """
    - {{path: {root}/text, format: text}}
    - {{path: {root}/docs.jsonl}}
    - {{path: {root}/table.csv}}
    - {{path: {root}/pq, text_field: body}}
    - {{path: {root}/hf}}"""


def recipe_text(root, run_dir, extra: str = "", inputs: str = LOCAL_INPUTS) -> str:
    return f"""
name: datatest
run_dir: {run_dir}
cluster: {{num_cpus: 2}}
data:
  inputs:{inputs.format(root=root)}
  columns: {{score: float}}
  batch_size: 16
  operators:
    - {{op: clean_special_characters, newlines_tabs: space}}
    - {{op: normalize_whitespace}}
    - {{op: scrub_pii}}
    - {{op: quality_filter}}
    - {{op: exact_dedup}}
    - {{op: near_dedup, threshold: 0.7, ngram: 3}}
    - {{op: zscore_outliers, columns: [score], threshold: 3}}
    - {{op: fill_missing, strategy: mean, columns: [score]}}
    - {{op: lowercase, output: text_norm}}
tokenizer:
  vocab_size: 400
  seq_len: 32
  heldout_fraction: 0.2
  batch_size: 16
{extra}"""


@pytest.fixture(scope="module")
def first_run(local_ray, inputs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = parse_recipe(recipe_text(inputs, run_dir))
    results = run_recipe(cfg, only={"data", "tokenize"})
    return cfg, run_dir, results


def test_stages_ran_and_accounting_balances(first_run):
    cfg, run_dir, results = first_run
    assert [r.stage for r in results] == ["data", "tokenize"] and not any(r.skipped for r in results)
    stats = json.loads((run_dir / "data" / "stats.json").read_text())
    assert stats["balanced"], stats["identity"]
    assert stats["quarantined"] == EXPECTED_QUARANTINE
    assert stats["dropped"]["exact_duplicate"] == 1
    assert stats["dropped"]["near_duplicate"] >= 1
    assert stats["dropped"]["zscore_outlier"] == 1
    assert stats["pii"] == {"email": 1, "phone": 1, "docs_with_pii": 1}
    assert [i["records"] for i in stats["inputs"]] == [13, 48, 32, 26, 20]
    ops = stats["operators"]
    for before, after in zip(ops, ops[1:], strict=False):
        assert before["rows_out"] == after["rows_in"]
    assert ops[-1]["rows_out"] == stats["rows_out"]
    quarantine = read_quarantine(str(run_dir / "data" / "quarantine"))
    assert len(quarantine) == sum(stats["quarantined"].values())
    by_reason = {q["reason"]: q for q in quarantine}
    assert by_reason["bad_json"]["source_file"].endswith("docs.jsonl") and by_reason["bad_json"]["line"] == 46
    assert by_reason["bad_csv_row"]["line"] == 32
    assert by_reason["unreadable_file"]["source_file"].endswith("corrupt.parquet")
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert manifest["metrics"]["rows_out"] == stats["rows_out"]


def test_ray_output_equals_the_in_process_reference(first_run, tmp_path):
    cfg, run_dir, _ = first_run
    out = sorted_frame(pd.read_parquet(run_dir / "data" / "clean"))
    ref, counts, _, _ = run_local(cfg.data, preflight(cfg.data), cfg.seed, str(tmp_path / "q"))
    ref = sorted_frame(ref)
    assert out["row_id"].tolist() == ref["row_id"].tolist()
    assert out["text_norm"].tolist() == ref["text_norm"].tolist()
    np.testing.assert_allclose(out["score"].to_numpy(), ref["score"].to_numpy())
    assert not out["score"].isna().any()
    assert "<EMAIL>" in " ".join(out["text"]) and "ann@example.org" not in " ".join(out["text"])


def test_tokenize_outputs(first_run):
    from transformers import AutoTokenizer

    _, run_dir, _ = first_run
    stats = json.loads((run_dir / "tokenize" / "stats.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(run_dir / "tokenize" / "tokenizer"))
    assert len(tok) == 400 and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    train = pq.read_table(run_dir / "tokenize" / "train")
    held = pq.read_table(run_dir / "tokenize" / "heldout")
    assert train.schema.field("input_ids").type == pa.list_(pa.int32())
    assert train.schema.field("attention_mask").type == pa.list_(pa.int8())
    assert (
        train.num_rows == stats["train"]["sequences"] and held.num_rows == stats["heldout"]["sequences"] > 0
    )
    ids = np.array(train.column("input_ids").to_pylist())
    mask = np.array(train.column("attention_mask").to_pylist())
    pos = np.array(train.column("position_ids").to_pylist())
    assert ids.shape[1] == 32
    assert int(mask.sum()) == stats["train"]["tokens"]
    assert (ids[mask == 0] == tok.pad_token_id).all()
    flat_ids, flat_pos = ids[mask == 1], pos[mask == 1]
    after_eos = np.flatnonzero(flat_ids[:-1] == tok.eos_token_id) + 1
    assert (flat_pos[after_eos] == 0).all()  # a document starts after every separator
    assert (flat_ids == tok.eos_token_id).sum() == stats["train"]["docs"]
    text = tok.decode(ids[0][mask[0] == 1])
    assert "</s>" in text or len(text) > 20
    assert stats["docs"] == json.loads((run_dir / "data" / "stats.json").read_text())["rows_out"]


def test_rerun_skips_and_vocab_change_redoes_only_tokenize(first_run, inputs):
    cfg, run_dir, _ = first_run
    again = run_recipe(cfg, only={"data", "tokenize"})
    assert [r.skipped for r in again] == [True, True]
    changed = parse_recipe(recipe_text(inputs, run_dir), overrides=["tokenizer.vocab_size=300"])
    after = run_recipe(changed, only={"data", "tokenize"})
    assert [(r.stage, r.skipped) for r in after] == [("data", True), ("tokenize", False)]
    assert after[1].manifest.metrics["vocab_size"] == 300


def test_train_sequences_are_shuffled_and_none_is_lost(first_run, inputs):
    """`tokenizer.shuffle` (the default) writes the same train sequences as `shuffle: false`, in another,
    seeded order (pretraining streams the files in order, so source order would be training order)."""
    _, run_dir, _ = first_run

    def rows() -> list[tuple]:
        table = pq.read_table(run_dir / "tokenize" / "train")
        return [tuple(r) for r in table.column("input_ids").to_pylist()]

    vocab = ["tokenizer.vocab_size=300"]  # the settings the tokenize folder holds after the re-run test
    run_recipe(parse_recipe(recipe_text(inputs, run_dir), overrides=vocab), only={"data", "tokenize"})
    shuffled = rows()
    plain = parse_recipe(recipe_text(inputs, run_dir), overrides=[*vocab, "tokenizer.shuffle=false"])
    run_recipe(plain, only={"data", "tokenize"})
    ordered = rows()
    assert len(shuffled) > 20
    assert sorted(shuffled) == sorted(ordered)  # the same sequences
    moved = sum(a != b for a, b in zip(shuffled, ordered, strict=True))
    assert moved > len(ordered) // 2, moved


def test_bad_recipe_fails_before_any_work(inputs, tmp_path):
    text = recipe_text(inputs, tmp_path / "run").replace(
        "- {op: lowercase, output: text_norm}", "- {op: iqr_outliers, columns: [length]}"
    )
    with pytest.raises(RecipeError, match="needs column 'length'"):
        parse_recipe(text)
    # a column the recipe declares but an input lacks: found when planning, before Ray does anything
    missing = recipe_text(inputs, tmp_path / "run").replace(
        "{path: " + str(inputs) + "/pq, text_field: body}", "{path: " + str(inputs) + "/pq}"
    )
    with pytest.raises(RecipeError, match=r"inputs\[3\].*has no text column 'text'"):
        plan_stages(parse_recipe(missing))
    assert not (tmp_path / "run").exists()


def test_global_statistics_on_ray_equal_pandas(local_ray):
    import ray

    from pipelines.data.engine import pandas_stats, ray_stats
    from pipelines.data.ops.base import StatRequest

    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, 3000)
    x[::13] = np.nan
    df = pd.DataFrame({"x": x, "s": ["a" if i % 7 else None for i in range(3000)]})
    requests = [
        StatRequest("mean", "x"),
        StatRequest("std", "x", ddof=0),
        StatRequest("std", "x", ddof=1),
        StatRequest("quantile", "x", q=0.25),
        StatRequest("quantile", "x", q=0.75),
        StatRequest("missing_ratio", "x"),
        StatRequest("missing_ratio", "s"),
    ]
    got = ray_stats(ray.data.from_pandas(df).repartition(7), requests)
    expected = pandas_stats(df, requests)
    assert got == pytest.approx(expected, rel=1e-12)


S3_INPUTS = """
    - {{path: "s3://corpus/raw/text", format: text}}
    - {{path: "s3://corpus/raw/docs.jsonl.gz"}}
    - {{path: "s3://corpus/raw/table.csv"}}
    - {{path: "s3://corpus/raw/pq", text_field: body}}"""


def test_s3_inputs_give_what_the_same_local_files_give(local_ray, s3_endpoint, inputs, tmp_path):
    """The same files read from `s3://` (a moto server on 127.0.0.1; the JSONL gzipped on the way) by the
    Ray data stage give the rows and quarantine that the in-process runner gives on the local copies."""
    import gzip

    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="corpus")
    for f in sorted(p for p in inputs.rglob("*") if p.is_file() and "hf" not in p.parts):
        key = "raw/" + str(f.relative_to(inputs))
        body = f.read_bytes()
        if f.name == "docs.jsonl":
            key, body = key + ".gz", gzip.compress(body)
        client.put_object(Bucket="corpus", Key=key, Body=body)

    run_dir = tmp_path / "run"
    cfg = parse_recipe(recipe_text(inputs, run_dir, inputs=S3_INPUTS))
    results = run_recipe(cfg, only={"data"})
    assert [r.stage for r in results] == ["data"]
    stats = json.loads((run_dir / "data" / "stats.json").read_text())
    assert stats["balanced"], stats["identity"]
    assert [i["records"] for i in stats["inputs"]] == [13, 48, 32, 26]
    assert stats["quarantined"] == EXPECTED_QUARANTINE
    quarantine = read_quarantine(str(run_dir / "data" / "quarantine"))
    assert {q["source_file"] for q in quarantine if q["reason"] == "bad_json"} == {"corpus/raw/docs.jsonl.gz"}

    local_inputs = "\n".join(LOCAL_INPUTS.splitlines()[:-1])  # the same inputs, without the HF dataset
    local_cfg = parse_recipe(recipe_text(inputs, tmp_path / "local", inputs=local_inputs))
    ref, _, _, _ = run_local(local_cfg.data, preflight(local_cfg.data), local_cfg.seed, str(tmp_path / "q"))
    out = pd.read_parquet(run_dir / "data" / "clean")
    assert len(out) == len(ref) == stats["rows_out"]
    assert sorted(out["text_norm"]) == sorted(ref["text_norm"])


def test_the_read_is_fused_with_the_cleaning(local_ray, tmp_path):
    """Ray Data fuses a read into the maps after it only when none asks for a batch size or a minimum
    of rows per file; fused, a read goes as fast as its cleaning and the raw input never waits in the
    object store (docs/data.md, "Where the memory goes")."""
    from pipelines.data.config import DataConfig
    from pipelines.data.engine import RayEngine
    from pipelines.data.readers import expand_inputs
    from pipelines.data.stats import remote_reporter
    from pipelines.data.steps import Step

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):  # enough files for one read task per file on 2 CPUs
        rows = [json.dumps({"text": f"Doc {i}-{k}: The Cats are RUNNING."}) for k in range(50)]
        (folder / f"part-{i}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = DataConfig.model_validate(
        {"inputs": [{"path": str(folder), "format": "jsonl"}], "operators": [{"op": "lowercase"}]}
    )
    engine = RayEngine(cfg, str(tmp_path / "out"), 0, expand_inputs(cfg), remote_reporter(), print)
    schema = cfg.initial_schema()
    ds = engine._segment(engine.source(schema), [Step(0, cfg.operators[0])], schema, report=False)
    stats = ds.materialize().stats()
    assert "ReadRecordFile->MapBatches(parse_batch)->MapBatches(segment_chunks)" in stats, stats[:2000]
