"""Shared test set-up: side files of every library go into a per-session scratch folder (see
cluster.runtime.isolate_side_files), and Ray is started only by the tests that need it."""

from __future__ import annotations

import os

import pytest

from cluster.runtime import isolate_side_files

# Before any library import caches a path: vLLM, torch inductor, HF, Ray temp -> raylm's folders.
isolate_side_files()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def assets():
    """The prepared asset cache (`make setup`); tests that need it fail loudly when it is missing."""
    from cluster.assets.prepare import check_assets
    from pipelines.assets import asset_paths

    missing = [name for name, (ok, detail) in check_assets().items() if not ok]
    if missing:
        pytest.fail(f"asset cache incomplete ({', '.join(missing)}): run `make setup` first")
    return asset_paths()
