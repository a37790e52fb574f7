"""Where the offline assets live (the cache that `make setup` / `raylm setup` fills).

Stages read assets through these paths and never prepare them: preparing is the control plane's job
(`cluster/assets/`). The cache root is `$RAYLM_HOME`, default `~/.cache/raylm`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def raylm_home() -> Path:
    """The asset cache root: `$RAYLM_HOME` if set, else `~/.cache/raylm`."""
    env = os.environ.get("RAYLM_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "raylm"


@dataclass(frozen=True)
class AssetPaths:
    """Every asset's location under one cache root."""

    root: Path

    @property
    def nltk_data(self) -> Path:
        """NLTK data root (tokenizers/punkt_tab/english, corpora/wordnet); set as `NLTK_DATA`."""
        return self.root / "nltk_data"

    @property
    def corpus(self) -> Path:
        """The bundled English corpus: one `<source>.jsonl` per source, records `{"text", "source"}`."""
        return self.root / "corpus"

    @property
    def instructions(self) -> Path:
        """Instruction pairs: `chatterbot.jsonl`, `humaneval.jsonl`; records `{"instruction", "output"}`."""
        return self.root / "instructions"

    @property
    def reference_model(self) -> Path:
        """SmolLM2-135M-Instruct as a Hugging Face safetensors folder (converted from the GGUF)."""
        return self.root / "models" / "SmolLM2-135M-Instruct"

    @property
    def torch_extensions(self) -> Path:
        """A lasting folder for DeepSpeed's JIT-built ops (`TORCH_EXTENSIONS_DIR`)."""
        return self.root / "torch_extensions"


def asset_paths(root: Path | None = None) -> AssetPaths:
    return AssetPaths(root or raylm_home())


ASSET_PREFIX = "assets:"


def resolve_path(path: str) -> str:
    """A recipe path made concrete: `assets:corpus/x.jsonl` -> `<cache>/corpus/x.jsonl`; `~` and `$VARS`
    expanded; URIs (`s3://...`) returned unchanged. Recipes use `assets:` so they work on any machine."""
    if path.startswith(ASSET_PREFIX):
        return str(raylm_home() / path[len(ASSET_PREFIX):].lstrip("/"))
    if "://" in path:
        return path
    return os.path.expanduser(os.path.expandvars(path))
