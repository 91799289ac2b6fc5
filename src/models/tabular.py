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
SMALL_FRAME = 1000  # up to this many rows, category codes come from a dict lookup (faster than pandas)


def _numeric(values: pd.Series, column: str) -> np.ndarray:
    try:
        return pd.to_numeric(values, errors="raise").astype(np.float64).to_numpy(na_value=np.nan)
    except (TypeError, ValueError) as e:
        raise ValueError(f"feature {column!r} must be numeric: {e}") from None


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
        """Encode; missing columns are an error naming them, extra columns are ignored.

        Numbers are converted as one block and categories through a cached code lookup: per-column
        pandas conversions cost ~4 ms for one row (the scoring endpoint's common case) against ~0.3 ms.
        """
        position = {c: i for i, c in enumerate(X.columns)}  # a dict: ~50x faster than `in`/`get_indexer` on an Index
        missing = [c for c in self.columns if c not in position]
        if missing:
            raise ValueError(f"feature frame lacks columns {missing}")
        numeric_pos, numeric_cols, categorical = self._layout()
        out = np.empty((len(X), len(self.columns)), dtype=np.float64)
        if len(X) <= SMALL_FRAME and len(position) == len(X.columns):  # unique column names
            # A few rows (serving): one object matrix, sliced by position, beats selecting sub-frames.
            values = X.to_numpy(dtype=object)
            where = np.fromiter((position[c] for c in self.columns), dtype=np.intp, count=len(self.columns))
            try:
                out[:, numeric_pos] = values[:, where[numeric_pos]].astype(np.float64)  # None -> NaN
            except (TypeError, ValueError):  # pd.NA or a non-numeric cell: the per-column path names it
                self._numeric_block(X, numeric_pos, numeric_cols, out)
            for j, c in categorical:
                out[:, j] = self._codes(c, values[:, where[j]])
            return out
        if numeric_cols:
            self._numeric_block(X, numeric_pos, numeric_cols, out)
        for j, c in categorical:
            out[:, j] = self._codes(c, X[c])
        return out

    @staticmethod
    def _numeric_block(X: pd.DataFrame, positions: list[int], columns: list[str], out: np.ndarray) -> None:
        try:
            out[:, positions] = X[columns].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):  # a non-numeric cell somewhere: convert per column to name it
            for j, c in zip(positions, columns, strict=True):
                out[:, j] = _numeric(X[c], c)

    def _layout(self) -> tuple[list[int], list[str], list[tuple[int, str]]]:
        """Positions and names of the numeric columns, and (position, name) of the categorical ones."""
        layout = self.__dict__.get("_layout_cache")  # not a dataclass field: pickles of old encoders lack it
        if layout is None:
            numeric = [(j, c) for j, c in enumerate(self.columns) if c not in self.categories]
            layout = (
                [j for j, _ in numeric],
                [c for _, c in numeric],
                [(j, c) for j, c in enumerate(self.columns) if c in self.categories],
            )
            self.__dict__["_layout_cache"] = layout
        return layout

    def _codes(self, column: str, values: pd.Series | np.ndarray) -> np.ndarray:
        """Category codes as floats (NaN for missing or unseen values), like `pd.Categorical(...).codes`."""
        if len(values) > SMALL_FRAME:
            codes = pd.Categorical(pd.Series(values).astype("string"), categories=self.categories[column]).codes
            out = codes.astype(np.float64)
            out[codes < 0] = np.nan
            return out
        lookups = self.__dict__.setdefault("_lookup_cache", {})
        lookup = lookups.get(column)
        if lookup is None:
            lookup = lookups[column] = {v: float(i) for i, v in enumerate(self.categories[column])}
        raw = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else values
        # Strings (the usual cell) go straight to the lookup; only other cells are asked `pd.isna`
        # (one call on the whole array costs ~15 us, more than the lookups themselves).
        keys = (v if type(v) is str else None if pd.isna(v) else str(v) for v in raw)
        return np.array([lookup.get(k, np.nan) for k in keys], dtype=np.float64)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_cache")}

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
    num_threads: int = 1,
) -> list[list[Reason]]:
    """The k features pushing each prediction most in `direction` (+1 up, -1 down), via pred_contrib."""
    contrib = booster.predict(X, pred_contrib=True, num_threads=num_threads)[:, :-1]  # last column is the bias
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
