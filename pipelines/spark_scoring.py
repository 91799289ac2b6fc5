"""Batch scoring on Spark: a snapshot's latest cutoff scored by the champions in parallel, written as Parquet.

Same models, same scoring function: the champions are loaded once on the driver from the MLflow
registry and shipped with the task (Spark broadcasts a large task closure), and every Arrow batch
of feature rows goes through `custops.pipelines.scoring.score_rows` in a `mapInPandas` task, so
executors need custops installed but no access to the registry. The output has the columns of
`custops.pipelines.scoring.score` for everyone (no `not_found` rows: Spark scores whole snapshots).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from custops.errors import ConfigError
from custops.features.store import OfflineStore, Snapshot
from custops.io import atomic_dir
from custops.pipelines.scoring import Champion, check_snapshot, latest_cutoff, load_champions, score_rows
from custops.settings import Settings
from custops.spark import get_session, is_uri, spark_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SparkScoreRun:
    """What one Spark scoring run wrote."""

    path: str
    rows: int | None  # None when written to a remote URI
    snapshot_id: str
    cutoff: pd.Timestamp
    versions: dict[str, str]


def default_spark_scores_path(settings: Settings, snapshot_id: str) -> Path:
    """Where `custops score --engine spark` writes by default (a Parquet dataset folder)."""
    return settings.scores_dir / f"scores-{snapshot_id}-spark.parquet"


def _finish(scores: pd.DataFrame, champions: dict[str, Champion], snapshot_id: str) -> pd.DataFrame:
    """The lineage columns `score()` adds: model versions and snapshot id."""
    for task, champ in champions.items():
        scores[f"{task}_model_version"] = pd.Series(champ.version, index=scores.index, dtype="string")
    scores["snapshot_id"] = pd.Series(snapshot_id, index=scores.index, dtype="string")
    return scores


def output_schema(snapshot: Snapshot, champions: dict[str, Champion], settings: Settings) -> pa.Schema:
    """The Arrow schema of the score table, from scoring zero rows of this snapshot."""
    empty = pq.read_schema(snapshot.features_path).empty_table().to_pandas()
    scores = _finish(score_rows(empty, champions, settings), champions, snapshot.snapshot_id)
    return pa.Schema.from_pandas(scores, preserve_index=False).remove_metadata()


def score_spark(
    settings: Settings,
    *,
    snapshot_id: str | None = None,
    out: str | Path | None = None,
    session: Any = None,
) -> SparkScoreRun:
    """Score every customer at the snapshot's latest cutoff on Spark and write a Parquet dataset to `out`."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    if out is not None and Path(str(out)).suffix.lower() == ".csv":
        raise ConfigError(f"output {out}: the Spark engine writes Parquet (use a .parquet path or folder)")
    snapshot = OfflineStore(settings.offline_store_dir).get(snapshot_id)
    out = out if out is not None else default_spark_scores_path(settings, snapshot.snapshot_id)
    champions = load_champions(settings)
    check_snapshot(snapshot, champions)
    schema = output_schema(snapshot, champions, settings)
    cutoff = latest_cutoff(snapshot)
    session = session or get_session(settings.spark)

    rows = session.read.parquet(spark_path(snapshot.features_path))
    cutoff_type = rows.schema["cutoff"].dataType  # TIMESTAMP_NTZ for the naive UTC cutoffs
    rows = rows.where(F.col("cutoff") == F.lit(str(cutoff)).cast(cutoff_type))
    sid, names = snapshot.snapshot_id, schema.names

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            scores = score_rows(batch.reset_index(drop=True), champions, settings)
            yield _finish(scores, champions, sid)[names]

    scored = rows.mapInPandas(score_batches, schema=from_arrow_schema(schema, prefer_timestamp_ntz=True))
    if is_uri(out):
        scored.write.mode("overwrite").parquet(str(out))
    else:
        with atomic_dir(Path(out)) as tmp:
            scored.write.mode("overwrite").parquet(spark_path(tmp))
    # Row count from the part files' footers (no second Spark job); unknown for a remote URI.
    n = None if is_uri(out) else sum(pq.read_metadata(f).num_rows for f in Path(out).glob("*.parquet"))
    versions = {task: c.version for task, c in champions.items()}
    log.info("scored %s customers of %s on Spark -> %s", "all" if n is None else n, sid, out)
    return SparkScoreRun(str(out), n, sid, cutoff, versions)
