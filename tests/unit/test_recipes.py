"""Every recipe in pipelines/recipes/ validates with `raylm run --dry-run` (the GPU-cluster ones too, on
this CPU machine), and the plan shows resources, the DeepSpeed layout and memory per worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli import app

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("pipelines", "recipes").glob("*.yaml"))
runner = CliRunner()

pytestmark = [pytest.mark.assets]


def test_the_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"quickstart", "reference", "pretrain-1b-gpu", "finetune-7b-lora-gpu"}


SETS = {
    # its init_from is another run's output (prune-reference.yaml's); the reference model stands in for it
    "recover-pruned": ["--set", "pretrain.init_from=assets:models/SmolLM2-135M-Instruct"],
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_in_dry_run(recipe, tmp_path, assets):
    run_dir = tmp_path / "run"
    sets = SETS.get(recipe.stem, [])
    out = runner.invoke(app, ["run", str(recipe), "--dry-run", "--set", f"run_dir={run_dir}", *sets])
    assert out.exit_code == 0, out.output
    assert "valid: a run would run these stages" in out.output
    assert "PROBLEM" not in out.output
    assert not run_dir.exists()  # a dry run writes nothing
    for stage in ("finetune", "pretrain"):
        if f"] {stage}" in out.output:  # every training stage shows its layout and memory
            block = out.output.split(f"] {stage}", 1)[1].split("\n[", 1)[0]
            assert "Ray Train workers" in block and "DeepSpeed ZeRO-" in block, block
            assert "GiB" in block and "per worker, estimated" in block, block


def test_gpu_recipes_plan_gpu_workers_and_their_memory(tmp_path, assets):
    out = runner.invoke(
        app,
        [
            "run",
            "pipelines/recipes/finetune-7b-lora-gpu.yaml",
            "--dry-run",
            "--set",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "4 Ray Train workers x (8 CPU + 1 GPU)" in out.output
    assert "6.738 B parameters" in out.output  # Llama-2-7B's shape
    assert "finetune.base: /mnt/shared/models/Llama-2-7b-hf is not on this machine" in out.output


def test_continued_pretraining_plans_the_folders_model(tmp_path, assets):
    run = ["run", "pipelines/recipes/recover-pruned.yaml", "--dry-run", "--set", f"run_dir={tmp_path}/run"]
    out = runner.invoke(app, [*run, *SETS["recover-pruned"]])
    assert out.exit_code == 0, out.output
    # the reference model's shape, read from its folder, not a preset's
    assert "0.135 B parameters, hidden 576, 30 layers, vocab 49,152" in out.output
    # the folder the recipe names is another run's output: until that run exists, the plan says so
    out = runner.invoke(app, run)
    assert out.exit_code == 2, out.output
    missing = "runs/prune-reference/compress/prune_structured is not a folder"
    assert f"PROBLEM:   pretrain.init_from: {missing}" in out.output


def test_a_broken_input_fails_the_dry_run(tmp_path, assets):
    out = runner.invoke(
        app,
        [
            "run",
            "pipelines/recipes/reference.yaml",
            "--dry-run",
            "--set",
            f"run_dir={tmp_path / 'run'}",
            "--set",
            "finetune.base=/nowhere/model",
        ],
    )
    assert out.exit_code == 2, out.output
    assert "PROBLEM:   finetune.base: /nowhere/model: no such model folder" in out.output


def test_pipeline_layout_shows_in_the_plan(tmp_path, assets):
    out = runner.invoke(app, ["run", "pipelines/recipes/pretrain-1b-gpu.yaml", "--dry-run", "--set",
                              f"run_dir={tmp_path / 'run'}", "--set", "pretrain.parallel.pp=2",
                              "--set", "pretrain.zero_stage=1"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "4 data-parallel x tensor 1 x pipeline 2" in out.output
    assert "stage 1: block" in out.output  # the pretrain planner's per-stage layout (describe_layout)
    assert "weights 1.02" in out.output  # half of the 1.1 B bf16 weights on each pipeline stage
