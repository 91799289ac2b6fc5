"""Build a feature snapshot from the validated layer: read, compile, execute, record lineage."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.operations as ops
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import custops
from custops.data.schema import CUSTOMER_KEY, INGEST_RUN_METADATA
from custops.errors import ConfigError, StoreError
from custops.features.definitions import FeatureRegistry, build_registry, feature_services
from custops.features.engine import (
    build_expression,
    default_cutoffs,
    normalize_cutoffs,
    release_batch_tables,
    release_lookups,
    replay_batch,
    start_replay,
    top_categories,
)
from custops.features.store import OfflineStore, Snapshot
from custops.io import file_sha256
from custops.settings import MEMORY_SIZE_PATTERN, FeatureSettings, SparkSettings
from custops.spark import analysis_error, is_uri, spark_path

log = logging.getLogger(__name__)

REQUIRED_TABLES = ("transactions", "customers")
OPTIONAL_TABLES = ("interactions",)
ENGINES = ("duckdb", "spark")
MERGE_BATCH_ROWS = 131_072
# FeatureSettings that change how a build runs, not what it computes (not part of the fingerprint).
EXECUTION_SETTINGS = {"memory_limit", "threads"}
# DuckDB engine: (customer, cutoff) rows computed per batch of cutoffs (bounds peak memory: about
# 1.5 KB per row between the lookups and the materialised feature table), and rows per Arrow batch.
BATCH_ROWS = 1_500_000
BATCH_CHUNK_ROWS = 262_144
# Output chunks that may wait for the Parquet writer: about one batch, so the next batch's lookups
# run while the writer encodes this one's (with 2, each waited for the other: ~8 s of 28 at 20M
# events). Chunks slice the lookup table, so at most one more batch of it stays in memory.
WRITE_QUEUE_CHUNKS = 8
# Columns whose Parquet min/max statistics the batched writer keeps (see BackgroundParquetWriter).
STATISTICS_COLUMNS = ("customer_id", "cutoff")


def connect(
    engine: str = "duckdb",
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    spark: SparkSettings | None = None,
) -> Any:
    """An Ibis backend for the named engine: DuckDB in-process (default) or Spark (`spark` settings)."""
    if engine == "spark":
        from custops.spark import get_session, ibis_backend

        return ibis_backend(get_session(spark or SparkSettings()))
    if engine != "duckdb":
        raise ConfigError(f"engine {engine!r} is not supported (choose one of: {', '.join(ENGINES)})")
    con = ibis.duckdb.connect()
    if threads:
        con.raw_sql(f"SET threads = {int(threads)}")
    if memory_limit:
        if not re.fullmatch(MEMORY_SIZE_PATTERN, memory_limit):
            raise ConfigError(f"memory limit {memory_limit!r} is not a size such as '1500MB' or '2GB'")
        con.raw_sql(f"SET memory_limit = '{memory_limit}'")
    return con


def validated_files(validated_dir: Path) -> dict[str, Path]:
    """Paths of the validated tables that exist; errors if a required one is missing."""
    files = {t: Path(validated_dir) / f"{t}.parquet" for t in (*REQUIRED_TABLES, *OPTIONAL_TABLES)}
    missing = [t for t in REQUIRED_TABLES if not files[t].exists()]
    if missing:
        raise StoreError(f"validated table(s) {missing} not found in {validated_dir}: run `custops data ingest` first")
    return {t: p for t, p in files.items() if p.exists()}


def keys_from_one_ingest(files: dict[str, Path]) -> bool:
    """True when the validated files carry customer keys (`CUSTOMER_KEY`) that one ingest run wrote:
    the engine then reads them instead of numbering the ids. Files of different runs (a layer
    replaced file by file, an older ingest, files placed by hand) number customers apart, so their
    keys are not used."""
    runs = set()
    for table in ("customers", "transactions", "interactions"):
        if table not in files:
            continue
        found = pq.read_schema(files[table])
        if CUSTOMER_KEY not in found.names:
            return False
        runs.add((found.metadata or {}).get(INGEST_RUN_METADATA))
    return len(runs) == 1 and None not in runs


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
    validated_dir: Path | str,
    store: OfflineStore,
    fs: FeatureSettings,
    *,
    cutoffs: Sequence[Any] | None = None,
    engine: str = "duckdb",
    con: Any = None,
    spark: SparkSettings | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Snapshot:
    """Compute features and labels at each cutoff and commit them as a new offline snapshot.

    The same Ibis expression runs on either engine. With `engine="spark"`, `validated_dir` may be
    a URI Spark reads (s3a://, hdfs://, abfss://...), and the snapshot is written in the DuckDB
    engine's layout: one `features.parquet` plus the manifest.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not supported (choose one of: {', '.join(ENGINES)})")
    con = con or connect(engine, spark=spark, threads=fs.threads, memory_limit=fs.memory_limit)
    hashes: dict[str, tuple[Path, Future[str]]] = {}
    if engine == "spark":
        tables, sources = _read_spark_sources(con, validated_dir)
        source_label = str(validated_dir)
    else:
        files = validated_files(Path(validated_dir))
        keys_stored = keys_from_one_ingest(files)
        tables = {name: con.read_parquet(str(path), table_name=f"src_{name}") for name, path in files.items()}
        # The files' hashes (lineage) on a thread while the engine reads their bounds and categories
        # (hashlib releases the GIL): ~0.2 s at 20M events that the build no longer waits for.
        hashing = ThreadPoolExecutor(1, thread_name_prefix="custops-hash")
        hashes = {name: (p, hashing.submit(file_sha256, p)) for name, p in files.items()}
        hashing.shutdown(wait=False)
        sources = {}
        source_label = str(files["transactions"])

    tx = tables["transactions"]
    bounds = tx.aggregate(lo=tx.timestamp.min(), hi=tx.timestamp.max(), n=tx.count()).to_pandas().iloc[0]
    if bounds["n"] == 0:
        raise StoreError(f"{source_label} has no valid transactions: nothing to build features from")
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
    sources |= {name: {"path": str(p), "sha256": digest.result()} for name, (p, digest) in hashes.items()}
    # No global ORDER BY: sorting millions of wide rows costs more than the build; readers sort.
    # DuckDB builds and writes a few cutoffs at a time (`write_batched`); Spark takes one expression.
    expr = build_expression(tables, cuts, registry, observed_until=observed_until) if engine == "spark" else None

    fingerprint = _fingerprint(sources, cuts, fs, categories)
    manifest = _manifest(registry, cuts, fs, sources, engine, data_end, observed_until, fingerprint)
    sid = store.new_snapshot_id(fingerprint)
    log.info("building %s: %d cutoffs, %d features, engine %s", sid, len(cuts), len(registry.feature_names), engine)

    def write(path: Path) -> dict[str, Any]:
        with _gc_paused():
            write_batched(
                con, tables, cuts, registry, observed_until, path, batch_rows=batch_rows, stored_keys=keys_stored
            )
        return _count_entries(path)

    def write_spark(path: Path) -> dict[str, Any]:
        staging = path.parent / ".spark-parts"
        con.to_parquet_dir(expr, spark_path(staging))
        session = con._session  # the backend's SparkSession (ibis exposes no public accessor)
        # Spark writes every Parquet column as nullable; its analysed schema knows which are never
        # NULL (counts filled with 0, segments, ...), as DuckDB's does: keep that in the file.
        not_null = {f.name for f in session.sql(con.compile(expr)).schema.fields if not f.nullable}
        schema = pa.schema([f.with_nullable(f.name not in not_null) for f in expr.schema().to_pyarrow()])
        merge_parquet_parts(staging, path, schema)
        shutil.rmtree(staging, ignore_errors=True)
        info = {"version": session.version}
        with contextlib.suppress(Exception):  # Spark Connect sessions have no SparkContext
            info["master"] = session.sparkContext.master
        return {**_count_entries(path), "spark": info}

    return store.write(sid, write_spark if engine == "spark" else write, manifest)


@contextlib.contextmanager
def _gc_paused() -> Any:
    """Python's cyclic garbage collector paused for a build: building expressions allocates many
    small objects, and its collections then scan the live ones again and again (~1% of a 20M-event
    build in a profile) while nothing the build makes needs collecting before it ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_batched(
    con: Any,
    tables: dict[str, Any],
    cuts: Sequence[pd.Timestamp],
    registry: FeatureRegistry,
    observed_until: pd.Timestamp,
    path: Path,
    *,
    batch_rows: int = BATCH_ROWS,
    stored_keys: bool = False,
) -> int:
    """Compute and write the snapshot a few cutoffs at a time into one Parquet file; returns rows.

    Cutoffs are independent (segments rank within a cutoff), so a batch of them is a complete part
    of the snapshot. Batches of about `batch_rows` (customer, cutoff) rows bound peak memory; what
    does not depend on the cutoffs (integer keys, running totals) is computed once and shared.
    `stored_keys`: the tables' `customer_key` columns are the integer keys (`keys_from_one_ingest`).
    """
    n_customers = int(tables["customers"].count().to_pyarrow().as_py())
    per_batch = max(1, batch_rows // max(n_customers, 1))
    shared: dict[str, Any] = {"stored_keys": stored_keys}
    # A build of one batch goes the same way: its snapshot then has the same schema (never-NULL
    # columns required) as a batched one. (DuckDB writing it in parallel instead, as before, took
    # 3.3-3.4 s and 1.23 GB at 1M events against 2.80-2.82 s and 0.98 GB this way.)
    rows, writer, replayable, final_sql = 0, None, False, None
    if per_batch < len(cuts):
        start_replay(shared)  # the first batch records its queries; the others replay them (no compiling)
    try:
        for i in range(0, len(cuts), per_batch):
            batch_cuts = cuts[i : i + per_batch]
            if not (replayable and replay_batch(con, shared, batch_cuts)):
                expr = build_expression(tables, batch_cuts, registry, observed_until=observed_until, shared=shared)
                if writer is None:
                    schema = expr.schema().to_pyarrow()
                    if shared.get("output") is not None:
                        schema = shared["output"].output_schema(schema)
                    writer = BackgroundParquetWriter(path, schema, depth=WRITE_QUEUE_CHUNKS)
                # Replayable: raw SQL that needs no memtable registered.
                replayable = shared.get("steps") is not None and not expr.op().find(ops.InMemoryTable)
                final_sql = None
                if shared.get("output") is None:
                    final_sql = con.compile(expr) if replayable else None
                    reader = _record_batches(con, expr)
            elif shared.get("output") is None:
                reader = con.con.sql(final_sql).to_arrow_reader(BATCH_CHUNK_ROWS)
            if shared.get("output") is not None:
                # Lookup columns pass through as they are; the engine computes only the rest.
                reader = shared["output"].batches(con, shared["lookup_arrow"], schema, BATCH_CHUNK_ROWS)
            for batch in reader:
                writer.write(batch.cast(schema) if batch.schema != schema else batch)
                rows += batch.num_rows
            # The last chunks may still be queued: they hold their own data, not the lookups.
            release_lookups(con, shared)
            log.info("computed %d of %d cutoffs (%d rows)", i + len(batch_cuts), len(cuts), rows)
    finally:
        release_batch_tables(con, shared)
        if writer is not None:
            writer.close()
    return rows


class BackgroundParquetWriter:
    """Append record batches to one Parquet file from a second thread.

    pyarrow encodes a row group on one thread (Arrow's parallel column writing is not exposed to
    Python) and releases the GIL while it does, so encoding chunk k on this thread overlaps DuckDB
    and numpy computing chunk k+1 on the other core. At most `depth` chunks wait in the queue.

    Encodings, measured on a 760k-row batch at 1M customers (41 integer, 30 float, 5 timestamp and
    6 string columns; pyarrow's default is dictionary encoding everywhere):
    - integers and timestamps: DELTA_BINARY_PACKED (counts, scores, labels and times of one
      customer after another): 25% less time than dictionary encoding for integers at 13% more
      bytes, and for timestamps 15% less time and 22% fewer bytes than plain;
    - strings but the ids: dictionary (a handful of countries, segments, stages);
    - floats and customer ids: plain (nearly all distinct values);
    - min/max statistics for the key columns only (`STATISTICS_COLUMNS`): rows come in cutoff and
      customer order, so only those ranges differ between row groups and let a reader skip one. A
      feature's or segment's range over 262k customers spans nearly all its values and skips nothing;
      its statistics cost 8% of the encoding time (the floats' alone, 15%, were dropped before).
    """

    def __init__(self, path: Path, schema: pa.Schema, *, depth: int = 2) -> None:
        delta = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)]
        dictionary = [
            f.name
            for f in schema
            if f.name not in delta and not pa.types.is_floating(f.type) and f.name != "customer_id"
        ]
        statistics = [f.name for f in schema if f.name in STATISTICS_COLUMNS]
        self._writer = pq.ParquetWriter(
            path,
            schema,
            use_dictionary=dictionary,
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
            write_statistics=statistics,
        )
        self._queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="custops-parquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:  # after a failure, keep draining so `write` never blocks
                try:
                    self._writer.write_batch(batch)
                except BaseException as e:  # re-raised on the caller's thread
                    self._error = e

    def write(self, batch: pa.RecordBatch) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def close(self) -> None:
        """Wait for the queued batches, close the file; raises the writer thread's error, if any."""
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error


def _record_batches(con: Any, expr: Any) -> pa.RecordBatchReader:
    """Stream the expression's result from DuckDB as Arrow record batches.

    (Ibis 12's `to_pyarrow_batches` calls `fetch_record_batch`, which DuckDB 2 no longer has; its
    DuckDB relation streams the same result.)
    """
    return con._to_duckdb_relation(expr).to_arrow_reader(BATCH_CHUNK_ROWS)


def _count_entries(path: Path) -> dict[str, Any]:
    """Rows and buyers per cutoff of a written snapshot file, for the manifest (read by a local DuckDB,
    whichever engine wrote it: no further Spark job, no table left registered on the build's connection).
    """
    with duckdb.connect() as db:
        counts = db.execute(
            "SELECT cutoff, count(*) AS rows, count_if(n_orders > 0) AS buyers "
            "FROM read_parquet(?) GROUP BY cutoff ORDER BY cutoff",
            [str(path)],
        ).df()
    return {
        "rows_per_cutoff": {str(pd.Timestamp(r.cutoff).date()): int(r.rows) for r in counts.itertuples()},
        "buyers_per_cutoff": {str(pd.Timestamp(r.cutoff).date()): int(r.buyers) for r in counts.itertuples()},
    }


def _read_spark_sources(con: Any, validated: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register the validated tables (local folder or URI) with Spark, with their lineage.

    Local files are identified by SHA-256 like the DuckDB engine's (so both engines fingerprint the
    same data alike); a URI's files are not on this machine, so Spark computes a content hash
    instead (row count and the sum of a 64-bit hash of every row, in one scan).
    """
    if not is_uri(validated):
        files = validated_files(Path(validated))
        tables = {n: con.read_parquet(spark_path(p), table_name=f"src_{n}") for n, p in files.items()}
        return tables, {n: {"path": str(p), "sha256": file_sha256(p)} for n, p in files.items()}
    tables, sources = {}, {}
    for name in (*REQUIRED_TABLES, *OPTIONAL_TABLES):
        location = f"{str(validated).rstrip('/')}/{name}.parquet"
        try:
            tables[name] = con.read_parquet(location, table_name=f"src_{name}")
        except Exception as e:
            err = analysis_error(e, f"validated table '{name}' ({location})")
            if not isinstance(err, StoreError):
                raise
            if name in REQUIRED_TABLES:
                raise StoreError(f"{err}: run `custops data ingest` and copy the validated layer there") from e
            continue
        row = con.raw_sql(f"SELECT count(*), sum(cast(xxhash64(*) AS decimal(38, 0))) FROM src_{name}").first()
        sources[name] = {"path": location, "rows": int(row[0]), "content_hash": f"xxhash64-sum:{row[1]}"}
    return tables, sources


def merge_parquet_parts(parts_dir: Path, path: Path, schema: pa.Schema) -> int:
    """Stream Spark's part files into one Parquet file with `schema` (the snapshot layout); returns rows.

    Spark writes a folder of part files; every snapshot reader (DuckDB, pyarrow, the online store)
    expects the single file the DuckDB engine writes, so the parts are appended batch by batch
    (memory stays at one batch) and cast to the expression's schema (e.g. Spark's UTC-adjusted
    timestamps to the naive UTC timestamps of the DuckDB engine).
    """
    parts = sorted(Path(parts_dir).glob("part-*.parquet"))
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_size=MERGE_BATCH_ROWS, columns=schema.names):
                table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def _fingerprint(
    sources: dict[str, Any], cuts: Sequence[pd.Timestamp], fs: FeatureSettings, cats: Sequence[str]
) -> str:
    payload = json.dumps(
        {
            "sources": {k: v.get("sha256") or v["content_hash"] for k, v in sources.items()},
            "cutoffs": [str(c) for c in cuts],
            "settings": fs.model_dump(mode="json", exclude=EXECUTION_SETTINGS),
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
