"""Applying a run of operators to one batch, with the accounting: rows in and out per operator, drops by
reason, counters, and the quarantine for rows an operator fails on. Shared by the Ray engine (inside
`map_batches`) and the local, in-process runner."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa

from pipelines.data.ops.base import ColumnType, Operator, RowResult
from pipelines.data.quarantine import write_quarantine
from pipelines.data.readers import FILE_ID_SHIFT
from pipelines.data.schema import to_table
from pipelines.data.stats import Reporter


@dataclass
class Step:
    """One operator ready to apply: its position in the recipe, the operator, its fitted state."""

    index: int
    op: Operator
    state: Any = None

    @property
    def name(self) -> str:
        return f"op:{self.index}:{self.op.op}"


@dataclass
class BatchContext:
    """What a worker needs besides the batch (shipped with the task)."""

    reporter: Reporter | None
    quarantine_dir: str | None
    files: dict[int, str]
    tag: str


def row_origin(row_id: int, files: dict[int, str]) -> tuple[str | None, int]:
    return files.get(int(row_id) >> FILE_ID_SHIFT), int(row_id) & ((1 << FILE_ID_SHIFT) - 1)


def _row_json(row: pd.Series) -> str:
    return json.dumps(
        {k: (None if pd.isna(v) else v) if not isinstance(v, list | dict) else v for k, v in row.items()},
        ensure_ascii=False,
        default=str,
    )[:100_000]


def apply_isolating(step: Step, df: pd.DataFrame, files: dict[int, str]) -> tuple[RowResult, list[dict]]:
    """Apply one operator; if it raises on the batch, apply it row by row so that only the rows it fails
    on are quarantined (reason `operator_error:<op>`), never the run."""
    try:
        return step.op.apply(df, step.state), []
    except Exception:  # noqa: BLE001 - isolate the offending rows below
        pass
    kept, drops, counters, bad = [], {}, {}, []
    for i in range(len(df)):
        row = df.iloc[i : i + 1]
        try:
            res = step.op.apply(row, step.state)
        except Exception as exc:  # noqa: BLE001
            source, line = row_origin(row["row_id"].iloc[0], files) if "row_id" in row else (None, None)
            bad.append(
                {
                    "reason": f"operator_error:{step.op.op}",
                    "operator": step.index,
                    "source_file": source,
                    "line": line,
                    "detail": "".join(traceback.format_exception_only(exc)).strip()[:2000],
                    "raw": _row_json(row.iloc[0]),
                }
            )
            continue
        kept.append(res.df)
        for k, v in res.drops.items():
            drops[k] = drops.get(k, 0) + v
        for k, v in res.counters.items():
            counters[k] = counters.get(k, 0) + v
    out = pd.concat(kept, ignore_index=True) if kept else df.iloc[0:0]
    return RowResult(out, drops, counters), bad


def run_steps(df: pd.DataFrame, steps: list[Step], ctx: BatchContext | None) -> pd.DataFrame:
    """Apply `steps` in order to a batch; report the counts (when `ctx.reporter`) and quarantine."""
    reports: list[tuple[str, dict[str, int]]] = []
    quarantined: list[dict] = []
    files = ctx.files if ctx else {}
    for step in steps:
        n_in = len(df)
        if n_in == 0:
            reports.append((step.name, {"rows_in": 0, "rows_out": 0}))
            continue
        result, bad = apply_isolating(step, df, files)
        df = result.df
        counts = {"rows_in": n_in, "rows_out": len(df)}
        counts.update({f"drop:{k}": v for k, v in result.drops.items()})
        counts.update({f"counter:{k}": v for k, v in result.counters.items()})
        for entry in bad:
            key = f"quarantine:{entry['reason']}"
            counts[key] = counts.get(key, 0) + 1
        quarantined += bad
        reports.append((step.name, counts))
    if ctx is not None:
        if quarantined and ctx.quarantine_dir:
            write_quarantine(ctx.quarantine_dir, quarantined, ctx.tag)
        if ctx.reporter is not None:
            ctx.reporter.send(reports)
    return df


def segment_fn(
    batch: pd.DataFrame, steps: list[Step], schema: dict[str, ColumnType], ctx: BatchContext | None
) -> pa.Table:
    """`map_batches` body: apply the steps, return a table of exactly `schema`."""
    out = run_steps(batch.reset_index(drop=True), steps, ctx)
    return to_table(out, schema)


def segment_chunks(
    block: pd.DataFrame,
    steps: list[Step],
    schema: dict[str, ColumnType],
    ctx: BatchContext | None,
    batch_size: int,
) -> Iterator[pa.Table]:
    """`map_batches(batch_size=None)` body: a whole block in, the steps applied `batch_size` rows at a
    time. Why not Ray's `batch_size`: Ray Data does not fuse a read into a map that asks for a batch
    size, so the read tasks ran ahead of the cleaning and filled the object store with the raw input
    (docs/data.md, "Where the memory goes"); fused, a read goes only as fast as its operators."""
    for batch in row_chunks(block, batch_size):
        yield segment_fn(batch, steps, schema, ctx)


def row_chunks(block: pd.DataFrame, batch_size: int) -> Iterator[pd.DataFrame]:
    """`block` in slices of `batch_size` rows; one empty slice for an empty block."""
    for start in range(0, max(len(block), 1), batch_size):
        yield block.iloc[start : start + batch_size]


def schema_after(schema: dict[str, ColumnType], op: Operator, state: Any = None) -> dict[str, ColumnType]:
    """Columns after an operator: what it writes added, what it dropped (known once fitted) removed."""
    out = dict(schema)
    out.update(op.writes())
    if op.op == "drop_sparse_columns" and state:
        for c in state:
            out.pop(c, None)
    return out
