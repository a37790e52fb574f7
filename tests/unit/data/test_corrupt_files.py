"""Files that break part-way (a truncated gzip) or are empty: the records before the break are read, the
break becomes one `corrupt_file` record, nothing raises (both engines read through `guard_corrupt_tail`)."""

from __future__ import annotations

import gzip
import json
import zlib

import pyarrow.fs as pafs

from pipelines.data.readers import CHUNK_BYTES, guard_corrupt_tail, read_jsonl_lines


def _read(path: str) -> tuple[int, list[tuple[int, str]]]:
    fs = pafs.LocalFileSystem()
    good, errors = 0, []
    with fs.open_input_stream(path) as f:  # Arrow decompresses .gz (compression="detect")
        for block in guard_corrupt_tail(read_jsonl_lines(f, 7), 7):
            for line, err in zip(
                block.column("_line").to_pylist(), block.column("_error").to_pylist(), strict=True
            ):
                if err is None:
                    good += 1
                else:
                    errors.append((line, err))
    return good, errors


def test_truncated_gzip_keeps_the_records_before_the_break_and_reports_it(tmp_path):
    lines = [json.dumps({"text": f"record {i} " + "x" * 80}) for i in range(60_000)]
    full = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    good, errors = _read(str(path))
    assert 0 < good < len(lines)
    ((line, err),) = errors
    assert err.startswith("corrupt_file: ") and "runcated" in err
    assert line == good + 1  # the line after the last good record
    # what zlib can still recover from the cut file; at most one read chunk of it is lost
    recoverable = len(zlib.decompressobj(wbits=31).decompress(full[: len(full) // 2]))
    per_line = len(lines[0]) + 1
    assert good * per_line >= recoverable - CHUNK_BYTES - per_line


def test_intact_and_empty_files_give_no_error(tmp_path):
    ok = tmp_path / "ok.jsonl.gz"
    ok.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n'))
    assert _read(str(ok)) == (2, [])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert _read(str(empty)) == (0, [])
