"""Pretraining objectives over the tokenize stage's packed sequences.

A packed row holds several documents, each ended by eos, with `position_ids` restarting at 0 where a
document starts (and where the row starts), and padding (attention mask 0) at the end of the last row.

- next-token prediction (decoder): the label of position t is the token at t+1, except where t+1 is
  padding or the start of another document (position_ids[t+1] == 0): a model must not be asked to
  predict the first token of a document from the previous one. Attention stays within a document too:
  the model gets `position_ids` and no 2-D mask, from which transformers builds a block-diagonal causal
  mask (`find_packed_sequence_indices`).
- span corruption (encoder-decoder, T5): about `noise_density` of the tokens, in spans of mean length
  `mean_noise_span_length`, are replaced in the encoder input by one sentinel each; the decoder
  recovers them autoregressively: target = sentinel_0 span_0 sentinel_1 span_1 ... eos.
- masked-token prediction (encoder, BERT): `mlm_probability` of the non-special tokens are chosen; of
  those 80% become the mask token, 10% a random token, 10% stay; only the chosen ones are predicted.
  Attention is restricted to the token's own document (a block-diagonal mask from the position resets).

Every loss is the mean cross-entropy over the predicted tokens of a micro-batch (padding and ignored
positions carry label -100 and count neither in the sum nor in the count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IGNORE = -100


# ------------------------------------------------------------------------------------------------
# Shared pieces


def token_cross_entropy(logits, labels):
    """(mean cross-entropy over labels != IGNORE, number of such labels). Computed in fp32."""
    import torch
    import torch.nn.functional as F

    n = (labels != IGNORE).sum()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return total / torch.clamp(n, min=1), n


def segment_ids(position_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Document index of every token of a packed row (a new document where position_ids restarts);
    every padding token gets a segment of its own, so that nothing attends to it."""
    starts = (position_ids == 0) | (attention_mask == 0)
    return np.cumsum(starts, axis=-1)


# ------------------------------------------------------------------------------------------------
# Next-token prediction


def next_token_labels(
    input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray
) -> np.ndarray:
    """labels[t] = input_ids[t+1] where t+1 is a real token of the same document, else IGNORE."""
    labels = np.full(input_ids.shape, IGNORE, dtype=np.int64)
    nxt_ok = (attention_mask[:, 1:] == 1) & (position_ids[:, 1:] != 0) & (attention_mask[:, :-1] == 1)
    labels[:, :-1] = np.where(nxt_ok, input_ids[:, 1:], IGNORE)
    return labels


# ------------------------------------------------------------------------------------------------
# Span corruption (T5)


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_span: float,
    rng: np.random.Generator,
    max_spans: int | None = None,
) -> np.ndarray:
    """T5's noise mask: about length*noise_density noise tokens in about that/mean_span spans, spans and
    gaps of random lengths, starting with a gap (t5.data.preprocessors.random_spans_noise_mask). At most
    `max_spans` spans (the sentinels available)."""
    num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
    num_spans = max(1, int(round(num_noise / mean_span)))
    num_spans = min(num_spans, num_noise, length - num_noise, max_spans or num_spans)
    num_keep = length - num_noise

    def segment(n_items: int, n_segs: int) -> np.ndarray:
        # n_segs positive lengths summing to n_items: n_segs-1 distinct cut points
        cuts = np.sort(rng.choice(np.arange(1, n_items), size=n_segs - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [n_items]]))

    noise_lengths, keep_lengths = segment(num_noise, num_spans), segment(num_keep, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for keep, noise in zip(keep_lengths, noise_lengths, strict=True):
        pos += keep
        mask[pos : pos + noise] = True
        pos += noise
    return mask


def span_corrupt(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: list[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(encoder input, decoder target) of one row: each noise span becomes one sentinel in the input; the
    target lists sentinel_i then span i's tokens, then eos."""
    inputs, targets = [], []
    span = -1
    prev = False
    for tok, noisy in zip(tokens.tolist(), noise_mask.tolist(), strict=True):
        if noisy:
            if not prev:
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(tok)
        else:
            inputs.append(tok)
        prev = noisy
    inputs.append(eos_id)
    targets.append(eos_id)
    return np.asarray(inputs, dtype=np.int64), np.asarray(targets, dtype=np.int64)


def span_lengths(seq_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """Fixed (encoder, decoder) lengths of span-corrupted rows of a `seq_len` packed row. The source is
    cut to seq_len - 1 tokens so that input + eos always fits in seq_len."""
    n = seq_len - 1
    num_noise = int(np.clip(round(n * noise_density), 1, n - 1))
    num_spans = max(1, int(round(num_noise / mean_span)))
    return seq_len, num_noise + num_spans + 1


def span_corruption_batch(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    *,
    noise_density: float,
    mean_span: float,
    sentinel_ids: list[int],
    eos_id: int,
    pad_id: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Encoder inputs/mask, decoder inputs (targets shifted right behind the start token, which is pad for
    T5) and labels (IGNORE on target padding), all at fixed lengths (`span_lengths`)."""
    rows, seq_len = input_ids.shape
    enc_len, dec_len = span_lengths(seq_len, noise_density, mean_span)
    enc = np.full((rows, enc_len), pad_id, dtype=np.int64)
    enc_mask = np.zeros((rows, enc_len), dtype=np.int64)
    labels = np.full((rows, dec_len), IGNORE, dtype=np.int64)
    for r in range(rows):
        tokens = input_ids[r][attention_mask[r] == 1][: seq_len - 1]
        if len(tokens) < 2:
            continue  # nothing to corrupt: the row contributes no loss
        mask = random_spans_noise_mask(
            len(tokens), noise_density, mean_span, rng, max_spans=len(sentinel_ids)
        )
        src, tgt = span_corrupt(tokens, mask, sentinel_ids, eos_id)
        enc[r, : len(src)] = src
        enc_mask[r, : len(src)] = 1
        labels[r, : len(tgt)] = tgt[:dec_len]
    dec_in = np.full_like(labels, pad_id)
    dec_in[:, 1:] = np.where(labels[:, :-1] == IGNORE, pad_id, labels[:, :-1])
    return {"input_ids": enc, "attention_mask": enc_mask, "decoder_input_ids": dec_in, "labels": labels}


# ------------------------------------------------------------------------------------------------
# Masked-token prediction (BERT)


def mlm_batch(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    position_ids: np.ndarray,
    *,
    mlm_probability: float,
    mask_id: int,
    special_ids: list[int],
    vocab_size: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """BERT's masking: inputs with the chosen tokens replaced (80% mask / 10% random / 10% kept) and
    labels holding the original token at chosen positions only."""
    ids = input_ids.astype(np.int64)
    can = (attention_mask == 1) & ~np.isin(ids, np.asarray(special_ids))
    chosen = can & (rng.random(ids.shape) < mlm_probability)
    labels = np.where(chosen, ids, IGNORE)
    roll = rng.random(ids.shape)
    masked = ids.copy()
    masked[chosen & (roll < 0.8)] = mask_id
    random_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    # random replacements avoid special tokens (drawn again until none is special)
    replacement = rng.integers(0, vocab_size, size=ids.shape)
    bad = np.isin(replacement, np.asarray(special_ids + [mask_id]))
    while bad[random_pos].any():
        replacement[bad] = rng.integers(0, vocab_size, size=int(bad.sum()))
        bad = np.isin(replacement, np.asarray(special_ids + [mask_id]))
    masked[random_pos] = replacement[random_pos]
    return {
        "input_ids": masked,
        "labels": labels,
        "position_ids": position_ids.astype(np.int64),
        "segment_ids": segment_ids(position_ids, attention_mask),
    }


def block_diagonal_mask(segments, dtype):
    """Additive 4-D attention mask [B, 1, S, S]: 0 where query and key share a segment, the dtype's
    minimum elsewhere (transformers passes a 4-D mask through unchanged)."""
    import torch

    same = segments[:, None, :, None] == segments[:, None, None, :]
    return torch.zeros(same.shape, dtype=dtype).masked_fill(~same, torch.finfo(dtype).min)


# ------------------------------------------------------------------------------------------------
# The objective a family trains with: numpy batch -> model inputs -> (loss, predicted tokens)


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything an objective needs besides the batch (plain values: it travels to Ray workers)."""

    family: str
    pad_id: int
    eos_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()
    mask_id: int | None = None
    sentinel_ids: tuple[int, ...] = ()
    mlm_probability: float = 0.15
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    @property
    def name(self) -> str:
        return {"decoder": "next_token", "encoder-decoder": "span_corruption", "encoder": "mlm"}[self.family]


def prepare_batch(
    spec: ObjectiveSpec, batch: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, Any]:
    """Packed rows (numpy) -> the objective's model inputs and labels (torch, CPU). `tokens` is the number
    of real (non-padding) tokens of the packed rows, what throughput counts."""
    import torch

    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    tokens = int(mask.sum())
    if spec.family == "decoder":
        out = {
            "input_ids": ids.astype(np.int64),
            "position_ids": pos.astype(np.int64),
            "labels": next_token_labels(ids, mask, pos),
        }
    elif spec.family == "encoder-decoder":
        out = span_corruption_batch(
            ids,
            mask,
            noise_density=spec.noise_density,
            mean_span=spec.mean_noise_span_length,
            sentinel_ids=list(spec.sentinel_ids),
            eos_id=spec.eos_id,
            pad_id=spec.pad_id,
            rng=rng,
        )
    else:
        out = mlm_batch(
            ids,
            mask,
            pos,
            mlm_probability=spec.mlm_probability,
            mask_id=spec.mask_id,
            special_ids=list(spec.special_ids),
            vocab_size=spec.vocab_size,
            rng=rng,
        )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
    tensors["tokens"] = tokens
    return tensors


def forward_loss(spec: ObjectiveSpec, model, batch: dict[str, Any], device=None, dtype=None):
    """(mean loss, predicted-token count) of a prepared batch under `model`."""
    b = {k: (v.to(device) if device is not None and hasattr(v, "to") else v) for k, v in batch.items()}
    if spec.family == "decoder":
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
    elif spec.family == "encoder-decoder":
        logits = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            decoder_input_ids=b["decoder_input_ids"],
        ).logits
    else:
        import torch

        mask = block_diagonal_mask(b["segment_ids"], dtype or torch.float32).to(b["input_ids"].device)
        logits = model(
            input_ids=b["input_ids"],
            attention_mask=mask,
            position_ids=b["position_ids"],
            token_type_ids=torch.zeros_like(b["input_ids"]),
        ).logits
    return token_cross_entropy(logits, b["labels"])
