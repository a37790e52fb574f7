"""`raylm pretrain RECIPE`: run the recipe's pretrain stage (and, first, the data and tokenize stages it
needs, which are reused when finished)."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, _summary, app, console, fail
from cluster.config import RecipeError

PRETRAIN_STAGES = {"data", "tokenize", "pretrain"}


@app.command()
def pretrain(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `pretrain` (and usually `model`) section."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: bool = typer.Option(
        False,
        "--force",
        help="Train from scratch even if the stage finished: its "
        "checkpoints are deleted (data and tokenize are still reused).",
    ),
    address: str = typer.Option(None, "--address", help="Ray cluster address; default: embedded local Ray."),
) -> None:
    """Pretrain the recipe's model on Ray Train + DeepSpeed: `<run>/pretrain/model/` (a Hugging Face
    folder with the tokenizer), `metrics.jsonl`, `tensorboard/`, `loss_curve.png`, `summary.json`.

    The data and tokenize stages run first when the recipe has them and they are not finished. An
    interrupted run resumes from its latest checkpoint when re-run; so does the same recipe with more
    steps (`--set pretrain.max_steps=...`). docs/pretrain.md describes every key.

    Examples:

        raylm pretrain pipelines/recipes/quickstart.yaml
        raylm pretrain my.yaml --set model.preset=tiny --set pretrain.max_steps=20
        raylm pretrain my.yaml --set pretrain.zero_stage=3 --set pretrain.num_workers=2
        raylm pretrain my.yaml --set model.family=encoder-decoder --force
        raylm pretrain my.yaml --set pretrain.data=runs/other/tokenize
        raylm status runs/quickstart
    """
    from cluster.orchestrate import run_recipe

    cfg = _load(recipe, set_)
    if address:
        cfg.cluster.address = address
    if cfg.pretrain is None:
        fail(f"{recipe}: the recipe has no `pretrain` section")
    only = {"pretrain"} if cfg.pretrain.data else PRETRAIN_STAGES
    try:
        results = run_recipe(cfg, force={"pretrain"} if force else set(), log=console.print, only=only)
    except RecipeError as exc:
        fail(exc)
    _summary(results)
    for r in results:
        if r.stage == "pretrain":
            console.print(
                f"model: {r.folder}/model   loss curve: {r.folder}/loss_curve.png   "
                f"metrics: {r.folder}/metrics.jsonl"
            )
