"""`raylm submit` and friends without a cluster: addresses, tokens, what a job carries, and the errors
a user sees before anything is sent."""

from __future__ import annotations

import socket
import time
import zipfile

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.jobs import JobsError, auth_token, dashboard_url, package_run, write_code_zip

runner = CliRunner()


def test_dashboard_url_normalises_and_refuses_other_ray_addresses():
    assert dashboard_url("head:8265") == "http://head:8265"
    assert dashboard_url("https://head.example.com/") == "https://head.example.com"
    with pytest.raises(JobsError, match="Ray Client address"):
        dashboard_url("ray://head:10001")
    with pytest.raises(JobsError, match="GCS port"):
        dashboard_url("head:6379")


def test_token_is_looked_up_as_ray_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert auth_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert auth_token() == "from-home"
    (tmp_path / "tok").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(JobsError, match="RAY_AUTH_TOKEN_PATH"):
        auth_token()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_fails_fast_with_a_clear_message(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nrun_dir: {tmp_path / 'run'}\n")
    address = f"http://127.0.0.1:{_closed_port()}"
    for args in (["submit", str(recipe)], ["jobs"], ["logs", "raylm-x"], ["stop", "raylm-x"]):
        t0 = time.perf_counter()
        out = runner.invoke(app, [*args, "--address", address], env={"COLUMNS": "200"})
        assert out.exit_code == 2, out.output
        assert f"cannot reach a Ray dashboard at {address}" in out.output
        assert time.perf_counter() - t0 < 5


def test_submit_refuses_a_run_without_shared_storage_before_sending(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    with pytest.raises(JobsError, match="needs storage every node sees"):
        package_run(recipe)
    recipe.write_text("name: r\nrun_dir: runs/r\n")
    with pytest.raises(JobsError, match="relative"):
        package_run(recipe)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: r\ncluster:\n  storag: /x\n")
    out = runner.invoke(app, ["submit", str(bad), "--address", "http://127.0.0.1:1"], env={"COLUMNS": "200"})
    assert out.exit_code == 2
    assert "bad.yaml:3: cluster.storag: unknown key (did you mean 'storage'?)" in out.output


def test_package_carries_recipe_code_and_cluster_address(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: demo\ncluster:\n  address: 10.0.0.1:6379\n")
    pkg = package_run(recipe, ["cluster.storage=s3://bucket/raylm", "seed=4"], force=["data"],
                      env_vars={"A": "1"})
    try:
        staged = pkg.staged
        assert (staged / ".raylm-job" / "recipe.yaml").read_text() == recipe.read_text()
        assert (staged / "cluster" / "jobs.py").is_file() and (staged / "pipelines" / "metrics.py").is_file()
        assert not list(staged.rglob("__pycache__"))
        assert pkg.run_dir == "s3://bucket/raylm/demo"
        assert pkg.entrypoint == (
            "python -m cluster run .raylm-job/recipe.yaml --set cluster.storage=s3://bucket/raylm "
            "--set seed=4 --set run_dir=s3://bucket/raylm/demo --set cluster.address=null --force data")
        assert pkg.runtime_env["working_dir"] == str(staged) and pkg.runtime_env["env_vars"]["A"] == "1"
        assert pkg.metadata["raylm.recipe"] == "demo" and pkg.submission_id.startswith("raylm-demo-")
    finally:
        pkg.cleanup()
    assert not staged.exists()

    image = package_run(recipe, ["cluster.storage=/mnt/shared"], code="image")
    assert not (image.staged / "cluster").exists() and (image.staged / ".raylm-job" / "recipe.yaml").exists()
    image.cleanup()
    zipped = package_run(recipe, ["cluster.storage=/mnt/shared"], code="s3://b/raylm-code.zip")
    assert zipped.runtime_env["py_modules"] == ["s3://b/raylm-code.zip"]
    zipped.cleanup()
    with pytest.raises(JobsError, match="pack-code"):
        package_run(recipe, ["cluster.storage=/mnt/shared"], code="s3://b/raylm.tar.gz")


def test_code_zip_has_one_top_level_folder_with_the_packages(tmp_path):
    path = write_code_zip(tmp_path / "code.zip")
    names = zipfile.ZipFile(path).namelist()
    assert {n.split("/")[0] for n in names} == {"raylm"}
    assert {"raylm/cluster/cli.py", "raylm/pipelines/run_folder.py"} <= set(names)
    assert not [n for n in names if n.endswith(".pyc")]


def test_ops_commands_have_help_with_examples():
    for cmd in ("submit", "jobs", "logs", "stop", "pack-code", "k8s"):
        out = runner.invoke(app, [cmd, "--help"])
        assert out.exit_code == 0 and "Example" in out.output, cmd
