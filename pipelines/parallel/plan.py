"""The layout as the dry run prints it: which rank holds which data shard, pipeline stage (and which
layers that stage holds, cut as DeepSpeed will cut them) and tensor shard, with the parameters each
worker stores. Nothing is built: layer sizes come from the model's config on the meta device."""

from __future__ import annotations

from pipelines.parallel.layout import Layout


def _meta_model(model_cfg, vocab_size: int):
    """The decoder on the meta device: from a raylm `ModelConfig`, or (a str) a model folder's config."""
    if isinstance(model_cfg, str):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_cfg))
    from pipelines.models import Vocab, build_model

    return build_model(model_cfg, Vocab(size=vocab_size, pad_id=0, eos_id=1), device="meta")


def layer_parameters(model_cfg, vocab_size: int) -> tuple[list[str], list[int], list[int], bool]:
    """(names, parameters, tensor-sharded parameters) of the pipeline's layers, in order, and whether
    the head is tied to the embedding. `model_cfg`: a `ModelConfig` or a model folder (fine-tuning)."""
    model = _meta_model(model_cfg, vocab_size)
    c = model.config
    emb = c.vocab_size * c.hidden_size
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    norms = sum(p.numel() for n, p in model.model.layers[0].named_parameters() if "norm" in n)
    names = ["embedding"] + [f"block {i}" for i in range(c.num_hidden_layers)] + ["final norm", "head"]
    params = [emb] + [block] * c.num_hidden_layers + [c.hidden_size, emb]
    sharded = [0] + [block - norms] * c.num_hidden_layers + [0, 0]
    return names, params, sharded, bool(c.tie_word_embeddings)


def stage_bounds(params: list[int], pp: int, method: str) -> list[int]:
    """Layer index boundaries of the stages, as `PipelineModule` computes them."""
    from deepspeed.runtime import utils as ds_utils

    if method == "uniform":
        return ds_utils.partition_uniform(num_items=len(params), num_parts=pp)
    if method == "parameters":
        return ds_utils.partition_balanced(weights=params, num_parts=pp)
    if method.startswith("type:"):
        import re

        binary = [
            1 if re.search(method[5:], "BlockPipe") and 0 < i < len(params) - 2 else 0
            for i in range(len(params))
        ]
        return ds_utils.partition_balanced(weights=binary, num_parts=pp)
    raise ValueError(f"partition_method {method!r}: use parameters, uniform or type:REGEX")


def stage_parameters(
    model_cfg, layout: Layout, vocab_size: int, partition_method: str
) -> tuple[list[int], list[tuple[int, int]]]:
    """(parameters one worker of each stage stores, each stage's layer index range [lo, hi)): the
    blocks' projections divided tp ways, the embedding, norms and head whole, a tied embedding once per
    stage that holds an end of it."""
    _, params, sharded, tied = layer_parameters(model_cfg, vocab_size)
    bounds = stage_bounds(params, layout.pp, partition_method) if layout.pp > 1 else [0, len(params)]
    held, ranges = [], []
    for s in range(layout.pp):
        lo, hi = bounds[s], bounds[s + 1]
        n = sum(params[lo:hi]) - sum(sharded[lo:hi]) + sum(sharded[lo:hi]) // layout.tp
        if tied and lo == 0 and hi == len(params):
            n -= params[-1]  # one stage holds the tied embedding and head: one tensor
        held.append(n)
        ranges.append((lo, hi))
    return held, ranges


def describe(
    model_cfg, layout: Layout, vocab_size: int, partition_method: str, max_ranks: int = 16
) -> list[str]:
    names = layer_parameters(model_cfg, vocab_size)[0]
    per_stage, ranges = stage_parameters(model_cfg, layout, vocab_size, partition_method)
    lines = [
        f"{layout.key}: {layout.world} workers = {layout.dp} data x {layout.pp} pipeline x {layout.tp} "
        "tensor; tensor ranks consecutive (same node first), stages spread; data sharded along dp only"
    ]
    for s, ((lo, hi), held) in enumerate(zip(ranges, per_stage, strict=True)):
        lines.append(
            f"stage {s}: {names[lo]} .. {names[hi - 1]} ({hi - lo} layers), {held:,} parameters per worker"
        )
    for r in range(min(layout.world, max_ranks)):
        d, s, t = layout.coords(r)
        lines.append(f"rank {r}: data shard {d}, stage {s}, tensor shard {t} ({per_stage[s]:,} parameters)")
    if layout.world > max_ranks:
        lines.append(f"... {layout.world - max_ranks} more ranks in the same pattern")
    return lines
