"""The same operator chain in one process, without Ray: the reference the Ray engine is tested against,
and the "raylm operators, single process" column of the benchmark. Holds the whole dataset in memory;
use it for tests and small data, and the Ray engine for real runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.config import DataConfig
from pipelines.data.engine import pandas_stats, parse_batch
from pipelines.data.ops.dedup import bucket_edges, resolve_clusters
from pipelines.data.quarantine import quarantine_unreadable_files
from pipelines.data.readers import (
    InputFiles,
    ParseSpec,
    guard_corrupt_tail,
    read_arrow_batches,
    read_csv_rows,
    read_jsonl_lines,
    read_text_units,
)
from pipelines.data.schema import to_table
from pipelines.data.stats import Reporter, StatsCollector
from pipelines.data.steps import BatchContext, Step, run_steps, schema_after


def _raw_tables(inp: InputFiles) -> Iterator[pa.Table]:
    for path, file_id in zip(inp.files, inp.file_ids, strict=True):
        if path not in inp.unreadable:
            yield from guard_corrupt_tail(_file_tables(inp, path, file_id), file_id)


def _file_tables(inp: InputFiles, path: str, file_id: int) -> Iterator[pa.Table]:
    fs = inp.filesystem
    if inp.format == "parquet":
        with fs.open_input_file(path) as f:
            yield from read_arrow_batches(f, "parquet", file_id)
        return
    with fs.open_input_stream(path) as f:  # `.gz` is decompressed by Arrow (compression="detect")
        if inp.format == "jsonl":
            yield from read_jsonl_lines(f, file_id)
        elif inp.format == "csv":
            yield from read_csv_rows(f, file_id, inp.config.encoding, "\t" if path.endswith(".tsv") else ",")
        elif inp.format == "text":
            yield from read_text_units(f.read(), file_id, inp.config.text_unit)
        else:
            yield from read_arrow_batches(f, "hf", file_id)


def read_local(cfg: DataConfig, inputs: list[InputFiles], ctx: BatchContext) -> pd.DataFrame:
    """Every input parsed and typed into one DataFrame (bad records quarantined and counted)."""
    schema = cfg.initial_schema()
    frames = []
    for inp in inputs:
        spec = ParseSpec(
            inp.index,
            inp.format,
            inp.config.encoding,
            inp.config.text_field,
            cfg.text_column,
            dict(cfg.columns),
            dict(zip(inp.file_ids, inp.files, strict=True)),
        )
        if inp.unreadable:
            count = quarantine_unreadable_files(ctx.quarantine_dir, inp.index, inp.unreadable)
            ctx.reporter.send([(f"read:{inp.index}", {"unreadable_files": count})])
        left = inp.config.limit
        for table in _raw_tables(inp):
            if left is not None:
                if left <= 0:
                    break
                table = table.slice(0, left)
                left -= table.num_rows
            for start in range(0, table.num_rows, cfg.batch_size):
                chunk = table.slice(start, cfg.batch_size)
                frames.append(
                    parse_batch(
                        chunk,
                        spec,
                        schema,
                        BatchContext(ctx.reporter, ctx.quarantine_dir, ctx.files, f"read{inp.index}-{start}"),
                    )
                )
    table = pa.concat_tables(frames) if frames else to_table(pd.DataFrame(), schema)
    return table.to_pandas()


def _batches(df: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, max(len(df), 1), size):
        yield df.iloc[start : start + size].reset_index(drop=True)


def run_local(
    cfg: DataConfig,
    inputs: list[InputFiles],
    seed: int = 0,
    quarantine_dir: str | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, int]], dict[int, dict[str, Any]], dict[str, str]]:
    """(clean frame, counts per step, fitted state per operator, output schema)."""
    collector = StatsCollector()
    reporter = Reporter(collector, remote=False)
    files = {fid: p for inp in inputs for fid, p in zip(inp.file_ids, inp.files, strict=True)}
    ctx = BatchContext(reporter, quarantine_dir, files, "local")
    df = read_local(cfg, inputs, ctx)
    schema = cfg.initial_schema()
    fitted: dict[int, dict[str, Any]] = {}
    for index, op in enumerate(cfg.operators):
        state: Any = None
        if op.kind == "stats":
            stats = pandas_stats(df, op.stats_needed(schema, cfg.text_column))
            state = op.prepare(stats)
            fitted[index] = {"stats": stats}
        elif op.kind == "sample":
            cols = op.sample_columns()
            complete = df[cols].apply(pd.to_numeric, errors="coerce").dropna()
            if len(complete) > op.max_fit_rows:
                complete = complete.sample(n=op.max_fit_rows, random_state=seed)
            state = op.fit(complete.reset_index(drop=True), seed)
        elif op.kind == "dedup":
            keys = pd.concat([op.keys(b) for b in _batches(df, cfg.batch_size)], ignore_index=True)
            state, summary = resolve_clusters(bucket_edges(keys))
            fitted[index] = {"clusters": summary}
        if op.kind == "group":
            keys = list(op.group_by)
            n = len(df)
            groups = (
                [op.apply_group(g) for _, g in df.groupby(keys, sort=True, dropna=False)]
                if keys and n
                else ([op.apply_group(df)] if n else [])
            )
            df = pd.concat(groups, ignore_index=True) if groups else df
            reporter.send([(f"op:{index}:{op.op}", {"rows_in": n, "rows_out": len(df)})])
        else:
            step = Step(index, op, state)
            parts = [
                run_steps(b, [step], BatchContext(reporter, quarantine_dir, files, f"op{index}-{i}"))
                for i, b in enumerate(_batches(df, cfg.batch_size))
            ]
            df = pd.concat(parts, ignore_index=True) if parts else df
        schema = schema_after(schema, op, state)
    out = to_table(df, schema).to_pandas() if len(df) else df
    return out.reset_index(drop=True), collector.snapshot(), fitted, schema


def run_clean_local(cfg: DataConfig, out_dir: str, seed: int = 0) -> dict[str, Any]:
    """`run_clean` without Ray: writes the same clean/ (one file), stats.json and quarantine/."""
    import pyarrow.parquet as pq

    from pipelines.data.stage import STATS, build_clean_stats, preflight
    from pipelines.run_folder import join, write_json_atomic

    inputs = preflight(cfg)
    df, counts, fitted, schema = run_local(cfg, inputs, seed, join(out_dir, "quarantine"))
    clean = join(out_dir, "clean")
    import os

    os.makedirs(clean, exist_ok=True)
    pq.write_table(to_table(df, schema), join(clean, "part-0.parquet"))
    stats = build_clean_stats(cfg, inputs, counts, fitted, schema, len(df))
    write_json_atomic(join(out_dir, STATS), stats)
    return stats


def sorted_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by row_id, for comparing runs."""
    return df.sort_values("row_id", kind="stable").reset_index(drop=True) if "row_id" in df else df


__all__ = ["run_local", "run_clean_local", "read_local", "sorted_frame", "np"]
