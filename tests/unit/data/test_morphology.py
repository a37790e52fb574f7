"""Lemmatisation and stemming against NLTK itself, and the seed's documented example."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.data.nlp import ensure_nltk_data
from pipelines.data.ops.morphology import Lemmatize, Stem
from pipelines.data.ops.normalize import Lowercase, RemovePunctuation

SENTENCE = "The cats are running and playing."


def _chain(ops, text):
    df = pd.DataFrame({"text": [text]})
    for op in ops:
        df = op.apply(df).df
    return df["text"].iloc[0]


@pytest.mark.assets
def test_lemmatize_seed_example(assets):
    assert Lemmatize().transform(SENTENCE) == "The cat be run and play."
    assert _chain([Lowercase(), RemovePunctuation(), Lemmatize()], SENTENCE) == "the cat be run and play"


@pytest.mark.assets
def test_lemmatize_matches_wordnet_lemmatizer_with_the_chosen_pos(assets):
    ensure_nltk_data()
    from nltk.stem import WordNetLemmatizer

    wnl = WordNetLemmatizer()

    def reference(word: str) -> str:
        for pos in "vnar":
            lemma = wnl.lemmatize(word.lower(), pos)
            if lemma != word.lower():
                return lemma
        return word

    words = [
        "was",
        "does",
        "geese",
        "better",
        "leaves",
        "mice",
        "went",
        "children",
        "running",
        "studies",
        "happily",
        "feet",
    ]
    op = Lemmatize()
    assert [op.transform(w) for w in words] == [reference(w) for w in words]
    assert op.transform("was does geese") == "be do goose"  # verbs first: not 'wa', 'doe'
    assert Lemmatize(pos_order=["n"]).transform("was does") == "wa doe"  # what noun-only would give


def test_porter_stem_seed_example_matches_nltk():
    from nltk.stem import PorterStemmer

    assert Stem().transform(SENTENCE) == "the cat are run and play."
    assert _chain([Lowercase(), RemovePunctuation(), Stem()], SENTENCE) == "the cat are run and play"
    porter = PorterStemmer()
    words = ["The", "cats", "are", "running", "and", "playing", "generously", "relational"]
    assert Stem().transform(" ".join(words)) == " ".join(porter.stem(w) for w in words)


def test_snowball_matches_nltk():
    from nltk.stem import SnowballStemmer

    words = ["generously", "running", "fairly", "cats"]
    assert Stem(algorithm="snowball").transform(" ".join(words)) == " ".join(
        SnowballStemmer("english").stem(w) for w in words
    )
    assert Stem(algorithm="snowball", language="german").transform("Katzen") == SnowballStemmer(
        "german"
    ).stem("Katzen")


def test_snowball_unknown_language_is_a_problem():
    assert "no language 'klingon'" in Stem(algorithm="snowball", language="klingon").check({"text": "str"})[0]


@pytest.mark.parametrize("op", [Stem(), Stem(algorithm="snowball")])
def test_digits_and_punctuation_kept(op):
    assert op.transform("running-fast 42x, ok!") == "run-fast 42x, ok!"


def test_the_word_cache_stops_at_its_cap_and_words_past_it_are_still_rewritten(monkeypatch):
    """A reused Ray worker keeps the cache from task to task, so it must stay bounded."""
    from nltk.stem import PorterStemmer

    import pipelines.data.ops.morphology as morphology

    monkeypatch.setattr(morphology, "_CACHE_LIMIT", 5)
    monkeypatch.setattr(morphology, "_CACHES", {})
    op = Stem(algorithm="porter")
    words = [f"running{chr(97 + i)}s" for i in range(12)] + ["playing", "cats"]
    got = op.transform(" ".join(words))
    assert got == " ".join(PorterStemmer().stem(w) for w in words)
    assert len(op._cache) == 5
