"""Deduplication: exact (a hash of the normalised content) and near-duplicate (MinHash LSH).

Both reduce to the same distributed shape, so neither collects the corpus on one machine:
1. `keys(batch)` emits bucket keys per row: one content hash (exact), or one key per LSH band of the
   row's MinHash signature (near);
2. the engine groups the (row_id, key) rows by key across the dataset (Ray Data `groupby` on a hash
   partition of the key) and, inside each partition, `bucket_edges` links every row of a bucket to the
   bucket's smallest row_id (vectorised pandas). Only these edges, one per duplicate, reach the driver;
3. `resolve_clusters` joins the edges into clusters (connected components, scipy) and keeps the smallest
   row_id of each cluster, i.e. the first occurrence in input order; `apply` drops the rest.

MinHash: signatures are computed a batch at a time with numpy, with the same permutations and scheme as
`datasketch.MinHash(num_perm, seed)` (affine32: MurmurHash3 finalizer, then a*h+b mod 2^32), so a
signature equals datasketch's for the same shingle hashes. Shingles are word n-grams of the lowercased
text; a shingle's 32-bit hash is a polynomial over its words' blake2b hashes (words are hashed once per
distinct word). Bands and rows per band come from datasketch's `_optimal_param` for the threshold (as
`MinHashLSH(threshold, num_perm)`), so the candidate pairs are those of datasketch's LSH; as there, pairs
are not re-verified by Jaccard, and clusters are closed transitively.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache, cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.data.ops.base import Operator, RowResult, keep_rows

_WORDS = re.compile(r"\w+")
_M64 = (1 << 64) - 1
_POLY = np.uint64(0x100000001B3)  # FNV-64 prime: the n-gram polynomial's base


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def as_signed(values: np.ndarray) -> np.ndarray:
    """uint64 -> int64 with the same bits (Parquet and pandas handle int64 everywhere)."""
    return values.astype(np.uint64).view(np.int64)


def bucket_edges(keys: pd.DataFrame) -> pd.DataFrame:
    """Rows sharing a key -> edges (row_id, root) to the bucket's smallest row_id, for buckets of 2+."""
    if keys.empty:
        return pd.DataFrame({"row_id": np.zeros(0, np.int64), "root": np.zeros(0, np.int64)})
    grouped = keys.groupby("key", sort=False)["row_id"]
    size = grouped.transform("size").to_numpy()
    root = grouped.transform("min").to_numpy()
    row_id = keys["row_id"].to_numpy()
    mask = (size > 1) & (row_id != root)
    return pd.DataFrame({"row_id": row_id[mask].astype(np.int64), "root": root[mask].astype(np.int64)})


def in_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_ids` (ascending, as `resolve_clusters` returns them).

    Why not `np.isin`: it sorts both arrays on every call, so filtering each batch against all dropped ids
    cost O(dropped log dropped) per batch, quadratic over a corpus; a binary search per value costs
    O(batch log dropped). On 3.2M documents with 2.5M duplicates the final pass spent its time there.
    """
    if not len(sorted_ids):
        return np.zeros(len(values), bool)
    at = np.searchsorted(sorted_ids, values)
    return sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == values


def resolve_clusters(edges: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """Edges -> (sorted row_ids to drop, cluster summary). Each connected component keeps its smallest id."""
    if edges.empty:
        return np.zeros(0, np.int64), {
            "clusters": 0,
            "duplicates": 0,
            "largest_cluster": 0,
            "cluster_sizes": {},
        }
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inverse = np.unique(
        np.concatenate([edges["row_id"].to_numpy(), edges["root"].to_numpy()]), return_inverse=True
    )
    n, m = len(nodes), len(edges)
    graph = coo_matrix((np.ones(m, np.int8), (inverse[:m], inverse[m:])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    # nodes are sorted, so the first node of each component (by position) is its smallest row_id
    first = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    keep = np.zeros(n, bool)
    keep[first] = True
    sizes = np.bincount(label)
    histogram = pd.Series(sizes).value_counts().sort_index()
    summary = {
        "clusters": int(len(sizes)),
        "duplicates": int(n - len(sizes)),
        "largest_cluster": int(sizes.max()),
        "cluster_sizes": {str(int(k)): int(v) for k, v in histogram.items()},
    }
    return nodes[~keep].astype(np.int64), summary


class _Dedup(Operator):
    kind: ClassVar[str] = "dedup"
    cheap: ClassVar[bool] = True  # applying is an id filter; computing keys is the engine's keys pass
    reason: ClassVar[str] = "duplicate"

    def key_columns(self) -> list[str]:
        raise NotImplementedError

    def reads(self) -> set[str]:
        return set(self.key_columns())

    def keys(self, df: pd.DataFrame) -> pd.DataFrame:
        """(row_id, key) rows for a batch."""
        raise NotImplementedError

    def apply(self, df: pd.DataFrame, state: np.ndarray = None) -> RowResult:
        if state is None or not len(state) or df.empty:
            return RowResult(df)
        return keep_rows(df, ~in_sorted(df["row_id"].to_numpy(), state), self.reason)


class ExactDedup(_Dedup):
    """Drop rows whose content equals an earlier row's (first occurrence kept), comparing a 64-bit hash
    of the listed columns after optional case and whitespace normalisation."""

    op: Literal["exact_dedup"] = "exact_dedup"
    """Operator name."""
    columns: list[str] = Field(default=["text"], min_length=1)
    """Columns whose values together make a row's content."""
    ignore_case: bool = True
    """Compare lowercased text."""
    ignore_whitespace: bool = True
    """Compare text with whitespace runs collapsed and ends trimmed."""

    reason: ClassVar[str] = "exact_duplicate"

    def key_columns(self) -> list[str]:
        return list(self.columns)

    def _norm(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "\x00"
        s = str(v)
        if self.ignore_whitespace:
            s = " ".join(s.split())
        if self.ignore_case:
            s = s.lower()
        return s

    def keys(self, df: pd.DataFrame) -> pd.DataFrame:
        columns = [df[c].tolist() for c in self.columns]
        hashes = np.fromiter(
            (
                hash64("\x1f".join(map(self._norm, values)).encode("utf-8", "surrogatepass"))
                for values in zip(*columns, strict=True)
            ),
            dtype=np.uint64,
            count=len(df),
        )
        return pd.DataFrame({"row_id": df["row_id"].to_numpy(np.int64), "key": as_signed(hashes)})


WORD_HASH_CACHE_LIMIT = 100_000
"""Word hashes a MinHasher caches (about 130 bytes each): why bounded, see morphology._CACHE_LIMIT."""


class MinHasher:
    """Batch MinHash signatures equal to datasketch's (same permutations, scheme affine32)."""

    def __init__(self, num_perm: int, seed: int, ngram: int):
        from datasketch import MinHash

        reference = MinHash(num_perm=num_perm, seed=seed)
        if reference.scheme != "affine32":
            raise RuntimeError(
                f"datasketch's default MinHash scheme is {reference.scheme}; raylm expects affine32"
            )
        self.a, self.b = (np.asarray(p, dtype=np.uint32) for p in reference.permutations)
        self.num_perm, self.ngram = num_perm, ngram
        self._word_hash: dict[str, int] = {}

    def word_hashes(self, words: list[str]) -> np.ndarray:
        cache = self._word_hash
        out = np.empty(len(words), dtype=np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:
                h = hash64(w.encode("utf-8", "surrogatepass"))
                if len(cache) < WORD_HASH_CACHE_LIMIT:
                    cache[w] = h
            out[i] = h
        return out

    @staticmethod
    def shingle_hash32(word_hashes: np.ndarray) -> int:
        """The 32-bit hash of one shingle from its words' 64-bit hashes (reference, one shingle)."""
        h = 0
        for w in word_hashes.tolist():
            h = (h * int(_POLY) + w) & _M64
        return h >> 32

    def shingle_hashes(self, words: list[str]) -> np.ndarray:
        """uint32 hashes of a text's word n-grams (all its words as one shingle if it has fewer than n)."""
        wh = self.word_hashes(words)
        n, m = self.ngram, len(wh)
        if m == 0:
            return np.zeros(0, np.uint32)
        if m < n:
            return np.array([self.shingle_hash32(wh)], dtype=np.uint32)
        with np.errstate(over="ignore"):
            h = np.zeros(m - n + 1, dtype=np.uint64)
            for k in range(n):
                h = h * _POLY + wh[k : m - n + 1 + k]
        return (h >> np.uint64(32)).astype(np.uint32)

    @staticmethod
    def _fmix32(h: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = h ^ (h >> np.uint32(16))
            h = h * np.uint32(0x85EBCA6B)
            h = h ^ (h >> np.uint32(13))
            h = h * np.uint32(0xC2B2AE35)
            return h ^ (h >> np.uint32(16))

    def signatures(self, texts: list[str], chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """(signatures [n_texts, num_perm] uint32, has_shingles [n_texts] bool)."""
        per_doc = [
            self.shingle_hashes(_WORDS.findall(t.lower())) if isinstance(t, str) else np.zeros(0, np.uint32)
            for t in texts
        ]
        counts = np.fromiter((len(s) for s in per_doc), dtype=np.int64, count=len(per_doc))
        sig = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        has = counts > 0
        if not has.any():
            return sig, has
        hv = self._fmix32(np.concatenate([s for s in per_doc if len(s)]))
        owner = np.repeat(np.arange(len(texts)), counts)
        a, b = self.a, self.b
        with np.errstate(over="ignore"):
            for start in range(0, len(hv), chunk):
                part = hv[start : start + chunk, None] * a + b  # wraps mod 2^32, as datasketch
                docs = owner[start : start + chunk]
                bounds = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
                mins = np.minimum.reduceat(part, bounds, axis=0)
                sig[docs[bounds]] = np.minimum(sig[docs[bounds]], mins)
        return sig, has


@cache
def minhasher(num_perm: int, seed: int, ngram: int) -> MinHasher:
    """One MinHasher per configuration and process: its word-hash cache outlives a Ray task."""
    return MinHasher(num_perm, seed, ngram)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] 64-bit keys: band i's key hashes (i, sig[:, i*rows:(i+1)*rows])."""
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(bands):
            k = np.full(sig.shape[0], (i + 1) * 0x9E3779B97F4A7C15 & _M64, dtype=np.uint64)
            for j in range(i * rows, (i + 1) * rows):
                k = (k ^ sig[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
                k ^= k >> np.uint64(29)
            keys[:, i] = k
    return keys


class NearDedup(_Dedup):
    """Drop near-duplicates: rows whose word n-gram sets have an estimated Jaccard similarity at or above
    `threshold` with an earlier row (MinHash LSH, datasketch's banding; the first occurrence is kept)."""

    op: Literal["near_dedup"] = "near_dedup"
    """Operator name."""
    column: str = "text"
    """Text column to compare."""
    threshold: float = Field(default=0.8, gt=0, lt=1)
    """Jaccard similarity at which two texts count as near-duplicates (sets LSH bands and rows)."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations (signature length)."""
    ngram: int = Field(default=5, ge=1)
    """Words per shingle."""
    seed: int = 1
    """MinHash permutation seed (datasketch's default is 1)."""

    reason: ClassVar[str] = "near_duplicate"

    def key_columns(self) -> list[str]:
        return [self.column]

    @cached_property
    def bands_rows(self) -> tuple[int, int]:
        from datasketch.lsh import _optimal_param

        return _optimal_param(self.threshold, self.num_perm, 0.5, 0.5)

    @property
    def _hasher(self) -> MinHasher:
        return minhasher(self.num_perm, self.seed, self.ngram)

    def keys(self, df: pd.DataFrame) -> pd.DataFrame:
        sig, has = self._hasher.signatures(df[self.column].tolist())
        bands, rows = self.bands_rows
        keys = band_keys(sig[has], bands, rows)
        ids = df["row_id"].to_numpy(np.int64)[has]
        return pd.DataFrame({"row_id": np.repeat(ids, bands), "key": as_signed(keys.reshape(-1))})

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if not k.startswith("_")}
        return state
