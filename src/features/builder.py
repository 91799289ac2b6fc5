"""Build a feature snapshot from the validated layer: read, compile, execute, record lineage."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ibis
import pandas as pd

import custops
from custops.errors import ConfigError, StoreError
from custops.features.definitions import FeatureRegistry, build_registry, feature_services
from custops.features.engine import build_expression, default_cutoffs, normalize_cutoffs, top_categories
from custops.features.store import OfflineStore, Snapshot
from custops.io import file_sha256
from custops.settings import FeatureSettings

log = logging.getLogger(__name__)

REQUIRED_TABLES = ("transactions", "customers")
OPTIONAL_TABLES = ("interactions",)


def connect(engine: str = "duckdb", *, threads: int | None = None, memory_limit: str | None = None) -> Any:
    """An Ibis backend for the named engine (DuckDB in-process by default)."""
    if engine != "duckdb":
        raise ConfigError(f"engine {engine!r} is not available here (supported: duckdb)")
    con = ibis.duckdb.connect()
    if threads:
        con.raw_sql(f"SET threads = {int(threads)}")
    if memory_limit:
        con.raw_sql(f"SET memory_limit = '{memory_limit}'")
    return con


def validated_files(validated_dir: Path) -> dict[str, Path]:
    """Paths of the validated tables that exist; errors if a required one is missing."""
    files = {t: Path(validated_dir) / f"{t}.parquet" for t in (*REQUIRED_TABLES, *OPTIONAL_TABLES)}
    missing = [t for t in REQUIRED_TABLES if not files[t].exists()]
    if missing:
        raise StoreError(f"validated table(s) {missing} not found in {validated_dir}: run `custops data ingest` first")
    return {t: p for t, p in files.items() if p.exists()}


def git_commit() -> str | None:
    """The code's git commit, when running from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(custops.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def build_snapshot(
    validated_dir: Path,
    store: OfflineStore,
    fs: FeatureSettings,
    *,
    cutoffs: Sequence[Any] | None = None,
    engine: str = "duckdb",
    con: Any = None,
) -> Snapshot:
    """Compute features and labels at each cutoff and commit them as a new offline snapshot."""
    files = validated_files(validated_dir)
    con = con or connect(engine)
    tables = {name: con.read_parquet(str(path), table_name=f"src_{name}") for name, path in files.items()}

    tx = tables["transactions"]
    bounds = tx.aggregate(lo=tx.timestamp.min(), hi=tx.timestamp.max(), n=tx.count()).to_pandas().iloc[0]
    if bounds["n"] == 0:
        raise StoreError(f"{files['transactions']} has no valid rows: nothing to build features from")
    data_end = pd.Timestamp(bounds["hi"])
    if "interactions" in tables:
        ix = tables["interactions"]
        ix_end = ix.timestamp.max().to_pandas()
        if ix_end is not None and not pd.isna(ix_end):
            data_end = max(data_end, pd.Timestamp(ix_end))
    observed_until = data_end.normalize() + pd.Timedelta(days=1)
    cuts = normalize_cutoffs(cutoffs) if cutoffs else default_cutoffs(data_end, fs.n_cutoffs, fs.cutoff_every_months)

    categories = top_categories(tx, fs.top_categories)
    registry = build_registry(fs, categories)
    # No global ORDER BY: sorting millions of wide rows costs more than the build; readers sort.
    expr = build_expression(tables, cuts, registry, observed_until=observed_until)

    sources = {name: {"path": str(p), "sha256": file_sha256(p)} for name, p in files.items()}
    fingerprint = _fingerprint(sources, cuts, fs, categories)
    manifest = _manifest(registry, cuts, fs, sources, engine, data_end, observed_until, fingerprint)
    sid = store.new_snapshot_id(fingerprint)
    log.info("building %s: %d cutoffs, %d features, engine %s", sid, len(cuts), len(registry.feature_names), engine)

    def write(path: Path) -> dict[str, Any]:
        con.to_parquet(expr, str(path))
        written = con.read_parquet(str(path))
        counts = (
            written.group_by("cutoff")
            .aggregate(rows=written.count(), buyers=(written.n_orders > 0).sum())
            .order_by("cutoff")
            .to_pandas()
        )
        return {
            "rows_per_cutoff": {str(pd.Timestamp(r.cutoff).date()): int(r.rows) for r in counts.itertuples()},
            "buyers_per_cutoff": {str(pd.Timestamp(r.cutoff).date()): int(r.buyers) for r in counts.itertuples()},
        }

    return store.write(sid, write, manifest)


def _fingerprint(
    sources: dict[str, Any], cuts: Sequence[pd.Timestamp], fs: FeatureSettings, cats: Sequence[str]
) -> str:
    payload = json.dumps(
        {
            "sources": {k: v["sha256"] for k, v in sources.items()},
            "cutoffs": [str(c) for c in cuts],
            "settings": fs.model_dump(mode="json"),
            "categories": list(cats),
            "code": custops.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _manifest(
    registry: FeatureRegistry,
    cuts: Sequence[pd.Timestamp],
    fs: FeatureSettings,
    sources: dict[str, Any],
    engine: str,
    data_end: pd.Timestamp,
    observed_until: pd.Timestamp,
    fingerprint: str,
) -> dict[str, Any]:
    horizons = {
        f"label_churn_{fs.churn_horizon_days}d": fs.churn_horizon_days,
        f"label_value_{fs.value_horizon_days}d": fs.value_horizon_days,
        f"label_purchase_days_{fs.value_horizon_days}d": fs.value_horizon_days,
    }

    def complete_cutoffs(label: str) -> list[str]:
        h = horizons.get(label, fs.propensity_horizon_days)
        return [str(c.date()) for c in cuts if c + pd.Timedelta(days=h) <= observed_until]

    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "engine": engine,
        "entity": {"name": "customer", "join_key": "customer_id"},
        "cutoffs": [str(c.date()) for c in cuts],
        "data_end": data_end.isoformat(),
        "observed_until": observed_until.isoformat(),
        "categories": list(registry.categories),
        "features": [
            {
                "name": f.name,
                "view": registry.view_of(f.name).name,
                "dtype": f.dtype,
                "description": f.description,
                "model_input": f.model_input,
            }
            for f in registry.features()
        ],
        "labels": [
            {"name": f.name, "description": f.description, "complete_cutoffs": complete_cutoffs(f.name)}
            for f in registry.features(("label",))
        ],
        "views": [
            {"name": v.name, "kind": v.kind, "window_days": v.window_days, "description": v.description}
            for v in registry.views
        ],
        "feature_services": {k: list(s.features) for k, s in feature_services(registry).items()},
        "settings": fs.model_dump(mode="json"),
        "sources": sources,
        "code_version": custops.__version__,
        "git_commit": git_commit(),
        "fingerprint": fingerprint,
    }
