"""Planner of the data stage: the recipe's `data` section -> `<run>/data/` (clean/, stats.json,
quarantine/). Inputs and the columns operators need are checked here, before any work starts."""

from __future__ import annotations

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.assets import resolve_path
from pipelines.run_folder import RunFolder

STAGE = "data"


def stage_config(recipe: Recipe) -> dict:
    """What the data stage's manifest hashes: a change here redoes it (and, through it, tokenize)."""
    return {"data": recipe.data.model_dump(mode="json"), "seed": recipe.seed}


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    cfg = recipe.data
    if cfg is None:
        return None
    from pipelines.data.readers import DataInputError
    from pipelines.data.stage import preflight, run_clean

    config = stage_config(recipe)
    inputs = {f"input{i}": resolve_path(inp.path) for i, inp in enumerate(cfg.inputs)}
    if run_folder.is_current(STAGE, config, inputs) is None:  # it will run: check it can, now
        try:
            preflight(cfg)
        except DataInputError as exc:
            raise RecipeError([f"data: {p}" for p in exc.problems]) from None

    def body(out_dir: str) -> dict:
        return run_clean(cfg, out_dir, recipe.seed)

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)
