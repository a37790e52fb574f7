"""The `serve` recipe section: validation, defaults, secrets, and what it turns into for Ray Serve LLM."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cluster.config import RecipeError, describe_keys, parse_recipe
from pipelines.allocator import allocator_env
from serving import cpu_binding
from serving.config import ServeConfig, ServeModelConfig
from serving.planner import GiB, NodeMemory, plan_model

RECIPE = """\
name: s
serve:
  models:
    - name: smol
      path: {path}
      targets: {{context_length: 1024, concurrent_sequences: 4}}
  sample_prompts: [hi]
"""


def test_recipe_serve_section_parses_with_defaults(smollm2_folder):
    r = parse_recipe(RECIPE.format(path=smollm2_folder), "r.yaml")
    s = r.serve
    assert (s.host, s.port, s.app_name, s.keep_serving, s.api_keys_env) == ("127.0.0.1", 8000, "raylm", False,
                                                                           "RAYLM_API_KEYS")
    m = s.models[0]
    assert (m.device, m.replicas, m.autoscaling, m.targets.context_length) == ("auto", 1, None, 1024)
    assert parse_recipe("name: s\n").serve is None


def test_unknown_serve_key_names_line_and_nearest_key(smollm2_folder):
    text = RECIPE.format(path=smollm2_folder).replace("concurrent_sequences", "concurent_sequences")
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text, "r.yaml")
    (problem,) = exc.value.problems
    assert problem.startswith("r.yaml:6: serve.models.0.targets.concurent_sequences: unknown key")
    assert "did you mean 'concurrent_sequences'?" in problem


def test_assets_prefix_resolves_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYLM_HOME", str(tmp_path))
    m = ServeModelConfig(name="m", path="assets:models/SmolLM2-135M-Instruct")
    assert m.resolved_path() == str(tmp_path / "models" / "SmolLM2-135M-Instruct")


@pytest.mark.parametrize("bad, match", [
    ({"name": "a:b", "path": "p"}, "name"),
    ({"name": "m", "path": "p", "engine_args": {"model": "x"}}, "engine_args may not set model"),
    ({"name": "m", "path": "p", "lora_adapters": [{"name": "x", "path": "a"}, {"name": "x", "path": "b"}]},
     "duplicate LoRA adapter names"),
    ({"name": "m", "path": "p", "lora_dynamic_path": "/local/loras"}, "object-store URI"),
    ({"name": "m", "path": "p", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}, "max_replicas"),
    ({"name": "m", "path": "p", "targets": {"concurrent_sequences": 0}}, "greater than or equal to 1"),
    ({"name": "m", "path": "p", "targets": {"memory_fraction": 1.5}}, "less than or equal to 1"),
])
def test_bad_model_entries_are_refused(bad, match):
    with pytest.raises(ValidationError, match=match):
        ServeModelConfig.model_validate(bad)


def test_duplicate_models_and_empty_list_refused():
    with pytest.raises(ValidationError, match="duplicate model names"):
        ServeConfig(models=[{"name": "a", "path": "x"}, {"name": "a", "path": "y"}])
    with pytest.raises(ValidationError):
        ServeConfig(models=[])


def test_api_keys_are_secret_and_merged_with_the_env_var():
    cfg = ServeConfig(models=[{"name": "a", "path": "x"}], api_keys=["sk-recipe"])
    assert "sk-recipe" not in repr(cfg) and "sk-recipe" not in json.dumps(cfg.model_dump(mode="json"))
    assert cfg.resolved_api_keys({"RAYLM_API_KEYS": " sk-env1, sk-env2 ,,sk-recipe"}) == \
        ["sk-recipe", "sk-env1", "sk-env2"]
    assert ServeConfig(models=[{"name": "a", "path": "x"}]).resolved_api_keys({}) == []


def test_every_serve_key_is_documented():
    rows = [r for r in describe_keys() if r[0].startswith("serve")]
    assert len(rows) > 30
    undocumented = [r[0] for r in rows if not r[3]]
    assert not undocumented, undocumented


def test_llm_config_for_cpu_carries_the_plan_and_the_2_cpu_placement(smollm2_folder, monkeypatch):
    from serving.app import llm_config_dict
    from serving.planner import ModelSpec

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    for var in cpu_binding.OMP_WAIT_VARS:
        monkeypatch.delenv(var, raising=False)
    model = ServeModelConfig(name="smol", path=str(smollm2_folder), engine_args={"enforce_eager": True},
                             autoscaling={"min_replicas": 1, "max_replicas": 3},
                             lora_adapters=[{"name": "a", "path": str(smollm2_folder)}])
    spec = ModelSpec.from_folder(str(smollm2_folder))
    plan = plan_model(spec, model.targets, NodeMemory("cpu", 16 * GiB, "t"), lora=(2, 16))
    d = llm_config_dict(model, plan, "cpu")
    assert d["accelerator_config"] == {"kind": "cpu"}
    assert d["deployment_config"]["ray_actor_options"] == {"num_cpus": 0}
    assert d["deployment_config"]["autoscaling_config"]["max_replicas"] == 3
    kw = d["engine_kwargs"]
    assert kw["kv_cache_memory_bytes"] == plan.kv_cache_bytes and kw["max_num_seqs"] == 8
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 16 and kw["enforce_eager"] is True
    # the object store's endpoint goes to the replicas, and on CPU tcmalloc (vLLM's CPU guide) and short
    # OpenMP busy-waits (serving.cpu_binding)
    want = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", **allocator_env("auto"), "GOMP_SPINCOUNT": "10000"}
    assert d["runtime_env"] == {"env_vars": want}
    assert "libtcmalloc" in d["runtime_env"]["env_vars"]["LD_PRELOAD"]  # `make setup` installs it
    assert d["lora_config"]["dynamic_lora_loading_path"] is None
    gpu = llm_config_dict(model.model_copy(update={"autoscaling": None, "replicas": 2}), plan, "gpu")
    assert gpu["accelerator_config"] == {"kind": "gpu"} and gpu["deployment_config"] == {"num_replicas": 2}
    assert gpu["runtime_env"] == {"env_vars": {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}}  # no CPU tuning
    # no stream batching on CPU; Ray Serve LLM's default (50 ms) on GPU
    assert d["experimental_configs"] == {"stream_batching_interval_ms": 0}
    assert "experimental_configs" not in gpu


def test_the_recipe_sets_stream_batching_on_either_device(smollm2_folder, monkeypatch):
    from ray.serve.llm import LLMConfig

    from serving.app import llm_config_dict
    from serving.planner import ModelSpec

    spec = ModelSpec.from_folder(str(smollm2_folder))
    plan = plan_model(spec, ServeModelConfig(name="smol", path=".").targets, NodeMemory("cpu", 16 * GiB, "t"))
    for device, ms in (("cpu", 20.0), ("gpu", 0.0)):
        model = ServeModelConfig(name="smol", path=str(smollm2_folder), stream_batching_interval_ms=ms)
        d = llm_config_dict(model, plan, device)
        assert d["experimental_configs"] == {"stream_batching_interval_ms": ms}
        # Ray Serve LLM's own config takes it as it is (the integration test reads it from a running replica)
        cfg = LLMConfig(**d)
        assert cfg.experimental_configs["stream_batching_interval_ms"] == ms
    with pytest.raises(ValueError, match="stream_batching_interval_ms"):
        ServeModelConfig(name="smol", path=str(smollm2_folder), stream_batching_interval_ms=-1)
    # Ray's own variable in the environment: CPU replicas keep it (no experimental config overrides it)
    monkeypatch.setenv("RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS", "25")
    unset = ServeModelConfig(name="smol", path=str(smollm2_folder))
    assert "experimental_configs" not in llm_config_dict(unset, plan, "cpu")
    monkeypatch.delenv("RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS")
    assert llm_config_dict(unset, plan, "cpu")["experimental_configs"] == {"stream_batching_interval_ms": 0}
