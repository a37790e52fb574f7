"""Cut each corpus source into documents at its natural unit.

Pure functions over text (no I/O except `read_dictd`), so each can be tested on a small inline sample:
a fortune, a Jargon File entry, a reStructuredText section, a dictionary entry, a Bible chapter, a pydoc
topic. Each returns `(title, text)` pairs; the title is kept for traceability, the text is what models see.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

Doc = tuple[str, str]


def _clean(text: str) -> str:
    """Strip trailing spaces on every line and blank lines at both ends (keeps inner layout)."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")


# --- fortune(6) files -------------------------------------------------------------------------------


def split_fortunes(text: str) -> list[str]:
    """A fortune file's entries: they are separated by lines holding only `%` (strfile's format)."""
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e for e in (_clean(x) for x in entries) if e.strip()]


# --- The Jargon File (jargon-text's plain-text rendering) ------------------------------------------------

_JARGON_ENTRY = re.compile(r"^   :(?P<head>\S[^\n]*?):(?:\s|$)")
# Where an entry's text stops: a letter's table of contents ("   B" then the headwords), a part title
# centred far right, or a table of contents block.
_JARGON_CUT = re.compile(r"^( {2,3}[A-Z0-9]| {2,3}Table of Contents|\s{10,}Part\s[IVX]+\..*)$")


def _dedent3(lines: Iterable[str]) -> str:
    return _clean("\n".join(line[3:] if line.startswith("   ") else line for line in lines))


def split_jargon(text: str) -> list[Doc]:
    """The Jargon File's documents: one per lexicon entry, one per chapter or appendix section.

    Top-level headings are the unindented lines starting with a letter or digit (box-drawn tables are
    unindented too but start with box characters). The text before the first heading is the table of
    contents and is dropped. The `Glossary` section is the lexicon: it is cut at `   :headword:` lines.
    """
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line[:1].isalnum()]
    docs: list[Doc] = []
    for n, start in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else len(lines)
        heading, body = lines[start].strip(), lines[start + 1:end]
        if heading != "Glossary":
            body_text = _dedent3(body)
            if len(body_text) >= 40:
                docs.append((heading, f"{heading}\n\n{body_text}"))
            continue
        starts = [i for i, line in enumerate(body) if _JARGON_ENTRY.match(line)]
        for k, s in enumerate(starts):
            e = starts[k + 1] if k + 1 < len(starts) else len(body)
            chunk = body[s:e]
            for j, line in enumerate(chunk[1:], start=1):
                if _JARGON_CUT.match(line):
                    chunk = chunk[:j]
                    break
            match = _JARGON_ENTRY.match(chunk[0])
            entry = _dedent3(chunk)
            if match and entry:
                docs.append((match.group("head"), entry))
    return docs


# --- reStructuredText sources (the Python documentation) ---------------------------------------------

_ADORNMENT = set("=-~^\"'`*+#:._<>!$%&(),/;?@[]{}|\\")


def _is_adornment(line: str) -> bool:
    s = line.rstrip()
    return len(s) >= 3 and s[0] in _ADORNMENT and s == s[0] * len(s)


def _heading_starts(lines: list[str]) -> list[tuple[int, str]]:
    """(first line index, title) of every section heading: a title underlined (and maybe overlined)."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i], lines[i + 1]
        if (title.strip() and not title[0].isspace() and not _is_adornment(title)
                and _is_adornment(under) and len(under.rstrip()) >= len(title.rstrip())
                and (i == 0 or not lines[i - 1].strip() or _is_adornment(lines[i - 1]))):
            start = i - 1 if i > 0 and _is_adornment(lines[i - 1]) and lines[i - 1][0] == under[0] else i
            out.append((start, title.strip()))
            i += 2
            continue
        i += 1
    return out


def split_rst_sections(text: str, min_chars: int = 300) -> list[Doc]:
    """A reST document cut at its section headings; a section shorter than `min_chars` (a heading with
    only a toctree, say) is joined to the section after it, so no document is a bare title."""
    lines = text.splitlines()
    starts = _heading_starts(lines)
    if not starts or starts[0][0] > 0:
        starts = [(0, starts[0][1] if starts else "")] + starts
    docs: list[Doc] = []
    carry_title, carry = "", ""
    for k, (s, title) in enumerate(starts):
        e = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        section = _clean("\n".join(lines[s:e]))
        if not section:
            continue
        merged = f"{carry}\n\n{section}" if carry else section
        title = carry_title or title
        if len(merged) < min_chars and k + 1 < len(starts):
            carry_title, carry = title, merged
            continue
        docs.append((title, merged))
        carry_title, carry = "", ""
    if carry:
        docs.append((carry_title, carry))
    return docs


# --- dictd databases (.index + .dict.dz, as dict-gcide and dict-devil ship them) ---------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_number(code: str) -> int:
    """Decode dictd's base-64 offsets/lengths (most significant digit first, no padding)."""
    value = 0
    for char in code:
        value = value * 64 + _B64_VALUE[char]
    return value


def read_dictd(index_path: Path, dict_path: Path) -> Iterator[Doc]:
    """Every entry of a dictd database once, in file order, as (headword, entry text).

    Several headwords can point at one entry (variant spellings): entries are deduplicated by their byte
    span. `00-*` pseudo entries (metadata and the licence notice) are skipped. A `.dz` file is
    dictzip, a gzip stream with a seek table in its header, so `gzip` reads it whole.
    """
    spans: dict[tuple[int, int], str] = {}
    meta: set[tuple[int, int]] = set()
    with open(index_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            span = (dictd_number(parts[1]), dictd_number(parts[2]))
            if parts[0].startswith(("00-", "00database")):  # 00-database-info, 00-gcide-url, ...
                meta.add(span)
            else:
                spans.setdefault(span, parts[0])
    for span in meta:
        spans.pop(span, None)
    opener = gzip.open if str(dict_path).endswith(".dz") or str(dict_path).endswith(".gz") else open
    with opener(dict_path, "rb") as f:
        data = f.read()
    for (offset, length), head in sorted(spans.items()):
        text = _clean(data[offset:offset + length].decode("utf-8", errors="replace"))
        if text:
            yield head, text


# --- the King James Bible, as `bible -f` prints it (one `Ref chapter:verse text` line per verse) -----

_VERSE = re.compile(r"^(?P<book>\d?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+)\s+(?P<text>.*)$")


def bible_chapters(lines: Iterable[str]) -> list[Doc]:
    """Group verse lines into chapters: ("Ge 1", "1 In the beginning ...\\n2 And the earth ...")."""
    docs: list[Doc] = []
    key, verses = None, []
    for line in lines:
        m = _VERSE.match(line.strip())
        if not m:
            continue
        ref = f"{m['book']} {m['chapter']}"
        if ref != key and verses:
            docs.append((key, "\n".join(verses)))  # type: ignore[arg-type]
            verses = []
        key = ref
        verses.append(f"{m['verse']} {m['text'].strip()}")
    if verses and key:
        docs.append((key, "\n".join(verses)))
    return docs


# --- pydoc's help topics (stdlib, nothing to install) --------------------------------------------------


def pydoc_topics() -> list[Doc]:
    """The text of `help('TOPIC')` for each topic that ships in `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    return [(name, _clean(text)) for name, text in sorted(topics.items()) if text.strip()]
