"""A model section read from a Hugging Face folder, for continued pretraining (`pretrain.init_from`).

The pretrain stage's checks (positions against the sequence length, the vocabulary against the
tokenizer, the FLOPs count, the checkpoint key) all read a `ModelConfig`. For a run that starts from
trained weights, that section is the folder's own config, read here, so every check sees the model
that will actually train. The weights themselves are loaded by the workers (`from_pretrained`).

Only Llama-style decoders are read: that is what raylm's pretraining, compression (structured pruning,
distillation) and the reference model produce. Folders with custom modelling code (factorized low-rank,
weight-shared) are refused, naming the architecture: continued pretraining of those would need their
own modelling classes in every worker.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.models.build import ModelConfigError
from pipelines.models.config import ModelConfig

DECODER_ARCHITECTURES = ("LlamaForCausalLM",)
"""Architectures `init_from` accepts (the decoder family's class)."""

_OVERRIDES = ("rms_norm_eps", "attention_bias", "mlp_bias")
"""Fields of the folder's config with no generic `ModelConfig` field, carried as overrides."""


def read_folder_config(folder: str, key: str):
    """The folder's transformers config (its defaults filled in, as the workers will load it); a missing
    folder or config.json, or one transformers cannot read, names `key`."""
    if not Path(folder).is_dir():
        raise ModelConfigError(f"{key}: {folder} is not a folder")
    if not (Path(folder) / "config.json").is_file():
        raise ModelConfigError(f"{key}: {folder} has no config.json: not a Hugging Face model folder")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"{key}: {folder}/config.json cannot be read ({exc})") from None


def model_section_from_folder(folder: str, key: str = "pretrain.init_from") -> ModelConfig:
    """The decoder `ModelConfig` that describes the folder's model exactly (vocabulary unpadded)."""
    c = read_folder_config(folder, key)
    arch = c.architectures or []
    if not any(a in DECODER_ARCHITECTURES for a in arch):
        raise ModelConfigError(
            f"{key}: {folder} holds a {'/'.join(arch) or 'model without architectures'}; continued "
            f"pretraining starts from {' or '.join(DECODER_ARCHITECTURES)} folders (raylm's decoder, "
            "its pruned or distilled models, the reference model). Factorized low-rank and weight-shared "
            "folders: export them dense first (low_rank `export: dense`)"
        )
    fields = dict(
        family="decoder",
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        vocab_size=c.vocab_size,
        pad_vocab_to_multiple_of=1,
        tie_word_embeddings=c.tie_word_embeddings,
        rope_theta=(c.rope_parameters or {}).get("rope_theta"),
        overrides={k: getattr(c, k) for k in _OVERRIDES},
    )
    try:
        return ModelConfig(**fields)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ModelConfigError(f"{key}: {folder}/config.json: {exc}") from None


def folder_tokenizer_differs(folder: str, tokenizer_dir: str) -> str | None:
    """Why the folder's own tokenizer and the token data's differ (token ids would mean other tokens),
    or None when they agree or the folder has no tokenizer of its own."""
    if not any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    mine = AutoTokenizer.from_pretrained(folder).get_vocab()
    data = AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()
    if mine == data:
        return None
    moved = sum(1 for t, i in data.items() if mine.get(t) != i)
    return (
        f"its tokenizer ({len(mine)} tokens) is not the one the data was tokenized with "
        f"({tokenizer_dir}: {len(data)} tokens, {moved} of them with another id or unknown to the model)"
    )
