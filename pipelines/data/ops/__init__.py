"""Every cleaning operator, by its recipe name (`op:`). One small module per concern:

| module | operators |
|---|---|
| `noise.py` | zscore_outliers, iqr_outliers, moving_average, gaussian_smooth |
| `normalize.py` | lowercase, remove_punctuation, normalize_whitespace, clean_special_characters |
| `spelling.py` | standardize_spelling |
| `morphology.py` | lemmatize, stem |
| `missing.py` | drop_missing, drop_sparse_columns, fill_missing, interpolate_missing |
| `impute.py` | impute_model |
| `quality.py` | quality_filter |
| `dedup.py` | exact_dedup, near_dedup |
| `pii.py` | scrub_pii |
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipelines.data.ops.base import Operator
from pipelines.data.ops.dedup import ExactDedup, NearDedup
from pipelines.data.ops.impute import ImputeModel
from pipelines.data.ops.missing import DropMissing, DropSparseColumns, FillMissing, InterpolateMissing
from pipelines.data.ops.morphology import Lemmatize, Stem
from pipelines.data.ops.noise import GaussianSmooth, IQROutliers, MovingAverage, ZScoreOutliers
from pipelines.data.ops.normalize import (
    CleanSpecialCharacters,
    Lowercase,
    NormalizeWhitespace,
    RemovePunctuation,
)
from pipelines.data.ops.pii import ScrubPII
from pipelines.data.ops.quality import QualityFilter
from pipelines.data.ops.spelling import StandardizeSpelling

OPERATOR_CLASSES: tuple[type[Operator], ...] = (
    ZScoreOutliers,
    IQROutliers,
    MovingAverage,
    GaussianSmooth,
    Lowercase,
    RemovePunctuation,
    NormalizeWhitespace,
    CleanSpecialCharacters,
    StandardizeSpelling,
    Lemmatize,
    Stem,
    DropMissing,
    DropSparseColumns,
    FillMissing,
    InterpolateMissing,
    ImputeModel,
    QualityFilter,
    ExactDedup,
    NearDedup,
    ScrubPII,
)

OPERATORS: dict[str, type[Operator]] = {cls.model_fields["op"].default: cls for cls in OPERATOR_CLASSES}
"""Recipe name -> operator class."""

AnyOperator = Annotated[
    ZScoreOutliers
    | IQROutliers
    | MovingAverage
    | GaussianSmooth
    | Lowercase
    | RemovePunctuation
    | NormalizeWhitespace
    | CleanSpecialCharacters
    | StandardizeSpelling
    | Lemmatize
    | Stem
    | DropMissing
    | DropSparseColumns
    | FillMissing
    | InterpolateMissing
    | ImputeModel
    | QualityFilter
    | ExactDedup
    | NearDedup
    | ScrubPII,
    Field(discriminator="op"),
]
"""One entry of `data.operators`: the `op` key picks the operator."""

__all__ = ["OPERATORS", "OPERATOR_CLASSES", "AnyOperator", "Operator"]
