"""LightGBM models in the scikit-learn contract: churn, propensity and CLV (hurdle).

All three take a feature frame (snapshot columns) and learn an encoder for the feature service's
columns; `cutoff` (optional in `fit`) lets them keep the latest training cutoff aside, in time
order, for early stopping and probability calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from custops.models.tabular import FrameEncoder, Reason, top_reasons, train_booster

RISK_BANDS = ("low", "medium", "high")


def _holdout_mask(cutoff: pd.Series | None, n: int) -> np.ndarray:
    """Rows of the latest cutoff (when there are at least two cutoffs); otherwise no holdout."""
    if cutoff is None:
        return np.zeros(n, dtype=bool)
    c = pd.to_datetime(pd.Series(cutoff)).to_numpy()
    if len(np.unique(c)) < 2:
        return np.zeros(n, dtype=bool)
    return c == c.max()


def _isotonic(calibrator: IsotonicRegression, raw: np.ndarray) -> np.ndarray:
    """`calibrator.predict(raw)` for out_of_bounds="clip": the same linear interpolation between its
    (strictly increasing) thresholds, without sklearn's input validation (~0.1 ms a call, 30x the work)."""
    clipped = np.clip(raw, calibrator.X_min_, calibrator.X_max_)
    return np.interp(clipped, calibrator.X_thresholds_, calibrator.y_thresholds_)


class _Boosted(BaseEstimator):
    """Shared parameters and helpers (parameters only in __init__, per the sklearn contract)."""

    def __init__(
        self,
        *,
        features: Sequence[str] | None = None,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 50,
        random_state: int = 42,
        n_jobs: int = 1,
    ):
        self.features = features
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self, objective: str) -> dict[str, Any]:
        return {
            "objective": objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "seed": self.random_state,
            "num_threads": self.n_jobs,
            "feature_fraction": 0.9,
            "bagging_fraction": 0.9,
            "bagging_freq": 1,
        }

    def _encode_fit(self, X: pd.DataFrame) -> np.ndarray:
        cols = (
            list(self.features)
            if self.features is not None
            else [c for c in X.columns if c not in ("customer_id", "cutoff")]
        )
        self.encoder_ = FrameEncoder.fit(X, cols)
        self.feature_names_in_ = np.array(cols, dtype=object)
        self.n_features_in_ = len(cols)
        return self.encoder_.transform(X)

    def _encode(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        if "encoder_" not in self.__dict__:  # sklearn's check costs ~5 us a call (tags): only ask it to raise
            check_is_fitted(self, "encoder_")
        if isinstance(X, np.ndarray):
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"expected {self.n_features_in_} encoded features, got shape {X.shape}")
            return X
        return self.encoder_.transform(X)

    def _fit_binary(self, Xm: np.ndarray, y: np.ndarray, hold: np.ndarray) -> tuple[lgb.Booster, np.ndarray | None]:
        params = self._params("binary")
        if hold.any() and len(np.unique(y[hold])) == 2 and len(np.unique(y[~hold])) == 2:
            booster = train_booster(
                Xm[~hold],
                y[~hold],
                encoder=self.encoder_,
                params=params,
                num_boost_round=self.n_estimators,
                valid=(Xm[hold], y[hold]),
            )
            return booster, booster.predict(Xm[hold])
        return train_booster(Xm, y, encoder=self.encoder_, params=params, num_boost_round=self.n_estimators), None


class BinaryBoostedModel(ClassifierMixin, _Boosted):
    """A calibrated LightGBM classifier (isotonic on the latest training cutoff, held out in time)."""

    def fit(self, X: pd.DataFrame, y: Any, *, cutoff: pd.Series | None = None) -> BinaryBoostedModel:
        return self._fit_encoded(self._encode_fit(X), y, cutoff)

    def _fit_encoded(self, Xm: np.ndarray, y: Any, cutoff: pd.Series | np.ndarray | None) -> BinaryBoostedModel:
        """Fit on an already encoded matrix (the encoder is set): lets several models share one encoding."""
        yv = np.asarray(y, dtype=int)
        if len(np.unique(yv)) < 2:
            raise ValueError("y has a single class: cannot train a classifier (check the label and population)")
        self.classes_ = np.array([0, 1])
        hold = _holdout_mask(cutoff, len(yv))
        self.booster_, raw_hold = self._fit_binary(Xm, yv, hold)
        self.calibrator_ = None
        if raw_hold is not None:
            self.calibrator_ = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw_hold, yv[hold])
        return self

    def _proba(self, Xm: np.ndarray) -> np.ndarray:
        raw = self.booster_.predict(Xm, num_threads=self.n_jobs)
        if self.calibrator_ is None:
            return raw
        # Isotonic steps make ties; blend a hair of the raw score back in to keep the ranking strict.
        return np.clip(_isotonic(self.calibrator_, raw) + 1e-6 * raw, 0, 1)

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        p = self._proba(self._encode(X))
        return np.column_stack([1 - p, p])

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def reasons(
        self, X: pd.DataFrame | np.ndarray, k: int = 3, descriptions: dict[str, str] | None = None
    ) -> list[list[Reason]]:
        """Top features pushing each customer's score up (LightGBM pred_contrib)."""
        return top_reasons(
            self.booster_, self._encode(X), self.encoder_, k=k, descriptions=descriptions, num_threads=self.n_jobs
        )


class ChurnModel(BinaryBoostedModel):
    """Churn risk: calibrated P(no purchase in the horizon) with risk bands."""

    def __init__(
        self,
        *,
        risk_bands: tuple[float, float] = (0.3, 0.6),
        features: Sequence[str] | None = None,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 50,
        random_state: int = 42,
        n_jobs: int = 1,
    ):
        super().__init__(
            features=features,
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            max_depth=max_depth,
            min_child_samples=min_child_samples,
            random_state=random_state,
            n_jobs=n_jobs,
        )
        self.risk_bands = risk_bands

    def risk_band(self, proba: np.ndarray) -> np.ndarray:
        """'low' below the first threshold, 'high' at or above the second, else 'medium'."""
        lo, hi = self.risk_bands
        return np.where(np.asarray(proba) >= hi, "high", np.where(np.asarray(proba) >= lo, "medium", "low"))


class PropensityModel(BinaryBoostedModel):
    """P(any purchase in the next K days), plus one calibrated model per category label given.

    The category models share the main model's encoding of X and learn from a seeded sample of at
    most `category_max_rows` of its rows (None: all): there are several of them, and each adds less
    than the main model (see the README's training benchmark for the measured cost and quality).
    """

    def __init__(
        self,
        *,
        category_max_rows: int | None = 200_000,
        features: Sequence[str] | None = None,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 50,
        random_state: int = 42,
        n_jobs: int = 1,
    ):
        super().__init__(
            features=features,
            n_estimators=n_estimators,
            learning_rate=learning_rate,
            num_leaves=num_leaves,
            max_depth=max_depth,
            min_child_samples=min_child_samples,
            random_state=random_state,
            n_jobs=n_jobs,
        )
        self.category_max_rows = category_max_rows

    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        *,
        cutoff: pd.Series | None = None,
        category_targets: pd.DataFrame | None = None,
    ) -> PropensityModel:
        Xm = self._encode_fit(X)
        self._fit_encoded(Xm, y, cutoff)
        self.category_models_: dict[str, BinaryBoostedModel] = {}
        if category_targets is None or not len(category_targets.columns):
            return self
        rows = np.arange(len(Xm))
        if self.category_max_rows is not None and len(rows) > self.category_max_rows:
            rng = np.random.default_rng(self.random_state)
            rows = np.sort(rng.choice(len(rows), size=self.category_max_rows, replace=False))
        Xc = Xm[rows]
        cut = None if cutoff is None else pd.to_datetime(pd.Series(cutoff)).to_numpy()[rows]
        params = {k: v for k, v in self.get_params().items() if k not in ("category_max_rows", "risk_bands")}
        for col in category_targets.columns:
            yc = category_targets[col].to_numpy()[rows]
            if len(np.unique(yc)) == 2 and min(yc.sum(), len(yc) - yc.sum()) >= 20:  # enough of both classes
                model = BinaryBoostedModel(**params)
                model.encoder_, model.feature_names_in_ = self.encoder_, self.feature_names_in_
                model.n_features_in_ = self.n_features_in_
                self.category_models_[col] = model._fit_encoded(Xc, yc, cut)
        return self

    def predict_categories(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """P(purchase in each modelled category), one column per category label."""
        check_is_fitted(self, "category_models_")
        Xm = self._encode(X)
        return pd.DataFrame({c: m.predict_proba(Xm)[:, 1] for c, m in self.category_models_.items()})


class HurdleCLVModel(RegressorMixin, _Boosted):
    """Future value = P(buy in horizon) x E[spend | buy]: zero-inflated, heavy-tailed targets.

    The spend part is a LightGBM Gamma regression on buyers only (log link, positive), the buy part
    a binary LightGBM; their product is the expected value.
    """

    def fit(self, X: pd.DataFrame, y: Any, *, cutoff: pd.Series | None = None) -> HurdleCLVModel:
        Xm = self._encode_fit(X)
        yv = np.clip(np.asarray(y, dtype=float), 0, None)
        buy = (yv > 0).astype(int)
        if buy.sum() < 10 or buy.sum() == len(buy):
            raise ValueError("need both buyers and non-buyers in the value label to fit the hurdle model")
        hold = _holdout_mask(cutoff, len(yv))
        self.buy_booster_, _ = self._fit_binary(Xm, buy, hold)
        pos = yv > 0
        params = self._params("gamma")
        if hold.any() and (pos & hold).sum() >= 10:
            self.spend_booster_ = train_booster(
                Xm[pos & ~hold],
                yv[pos & ~hold],
                encoder=self.encoder_,
                params=params,
                num_boost_round=self.n_estimators,
                valid=(Xm[pos & hold], yv[pos & hold]),
            )
        else:
            self.spend_booster_ = train_booster(
                Xm[pos], yv[pos], encoder=self.encoder_, params=params, num_boost_round=self.n_estimators
            )
        return self

    def predict_parts(self, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xm = self._encode(X)
        return self.buy_booster_.predict(Xm, num_threads=self.n_jobs), self.spend_booster_.predict(
            Xm, num_threads=self.n_jobs
        )

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        p, spend = self.predict_parts(X)
        return p * spend

    def reasons(
        self, X: pd.DataFrame | np.ndarray, k: int = 3, descriptions: dict[str, str] | None = None
    ) -> list[list[Reason]]:
        """Top features raising the spend part of the prediction."""
        return top_reasons(
            self.spend_booster_, self._encode(X), self.encoder_, k=k, descriptions=descriptions, num_threads=self.n_jobs
        )
