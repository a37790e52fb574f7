"""The Ray cluster launcher YAMLs (cluster/launcher/) against Ray's own cluster-config schema
(`ray/autoscaler/ray-schema.json`, through `ray.autoscaler._private.util.validate_config`), after Ray
fills in its provider defaults exactly as `ray up` does (`prepare_config`)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

LAUNCHER = Path(__file__).resolve().parents[3] / "cluster" / "launcher"
CONFIGS = sorted(LAUNCHER.glob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_one_config_per_cloud():
    assert {p.stem for p in CONFIGS} == {"aws", "gcp"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_passes_rays_schema_as_ray_up_prepares_it(path):
    raw = _load(path)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config
    assert prepared["provider"]["type"] == path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_has_the_raylm_node_groups(path):
    cfg = _load(path)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert cpu["min_workers"] == 0 < cpu["max_workers"] and cpu["resources"]["CPU"] > 0
    assert "GPU" not in cpu["resources"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] and gpu["resources"]["GPU"] > 0
    assert cfg["max_workers"] >= cpu["max_workers"] + gpu["max_workers"]
    assert 0 < cfg["idle_timeout_minutes"] <= 30
    # CPU image everywhere, the CUDA image on the GPU group (infra/docker/)
    assert cfg["docker"]["image"].startswith("raylm/raylm-cpu:")
    assert gpu["docker"]["worker_image"].startswith("raylm/raylm-gpu:")
    # token auth on every node; the dashboard is not exposed; metrics on a fixed port for Prometheus
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--metrics-export-port=8080" in head_start
    assert "--metrics-export-port=8080" in " ".join(cfg["worker_start_ray_commands"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_schema_check_rejects_broken_configs(path):
    """The check bites: a misspelt key or a wrong type fails Ray's validation."""
    misspelt = _load(path)
    misspelt["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(misspelt))
    wrong_type = _load(path)
    wrong_type["available_node_types"]["gpu_worker"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError, match="eight"):
        validate_config(prepare_config(wrong_type))
    unknown_head = _load(path)
    unknown_head["head_node_type"] = "nope"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(unknown_head))
