"""Fixtures of the fine-tuning tests: a tiny randomly initialised decoder saved as a model folder with a
raylm-style tokenizer (no chat template: the simple template applies), and small instruction files made
here, so the tests need neither the asset cache nor a pretraining run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "window",
    "silver",
    "garden",
    "winter",
    "candle",
    "orange",
    "forest",
    "copper",
    "violin",
    "marble",
    "rocket",
    "pencil",
    "meadow",
    "harbor",
    "lantern",
    "thunder",
    "desert",
    "falcon",
    "pepper",
]


def instruction_pairs() -> list[dict]:
    """Learnable pairs: the answer follows from the instruction by a fixed rule."""
    pairs = []
    for i, w in enumerate(WORDS):
        pairs.append({"instruction": f"Repeat the word {w} twice.", "output": f"{w} {w}"})
        pairs.append({"instruction": f"Say hello to {w}.", "output": f"Hello, {w}!"})
        pairs.append({"instruction": f"What comes after {w}?", "output": WORDS[(i + 1) % len(WORDS)]})
    return pairs


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def make_tiny_base(folder: Path, pretrain_steps: int = 150) -> Path:
    """A tiny Llama (pipelines.models preset tiny) and a BPE tokenizer trained on pydoc text + the pairs,
    briefly pretrained in-process on the pairs as plain text (a second or two): fine-tuning starts from a
    model that knows the words, as it would in practice, not from uniform logits."""
    import torch

    from pipelines.models import ModelConfig, build_model
    from pipelines.train.token_data import load_tokenizer, write_token_data
    from pipelines.train.vocab import vocab_of
    from tests.unit.train.conftest import pydoc_texts

    texts = pydoc_texts(30) + [f"{p['instruction']} {p['output']}" for p in instruction_pairs()]
    tok_root = folder.parent / f"{folder.name}-tokens"
    write_token_data(str(tok_root), texts, seq_len=64, vocab_size=400)
    tokenizer = load_tokenizer(str(tok_root / "tokenizer"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="decoder", preset="tiny"), vocab_of(tokenizer))
    docs = [f"{p['instruction']} {p['output']}" for p in instruction_pairs()]
    ids = [[tokenizer.bos_token_id, *tokenizer(d)["input_ids"], tokenizer.eos_token_id] for d in docs]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(pretrain_steps):
        batch = [ids[(step * 8 + i) % len(ids)] for i in range(8)]
        n = max(map(len, batch))
        x = torch.tensor([b + [tokenizer.pad_token_id] * (n - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (n - len(b)) for b in batch])
        model(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    # the unit tests need its tokenizer and module names, not trained weights
    return make_tiny_base(tmp_path_factory.mktemp("finetune") / "base", pretrain_steps=0)


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", instruction_pairs())
