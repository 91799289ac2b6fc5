"""Evidently drift on plain frames: no false alarm on one distribution, injected drift found and named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from custops.monitoring.drift import evidently_report, segment_drift
from custops.settings import MonitoringSettings

NUMERIC = ["recency_days", "revenue_90d", "orders_90d", "tenure_days", "email_open_rate_90d"]
CATEGORICAL = ["country", "value_tier"]
FEATURES = [*NUMERIC, *CATEGORICAL]


def customers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "recency_days": rng.exponential(60, n),
            "revenue_90d": rng.gamma(2.0, 40.0, n),
            "orders_90d": rng.poisson(1.5, n).astype(float),
            "tenure_days": rng.uniform(0, 1400, n),
            "email_open_rate_90d": np.where(rng.random(n) < 0.2, np.nan, rng.beta(2, 5, n)),
            "country": rng.choice(["DE", "FR", "GB", "NL"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object),
            "value_tier": rng.choice(["platinum", "gold", "silver", "bronze"], n, p=[0.15, 0.25, 0.3, 0.3]).astype(
                object
            ),
            "churn_probability": rng.beta(2, 3, n),
        }
    )


def run(reference: pd.DataFrame, current: pd.DataFrame, settings: MonitoringSettings | None = None):
    return evidently_report(
        reference,
        current,
        features=FEATURES,
        categorical=CATEGORICAL,
        outputs=["churn_probability"],
        settings=settings or MonitoringSettings(),
    )


def test_same_distribution_raises_no_drift_at_the_configured_thresholds() -> None:
    result = run(customers(3000, 1), customers(3000, 2))
    assert result.drifted_features == []
    assert result.share_drifted == 0.0 and result.n_drifted == 0
    assert not result.predictions["churn_probability"].drifted
    # Evidently picks the test by column type and size: a distance for numbers, Jensen-Shannon for categories
    assert result.features["revenue_90d"].method.startswith("Wasserstein")
    assert result.features["country"].method.startswith("Jensen-Shannon")
    assert result.quality["country"]["new_categories"] == []


def test_injected_drift_is_detected_and_named() -> None:
    reference, current = customers(3000, 1), customers(3000, 2)
    current["revenue_90d"] *= 1.6  # a price rise
    current["recency_days"] += 45  # a churn wave
    current.loc[current.index[:600], "country"] = "US"  # a market that was not there
    current["churn_probability"] = np.clip(current["churn_probability"] + 0.2, 0, 1)
    result = run(reference, current)
    assert set(result.drifted_features) == {"revenue_90d", "recency_days", "country"}
    assert result.n_drifted == 3 and result.share_drifted == pytest.approx(3 / len(FEATURES))
    assert result.predictions["churn_probability"].drifted
    assert result.quality["country"]["new_categories"] == ["US"]
    assert result.quality["country"]["new_category_share"] == pytest.approx(0.2)
    assert result.quality["revenue_90d"]["out_of_range_share"] > 0


def test_thresholds_and_methods_from_settings_reach_evidently() -> None:
    reference = customers(3000, 1)
    current = reference.copy()
    current["revenue_90d"] *= 1.05  # a 5% price rise: ~0.07 std of shift, under the default distance of 0.1
    default = run(reference, current).features["revenue_90d"]
    assert default.method.startswith("Wasserstein") and default.threshold == 0.1 and not default.drifted
    tighter = run(reference, current, MonitoringSettings(num_threshold=0.05)).features["revenue_90d"]
    assert tighter.threshold == 0.05 and tighter.drifted and tighter.score == pytest.approx(default.score)
    ks = run(reference, current, MonitoringSettings(num_method="ks")).features["revenue_90d"]
    assert ks.method == "ks" and ks.threshold == 0.05  # a p-value: drift when below the threshold
    assert 0 < ks.score < 1 and ks.drifted == (ks.score < ks.threshold)


def test_missing_values_are_measured_per_feature() -> None:
    reference, current = customers(2000, 1), customers(2000, 2)
    current.loc[current.index[:1000], "email_open_rate_90d"] = np.nan
    q = run(reference, current).quality["email_open_rate_90d"]
    assert q["reference_missing_share"] == pytest.approx(0.2, abs=0.03)
    assert q["missing_share"] == pytest.approx(0.6, abs=0.03)


def test_segment_drift_points_at_the_segment_that_moved() -> None:
    reference, current = customers(6000, 1), customers(6000, 2)
    platinum = current["value_tier"] == "platinum"
    current.loc[platinum, "revenue_90d"] *= 2.0
    current.loc[platinum, "orders_90d"] += 2
    current.loc[platinum, "recency_days"] += 60
    settings = MonitoringSettings(segment_columns=("value_tier",), segment_min_rows=100)
    segments = {
        s["segment"]: s
        for s in segment_drift(reference, current, features=FEATURES, categorical=CATEGORICAL, settings=settings)
    }
    assert set(segments) == {f"value_tier={v}" for v in ("platinum", "gold", "silver", "bronze")}
    hit = segments["value_tier=platinum"]
    assert hit["priority"] and hit["tested"]
    assert {"revenue_90d", "orders_90d", "recency_days"} <= set(hit["drifted_features"])
    assert hit["share_drifted"] >= settings.segment_drift_share
    assert "value_tier" not in hit["drifted_features"]  # a segment's own column is not tested inside it
    for name in ("value_tier=gold", "value_tier=silver", "value_tier=bronze"):
        assert segments[name]["share_drifted"] < settings.segment_drift_share, segments[name]


def test_small_segments_are_reported_but_not_tested() -> None:
    reference, current = customers(400, 1), customers(400, 2)
    settings = MonitoringSettings(segment_columns=("value_tier",), segment_min_rows=100)
    segments = segment_drift(reference, current, features=FEATURES, categorical=CATEGORICAL, settings=settings)
    platinum = next(s for s in segments if s["value"] == "platinum")
    assert not platinum["tested"] and platinum["share_drifted"] is None and platinum["current_rows"] < 100


def test_runs_can_go_to_an_evidently_workspace(tmp_path) -> None:
    from evidently.ui.workspace import Workspace

    from custops.monitoring.report import add_to_workspace

    result = run(customers(500, 1), customers(500, 2))
    first = add_to_workspace(tmp_path, result.snapshot, "run-1")
    second = add_to_workspace(tmp_path, result.snapshot, "run-2")
    ws = Workspace.create(str(tmp_path / "workspace"))
    (project,) = ws.search_project("custops")
    assert {str(r) for r in ws.list_runs(project.id)} == {first, second}


def test_priority_segments_are_column_equals_value() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="column=value .* not 'platinum'"):
        MonitoringSettings(priority_segments=("platinum",))


def test_a_feature_that_emptied_counts_as_drifted_and_is_reported() -> None:
    from custops.monitoring.status import Assessment, assess_quality

    reference, current = customers(1500, 1), customers(1500, 2)
    current["revenue_90d"] = np.nan  # e.g. the service stopped receiving it
    result = run(reference, current)
    assert result.drifted_features == ["revenue_90d"] and result.features["revenue_90d"].method.startswith("no values")
    assert result.share_drifted == pytest.approx(1 / len(FEATURES))
    assert result.quality["revenue_90d"]["missing_share"] == 1.0
    assert result.quality["revenue_90d"]["out_of_range_share"] is None  # no values: no share (JSON has no NaN)
    verdict = Assessment()
    assess_quality(result.quality, MonitoringSettings(), verdict)
    assert [r["message"] for r in verdict.reasons] == ["revenue_90d: missing values rose from 0.0% to 100.0%"]
