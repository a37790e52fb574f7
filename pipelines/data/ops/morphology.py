"""Lemmatisation (NLTK WordNet, POS-aware) and stemming (Porter, Snowball).

POS without a tagger: NLTK's averaged-perceptron tagger data cannot be installed offline here, so the
part of speech comes from WordNet's own morphology. Each word is lemmatised with `WordNetLemmatizer` under
each part of speech in `pos_order` (default verb, noun, adjective, adverb) and the first lemma that differs
from the word is taken; a word no part of speech reduces stays as it is. Verbs first because WordNet's
noun forms give the classic errors otherwise ("was" -> "wa", "does" -> "doe", "are" -> "are" the unit of
area), while a plural noun reduces the same under either reading ("cats" -> "cat"). So
"The cats are running and playing." -> "The cat be run and play." (and, after `lowercase` and
`remove_punctuation`, "the cat be run and play").

Both operators rewrite alphabetic words in place (digits, punctuation and spacing are kept) and cache the
result per distinct word, since a corpus' words follow Zipf's law.
"""

from __future__ import annotations

import re
import warnings
from functools import cache, cached_property
from typing import Any, Literal

from pydantic import Field

from pipelines.assets import asset_paths
from pipelines.data.nlp import ensure_nltk_data, nltk_resource_problem
from pipelines.data.ops.base import TextOperator

_ALPHA_WORD = re.compile(r"[^\W\d_]+")


def _full_reader():
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class MorphologyOnlyWordNet(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # the sense-key mapping to other WordNet versions: only OMW uses it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed here
        return MorphologyOnlyWordNet(nltk.data.find("corpora/wordnet"), None)


@cache
def wordnet_reader():
    """An object with NLTK's own `_morphy` over WordNet's exception lists and lemma index, loaded once
    per process. nltk's reader takes seconds to load (it parses every index file and maps sense keys to
    other WordNet versions), and every Ray worker needs it; so the two tables `_morphy` uses are pickled
    once into raylm's cache (`$RAYLM_HOME/cache/`, keyed by the WordNet files' sizes and times) and
    later processes load them in a fraction of a second."""
    import hashlib
    import os
    import pickle
    from pathlib import Path

    ensure_nltk_data()
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    found = nltk.data.find("corpora/wordnet")
    folder = Path(str(found))
    if not folder.is_dir():  # e.g. a zipped corpus: use nltk's reader as it is
        return _full_reader()
    stamp = hashlib.sha1(
        repr(
            sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file())
        ).encode()
    ).hexdigest()[:16]
    cached = asset_paths().root / "cache" / f"wordnet-morphy-{stamp}.pickle"
    tables = None
    if cached.is_file():
        try:
            tables = pickle.loads(cached.read_bytes())
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            tables = None
    if tables is None:
        full = _full_reader()
        tables = (full._exception_map, {k: frozenset(v) for k, v in full._lemma_pos_offset_map.items()})
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(tables, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, cached)
    reader = WordNetCorpusReader.__new__(WordNetCorpusReader)
    reader._exception_map, reader._lemma_pos_offset_map = tables
    return reader


def wordnet_lemma(word: str, pos: str) -> str:
    """`nltk.stem.WordNetLemmatizer().lemmatize(word, pos)`, on the reader above: the shortest of WordNet's
    morphological base forms, or the word itself."""
    lemmas = wordnet_reader()._morphy(word, pos)
    return min(lemmas, key=len) if lemmas else word


_CACHE_LIMIT = 100_000
"""Words a process caches per operator. Words come in Zipf order, so the first 100k distinct ones hold
nearly every frequent word; a larger cap only stores rare ones. An entry costs about 130 bytes, distinct
tokens keep coming as the corpus grows, and Ray reuses a worker for pass after pass, so the cache stays.
Lowering this cap from 500k and dedup's word-hash cap from 1M to 100k (2026-12-06) took the data
benchmark's two workers from 500 and 491 MB to 445 and 419 MB at 800k documents, at the same speed."""


_CACHES: dict[str, dict[str, str]] = {}
"""Per-process word -> form caches, one per operator configuration: they outlive a Ray task, so a
worker's later batches reuse what its earlier ones looked up."""


class _WordRewriter(TextOperator):
    """Rewrites each alphabetic word through `word_form`, caching per distinct word."""

    @cached_property
    def _cache(self) -> dict[str, str]:
        key = type(self).__name__ + repr(self.model_dump(exclude={"column", "output"}))
        return _CACHES.setdefault(key, {})

    def word_form(self, word: str) -> str:
        raise NotImplementedError

    def transform(self, text: str) -> str:
        cache = self._cache
        form = self.word_form

        def rewrite(m: re.Match) -> str:
            word = m.group()
            out = cache.get(word)
            if out is None:
                out = form(word)
                if len(cache) < _CACHE_LIMIT:
                    cache[word] = out
            return out

        return _ALPHA_WORD.sub(rewrite, text)

    def __getstate__(self) -> dict[str, Any]:
        # Ship the config to Ray workers without the per-process caches and NLTK objects.
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if not k.startswith("_")}
        return state


class Lemmatize(_WordRewriter):
    """Lemmatise words with NLTK's WordNet lemmatiser, choosing the part of speech by WordNet's morphology
    (see the module docs: the first of `pos_order` whose lemma differs from the word). Lemmas are lower
    case; words WordNet leaves unchanged keep their case."""

    op: Literal["lemmatize"] = "lemmatize"
    """Operator name."""
    pos_order: list[Literal["v", "n", "a", "r"]] = Field(default=["v", "n", "a", "r"], min_length=1)
    """Parts of speech to try, in order: v(erb), n(oun), a(djective), r (adverb)."""

    def preflight(self) -> list[str]:
        problem = nltk_resource_problem("corpora/wordnet", "lemmatize")
        return [problem] if problem else []

    def word_form(self, word: str) -> str:
        lower = word.lower()
        for pos in self.pos_order:
            lemma = wordnet_lemma(lower, pos)
            if lemma != lower:
                return lemma
        return word


class Stem(_WordRewriter):
    """Stem words with NLTK's Porter or Snowball stemmer (stems are lower case)."""

    op: Literal["stem"] = "stem"
    """Operator name."""
    algorithm: Literal["porter", "snowball"] = "porter"
    """Porter (NLTK's extended Porter) or Snowball ("Porter2")."""
    language: str = "english"
    """Snowball language (NLTK's `SnowballStemmer.languages`); Porter is English only."""

    def check(self, columns) -> list[str]:
        problems = super().check(columns)
        if self.algorithm == "snowball":
            from nltk.stem import SnowballStemmer

            if self.language not in SnowballStemmer.languages:
                problems.append(
                    f"snowball has no language {self.language!r} "
                    f"(one of: {', '.join(SnowballStemmer.languages)})"
                )
        return problems

    @cached_property
    def _stemmer(self):
        from nltk.stem import PorterStemmer, SnowballStemmer

        return PorterStemmer() if self.algorithm == "porter" else SnowballStemmer(self.language)

    def word_form(self, word: str) -> str:
        return self._stemmer.stem(word)
