"""Benchmark: raylm's data stage on the embedded Ray (2 CPUs) against a plain single-process pandas /
scipy / nltk / datasketch script (`data_baseline.py`), on the same input and the same operator chain.

For each size (default 50k, 200k, 800k and 3.2M documents built from the bundled corpus by
`data_corpus.py`; the baseline up to 800k) it runs, each in its own process:
  (a) baseline: `data_baseline.py`;
  (b) raylm: the data stage of `RECIPE` below through `cluster.orchestrate.run_recipe`, on an embedded Ray
      with 2 CPUs (Ray start-up included in the time);
  (c) with --local-ops (on by default at the headline size): raylm's operators in one process without
      Ray (`pipelines.data.local`), which separates what parallelism gives from what the operators'
      implementation gives.
Memory is the peak, over 1 s samples, of the proportional set size (PSS) summed over the process and
all its descendants (Ray's GCS, raylet and workers included; PSS counts shared pages once).

Writes benchmarks/results/data.json (top-level `ratio`: raylm docs/s / baseline docs/s at 200k) and
benchmarks/results/data.md.

    python -m benchmarks.data_bench            # 50k ... 3.2M (about 25 minutes on 2 cores)
    python -m benchmarks.data_bench --quick    # 1k documents, a smoke test (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/data_bench.py`
    sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEADLINE = 200_000

RECIPE = {
    "name": "data-bench",
    # Ray's object store is shared memory whose pages stay resident once touched; by default it may grow
    # to 30% of RAM, so its size would track the machine, not the pipeline. Bounded as a user bounds it.
    "cluster": {"num_cpus": 2, "object_store_memory_gb": 1.0},
    "data": {
        "inputs": [{"path": "INPUT", "format": "jsonl"}],
        "columns": {"id": "int", "source": "str", "n_words": "int", "score": "float"},
        "batch_size": 1024,
        "operators": [
            {"op": "clean_special_characters", "newlines_tabs": "space"},
            {"op": "normalize_whitespace"},
            {"op": "scrub_pii"},
            {"op": "quality_filter"},
            {"op": "exact_dedup"},
            {"op": "near_dedup", "threshold": 0.8, "num_perm": 128, "ngram": 5},
            {"op": "zscore_outliers", "columns": ["score"], "threshold": 3},
            {"op": "fill_missing", "strategy": "mean", "columns": ["score"]},
            {"op": "lowercase", "output": "text_norm"},
            {"op": "remove_punctuation", "column": "text_norm"},
            {"op": "lemmatize", "column": "text_norm"},
        ],
    },
}


# ------------------------------------------------------------------------------------------------------
# Workers (run in a subprocess each)


def worker_raylm(input_dir: str, out_dir: str) -> dict:
    from cluster.config import Recipe
    from cluster.orchestrate import run_recipe

    recipe = json.loads(json.dumps(RECIPE).replace("INPUT", input_dir))
    recipe["run_dir"] = out_dir
    t0 = time.perf_counter()
    results = run_recipe(Recipe.model_validate(recipe), force={"all"}, only={"data"}, log=lambda s: None)
    wall = time.perf_counter() - t0
    m = results[0].manifest
    return {
        "rows_in": m.metrics["rows_in"],
        "rows_out": m.metrics["rows_out"],
        "wall_s": wall,
        "stage_s": m.timings["wall_s"],
        "quarantined": m.metrics["quarantined"],
    }


def worker_local(input_dir: str, out_dir: str) -> dict:
    from pipelines.data.config import DataConfig
    from pipelines.data.local import run_clean_local

    cfg = DataConfig.model_validate(json.loads(json.dumps(RECIPE["data"]).replace("INPUT", input_dir)))
    t0 = time.perf_counter()
    stats = run_clean_local(cfg, out_dir)
    return {
        "rows_in": stats["rows_in"],
        "rows_out": stats["rows_out"],
        "wall_s": time.perf_counter() - t0,
        "quarantined": stats["quarantined_total"],
    }


# ------------------------------------------------------------------------------------------------------
# Measuring a subprocess tree


def _label(p) -> str:
    """A process' role: a Ray worker's title (`ray::MapBatches(...)`, `ray::IDLE`, an actor's class), or
    the program (gcs_server, raylet, dashboard, the driver `benchmarks.data_bench`)."""
    try:
        cmd = p.cmdline()
    except Exception:  # noqa: BLE001 - the process may be gone
        return "?"
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::"):
        return " ".join(cmd)[:80].strip()
    prog = Path(cmd[0]).name
    if prog.startswith("python") and len(cmd) > 1:
        rest = [c for c in cmd[1:] if not c.startswith("-")][:1]
        if "-m" in cmd:
            rest = [cmd[cmd.index("-m") + 1]]
        return f"{prog} {Path(rest[0]).name if rest else ''}".strip()
    return prog


def _tree_memory(proc, per_process: list | None = None) -> tuple[int, int, int]:
    """(PSS, RSS, shared-memory PSS) in bytes summed over a process and its descendants; `per_process`
    (when given) gets (pid, label, pss, uss) per process (USS: its private pages; PSS minus USS is its
    share of shared pages). The third figure is the PSS of `/dev/shm` mappings: Ray's object store, a
    shared-memory file the raylet maps whole, so it counts every page the store has touched. The store
    keeps a page once it has held an object (its allocator does not give pages back), so this part grows
    with the input until `object_store_memory_gb`, the budget the recipe sets."""
    import psutil

    pss = rss = shm = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
            if per_process is not None:
                own = getattr(info, "pss", info.rss)
                per_process.append((p.pid, _label(p), own, getattr(info, "uss", 0)))
            shm += sum(getattr(m, "pss", 0) for m in p.memory_maps() if m.path.startswith("/dev/shm/"))
        except psutil.Error:
            continue
    return pss, rss, shm


def _child_environment() -> dict[str, str]:
    """This process' environment minus its scratch folders: each child makes its own. An inherited
    TMPDIR inside $RAYLM_HOME (as under pytest) would make the child's Ray socket paths too long."""
    return {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "RAY_TMPDIR", "VLLM_RPC_BASE_PATH")}


def measure(
    cmd: list[str], env: dict | None = None, timeout: float = 7200, memory_log: Path | None = None
) -> dict:
    """Run `cmd`; return its last JSON line plus wall time, peak PSS/RSS of its tree (and the processes
    at the peak) and the load. `memory_log`: a JSON line per 1 s sample with every process' PSS."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**_child_environment(), **(env or {})},
    )
    ps = psutil.Process(proc.pid)
    peak = {"pss": 0, "rss": 0, "shm_at_peak": 0, "shm": 0, "pss_without_shm": 0}
    at_peak: list = []
    loads: list[float] = []
    done = threading.Event()
    log = open(memory_log, "w") if memory_log else None  # noqa: SIM115 - closed below

    def sample() -> None:
        while not done.is_set():
            per: list = []
            pss, rss, shm = _tree_memory(ps, per)
            if pss > peak["pss"]:
                at_peak[:] = per
                peak["shm_at_peak"] = shm
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            peak["shm"] = max(peak["shm"], shm)
            peak["pss_without_shm"] = max(peak["pss_without_shm"], pss - shm)
            loads.append(os.getloadavg()[0])
            if log is not None:
                t = round(time.perf_counter() - t0, 1)
                procs = [[pid, label, round(b / 2**20, 1), round(u / 2**20, 1)] for pid, label, b, u in per]
                mb = {"pss_mb": round(pss / 2**20, 1), "shm_mb": round(shm / 2**20, 1)}
                log.write(json.dumps({"t": t, **mb, "procs": procs}) + "\n")
                log.flush()
            done.wait(1.0)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        thread.join()
        if log is not None:
            log.close()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    result.update(
        {
            "process_wall_s": round(wall, 2),
            "peak_pss_mb": round(peak["pss"] / 2**20, 1),
            "peak_rss_sum_mb": round(peak["rss"] / 2**20, 1),
            # the object store's pages (shared memory) at that peak and at their own peak, and the peak of
            # everything else (the processes' own memory): the part that streaming keeps flat
            "object_store_at_peak_mb": round(peak["shm_at_peak"] / 2**20, 1),
            "peak_object_store_mb": round(peak["shm"] / 2**20, 1),
            "peak_pss_without_object_store_mb": round(peak["pss_without_shm"] / 2**20, 1),
            "cpu_load_during_run": round(sum(loads) / len(loads), 2) if loads else None,
            # the processes at the peak sample, largest first: where the memory is
            "peak_by_process_mb": [
                [label, round(b / 2**20, 1)] for _, label, b, _ in sorted(at_peak, key=lambda e: -e[2])[:12]
            ],
        }
    )
    return result


def agreement(baseline_path: Path, raylm_dir: Path) -> dict:
    """How many output rows the two runs share, and how many of those have the same text_norm."""
    import pandas as pd

    a = pd.read_parquet(baseline_path, columns=["id", "text_norm"]).set_index("id")
    b = pd.read_parquet(raylm_dir, columns=["id", "text_norm"]).set_index("id")
    common = a.index.intersection(b.index)
    same = int((a.loc[common, "text_norm"] == b.loc[common, "text_norm"]).sum())
    return {
        "baseline_rows": len(a),
        "raylm_rows": len(b),
        "common_rows": len(common),
        "same_text_norm": same,
        "row_agreement": round(len(common) / max(len(a), len(b), 1), 5),
    }


def run(
    sizes: list[int],
    out_json: Path,
    out_md: Path,
    local_ops_at: set[int],
    keep: bool = False,
    baseline_max: int | None = None,
    memory_log: Path | None = None,
) -> dict:
    from benchmarks import data_corpus

    work = Path(tempfile.mkdtemp(prefix="raylm-data-bench-"))
    py = sys.executable
    results: dict = {
        "machine": machine(),
        "sizes": {},
        "recipe": RECIPE["data"]["operators"],
        "cpu_load_at_start": list(os.getloadavg()),
    }
    try:
        for n in sizes:
            inp = work / f"in-{n}"
            injected = data_corpus.build(n, inp, seed=0)
            row: dict = {
                "docs": n,
                "input_mb": round(sum(f.stat().st_size for f in inp.iterdir()) / 2**20, 1),
                "injected": injected,
            }
            results["sizes"][str(n)] = row
            print(f"[{n:,} docs] raylm (Ray, 2 CPUs) ...", flush=True)
            ray_res = measure(
                [py, "-m", "benchmarks.data_bench", "--worker", "raylm", str(inp), str(work / f"ray-{n}")],
                memory_log=memory_log / f"raylm-{n}.jsonl" if memory_log else None,
            )
            ray_res["docs_per_s"] = round(n / ray_res["process_wall_s"], 1)
            ray_res["stage_docs_per_s"] = round(n / ray_res["stage_s"], 1)
            row["raylm"] = ray_res
            _write(results, out_json, out_md)
            if baseline_max is None or n <= baseline_max:
                print(f"[{n:,} docs] baseline ...", flush=True)
                base_out = work / f"base-{n}.parquet"
                base = measure([py, str(ROOT / "benchmarks" / "data_baseline.py"), str(inp), str(base_out)])
                base["docs_per_s"] = round(n / base["process_wall_s"], 1)
                row["baseline"] = base
                row["ratio"] = round(ray_res["docs_per_s"] / base["docs_per_s"], 3)
                row["agreement"] = agreement(base_out, work / f"ray-{n}" / "data" / "clean")
                _write(results, out_json, out_md)
            if n in local_ops_at:
                print(f"[{n:,} docs] raylm operators, one process, no Ray ...", flush=True)
                loc = measure(
                    [py, "-m", "benchmarks.data_bench", "--worker", "local", str(inp), str(work / f"loc-{n}")]
                )
                loc["docs_per_s"] = round(n / loc["process_wall_s"], 1)
                row["raylm_ops_single_process"] = loc
                row["parallel_speedup"] = round(ray_res["docs_per_s"] / loc["docs_per_s"], 3)
            print(json.dumps({k: row.get(k) for k in ("docs", "ratio")}), flush=True)
            _write(results, out_json, out_md)
            for folder in (inp, work / f"ray-{n}", work / f"loc-{n}"):
                if not keep:
                    import shutil

                    shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return results


def _write(results: dict, out_json: Path, out_md: Path) -> None:
    rows = results["sizes"]
    with_ratio = [int(k) for k, r in rows.items() if "ratio" in r]
    if with_ratio:
        head = HEADLINE if HEADLINE in with_ratio else max(with_ratio)
        results["ratio"], results["headline_docs"] = rows[str(head)]["ratio"], head
    loads = [
        r[k]["cpu_load_during_run"]
        for r in rows.values()
        for k in ("raylm", "baseline", "raylm_ops_single_process")
        if k in r and r[k].get("cpu_load_during_run") is not None
    ]
    results["cpu_load_during_run"] = round(sum(loads) / len(loads), 2) if loads else None
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        "# Data stage benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB; Python {m['python']}. "
        f"Mean 1-min load average during the runs: {results['cpu_load_during_run']} "
        f"(at start {results['cpu_load_at_start'][0]:.2f}; 2.0 would mean both cores busy with this "
        "benchmark alone).",
        "",
        "Same input (JSONL built from the bundled corpus), same 11-operator chain. Time = the whole process "
        "(imports, Ray start-up, reading, writing Parquet). Memory = peak PSS summed over the process tree "
        "(Ray: driver, GCS, raylet and workers); raylm's object store (shared memory) at that peak in "
        "brackets. The largest size runs raylm only: the baseline would hold it all in one DataFrame.",
        "",
        "| docs | baseline docs/s | raylm docs/s (Ray, 2 CPUs) | ratio | baseline peak MB | raylm peak MB "
        "[object store] | raylm ops, 1 process: docs/s, peak MB | rows agreeing |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r: dict, key: str, field: str) -> str:
        return f"{r[key][field]:,}" if key in r else "not run"

    for r in rows.values():
        if "raylm" not in r:
            continue
        loc = r.get("raylm_ops_single_process")
        loc_text = f"{loc['docs_per_s']:,}, {loc['peak_pss_mb']:,}" if loc else "-"
        agree = f"{r['agreement']['row_agreement']:.2%}" if "agreement" in r else "-"
        ratio = f"{r['ratio']}x" if "ratio" in r else "-"
        store = r["raylm"].get("object_store_at_peak_mb")
        peak = f"{r['raylm']['peak_pss_mb']:,}" + (f" [{store:,}]" if store is not None else "")
        lines.append(
            f"| {r['docs']:,} | {cell(r, 'baseline', 'docs_per_s')} | {r['raylm']['docs_per_s']:,} | "
            f"{ratio} | {cell(r, 'baseline', 'peak_pss_mb')} | {peak} | {loc_text} | "
            f"{agree} |"
        )
    if "ratio" in results:
        lines += [
            "",
            f"Headline (`ratio` in data.json): {results['ratio']}x at {results['headline_docs']:,} "
            "documents.",
        ]
    out_md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1k documents, results in a temporary folder")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated document counts (default 50000,200000,800000,3200000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=None,
        help="run the (slow) baseline only up to this many documents (default 800000 with the default sizes)",
    )
    parser.add_argument(
        "--raylm-only",
        action="store_true",
        help="run only raylm on Ray (no baseline, no single-process run): for memory and speed checks",
    )
    parser.add_argument(
        "--memory-log",
        type=Path,
        default=None,
        help="folder for raylm-<docs>.jsonl: every process' PSS (by Ray worker/program) each second",
    )
    parser.add_argument("--worker", choices=["raylm", "local"], help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fn = worker_raylm if args.worker == "raylm" else worker_local
        print(json.dumps(fn(*args.paths)))
        return
    if args.quick:
        sizes = args.sizes or [1000]
        out = args.out or Path(tempfile.mkdtemp(prefix="raylm-bench-quick-")) / "data.json"
        local_at = set()
    else:
        sizes = args.sizes or [50_000, HEADLINE, 800_000, 3_200_000]
        if args.sizes is None and args.baseline_max is None:
            args.baseline_max = 800_000  # at 3.2M the baseline's one DataFrame would need ~15 GB
        out = args.out or RESULTS / "data.json"
        local_at = {HEADLINE} if HEADLINE in sizes else {sizes[len(sizes) // 2]}
    if args.raylm_only:
        local_at, args.baseline_max = set(), 0
    if args.memory_log:
        args.memory_log.mkdir(parents=True, exist_ok=True)
    results = run(
        sizes, out, out.with_suffix(".md"), local_at, args.keep, args.baseline_max, args.memory_log
    )
    print(f"ratio {results.get('ratio')}x -> {out}")


if __name__ == "__main__":
    main()
