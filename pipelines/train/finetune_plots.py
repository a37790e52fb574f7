"""The fine-tuning curves as one PNG (`loss_curve.png` in the stage folder): the training loss and, where
the objective has them, the held-out loss, the preference margin and accuracy (dpo, reward) or the mean
reward and KL to the reference of the sampled answers (rlhf), per optimizer step, from `metrics.jsonl`'s
records. (Pretraining's `progress.plot_loss_curve` draws one panel of losses; an RLHF run has no held-out
loss and its point is the reward, so it gets panels of its own.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _series(records: list[dict[str, Any]], kind: str, key: str) -> list[tuple[int, float]]:
    return [
        (r["step"], r[key])
        for r in records
        if r.get("kind") == kind and isinstance(r.get(key), int | float) and r.get("step") is not None
    ]


def plot_finetune_curves(records: list[dict[str, Any]], path: str, title: str = "fine-tuning") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", [("train loss", "train", "loss"), ("held-out loss", "eval", "heldout_loss")])]
    if _series(records, "train", "margin"):
        panels.append(
            (
                "margin / accuracy",
                [
                    ("train margin", "train", "margin"),
                    ("held-out margin", "eval", "heldout_margin"),
                    ("held-out accuracy", "eval", "heldout_accuracy"),
                ],
            )
        )
    if _series(records, "train", "reward"):
        panels[0] = ("policy-gradient loss", [("train loss", "train", "loss")])
        panels.append(
            (
                "reward-model score",
                [
                    ("train (sampled answers)", "train", "reward"),
                    ("held-out (sampled answers)", "eval", "heldout_reward"),
                ],
            )
        )
        panels.append(
            (
                "KL to the reference (nats/answer)",
                [("train", "train", "kl"), ("held-out", "eval", "heldout_kl")],
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), dpi=110, squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels, strict=True):
        for label, kind, key in lines:
            pts = _series(records, kind, key)
            if pts:
                style = "o-" if kind == "eval" else "-"
                ax.plot(*zip(*pts, strict=True), style, label=label, linewidth=1.2, markersize=4)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
