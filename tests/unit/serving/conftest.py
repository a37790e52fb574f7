"""Fixtures for the serving unit tests: model folders that hold a real `config.json` and weight files of a
known size (the planner reads only the config and the files' sizes), so no weights are loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# SmolLM2-135M-Instruct's config.json (the reference model), as converted by `raylm setup`.
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
    "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192, "vocab_size": 49152,
    "tie_word_embeddings": True,
}
SMOLLM2_WEIGHT_BYTES = 269_060_552  # model.safetensors of the bf16 conversion

# Published shapes: Llama-2-7B (MHA) and Llama-3-8B (GQA, 8 KV heads).
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
    "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "max_position_embeddings": 4096, "vocab_size": 32000,
}
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
    "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "vocab_size": 128256,
}


def make_model_folder(root: Path, config: dict, weight_bytes: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    with open(root / "model.safetensors", "wb") as f:  # sparse: the size is all the planner reads
        f.truncate(weight_bytes)
    return root


@pytest.fixture
def smollm2_folder(tmp_path) -> Path:
    return make_model_folder(tmp_path / "smollm2", SMOLLM2, SMOLLM2_WEIGHT_BYTES)
