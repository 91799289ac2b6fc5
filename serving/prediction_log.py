"""Append-only log of served predictions (SQLite), written off the request path by one thread per process.

Requests only put records on an unbounded in-memory queue, so logging never delays a response; the
writer wakes every `flush_interval_s` and appends what has queued in one transaction (a commit, or
a wake-up, per request would cost the server more CPU than the request itself). Nothing is dropped: a failed write is
retried, `close()` (the service's shutdown hook, and `atexit` as a fallback) drains what is queued,
and records that still cannot reach the database are appended to a JSON-lines file beside it.
Several worker processes may share the file: SQLite in WAL mode serialises their appends.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TABLE = "predictions"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    logged_at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    customer_id TEXT,
    status TEXT NOT NULL,
    snapshot_id TEXT,
    model_versions TEXT NOT NULL,
    inputs TEXT,
    prediction TEXT NOT NULL,
    pid INTEGER NOT NULL
)
"""
_INSERT = (
    f"INSERT INTO {TABLE} (logged_at, request_id, endpoint, customer_id, status, snapshot_id, model_versions, "
    "inputs, prediction, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class FrameInputs:
    """The model inputs of a scored frame's rows, serialised by the log writer rather than the request thread.

    Records of one coalesced batch share one instance; the first `json()` call turns every row into
    a JSON object `{feature: value}` (NaN as null) and drops the frame.
    """

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str]):
        self._columns = [c for c in columns if c in frame.columns]
        self._frame: pd.DataFrame | None = frame
        self._json: list[str] | None = None

    def row(self, position: int) -> FrameRow:
        return FrameRow(self, position)

    def json(self, position: int) -> str:
        if self._json is None:
            assert self._frame is not None
            where = self._frame.columns.get_indexer(self._columns)
            block = self._frame.to_numpy(dtype=object)[:, where]  # a copy: the frame is not changed
            block[pd.isna(block)] = None  # NaN, NA and NaT as null in one pass (a call per cell cost ~1 us)
            columns = self._columns
            self._json = [
                json.dumps(dict(zip(columns, values, strict=True)), default=_json_default) for values in block.tolist()
            ]
            self._frame = None
        return self._json[position]


@dataclass(frozen=True)
class FrameRow:
    """One row of `FrameInputs`."""

    inputs: FrameInputs
    position: int

    def to_json(self) -> str:
        return self.inputs.json(self.position)


def _json_default(value: Any) -> Any:
    """What `json.dumps` cannot write itself: NumPy scalars, dates and times (missing values are None already)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class PredictionRecord:
    """One served prediction: which request, customer and models, and what was answered."""

    request_id: str
    endpoint: str
    customer_id: str | None
    status: str
    snapshot_id: str | None
    model_versions: Mapping[str, str]
    prediction: Any  # a pydantic model or anything JSON-serialisable
    inputs: Mapping[str, Any] | FrameRow | None = None  # the model's input features (monitoring reads them)
    logged_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def row(self, pid: int) -> tuple[Any, ...]:
        prediction = self.prediction
        if hasattr(prediction, "model_dump_json"):
            prediction_json = prediction.model_dump_json()
        else:
            prediction_json = json.dumps(prediction, default=str)
        inputs = self.inputs
        if inputs is None:
            inputs_json = None
        elif isinstance(inputs, FrameRow):
            inputs_json = inputs.to_json()
        else:
            inputs_json = json.dumps(inputs, default=str)
        return (
            self.logged_at.isoformat(timespec="microseconds"),
            self.request_id,
            self.endpoint,
            self.customer_id,
            self.status,
            self.snapshot_id,
            json.dumps(dict(self.model_versions), sort_keys=True),
            inputs_json,
            prediction_json,
            pid,
        )


class PredictionLog:
    """Background writer of `PredictionRecord`s into `path` (table `predictions`)."""

    def __init__(self, path: Path, *, batch_size: int = 5000, flush_interval_s: float = 0.25, retries: int = 5):
        self.path = Path(path)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retries = retries
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.written = 0

    def start(self) -> PredictionLog:
        """Create the table and start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = self._connect()
                try:
                    db.execute(_SCHEMA)
                finally:
                    db.close()
                self._closing.clear()
                self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
                self._thread.start()
                atexit.register(self.close)
        return self

    def append(self, records: Iterable[PredictionRecord]) -> None:
        """Queue records for writing; never blocks."""
        for record in records:
            self._queue.put(record)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the writer (idempotent)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing.set()
        thread.join(timeout)
        if thread.is_alive():
            log.error("prediction log writer did not finish within %.0fs; %s may miss records", timeout, self.path)
        atexit.unregister(self.close)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _run(self) -> None:
        # Poll rather than block on the queue: a writer woken by every put would take the GIL from
        # the request path once per request (measured: +1.7 ms per request on a busy 2-core host).
        pid = os.getpid()
        db = self._connect()
        stopping = False
        try:
            while not stopping:
                stopping = self._closing.wait(self.flush_interval_s)
                batch = []
                while True:
                    try:
                        record = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(record)
                    if len(batch) >= self.batch_size:
                        self._write(db, [r.row(pid) for r in batch])
                        batch = []
                if batch:
                    self._write(db, [r.row(pid) for r in batch])
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        for attempt in range(self.retries):
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_INSERT, rows)
                db.execute("COMMIT")
                self.written += len(rows)
                return
            except sqlite3.Error as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                log.warning("prediction log write failed (attempt %d): %s", attempt + 1, e)
                time.sleep(0.1 * 2**attempt)
        spill = self.path.with_name(f"{self.path.stem}-unwritten-{os.getpid()}.jsonl")
        with open(spill, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        log.error("prediction log: %d records kept in %s after %d failed writes", len(rows), spill, self.retries)


def read_predictions(path: Path) -> pd.DataFrame:
    """The logged predictions, oldest first (for monitoring and tests)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return pd.read_sql_query(f"SELECT * FROM {TABLE} ORDER BY id", db)
    finally:
        db.close()
