"""The compress stage: recipe section validation, the planner's refusals before work starts, and a whole
stage run on the tiny model writing one folder + manifest per method and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import RecipeError, parse_recipe
from pipelines.run_folder import RunFolder, read_manifest

RECIPE = """\
name: comp
run_dir: {run}
compress:
  base: {base}
  heldout: {heldout}
  eval_tokens: 256
  seq_len: 64
  gen_tokens: 4
  methods:
    - {{method: quantize, scheme: W8A8}}
    - {{method: quantize, scheme: W4A16, group_size: 32}}
    - {{method: prune_structured, heads_per_group: 1, mlp_fraction: 0.25, calibration_samples: 2}}
    - {{method: prune_unstructured, sparsity: 0.5, criterion: wanda, calibration_samples: 2}}
    - {{method: weight_share, group_size: 2, recovery_steps: 2}}
    - {{method: layer_drop, drop_layers: 2, steps: 2, batch_size: 2, compare: false}}
"""


def _recipe(tmp_path, tiny_base, heldout_file, text=RECIPE):
    return text.format(run=tmp_path / "run", base=tiny_base, heldout=heldout_file)


def test_bad_method_settings_named_with_line(tmp_path, tiny_base, heldout_file):
    text = _recipe(tmp_path, tiny_base, heldout_file).replace("scheme: W8A8", "scheme: W3A3")
    text = text.replace("sparsity: 0.5", "sparsity: 1.0")
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, "r.yaml")
    problems = exc.value.problems
    assert any(p.startswith("r.yaml:10: compress.methods.0.scheme") and "W8A8, W4A16" in p for p in problems)
    assert any(
        p.startswith("r.yaml:13: compress.methods.3.sparsity") and "between 0 and 1" in p for p in problems
    )
    with pytest.raises(RecipeError, match="unknown method 'quantise'"):
        parse_recipe(_recipe(tmp_path, tiny_base, heldout_file).replace("quantize, scheme: W8A8", "quantise"))


def test_planner_refuses_settings_that_do_not_fit_the_base(tmp_path, tiny_base, heldout_file):
    from cluster.stages.compress import plan

    text = _recipe(tmp_path, tiny_base, heldout_file).replace("heads_per_group: 1", "heads_per_group: 3")
    recipe = parse_recipe(text)
    with pytest.raises(RecipeError) as exc:
        plan(recipe, RunFolder(recipe.resolved_run_dir()))
    assert (
        "compress.methods[2] (prune_structured): heads_per_group=3 would prune every head"
        in exc.value.problems[0]
    )
    assert not Path(recipe.resolved_run_dir(), "compress").exists()  # refused before any work


def test_base_defaults_to_this_runs_pretrained_model(tmp_path):
    from cluster.stages.compress import base_folder

    recipe = parse_recipe(f"name: x\nrun_dir: {tmp_path}\ncompress:\n  methods: [{{method: quantize}}]\n")
    with pytest.raises(RecipeError, match="needs `compress.base`"):
        base_folder(recipe, RunFolder(str(tmp_path)))
    (tmp_path / "pretrain" / "model").mkdir(parents=True)
    assert base_folder(recipe, RunFolder(str(tmp_path)))[0] == str(tmp_path / "pretrain" / "model")


def test_stage_writes_folders_manifests_and_report(tmp_path, tiny_base, heldout_file):
    from cluster.stages.compress import plan

    recipe = parse_recipe(_recipe(tmp_path, tiny_base, heldout_file))
    folder = RunFolder(recipe.resolved_run_dir())
    p = plan(recipe, folder)
    result = folder.run_stage(p.name, p.config, p.inputs, p.body)
    out = Path(result.folder)
    names = [
        "quantize-w8a8",
        "quantize-w4a16",
        "prune_structured",
        "prune_wanda-0.5",
        "weight_share-2",
        "layer_drop-2",
    ]
    base = result.manifest.metrics["base"]
    for name in names:
        m = read_manifest(str(out / name))
        assert m is not None and m.stage == f"compress/{name}"
        for key in ("parameters", "size_bytes", "bytes_per_parameter", "perplexity", "hf_tokens_per_s"):
            assert m.metrics[key] > 0, (name, key)
        assert m.inputs["base"]["path"] == tiny_base
    w8 = read_manifest(str(out / "quantize-w8a8")).metrics
    w4 = read_manifest(str(out / "quantize-w4a16")).metrics
    assert w4["bytes_per_parameter"] < w8["bytes_per_parameter"] < base["bytes_per_parameter"]
    pruned = read_manifest(str(out / "prune_structured")).metrics
    assert pruned["parameters"] < base["parameters"] and pruned["size_bytes"] < base["size_bytes"]
    shared = read_manifest(str(out / "weight_share-2")).metrics
    assert shared["parameters"] == base["parameters"]  # the standard (untied) export ...
    assert shared["method_info"]["unique_parameters"] < base["parameters"]  # ... of a shared model
    assert read_manifest(str(out / "layer_drop-2")).metrics["parameter_ratio"] < 1
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == set(names)
    assert (out / "report.md").read_text().count("\n| ") >= 7 and (out / "pareto.png").stat().st_size > 0
    # re-planning the same recipe finds the stage finished
    assert folder.run_stage(p.name, p.config, p.inputs, p.body).skipped


def test_base_after_finetune_is_its_full_or_merged_model(tmp_path):
    from cluster.config import Recipe
    from cluster.stages.compress import base_folder

    if "finetune" not in Recipe.model_fields:
        pytest.skip("no finetune section in this recipe schema")
    head = f"name: x\nrun_dir: {tmp_path}\ncompress:\n  methods: [{{method: quantize}}]\n"
    folder = RunFolder(str(tmp_path))
    full = parse_recipe(head + "finetune:\n  base: /m\n  method: full\n")
    assert base_folder(full, folder)[0] == str(tmp_path / "finetune" / "model")
    merged = parse_recipe(head + "finetune:\n  base: /m\n  method: lora\n  merge: true\n")
    assert base_folder(merged, folder)[0] == str(tmp_path / "finetune" / "merged")
    with pytest.raises(RecipeError, match="finetune.merge: true"):
        base_folder(parse_recipe(head + "finetune:\n  base: /m\n  method: lora\n"), folder)


def test_asset_model_with_foreign_manifest_is_a_valid_base(tmp_path, tiny_base, heldout_file):
    """The asset cache's models carry a manifest of another shape: planning and recording must not trip."""
    import shutil

    from cluster.stages.compress import plan

    base = tmp_path / "asset_model"
    shutil.copytree(tiny_base, base)
    (base / "manifest.json").write_text(json.dumps({"asset": "reference_model", "source": "gguf"}))
    text = (
        _recipe(tmp_path, str(base), heldout_file).split("  methods:")[0]
        + "  methods: [{method: quantize}]\n"
    )
    recipe = parse_recipe(text)
    folder = RunFolder(recipe.resolved_run_dir())
    p = plan(recipe, folder)
    assert p.inputs == {}
    result = folder.run_stage(p.name, p.config, p.inputs, p.body)
    m = read_manifest(str(Path(result.folder) / "quantize-w8a8"))
    assert m.inputs["base"] == {"path": str(base), "stage": None, "fingerprint": None}
