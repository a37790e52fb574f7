"""Training a byte-level BPE with the `tokenizers` library and saving it as a Hugging Face tokenizer
folder (tokenizer.json, tokenizer_config.json with the special tokens, the chat template), or taking a
given tokenizer folder; and loading one fast in Ray workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from pipelines.data.config import TokenizerConfig


def train_bpe(texts: Iterable[str], cfg: TokenizerConfig, out_dir: str):
    """Train a byte-level BPE on `texts`; save it as a Hugging Face folder in `out_dir`; return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=cfg.special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return save_hf(tok, cfg, out_dir)


def save_hf(tok, cfg: TokenizerConfig, out_dir: str):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=cfg.bos_token,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        unk_token=cfg.unk_token,
        additional_special_tokens=[cfg.chat_start_token, cfg.chat_end_token, *cfg.extra_special_tokens],
    )
    hf.chat_template = cfg.resolved_chat_template()
    hf.save_pretrained(out_dir)
    return hf


def copy_given(src: str, out_dir: str):
    """Copy a given tokenizer folder and load it; it must have an eos token (padding falls back to it)."""
    from transformers import AutoTokenizer

    shutil.copytree(src, out_dir, dirs_exist_ok=True)
    hf = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    if hf.eos_token_id is None:
        raise ValueError(f"tokenizer {src} has no eos token: packing needs one to separate documents")
    return hf


@cache
def load_fast(folder: str):
    """A fast encoder for a tokenizer folder (cached per process): `tokenizers.Tokenizer` when the folder
    has tokenizer.json, else transformers' AutoTokenizer."""
    path = Path(folder) / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def encode_batch(folder: str, texts: list[str]) -> list[list[int]]:
    tok = load_fast(folder)
    if hasattr(tok, "encode_batch"):
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    return tok(texts, add_special_tokens=False)["input_ids"]
