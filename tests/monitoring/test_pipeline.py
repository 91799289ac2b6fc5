"""The monitoring pipeline with the trained champions: ok on one distribution, drift and decay detected,
run folders, index and alerts written, bad current data refused with the column named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custops.errors import DataContractError
from custops.monitoring import report as R
from custops.monitoring.windows import Window
from custops.pipelines import monitoring as PM
from custops.settings import Settings
from tests.monitoring.conftest import INJECTED, with_output

pytestmark = pytest.mark.slow


def test_same_distribution_is_ok_and_raises_no_alert(ok_run: PM.MonitorResult, monitoring_out: Path) -> None:
    s = ok_run.summary
    assert ok_run.status == "ok", s["reasons"]
    assert s["data_drift"]["share_drifted"] < s["thresholds"]["warning_share"]
    assert not any(m["prediction_drift"]["drifted"] for m in s["models"].values())
    assert ok_run.alert is None
    churn = s["models"]["churn"]
    # labels observed on both halves: realised performance close to training, CBPE close to realised
    assert churn["realised"]["current"]["roc_auc"] == pytest.approx(churn["training"]["roc_auc"], abs=0.04)
    assert churn["estimated"]["current"]["roc_auc"] == pytest.approx(churn["realised"]["current"]["roc_auc"], abs=0.04)
    for f in ("report", "summary", "page"):
        assert ok_run.paths[f].exists() and ok_run.paths[f].parent == ok_run.run_dir
    assert ok_run.run_dir.parent.parent == monitoring_out / "runs"  # runs/<date>/<time>-<label>/
    assert json.loads(ok_run.paths["summary"].read_text())["status"] == "ok"


def test_injected_drift_is_detected_named_and_alerted(drift_run: PM.MonitorResult, monitoring_out: Path) -> None:
    s = drift_run.summary
    assert drift_run.status == "drift"
    assert set(INJECTED) <= set(s["data_drift"]["drifted_features"])
    for name in INJECTED:
        assert s["data_drift"]["features"][name]["drifted"]
    assert s["models"]["churn"]["prediction_drift"]["drifted"]  # later purchases: higher churn risk
    assert s["models"]["churn"]["status"] == "drift"
    assert "retrain" in s["recommendation"]
    alerts = R.read_alerts(monitoring_out)
    assert [a["run_id"] for a in alerts if "status" in a] == [s["run_id"]]
    alert = alerts[-1]
    assert set(INJECTED) <= set(alert["drifted_features"]) and alert["models"]["churn"] == "drift"
    assert Path(alert["report"]).exists()


def test_index_lists_every_run_with_its_badge(
    ok_run: PM.MonitorResult, drift_run: PM.MonitorResult, monitoring_out: Path
) -> None:
    html = (monitoring_out / "index.html").read_text()
    for run in (ok_run, drift_run):
        rel = run.run_dir.relative_to(monitoring_out).as_posix()
        assert f'href="{rel}/summary.html"' in html and f'href="{rel}/report.html"' in html
    assert 'class="badge ok">ok<' in html and 'class="badge drift">drift<' in html
    assert html.index(drift_run.summary["created_at"]) < html.index(ok_run.summary["created_at"])  # newest first
    page = drift_run.paths["page"].read_text()
    assert "revenue_365d" in page and "../../../index.html" in page


def test_evidently_report_is_self_contained(drift_run: PM.MonitorResult) -> None:
    html = drift_run.paths["report"].read_text()
    assert "<script" in html and len(html) > 1_000_000  # Evidently's JS bundle inlined
    assert not __import__("re").search(r"<script[^>]+src=[\"']https?://", html)


def test_performance_drop_on_labelled_data_is_detected(
    mon_settings: Settings, champions: dict, halves: tuple[Window, Window], tmp_path: Path
) -> None:
    ref, cur = halves
    frame = cur.frame.copy()
    label = PM.label_columns(mon_settings)["churn"]
    observed = frame[label].notna()
    frame.loc[observed, label] = np.random.default_rng(1).permutation(frame.loc[observed, label].to_numpy())
    result = PM.monitor_windows(
        with_output(mon_settings, tmp_path), ref, Window("current", "frame", frame), champions, label="labels"
    )
    churn = result.summary["models"]["churn"]
    assert result.status == "drift" and churn["status"] == "drift"
    assert churn["realised"]["current"]["roc_auc"] < 0.6
    assert churn["realised_drop"] > mon_settings.monitoring.performance_tolerance
    # the features did not move: CBPE (which cannot see labels) still estimates the training-time AUC
    assert churn["estimated"]["current"]["roc_auc"] == pytest.approx(churn["training"]["roc_auc"], abs=0.04)
    assert any(r["area"] == "churn performance" for r in result.summary["reasons"])
    assert result.summary["models"]["propensity"]["status"] == "ok"


def test_bad_current_data_is_refused_with_the_column_named(
    mon_settings: Settings, champions: dict, halves: tuple[Window, Window]
) -> None:
    ref, cur = halves
    with pytest.raises(DataContractError, match="has no rows"):
        PM.frame_window(cur.frame.iloc[:0], champions, mon_settings)
    with pytest.raises(DataContractError, match="column 'recency_days': is missing"):
        PM.frame_window(cur.frame.drop(columns=["recency_days"]), champions, mon_settings)
    broken = cur.frame.astype({"revenue_90d": object})
    broken.loc[3, "revenue_90d"] = "12,50 EUR"
    with pytest.raises(DataContractError, match=r"column 'revenue_90d': has 1 non-numeric values \(e.g. '12,50 EUR'\)"):
        PM.monitor_windows(mon_settings, ref, Window("current", "frame", broken), champions)
    with pytest.raises(DataContractError, match="has no rows"):
        PM.monitor_windows(mon_settings, ref, Window("current", "frame", cur.frame.iloc[:0]), champions)
    with pytest.raises(DataContractError, match="column 'cutoff': has no rows at 1999-01-01"):
        PM.snapshot_window(mon_settings, champions, cutoff="1999-01-01")


def test_serving_log_window_reads_inputs_and_quarantines_bad_rows(
    mon_settings: Settings, champions: dict, halves: tuple[Window, Window], tmp_path: Path
) -> None:
    from custops.serving.prediction_log import PredictionLog, PredictionRecord

    ref, cur = halves
    features = PM.monitored_features(champions)
    outputs = PM.prediction_columns(mon_settings)
    rows = cur.frame.sample(n=600, random_state=0)  # customers in any order (the frame is in signup order)
    at = pd.Timestamp("2026-02-01T10:00:00Z").to_pydatetime()
    records = []
    for i, r in enumerate(rows.itertuples(index=False)):
        r = r._asdict()
        inputs = {f: (None if pd.isna(r[f]) else r[f]) for f in features}
        if i == 0:
            inputs = None  # not logged: quarantined
        if i == 1:
            inputs["recency_days"] = "yesterday"  # text where a number belongs: quarantined
        prediction = {
            "churn_probability": r[outputs["churn"]],
            "clv": r[outputs["clv"]],
            "purchase_propensity": r[outputs["propensity"]],
            "value_tier": r["value_tier"],
            "lifecycle_stage": r["lifecycle_stage"],
        }
        records.append(PredictionRecord("req", "score", r["customer_id"], "ok", None, {}, prediction, inputs, at))
    records.append(PredictionRecord("req", "recommend", "C1", "ok", None, {}, {"items": []}, {"k": 5}, at))
    late = pd.Timestamp("2026-03-01T00:00:00Z").to_pydatetime()
    same = records[5]
    records.append(PredictionRecord("req", "score", "C2", "ok", None, {}, same.prediction, same.inputs, late))
    log = PredictionLog(tmp_path / "predictions.sqlite").start()
    log.append(records)
    log.close()

    window = PM.log_window(
        mon_settings, champions, ref, tmp_path / "predictions.sqlite", until=pd.Timestamp("2026-02-15").to_pydatetime()
    )
    assert window.rows == 598 and len(window.quarantine) == 2
    assert sorted(window.quarantine["_reason"]) == ["inputs: not logged", "recency_days: not a number"]
    assert window.describe()["quarantined"] == 2
    np.testing.assert_allclose(window.frame[outputs["churn"]].to_numpy(), rows[outputs["churn"]].iloc[2:].to_numpy())
    assert window.frame["revenue_90d"].dtype == float and window.frame["value_tier"].notna().all()
    with pytest.raises(DataContractError, match="no scored requests"):
        PM.log_window(mon_settings, champions, ref, tmp_path / "predictions.sqlite", since=late + pd.Timedelta("1s"))

    result = PM.monitor(
        with_output(mon_settings, tmp_path / "out"),
        from_log=True,
        log_path=tmp_path / "predictions.sqlite",
        until=pd.Timestamp("2026-02-15").to_pydatetime(),
    )
    assert result.status == "ok", result.summary["reasons"]
    assert result.summary["current"]["quarantined"] == 2 and result.paths["quarantine"].exists()
    assert pd.read_parquet(result.paths["quarantine"])["_reason"].tolist() == [
        "inputs: not logged",
        "recency_days: not a number",
    ]
