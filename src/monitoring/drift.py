"""Data drift, prediction drift and data quality with Evidently 0.7, overall and per customer segment.

`evidently_report` runs one Evidently report (data drift per feature with the test Evidently picks
per column type and size, drift of each model output, missing values, new categories, values out
of the reference range) and reads the numbers back from `snapshot.dict()`. `segment_drift` runs
the same per-column tests inside each segment (value tier, lifecycle stage) through Evidently's
stat-test registry, without rendering a report per segment (rendering is ~90% of a report's cost).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.calculations.stattests.registry import get_stattest
from evidently.legacy.core import ColumnType
from evidently.metrics import MissingValueCount, OutListValueCount, OutRangeValueCount, ValueDrift
from evidently.presets import DataDriftPreset

from custops.settings import MonitoringSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ColumnDrift:
    """One column's drift test: Evidently's method, its score and threshold, and the verdict."""

    column: str
    kind: str  # "num" or "cat"
    method: str
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: finite(v) for k, v in asdict(self).items()}


@dataclass
class DriftResult:
    """What one Evidently report found (the snapshot is kept for its HTML)."""

    snapshot: Any
    features: dict[str, ColumnDrift]
    predictions: dict[str, ColumnDrift]
    share_drifted: float
    n_drifted: int
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def drifted_features(self) -> list[str]:
        """Drifted features, strongest first (by score over threshold; p-values inverted)."""
        hits = [d for d in self.features.values() if d.drifted]
        return [d.column for d in sorted(hits, key=_severity, reverse=True)]


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: Sequence[str],
    categorical: Sequence[str],
    outputs: Sequence[str],
    settings: MonitoringSettings,
) -> DriftResult:
    """Run the Evidently report on the two windows and read its results back."""
    cats = [c for c in features if c in set(categorical)]
    nums = [c for c in features if c not in set(cats)]
    outputs = [c for c in outputs if reference[c].notna().any() and current[c].notna().any()]
    # Evidently cannot test a column without values on one side; such a feature is reported as
    # drifted when it emptied in the current window (the model now sees it as missing for everyone)
    testable = [c for c in features if reference[c].notna().any() and current[c].notna().any()]
    columns = [*features, *outputs]
    definition = DataDefinition(numerical_columns=[*nums, *outputs], categorical_columns=cats)
    ref_ds = Dataset.from_pandas(reference[columns], data_definition=definition)
    cur_ds = Dataset.from_pandas(current[columns], data_definition=definition)
    metrics: list[Any] = [
        DataDriftPreset(
            columns=testable,
            drift_share=settings.drift_share,
            num_method=settings.num_method,
            cat_method=settings.cat_method,
            num_threshold=settings.num_threshold,
            cat_threshold=settings.cat_threshold,
        ),
        *(
            ValueDrift(column=c, method=settings.prediction_method, threshold=settings.prediction_threshold)
            for c in outputs
        ),
        *(MissingValueCount(column=c) for c in features),
    ]
    categories = {c: sorted(str(v) for v in reference[c].dropna().unique()) for c in cats}
    metrics += [OutListValueCount(column=c, values=categories[c]) for c in cats if categories[c]]
    ranges = {c: (float(reference[c].min()), float(reference[c].max())) for c in nums if reference[c].notna().any()}
    metrics += [OutRangeValueCount(column=c, left=lo, right=hi) for c, (lo, hi) in ranges.items()]
    with np.errstate(divide="ignore", invalid="ignore"):  # shares of columns without values are NaN
        snapshot = Report(metrics, include_tests=True).run(cur_ds, ref_ds)
    result = snapshot.dict()

    verdicts = {
        t["metric_config"]["params"]["column"]: t["status"] == "FAIL"
        for t in result["tests"]
        if t["metric_config"]["params"].get("type", "").endswith(":ValueDrift")
    }
    drifts: dict[str, ColumnDrift] = {}
    share, count = 0.0, 0
    quality: dict[str, dict[str, Any]] = {c: {} for c in features}
    for m in result["metrics"]:
        kind = m["config"]["type"].rsplit(":", 1)[-1]
        column = m["config"].get("column")
        if kind == "DriftedColumnsCount":
            share, count = float(m["value"]["share"]), int(m["value"]["count"])
        elif kind == "ValueDrift":
            drifts[column] = ColumnDrift(
                column,
                "cat" if column in cats else "num",
                str(m["config"]["method"]),
                float(m["value"]),
                float(m["config"]["threshold"]),
                bool(verdicts.get(column, False)),
            )
        elif kind == "MissingValueCount":
            quality[column]["missing_share"] = finite(float(m["value"]["share"]))
        elif kind == "OutListValueCount":
            quality[column]["new_category_share"] = finite(float(m["value"]["share"]))
        elif kind == "OutRangeValueCount":
            quality[column]["out_of_range_share"] = finite(float(m["value"]["share"]))
    for c in features:
        if c not in drifts:
            emptied = bool(reference[c].notna().any() and current[c].isna().all())
            drifts[c] = ColumnDrift(
                c, "cat" if c in cats else "num", "no values in one window", math.nan, math.nan, emptied
            )
    if len(testable) < len(features):
        count = sum(drifts[c].drifted for c in features)
        share = count / len(features)
    for c in features:
        quality[c]["reference_missing_share"] = float(reference[c].isna().mean())
        if c in categories:
            seen = set(categories[c])
            quality[c]["new_categories"] = sorted({str(v) for v in current[c].dropna().unique()} - seen)
        if c in ranges:
            quality[c]["reference_range"] = list(ranges[c])
    return DriftResult(
        snapshot=snapshot,
        features={c: drifts[c] for c in features if c in drifts},
        predictions={c: drifts[c] for c in outputs if c in drifts},
        share_drifted=share,
        n_drifted=count,
        quality=quality,
    )


def _prepared(values: pd.Series, kind: str) -> pd.Series:
    values = values.dropna()
    return values.astype(str) if kind == "cat" else values.astype(float)


def pick_stattest(reference: pd.Series, current: pd.Series, kind: str, method: str | None = None) -> Any:
    """The test Evidently uses for this column (by type and size, or `method` when given)."""
    column_type = ColumnType.Categorical if kind == "cat" else ColumnType.Numerical
    return get_stattest(_prepared(reference, kind), _prepared(current, kind), column_type, method)


def column_drift(
    reference: pd.Series, current: pd.Series, kind: str, test: Any, *, threshold: float | None = None
) -> ColumnDrift | None:
    """One column's drift under `test` (an Evidently StatTest); None when either side is empty."""
    ref, cur = _prepared(reference, kind), _prepared(current, kind)
    if ref.empty or cur.empty:
        return None
    column_type = ColumnType.Categorical if kind == "cat" else ColumnType.Numerical
    with np.errstate(divide="ignore", invalid="ignore"):  # categories absent on one side
        res = test(ref, cur, column_type, threshold)
    return ColumnDrift(
        str(reference.name), kind, test.display_name, float(res.drift_score), float(res.actual_threshold), res.drifted
    )


def segment_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: Sequence[str],
    categorical: Sequence[str],
    settings: MonitoringSettings,
) -> list[dict[str, Any]]:
    """Per segment (each value of each segment column): rows, share of drifted features, which ones.

    Inside each segment a feature gets the test Evidently picks for the segment's own size and
    type (a p-value test such as K-S below 1,000 rows, a distance above): a distance measured on a
    few hundred rows is mostly sampling noise, which the p-value tests account for.
    """
    cats = set(categorical)
    kinds = {f: "cat" if f in cats else "num" for f in features}
    methods = {f: settings.cat_method if k == "cat" else settings.num_method for f, k in kinds.items()}
    thresholds = {f: settings.cat_threshold if k == "cat" else settings.num_threshold for f, k in kinds.items()}
    out = []
    for seg_col in settings.segment_columns:
        if seg_col not in reference.columns or seg_col not in current.columns:
            log.warning("segment column %s is not in both windows; skipped", seg_col)
            continue
        values = sorted(
            {str(v) for v in reference[seg_col].dropna().unique()}
            | {str(v) for v in current[seg_col].dropna().unique()}
        )
        for value in values:
            ref = reference[reference[seg_col].astype("string") == value]
            cur = current[current[seg_col].astype("string") == value]
            key = f"{seg_col}={value}"
            entry: dict[str, Any] = {
                "segment": key,
                "column": seg_col,
                "value": value,
                "reference_rows": len(ref),
                "current_rows": len(cur),
                "priority": key in settings.priority_segments,
                "tested": False,
                "share_drifted": None,
                "drifted_features": [],
            }
            if min(len(ref), len(cur)) >= settings.segment_min_rows:
                found = []
                for f, kind in kinds.items():
                    if f == seg_col or ref[f].isna().all() or cur[f].isna().all():
                        continue  # constant inside its own segment, or nothing to compare
                    test = pick_stattest(ref[f], cur[f], kind, methods[f])
                    d = column_drift(ref[f], cur[f], kind, test, threshold=thresholds[f])
                    if d is not None:
                        found.append(d)
                hits = sorted((d for d in found if d.drifted), key=_severity, reverse=True)
                entry |= {
                    "tested": True,
                    "share_drifted": len(hits) / len(found) if found else 0.0,
                    "drifted_features": [d.column for d in hits],
                }
            out.append(entry)
    return out


def _severity(d: ColumnDrift) -> float:
    """How far past its threshold a test is (p-value tests drift when small, distances when large)."""
    if d.method.lower().endswith("p_value") or "p_value" in d.method.lower():
        return d.threshold / max(d.score, 1e-12)
    return d.score / max(d.threshold, 1e-12)


def finite(v: Any) -> Any:
    """None for NaN and infinities (JSON has no NaN), the value otherwise."""
    if isinstance(v, float | np.floating) and not math.isfinite(float(v)):
        return None
    return v


def as_dicts(drifts: Mapping[str, ColumnDrift]) -> dict[str, dict[str, Any]]:
    return {k: v.to_dict() for k, v in drifts.items()}
