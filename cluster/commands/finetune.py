"""`raylm finetune RECIPE`: run the recipe's finetune stage (and, when `finetune.base` is empty, the
pretraining it tunes, with the data and tokenize stages before it; finished stages are reused)."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, _summary, app, console, fail
from cluster.config import RecipeError

WITH_PRETRAIN = {"data", "tokenize", "pretrain", "finetune"}


@app.command()
def finetune(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `finetune` section."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    merge: bool = typer.Option(
        False, "--merge", help="LoRA: also write `merged/`, the base with the adapters folded in."
    ),
    force: bool = typer.Option(
        False, "--force", help="Tune from scratch even if the stage finished (its checkpoints are deleted)."
    ),
    address: str = typer.Option(None, "--address", help="Ray cluster address; default: embedded local Ray."),
) -> None:
    """Fine-tune a model on Ray Train + DeepSpeed: SFT, DPO, SFT then DPO, a reward model, or RLHF (RLOO
    against a reward model); full or LoRA / prefix / P-tuning.
    Writes `<run>/finetune/`: `model/` (a model folder, or a peft adapter folder), `metrics.jsonl`,
    `loss_curve.png`, `summary.json` (held-out metrics before and after), `quarantine/`.

    An interrupted run resumes from its latest checkpoint when re-run. docs/finetune.md describes every key.

    Examples:

        raylm finetune my.yaml --set finetune.base=assets:models/SmolLM2-135M-Instruct
        raylm finetune my.yaml --set finetune.method=prefix --set finetune.max_steps=30
        raylm finetune my.yaml --set finetune.objective=dpo --set finetune.rejected=shuffled_words
        raylm finetune my.yaml --set finetune.objective=rlhf --set finetune.reward_model=rm/model
        raylm finetune my.yaml --merge
        raylm keys finetune
    """
    from cluster.orchestrate import run_recipe

    overrides = [*set_, "finetune.merge=true"] if merge else set_
    cfg = _load(recipe, overrides)
    if address:
        cfg.cluster.address = address
    if cfg.finetune is None:
        fail(f"{recipe}: the recipe has no `finetune` section")
    only = {"finetune"} if cfg.finetune.base else WITH_PRETRAIN
    try:
        results = run_recipe(cfg, force={"finetune"} if force else set(), log=console.print, only=only)
    except RecipeError as exc:
        fail(exc)
    _summary(results)
    for r in results:
        if r.stage == "finetune":
            console.print(
                f"model: {r.folder}/model   summary: {r.folder}/summary.json   "
                f"loss curve: {r.folder}/loss_curve.png"
            )
