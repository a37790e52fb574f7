"""Noise removal on numeric columns: outliers by z-score or IQR (global statistics), smoothing by moving
average or Gaussian filter along an order column (per group)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.ndimage import gaussian_filter1d

from pipelines.data.ops.base import (
    ColumnType,
    Operator,
    RowResult,
    StatRequest,
    as_float,
    keep_rows,
    require_numeric,
)


class ZScoreOutliers(Operator):
    """Drop rows whose value in any listed column lies more than `threshold` population standard
    deviations from that column's mean (mean and std over the whole dataset: `scipy.stats.zscore`'s
    definition, ddof=0). Missing values are never outliers."""

    op: Literal["zscore_outliers"] = "zscore_outliers"
    """Operator name."""
    columns: list[str] = Field(min_length=1)
    """Numeric columns to test."""
    threshold: float = Field(default=3.0, gt=0)
    """Drop a row when |z| > threshold in any listed column."""

    kind: ClassVar[str] = "stats"
    cheap: ClassVar[bool] = True

    def reads(self) -> set[str]:
        return set(self.columns)

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        return super().check(columns) + require_numeric(self, columns, self.columns)

    def stats_needed(self, schema: dict[str, ColumnType], text_column: str | None) -> list[StatRequest]:
        return [r for c in self.columns for r in (StatRequest("mean", c), StatRequest("std", c, ddof=0))]

    def prepare(self, stats: dict[str, Any]) -> dict[str, tuple[float, float]]:
        return {c: (stats[f"mean({c})"], stats[f"std({c},ddof=0)"]) for c in self.columns}

    def apply(self, df: pd.DataFrame, state: dict[str, tuple[float, float]] = None) -> RowResult:
        keep = np.ones(len(df), dtype=bool)
        for c in self.columns:
            mean, std = state[c]
            if mean is None or std is None or not std > 0:
                continue  # constant or empty column: nothing deviates
            z = np.abs((as_float(df[c]) - mean) / std)
            keep &= ~(z > self.threshold)  # NaN compares False: missing values are kept
        return keep_rows(df, keep, "zscore_outlier")


class IQROutliers(Operator):
    """Drop rows whose value in any listed column lies outside [Q1 - k*IQR, Q3 + k*IQR], quartiles over
    the whole dataset (linear interpolation, as `pandas.Series.quantile`). Missing values are kept."""

    op: Literal["iqr_outliers"] = "iqr_outliers"
    """Operator name."""
    columns: list[str] = Field(min_length=1)
    """Numeric columns to test."""
    k: float = Field(default=1.5, gt=0)
    """Fence distance in interquartile ranges (1.5: Tukey's fences)."""

    kind: ClassVar[str] = "stats"
    cheap: ClassVar[bool] = True

    def reads(self) -> set[str]:
        return set(self.columns)

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        return super().check(columns) + require_numeric(self, columns, self.columns)

    def stats_needed(self, schema: dict[str, ColumnType], text_column: str | None) -> list[StatRequest]:
        return [StatRequest("quantile", c, q=q) for c in self.columns for q in (0.25, 0.75)]

    def prepare(self, stats: dict[str, Any]) -> dict[str, tuple[float, float]]:
        fences = {}
        for c in self.columns:
            q1, q3 = stats[f"quantile({c},0.25)"], stats[f"quantile({c},0.75)"]
            if q1 is None or q3 is None:
                continue
            iqr = q3 - q1
            fences[c] = (q1 - self.k * iqr, q3 + self.k * iqr)
        return fences

    def apply(self, df: pd.DataFrame, state: dict[str, tuple[float, float]] = None) -> RowResult:
        keep = np.ones(len(df), dtype=bool)
        for c, (lo, hi) in state.items():
            x = as_float(df[c])
            keep &= ~((x < lo) | (x > hi))
        return keep_rows(df, keep, "iqr_outlier")


class _Smoother(Operator):
    columns: list[str] = Field(min_length=1)
    """Numeric columns to smooth."""
    order_by: str
    """Column giving the order along which to smooth (a time stamp, a position)."""
    group_by: list[str] = []
    """Smooth each group separately (e.g. per sensor). Empty: the whole dataset is one series (one task
    holds it all: fine for tables, not for corpora)."""
    suffix: str = ""
    """Write the smoothed values to `<column><suffix>`. Empty: overwrite the column."""

    kind: ClassVar[str] = "group"

    def reads(self) -> set[str]:
        return {*self.columns, self.order_by, *self.group_by}

    def writes(self) -> dict[str, ColumnType]:
        return {f"{c}{self.suffix}": "float" for c in self.columns} if self.suffix else {}

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        return super().check(columns) + require_numeric(self, columns, self.columns)

    def smooth(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_group(self, df: pd.DataFrame) -> pd.DataFrame:
        """Smooth one group (all its rows), sorted by `order_by`."""
        df = df.sort_values(self.order_by, kind="stable").reset_index(drop=True)
        for c in self.columns:
            df[f"{c}{self.suffix}"] = self.smooth(as_float(df[c]))
        return df


class MovingAverage(_Smoother):
    """Replace each value by the mean of a window of values along `order_by` (`pandas` rolling mean;
    missing values are skipped inside the window and stay missing)."""

    op: Literal["moving_average"] = "moving_average"
    """Operator name."""
    window: int = Field(ge=1)
    """Window length in rows."""
    center: bool = False
    """True: the window is centred on the row; False: trailing (the row and the `window - 1` before it)."""
    min_periods: int = Field(default=1, ge=1)
    """Fewest non-missing values a window needs to give a value (fewer: missing)."""

    def smooth(self, values: np.ndarray) -> np.ndarray:
        s = pd.Series(values)
        out = s.rolling(
            self.window, center=self.center, min_periods=min(self.min_periods, self.window)
        ).mean()
        return out.where(s.notna()).to_numpy()


class GaussianSmooth(_Smoother):
    """Gaussian filter along `order_by` (`scipy.ndimage.gaussian_filter1d`). Missing values are left
    missing; the filter runs over the present values in order."""

    op: Literal["gaussian_smooth"] = "gaussian_smooth"
    """Operator name."""
    sigma: float = Field(gt=0)
    """Standard deviation of the Gaussian kernel, in rows."""
    truncate: float = Field(default=4.0, gt=0)
    """Cut the kernel at this many sigmas."""
    mode: Literal["reflect", "nearest", "mirror", "constant", "wrap"] = "nearest"
    """How the series is extended past its ends (scipy's `mode`)."""

    def smooth(self, values: np.ndarray) -> np.ndarray:
        out = np.full_like(values, np.nan)
        present = ~np.isnan(values)
        if present.any():
            out[present] = gaussian_filter1d(
                values[present], self.sigma, mode=self.mode, truncate=self.truncate
            )
        return out
