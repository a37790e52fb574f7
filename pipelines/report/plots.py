"""The report's figures, as PNGs (matplotlib, Agg backend: no display needed).

Each function draws one figure from already-collected numbers and returns False (drawing nothing) when
it has nothing to draw, so a section can say "not recorded" instead of showing an empty chart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: a report is written on headless machines and inside Ray workers
import matplotlib.pyplot as plt  # noqa: E402

DPI = 100


def _save(fig, path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def data_funnel(stats: dict, path: Path) -> bool:
    """Rows after each operator (the funnel) beside the rows dropped or quarantined, by reason."""
    ops = [o for o in stats.get("operators", []) if isinstance(o, dict)]
    reasons = {
        **{f"dropped: {k}": v for k, v in (stats.get("dropped") or {}).items()},
        **{f"quarantined: {k}": v for k, v in (stats.get("quarantined") or {}).items()},
    }
    if not ops and not reasons:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.32 * max(len(ops) + 1, len(reasons)) + 1.2)))
    steps = [("input", stats.get("rows_in", ops[0].get("rows_in", 0) if ops else 0))]
    steps += [(f"{o.get('index', i)}: {o.get('op', '?')}", o.get("rows_out", 0)) for i, o in enumerate(ops)]
    names, rows = zip(*steps, strict=True)
    axes[0].barh(range(len(rows)), rows, color="#4c72b0")
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    for y, v in enumerate(rows):
        axes[0].annotate(f"{v:,}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    axes[0].set_xlabel("rows")
    axes[0].set_title("rows after each step")
    ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
    if ranked:
        labels, counts = zip(*ranked, strict=True)
        axes[1].barh(range(len(counts)), counts, color="#dd8452")
        axes[1].set_yticks(range(len(counts)), labels, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set_xlabel("rows")
    else:
        axes[1].text(0.5, 0.5, "nothing dropped", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_axis_off()
    axes[1].set_title("dropped / quarantined, by reason")
    return _save(fig, path)


def _series(history: Sequence[dict], kind: str, key: str) -> tuple[list, list]:
    """(steps, values) of one metric; a step logged twice (the final evaluation is) keeps its last value."""
    by_step = {
        r["step"]: r[key]
        for r in history
        if r.get("kind") == kind
        and isinstance(r.get(key), int | float)
        and not isinstance(r.get(key), bool)
        and isinstance(r.get("step"), int | float)
        and math.isfinite(r[key])
    }
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def loss_curves(passes: Sequence[tuple[str, Sequence[dict]]], path: Path) -> bool:
    """One panel per training pass: training loss per step and held-out loss per evaluation."""
    drawn = [
        (name, h)
        for name, h in passes
        if _series(h, "train", "loss")[0] or _series(h, "eval", "heldout_loss")[0]
    ]
    if not drawn:
        return False
    fig, axes = plt.subplots(1, len(drawn), figsize=(6.2 * len(drawn), 3.8), squeeze=False)
    for ax, (name, history) in zip(axes[0], drawn, strict=True):
        x, y = _series(history, "train", "loss")
        if x:
            ax.plot(x, y, linewidth=1, label="train loss")
        x, y = _series(history, "eval", "heldout_loss")
        if x:
            ax.plot(x, y, "o-", linewidth=1.5, markersize=4, label="held-out loss")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def preference_margins(name: str, history: Sequence[dict], path: Path) -> bool:
    """DPO / reward: the implicit reward margin (chosen - rejected) and preference accuracy per step."""
    xm, ym = _series(history, "train", "margin")
    xe, ye = _series(history, "eval", "heldout_margin")
    if not xm and not xe:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    if xm:
        axes[0].plot(xm, ym, linewidth=1, label="train (batch mean)")
    if xe:
        axes[0].plot(xe, ye, "o-", markersize=4, label="held-out")
    axes[0].axhline(0, color="gray", linewidth=0.8)
    axes[0].set_title(f"{name}: reward margin (chosen - rejected)")
    for kind, key, label, style in (
        ("train", "accuracy", "train (batch)", "-"),
        ("eval", "heldout_accuracy", "held-out", "o-"),
        ("eval", "heldout_logp_accuracy", "held-out, log-prob", "s--"),
    ):
        x, y = _series(history, kind, key)
        if x:
            axes[1].plot(x, y, style, markersize=4, linewidth=1, label=label)
    axes[1].axhline(0.5, color="gray", linewidth=0.8, linestyle=":")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title(f"{name}: preference accuracy")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def rlhf_reward_kl(history: Sequence[dict], path: Path) -> bool:
    """RLHF: the reward model's score of the policy's samples and their KL to the reference, per step
    (train: this step's rollouts; held-out: greedy answers to held-out prompts)."""
    series = [
        (_series(history, "train", k), _series(history, "eval", f"heldout_{k}")) for k in ("reward", "kl")
    ]
    if not any(x for pair in series for x, _ in pair):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    titles = ("RLHF: reward of the policy's answers", "RLHF: KL to the reference (nats per answer)")
    for ax, ((xt, yt), (xe, ye)), title in zip(axes, series, titles, strict=True):
        if xt:
            ax.plot(xt, yt, linewidth=1, label="train rollouts (batch mean)")
        if xe:
            ax.plot(xe, ye, "o-", markersize=4, label="held-out prompts")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _pareto_front(points: list[tuple[float, float]], more_x_is_better: bool) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower perplexity, and more speed or less size)."""
    front = []
    for x, y in points:
        dominated = any(
            (ox >= x if more_x_is_better else ox <= x) and oy <= y and (ox, oy) != (x, y) for ox, oy in points
        )
        if not dominated:
            front.append((x, y))
    return sorted(front)


def compress_pareto(models: dict[str, dict[str, Any]], path: Path) -> bool:
    """Perplexity against generation speed and against size, one point per model, Pareto front drawn."""
    usable = {n: m for n, m in models.items() if isinstance(m.get("perplexity"), int | float)}
    if not usable:
        return False
    speed = (
        "vllm_tokens_per_s" if all(m.get("vllm_tokens_per_s") for m in usable.values()) else "hf_tokens_per_s"
    )
    speed_label = f"generation tokens/s ({'vLLM' if speed.startswith('vllm') else 'transformers'})"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label, more_better in (
        (axes[0], speed, speed_label, True),
        (axes[1], "size_bytes", "size on disk (MB)", False),
    ):
        pts = []
        for name, m in usable.items():
            if not isinstance(m.get(key), int | float):
                continue
            x = m[key] / 1e6 if key == "size_bytes" else m[key]
            pts.append((x, m["perplexity"]))
            ax.scatter(
                x, m["perplexity"], marker="*" if name == "base" else "o", s=90 if name == "base" else 40
            )
            ax.annotate(name, (x, m["perplexity"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        front = _pareto_front(pts, more_better)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), "--", color="gray", linewidth=1, label="Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out perplexity (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].set_title("quality vs speed")
    axes[1].set_title("quality vs size")
    return _save(fig, path)


def serve_latency(samples: Sequence[dict], path: Path) -> bool:
    """Per-request time to first token and total latency, grouped by served model."""
    rows = [s for s in samples if isinstance(s.get("latency_s"), int | float)]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 3.8))
    xs = range(len(rows))
    ax.bar(
        [x - 0.2 for x in xs], [r.get("ttft_s") or 0 for r in rows], width=0.4, label="time to first token"
    )
    ax.bar([x + 0.2 for x in xs], [r["latency_s"] for r in rows], width=0.4, label="total latency")
    ax.set_xticks(list(xs), [f"{r.get('model', '?')}\n#{i + 1}" for i, r in enumerate(rows)], fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("sample requests through the OpenAI API")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)
