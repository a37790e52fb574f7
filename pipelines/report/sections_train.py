"""Report sections of the training stages: pretraining and fine-tuning loss curves and summaries, and the
reward / DPO margins of a preference pass."""

from __future__ import annotations

from pathlib import Path

from pipelines.report import plots
from pipelines.report.blocks import NOT_RUN, Para, Section, Table, figure, fmt, get, kv
from pipelines.report.collect import RunData
from pipelines.report.sections import pass_line


def pretrain(run: RunData, out: Path) -> Section:
    sec = Section("Pretraining", "pretrain")
    if "pretrain" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    m = run.metrics("pretrain")
    sec.blocks.append(
        figure(
            out,
            "pretrain_loss.png",
            "pretraining loss curve",
            lambda p: plots.loss_curves([("pretrain", run.pretrain_history)], p),
            "no loss history recorded (metrics.jsonl)",
        )
    )
    peak = m.get("memory_peak_gb_per_worker")
    sec.blocks.append(
        kv(
            [
                (
                    "model",
                    f"continued from {m['init_from']}"
                    if m.get("init_from")
                    else f"{m.get('family', '?')} / {m.get('preset', '?')}",
                ),
                ("workers", m.get("world_size")),
                ("precision", m.get("precision")),
                ("steps", m.get("step")),
                ("tokens seen", m.get("tokens_seen")),
                ("global batch (sequences)", m.get("global_batch")),
                ("sequence length", m.get("seq_len")),
                ("last training loss", m.get("loss")),
                ("held-out loss", m.get("heldout_loss")),
                ("held-out perplexity", m.get("heldout_ppl")),
                ("tokens/s", m.get("tokens_per_s")),
                ("MFU", m.get("mfu")),
                ("step time s", m.get("step_time_s")),
                (
                    "peak memory per worker GB",
                    ", ".join(fmt(x, 3) for x in peak) if isinstance(peak, list) else None,
                ),
                ("stopped because", m.get("stop_reason")),
            ]
        )
    )
    return sec


def finetune(run: RunData, out: Path) -> Section:
    sec = Section("Fine-tuning", "finetune")
    if "finetune" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    passes = run.finetune_passes
    sec.blocks.append(
        figure(
            out,
            "finetune_loss.png",
            "fine-tuning loss curves",
            lambda p: plots.loss_curves([(f.name, f.history) for f in passes], p),
            "no loss history recorded (metrics.jsonl)",
        )
    )
    rows = []
    for f in passes:
        s = f.summary
        rows.append(
            [
                f.name,
                s.get("method"),
                fmt(s.get("step")),
                fmt(s.get("trainable_share")),
                fmt(s.get("train_records")),
                fmt(s.get("quarantined")),
                pass_line(f.name, s).split(" ", 1)[1],
                fmt(s.get("tokens_per_s")),
            ]
        )
    if rows:
        sec.blocks.append(
            Table(
                [
                    "pass",
                    "method",
                    "steps",
                    "trainable share",
                    "train records",
                    "quarantined",
                    "held-out before -> after",
                    "tokens/s",
                ],
                rows,
            )
        )
    for f in passes:
        match = f.summary.get("match") or {}
        if match.get("samples"):
            sec.blocks.append(
                Para(
                    f"{f.name}: generation on {fmt(match.get('prompts'))} held-out prompts, ROUGE-L "
                    f"{fmt(get(match, 'before', 'rouge_l'))} -> {fmt(get(match, 'after', 'rouge_l'))}, "
                    f"exact match {fmt(get(match, 'before', 'exact_match'))} -> "
                    f"{fmt(get(match, 'after', 'exact_match'))}. Examples:"
                )
            )
            sec.blocks.append(
                Table(
                    ["prompt", "reference", "before", "after"],
                    [
                        [x.get("prompt"), x.get("reference"), x.get("before"), x.get("after")]
                        for x in match["samples"][:4]
                    ],
                )
            )
    return sec


# What the alignment section shows per pass: (figure file, alt text, plot, held-out keys of its table)
_ALIGNMENT = {
    "dpo": ("dpo_margins.png", "dpo reward margins and accuracy",
            lambda f, p: plots.preference_margins(f.name, f.history, p),
            ("heldout_loss", "heldout_margin", "heldout_accuracy", "heldout_logp_accuracy")),
    "reward": ("reward_margins.png", "reward reward margins and accuracy",
               lambda f, p: plots.preference_margins(f.name, f.history, p),
               ("heldout_loss", "heldout_margin", "heldout_accuracy", "heldout_logp_accuracy")),
    "rlhf": ("rlhf_reward_kl.png", "RLHF reward and KL to the reference",
             lambda f, p: plots.rlhf_reward_kl(f.history, p),
             ("heldout_reward", "heldout_kl", "heldout_objective", "heldout_length")),
}


def alignment(run: RunData, out: Path) -> Section:
    sec = Section("Preference tuning: reward / DPO margins, RLHF reward and KL", "alignment")
    if "finetune" not in run.manifests:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    passes = [f for f in run.finetune_passes if f.name in _ALIGNMENT]
    if not passes:
        sec.blocks.append(Para(f"{NOT_RUN} (the finetune stage's objective has no preference pass)"))
        return sec
    for f in passes:
        name, alt, draw, keys = _ALIGNMENT[f.name]
        sec.blocks.append(
            figure(out, name, alt, lambda p, f=f, draw=draw: draw(f, p), f"{f.name}: no history recorded")
        )
        before, after = f.summary.get("heldout_before") or {}, f.summary.get("heldout_after") or {}
        sec.blocks.append(
            Table(
                [f"{f.name} held-out", "before", "after"],
                [
                    [k.removeprefix("heldout_"), fmt(before.get(k)), fmt(after.get(k))]
                    for k in keys
                    if k in before or k in after
                ],
            )
        )
    return sec
