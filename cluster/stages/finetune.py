"""Planner of the finetune stage: the recipe's `finetune` section -> `<run>/finetune/`.

Its base is `finetune.base` (a model folder; `assets:` paths work) or, when that is empty, this run's
pretrained model (`<run>/pretrain/model`, so the stage runs after pretrain and re-runs when pretrain is
redone). When the base exists already, everything that can be refused is refused now, before Ray starts:
a folder that is not a model, LoRA target modules the model does not have, a chat template that does not
fit, missing data files, too few usable records.
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.assets import resolve_path
from pipelines.run_folder import RunFolder, join

STAGE = "finetune"


def base_folder(recipe: Recipe, run_folder: RunFolder) -> str:
    """The model folder the stage tunes."""
    cfg = recipe.finetune
    if cfg.base:
        return resolve_path(cfg.base)
    if recipe.pretrain is None and not Path(run_folder.stage_dir("pretrain"), "model").is_dir():
        raise RecipeError(
            [
                "finetune.base: empty, and the recipe has no `pretrain` section (nor a finished "
                f"{run_folder.stage_dir('pretrain')}/model): set it to a model folder, e.g. "
                "assets:models/SmolLM2-135M-Instruct"
            ]
        )
    return join(run_folder.stage_dir("pretrain"), "model")


def reward_folder(path: str, run_folder: RunFolder) -> str:
    """rlhf's `reward_model` made concrete: `run:<folder>` is relative to this run's folder (e.g. a reward
    model another recipe wrote beside it: `run:../rm-run/finetune/model`), `assets:` the asset cache."""
    if path.startswith("run:"):
        return str(Path(join(run_folder.root, path[len("run:") :].lstrip("/"))).resolve())
    return resolve_path(path)


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    cfg = recipe.finetune
    if cfg is None:
        return None
    if cfg.reward_model:
        cfg = cfg.model_copy(update={"reward_model": reward_folder(cfg.reward_model, run_folder)})
    from pipelines.train.finetune_stage import (
        FinetuneInputError,
        base_fingerprint,
        prepare,
        run_finetune_stage,
    )

    base = base_folder(recipe, run_folder)
    exists = Path(base).is_dir()
    config = {
        "finetune": cfg.model_dump(mode="json"),
        "seed": recipe.seed,
        "base": base,
        # an explicit base is not a stage folder: its files identify it (this run's pretrain is an input)
        "base_fingerprint": base_fingerprint(base) if cfg.base and exists else None,
    }
    if cfg.reward_model and Path(cfg.reward_model).is_dir():  # rlhf: a retrained reward model redoes it
        config["reward_fingerprint"] = base_fingerprint(cfg.reward_model)
    inputs = {} if cfg.base else {"base": run_folder.stage_dir("pretrain")}
    current = run_folder.is_current(STAGE, config, inputs)
    if current is None and exists:
        try:
            prepare(cfg, base, recipe.seed)
        except FinetuneInputError as exc:
            raise RecipeError(exc.problems) from None
    elif cfg.base and not exists:
        raise RecipeError([f"finetune.base: {cfg.base}: no such model folder"])
    storage = (
        resolve_path(cfg.checkpoint_storage)
        if cfg.checkpoint_storage
        else join(run_folder.root, "checkpoints", STAGE)
    )

    def body(out_dir: str) -> dict:
        try:
            return run_finetune_stage(
                cfg, base, out_dir, seed=recipe.seed, checkpoint_root=storage, fresh=current is not None
            )
        except FinetuneInputError as exc:
            raise RecipeError(exc.problems) from None

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)
