"""The recipe's `model` and `pretrain` sections, the DeepSpeed config built from them, and the refusals
that happen before any worker starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.config import RecipeError, parse_recipe
from pipelines.models import ModelConfig
from pipelines.train.config import PretrainConfig
from pipelines.train.ds_config import deepspeed_config, lr_multiplier, param_groups
from pipelines.train.stage import PretrainInputError, checkpoint_key, inspect, preflight

RECIPE = """\
name: t
model:
  family: decoder
  preset: tiny
pretrain:
  num_workers: 2
  zero_stage: 2
"""


def test_recipe_sections_parse_and_unknown_keys_name_the_nearest():
    r = parse_recipe(RECIPE, "r.yaml")
    assert r.model.preset == "tiny" and r.pretrain.zero_stage == 2 and r.pretrain.global_batch == 16
    with pytest.raises(RecipeError) as exc:
        parse_recipe(RECIPE.replace("zero_stage", "zero_stag"), "r.yaml")
    assert "r.yaml:7: pretrain.zero_stag: unknown key (did you mean 'zero_stage'?)" in exc.value.problems[0]
    with pytest.raises(RecipeError) as exc:
        parse_recipe(RECIPE, "r.yaml", overrides=["model.preset=huge"])
    assert exc.value.problems[0].startswith("--set: model.preset")


def test_zero_conflicts_are_refused_naming_the_key():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(RECIPE, "r.yaml", overrides=["pretrain.offload_param=true"])
    assert "pretrain: offload_param needs zero_stage 3 (got 2)" in exc.value.problems[0]
    with pytest.raises(ValidationError, match="offload_optimizer needs zero_stage 1, 2 or 3"):
        PretrainConfig(zero_stage=0, offload_optimizer=True)
    with pytest.raises(ValidationError, match="precision fp16 needs GPUs"):
        PretrainConfig(precision="fp16", use_gpu=False)
    with pytest.raises(ValidationError, match="warmup_steps"):
        PretrainConfig(max_steps=10, warmup_steps=10)
    PretrainConfig(zero_stage=3, offload_param=True, offload_optimizer=True)  # the valid combination


def test_every_field_is_documented():
    for cls in (ModelConfig, PretrainConfig):
        for name, field in cls.model_fields.items():
            assert field.description and len(field.description) > 15, f"{cls.__name__}.{name} undocumented"


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_from_the_recipe(stage):
    cfg = PretrainConfig(
        zero_stage=stage,
        micro_batch_size=4,
        grad_accum_steps=3,
        grad_clip=0.5,
        precision="bf16",
        offload_optimizer=stage > 0,
        offload_param=stage == 3,
    )
    ds = deepspeed_config(cfg, world_size=2, on_gpu=False)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == (stage > 0) and ("offload_param" in zero) == (stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)
    assert "gradient_clipping" not in deepspeed_config(PretrainConfig(grad_clip=0), 1, False)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = PretrainConfig(max_steps=110, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_multiplier(0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, cfg) == pytest.approx(1.0)
    assert lr_multiplier(60, cfg) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_multiplier(110, cfg) == pytest.approx(0.1) and lr_multiplier(500, cfg) == pytest.approx(0.1)
    lin = cfg.model_copy(update={"schedule": "linear"})
    assert lr_multiplier(60, lin) == pytest.approx(0.55) and lr_multiplier(35, lin) == pytest.approx(0.775)


def test_weight_decay_skips_norms_and_biases():
    from pipelines.models import Vocab, build_model

    model = build_model(ModelConfig(family="encoder", preset="tiny"), Vocab(100, 0, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_checkpoint_key_ignores_the_length_of_training_only():
    m, p = ModelConfig(preset="tiny"), PretrainConfig()
    key = checkpoint_key(m, p, "fp", 0)
    assert checkpoint_key(m, p.model_copy(update={"max_steps": 900, "eval_interval": 7}), "fp", 0) == key
    assert checkpoint_key(m, p.model_copy(update={"lr": 1e-4}), "fp", 0) != key
    assert checkpoint_key(m, p, "other-data", 0) != key
    assert checkpoint_key(m.model_copy(update={"num_layers": 3}), p, "fp", 0) != key


# ------------------------------------------------------------------------------------------------
# refusals before workers start


def test_positions_shorter_than_the_sequence_are_refused(token_folder):
    data = inspect(token_folder, "pretrain.data")
    assert data.seq_len == 64 and data.train_rows > 16
    with pytest.raises(PretrainInputError) as exc:
        preflight(ModelConfig(preset="tiny", max_position_embeddings=32), PretrainConfig(), data)
    assert exc.value.problems[0].startswith(
        "model.max_position_embeddings: 32 is smaller than the sequence length 64"
    )
    with pytest.raises(
        PretrainInputError, match="model.max_position_embeddings: 128 .* 256 \\(tokenizer.seq_len"
    ):
        preflight(ModelConfig(preset="tiny", max_position_embeddings=128), PretrainConfig(), seq_len=256)
    preflight(
        ModelConfig(family="encoder-decoder", preset="tiny"), PretrainConfig(), seq_len=100_000
    )  # relative


def test_vocab_smaller_than_the_tokenizer_is_refused(token_folder):
    data = inspect(token_folder, "pretrain.data")
    with pytest.raises(PretrainInputError, match="model.vocab_size: 300 is smaller than the tokenizer's"):
        preflight(ModelConfig(preset="tiny", vocab_size=300), PretrainConfig(), data)
    # T5 needs room for its sentinels too
    with pytest.raises(PretrainInputError, match="100 sentinel token"):
        preflight(
            ModelConfig(family="encoder-decoder", preset="tiny", vocab_size=data.tokenizer_size + 10),
            PretrainConfig(),
            data,
        )


def test_tokenizer_that_does_not_match_the_data_is_refused(token_folder, tmp_path):
    from transformers import AutoTokenizer

    bad = tmp_path / "tok"
    shutil.copytree(token_folder, bad)
    small = AutoTokenizer.from_pretrained(str(bad / "tokenizer"))
    stats = json.loads((bad / "stats.json").read_text())
    stats["tokenizer"]["vocab_size"] = len(small) + 5
    (bad / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(PretrainInputError) as exc:
        inspect(str(bad), "pretrain.data")
    assert any("pretrain.data: tokenizer/vocab mismatch" in p for p in exc.value.problems)


def test_tokenizer_too_small_for_the_token_ids_is_refused(token_folder, tmp_path):
    from pipelines.train.token_data import write_token_data
    from tests.unit.train.conftest import pydoc_texts

    other = tmp_path / "small"
    write_token_data(str(other), pydoc_texts(20), seq_len=64, vocab_size=280)
    mixed = tmp_path / "mixed"
    shutil.copytree(token_folder, mixed)
    shutil.rmtree(mixed / "tokenizer")
    shutil.copytree(other / "tokenizer", mixed / "tokenizer")
    (mixed / "stats.json").unlink()
    with pytest.raises(PretrainInputError, match="token id \\d+ .* outside the tokenizer's 280 tokens"):
        inspect(str(mixed), "pretrain.data")


def test_empty_or_too_small_dataset_is_refused(token_folder, tmp_path):
    empty = tmp_path / "empty"
    shutil.copytree(token_folder, empty)
    for f in (empty / "train").iterdir():
        f.unlink()
    with pytest.raises(PretrainInputError, match="pretrain.data: .*train: the training set is empty"):
        inspect(str(empty), "pretrain.data")
    data = inspect(token_folder, "pretrain.data")
    with pytest.raises(PretrainInputError, match="fewer than one micro-batch per worker"):
        preflight(ModelConfig(preset="tiny"), PretrainConfig(num_workers=2, micro_batch_size=10_000), data)
    with pytest.raises(PretrainInputError, match="pretrain.data: .*nowhere: no such folder"):
        inspect(str(tmp_path / "nowhere"), "pretrain.data")


def test_layout_against_the_cluster_is_refused():
    with pytest.raises(
        PretrainInputError, match="pretrain.num_workers: 4 workers x 1 CPU .* the cluster has 2"
    ):
        preflight(ModelConfig(preset="tiny"), PretrainConfig(num_workers=4), resources={"CPU": 2.0})
    with pytest.raises(PretrainInputError, match="pretrain.num_workers: 2 GPU workers but the cluster has 1"):
        preflight(
            ModelConfig(preset="tiny"),
            PretrainConfig(num_workers=2, use_gpu=True),
            resources={"CPU": 8.0, "GPU": 1.0},
        )
    with pytest.raises(PretrainInputError, match="pretrain.precision: fp16 needs GPU workers"):
        preflight(ModelConfig(preset="tiny"), PretrainConfig(precision="fp16"), resources={"CPU": 8.0})
    preflight(ModelConfig(preset="tiny"), PretrainConfig(num_workers=2), resources={"CPU": 2.0})


def test_planner_refuses_before_anything_runs(token_folder, tmp_path):
    from cluster.orchestrate import plan_stages

    text = RECIPE + f"  data: {token_folder}\nrun_dir: {tmp_path / 'run'}\n"
    with pytest.raises(RecipeError) as exc:
        plan_stages(parse_recipe(text, "r.yaml", overrides=["model.max_position_embeddings=16"]))
    assert "model.max_position_embeddings: 16" in exc.value.problems[0]
    plans = plan_stages(parse_recipe(text, "r.yaml"))
    assert [p.name for p in plans] == ["pretrain"] and plans[0].inputs == {"data": token_folder}
    assert not Path(tmp_path / "run").exists()  # planning starts nothing
