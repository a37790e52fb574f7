"""Connecting to Ray, and keeping a run's side files inside raylm's folders.

Without an address (argument, recipe or `$RAY_ADDRESS`) raylm starts an embedded local Ray for the run
and stops it afterwards; with one it connects to that cluster and leaves it running.

vLLM, torch inductor, Triton, Hugging Face and Ray all write caches and sockets to `~/.cache`, `/tmp` and
`/tmp/ray` by default. `isolate_side_files()` points each of them into raylm's cache (lasting caches,
e.g. DeepSpeed's JIT-built ops) or a per-process scratch folder (temporary files, removed at exit), so a
run leaves nothing behind in `/tmp` or `~` beyond `$RAYLM_HOME`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.assets import asset_paths

# Unix socket paths are limited to 107 bytes; Ray puts sockets at
# <temp_dir>/session_<date>_<time>_<pid>/sockets/plasma_store (~70 bytes after the temp dir).
_MAX_RAY_TEMP_LEN = 36
# What an embedded Ray gets unless the environment says otherwise. Usage stats off: the report goes to
# Anyscale's server, which the offline machines raylm is built on cannot reach, and with them on, Ray
# Serve LLM keeps a telemetry actor (one more process beside the engine) to collect it
# (serving/deployments.py, RaylmLLMServer._start_engine). `RAY_USAGE_STATS_ENABLED=1` turns them back on.
# Ray's log monitor looks for new log files (a glob over the session's log folder) every 0.1 s while the
# folder holds fewer than RAY_LOG_MONITOR_MANY_FILES_THRESHOLD files (1000), and every
# LOG_NAME_UPDATE_INTERVAL_S (0.5 s) above it; 0 makes it always the latter: a new worker's first log lines
# reach the driver up to 0.5 s later, and an embedded Ray serving beside an engine on few cores polls
# 5 times less (docs/serving.md, "Evening rounds").
EMBEDDED_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}


@dataclass(frozen=True)
class SideFolders:
    cache: Path
    scratch: Path
    ray_temp: Path


_ISOLATED: SideFolders | None = None


def isolate_side_files(home: Path | None = None) -> SideFolders:
    """Point every library's cache and temp variables into raylm's folders (idempotent per process).

    Variables the user already set are respected.
    """
    global _ISOLATED
    if _ISOLATED is not None:
        return _ISOLATED
    paths = asset_paths(home)
    cache = paths.root / "cache"
    scratch_parent = paths.root / "tmp"
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=scratch_parent))
    ray_temp = scratch / "ray"
    if len(str(ray_temp)) > _MAX_RAY_TEMP_LEN:
        # A deep $RAYLM_HOME would overflow the socket path limit: fall back to a short folder that is
        # still ours and still removed at exit. `/tmp` explicitly: an inherited TMPDIR may be just as deep
        # (a child process of a run inherits the run's scratch folder as TMPDIR).
        ray_temp = Path(tempfile.mkdtemp(prefix="raylm-", dir="/tmp")) / "ray"
    wanted = {
        "NLTK_DATA": paths.nltk_data,
        "HF_HOME": cache / "huggingface",
        "HF_HUB_OFFLINE": "1",  # no model hub is reachable; fail fast instead of retrying
        "VLLM_CACHE_ROOT": cache / "vllm",
        "VLLM_RPC_BASE_PATH": scratch,
        "TORCHINDUCTOR_CACHE_DIR": cache / "torchinductor",
        "TRITON_CACHE_DIR": cache / "triton",
        "TORCH_EXTENSIONS_DIR": paths.torch_extensions,
        "MPLCONFIGDIR": cache / "matplotlib",
        "TMPDIR": scratch,
        "RAY_TMPDIR": ray_temp,
    }
    for key, value in wanted.items():
        os.environ.setdefault(key, str(value))
    for key in ("HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TORCH_EXTENSIONS_DIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = None  # re-read TMPDIR
    atexit.register(shutil.rmtree, scratch, True)
    atexit.register(shutil.rmtree, ray_temp.parent if ray_temp.parent != scratch else ray_temp, True)
    _ISOLATED = SideFolders(cache=cache, scratch=scratch, ray_temp=ray_temp)
    return _ISOLATED


def resolve_address(address: str | None) -> str | None:
    """The cluster to connect to: the argument, else `$RAY_ADDRESS`, else None (embedded local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a server that some process binds later.

    Why not the OS's choice (`bind(host, 0)`): that port comes from the ephemeral range, which the OS
    also hands to every outgoing connection and to every server Ray starts on port 0 in the meantime;
    a port chosen before `ray.init` was taken by one of Ray's own processes before HAProxy bound it
    ("Address already in use", seen once in the suite). So pick among the ports between Ray's worker
    range (10002-19999 by default) and the ephemeral range, which only explicit binds use, never the
    same one twice in this process."""
    low, high = 20000, _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, high) if high > low else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port on {host} between {low} and {high}")


def setdefault_env(env: dict[str, str]) -> dict[str, str]:
    """Put `env` into this process's environment (inherited by the Ray it starts next), except variables
    already set, which win. Returns what was set, for the caller to remove afterwards."""
    applied = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


class RayUnreachable(ConnectionError):
    """No Ray cluster answers at the given address."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when nothing listens at a Ray address (`ray.init` would otherwise
    retry for minutes). `auto` and addresses without a port are left to Ray."""
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise RayUnreachable(
            f"cannot reach a Ray cluster at {address}: {exc}. Start one with `ray start --head` or check "
            "--address / RAY_ADDRESS (GCS port 6379 by default, `ray://host:10001` for Ray Client)"
        ) from None


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory_gb: float | None = None,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int = 8265,
    namespace: str = "raylm",
    serve_ingress: str = "haproxy",
    arrow_memory_pool: str = "auto",
) -> Iterator[dict]:
    """Connect to Ray for the duration of a `with` block; yields `ray.cluster_resources()`.

    Starts (and afterwards stops) an embedded local Ray when no address is given; if Ray is already
    initialised in this process it is reused and left running. An embedded Ray gets Ray Serve's
    `serve_ingress` mode (`serving/ingress.py`: HAProxy and the throughput switches, or Serve's Python
    proxy), `arrow_memory_pool` (`pipelines/allocator.py`), Ray Data's single-node settings
    (`pipelines/data/ray_data_env.py`), Ray's usage stats off and a slower log-file scan
    (`EMBEDDED_RAY_ENV`); a running cluster keeps its own.
    """
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    side = isolate_side_files()
    address = resolve_address(address)
    kwargs: dict = {"namespace": namespace, "log_to_driver": True, "configure_logging": True}
    applied: dict[str, str] = {}
    if address is None:
        # Embedded local Ray. Ray 2.60 turns token auth on by default and keeps the token in
        # ~/.ray/auth_token (a run died when that file vanished, OFFLINE.md). Keep auth on, but with a
        # fresh per-process token in the environment (inherited by Ray's processes): nothing is written
        # to ~ and nothing outside this process tree knows the token.
        if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            # Ray caches its config at import; re-read it as ray.init itself does when it turns auth on.
            from ray._raylet import Config

            Config.initialize("")
        kwargs.update(
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host=dashboard_host,
            dashboard_port=dashboard_port,
            _temp_dir=str(side.ray_temp),
        )
        from pipelines.allocator import arrow_pool_env
        from pipelines.data.ray_data_env import embedded_ray_data_env
        from serving.ingress import apply_ingress_env

        applied = apply_ingress_env(serve_ingress, side.scratch)  # Serve's processes read it at start
        applied |= setdefault_env(EMBEDDED_RAY_ENV)
        applied |= setdefault_env(arrow_pool_env(arrow_memory_pool))  # Arrow's, at a process' first use
        applied |= setdefault_env(embedded_ray_data_env())  # Ray Data's, in the worker that lists Parquet
        if object_store_memory_gb:
            kwargs["object_store_memory"] = int(object_store_memory_gb * 1024**3)
        if not dashboard:  # no State API server: quiet what polls it (cluster/worker_setup.py)
            hook = "cluster.worker_setup.quiet_state_api_warnings"
            kwargs["runtime_env"] = {"worker_process_setup_hook": hook}
    else:
        check_reachable(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
        try:
            yield ray.cluster_resources()
        finally:
            ray.shutdown()
    finally:
        for key in applied:  # the next session in this process chooses again
            os.environ.pop(key, None)
