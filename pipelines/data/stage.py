"""The two data stages, as the run-folder contract wants them: functions over folders returning metrics.

- `run_clean(cfg, out_dir, seed)` -> `<out_dir>/clean/` (Parquet), `stats.json`, `quarantine/`;
- `run_tokenize(data_cfg, tok_cfg, clean_dir, out_dir, seed)` -> `<out_dir>/tokenizer/` (a Hugging Face
  tokenizer folder), `train/` and `heldout/` (Parquet shards of packed sequences), `stats.json`.

Both expect Ray to be connected (the orchestrator's `ray_session`). `preflight(cfg)` checks the inputs,
the columns operators need, and their resources (mapping files, NLTK data) without reading the data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.assets import resolve_path
from pipelines.data.config import DataConfig, TokenizerConfig
from pipelines.data.readers import DataInputError, InputFiles, expand_inputs, probe_inputs
from pipelines.data.stats import split_counts
from pipelines.run_folder import join, write_json_atomic

STATS = "stats.json"


def preflight(cfg: DataConfig) -> list[InputFiles]:
    """Resolve and probe the inputs and check every operator's resources; raises DataInputError naming
    each problem. Reads file listings, headers and schemas only."""
    inputs = expand_inputs(cfg)
    problems = probe_inputs(cfg, inputs)
    for i, op in enumerate(cfg.operators):
        problems += [f"operators[{i}] ({op.op}): {p}" for p in op.preflight()]
    if problems:
        raise DataInputError(problems)
    return inputs


def parquet_rows(folder: str) -> int:
    """Rows in a folder of Parquet files, from their footers."""
    import pyarrow.dataset as pads

    from pipelines.run_folder import _fs

    fs, path = _fs(folder)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


def _rows_written(folder: str) -> int:
    """Rows of a split's Parquet folder; 0 when nothing was written."""
    try:
        return parquet_rows(folder)
    except FileNotFoundError:
        return 0


def build_clean_stats(
    cfg: DataConfig,
    inputs: list[InputFiles],
    counts: dict[str, dict[str, int]],
    fitted: dict[int, dict[str, Any]],
    schema: dict[str, str],
    rows_out: int,
) -> dict[str, Any]:
    """stats.json of the data stage: per input, per operator, totals, and the accounting identity."""
    stats: dict[str, Any] = {"inputs": [], "operators": []}
    quarantined: dict[str, int] = {}
    dropped: dict[str, int] = {}
    rows_in = 0
    for inp in inputs:
        c = counts.get(f"read:{inp.index}", {})
        q = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("quarantine:")}
        if c.get("unreadable_files"):
            q["unreadable_file"] = c["unreadable_files"]
        records = c.get("records", 0) + c.get("unreadable_files", 0)
        rows_in += records
        for k, v in q.items():
            quarantined[k] = quarantined.get(k, 0) + v
        stats["inputs"].append(
            {
                "path": inp.config.path,
                "format": inp.format,
                "files": len(inp.files),
                "records": records,
                "rows_out": c.get("rows_out", 0),
                "quarantined": q,
            }
        )
    pii: dict[str, int] = {}
    for i, op in enumerate(cfg.operators):
        entry = {"index": i, "op": op.op, **split_counts(counts.get(f"op:{i}:{op.op}", {}))}
        entry.update(fitted.get(i, {}))
        for k, v in entry["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
        for k, v in entry["quarantined"].items():
            quarantined[k] = quarantined.get(k, 0) + v
        for k, v in entry["counters"].items():
            if k.startswith("pii:") or k == "docs_with_pii":
                pii[k.removeprefix("pii:")] = pii.get(k.removeprefix("pii:"), 0) + v
        stats["operators"].append(entry)
    total_dropped, total_quarantined = sum(dropped.values()), sum(quarantined.values())
    stats.update(
        {
            "rows_in": rows_in,
            "rows_out": rows_out,
            "dropped": dict(sorted(dropped.items())),
            "quarantined": dict(sorted(quarantined.items())),
            "dropped_total": total_dropped,
            "quarantined_total": total_quarantined,
            "balanced": rows_in == rows_out + total_dropped + total_quarantined,
            "identity": f"rows_in {rows_in} = rows_out {rows_out} + dropped {total_dropped} + "
            f"quarantined {total_quarantined}",
            "pii": pii,
            "columns": schema,
            "duplicates": {
                f"{e['index']}:{e['op']}": e["clusters"] for e in stats["operators"] if "clusters" in e
            },
        }
    )
    return stats


def counts_complete(stats: dict[str, Any]) -> bool:
    """Whether every batch's report is in: the accounting balances, and the last step reported as many
    rows out as `clean/` holds (a batch that drops nothing leaves the balance unchanged)."""
    last = (
        stats["operators"][-1]["rows_out"]
        if stats["operators"]
        else sum(i["rows_out"] for i in stats["inputs"])
    )
    return stats["balanced"] and last == stats["rows_out"]


def run_clean(
    cfg: DataConfig, out_dir: str, seed: int = 0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The data stage body: read, clean, write `clean/`, `stats.json`, `quarantine/`; return metrics."""
    from ray.data import DataContext

    from pipelines.data.engine import RayEngine
    from pipelines.data.stats import remote_reporter

    inputs = preflight(cfg)
    t0 = time.perf_counter()
    context = DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.op_resource_reservation_enabled,
        context.target_max_block_size,
    )
    context.execution_options.preserve_order = True  # same input, same output files, same packing
    if not os.environ.get("RAYLM_DATA_RESERVATION"):
        # Ray Data reserves half the CPUs per operator by default; on a small machine that leaves one
        # fused map operator a single task at a time. Our passes are read->operators->write chains.
        context.op_resource_reservation_enabled = False
    # A fused read->clean->write task holds one output block at a time (parquet_sink.py) and reads at
    # least one block of the checkpoint: smaller blocks bound its memory.
    context.target_max_block_size = cfg.block_mb * 1024**2
    try:
        reporter = remote_reporter()
        engine = RayEngine(cfg, out_dir, seed, inputs, reporter, log)
        schema = engine.run()
        rows_out = parquet_rows(join(out_dir, "clean"))
        counts, _ = reporter.settled(
            lambda c: counts_complete(build_clean_stats(cfg, inputs, c, engine.fitted, schema, rows_out))
        )
    finally:
        (
            context.execution_options.preserve_order,
            context.op_resource_reservation_enabled,
            context.target_max_block_size,
        ) = saved
    stats = build_clean_stats(cfg, inputs, counts, engine.fitted, schema, rows_out)
    stats["wall_s"] = round(time.perf_counter() - t0, 3)
    stats["timings"] = engine.timings
    write_json_atomic(join(out_dir, STATS), stats)
    from pipelines import metrics

    metrics.set_gauge("data_rows_per_second", stats["rows_in"] / max(stats["wall_s"], 1e-9), stage="data",
                      step="all")
    if not stats["balanced"]:
        log(f"warning: row accounting does not balance ({stats['identity']}); a task was probably retried")
    log(f"  {stats['identity']}")
    return {
        "rows_in": stats["rows_in"],
        "rows_out": rows_out,
        "dropped": stats["dropped_total"],
        "quarantined": stats["quarantined_total"],
        "balanced": stats["balanced"],
        "docs_per_s": round(stats["rows_in"] / max(stats["wall_s"], 1e-9), 1),
    }


# ------------------------------------------------------------------------------------------------------
# Tokenize


def _split_mask(keys: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for held-out rows: a seeded hash of the row key below `fraction` (stable across runs)."""
    if fraction <= 0:
        return np.zeros(len(keys), bool)
    with np.errstate(over="ignore"):
        h = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(
            seed * 0xBF58476D1CE4E5B9 % 2**64
        )
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def _row_keys(df: pd.DataFrame, column: str) -> np.ndarray:
    if "row_id" in df.columns:
        return df["row_id"].to_numpy(np.int64).view(np.uint64)
    from pipelines.data.ops.dedup import hash64

    return np.fromiter(
        (hash64(str(t).encode("utf-8", "surrogatepass")) for t in df[column].tolist()),
        dtype=np.uint64,
        count=len(df),
    )


def pack_batch(
    df: pd.DataFrame,
    column: str,
    split: str,
    tokenizer_dir: str,
    seq_len: int,
    eos_id: int,
    pad_id: int,
    bos_id: int | None,
    seed: int,
    fraction: float,
    reporter,
) -> pa.Table:
    """`map_batches` body: this split's documents of the batch -> packed sequences."""
    from pipelines.data.packing import SEQUENCE_SCHEMA, pack
    from pipelines.data.tokenizer import encode_batch

    held = _split_mask(_row_keys(df, column), seed, fraction)
    chosen = df[held if split == "heldout" else ~held]
    texts = [t for t in chosen[column].tolist() if isinstance(t, str) and t]
    if not texts:
        return SEQUENCE_SCHEMA.empty_table()
    packed = pack(encode_batch(tokenizer_dir, texts), seq_len, eos_id, pad_id, bos_id)
    if reporter is not None:
        reporter.send(
            [
                (
                    split,
                    {
                        "docs": packed.docs,
                        "tokens": packed.tokens,
                        "sequences": len(packed.input_ids),
                        "padding": packed.padding,
                        "chars": sum(map(len, texts)),
                    },
                )
            ]
        )
    return packed.to_table()


def text_bytes(source: str, column: str) -> int:
    """Uncompressed bytes of a text column over a folder of Parquet files, from their footers (no pass
    over the data): about the number of characters, to size the tokenizer's training sample."""
    import pyarrow.dataset as pads

    from pipelines.run_folder import _fs

    fs, path = _fs(source)
    total = 0
    for fragment in pads.dataset(path, filesystem=fs, format="parquet").get_fragments():
        meta = fragment.metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if column not in names:
            continue
        index = names.index(column)
        total += sum(
            meta.row_group(g).column(index).total_uncompressed_size for g in range(meta.num_row_groups)
        )
    return total


def _training_texts(ds, source: str, column: str, seed: int, budget: int | None, log) -> tuple[Any, int]:
    """An iterator over a seeded sample of texts holding about `budget` characters."""
    total = text_bytes(source, column)
    fraction = 1.0 if budget is None or total <= budget else budget / total
    log(f"  training the BPE on {fraction:.0%} of ~{total:,} bytes of text")

    def sample(df: pd.DataFrame) -> pd.DataFrame:
        keep = (
            _split_mask(_row_keys(df, column), seed + 7919, fraction)
            if fraction < 1
            else np.ones(len(df), bool)
        )
        return df.loc[keep, [column]]

    sampled = ds.map_batches(sample, batch_format="pandas")

    def texts():
        for batch in sampled.iter_batches(batch_format="pandas", batch_size=4096):
            yield from (t for t in batch[column].tolist() if isinstance(t, str) and t)

    return texts(), total


def run_tokenize(
    data_cfg: DataConfig | None,
    tok_cfg: TokenizerConfig,
    clean_dir: str,
    out_dir: str,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The tokenize stage body: tokenizer -> `tokenizer/`, packed sequences -> `train/` and `heldout/`."""
    import ray.data
    from ray.data import DataContext

    from pipelines.data.stats import remote_reporter
    from pipelines.data.tokenizer import copy_given, train_bpe

    t0 = time.perf_counter()
    column = tok_cfg.column or (data_cfg.text_column if data_cfg else None) or "text"
    source = resolve_path(tok_cfg.input) if tok_cfg.input else clean_dir
    ds = ray.data.read_parquet(source)
    if column not in ds.schema().names:
        raise DataInputError([f"tokenizer: {source} has no column '{column}' (columns: {ds.schema().names})"])
    keep = [c for c in ("row_id", column) if c in ds.schema().names]
    ds = ray.data.read_parquet(source, columns=keep)
    tok_dir = join(out_dir, "tokenizer")
    stats: dict[str, Any] = {"input": source, "column": column}
    if tok_cfg.path:
        hf = copy_given(resolve_path(tok_cfg.path), tok_dir)
        stats["tokenizer"] = {"source": tok_cfg.path, "trained": False}
    else:
        texts, total_chars = _training_texts(ds, source, column, seed, tok_cfg.max_train_chars, log)
        t1 = time.perf_counter()
        hf = train_bpe(texts, tok_cfg, tok_dir)
        stats["tokenizer"] = {
            "trained": True,
            "train_s": round(time.perf_counter() - t1, 2),
            "corpus_chars": total_chars,
        }
    eos_id = hf.eos_token_id
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else eos_id
    bos_id = hf.bos_token_id if tok_cfg.add_bos else None
    if tok_cfg.add_bos and bos_id is None:
        raise DataInputError([f"tokenizer.add_bos: the tokenizer in {tok_dir} has no bos token"])
    stats["tokenizer"].update(
        {
            "vocab_size": len(hf),
            "eos_id": eos_id,
            "pad_id": pad_id,
            "bos_id": hf.bos_token_id,
            "special_tokens": hf.all_special_tokens,
        }
    )
    log(f"  tokenizer: vocab {len(hf)}, eos {eos_id}, pad {pad_id}")

    context = DataContext.get_current()
    saved = context.execution_options.preserve_order
    context.execution_options.preserve_order = True
    reporter = remote_reporter()
    splits = ["train"] + (["heldout"] if tok_cfg.heldout_fraction > 0 else [])
    try:
        for split in splits:
            packed = ds.map_batches(
                pack_batch,
                batch_format="pandas",
                batch_size=tok_cfg.batch_size,
                fn_kwargs={
                    "column": column,
                    "split": split,
                    "tokenizer_dir": tok_dir,
                    "seq_len": tok_cfg.seq_len,
                    "eos_id": eos_id,
                    "pad_id": pad_id,
                    "bos_id": bos_id,
                    "seed": seed,
                    "fraction": tok_cfg.heldout_fraction,
                    "reporter": reporter,
                },
            )
            if split == "train" and tok_cfg.shuffle:
                packed = packed.random_shuffle(seed=seed)
            packed.write_parquet(
                join(out_dir, split),
                min_rows_per_file=min(tok_cfg.rows_per_file, 4096),
                max_rows_per_file=tok_cfg.rows_per_file,
            )
    finally:
        context.execution_options.preserve_order = saved
    written = {split: _rows_written(join(out_dir, split)) for split in splits}
    # complete when every batch's report is in: each batch with documents packs at least one sequence
    counts, _ = reporter.settled(
        lambda c: all(c.get(split, {}).get("sequences", 0) == n for split, n in written.items())
    )
    for split in ("train", "heldout"):
        c = counts.get(split, {})
        stats[split] = {k: c.get(k, 0) for k in ("docs", "tokens", "sequences", "padding", "chars")}
        if c.get("sequences"):
            stats[split]["sequence_rows_written"] = written[split]
    train = stats["train"]
    stats.update(
        {
            "seq_len": tok_cfg.seq_len,
            "tokens": train["tokens"] + stats["heldout"]["tokens"],
            "sequences": train["sequences"] + stats["heldout"]["sequences"],
            "docs": train["docs"] + stats["heldout"]["docs"],
            "chars_per_token": round(
                (train["chars"] + stats["heldout"]["chars"])
                / max(train["tokens"] + stats["heldout"]["tokens"], 1),
                3,
            ),
            "padding_fraction": round(
                (train["padding"] + stats["heldout"]["padding"])
                / max((train["sequences"] + stats["heldout"]["sequences"]) * tok_cfg.seq_len, 1),
                4,
            ),
            "wall_s": round(time.perf_counter() - t0, 3),
        }
    )
    write_json_atomic(join(out_dir, STATS), stats)
    log(
        f"  {stats['tokens']:,} tokens in {stats['sequences']:,} sequences of {tok_cfg.seq_len} "
        f"({stats['docs']:,} documents; held out {stats['heldout']['sequences']:,} sequences)"
    )
    return {
        "tokens": stats["tokens"],
        "sequences": stats["sequences"],
        "docs": stats["docs"],
        "vocab_size": stats["tokenizer"]["vocab_size"],
        "heldout_sequences": stats["heldout"]["sequences"],
        "tokens_per_s": round(stats["tokens"] / max(stats["wall_s"], 1e-9), 1),
    }
