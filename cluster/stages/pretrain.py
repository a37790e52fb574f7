"""Planner of the pretrain stage: the recipe's `model` and `pretrain` sections -> `<run>/pretrain/`.

Its input is the tokenize stage's folder (or `pretrain.data`). What can be checked now is checked now,
naming the key: the model's positions against the sequence length, the vocabulary against the tokenizer,
an empty or too small dataset (when the token folder exists already; when the tokenize stage is still to
run, the stage body checks it before any worker starts). Cluster-dependent checks (workers, GPUs) run in
the body, once Ray is connected.
"""

from __future__ import annotations

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.assets import resolve_path
from pipelines.models import ModelConfig
from pipelines.run_folder import RunFolder, join

STAGE = "pretrain"


def stage_config(recipe: Recipe) -> dict:
    """What the pretrain manifest hashes: a change here redoes the stage."""
    model = recipe.model or ModelConfig()
    return {
        "model": model.model_dump(mode="json"),
        "pretrain": recipe.pretrain.model_dump(mode="json"),
        "seed": recipe.seed,
    }


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    cfg = recipe.pretrain
    if cfg is None:
        return None
    from pipelines.train.stage import (
        PretrainInputError,
        init_model_section,
        inspect,
        preflight,
        run_pretrain,
    )

    model = recipe.model or ModelConfig()
    if cfg.init_from:
        if recipe.model is not None:
            raise RecipeError(
                [
                    f"model: set together with pretrain.init_from ({cfg.init_from}): the folder's config "
                    "is the model that trains; remove the model section"
                ]
            )
        try:
            model = init_model_section(cfg)
        except PretrainInputError as exc:
            raise RecipeError(exc.problems) from None
    if cfg.data:
        token_dir, data_key = resolve_path(cfg.data), "pretrain.data"
    else:
        if recipe.tokenizer is None and not _exists(run_folder.stage_dir("tokenize")):
            raise RecipeError(
                [
                    "pretrain: needs a `tokenizer` section (this run's tokenize stage) or "
                    "`pretrain.data` (a tokenize-stage folder)"
                ]
            )
        token_dir, data_key = run_folder.stage_dir("tokenize"), "pretrain (the tokenize stage's output)"
    config = stage_config(recipe)
    inputs = {"data": token_dir}
    if cfg.init_from:  # a re-run of the stage that wrote the folder re-runs this one
        inputs["init_from"] = resolve_path(cfg.init_from)
    current = run_folder.is_current(STAGE, config, inputs)
    try:
        if current is None:  # it will run: check it can, now
            if cfg.data is None and recipe.tokenizer is not None:
                # the tokenize stage runs first (and may redo the folder): the data is checked by the
                # body, before any worker starts; the sequence length is known from the recipe already
                preflight(model, cfg, seq_len=recipe.tokenizer.seq_len)
            else:
                preflight(model, cfg, data=inspect(token_dir, data_key), data_key=data_key)
    except PretrainInputError as exc:
        raise RecipeError(exc.problems) from None
    storage = (
        resolve_path(cfg.checkpoint_storage)
        if cfg.checkpoint_storage
        else join(run_folder.root, "checkpoints", STAGE)
    )

    def body(out_dir: str) -> dict:
        try:
            # a body that runs while the manifest matched was forced: train from scratch
            return run_pretrain(
                model,
                cfg,
                token_dir,
                out_dir,
                seed=recipe.seed,
                checkpoint_root=storage,
                fresh=current is not None,
                data_key=data_key,
            )
        except PretrainInputError as exc:
            raise RecipeError(exc.problems) from None

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)


def _exists(folder: str) -> bool:
    from pipelines.run_folder import read_manifest

    if "://" in folder:
        return read_manifest(folder) is not None
    from pathlib import Path

    return Path(folder).is_dir()


def describe_layout(recipe: Recipe) -> list[str]:
    """The dry run's account of a pipeline/tensor layout (`pipelines/parallel/plan.py`): which rank holds
    which data shard, stage (and layers) and tensor shard, and the parameters each stores."""
    cfg = recipe.pretrain
    if cfg is None or not cfg.model_parallel:
        return []
    from pipelines.parallel.plan import describe

    model = recipe.model or ModelConfig()
    vocab = model.vocab_size or (recipe.tokenizer.vocab_size if recipe.tokenizer else 32000)
    return describe(model, cfg.layout, vocab, cfg.parallel.partition_method)
