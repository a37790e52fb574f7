from __future__ import annotations

import json

from typer.testing import CliRunner

from cluster.cli import app
from pipelines.run_folder import RunFolder

runner = CliRunner()


def test_help_lists_commands_and_each_has_examples():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for cmd in ("run", "doctor", "status", "setup", "keys"):
        assert cmd in out.output
        sub = runner.invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0 and "Example" in sub.output, cmd


def test_bad_recipe_exits_2_naming_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncluster:\n  num_cpu: 2\n")
    out = runner.invoke(app, ["run", str(bad)])
    assert out.exit_code == 2
    assert "bad.yaml:3: cluster.num_cpu: unknown key (did you mean 'num_cpus'?)" in out.output


def test_dry_run_starts_nothing(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: dry\nrun_dir: {tmp_path / 'run'}\n")
    out = runner.invoke(app, ["run", str(recipe), "--dry-run", "--set", "cluster.num_cpus=1"])
    assert out.exit_code == 0, out.output
    assert "plan for dry" in out.output
    assert not (tmp_path / "run").exists()


def test_keys_documents_sections():
    out = runner.invoke(app, ["keys", "cluster"])
    assert out.exit_code == 0 and "cluster.num_cpus" in out.output and "127.0.0.1" in out.output
    assert runner.invoke(app, ["keys", "nosuch"]).exit_code == 2


def test_status_shows_stages_and_metrics(tmp_path):
    RunFolder(str(tmp_path)).run_stage("data", {"k": 1}, {}, lambda out: {"rows_out": 42})
    out = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "data" in out.output and "rows_out=42" in out.output
    assert runner.invoke(app, ["status", str(tmp_path / "missing")]).exit_code == 2


def test_doctor_json_reports_every_component():
    out = runner.invoke(app, ["doctor", "--json"])
    rows = {r["name"]: r for r in json.loads(out.output)}
    for name in ("python", "torch", "ray", "deepspeed", "vllm", "memory", "disk"):
        assert name in rows, name
        assert rows[name]["status"] in ("ok", "warn"), rows[name]
    assert "CPU ISA" in rows["torch"]["detail"]
    assert "accelerator cpu" in rows["deepspeed"]["detail"]
    assert "platform cpu" in rows["vllm"]["detail"]
    for name in ("punkt_tab", "wordnet", "corpus", "instructions", "reference_model"):
        assert name in rows, name
        assert rows[name]["status"] == "ok", rows[name]
