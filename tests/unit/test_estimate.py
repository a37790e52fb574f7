"""cluster/estimate.py: parameter counts on the meta device and the ZeRO memory accounting."""

from __future__ import annotations

import pytest

from cluster.estimate import GIB, RUNTIME_BYTES, Shape, shape_guess, shape_of_preset, training_memory
from pipelines.models import ModelConfig
from pipelines.train.config import PretrainConfig


def test_preset_parameters_match_the_model_they_copy():
    # Llama-2-7B has 6,738,415,616 parameters with its 32,000-token vocabulary
    assert shape_of_preset(ModelConfig(preset="7b"), 32000, "t").parameters == 6_738_415_616
    guess = shape_guess("/models/Llama-2-7b-hf", (["q_proj", "v_proj"], 8))
    assert guess.parameters == 6_738_415_616
    assert guess.lora_trainable == 32 * 2 * 8 * (4096 + 4096)
    assert shape_guess("/models/my-model") is None


@pytest.mark.parametrize(
    "zero,weights,grads,optim",
    [(0, 2, 2, 12), (1, 2, 2, 12 / 4), (2, 2, 2 / 4, 12 / 4), (3, 2 / 4, 2 / 4, 12 / 4)],
)
def test_zero_stages_shard_what_they_should(zero, weights, grads, optim):
    shape = Shape(parameters=GIB, hidden=64, layers=2, vocab=100, source="t")
    cfg = PretrainConfig(num_workers=4, zero_stage=zero, precision="bf16", micro_batch_size=1)
    parts = training_memory(shape, cfg, seq_len=16)
    assert parts["weights"] / GIB == pytest.approx(weights)
    assert parts["gradients"] / GIB == pytest.approx(grads)
    assert parts["optimizer"] / GIB == pytest.approx(optim)
    assert parts["runtime"] == RUNTIME_BYTES


def test_lora_trains_few_parameters_and_checkpointing_saves_activations():
    shape = Shape(parameters=GIB, hidden=4096, layers=32, vocab=32000, source="t")
    cfg = PretrainConfig(num_workers=2, zero_stage=1, micro_batch_size=4)
    full, lora = training_memory(shape, cfg, 1024), training_memory(shape, cfg, 1024, trainable=GIB // 100)
    assert lora["optimizer"] < full["optimizer"] / 50 and lora["weights"] == full["weights"]
    ckpt = training_memory(shape, cfg.model_copy(update={"activation_checkpointing": True}), 1024)
    assert ckpt["activations"] < full["activations"] / 3
