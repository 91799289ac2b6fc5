"""Monitoring pipeline: reference and current windows in, Evidently report, summary, index and alerts out.

`monitor` is what `custops monitor` runs: the reference is the churn champion's training snapshot
at its validation cutoff (scored by the champions, with training-time metrics from MLflow); the
current window is a newer snapshot's cutoff or the serving layer's prediction log over a period.
`monitor_windows` compares any two windows (notebooks, tests). A run whose status is `drift`
appends an alert recommending a retrain; with `retrain=True` it also runs the training pipeline,
whose quality gate decides what gets promoted.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from custops.errors import DataContractError, DriftDetected, StoreError
from custops.features.store import OfflineStore
from custops.io import write_json
from custops.models.registry import CHAMPION, Registry
from custops.monitoring import drift as D
from custops.monitoring import performance as P
from custops.monitoring import report as R
from custops.monitoring.status import DRIFT, OK, Assessment, assess_data, assess_quality, assess_segments
from custops.monitoring.windows import (
    Window,
    categorical_features,
    label_columns,
    prediction_columns,
    require_columns,
    serving_log_window,
    validate_frame,
)
from custops.pipelines.scoring import (
    SEGMENT_COLUMNS,
    Champion,
    latest_cutoff,
    load_champions,
    predict_rows,
    score_rows,
)
from custops.pipelines.training import PRIMARY_METRIC
from custops.settings import Settings

log = logging.getLogger(__name__)

CLASSIFIERS = ("churn", "propensity")


@dataclass
class MonitorResult:
    """One monitoring run: its status, summary, folder and (on drift) the alert written."""

    status: str
    summary: dict[str, Any]
    run_dir: Path
    paths: dict[str, Path]
    index: Path
    alert: dict[str, Any] | None = None

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT


# ---------------------------------------------------------------- windows


def monitored_features(champions: Mapping[str, Champion]) -> list[str]:
    """Every feature a champion reads, in a stable order (churn's first)."""
    return list(dict.fromkeys(f for champ in champions.values() for f in champ.features))


def champion_reference(registry: Registry, task: str = "churn") -> tuple[str, str]:
    """The snapshot id and validation cutoff the task's champion was measured on at training."""
    version = registry.alias_version(task, CHAMPION)
    if version is None:
        raise StoreError(f"{registry.name(task)} has no champion: run `custops train {task}` first")
    info = registry.version_info(task, version)
    params = registry.client.get_run(info["run_id"]).data.params
    snapshot_id, cutoff = params.get("snapshot_id"), params.get("valid_cutoff")
    if not snapshot_id or not cutoff:
        raise StoreError(
            f"{registry.name(task)} v{version} has no snapshot_id/valid_cutoff in its MLflow run: pass "
            "--reference-snapshot and --reference-cutoff"
        )
    return snapshot_id, cutoff


def training_metrics(settings: Settings, champions: Mapping[str, Champion]) -> dict[str, dict[str, float]]:
    """Each champion's validation metrics at training (from its MLflow run), without the prefix."""
    registry = Registry(settings)
    out = {}
    for task, champ in champions.items():
        metrics = registry.version_info(task, champ.version)["metrics"]
        out[task] = {k.removeprefix("valid_"): v for k, v in metrics.items() if k.startswith("valid_")}
    return out


def snapshot_window(
    settings: Settings,
    champions: Mapping[str, Champion],
    *,
    snapshot_id: str | None = None,
    cutoff: Any | None = None,
    name: str = "current",
    home: Path | None = None,
) -> Window:
    """One cutoff (default: the latest) of an offline snapshot, scored with the champions.

    `home` reads the snapshot from another custops home's offline store (e.g. another environment).
    """
    store_dir = settings.offline_store_dir if home is None else Path(home) / "store" / "offline"
    snapshot = OfflineStore(store_dir).get(snapshot_id)
    source = f"snapshot {snapshot.snapshot_id}"
    cut = pd.Timestamp(cutoff) if cutoff is not None else latest_cutoff(snapshot)
    known = sorted(pd.Timestamp(c) for c in snapshot.manifest["cutoffs"])
    if cut not in known:
        raise DataContractError(
            source,
            "cutoff",
            f"has no rows at {cut.date()}",
            f"choose one of its cutoffs ({known[0].date()} .. {known[-1].date()})",
        )
    features = monitored_features(champions)
    available = set(pq.read_schema(snapshot.features_path).names)
    needed = list(dict.fromkeys(["customer_id", "cutoff", "n_orders", *SEGMENT_COLUMNS, *features]))
    require_columns(source, needed, available)
    labels = [c for c in label_columns(settings).values() if c in available]
    rows = snapshot.read(columns=list(dict.fromkeys([*needed, *labels])), cutoffs=[cut]).reset_index(drop=True)
    if rows.empty:
        raise DataContractError(source, "cutoff", f"has no rows at {cut.date()}", "build the snapshot again")
    frame = _with_scores(rows, champions, settings, labels)
    return Window(name, "snapshot", frame, {"snapshot_id": snapshot.snapshot_id, "cutoff": str(cut.date())})


def reference_window(
    settings: Settings,
    champions: Mapping[str, Champion],
    *,
    snapshot_id: str | None = None,
    cutoff: Any | None = None,
) -> Window:
    """The churn champion's training snapshot at its validation cutoff (or the snapshot/cutoff given)."""
    if snapshot_id is None or cutoff is None:
        champ_snapshot, champ_cutoff = champion_reference(Registry(settings))
        if snapshot_id is None:
            snapshot_id, cutoff = champ_snapshot, cutoff if cutoff is not None else champ_cutoff
    try:
        return snapshot_window(settings, champions, snapshot_id=snapshot_id, cutoff=cutoff, name="reference")
    except StoreError as e:
        raise StoreError(f"reference: {e} (pass --reference-snapshot to compare with another snapshot)") from e


def frame_window(
    frame: pd.DataFrame,
    champions: Mapping[str, Champion],
    settings: Settings,
    *,
    name: str = "current",
    source: str = "frame",
    categorical: Sequence[str] | None = None,
) -> Window:
    """A window from feature rows in a DataFrame (notebooks, tests); scored unless it carries predictions."""
    features = monitored_features(champions)
    where = f"{name} data ({source})"
    if frame is not None and len(frame):
        require_columns(where, features, set(frame.columns))
    cats = categorical if categorical is not None else (categorical_features(frame, features) if len(frame) else [])
    rows = validate_frame(frame, features, cats, where)
    outputs = list(prediction_columns(settings).values())
    if all(c in rows.columns for c in outputs):
        return Window(name, source, rows)
    for col in ("customer_id", "cutoff", *SEGMENT_COLUMNS):
        if col not in rows.columns:
            rows[col] = pd.Series(pd.NA, index=rows.index, dtype="string")
    if "n_orders" not in rows.columns:
        raise DataContractError(
            where, "n_orders", "is missing", "churn and CLV scores need it (buyers have n_orders > 0)"
        )
    labels = [c for c in label_columns(settings).values() if c in rows.columns]
    return Window(name, source, _with_scores(rows, champions, settings, labels))


def log_window(
    settings: Settings,
    champions: Mapping[str, Champion],
    reference: Window,
    path: Path,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Window:
    """Scored requests from the serving layer's prediction log in [since, until)."""
    features = monitored_features(champions)
    return serving_log_window(
        path,
        features=features,
        categorical=categorical_features(reference.frame, features),
        outputs=prediction_columns(settings),
        segment_columns=SEGMENT_COLUMNS,
        since=since,
        until=until,
    )


def _with_scores(
    rows: pd.DataFrame, champions: Mapping[str, Champion], settings: Settings, labels: Sequence[str]
) -> pd.DataFrame:
    # reasons_k=0: monitoring compares outputs, and the reasons are most of the scoring cost
    predictions = predict_rows(rows, dict(champions), reasons_k=0)
    scores = score_rows(rows, dict(champions), settings, predictions=predictions)
    features = monitored_features(champions)
    keep = list(dict.fromkeys(["customer_id", "cutoff", "n_orders", *SEGMENT_COLUMNS, *features]))
    frame = rows[keep].copy()
    for col in prediction_columns(settings).values():
        frame[col] = scores[col].to_numpy()
    for col in labels:
        frame[col] = rows[col].to_numpy()
    return frame


# ---------------------------------------------------------------- the run


def monitor(
    settings: Settings,
    *,
    snapshot_id: str | None = None,
    cutoff: Any | None = None,
    current_home: Path | None = None,
    from_log: bool = False,
    log_path: Path | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    reference_snapshot: str | None = None,
    reference_cutoff: Any | None = None,
    label: str | None = None,
    retrain: bool = False,
    raise_on_drift: bool = True,
) -> MonitorResult:
    """Compare the champions' reference window with a current window; write the run; alert on drift."""
    champions = load_champions(settings)
    reference = reference_window(settings, champions, snapshot_id=reference_snapshot, cutoff=reference_cutoff)
    if from_log:
        from custops.serving.config import ServingSettings

        path = log_path or ServingSettings().predictions_db(settings)
        current = log_window(settings, champions, reference, path, since=since, until=until)
    else:
        current = snapshot_window(settings, champions, snapshot_id=snapshot_id, cutoff=cutoff, home=current_home)
    if label is None:
        label = "log" if from_log else f"{current.meta['snapshot_id']}-{current.meta['cutoff']}"
    result = monitor_windows(
        settings, reference, current, champions, label=label, training=training_metrics(settings, champions)
    )
    if retrain and result.drifted:
        result.summary["retrain"] = _retrain(settings, result)
        write_json(result.summary, result.paths["summary"])
    if raise_on_drift and result.drifted:
        raise DriftDetected(drift_message(result), str(result.paths["summary"]))
    return result


DEMO_DRIFT_MONTHS = 6  # the demo's drift starts this long before the reference cutoff (its churn wave spans it)


def monitor_demo(settings: Settings, *, n_customers: int = 2500) -> list[MonitorResult]:
    """The demo's two runs: a fresh sample of the same world (ok), then that sample after a drift.

    Both current windows are synthetic customers (seed + 1) at the reference cutoff, so the only
    difference between the runs is the drift: prices +30%, store orders moving to the app, a churn
    wave spanning the cutoff and a new acquisition channel (see `custops.data.synthetic`). Their
    labels are observed, so realised performance shows beside the CBPE estimate.
    """
    import shutil

    from custops.data.synthetic import SyntheticConfig, generate
    from custops.pipelines.features import build_features, ingest_raw

    champions = load_champions(settings)
    reference = reference_window(settings, champions)
    cutoff = pd.Timestamp(reference.meta["cutoff"])
    drift_from = (cutoff - pd.DateOffset(months=DEMO_DRIFT_MONTHS)).date()
    training = training_metrics(settings, champions)
    results = []
    for name, drift in (("same-distribution", None), ("drifted", drift_from)):
        home = settings.home / "demo-monitoring" / name
        shutil.rmtree(home, ignore_errors=True)  # the demo's own scratch home: rebuilt each time
        world = settings.model_copy(update={"home": home})
        generate(SyntheticConfig(n_customers=n_customers, seed=settings.seed + 1, drift_from=drift), world.raw_dir)
        ingest_raw(world)
        snap = build_features(world, cutoffs=[cutoff])
        current = snapshot_window(settings, champions, snapshot_id=snap.snapshot_id, home=home)
        current.meta["world"] = "drift from " + str(drift) if drift else "same distribution as training"
        results.append(
            monitor_windows(settings, reference, current, champions, label=f"demo-{name}", training=training)
        )
    return results


def monitor_windows(
    settings: Settings,
    reference: Window,
    current: Window,
    champions: Mapping[str, Champion],
    *,
    label: str = "run",
    training: Mapping[str, Mapping[str, float]] | None = None,
    now: dt.datetime | None = None,
) -> MonitorResult:
    """Run the comparison on two windows, write the run folder and index, and alert on drift."""
    ms = settings.monitoring
    features = monitored_features(champions)
    categorical = categorical_features(reference.frame, features)
    ref = _sample(validate_frame(reference.frame, features, categorical, "reference data"), ms.max_rows, settings.seed)
    cur_source = f"current data ({current.describe().get('snapshot_id') or current.source})"
    cur = _sample(validate_frame(current.frame, features, categorical, cur_source), ms.max_rows, settings.seed)
    outputs = prediction_columns(settings)

    drift = D.evidently_report(
        ref, cur, features=features, categorical=categorical, outputs=list(outputs.values()), settings=ms
    )
    segments = D.segment_drift(ref, cur, features=features, categorical=categorical, settings=ms)
    verdict = Assessment()
    assess_data(drift.share_drifted, drift.n_drifted, len(drift.features), drift.drifted_features, ms, verdict)
    models = {
        task: _model_section(task, champ, ref, cur, outputs[task], drift, training or {}, settings, verdict)
        for task, champ in champions.items()
        if task in outputs
    }
    assess_segments(segments, ms, verdict)
    assess_quality(drift.quality, ms, verdict)

    created = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    root = settings.monitoring_dir
    run_dir = R.new_run_dir(root, created, label)
    summary: dict[str, Any] = {
        "run_id": run_dir.name,
        "label": label,
        "created_at": created.isoformat(timespec="seconds") + "Z",
        "status": verdict.status,
        "reasons": verdict.sorted_reasons(),
        "recommendation": None,
        "reference": reference.describe() | {"rows_compared": len(ref)},
        "current": current.describe() | {"rows_compared": len(cur)},
        "thresholds": ms.model_dump(mode="json"),
        "data_drift": {
            "share_drifted": drift.share_drifted,
            "n_drifted": drift.n_drifted,
            "n_features": len(drift.features),
            "dataset_drift": drift.share_drifted >= ms.drift_share,
            "drifted_features": drift.drifted_features,
            "features": D.as_dicts(drift.features),
        },
        "prediction_drift": D.as_dicts(drift.predictions),
        "models": models,
        "segments": segments,
        "data_quality": drift.quality,
        "retrain": None,
    }
    if verdict.status == DRIFT:
        summary["recommendation"] = (
            "retrain: build a feature snapshot that covers the current window (`custops features build`), then "
            "`custops train all` (or rerun `custops monitor --retrain`); the quality gate decides promotion"
        )
    if ms.workspace:
        summary["evidently_workspace"] = {
            "path": str(root / R.WORKSPACE_DIR),
            "snapshot_id": R.add_to_workspace(root, drift.snapshot, run_dir.name),
        }
    paths = R.write_run(run_dir, summary, drift.snapshot, current.quarantine)
    index = R.write_index(root)
    alert = None
    if verdict.status == DRIFT:
        alert = {
            "at": summary["created_at"],
            "run_id": summary["run_id"],
            "status": verdict.status,
            "reasons": [r["message"] for r in summary["reasons"] if r["status"] == DRIFT],
            "drifted_features": drift.drifted_features,
            "models": {t: m["status"] for t, m in models.items()},
            "recommendation": summary["recommendation"],
            "summary": str(paths["summary"]),
            "report": str(paths["report"]),
        }
        R.append_alert(root, alert)
    log.info("monitoring run %s: %s (%d reasons) -> %s", run_dir.name, verdict.status, len(verdict.reasons), run_dir)
    return MonitorResult(verdict.status, summary, run_dir, paths, index, alert)


def _model_section(
    task: str,
    champ: Champion,
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    output: str,
    drift: D.DriftResult,
    training: Mapping[str, Mapping[str, float]],
    settings: Settings,
    verdict: Assessment,
) -> dict[str, Any]:
    """Prediction drift, training-time vs estimated (CBPE) vs realised performance, and a status."""
    ms = settings.monitoring
    label = label_columns(settings)[task]
    metric = PRIMARY_METRIC[task]
    section: dict[str, Any] = {
        "version": champ.version,
        "output": output,
        "metric": metric,
        "prediction_drift": drift.predictions[output].to_dict() if output in drift.predictions else None,
        "training": {k: D.finite(v) for k, v in dict(training.get(task, {})).items()},
        "estimated": None,
        "realised": {"reference": None, "current": None},
        "status": OK,
    }
    before = len(verdict.reasons)
    pd_ = drift.predictions.get(output)
    if pd_ is not None and pd_.drifted:
        verdict.add(
            DRIFT,
            f"{task} prediction drift",
            f"{output} drifted: {pd_.method} {pd_.score:.3g} (threshold {pd_.threshold:.3g})",
        )
    realised = {}
    for name, frame in (("reference", ref), ("current", cur)):
        if label not in frame.columns:
            continue
        rows = frame[frame[label].notna() & frame[output].notna()]
        if len(rows) < ms.segment_min_rows:
            continue
        y, s = rows[label].to_numpy(float), rows[output].to_numpy(float)
        if task in CLASSIFIERS:
            realised[name] = P.realised_classifier_performance(y, s)
        else:
            realised[name] = P.realised_value_performance(y, s)
        section["realised"][name] = {k: D.finite(v) for k, v in realised[name].items()}
    baseline = section["training"].get(metric)
    if baseline is None and realised.get("reference"):
        baseline = realised["reference"].get(metric)
        section["training"][metric] = baseline
    cur_real = realised.get("current", {}).get(metric)
    if baseline is not None and cur_real is not None and np.isfinite(cur_real):
        drop = baseline - cur_real
        section["realised_drop"] = drop
        if drop > ms.performance_tolerance:
            verdict.add(
                DRIFT,
                f"{task} performance",
                f"{metric} {cur_real:.3f} on the labelled current window vs {baseline:.3f} at training "
                f"(drop {drop:.3f} > tolerance {ms.performance_tolerance})",
            )
    if task in CLASSIFIERS and realised.get("current"):
        # Calibration-in-the-large (binned errors are noisy on a few thousand rows), as a change from
        # the reference: a model a little off at training is not an alarm every run.
        observed, predicted = realised["current"]["positive_rate"], realised["current"]["mean_predicted"]
        ref_gap = 0.0
        if realised.get("reference"):
            ref_gap = realised["reference"]["positive_rate"] - realised["reference"]["mean_predicted"]
        shift = (observed - predicted) - ref_gap
        section["calibration_shift"] = shift
        if abs(shift) > ms.calibration_tolerance:
            verdict.add(
                DRIFT,
                f"{task} calibration",
                f"observed rate {observed:.1%} vs predicted {predicted:.1%} on the labelled current window "
                f"(gap {observed - predicted:+.1%}, {ref_gap:+.1%} on the reference; tolerance "
                f"{ms.calibration_tolerance:.0%}): probabilities, risk bands and CBPE no longer hold",
            )
    if task in CLASSIFIERS:
        est = {
            "reference": P.estimated_classifier_performance(ref[output].to_numpy(float)),
            "current": P.estimated_classifier_performance(cur[output].to_numpy(float)),
        }
        section["estimated"] = {k: {m: D.finite(v) for m, v in e.items()} for k, e in est.items()}
        drop = est["reference"]["roc_auc"] - est["current"]["roc_auc"]
        section["estimated_drop"] = D.finite(drop)
        if np.isfinite(drop) and drop > ms.performance_tolerance:
            verdict.add(
                DRIFT,
                f"{task} estimated performance",
                f"estimated {metric} (CBPE, no labels needed) {est['current']['roc_auc']:.3f} vs "
                f"{est['reference']['roc_auc']:.3f} on the reference (drop {drop:.3f} > {ms.performance_tolerance})",
            )
    if any(r["status"] == DRIFT for r in verdict.reasons[before:]):
        section["status"] = DRIFT
    return section


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n=n, random_state=seed).reset_index(drop=True)


def drift_message(result: MonitorResult) -> str:
    s = result.summary
    reasons = "; ".join(r["message"] for r in s["reasons"] if r["status"] == DRIFT)
    retrain = ""
    if s.get("retrain"):
        promoted = [t for t, r in s["retrain"].get("tasks", {}).items() if r.get("promoted")]
        retrain = f" Retrained on {s['retrain']['snapshot_id']}: promoted {', '.join(promoted) or 'none'}."
    return (
        f"drift detected ({reasons}). Report: {result.paths['page']}.{retrain} "
        f"Alert written to {result.index.parent / R.ALERTS_FILE}."
    )


def _retrain(settings: Settings, result: MonitorResult) -> dict[str, Any]:
    """Run the training pipeline (every task, promotion through the quality gate) on the latest snapshot."""
    from custops.pipelines.training import train_all

    snapshot_id = OfflineStore(settings.offline_store_dir).latest_id()
    log.info("drift detected: retraining on %s", snapshot_id)
    results = train_all(settings, snapshot_id=snapshot_id, promote=True)
    record = {
        "snapshot_id": snapshot_id,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tasks": {
            r.task: {
                "version": r.version,
                "metric": r.primary,
                "value": D.finite(r.metrics.get(r.primary)),
                "gate": r.gate.reason,
                "promoted": r.promoted,
            }
            for r in results
        },
    }
    R.append_alert(settings.monitoring_dir, {"at": record["at"], "run_id": result.summary["run_id"], "retrain": record})
    return record
