"""Objectives against hand computations on tiny batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.train.objectives import (
    IGNORE,
    ObjectiveSpec,
    block_diagonal_mask,
    forward_loss,
    mlm_batch,
    next_token_labels,
    prepare_batch,
    random_spans_noise_mask,
    segment_ids,
    span_corrupt,
    span_corruption_batch,
    span_lengths,
    token_cross_entropy,
)

EOS, PAD = 2, 0

# Two packed rows of 6: row 0 = doc A (5 7 EOS) + doc B (9 4 ...continues); row 1 = the rest of B (3 EOS)
# then padding. position_ids restart at each document and at the row start.
IDS = np.array([[5, 7, EOS, 9, 4, 6], [3, EOS, PAD, PAD, PAD, PAD]], dtype=np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=np.int8)
POS = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 0, 0, 0, 0]], dtype=np.int32)


def test_next_token_labels_stop_at_document_boundaries_and_padding():
    labels = next_token_labels(IDS, MASK, POS)
    # row 0: 5->7, 7->EOS, EOS->(9 starts a new document: ignored), 9->4, 4->6, last: nothing to predict
    assert labels[0].tolist() == [7, EOS, IGNORE, 4, 6, IGNORE]
    # row 1: 3->EOS, EOS->PAD (padding: ignored), padding predicts nothing
    assert labels[1].tolist() == [EOS, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]


def _hand_ce(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = int(labels[b, t])
            if y == IGNORE:
                continue
            row = [float(v) for v in logits[b, t]]
            log_z = math.log(sum(math.exp(v) for v in row))
            total += log_z - row[y]
            n += 1
    return total / n, n


def test_next_token_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 10)).astype(np.float32)
    labels = next_token_labels(IDS, MASK, POS)
    loss, n = token_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    expected, count = _hand_ce(logits, labels)
    assert int(n) == count == 5
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_causal_model_loss_ignores_what_the_labels_ignore():
    """Through a model: changing the logits at ignored positions (the boundary, the padding) must not change
    the loss, changing them at a predicted position must."""
    spec = ObjectiveSpec(family="decoder", pad_id=PAD, eos_id=EOS, vocab_size=10)
    batch = prepare_batch(
        spec, {"input_ids": IDS, "attention_mask": MASK, "position_ids": POS}, np.random.default_rng(0)
    )
    assert batch["tokens"] == 8
    base = torch.randn(2, 6, 10)

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, **kw):
            assert "attention_mask" not in kw  # packed: the mask comes from position_ids
            return type("Out", (), {"logits": self.logits})()

    loss0, _ = forward_loss(spec, Fixed(base), batch)
    moved = base.clone()
    moved[0, 2, 9] += 5.0  # the eos position whose next token (9) starts another document
    moved[1, 1:, 3] += 5.0  # padding
    loss1, _ = forward_loss(spec, Fixed(moved), batch)
    assert float(loss1) == pytest.approx(float(loss0))
    moved[0, 0, 7] += 5.0  # a predicted position (5 -> 7)
    loss2, _ = forward_loss(spec, Fixed(moved), batch)
    assert float(loss2) != pytest.approx(float(loss0))


def test_packed_llama_does_not_attend_across_documents():
    """The block-diagonal mask from position_ids: the second document's logits are the same whether the
    first document precedes it in the row or not."""
    from pipelines.models import ModelConfig, Vocab, build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(family="decoder", preset="tiny"), Vocab(size=50, pad_id=0, eos_id=2)
    ).eval()
    doc_a, doc_b = [5, 7, 11, 2], [9, 4, 6, 8, 2]
    packed = torch.tensor([doc_a + doc_b])
    pos = torch.tensor([list(range(4)) + list(range(5))])
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=pos).logits[0, 4:]
        alone = model(input_ids=torch.tensor([doc_b]), position_ids=torch.arange(5)[None]).logits[0]
        unmasked = model(input_ids=packed).logits[0, 4:]  # plain causal attention sees doc A
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# span corruption


def test_span_corrupt_by_hand():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    src, tgt = span_corrupt(tokens, mask, sentinel_ids=[99, 98, 97], eos_id=EOS)
    assert src.tolist() == [10, 99, 13, 14, 98, 16, 17, EOS]
    assert tgt.tolist() == [99, 11, 12, 98, 15, EOS]


def test_noise_mask_density_and_spans():
    rng = np.random.default_rng(1)
    for length in (20, 63, 255):
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        noise = int(mask.sum())
        assert noise == max(1, round(length * 0.15))
        spans = int(mask[0]) + int(np.sum(mask[1:] & ~mask[:-1]))
        assert spans == max(1, round(noise / 3.0))
        assert not mask[0]  # T5 starts with a kept span


def test_span_corruption_batch_shapes_and_loss_by_hand():
    rng = np.random.default_rng(0)
    ids = np.arange(3, 3 + 2 * 16, dtype=np.int32).reshape(2, 16)
    mask = np.ones_like(ids, dtype=np.int8)
    mask[1, 10:] = 0
    sentinels = [90, 89, 88, 87]
    b = span_corruption_batch(
        ids, mask, noise_density=0.2, mean_span=2.0, sentinel_ids=sentinels, eos_id=EOS, pad_id=PAD, rng=rng
    )
    enc_len, dec_len = span_lengths(16, 0.2, 2.0)
    assert b["input_ids"].shape == (2, enc_len) and b["labels"].shape == (2, dec_len)
    for r in range(2):
        real = ids[r][mask[r] == 1][:15]
        src = b["input_ids"][r][b["attention_mask"][r] == 1]
        tgt = b["labels"][r][b["labels"][r] != IGNORE]
        # putting the spans back into the input restores the source exactly
        rebuilt, spans = [], {}
        cur = None
        for t in tgt[:-1]:
            if t in sentinels:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        for t in src[:-1]:
            rebuilt += spans[t] if t in sentinels else [t]
        assert rebuilt == real.tolist() and src[-1] == EOS and tgt[-1] == EOS
        # decoder input = labels shifted right behind the start token (pad)
        assert b["decoder_input_ids"][r][0] == PAD
        assert b["decoder_input_ids"][r][1 : len(tgt)].tolist() == tgt[:-1].tolist()
    logits = np.random.default_rng(2).normal(size=(2, dec_len, 100)).astype(np.float32)
    loss, n = token_cross_entropy(torch.from_numpy(logits), torch.from_numpy(b["labels"]))
    expected, count = _hand_ce(logits, b["labels"])
    assert int(n) == count and float(loss) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# masked-token prediction


def test_mlm_masks_only_real_non_special_tokens_with_80_10_10():
    rng = np.random.default_rng(0)
    n, s = 64, 128
    ids = rng.integers(10, 1000, size=(n, s)).astype(np.int32)
    ids[:, 50] = EOS
    mask = np.ones((n, s), dtype=np.int8)
    mask[:, 120:] = 0
    pos = np.tile(np.arange(s, dtype=np.int32), (n, 1))
    b = mlm_batch(
        ids,
        mask,
        pos,
        mlm_probability=0.15,
        mask_id=1000,
        special_ids=[PAD, 1, EOS],
        vocab_size=1001,
        rng=rng,
    )
    chosen = b["labels"] != IGNORE
    assert not chosen[:, 120:].any() and not chosen[:, 50].any()
    assert b["labels"][chosen].tolist() == ids[chosen].tolist()
    assert 0.13 < chosen.sum() / (n * 119) < 0.17
    as_mask = (b["input_ids"] == 1000) & chosen
    kept = (b["input_ids"] == ids) & chosen
    assert 0.77 < as_mask.sum() / chosen.sum() < 0.83
    assert 0.07 < kept.sum() / chosen.sum() < 0.13
    assert (b["input_ids"][~chosen] == ids[~chosen]).all()  # nothing else changes
    assert not np.isin(b["input_ids"][chosen & ~as_mask & ~kept], [PAD, 1, EOS, 1000]).any()


def test_block_diagonal_mask_follows_documents_and_isolates_padding():
    seg = segment_ids(POS, MASK)
    assert seg.tolist() == [[1, 1, 1, 2, 2, 2], [1, 1, 2, 3, 4, 5]]
    m = block_diagonal_mask(torch.from_numpy(seg), torch.float32)
    allowed = (m == 0)[:, 0]
    assert allowed[0, 0].tolist() == [True, True, True, False, False, False]
    assert allowed[0, 4].tolist() == [False, False, False, True, True, True]
    assert allowed[1, 3].tolist() == [False, False, False, True, False, False]


def test_mlm_loss_through_bert_counts_only_chosen_tokens():
    from pipelines.models import ModelConfig, Vocab, build_model

    torch.manual_seed(0)
    spec = ObjectiveSpec(
        family="encoder", pad_id=PAD, eos_id=EOS, vocab_size=60, special_ids=(PAD, 1, EOS, 59), mask_id=59
    )
    model = build_model(
        ModelConfig(family="encoder", preset="tiny", dropout=0.0), Vocab(size=60, pad_id=PAD, eos_id=EOS)
    ).eval()
    ids = np.random.default_rng(0).integers(3, 59, size=(2, 16)).astype(np.int32)
    batch = prepare_batch(
        spec,
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids, dtype=np.int8),
            "position_ids": np.tile(np.arange(16, dtype=np.int32), (2, 1)),
        },
        np.random.default_rng(3),
    )
    with torch.no_grad():
        loss, n = forward_loss(spec, model, batch)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert int(n) == int((batch["labels"] != IGNORE).sum()) > 0
    expected, _ = _hand_ce(logits.numpy(), batch["labels"].numpy())
    assert float(loss) == pytest.approx(expected, rel=1e-4)  # one document: the block mask is all-ones
