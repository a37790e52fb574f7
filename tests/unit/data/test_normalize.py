"""Text normalisation operators against plain Python/unicodedata references."""

from __future__ import annotations

import string
import unicodedata

import pandas as pd

from pipelines.data.ops.normalize import (
    CleanSpecialCharacters,
    Lowercase,
    NormalizeWhitespace,
    RemovePunctuation,
)

TEXTS = [
    "The Cats are Running, and Playing!",
    "  tabs\tand\nnew lines\r\n  ",
    "e.g. 3.5% off -- $10 (now)?",
    "ÉCOLE Straße",
    "",
]


def _run(op, texts):
    return op.apply(pd.DataFrame({"text": texts})).df["text"].tolist()


def test_lowercase():
    assert _run(Lowercase(), TEXTS) == [t.lower() for t in TEXTS]


def test_remove_punctuation_equals_string_punctuation_on_ascii():
    ascii_texts = [t for t in TEXTS if t.isascii()]
    table = str.maketrans("", "", string.punctuation)
    assert _run(RemovePunctuation(), ascii_texts) == [t.translate(table) for t in ascii_texts]


def test_remove_punctuation_unicode_and_symbols_switch():
    assert _run(RemovePunctuation(), ["“quoted” — dash … ¿qué? €5"]) == ["quoted  dash  qué 5"]
    assert _run(RemovePunctuation(include_symbols=False), ["a+b=c $5!"]) == ["a+b=c $5"]
    assert _run(RemovePunctuation(replace_with=" "), ["a-b"]) == ["a b"]


def test_normalize_whitespace():
    assert _run(NormalizeWhitespace(), TEXTS) == [" ".join(t.split()) for t in TEXTS]
    assert _run(NormalizeWhitespace(keep_paragraphs=True), ["a  b\n\n\n c\n d "]) == ["a b\n\nc d"]


def test_special_characters_nfkc_control_zero_width():
    text = "ﬁne Ａ①\u200bword\x00\x07 soft\u00adhyphen\u2060"
    out = _run(CleanSpecialCharacters(), [text])[0]
    ref = unicodedata.normalize("NFKC", text)
    for ch in "\u200b\x00\x07\u00ad\u2060":
        ref = ref.replace(ch, "")
    assert out == ref == "fine A1word softhyphen"


def test_newlines_and_tabs_modes():
    assert _run(CleanSpecialCharacters(newlines_tabs="space"), ["a\nb\tc"]) == ["a b c"]
    assert _run(CleanSpecialCharacters(newlines_tabs="remove"), ["a\nb\tc"]) == ["abc"]
    assert _run(CleanSpecialCharacters(), ["a\nb\tc"]) == ["a\nb\tc"]
    assert _run(CleanSpecialCharacters(replacements={"“": '"', "”": '"'}), ["“x”"]) == ['"x"']


def test_output_column_keeps_the_original_and_counts_changes():
    df = pd.DataFrame({"text": ["ABC", "abc", None]})
    res = Lowercase(output="low").apply(df)
    assert res.df["text"].tolist()[:2] == ["ABC", "abc"]
    assert res.df["low"].tolist()[:2] == ["abc", "abc"]
    assert pd.isna(res.df["low"].iloc[2])
    assert res.counters == {"changed": 1}
