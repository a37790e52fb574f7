"""Fine-tuning modes side by side on the reference model (SmolLM2-135M-Instruct), each through the real
finetune stage (Ray Train + DeepSpeed, 2 CPU workers) on the bundled chatterbot pairs: SFT with full
fine-tuning, LoRA, prefix tuning and P-tuning, DPO with LoRA, and a LoRA reward model.

    .venv/bin/python benchmarks/finetune_bench.py --quick      # few steps per mode
    .venv/bin/python benchmarks/finetune_bench.py --steps 60

For each mode: held-out loss before/after (SFT: response-token cross-entropy; DPO: DPO loss, implicit
reward margin, preference accuracy, log-prob accuracy), ROUGE-L / exact match of greedy answers before and
after (SFT), trainable parameters and share, tokens/s, wall time. The load average is sampled around each
run (other processes change the numbers).

Writes benchmarks/results/finetune.json (one entry per mode) and each mode's loss curve beside it
(`finetune_<mode>.png`). RLHF is not implemented yet (docs/finetune.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {
    "sft-full": {"objective": "sft", "method": "full", "lr": 5e-5},
    "sft-lora": {"objective": "sft", "method": "lora", "lr": 1e-3},
    "sft-prefix": {"objective": "sft", "method": "prefix", "lr": 1e-2},
    "sft-p-tuning": {"objective": "sft", "method": "p-tuning", "lr": 1e-2},
    "dpo-lora": {"objective": "dpo", "method": "lora", "lr": 5e-4, "eval_generate": 0},
    "reward-lora": {"objective": "reward", "method": "lora", "lr": 1e-3, "eval_generate": 0},
}


def recipe(run_dir: Path, steps: int, settings: dict) -> str:
    finetune = {
        "base": "assets:models/SmolLM2-135M-Instruct",
        "data": ["assets:instructions/chatterbot.jsonl"],
        "max_pairs": 600,
        "max_seq_len": 96,
        "heldout_pairs": 32,
        "num_workers": 2,
        "micro_batch_size": 4,
        "max_steps": steps,
        "warmup_steps": max(1, steps // 10),
        "eval_interval": max(1, steps // 2),
        "checkpoint_interval": steps,
        "eval_generate": 12,
        "max_new_tokens": 24,
        **settings,
    }
    lines = ["name: finetune-bench", f"run_dir: {run_dir}", "cluster: {num_cpus: 2}", "finetune:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in finetune.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="8 steps per mode")
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    steps = 8 if args.quick else args.steps

    from cluster.config import parse_recipe
    from cluster.orchestrate import run_recipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for mode in args.modes:
        work = Path(tempfile.mkdtemp(prefix=f"ftbench-{mode}-"))
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        run_recipe(parse_recipe(recipe(work / "run", steps, MODES[mode])), only={"finetune"})
        wall = time.perf_counter() - t0
        stage = work / "run" / "finetune"
        s = json.loads((stage / "summary.json").read_text())
        shutil.copyfile(stage / "loss_curve.png", out / f"finetune_{mode}.png")
        results.append(
            {
                "mode": mode,
                **MODES[mode],
                "steps": s["step"],
                "heldout_before": s["heldout_before"],
                "heldout_after": s["heldout_after"],
                "match": {k: s["match"][k] for k in ("before", "after")} if "match" in s else None,
                "trainable_params": s["trainable_params"],
                "trainable_share": s["trainable_share"],
                "tokens_per_s": s.get("tokens_per_s"),
                "quarantined": s["quarantined"],
                "wall_s": round(wall, 1),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(results[-1], indent=1), flush=True)
    doc = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "SmolLM2-135M-Instruct",
        "data": "chatterbot (first 600 pairs; 32 held out by instruction)",
        "not_done": ["rlhf"],
        "modes": results,
    }
    (out / "finetune.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
