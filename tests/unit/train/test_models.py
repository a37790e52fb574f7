"""Model presets: every family builds from a config and trains a step; fields override the preset."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from pipelines.models import PRESET_NAMES, ModelConfig, ModelConfigError, Vocab, build_model, count_parameters
from pipelines.models.build import hf_config, model_vocab_size

VOCAB = Vocab(size=1000, pad_id=0, eos_id=2, bos_id=1)


@pytest.mark.parametrize(
    "family,cls",
    [
        ("decoder", "LlamaForCausalLM"),
        ("encoder-decoder", "T5ForConditionalGeneration"),
        ("encoder", "BertForMaskedLM"),
    ],
)
def test_tiny_presets_build_forward_and_backward(family, cls):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, preset="tiny"), VOCAB)
    assert type(model).__name__ == cls
    ids = torch.randint(3, 1000, (2, 16))
    kwargs = {"decoder_input_ids": ids[:, :5]} if family == "encoder-decoder" else {}
    logits = model(input_ids=ids, **kwargs).logits
    assert logits.shape[-1] == 1024  # 1000 rounded up to a multiple of 64
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder", "encoder"])
def test_presets_grow_in_size(family):
    sizes = [
        count_parameters(ModelConfig(family=family, preset=p), Vocab(32000, 0, 2))["total"]
        for p in PRESET_NAMES
    ]
    assert sizes == sorted(sizes)
    assert sizes[0] < 3e6 and 0.9e8 < sizes[2] < 1.6e8 and 0.9e9 < sizes[3] < 1.4e9 and 6e9 < sizes[4] < 8e9


def test_generic_fields_and_overrides_reach_the_transformers_config():
    cfg = ModelConfig(
        family="decoder",
        preset="tiny",
        num_layers=3,
        hidden_size=96,
        num_heads=6,
        num_kv_heads=3,
        max_position_embeddings=256,
        overrides={"rms_norm_eps": 1e-5},
    )
    c = hf_config(cfg, VOCAB)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (3, 96, 6, 3)
    assert c.max_position_embeddings == 256 and c.rms_norm_eps == 1e-5
    assert c.intermediate_size == 176  # untouched preset value
    t5 = hf_config(ModelConfig(family="encoder-decoder", preset="tiny", num_decoder_layers=1), VOCAB)
    assert (t5.num_layers, t5.num_decoder_layers, t5.decoder_start_token_id) == (2, 1, 0)


def test_fields_of_another_family_are_refused_by_name():
    with pytest.raises(ValidationError, match="num_kv_heads does not apply to the encoder family"):
        ModelConfig(family="encoder", num_kv_heads=2)
    with pytest.raises(ValidationError, match="max_position_embeddings does not apply"):
        ModelConfig(family="encoder-decoder", max_position_embeddings=512)
    with pytest.raises(
        ValidationError, match="overrides.rms_norm_esp: not a field of LlamaConfig.*rms_norm_eps"
    ):
        ModelConfig(overrides={"rms_norm_esp": 1e-5})
    with pytest.raises(ValidationError, match="num_kv_heads=3 must divide num_heads=4"):
        ModelConfig(preset="tiny", num_heads=4, num_kv_heads=3)


def test_vocab_comes_from_the_tokenizer_and_a_smaller_one_is_refused():
    assert model_vocab_size(ModelConfig(pad_vocab_to_multiple_of=1), VOCAB) == 1000
    assert model_vocab_size(ModelConfig(), VOCAB) == 1024
    assert model_vocab_size(ModelConfig(vocab_size=1200), VOCAB) == 1200
    with pytest.raises(ModelConfigError, match="model.vocab_size: 900 is smaller than the tokenizer's"):
        model_vocab_size(ModelConfig(vocab_size=900), VOCAB)
