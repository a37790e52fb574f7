"""Fine-tuning modes side by side on the reference model (SmolLM2-135M-Instruct), each through the real
finetune stage (Ray Train + DeepSpeed, 2 CPU workers, one local Ray for all) on the bundled chatterbot
pairs: SFT with full fine-tuning, LoRA, prefix tuning and P-tuning, a LoRA reward model, DPO with LoRA,
and RLHF (RLOO with LoRA) against that reward model.

    .venv/bin/python benchmarks/finetune_bench.py --quick      # a few steps per mode
    .venv/bin/python benchmarks/finetune_bench.py              # the default steps (~25 min on 2 cores)
    .venv/bin/python benchmarks/finetune_bench.py --modes rlhf-lora --reward-model KEPT_REWARD_MODEL
        # replaces that mode's entry, keeps the others; reward-lora's model is kept in KEPT_REWARD_MODEL
    .venv/bin/python benchmarks/finetune_bench.py --modes rlhf-lora --reward-model KEPT_REWARD_MODEL \
        --seeds 0 1 2 --set lr=1e-3
        # each mode once per seed (the recipe's `seed`: initialisation, order, sampling and which
        # instructions are held out); the entry adds every seed's before/after and the mean change with
        # its standard error; --set overrides a finetune key of every mode run

For each mode: held-out metrics before/after (SFT: response-token cross-entropy; DPO: DPO loss, implicit
reward margin, preference accuracy, log-prob accuracy; reward model: Bradley-Terry loss, margin,
preference accuracy; RLHF: mean reward-model score of answers sampled for held-out prompts, their KL to
the reference, length), ROUGE-L / exact match of greedy answers before and after (SFT), trainable
parameters and share, tokens/s, wall time, the load average sampled while it ran.

Writes benchmarks/results/finetune.json (one entry per mode, with its per-step history), finetune.md (the
table), each mode's curves (`finetune_<mode>.png`) and all modes in one figure (`finetune_curves.png`).
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
from pipelines.train.finetune_stage import ALIGN_METRIC_KEYS  # noqa: E402

# lr per method: LoRA ~1e-3, prompt learning 1e-2 and up (its few parameters start far from useful
# values), full fine-tuning 5e-5. Steps are the default run's; --steps scales them.
MODES = {
    "sft-full": {"objective": "sft", "method": "full", "lr": 5e-5, "steps": 16},
    "sft-lora": {"objective": "sft", "method": "lora", "lr": 1e-3, "steps": 16},
    "sft-prefix": {"objective": "sft", "method": "prefix", "lr": 1e-2, "steps": 16},
    "sft-p-tuning": {"objective": "sft", "method": "p-tuning", "lr": 2e-2, "steps": 16},
    "reward-lora": {"objective": "reward", "method": "lora", "lr": 1e-3, "steps": 16, "eval_generate": 0},
    "dpo-lora": {"objective": "dpo", "method": "lora", "lr": 5e-4, "steps": 12, "eval_generate": 0},
    # a rollout costs ~0.5 s per sampled token for 4 answers on this CPU: one prompt per worker per step
    "rlhf-lora": {
        "objective": "rlhf",
        "method": "lora",
        "lr": 1e-3,  # 2e-3 spent more KL than it gained reward (docs/finetune.md)
        "steps": 8,
        "eval_generate": 0,
        "micro_batch_size": 1,
        "rlhf_samples": 4,
        "rlhf_max_new_tokens": 24,
        "rlhf_beta": 0.05,
        "heldout_pairs": 24,  # held-out prompts whose answers the reward model scores before and after
    },
}
KEPT_REWARD_MODEL = "/tmp/raylm-ftbench-reward-model"
HISTORY_KEYS = ("loss", "heldout_loss", *ALIGN_METRIC_KEYS, "tokens_per_s")


def recipe(run_dir: Path, steps: int, settings: dict, seed: int = 0) -> str:
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
        "eval_interval": steps,  # before the first step and at the end
        "checkpoint_interval": steps,
        "eval_generate": 6,
        "max_new_tokens": 16,
        **{k: v for k, v in settings.items() if k != "steps"},
    }
    lines = [
        "name: finetune-bench",
        f"run_dir: {run_dir}",
        f"seed: {seed}",
        "cluster: {num_cpus: 2}",
        "finetune:",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in finetune.items()]
    return "\n".join(lines) + "\n"


def history(stage: Path) -> list[dict]:
    out = []
    for line in (stage / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        keep = {k: round(r[k], 5) for k in HISTORY_KEYS if isinstance(r.get(k), int | float)}
        if keep:
            out.append({"kind": r.get("kind"), "step": r.get("step"), **keep})
    return out


def across_seeds(runs: list[dict]) -> dict:
    """Per held-out metric: the change after - before of every seed, its mean and standard error."""
    import statistics

    out = {}
    for key in runs[0]["heldout_after"]:
        deltas = [
            r["heldout_after"][key] - r["heldout_before"][key]
            for r in runs
            if isinstance(r["heldout_after"].get(key), int | float)
            and isinstance(r["heldout_before"].get(key), int | float)
        ]
        if len(deltas) == len(runs):
            se = statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else None
            out[key] = {
                "change_mean": round(statistics.fmean(deltas), 5),
                "change_se": None if se is None else round(se, 5),
                "changes": [round(d, 5) for d in deltas],
                "raised_in": sum(d > 0 for d in deltas),
            }
    return out


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE (a finetune key)")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: list[dict]) -> list[str]:
    rows = [
        "| mode | steps | held-out before | held-out after | other | trainable params (share) | tokens/s "
        "| wall s | load avg |",
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        b, a = r["heldout_before"], r["heldout_after"]
        if r["objective"] == "sft":
            before, after = f"loss {_fmt(b.get('heldout_loss'))}", f"loss {_fmt(a.get('heldout_loss'))}"
            m = r.get("match") or {}
            other = f"ROUGE-L {_fmt(m['before']['rouge_l'])} -> {_fmt(m['after']['rouge_l'])}" if m else ""
        elif r["objective"] == "rlhf":
            before = f"reward {_fmt(b.get('heldout_reward'))}, KL {_fmt(b.get('heldout_kl'))}"
            after = f"reward {_fmt(a.get('heldout_reward'))}, KL {_fmt(a.get('heldout_kl'))}"
            lengths = _fmt(b.get("heldout_length"), 1), _fmt(a.get("heldout_length"), 1)
            other = f"answer length {lengths[0]} -> {lengths[1]} tokens"
        else:
            before = f"loss {_fmt(b.get('heldout_loss'))}, acc {_fmt(b.get('heldout_accuracy'))}"
            after = f"loss {_fmt(a.get('heldout_loss'))}, acc {_fmt(a.get('heldout_accuracy'))}"
            other = f"margin {_fmt(b.get('heldout_margin'))} -> {_fmt(a.get('heldout_margin'))}"
            if r["objective"] == "dpo":
                other += (
                    f"; log-prob acc {_fmt(b.get('heldout_logp_accuracy'))} -> "
                    f"{_fmt(a.get('heldout_logp_accuracy'))}"
                )
        share = f"{r['trainable_params']:,} ({100 * r['trainable_share']:.3f}%)"
        rows.append(
            f"| {r['mode']} | {r['steps']} | {before} | {after} | {other} | {share} | "
            f"{_fmt(r.get('tokens_per_s'), 0)} | {r['wall_s']} | {r['load']['load1_mean']} |"
        )
    return rows


def seed_lines(results: list[dict]) -> list[str]:
    """For the modes run with several seeds: each held-out metric's change, mean +- standard error."""
    lines = []
    for r in results:
        if not r.get("across_seeds"):
            continue
        n = len(r["seeds"])
        parts = [
            f"{k.removeprefix('heldout_')} {v['change_mean']:+.3f} +- {v['change_se']:.3f} "
            f"(up in {v['raised_in']}/{n})"
            for k, v in r["across_seeds"].items()
            if v["change_se"] is not None
        ]
        seeds = ", ".join(str(x["seed"]) for x in r["seeds"])
        lines.append(
            f"- {r['mode']} over seeds {seeds} (the table shows seed {r['seed']}), change after - "
            f"before, mean +- standard error: " + "; ".join(parts)
        )
    return [*lines, ""] if lines else []


def plot_all(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), dpi=110)
    for r in results:
        train = [(h["step"], h["loss"]) for h in r["history"] if h["kind"] == "train" and "loss" in h]
        if r["objective"] == "sft" and train:
            axes[0].plot(*zip(*train, strict=True), label=r["mode"], linewidth=1)
        if r["objective"] in ("dpo", "reward"):
            pts = [(h["step"], h["margin"]) for h in r["history"] if h["kind"] == "train" and "margin" in h]
            if pts:
                axes[1].plot(*zip(*pts, strict=True), label=f"{r['mode']} margin", linewidth=1)
        if r["objective"] == "rlhf":
            for key, style in (("reward", "-"), ("kl", "--")):
                pts = [(h["step"], h[key]) for h in r["history"] if h["kind"] == "train" and key in h]
                if pts:
                    axes[2].plot(*zip(*pts, strict=True), style, label=f"{key} (sampled)", linewidth=1)
    axes[0].set_title("SFT: training loss (response tokens)")
    axes[1].set_title("reward model / DPO: training reward margin")
    axes[2].set_title("RLHF (RLOO): reward-model score and KL to the reference")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=float, default=1.0, help="multiply every mode's steps by this")
    ap.add_argument("--quick", action="store_true", help="4 steps per mode")
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--reward-model", default=None, help="rlhf without reward-lora in this run: its model/")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="run each mode once per seed")
    ap.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a finetune key in every mode run (JSON value), e.g. lr=1e-3",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    from cluster.runtime import ray_session

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    failed: list[dict] = []
    keep = Path(tempfile.mkdtemp(prefix="ftbench-"))
    reward_model = args.reward_model
    t_all = time.perf_counter()
    with ray_session(num_cpus=2):  # one local Ray for every mode: its start-up is paid once
        for mode in args.modes:
            runs: list[dict] = []
            for seed in args.seeds:
                entry = run_mode(args, mode, seed, keep, reward_model, failed)
                if entry is None:
                    continue
                reward_model = entry.pop("_reward_model", reward_model)
                runs.append(entry)
            if runs:
                if len(args.seeds) > 1:
                    runs[0]["seeds"] = [
                        {k: r[k] for k in ("seed", "heldout_before", "heldout_after", "wall_s")} for r in runs
                    ]
                    runs[0]["across_seeds"] = across_seeds(runs)
                results.append(runs[0])
                print(json.dumps({k: v for k, v in runs[0].items() if k != "history"}, indent=1), flush=True)
            write(out, results, failed, t_all)  # after every mode: an interrupted run keeps what it measured
    shutil.rmtree(keep, ignore_errors=True)


def run_mode(args, mode: str, seed: int, keep: Path, reward_model: str | None, failed: list) -> dict | None:
    """One mode with one seed through `run_recipe`: its entry (with `_reward_model` when it trained one), or
    None after a failure, which goes to `failed`."""
    from cluster.config import parse_recipe
    from cluster.orchestrate import run_recipe

    settings = dict(MODES[mode]) | dict(args.set)
    steps = 4 if args.quick else max(2, round(settings["steps"] * args.steps))
    if settings["objective"] == "rlhf":
        if not reward_model:
            raise SystemExit("rlhf needs a reward model: reward-lora first, or --reward-model")
        settings["reward_model"] = reward_model
    work = keep / f"{mode}-seed{seed}"
    t0 = time.perf_counter()
    try:
        with LoadSampler() as load:
            run_recipe(parse_recipe(recipe(work / "run", steps, settings, seed)), only={"finetune"})
    except Exception as exc:  # noqa: BLE001  # one failed mode must not lose the others' numbers
        print(f"{mode} (seed {seed}) failed: {exc!r}", flush=True)
        failed.append({"mode": mode, "seed": seed, "error": repr(exc)[:2000]})
        return None
    wall = time.perf_counter() - t0
    stage = work / "run" / "finetune"
    s = json.loads((stage / "summary.json").read_text())
    if seed == args.seeds[0]:
        shutil.copyfile(stage / "loss_curve.png", Path(args.out) / f"finetune_{mode}.png")
    entry = {
        "mode": mode,
        "seed": seed,
        **{k: v for k, v in settings.items() if k not in ("steps", "reward_model")},
        "steps": s["step"],
        "heldout_before": s["heldout_before"],
        "heldout_after": s["heldout_after"],
        "match": {k: s["match"][k] for k in ("before", "after")} if "match" in s else None,
        "samples": (s.get("match") or {}).get("samples", [])[:2],
        "trainable_params": s["trainable_params"],
        "total_params": s["total_params"],
        "trainable_share": s["trainable_share"],
        "tokens_per_s": s.get("tokens_per_s"),
        "step_time_s": s.get("step_time_s"),
        "train_records": s["train_records"],
        "heldout_records": s["heldout_records"],
        "quarantined": s["quarantined"],
        "wall_s": round(wall, 1),
        "load": load.summary(),
        "history": history(stage),
    }
    if settings["objective"] == "reward" and seed == args.seeds[0]:  # for a later rlhf --reward-model
        kept = Path(KEPT_REWARD_MODEL)  # not tempfile's folder: the Ray session's is removed
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(stage / "model", kept)
        entry["_reward_model"] = str(kept)
    return entry


def with_earlier(out: Path, results: list[dict]) -> list[dict]:
    """This run's entries plus, for the modes it did not run, those of the last finetune.json (so
    `--modes rlhf-lora` replaces one row of the table, not the whole table), in MODES order."""
    path = out / "finetune.json"
    earlier = json.loads(path.read_text()).get("modes", []) if path.is_file() else []
    by_mode = {r["mode"]: r for r in earlier} | {r["mode"]: r for r in results}
    return [by_mode[m] for m in MODES if m in by_mode]


def write(out: Path, results: list[dict], failed: list[dict], t_all: float) -> None:
    results = with_earlier(out, results)
    plot_all(results, out / "finetune_curves.png")
    doc = {
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct",
        "data": "chatterbot (first 600 pairs; held out by instruction; max_seq_len 96)",
        "setup": "2 Ray Train workers (1 CPU each), DeepSpeed ZeRO-1, fp32 (no native bf16 on this CPU)",
        "total_wall_s": round(time.perf_counter() - t_all, 1),  # of the latest run (see each mode's wall_s)
        "modes": results,
        "failed": failed,
    }
    (out / "finetune.json").write_text(json.dumps(doc, indent=2))
    md = [
        "# Fine-tuning benchmark",
        "",
        f"SmolLM2-135M-Instruct, {doc['data']}; {doc['setup']}. One local Ray for all modes; total "
        f"{doc['total_wall_s']:.0f} s. `load avg` is the mean 1-min load average while the mode ran (2.0 = "
        "both cores busy). rlhf-lora is RLOO against the reward-lora model trained just before it. "
        "Curves: `finetune_curves.png`, per mode `finetune_<mode>.png`.",
        "",
        *table(results),
        "",
        *seed_lines(results),
        *[f"- {f['mode']} failed: {f['error'][:300]}" for f in failed],
    ]
    (out / "finetune.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
