"""Tokenizer training and loading (no Ray): a Hugging Face folder with the special tokens and the chat
template, and the fast encoder the packing workers use."""

from __future__ import annotations

import pytest

from pipelines.data.config import TokenizerConfig
from pipelines.data.tokenizer import copy_given, encode_batch, load_fast, train_bpe

TEXTS = [f"The {w} sat on the mat and looked at the {v} for a while." for w in ("cat", "dog", "bird", "fox")
         for v in ("river", "sky", "garden", "road")] * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=300, min_frequency=1)
    hf = train_bpe(iter(TEXTS), cfg, str(folder))
    return cfg, folder, hf


def test_trained_folder_loads_with_transformers(trained):
    from transformers import AutoTokenizer

    cfg, folder, _ = trained
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == 300
    assert [tok.convert_tokens_to_ids(t) for t in cfg.special_tokens()] == list(range(6))
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == ("<pad>", "<unk>", "<s>", "</s>")
    ids = tok("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The cat sat on the mat."  # byte-level: lossless
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_fast_encoder_matches_transformers(trained):
    _, folder, hf = trained
    texts = ["The fox looked at the road.", "ünïcödé and emoji 🙂 survive"]
    assert encode_batch(str(folder), texts) == [hf(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert hf.decode(encode_batch(str(folder), texts)[1]) == texts[1]


def test_given_tokenizer_is_copied(trained, tmp_path):
    _, folder, hf = trained
    copied = copy_given(str(folder), str(tmp_path / "copy"))
    assert copied.eos_token_id == hf.eos_token_id
    assert (tmp_path / "copy" / "tokenizer.json").is_file()
    load_fast.cache_clear()


def test_custom_special_tokens_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        TokenizerConfig(pad_token="</s>")
