"""LayerDrop: the layer list skips layers at random only in training, the even spread picks every other
layer, the method writes a shallower standard folder and records the comparison with a control."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.compress import layer_drop
from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import LayerDropMethod


def test_spread_is_every_other_layer_for_half():
    assert layer_drop.spread(30, 15) == list(range(1, 30, 2))
    assert layer_drop.spread(4, 2) == [1, 3]
    assert len(layer_drop.spread(30, 6)) == 6


def test_layers_skipped_only_in_training():
    mods = [torch.nn.Linear(2, 2) for _ in range(20)]
    lst = layer_drop.LayerDropList(mods, p=0.5)
    lst.train()
    seen = {len(lst[:20]) for _ in range(20)}
    assert min(seen) >= 1 and max(seen) < 20 and len(seen) > 2  # random subsets, never empty
    lst.eval()
    assert len(lst[:20]) == 20
    assert [k for k, _ in lst.named_parameters()][0] == "0.weight"  # state-dict names unchanged


def test_layerdrop_writes_shallower_model_with_comparison(ctx, tmp_path):
    out = str(tmp_path / "ld")
    cfg = LayerDropMethod(drop_layers=2, drop_rate=0.5, steps=6, lr=3e-3, batch_size=2)
    info = layer_drop.apply(ctx, cfg, out)
    assert info["dropped_layers"] == [1, 3]
    small = AutoModelForCausalLM.from_pretrained(out)
    assert small.config.num_hidden_layers == 2
    for key in ("base_dropped_perplexity", "layerdrop_dropped_perplexity", "control_dropped_perplexity"):
        assert info[key] > 1
    assert info["training"]["steps"] == 6 and info["control_training"]["steps"] == 6


def test_bad_layer_drop_refused(tiny_base):
    with pytest.raises(CompressInputError, match="drop_layers=4 would remove every layer"):
        check_methods([LayerDropMethod(drop_layers=4)], base_shape(tiny_base))
    with pytest.raises(CompressInputError, match=r"layers \[7\] do not exist"):
        check_methods([LayerDropMethod(drop_layers=1, layers=[7])], base_shape(tiny_base))
    with pytest.raises(ValueError, match="distinct layer"):
        LayerDropMethod(drop_layers=2, layers=[1])
