"""Batch scoring: every customer (or a list) at a snapshot's latest cutoff with each task's champion.

Churn and CLV models learn from buyers only, so prospects (no order before the cutoff) get NaN
there rather than an extrapolated number; purchase propensity covers everyone. Unknown ids come
back with status `not_found` instead of failing the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from custops.errors import ConfigError, StoreError
from custops.features.store import OfflineStore, Snapshot
from custops.io import write_csv, write_parquet
from custops.models.btyd import BTYD_COLUMNS, BTYDModel
from custops.models.datasets import TASKS
from custops.models.registry import CHAMPION, Registry
from custops.models.tabular import Reason
from custops.settings import Settings

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("rfm_segment", "value_tier", "lifecycle_stage")
STATUS_OK, STATUS_NOT_FOUND = "ok", "not_found"


@dataclass(frozen=True)
class Champion:
    """A task's champion model and its registry version."""

    task: str
    version: str
    model: Any

    @property
    def features(self) -> list[str]:
        """The columns the model reads (BTYD: its history columns; empty for models that declare none)."""
        names = getattr(self.model, "feature_names_in_", None)
        if names is None and isinstance(self.model, BTYDModel):
            return list(BTYD_COLUMNS)
        return [str(c) for c in names if c is not None] if names is not None else []


@dataclass(frozen=True)
class RowScores:
    """Predictions for feature rows, aligned with them by position (NaN/None where a model does not apply)."""

    churn_probability: np.ndarray
    risk_band: np.ndarray
    clv: np.ndarray
    purchase_propensity: np.ndarray
    propensity_by_category: dict[str, np.ndarray]
    churn_reasons: list[list[Reason] | None]

    def __len__(self) -> int:
        return len(self.purchase_propensity)


def load_champions(settings: Settings, tasks: Sequence[str] = TASKS) -> dict[str, Champion]:
    """The `champion` of every task; a task without one is a StoreError naming it and the fix."""
    registry = Registry(settings)
    versions = {task: registry.alias_version(task, CHAMPION) for task in tasks}
    missing = [task for task, v in versions.items() if v is None]
    if missing:
        which = missing[0] if len(missing) == 1 else "all"
        raise StoreError(
            f"no champion model for {', '.join(missing)}: run `custops train {which}` "
            "(or promote a challenger with `custops promote TASK --force`)"
        )
    return {
        task: Champion(task, str(v), registry.load(task, CHAMPION)) for task, v in versions.items() if v is not None
    }


def check_snapshot(snapshot: Snapshot, champions: dict[str, Champion]) -> None:
    """The snapshot has every column the champions and the score table read; else a StoreError naming them."""
    available = set(pq.read_schema(snapshot.features_path).names)
    for champ in champions.values():
        lacking = [c for c in champ.features if c not in available]
        if lacking:
            raise StoreError(
                f"snapshot {snapshot.snapshot_id} lacks {len(lacking)} feature(s) the {champ.task} champion "
                f"v{champ.version} reads ({', '.join(lacking[:5])}): score another snapshot (--snapshot) "
                f"or retrain on this one (`custops train {champ.task}`)"
            )
    lacking = [c for c in ("customer_id", "cutoff", "n_orders", *SEGMENT_COLUMNS) if c not in available]
    if lacking:
        raise StoreError(
            f"snapshot {snapshot.snapshot_id} lacks columns {lacking}: rebuild it (`custops features build`)"
        )


def scoring_rows(snapshot: Snapshot, champions: dict[str, Champion]) -> pd.DataFrame:
    """Every column of the snapshot's latest cutoff, after checking it has what the champions read."""
    check_snapshot(snapshot, champions)
    return snapshot.read(cutoffs=[latest_cutoff(snapshot)]).reset_index(drop=True)


def model_inputs(champions: dict[str, Champion]) -> list[str]:
    """Every column the champions (and `predict_rows`) read, in first-use order: what a prediction depends on."""
    columns = ["n_orders"]
    for champ in champions.values():
        columns += [c for c in champ.features if c not in columns]
    return columns


def category_name(label: str) -> str:
    """`label_purchase_30d_cat_books` -> `books` (the category a per-category propensity model predicts)."""
    return label.rsplit("_cat_", 1)[-1]


class _EncodedRows:
    """The rows encoded once per distinct encoder: the champions (and the category models) usually share one."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows
        self._done: list[tuple[Any, np.ndarray]] = []

    def __call__(self, model: Any) -> pd.DataFrame | np.ndarray:
        encoder = getattr(model, "encoder_", None)
        if encoder is None:  # BTYD reads its history columns from the frame
            return self.rows
        for seen, matrix in self._done:
            if seen is encoder or seen == encoder:
                return matrix
        matrix = encoder.transform(self.rows)
        self._done.append((encoder, matrix))
        return matrix


def _orders(rows: pd.DataFrame) -> np.ndarray:
    """`n_orders` as floats (NaN where missing), cheaply for the service's object frames."""
    column = rows["n_orders"]
    try:
        return np.asarray(column.to_numpy(), dtype=np.float64)  # None -> NaN, no per-cell isna (~50 us a row)
    except (TypeError, ValueError):  # pd.NA (nullable dtypes) or numeric text
        return pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)


def predict_rows(
    rows: pd.DataFrame,
    champions: dict[str, Champion],
    *,
    reasons_k: int = 3,
    descriptions: dict[str, str] | None = None,
) -> RowScores:
    """Every champion's prediction for feature rows (one per customer), encoding the rows once.

    Churn and CLV apply to buyers (`n_orders` > 0) only. `reasons_k=0` skips the churn reasons, the
    costliest part (LightGBM pred_contrib, ~2 ms a customer for a 400-tree model).
    """
    churn, clv, propensity = champions["churn"].model, champions["clv"].model, champions["propensity"].model
    n = len(rows)
    buyer = _orders(rows) > 0 if n else np.zeros(0, bool)
    encoded = _EncodedRows(rows)

    churn_p, value = np.full(n, np.nan), np.full(n, np.nan)
    band = np.full(n, None, dtype=object)
    reasons: list[list[Reason] | None] = [None] * n
    if buyer.any():
        everyone = buyer.all()
        Xc = encoded(churn)
        Xc = Xc if everyone else Xc[buyer]
        churn_p[buyer] = churn.predict_proba(Xc)[:, 1]
        band[buyer] = churn.risk_band(churn_p[buyer])
        if reasons_k > 0:
            found = churn.reasons(Xc, k=reasons_k, descriptions=descriptions)
            for i, r in zip(np.flatnonzero(buyer), found, strict=True):
                reasons[i] = r
        Xv = encoded(clv)
        value[buyer] = clv.predict(Xv if everyone else Xv[buyer])
    Xp = encoded(propensity) if n else None
    buy_p = propensity.predict_proba(Xp)[:, 1] if n else np.empty(0)
    by_category: dict[str, np.ndarray] = {}
    for label, model in getattr(propensity, "category_models_", {}).items():
        by_category[category_name(label)] = model.predict_proba(encoded(model))[:, 1] if n else np.empty(0)
    return RowScores(churn_p, band, value, buy_p, by_category, reasons)


def score_rows(
    rows: pd.DataFrame,
    champions: dict[str, Champion],
    settings: Settings,
    *,
    predictions: RowScores | None = None,
) -> pd.DataFrame:
    """Scores for feature rows (one per customer): probabilities, value, risk band, reasons, segments.

    Per-category purchase propensity comes as `purchase_propensity_<H>d_cat_<category>` columns;
    churn reasons as readable text (`feature = value; ...`). Pass `predictions` to reuse `predict_rows`.
    """
    fs = settings.features
    p = predictions if predictions is not None else predict_rows(rows, champions)
    prop = f"purchase_propensity_{fs.propensity_horizon_days}d"
    return pd.DataFrame(
        {
            "customer_id": rows["customer_id"].astype("string"),
            "status": pd.Series(STATUS_OK, index=rows.index, dtype="string"),
            "cutoff": rows["cutoff"],
            "churn_probability": p.churn_probability,
            "risk_band": pd.Series(p.risk_band, index=rows.index, dtype="string"),
            f"clv_{fs.value_horizon_days}d": p.clv,
            prop: p.purchase_propensity,
            **{f"{prop}_cat_{c}": v for c, v in p.propensity_by_category.items()},
            **{c: rows[c].astype("string") for c in SEGMENT_COLUMNS},
            "churn_top_reasons": pd.Series(
                [None if r is None else reason_text(r) for r in p.churn_reasons], index=rows.index, dtype="string"
            ),
        },
        index=rows.index,
    )


def score(
    settings: Settings, customer_ids: Sequence[str] | None = None, snapshot_id: str | None = None
) -> pd.DataFrame:
    """Score all customers (or `customer_ids`, in that order) at the snapshot's latest cutoff."""
    snapshot = OfflineStore(settings.offline_store_dir).get(snapshot_id)
    champions = load_champions(settings)
    rows = scoring_rows(snapshot, champions)
    if customer_ids is not None:
        wanted = list(dict.fromkeys(str(c).strip() for c in customer_ids if str(c).strip()))
        rows = rows[rows["customer_id"].isin(wanted)].reset_index(drop=True)
    scores = score_rows(rows, champions, settings)
    if customer_ids is not None:
        order = pd.Index(wanted, dtype="string", name="customer_id")
        scores = scores.set_index("customer_id").reindex(order).reset_index()
        scores["status"] = scores["status"].fillna(STATUS_NOT_FOUND)
        scores["cutoff"] = scores["cutoff"].fillna(latest_cutoff(snapshot))
    for task, champ in champions.items():
        scores[f"{task}_model_version"] = pd.Series(champ.version, index=scores.index, dtype="string")
    scores["snapshot_id"] = pd.Series(snapshot.snapshot_id, index=scores.index, dtype="string")
    log.info(
        "scored %d customers (%d not found) from %s with %s",
        int((scores["status"] == STATUS_OK).sum()),
        int((scores["status"] == STATUS_NOT_FOUND).sum()),
        snapshot.snapshot_id,
        ", ".join(f"{t} v{c.version}" for t, c in champions.items()),
    )
    return scores


def latest_cutoff(snapshot: Snapshot) -> pd.Timestamp:
    return max(pd.Timestamp(c) for c in snapshot.manifest["cutoffs"])


def default_scores_path(settings: Settings, snapshot_id: str) -> Path:
    return settings.scores_dir / f"scores-{snapshot_id}.parquet"


def scores_format(path: Path | str) -> str:
    """'parquet' or 'csv' from the file suffix; anything else is a ConfigError naming the path."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ConfigError(f"output {path}: unsupported suffix {suffix or '(none)'!r} (use .parquet or .csv)")


def write_scores(df: pd.DataFrame, path: Path | str) -> Path:
    """Write scores atomically as Parquet or CSV, chosen by the file suffix."""
    path = Path(path)
    return write_parquet(df, path) if scores_format(path) == "parquet" else write_csv(df, path)


def reason_text(reasons: Sequence[Reason]) -> str | None:
    """`feature = value; ...` for the features raising the churn score most."""
    return "; ".join(f"{r.feature} = {r.value}" for r in reasons) or None
