"""Planner of the serve stage: the recipe's `serve` section -> `<run>/serve/` (plan.json, samples.jsonl).

The stage starts the Ray Serve app, sends `serve.sample_prompts` through the OpenAI API, prints the
answers, records latency/throughput and the answers in the manifest, and shuts the app down (unless
`serve.keep_serving`: then it serves until Ctrl-C). Its inputs are the served model folders, so a
re-trained model re-runs it; a run with `keep_serving` always re-runs it (serving is its purpose).

Models whose folders already exist are planned here, before Ray starts: a configuration that cannot fit
is refused with the numbers before any process exists. It must stay the last stage (it serves what the
others made).
"""

from __future__ import annotations

import time

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.run_folder import MANIFEST, RunFolder, join, read_json

STAGE = "serve"


def stage_config(recipe: Recipe) -> dict:
    """What the manifest hashes (API keys are masked by the config model, never stored)."""
    config = {"serve": recipe.serve.model_dump(mode="json")}
    if recipe.serve.keep_serving:
        config["session"] = time.time_ns()  # never "already done": the user asked to serve
    return config


def _preflight(recipe: Recipe) -> None:
    from pathlib import Path

    from cluster.runtime import resolve_address
    from serving.app import plan_app
    from serving.planner import PlanError

    remote = resolve_address(recipe.cluster.address) is not None
    # Folders a previous stage of this run will write are planned when the stage runs; so are `auto`
    # devices on a remote cluster (only the cluster knows whether it has GPUs).
    present = [m for m in recipe.serve.models
               if ("://" in m.resolved_path() or Path(m.resolved_path()).is_dir())
               and not (remote and m.device == "auto")]
    if not present:
        return
    cfg = recipe.serve.model_copy(update={"models": present})
    try:
        plan_app(cfg)
    except PlanError as exc:
        raise RecipeError([f"serve: {p}" for p in str(exc).splitlines()]) from None


def _is_stage_input(folder: str) -> bool:
    """A local model folder recorded as an input: one without a manifest, or one a raylm stage wrote. (The
    asset cache's models carry a manifest of another shape that the stage contract cannot read.)"""
    if "://" in folder:
        return False
    manifest = read_json(join(folder, MANIFEST))
    return manifest is None or "stage" in manifest


RUN_PREFIX = "run:"


def with_run_paths(recipe: Recipe, run_folder: RunFolder) -> Recipe:
    """`run:finetune/merged` in a served model's path (or adapter path) -> that folder of this run, so a
    recipe can serve what its own stages make without knowing where the run folder is."""

    def concrete(path: str | None) -> str | None:
        if path and path.startswith(RUN_PREFIX):
            return join(run_folder.root, path[len(RUN_PREFIX):].lstrip("/"))
        return path

    models = []
    for m in recipe.serve.models:
        adapters = [a.model_copy(update={"path": concrete(a.path)}) for a in m.lora_adapters]
        models.append(m.model_copy(update={"path": concrete(m.path), "lora_adapters": adapters}))
    return recipe.model_copy(update={"serve": recipe.serve.model_copy(update={"models": models})})


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    if recipe.serve is None:
        return None
    recipe = with_run_paths(recipe, run_folder)
    cfg = recipe.serve
    config = stage_config(recipe)
    inputs = {f"model:{m.name}": m.resolved_path() for m in cfg.models if _is_stage_input(m.resolved_path())}
    if run_folder.is_current(STAGE, config, inputs) is None:
        _preflight(recipe)

    def body(out_dir: str) -> dict:
        from serving.planner import PlanError
        from serving.stage import run_serve_stage

        try:
            return run_serve_stage(cfg, out_dir)
        except PlanError as exc:  # e.g. a `run:` folder an earlier stage did not write
            raise RecipeError([f"serve: {p}" for p in str(exc).splitlines()]) from None

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)
