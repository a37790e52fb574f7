"""Continued pretraining (`pretrain.init_from`): the folder's config stands for the model section in every
check, and folders or tokenizers the workers could not start from are refused before any worker starts."""

from __future__ import annotations

import json

import pytest

from pipelines.models import Vocab, count_parameters, hf_config
from pipelines.models.from_folder import model_section_from_folder
from pipelines.train.config import PretrainConfig
from pipelines.train.stage import PretrainInputError, init_model_section, inspect, preflight


def save_llama(folder, tokenizer_dir, **config):
    """A small Llama folder with the token data's tokenizer, shaped like a pruned model: 4 heads of 16
    (64 wide) on a 96-wide residual stream, so head_dim cannot be derived from hidden_size."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(
        vocab_size=len(tok),
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=40,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ) | config
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_the_folders_config_is_the_model_section(token_folder, tmp_path):
    model = save_llama(tmp_path / "m", f"{token_folder}/tokenizer")
    section = model_section_from_folder(str(tmp_path / "m"))
    r = section.resolved()
    shape = (r["hidden_size"], r["num_layers"], r["num_heads"], r["num_kv_heads"], r["head_dim"])
    assert shape == (96, 2, 4, 2, 16)
    assert section.overrides == {"rms_norm_eps": 1e-6, "attention_bias": False, "mlp_bias": False}
    vocab = Vocab(size=model.config.vocab_size, pad_id=0, eos_id=0)
    # the section builds the same model: every check (vocabulary, positions, FLOPs) sees what will train
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(section, vocab)["total"] == sum(unique.values())
    cfg = hf_config(section, vocab)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.rms_norm_eps) == (model.config.vocab_size, 40, 1e-6)
    # the stage reads it through `pretrain.init_from`
    assert init_model_section(PretrainConfig(init_from=str(tmp_path / "m"))) == section
    assert init_model_section(PretrainConfig()) is None


def test_a_folder_that_cannot_start_a_run_is_refused(token_folder, tmp_path):
    with pytest.raises(PretrainInputError, match=r"pretrain.init_from: .*/none is not a folder"):
        init_model_section(PretrainConfig(init_from=str(tmp_path / "none")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainInputError, match="has no config.json: not a Hugging Face model folder"):
        init_model_section(PretrainConfig(init_from=str(tmp_path / "empty")))
    (tmp_path / "empty" / "config.json").write_text("{")
    with pytest.raises(PretrainInputError, match="empty/config.json cannot be read .*not a valid JSON"):
        init_model_section(PretrainConfig(init_from=str(tmp_path / "empty")))
    save_llama(tmp_path / "lr", f"{token_folder}/tokenizer")
    cfg = json.loads((tmp_path / "lr" / "config.json").read_text())
    cfg["architectures"] = ["RaylmLowRankLlamaForCausalLM"]
    (tmp_path / "lr" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainInputError, match="holds a RaylmLowRankLlamaForCausalLM; .*export: dense"):
        init_model_section(PretrainConfig(init_from=str(tmp_path / "lr")))
    # a pipeline/tensor layout builds its own model per stage: refused when the recipe loads
    with pytest.raises(ValueError, match="init_from with a pipeline/tensor layout"):
        PretrainConfig(init_from="x", num_workers=2, parallel={"tp": 2})


def test_the_data_must_be_tokenized_with_the_folders_tokenizer(token_folder, tmp_path):
    data = inspect(token_folder, "pretrain.data")
    save_llama(tmp_path / "m", f"{token_folder}/tokenizer")
    ok = PretrainConfig(init_from=str(tmp_path / "m"), num_workers=1, micro_batch_size=2)
    preflight(init_model_section(ok), ok, data)  # the same tokenizer: accepted
    # another tokenizer (here: one more token) would give the ids other meanings
    from transformers import AutoTokenizer

    save_llama(tmp_path / "other", f"{token_folder}/tokenizer")
    tok = AutoTokenizer.from_pretrained(f"{token_folder}/tokenizer")
    tok.add_tokens(["<domain>"])
    tok.save_pretrained(tmp_path / "other")
    bad = ok.model_copy(update={"init_from": str(tmp_path / "other")})
    with pytest.raises(PretrainInputError) as exc:
        preflight(init_model_section(bad), bad, data)
    (problem,) = exc.value.problems
    assert problem.startswith(f"pretrain.init_from: {tmp_path / 'other'}: its tokenizer ({len(tok)} tokens)")
    assert f"tokenizer.path: {tmp_path / 'other'}" in problem
    # the folder's positions must cover the data's sequences; the message names the folder, not `model`
    save_llama(tmp_path / "short", f"{token_folder}/tokenizer", max_position_embeddings=32)
    short = ok.model_copy(update={"init_from": str(tmp_path / "short")})
    with pytest.raises(PretrainInputError) as exc:
        preflight(init_model_section(short), short, data)
    assert exc.value.problems[0].startswith(
        f"pretrain.init_from ({tmp_path / 'short'}/config.json): max_position_embeddings: 32 is smaller "
        "than the sequence length 64"
    )


def test_a_recipe_with_both_a_model_section_and_init_from_is_refused(token_folder, tmp_path):
    from cluster.config import RecipeError, parse_recipe
    from cluster.stages.pretrain import plan
    from pipelines.run_folder import RunFolder

    save_llama(tmp_path / "m", f"{token_folder}/tokenizer")
    text = (
        f"name: t\nrun_dir: {tmp_path / 'run'}\nmodel: {{preset: tiny}}\n"
        f"pretrain: {{data: {token_folder}, init_from: {tmp_path / 'm'}, num_workers: 1}}\n"
    )
    with pytest.raises(RecipeError, match="model: set together with pretrain.init_from"):
        plan(parse_recipe(text), RunFolder(str(tmp_path / "run")))
    # without it, the stage's inputs include the folder (a re-run of what wrote it re-runs this stage)
    stage = plan(parse_recipe(text.replace("model: {preset: tiny}\n", "")), RunFolder(str(tmp_path / "run")))
    assert stage.inputs == {"data": token_folder, "init_from": str(tmp_path / "m")}
