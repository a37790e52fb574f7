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


def test_data_aware_beats_plain_svd_on_real_inputs(ctx):
    """Same rank: the output error on the layer's actual inputs (held-out text through the model) is lower
    when the factorization is whitened by those inputs' covariance."""
    model = ctx.load_model()
    name = "model.layers.1.mlp.down_proj"
    covs = low_rank.target_covariances(model, [name], ctx.calib(2))
    inputs = []
    lin = model.get_submodule(name)
    h = lin.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=ctx.calib(4)[2:])  # other windows than the covariance's
    h.remove()
    x, w = torch.cat(inputs), lin.weight.detach()
    for r in (4, 16):
        a, b = low_rank.factorize(w, None, r)
        a2, b2 = low_rank.factorize(w, None, r, covs[name])
        plain = (x @ (w - b @ a).T).norm()
        aware = (x @ (w - b2 @ a2).T).norm()
        assert aware < plain, (r, aware, plain)


def test_data_aware_much_better_on_correlated_inputs():
    """Inputs with a few dominant directions (like LLM activations' outlier channels): whitening puts the
    rank where the inputs are, far below plain SVD's output error at the same rank."""
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    x = torch.randn(2000, 64) * torch.cat([torch.full((8,), 10.0), torch.full((56,), 0.3)])
    x = x @ torch.linalg.qr(torch.randn(64, 64))[0]  # rotate: the directions are not the axes
    a, b = low_rank.factorize(w, None, 8)
    a2, b2 = low_rank.factorize(w, None, 8, x.T @ x / len(x), dampening=1e-4)
    plain = (x @ (w - b @ a).T).norm()
    aware = (x @ (w - b2 @ a2).T).norm()
    assert aware < 0.5 * plain, (aware, plain)


def test_data_aware_with_recovery_exports(ctx, tmp_path):
    out = str(tmp_path / "lrda")
    info = low_rank.apply(
        ctx, LowRankMethod(rank=8, data_aware=True, recovery_steps=3, recovery_lr=1e-3), out
    )
    assert info["data_aware"] and info["recovery"]["steps"] == 3
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight
    assert torch.linalg.matrix_rank(w).item() == 8
