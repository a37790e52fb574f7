"""Planner of the tokenize stage: the recipe's `tokenizer` section -> `<run>/tokenize/` (tokenizer/,
train/, heldout/, stats.json). Its input is the data stage's folder, so changing the vocabulary redoes
only this stage, while changing the data redoes both."""

from __future__ import annotations

from pathlib import Path

from cluster.config import Recipe, RecipeError
from cluster.orchestrate import StagePlan
from pipelines.assets import resolve_path
from pipelines.run_folder import RunFolder, join

STAGE = "tokenize"


def plan(recipe: Recipe, run_folder: RunFolder) -> StagePlan | None:
    tok = recipe.tokenizer
    if tok is None:
        return None
    data = recipe.data
    if data is None and tok.input is None:
        raise RecipeError(
            [
                "tokenizer: needs a `data` section (the text to tokenize) or `tokenizer.input` "
                "(a folder of Parquet with a text column)"
            ]
        )
    if tok.path and "://" not in tok.path and not Path(resolve_path(tok.path)).is_dir():
        raise RecipeError([f"tokenizer.path: {tok.path}: no such tokenizer folder"])
    if tok.input and "://" not in tok.input and not Path(resolve_path(tok.input)).exists():
        raise RecipeError([f"tokenizer.input: {tok.input}: no such folder"])
    column = tok.column or (data.text_column if data else None) or "text"
    if data is not None and tok.input is None and data.text_column is None and tok.column is None:
        raise RecipeError(["tokenizer: the data section has no text column (text_column is null)"])
    data_dir = run_folder.stage_dir("data")
    inputs = {"text": resolve_path(tok.input)} if tok.input else {"data": data_dir}
    config = {"tokenizer": tok.model_dump(mode="json"), "seed": recipe.seed, "column": column}
    from pipelines.data.stage import run_tokenize

    def body(out_dir: str) -> dict:
        return run_tokenize(data, tok, join(data_dir, "clean"), out_dir, recipe.seed)

    return StagePlan(name=STAGE, config=config, body=body, inputs=inputs)
