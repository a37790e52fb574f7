"""Structured pruning writes a smaller standard Llama config whose outputs equal the original model's with
the removed heads, channels and layers masked out."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipelines.compress import prune_structured
from pipelines.compress.checks import CompressInputError, base_shape, check_methods
from pipelines.compress.config import PruneStructuredMethod


def test_shapes_config_and_reload(ctx, tmp_path):
    cfg = PruneStructuredMethod(mlp_fraction=0.25, heads_per_group=1, drop_layers=1)
    out = str(tmp_path / "pruned")
    info = prune_structured.apply(ctx, cfg, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (3, 2, 2)
    assert c.intermediate_size == 144 and c.head_dim == 32  # 192 * 0.75 = 144, a multiple of 8
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (2 * 32, 64)
    assert layer.self_attn.o_proj.weight.shape == (64, 2 * 32)
    assert layer.self_attn.k_proj.weight.shape == (2 * 32, 64)  # key/value heads all kept
    assert layer.mlp.down_proj.weight.shape == (64, 144)
    assert len(info["kept_layers"]) == 3 and 0 < info["parameters_removed_fraction"] < 1
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_pruned_model_equals_masked_original(ctx):
    """Keeping the chosen heads/channels/layers is the same function as zeroing the others."""
    model = ctx.load_model()
    cfg = PruneStructuredMethod(mlp_fraction=0.5, heads_per_group=1, drop_layers=1, importance="magnitude")
    plan = prune_structured.plan_pruning(model, cfg, ctx.calib(2))
    small = prune_structured.pruned_model(model, plan)
    hd = model.config.head_dim
    hooks = []
    for i, block in enumerate(model.model.layers):
        if i not in plan["layers"]:
            hooks.append(
                block.register_forward_hook(
                    lambda _m, args, kw, out: args[0] if args else kw["hidden_states"], with_kwargs=True
                )
            )
            continue
        hmask = torch.zeros(model.config.num_attention_heads)
        hmask[plan["heads"][i]] = 1
        cmask = torch.zeros(model.config.intermediate_size)
        cmask[plan["channels"][i]] = 1
        hooks.append(
            block.self_attn.o_proj.register_forward_pre_hook(
                lambda _m, a, m=hmask.repeat_interleave(hd): (a[0] * m,)
            )
        )
        hooks.append(block.mlp.down_proj.register_forward_pre_hook(lambda _m, a, m=cmask: (a[0] * m,)))
    x = ctx.calib(2)
    with torch.no_grad():
        expected = model(input_ids=x).logits
        got = small(input_ids=x).logits
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_gradient_importance_ranks_heads_per_group(ctx):
    model = ctx.load_model()
    heads, chans = prune_structured.gradient_importance(model, ctx.calib(2))
    assert heads.shape == (4, 4) and chans.shape == (4, 192)
    assert torch.all(heads >= 0) and heads.sum() > 0
    plan = prune_structured.plan_pruning(model, PruneStructuredMethod(heads_per_group=1), ctx.calib(2))
    for i, kept in plan["heads"].items():
        assert len(kept) == 2 and {h // 2 for h in kept} == {0, 1}  # one head kept in each GQA group
        for g in (0, 1):
            group = heads[i, 2 * g : 2 * g + 2]
            assert heads[i, [h for h in kept if h // 2 == g][0]] == group.max()


def test_layer_dropping_drops_lowest_block_influence(ctx):
    model = ctx.load_model()
    bi = prune_structured.block_influence(model, ctx.calib(2))
    plan = prune_structured.plan_pruning(model, PruneStructuredMethod(drop_layers=2), ctx.calib(2))
    dropped = sorted(set(range(4)) - set(plan["layers"]))
    assert dropped == sorted(torch.argsort(bi)[:2].tolist())


def test_refusals(tiny_base):
    shape = base_shape(tiny_base)
    with pytest.raises(CompressInputError, match="would prune every head of a group.*at most 1"):
        check_methods([PruneStructuredMethod(heads_per_group=2)], shape)
    with pytest.raises(CompressInputError, match="drop_layers=4 would remove every layer"):
        check_methods([PruneStructuredMethod(drop_layers=4)], shape)
    with pytest.raises(ValueError, match="removes nothing"):
        PruneStructuredMethod()


def _layer_io(model, windows, names):
    """{name: (input, output)} of the named Linears on `windows`, flattened to [tokens, features]."""
    got, hooks, modules = {}, [], dict(model.named_modules())
    for name in names:

        def hook(m, args, out, name=name):
            got[name] = (args[0].reshape(-1, args[0].shape[-1]), out.reshape(-1, out.shape[-1]))

        hooks.append(modules[name].register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=windows)
    for h in hooks:
        h.remove()
    return got


def test_refit_lowers_each_consumers_output_error(ctx):
    """reconstruct: each kept layer's o_proj/down_proj, refit on the kept inputs, reproduces the original
    layer's output on the calibration text better than the plain selection of its columns does; the
    ratio recorded in the method's info is that measured ratio; the other weights are not touched."""
    model = ctx.load_model()
    x = ctx.calib(4)
    cfg = PruneStructuredMethod(
        mlp_fraction=0.5, heads_per_group=1, importance="magnitude", reconstruct="all"
    )
    plan = prune_structured.plan_pruning(model, cfg, x)
    plain = prune_structured.pruned_model(model, plan)
    refit = prune_structured.pruned_model(model, plan)
    ratios = prune_structured.refit_consumers(model, refit, plan, x)
    hd = model.config.head_dim
    names = [f"model.layers.{i}.{n}" for i in plan["layers"] for n in ("self_attn.o_proj", "mlp.down_proj")]
    io = _layer_io(model, x, names)
    measured = {"o_proj": [], "down_proj": []}
    for i in plan["layers"]:
        for kind, kept in (
            ("o_proj", torch.tensor([h * hd + d for h in plan["heads"][i] for d in range(hd)])),
            ("down_proj", torch.tensor(plan["channels"][i])),
        ):
            name = f"model.layers.{i}.{'self_attn' if kind == 'o_proj' else 'mlp'}.{kind}"
            inputs, target = io[name]
            owner = "self_attn" if kind == "o_proj" else "mlp"
            errors = []
            for small in (plain, refit):
                w = getattr(getattr(small.model.layers[plan["layers"].index(i)], owner), kind).weight
                errors.append(float(((inputs[:, kept] @ w.T - target) ** 2).sum()))
            assert errors[1] < errors[0], (name, errors)
            measured[kind].append(errors[1] / errors[0])
    for kind, values in measured.items():
        assert ratios[kind] == pytest.approx(sum(values) / len(values), rel=1e-3)
        assert ratios[kind] < 1
    for name, p in plain.named_parameters():
        if not name.endswith(("o_proj.weight", "down_proj.weight")):
            torch.testing.assert_close(dict(refit.named_parameters())[name], p, atol=0, rtol=0)


def test_refit_through_the_method(ctx, tmp_path):
    """reconstruct: heads refits o_proj only (down_proj stays the plain selection); all refits both."""
    got = {}
    for mode in ("none", "heads", "all"):
        cfg = PruneStructuredMethod(heads_per_group=1, mlp_fraction=0.5, reconstruct=mode)
        info = prune_structured.apply(ctx, cfg, str(tmp_path / mode))
        model = AutoModelForCausalLM.from_pretrained(tmp_path / mode)
        got[mode] = (info.get("reconstruction_error_vs_selection"), model)
    assert got["none"][0] is None
    assert set(got["heads"][0]) == {"o_proj"} and 0 < got["heads"][0]["o_proj"] < 1
    assert set(got["all"][0]) == {"o_proj", "down_proj"} and 0 < got["all"][0]["down_proj"] < 1
    weights = {mode: dict(m.named_parameters()) for mode, (_, m) in got.items()}
    for name, p in weights["none"].items():
        same_as_plain = {mode: torch.equal(weights[mode][name], p) for mode in ("heads", "all")}
        if name.endswith("o_proj.weight"):
            assert same_as_plain == {"heads": False, "all": False}, name
        elif name.endswith("down_proj.weight"):
            assert same_as_plain == {"heads": True, "all": False}, name
        else:
            assert same_as_plain == {"heads": True, "all": True}, name


def test_refit_refusals():
    with pytest.raises(ValueError, match="only drop_layers there is nothing to refit"):
        PruneStructuredMethod(drop_layers=1, reconstruct="all")
    with pytest.raises(ValueError, match="heads_per_group is 0"):
        PruneStructuredMethod(mlp_fraction=0.2, reconstruct="heads")
    with pytest.raises(ValueError, match="reconstruct"):
        PruneStructuredMethod(heads_per_group=1, reconstruct="yes")
