"""The quarantine: every record a data step could not read or process, with the reason, written as JSON
lines to `<stage>/quarantine/` by the worker that met it. Nothing is dropped silently: each quarantined
record is also counted by reason in stats.json.

A record: `{"reason", "input", "source_file", "line", "raw", "raw_base64"?, "detail"?, "operator"?}`.
`line` is the 1-based line of a JSONL/CSV/text record, or the 0-based row of a Parquet/HF record.
`raw` is the record as text (undecodable bytes shown as `\\xNN`); `raw_base64` holds the exact bytes
when they were not valid in the input's encoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pipelines.run_folder import _fs, join

MAX_RAW_CHARS = 100_000


def raw_fields(raw: bytes | str | None, encoding: str = "utf-8", exact: bool = False) -> dict[str, Any]:
    """`raw` (bytes or text) as quarantine fields; `exact` keeps the bytes too (base64)."""
    if raw is None:
        return {"raw": None}
    if isinstance(raw, bytes):
        text = raw.decode(encoding, errors="backslashreplace")
        fields: dict[str, Any] = {"raw": text[:MAX_RAW_CHARS]}
        if exact:
            fields["raw_base64"] = base64.b64encode(raw[:MAX_RAW_CHARS]).decode("ascii")
        return fields
    return {"raw": raw[:MAX_RAW_CHARS]}


def write_quarantine(folder: str, records: list[dict[str, Any]], tag: str) -> str | None:
    """Write records as one JSONL file in `folder`; the file name derives from `tag` and the records, so a
    retried task overwrites its own file instead of adding a second copy. Returns the path."""
    if not records:
        return None
    lines = [json.dumps(r, ensure_ascii=False, default=str) for r in records]
    first = records[0]
    digest = hashlib.sha1(
        f"{tag}|{first.get('source_file')}|{first.get('line')}|{len(records)}".encode()
    ).hexdigest()
    path = join(folder, f"{tag}-{digest[:16]}.jsonl")
    fs, local = _fs(path)
    fs.create_dir(local.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(local) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8", errors="backslashreplace"))
    return path


def quarantine_unreadable_files(folder: str, index: int, unreadable: dict[str, str]) -> int:
    """One quarantine record per input file that could not be opened or listed (`unreadable` maps the
    file to its error), so the Ray and the local engine report them the same way. Returns the count."""
    write_quarantine(
        folder,
        [
            {
                "reason": "unreadable_file",
                "input": index,
                "source_file": path,
                "line": None,
                "raw": None,
                "detail": err[:2000],
            }
            for path, err in unreadable.items()
        ],
        f"files{index}",
    )
    return len(unreadable)


def read_quarantine(folder: str) -> list[dict[str, Any]]:
    """Every quarantined record in a stage's quarantine folder (for tests and `raylm status`)."""
    import pyarrow.fs as pafs

    fs, local = _fs(folder)
    if fs.get_file_info(local).type != pafs.FileType.Directory:
        return []
    out = []
    for info in sorted(fs.get_file_info(pafs.FileSelector(local)), key=lambda i: i.path):
        if info.type == pafs.FileType.File and info.path.endswith(".jsonl"):
            with fs.open_input_stream(info.path) as f:
                out += [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
    return out
