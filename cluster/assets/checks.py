"""`check_assets`: is each prepared asset there, complete and usable? Cheap enough for `raylm doctor`.

Every check first asks the asset's manifest whether the folder is complete (a `stat` per file), then does
the least work that proves the asset is usable: NLTK tokenizes and lemmatizes from our folder (the
WordNet load is the one slow part, ~7 s on 2 cores: NLTK 3.10 reads all indexes and, in `map_wn`, reads
`index.sense` twice to map WordNet 3.0 onto itself; every user of `nltk.corpus.wordnet` pays it once
per process, so the check shows the real cost), the corpus and instruction counts come from their
manifests, and the model check reads its config and weight sizes without loading any weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from cluster.assets.atomic import incomplete_reason, read_manifest
from cluster.assets.steps import STEPS, step_named
from pipelines.assets import AssetPaths, asset_paths


def _complete(paths: AssetPaths, name: str) -> tuple[bool, str, dict]:
    step = step_named(name)
    target = step.target(paths)
    reason = incomplete_reason(target, step.name, step.version)
    if reason is not None:
        return False, f"{target}: {reason}", {}
    return True, "", read_manifest(target) or {}


def _check_punkt(paths: AssetPaths) -> tuple[bool, str]:
    ok, why, _ = _complete(paths, "punkt_tab")
    if not ok:
        return False, why
    import nltk

    from cluster.assets.nltk_data import use_nltk_data

    use_nltk_data(paths.nltk_data)
    words = nltk.word_tokenize("The cats are running.")
    sents = nltk.sent_tokenize("Dr. Smith went home. He was tired.")
    if words != ["The", "cats", "are", "running", "."] or len(sents) != 2:
        return False, f"punkt_tab loads but tokenizes wrongly: {words} / {sents}"
    return True, f"word_tokenize and sent_tokenize work from {paths.nltk_data}"


def _check_wordnet(paths: AssetPaths) -> tuple[bool, str]:
    ok, why, manifest = _complete(paths, "wordnet")
    if not ok:
        return False, why
    from nltk.stem import WordNetLemmatizer

    from cluster.assets.nltk_data import use_nltk_data

    use_nltk_data(paths.nltk_data)
    t0 = time.monotonic()
    lemma = WordNetLemmatizer().lemmatize("geese")
    if lemma != "goose":
        return False, f"WordNetLemmatizer().lemmatize('geese') gave {lemma!r}, not 'goose'"
    version = manifest.get("summary", {}).get("wordnet_version", "?")
    seconds = time.monotonic() - t0
    return True, f"WordNet {version}: lemmatize('geese') == 'goose' (NLTK loaded it in {seconds:.1f}s)"


def _check_corpus(paths: AssetPaths) -> tuple[bool, str]:
    ok, why, manifest = _complete(paths, "corpus")
    if not ok:
        return False, why
    summary = manifest["summary"]
    return True, (f"{summary['total_docs']:,} docs from {len(summary['sources'])} sources, "
                  f"{summary['total_bytes'] / 1e6:.1f} MB of text")


def _check_instructions(paths: AssetPaths) -> tuple[bool, str]:
    ok, why, manifest = _complete(paths, "instructions")
    if not ok:
        return False, why
    s = manifest["summary"]
    return True, f"{s['chatterbot']['pairs']:,} chatterbot pairs + {s['humaneval']['pairs']} HumanEval tasks"


def _check_reference_model(paths: AssetPaths) -> tuple[bool, str]:
    ok, why, manifest = _complete(paths, "reference_model")
    if not ok:
        return False, why
    folder = paths.reference_model
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    if weights == 0 or not (folder / "tokenizer.json").is_file():
        return False, f"{folder} lacks safetensors weights or tokenizer.json"
    params = manifest.get("summary", {}).get("params", 0)
    return True, (f"{config.get('architectures', ['?'])[0]}, {params / 1e6:.1f}M params, "
                  f"{config.get('dtype') or config.get('torch_dtype')}, {weights / 1e6:.0f} MB safetensors")


CHECKS: dict[str, Callable[[AssetPaths], tuple[bool, str]]] = {
    "punkt_tab": _check_punkt,
    "wordnet": _check_wordnet,
    "corpus": _check_corpus,
    "instructions": _check_instructions,
    "reference_model": _check_reference_model,
}
assert set(CHECKS) == {s.name for s in STEPS}, "every asset step needs a check"


def check_assets(root: Path | None = None) -> dict[str, tuple[bool, str]]:
    """Asset name -> (usable?, detail). Never raises: a broken asset is a False row with the reason."""
    paths = asset_paths(root)
    out: dict[str, tuple[bool, str]] = {}
    for name, check in CHECKS.items():
        try:
            out[name] = check(paths)
        except Exception as exc:  # a doctor reports what is broken instead of crashing on it
            out[name] = (False, f"{type(exc).__name__}: {exc}")
    return out
