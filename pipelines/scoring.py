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
from custops.models.datasets import TASKS
from custops.models.registry import CHAMPION, Registry
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
        """The columns the model declares it reads (empty for models that declare none)."""
        return [str(c) for c in getattr(self.model, "feature_names_in_", [])]


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


def scoring_rows(snapshot: Snapshot, champions: dict[str, Champion]) -> pd.DataFrame:
    """Every column of the snapshot's latest cutoff, after checking it has what the champions read."""
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
    return snapshot.read(cutoffs=[latest_cutoff(snapshot)]).reset_index(drop=True)


def score_rows(rows: pd.DataFrame, champions: dict[str, Champion], settings: Settings) -> pd.DataFrame:
    """Scores for feature rows (one per customer): probabilities, value, risk band, reasons, segments."""
    fs = settings.features
    churn, clv, propensity = champions["churn"], champions["clv"], champions["propensity"]
    buyer = rows["n_orders"].fillna(0).to_numpy() > 0
    n = len(rows)

    churn_p, value = np.full(n, np.nan), np.full(n, np.nan)
    band, reasons = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    if buyer.any():
        buyers = rows[buyer]
        churn_p[buyer] = churn.model.predict_proba(buyers)[:, 1]
        band[buyer] = churn.model.risk_band(churn_p[buyer])
        reasons[buyer] = [_reason_text(r) for r in churn.model.reasons(buyers, k=3)]
        value[buyer] = clv.model.predict(buyers)
    buy_p = propensity.model.predict_proba(rows)[:, 1] if n else np.empty(0)

    return pd.DataFrame(
        {
            "customer_id": rows["customer_id"].astype("string"),
            "status": pd.Series(STATUS_OK, index=rows.index, dtype="string"),
            "cutoff": rows["cutoff"],
            "churn_probability": churn_p,
            "risk_band": pd.Series(band, index=rows.index, dtype="string"),
            f"clv_{fs.value_horizon_days}d": value,
            f"purchase_propensity_{fs.propensity_horizon_days}d": buy_p,
            **{c: rows[c].astype("string") for c in SEGMENT_COLUMNS},
            "churn_top_reasons": pd.Series(reasons, index=rows.index, dtype="string"),
        }
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


def _reason_text(reasons: Sequence[Any]) -> str | None:
    """`feature = value; ...` for the features raising the churn score most."""
    return "; ".join(f"{r.feature} = {r.value}" for r in reasons) or None
