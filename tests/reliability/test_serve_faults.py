"""Serving under a replica failure (issue 10, item 2): two vLLM replicas behind raylm's app, a bounded
load (200 requests, concurrency 16, 127.0.0.1), one replica's process killed by its PID part-way. Only
requests in flight on the killed replica may fail; no request hangs past its timeout; Ray Serve brings the
replica back. p50/p99 latency and errors before, during and after go to benchmarks/results/reliability.json
(section `serve_replica_kill`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

from cluster.runtime import free_port, ray_session
from tests.reliability.results import record_result

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REQUESTS, CONCURRENCY, KILL_AFTER = 200, 16, 60
TIMEOUT_S = 120.0  # a request still unanswered after this counts as hung




def _replica_pids() -> list[int]:
    """The engine replicas' worker processes: descendants of this test process (the embedded Ray's raylet
    started them), found by the process title Ray gives an actor's worker."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            continue
        if "ServeReplica:raylm:LLMServer:smollm2" in title:
            found.append(proc.pid)
    return found


def _pinned_cores(pid: int) -> set[int]:
    """Cores that threads of `pid` and its children are pinned to one by one (vLLM's OpenMP threads; the
    other threads may run anywhere)."""
    found: set[int] = set()
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            for t in p.threads():
                cores = os.sched_getaffinity(t.id)
                if len(cores) == 1:
                    found |= cores
        except (psutil.Error, OSError):
            continue
    return found


def _running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    dep = status.deployments.get("LLMServer:smollm2")
    return (dep.replica_states or {}).get("RUNNING", 0) if dep else 0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def _load(url: str, on_progress) -> list[dict]:
    sem = asyncio.Semaphore(CONCURRENCY)
    results: list[dict] = []
    done = 0
    body = {
        "model": "smollm2",
        "prompt": "Write one sentence about rivers.",
        "max_tokens": 16,
        "temperature": 0,
    }
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:

        async def one(i: int):
            nonlocal done
            async with sem:
                t0 = time.monotonic()
                try:
                    r = await client.post(url + "/v1/completions", json=body)
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                results.append({"i": i, "start": t0, "latency": time.monotonic() - t0, "status": status})
                done += 1
                on_progress(done)

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return results


def test_killing_a_replica_under_load_fails_only_its_requests_and_it_comes_back():
    from serving.app import plan_app, start_app, stop_app
    from serving.config import ServeConfig

    cfg = ServeConfig.model_validate(
        {
            "port": free_port(),
            "models": [
                {
                    "name": "smollm2",
                    "path": "assets:models/SmolLM2-135M-Instruct",
                    "device": "cpu",
                    "replicas": 2,
                    "engine_args": {"enforce_eager": True},
                    "targets": {"context_length": 256, "concurrent_sequences": 8},
                }
            ],
        }
    )
    with ray_session(num_cpus=3):  # 2 engine replicas (1 CPU each) + the ingress (0.5)
        from ray import serve

        running = start_app(plan_app(cfg))
        url = running.url.removesuffix("/v1")
        killed: dict = {}
        children: list[int] = []
        try:
            pids = _replica_pids()
            assert len(pids) == 2, pids
            # each replica's engine threads on its own core (serving.cpu_binding), not both on one
            pinned = [_pinned_cores(p) for p in pids]
            assert all(pinned) and not pinned[0] & pinned[1], pinned
            victim = pids[0]
            children += [p.pid for p in psutil.Process(victim).children(recursive=True)]

            def on_progress(done: int) -> None:
                if done == KILL_AFTER and not killed:
                    os.kill(victim, signal.SIGKILL)  # the replica's process, by its PID
                    killed["at"] = time.monotonic()

            t0 = time.monotonic()
            results = asyncio.run(_load(url, on_progress))
            wall = time.monotonic() - t0
            # back to two running replicas
            deadline = time.monotonic() + 300
            while _running_replicas(cfg.app_name) < 2 and time.monotonic() < deadline:
                time.sleep(2)
            back_s = time.monotonic() - killed["at"]
            back = _running_replicas(cfg.app_name) == 2
            after = asyncio.run(_load_few(url))
        finally:
            stop_app(cfg)
            serve.shutdown()
            for pid in children:  # the killed replica's engine process, if Ray did not reap it
                if psutil.pid_exists(pid):
                    os.kill(pid, signal.SIGKILL)

    kill_t = killed["at"]
    phases = {
        "before": [r for r in results if r["start"] + r["latency"] < kill_t],
        "during": [r for r in results if r["start"] <= kill_t <= r["start"] + r["latency"]],
        "after": [r for r in results if r["start"] > kill_t],
    }
    summary = {}
    for name, rs in phases.items():
        ok = [r["latency"] for r in rs if r["status"] == 200]
        summary[name] = {
            "requests": len(rs),
            "errors": len(rs) - len(ok),
            "p50_s": _pct(ok, 0.5),
            "p99_s": _pct(ok, 0.99),
        }
    failed = [r for r in results if r["status"] != 200]
    hung = [r for r in results if r["latency"] >= TIMEOUT_S]
    record_result(
        "serve_replica_kill",
        {
            "requests": REQUESTS,
            "concurrency": CONCURRENCY,
            "killed_after_requests": KILL_AFTER,
            "failed": len(failed),
            "failed_statuses": sorted({str(r["status"]) for r in failed}),
            "hung": len(hung),
            "replica_back_s": round(back_s, 1),
            "replica_back": back,
            "phases": summary,
            "wall_s": round(wall, 1),
            "after_recovery_ok": after,
        },
    )
    # only the requests in flight when the replica died may fail: at most its share of the concurrency
    assert len(failed) <= CONCURRENCY, failed
    assert not hung
    assert all(r["status"] == 200 for r in phases["before"])
    assert back, f"the killed replica was not replaced within {back_s:.0f}s"
    assert after == 8


async def _load_few(url: str) -> int:
    body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        rs = await asyncio.gather(*(client.post(url + "/v1/completions", json=body) for _ in range(8)))
    return sum(r.status_code == 200 for r in rs)
