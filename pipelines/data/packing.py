"""Packing tokenized documents into fixed-length training sequences.

Documents are concatenated, each followed by the eos token (and preceded by bos when asked), and cut
into sequences of `seq_len` tokens; a document longer than what is left of a sequence continues in the
next one. The last sequence of a batch is padded (pad token, attention mask 0). `position_ids` restart
at 0 at every document start and at every sequence start, so a model can keep attention and positions
within documents (e.g. flash-attention's varlen kernels or a block-diagonal mask from position resets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SEQUENCE_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("attention_mask", pa.list_(pa.int8())),
        ("position_ids", pa.list_(pa.int32())),
    ]
)


@dataclass
class Packed:
    input_ids: np.ndarray
    """[n, seq_len] int32."""
    attention_mask: np.ndarray
    """[n, seq_len] int8: 1 on tokens, 0 on padding."""
    position_ids: np.ndarray
    """[n, seq_len] int32: position within the current document segment."""
    tokens: int
    """Real (non-padding) tokens."""
    docs: int

    @property
    def padding(self) -> int:
        return int(self.input_ids.size - self.tokens)

    def to_table(self) -> pa.Table:
        n, length = self.input_ids.shape
        offsets = pa.array(np.arange(0, (n + 1) * length, length, dtype=np.int32), pa.int32())

        def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
            return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), kind))

        return pa.Table.from_arrays(
            [
                lists(self.input_ids, pa.int32()),
                lists(self.attention_mask, pa.int8()),
                lists(self.position_ids, pa.int32()),
            ],
            schema=SEQUENCE_SCHEMA,
        )


def pack(
    docs: list[list[int]] | list[np.ndarray],
    seq_len: int,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
) -> Packed:
    """Pack token-id lists into `seq_len` sequences (see the module docs)."""
    pieces, starts, total = [], [], 0
    for ids in docs:
        parts = ([bos_id] if bos_id is not None else []) + [*ids, eos_id]
        arr = np.asarray(parts, dtype=np.int64)
        starts.append(total)
        total += len(arr)
        pieces.append(arr)
    if total == 0:
        empty = np.zeros((0, seq_len), np.int32)
        return Packed(empty, empty.astype(np.int8), empty, 0, 0)
    tokens = np.concatenate(pieces)
    n_seq = -(-total // seq_len)
    ids = np.full(n_seq * seq_len, pad_id, dtype=np.int32)
    ids[:total] = tokens
    mask = np.zeros(n_seq * seq_len, dtype=np.int8)
    mask[:total] = 1
    index = np.arange(total)
    doc_start = np.zeros(total, dtype=np.int64)
    doc_start[np.asarray(starts)] = np.asarray(starts)
    doc_start = np.maximum.accumulate(doc_start)
    seq_start = (index // seq_len) * seq_len
    positions = np.zeros(n_seq * seq_len, dtype=np.int32)
    positions[:total] = index - np.maximum(doc_start, seq_start)
    shape = (n_seq, seq_len)
    return Packed(ids.reshape(shape), mask.reshape(shape), positions.reshape(shape), total, len(docs))
