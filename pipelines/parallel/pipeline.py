"""The Llama-style decoder as a DeepSpeed `PipelineModule`: embedding, decoder blocks, final norm, head.

Each layer wraps the transformers module itself (`nn.Embedding`, `LlamaDecoderLayer`, `LlamaRMSNorm`), so
the maths is transformers' and the parameter names map one to one onto a `LlamaForCausalLM` state dict:
weights are loaded from a built model and exported back into one Hugging Face folder. Between stages
flows `(hidden_states, position_ids)`: every block rebuilds the rotary embedding and the packed-document
causal mask from the position ids (what `LlamaModel.forward` does once), so any cut between blocks is
valid. A tied embedding (`tie_word_embeddings`) is a `TiedLayerSpec`: the first and the last stage each
hold a copy whose gradients DeepSpeed all-reduces, so the two copies stay equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipelines.train.objectives import token_cross_entropy

TIED_KEY = "embed"


class EmbeddingPipe(nn.Embedding):
    """(input_ids, position_ids) -> (hidden, position_ids). As the tied head: `head_forward`."""

    def __init__(self, config):
        # padding_idx as LlamaModel's embedding: the pad row gets no gradient through the lookup
        super().__init__(config.vocab_size, config.hidden_size, config.pad_token_id)

    def forward(self, inputs):
        input_ids, position_ids = inputs
        return super().forward(input_ids), position_ids

    def hf_names(self) -> dict[str, str]:
        return {"weight": "model.embed_tokens.weight"}


def head_forward(embedding: EmbeddingPipe, hidden):
    """The tied output projection: logits = hidden @ embedding.T."""
    return nn.functional.linear(hidden, embedding.weight)


class BlockPipe(nn.Module):
    """One `LlamaDecoderLayer`, with the rotary embedding and causal mask it needs rebuilt per block."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.config = config
        self.layer_idx = layer_idx
        self.layer = LlamaDecoderLayer(config, layer_idx)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)  # buffers only, no parameters

    def forward(self, inputs):
        from transformers.masking_utils import create_causal_mask

        hidden, position_ids = inputs
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=None,
            past_key_values=None,
            position_ids=position_ids,
        )
        rope = self.rotary_emb(hidden, position_ids=position_ids)
        hidden = self.layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=position_ids)
        return hidden, position_ids

    def hf_names(self) -> dict[str, str]:
        return {
            n: f"model.layers.{self.layer_idx}.{n.removeprefix('layer.')}" for n, _ in self.named_parameters()
        }


class NormPipe(nn.Module):
    """The final RMSNorm; drops the position ids (the head needs only the hidden states)."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, inputs):
        return self.norm(inputs[0])

    def hf_names(self) -> dict[str, str]:
        return {"norm.weight": "model.norm.weight"}


class HeadPipe(nn.Linear):
    """The untied output projection (`lm_head`)."""

    def __init__(self, config):
        super().__init__(config.hidden_size, config.vocab_size, bias=False)

    def hf_names(self) -> dict[str, str]:
        return {"weight": "lm_head.weight"}


def pipeline_loss(logits, labels):
    """The same next-token objective as one process: mean cross-entropy over the predicted tokens."""
    return token_cross_entropy(logits, labels)[0]


def layer_specs(config) -> list[Any]:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    tied = bool(config.tie_word_embeddings)
    specs: list[Any] = [
        TiedLayerSpec(TIED_KEY, EmbeddingPipe, config) if tied else LayerSpec(EmbeddingPipe, config)
    ]
    specs += [LayerSpec(BlockPipe, config, i) for i in range(config.num_hidden_layers)]
    specs.append(LayerSpec(NormPipe, config))
    specs.append(
        TiedLayerSpec(TIED_KEY, EmbeddingPipe, config, forward_fn=head_forward)
        if tied
        else LayerSpec(HeadPipe, config)
    )
    return specs


def build_pipeline(config, layout, partition_method: str = "parameters", dynamic_shape: bool = False):
    """This rank's stage of the decoder (`config`: a transformers `LlamaConfig`). `dynamic_shape`: the
    micro-batches' sequence lengths vary (padded SFT records), so each send carries its shape."""
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    # the same rank order as pipelines/parallel/layout.py (axes pipe, data, model)
    topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    return PipelineModule(
        layers=layer_specs(config),
        topology=topology,
        loss_fn=pipeline_loss,
        partition_method=partition_method,
        activation_checkpoint_interval=0,
        dynamic_shape=dynamic_shape,
    )


def _pipe_modules(pipe) -> list[nn.Module]:
    """The raylm layers this stage holds (a tied embedding once)."""
    seen, out = set(), []
    for m in pipe.modules():
        if hasattr(m, "hf_names") and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def load_hf_weights(pipe, state: dict[str, torch.Tensor]) -> None:
    """Copy this stage's weights from a `LlamaForCausalLM` state dict (the same start as one process).
    A tied embedding on the last stage takes the input embedding's weights."""
    with torch.no_grad():
        for m in _pipe_modules(pipe):
            params = dict(m.named_parameters())
            for local, hf in m.hf_names().items():
                src = state.get(hf)
                if src is None and hf == "lm_head.weight":
                    src = state["model.embed_tokens.weight"]
                params[local].copy_(src)


def stage_state(pipe) -> dict[str, torch.Tensor]:
    """This stage's weights under their Hugging Face names (CPU copies)."""
    out = {}
    for m in _pipe_modules(pipe):
        params = dict(m.named_parameters())
        for local, hf in m.hf_names().items():
            out[hf] = params[local].detach().to("cpu", copy=True)
    return out


def export_pipeline_hf(pipe, config, out, groups) -> None:
    """Every stage's weights gathered on rank 0 and written as ONE Hugging Face folder that
    `AutoModelForCausalLM.from_pretrained` loads. Collective over the first data-parallel replica's
    ranks (the other replicas hold the same weights): every rank calls it. With tensor parallelism in the
    stages, each tensor rank's shards are joined back (`pipeline_tensor.merge_shards`)."""
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from pipelines.parallel.pipeline_tensor import merge_shards

    layout = groups.layout
    mine = (groups.tp_index, stage_state(pipe) if groups.dp_index == 0 else {})
    gathered: list[Any] = [None] * layout.world if groups.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if groups.rank != 0:
        return
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for tp_index, part in gathered:
        for name, tensor in part.items():
            pieces.setdefault(name, {})[tp_index] = tensor
    if config.tie_word_embeddings:
        pieces.pop("lm_head.weight", None)
    cfg = config.__class__.from_dict(config.to_dict())
    cfg.use_cache = True
    model = LlamaForCausalLM(cfg)
    full = model.state_dict()
    state = {}
    for name, by_rank in pieces.items():
        parts = [by_rank[t] for t in sorted(by_rank)]
        state[name] = merge_shards(parts, full[name].shape) if name in full else parts[0]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"pipeline export: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(str(out), safe_serialization=True)
