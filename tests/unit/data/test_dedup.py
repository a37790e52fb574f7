"""Deduplication: exact against pandas, MinHash and LSH against datasketch, cluster resolution."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from datasketch import MinHash, MinHashLSH

from pipelines.data.ops.dedup import (
    ExactDedup,
    MinHasher,
    NearDedup,
    bucket_edges,
    in_sorted,
    resolve_clusters,
)

BASE = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch and "
    "drinks his morning coffee slowly"
)


def _resolve(op, df):
    drop, summary = resolve_clusters(bucket_edges(op.keys(df)))
    return op.apply(df, drop), summary


def test_exact_dedup_matches_pandas_drop_duplicates():
    texts = ["Hello  World", "hello world", "Other", "other ", "HELLO WORLD", "unique"]
    df = pd.DataFrame({"row_id": np.arange(10, 16), "text": texts})
    res, summary = _resolve(ExactDedup(), df)
    ref = df[~df["text"].map(lambda t: " ".join(t.split()).lower()).duplicated(keep="first")]
    assert res.df["row_id"].tolist() == ref["row_id"].tolist()
    assert summary["clusters"] == 2 and summary["duplicates"] == 3
    assert res.drops == {"exact_duplicate": 3}


def test_exact_dedup_case_sensitive_and_multi_column():
    df = pd.DataFrame({"row_id": [1, 2, 3], "text": ["A", "a", "A"], "src": ["x", "x", "y"]})
    res, _ = _resolve(ExactDedup(ignore_case=False), df)
    assert res.df["row_id"].tolist() == [1, 2]
    res, _ = _resolve(ExactDedup(columns=["text", "src"]), df)
    assert res.df["row_id"].tolist() == [1, 3]


def _reference_hashfunc(hasher: MinHasher):
    def hashfunc(shingle: bytes) -> int:
        return MinHasher.shingle_hash32(hasher.word_hashes(shingle.decode().split()))

    return hashfunc


def _shingles(text: str, n: int) -> list[bytes]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


@pytest.mark.parametrize("num_perm,seed,ngram", [(128, 1, 5), (64, 7, 3)])
def test_signatures_equal_datasketch(num_perm, seed, ngram):
    hasher = MinHasher(num_perm, seed, ngram)
    texts = [BASE, BASE.replace("coffee", "tea"), "short text", "", "One"]
    sig, has = hasher.signatures(texts, chunk=7)  # small chunks: documents straddle them
    for text, s, h in zip(texts, sig, has, strict=True):
        ref = MinHash(num_perm=num_perm, seed=seed, hashfunc=_reference_hashfunc(hasher))
        ref.update_batch(_shingles(text, ngram))
        assert h == bool(_shingles(text, ngram))
        if h:
            np.testing.assert_array_equal(s, ref.hashvalues)


def _corpus() -> list[str]:
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(300)]
    docs = [" ".join(rng.choice(vocab, 40)) for _ in range(60)]
    out = []
    for i, d in enumerate(docs):
        out.append(d)
        if i % 3 == 0:  # a near copy: last word changed
            out.append(" ".join(d.split()[:-1] + ["changed"]))
        if i % 10 == 0:  # a looser copy: 8 of 40 words changed
            words = d.split()
            out.append(" ".join(words[:32] + ["x"] * 8))
    return out


def test_lsh_clusters_equal_datasketch_candidates():
    texts = _corpus()
    df = pd.DataFrame({"row_id": np.arange(len(texts)), "text": texts})
    op = NearDedup(threshold=0.8, num_perm=128, ngram=3)
    keys = op.keys(df)
    drop, summary = resolve_clusters(bucket_edges(keys))
    # reference: datasketch's own LSH with the same (b, r), signatures, and connected components
    hasher = MinHasher(128, 1, 3)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    assert (lsh.b, lsh.r) == op.bands_rows
    sigs = {}
    for i, t in enumerate(texts):
        m = MinHash(num_perm=128, seed=1, hashfunc=_reference_hashfunc(hasher))
        m.update_batch(_shingles(t, 3))
        sigs[i] = m
        lsh.insert(i, m)
    edges = [(i, j) for i in sigs for j in lsh.query(sigs[i]) if j != i]
    ref = pd.DataFrame({"row_id": [max(e) for e in edges], "root": [min(e) for e in edges]})
    ref_drop, ref_summary = resolve_clusters(ref)
    np.testing.assert_array_equal(drop, ref_drop)
    assert summary["clusters"] == ref_summary["clusters"] > 0
    res = op.apply(df, drop)
    assert res.drops == {"near_duplicate": len(drop)}
    assert 0 in res.df["row_id"].tolist() and 1 not in res.df["row_id"].tolist()  # a copy of doc 0 goes


def test_partitioning_the_keys_changes_nothing():
    texts = _corpus()
    df = pd.DataFrame({"row_id": np.arange(len(texts)), "text": texts})
    keys = NearDedup(ngram=3).keys(df)
    whole = resolve_clusters(bucket_edges(keys))[0]
    part = keys["key"].to_numpy().view(np.uint64) % np.uint64(4)
    edges = pd.concat([bucket_edges(keys[part == p]) for p in range(4)], ignore_index=True)
    np.testing.assert_array_equal(resolve_clusters(edges)[0], whole)


def test_resolve_clusters_keeps_the_smallest_id_transitively():
    edges = pd.DataFrame({"row_id": [5, 9, 7, 3], "root": [2, 5, 6, 1]})
    drop, summary = resolve_clusters(edges)
    assert drop.tolist() == [3, 5, 7, 9]
    assert summary == {
        "clusters": 3,
        "duplicates": 4,
        "largest_cluster": 3,
        "cluster_sizes": {"2": 2, "3": 1},
    }
    assert resolve_clusters(edges.iloc[0:0])[1]["clusters"] == 0


def test_in_sorted_equals_isin_and_drops_what_resolve_clusters_returns():
    rng = np.random.default_rng(0)
    ids = np.unique(rng.integers(0, 10_000, 3_000))  # sorted, as resolve_clusters and union1d give them
    values = rng.integers(-5, 10_010, 5_000)
    assert np.array_equal(in_sorted(values, ids), np.isin(values, ids))
    assert not in_sorted(values, ids[:0]).any()
    edges = pd.DataFrame({"row_id": [5, 9, 7, 3], "root": [2, 5, 6, 1]})
    drop, _ = resolve_clusters(edges)
    df = pd.DataFrame({"row_id": np.arange(12), "text": [f"t{i}" for i in range(12)]})
    kept = ExactDedup().apply(df, drop).df
    assert kept["row_id"].tolist() == [0, 1, 2, 4, 6, 8, 10, 11]
