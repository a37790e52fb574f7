"""Size presets of the three Transformer families, in `ModelConfig`'s generic field names.

"tiny" is for tests (a forward and backward in milliseconds on one CPU core), "small" for the quickstart
(a few hundred steps in a few minutes on 2 CPUs), "125m", "1b" and "7b" for GPU clusters. The sizes are
those of well-known models of each family (Llama/SmolLM/TinyLlama, T5 v1.1, BERT); the parameter counts in
docs/pretrain.md are measured with a 32,000-token vocabulary (the vocabulary always comes from the
tokenizer, so the embedding share differs per run).
"""

from __future__ import annotations

from typing import Any

Preset = dict[str, Any]

DECODER: dict[str, Preset] = {
    # Llama-style: RMSNorm, SwiGLU MLP, rotary positions, grouped-query attention.
    # head_dim 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (16 is refused at the first
    # decode step), and the tiny model must load there too (tests/integration/test_finetune.py loads it).
    "tiny": dict(
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=176,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "small": dict(
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=704,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    "125m": dict(
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),  # SmolLM2-135M's shape
    "1b": dict(
        hidden_size=2048,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        intermediate_size=5632,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),  # TinyLlama-1.1B's shape
    "7b": dict(
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        intermediate_size=11008,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),  # Llama-2-7B's shape
}

ENCODER_DECODER: dict[str, Preset] = {
    # T5 v1.1-style: gated-GELU feed-forward, relative position buckets (no position limit); tied head with
    # the decoder output scaled by d_model**-0.5 (transformers 5 ties T5's head in any case).
    "tiny": dict(
        hidden_size=64, num_layers=2, num_decoder_layers=2, num_heads=4, head_dim=16, intermediate_size=128
    ),
    "small": dict(
        hidden_size=256, num_layers=4, num_decoder_layers=4, num_heads=4, head_dim=64, intermediate_size=704
    ),
    "125m": dict(
        hidden_size=768, num_layers=6, num_decoder_layers=6, num_heads=12, head_dim=64, intermediate_size=2048
    ),
    "1b": dict(
        hidden_size=2048,
        num_layers=10,
        num_decoder_layers=10,
        num_heads=32,
        head_dim=64,
        intermediate_size=5120,
    ),
    "7b": dict(
        hidden_size=4096,
        num_layers=16,
        num_decoder_layers=16,
        num_heads=64,
        head_dim=64,
        intermediate_size=10240,
    ),
}

ENCODER: dict[str, Preset] = {
    # BERT-style: learned absolute positions, post-LayerNorm, GELU, MLM head tied to the embeddings.
    "tiny": dict(
        hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_position_embeddings=512
    ),
    "small": dict(
        hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_position_embeddings=1024
    ),
    "125m": dict(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_position_embeddings=2048
    ),  # BERT-base
    "1b": dict(
        hidden_size=2048, num_layers=20, num_heads=32, intermediate_size=8192, max_position_embeddings=2048
    ),
    "7b": dict(
        hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=16384, max_position_embeddings=4096
    ),
}

PRESETS: dict[str, dict[str, Preset]] = {
    "decoder": DECODER,
    "encoder-decoder": ENCODER_DECODER,
    "encoder": ENCODER,
}
PRESET_NAMES = ("tiny", "small", "125m", "1b", "7b")
