"""`raylm compress RECIPE`: run the recipe's compress stage (its base model must exist: a folder named by
`compress.base`, or this run's finished pretrain/finetune stage)."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli import SET_HELP, _load, _summary, app, console, fail
from cluster.config import RecipeError


@app.command()
def compress(
    recipe: Path = typer.Argument(..., help="Recipe YAML with a `compress` section."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help="Redo the stage even if its manifest matches."),
) -> None:
    """Compress a model with each method of `compress.methods` (quantize W8A8/W4A16 with RTN, GPTQ or
    SmoothQuant; structured pruning of heads/MLP channels/layers; magnitude or Wanda sparsity; truncated-SVD
    low rank; distillation into fewer layers): `<run>/compress/<method>/` Hugging Face folders with
    manifests (method, settings, parameters, size, bytes per parameter, held-out perplexity, generation
    tokens/s), `report.md`, `report.json` and `pareto.png`. docs/compress.md describes every key.

    Examples:

        raylm compress my.yaml
        raylm compress my.yaml --set compress.base=assets:models/SmolLM2-135M-Instruct
        raylm compress my.yaml --set compress.measure_vllm=true --force
    """
    from cluster.orchestrate import run_recipe

    cfg = _load(recipe, set_)
    if cfg.compress is None:
        fail(f"{recipe}: the recipe has no `compress` section")
    try:
        results = run_recipe(
            cfg, force={"compress"} if force else set(), log=console.print, only={"compress"}
        )
    except RecipeError as exc:
        fail(exc)
    _summary(results)
    for r in results:
        if r.stage == "compress":
            console.print(f"report: {r.folder}/report.md   plot: {r.folder}/pareto.png")
