"""Missing-value operators against pandas on the same input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.data.engine import pandas_stats
from pipelines.data.ops.missing import DropMissing, DropSparseColumns, FillMissing, InterpolateMissing

SCHEMA = {"a": "float", "b": "float", "c": "float", "s": "str"}


@pytest.fixture
def df():
    return pd.DataFrame(
        {
            "a": [1.0, np.nan, 3.0, np.nan, 5.0, 6.0],
            "b": [np.nan, np.nan, 1.0, 2.0, 3.0, np.nan],
            "c": [1.0, 2.0, 3.0, np.nan, np.nan, np.nan],
            "s": ["x", None, "y", "z", None, "w"],
        }
    )


def _fit_apply(op, df):
    return op.apply(df, op.prepare(pandas_stats(df, op.stats_needed(SCHEMA, None))))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"how": "any"},
        {"how": "all"},
        {"thresh": 2},
        {"thresh": 3},
        {"how": "any", "columns": ["a", "c"]},
        {"how": "all", "columns": ["b", "c"]},
    ],
)
def test_drop_missing_matches_dropna(df, kwargs):
    res = DropMissing(**kwargs).apply(df)
    pd_kwargs = {"subset": kwargs.get("columns")}
    if "thresh" in kwargs:
        pd_kwargs["thresh"] = kwargs["thresh"]
    else:
        pd_kwargs["how"] = kwargs["how"]
    ref = df.dropna(**pd_kwargs)
    assert res.df.index.tolist() == ref.index.tolist()
    assert res.drops.get("missing_values", 0) == len(df) - len(ref)


def test_drop_missing_counts_blank_strings_as_missing():
    res = DropMissing(columns=["s"]).apply(pd.DataFrame({"s": ["x", "  ", ""]}))
    assert res.df["s"].tolist() == ["x"]


@pytest.mark.parametrize("ratio", [0.0, 0.34, 0.5, 1.0])
def test_drop_sparse_columns_matches_pandas(df, ratio):
    res = _fit_apply(DropSparseColumns(max_missing_ratio=ratio), df)
    ref = df.loc[:, df.isna().mean() <= ratio]
    assert sorted(res.df.columns) == sorted(ref.columns)


def test_drop_sparse_columns_only_listed(df):
    res = _fit_apply(DropSparseColumns(max_missing_ratio=0.1, columns=["a"]), df)
    assert "a" not in res.df.columns and "b" in res.df.columns


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_fill_mean_median_matches_pandas(df, strategy):
    res = _fit_apply(FillMissing(strategy=strategy, columns=["a", "b"]), df)
    ref = df[["a", "b"]].fillna(getattr(df[["a", "b"]], strategy)())
    pd.testing.assert_frame_equal(res.df[["a", "b"]], ref)
    assert res.counters == {"filled:a": 2, "filled:b": 3}


def test_fill_constant_per_column(df):
    res = _fit_apply(FillMissing(strategy="constant", values={"a": -1, "s": "unknown"}), df)
    ref = df.fillna({"a": -1, "s": "unknown"})
    assert res.df["a"].tolist() == ref["a"].tolist()
    assert res.df["s"].tolist() == ref["s"].tolist()


def test_fill_needs_its_fields():
    with pytest.raises(ValueError, match="needs `values"):
        FillMissing(strategy="constant")
    with pytest.raises(ValueError, match="needs `columns"):
        FillMissing(strategy="mean")


@pytest.mark.parametrize("method", ["index", "linear"])
@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_interpolate_matches_pandas(method, direction):
    t = np.array([0.0, 1.0, 3.0, 4.0, 10.0, 11.0, 2.0])
    v = np.array([np.nan, 1.0, np.nan, 4.0, np.nan, 20.0, 2.0])
    df = pd.DataFrame({"t": t, "v": v, "g": "a"})
    out = InterpolateMissing(
        columns=["v"], order_by="t", method=method, limit_direction=direction
    ).apply_group(df)
    ordered = df.sort_values("t")
    series = pd.Series(ordered["v"].to_numpy(), index=ordered["t"].to_numpy() if method == "index" else None)
    ref = series.interpolate(method=method, limit_direction=direction).to_numpy()
    np.testing.assert_allclose(out["v"].to_numpy(), ref, equal_nan=True)


def test_interpolate_index_weighs_by_order_values():
    df = pd.DataFrame({"t": [0.0, 1.0, 10.0], "v": [0.0, np.nan, 10.0]})
    assert InterpolateMissing(columns=["v"], order_by="t").apply_group(df)["v"][1] == pytest.approx(1.0)
    assert InterpolateMissing(columns=["v"], order_by="t", method="linear").apply_group(df)["v"][1] == 5.0
