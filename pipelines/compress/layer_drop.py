"""LayerDrop (Fan et al., 2019, "Reducing Transformer Depth on Demand with Structured Dropout"): train
with each decoder layer skipped at random (probability `drop_rate`, independently per layer and step),
so that the network learns not to depend on any single layer; then keep a shallower sub-network at
inference (`drop_layers` layers spread evenly over the depth: every other layer when it is half) and
write it as a standard Llama config with fewer `num_hidden_layers`, which transformers and vLLM load.

The comparison the method exists for (`compare: true`): the same layers removed from (a) the untrained
base and (b) a control trained for the same steps on the same text *without* LayerDrop; their held-out
perplexities go into `method_info` next to the LayerDrop model's.
"""

from __future__ import annotations

import torch

from pipelines.compress.prune_structured import pruned_model
from pipelines.compress.recovery import recovery_finetune, recovery_windows
from pipelines.compress.text import perplexity


class LayerDropList(torch.nn.ModuleList):
    """The decoder's layer list that, in training mode, hands out a random subset when sliced.

    transformers' LlamaModel runs `for layer in self.layers[: num_hidden_layers]`, so overriding the
    slice is the one place a skip fits without copying the model's forward. Parameter names (and the
    state dict) are those of the plain ModuleList it replaces."""

    def __init__(self, layers, p: float, seed: int = 0):
        super().__init__(layers)
        self.p = p
        self.gen = torch.Generator().manual_seed(seed)

    def __getitem__(self, idx):
        full = list(self._modules.values())
        if not isinstance(idx, slice):
            return full[idx]
        full = full[idx]
        if not (self.training and self.p > 0):
            return torch.nn.ModuleList(full)
        keep = torch.rand(len(full), generator=self.gen) >= self.p
        if not keep.any():  # a step with no layer at all teaches nothing useful
            keep[torch.randint(len(full), (1,), generator=self.gen)] = True
        return [m for m, k in zip(full, keep.tolist(), strict=True) if k]


def spread(n_layers: int, drop: int) -> list[int]:
    """`drop` layer indices spread evenly over the depth (n/2 of n: 1, 3, 5, ...; never layer 0 first)."""
    return sorted({int((j + 0.5) * n_layers / drop) for j in range(drop)})


def train_layerdrop(model, windows: torch.Tensor, p: float, steps: int, lr: float, batch_size: int) -> dict:
    """Train in place with LayerDrop at rate p; the model keeps its plain layer list afterwards."""
    plain = model.model.layers
    model.model.layers = LayerDropList(list(plain), p)
    try:
        return recovery_finetune(model, windows, steps, lr, batch_size)
    finally:
        model.model.layers = plain


def without_layers(model, dropped: list[int]):
    """A standard, shallower copy of the model without the `dropped` layers (heads and MLP unchanged)."""
    c = model.config
    keep = [i for i in range(c.num_hidden_layers) if i not in set(dropped)]
    plan = {
        "layers": keep,
        "heads": {i: list(range(c.num_attention_heads)) for i in keep},
        "channels": {i: list(range(c.intermediate_size)) for i in keep},
    }
    return pruned_model(model, plan)


def apply(ctx, cfg, out_dir: str) -> dict:
    model = ctx.load_model()
    n = model.config.num_hidden_layers
    dropped = sorted(set(cfg.layers)) if cfg.layers is not None else spread(n, cfg.drop_layers)
    evaluation = ctx.evaluation if ctx.evaluation is not None else ctx.calib(8)
    train = recovery_windows(ctx, cfg.steps, cfg.batch_size)
    info: dict = {"dropped_layers": dropped, "kept_layers": n - len(dropped), "drop_rate": cfg.drop_rate}
    if cfg.compare:
        info["base_dropped_perplexity"] = round(perplexity(without_layers(model, dropped), evaluation), 4)
    info["training"] = train_layerdrop(model, train, cfg.drop_rate, cfg.steps, cfg.lr, cfg.batch_size)
    info["full_depth_perplexity"] = round(perplexity(model, evaluation), 4)
    small = without_layers(model, dropped)
    del model
    info["layerdrop_dropped_perplexity"] = round(perplexity(small, evaluation), 4)
    if cfg.compare:
        control = ctx.load_model()
        info["control_training"] = recovery_finetune(control, train, cfg.steps, cfg.lr, cfg.batch_size)
        info["control_full_depth_perplexity"] = round(perplexity(control, evaluation), 4)
        info["control_dropped_perplexity"] = round(
            perplexity(without_layers(control, dropped), evaluation), 4
        )
        del control
    ctx.save(small, out_dir)
    return info
