"""Cross-layer weight sharing (ALBERT, Lan et al., 2019): consecutive decoder layers in groups of
`group_size` share one set of weights (every parameter of the block: attention, MLP and norms), set to
the mean of the group's layers or to its first layer's, then an optional recovery fine-tune that keeps
them tied.

Tying is done by making the group's layers hold the *same* `nn.Parameter` objects: autograd sums each
shared weight's gradient over the layers that use it and the optimizer (which sees each parameter once
through `model.parameters()`) updates it once, so the weights stay identical without any extra code.

Serving: a standard config cannot say "layer 3 reuses layer 2's weights" and vLLM has no such option, so
the written folder is the *export*: every layer holds its own (identical) copy, a plain Llama that
transformers and vLLM load. Its size on disk is the base's; the shared form's unique parameters and
bytes are recorded in `method_info` (what a tying-aware format or a runtime that shares memory would
store).
"""

from __future__ import annotations

import torch

from pipelines.compress.recovery import recover


def groups(n_layers: int, group_size: int) -> list[list[int]]:
    """Consecutive layer groups: [[0..g-1], [g..2g-1], ...]; the last may be shorter."""
    return [list(range(i, min(i + group_size, n_layers))) for i in range(0, n_layers, group_size)]


@torch.no_grad()
def share_layers(model, group_size: int, init: str = "mean") -> list[list[int]]:
    """Tie every parameter of each group's layers to one Parameter (in place); returns the groups."""
    layers = model.model.layers
    plan = groups(len(layers), group_size)
    for g in plan:
        lead = layers[g[0]]
        for name, p in lead.named_parameters():
            if init == "mean" and len(g) > 1:
                p.copy_(torch.stack([layers[i].get_parameter(name) for i in g]).mean(0))
            for i in g[1:]:
                mod_name, _, leaf = name.rpartition(".")
                setattr(layers[i].get_submodule(mod_name), leaf, p)
    return plan


def unique_parameters(module: torch.nn.Module) -> int:
    """Parameters counted once per storage (`parameters()` already deduplicates shared Parameters)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def untie_layers(model) -> None:
    """Give every decoder layer its own copy of each shared weight (the standard export)."""
    seen: set[int] = set()
    for layer in model.model.layers:
        for mod in layer.modules():
            for leaf, p in list(mod._parameters.items()):
                if p is None:
                    continue
                if id(p) in seen:
                    setattr(mod, leaf, torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
                else:
                    seen.add(id(p))


def apply(ctx, cfg, out_dir: str) -> dict:
    model = ctx.load_model()
    before = unique_parameters(model)
    plan = share_layers(model, cfg.group_size, cfg.init)
    shared = unique_parameters(model)
    info = {
        "groups": plan,
        "init": cfg.init,
        "unique_parameters": shared,
        "unique_parameter_ratio": round(shared / before, 4),
        # the shared form in the written dtype: what a format with tying would store
        "unique_bytes": shared * torch.empty((), dtype=ctx.dtype).element_size(),
        "export": "standard Llama folder, every layer its own copy of its group's weights",
    }
    if cfg.recovery_steps:
        info["recovery"] = recover(ctx, model, cfg)
    untie_layers(model)
    ctx.save(model, out_dir)
    return info
