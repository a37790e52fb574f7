"""The streaming Parquet datasink: block by block, file rotation, Hive partitions, clean retries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.data.parquet_sink import StreamingParquetSink


def _block(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows, dtype=np.int64)
    return pa.table({"row_id": ids, "text": [f"doc {i}" for i in ids]})


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet"))


def test_rows_rotate_into_files_of_at_most_max_rows_in_order(tmp_path):
    sink = StreamingParquetSink(str(tmp_path / "out"), max_rows_per_file=5)
    sink.on_write_start()
    written = sink.write(
        [_block(0, 4), _block(4, 4), _block(8, 0), _block(8, 4)], SimpleNamespace(task_idx=7)
    )
    files = _files(tmp_path / "out")
    assert written == 12
    assert [pq.read_metadata(f).num_rows for f in files] == [5, 5, 2]
    assert all(f.name.startswith(f"{sink.write_id}_000007_") for f in files)
    got = pa.concat_tables([pq.read_table(f) for f in files])
    assert got.column("row_id").to_pylist() == list(range(12))


def test_a_task_holds_one_block_not_its_whole_output(tmp_path):
    """Ray's ParquetDatasink lists every block before writing; this one frees each block once written."""
    blocks, rows = 12, 250_000  # 2 MB of int64 per block
    peak = 0

    def produce():
        nonlocal peak
        for i in range(blocks):
            # pc.add allocates in Arrow's pool (an array over numpy memory would not be counted)
            ids = pc.add(pa.array(np.arange(i * rows, (i + 1) * rows, dtype=np.int64)), 0)
            yield pa.table({"row_id": ids})
            peak = max(peak, pa.total_allocated_bytes())

    base = pa.total_allocated_bytes()
    sink = StreamingParquetSink(str(tmp_path / "out"))
    assert sink.write(produce(), SimpleNamespace(task_idx=0)) == blocks * rows
    block_bytes = rows * 8
    assert peak - base <= 3 * block_bytes, f"held {(peak - base) / block_bytes:.1f} blocks"
    assert pq.read_table(tmp_path / "out").num_rows == blocks * rows


def test_partition_columns_become_hive_folders_without_the_columns(tmp_path):
    df = pd.DataFrame(
        {
            "row_id": np.arange(10),
            "key": np.arange(10) * 3,
            "op": [0] * 6 + [1] * 4,
            "part": [2, 0, 2, 1] * 2 + [0, 0],
        }
    )
    sink = StreamingParquetSink(str(tmp_path / "keys"), partition_cols=["op", "part"])
    sink.write(
        [pa.Table.from_pandas(df.iloc[:5]), pa.Table.from_pandas(df.iloc[5:])], SimpleNamespace(task_idx=1)
    )
    for (op, part), group in df.groupby(["op", "part"]):
        folder = tmp_path / "keys" / f"op={op}" / f"part={part}"
        table = pq.read_table(folder)
        assert table.column_names == ["row_id", "key"]
        assert sorted(table.column("row_id").to_pylist()) == group["row_id"].tolist()
    assert len(list((tmp_path / "keys").glob("op=*/part=*"))) == df.groupby(["op", "part"]).ngroups


def test_blocks_are_cast_to_the_schema_and_a_retry_rewrites_the_same_files(tmp_path):
    schema = pa.schema([("row_id", pa.int64()), ("text", pa.string()), ("score", pa.float64())])
    sink = StreamingParquetSink(str(tmp_path / "out"), schema, max_rows_per_file=3)
    all_null = pa.table({"score": pa.nulls(2), "text": ["a", "b"], "row_id": [0, 1]})
    typed = pa.table({"row_id": [2, 3], "text": ["c", "d"], "score": [1.5, 2.5]})
    ctx = SimpleNamespace(task_idx=4)
    sink.write([all_null, typed], ctx)
    first = _files(tmp_path / "out")
    sink.write([all_null, typed], ctx)  # Ray retries a failed task with the same index
    assert _files(tmp_path / "out") == first
    got = pq.read_table(tmp_path / "out")
    assert got.schema.equals(schema)
    assert got.num_rows == 4
    assert got.column("score").to_pylist() == [None, None, 1.5, 2.5]
