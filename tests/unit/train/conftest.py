"""Fixtures of the training tests: a tokenize-stage-format folder made from text that ships with Python
(`pydoc_data.topics`), so these tests need neither the asset cache nor the data stage."""

from __future__ import annotations

import pytest


def pydoc_texts(n: int = 60) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:n]


@pytest.fixture(scope="session")
def token_folder(tmp_path_factory):
    from pipelines.train.token_data import write_token_data

    root = tmp_path_factory.mktemp("tokens") / "tokenize"
    write_token_data(str(root), pydoc_texts(), seq_len=64, vocab_size=400)
    return str(root)
