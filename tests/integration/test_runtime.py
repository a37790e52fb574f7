"""The Ray connect helper against a real local Ray."""

from __future__ import annotations

import os

import pytest
import ray

from cluster.runtime import RayUnreachable, isolate_side_files, ray_session, resolve_address

pytestmark = pytest.mark.ray


def test_embedded_ray_starts_with_side_files_inside_raylm_and_stops(monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)  # a shell's own choice would win
    side = isolate_side_files()
    assert not ray.is_initialized()
    with ray_session(num_cpus=2) as resources:
        assert resources["CPU"] == 2
        sessions = [p for p in os.listdir(side.ray_temp) if p.startswith("session_2")]
        assert sessions, "Ray's session folder is not under raylm's temp dir"

        @ray.remote
        def env_of_worker():
            import logging

            import pyarrow as pa

            from cluster.worker_setup import _CLEANER_LOGGER

            level = logging.getLogger(_CLEANER_LOGGER).level  # set by the session's worker set-up hook
            pool = pa.default_memory_pool().backend_name
            return os.environ["TMPDIR"], os.environ["VLLM_CACHE_ROOT"], os.environ["NLTK_DATA"], level, pool

        tmpdir, vllm_cache, nltk_data, level, pool = ray.get(env_of_worker.remote())
        assert pool == "jemalloc"  # cluster.arrow_memory_pool: auto (pipelines/allocator.py)
        # no dashboard, no State API: Ray Train's once-a-second "Failed to query" warning is quieted
        assert level == 40
        assert tmpdir == str(side.scratch) and vllm_cache.startswith(str(side.cache))
        assert nltk_data.endswith("nltk_data")
        # token auth stays on, with a per-process token that is not written to ~/.ray
        assert os.environ.get("RAY_AUTH_MODE") == "token"
    assert not ray.is_initialized()
    assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ  # the next session chooses again


def test_embedded_ray_lists_parquet_with_one_footer_reader(monkeypatch, tmp_path):
    """Ray Data's Parquet listing starts 32 FooterReader processes by default; an embedded Ray gets one
    (pipelines/data/ray_data_env.py), so a listing on a small node does not start 32 Python processes.
    Its workers also get 16 MiB Parquet read units."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.delenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", raising=False)
    monkeypatch.delenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", raising=False)
    for i in range(12):
        pq.write_table(pa.table({"x": list(range(i * 10, i * 10 + 10))}), tmp_path / f"part-{i}.parquet")
    with ray_session(num_cpus=2):
        import ray.data
        from ray._private.state import actors  # the GCS's actor table; the State API needs a dashboard

        assert ray.data.read_parquet(str(tmp_path)).map_batches(lambda b: b).materialize().count() == 120
        classes = [a["ActorClassName"] for a in actors().values()]
        read_unit = ray.get(ray.remote(lambda: os.environ.get("RAY_DATA_PARQUET_BIN_PACKING_BYTES")).remote())
    assert classes.count("FooterReader") == 1
    assert read_unit == str(16 * 1024**2)
    assert "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS" not in os.environ  # the next session chooses again


def test_session_is_reused_when_ray_is_already_up():
    from serving.cpu_binding import node_cpus

    with ray_session(num_cpus=1):
        with ray_session(num_cpus=2) as inner:  # no second Ray; the outer one stays up
            assert inner["CPU"] == 1
        # the CPUs serving replicas share: Ray's count for this node, never more than its real cores
        assert node_cpus() == 1
        assert ray.is_initialized()
    assert not ray.is_initialized()


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(None) == "10.0.0.1:6379"
    assert resolve_address("auto") == "auto"


def test_unreachable_address_fails_fast_and_clearly():
    import time

    t0 = time.perf_counter()
    with pytest.raises(RayUnreachable, match=r"cannot reach a Ray cluster at 127.0.0.1:1"), \
            ray_session(address="127.0.0.1:1"):
        pass
    assert time.perf_counter() - t0 < 10
    assert not ray.is_initialized()
