"""Weight sharing: groups of layers hold one set of weights (mean or first), the recovery fine-tune keeps
them tied while the loss falls, and the export is a standard folder whose group layers are equal copies."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.compress import weight_share
from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import WeightShareMethod


def test_groups_are_consecutive_and_cover_every_layer():
    assert weight_share.groups(5, 2) == [[0, 1], [2, 3], [4]]
    assert weight_share.groups(4, 4) == [[0, 1, 2, 3]]


def test_mean_init_ties_parameters(ctx):
    model = ctx.load_model()
    w0 = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    w1 = model.model.layers[1].mlp.up_proj.weight.detach().clone()
    before = weight_share.unique_parameters(model)
    weight_share.share_layers(model, 2, "mean")
    l0, l1 = model.model.layers[0], model.model.layers[1]
    assert l0.mlp.up_proj.weight is l1.mlp.up_proj.weight
    assert l0.input_layernorm.weight is l1.input_layernorm.weight
    assert torch.allclose(l0.mlp.up_proj.weight, (w0 + w1) / 2)
    per_layer = sum(p.numel() for p in l0.parameters())
    assert weight_share.unique_parameters(model) == before - 2 * per_layer  # 4 layers -> 2 unique


def test_recovery_keeps_tied_and_export_loads(ctx, tmp_path):
    out = str(tmp_path / "ws")
    cfg = WeightShareMethod(group_size=2, init="first", recovery_steps=8, recovery_lr=3e-3)
    info = weight_share.apply(ctx, cfg, out)
    assert info["recovery"]["last_loss"] < info["recovery"]["first_loss"]
    assert info["unique_parameter_ratio"] < 1
    exported = AutoModelForCausalLM.from_pretrained(out)
    a, b, c = (exported.model.layers[i].self_attn.q_proj.weight for i in (0, 1, 2))
    assert a.data_ptr() != b.data_ptr()  # untied copies (a standard checkpoint) ...
    assert torch.equal(a, b)  # ... still equal after training: the fine-tune kept them tied
    assert not torch.equal(b, c)  # the next group has its own weights
    base = AutoModelForCausalLM.from_pretrained(ctx.base)
    assert not torch.equal(a, base.model.layers[0].self_attn.q_proj.weight)  # it did train


def test_group_larger_than_model_refused(tiny_base):
    with pytest.raises(CompressInputError, match="group_size=5 is larger than the model's 4 layers"):
        check_methods([WeightShareMethod(group_size=5)], base_shape(tiny_base))
