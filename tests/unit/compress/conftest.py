"""Fixtures of the compression tests: a tiny Llama (pipelines.models preset "tiny", widened so that every
method has something to remove: 4 layers, 4 query heads in 2 key/value groups) saved as a Hugging Face
folder with a small BPE tokenizer, and held-out text from `pydoc_data.topics` (ships with Python)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.unit.train.conftest import pydoc_texts

TINY = dict(preset="tiny", num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=192)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    from pipelines.models import ModelConfig, build_model
    from pipelines.train.token_data import load_tokenizer, write_token_data
    from pipelines.train.vocab import family_tokenizer, vocab_of

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compress_base")
    write_token_data(str(root / "tok"), pydoc_texts(20), seq_len=64, vocab_size=300)
    tok = family_tokenizer(load_tokenizer(str(root / "tok" / "tokenizer")), "decoder")
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="decoder", **TINY), vocab_of(tok))
    model.config.use_cache = True
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    with path.open("w") as f:
        for text in pydoc_texts(80)[20:]:
            f.write(json.dumps({"text": text}) + "\n")
    return str(path)


@pytest.fixture()
def ctx(tiny_base, heldout_file):
    """A CompressContext over the tiny base, with 4 calibration windows of 64 tokens."""
    from transformers import AutoTokenizer

    from pipelines.compress.context import CompressContext
    from pipelines.compress.text import token_windows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.model_max_length = 10**9
    _, calib = token_windows(tok, heldout_file, seq_len=64, eval_tokens=256, calib_windows=4)
    return CompressContext(base=tiny_base, tokenizer=tok, calibration=calib, dtype=torch.float32)


@pytest.fixture()
def eval_windows(tiny_base, heldout_file):
    from transformers import AutoTokenizer

    from pipelines.compress.text import token_windows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.model_max_length = 10**9
    return token_windows(tok, heldout_file, seq_len=64, eval_tokens=256, calib_windows=0)[0]
