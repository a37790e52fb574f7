"""`raylm data RECIPE`: run the recipe's data and tokenize stages only."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, _summary, app, console, fail
from cluster.config import RecipeError

DATA_STAGES = {"data", "tokenize"}


@app.command()
def data(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `data` (and usually `tokenizer`) section."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help="Redo both stages even if their manifests match."),
    address: str = typer.Option(None, "--address", help="Ray cluster address; default: embedded local Ray."),
) -> None:
    """Clean the recipe's inputs and tokenize them: the `data` stage (operators in recipe order ->
    `<run>/data/clean/`, `stats.json`, `quarantine/`) and the `tokenize` stage (tokenizer, packed
    `train/` and `heldout/` Parquet). Finished stages whose manifest matches are reused.

    Examples:

        raylm data pipelines/recipes/quickstart.yaml
        raylm data my.yaml --set tokenizer.vocab_size=16000     # redoes only tokenize
        raylm data my.yaml --set data.inputs.0.limit=1000 --force
        raylm status runs/quickstart
    """
    from cluster.orchestrate import run_recipe

    cfg = _load(recipe, set_)
    if address:
        cfg.cluster.address = address
    if cfg.data is None and cfg.tokenizer is None:
        fail(f"{recipe}: the recipe has no `data` or `tokenizer` section")
    try:
        results = run_recipe(
            cfg, force=set(DATA_STAGES) if force else set(), log=console.print, only=set(DATA_STAGES)
        )
    except RecipeError as exc:
        fail(exc)
    _summary(results)
    for r in results:
        console.print(f"{r.stage}: {r.folder}/stats.json")
