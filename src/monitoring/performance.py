"""Model performance on a window: realised (labels observed) and estimated without labels (CBPE).

Churn labels arrive only a horizon after scoring. Confidence-based performance estimation (CBPE,
as in NannyML) reads the expected confusion structure off calibrated probabilities: a row scored
p is a positive with weight p and a negative with weight 1 - p, so the expected ROC-AUC is the
AUC of those weighted rows and the expected Brier score is mean p(1 - p). It holds while the
model stays calibrated on the new data (no concept drift), which is why the realised numbers are
shown beside it once labels arrive.

NannyML itself does not co-install with this stack (0.13.1 pins lightgbm < 4.6 and
python-dateutil < 3; we lock lightgbm 4.7 and python-dateutil 4.0), so the two estimators it
would give us are written here on top of scikit-learn's weighted metrics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, roc_auc_score

from custops.models import metrics as M


def estimated_classifier_performance(proba: np.ndarray) -> dict[str, float]:
    """CBPE: expected ROC-AUC, Brier score and positive rate from calibrated probabilities alone."""
    p = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    p = p[~np.isnan(p)]
    if len(p) == 0:
        return {"roc_auc": float("nan"), "brier": float("nan"), "positive_rate": float("nan"), "rows": 0}
    y = np.r_[np.ones(len(p)), np.zeros(len(p))]
    weight = np.r_[p, 1.0 - p]
    auc = float(roc_auc_score(y, np.r_[p, p], sample_weight=weight)) if 0 < p.sum() < len(p) else float("nan")
    return {
        "roc_auc": auc,
        "brier": float(np.mean(p * (1.0 - p))),
        "positive_rate": float(p.mean()),
        "rows": len(p),
    }


def calibration_table(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Rows, mean predicted probability and observed rate per quantile bin of the probability."""
    df = pd.DataFrame({"y": np.asarray(y, float), "p": np.asarray(proba, float)})
    df["bin"] = pd.qcut(df["p"].rank(method="first"), q=min(bins, len(df)), labels=False)
    t = df.groupby("bin").agg(rows=("y", "size"), mean_predicted=("p", "mean"), observed=("y", "mean"))
    return t.reset_index(drop=True)


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """Row-weighted mean |observed rate - mean predicted probability| over quantile bins."""
    t = calibration_table(y, proba, bins)
    return float((t["rows"] * (t["observed"] - t["mean_predicted"]).abs()).sum() / t["rows"].sum())


def realised_classifier_performance(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """ROC-AUC, Brier score, calibration error, positive rate and mean probability on labelled rows."""
    y, p = np.asarray(y, dtype=float), np.asarray(proba, dtype=float)
    ok = ~(np.isnan(y) | np.isnan(p))
    y, p = y[ok].astype(int), p[ok]
    if len(y) == 0:
        return {}
    base = M.binary_metrics(y, p)
    return {
        "roc_auc": base["roc_auc"],
        "brier": float(brier_score_loss(y, np.clip(p, 0, 1))),
        "calibration_error": expected_calibration_error(y, p),
        "positive_rate": base["positive_rate"],
        "mean_predicted": float(p.mean()),
        "rows": int(len(y)),
    }


def realised_value_performance(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Normalized Gini, Spearman and total-value error of CLV predictions on labelled rows."""
    a, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(p))
    a, p = a[ok], p[ok]
    if len(a) < 2:
        return {}
    m = M.value_metrics(a, p)
    return {"gini": m["gini"], "spearman": m["spearman"], "total_error_pct": m["total_error_pct"], "rows": len(a)}
