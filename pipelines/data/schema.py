"""Typed columns: coercing raw values to the declared column types (what cannot be coerced is reported,
so its record goes to the quarantine), and turning batches into Arrow tables with one fixed schema (so
every Parquet file a stage writes has the same schema, whatever a batch happened to hold)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.data.ops.base import ColumnType

ARROW_TYPES: dict[str, pa.DataType] = {
    "str": pa.string(),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
}
_MISSING_WORDS = {"", "nan", "null", "none", "na", "n/a"}
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}
BAD = object()
"""Marks a value that cannot be coerced to its column's type."""


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def coerce_value(v: Any, kind: ColumnType, strict_str: bool = False) -> Any:
    """`v` as a value of `kind`: None when missing, `BAD` when it cannot be one."""
    if _is_missing(v):
        return None
    if kind == "str":
        if isinstance(v, str):
            return v if strict_str or v.strip() else None
        if strict_str or isinstance(v, dict | list | bytes):
            return BAD
        return str(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in _MISSING_WORDS:
            return None
        if kind == "bool":
            low = s.lower()
            return True if low in _TRUE else False if low in _FALSE else BAD
        try:
            num = float(s)
        except ValueError:
            return BAD
    elif isinstance(v, bool | np.bool_):
        return bool(v) if kind == "bool" else BAD
    elif isinstance(v, int | float | np.integer | np.floating):
        num = float(v)
        if kind == "int" and isinstance(v, int | np.integer):
            return int(v)
    else:
        return BAD
    if math.isnan(num):
        return None
    if kind == "float":
        return num
    if kind == "int":
        return int(num) if num.is_integer() else BAD
    return True if num == 1 else False if num == 0 else BAD  # bool from 0/1


def coerce_column(
    values: list[Any], kind: ColumnType, strict_str: bool = False
) -> tuple[list[Any], np.ndarray]:
    """(coerced values, mask of values that could not be coerced)."""
    out = [coerce_value(v, kind, strict_str) for v in values]
    bad = np.fromiter((o is BAD for o in out), dtype=bool, count=len(out))
    if bad.any():
        out = [None if o is BAD else o for o in out]
    return out, bad


def column_series(values: list[Any], kind: ColumnType) -> pd.Series:
    """Coerced values as a pandas column of the right dtype (float NaN, nullable Int64/boolean)."""
    if kind == "float":
        return pd.Series(np.array([np.nan if v is None else v for v in values], dtype="float64"))
    if kind == "int":
        return pd.Series(pd.array(values, dtype="Int64"))
    if kind == "bool":
        return pd.Series(pd.array(values, dtype="boolean"))
    return pd.Series(values, dtype="object")


def arrow_schema(schema: dict[str, ColumnType]) -> pa.Schema:
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in schema.items()])


def _arrow_column(series: pd.Series, kind: ColumnType) -> pa.Array:
    if kind == "str":
        values = [
            v if isinstance(v, str) else (None if _is_missing(v) else str(v))
            for v in series.astype("object").tolist()
        ]
        return pa.array(values, type=pa.string())
    if kind == "float":
        return pa.array(
            pd.to_numeric(series, errors="coerce").astype("float64").to_numpy(),
            type=pa.float64(),
            from_pandas=True,
        )
    if kind == "int":
        x = pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()
        mask = np.isnan(x)
        return pa.array(np.where(mask, 0, np.round(x)).astype(np.int64), type=pa.int64(), mask=mask)
    values = series.astype("object").tolist()
    return pa.array([None if _is_missing(v) else bool(v) for v in values], type=pa.bool_())


def to_table(df: pd.DataFrame, schema: dict[str, ColumnType]) -> pa.Table:
    """A batch as an Arrow table with exactly `schema`'s columns and types (absent columns are null;
    integer columns are rounded, e.g. after a mean was filled in)."""
    arrays = []
    for name, kind in schema.items():
        if name in df.columns:
            arrays.append(_arrow_column(df[name], kind))
        else:
            arrays.append(pa.nulls(len(df), type=ARROW_TYPES[kind]))
    return pa.Table.from_arrays(arrays, schema=arrow_schema(schema))
