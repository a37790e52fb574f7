"""vLLM's Llama with factorized low-rank MLP projections: serves the folders that the compress stage's
`low_rank` writes with `export: factorized` (architecture `RaylmLowRankLlamaForCausalLM`).

Why a model class of our own: a standard Llama config cannot express a rank-r projection. The dense
export W_r = B @ A has the base model's size and speed, so it throws the whole gain away. vLLM loads
out-of-tree architectures through its `vllm.general_plugins` entry point, which raylm registers
(`serving/vllm_plugin.py`).

What it is: vLLM's own `LlamaForCausalLM` (attention, paged KV cache, rotary, norms, embeddings and
weight loading are all vLLM's). Only the MLP of a layer with entries in `config.low_rank_ranks` is
replaced. Each listed projection W [out, in] becomes two linears, A [r, in] and then B [out, r], stored as
`<name>.0.weight` and `<name>.1.weight`. Projections not listed stay dense.

Capabilities:
- Tensor parallelism: yes.
  - gate/up (column-parallel in Llama): A is replicated and B is split by its output.
  - down (row-parallel): A is split by its input, its partial sums are all-reduced, and B is replicated.
  - Each rank computes exactly the shard that the dense layer would give it.
- Pipeline parallelism: as vLLM's Llama.
- LoRA adapters and quantized checkpoints: no (refused at load). The factor pairs are plain vLLM linears
  with no LoRA wrappers, and the compress stage does not quantize factorized folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.utils import extract_layer_index

_MLP_WEIGHT = re.compile(r"^(model\.layers\.\d+\.mlp\.)")


def layer_ranks(config, index: int) -> dict[str, int]:
    """{"gate_proj": r, ...} of layer `index` from config.low_rank_ranks (empty: a dense layer)."""
    prefix = f"model.layers.{index}.mlp."
    ranks = getattr(config, "low_rank_ranks", None) or {}
    return {k.removeprefix(prefix): int(r) for k, r in ranks.items() if k.startswith(prefix)}


class FactoredLinear(nn.ModuleList):
    """W ~ B @ A as [A, B] (so the weights are named `.0.weight` and `.1.weight`, as in the folder).
    `parallel` is how the dense layer it replaces is split across tensor-parallel ranks."""

    def __init__(self, in_f: int, out_f: int, rank: int, parallel: str, bias: bool, prefix: str):
        if parallel == "column":
            first = ReplicatedLinear(in_f, rank, bias=False, prefix=f"{prefix}.0")
            second = ColumnParallelLinear(rank, out_f, bias=bias, prefix=f"{prefix}.1")
        else:
            first = RowParallelLinear(in_f, rank, bias=False, reduce_results=True, prefix=f"{prefix}.0")
            second = ReplicatedLinear(rank, out_f, bias=bias, prefix=f"{prefix}.1")
        super().__init__([first, second])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, _ = self[0](x)
        x, _ = self[1](x)
        return x, None


class LowRankLlamaMLP(nn.Module):
    """SwiGLU MLP whose gate/up/down are each dense (vLLM's parallel linear) or a FactoredLinear.

    When gate and up are both factorized, their A factors (which read the same input) are one
    replicated GEMM, `gate_up_a` [r_gate + r_up, hidden]: one kernel call fewer per layer. At one
    sequence on a CPU the calls' fixed cost is a large part of a token's time; rank 192 on SmolLM2 went
    from 1.14x to 1.26x of the base with this (vLLM bf16, 2-core Xeon, one process each, so +-10%)."""

    def __init__(self, hidden: int, inter: int, ranks: dict[str, int], bias: bool, prefix: str):
        super().__init__()
        unknown = set(ranks) - {"gate_proj", "up_proj", "down_proj"}
        if unknown:
            raise ValueError(f"{prefix}: low_rank_ranks names {sorted(unknown)}; only the MLP's gate_proj, "
                             "up_proj and down_proj can be factorized in this model class")

        def proj(name: str, in_f: int, out_f: int, parallel: str) -> nn.Module:
            if name in ranks:
                return FactoredLinear(in_f, out_f, ranks[name], parallel, bias, f"{prefix}.{name}")
            dense = ColumnParallelLinear if parallel == "column" else RowParallelLinear
            return dense(in_f, out_f, bias=bias, prefix=f"{prefix}.{name}")

        self.gate_up_a = None
        if "gate_proj" in ranks and "up_proj" in ranks:
            self.split = [ranks["gate_proj"], ranks["up_proj"]]
            self.gate_up_a = MergedColumnParallelLinear(
                hidden, self.split, bias=False, disable_tp=True, prefix=f"{prefix}.gate_up_a"
            )
            self.gate_b = ColumnParallelLinear(self.split[0], inter, bias=bias, prefix=f"{prefix}.gate_b")
            self.up_b = ColumnParallelLinear(self.split[1], inter, bias=bias, prefix=f"{prefix}.up_b")
        else:
            self.gate_proj = proj("gate_proj", hidden, inter, "column")
            self.up_proj = proj("up_proj", hidden, inter, "column")
        self.down_proj = proj("down_proj", inter, hidden, "row")

    def param_for(self, leaf: str) -> tuple[str, int | None]:
        """The parameter (name under this MLP, shard id) that the folder's weight `leaf` (a name under
        `mlp.`, e.g. "gate_proj.0.weight") loads into."""
        if self.gate_up_a is not None:
            proj, _, rest = leaf.partition(".")
            if proj in ("gate_proj", "up_proj"):
                shard = 0 if proj == "gate_proj" else 1
                if rest == "0.weight":
                    return "gate_up_a.weight", shard
                return f"{proj.removesuffix('_proj')}_b.{rest.removeprefix('1.')}", None
        return leaf, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_a is not None:
            a, _ = self.gate_up_a(x)
            a_gate, a_up = a.split(self.split, dim=-1)
            gate, _ = self.gate_b(a_gate)
            up, _ = self.up_b(a_up)
        else:
            gate, _ = self.gate_proj(x)
            up, _ = self.up_proj(x)
        out, _ = self.down_proj(nn.functional.silu(gate) * up)
        return out


class LowRankLlamaDecoderLayer(LlamaDecoderLayer):
    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config=None, **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, config=config, **kwargs)
        config = config or vllm_config.model_config.hf_config
        ranks = layer_ranks(config, extract_layer_index(prefix))
        if ranks:
            # The parent built a dense MLP first; it is dropped here (one layer's MLP at a time, briefly).
            self.mlp = LowRankLlamaMLP(
                config.hidden_size, config.intermediate_size, ranks, getattr(config, "mlp_bias", False),
                f"{prefix}.mlp",
            )


class LowRankLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's LlamaForCausalLM with LowRankLlamaDecoderLayer layers."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        if vllm_config.quant_config is not None:
            raise ValueError("a factorized low-rank Llama folder cannot also be quantized (its factor "
                             "pairs are plain linears); serve its dense export to quantize it")
        if vllm_config.lora_config is not None:
            raise ValueError("LoRA adapters are not supported on a factorized low-rank Llama (no LoRA "
                             "wrappers for its factor pairs); serve its dense export to use adapters")
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=LowRankLlamaDecoderLayer)
        ranks = getattr(vllm_config.model_config.hf_config, "low_rank_ranks", None) or {}
        self._factored_mlps = {m.group(1) for k in ranks if (m := _MLP_WEIGHT.match(k))}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The MLP weights of a factorized layer are loaded here, by their own names. vLLM's Llama loader
        # would rename `.gate_proj`/`.up_proj` (a substring match) into its merged `gate_up_proj`.
        params = dict(self.named_parameters())
        here = {m.group(1) for n in params if (m := _MLP_WEIGHT.match(n))}  # this pipeline stage's MLPs
        loaded: set[str] = set()

        def the_rest():
            for name, tensor in weights:
                m = _MLP_WEIGHT.match(name)
                if m is None or m.group(1) not in self._factored_mlps:
                    yield name, tensor
                    continue
                prefix = m.group(1)
                if prefix not in here:
                    continue  # the layer lives on another pipeline stage
                leaf, shard = self.get_submodule(prefix.rstrip(".")).param_for(name.removeprefix(prefix))
                param = params[prefix + leaf]
                if shard is None:
                    param.weight_loader(param, tensor)
                else:
                    param.weight_loader(param, tensor, shard)
                loaded.add(prefix + leaf)

        loaded |= super().load_weights(the_rest())
        return loaded
