"""Generation speed of model folders in vLLM, measured in interleaved rounds (A, B, C, A, B, C, ...) so
that slow drift of the machine falls on every folder alike. The first folder is the reference: each
folder's ratio is its median tok/s over the reference's median.

    .venv/bin/python benchmarks/compress_speed.py BASE FOLDER [FOLDER ...] --rounds 3

One vLLM process per measurement (`pipelines.compress.measure.vllm_speed`, the call the compress stage
makes with `measure_vllm`): engine start-up (20-30 s on 2 cores) in the dtype raylm's serving app would
pick, a warm-up, then greedy decodes of `--tokens` tokens, three of one sequence and three of `--batch`
sequences at once; each figure is the median of its three. Why rounds: on the 2-core dev VMs one
folder's figure moved by up to 15% from one process to the next, while the three decodes inside one
process agreed within 3%.

Writes benchmarks/results/compress_speed.json (every measurement, the medians and the ratios) and
compress_speed.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LoadSampler, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="model folders; the first is the reference (e.g. the base)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens per decode")
    ap.add_argument("--batch", type=int, default=16, help="sequences decoded at once in the batch figure")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.batch < 2:
        ap.error("--batch must be at least 2 (the one-sequence figure is always measured)")

    from pipelines.compress.measure import vllm_speed

    one: dict[str, list[float]] = {f: [] for f in args.folders}
    batch: dict[str, list[float]] = {f: [] for f in args.folders}
    dtypes: dict[str, str] = {}
    t0 = time.perf_counter()
    with LoadSampler() as load:
        for r in range(args.rounds):
            for folder in args.folders:
                res = vllm_speed(folder, args.tokens, args.batch)
                if "error" in res:
                    sys.exit(f"compress_speed: {folder}: vLLM failed:\n{res['error']}")
                one[folder].append(round(res["tokens_per_s"], 2))
                batch[folder].append(round(res["batch_tokens_per_s"], 2))
                dtypes[folder] = res["dtype"]
                print(f"round {r + 1}: {folder}: {res['tokens_per_s']:.2f} tok/s, "
                      f"{res['batch_tokens_per_s']:.2f} tok/s at batch {args.batch}", flush=True)
    ref, ref_b = statistics.median(one[args.folders[0]]), statistics.median(batch[args.folders[0]])
    rows = {
        f: {
            "dtype": dtypes[f],
            "tokens_per_s": one[f],
            "median": statistics.median(one[f]),
            "ratio": round(statistics.median(one[f]) / ref, 3),
            "batch_tokens_per_s": batch[f],
            "batch_median": statistics.median(batch[f]),
            "batch_ratio": round(statistics.median(batch[f]) / ref_b, 3),
        }
        for f in args.folders
    }
    doc = {
        "reference": args.folders[0],
        "rounds": args.rounds,
        "tokens": args.tokens,
        "batch": args.batch,
        "folders": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
        "load": load.summary(),
        "machine": machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compress_speed.json").write_text(json.dumps(doc, indent=2))
    lines = [
        f"# vLLM generation speed, {args.rounds} interleaved rounds ({args.tokens} greedy tokens)",
        "",
        f"| folder | dtype | 1 sequence: tok/s per round | median | vs reference | {args.batch} sequences: "
        "tok/s per round | median | vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, row in rows.items():
        per = ", ".join(f"{x:.1f}" for x in row["tokens_per_s"])
        per_b = ", ".join(f"{x:.1f}" for x in row["batch_tokens_per_s"])
        lines.append(f"| {Path(f).name} | {row['dtype']} | {per} | {row['median']:.2f} | {row['ratio']:.3f}x "
                     f"| {per_b} | {row['batch_median']:.2f} | {row['batch_ratio']:.3f}x |")
    lines += ["", f"machine: {doc['machine']}", f"load average during the run: {doc['load']}", ""]
    (out / "compress_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
