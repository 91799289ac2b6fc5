"""CBPE (performance estimated without labels) and realised performance on labelled rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from custops.monitoring.performance import (
    calibration_table,
    estimated_classifier_performance,
    expected_calibration_error,
    realised_classifier_performance,
    realised_value_performance,
)


@pytest.mark.parametrize("spread", [0.5, 1.5, 3.0])
def test_cbpe_matches_the_realised_auc_of_a_calibrated_model(spread: float) -> None:
    rng = np.random.default_rng(7)
    p = 1 / (1 + np.exp(-rng.normal(0, spread, 40_000)))
    y = rng.random(len(p)) < p  # labels drawn from the probabilities: calibrated by construction
    est = estimated_classifier_performance(p)
    assert est["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert est["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=0.005)
    assert est["positive_rate"] == pytest.approx(y.mean(), abs=0.01)


def test_cbpe_misses_what_it_cannot_see_and_realised_metrics_show_it() -> None:
    rng = np.random.default_rng(8)
    p = 1 / (1 + np.exp(-rng.normal(0, 2, 20_000)))
    y = rng.random(len(p)) < np.clip(p + 0.25, 0, 1)  # the world churns more than the model thinks
    est = estimated_classifier_performance(p)
    real = realised_classifier_performance(y, p)
    assert real["positive_rate"] - real["mean_predicted"] > 0.15
    assert real["calibration_error"] > 0.1
    assert abs(est["positive_rate"] - real["positive_rate"]) > 0.15


def test_estimates_skip_missing_probabilities_and_handle_no_rows() -> None:
    est = estimated_classifier_performance(np.array([np.nan, 0.2, 0.8]))
    # positives weigh p, negatives 1 - p: 0.8*0.8 pairs ranked right, two tied pairs of 0.2*0.8 count half
    assert est["rows"] == 2 and est["roc_auc"] == pytest.approx(0.64 + 0.5 * 0.16 + 0.5 * 0.16)
    assert estimated_classifier_performance(np.array([np.nan]))["rows"] == 0


def test_calibration_table_and_error() -> None:
    rng = np.random.default_rng(9)
    p = rng.random(10_000)
    y = rng.random(len(p)) < p
    t = calibration_table(y, p, bins=10)
    assert len(t) == 10 and t["rows"].sum() == len(p)
    assert (t["observed"] - t["mean_predicted"]).abs().max() < 0.05
    assert expected_calibration_error(y, p) < 0.03
    assert expected_calibration_error(y, np.clip(p * 0.5, 0, 1)) > 0.2


def test_realised_value_performance_ranks_customers() -> None:
    rng = np.random.default_rng(10)
    actual = rng.gamma(2, 50, 5000)
    good = realised_value_performance(actual, actual * rng.lognormal(0, 0.1, len(actual)))
    bad = realised_value_performance(actual, rng.permutation(actual))
    assert good["gini"] > 0.9 and abs(bad["gini"]) < 0.1
    assert realised_value_performance(np.array([1.0]), np.array([1.0])) == {}
