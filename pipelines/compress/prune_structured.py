"""Structured pruning of a Llama-style decoder: remove query heads (the same number from every key/value
group, so grouped-query attention stays consistent), MLP channels and whole layers, and write a smaller
*standard* Llama config (fewer `num_attention_heads`, smaller `intermediate_size`, fewer
`num_hidden_layers`; `head_dim` explicit) that transformers and vLLM load without custom code.

A standard config has one head count and one MLP width for all layers, so heads and channels are removed
uniformly: the same count in every layer, each layer choosing its own least important ones.

Importance (`importance: gradient`, the default): a mask of ones multiplies each head's output (the
input of o_proj) and each MLP channel (the input of down_proj); |dL/dmask| summed over calibration
batches is the first-order estimate of the loss change when the head/channel is removed (Michel et al.,
2019, "Are Sixteen Heads Really Better than One?"; Molchanov et al.'s Taylor criterion for channels).
Layers are ranked by block influence (ShortGPT): 1 - cos(input, output) of the layer's residual stream;
the layers that change it least are dropped.

`reconstruct` then refits the layers that consume the removed features, each kept layer's o_proj (after
heads go; `heads`) and down_proj (after channels go; `all`), by least squares on calibration inputs, so
their outputs stay as close as the kept features allow to the original layer's (the reconstruction step of
ThiNet, Luo et al. 2017, and of He et al. 2017's channel pruning). No library in raylm's stack refits a
pruned transformer's consumers (llm-compressor's SparseGPT updates the weights left by unstructured or
N:M sparsity, not after removed heads and channels), so it is written here, on the input Hessians the
GPTQ pass collects (`calibration.input_hessians`).
"""

from __future__ import annotations

import torch

from pipelines.compress.calibration import input_hessians
from pipelines.compress.recovery import recover

REFIT_DAMPENING = 0.01
"""Fraction of the kept inputs' mean covariance diagonal added to its diagonal before solving (as GPTQ's
damping): the calibration text may leave some directions unseen."""


def _blocks(model):
    return model.model.layers


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    """The q_proj output rows (= o_proj input columns) of the listed heads."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)])


def gradient_importance(
    model, windows: torch.Tensor, batch_size: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(head importance [layers, heads], channel importance [layers, intermediate]) from |dL/dmask|."""
    cfg = model.config
    n_layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    head_mask = torch.ones(n_layers, heads, requires_grad=True)
    chan_mask = torch.ones(n_layers, cfg.intermediate_size, requires_grad=True)
    hooks = []
    for i, block in enumerate(_blocks(model)):

        def head_hook(_m, args, i=i):
            x = args[0]
            m = head_mask[i].repeat_interleave(head_dim).to(x.dtype)
            return (x * m,)

        def chan_hook(_m, args, i=i):
            return (args[0] * chan_mask[i].to(args[0].dtype),)

        hooks.append(block.self_attn.o_proj.register_forward_pre_hook(head_hook))
        hooks.append(block.mlp.down_proj.register_forward_pre_hook(chan_hook))
    grads_h = torch.zeros(n_layers, heads)
    grads_c = torch.zeros(n_layers, cfg.intermediate_size)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the masks need gradients: far less memory
    try:
        for i in range(0, len(windows), batch_size):
            x = windows[i : i + batch_size]
            loss = model(input_ids=x, labels=x).loss
            gh, gc = torch.autograd.grad(loss, [head_mask, chan_mask])
            grads_h += gh.abs()
            grads_c += gc.abs()
    finally:
        for h in hooks:
            h.remove()
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return grads_h, grads_c


@torch.no_grad()
def magnitude_importance(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(head, channel) importance from weight norms: ||q rows|| * ||o columns|| per head,
    ||gate row|| * ||up row|| * ||down column|| per channel."""
    cfg = model.config
    heads = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    hs, cs = [], []
    for block in _blocks(model):
        q = block.self_attn.q_proj.weight.view(heads, hd, -1).flatten(1).norm(dim=1)
        o = block.self_attn.o_proj.weight.view(-1, heads, hd).transpose(0, 1).flatten(1).norm(dim=1)
        hs.append(q * o)
        mlp = block.mlp
        cs.append(
            mlp.gate_proj.weight.norm(dim=1)
            * mlp.up_proj.weight.norm(dim=1)
            * mlp.down_proj.weight.norm(dim=0)
        )
    return torch.stack(hs), torch.stack(cs)


@torch.no_grad()
def block_influence(model, windows: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """1 - mean cosine(input, output) of each decoder layer over the calibration tokens."""
    n = model.config.num_hidden_layers
    sums, count = torch.zeros(n), 0
    store: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(_blocks(model)):

        def hook(_m, args, kwargs, output, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            store[i] = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).flatten().sum()

        hooks.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        for i in range(0, len(windows), batch_size):
            x = windows[i : i + batch_size]
            model(input_ids=x)
            sums += torch.stack([store[j] for j in range(n)])
            count += x.numel()
    finally:
        for h in hooks:
            h.remove()
    return 1.0 - sums / count


def plan_pruning(model, cfg, windows: torch.Tensor | None) -> dict:
    """Which layers, heads (per kept layer) and MLP channels (per kept layer) to keep."""
    c = model.config
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    group = heads // kv
    if cfg.importance == "gradient":
        head_imp, chan_imp = gradient_importance(model, windows)
    else:
        head_imp, chan_imp = magnitude_importance(model)
    layers = list(range(c.num_hidden_layers))
    influence = None
    if cfg.drop_layers:
        influence = block_influence(model, windows) if windows is not None else None
        if influence is None:  # no data: drop the last layers but one (the usual least-damaging choice)
            dropped = layers[-cfg.drop_layers - 1 : -1]
        else:
            dropped = sorted(torch.argsort(influence)[: cfg.drop_layers].tolist())
        layers = [i for i in layers if i not in dropped]
    keep_per_group = group - cfg.heads_per_group
    keep_heads = {}
    for i in layers:
        imp = head_imp[i].view(kv, group)
        kept = torch.topk(imp, keep_per_group, dim=1).indices.sort(dim=1).values
        keep_heads[i] = (kept + torch.arange(kv).unsqueeze(1) * group).flatten().tolist()
    n_chan = c.intermediate_size
    if cfg.mlp_fraction:
        n_chan = max(8, int(c.intermediate_size * (1 - cfg.mlp_fraction)) // 8 * 8)
    keep_chan = {i: torch.topk(chan_imp[i], n_chan).indices.sort().values.tolist() for i in layers}
    return {
        "layers": layers,
        "heads": keep_heads,
        "channels": keep_chan,
        "block_influence": [round(float(v), 5) for v in influence] if influence is not None else None,
    }


@torch.no_grad()
def pruned_model(model, plan: dict):
    """A new, smaller Llama model holding the kept weights (built from a standard config)."""
    from transformers import AutoModelForCausalLM

    c = model.config
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    new_heads = len(next(iter(plan["heads"].values())))
    new_cfg = c.__class__.from_dict(c.to_dict())
    new_cfg.num_hidden_layers = len(plan["layers"])
    new_cfg.num_attention_heads = new_heads
    new_cfg.num_key_value_heads = kv
    new_cfg.head_dim = hd  # explicit: num_heads * head_dim no longer equals hidden_size
    new_cfg.intermediate_size = len(next(iter(plan["channels"].values())))
    new_cfg.use_cache = True
    old_sd = model.state_dict()
    sd = {k: v for k, v in old_sd.items() if ".layers." not in k}
    for new_i, old_i in enumerate(plan["layers"]):
        pre, npre = f"model.layers.{old_i}.", f"model.layers.{new_i}."
        rows = _head_rows(plan["heads"][old_i], hd)
        ch = torch.tensor(plan["channels"][old_i])
        for k, v in old_sd.items():
            if not k.startswith(pre):
                continue
            leaf = k[len(pre) :]
            if leaf == "self_attn.q_proj.weight":
                v = v[rows]
            elif leaf == "self_attn.o_proj.weight":
                v = v[:, rows]
            elif leaf in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                v = v[ch]
            elif leaf == "mlp.down_proj.weight":
                v = v[:, ch]
            elif leaf.endswith(".bias") and leaf.startswith("self_attn.q_proj"):
                v = v[rows]
            sd[npre + leaf] = v.clone()
    small = AutoModelForCausalLM.from_config(new_cfg, dtype=torch.float32)
    missing, unexpected = small.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and c.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(
            f"pruned state dict does not match its config: missing {missing}, unexpected {unexpected}"
        )
    small.tie_weights()
    return small.eval()


def _consumers(model, plan: dict, layers_of, mlp: bool) -> dict[str, tuple[torch.nn.Linear, torch.Tensor]]:
    """{name in `model`: (the Linear of `layers_of` (the pruned model's layers), its kept input features)}
    for each kept layer's o_proj (when heads were removed) and, with `mlp`, down_proj (when MLP channels
    were)."""
    c = model.config
    heads = c.num_attention_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    out = {}
    for new_i, old_i in enumerate(plan["layers"]):
        block = layers_of[new_i]
        kept_heads, kept_chan = plan["heads"][old_i], plan["channels"][old_i]
        if len(kept_heads) < heads:
            rows = _head_rows(kept_heads, hd)
            out[f"model.layers.{old_i}.self_attn.o_proj"] = (block.self_attn.o_proj, rows)
        if mlp and len(kept_chan) < c.intermediate_size:
            out[f"model.layers.{old_i}.mlp.down_proj"] = (block.mlp.down_proj, torch.tensor(kept_chan))
    return out


@torch.no_grad()
def refit_consumers(model, small, plan: dict, windows: torch.Tensor, mlp: bool = True) -> dict:
    """Refit `small`'s o_proj (and, with `mlp`, down_proj) in place: W' = argmin E||W x - W' x_kept||^2
    over the original model's inputs x on `windows` = W C[:, kept] (C[kept, kept] + damping)^-1,
    C = E[x x^T]. One pass of the original model gives every layer's C (inputs as the unpruned layers see
    them, as the GPTQ pass here does, rather than layer by layer through the pruned model). Returns the
    mean output error of the refit relative to plain selection (W[:, kept]), per kind (o_proj,
    down_proj), on the calibration inputs."""
    targets = _consumers(model, plan, small.model.layers, mlp)
    originals = dict(model.named_modules())
    hessians = input_hessians(model, windows, {name: originals[name] for name in targets})
    ratios: dict[str, list[float]] = {}
    for name, (linear, kept) in targets.items():
        c = hessians.pop(name).double()
        w = originals[name].weight.double()
        a = c[kept][:, kept]
        a = a + REFIT_DAMPENING * a.diagonal().mean() * torch.eye(len(kept), dtype=a.dtype)
        refit = torch.linalg.solve(a, (w @ c[:, kept]).T).T

        def error(w_kept, c=c, w=w, kept=kept):  # E||W x - W_kept x_kept||^2 from the covariance alone
            d = torch.cat([w, -w_kept], dim=1)
            idx = torch.cat([torch.arange(len(c)), kept])
            return float(torch.einsum("ij,jk,ik->", d, c[idx][:, idx], d))

        ratios.setdefault(name.rsplit(".", 1)[1], []).append(error(refit) / max(error(w[:, kept]), 1e-30))
        linear.weight.copy_(refit.to(linear.weight.dtype))
    return {k: float(f"{sum(v) / len(v):.4g}") for k, v in ratios.items()}


def apply(ctx, cfg, out_dir: str) -> dict:
    model = ctx.load_model()
    before = sum(p.numel() for p in model.parameters())
    windows = ctx.calib(cfg.calibration_samples)
    plan = plan_pruning(model, cfg, windows)
    small = pruned_model(model, plan)
    refit = None
    if cfg.reconstruct != "none":
        refit = refit_consumers(model, small, plan, windows, mlp=cfg.reconstruct == "all")
    del model
    info = {
        "kept_layers": plan["layers"],
        "num_attention_heads": small.config.num_attention_heads,
        "num_key_value_heads": small.config.num_key_value_heads,
        "intermediate_size": small.config.intermediate_size,
        "block_influence": plan["block_influence"],
        "parameters_removed_fraction": round(1 - sum(p.numel() for p in small.parameters()) / before, 4),
    }
    if refit is not None:
        info["reconstruction_error_vs_selection"] = refit
    if cfg.recovery_steps:
        info["recovery"] = recover(ctx, small, cfg)
    ctx.save(small, out_dir)
    return info
