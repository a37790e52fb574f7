"""The compute processes' allocator (pipelines/allocator.py): what each setting puts into a worker's
environment, the clear refusal when tcmalloc is asked for and missing, and that a process started with
that environment really runs on tcmalloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines import allocator
from pipelines.allocator import allocator_env, find_tcmalloc, loaded_allocator
from pipelines.train.config import PretrainConfig


def test_system_means_no_preload_and_the_key_is_validated():
    assert allocator_env("system") == {}
    assert PretrainConfig().allocator == "auto"
    with pytest.raises(ValueError, match="allocator"):
        PretrainConfig(allocator="jemalloc")


def test_missing_tcmalloc_is_refused_by_name_or_skipped_by_auto(monkeypatch):
    monkeypatch.setattr(allocator, "TCMALLOC_PATHS", ("/nonexistent/libtcmalloc_minimal.so.4",))
    assert find_tcmalloc() is None
    assert allocator_env("auto") == {}
    with pytest.raises(ValueError, match=r"pretrain\.allocator: tcmalloc asked for.*libtcmalloc-minimal4"):
        allocator_env("tcmalloc", "pretrain.allocator")


def test_a_recipe_asking_for_a_missing_tcmalloc_is_refused_before_workers_start(monkeypatch):
    """The stage's pre-flight check (`check_layout`, run for pretrain and finetune once Ray is up)."""
    from pipelines.train.finetune_config import FinetuneConfig
    from pipelines.train.stage import check_layout

    assert check_layout(PretrainConfig(allocator="tcmalloc"), {"CPU": 2.0}) == []  # installed here
    monkeypatch.setattr(allocator, "TCMALLOC_PATHS", ("/nonexistent/libtcmalloc_minimal.so.4",))
    (problem,) = check_layout(PretrainConfig(allocator="tcmalloc"), {"CPU": 2.0})
    assert problem.startswith("pretrain.allocator: tcmalloc asked for")
    cfg = FinetuneConfig(base="b", data=["d.jsonl"], allocator="tcmalloc")
    assert check_layout(cfg, None, "finetune")[0].startswith("finetune.allocator: tcmalloc asked for")
    assert check_layout(PretrainConfig(allocator="auto"), {"CPU": 2.0}) == []  # auto falls back to glibc


def test_a_process_started_with_the_environment_runs_on_tcmalloc():
    """`make setup` installs libtcmalloc-minimal4; the child reports what its own process maps."""
    path = find_tcmalloc()
    assert path, "libtcmalloc-minimal4 is not installed: run `make setup`"
    env = allocator_env("auto")
    assert env["LD_PRELOAD"].split()[0] == path
    probe = "from pipelines.allocator import loaded_allocator; print(loaded_allocator())"
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "tcmalloc"
    assert "large alloc" not in out.stderr
    this = "tcmalloc" if "libtcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"
    assert loaded_allocator() == this


def test_arrow_pool_setting_and_its_refusal(monkeypatch):
    import pyarrow as pa

    from cluster.config import ClusterConfig
    from pipelines.allocator import ARROW_POOL_VAR, arrow_pool_env

    assert ClusterConfig().arrow_memory_pool == "auto"
    with pytest.raises(ValueError, match="arrow_memory_pool"):
        ClusterConfig(arrow_memory_pool="tcmalloc")
    assert "jemalloc" in pa.supported_memory_backends(), "pyarrow's Linux wheels ship jemalloc"
    assert arrow_pool_env("auto") == {ARROW_POOL_VAR: "jemalloc"}
    assert arrow_pool_env("mimalloc") == {ARROW_POOL_VAR: "mimalloc"}
    monkeypatch.setattr(pa, "supported_memory_backends", lambda: ["mimalloc", "system"])
    assert arrow_pool_env("auto") == {}  # a build without jemalloc keeps Arrow's default
    with pytest.raises(ValueError, match=r"cluster\.arrow_memory_pool: jemalloc asked for.*mimalloc, system"):
        arrow_pool_env("jemalloc")


def test_a_process_started_with_the_arrow_pool_environment_allocates_from_it():
    from pipelines.allocator import arrow_pool_env

    probe = "import pyarrow as pa; pa.array(range(1000)); print(pa.default_memory_pool().backend_name)"
    for pool in ("auto", "system"):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, **arrow_pool_env(pool)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == ("jemalloc" if pool == "auto" else "system")
