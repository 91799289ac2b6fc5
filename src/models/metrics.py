"""Evaluation metrics, business grades and targeting tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def lift_at(y: np.ndarray, score: np.ndarray, frac: float = 0.1) -> float:
    """Positive rate among the top `frac` by score, over the overall positive rate."""
    y = np.asarray(y, dtype=float)
    n = max(1, int(round(len(y) * frac)))
    top = np.argsort(-np.asarray(score), kind="stable")[:n]
    base = y.mean()
    return float(y[top].mean() / base) if base > 0 else float("nan")


def binary_metrics(y: np.ndarray, score: np.ndarray, *, probabilities: bool = True) -> dict[str, float]:
    """ROC-AUC, PR-AUC, lift at the top decile, and Brier score when `score` is a probability."""
    y = np.asarray(y, dtype=int)
    out = {
        "roc_auc": float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan"),
        "pr_auc": float(average_precision_score(y, score)) if y.sum() > 0 else float("nan"),
        "lift_top_decile": lift_at(y, score, 0.1),
        "positive_rate": float(y.mean()),
    }
    if probabilities:
        out["brier"] = float(brier_score_loss(y, np.clip(score, 0, 1)))
    return out


def normalized_gini(actual: np.ndarray, pred: np.ndarray) -> float:
    """Gini of `actual` ordered by `pred`, divided by the Gini of the perfect ordering (1 = perfect)."""

    def gini(a: np.ndarray, p: np.ndarray) -> float:
        order = np.lexsort((np.arange(len(p)), -p))
        cum = np.cumsum(a[order]) / a.sum()
        return float((cum - np.arange(1, len(a) + 1) / len(a)).sum() / len(a))

    a, p = np.asarray(actual, dtype=float), np.asarray(pred, dtype=float)
    if a.sum() == 0:
        return float("nan")
    return gini(a, p) / gini(a, a)


def decile_table(actual: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    """Customers in deciles of predicted value: predicted vs actual totals per decile (1 = highest)."""
    df = pd.DataFrame({"actual": np.asarray(actual, float), "pred": np.asarray(pred, float)})
    ranks = df["pred"].rank(method="first", ascending=False)
    df["decile"] = np.ceil(ranks / len(df) * 10).clip(1, 10).astype(int)
    t = df.groupby("decile").agg(customers=("pred", "size"), predicted=("pred", "sum"), actual=("actual", "sum"))
    t["error_pct"] = (t["predicted"] - t["actual"]) / t["actual"].replace(0, np.nan) * 100
    return t


def value_metrics(actual: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Ranking (Gini, Spearman), decile-level MAPE, point errors and total-value error."""
    a, p = np.asarray(actual, dtype=float), np.asarray(pred, dtype=float)
    deciles = decile_table(a, p)
    return {
        "gini": normalized_gini(a, p),
        "spearman": float(spearmanr(a, p).statistic),
        "decile_mape": float(np.nanmean(np.abs(deciles["error_pct"]))),
        "mae": float(np.mean(np.abs(a - p))),
        "rmse": float(np.sqrt(np.mean((a - p) ** 2))),
        "total_error_pct": float((p.sum() - a.sum()) / a.sum() * 100) if a.sum() else float("nan"),
    }


def reliability(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Observed frequency per bin of predicted probability (the calibration curve)."""
    frac_pos, mean_pred = calibration_curve(y, np.clip(prob, 0, 1), n_bins=bins, strategy="quantile")
    return pd.DataFrame({"mean_predicted": mean_pred, "observed": frac_pos})


def grade(model_score: float, best_baseline: float, *, higher_is_better: bool = True) -> str:
    """A plain grade by relative improvement over the best baseline: A >= 10%, B >= 3%, C > 0, D otherwise."""
    if np.isnan(model_score) or np.isnan(best_baseline) or best_baseline == 0:
        return "?"
    gain = (model_score - best_baseline) / abs(best_baseline)
    if not higher_is_better:
        gain = -gain
    return "A" if gain >= 0.10 else "B" if gain >= 0.03 else "C" if gain > 0 else "D"


def targeting_table(
    y: np.ndarray,
    risk: np.ndarray,
    value: np.ndarray | None = None,
    fracs: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
) -> pd.DataFrame:
    """If we contact the top X% by risk: true churners reached, false alarms, share of churners, value at stake."""
    y = np.asarray(y, dtype=int)
    order = np.argsort(-np.asarray(risk), kind="stable")
    rows = []
    for f in fracs:
        n = max(1, int(round(len(y) * f)))
        top = order[:n]
        hits = int(y[top].sum())
        rows.append(
            {
                "contact_top_pct": f * 100,
                "customers": n,
                "true_churners": hits,
                "false_alarms": n - hits,
                "precision": hits / n,
                "churners_reached_pct": hits / max(1, y.sum()) * 100,
                "value_at_stake": float(np.asarray(value)[top][y[top] == 1].sum())
                if value is not None
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)
