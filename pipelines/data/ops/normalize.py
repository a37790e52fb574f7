"""Text normalisation, each step its own operator so a recipe switches them on one by one, in its order:
lowercase, punctuation removal, whitespace collapsing, special characters (Unicode NFKC, newlines and
tabs, control and zero-width characters, custom replacements)."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache, cached_property
from typing import Literal

from pipelines.data.ops.base import TextOperator


class Lowercase(TextOperator):
    """Lowercase the text (`str.lower`)."""

    op: Literal["lowercase"] = "lowercase"
    """Operator name."""

    def transform(self, text: str) -> str:
        return text.lower()


@cache
def _punctuation_table(include_symbols: bool, replace_with: str) -> dict[int, str]:
    """Every punctuation (and symbol) code point -> `replace_with`; built once per process."""
    categories = ("P", "S") if include_symbols else ("P",)
    return {
        cp: replace_with for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in categories
    }


class RemovePunctuation(TextOperator):
    """Remove punctuation: every Unicode punctuation character (categories P*) and, by default, every
    symbol (S*), so that on ASCII text exactly `string.punctuation` is removed."""

    op: Literal["remove_punctuation"] = "remove_punctuation"
    """Operator name."""
    include_symbols: bool = True
    """Also remove symbols (Unicode S*: ASCII's `$+<=>^`|~`, currency, maths, emoji). False keeps them."""
    replace_with: str = ""
    """What each removed character becomes ("" deletes it; " " keeps words apart in "a-b")."""

    def transform(self, text: str) -> str:
        return text.translate(_punctuation_table(self.include_symbols, self.replace_with))


class NormalizeWhitespace(TextOperator):
    """Collapse runs of whitespace to one space and trim both ends. With `keep_paragraphs`, blank-line
    paragraph breaks survive as one blank line."""

    op: Literal["normalize_whitespace"] = "normalize_whitespace"
    """Operator name."""
    keep_paragraphs: bool = False
    """Keep paragraph breaks (two or more newlines) as "\\n\\n" instead of a space."""

    def transform(self, text: str) -> str:
        if not self.keep_paragraphs:
            return " ".join(text.split())
        paragraphs = (" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text))
        return "\n\n".join(p for p in paragraphs if p)


_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# Zero-width and invisible formatting characters (ZWSP, ZWNJ, ZWJ, word joiner, BOM, soft hyphen, ...).
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u200e\u200f"
_NEWLINES_TABS = "\n\r\t\v\f\u2028\u2029\x85"


class CleanSpecialCharacters(TextOperator):
    """Special characters: Unicode NFKC normalisation (full-width forms, ligatures, compatibility
    characters), newlines and tabs, control characters, zero-width characters, plus custom replacements.
    Applied in that order."""

    op: Literal["clean_special_characters"] = "clean_special_characters"
    """Operator name."""
    nfkc: bool = True
    """Apply Unicode NFKC normalisation (e.g. 'ﬁ' -> 'fi', full-width 'Ａ' -> 'A', '①' -> '1')."""
    newlines_tabs: Literal["keep", "space", "remove"] = "keep"
    """Newlines, carriage returns and tabs: keep them, turn each into a space, or delete them."""
    remove_control: bool = True
    """Delete control characters (Unicode Cc, other than newlines and tabs)."""
    remove_zero_width: bool = True
    """Delete zero-width and invisible formatting characters (ZWSP, ZWJ, BOM, soft hyphen, ...)."""
    replacements: dict[str, str] = {}
    """Extra literal replacements, applied last, e.g. {"“": "\\"", "”": "\\""}."""

    @cached_property
    def _table(self) -> dict[int, str | None]:
        table: dict[int, str | None] = {}
        if self.remove_control:
            for cp in list(range(0x20)) + list(range(0x7F, 0xA0)):
                if chr(cp) not in _NEWLINES_TABS:
                    table[cp] = None
        if self.remove_zero_width:
            for ch in ZERO_WIDTH:
                table[ord(ch)] = None
        if self.newlines_tabs != "keep":
            for ch in _NEWLINES_TABS:
                table[ord(ch)] = " " if self.newlines_tabs == "space" else None
        return table

    def transform(self, text: str) -> str:
        if self.nfkc and not text.isascii():
            text = unicodedata.normalize("NFKC", text)
        text = text.translate(self._table)
        for old, new in self.replacements.items():
            text = text.replace(old, new)
        return text
