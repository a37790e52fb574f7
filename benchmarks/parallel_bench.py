"""3D-parallel training throughput and memory per layout, and weak scaling, on this machine's CPUs.

    flock /tmp/raylm-heavy.lock nice -n 5 .venv/bin/python -m benchmarks.parallel_bench [--device cpu]

Every layout trains the same model (the `small` decoder by default, with 4 kv heads so that tp 2 splits
them) on the same global batch (`--global-micro` micro-batches of `--micro-batch` sequences per step:
grad_accum_steps = global-micro / dp) for `--steps` steps in gloo processes spawned here
(`pipelines/parallel/harness.py`, the trainer the Ray Train worker runs); tokens/s is over the steps after
the first two. Weak scaling: data parallel over 1, 2, 4 workers with the per-worker batch fixed.
Results -> benchmarks/results/parallel.json, one entry per layout named like `dp2xpp1xtp1`, with the
machine and the load average sampled while it ran (4 processes on a 2-core machine share the cores:
these figures show what each layout costs in communication, not what a real cluster gains).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import LoadSampler, machine
from pipelines.parallel.harness import RunSpec, run_layouts
from pipelines.parallel.layout import Layout, check_layout

RESULTS = Path(__file__).parent / "results" / "parallel.json"


def summarize(name: str, layout: Layout, ranks: list[dict], tokens_per_step: int) -> dict:
    steady = [max(r["step_s"][i] for r in ranks) for i in range(2, len(ranks[0]["step_s"]))]
    step_s = statistics.median(steady)
    return {
        "name": name,
        "layout": layout.key,
        "workers": layout.world,
        "tokens_per_step": tokens_per_step,
        "step_s_median": round(step_s, 4),
        "tokens_per_s": round(tokens_per_step / step_s, 1),
        "final_loss": ranks[0]["losses"][-1],
        "parameters_per_worker": [r["local_parameters"] for r in ranks],
        "peak_rss_gb_per_worker": [round(r["peak_rss_gb"], 3) for r in ranks],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--global-micro", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu", help="label of the machine the results came from")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    model = {"family": "decoder", "preset": args.preset, "num_kv_heads": 4, "num_heads": 4}
    pretrain = {
        "precision": "fp32",
        "zero_stage": 1,
        "micro_batch_size": args.micro_batch,
        "max_steps": 100,
        "warmup_steps": 1,
        "lr": 1e-3,
        "use_gpu": False,
    }
    tokens_per_micro = args.micro_batch * args.seq_len
    by_world = {
        1: [Layout(1, 1, 1)],
        2: [Layout(2, 1, 1), Layout(1, 2, 1), Layout(1, 1, 2)],
        4: [Layout(4, 1, 1), Layout(2, 2, 1), Layout(2, 1, 2), Layout(1, 2, 2)],
        8: [Layout(2, 2, 2)],
    }
    layouts, weak, refused = {}, {}, {}
    t0 = time.time()
    with LoadSampler() as load:
        for world, candidates in by_world.items():
            runnable = []
            for layout in candidates:
                problems = check_layout(
                    layout,
                    0 if layout.tp > 1 and layout.pp == 1 else 1,  # as the harness runs it
                    model={"num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 704},
                )
                if problems:
                    refused[layout.key] = problems
                else:
                    runnable.append(layout)
            names = [x.key for x in runnable]
            overrides = [{"grad_accum_steps": args.global_micro // x.dp} for x in runnable]
            if world < 4:  # weak scaling: data parallel, the per-worker batch of the 4-worker layout
                names.append(f"weak_w{world}")
                runnable.append(Layout(world, 1, 1))
                overrides.append({"grad_accum_steps": max(1, args.global_micro // 4)})
            spec = RunSpec(
                model,
                pretrain,
                runnable,
                steps=args.steps,
                seq_len=args.seq_len,
                vocab_size=2048,
                names=names,
                overrides=overrides,
            )
            results = run_layouts(spec)
            for name, layout, ov in zip(names, runnable, overrides, strict=True):
                tokens = tokens_per_micro * ov["grad_accum_steps"] * layout.dp
                entry = summarize(name, layout, results[name], tokens)
                print(json.dumps(entry), flush=True)
                if name.startswith("weak"):
                    weak[world] = entry
                else:
                    layouts[layout.key] = entry
        weak[4] = layouts["dp4xpp1xtp1"]
    base = weak[1]["tokens_per_s"]
    out = {
        "device": args.device,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 1),
        "load": load.summary(),
        "settings": vars(args) | {"model": model, "pretrain": pretrain},
        "layouts": layouts,
        "refused": refused,
        "weak_scaling": [
            {"workers": w, "tokens_per_s": e["tokens_per_s"], "speedup": round(e["tokens_per_s"] / base, 3)}
            for w, e in sorted(weak.items())
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
