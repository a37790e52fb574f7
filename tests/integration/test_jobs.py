"""`raylm submit|jobs|logs|stop` against a real two-node Ray cluster (head + worker, separate processes)
started by the test on 127.0.0.1 with token auth, and torn down by PID afterwards."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.jobs import connect, wait

from .local_cluster import LocalRayCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow]

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_cluster():
    with LocalRayCluster(workers=1) as c:
        yield c
        # no job of ours is left running on it
        client = connect(c.dashboard_url, token=c.token)
        running = [j.submission_id for j in client.list_jobs() if not j.status.is_terminal()]
        for job_id in running:
            client.stop_job(job_id)
        assert not running, f"jobs left running: {running}"


def cli(cluster: LocalRayCluster, *args: str, token: str | None = None):
    env = {"RAY_AUTH_TOKEN": token or cluster.token, "RAY_API_SERVER_ADDRESS": None, "COLUMNS": "250"}
    return runner.invoke(app, [*args, "--address", cluster.dashboard_url], env=env)


@pytest.fixture(autouse=True)
def _token(ray_cluster, monkeypatch):
    # library calls (connect) read the token as Ray does: from the environment
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_cluster.token)


def _job_id(output: str) -> str:
    for word in output.split():
        if word.startswith("raylm-"):
            return word
    raise AssertionError(f"no job id in:\n{output}")


def test_cluster_has_two_nodes(ray_cluster):
    assert ray_cluster.alive_nodes() == 2


def test_short_recipe_runs_to_succeeded_on_the_cluster(ray_cluster, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\nseed: 3\n")
    out = cli(ray_cluster, "submit", str(recipe), "--set", f"cluster.storage={tmp_path / 'shared'}", "--wait")
    assert out.exit_code == 0, out.output
    job_id = _job_id(out.output)
    assert f"-> {tmp_path / 'shared' / 'tiny'}" in out.output
    # the run read the shipped recipe (the local staging folder is already gone) and ran as raylm
    assert "tiny: the recipe has no stage sections, nothing to run" in out.output
    assert "SUCCEEDED" in out.output

    info = connect(ray_cluster.dashboard_url).get_job_info(job_id)
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_"), info.runtime_env
    assert ".raylm-job/recipe.yaml" in info.entrypoint and "cluster.address=null" in info.entrypoint
    assert info.metadata["raylm.run_dir"] == str(tmp_path / "shared" / "tiny")

    listed = cli(ray_cluster, "jobs")
    assert listed.exit_code == 0 and job_id in listed.output and "SUCCEEDED" in listed.output, listed.output
    logs = cli(ray_cluster, "logs", job_id)
    assert logs.exit_code == 0 and "nothing to run" in logs.output


def test_data_stage_runs_on_both_nodes_and_writes_to_the_shared_storage(ray_cluster, tmp_path):
    import json

    from pipelines.run_folder import RunFolder

    docs = [{"text": f"Record number {i} says the river rose by {i} inches in the night."} for i in range(60)]
    docs += docs[:10]  # ten exact duplicates to drop
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    recipe = tmp_path / "data.yaml"
    recipe.write_text(f"name: jobdata\ndata:\n  inputs:\n    - {{path: {tmp_path / 'docs.jsonl'}}}\n"
                      "  operators:\n    - {op: exact_dedup}\n")
    shared = tmp_path / "shared"
    out = cli(ray_cluster, "submit", str(recipe), "--set", f"cluster.storage={shared}", "--wait")
    assert out.exit_code == 0 and "SUCCEEDED" in out.output, out.output
    assert "Ray: 2 CPUs" in out.output  # the run used the two-node cluster, not an embedded Ray
    manifests = RunFolder(str(shared / "jobdata")).manifests()
    assert "data" in manifests, manifests
    metrics = manifests["data"].metrics
    assert (metrics["rows_in"], metrics["rows_out"], metrics["dropped"]) == (70, 60, 10), metrics


def test_recipe_invalid_on_the_cluster_fails_with_its_error_in_the_logs(ray_cluster, tmp_path):
    shared = tmp_path / "bad.yaml"  # a recipe on the cluster's storage, validated only there
    shared.write_text("name: bad\ncluster:\n  num_cpu: 2\n")
    out = cli(ray_cluster, "submit", str(shared), "--recipe-on-cluster", "--wait")
    assert out.exit_code == 1, out.output
    job_id = _job_id(out.output)
    assert "FAILED" in out.output
    logs = cli(ray_cluster, "logs", job_id)
    assert logs.exit_code == 1
    assert "bad.yaml:3: cluster.num_cpu: unknown key (did you mean 'num_cpus'?)" in logs.output
    assert "FAILED" in logs.output


def test_recipe_path_missing_on_the_cluster_fails_clearly(ray_cluster, tmp_path):
    out = cli(ray_cluster, "submit", str(tmp_path / "nowhere.yaml"), "--recipe-on-cluster", "--wait")
    assert out.exit_code == 1, out.output
    assert "nowhere.yaml: recipe file not found" in out.output
    assert "FAILED" in out.output


def test_code_from_a_packed_zip_runs_and_a_missing_zip_fails_in_setup(ray_cluster, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: zipped\nrun_dir: {tmp_path / 'run'}\n")
    packed = runner.invoke(app, ["pack-code", str(tmp_path / "raylm-code.zip")])
    assert packed.exit_code == 0, packed.output
    out = cli(ray_cluster, "submit", str(recipe), "--code", f"file://{tmp_path / 'raylm-code.zip'}", "--wait")
    assert out.exit_code == 0 and "nothing to run" in out.output and "SUCCEEDED" in out.output, out.output

    # a code zip the nodes cannot fetch: the job fails while Ray sets up its runtime env
    missing = f"file://{tmp_path / 'gone' / 'raylm-code.zip'}"
    out = cli(ray_cluster, "submit", str(recipe), "--code", missing, "--wait")
    assert out.exit_code == 1, out.output
    assert "FAILED (RUNTIME_ENV_SETUP_FAILURE)" in out.output
    assert f"No such file or directory: '{tmp_path / 'gone' / 'raylm-code.zip'}'" in out.output
    logs = cli(ray_cluster, "logs", _job_id(out.output))
    assert logs.exit_code == 1 and "RUNTIME_ENV_SETUP_FAILURE" in logs.output


def test_stop_ends_a_running_job(ray_cluster):
    client = connect(ray_cluster.dashboard_url)
    job_id = client.submit_job(entrypoint="python -c 'import time; time.sleep(120)'",
                               metadata={"raylm.recipe": "sleeper"})
    deadline = time.monotonic() + 60
    while str(client.get_job_status(job_id)) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    out = cli(ray_cluster, "stop", job_id)
    assert out.exit_code == 0 and "STOPPED" in out.output, out.output
    assert str(wait(client, job_id, timeout_s=10).status) == "STOPPED"


def test_wrong_token_and_unknown_job_are_clear_errors(ray_cluster):
    out = cli(ray_cluster, "jobs", token="not-the-token")
    assert out.exit_code == 2 and "the token was refused" in out.output, out.output
    out = cli(ray_cluster, "logs", "raylm-no-such-job")
    assert out.exit_code == 2 and "no job 'raylm-no-such-job' on this cluster" in out.output, out.output
