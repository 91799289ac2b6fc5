"""Feature pipeline wiring: (generate) -> ingest -> build snapshot -> materialize online store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custops.data.ingest import IngestReport, ingest
from custops.data.synthetic import GenerateResult, SyntheticConfig, generate
from custops.features.builder import build_snapshot
from custops.features.store import OfflineStore, OnlineStore, Snapshot
from custops.settings import Settings

RAW_TABLES = ("transactions", "interactions", "customers", "products")


def generate_demo_data(settings: Settings, *, n_customers: int = 5000, file_format: str = "csv") -> GenerateResult:
    """Write the synthetic demo dataset into the raw layer."""
    cfg = SyntheticConfig(n_customers=n_customers, seed=settings.seed, file_format=file_format)  # type: ignore[arg-type]
    return generate(cfg, settings.raw_dir)


def raw_sources(raw_dir: Path) -> dict[str, Path | None]:
    """The raw tables found in `raw_dir` (CSV or Parquet), by table name."""
    found: dict[str, Path | None] = {}
    for table in RAW_TABLES:
        hits = [p for ext in ("parquet", "csv") if (p := raw_dir / f"{table}.{ext}").exists()]
        found[table] = hits[0] if hits else None
    return found


def ingest_raw(settings: Settings, sources: Mapping[str, str | Path | None] | None = None) -> IngestReport:
    """Validate the raw tables into the validated layer (quarantining bad rows)."""
    return ingest(sources or raw_sources(settings.raw_dir), settings)


def build_features(settings: Settings, *, cutoffs: Sequence[Any] | None = None, engine: str | None = None) -> Snapshot:
    """Build a new offline snapshot from the validated layer (engine: `engine`, else `settings.engine`)."""
    engine = engine or settings.engine
    source = settings.spark.validated_uri if engine == "spark" and settings.spark.validated_uri else None
    return build_snapshot(
        source or settings.validated_dir,
        OfflineStore(settings.offline_store_dir),
        settings.features,
        cutoffs=cutoffs,
        engine=engine,
        spark=settings.spark,
    )


def materialize(settings: Settings, snapshot_id: str | None = None) -> dict[str, Any]:
    """Refresh the online store from a snapshot (default: the latest)."""
    snap = OfflineStore(settings.offline_store_dir).get(snapshot_id)
    return OnlineStore(settings.online_store_path).materialize(snap)


@dataclass
class FeatureRun:
    """What one end-to-end feature run produced."""

    generated: GenerateResult | None
    ingest: IngestReport
    snapshot: Snapshot
    online: dict[str, Any]


def run_feature_pipeline(
    settings: Settings, *, generate_customers: int | None = None, cutoffs: Sequence[Any] | None = None
) -> FeatureRun:
    """(Generate demo data), ingest, build a snapshot and materialize it."""
    generated = generate_demo_data(settings, n_customers=generate_customers) if generate_customers else None
    report = ingest_raw(settings)
    snap = build_features(settings, cutoffs=cutoffs)
    online = materialize(settings, snap.snapshot_id)
    return FeatureRun(generated, report, snap, online)
