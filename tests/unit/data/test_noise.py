"""Noise operators against scipy / pandas on the same input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.ndimage import gaussian_filter1d

from pipelines.data.engine import pandas_stats
from pipelines.data.ops.noise import GaussianSmooth, IQROutliers, MovingAverage, ZScoreOutliers

SEED_EXAMPLE = [10, 12, 12, 13, 12, 100]


def _fit_apply(op, df):
    state = op.prepare(pandas_stats(df, op.stats_needed({c: "float" for c in df.columns}, None)))
    return op.apply(df, state)


@pytest.mark.parametrize("threshold", [3.0, 2.0, 1.0])
def test_zscore_matches_scipy_on_the_seed_example(threshold):
    df = pd.DataFrame({"x": SEED_EXAMPLE})
    z = stats.zscore(np.array(SEED_EXAMPLE, dtype=float))
    assert z[-1] == pytest.approx(2.2352406, rel=1e-6)  # the population z of 100: nothing goes at 3
    res = _fit_apply(ZScoreOutliers(columns=["x"], threshold=threshold), df)
    assert res.df["x"].tolist() == [v for v, zz in zip(SEED_EXAMPLE, z, strict=True) if abs(zz) <= threshold]
    assert res.drops.get("zscore_outlier", 0) == int((np.abs(z) > threshold).sum())


def test_zscore_threshold_3_keeps_everything_and_2_drops_100():
    df = pd.DataFrame({"x": SEED_EXAMPLE})
    assert _fit_apply(ZScoreOutliers(columns=["x"]), df).df["x"].tolist() == SEED_EXAMPLE
    assert _fit_apply(ZScoreOutliers(columns=["x"], threshold=2), df).df["x"].tolist() == SEED_EXAMPLE[:-1]


def test_zscore_random_columns_missing_values_kept():
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, 500)
    y = rng.normal(size=500)
    x[::50] = np.nan
    df = pd.DataFrame({"x": x, "y": y})
    res = _fit_apply(ZScoreOutliers(columns=["x", "y"], threshold=2.5), df)
    zx = stats.zscore(x, nan_policy="omit")
    zy = stats.zscore(y)
    expected = ~((np.abs(zx) > 2.5) | (np.abs(zy) > 2.5))  # NaN > t is False: kept
    assert len(res.df) == expected.sum()
    assert res.df.index.tolist() == np.flatnonzero(expected).tolist()


def test_constant_column_has_no_outliers():
    df = pd.DataFrame({"x": [5.0] * 10})
    assert len(_fit_apply(ZScoreOutliers(columns=["x"]), df).df) == 10


@pytest.mark.parametrize("k", [1.5, 3.0, 0.5])
def test_iqr_matches_pandas_quantiles(k):
    x = pd.Series([1, 2, 2, 3, 3, 3, 4, 4, 5, 50, -30, np.nan], dtype=float)
    q1, q3 = x.quantile(0.25), x.quantile(0.75)
    lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    res = _fit_apply(IQROutliers(columns=["x"], k=k), pd.DataFrame({"x": x}))
    expected = x[~((x < lo) | (x > hi))]
    assert res.df["x"].tolist() == pytest.approx(expected.tolist(), nan_ok=True)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("window", [1, 3, 4])
def test_moving_average_matches_pandas_rolling_per_group(center, window):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"t": np.arange(40)[::-1], "g": np.repeat(["a", "b"], 20), "v": rng.normal(size=40)})
    op = MovingAverage(
        columns=["v"], order_by="t", group_by=["g"], window=window, center=center, suffix="_ma"
    )
    for _, group in df.groupby("g"):
        out = op.apply_group(group)
        ref = group.sort_values("t")["v"].rolling(window, center=center, min_periods=1).mean()
        np.testing.assert_allclose(out["v_ma"].to_numpy(), ref.to_numpy())
        assert out["t"].is_monotonic_increasing


def test_moving_average_leaves_missing_missing():
    df = pd.DataFrame({"t": range(5), "v": [1.0, np.nan, 3.0, 4.0, 5.0]})
    out = MovingAverage(columns=["v"], order_by="t", window=2).apply_group(df)
    assert np.isnan(out["v"][1])
    assert out["v"][2] == pytest.approx(3.0)  # window [nan, 3] -> 3 (pandas skips NaN)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("mode", ["nearest", "reflect"])
def test_gaussian_matches_scipy(sigma, mode):
    rng = np.random.default_rng(2)
    v = rng.normal(size=60)
    df = pd.DataFrame({"t": rng.permutation(60), "v": v})
    out = GaussianSmooth(columns=["v"], order_by="t", sigma=sigma, mode=mode).apply_group(df)
    ref = gaussian_filter1d(df.sort_values("t")["v"].to_numpy(), sigma, mode=mode)
    np.testing.assert_allclose(out["v"].to_numpy(), ref)


def test_gaussian_skips_missing():
    v = np.array([1.0, 2.0, np.nan, 4.0, 8.0])
    out = GaussianSmooth(columns=["v"], order_by="t", sigma=1).apply_group(
        pd.DataFrame({"t": range(5), "v": v})
    )
    assert np.isnan(out["v"][2])
    np.testing.assert_allclose(
        out["v"].to_numpy()[[0, 1, 3, 4]], gaussian_filter1d(v[~np.isnan(v)], 1, mode="nearest")
    )
