"""Tabular building blocks shared by the LightGBM models: a frame encoder and reason extraction.

LightGBM is used through its Booster (not the sklearn wrapper) inside our own scikit-learn style
estimators: the Booster predicts a NumPy row in ~30 us against ~0.5 ms through the wrapper, which
matters for the scoring endpoint; our estimators still follow the sklearn contract (clone, params).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

CATEGORICAL_DTYPES = ("object", "string", "category", "bool")


@dataclass
class FrameEncoder:
    """Turns a feature frame into a float matrix: numbers as floats, categories as stable codes.

    Categories seen in training get codes 0..n-1; unseen or missing values become NaN, which
    LightGBM routes like missing values. The same encoder serves training and scoring.
    """

    columns: list[str]
    categories: dict[str, list[str]]

    @classmethod
    def fit(cls, X: pd.DataFrame, columns: Sequence[str]) -> FrameEncoder:
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ValueError(f"feature frame lacks columns {missing}")
        cats = {}
        for c in columns:
            if str(X[c].dtype) in CATEGORICAL_DTYPES or isinstance(X[c].dtype, pd.CategoricalDtype):
                cats[c] = sorted(str(v) for v in X[c].dropna().unique())
        return cls(columns=list(columns), categories=cats)

    @property
    def categorical_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c in self.categories]

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Encode; missing columns are an error naming them, extra columns are ignored."""
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise ValueError(f"feature frame lacks columns {missing}")
        out = np.empty((len(X), len(self.columns)), dtype=np.float64)
        for j, c in enumerate(self.columns):
            col = X[c]
            if c in self.categories:
                codes = pd.Categorical(col.astype("string"), categories=self.categories[c]).codes.astype(np.float64)
                codes[codes < 0] = np.nan
                out[:, j] = codes
            else:
                out[:, j] = pd.to_numeric(col, errors="raise").astype(np.float64).to_numpy(na_value=np.nan)
        return out

    def decode(self, column: str, value: float) -> str:
        """Human-readable value of one encoded cell."""
        if value != value:  # NaN
            return "missing"
        if column in self.categories:
            return self.categories[column][int(value)]
        return f"{value:.4g}"


def train_booster(
    X: np.ndarray,
    y: np.ndarray,
    *,
    encoder: FrameEncoder,
    params: dict,
    num_boost_round: int,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    weight: np.ndarray | None = None,
) -> lgb.Booster:
    """Train a LightGBM booster, with early stopping on `valid` when given."""
    base = {"verbosity": -1, "deterministic": True, "force_row_wise": True}
    train = lgb.Dataset(
        X,
        y,
        weight=weight,
        feature_name=encoder.columns,
        categorical_feature=encoder.categorical_indices,
        free_raw_data=False,
    )
    callbacks = []
    valid_sets = []
    if valid is not None:
        valid_sets = [lgb.Dataset(valid[0], valid[1], reference=train)]
        callbacks.append(lgb.early_stopping(30, verbose=False))
    return lgb.train(
        {**base, **params}, train, num_boost_round=num_boost_round, valid_sets=valid_sets, callbacks=callbacks
    )


@dataclass(frozen=True)
class Reason:
    """One feature's contribution to a prediction, in words."""

    feature: str
    value: str
    contribution: float
    text: str


def top_reasons(
    booster: lgb.Booster,
    X: np.ndarray,
    encoder: FrameEncoder,
    *,
    k: int = 3,
    direction: int = 1,
    descriptions: dict[str, str] | None = None,
) -> list[list[Reason]]:
    """The k features pushing each prediction most in `direction` (+1 up, -1 down), via pred_contrib."""
    contrib = booster.predict(X, pred_contrib=True)[:, :-1]  # last column is the bias
    order = np.argsort(-direction * contrib, axis=1)[:, :k]
    out = []
    for i in range(X.shape[0]):
        reasons = []
        for j in order[i]:
            c = float(contrib[i, j])
            if direction * c <= 0:
                break
            name = encoder.columns[j]
            value = encoder.decode(name, X[i, j])
            label = (descriptions or {}).get(name) or name
            verb = "raises" if c > 0 else "lowers"
            reasons.append(Reason(name, value, c, f"{label.rstrip('.')} = {value} ({verb} the score)"))
        out.append(reasons)
    return out
