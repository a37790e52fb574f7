"""Reading inputs so that nothing crashes the run and nothing is lost.

`expand_inputs` lists each input's files (local or `s3://`, folders, globs) and `probe_inputs` checks,
before any work, that the columns the recipe needs exist (CSV headers, Parquet/HF schemas, the first JSONL
records). Reading is a Ray Data datasource (`RecordFileDatasource`) that streams each file a few MB at a
time into raw records with their file and line; `parse_raw` (in `map_batches`) decodes and parses them
and `coerce_records` types them. A record that is not valid in the input's encoding, not valid JSON, not
an object, a bad CSV row, or holds a value of the wrong type goes to the quarantine with its reason.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.assets import resolve_path
from pipelines.data.config import DataConfig, InputConfig
from pipelines.data.ops.base import ColumnType
from pipelines.data.schema import coerce_column, column_series

EXTENSIONS = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson"),
    "csv": (".csv", ".csv.gz", ".tsv"),
    "parquet": (".parquet",),
    "text": (".txt", ".md", ".rst", ".text"),
}
FILE_ID_SHIFT = 32
"""row_id = file_id << 32 | record number in the file: unique, and ordered like the input."""
CHUNK_BYTES = 256 << 10
"""JSON Lines are read this much at a time. Small enough that a file which breaks part-way (a truncated
gzip: Arrow raises for the whole read that meets the break) loses at most this much before the break;
large enough that the per-chunk Python work is noise next to parsing."""
RECORDS_PER_BLOCK = 4096
PROBE_RECORDS = 200


class DataInputError(ValueError):
    """Inputs that cannot be read as the recipe says; raised before any work starts."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class InputFiles:
    """One recipe input, resolved: its format and files (each with a run-wide file id)."""

    index: int
    config: InputConfig
    format: str
    files: list[str]
    file_ids: list[int] = field(default_factory=list)
    filesystem: Any = None
    unreadable: dict[str, str] = field(default_factory=dict)
    """Files that cannot be opened as their format (e.g. a corrupt Parquet footer): path -> error. They
    are quarantined whole and not read."""

    def label(self) -> str:
        return f"inputs[{self.index}] ({self.config.path})"


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    from pathlib import Path

    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _list_files(fs: pafs.FileSystem, base: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue  # hidden files, _SUCCESS markers, _work folders
        files.append(info.path)
    return sorted(files)


def _format_of(path: str) -> str | None:
    low = path.lower()
    for fmt, exts in EXTENSIONS.items():
        if low.endswith(exts):
            return fmt
    return None


def _hf_files(fs: pafs.FileSystem, folder: str, split: str | None) -> tuple[list[str], list[str]]:
    """Arrow files of a dataset saved with `save_to_disk` (a Dataset or one split of a DatasetDict)."""

    def read(path: str) -> Any:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))

    info = fs.get_file_info([f"{folder}/state.json", f"{folder}/dataset_dict.json"])
    if info[1].type == pafs.FileType.File:
        splits = read(f"{folder}/dataset_dict.json").get("splits", [])
        if split is None:
            if len(splits) != 1:
                return [], [f"is a DatasetDict with splits {splits}: set `split:`"]
            split = splits[0]
        if split not in splits:
            return [], [f"has no split {split!r} (splits: {splits})"]
        folder = f"{folder}/{split}"
    elif info[0].type != pafs.FileType.File:
        return [], ["is not a Hugging Face dataset folder (no state.json or dataset_dict.json)"]
    state = read(f"{folder}/state.json")
    return [f"{folder}/{d['filename']}" for d in state.get("_data_files", [])], []


def expand_inputs(cfg: DataConfig) -> list[InputFiles]:
    """Resolve every input to its files and format; raises DataInputError naming each problem."""
    problems: list[str] = []
    out: list[InputFiles] = []
    next_id = 0
    for index, inp in enumerate(cfg.inputs):
        where = f"inputs[{index}] ({inp.path})"
        resolved = resolve_path(inp.path)
        try:
            fs, base = _filesystem(resolved)
        except Exception as exc:  # noqa: BLE001 - bad URI or unreachable store
            problems.append(f"{where}: cannot open: {exc}")
            continue
        fmt = inp.format
        if any(ch in base for ch in "*?["):
            parent = base[: min(base.index(ch) for ch in "*?[" if ch in base)].rsplit("/", 1)[0]
            files = [f for f in _list_files(fs, parent) if fnmatch.fnmatch(f, base)]
        else:
            kind = fs.get_file_info(base).type
            if kind == pafs.FileType.NotFound:
                problems.append(f"{where}: no such file or folder ({resolved})")
                continue
            if kind == pafs.FileType.Directory:
                is_hf = any(
                    i.type == pafs.FileType.File
                    for i in fs.get_file_info([f"{base}/state.json", f"{base}/dataset_dict.json"])
                )
                if fmt == "hf" or (fmt == "auto" and is_hf):
                    files, errs = _hf_files(fs, base, inp.split)
                    problems += [f"{where}: {e}" for e in errs]
                    fmt = "hf"
                else:
                    files = _list_files(fs, base)
            else:
                files = [base]
        if fmt == "auto":
            found = {_format_of(f) for f in files}
            if None in found or len(found) != 1:
                problems.append(
                    f"{where}: cannot tell the format from the file names "
                    f"({', '.join(sorted({f.rsplit('/', 1)[-1] for f in files})[:5])}): set `format:`"
                )
                continue
            fmt = found.pop()
        elif fmt in EXTENSIONS and files and len(files) > 1:
            files = [f for f in files if _format_of(f) in (fmt, None)]
        if not files:
            problems.append(f"{where}: no {fmt} files found")
            continue
        ids = list(range(next_id, next_id + len(files)))
        next_id += len(files)
        out.append(InputFiles(index, inp, fmt, files, ids, fs))
    if problems:
        raise DataInputError(problems)
    return out


# ------------------------------------------------------------------------------------------------------
# Probing the columns, before any work.


def _input_columns(inp: InputFiles) -> set[str] | None:
    """Columns this input offers (from headers/schemas/first records); None when it cannot tell."""
    fs = inp.filesystem
    if inp.format == "text":
        return {"text"}
    if inp.format == "csv":
        cols: set[str] = set()
        headers = 0
        for path in inp.files:
            try:
                with fs.open_input_stream(path) as f:
                    head = f.read(1 << 16).decode(inp.config.encoding, errors="replace")
            except _CORRUPT_TAIL:
                continue  # broken part-way: the read keeps its good rows and quarantines the break
            reader = csv.reader(io.StringIO(head), delimiter="\t" if path.endswith(".tsv") else ",")
            header = next(reader, [])
            headers += bool(header)
            cols |= set(header)
        return cols if headers else None  # only empty files: no records, nothing to check
    if inp.format == "jsonl":
        cols = set()
        seen = 0
        for path in inp.files:
            try:  # Arrow's `open_input_stream` decompresses `.gz` itself (compression="detect")
                with fs.open_input_stream(path) as f:
                    head = f.read(1 << 20)
            except _CORRUPT_TAIL:
                continue  # broken part-way: the read keeps its good records and quarantines the break
            for line in head.splitlines()[:PROBE_RECORDS]:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    cols |= set(rec)
                    seen += 1
            if seen >= PROBE_RECORDS:
                break
        return cols if seen else None
    cols = set()
    for path in inp.files:
        try:
            cols |= set(_arrow_schema(fs, path, inp.format).names)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is quarantined, not fatal
            inp.unreadable[path] = f"{type(exc).__name__}: {exc}"
    return cols


def _arrow_schema(fs: pafs.FileSystem, path: str, fmt: str) -> pa.Schema:
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with fs.open_input_file(path) as f:
            return pq.read_schema(f)
    with fs.open_input_stream(path) as f:
        return pa.ipc.open_stream(f).schema


def probe_inputs(cfg: DataConfig, inputs: list[InputFiles]) -> list[str]:
    """Problems: an input without the text column (every record needs it), or a column operators read
    that no input has. Inputs may lack other columns (their records then hold missing values there), and
    declared columns no operator reads may be absent everywhere."""
    needed: dict[str, str] = {}
    for i, op in enumerate(cfg.operators):
        for name in sorted(op.reads() or ()):
            if name in cfg.columns and name != cfg.text_column:
                needed.setdefault(name, f"operators[{i}] ({op.op})")
    problems, seen, known = [], set(), True
    described = []
    for inp in inputs:
        cols = _input_columns(inp)
        if cols is None or (inp.unreadable and len(inp.unreadable) == len(inp.files)):
            known = False  # e.g. only corrupt records or files: they will be quarantined
            continue
        renamed = {cfg.text_column if (c == inp.config.text_field and cfg.text_column) else c for c in cols}
        if inp.format == "text" and cfg.text_column:
            renamed = {cfg.text_column}
        seen |= renamed
        described.append(f"{inp.label()}: {', '.join(sorted(cols)[:20]) or 'none'}")
        if cfg.text_column and cfg.text_column not in renamed:
            problems.append(
                f"{inp.label()}: {inp.format} input has no text column '{cfg.text_column}' (its "
                f"columns: {', '.join(sorted(cols)[:20]) or 'none'}); set `text_field:` on the input "
                f"if its text is under another name"
            )
    if known:
        for name, user in needed.items():
            if name not in seen:
                problems.append(
                    f"no input has column '{name}', which {user} needs (columns found: "
                    f"{'; '.join(described)})"
                )
    return problems


# ------------------------------------------------------------------------------------------------------
# Reading: raw records with their file and line.


RAW_SCHEMA = pa.schema(
    [("_file_id", pa.int64()), ("_line", pa.int64()), ("_raw", pa.binary()), ("_error", pa.string())]
)


def _raw_block(
    ids: list[int], lines: list[int], raws: list[bytes | None], errors: list[str | None]
) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(lines, pa.int64()),
            pa.array(raws, pa.binary()),
            pa.array(errors, pa.string()),
        ],
        schema=RAW_SCHEMA,
    )


# What a file that breaks part-way raises while it is streamed: a truncated gzip (OSError from Arrow's
# decompressor, EOFError from Python's gzip), a corrupt deflate block (zlib.error), a Parquet/Arrow file
# cut short (ArrowInvalid).
_CORRUPT_TAIL = (OSError, EOFError, zlib.error, pa.ArrowInvalid)


def guard_corrupt_tail(blocks: Iterator[pa.Table], file_id: int) -> Iterator[pa.Table]:
    """Pass a file's record blocks through; when the file breaks part-way, keep what was read and add one
    `corrupt_file` record (quarantined, with the error and the line after the last good record) instead of
    failing the whole read task, so the run completes and the loss is counted."""
    last_line = 0
    try:
        for block in blocks:
            if block.num_rows:
                lines = block.column("_line")
                last_line = max(last_line, int(pc.max(lines).as_py() or 0))
            yield block
    except _CORRUPT_TAIL as exc:
        yield _raw_block([file_id], [last_line + 1], [None], [f"corrupt_file: {type(exc).__name__}: {exc}"])


def read_jsonl_lines(stream, file_id: int) -> Iterator[pa.Table]:
    """JSON Lines as raw records, a few MB at a time; blank lines are skipped (not records)."""
    ids, lines, raws = [], [], []
    carry, line_no = b"", 0
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            break
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        for part in parts:
            line_no += 1
            if part.strip():
                ids.append(file_id)
                lines.append(line_no)
                raws.append(part.rstrip(b"\r"))
        if len(raws) >= RECORDS_PER_BLOCK:
            yield _raw_block(ids, lines, raws, [None] * len(raws))
            ids, lines, raws = [], [], []
    if carry.strip():
        ids.append(file_id)
        lines.append(line_no + 1)
        raws.append(carry.rstrip(b"\r"))
    if raws:
        yield _raw_block(ids, lines, raws, [None] * len(raws))


def read_text_units(data: bytes, file_id: int, unit: str) -> Iterator[pa.Table]:
    """A text file as one record, one per paragraph, or one per non-blank line (decoded later)."""
    if unit == "file":
        yield _raw_block([file_id], [1], [data], [None])
        return
    ids, lines, raws = [], [], []
    current: list[bytes] = []
    start = 0
    for n, line in enumerate(data.split(b"\n"), 1):
        if unit == "line":
            if line.strip():
                ids.append(file_id)
                lines.append(n)
                raws.append(line.rstrip(b"\r"))
            continue
        if line.strip():
            if not current:
                start = n
            current.append(line.rstrip(b"\r"))
        elif current:
            ids.append(file_id)
            lines.append(start)
            raws.append(b"\n".join(current))
            current = []
    if current:
        ids.append(file_id)
        lines.append(start)
        raws.append(b"\n".join(current))
    for i in range(0, len(raws), RECORDS_PER_BLOCK):
        yield _raw_block(
            ids[i : i + RECORDS_PER_BLOCK],
            lines[i : i + RECORDS_PER_BLOCK],
            raws[i : i + RECORDS_PER_BLOCK],
            [None] * len(raws[i : i + RECORDS_PER_BLOCK]),
        )


def read_csv_rows(stream, file_id: int, encoding: str, delimiter: str = ",") -> Iterator[pa.Table]:
    """CSV rows as raw records holding a JSON object (header -> value); bad rows carry their error."""
    text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return
    ids, lines, raws, errors = [], [], [], []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            ids.append(file_id)
            lines.append(start)
            raws.append(None)
            errors.append(f"bad_csv_row: {exc}")
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        ids.append(file_id)
        lines.append(start)
        joined = delimiter.join(row)
        if any("\udc80" <= ch <= "\udcff" for ch in joined):
            raws.append(joined.encode(encoding, errors="surrogateescape"))
            errors.append("bad_encoding")
        elif len(row) != len(header):
            raws.append(joined.encode(encoding, errors="surrogateescape"))
            errors.append(f"bad_csv_row: {len(row)} fields, header has {len(header)}")
        else:
            raws.append(json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False).encode("utf-8"))
            errors.append(None)
        if len(raws) >= RECORDS_PER_BLOCK:
            yield _raw_block(ids, lines, raws, errors)
            ids, lines, raws, errors = [], [], [], []
    if raws:
        yield _raw_block(ids, lines, raws, errors)


def read_arrow_batches(f, fmt: str, file_id: int) -> Iterator[pa.Table]:
    """Parquet or HF (Arrow IPC stream) record batches, with the file id and 0-based row number."""
    import pyarrow.parquet as pq

    row = 0
    if fmt == "parquet":
        batches = pq.ParquetFile(f).iter_batches(batch_size=RECORDS_PER_BLOCK)
    else:
        batches = iter(pa.ipc.open_stream(f))
    for batch in batches:
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        table = table.append_column("_file_id", pa.array(np.full(n, file_id), pa.int64()))
        table = table.append_column("_line", pa.array(np.arange(row, row + n), pa.int64()))
        row += n
        yield table


def make_datasource(inp: InputFiles):
    """A Ray Data datasource reading `inp`'s files as raw (or Arrow) records."""
    from ray.data.datasource import FileBasedDatasource

    ids = dict(zip(inp.files, inp.file_ids, strict=True))
    fmt, unit, encoding = inp.format, inp.config.text_unit, inp.config.encoding

    class RecordFileDatasource(FileBasedDatasource):
        _NUM_THREADS_PER_TASK = 0

        def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
            file_id = ids.get(path, ids.get(path.removeprefix("/"), -1))
            yield from guard_corrupt_tail(self._blocks(f, path, file_id), file_id)

        def _blocks(self, f: pa.NativeFile, path: str, file_id: int) -> Iterator[pa.Table]:
            if fmt == "jsonl":
                yield from read_jsonl_lines(f, file_id)  # .gz is decompressed by the opener
            elif fmt == "csv":
                yield from read_csv_rows(f, file_id, encoding, "\t" if path.endswith(".tsv") else ",")
            elif fmt == "text":
                yield from read_text_units(f.readall(), file_id, unit)
            else:
                yield from read_arrow_batches(f, fmt, file_id)

        def _open_input_source(self, filesystem, path, **open_args):
            if fmt == "parquet":  # Parquet needs random access
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

    readable = [p for p in inp.files if p not in inp.unreadable]
    return RecordFileDatasource(readable, filesystem=inp.filesystem)


# ------------------------------------------------------------------------------------------------------
# Parsing and typing.


@dataclass
class ParseSpec:
    """What parsing one input needs (shipped to Ray workers)."""

    input_index: int
    format: str
    encoding: str
    text_field: str | None
    text_column: str | None
    columns: dict[str, ColumnType]
    files: dict[int, str]


def parse_raw(table: pa.Table, spec: ParseSpec) -> tuple[list[dict], list[int], list[int], list, list[dict]]:
    """Raw records -> (parsed records, their file ids, their lines, their raw bytes, quarantine entries)."""
    from pipelines.data.quarantine import raw_fields

    file_ids = table.column("_file_id").to_pylist()
    lines = table.column("_line").to_pylist()
    raws = table.column("_raw").to_pylist()
    errors = table.column("_error").to_pylist()
    records, rec_ids, rec_lines, rec_raws, bad = [], [], [], [], []

    def quarantine(i: int, reason: str, detail: str | None = None, exact: bool = False) -> None:
        entry = {
            "reason": reason,
            "input": spec.input_index,
            "source_file": spec.files.get(file_ids[i]),
            "line": lines[i],
            **raw_fields(raws[i], spec.encoding, exact),
        }
        if detail:
            entry["detail"] = detail
        bad.append(entry)

    for i, raw in enumerate(raws):
        err = errors[i]
        if err is not None:
            reason, _, detail = err.partition(": ")
            quarantine(i, reason, detail or None, exact=reason == "bad_encoding")
            continue
        if spec.format == "csv":
            records.append(json.loads(raw))
        else:
            try:
                text = raw.decode(spec.encoding)
            except UnicodeDecodeError as exc:
                quarantine(i, "bad_encoding", f"{exc.reason} at byte {exc.start}", exact=True)
                continue
            if spec.format == "text":
                records.append({"text": text})
            else:
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    quarantine(i, "bad_json", str(exc))
                    continue
                if not isinstance(obj, dict):
                    quarantine(i, "not_an_object", f"a JSON {type(obj).__name__}")
                    continue
                records.append(obj)
        rec_ids.append(file_ids[i])
        rec_lines.append(lines[i])
        rec_raws.append(raw)
    return records, rec_ids, rec_lines, rec_raws, bad


def coerce_records(
    columns: dict[str, list[Any]], file_ids: list[int], lines: list[int], spec: ParseSpec, raw_of: Any
) -> tuple[pd.DataFrame, list[dict]]:
    """Column values -> a typed batch (row_id, text, declared columns) and quarantine entries for records
    with a missing text or a value of the wrong type. `raw_of(i)` gives record i's raw text."""
    n = len(file_ids)
    bad_reason: list[str | None] = [None] * n
    frame: dict[str, pd.Series] = {}
    row_id = (np.asarray(file_ids, dtype=np.int64) << FILE_ID_SHIFT) | np.asarray(lines, dtype=np.int64)
    frame["row_id"] = pd.Series(row_id)
    wanted: dict[str, ColumnType] = {}
    if spec.text_column:
        wanted[spec.text_column] = "str"
    wanted.update({k: v for k, v in spec.columns.items() if k != spec.text_column})
    for name, kind in wanted.items():
        values = columns.get(name, [None] * n)
        is_text = name == spec.text_column
        coerced, bad = coerce_column(values, kind, strict_str=is_text)
        for i in np.flatnonzero(bad):
            bad_reason[i] = bad_reason[i] or f"bad_type:{name}"
        if is_text:
            for i, v in enumerate(coerced):
                if v is None and bad_reason[i] is None:
                    bad_reason[i] = f"missing_column:{name}"
        frame[name] = column_series(coerced, kind)
    df = pd.DataFrame(frame)
    quarantined = []
    if any(bad_reason):
        keep = np.array([r is None for r in bad_reason])
        for i in np.flatnonzero(~keep):
            entry = {
                "reason": bad_reason[i],
                "input": spec.input_index,
                "source_file": spec.files.get(file_ids[i]),
                "line": lines[i],
                "raw": raw_of(i),
            }
            name = bad_reason[i].split(":", 1)[1]
            if name in columns:
                entry["detail"] = f"{name} = {columns[name][i]!r}"[:500]
            quarantined.append(entry)
        df = df[keep].reset_index(drop=True)
    return df, quarantined


def records_to_columns(records: list[dict], spec: ParseSpec) -> dict[str, list[Any]]:
    names = set(spec.columns) | ({spec.text_column} if spec.text_column else set())
    source = {n: (spec.text_field if (n == spec.text_column and spec.text_field) else n) for n in names}
    if spec.format == "text" and spec.text_column:
        source[spec.text_column] = "text"
    return {n: [r.get(src) for r in records] for n, src in source.items()}


def arrow_to_columns(table: pa.Table, spec: ParseSpec) -> dict[str, list[Any]]:
    out = {}
    names = set(spec.columns) | ({spec.text_column} if spec.text_column else set())
    for n in names:
        src = spec.text_field if (n == spec.text_column and spec.text_field) else n
        if src in table.column_names:
            out[n] = table.column(src).to_pylist()
    return out


def arrow_raw_of(table: pa.Table):
    def raw(i: int) -> str:
        row = {k: v for k, v in table.slice(i, 1).to_pylist()[0].items() if not k.startswith("_")}
        return json.dumps(row, ensure_ascii=False, default=str)[:100_000]

    return raw
