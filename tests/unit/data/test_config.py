"""The recipe's data sections: errors name the file, line, operator and column before any work."""

from __future__ import annotations

import pytest

from cluster.config import RecipeError, describe_keys, parse_recipe

HEAD = (
    "name: t\ndata:\n  inputs:\n    - {path: x.jsonl}\n  columns: {score: float, label: str}\n  operators:\n"
)


def _problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, source="r.yaml")
    return info.value.problems


def test_unknown_operator_did_you_mean():
    (p,) = _problems(HEAD + "    - {op: zscore_outlier, columns: [score]}\n")
    assert p == "r.yaml:7: data.operators.0: unknown op 'zscore_outlier' (did you mean 'zscore_outliers'?)"


def test_unknown_key_inside_an_operator_did_you_mean():
    (p,) = _problems(HEAD + "    - {op: iqr_outliers, columns: [score], kk: 2}\n")
    assert p == "r.yaml:7: data.operators.0.kk: unknown key (did you mean 'k'?)"


def test_missing_column_named_with_operator():
    (p,) = _problems(
        HEAD + "    - {op: lowercase}\n    - {op: fill_missing, strategy: mean, columns: [nope]}\n"
    )
    assert "operators[1] (fill_missing): needs column 'nope'" in p and p.startswith("r.yaml:2: data:")


def test_column_type_checked():
    (p,) = _problems(HEAD + "    - {op: zscore_outliers, columns: [label]}\n")
    assert "'label' is str" in p


def test_column_written_by_an_earlier_operator_is_available():
    recipe = parse_recipe(HEAD + "    - {op: lowercase, output: low}\n    - {op: lemmatize, column: low}\n")
    assert [o.op for o in recipe.data.operators] == ["lowercase", "lemmatize"]


def test_column_a_step_may_drop_cannot_be_used_later():
    (p,) = _problems(
        HEAD + "    - {op: drop_sparse_columns, max_missing_ratio: 0.5}\n"
        "    - {op: zscore_outliers, columns: [score]}\n"
    )
    assert "may drop" in p
    parse_recipe(
        HEAD + "    - {op: drop_sparse_columns, max_missing_ratio: 0.5, columns: [label]}\n"
        "    - {op: zscore_outliers, columns: [score]}\n"
    )


def test_tokenizer_section_and_keys_are_documented():
    recipe = parse_recipe("name: t\ntokenizer: {vocab_size: 1000, seq_len: 128}\n")
    assert recipe.tokenizer.vocab_size == 1000
    assert "vocab_sise" in _problems("name: t\ntokenizer: {vocab_sise: 1}\n")[0]
    rows = {r[0]: r for r in describe_keys()}
    for key in ("data.inputs", "data.operators", "data.columns", "tokenizer.vocab_size", "tokenizer.seq_len"):
        assert rows[key][3], f"{key} has no description"
