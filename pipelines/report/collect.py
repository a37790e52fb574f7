"""Read what a run folder's stages recorded: manifests, stats.json, summaries, metric histories.

Everything here is tolerant by design: a stage that did not run, a file that is missing or unreadable
gives None (and a note), never an exception, because a report of a half-finished or older run is still
worth having. Nothing is computed here beyond picking files apart; `sections.py` decides what to show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.run_folder import Manifest, RunFolder, join, read_json

# Stage folders in run order (the planners in cluster/stages name them so); the report reads these.
STAGES = ("data", "tokenize", "pretrain", "finetune", "compress", "serve")


@dataclass
class Pass:
    """One training pass of the finetune stage (`sft`, `dpo` or `reward`; sft+dpo has two)."""

    name: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]


@dataclass
class RunData:
    """What the report shows, stage by stage; a stage that did not run has no manifest here."""

    root: str
    manifests: dict[str, Manifest] = field(default_factory=dict)
    data_stats: dict | None = None
    tokenize_stats: dict | None = None
    pretrain_history: list[dict] = field(default_factory=list)
    finetune_passes: list[Pass] = field(default_factory=list)
    compress: dict | None = None
    """{"base": {...}, "methods": {name: {...}}}: compress/report.json, else the manifest's metrics."""
    serve_samples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Files that exist but could not be read (shown at the end of the report)."""

    def metrics(self, stage: str) -> dict[str, Any]:
        m = self.manifests.get(stage)
        return m.metrics if m else {}


def read_text(uri: str) -> str | None:
    """A text file's content (local path or URI), or None when absent."""
    if "://" in uri:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    p = Path(uri)
    return p.read_text(encoding="utf-8") if p.is_file() else None


def read_jsonl(uri: str, notes: list[str]) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a run killed mid-write) is skipped and noted."""
    text = _safe(lambda: read_text(uri), uri, notes)
    rows, bad = [], 0
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad:
        notes.append(f"{uri}: {bad} unreadable line(s) skipped")
    return rows


def _safe(read, uri: str, notes: list[str]):
    try:
        return read()
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        notes.append(f"{uri}: unreadable ({type(exc).__name__}: {exc})")
        return None


def _json(uri: str, notes: list[str]) -> Any | None:
    return _safe(lambda: read_json(uri), uri, notes)


def _finetune_passes(folder: str, metrics: dict, notes: list[str]) -> list[Pass]:
    """sft+dpo writes `sft/` and `dpo/` sub-folders (manifest metrics keyed by pass); the other
    objectives write metrics.jsonl and summary.json into the stage folder itself."""
    nested = [k for k in ("sft", "dpo") if isinstance(metrics.get(k), dict)]
    if nested:
        return [Pass(k, metrics[k], read_jsonl(join(folder, k, "metrics.jsonl"), notes)) for k in nested]
    name = str(metrics.get("objective", "finetune"))
    summary = _json(join(folder, "summary.json"), notes) or metrics
    return [Pass(name, summary, read_jsonl(join(folder, "metrics.jsonl"), notes))]


def collect(run_dir: str) -> RunData:
    """Everything the report needs from `run_dir`; stages without a manifest are left out."""
    folder = RunFolder(run_dir)
    run = RunData(root=folder.root)
    notes = run.notes
    for stage in STAGES:
        m = _safe(lambda s=stage: _manifest(folder, s), folder.stage_dir(stage), notes)
        if m is not None:
            run.manifests[stage] = m
    if "data" in run.manifests:
        run.data_stats = _json(join(folder.stage_dir("data"), "stats.json"), notes)
    if "tokenize" in run.manifests:
        run.tokenize_stats = _json(join(folder.stage_dir("tokenize"), "stats.json"), notes)
    if "pretrain" in run.manifests:
        run.pretrain_history = read_jsonl(join(folder.stage_dir("pretrain"), "metrics.jsonl"), notes)
    if "finetune" in run.manifests:
        run.finetune_passes = _finetune_passes(folder.stage_dir("finetune"), run.metrics("finetune"), notes)
    if "compress" in run.manifests:
        report = _json(join(folder.stage_dir("compress"), "report.json"), notes)
        metrics = run.metrics("compress")
        run.compress = (
            report
            if isinstance(report, dict) and "methods" in report
            else (
                {"base": metrics.get("base", {}), "methods": metrics.get("methods", {})} if metrics else None
            )
        )
    if "serve" in run.manifests:
        run.serve_samples = read_jsonl(join(folder.stage_dir("serve"), "samples.jsonl"), notes)
    return run


def _manifest(folder: RunFolder, stage: str) -> Manifest | None:
    d = read_json(join(folder.stage_dir(stage), "manifest.json"))
    return Manifest.from_dict(d) if isinstance(d, dict) and "stage" in d and "config_hash" in d else None
