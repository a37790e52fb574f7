"""Spelling and abbreviation standardisation from a mapping file (whole words, case-insensitive).

The default map (`pipelines/data/resources/english_map.tsv`) expands informal abbreviations ("btw" -> "by
the way"), restores apostrophes ("dont" -> "don't") and fixes common misspellings ("recieve" ->
"receive"). A recipe can name its own file: one `from<TAB>to` per line, `#` comments.
"""

from __future__ import annotations

import re
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

from pipelines.assets import resolve_path
from pipelines.data.ops.base import TextOperator

DEFAULT_MAP = "english_map.tsv"
# A word: letters and digits with inner apostrophes ("don't" is one word, so "don't" is never re-mapped).
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def parse_mapping(text: str, source: str = "<mapping>") -> dict[str, str]:
    """`from<TAB>to` lines -> {from (lowercased): to}. Raises ValueError naming the bad line."""
    mapping: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{source}:{n}: expected 'from<TAB>to', got {line!r}")
        mapping[parts[0].strip().lower()] = parts[1].strip()
    return mapping


@cache
def load_mapping(path: str | None) -> dict[str, str]:
    """The mapping from a file (a recipe path: `assets:`, `~`, `$VARS` allowed), or the bundled default."""
    if path is None:
        text = resources.files("pipelines.data.resources").joinpath(DEFAULT_MAP).read_text(encoding="utf-8")
        return parse_mapping(text, DEFAULT_MAP)
    local = resolve_path(path)
    return parse_mapping(Path(local).read_text(encoding="utf-8"), path)


def _match_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class StandardizeSpelling(TextOperator):
    """Replace whole words found in a mapping file (abbreviations, misspellings), case-insensitively;
    a capitalised word stays capitalised ("Dont" -> "Don't"), an upper-case one upper-case."""

    op: Literal["standardize_spelling"] = "standardize_spelling"
    """Operator name."""
    mapping: str | None = None
    """Mapping file (`from<TAB>to` per line). None: raylm's bundled English map."""

    def preflight(self) -> list[str]:
        try:
            load_mapping(self.mapping)
        except (OSError, ValueError) as exc:
            return [f"mapping file: {exc}"]
        return []

    @cached_property
    def _mapping(self) -> dict[str, str]:
        return load_mapping(self.mapping)

    def transform(self, text: str) -> str:
        mapping = self._mapping
        # Most texts hold no mapped word: one findall + a set test is far cheaper than a substitution.
        if mapping.keys().isdisjoint(_WORD.findall(text.lower())):
            return text

        def replace(m: re.Match) -> str:
            word = m.group()
            new = mapping.get(word.lower())
            return word if new is None else _match_case(word, new)

        return _WORD.sub(replace, text)
