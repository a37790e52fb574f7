"""Benchmark: raylm's Ray Serve app vs vLLM alone vs plain transformers `generate`, side by side.

One run, one model, one workload, three systems, each measured alone (never two at once):
  (a) vllm:   vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`), with the engine
              arguments raylm's planner chose, its engine threads on the cores raylm pins
              (`--vllm-auto-bind`: vLLM's own binding) and raylm's OpenMP wait setting
              (serving.cpu_binding.omp_wait_env; `--env GOMP_SPINCOUNT=...` sets it for both);
  (b) raylm:  `serving.app` on an embedded 2-CPU Ray (Ray Serve LLM over the same vLLM engine, behind
              Serve's HAProxy ingress: `cluster.serve_ingress`), same engine arguments, through its
              OpenAI API;
  (c) transformers: the baseline a user would write: `model.generate` on left-padded batches of up to
              `concurrency` requests taken from the queue (static batching), in this process.

Workload (the same token ids for every system; prompts cut from the stdlib's `pydoc_data` text):
  mixed:  prompt lengths uniform in 16..512 tokens, output lengths uniform in 16..256 (`ignore_eos`, so
          every system produces exactly the requested tokens);
  equal:  every prompt 128 tokens, every output 128 tokens (reference);
arrivals: all at once (burst) and, for the mixed workload, Poisson at a rate set to 80% of what vLLM
alone sustained in the burst at that concurrency (the same rate for every system). Concurrency 1, 8, 32
(at most that many requests in flight; the transformers baseline batches at most that many).
TTFT and latency are measured from each request's arrival (queueing included), HTTP clients stream.

Also measured: the planner's KV capacity vs what vLLM logs at start-up and what raylm's engine
allocated, and the most sequences vLLM ran at once before it queued any (vLLM's own /metrics, polled
while `max_num_seqs + 8` requests arrive at once).

Writes benchmarks/results/serve.json (top-level `ratio`: raylm / transformers output tok/s, mixed
burst at concurrency 32; `overhead`: 1 - raylm / vLLM alone, same workload) and serve.md, with the
machine and `os.getloadavg()` sampled during each system's run (other work on the machine skews them).

    python -m benchmarks.serve_bench             # full run with the paired rounds (45-70 min on 2 cores)
    python -m benchmarks.serve_bench --quick     # shorter prompts/outputs, fewer requests (~15 min)

The cells compare request sets measured minutes apart, so a machine whose speed drifts moves their
overhead. So the run ends with `--paired-rounds` (default 4) rounds of benchmarks/serve_overhead_bench.py
on the headline workload: each round starts vLLM alone and raylm afresh on the same fresh requests, order
alternating. `overhead` is their median; the sets' figure stays as `overhead_runs.of_the_sets`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import LoadSampler, machine  # noqa: E402
from cluster.runtime import free_port, isolate_side_files  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL_NAME = "smollm2"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


# --------------------------------------------------------------------------------------------------
# Workload


@dataclass
class Request:
    prompt_ids: list[int]
    max_tokens: int


@dataclass
class Result:
    ttft_s: float
    latency_s: float
    output_tokens: int
    ok: bool = True
    error: str = ""


@dataclass
class Measurement:
    system: str
    workload: str
    arrivals: str
    concurrency: int
    requests: int
    output_tokens: int
    wall_s: float
    output_tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    failed: int
    rate_rps: float | None = None
    loadavg: list[float] = field(default_factory=list)
    repeat: int = 0


def text_token_stream(tokenizer, min_tokens: int) -> list[int]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    while len(ids) < min_tokens:
        ids = ids + ids
    return ids


def make_requests(
    stream: list[int], n: int, prompt_range: tuple[int, int], out_range: tuple[int, int], rng: random.Random
) -> list[Request]:
    reqs = []
    for _ in range(n):
        plen = rng.randint(*prompt_range)
        start = rng.randrange(0, len(stream) - plen)
        reqs.append(Request(stream[start : start + plen], rng.randint(*out_range)))
    return reqs


def poisson_arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(
    system, workload, arrivals, c, results: list[Result], wall, rate=None, load=None
) -> Measurement:
    ok = [r for r in results if r.ok]
    out = sum(r.output_tokens for r in ok)
    return Measurement(
        system=system,
        workload=workload,
        arrivals=arrivals,
        concurrency=c,
        requests=len(results),
        output_tokens=out,
        wall_s=round(wall, 3),
        output_tok_s=round(out / wall, 2) if wall else 0.0,
        ttft_p50_s=round(statistics.median([r.ttft_s for r in ok]), 4) if ok else float("nan"),
        ttft_p99_s=round(pct([r.ttft_s for r in ok], 0.99), 4),
        latency_p50_s=round(statistics.median([r.latency_s for r in ok]), 4) if ok else float("nan"),
        latency_p99_s=round(pct([r.latency_s for r in ok], 0.99), 4),
        failed=len(results) - len(ok),
        rate_rps=round(rate, 4) if rate else None,
        loadavg=[round(x, 2) for x in (load or os.getloadavg())],
    )


# --------------------------------------------------------------------------------------------------
# OpenAI-API clients (vLLM alone and raylm): streamed completions on prompt token ids.


async def _one_http(client, url: str, req: Request, arrival_abs: float, api_key: str | None) -> Result:
    body = {
        "model": MODEL_NAME,
        "prompt": req.prompt_ids,
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ttft, tokens = None, 0
    try:
        async with client.stream("POST", f"{url}/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode()[:200]
                return Result(0, time.perf_counter() - arrival_abs, 0, False, f"{resp.status_code} {text}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and chunk.get("choices"):
                    ttft = time.perf_counter() - arrival_abs
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        return Result(0, time.perf_counter() - arrival_abs, 0, False, repr(exc)[:200])
    latency = time.perf_counter() - arrival_abs
    return Result(ttft if ttft is not None else latency, latency, tokens)


async def _run_http(url, reqs, arrivals, concurrency, api_key=None) -> tuple[list[Result], float]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits) as client:
        t0 = time.perf_counter()

        async def job(req, at):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            async with sem:
                return await _one_http(client, url, req, t0 + at, api_key)

        results = await asyncio.gather(*(job(r, a) for r, a in zip(reqs, arrivals, strict=True)))
        return list(results), time.perf_counter() - t0


def run_http(url, reqs, arrivals, concurrency, api_key=None):
    return asyncio.run(_run_http(url, reqs, arrivals, concurrency, api_key))


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


# --------------------------------------------------------------------------------------------------
# The transformers baseline: static batches of up to `concurrency` queued requests.


def run_transformers(model, tok, reqs, arrivals, concurrency) -> tuple[list[Result], float]:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class FirstToken(StoppingCriteria):
        def __init__(self):
            self.t = None

        def __call__(self, input_ids, scores, **kwargs):
            if self.t is None:
                self.t = time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    results: list[Result | None] = [None] * len(reqs)
    order = sorted(range(len(reqs)), key=lambda i: arrivals[i])
    t0 = time.perf_counter()
    pos = 0
    while pos < len(order):
        now = time.perf_counter() - t0
        if arrivals[order[pos]] > now:
            time.sleep(arrivals[order[pos]] - now)
            now = time.perf_counter() - t0
        batch = []
        while pos < len(order) and len(batch) < concurrency and arrivals[order[pos]] <= now:
            batch.append(order[pos])
            pos += 1
        enc = tok.pad({"input_ids": [reqs[i].prompt_ids for i in batch]}, return_tensors="pt")
        first = FirstToken()
        steps = max(reqs[i].max_tokens for i in batch)
        with torch.inference_mode():
            model.generate(
                **enc,
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([first]),
                pad_token_id=tok.pad_token_id,
            )
        end = time.perf_counter()
        for i in batch:  # a plain generate() returns every sequence when the longest is done
            results[i] = Result(first.t - (t0 + arrivals[i]), end - (t0 + arrivals[i]), reqs[i].max_tokens)
    return [r for r in results if r is not None], time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Systems


def choose_threads(model, tok, stream: list[int], setting: str) -> dict:
    """Set torch's thread count for the baseline: the given number, or the faster of 1 and all cores on
    a 4 x (64 prompt + 16 output) batch, so the baseline is never handicapped by the machine's load."""
    import torch

    probe = [Request(stream[i * 64 : (i + 1) * 64], 16) for i in range(4)]
    if setting != "auto":
        torch.set_num_threads(int(setting))
        run_transformers(model, tok, probe[:1], [0.0], 1)  # warm-up
        return {"threads": int(setting), "chosen": "given"}
    timings = {}
    for n in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(n)
        run_transformers(model, tok, probe[:1], [0.0], 1)  # warm-up
        t0 = time.perf_counter()
        run_transformers(model, tok, probe, [0.0] * 4, 4)
        timings[n] = round(time.perf_counter() - t0, 3)
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return {"threads": best, "chosen": "auto (fastest on calibration)", "calibration_s": timings}




def engine_env(tcmalloc: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(extra or {})
    if tcmalloc and Path(TCMALLOC).exists():
        env["LD_PRELOAD"] = TCMALLOC
    return env


def start_vllm_server(
    model_path: str,
    engine_args: dict,
    port: int,
    log_path: Path,
    tcmalloc: bool,
    extra_env: dict[str, str] | None = None,
):
    args = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for k, v in engine_args.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        elif v is not False:
            args += [flag, str(v)]
    env = {**os.environ, **engine_env(tcmalloc, extra_env)}
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_server
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc._raylm_log = log  # type: ignore[attr-defined]
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    proc._raylm_log.close()  # type: ignore[attr-defined]


def tree_rss_gib(pid: int) -> float:
    """Resident memory of a process and all its descendants (the KV cache included), in GiB."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    return round(sum(p.memory_info().rss for p in procs if p.is_running()) / 2**30, 3)


def replica_rss_gib() -> float | None:
    """The raylm LLM replica's process tree (Serve replica + vLLM engine core + worker)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:raylm:LLMServer" in cmd:
            return tree_rss_gib(p.info["pid"])
    return None


def parse_vllm_kv(log_text: str) -> dict:
    import re

    m = re.search(
        r"KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: "
        r"([\d.]+)x",
        log_text,
    )
    if not m:
        return {}
    return {"kv_cache_size_tokens": int(m.group(1).replace(",", "")), "max_concurrency": float(m.group(3))}


async def _probe_queueing(url: str, metrics_url: str, n: int, stream: list[int]) -> dict:
    """Send n requests at once and poll vLLM's /metrics: the most sequences it ran before queueing."""
    import httpx

    reqs = [Request(stream[i * 7 : i * 7 + 64], 64) for i in range(n)]
    peak_before_wait, peak, first_wait_running = 0, 0, None

    async def poll(stop: asyncio.Event):
        nonlocal peak_before_wait, peak, first_wait_running
        async with httpx.AsyncClient(timeout=10) as c:
            while not stop.is_set():
                text = (await c.get(metrics_url)).text
                running = sum(
                    float(ln.rsplit(" ", 1)[1])
                    for ln in text.splitlines()
                    if ln.startswith("vllm:num_requests_running")
                )
                waiting = sum(
                    float(ln.rsplit(" ", 1)[1])
                    for ln in text.splitlines()
                    if ln.startswith("vllm:num_requests_waiting{")
                    or ln.startswith("vllm:num_requests_waiting ")
                )
                peak = max(peak, running)
                if waiting == 0 and first_wait_running is None:
                    peak_before_wait = max(peak_before_wait, running)
                if waiting > 0 and first_wait_running is None:
                    first_wait_running = running
                await asyncio.sleep(0.1)

    stop = asyncio.Event()
    poller = asyncio.create_task(poll(stop))
    await _run_http(url, reqs, [0.0] * n, n)
    stop.set()
    await poller
    return {
        "requests_sent_at_once": n,
        "max_running_before_queueing": int(peak_before_wait),
        "max_running": int(peak),
        "running_when_first_queued": first_wait_running,
    }


# --------------------------------------------------------------------------------------------------


@dataclass
class EngineSetup:
    """One engine configuration for vLLM alone and raylm: raylm's plan, and what vLLM alone is given."""

    cfg: object  # serving.config.ServeConfig
    app_plan: object  # serving.app.AppPlan
    plan: object  # the model's serving.planner plan
    engine_args: dict
    dtype: str
    tcmalloc: bool
    extra_env: dict[str, str]
    vllm_env: dict[str, str]


def engine_setup(model_path: str, context: int, concurrency: int, args) -> EngineSetup:
    """raylm's planner's engine for `concurrency` sequences of `context` tokens, with the command line's
    --dtype, --compile, --engine-arg, --env, --vllm-auto-bind and --no-tcmalloc applied."""
    import yaml

    from serving import cpu_binding
    from serving.app import plan_app
    from serving.config import ServeConfig

    engine_extra = {"enforce_eager": not args.compile}
    if args.dtype:
        engine_extra["dtype"] = args.dtype
    for item in args.engine_arg:
        key, _, value = item.partition("=")
        engine_extra[key] = yaml.safe_load(value)
    extra_env = dict(item.split("=", 1) for item in args.env)
    cfg = ServeConfig.model_validate(
        {
            "port": free_port(),
            "models": [
                {
                    "name": MODEL_NAME,
                    "path": model_path,
                    "device": "cpu",
                    "engine_args": engine_extra,
                    "targets": {"context_length": context, "concurrent_sequences": concurrency},
                }
            ],
        }
    )
    app_plan = plan_app(cfg)
    plan = app_plan.plans[MODEL_NAME]
    engine_extra = dict(app_plan.config.models[0].engine_args)  # with the dtype raylm chose, if it chose
    engine_args = {**plan.engine_args(), **engine_extra}
    # vLLM alone runs on the same cores raylm pins its replica's engine threads to (the first
    # `cpu_cores` of the node), unless --env says otherwise or --vllm-auto-bind asks for vLLM's own
    # `auto` binding (one core for the scheduler, the OpenMP threads on the rest of the NUMA node).
    vllm_env = dict(extra_env)
    # ... and with the OpenMP wait that raylm gives its CPU engines (serving.cpu_binding.omp_wait_env)
    vllm_env.update(cpu_binding.omp_wait_env({**os.environ, **extra_env}))
    cores = app_plan.cpu_cores.get(MODEL_NAME)
    if cores and not args.vllm_auto_bind and "VLLM_CPU_OMP_THREADS_BIND" not in vllm_env:
        vllm_env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{cores - 1}" if cores > 1 else "0"
    return EngineSetup(
        cfg=cfg,
        app_plan=app_plan,
        plan=plan,
        engine_args=engine_args,
        dtype=engine_args.get("dtype", "bfloat16"),  # vLLM's auto for this bf16 checkpoint
        tcmalloc=not args.no_tcmalloc and Path(TCMALLOC).exists(),
        extra_env=extra_env,
        vllm_env=vllm_env,
    )


@contextmanager
def vllm_alone(model_path: str, setup: EngineSetup, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """vLLM's own OpenAI server on a free port, ready; yields (its /v1 URL, the process). Stopped after."""
    port = free_port()
    proc = start_vllm_server(model_path, setup.engine_args, port, log_path, setup.tcmalloc, setup.vllm_env)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(url, 900, proc)
        yield url, proc
    finally:
        stop_server(proc)


@contextmanager
def raylm_app(setup: EngineSetup) -> Iterator:
    """raylm's app on an embedded 2-CPU Ray, RUNNING; yields serving.app's RunningApp. After: the app is
    deleted, Serve and Ray shut down and this process's environment restored."""
    from cluster.runtime import ray_session
    from serving.app import start_app, stop_app

    env = engine_env(setup.tcmalloc, setup.extra_env)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the embedded Ray's workers inherit it
    try:
        with ray_session(num_cpus=2):
            from ray import serve

            try:
                yield start_app(setup.app_plan)
            finally:
                stop_app(setup.cfg)
                serve.shutdown()
    finally:
        # only these keys: ray_session's per-process auth token must stay for the next session here
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def headline_overhead(single: float | None, repeats: dict[str, list[float]],
                      paired: dict | None) -> tuple[float | None, str]:
    """serve.json's `overhead` and how it was taken, from the best measurement there is: the median of
    the paired rounds (each round both systems on the same fresh requests, minutes apart at most), else
    1 - the ratio of the medians of the headline cell's request sets, else the one headline cell."""
    if paired is not None:
        from benchmarks.serve_overhead_bench import RULE

        return paired["overhead"], f"{RULE} ({len(paired['per_round'])} rounds, after the cells)"
    if len(repeats.get("vllm", [])) > 1 and len(repeats.get("raylm", [])) > 1:
        return (round(1 - statistics.median(repeats["raylm"]) / statistics.median(repeats["vllm"]), 4),
                "1 - median(raylm) / median(vllm) over the headline cell's request sets")
    return single, "one run each"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short prompts/outputs and few requests")
    p.add_argument("--model", default=None, help="model folder (default: the reference SmolLM2-135M)")
    p.add_argument("--systems", default="vllm,raylm,transformers")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument(
        "--dtype",
        default=None,
        help="dtype of all three systems (default: raylm's choice: fp32 on a CPU without native bf16)",
    )
    p.add_argument("--compile", action="store_true", help="let vLLM torch.compile (default: enforce_eager)")
    p.add_argument("--vllm-auto-bind", action="store_true",
                   help="vLLM alone with its own `auto` CPU binding instead of raylm's cores")
    p.add_argument("--no-tcmalloc", action="store_true", help="do not LD_PRELOAD tcmalloc into vLLM")
    p.add_argument(
        "--hf-threads",
        default="auto",
        help="torch threads for the transformers baseline: a "
        "number, or `auto` = the faster of 1 and all cores on a short calibration (on a busy "
        "machine OpenMP's spinning makes all-cores up to 10x slower)",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vLLM engine argument for vllm and raylm (value parsed as YAML), repeatable",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the vLLM processes of vllm and raylm, e.g. "
        "VLLM_CPU_OMP_THREADS_BIND=0-1, repeatable",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1,
                   help="run the headline cell (mixed, all at once, top concurrency) this many times on vLLM "
                        "alone and raylm, each time on fresh requests; without paired rounds `overhead` is "
                        "then 1 - the ratio of their medians (one run on this 2-core VM varies by +-10%%)")
    p.add_argument("--paired-rounds", type=int, default=4,
                   help="after the cells, this many paired rounds of vLLM alone and raylm on the headline "
                        "workload (benchmarks/serve_overhead_bench.py); `overhead` is then their median "
                        "(0: none; needs both systems)")
    p.add_argument("--out", default=str(RESULTS / "serve.json"))
    p.add_argument("--md", default=str(RESULTS / "serve.md"))
    args = p.parse_args(argv)
    if args.paired_rounds < 0:
        p.error(f"--paired-rounds must be 0 or more, got {args.paired_rounds}")

    side = isolate_side_files()
    from pipelines.assets import asset_paths

    model_path = args.model or str(asset_paths().reference_model)
    systems = args.systems.split(",")
    conc = [int(c) for c in args.concurrency.split(",")]
    rng = random.Random(args.seed)
    if args.quick:
        prompt_range, out_range, equal = (16, 256), (16, 64), (64, 32)
        n_for = {c: max(4, 2 * c) if c < 32 else 32 for c in conc}
    else:
        prompt_range, out_range, equal = (16, 512), (16, 256), (128, 128)
        n_for = {c: max(8, 4 * c) if c < 32 else 64 for c in conc}
    context = max(prompt_range[1] + out_range[1], sum(equal))
    context = 1 << (context - 1).bit_length()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    stream = text_token_stream(tok, 4 * prompt_range[1])

    workloads: dict[tuple[str, int], list[Request]] = {}
    for c in conc:
        workloads[("mixed", c)] = make_requests(stream, n_for[c], prompt_range, out_range, rng)
        fixed_p, fixed_o = (equal[0], equal[0]), (equal[1], equal[1])
        workloads[("equal", c)] = make_requests(stream, n_for[c], fixed_p, fixed_o, rng)

    setup = engine_setup(model_path, context, max(conc), args)
    cfg, plan = setup.cfg, setup.plan
    engine_args, dtype, tcmalloc = setup.engine_args, setup.dtype, setup.tcmalloc
    extra_env, vllm_env = setup.extra_env, setup.vllm_env
    print(f"engine args: {engine_args} (tcmalloc: {tcmalloc})", flush=True)

    measurements: list[Measurement] = []
    loads: dict[str, dict] = {}
    rates: dict[int, float] = {}
    kv: dict = {"planned_tokens": plan.kv_capacity_tokens, "planned_blocks": plan.num_blocks}
    queueing: dict = {}
    startup: dict[str, float] = {}
    memory: dict[str, float] = {}
    hf_info: dict = {}

    def run_suite(system: str, runner) -> None:
        for c in conc:
            for workload, arrivals_kind in (("mixed", "burst"), ("mixed", "poisson"), ("equal", "burst")):
                reqs = workloads[(workload, c)]
                if arrivals_kind == "poisson":
                    if c not in rates:
                        continue
                    arrivals = poisson_arrivals(len(reqs), rates[c], random.Random(args.seed + c))
                else:
                    arrivals = [0.0] * len(reqs)
                load0 = os.getloadavg()
                results, wall = runner(reqs, arrivals, c)
                m = summarize(
                    system,
                    workload,
                    arrivals_kind,
                    c,
                    results,
                    wall,
                    rates.get(c) if arrivals_kind == "poisson" else None,
                    load0,
                )
                measurements.append(m)
                print(
                    f"{system:>12} {workload}/{arrivals_kind:<7} c={c:<3} {m.output_tok_s:8.1f} tok/s  "
                    f"TTFT p50 {m.ttft_p50_s:.2f}s p99 {m.ttft_p99_s:.2f}s  lat p50 {m.latency_p50_s:.2f}s "
                    f"p99 {m.latency_p99_s:.2f}s  failed {m.failed}  load {m.loadavg[0]}",
                    flush=True,
                )
                if system == "vllm" and workload == "mixed" and arrivals_kind == "burst":
                    rates[c] = 0.8 * len(reqs) / wall
                if (workload, arrivals_kind, c) == ("mixed", "burst", max(conc)) and system != "transformers":
                    for r in range(1, args.repeats):
                        again = make_requests(stream, len(reqs), prompt_range, out_range,
                                              random.Random(args.seed * 1000 + 100 + r))
                        load0 = os.getloadavg()
                        results, wall = runner(again, [0.0] * len(again), c)
                        m = summarize(system, workload, arrivals_kind, c, results, wall, None, load0)
                        m.repeat = r
                        measurements.append(m)
                        print(f"{system:>12} {workload}/{arrivals_kind:<7} c={c:<3} "
                              f"{m.output_tok_s:8.1f} tok/s  (repeat {r}, fresh requests)", flush=True)

    logs = Path(side.scratch) / "serve_bench"
    logs.mkdir(parents=True, exist_ok=True)
    if "vllm" in systems:
        t0 = time.perf_counter()
        with vllm_alone(model_path, setup, logs / "vllm.log") as (url, proc):
            startup["vllm"] = round(time.perf_counter() - t0, 1)
            kv["vllm_reported"] = parse_vllm_kv((logs / "vllm.log").read_text())
            memory["vllm_server_rss_gib"] = tree_rss_gib(proc.pid)
            with LoadSampler() as load:
                run_suite("vllm", lambda r, a, c: run_http(url, r, a, c))
                queueing = asyncio.run(
                    _probe_queueing(url, url.removesuffix("/v1") + "/metrics", plan.max_num_seqs + 8, stream)
                )
            loads["vllm"] = load.summary()

    if "raylm" in systems:
        from serving.metrics import engine_kv_info

        t0 = time.perf_counter()
        with raylm_app(setup) as running:
            startup["raylm"] = round(time.perf_counter() - t0, 1)
            kv["raylm_engine"] = engine_kv_info(cfg.app_name, MODEL_NAME)
            memory["raylm_replica_rss_gib"] = replica_rss_gib()
            with LoadSampler() as load:
                run_suite("raylm", lambda r, a, c: run_http(running.url, r, a, c))
            loads["raylm"] = load.summary()

    if "transformers" in systems:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        model.generation_config.eos_token_id = None  # like ignore_eos: exactly the requested tokens
        hf_threads = choose_threads(model, tok, stream, args.hf_threads)
        with LoadSampler() as load:
            run_suite("transformers", lambda r, a, c: run_transformers(model, tok, r, a, c))
        loads["transformers"] = load.summary()
        hf_info["threads"] = hf_threads

    def tok_s(system, workload="mixed", arrivals="burst", c=max(conc)):
        for m in measurements:
            key = (m.system, m.workload, m.arrivals, m.concurrency, m.repeat)
            if key == (system, workload, arrivals, c, 0):
                return m.output_tok_s
        return None

    headline = ("mixed", "burst", max(conc))
    repeats = {
        system: [m.output_tok_s for m in measurements
                 if m.system == system and (m.workload, m.arrivals, m.concurrency) == headline]
        for system in ("vllm", "raylm")
    }

    ratios = {}
    for w, a in (("mixed", "burst"), ("mixed", "poisson"), ("equal", "burst")):
        r, v, t = tok_s("raylm", w, a), tok_s("vllm", w, a), tok_s("transformers", w, a)
        ratios[f"{w}/{a}"] = {
            "raylm_over_transformers": round(r / t, 3) if r and t else None,
            "vllm_over_transformers": round(v / t, 3) if v and t else None,
            "overhead_vs_vllm": round(1 - r / v, 4) if r and v else None,
        }
    if "vllm_reported" in kv and kv["vllm_reported"]:
        got = kv["vllm_reported"]["kv_cache_size_tokens"]
        kv["relative_error_vs_vllm_log"] = round(abs(kv["planned_tokens"] - got) / got, 5)
    if "raylm_engine" in kv:
        got = kv["raylm_engine"]["kv_cache_size_tokens"]
        kv["relative_error_vs_raylm_engine"] = round(abs(kv["planned_tokens"] - got) / got, 5)

    import ray
    import torch
    import vllm

    paired = None
    if args.paired_rounds and {"vllm", "raylm"} <= set(systems):
        from benchmarks.serve_overhead_bench import paired_overhead, paired_rounds

        rounds = paired_rounds(model_path, setup, stream, logs, n_rounds=args.paired_rounds,
                               requests=n_for[max(conc)], concurrency=max(conc), prompt_range=prompt_range,
                               out_range=out_range, seed=args.seed + 1)
        paired = {**paired_overhead(rounds), "rounds": [
            {"round": x["round"], "order": x["order"], "vllm": x["vllm"], "raylm": x["raylm"],
             "failed": x["results"]["vllm"]["failed"] + x["results"]["raylm"]["failed"]} for x in rounds]}
    overhead, rule = headline_overhead(ratios["mixed/burst"]["overhead_vs_vllm"], repeats, paired)
    report = {
        "ratio": ratios["mixed/burst"]["raylm_over_transformers"],
        "overhead": overhead,
        "overhead_runs": {"repeats": args.repeats, "output_tok_s": repeats, "rule": rule,
                          "of_the_sets": headline_overhead(ratios["mixed/burst"]["overhead_vs_vllm"],
                                                           repeats, None)[0],
                          "paired": paired},
        "ratios": ratios,
        "headline": f"mixed workload, all at once, concurrency {max(conc)}",
        "quick": args.quick,
        "machine": {**machine(), "vllm": vllm.__version__, "ray": ray.__version__},
        "transformers_baseline": hf_info,
        "loadavg": loads,
        "workload": {
            "prompt_tokens": prompt_range,
            "output_tokens": out_range,
            "equal": equal,
            "requests_per_concurrency": n_for,
            "poisson_rate_rps": {c: round(r, 4) for c, r in rates.items()},
            "seed": args.seed,
        },
        "engine": {"args": engine_args, "tcmalloc": tcmalloc, "model": model_path, "env": extra_env,
                   "vllm_env": vllm_env},
        "startup_s": startup,
        "memory": memory,
        "kv_cache": kv,
        "queueing": queueing,
        "results": [asdict(m) for m in measurements],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    Path(args.md).write_text(render_md(report))
    print(f"ratio (raylm / transformers) = {report['ratio']}, overhead vs vLLM = {report['overhead']}")
    print(f"wrote {args.out} and {args.md}")
    return 0


def _overhead_lines(runs: dict) -> list[str]:
    lines = [f"The headline cell's request sets, output tok/s: {runs['output_tok_s']} (overhead from them: "
             f"{runs.get('of_the_sets')})."]
    paired = runs.get("paired")
    if paired:
        lines += ["", "Paired rounds (vLLM alone and raylm started afresh each round, the same fresh "
                  "requests, order alternating):", "",
                  "| round | first | vLLM alone tok/s | raylm tok/s | overhead |",
                  "|---:|---|---:|---:|---:|"]
        for x, o in zip(paired["rounds"], paired["per_round"], strict=True):
            lines.append(f"| {x['round']} | {x['order'][0]} | {x['vllm']:.1f} | {x['raylm']:.1f} | {o} |")
        lines += ["", f"Median {paired['overhead']} (range {paired['min']} to {paired['max']}; 1 - the ratio "
                  f"of the medians {paired['of_medians']})."]
    return [*lines, ""]


def render_md(r: dict) -> str:
    m = r["machine"]
    loads = ", ".join(f"{k} mean {v['load1_mean']} (max {v['load1_max']})" for k, v in r["loadavg"].items())
    lines = [
        "# Serving benchmark: raylm (Ray Serve + vLLM) vs vLLM alone vs transformers `generate`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB; torch {m['torch']}, "
        f"vLLM {m['vllm']}, Ray {m['ray']}. {'Quick mode. ' if r['quick'] else ''}"
        f"Load average (1 min) during each system's run: {loads}. Other work on the machine slows every "
        "figure below.",
        "",
        f"Headline ({r['headline']}): **raylm / transformers = {r['ratio']}**, "
        f"**overhead of Ray Serve over vLLM alone = {r['overhead']}** (1 - raylm/vLLM, output tok/s; "
        f"{r['overhead_runs']['rule']}).",
        "",
        *_overhead_lines(r["overhead_runs"]),
        f"Engine (planner's choice): `{json.dumps(r['engine']['args'])}`, "
        f"tcmalloc {r['engine']['tcmalloc']}. Start-up: {r['startup_s']} s. Memory: {r['memory']}. "
        f"Transformers baseline: {r['transformers_baseline']}.",
        "",
        "| system | workload | arrivals | conc. | req | out tok/s | TTFT p50 | TTFT p99 | latency p50 "
        "| latency p99 | failed | load1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = sorted(r["results"], key=lambda x: (x["workload"], x["arrivals"], x["concurrency"], x["system"],
                                                 x.get("repeat", 0)))
    for x in order:
        rate = f" {x['rate_rps']} rps" if x["rate_rps"] else ""
        rate += f" (repeat {x['repeat']})" if x.get("repeat") else ""
        cells = [
            x["system"],
            x["workload"],
            x["arrivals"] + rate,
            x["concurrency"],
            x["requests"],
            f"{x['output_tok_s']:.1f}",
            f"{x['ttft_p50_s']:.2f}",
            f"{x['ttft_p99_s']:.2f}",
            f"{x['latency_p50_s']:.2f}",
            f"{x['latency_p99_s']:.2f}",
            x["failed"],
            x["loadavg"][0],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    kv = r["kv_cache"]
    top = max(int(k) for k in r["workload"]["requests_per_concurrency"])
    lines += [
        "",
        f"Ratios by workload (concurrency {top}): " + "; ".join(f"{k}: {v}" for k, v in r["ratios"].items()),
        "",
        f"KV capacity: planner {kv.get('planned_tokens')} tokens ({kv.get('planned_blocks')} blocks); "
        f"vLLM logged {kv.get('vllm_reported', {}).get('kv_cache_size_tokens')}; raylm's engine "
        f"{kv.get('raylm_engine', {}).get('kv_cache_size_tokens')}.",
        f"Queueing probe (vLLM alone): {r['queueing']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
