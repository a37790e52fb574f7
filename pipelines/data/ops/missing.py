"""Missing values: drop rows (any / all / threshold), drop columns above a missing ratio, fill with the
mean or median (global statistics) or a constant per column, interpolate along an order column.
Model-based imputation is in `impute.py`."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from pipelines.data.ops.base import (
    NUMERIC_TYPES,
    ColumnType,
    Operator,
    RowResult,
    StatRequest,
    as_float,
    keep_rows,
    require_numeric,
)


def is_missing(df: pd.DataFrame) -> pd.DataFrame:
    """Missing cells: None/NaN, and empty or blank strings (a CSV's empty field)."""
    missing = df.isna()
    for c in df.columns:
        if df[c].dtype == object or pd.api.types.is_string_dtype(df[c].dtype):
            missing[c] |= df[c].astype("object").map(lambda v: isinstance(v, str) and not v.strip())
    return missing


class DropMissing(Operator):
    """Drop rows with missing values among `columns` (as `pandas.DataFrame.dropna`): any missing, all
    missing, or fewer than `thresh` present."""

    op: Literal["drop_missing"] = "drop_missing"
    """Operator name."""
    columns: list[str] | None = None
    """Columns to look at. None: every column."""
    how: Literal["any", "all"] = "any"
    """Drop a row when any (or all) of the columns are missing."""
    thresh: int | None = Field(default=None, ge=1)
    """Keep only rows with at least this many present values among the columns (overrides `how`)."""

    cheap: ClassVar[bool] = True

    def reads(self) -> set[str] | None:
        return set(self.columns) if self.columns else None

    def apply(self, df: pd.DataFrame, state: Any = None) -> RowResult:
        cols = self.columns or [c for c in df.columns if c != "row_id"]
        present = (~is_missing(df[cols])).sum(axis=1)
        if self.thresh is not None:
            keep = present >= self.thresh
        elif self.how == "any":
            keep = present == len(cols)
        else:
            keep = present > 0
        return keep_rows(df, keep, "missing_values")


class DropSparseColumns(Operator):
    """Drop columns whose share of missing values over the whole dataset exceeds `max_missing_ratio`."""

    op: Literal["drop_sparse_columns"] = "drop_sparse_columns"
    """Operator name."""
    max_missing_ratio: float = Field(ge=0, le=1)
    """Drop a column when more than this fraction of its values are missing."""
    columns: list[str] | None = None
    """Columns that may be dropped. None: every declared column except the text column. Later operators
    may not use a column this step may drop."""

    kind: ClassVar[str] = "stats"
    cheap: ClassVar[bool] = True

    def reads(self) -> set[str] | None:
        return set(self.columns) if self.columns else set()

    def may_remove(self) -> set[str] | None:
        return set(self.columns) if self.columns else None

    def stats_needed(self, schema: dict[str, ColumnType], text_column: str | None) -> list[StatRequest]:
        candidates = self.columns or [c for c in schema if c not in ("row_id", text_column)]
        return [StatRequest("missing_ratio", c) for c in candidates]

    def prepare(self, stats: dict[str, Any]) -> list[str]:
        return sorted(
            k[len("missing_ratio(") : -1]
            for k, v in stats.items()
            if k.startswith("missing_ratio(") and v is not None and v > self.max_missing_ratio
        )

    def apply(self, df: pd.DataFrame, state: list[str] = None) -> RowResult:
        drop = [c for c in state or [] if c in df.columns]
        return RowResult(df.drop(columns=drop) if drop else df)


class FillMissing(Operator):
    """Fill missing values: with each column's mean or median over the whole dataset, or with a constant
    per column. Integer columns receive a rounded mean/median."""

    op: Literal["fill_missing"] = "fill_missing"
    """Operator name."""
    strategy: Literal["mean", "median", "constant"]
    """mean / median (numeric columns, global statistics) or constant (`values`)."""
    columns: list[str] = []
    """Columns to fill with their mean or median."""
    values: dict[str, float | int | str | bool] = {}
    """For `constant`: column -> fill value."""

    kind: ClassVar[str] = "stats"
    cheap: ClassVar[bool] = True

    @model_validator(mode="after")
    def _strategy_fields(self):
        if self.strategy == "constant" and not self.values:
            raise ValueError("strategy 'constant' needs `values: {column: value}`")
        if self.strategy != "constant" and not self.columns:
            raise ValueError(f"strategy '{self.strategy}' needs `columns: [...]`")
        return self

    def targets(self) -> list[str]:
        return list(self.values) if self.strategy == "constant" else list(self.columns)

    def reads(self) -> set[str]:
        return set(self.targets())

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        problems = super().check(columns)
        if self.strategy != "constant":
            problems += require_numeric(self, columns, self.columns)
        return problems

    def stats_needed(self, schema: dict[str, ColumnType], text_column: str | None) -> list[StatRequest]:
        if self.strategy == "mean":
            return [StatRequest("mean", c) for c in self.columns]
        if self.strategy == "median":
            return [StatRequest("quantile", c, q=0.5) for c in self.columns]
        return []

    def prepare(self, stats: dict[str, Any]) -> dict[str, Any]:
        if self.strategy == "constant":
            return dict(self.values)
        key = "mean({})" if self.strategy == "mean" else "quantile({},0.5)"
        return {c: stats[key.format(c)] for c in self.columns}

    def apply(self, df: pd.DataFrame, state: dict[str, Any] = None) -> RowResult:
        df = df.copy(deep=False)
        counters = {}
        for c, value in state.items():
            if value is None or c not in df.columns:
                continue
            missing = is_missing(df[[c]])[c]
            n = int(missing.sum())
            if not n:
                continue
            col = df[c].astype("object") if not pd.api.types.is_numeric_dtype(df[c].dtype) else df[c]
            if pd.api.types.is_integer_dtype(df[c].dtype) and isinstance(value, float):
                value = round(value)
            df[c] = col.mask(missing, value)
            counters[f"filled:{c}"] = n
        return RowResult(df, counters=counters)


class InterpolateMissing(Operator):
    """Fill missing numeric values by linear interpolation along `order_by`, per group (as pandas
    `interpolate`). `method: index` weighs by the order column's values (uneven spacing), `linear` treats
    rows as equally spaced. Values before the first or after the last present one are filled as pandas
    does for `limit_direction`."""

    op: Literal["interpolate_missing"] = "interpolate_missing"
    """Operator name."""
    columns: list[str] = Field(min_length=1)
    """Numeric columns to fill."""
    order_by: str
    """Column giving the order (time stamp, position)."""
    group_by: list[str] = []
    """Interpolate each group separately. Empty: the whole dataset is one series."""
    method: Literal["index", "linear"] = "index"
    """index: by the order column's values; linear: rows equally spaced."""
    limit_direction: Literal["forward", "backward", "both"] = "both"
    """Which ends may be filled (pandas' `limit_direction`)."""

    kind: ClassVar[str] = "group"

    def reads(self) -> set[str]:
        return {*self.columns, self.order_by, *self.group_by}

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        problems = super().check(columns) + require_numeric(self, columns, self.columns)
        if (
            self.method == "index"
            and self.order_by in columns
            and columns[self.order_by] not in NUMERIC_TYPES
        ):
            problems.append(
                f"method 'index' needs a numeric order column; '{self.order_by}' is "
                f"{columns[self.order_by]} (use method: linear)"
            )
        return problems

    def apply_group(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df.sort_values(self.order_by, kind="stable").reset_index(drop=True)
        for c in self.columns:
            values = pd.Series(as_float(df[c]))
            if self.method == "index":
                values.index = as_float(df[self.order_by])
            filled = values.interpolate(method=self.method, limit_direction=self.limit_direction)
            df[c] = np.asarray(filled, dtype="float64")
        return df
