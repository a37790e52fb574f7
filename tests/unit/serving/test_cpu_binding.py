"""Pinning vLLM CPU replicas to cores: how many each gets from the plan, and which ones each claims."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from serving import cpu_binding
from tests.unit.serving.conftest import SMOLLM2, SMOLLM2_WEIGHT_BYTES, make_model_folder

EIGHT_HEADS = {**SMOLLM2, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 72}


def test_cores_per_replica_shares_the_node_and_the_recipe_wins():
    assert cpu_binding.cores_per_replica(None, 1, 2) == 2  # one replica alone: both cores
    assert cpu_binding.cores_per_replica(None, 2, 2) == 1
    assert cpu_binding.cores_per_replica(None, 3, 2) == 1  # more replicas than cores: one each, shared
    assert cpu_binding.cores_per_replica(None, 3, 16) == 5
    assert cpu_binding.cores_per_replica(4, 3, 2) == 4
    assert cpu_binding.cores_per_replica(None, 2, 2, ranks=2) == 2  # one core per tensor-parallel rank
    assert cpu_binding.cores_per_replica(1, 1, 8, ranks=2) == 2


def test_tensor_parallel_ranks_get_their_own_core_groups():
    assert cpu_binding.rank_mask([0, 1], 1) == "0,1"
    assert cpu_binding.rank_mask([0, 1], 2) == "0|1"
    assert cpu_binding.rank_mask([0, 1, 2, 3, 4], 2) == "0,1,2|3,4"
    assert cpu_binding.rank_mask([3], 2) == "3|3"  # fewer cores than ranks: shared


def test_replicas_claim_the_least_claimed_cores_and_dead_claims_are_dropped(tmp_path):
    reg = tmp_path / "claims.json"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cores = [0, 1, 2, 3]
    try:
        assert cpu_binding.claim_cores(2, pid=gone.pid, registry=reg, available=cores) == [0, 1]
        # the first claimant has exited: its cores are free again
        assert cpu_binding.claim_cores(2, pid=sleeper.pid, registry=reg, available=cores) == [0, 1]
        assert cpu_binding.claim_cores(1, registry=reg, available=cores) == [2]  # this test's process
        # every core is claimed once except 3: 3 first, then the lowest id
        assert cpu_binding.claim_cores(2, pid=1, registry=reg, available=cores) == [0, 3]
        # claiming again replaces this process's own claim (2 is then the least claimed)
        assert cpu_binding.claim_cores(1, registry=reg, available=cores) == [2]
        assert cpu_binding.claim_cores(9, pid=sleeper.pid, registry=reg, available=cores) == cores
    finally:
        sleeper.kill()
        sleeper.wait()
    reg.write_text("{not json")  # a damaged registry is started over, not a failed replica
    assert cpu_binding.claim_cores(1, registry=reg, available=cores) == [0]


def test_a_replica_binds_what_the_plan_asked_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(cpu_binding.VLLM_BIND, raising=False)
    monkeypatch.delenv(cpu_binding.ENV_CORES, raising=False)
    assert cpu_binding.bind_this_replica() is None  # no plan: vLLM's own default
    monkeypatch.setenv(cpu_binding.ENV_CORES, "1")
    mask = cpu_binding.bind_this_replica()
    assert mask is not None and int(mask) in os.sched_getaffinity(0)
    assert os.environ[cpu_binding.VLLM_BIND] == mask  # what the engine process inherits
    assert (tmp_path / cpu_binding.REGISTRY).is_file()
    monkeypatch.setenv(cpu_binding.VLLM_BIND, "0-1")  # set by hand: kept
    assert cpu_binding.bind_this_replica() is None and os.environ[cpu_binding.VLLM_BIND] == "0-1"


@pytest.mark.parametrize(
    ("models", "node", "expected"),
    [
        ([{"replicas": 1}], 8, {"a": 8}),
        ([{"replicas": 2}], 2, {"a": 1}),
        ([{}, {}, {"device": "gpu"}], 8, {"a": 4, "b": 4}),  # GPU replicas take no cores
        ([{"autoscaling": {"min_replicas": 1, "max_replicas": 4}}, {"omp_cores": 3}], 8, {"a": 1, "b": 3}),
        ([{"engine_args": {"tensor_parallel_size": 2}}, {}], 2, {"a": 2, "b": 1}),  # a core per TP rank
    ],
)
def test_the_plan_shares_the_node_among_the_recipes_cpu_replicas(tmp_path, monkeypatch, models, node,
                                                                 expected):
    from serving.app import llm_config_dict, plan_app
    from serving.config import ServeConfig

    monkeypatch.delenv(cpu_binding.VLLM_BIND, raising=False)
    monkeypatch.setattr(cpu_binding, "node_cpus", lambda: node)
    folder = make_model_folder(tmp_path / "m", EIGHT_HEADS, SMOLLM2_WEIGHT_BYTES)
    targets = {"node_memory_gb": 16, "context_length": 512}
    cfg = ServeConfig(models=[{"name": "abc"[i], "path": str(folder), "device": "cpu", "targets": targets,
                               **m} for i, m in enumerate(models)])
    plan = plan_app(cfg, check_arch=False)
    assert plan.cpu_cores == expected
    for name, cores in expected.items():
        model = next(m for m in plan.config.models if m.name == name)
        env = llm_config_dict(model, plan.plans[name], "cpu", cores)["runtime_env"]["env_vars"]
        assert env[cpu_binding.ENV_CORES] == str(cores)
        assert env[cpu_binding.ENV_RANKS] == str(model.engine_args.get("tensor_parallel_size", 1))
        assert any("pinned to" in n for n in plan.notes[name])
    monkeypatch.setenv(cpu_binding.VLLM_BIND, "0")
    assert plan_app(cfg, check_arch=False).cpu_cores == {}


@pytest.mark.parametrize(
    ("config", "engine_args", "device", "refused"),
    [
        (EIGHT_HEADS, {"tensor_parallel_size": 2}, "cpu", None),
        (EIGHT_HEADS, {"tensor_parallel_size": 4}, "cpu", None),  # 2 kv heads, each on 2 ranks
        (SMOLLM2, {"tensor_parallel_size": 2}, "cpu", "does not divide its 9 attention heads / 3"),
        (EIGHT_HEADS, {"tensor_parallel_size": 8}, "cpu", None),
        (EIGHT_HEADS, {"pipeline_parallel_size": 2}, "cpu", "engine dies on the first request"),
        (EIGHT_HEADS, {"pipeline_parallel_size": 2}, "gpu", None),
        (EIGHT_HEADS, {"pipeline_parallel_size": 64}, "gpu", "pipeline_parallel_size 64 > its 30 layers"),
    ],
)
def test_parallel_layouts_vllm_cannot_run_are_refused_at_plan_time(tmp_path, config, engine_args, device,
                                                                    refused):
    from serving.app import plan_app
    from serving.config import ServeConfig
    from serving.planner import PlanError

    folder = make_model_folder(tmp_path / "m", config, SMOLLM2_WEIGHT_BYTES)
    targets = {"node_memory_gb": 80, "context_length": 512}
    cfg = ServeConfig(models=[{"name": "m", "path": str(folder), "device": device, "targets": targets,
                               "engine_args": engine_args}])
    if refused is None:
        assert plan_app(cfg, check_arch=False).plans["m"]
    else:
        with pytest.raises(PlanError, match=refused):
            plan_app(cfg, check_arch=False)


def test_cpu_engines_busy_wait_briefly_unless_the_environment_sets_the_openmp_wait():
    assert cpu_binding.omp_wait_env({}) == {"GOMP_SPINCOUNT": cpu_binding.DEFAULT_GOMP_SPINCOUNT}
    assert int(cpu_binding.DEFAULT_GOMP_SPINCOUNT) < 300_000  # libgomp's own default: what this changes
    assert cpu_binding.omp_wait_env({"GOMP_SPINCOUNT": "300000"}) == {"GOMP_SPINCOUNT": "300000"}
    assert cpu_binding.omp_wait_env({"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/bin"}) == {
        "OMP_WAIT_POLICY": "PASSIVE"}
    assert cpu_binding.omp_wait_env({"GOMP_SPINCOUNT": ""}) == {"GOMP_SPINCOUNT": "10000"}  # empty: unset
