"""Compression trade-offs on one base model, every method measured in one run against the uncompressed
model: held-out perplexity, parameters, size on disk, bytes per parameter, generation tokens/s
(transformers; vLLM with --vllm).

    flock /tmp/raylm-heavy.lock .venv/bin/python benchmarks/compress_bench.py --quick      # ~5 min, 2 cores
    flock /tmp/raylm-heavy.lock .venv/bin/python benchmarks/compress_bench.py --vllm       # + vLLM tokens/s
    .venv/bin/python benchmarks/compress_bench.py --base runs/quickstart/pretrain/model   # a raylm model

The base defaults to the reference SmolLM2-135M-Instruct; held-out text is the bundled corpus's
Webster's dictionary (not in the quickstart's training data). Other processes change the speed figures:
the load average is sampled during the run and written next to them.

Writes benchmarks/results/compress.json (one entry per method, plus the base) and compress.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LoadSampler, machine  # noqa: E402

# one run must fit ~25 min on 2 cores: one entry per method (the W8A8 RTN / SmoothQuant+GPTQ and W4A16
# variants are deterministic; docs/compress.md keeps their figures from earlier runs); training methods
# get 20 steps of 4 x 256 tokens each
METHODS = [  # the methods new in this run first: a run stopped early keeps them (see `partial`)
    {"method": "quantize", "scheme": "W8A8", "smoothing": 0.5},
    {"method": "quantize", "scheme": "W8A8", "smoothing": 0.5, "embedding_storage": "float8"},
    {
        "method": "quantize",
        "name": "quantize-w8a8-sq-emb8-nearest",
        "scheme": "W8A8",
        "smoothing": 0.5,
        "embedding_storage": "float8",
        "embedding_rounding": "nearest",
    },
    {"method": "low_rank", "name": "low_rank-data_aware-r192", "rank": 192, "data_aware": True},
    {"method": "low_rank", "name": "low_rank-data_aware-r160", "rank": 160, "data_aware": True},
    {"method": "weight_share", "group_size": 2, "recovery_steps": 20},
    {"method": "layer_drop", "drop_layers": 10, "drop_rate": 0.33, "steps": 20},
    {"method": "distill", "student_layers": 15, "steps": 20},
    {"method": "prune_structured", "heads_per_group": 1, "mlp_fraction": 0.3, "recovery_steps": 20},
    {"method": "prune_unstructured", "sparsity": 0.5, "criterion": "wanda"},
    {"method": "quantize", "scheme": "W4A16", "group_size": 64},
]
# W8A8+SQ, W4A16, Wanda, layer dropping without recovery: a few minutes on 2 cores
QUICK = [
    METHODS[0],
    METHODS[10],
    METHODS[9],
    {"method": "prune_structured", "name": "drop_layers-6", "drop_layers": 6},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="assets:models/SmolLM2-135M-Instruct")
    ap.add_argument("--quick", action="store_true", help="four methods, fewer evaluation tokens")
    ap.add_argument("--vllm", action="store_true", help="also measure tokens/s in vLLM (30-90 s per model)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    import torch

    from pipelines.assets import resolve_path
    from pipelines.compress.checks import CompressInputError
    from pipelines.compress.config import CompressConfig
    from pipelines.compress.stage import run_compress

    torch.set_num_threads(2)
    cfg = CompressConfig.model_validate(
        {
            "base": args.base,
            "methods": QUICK if args.quick else METHODS,
            "eval_tokens": 4096,
            "gen_tokens": 32,
            "measure_vllm": args.vllm,
        }
    )
    work = Path(tempfile.mkdtemp(prefix="raylm-compress-bench-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def partial(base: dict, methods: dict) -> None:
        """What is measured so far, rewritten after each method: a stopped run keeps it."""
        doc = {"partial": True, "base": base, "methods": methods, "settings": cfg.model_dump(mode="json")}
        doc.update(wall_s=round(time.perf_counter() - t0, 1), machine=machine())
        (out / "compress.json").write_text(json.dumps(doc, indent=2, default=str))

    try:
        with LoadSampler() as load:
            result = run_compress(cfg, resolve_path(args.base), str(work), on_result=partial)
    except CompressInputError as exc:
        sys.exit("compress_bench: " + "; ".join(exc.problems))
    finally:
        report_md = (work / "report.md").read_text() if (work / "report.md").exists() else ""
        if (work / "pareto.png").exists():
            shutil.copy(work / "pareto.png", out / "compress.png")
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "base": result["base"],
        "methods": result["methods"],
        "settings": cfg.model_dump(mode="json"),
        "wall_s": round(time.perf_counter() - t0, 1),
        "load": load.summary(),
        "machine": machine(),
    }
    (out / "compress.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "compress.md").write_text(report_md + f"\nload average during the run: {doc['load']}\n")
    print(report_md)


if __name__ == "__main__":
    main()
