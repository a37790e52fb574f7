"""The recipe's `model` section: which Transformer family, which size preset, and any field overridden.

```yaml
model:
  family: decoder        # decoder (Llama-style) | encoder-decoder (T5-style) | encoder (BERT-style)
  preset: small          # tiny | small | 125m | 1b | 7b
  num_layers: 6          # any generic field overrides the preset
  overrides:             # and any field of the transformers config class itself
    rms_norm_eps: 1.0e-5
```

Generic fields (hidden_size, num_layers, ...) are mapped onto each family's transformers config
(`LlamaConfig`, `T5Config`, `BertConfig`); a generic field that a family does not have (e.g.
`num_kv_heads` for BERT) is refused, naming it. The vocabulary size comes from the tokenizer unless set.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, model_validator

from pipelines.config_base import SectionConfig
from pipelines.models.presets import PRESETS

Family = Literal["decoder", "encoder-decoder", "encoder"]
PresetName = Literal["tiny", "small", "125m", "1b", "7b"]

# Generic field -> the families that have it.
_APPLIES: dict[str, tuple[str, ...]] = {
    "num_decoder_layers": ("encoder-decoder",),
    "num_kv_heads": ("decoder",),
    "head_dim": ("decoder", "encoder-decoder"),
    "max_position_embeddings": ("decoder", "encoder"),
    "rope_theta": ("decoder",),
}
_GENERIC = (
    "hidden_size",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "max_position_embeddings",
    "dropout",
    "tie_word_embeddings",
    "rope_theta",
    "initializer_range",
)


def hf_config_class(family: str):
    """The transformers config class of a family (imported lazily: transformers is slow to import)."""
    from transformers import BertConfig, LlamaConfig, T5Config

    return {"decoder": LlamaConfig, "encoder-decoder": T5Config, "encoder": BertConfig}[family]


def hf_model_class(family: str):
    """The transformers model class of a family, with the head its pretraining objective trains."""
    from transformers import BertForMaskedLM, LlamaForCausalLM, T5ForConditionalGeneration

    return {
        "decoder": LlamaForCausalLM,
        "encoder-decoder": T5ForConditionalGeneration,
        "encoder": BertForMaskedLM,
    }[family]


def hf_auto_class(family: str):
    """The transformers Auto class that builds a family's model from its config (`from_config` also
    partitions the model at construction under DeepSpeed ZeRO-3, see `HfDeepSpeedConfig`)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    return {
        "decoder": AutoModelForCausalLM,
        "encoder-decoder": AutoModelForSeq2SeqLM,
        "encoder": AutoModelForMaskedLM,
    }[family]


class ModelConfig(SectionConfig):
    """The model to pretrain: a transformers model built from a config (no downloaded weights)."""

    family: Family = "decoder"
    """decoder: Llama-style decoder-only (`LlamaForCausalLM`, next-token prediction); encoder-decoder:
    T5-style (`T5ForConditionalGeneration`, span corruption); encoder: BERT-style (`BertForMaskedLM`,
    masked-token prediction)."""
    preset: PresetName = "small"
    """Size preset: tiny (tests), small (the quickstart, a few minutes on 2 CPUs), 125m, 1b, 7b (GPU
    clusters). The generic fields below and `overrides` change any of its values."""
    hidden_size: int | None = Field(default=None, ge=8)
    """Width of the residual stream (d_model). None: the preset's."""
    num_layers: int | None = Field(default=None, ge=1)
    """Transformer blocks (for encoder-decoder: encoder blocks). None: the preset's."""
    num_decoder_layers: int | None = Field(default=None, ge=1)
    """encoder-decoder only: decoder blocks. None: the preset's."""
    num_heads: int | None = Field(default=None, ge=1)
    """Attention heads per layer. None: the preset's."""
    num_kv_heads: int | None = Field(default=None, ge=1)
    """decoder only: key/value heads (grouped-query attention; equal to num_heads for multi-head
    attention). Must divide num_heads. None: the preset's."""
    head_dim: int | None = Field(default=None, ge=4)
    """decoder and encoder-decoder: width of one head (T5's d_kv). None: the preset's (decoder:
    hidden_size / num_heads)."""
    intermediate_size: int | None = Field(default=None, ge=4)
    """Width of the feed-forward layer (T5's d_ff). None: the preset's."""
    max_position_embeddings: int | None = Field(default=None, ge=8)
    """decoder and encoder: longest sequence the position embedding covers; must be at least the
    tokenize stage's seq_len (checked before training). T5 uses relative positions and has no limit.
    None: the preset's."""
    vocab_size: int | None = Field(default=None, ge=8)
    """Embedding rows. None: the tokenizer's vocabulary (plus the objective's added tokens: T5 sentinels,
    BERT's mask token), rounded up to `pad_vocab_to_multiple_of`. Set explicitly, it must be at least
    that many (a smaller one is refused: token ids would fall outside the embedding)."""
    pad_vocab_to_multiple_of: int = Field(default=64, ge=1)
    """Round the vocabulary (from the tokenizer) up to a multiple of this: matmul kernels run faster on
    aligned shapes. 1 keeps it exact."""
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Dropout probability (attention and hidden dropout where the family has them). None: 0.0 for the
    decoder (Llama has none), 0.1 for T5 and BERT."""
    tie_word_embeddings: bool | None = None
    """Share the input embedding with the output projection. None: the preset's (tied, except the decoder's
    1b and 7b). For T5, transformers 5 always ties them and `false` only turns off the d_model**-0.5
    scaling of the decoder output (T5 v1.1's convention), which makes the initial loss several times ln(V)."""
    rope_theta: float | None = Field(default=None, gt=0)
    """decoder only: base of the rotary position frequencies. None: 10000."""
    initializer_range: float | None = Field(default=None, gt=0)
    """Standard deviation of the initial weights (T5: its `initializer_factor`). None: the family's
    transformers default (0.02; T5: 1.0)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """transformers attention kernel: sdpa (PyTorch's scaled_dot_product_attention; CPU and GPU), eager
    (plain matmuls), flash_attention_2 (GPUs with the flash-attn package)."""
    overrides: dict[str, Any] = {}
    """Any other field of the family's transformers config class (`LlamaConfig`, `T5Config`,
    `BertConfig`), e.g. `{rms_norm_eps: 1.0e-5}` or `{feed_forward_proj: relu}`; applied last."""

    @model_validator(mode="after")
    def _fits_family(self) -> ModelConfig:
        problems = []
        for name, families in _APPLIES.items():
            if getattr(self, name) is not None and self.family not in families:
                problems.append(
                    f"{name} does not apply to the {self.family} family (only to {', '.join(families)})"
                )
        if self.overrides:
            valid = set(hf_config_class(self.family)().to_dict()) | {"decoder_start_token_id"}
            for key in self.overrides:
                if key not in valid:
                    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    problems.append(
                        f"overrides.{key}: not a field of {hf_config_class(self.family).__name__}{hint}"
                    )
        r = self.resolved()
        if r.get("num_kv_heads") and r["num_heads"] % r["num_kv_heads"]:
            problems.append(f"num_kv_heads={r['num_kv_heads']} must divide num_heads={r['num_heads']}")
        if self.family != "encoder-decoder" and not r.get("head_dim") and r["hidden_size"] % r["num_heads"]:
            problems.append(
                f"num_heads={r['num_heads']} must divide hidden_size={r['hidden_size']} (or set head_dim)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved(self) -> dict[str, Any]:
        """The generic fields: the preset's values with the recipe's set fields on top."""
        values = dict(PRESETS[self.family][self.preset])
        for name in _GENERIC:
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        return values
