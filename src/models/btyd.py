"""Buy-Till-You-Die baseline: BG/NBD or Pareto/NBD for transactions, Gamma-Gamma for spend.

The model reads the BTYD columns of a feature snapshot (`frequency_btyd` = x, `btyd_recency_days`
= t_x, `btyd_age_days` = T, `btyd_monetary` = mean revenue of the repeat purchase days) and gives,
per customer, the expected purchase days and spend in a horizon, P(alive), and a churn score.
Customers without a purchase before the cutoff (T is NULL) are outside BTYD: they are left out of
the fit and get NaN from every prediction.

Library: `lifetimes` (0.11.3, its final release): maximum-likelihood fits in under a second.
PyMC-Marketing's CLV module was evaluated first. It is maintained and, with flat priors, its MAP
fits reproduce the published CDNOW parameters too, but it is not practical here: pytensor compiles
each model graph in every fresh process, so on a cold 2-core machine the first BG/NBD MAP fit takes
13-19 s, Pareto/NBD 19-28 s, Gamma-Gamma 7-10 s, each later fit 5-12 s and the import ~10 s: about
85 s (60 s in pytensor's NUMBA mode) for the fits this module's tests make, against ~6 s with
lifetimes. It also adds ~225 MB (pymc, pytensor, arviz, numba, xarray) and caps cachetools below 7.
lifetimes is unmaintained, so it is used narrowly: its fitters for the likelihood fits and the
closed-form predictions, rebuilt from `params_` (the estimator stays small and picklable); never
`lifetimes.datasets` (it imports pkg_resources); its warning-filter changes kept local; the CDNOW
checks in the tests guard any upgrade.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from custops.errors import ConfigError, DataContractError

log = logging.getLogger(__name__)

BTYD_COLUMNS = ("frequency_btyd", "btyd_recency_days", "btyd_age_days", "btyd_monetary")
TRANSACTION_PARAMS = {"bgnbd": ("r", "alpha", "a", "b"), "paretonbd": ("r", "alpha", "s", "beta")}
SPEND_PARAMS = ("p", "q", "v")

# The classic CDNOW 39+39-week split (Fader, Hardie & Lee 2005): calibration through 1997-09-30.
CDNOW_CALIBRATION_END = "1997-09-30"
CDNOW_HOLDOUT_END = "1998-06-30"
_CDNOW_COLUMNS = ("customer_id_master", "customer_id", "date", "cds", "amount")
_FIX = "pass feature-snapshot rows with frequency_btyd, btyd_recency_days, btyd_age_days, btyd_monetary"


def _lifetimes() -> Any:
    """The lifetimes package, imported on first use (it pulls in autograd and dill)."""
    with warnings.catch_warnings():  # lifetimes sets a process-wide FutureWarning filter on import
        import lifetimes
    return lifetimes


class BTYDModel(BaseEstimator):
    """BG/NBD (or Pareto/NBD) + Gamma-Gamma on snapshot columns in days (scikit-learn contract).

    `time_unit_days` only sets the unit of the reported rate parameters (`alpha`, `beta`): 7 gives
    the weekly parameters of the published CDNOW results. `penalizer` is lifetimes' L2 penalty on the
    parameters of both fits (0 = maximum likelihood). `predict` is the expected gross spend in
    `horizon_days`.
    """

    def __init__(
        self,
        *,
        transaction_model: str = "bgnbd",
        penalizer: float = 0.0,
        time_unit_days: float = 1.0,
        horizon_days: float = 365.0,
    ):
        self.transaction_model = transaction_model
        self.penalizer = penalizer
        self.time_unit_days = time_unit_days
        self.horizon_days = horizon_days

    def fit(self, X: pd.DataFrame, y: Any = None) -> BTYDModel:
        """Fit the transaction model on every buyer and Gamma-Gamma on repeat buyers with spend > 0."""
        self._check_params()
        x, t_x, T, monetary, buyer = self._history(X)
        if not buyer.any():
            raise DataContractError("BTYDModel.fit input", "btyd_age_days", "no customer has a purchase", _FIX)
        x, t_x, T, monetary = x[buyer], t_x[buyer], T[buyer], monetary[buyer]
        lt = _lifetimes()
        fitter_cls = lt.BetaGeoFitter if self.transaction_model == "bgnbd" else lt.ParetoNBDFitter
        # Pareto/NBD: lifetimes' default tolerance (1e-4, Nelder-Mead) stops up to ~1% short of the
        # optimum, by where it started (CDNOW beta 11.67 or 11.77); 1e-6 lands on it from any start.
        options = {"tol": 1e-6} if self.transaction_model == "paretonbd" else {}
        transactions = _fit(fitter_cls(penalizer_coef=self.penalizer), self.transaction_model, x, t_x, T, **options)

        repeat = (x > 0) & np.isfinite(monetary) & (monetary > 0)
        if not repeat.any():
            raise DataContractError(
                "BTYDModel.fit input",
                "btyd_monetary",
                "no repeat buyer with positive spend, so Gamma-Gamma cannot be fitted",
                "use a later cutoff or more history",
            )
        spend = _fit(lt.GammaGammaFitter(penalizer_coef=self.penalizer), "Gamma-Gamma", x[repeat], monetary[repeat])

        self.params_ = {k: float(v) for k, v in (*transactions.params_.items(), *spend.params_.items())}
        self.n_customers_ = int(buyer.sum())
        self.n_repeat_customers_ = int(repeat.sum())
        if self.params_["q"] <= 1:
            log.warning("Gamma-Gamma q=%.3f <= 1: the population mean spend is unbounded", self.params_["q"])
        log.info(
            "BTYD %s fitted on %d customers (%d for Gamma-Gamma): %s",
            self.transaction_model,
            self.n_customers_,
            self.n_repeat_customers_,
            {k: round(v, 4) for k, v in self.params_.items()},
        )
        return self

    def expected_purchases(self, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Expected purchase days in the next `horizon_days` (NaN for customers who never bought)."""
        t = self._units(horizon_days)
        return self._predict(
            X, lambda f, x, t_x, T: f.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        )

    def p_alive(self, X: pd.DataFrame) -> np.ndarray:
        """P(the customer has not dropped out) at the cutoff. Under BG/NBD it is 1 whenever x = 0."""
        return self._predict(X, lambda f, x, t_x, T: f.conditional_probability_alive(x, t_x, T))

    def probability_no_purchase(self, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """P(no purchase in the next `horizon_days` | history): dropped out, or alive but not buying."""
        t = self._units(horizon_days)
        if self.transaction_model == "paretonbd":
            return self._predict(
                X, lambda f, x, t_x, T: f.conditional_probability_of_n_purchases_up_to_time(0, t, x, t_x, T)
            )
        return self._predict(X, lambda f, x, t_x, T: _bgnbd_no_purchase(f, x, t_x, T, t))

    def expected_spend(self, X: pd.DataFrame) -> np.ndarray:
        """Expected revenue per future purchase day: Gamma-Gamma conditional mean (population mean at x = 0)."""
        check_is_fitted(self)
        x, _, _, monetary, buyer = self._history(X)
        p, q, v = (self.params_[k] for k in SPEND_PARAMS)
        population_mean = v * p / (q - 1.0)
        known = (x > 0) & np.isfinite(monetary)
        weight = np.where(known, p * x / (p * x + q - 1.0), 0.0)
        spend = (1.0 - weight) * population_mean + weight * np.where(known, monetary, 0.0)
        return np.where(buyer, spend, np.nan)

    def expected_value(self, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Expected gross spend in the next `horizon_days` = expected purchases x expected spend."""
        return self.expected_purchases(X, horizon_days) * self.expected_spend(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Expected gross spend in the next `self.horizon_days` (NaN for customers who never bought)."""
        return self.expected_value(X, self.horizon_days)

    # ------------------------------------------------------------------ helpers

    def _check_params(self) -> None:
        if self.transaction_model not in TRANSACTION_PARAMS:
            raise ConfigError(
                f"BTYDModel transaction_model={self.transaction_model!r} is unknown "
                f"(use one of: {', '.join(TRANSACTION_PARAMS)})"
            )
        for name in ("time_unit_days", "horizon_days"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"BTYDModel {name}={getattr(self, name)!r} must be a positive number of days")
        if not self.penalizer >= 0:
            raise ConfigError(f"BTYDModel penalizer={self.penalizer!r} must be >= 0 (0 = maximum likelihood)")

    def _units(self, days: float) -> float:
        if not days > 0:
            raise ConfigError(f"BTYD horizon_days={days!r} must be a positive number of days")
        return float(days) / self.time_unit_days

    def _history(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x, t_x and T in model time units, monetary value, and the mask of customers who ever bought."""
        missing = [c for c in BTYD_COLUMNS if c not in X.columns]
        if missing:
            raise DataContractError("BTYDModel input", missing[0], "column is missing", _FIX)
        col = {c: X[c].to_numpy(dtype=float, na_value=np.nan) for c in BTYD_COLUMNS}
        T = col["btyd_age_days"]
        buyer = np.isfinite(T)
        x, t_x = np.nan_to_num(col["frequency_btyd"]), np.nan_to_num(col["btyd_recency_days"])
        problems = {
            "frequency_btyd": (x < 0) | (x != np.round(x)),
            "btyd_recency_days": (t_x < 0) | (t_x > T) | ((x == 0) & (t_x != 0)),
            "btyd_age_days": T < 0,
        }
        for name, bad in problems.items():
            if (bad & buyer).any():
                raise DataContractError(
                    "BTYDModel input",
                    name,
                    f"{int((bad & buyer).sum())} row(s) break 0 <= t_x <= T, integer x >= 0, t_x = 0 when x = 0",
                    _FIX,
                )
        unit = self.time_unit_days
        return x.astype(int), t_x / unit, np.where(buyer, T, 0.0) / unit, col["btyd_monetary"], buyer

    def _predict(self, X: pd.DataFrame, predict: Callable[..., np.ndarray]) -> np.ndarray:
        """`predict(fitter, x, t_x, T)` on the buyers, with a lifetimes fitter rebuilt from `params_`; NaN elsewhere."""
        check_is_fitted(self)
        x, t_x, T, _, buyer = self._history(X)
        lt = _lifetimes()
        fitter = lt.BetaGeoFitter() if self.transaction_model == "bgnbd" else lt.ParetoNBDFitter()
        fitter.params_ = pd.Series({k: self.params_[k] for k in TRANSACTION_PARAMS[self.transaction_model]})
        out = np.full(len(buyer), np.nan)
        if buyer.any():
            with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
                out[buyer] = np.asarray(predict(fitter, x[buyer], t_x[buyer], T[buyer]), dtype=float)
        return out


def _fit(fitter: Any, name: str, *arrays: np.ndarray, **options: Any) -> Any:
    """Fit a lifetimes fitter; its printout on failure goes to the log, non-convergence to a ConfigError.

    lifetimes' Pareto/NBD draws its starting point from numpy's global random state, so a fit's
    result depended on whatever ran before it: the fit runs from a fixed seed (the caller's state is
    restored after), and the same data give the same parameters.
    """
    out = io.StringIO()
    state = np.random.get_state()
    np.random.seed(0)
    try:
        # lifetimes' likelihoods reset the process-wide warning filters on every call: keep that local
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            np.errstate(over="ignore", divide="ignore", invalid="ignore"),
        ):
            return fitter.fit(*arrays, **options)
    except _lifetimes().utils.ConvergenceError as exc:
        log.debug("%s optimizer output: %s", name, out.getvalue())
        raise ConfigError(
            f"BTYD {name} fit did not converge on {len(arrays[0])} customers: raise BTYDModel penalizer (e.g. 0.001)"
        ) from exc
    finally:
        np.random.set_state(state)


def _bgnbd_no_purchase(fitter: Any, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, t: float) -> np.ndarray:
    """BG/NBD P(no purchase in (T, T + t]): customers drop out only right after a purchase, so one
    alive at T stays alive until buying again, and its purchase rate is then Gamma(r + x, alpha + T)."""
    r, alpha = fitter.params_["r"], fitter.params_["alpha"]
    alive = fitter.conditional_probability_alive(x, t_x, T)
    return 1.0 - alive + alive * ((alpha + T) / (alpha + T + t)) ** (r + x)


def churn_score(model: BTYDModel, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
    """Churn risk: P(no purchase in the next `horizon_days`) under the fitted transaction model.

    Not 1 - P(alive): under BG/NBD that is 0 for every one-time buyer, ranking them as the safest
    customers (churn AUC ~0.32 on CDNOW). P(no purchase) also counts customers who are alive but
    slow, and works for both transaction models (CDNOW AUC ~0.76 BG/NBD, ~0.77 Pareto/NBD).
    """
    return model.probability_no_purchase(X, horizon_days)


def read_cdnow_sample(source: Path | None = None) -> pd.DataFrame:
    """The CDNOW sample's transactions (customer_id, date, cds, amount), from the lifetimes wheel by default.

    2,357 customers who made their first purchase in Q1 1997, with every purchase through June 1998.
    """
    if source is None:
        files = resources.files(_lifetimes()) / "datasets" / "CDNOW_sample.txt"
        with resources.as_file(files) as path:
            return read_cdnow_sample(path)
    df = pd.read_csv(source, sep=r"\s+", header=None, names=list(_CDNOW_COLUMNS), dtype={"date": str})
    df["date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df[["customer_id", "date", "cds", "amount"]]


def cdnow_summary(
    source: Path | None = None,
    *,
    calibration_end: str = CDNOW_CALIBRATION_END,
    holdout_end: str = CDNOW_HOLDOUT_END,
) -> pd.DataFrame:
    """Calibration/holdout summary of the CDNOW sample in feature-snapshot column names, in DAYS.

    As in the lifetimes docs: same-day purchases merged (6,919 rows -> 6,696 transactions), the
    calibration includes `calibration_end` and T runs to it (to get the published weekly parameters
    fit with `time_unit_days=7`). `label_purchase_days_holdout` / `label_value_holdout` count the
    purchase days and spend in (calibration_end, holdout_end]. One row per customer, indexed by id.
    """
    tx = read_cdnow_sample(source)
    days = tx.groupby(["customer_id", "date"], as_index=False)["amount"].sum().sort_values(["customer_id", "date"])
    cal_end, hold_end = pd.Timestamp(calibration_end), pd.Timestamp(holdout_end)
    cal = days[days["date"] <= cal_end]
    per = cal.groupby("customer_id")
    first, last, n_days = per["date"].min(), per["date"].max(), per.size()
    repeat_revenue = per["amount"].sum() - per["amount"].first()
    out = pd.DataFrame(
        {
            "frequency_btyd": (n_days - 1).astype("int64"),
            "btyd_recency_days": (last - first).dt.days.astype(float),
            "btyd_age_days": (cal_end - first).dt.days.astype(float),
            "btyd_monetary": (repeat_revenue / (n_days - 1)).where(n_days > 1),
            "recency_days": (cal_end - last).dt.days.astype(float),
        }
    )
    holdout = days[(days["date"] > cal_end) & (days["date"] <= hold_end)].groupby("customer_id")
    out["label_purchase_days_holdout"] = holdout.size().reindex(out.index, fill_value=0).astype("int64")
    out["label_value_holdout"] = holdout["amount"].sum().reindex(out.index, fill_value=0.0)
    return out
