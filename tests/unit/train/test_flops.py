"""The model-FLOPs formula (MFU's numerator) against torch's FlopCounterMode, and the peak cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines.models import ModelConfig, Vocab, build_model, hf_config
from pipelines.train import flops


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder", "encoder"])
def test_formula_matches_counted_flops(family):
    cfg = ModelConfig(family=family, preset="tiny", attn_implementation="eager")  # eager: attention is bmm
    vocab = Vocab(size=1000, pad_id=0, eos_id=2)
    model = build_model(cfg, vocab)
    ids = torch.randint(3, 1000, (2, 32))
    with FlopCounterMode(display=False) as counter:
        if family == "encoder-decoder":
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :12]).logits
        else:
            logits = model(input_ids=ids).logits
        logits.float().sum().backward()
    counted = counter.get_total_flops()
    formula = 2 * flops.train_flops_per_sequence(family, hf_config(cfg, vocab), 32, 12)
    # the counter also sees the embedding-gradient matmuls and misses nothing big: within 3%
    assert formula == pytest.approx(counted, rel=0.03)


def test_peak_is_measured_cached_and_keeps_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLM_HOME", str(tmp_path))
    calls = []

    def fake(dtype_name, device="cpu", **kw):
        calls.append(dtype_name)
        return 1e9 * len(calls)

    monkeypatch.setattr(flops, "measure_matmul_peak", fake)
    assert flops.matmul_peak("fp32") == 1e9
    assert flops.matmul_peak("fp32") == 1e9 and calls == ["fp32"]  # cached
    assert flops.matmul_peak("fp32", remeasure=True) == 2e9
    cache = json.loads((tmp_path / "matmul_peak.json").read_text())
    assert list(cache.values()) == [2e9] and "|fp32|" in next(iter(cache))


def test_a_real_matmul_measurement_is_plausible():
    value = flops.measure_matmul_peak("fp32", size=256, repeats=2)
    assert 1e8 < value < 1e14


def test_doctor_row_measures_and_caches_the_peak(tmp_path, monkeypatch):
    from cluster.doctor import check_matmul_peak

    monkeypatch.setenv("RAYLM_HOME", str(tmp_path))
    row = check_matmul_peak()
    assert row.name == "matmul_peak" and row.status == "ok"
    assert "fp32" in row.detail and "bf16" in row.detail and "GFLOP/s" in row.detail
    cache = json.loads((tmp_path / "matmul_peak.json").read_text())
    assert {k.split("|")[2] for k in cache} == {"fp32", "bf16"} and all(v > 1e8 for v in cache.values())
