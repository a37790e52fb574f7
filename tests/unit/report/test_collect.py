"""collect(): what the report reads from a run folder, for every stage layout, and how it copes with
stages that did not run and files that are missing or torn."""

from __future__ import annotations

from pipelines.report.collect import collect
from tests.unit.report.conftest import make_run


def test_collects_every_stage_of_a_full_run(full_run):
    run = collect(str(full_run))
    assert list(run.manifests) == ["data", "tokenize", "pretrain", "finetune", "compress", "serve"]
    assert run.data_stats["rows_out"] == 900
    assert run.tokenize_stats["tokenizer"]["vocab_size"] == 8000
    assert [r["step"] for r in run.pretrain_history if r["kind"] == "eval"] == [20, 40]
    assert [p.name for p in run.finetune_passes] == ["sft", "dpo"]
    assert run.finetune_passes[1].summary["heldout_after"]["heldout_accuracy"] == 0.65
    assert any("margin" in r for r in run.finetune_passes[1].history)
    assert set(run.compress["methods"]) == {"quantize-w8a8", "prune_structured"}
    assert [s["model"] for s in run.serve_samples] == ["base", "tuned", "tuned"]
    assert run.notes == []


def test_single_objective_finetune_reads_the_stage_folder(tmp_path):
    run = collect(str(make_run(tmp_path / "r", stages=("finetune",), objective="reward")))
    assert [p.name for p in run.finetune_passes] == ["reward"]
    assert run.finetune_passes[0].summary["objective"] == "reward"
    assert len(run.finetune_passes[0].history) == 10  # 8 train steps + 2 evaluations


def test_missing_stages_and_folders_give_an_empty_run(tmp_path):
    assert collect(str(tmp_path / "does-not-exist")).manifests == {}
    run = collect(str(make_run(tmp_path / "r", stages=("data",))))
    assert list(run.manifests) == ["data"] and run.pretrain_history == [] and run.compress is None


def test_torn_history_and_broken_json_become_notes(full_run):
    with open(full_run / "pretrain" / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a run killed mid-write
    (full_run / "data" / "stats.json").write_text("{not json")
    (full_run / "serve" / "manifest.json").write_text("[]")  # not a manifest: the stage counts as not run
    run = collect(str(full_run))
    assert len(run.pretrain_history) == 42
    assert run.data_stats is None
    assert "serve" not in run.manifests
    assert any("metrics.jsonl: 1 unreadable line" in n for n in run.notes), run.notes
    assert any("stats.json: unreadable" in n for n in run.notes), run.notes
