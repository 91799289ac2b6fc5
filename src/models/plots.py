"""Evaluation plots saved as PNG files (logged to MLflow as artifacts)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def feature_importance(names: list[str], gains: np.ndarray, path: Path, top: int = 20) -> Path:
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1))
    ax.barh([names[i] for i in order], gains[order])
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance")
    return _save(fig, path)


def calibration(rel: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(rel["mean_predicted"], rel["observed"], "o-", label="model")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability (validation)")
    ax.legend()
    return _save(fig, path)


def gain_chart(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """Cumulative share of positives captured by contacting the top x% (model vs baselines)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    y = np.asarray(y, dtype=float)
    x = np.arange(1, len(y) + 1) / len(y)
    for name, s in scores.items():
        order = np.argsort(-np.asarray(s), kind="stable")
        ax.plot(x, np.cumsum(y[order]) / max(1.0, y.sum()), label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set_xlabel("share of customers contacted (by score)")
    ax.set_ylabel("share of positives reached")
    ax.set_title("Cumulative gain (validation)")
    ax.legend()
    return _save(fig, path)


def decile_chart(table: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    idx = np.arange(len(table))
    ax.bar(idx - 0.2, table["predicted"], width=0.4, label="predicted")
    ax.bar(idx + 0.2, table["actual"], width=0.4, label="actual")
    ax.set_xticks(idx, [str(d) for d in table.index])
    ax.set_xlabel("decile of predicted value (1 = highest)")
    ax.set_ylabel("total value")
    ax.set_title("Value by predicted decile (validation)")
    ax.legend()
    return _save(fig, path)
