"""The bundled English corpus: real text from Debian packages and the stdlib, one JSONL file per source.

About 60 MB of English in ~150k documents, so the data pipeline (cleaning, MinHash dedup, tokenizer
training, packing) and small pretraining runs have real, varied text without any dataset hub: Webster's
1913 dictionary (GCIDE), the Python 3.11 documentation sources, the King James Bible, the fortune
cookie files, the Jargon File, Bierce's Devil's Dictionary and pydoc's help topics. Each source is cut
at its natural document unit (see `splitters.py`) and written as `<source>.jsonl` with records
`{"text", "source", "id", "title"}`; `manifest.json` counts documents and UTF-8 bytes per source.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.assets.debian import DebianTree
from cluster.assets.splitters import (
    Doc,
    bible_chapters,
    pydoc_topics,
    read_dictd,
    split_fortunes,
    split_jargon,
    split_rst_sections,
)

PYDOC_SOURCES = "/usr/share/doc/python3.11/html/_sources"
FORTUNE_DIR = "/usr/share/games/fortunes"
# ascii-art holds pictures, not prose: it would teach a model box drawing, not English.
FORTUNE_SKIP = {"ascii-art"}


@dataclass(frozen=True)
class CorpusSource:
    """One source: its file name stem, the Debian packages it reads, and how it yields documents."""

    name: str
    packages: tuple[str, ...]
    read: Callable[[DebianTree], Iterator[Doc]]
    about: str


def _python_docs(tree: DebianTree) -> Iterator[Doc]:
    base = tree.path(PYDOC_SOURCES)
    files = sorted(base.rglob("*.rst.txt"))
    if not files:
        raise FileNotFoundError(f"no *.rst.txt under {base}")
    for path in files:
        rel = path.relative_to(base).as_posix().removesuffix(".rst.txt")
        for title, text in split_rst_sections(path.read_text(encoding="utf-8", errors="replace")):
            yield f"{rel}: {title}" if title else rel, text


def _gcide(tree: DebianTree) -> Iterator[Doc]:
    base = tree.path("/usr/share/dictd")
    yield from read_dictd(base / "gcide.index", base / "gcide.dict.dz")


def _devil(tree: DebianTree) -> Iterator[Doc]:
    base = tree.path("/usr/share/dictd")
    yield from read_dictd(base / "devil.index", base / "devil.dict.dz")


def _bible(tree: DebianTree) -> Iterator[Doc]:
    # bible.data is the program's own compressed format: its reader is the only documented way in.
    # -f turns pretty-printing off (one `Ref ch:verse text` line per verse); -p/-d point at the data.
    exe, data = tree.path("/usr/bin/bible"), tree.path("/usr/lib/bible.data")
    proc = subprocess.run([str(exe), "-f", "-p", str(data.parent), "-d", data.name, "Gen1:1-Rev22:21"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{exe} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]} "
                           "(it needs libreadline8: apt-get install libreadline8)")
    chapters = bible_chapters(proc.stdout.splitlines())
    if len(chapters) != 1189:  # the KJV has 1,189 chapters: anything else means a truncated read
        raise RuntimeError(f"bible printed {len(chapters)} chapters, expected 1189")
    yield from chapters


def _fortunes(tree: DebianTree) -> Iterator[Doc]:
    base = tree.path(FORTUNE_DIR)
    files = [p for p in sorted(base.iterdir())
             if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
             and p.name not in FORTUNE_SKIP]
    if not files:
        raise FileNotFoundError(f"no fortune files in {base}")
    for path in files:
        for i, text in enumerate(split_fortunes(path.read_text(encoding="utf-8", errors="replace"))):
            yield f"{path.name}#{i}", text


def _jargon(tree: DebianTree) -> Iterator[Doc]:
    with gzip.open(tree.path("/usr/share/doc/jargon-text/jargon.txt.gz"), "rt", encoding="utf-8",
                   errors="replace") as f:
        yield from split_jargon(f.read())


def _pydoc_topics(tree: DebianTree) -> Iterator[Doc]:
    yield from pydoc_topics()


SOURCES: tuple[CorpusSource, ...] = (
    CorpusSource("gcide", ("dict-gcide",), _gcide,
                 "Webster's Revised Unabridged Dictionary (1913) + WordNet glosses (GCIDE); one entry each"),
    CorpusSource("python_docs", ("python3.11-doc",), _python_docs,
                 "Python 3.11 documentation, reStructuredText sources; one section each"),
    CorpusSource("bible_kjv", ("bible-kjv", "bible-kjv-text"), _bible,
                 "King James Bible; one chapter each"),
    CorpusSource("fortunes", ("fortunes", "fortunes-min"), _fortunes,
                 "fortune(6) cookie files (not ascii-art); one fortune each"),
    CorpusSource("jargon", ("jargon-text",), _jargon,
                 "The Jargon File 4.4.7; one lexicon entry or chapter section each"),
    CorpusSource("devils_dictionary", ("dict-devil",), _devil,
                 "Ambrose Bierce, The Devil's Dictionary; one entry each"),
    CorpusSource("pydoc_topics", (), _pydoc_topics,
                 "Python's pydoc_data.topics (stdlib); one help topic each"),
)


def corpus_packages() -> list[str]:
    """Every Debian package the corpus reads, in a stable order."""
    return list(dict.fromkeys(p for s in SOURCES for p in s.packages))


def write_source(source: CorpusSource, tree: DebianTree, dest: Path) -> dict:
    """Write `dest/<source>.jsonl`; returns the source's manifest entry (docs, bytes, where from)."""
    docs = nbytes = 0
    with open(dest / f"{source.name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for title, text in source.read(tree):
            record = {"text": text, "source": source.name, "id": f"{source.name}:{docs}", "title": title}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            docs += 1
            nbytes += len(text.encode("utf-8"))
    if docs == 0:
        raise RuntimeError(f"corpus source {source.name} produced no documents")
    packages = {p: tree.versions.get(p, "?") for p in source.packages}
    return {"docs": docs, "bytes": nbytes, "file": f"{source.name}.jsonl", "about": source.about,
            "debian_packages": packages or "stdlib"}


def build_corpus(tree: DebianTree, dest: Path, log: Callable[[str], object] = print) -> dict:
    """Write every source into `dest`; returns the manifest summary (per-source and total counts)."""
    per_source = {}
    for source in SOURCES:
        per_source[source.name] = entry = write_source(source, tree, dest)
        log(f"  corpus/{entry['file']}: {entry['docs']:,} docs, {entry['bytes'] / 1e6:.1f} MB")
    return {
        "sources": per_source,
        "total_docs": sum(s["docs"] for s in per_source.values()),
        "total_bytes": sum(s["bytes"] for s in per_source.values()),
        "record_fields": ["text", "source", "id", "title"],
    }
