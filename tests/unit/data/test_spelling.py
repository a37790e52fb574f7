"""Spelling and abbreviation standardisation against a straightforward token-by-token reference."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from pipelines.data.ops.spelling import StandardizeSpelling, load_mapping, parse_mapping


def _reference(text: str, mapping: dict[str, str]) -> str:
    out = []
    for token in re.split(r"([^\W_]+(?:'[^\W_]+)*)", text):
        new = mapping.get(token.lower())
        if new is None:
            out.append(token)
        elif len(token) > 1 and token.isupper():
            out.append(new.upper())
        elif token[:1].isupper():
            out.append(new[:1].upper() + new[1:])
        else:
            out.append(new)
    return "".join(out)


TEXTS = [
    "Dont worry, idk teh answer btw.",
    "I will recieve it tommorow; IMO it's fine.",
    "don't touch: u2 u",
    "Nothing to change here.",
]


def test_default_map_matches_reference():
    mapping = load_mapping(None)
    out = StandardizeSpelling().apply(pd.DataFrame({"text": TEXTS})).df["text"].tolist()
    assert out == [_reference(t, mapping) for t in TEXTS]
    assert out[0] == "Don't worry, I don't know the answer by the way."
    assert out[1] == "I will receive it tomorrow; IN MY OPINION it's fine."
    assert out[2] == "don't touch: u2 you"


def test_custom_mapping_file(tmp_path):
    path = tmp_path / "map.tsv"
    path.write_text("# comment\ncolour\tcolor\nflavour\tflavor\n")
    op = StandardizeSpelling(mapping=str(path))
    assert op.preflight() == []
    assert op.transform("Colour and flavour") == "Color and flavor"


def test_bad_mapping_file_is_named(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("ok\tfine\nbroken line\n")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        parse_mapping(path.read_text(), str(path))
    assert "bad.tsv:2" in StandardizeSpelling(mapping=str(path)).preflight()[0]
    assert "No such file" in StandardizeSpelling(mapping=str(tmp_path / "none.tsv")).preflight()[0]
