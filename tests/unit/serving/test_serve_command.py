"""`raylm serve --plan`, the serve stage's planning, and the architecture check: all without a server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.config import parse_recipe
from pipelines.run_folder import RunFolder
from serving.app import check_architecture, vllm_architectures
from serving.config import ServeModelConfig
from serving.planner import ModelSpec, PlanError
from tests.unit.serving.conftest import SMOLLM2, SMOLLM2_WEIGHT_BYTES, make_model_folder

runner = CliRunner()


def _recipe(tmp_path, folder, extra=""):
    path = tmp_path / "r.yaml"
    targets = f"{{context_length: 2048, concurrent_sequences: 8, node_memory_gb: 16{extra}}}"
    path.write_text(f"name: s\nrun_dir: {tmp_path / 'run'}\nserve:\n  models:\n    - name: smol\n"
                    f"      path: {folder}\n      device: cpu\n      targets: {targets}\n")
    return path


def test_plan_prints_the_table_and_starts_nothing(tmp_path, smollm2_folder, monkeypatch):
    import serving.app

    monkeypatch.setattr(serving.app, "cpu_has_native_bf16", lambda: True)  # the same numbers on any CPU
    out = runner.invoke(app, ["serve", str(_recipe(tmp_path, smollm2_folder)), "--plan"], terminal_width=200)
    assert out.exit_code == 0, out.output
    for text in ("serve plan: smol", "KV capacity", "16,512 tokens", "129 blocks", "max_num_seqs",
                 '"kv_cache_memory_bytes": 380436480', '"load_format": "safetensors"'):
        assert text in out.output, text
    assert not (tmp_path / "run").exists()
    js = runner.invoke(app, ["serve", str(_recipe(tmp_path, smollm2_folder)), "--plan", "--json"])
    assert json.loads(js.output)["smol"]["num_blocks"] == 129


def test_plan_refuses_with_the_numbers_and_exit_2(tmp_path, smollm2_folder):
    recipe = _recipe(tmp_path, smollm2_folder).read_text().replace("node_memory_gb: 16", "node_memory_gb: 3")
    (tmp_path / "r.yaml").write_text(recipe)
    out = runner.invoke(app, ["serve", str(tmp_path / "r.yaml"), "--plan"], terminal_width=300)
    assert out.exit_code == 2
    assert "refused" in out.output and "does not fit on cpu" in out.output and "budget 2.40 GiB" in out.output


def test_serve_without_section_exits_2(tmp_path):
    (tmp_path / "r.yaml").write_text("name: s\n")
    out = runner.invoke(app, ["serve", str(tmp_path / "r.yaml")])
    assert out.exit_code == 2 and "no `serve` section" in out.output


def test_stage_plan_inputs_config_and_preflight(tmp_path, smollm2_folder):
    from cluster.stages import STAGE_MODULES
    from cluster.stages.serve import plan

    assert STAGE_MODULES[-1] == "cluster.stages.serve"
    text = _recipe(tmp_path, smollm2_folder).read_text() + "  api_keys: [sk-do-not-store]\n"
    recipe = parse_recipe(text)
    step = plan(recipe, RunFolder(str(tmp_path / "run")))
    assert step.name == "serve" and step.inputs == {"model:smol": str(smollm2_folder)}
    assert "sk-do-not-store" not in json.dumps(step.config)
    again = plan(parse_recipe(text), RunFolder(str(tmp_path / "run")))
    assert again.config == step.config  # re-runs resume...
    keep = parse_recipe(text + "  keep_serving: true\n")
    assert plan(keep, RunFolder(str(tmp_path / "run"))).config != plan(keep, RunFolder(str(tmp_path))).config
    tight = parse_recipe(text.replace("node_memory_gb: 16", "node_memory_gb: 3"))
    try:
        plan(tight, RunFolder(str(tmp_path / "run")))
    except Exception as exc:  # RecipeError naming the numbers, before Ray starts
        assert "serve: model 'smol' does not fit on cpu" in str(exc)
    else:
        raise AssertionError("a plan that cannot fit must be refused")


def test_architecture_check_names_the_model(tmp_path):
    archs = vllm_architectures()
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"} <= archs
    model = ServeModelConfig(name="weird", path="/m")
    ok = ModelSpec.from_config(SMOLLM2, 1)
    assert check_architecture(ok, model) is None
    bad = ModelSpec.from_config({**SMOLLM2, "architectures": ["TotallyNewForCausalLM"]}, 1)
    try:
        check_architecture(bad, model)
    except PlanError as exc:
        assert "model 'weird'" in str(exc) and "'TotallyNewForCausalLM' is not one vLLM" in str(exc)
    else:
        raise AssertionError("unknown architecture accepted")


def test_architecture_check_knows_raylms_plugin_models(monkeypatch):
    from serving import vllm_plugin

    model = ServeModelConfig(name="lowrank", path="/m")
    spec = ModelSpec.from_config({**SMOLLM2, "architectures": ["RaylmLowRankLlamaForCausalLM"]}, 1)
    assert vllm_plugin.installed()  # `make setup` installs raylm with its vllm.general_plugins entry point
    assert check_architecture(spec, model) is None
    monkeypatch.setattr(vllm_plugin, "installed", lambda: False)
    with pytest.raises(PlanError, match=r"model 'lowrank' .*reinstall raylm"):
        check_architecture(spec, model)


def test_plan_app_reports_every_bad_model(tmp_path):
    from serving.app import plan_app
    from serving.config import ServeConfig

    good = make_model_folder(tmp_path / "good", SMOLLM2, 1000)
    bad = make_model_folder(tmp_path / "bad", {**SMOLLM2, "architectures": ["NopeForCausalLM"]}, 1000)
    cfg = ServeConfig(models=[
        {"name": "good", "path": str(good), "device": "cpu", "targets": {"node_memory_gb": 16}},
        {"name": "bad", "path": str(bad), "device": "cpu", "targets": {"node_memory_gb": 16}},
        {"name": "missing", "path": str(tmp_path / "nothing"), "device": "cpu"},
    ])
    try:
        plan_app(cfg)
    except PlanError as exc:
        lines = str(exc).splitlines()
        assert len(lines) == 2 and "'bad'" in lines[0] and "'missing'" in lines[1]
    else:
        raise AssertionError("bad models accepted")


def test_stage_inputs_skip_asset_manifests_but_keep_stage_outputs(tmp_path):
    from cluster.stages.serve import _is_stage_input

    plain = make_model_folder(tmp_path / "plain", SMOLLM2, 10)
    asset = make_model_folder(tmp_path / "asset", SMOLLM2, 10)
    (asset / "manifest.json").write_text(json.dumps({"asset": "reference_model", "version": 1}))
    trained = make_model_folder(tmp_path / "trained", SMOLLM2, 10)
    (trained / "manifest.json").write_text(json.dumps({"stage": "finetune", "config_hash": "x"}))
    assert _is_stage_input(str(plain)) and _is_stage_input(str(trained))
    assert not _is_stage_input(str(asset)) and not _is_stage_input("s3://bucket/model")


def test_run_paths_point_at_this_runs_folders(tmp_path, smollm2_folder):
    """`run:finetune/merged` is the folder this run's finetune stage writes; the stage records it as an
    input (a re-trained model re-runs serve) and `raylm serve --plan` plans it."""
    import shutil

    from cluster.stages.serve import plan

    run = tmp_path / "run"
    shutil.copytree(smollm2_folder, run / "finetune" / "merged")
    path = _recipe(tmp_path, "run:finetune/merged")
    step = plan(parse_recipe(path.read_text()), RunFolder(str(run)))
    assert step.inputs == {"model:smol": str(run / "finetune" / "merged")}
    out = runner.invoke(app, ["serve", str(path), "--plan", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["smol"]["num_blocks"] == 129


@pytest.mark.parametrize(
    ("native_bf16", "engine_args", "device", "quantized", "dtype"),
    [
        (False, {}, "cpu", False, "float32"),  # emulated bf16: raylm picks fp32
        (True, {}, "cpu", False, None),  # native bf16: vLLM's own choice stays
        (False, {"dtype": "bfloat16"}, "cpu", False, "bfloat16"),  # the recipe's dtype wins
        (False, {}, "gpu", False, None),
        (False, {}, "cpu", True, None),  # a quantized checkpoint keeps its activation dtype
    ],
)
def test_cpu_without_native_bf16_serves_fp32_and_plans_its_memory(
    tmp_path, monkeypatch, native_bf16, engine_args, device, quantized, dtype
):
    import serving.app
    from serving.app import plan_app
    from serving.config import ServeConfig

    monkeypatch.setattr(serving.app, "cpu_has_native_bf16", lambda: native_bf16)
    quant = {"quantization_config": {"quant_method": "compressed-tensors"}} if quantized else {}
    config = {**SMOLLM2, **quant}
    folder = make_model_folder(tmp_path / "m", config, SMOLLM2_WEIGHT_BYTES)
    targets = {"node_memory_gb": 16, "context_length": 512, "concurrent_sequences": 4}
    cfg = ServeConfig(models=[{"name": "m", "path": str(folder), "device": device, "targets": targets,
                               "engine_args": engine_args}])
    plan = plan_app(cfg, check_arch=False)
    assert plan.config.models[0].engine_args.get("dtype") == dtype
    assert ("dtype float32" in " ".join(plan.notes["m"])) == (dtype == "float32" and not engine_args)
    if not quantized:  # weights in memory: 4 bytes per bf16 checkpoint's 2 when served in fp32
        factor = 2 if dtype == "float32" else 1
        assert plan.plans["m"].weight_bytes == SMOLLM2_WEIGHT_BYTES * factor
