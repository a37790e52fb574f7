"""Benchmark: Ray Serve's overhead over vLLM alone, in paired rounds.

`serve_bench.py` measures every vLLM-alone cell first and every raylm cell after it. On a shared VM the
machine's speed drifts over minutes: vLLM alone measured 128-168 output tok/s in different runs of the same
command on the same 2-core VM, so the gap between two blocks of ten minutes each is partly the drift. Here
each round starts vLLM alone and raylm's app one after the other on one fresh set of requests (the order
alternates round by round: vLLM first, then raylm first, ...), and the overhead is taken per round:

    overhead_r = 1 - raylm_r / vllm_r        (output tokens/s of the same requests)
    overhead   = median over the rounds

so drift slower than a round cancels out. Every system run starts its server afresh (as a service would
be), sends a few short warm-up requests, then the measured requests all at once, at most `concurrency` in
flight, streamed. Engine arguments, cores and allocator are serve_bench's: raylm's planner's choice, the
same for both.

Writes benchmarks/results/serve_overhead.json (top-level `overhead`, `rounds`) and serve_overhead.md.

    python -m benchmarks.serve_overhead_bench                 # 4 rounds of 64 mixed requests at 32 (~17 min)
    python -m benchmarks.serve_overhead_bench --rounds 2 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from benchmarks.serve_bench import (  # noqa: E402
    RESULTS,
    Request,
    engine_setup,
    make_requests,
    raylm_app,
    run_http,
    summarize,
    text_token_stream,
    vllm_alone,
)
from cluster.runtime import isolate_side_files  # noqa: E402

SYSTEMS = ("vllm", "raylm")
WARMUP_REQUESTS = 4
RULE = "median over rounds of 1 - raylm / vLLM alone, both on the same fresh requests, order alternating"


def round_order(r: int) -> tuple[str, str]:
    """Which system runs first in round r: vLLM alone in even rounds, raylm in odd ones, so that a
    steady drift of the machine's speed favours neither."""
    return SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]


def paired_overhead(rounds: list[dict[str, float]]) -> dict:
    """The overhead of raylm over vLLM alone from rounds of {"vllm": tok/s, "raylm": tok/s}: per round,
    their median (the headline), their range, and 1 - the ratio of the medians for comparison with
    serve_bench's figure."""
    if not rounds:
        raise ValueError("no rounds to compare")
    for i, r in enumerate(rounds):
        if not r.get("vllm") or r.get("raylm") is None:
            raise ValueError(f"round {i}: no vLLM-alone or raylm throughput ({r})")
    per_round = [1 - r["raylm"] / r["vllm"] for r in rounds]
    return {
        "overhead": round(statistics.median(per_round), 4),
        "per_round": [round(o, 4) for o in per_round],
        "min": round(min(per_round), 4),
        "max": round(max(per_round), 4),
        "of_medians": round(1 - statistics.median(r["raylm"] for r in rounds)
                            / statistics.median(r["vllm"] for r in rounds), 4),
    }


def paired_rounds(model_path: str, setup, stream: list[int], logs: Path, *, n_rounds: int, requests: int,
                  concurrency: int, prompt_range: tuple[int, int], out_range: tuple[int, int],
                  seed: int = 0) -> list[dict]:
    """Run `n_rounds` rounds: each starts vLLM alone and raylm's app (order: `round_order`) on the same
    fresh `requests` mixed requests, after WARMUP_REQUESTS short warm-up requests per server. Returns one
    row per round: {"round", "order", "results": {system: Measurement as dict}, "vllm": tok/s,
    "raylm": tok/s}."""
    warmup = [Request(stream[i * 64 : (i + 1) * 64], 16) for i in range(WARMUP_REQUESTS)]

    def measure(system: str, url: str, reqs: list[Request], r: int) -> dict:
        run_http(url, warmup, [0.0] * len(warmup), len(warmup))
        load0 = os.getloadavg()
        results, wall = run_http(url, reqs, [0.0] * len(reqs), concurrency)
        m = summarize(system, "mixed", "burst", concurrency, results, wall, None, load0)
        m.repeat = r
        print(f"round {r} {system:>6}: {m.output_tok_s:7.1f} tok/s  TTFT p50 {m.ttft_p50_s:.2f}s  "
              f"failed {m.failed}  load {m.loadavg[0]}", flush=True)
        return asdict(m)

    rounds: list[dict] = []
    for r in range(n_rounds):
        rng = random.Random(seed * 1000 + r)
        reqs = make_requests(stream, requests, prompt_range, out_range, rng)
        row: dict = {"round": r, "order": list(round_order(r)), "results": {}}
        for system in round_order(r):
            if system == "vllm":
                with vllm_alone(model_path, setup, logs / f"vllm-{r}.log") as (url, _proc):
                    row["results"]["vllm"] = measure("vllm", url, reqs, r)
            else:
                with raylm_app(setup) as running:
                    row["results"]["raylm"] = measure("raylm", running.url, reqs, r)
        row["vllm"] = row["results"]["vllm"]["output_tok_s"]
        row["raylm"] = row["results"]["raylm"]["output_tok_s"]
        rounds.append(row)
    return rounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4,
                   help="paired rounds (each: vLLM alone and raylm); even: each system first as often")
    p.add_argument("--quick", action="store_true", help="prompts of 16-256, outputs of 16-64 tokens")
    p.add_argument("--requests", type=int, default=64, help="measured requests per system and round")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--model", default=None, help="model folder (default: the reference SmolLM2-135M)")
    p.add_argument("--dtype", default=None, help="as serve_bench (default: raylm's choice)")
    p.add_argument("--compile", action="store_true", help="let vLLM torch.compile (default: enforce_eager)")
    p.add_argument("--vllm-auto-bind", action="store_true", help="vLLM alone with its own CPU binding")
    p.add_argument("--no-tcmalloc", action="store_true", help="do not LD_PRELOAD tcmalloc into vLLM")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument for both systems (value parsed as YAML), repeatable")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the vLLM processes of both systems, repeatable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "serve_overhead.json"))
    p.add_argument("--md", default=str(RESULTS / "serve_overhead.md"))
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")

    side = isolate_side_files()
    from transformers import AutoTokenizer

    from pipelines.assets import asset_paths

    model_path = args.model or str(asset_paths().reference_model)
    prompt_range, out_range = ((16, 256), (16, 64)) if args.quick else ((16, 512), (16, 256))
    context = 1 << (prompt_range[1] + out_range[1] - 1).bit_length()
    tok = AutoTokenizer.from_pretrained(model_path)
    stream = text_token_stream(tok, 4 * prompt_range[1])
    setup = engine_setup(model_path, context, args.concurrency, args)
    print(f"engine args: {setup.engine_args} (tcmalloc: {setup.tcmalloc})", flush=True)
    logs = Path(side.scratch) / "serve_overhead_bench"
    logs.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    rounds = paired_rounds(model_path, setup, stream, logs, n_rounds=args.rounds, requests=args.requests,
                           concurrency=args.concurrency, prompt_range=prompt_range, out_range=out_range,
                           seed=args.seed)
    wall_s = round(time.perf_counter() - t_start, 1)

    import ray
    import vllm

    failed = sum(x["results"][s]["failed"] for x in rounds for s in SYSTEMS)
    summary = paired_overhead([{s: x[s] for s in SYSTEMS} for x in rounds])
    report = {
        **summary,
        "rule": RULE,
        "failed_requests": failed,
        "rounds": rounds,
        "workload": {"prompt_tokens": prompt_range, "output_tokens": out_range, "requests": args.requests,
                     "concurrency": args.concurrency, "arrivals": "all at once", "seed": args.seed,
                     "warmup_requests": WARMUP_REQUESTS},
        "machine": {**machine(), "vllm": vllm.__version__, "ray": ray.__version__},
        "engine": {"args": setup.engine_args, "tcmalloc": setup.tcmalloc, "model": model_path,
                   "env": setup.extra_env, "vllm_env": setup.vllm_env},
        "wall_s": wall_s,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    Path(args.md).write_text(render_md(report))
    print(f"overhead (median of {len(rounds)} paired rounds) = {report['overhead']} "
          f"(rounds {report['per_round']}); failed requests {failed}")
    print(f"wrote {args.out} and {args.md}")
    return 0


def render_md(r: dict) -> str:
    m, w = r["machine"], r["workload"]
    lines = [
        "# Ray Serve's overhead over vLLM alone, paired rounds",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB; torch {m['torch']}, "
        f"vLLM {m['vllm']}, Ray {m['ray']}. Workload: {w['requests']} requests, prompts of "
        f"{w['prompt_tokens'][0]}-{w['prompt_tokens'][1]} tokens, outputs of "
        f"{w['output_tokens'][0]}-{w['output_tokens'][1]}, "
        f"all at once, concurrency {w['concurrency']}; fresh requests each round, the same for both "
        f"systems. {len(r['rounds'])} rounds in {r['wall_s']} s.",
        "",
        f"**Overhead: {r['overhead']}** (the median of the rounds' 1 - raylm / vLLM alone; range "
        f"{r['min']} to {r['max']}; 1 - the ratio of the medians: {r['of_medians']}). Failed requests: "
        f"{r['failed_requests']}.",
        "",
        f"Engine (planner's choice, both systems): `{json.dumps(r['engine']['args'])}`, tcmalloc "
        f"{r['engine']['tcmalloc']}, vLLM alone's env {r['engine']['vllm_env']}.",
        "",
        "| round | first | vLLM alone tok/s | raylm tok/s | overhead | TTFT p50 vLLM / raylm (s) | load1 |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for x, o in zip(r["rounds"], r["per_round"], strict=True):
        v, y = x["results"]["vllm"], x["results"]["raylm"]
        lines.append(
            f"| {x['round']} | {x['order'][0]} | {x['vllm']:.1f} | {x['raylm']:.1f} | {o:.1%} | "
            f"{v['ttft_p50_s']:.2f} / {y['ttft_p50_s']:.2f} | {v['loadavg'][0]} / {y['loadavg'][0]} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
