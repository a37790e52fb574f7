from __future__ import annotations

import json

import pytest

from pipelines.run_folder import MANIFEST, RunFolder, config_hash, join, read_manifest, write_json_atomic


def _body(calls, value=1):
    def body(out):
        calls.append(out)
        with open(f"{out}/result.txt", "w") as f:
            f.write(str(value))
        return {"value": value}

    return body


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_stage_runs_once_then_is_skipped(tmp_path):
    run = RunFolder(str(tmp_path))
    calls: list[str] = []
    first = run.run_stage("data", {"k": 1}, {}, _body(calls))
    assert not first.skipped and len(calls) == 1
    m = json.loads((tmp_path / "data" / MANIFEST).read_text())
    assert m["stage"] == "data" and m["config"] == {"k": 1} and m["metrics"] == {"value": 1}
    assert m["config_hash"] == config_hash({"k": 1}) and "torch" in m["versions"]
    assert m["timings"]["wall_s"] >= 0
    second = run.run_stage("data", {"k": 1}, {}, _body(calls))
    assert second.skipped and len(calls) == 1 and second.manifest.metrics == {"value": 1}


def test_changed_config_or_force_redoes(tmp_path):
    run = RunFolder(str(tmp_path))
    calls: list[str] = []
    run.run_stage("data", {"k": 1}, {}, _body(calls))
    run.run_stage("data", {"k": 2}, {}, _body(calls, 2))
    assert len(calls) == 2 and (tmp_path / "data" / "result.txt").read_text() == "2"
    run.run_stage("data", {"k": 2}, {}, _body(calls, 3), force=True)
    assert len(calls) == 3 and read_manifest(str(tmp_path / "data")).metrics == {"value": 3}


def test_upstream_change_invalidates_downstream(tmp_path):
    run = RunFolder(str(tmp_path))
    calls: list[str] = []
    run.run_stage("data", {"k": 1}, {}, _body(calls))
    inputs = {"data": run.stage_dir("data")}
    run.run_stage("train", {"lr": 1}, inputs, _body(calls))
    assert run.run_stage("train", {"lr": 1}, inputs, _body(calls)).skipped
    run.run_stage("data", {"k": 9}, {}, _body(calls))  # upstream redone with another config
    again = run.run_stage("train", {"lr": 1}, inputs, _body(calls))
    assert not again.skipped and len(calls) == 4
    assert again.manifest.inputs["data"]["stage"] == "data"


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    from tests.s3_server import local_s3

    with local_s3():
        import boto3

        boto3.client("s3").create_bucket(Bucket="runs")
        yield "s3://runs/r1"


def test_a_folder_inside_a_stage_carries_that_stages_fingerprint(run_root):
    """`finetune/dpo/merged` has no manifest of its own: a stage reading it is redone when the stage that
    wrote it is (the quickstart once kept serving a stale compress output because it was not); in a local
    run folder and in one on S3."""
    run = RunFolder(run_root)

    def nested(value):
        def body(out):
            write_json_atomic(join(out, "dpo", "merged", "config.json"), {"v": value})
            return {"value": value}

        return body

    def plain(out):
        write_json_atomic(join(out, "result.json"), {})
        return {}

    run.run_stage("finetune", {"k": 1}, {}, nested(1))
    inputs = {"base": join(run.root, "finetune", "dpo", "merged")}
    first = run.run_stage("compress", {"m": 1}, inputs, plain)
    assert first.manifest.inputs["base"]["stage"] == "finetune"
    owner = read_manifest(join(run.root, "finetune"))
    assert first.manifest.inputs["base"]["fingerprint"] == owner.fingerprint()
    assert run.run_stage("compress", {"m": 1}, inputs, plain).skipped
    run.run_stage("finetune", {"k": 2}, {}, nested(2))  # the writer redone with another config
    assert not run.run_stage("compress", {"m": 1}, inputs, plain).skipped
    write_json_atomic(join(run.root, "mine", "data.json"), {})  # outside any stage: no fingerprint
    outside = run.run_stage("other", {}, {"d": join(run.root, "mine")}, plain)
    assert outside.manifest.inputs["d"]["fingerprint"] is None


def test_failed_stage_leaves_no_manifest_and_is_redone(tmp_path):
    run = RunFolder(str(tmp_path))

    def boom(out):
        (tmp_path / "data" / "partial.txt").write_text("half")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run.run_stage("data", {"k": 1}, {}, boom)
    assert read_manifest(str(tmp_path / "data")) is None
    calls: list[str] = []
    res = run.run_stage("data", {"k": 1}, {}, _body(calls))
    assert not res.skipped and not (tmp_path / "data" / "partial.txt").exists()


def test_manifests_lists_finished_stages(tmp_path):
    run = RunFolder(str(tmp_path))
    run.run_stage("a", {}, {}, _body([]))
    run.run_stage("b", {}, {}, _body([]))
    (tmp_path / "unfinished").mkdir()
    assert set(run.manifests()) == {"a", "b"}
    assert not list(tmp_path.glob("a/.*.tmp"))  # the atomic write cleaned up after itself
