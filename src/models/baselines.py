"""Honest baselines every model is compared with, on the same validation rows.

Each baseline maps validation rows (snapshot columns) to a score where higher means "more of
the label" (more churn risk, more value, more likely to buy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from custops.models.datasets import TaskSpec

# Snapshot columns the baselines read (loaded beside the model features).
BASELINE_COLUMNS = (
    "recency_days",
    "n_orders",
    "orders_365d",
    "revenue_365d",
    "revenue_total",
    "customer_age_days",
    "frequency_btyd",
    "btyd_recency_days",
    "btyd_age_days",
    "btyd_monetary",
)

Baseline = Callable[[pd.DataFrame, pd.DataFrame, TaskSpec], np.ndarray]


def _recency(valid: pd.DataFrame) -> np.ndarray:
    """Days since the last purchase; never-bought customers count as the most distant."""
    return (
        valid["recency_days"]
        .fillna(valid["recency_days"].max() + 1 if valid["recency_days"].notna().any() else 1e6)
        .to_numpy()
    )


def churn_recency(train: pd.DataFrame, valid: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """RFM heuristic: the longer since the last purchase, the higher the churn risk."""
    return _recency(valid)


def propensity_recency(train: pd.DataFrame, valid: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """The more recent the last purchase, the likelier the next one."""
    return -_recency(valid)


def propensity_frequency(train: pd.DataFrame, valid: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Orders in the last 365 days, ties broken by recency."""
    return valid["orders_365d"].fillna(0).to_numpy() - 1e-6 * _recency(valid)


def clv_last_period(train: pd.DataFrame, valid: pd.DataFrame, spec: TaskSpec) -> np.ndarray:
    """Last period's spend, scaled to the horizon: 'next year looks like last year'."""
    return valid["revenue_365d"].fillna(0).to_numpy() * spec.horizon_days / 365.0


BASELINES: dict[str, dict[str, Baseline]] = {
    "churn": {"recency": churn_recency},
    "propensity": {"recency": propensity_recency, "frequency": propensity_frequency},
    "clv": {"last_period_spend": clv_last_period},
}


def baseline_scores(task: str, train: pd.DataFrame, valid: pd.DataFrame, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Every baseline's scores for the validation rows."""
    return {name: fn(train, valid, spec) for name, fn in BASELINES[task].items()}
