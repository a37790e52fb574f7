"""Tensor parallelism as a pass over a plain transformers Llama model: PyTorch DTensor
`parallelize_module` with Megatron's column/row split of every block (torchtitan's `parallelize.py`).

- attention: q/k/v projections column-wise (each rank computes its own heads), o_proj row-wise (the
  partial sums are all-reduced);
- MLP: gate/up column-wise, down row-wise.

transformers' `LlamaAttention` reshapes with `view(..., -1, head_dim)`, so a rank's column shard is read
as `num_heads / tp` query heads and `num_kv_heads / tp` key/value heads without touching the module: the
grouped-query ratio (`num_key_value_groups`) is the same per rank as in the whole model. What the pass
leaves replicated: the embedding, the norms and the head (a vocabulary-parallel loss is a further step).
Gradients of replicated parameters come out equal on every tensor rank (DTensor all-reduces the input
gradient of a column-wise layer), so one optimizer step per rank keeps them in sync.

This pass serves tensor parallelism without a pipeline (pp 1): DTensor composes with a plain
data-parallel all-reduce on CPU/gloo and is the PyTorch-native way. Inside pipeline stages (pp > 1),
DeepSpeed's engine handles the gradients and needs plain-tensor shards: `pipeline_tensor.py` applies the
same split with DeepSpeed's AutoTP layers there (see docs/parallel.md).
"""

from __future__ import annotations

import torch

# Megatron's split of a Llama block, shared by this DTensor pass and the pipeline stages' pass
# (pipeline_tensor.py): "column" shards the output features, "row" the input features (partial sums
# all-reduced).
BLOCK_SPLIT = {
    "self_attn.q_proj": "column",
    "self_attn.k_proj": "column",
    "self_attn.v_proj": "column",
    "self_attn.o_proj": "row",
    "mlp.gate_proj": "column",
    "mlp.up_proj": "column",
    "mlp.down_proj": "row",
}


def block_plan() -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    split = {"column": ColwiseParallel, "row": RowwiseParallel}
    return {name: split[kind]() for name, kind in BLOCK_SPLIT.items()}


def tp_mesh(tp_group, device_type: str = "cpu"):
    """A 1-D DeviceMesh over an existing tensor-parallel process group (built by layout.build_groups)."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(tp_group, device_type=device_type)


def apply_tensor_parallel(model, mesh):
    """Shard every decoder block of a `LlamaForCausalLM` over `mesh`, in place; returns the model."""
    from torch.distributed.tensor.parallel import parallelize_module

    for block in model.model.layers:
        parallelize_module(block, mesh, block_plan())
    return model


def is_sharded(p) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def local(t):
    """A DTensor's shard on this rank (a plain tensor stays as it is)."""
    return t.to_local() if is_sharded(t) else t


def grad_norm(params, tp_group) -> torch.Tensor:
    """Global L2 norm of the gradients: shards' squares summed over the tensor group, replicated ones
    counted once. (torch's clip_grad_norm_ cannot stack DTensor and plain-tensor norms together.)"""
    import torch.distributed as dist

    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        g = local(p.grad).double()
        if is_sharded(p):
            sharded += g.pow(2).sum()
        else:
            replicated += g.pow(2).sum()
    if tp_group is not None:
        dist.all_reduce(sharded, group=tp_group)
    return (sharded + replicated).sqrt()


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight gathered whole (a collective over the tensor group: each rank calls it)."""
    out = {}
    for name, p in model.state_dict().items():
        out[name] = (p.full_tensor() if is_sharded(p) else p).detach().to("cpu", copy=True)
    return out
