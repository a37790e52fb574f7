"""Making NLTK find raylm's offline data (WordNet, punkt_tab) in this process, Ray workers included.

`cluster.runtime.isolate_side_files()` sets `NLTK_DATA` for the driver; a Ray worker on another node does
not inherit it, so every operator that uses NLTK calls `ensure_nltk_data()` first.
"""

from __future__ import annotations

from pipelines.assets import asset_paths

_DONE = False


def ensure_nltk_data() -> str:
    """Append the asset cache's NLTK data folder to `nltk.data.path` (once per process); return it."""
    global _DONE
    import nltk

    folder = str(asset_paths().nltk_data)
    if not _DONE:
        if folder not in nltk.data.path:
            nltk.data.path.append(folder)
        _DONE = True
    return folder


def nltk_resource_problem(resource: str, needed_by: str) -> str | None:
    """None if NLTK finds `resource` (e.g. "corpora/wordnet"), else a message saying how to get it."""
    import nltk

    folder = ensure_nltk_data()
    try:
        nltk.data.find(resource)
    except LookupError:
        return (
            f"{needed_by} needs NLTK's {resource}, which is not in {folder} or NLTK's search path: "
            f"run `raylm setup` (or `make setup`) to prepare it"
        )
    return None
