"""Model-based imputation: a scikit-learn regressor per target column, fitted on complete rows (a bounded
random sample of them, drawn over the whole dataset), then applied to every batch in parallel."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipelines.data.ops.base import ColumnType, Operator, RowResult, as_float, require_numeric


class ImputeModel(Operator):
    """Predict missing values of `columns` from `features` with a regression model fitted on the rows
    where the target and every feature are present. Rows whose features are missing stay missing
    (counted as `unimputable:<column>`)."""

    op: Literal["impute_model"] = "impute_model"
    """Operator name."""
    columns: list[str] = Field(min_length=1)
    """Numeric columns to impute (one model each)."""
    features: list[str] = Field(min_length=1)
    """Numeric columns the models predict from."""
    estimator: Literal["linear", "random_forest", "knn"] = "linear"
    """scikit-learn model: LinearRegression, RandomForestRegressor (100 trees, seeded) or
    KNeighborsRegressor (`n_neighbors`)."""
    n_neighbors: int = Field(default=5, ge=1)
    """Neighbours for `knn`."""
    max_fit_rows: int = Field(default=100_000, ge=10)
    """Fit on at most this many complete rows (a uniform random sample when there are more)."""

    kind: ClassVar[str] = "sample"

    def reads(self) -> set[str]:
        return {*self.columns, *self.features}

    def check(self, columns: dict[str, ColumnType]) -> list[str]:
        problems = super().check(columns) + require_numeric(self, columns, [*self.columns, *self.features])
        overlap = set(self.columns) & set(self.features)
        if overlap:
            problems.append(f"{sorted(overlap)} are both imputed and used as features")
        return problems

    def sample_columns(self) -> list[str]:
        return [*self.features, *self.columns]

    def new_model(self, seed: int):
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import LinearRegression
        from sklearn.neighbors import KNeighborsRegressor

        if self.estimator == "linear":
            return LinearRegression()
        if self.estimator == "random_forest":
            return RandomForestRegressor(n_estimators=100, random_state=seed, n_jobs=1)
        return KNeighborsRegressor(n_neighbors=self.n_neighbors)

    def fit(self, sample: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
        """Fit one model per target on the sample's rows where the target and all features are present."""
        models: dict[str, Any] = {}
        x_all = np.column_stack([as_float(sample[f]) for f in self.features]) if len(sample) else None
        for c in self.columns:
            if x_all is None:
                continue
            y = as_float(sample[c])
            ok = ~np.isnan(y) & ~np.isnan(x_all).any(axis=1)
            if ok.sum() < 2:
                continue  # nothing to learn from: the column stays missing
            model = self.new_model(seed)
            if self.estimator == "knn":
                model.set_params(n_neighbors=min(self.n_neighbors, int(ok.sum())))
            models[c] = model.fit(x_all[ok], y[ok])
        return models

    def apply(self, df: pd.DataFrame, state: dict[str, Any] = None) -> RowResult:
        df = df.copy(deep=False)
        counters: dict[str, int] = {}
        x = np.column_stack([as_float(df[f]) for f in self.features]) if len(df) else np.empty((0, 0))
        features_ok = ~np.isnan(x).any(axis=1) if len(df) else np.zeros(0, bool)
        for c in self.columns:
            y = as_float(df[c])
            missing = np.isnan(y)
            if not missing.any():
                continue
            model = (state or {}).get(c)
            todo = missing & features_ok if model is not None else np.zeros_like(missing)
            if todo.any():
                y = y.copy()
                y[todo] = model.predict(x[todo])
                df[c] = y
                counters[f"imputed:{c}"] = int(todo.sum())
            left = int((missing & ~todo).sum())
            if left:
                counters[f"unimputable:{c}"] = left
        return RowResult(df, counters=counters)
