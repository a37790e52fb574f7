"""Building a transformers model from a `ModelConfig` and the tokenizer's vocabulary (no downloaded
weights): `hf_config()` makes the family's config object, `build_model()` the randomly initialised model,
`count_parameters()` its size (on the meta device, so a 7B count costs no memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.models.config import ModelConfig, hf_auto_class, hf_config_class


@dataclass(frozen=True)
class Vocab:
    """What a model needs to know about its tokenizer."""

    size: int
    """Tokens the tokenizer knows, special and added tokens included (`len(tokenizer)`)."""
    pad_id: int
    eos_id: int
    bos_id: int | None = None


class ModelConfigError(ValueError):
    """A model section that cannot work with the tokenizer or the data; names the field."""


def model_vocab_size(cfg: ModelConfig, vocab: Vocab) -> int:
    """Embedding rows: `model.vocab_size` if set (at least the tokenizer's), else the tokenizer's rounded
    up to `pad_vocab_to_multiple_of`."""
    if cfg.vocab_size is not None:
        if cfg.vocab_size < vocab.size:
            raise ModelConfigError(
                f"model.vocab_size: {cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                f"({vocab.size} tokens, the objective's added tokens included): token ids would fall outside "
                "the embedding. Leave it unset to take the tokenizer's"
            )
        return cfg.vocab_size
    m = cfg.pad_vocab_to_multiple_of
    return -(-vocab.size // m) * m


def hf_config(cfg: ModelConfig, vocab: Vocab) -> Any:
    """The family's transformers config for this model section and vocabulary."""
    r = cfg.resolved()
    common = dict(
        vocab_size=model_vocab_size(cfg, vocab),
        pad_token_id=vocab.pad_id,
        eos_token_id=vocab.eos_id,
        tie_word_embeddings=r.get("tie_word_embeddings", True),
        use_cache=False,
    )
    if cfg.family == "decoder":
        kw = dict(
            hidden_size=r["hidden_size"],
            num_hidden_layers=r["num_layers"],
            num_attention_heads=r["num_heads"],
            num_key_value_heads=r.get("num_kv_heads", r["num_heads"]),
            intermediate_size=r["intermediate_size"],
            max_position_embeddings=r["max_position_embeddings"],
            attention_dropout=r.get("dropout", 0.0),
            bos_token_id=vocab.bos_id,
            rope_parameters={"rope_type": "default", "rope_theta": r.get("rope_theta", 10000.0)},
        )
        if r.get("head_dim"):
            kw["head_dim"] = r["head_dim"]
        if r.get("initializer_range"):
            kw["initializer_range"] = r["initializer_range"]
    elif cfg.family == "encoder-decoder":
        kw = dict(
            d_model=r["hidden_size"],
            num_layers=r["num_layers"],
            num_decoder_layers=r.get("num_decoder_layers", r["num_layers"]),
            num_heads=r["num_heads"],
            d_kv=r.get("head_dim", r["hidden_size"] // r["num_heads"]),
            d_ff=r["intermediate_size"],
            feed_forward_proj="gated-gelu",
            dropout_rate=r.get("dropout", 0.1),
            decoder_start_token_id=vocab.pad_id,
            is_encoder_decoder=True,
        )
        if r.get("initializer_range"):
            kw["initializer_factor"] = r["initializer_range"]
    else:
        p = r.get("dropout", 0.1)
        kw = dict(
            hidden_size=r["hidden_size"],
            num_hidden_layers=r["num_layers"],
            num_attention_heads=r["num_heads"],
            intermediate_size=r["intermediate_size"],
            max_position_embeddings=r["max_position_embeddings"],
            hidden_dropout_prob=p,
            attention_probs_dropout_prob=p,
            type_vocab_size=1,
            bos_token_id=vocab.bos_id,
        )
        if r.get("initializer_range"):
            kw["initializer_range"] = r["initializer_range"]
    kw = {**common, **kw, **cfg.overrides}
    config = hf_config_class(cfg.family)(**kw)
    config._attn_implementation = cfg.attn_implementation
    return config


def max_positions(cfg: ModelConfig) -> int | None:
    """The longest sequence the model's positions cover (None: relative positions, no limit)."""
    if cfg.family == "encoder-decoder":
        return None
    return int(cfg.overrides.get("max_position_embeddings", cfg.resolved()["max_position_embeddings"]))


def build_model(cfg: ModelConfig, vocab: Vocab, dtype=None, device: str | None = None):
    """A randomly initialised transformers model (the family's pretraining head included)."""
    import torch

    config = hf_config(cfg, vocab)
    ctx = torch.device(device) if device else _nullcontext()
    with ctx:
        model = hf_auto_class(cfg.family).from_config(config, attn_implementation=cfg.attn_implementation)
    if dtype is not None:
        model = model.to(dtype)
    return model


def count_parameters(cfg: ModelConfig, vocab: Vocab) -> dict[str, int]:
    """Parameter counts (total, in embeddings, in the rest), on the meta device: no memory is used."""
    model = build_model(cfg, vocab, device="meta")
    seen, total, embedding = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if "embed" in name or "shared" in name or "word_embeddings" in name or "position_embeddings" in name:
            embedding += p.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
