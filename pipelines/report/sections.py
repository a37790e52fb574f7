"""What the report says, section by section, as plain blocks (`blocks.py`; `render.py` turns them into
Markdown and HTML). This module has the overview and the recipe and puts the sections in order; the stage
sections live in `sections_data.py`, `sections_train.py` and `sections_models.py`.

Every builder takes the collected run and the report folder (where it draws its figures) and returns one
`Section`. A stage that did not run gives a section that says "not run"; a figure that cannot be drawn
gives a line saying why. A builder never raises for odd data: the report is written at the end of every
run, and a crash there would hide the run's results.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.report.blocks import NOT_RUN, Block, Code, Para, Section, Table, fmt
from pipelines.report.collect import STAGES, RunData

# --- overview -----------------------------------------------------------------------------------------


def key_metric(run: RunData, stage: str) -> str:
    """One line per stage for the overview table (what the run summary prints, in words)."""
    m = run.metrics(stage)
    try:
        if stage == "data":
            return f"{fmt(m.get('rows_out'))} of {fmt(m.get('rows_in'))} rows kept"
        if stage == "tokenize":
            return f"{fmt(m.get('tokens'))} tokens in {fmt(m.get('sequences'))} sequences"
        if stage == "pretrain":
            return f"held-out loss {fmt(m.get('heldout_loss'))} after {fmt(m.get('step'))} steps"
        if stage == "finetune":
            return "; ".join(pass_line(p.name, p.summary) for p in run.finetune_passes)
        if stage == "compress":
            return "; ".join(f"{k}: {v}" for k, v in (m.get("summary") or {}).items())
        if stage == "serve":
            s = m.get("samples") or {}
            return (
                f"{fmt(s.get('requests'))} requests, p50 latency {fmt(s.get('latency_p50_s'))} s, "
                f"{fmt(s.get('output_tokens_per_s'))} output tokens/s"
            )
    except (TypeError, AttributeError):
        pass
    return ""


def pass_line(name: str, s: dict) -> str:
    before, after = s.get("heldout_before") or {}, s.get("heldout_after") or {}
    if "heldout_accuracy" in after:
        return (
            f"{name} held-out accuracy {fmt(before.get('heldout_accuracy'))} -> "
            f"{fmt(after.get('heldout_accuracy'))}"
        )
    return f"{name} held-out loss {fmt(before.get('heldout_loss'))} -> {fmt(after.get('heldout_loss'))}"


def overview(run: RunData, out: Path) -> Section:
    rows = []
    for stage in STAGES:
        m = run.manifests.get(stage)
        if m is None:
            rows.append([stage, NOT_RUN, "-", "", ""])
        else:
            rows.append(
                [
                    stage,
                    m.created_at or "-",
                    fmt(m.timings.get("wall_s")),
                    key_metric(run, stage),
                    m.config_hash,
                ]
            )
    blocks: list[Block] = [
        Para(f"Run folder: `{run.root}`"),
        Table(["stage", "started", "wall s", "key result", "config hash"], rows),
    ]
    versions = next((m.versions for m in run.manifests.values() if m.versions), None)
    if versions:
        blocks.append(Para("Libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return Section("Stages", "stages", blocks)


def recipe(recipe_text: str | None, resolved_text: str | None, run: RunData) -> Section:
    sec = Section("Recipe", "recipe")
    if recipe_text:
        sec.blocks.append(Para("The recipe as run (the keys it set, `--set` overrides applied):"))
        sec.blocks.append(Code(recipe_text))
        if resolved_text:
            sec.blocks.append(Code(resolved_text, summary="every key, defaults included"))
        return sec
    import yaml

    configs = {stage: m.config for stage, m in run.manifests.items()}
    if not configs:
        sec.blocks.append(Para(NOT_RUN))
        return sec
    sec.blocks.append(Para("No recipe was saved with this run; each stage's manifest recorded this config:"))
    sec.blocks.append(Code(yaml.safe_dump(configs, sort_keys=False, default_flow_style=False)))
    return sec


def _builders():
    # imported here: the stage modules import `pass_line` from this one
    from pipelines.report.sections_data import data, tokenizer
    from pipelines.report.sections_models import compress, serve
    from pipelines.report.sections_train import alignment, finetune, pretrain

    return (overview, data, tokenizer, pretrain, finetune, alignment, compress, serve)


def build(
    run: RunData, out: Path, recipe_text: str | None = None, resolved_text: str | None = None
) -> list[Section]:
    sections = []
    for builder in _builders():
        try:
            sections.append(builder(run, out))
        except Exception as exc:  # odd data in one stage must not cost the whole report
            name = builder.__name__
            sections.append(
                Section(name.capitalize(), name, [Para(f"could not be shown: {type(exc).__name__}: {exc}")])
            )
    sections.append(recipe(recipe_text, resolved_text, run))
    if run.notes:
        sections.append(Section("Notes", "notes", [Para(n) for n in run.notes]))
    return sections
