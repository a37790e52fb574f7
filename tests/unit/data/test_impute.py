"""Model-based imputation against scikit-learn fitted directly on the complete rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor

from pipelines.data.ops.impute import ImputeModel


@pytest.fixture
def df():
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=200), rng.normal(size=200)
    y = 3 * x1 - 2 * x2 + 1 + rng.normal(scale=0.1, size=200)
    y[::7] = np.nan
    x2[::31] = np.nan  # some rows cannot be imputed
    return pd.DataFrame({"x1": x1, "x2": x2, "y": y})


@pytest.mark.parametrize(
    "estimator,reference",
    [
        ("linear", lambda: LinearRegression()),
        ("random_forest", lambda: RandomForestRegressor(n_estimators=100, random_state=5, n_jobs=1)),
        ("knn", lambda: KNeighborsRegressor(n_neighbors=5)),
    ],
)
def test_predictions_match_sklearn(df, estimator, reference):
    op = ImputeModel(columns=["y"], features=["x1", "x2"], estimator=estimator)
    state = op.fit(df, seed=5)
    res = op.apply(df, state)
    complete = df.dropna()
    model = reference().fit(complete[["x1", "x2"]].to_numpy(), complete["y"].to_numpy())
    todo = df["y"].isna() & df[["x1", "x2"]].notna().all(axis=1)
    np.testing.assert_allclose(res.df.loc[todo, "y"], model.predict(df.loc[todo, ["x1", "x2"]].to_numpy()))
    pd.testing.assert_series_equal(res.df.loc[~df["y"].isna(), "y"], df.loc[~df["y"].isna(), "y"])
    left = df["y"].isna() & ~todo
    assert res.counters == {
        "imputed:y": int(todo.sum()),
        **({"unimputable:y": int(left.sum())} if left.any() else {}),
    }
    assert res.df.loc[left, "y"].isna().all()


def test_linear_recovers_the_relation(df):
    op = ImputeModel(columns=["y"], features=["x1", "x2"])
    res = op.apply(df, op.fit(df))
    rows = df["y"].isna() & df["x2"].notna()
    expected = 3 * df.loc[rows, "x1"] - 2 * df.loc[rows, "x2"] + 1
    assert np.abs(res.df.loc[rows, "y"] - expected).max() < 0.1


def test_check_rejects_overlap_and_text_columns():
    op = ImputeModel(columns=["y"], features=["y", "s"])
    problems = op.check({"y": "float", "s": "str"})
    assert any("both imputed and used" in p for p in problems)
    assert any("'s' is str" in p for p in problems)
