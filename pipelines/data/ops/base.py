"""What every cleaning operator is: a typed config (one recipe entry, discriminated by `op`) that is also
the operator's implementation, as plain functions on pandas batches. Ray wiring lives in `engine.py`.

An operator has a `kind` that tells the engine how to run it:

- `row`: `apply(df)` on each batch, independently (normalisation, filters, PII, ...);
- `stats`: needs global statistics first (`stats_needed()`, computed over the whole dataset with Ray Data
  aggregations), turned into a state by `prepare(stats)`, then `apply(df, state)` per batch;
- `sample`: fits a model on a bounded random sample of complete rows (`fit(sample)`), then applies it;
- `dedup`: emits bucket keys per row (`keys(df)`); rows sharing a key are grouped across the dataset, the
  clusters resolved, and `apply(df, drop_ids)` removes all but one row per cluster;
- `group`: needs all rows of a group in order (`apply_group(df)` per group key, sorted by an order column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from pipelines.config_base import SectionConfig

ColumnType = Literal["str", "float", "int", "bool"]
"""Types a column can be declared with (`data.columns`)."""

NUMERIC_TYPES = ("float", "int")


@dataclass(frozen=True)
class StatRequest:
    """One global statistic an operator needs, computed over the whole dataset."""

    kind: Literal["mean", "std", "quantile", "missing_ratio"]
    column: str
    q: float | None = None
    """For `quantile`: which one (0..1, linear interpolation as numpy/pandas)."""
    ddof: int = 0
    """For `std`: delta degrees of freedom (0 = population std, as `scipy.stats.zscore`)."""

    @property
    def key(self) -> str:
        if self.kind == "quantile":
            return f"quantile({self.column},{self.q})"
        if self.kind == "std":
            return f"std({self.column},ddof={self.ddof})"
        return f"{self.kind}({self.column})"


@dataclass
class RowResult:
    """What applying an operator to one batch gives: the kept rows, and counts."""

    df: pd.DataFrame
    drops: dict[str, int] = field(default_factory=dict)
    """Rows removed by this operator, by reason."""
    counters: dict[str, int] = field(default_factory=dict)
    """Anything else worth counting (PII replacements, filled cells, changed texts, ...)."""


def keep_rows(df: pd.DataFrame, keep, reason: str, counters: dict | None = None) -> RowResult:
    """Filter `df` by a boolean mask and record the dropped count under `reason`."""
    keep = pd.Series(keep, index=df.index).fillna(True).astype(bool)
    dropped = int((~keep).sum())
    return RowResult(df[keep] if dropped else df, {reason: dropped} if dropped else {}, counters or {})


class Operator(SectionConfig):
    """Base of every operator config. Subclasses add `op: Literal[...]` and their own fields."""

    kind: ClassVar[str] = "row"
    cheap: ClassVar[bool] = False
    """Cheap to recompute (numeric work only): a statistics pass may re-run it over the last checkpoint
    instead of writing a new checkpoint first."""

    # --- static column bookkeeping (validated before any work starts) ---
    def reads(self) -> set[str] | None:
        """Columns this operator needs; None means every column (e.g. drop rows with any missing value)."""
        return set()

    def writes(self) -> dict[str, ColumnType]:
        """New columns this operator adds, with their types."""
        return {}

    def may_remove(self) -> set[str] | None:
        """Columns this operator may remove; None means any column it considers."""
        return set()

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        """Problems with this operator given the columns available before it (types, names)."""
        problems = []
        needed = self.reads() or set()
        for name in sorted(needed - set(columns)):
            problems.append(f"needs column '{name}', which the data does not have at this step")
        return problems

    def preflight(self) -> list[str]:
        """Problems with resources this operator needs (files, NLTK data), found before any work."""
        return []

    def label(self) -> str:
        return self.op  # type: ignore[attr-defined]

    # --- work ---
    def stats_needed(self, schema: dict[str, ColumnType], text_column: str | None) -> list[StatRequest]:
        """Global statistics to compute before `prepare`, given the columns at this step."""
        return []

    def prepare(self, stats: dict[str, Any]) -> Any:
        """Turn global statistics into the state `apply` uses."""
        return stats

    def apply(self, df: pd.DataFrame, state: Any = None) -> RowResult:
        raise NotImplementedError


def require_numeric(op: Operator, columns: dict[str, ColumnType], names: list[str]) -> list[str]:
    """Problems for columns in `names` that exist but are not declared numeric."""
    return [
        f"column '{n}' is {columns[n]}, but this operator needs a numeric (float/int) column"
        for n in names
        if n in columns and columns[n] not in NUMERIC_TYPES
    ]


def text_column_problems(op: Operator, columns: dict[str, ColumnType], name: str) -> list[str]:
    if name in columns and columns[name] != "str":
        return [f"column '{name}' is {columns[name]}, but this operator needs a text (str) column"]
    return []


def as_float(series: pd.Series):
    """A column as a float numpy array with NaN for missing values."""
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()


class TextOperator(Operator):
    """An operator that rewrites one text column string by string (`transform`)."""

    column: str = "text"
    """Text column to read."""
    output: str | None = None
    """Column to write the result to. None: overwrite `column` in place (e.g. write a lemmatised copy to
    `text_norm` and keep the original `text` for training)."""

    def reads(self) -> set[str]:
        return {self.column}

    def writes(self) -> dict[str, ColumnType]:
        return {self.output: "str"} if self.output and self.output != self.column else {}

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        return super().check(columns) + text_column_problems(self, columns, self.column)

    def transform(self, text: str) -> str:
        raise NotImplementedError

    def apply(self, df: pd.DataFrame, state: Any = None) -> RowResult:
        values = df[self.column].tolist()
        fn = self.transform
        out = [fn(v) if isinstance(v, str) else v for v in values]
        changed = sum(1 for a, b in zip(values, out, strict=True) if a is not b and a != b)
        df = df.copy(deep=False)
        df[self.output or self.column] = pd.Series(out, index=df.index, dtype="object")
        return RowResult(df, counters={"changed": changed} if changed else {})
