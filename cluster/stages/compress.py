"""Planner of the compress stage: the recipe's `compress` section -> `<run>/compress/<method>/`.

Its input is `compress.base` (a folder or `assets:models/...`), or this run's fine-tuned model when the
recipe has a `finetune` section, else its pretrained model. Settings that do not fit the base model are
refused here, before Ray starts, when the base folder exists already (when an earlier stage of this run
is still to write it, the stage body checks before any method runs).
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.assets import resolve_path
from pipelines.run_folder import RunFolder, join

STAGE = "compress"


def base_folder(recipe: Recipe, run_folder: RunFolder) -> tuple[str, str]:
    """(base model folder, where it comes from) for this recipe."""
    cfg = recipe.compress
    if cfg.base:
        return resolve_path(cfg.base), "compress.base"
    ft = getattr(recipe, "finetune", None)
    if ft is not None:
        # sft+dpo writes sft/ then dpo/: the DPO model is the result
        sub = "dpo/" if getattr(ft, "objective", "sft") == "sft+dpo" else ""
        if getattr(ft, "method", "full") == "full":
            return join(run_folder.stage_dir("finetune"), f"{sub}model"), f"this run's finetune/{sub}model"
        if getattr(ft, "method", None) == "lora" and getattr(ft, "merge", False):
            return join(run_folder.stage_dir("finetune"), f"{sub}merged"), f"this run's finetune/{sub}merged"
        raise RecipeError(
            [
                f"compress: this run's finetune stage writes a {ft.method} adapter, not a full model: set "
                "`finetune.merge: true` (LoRA) so it writes finetune/merged/, or set `compress.base`"
            ]
        )
    if recipe.pretrain is not None or Path(run_folder.stage_dir("pretrain"), "model").is_dir():
        return join(run_folder.stage_dir("pretrain"), "model"), "this run's pretrain/model"
    raise RecipeError(
        [
            "compress: needs `compress.base` (a model folder, e.g. assets:models/SmolLM2-135M-Instruct) or a "
            "`pretrain`/`finetune` section whose model it compresses"
        ]
    )


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    cfg = recipe.compress
    if cfg is None:
        return None
    from pipelines.compress.checks import CompressInputError
    from pipelines.compress.stage import is_stage_folder, preflight, run_compress

    base, origin = base_folder(recipe, run_folder)
    config = {"compress": cfg.model_dump(mode="json"), "seed": recipe.seed}
    # an asset-cache model carries a manifest of another shape: it is not a stage input (serve does the same)
    inputs = {"base": base} if is_stage_folder(base) else {}
    if run_folder.is_current(STAGE, config, inputs) is None and Path(base).is_dir():
        try:
            preflight(cfg, base)
        except CompressInputError as exc:
            raise RecipeError([f"{p} (base: {origin})" for p in exc.problems]) from None
    elif cfg.base and not Path(base).is_dir() and "://" not in base:
        raise RecipeError([f"compress.base: {cfg.base} is not a folder ({base})"])

    def body(out_dir: str) -> dict:
        _check_not_adapter(base)
        try:
            return run_compress(cfg, base, out_dir, seed=recipe.seed)
        except CompressInputError as exc:
            raise RecipeError(exc.problems) from None

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)


def _check_not_adapter(base: str) -> None:
    if Path(base, "adapter_config.json").is_file() and not Path(base, "config.json").is_file():
        raise RecipeError(
            [
                f"compress: {base} is a peft adapter, not a full model: merge it (peft `merge_and_unload`) "
                "and point `compress.base` at the merged folder"
            ]
        )
