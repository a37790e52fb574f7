"""Unstructured pruning reaches the exact sparsity per layer and the folder still loads."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from pipelines.compress import prune_unstructured
from pipelines.compress.calibration import decoder_linears
from pipelines.compress.config import PruneUnstructuredMethod


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_exact_sparsity_and_folder_loads(ctx, tmp_path, criterion):
    out = str(tmp_path / criterion)
    info = prune_unstructured.apply(ctx, PruneUnstructuredMethod(sparsity=0.5, criterion=criterion), out)
    assert info["sparsity_achieved"] == 0.5
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, lin in decoder_linears(model).items():
        w = lin.weight
        assert (w == 0).sum().item() == round(0.5 * w.numel()), name
        if criterion == "wanda":  # Wanda compares within each output row: every row is half zero
            assert torch.all((w == 0).sum(1) == w.shape[1] // 2)
    assert not torch.all(model.model.embed_tokens.weight == 0)  # embeddings are not pruned


def test_magnitude_removes_the_smallest_weights(ctx):
    model = ctx.load_model()
    w0 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    prune_unstructured.prune_unstructured(model, 0.3, "magnitude")
    w1 = model.model.layers[0].mlp.up_proj.weight
    kept, dropped = w0[w1 != 0].abs(), w0[w1 == 0].abs()
    assert dropped.max() <= kept.min()


def test_wanda_uses_activations(ctx):
    """With the same weights, Wanda's choice differs from magnitude's where input norms differ."""
    a, b = ctx.load_model(), ctx.load_model()
    prune_unstructured.prune_unstructured(a, 0.5, "magnitude")
    prune_unstructured.prune_unstructured(b, 0.5, "wanda", ctx.calib(4))
    wa, wb = a.model.layers[1].mlp.down_proj.weight, b.model.layers[1].mlp.down_proj.weight
    assert not torch.equal(wa == 0, wb == 0)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_open_interval_refused(bad):
    with pytest.raises(ValidationError, match="strictly between 0 and 1"):
        PruneUnstructuredMethod(sparsity=bad)
