"""Quality heuristics against straightforward reference computations, and the language check."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from pipelines.data.ops.quality import (
    QualityFilter,
    detect_languages,
    duplicate_line_fraction,
    duplicate_ngram_char_fraction,
    stop_words,
    top_ngram_char_fraction,
)

GOOD = (
    "The committee met on Tuesday to discuss the budget for the coming year, and most of the members "
    "agreed that the plan was reasonable."
)


def test_duplicate_line_fraction_reference():
    text = "a\nb\na\n\na\nc"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert duplicate_line_fraction(text) == pytest.approx(1 - len(set(lines)) / len(lines))


def test_top_ngram_fraction_reference():
    words = ["buy", "now", "buy", "now", "buy", "now", "cheap"]
    grams = Counter(zip(words, words[1:], strict=False))
    gram, count = grams.most_common(1)[0]
    assert top_ngram_char_fraction(words, 2) == pytest.approx(
        count * sum(map(len, gram)) / sum(map(len, words))
    )


def test_duplicate_ngram_fraction_reference():
    words = ["a", "b", "c", "d", "e", "x", "a", "b", "c", "d", "e"]
    # every word but 'x' lies in the repeated 5-gram (a b c d e)
    assert duplicate_ngram_char_fraction(words, 5) == pytest.approx(10 / 11)
    assert duplicate_ngram_char_fraction(["a", "b", "c", "d", "e", "f", "g"], 5) == 0


@pytest.mark.parametrize(
    "text,reason",
    [
        ("too short", "too_few_words"),
        ("a b c d e f g h i j", "mean_word_length_low"),
        (
            "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic "
            "floccinaucinihilipilification hippopotomonstrosesquipedaliophobia",
            "mean_word_length_high",
        ),
        ("#python #coding #rust and the community loves these languages", "symbol_word_ratio"),
        ("1234 5678 9012 3456 7890 1122 3344 the and four", "alpha_word_fraction"),
        ("the line is here\nthe line is here\nthe line is here\nanother one", "duplicate_lines"),
        ("buy now buy now buy now buy now and the offer", "top_ngram"),
        ("Quick brown foxes jump over lazy dogs near rivers", "too_few_stop_words"),
        ("Was machen die Kinder in dem großen Garten hinter dem Haus am Nachmittag?", "language"),
    ],
)
def test_each_check_drops_with_its_reason(text, reason):
    res = QualityFilter().apply(pd.DataFrame({"text": [text, GOOD]}))
    assert res.df["text"].tolist() == [GOOD]
    assert res.drops == {f"quality:{reason}": 1}


def test_checks_switch_off():
    res = QualityFilter(
        min_words=None,
        min_mean_word_length=None,
        min_stop_words=None,
        language=None,
        max_top_ngram_fraction=None,
    ).apply(pd.DataFrame({"text": ["too short"]}))
    assert len(res.df) == 1


def test_stop_word_fraction_reference():
    text = "the cat and the dog were in the house"
    words = text.split()
    share = sum(w in stop_words() for w in words) / len(words)
    op = QualityFilter(min_stop_word_fraction=share + 0.01, language=None)
    assert op.failure(text) == "stop_word_fraction"
    assert QualityFilter(min_stop_word_fraction=share, language=None).failure(text) is None


def test_language_ids():
    langs, probs = detect_languages([GOOD, "Le chat est sur la table et il dort tranquillement au soleil."])
    assert langs == ["en", "fr"] and (probs > 0.5).all()
    assert QualityFilter(language="fr").apply(pd.DataFrame({"text": [GOOD]})).drops == {"quality:language": 1}
