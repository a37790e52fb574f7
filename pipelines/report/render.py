"""Write the run report: `<run>/report/index.md`, a static `index.html` and the PNGs both link to.

The HTML is self-contained on purpose: inline CSS, no JavaScript, no web fonts, images linked by relative
path, so it opens offline from a copied or zipped folder, and in a browser that blocks file:// requests to
other hosts. Markdown and HTML come from the same blocks (`sections.py`), so they never disagree.
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.report.blocks import Block, Code, Image, Para, Section, Table
from pipelines.report.collect import collect
from pipelines.report.sections import build

REPORT_DIR = "report"
RECIPE_FILE = "recipe.yaml"
RESOLVED_RECIPE_FILE = "recipe.resolved.yaml"
FIGURES = (
    "data_funnel.png",
    "pretrain_loss.png",
    "finetune_loss.png",
    "dpo_margins.png",
    "reward_margins.png",
    "rlhf_reward_kl.png",
    "compress_pareto.png",
    "serve_latency.png",
)
"""Every figure a section may draw (`sections_*.py`)."""
MAX_CELL = 300  # characters: long generated answers are cut so tables stay readable


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = re.sub(r"\s*\n\s*", " ↵ ", text.replace("\r", ""))  # generated answers are mostly newlines
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


# --- Markdown --------------------------------------------------------------------------------------------


def _md_block(b: Block) -> str:
    if isinstance(b, Para):
        return b.text
    if isinstance(b, Image):
        return f"![{b.alt}]({b.file})"
    if isinstance(b, Code):
        fence = f"```yaml\n{b.text.rstrip()}\n```"
        return f"<details><summary>{b.summary}</summary>\n\n{fence}\n\n</details>" if b.summary else fence
    # `<s>` in a cell would be read as HTML (strikethrough) by Markdown viewers: escape it
    esc = [[html.escape(_cell(c), quote=False).replace("|", "\\|") for c in row] for row in b.rows]
    head = "| " + " | ".join(b.headers) + " |\n|" + "---|" * len(b.headers)
    return head + "".join("\n| " + " | ".join(row) + " |" for row in esc)


def to_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}", " · ".join(f"[{s.title}](#{s.anchor})" for s in sections)]
    for s in sections:
        parts.append(f'<a id="{s.anchor}"></a>\n\n## {s.title}')
        parts += [_md_block(b) for b in s.blocks]
    return "\n\n".join(parts) + "\n"


# --- HTML ------------------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5rem 3rem; color: #1d1f21; }
h1 { margin-top: 1.5rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
nav a { margin-right: .9rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } td { max-width: 30rem; overflow-wrap: break-word; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .6rem 0; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: 12.5px; }
code { background: #f6f8fa; padding: 0 .2rem; }
.notrun { color: #888; font-style: italic; }
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans (the only inline markup sections use) into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_block(b: Block) -> str:
    if isinstance(b, Para):
        cls = ' class="notrun"' if b.text.startswith("not run") else ""
        return f"<p{cls}>{_inline(b.text)}</p>"
    if isinstance(b, Image):
        return f'<p><img src="{html.escape(b.file)}" alt="{html.escape(b.alt)}"></p>'
    if isinstance(b, Code):
        pre = f"<pre>{html.escape(b.text)}</pre>"
        return f"<details><summary>{html.escape(b.summary)}</summary>{pre}</details>" if b.summary else pre
    assert isinstance(b, Table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in b.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, sections: list[Section]) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_html_block(b) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


# --- the report folder -------------------------------------------------------------------------------------


def _recipe_texts(recipe: Any, out: Path) -> tuple[str | None, str | None]:
    """The recipe as YAML, saved beside the report so `raylm report` can redo the report later. Dumped from
    the validated model (not the file's text) so secrets stay masked (`SecretStr` dumps as asterisks)."""
    if recipe is None:
        given, resolved = out / RECIPE_FILE, out / RESOLVED_RECIPE_FILE
        return (
            given.read_text(encoding="utf-8") if given.is_file() else None,
            resolved.read_text(encoding="utf-8") if resolved.is_file() else None,
        )
    import yaml

    def dump(**kw) -> str:
        tree = recipe.model_dump(mode="json", **kw) if hasattr(recipe, "model_dump") else dict(recipe)
        return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, allow_unicode=True)

    given, resolved = dump(exclude_unset=True), dump()
    (out / RECIPE_FILE).write_text(given, encoding="utf-8")
    (out / RESOLVED_RECIPE_FILE).write_text(resolved, encoding="utf-8")
    return given, resolved


def write_report(run_dir: str, recipe: Any = None, out_dir: str | None = None) -> str:
    """Write the report of `run_dir` into `out_dir` (default `<run_dir>/report`); returns that folder.

    `recipe` (the validated `Recipe`) is saved beside the report; without it, a recipe saved by an earlier
    report is shown, else the configs the stage manifests recorded. A remote run folder (`s3://`) gets
    its report drawn locally, then copied there.
    """
    remote = "://" in run_dir and out_dir is None
    target = out_dir or f"{run_dir.rstrip('/')}/{REPORT_DIR}"
    local = Path(tempfile.mkdtemp(prefix="raylm-report-")) if remote else Path(target)
    local.mkdir(parents=True, exist_ok=True)
    # an earlier report's figures that may not be drawn this time; only ours (--out may hold other PNGs)
    for name in FIGURES:
        (local / name).unlink(missing_ok=True)
    given, resolved = _recipe_texts(recipe, local)
    run = collect(run_dir)
    title = f"raylm run report: {getattr(recipe, 'name', None) or Path(run.root).name}"
    sections = build(run, local, given, resolved)
    (local / "index.md").write_text(to_markdown(title, sections), encoding="utf-8")
    (local / "index.html").write_text(to_html(title, sections), encoding="utf-8")
    if remote:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(target)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        shutil.rmtree(local, ignore_errors=True)
    return target


def report_after_run(run_dir: str, recipe: Any, log: Callable[[str], None] = print) -> str | None:
    """What `run_recipe` calls last: write the report and say where; a failure is logged, never raised
    (the stages' outputs are already safe, and a report can be redone with `raylm report`)."""
    try:
        folder = write_report(run_dir, recipe)
    except Exception as exc:
        log(f"report: not written ({type(exc).__name__}: {exc}); retry with `raylm report {run_dir}`")
        return None
    log(f"report: {folder}/index.html (and index.md)")
    return folder
