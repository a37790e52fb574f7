"""Tensor parallelism inside pipeline stages (pp > 1 with tp > 1): DeepSpeed's AutoTP training layers
over each stage's decoder blocks, as a pass after the stage is built and its weights loaded.

Why not the DTensor pass (tensor.py) here: DeepSpeed's `PipelineEngine` flattens, all-reduces, clips and
steps gradients as plain tensors, and DTensor parameters break each of those. DeepSpeed's own AutoTP
layers are what its engine was built around: `LinearLayer` (column split: identity forward, all-reduce
of the input gradient) and `LinearAllreduce` (row split: all-reduce of the partial outputs) hold plain
tensor shards marked `tensor_model_parallel`, so ZeRO-1's and the engine's gradient norm count a shard
on every tensor rank and a replicated weight (norms, embedding) once, summed over the grid's
model-parallel group. The split is the same Megatron plan as the DTensor pass (`tensor.BLOCK_SPLIT`).

Activations between stages are replicated across the tensor ranks (each row-split layer ends in an
all-reduce), so DeepSpeed sends stage s, tensor rank t's output to stage s+1, tensor rank t unchanged.
"""

from __future__ import annotations

import torch


def shard_pipeline_blocks(pipe, config, tp_group) -> int:
    """Replace the block projections of this stage (`pipe`: a `PipelineModule` from
    `pipeline.build_pipeline`, weights already loaded whole) by DeepSpeed's tensor-parallel layers over
    `tp_group`, each keeping this rank's shard. Returns the number of layers replaced."""
    from deepspeed.module_inject.layers import LinearAllreduce, LinearLayer, set_autotp_mode
    from deepspeed.module_inject.tp_shard import AutoTPMeta

    from pipelines.parallel.pipeline import BlockPipe
    from pipelines.parallel.tensor import BLOCK_SPLIT

    set_autotp_mode(training=True)  # process-wide in DeepSpeed: the row all-reduce keeps its autograd
    # the head counts make q/k/v (and o) split on whole key/value-head groups
    meta = AutoTPMeta.from_model_config(config)
    replaced = 0
    for block in [m for m in pipe.modules() if isinstance(m, BlockPipe)]:
        for path, kind in BLOCK_SPLIT.items():
            parent_path, attr = path.rsplit(".", 1)
            parent = block.layer.get_submodule(parent_path)
            cls = LinearLayer if kind == "column" else LinearAllreduce
            setattr(parent, attr, cls(getattr(parent, attr), tp_group, name=path, tp_meta=meta))
            replaced += 1
    return replaced


def merge_shards(parts: list[torch.Tensor], full_shape: torch.Size) -> torch.Tensor:
    """One weight from its tensor ranks' pieces (in tensor-rank order): a replicated weight is any one
    piece; a shard is concatenated along the one dimension where it is smaller than the whole."""
    first = parts[0]
    if first.shape == full_shape:
        return first
    dims = [i for i, (a, b) in enumerate(zip(first.shape, full_shape, strict=True)) if a != b]
    if len(dims) != 1:
        raise RuntimeError(
            f"a shard of shape {tuple(first.shape)} does not split {tuple(full_shape)} along one dimension"
        )
    merged = torch.cat(parts, dim=dims[0])
    if merged.shape != full_shape:
        raise RuntimeError(f"shards {[tuple(p.shape) for p in parts]} do not make {tuple(full_shape)}")
    return merged
