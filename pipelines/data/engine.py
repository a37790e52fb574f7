"""Running the operator chain on Ray Data, streaming.

Operators that work row by row are fused into one `map_batches` pass. An operator that needs the whole
dataset (global statistics, a model fit, deduplication, ordered groups) splits the chain:

- before it, the data so far is written once to a Parquet checkpoint (`_work/ckpt-N/`), unless the last
  checkpoint plus cheap numeric steps already give it; the checkpoint streams to disk, so memory does
  not grow with the input;
- statistics are one Ray Data pass over the checkpoint, reading only the columns needed: tasks emit
  mergeable partial aggregates, the driver merges them exactly (`ray_stats`);
- deduplication computes bucket keys with `map_batches`, shuffles them with `groupby` on a hash
  partition of the key and resolves buckets per partition (see `ops/dedup.py`); only one edge per
  duplicate reaches the driver;
- model imputation fits on a bounded `random_sample` of complete rows;
- ordered groups (smoothing, interpolation) use `groupby(...).map_groups`.

The fitted state then travels with the next fused pass. The last pass writes `clean/`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.config import DataConfig
from pipelines.data.ops.base import ColumnType, StatRequest
from pipelines.data.parquet_sink import StreamingParquetSink
from pipelines.data.quarantine import quarantine_unreadable_files, write_quarantine
from pipelines.data.readers import (
    InputFiles,
    ParseSpec,
    arrow_raw_of,
    arrow_to_columns,
    coerce_records,
    make_datasource,
    parse_raw,
    records_to_columns,
)
from pipelines.data.schema import arrow_schema, to_table
from pipelines.data.stats import Reporter
from pipelines.data.steps import BatchContext, Step, row_chunks, schema_after, segment_chunks
from pipelines.run_folder import join, remove_tree

KEY_ROWS_PER_PARTITION = 400_000


def parse_batch(
    table: pa.Table, spec: ParseSpec, schema: dict[str, ColumnType], ctx: BatchContext
) -> pa.Table:
    """`map_batches` body of the read step: raw records -> typed rows; bad ones quarantined."""
    n = table.num_rows
    if spec.format in ("parquet", "hf"):
        columns = arrow_to_columns(table, spec)
        df, bad = coerce_records(
            columns,
            table.column("_file_id").to_pylist(),
            table.column("_line").to_pylist(),
            spec,
            arrow_raw_of(table),
        )
    else:
        records, ids, lines, raws, bad = parse_raw(table, spec)
        encoding = spec.encoding
        df, bad2 = coerce_records(
            records_to_columns(records, spec),
            ids,
            lines,
            spec,
            lambda i: raws[i].decode(encoding, errors="backslashreplace"),
        )
        bad += bad2
    counts = {"records": n, "rows_out": len(df)}
    for entry in bad:
        key = f"quarantine:{entry['reason']}"
        counts[key] = counts.get(key, 0) + 1
    if bad and ctx.quarantine_dir:
        write_quarantine(ctx.quarantine_dir, bad, ctx.tag)
    if ctx.reporter is not None:
        ctx.reporter.send([(f"read:{spec.input_index}", counts)])
    return to_table(df, schema)


def _read_input(inp: InputFiles, cfg: DataConfig, schema: dict[str, ColumnType], ctx: BatchContext):
    import ray.data

    spec = ParseSpec(
        inp.index,
        inp.format,
        inp.config.encoding,
        inp.config.text_field,
        cfg.text_column,
        dict(cfg.columns),
        dict(zip(inp.file_ids, inp.files, strict=True)),
    )
    readable = len(inp.files) - len(inp.unreadable)
    ds = ray.data.read_datasource(make_datasource(inp), override_num_blocks=_blocks(readable))
    if inp.config.limit:
        ds = ds.limit(inp.config.limit)
    # batch_size=None: parse each block as the read yields it (at most `data.block_mb`). With a batch
    # size, Ray Data does not fuse a read with the map after it (it could change the read's
    # parallelism), so the read tasks ran ahead of the cleaning and put the whole raw input into the
    # object store first (801 MB of shared memory for the benchmark's 3.2M documents, 730 MB of JSONL).
    # Fused, each read task reads only as fast as its own operators clean.
    return ds.map_batches(
        parse_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"spec": spec, "schema": schema, "ctx": _with_tag(ctx, f"read{inp.index}")},
    )


def _blocks(files: int) -> int | None:
    """Read tasks for `files` files: one per file when there are enough to keep every CPU busy, so Ray
    fuses reading with the operators (no block splitting between them); else Ray's default."""
    import os

    if os.environ.get("RAYLM_DATA_DEFAULT_BLOCKS"):
        return None
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return files if files >= 2 * cpus else None


def _with_tag(ctx: BatchContext, tag: str) -> BatchContext:
    return BatchContext(ctx.reporter, ctx.quarantine_dir, ctx.files, tag)


def _partial_stats(df: pd.DataFrame, requests: list[StatRequest]) -> pd.DataFrame:
    """One batch's partial aggregates: per column count, sum and sum of squared deviations (Chan et al.'s
    mergeable form of the variance), missing count, and the values themselves for exact quantiles."""
    row: dict[str, Any] = {"rows": len(df)}
    for column in sorted({r.column for r in requests}):
        x = (
            pd.to_numeric(df[column], errors="coerce").to_numpy(dtype="float64")
            if any(r.column == column and r.kind != "missing_ratio" for r in requests)
            else None
        )
        row[f"missing:{column}"] = int(df[column].isna().sum())
        if x is not None:
            x = x[~np.isnan(x)]
            mean = float(x.mean()) if len(x) else 0.0
            row[f"n:{column}"], row[f"mean:{column}"] = len(x), mean
            row[f"m2:{column}"] = float(((x - mean) ** 2).sum()) if len(x) else 0.0
            if any(r.column == column and r.kind == "quantile" for r in requests):
                row[f"values:{column}"] = x.tolist()
    return pd.DataFrame([row])


def ray_stats(ds, requests: list[StatRequest]) -> dict[str, Any]:
    """Global statistics over the whole dataset in one Ray Data pass: every task computes mergeable
    partial aggregates of its batches (`_partial_stats`), and the driver merges them exactly (means and
    variances with Chan's pairwise formula; quantiles from the gathered column, linear interpolation as
    numpy/pandas). Only one small row per batch, plus the column itself for quantiles, reaches the driver."""
    if not requests:
        return {}
    parts = ds.map_batches(_partial_stats, batch_format="pandas", fn_kwargs={"requests": requests}).take_all()
    total_rows = sum(p["rows"] for p in parts)
    out: dict[str, Any] = {}
    for r in requests:
        c = r.column
        if r.kind == "missing_ratio":
            missing = sum(p.get(f"missing:{c}", 0) for p in parts)
            out[r.key] = missing / total_rows if total_rows else None
            continue
        n, mean, m2 = 0, 0.0, 0.0
        for p in parts:
            nb = p.get(f"n:{c}", 0)
            if not nb:
                continue
            delta = p[f"mean:{c}"] - mean
            total = n + nb
            mean += delta * nb / total
            m2 += p[f"m2:{c}"] + delta * delta * n * nb / total
            n = total
        if r.kind == "mean":
            out[r.key] = mean if n else None
        elif r.kind == "std":
            out[r.key] = math.sqrt(m2 / (n - r.ddof)) if n - r.ddof > 0 else None
        else:
            values = (
                np.concatenate([np.asarray(p.get(f"values:{c}") or [], dtype="float64") for p in parts])
                if parts
                else np.zeros(0)
            )
            out[r.key] = float(np.quantile(values, r.q)) if len(values) else None
    return out


def pandas_stats(df: pd.DataFrame, requests: list[StatRequest]) -> dict[str, Any]:
    """The same statistics with pandas, in process (the local runner and the tests' reference)."""
    out = {}
    for r in requests:
        col = pd.to_numeric(df[r.column], errors="coerce") if r.kind != "missing_ratio" else df[r.column]
        if r.kind == "mean":
            v = col.mean()
        elif r.kind == "std":
            v = col.std(ddof=r.ddof)
        elif r.kind == "quantile":
            v = col.quantile(r.q)
        else:
            v = float(col.isna().mean()) if len(col) else None
        out[r.key] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def _keys_fn(
    block: pd.DataFrame, ops: list[tuple[int, Any]], partitions: int, batch_size: int
) -> Iterator[pd.DataFrame]:
    """Bucket keys of every dedup operator, with the operator and the key's partition, `batch_size` rows
    of the block at a time (why not Ray's batch_size: `steps.segment_chunks`)."""
    for batch in row_chunks(block, batch_size):
        df = batch.reset_index(drop=True)
        frames = []
        for index, op in ops:
            keys = op.keys(df)
            keys["op"] = np.int64(index)
            keys["part"] = (keys["key"].to_numpy().view(np.uint64) % np.uint64(partitions)).astype(np.int64)
            frames.append(keys)
        yield pd.concat(frames, ignore_index=True)


def _partition_edges(path: str, op_index: int, part: int, dropped: np.ndarray) -> pd.DataFrame:
    """One partition's bucket edges (a Ray task): its keys, minus rows earlier operators dropped."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from pipelines.data.ops.dedup import bucket_edges, in_sorted
    from pipelines.run_folder import _fs

    fs, local = _fs(join(path, f"op={op_index}", f"part={part}"))
    if fs.get_file_info(local).type != pafs.FileType.Directory:
        return pd.DataFrame({"row_id": np.zeros(0, np.int64), "root": np.zeros(0, np.int64)})
    keys = pq.read_table(local, filesystem=fs, columns=["row_id", "key"]).to_pandas()
    if len(dropped):
        keys = keys[~in_sorted(keys["row_id"].to_numpy(), dropped)]
    return bucket_edges(keys)


class RayEngine:
    """Runs a DataConfig's operators over its inputs on the connected Ray, writing `out_dir/clean/`."""

    def __init__(
        self,
        cfg: DataConfig,
        out_dir: str,
        seed: int,
        inputs: list[InputFiles],
        reporter: Reporter,
        log: Callable[[str], None] = print,
    ):
        self.cfg, self.out_dir, self.seed, self.inputs, self.reporter, self.log = (
            cfg,
            out_dir,
            seed,
            inputs,
            reporter,
            log,
        )
        self.files = {fid: path for inp in inputs for fid, path in zip(inp.file_ids, inp.files, strict=True)}
        self.ctx = BatchContext(reporter, join(out_dir, "quarantine"), self.files, "x")
        self.work = join(out_dir, "_work")
        self.fitted: dict[int, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self._ckpts = 0
        self.ckpt_rows = 0

    # -- helpers --
    def _segment(self, ds, steps: list[Step], schema: dict[str, ColumnType], report: bool):
        if not steps:
            return ds
        ctx = _with_tag(self.ctx, f"ops{steps[0].index}-{steps[-1].index}") if report else None
        return ds.map_batches(
            segment_chunks,
            batch_format="pandas",
            batch_size=None,  # so that Ray fuses it with the read before it (steps.segment_chunks)
            fn_kwargs={"steps": steps, "schema": schema, "ctx": ctx, "batch_size": self.cfg.batch_size},
        )

    def _checkpoint(self, ds, schema: dict[str, ColumnType]):
        import ray.data

        path = join(self.work, f"ckpt-{self._ckpts}")
        t0 = time.perf_counter()
        # no minimum rows per file: a minimum makes Ray bundle rows before a write and so keeps it from
        # fusing the read into the pass (steps.segment_chunks); a task writes what it read, block by block
        ds.write_datasink(StreamingParquetSink(path, arrow_schema(schema)))
        self.ckpt_rows = ray.data.read_parquet(path).count()  # from the Parquet footers
        files = len([p for p in ray.data.read_parquet(path).input_files()])
        self._timed(f"checkpoint-{self._ckpts}", t0)
        self._ckpts += 1
        self.log(f"  checkpoint {path}: {self.ckpt_rows} rows")
        blocks = _blocks(files)
        return lambda columns=None: ray.data.read_parquet(
            path,
            columns=columns,
            schema=arrow_schema(schema) if columns is None else None,
            override_num_blocks=blocks,
        )

    def source(self, schema: dict[str, ColumnType]):
        datasets = [
            _read_input(inp, self.cfg, schema, self.ctx)
            for inp in self.inputs
            if len(inp.unreadable) < len(inp.files)
        ]
        self._quarantine_unreadable()
        if not datasets:
            import ray.data

            return ray.data.from_arrow(arrow_schema(schema).empty_table())
        ds = datasets[0]
        return ds.union(*datasets[1:]) if len(datasets) > 1 else ds

    def _quarantine_unreadable(self) -> None:
        for inp in self.inputs:
            if inp.unreadable:
                count = quarantine_unreadable_files(self.ctx.quarantine_dir, inp.index, inp.unreadable)
                self.reporter.send([(f"read:{inp.index}", {"unreadable_files": count})])

    def _timed(self, name: str, t0: float) -> None:
        self.timings[name] = round(time.perf_counter() - t0, 3)

    # -- the run --
    def run(self) -> dict[str, ColumnType]:
        """Execute; returns the output schema. Counts go to the reporter; fitted states to `self.fitted`."""
        cfg = self.cfg
        schema = cfg.initial_schema()
        ds = self.source(schema)
        reader: Callable | None = None  # set while `ds` is (a checkpoint + pending cheap steps)
        pending: list[Step] = []

        def materialize() -> None:
            nonlocal ds, reader, pending
            reader = self._checkpoint(self._segment(ds, pending, schema, report=True), schema)
            ds, pending = reader(), []

        def fit_source(columns: list[str] | None):
            """The data as of this step, for a statistics/keys pass: checkpoint + pending cheap steps."""
            nonlocal reader
            if reader is None or not all(s.op.cheap for s in pending):
                materialize()
            needed = set(columns or []) | {"row_id"}
            for s in pending:
                r = s.op.reads()
                if r is None:
                    needed = None
                    break
                needed |= r
            base = reader(sorted(needed) if needed is not None else None)
            return self._segment(
                base, pending, {c: schema[c] for c in schema if needed is None or c in needed}, report=False
            )

        dedup_results: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        for index, op in enumerate(cfg.operators):
            kind = op.kind
            if kind == "dedup" and index not in dedup_results:
                group = [(index, op)]
                for j in range(index + 1, len(cfg.operators)):
                    if cfg.operators[j].kind != "dedup":
                        break
                    group.append((j, cfg.operators[j]))
                columns = sorted({c for _, o in group for c in o.key_columns()})
                source = fit_source(columns)
                t0 = time.perf_counter()
                dedup_results.update(zip([i for i, _ in group], self._dedup(group, source), strict=True))
                self._timed("dedup-" + "-".join(f"{i}-{o.op}" for i, o in group), t0)
            if kind == "row":
                pending.append(Step(index, op))
            elif kind == "stats":
                requests = op.stats_needed(schema, cfg.text_column)
                source = fit_source([r.column for r in requests])
                t0 = time.perf_counter()
                stats = ray_stats(source, requests)
                self._timed(f"stats-{index}-{op.op}", t0)
                state = op.prepare(stats)
                self.fitted[index] = {"stats": stats}
                pending.append(Step(index, op, state))
            elif kind == "sample":
                source = fit_source(op.sample_columns())
                t0 = time.perf_counter()
                state = self._fit_sample(op, source)
                self._timed(f"fit-{index}-{op.op}", t0)
                pending.append(Step(index, op, state))
            elif kind == "dedup":
                drop_ids, summary = dedup_results[index]
                self.fitted[index] = {"clusters": summary}
                pending.append(Step(index, op, drop_ids))
            elif kind == "group":
                ds = self._segment(ds, pending, schema, report=True)
                pending, reader = [], None
                ds = self._group(ds, index, op, schema)
            else:
                raise ValueError(f"operator {op.op} has unknown kind {kind!r}")
            schema = schema_after(
                schema, op, pending[-1].state if pending and pending[-1].index == index else None
            )
        final = self._segment(ds, pending, schema, report=True)
        clean = join(self.out_dir, "clean")
        t0 = time.perf_counter()
        # no minimum rows per file: see _checkpoint
        final.write_datasink(StreamingParquetSink(clean, arrow_schema(schema), cfg.rows_per_file))
        self._timed("final-write", t0)
        self._ensure_nonempty(clean, schema)
        if not cfg.keep_checkpoints:
            remove_tree(self.work)
        return schema

    def _group(self, ds, index: int, op, schema: dict[str, ColumnType]):
        keys = list(op.group_by) or ["_group"]
        if not op.group_by:
            ds = ds.map_batches(
                lambda t: t.append_column("_group", pa.array(np.zeros(t.num_rows, np.int64))),
                batch_format="pyarrow",
            )
        reporter, name, out_schema = self.reporter, f"op:{index}:{op.op}", schema_after(schema, op)

        def fn(df: pd.DataFrame) -> pa.Table:
            n = len(df)
            out = op.apply_group(df.drop(columns=["_group"], errors="ignore"))
            reporter.send([(name, {"rows_in": n, "rows_out": len(out)})])
            return to_table(out, out_schema)

        return ds.groupby(keys).map_groups(fn, batch_format="pandas")

    def _fit_sample(self, op, ds) -> Any:
        cols = op.sample_columns()

        def complete(df: pd.DataFrame) -> pd.DataFrame:
            sub = df[cols].apply(pd.to_numeric, errors="coerce")
            return sub[sub.notna().all(axis=1)]

        complete_ds = ds.map_batches(complete, batch_format="pandas")
        n = complete_ds.count()
        if n > op.max_fit_rows:
            fraction = min(1.0, op.max_fit_rows * 1.1 / n)
            sample = complete_ds.random_sample(fraction, seed=self.seed).to_pandas()
            sample = sample.sample(n=min(len(sample), op.max_fit_rows), random_state=self.seed)
        else:
            sample = complete_ds.to_pandas() if n else pd.DataFrame(columns=cols)
        return op.fit(sample.reset_index(drop=True), self.seed)

    def _dedup(self, ops: list[tuple[int, Any]], ds) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Deduplicate with one or more consecutive dedup operators, in one pass over the data.

        A `map_batches` pass computes every operator's bucket keys and writes them to Parquet,
        hive-partitioned by operator and by a hash partition of the key (`op=i/part=j/`): a shuffle
        through disk, so memory stays flat. Then one Ray task per partition groups its keys and returns
        the edges of the buckets it holds (vectorised pandas); the driver joins them into clusters.
        Each operator sees the rows earlier ones dropped already removed, as if run one after another.
        """
        import ray

        bands = max([op.bands_rows[0] if hasattr(op, "bands_rows") else 1 for _, op in ops])
        partitions = max(4, math.ceil(self.ckpt_rows * bands / KEY_ROWS_PER_PARTITION))
        path = join(self.work, f"keys-{ops[0][0]}")
        keys = ds.map_batches(
            _keys_fn,
            batch_format="pandas",
            batch_size=None,
            fn_kwargs={"ops": ops, "partitions": partitions, "batch_size": self.cfg.batch_size},
        )
        keys.write_datasink(StreamingParquetSink(path, partition_cols=["op", "part"]))
        edges_task = ray.remote(num_cpus=1)(_partition_edges)
        results, dropped = [], np.zeros(0, np.int64)
        for index, op in ops:
            dropped_ref = ray.put(dropped)
            frames = ray.get(
                [edges_task.remote(path, index, part, dropped_ref) for part in range(partitions)]
            )
            frames = [f for f in frames if len(f)]
            frame = (
                pd.concat(frames, ignore_index=True)
                if frames
                else pd.DataFrame({"row_id": np.zeros(0, np.int64), "root": np.zeros(0, np.int64)})
            )
            from pipelines.data.ops.dedup import resolve_clusters

            drop_ids, summary = resolve_clusters(frame)
            self.log(f"  {op.op}: {summary['duplicates']} duplicates in {summary['clusters']} clusters")
            results.append((drop_ids, summary))
            dropped = np.union1d(dropped, drop_ids)
        remove_tree(path)
        return results

    @staticmethod
    def _ensure_nonempty(folder: str, schema: dict[str, ColumnType]) -> None:
        """An empty result still gets one (empty) Parquet file, so readers see the schema."""
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        from pipelines.run_folder import _fs

        fs, path = _fs(folder)
        fs.create_dir(path, recursive=True)
        files = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.path.endswith(".parquet")]
        if not files:
            pq.write_table(arrow_schema(schema).empty_table(), f"{path}/part-empty.parquet", filesystem=fs)
