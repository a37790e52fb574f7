"""Truncated SVD: the energy rule picks the smallest sufficient rank, the factorized model approximates the
original, and a rank larger than a layer is refused before work starts."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.compress import low_rank
from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import LowRankMethod


def test_energy_rule():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # energies 9, 4, 1, 0.25 of 14.25
    assert low_rank.choose_rank(s, 0.6, None) == 1
    assert low_rank.choose_rank(s, 0.9, None) == 2
    assert low_rank.choose_rank(s, 0.99, None) == 4
    assert low_rank.choose_rank(s, None, 3) == 3


def test_factorization_error_falls_with_rank():
    torch.manual_seed(0)
    w = torch.randn(32, 48)
    errs = []
    for r in (4, 16, 32):
        a, b = low_rank.factorize(w, None, r)
        assert a.shape == (r, 48) and b.shape == (32, r)
        errs.append((b @ a - w).norm().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def test_model_factorized_and_exported(ctx, tmp_path):
    out = str(tmp_path / "lr")
    info = low_rank.apply(ctx, LowRankMethod(rank=8), out)
    assert info["factorized_layers"] == 4 * 3 and info["factorized_parameter_ratio"] < 1
    exported = AutoModelForCausalLM.from_pretrained(out)
    w = exported.model.layers[0].mlp.up_proj.weight
    assert torch.linalg.matrix_rank(w).item() == 8  # the standard export holds the rank-8 weight


def test_rank_larger_than_layer_refused(tiny_base):
    with pytest.raises(CompressInputError, match=r"rank 100 is larger than layer up_proj allows.*at most 64"):
        check_methods([LowRankMethod(rank=100, targets=["mlp.up_proj"])], base_shape(tiny_base))
