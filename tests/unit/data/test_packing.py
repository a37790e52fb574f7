"""Packing against a naive reference; document boundaries, masks and positions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.data.packing import pack

EOS, PAD, BOS = 2, 0, 1


def _reference(docs, seq_len, bos=None):
    stream, starts = [], []
    for d in docs:
        toks = ([bos] if bos is not None else []) + list(d) + [EOS]
        starts += [True] + [False] * (len(toks) - 1)
        stream += toks
    positions, p = [], 0
    for i, start in enumerate(starts):
        p = 0 if start or i % seq_len == 0 else p + 1  # reset at each document and each sequence
        positions.append(p)
    seqs, masks, pos = [], [], []
    for start in range(0, len(stream), seq_len):
        chunk = stream[start : start + seq_len]
        pad = seq_len - len(chunk)
        seqs.append(chunk + [PAD] * pad)
        masks.append([1] * len(chunk) + [0] * pad)
        pos.append(positions[start : start + seq_len] + [0] * pad)
    return seqs, masks, pos


@pytest.mark.parametrize("seq_len", [4, 5, 8, 64])
@pytest.mark.parametrize("bos", [None, BOS])
def test_pack_matches_reference(seq_len, bos):
    rng = np.random.default_rng(seq_len)
    docs = [list(rng.integers(10, 100, rng.integers(1, 12))) for _ in range(9)]
    packed = pack(docs, seq_len, EOS, PAD, bos)
    seqs, masks, pos = _reference(docs, seq_len, bos)
    assert packed.input_ids.tolist() == seqs
    assert packed.attention_mask.tolist() == masks
    assert packed.position_ids.tolist() == pos
    assert packed.tokens == sum(len(d) + 1 + (bos is not None) for d in docs)
    assert packed.docs == 9


def test_eos_separates_documents_and_positions_reset():
    packed = pack([[5, 6, 7], [8, 9]], 4, EOS, PAD)
    assert packed.input_ids.tolist() == [[5, 6, 7, EOS], [8, 9, EOS, PAD]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert packed.padding == 1


def test_table_types():
    table = pack([[5, 6, 7], [8]], 4, EOS, PAD).to_table()
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("attention_mask").type == pa.list_(pa.int8())
    assert table.schema.field("position_ids").type == pa.list_(pa.int32())
    assert table.num_rows == 2 and table.column("input_ids").to_pylist()[0] == [5, 6, 7, EOS]


def test_empty():
    assert pack([], 8, EOS, PAD).input_ids.shape == (0, 8)
