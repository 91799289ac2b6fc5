"""The two sides of a monitoring comparison: a reference window and a current window.

A window is one frame with a row per customer: the features the champions read, the segment
columns, each model's output (churn probability, CLV, propensity) and, where the label window is
already observed, the labels. The reference is the champion's training snapshot at its validation
cutoff (what training-time metrics were measured on); the current window is a newer snapshot's
cutoff or the scoring requests the serving layer logged over a period.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from custops.errors import DataContractError, StoreError
from custops.models.datasets import task_specs
from custops.models.tabular import CATEGORICAL_DTYPES
from custops.settings import Settings

log = logging.getLogger(__name__)

SCORED_ENDPOINTS = ("score", "score_features")


@dataclass
class Window:
    """Rows to compare: features, segments, model outputs and (where observed) labels."""

    name: str
    source: str  # "snapshot", "serving_log" or "frame"
    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    quarantine: pd.DataFrame | None = None  # rows left out, with a `_reason`

    @property
    def rows(self) -> int:
        return len(self.frame)

    def describe(self) -> dict[str, Any]:
        quarantined = 0 if self.quarantine is None else len(self.quarantine)
        return {"source": self.source, "rows": self.rows, "quarantined": quarantined, **self.meta}


def prediction_columns(settings: Settings) -> dict[str, str]:
    """The output column of each task, as batch scoring names it."""
    fs = settings.features
    return {
        "churn": "churn_probability",
        "clv": f"clv_{fs.value_horizon_days}d",
        "propensity": f"purchase_propensity_{fs.propensity_horizon_days}d",
    }


def label_columns(settings: Settings) -> dict[str, str]:
    """The label each task is evaluated on."""
    return {task: spec.label for task, spec in task_specs(settings.features).items()}


def categorical_features(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """Features stored as text/category/bool: drift-tested as categories, the rest as numbers."""
    return [
        c
        for c in features
        if str(frame[c].dtype) in CATEGORICAL_DTYPES or isinstance(frame[c].dtype, pd.CategoricalDtype)
    ]


def validate_frame(
    frame: pd.DataFrame | None, features: Sequence[str], categorical: Sequence[str], source: str
) -> pd.DataFrame:
    """A copy with numeric features as floats; no rows, a missing feature or text in a number column
    is a DataContractError naming the column and the fix."""
    if frame is None or len(frame) == 0:
        raise DataContractError(source, None, "has no rows", "monitor a window with at least one scored row")
    require_columns(source, features, set(frame.columns))
    rows = frame.reset_index(drop=True).copy()
    cats = set(categorical)
    for col in features:
        if col in cats:
            rows[col] = rows[col].astype("object").where(rows[col].notna(), None)
        else:
            rows[col] = numeric_column(rows[col], source, col)
    return rows


def require_columns(source: str, needed: Sequence[str], available: set[str]) -> None:
    """Every needed column is present, else a DataContractError naming the first ones missing."""
    lacking = [c for c in needed if c not in available]
    if lacking:
        more = f" (and {len(lacking) - 1} more: {', '.join(lacking[1:6])})" if len(lacking) > 1 else ""
        raise DataContractError(
            source,
            lacking[0],
            f"is missing{more}; the champion models read it",
            "compare data built with the current feature definitions, or retrain",
        )


def numeric_column(values: pd.Series, source: str, column: str) -> pd.Series:
    """Numbers as float; a value that is not a number is a DataContractError naming the column."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    converted = pd.to_numeric(values, errors="coerce")
    broken = converted.isna() & values.notna()
    if broken.any():
        example = values[broken].iloc[0]
        raise DataContractError(
            source, column, f"has {int(broken.sum()):,} non-numeric values (e.g. {example!r})", "send numbers"
        )
    return converted.astype(float)


def serving_log_window(
    path: Path,
    *,
    features: Sequence[str],
    categorical: Sequence[str],
    outputs: Mapping[str, str],
    segment_columns: Sequence[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Window:
    """Scored requests the serving layer logged in [since, until): the inputs and what was answered.

    Rows whose logged inputs or prediction cannot be read are quarantined with a reason (and
    counted in the run summary), never dropped silently.
    """
    from custops.serving.prediction_log import read_predictions

    path = Path(path)
    if not path.exists():
        raise StoreError(
            f"prediction log {path} does not exist: serve some requests (`custops serve`) or pass --snapshot"
        )
    logged = read_predictions(path)
    source = f"prediction log {path}"
    logged["logged_at"] = pd.to_datetime(logged["logged_at"], utc=True, format="ISO8601").dt.tz_convert(None)
    scored = logged[logged["endpoint"].isin(SCORED_ENDPOINTS) & (logged["status"] == "ok")]
    in_window = pd.Series(True, index=scored.index)
    if since is not None:
        in_window &= scored["logged_at"] >= _naive_utc(since)
    if until is not None:
        in_window &= scored["logged_at"] < _naive_utc(until)
    scored = scored[in_window]
    if scored.empty:
        span = (
            f"it holds {len(logged):,} records from {logged['logged_at'].min()} to {logged['logged_at'].max()}"
            if len(logged)
            else "it is empty"
        )
        raise DataContractError(
            source,
            "logged_at",
            f"no scored requests (status ok) between {since or 'the start'} and {until or 'now'}; {span}",
            "widen --since/--until or serve requests first",
        )
    records: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row in scored.itertuples(index=False):
        inputs, problem = _json_object(row.inputs, "inputs")
        prediction, problem2 = _json_object(row.prediction, "prediction")
        problem = problem or problem2
        if problem:
            bad.append({"id": row.id, "logged_at": row.logged_at, "customer_id": row.customer_id, "_reason": problem})
            continue
        rec = {"customer_id": row.customer_id, "logged_at": row.logged_at, **inputs}
        rec[outputs["churn"]] = prediction.get("churn_probability")
        rec[outputs["clv"]] = prediction.get("clv")
        rec[outputs["propensity"]] = prediction.get("purchase_propensity")
        for col in segment_columns:
            rec.setdefault(col, prediction.get(col))
        records.append(rec)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    for col in [*features, *outputs.values()]:
        if col not in frame.columns:
            frame[col] = np.nan
    quarantine_rows = pd.DataFrame(bad)
    if not frame.empty:
        frame, more_bad = _quarantine_non_numeric(frame, [*features, *outputs.values()], set(categorical))
        quarantine_rows = pd.concat([quarantine_rows, more_bad], ignore_index=True)
    if frame.empty:
        reasons = quarantine_rows["_reason"].value_counts().head(3).to_dict() if len(quarantine_rows) else {}
        raise DataContractError(
            source,
            "inputs",
            f"none of the {len(scored):,} scored requests in the window has readable inputs ({reasons})",
            "check that the serving layer logs the input features of every scored row",
        )
    if len(quarantine_rows):
        log.warning("%d logged predictions quarantined: %s", len(quarantine_rows), quarantine_rows["_reason"].iloc[0])
    meta = {
        "path": str(path),
        "since": str(since) if since else None,
        "until": str(until) if until else None,
        "first_logged_at": str(frame["logged_at"].min()),
        "last_logged_at": str(frame["logged_at"].max()),
    }
    return Window("current", "serving_log", frame, meta, quarantine_rows if len(quarantine_rows) else None)


def _quarantine_non_numeric(
    frame: pd.DataFrame, columns: Sequence[str], categorical: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coerce numeric features; rows holding text where a number belongs are quarantined with the column."""
    reasons = pd.Series("", index=frame.index)
    for col in columns:
        if col in categorical:
            frame[col] = frame[col].astype("object").where(frame[col].notna(), None)
            continue
        converted = pd.to_numeric(frame[col], errors="coerce")
        broken = converted.isna() & frame[col].notna()
        reasons[broken & (reasons == "")] = f"{col}: not a number"
        frame[col] = converted.astype(float)
    bad = reasons != ""
    quarantined = frame.loc[bad, ["customer_id", "logged_at"]].assign(_reason=reasons[bad])
    return frame[~bad].reset_index(drop=True), quarantined


def _json_object(text: Any, what: str) -> tuple[dict[str, Any], str | None]:
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return {}, f"{what}: not logged"
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}, f"{what}: not valid JSON"
    if not isinstance(value, dict):
        return {}, f"{what}: not a JSON object"
    return value, None


def _naive_utc(ts: dt.datetime) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t
