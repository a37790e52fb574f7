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


def test_model_factorized_and_exported_dense(ctx, tmp_path):
    out = str(tmp_path / "lr")
    info = low_rank.apply(ctx, LowRankMethod(rank=8, export="dense"), out)
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
        ctx, LowRankMethod(rank=8, data_aware=True, recovery_steps=3, recovery_lr=1e-3, export="dense"), out
    )
    assert info["data_aware"] and info["recovery"]["steps"] == 3
    w = AutoModelForCausalLM.from_pretrained(out).model.layers[0].mlp.up_proj.weight
    assert torch.linalg.matrix_rank(w).item() == 8


def test_factorized_folder_is_smaller_and_computes_the_rank_r_model(ctx, tmp_path):
    import json

    from pipelines.compress.low_rank_hf import ARCHITECTURE, MODELING_FILE, load_causal_lm
    from pipelines.compress.measure import stored_parameters, weights_bytes

    fact, dense = str(tmp_path / "fact"), str(tmp_path / "dense")
    info = low_rank.apply(ctx, LowRankMethod(rank=8), fact)  # export: factorized is the default
    low_rank.apply(ctx, LowRankMethod(rank=8, export="dense"), dense)
    config = json.loads((tmp_path / "fact" / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and len(config["low_rank_ranks"]) == 4 * 3
    assert (tmp_path / "fact" / MODELING_FILE).is_file()
    # stored: the factor pairs, not the dense products
    assert stored_parameters(fact) == info["factorized_parameters"] < stored_parameters(dense)
    assert weights_bytes(fact) < 0.7 * weights_bytes(dense)

    ids = ctx.calib(2)
    mine = load_causal_lm(fact).eval()
    assert isinstance(mine.model.layers[0].mlp.up_proj, torch.nn.Sequential)
    assert mine.model.layers[0].mlp.up_proj[0].weight.shape == (8, 64)
    # transformers alone, from the modelling file the folder carries (no raylm import in it)
    remote = AutoModelForCausalLM.from_pretrained(fact, trust_remote_code=True).eval()
    assert type(remote).__module__.startswith("transformers_modules")
    reference = AutoModelForCausalLM.from_pretrained(dense).eval()  # holds W_r = B @ A
    with torch.no_grad():
        want = reference(ids).logits
        assert torch.allclose(mine(ids).logits, want, atol=1e-4)
        assert torch.allclose(remote(ids).logits, want, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(ctx.base).eval()
    assert not torch.allclose(base(ids).logits, want, atol=1e-2)  # rank 8 changed the model


def test_factorized_export_refuses_attention_targets():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"export: factorized serves factorized MLP projections only"):
        LowRankMethod(rank=8, targets=["self_attn.q_proj", "mlp.up_proj"])
    assert LowRankMethod(rank=8, targets=["self_attn.q_proj"], export="dense").export == "dense"
