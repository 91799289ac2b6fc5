"""Offline store (versioned Parquet snapshots with a manifest) and online store (SQLite by customer_id)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from custops.errors import StoreError
from custops.io import atomic_dir, atomic_path, read_json, write_json

log = logging.getLogger(__name__)

FEATURES_FILE = "features.parquet"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
_SNAPSHOT_ID = re.compile(r"^fs-\d{8}T\d{6}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Snapshot:
    """A committed offline snapshot: its id, folder and manifest."""

    snapshot_id: str
    path: Path
    manifest: dict[str, Any]

    @property
    def features_path(self) -> Path:
        return self.path / FEATURES_FILE

    def read(self, columns: Sequence[str] | None = None, cutoffs: Sequence[Any] | None = None) -> pd.DataFrame:
        """Load the snapshot (optionally some columns / cutoffs) into pandas."""
        filters = [("cutoff", "in", [pd.Timestamp(c).to_datetime64() for c in cutoffs])] if cutoffs else None
        table = pq.read_table(self.features_path, columns=list(columns) if columns else None, filters=filters)
        keys = [k for k in ("cutoff", "customer_id") if k in table.column_names]
        if keys:  # the file is unordered (see builder); give readers a stable order
            table = table.sort_by([(k, "ascending") for k in keys])
        return table.to_pandas()

    def describe(self, cutoff: Any | None = None) -> pd.DataFrame:
        """Per-feature description and statistics at one cutoff (default: the latest)."""
        cut = pd.Timestamp(cutoff) if cutoff is not None else max(pd.Timestamp(c) for c in self.manifest["cutoffs"])
        con = duckdb.connect()
        stats = con.execute(
            "SUMMARIZE SELECT * EXCLUDE (customer_id, cutoff) FROM read_parquet(?) WHERE cutoff = ?",
            [str(self.features_path), cut.to_pydatetime()],
        ).df()
        con.close()
        stats = stats.rename(columns={"column_name": "name"}).set_index("name")
        docs = {f["name"]: f for f in self.manifest["features"]} | {
            lab["name"]: {"view": "customer_labels", "description": lab["description"]}
            for lab in self.manifest["labels"]
        }
        out = pd.DataFrame(
            {
                "view": [docs.get(n, {}).get("view", "") for n in stats.index],
                "description": [docs.get(n, {}).get("description", "") for n in stats.index],
                "null_pct": pd.to_numeric(stats["null_percentage"], errors="coerce"),
                "mean": pd.to_numeric(stats["avg"], errors="coerce"),
                "min": stats["min"].astype(str),
                "max": stats["max"].astype(str),
                "distinct": stats["approx_unique"],
            },
            index=stats.index,
        )
        out.attrs["cutoff"] = str(cut.date())
        return out


class OfflineStore:
    """Versioned feature snapshots under one folder; a crashed build leaves earlier snapshots intact."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def new_snapshot_id(self, fingerprint: str, now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.UTC)
        return f"fs-{now:%Y%m%dT%H%M%S}-{fingerprint[:8]}"

    def write(self, snapshot_id: str, write_features: Any, manifest: dict[str, Any]) -> Snapshot:
        """Create a snapshot atomically.

        `write_features(path)` writes the Parquet file into a temp folder and may return extra
        manifest entries; the folder is renamed into place only after the manifest is written.
        """
        if not _SNAPSHOT_ID.match(snapshot_id):
            raise StoreError(f"snapshot id {snapshot_id!r} is malformed (expected fs-YYYYmmddTHHMMSS-xxxxxxxx)")
        final = self.root / snapshot_id
        if final.exists():
            raise StoreError(f"snapshot {snapshot_id} already exists in {self.root}")
        with atomic_dir(final) as tmp:
            extra = write_features(tmp / FEATURES_FILE) or {}
            meta = pq.read_metadata(tmp / FEATURES_FILE)
            manifest = {**manifest, **extra, "snapshot_id": snapshot_id, "rows": meta.num_rows}
            write_json(manifest, tmp / MANIFEST_FILE)
        write_json_text(self.root / LATEST_FILE, snapshot_id)
        log.info("wrote snapshot %s (%d rows)", snapshot_id, manifest["rows"])
        return Snapshot(snapshot_id, final, manifest)

    def list(self) -> list[str]:
        """Committed snapshot ids, oldest first (temp folders of crashed builds are ignored)."""
        if not self.root.exists():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _SNAPSHOT_ID.match(p.name) and (p / MANIFEST_FILE).exists()
        )

    def latest_id(self) -> str:
        pointer = self.root / LATEST_FILE
        if pointer.exists():
            sid = pointer.read_text().strip()
            if (self.root / sid / MANIFEST_FILE).exists():
                return sid
        ids = self.list()
        if not ids:
            raise StoreError(f"no feature snapshot in {self.root}: run `custops features build` first")
        return ids[-1]

    def get(self, snapshot_id: str | None = None) -> Snapshot:
        """A snapshot by id (default: the latest)."""
        sid = snapshot_id or self.latest_id()
        path = self.root / sid
        if not (path / MANIFEST_FILE).exists():
            known = ", ".join(self.list()[-5:]) or "none"
            raise StoreError(f"snapshot {sid!r} not found in {self.root} (latest: {known})")
        return Snapshot(sid, path, read_json(path / MANIFEST_FILE))


def write_json_text(path: Path, text: str) -> None:
    """Write a small text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


class OnlineStore:
    """Latest features per customer in one SQLite file, for low-latency lookup by the serving layer.

    `materialize` builds a complete new database file and renames it over the old one, so readers
    never see a half-written store; a reader that opened the old file keeps a consistent view.
    """

    TABLE = "customer_features"

    def __init__(self, path: Path):
        self.path = Path(path)

    def materialize(self, snapshot: Snapshot, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """Copy the rows of the snapshot's latest cutoff into a fresh store; returns its metadata."""
        cutoff = max(pd.Timestamp(c) for c in snapshot.manifest["cutoffs"])
        con = duckdb.connect()
        cols = "*" if columns is None else ", ".join(f'"{c}"' for c in ["customer_id", "cutoff", *columns])
        df = con.execute(
            f"SELECT {cols} FROM read_parquet(?) WHERE cutoff = ?",
            [str(snapshot.features_path), cutoff.to_pydatetime()],
        ).df()
        con.close()
        for c in df.columns:
            if pd.api.types.is_datetime64_any_dtype(df[c]):
                df[c] = df[c].dt.strftime("%Y-%m-%dT%H:%M:%S")
        meta = {
            "snapshot_id": snapshot.snapshot_id,
            "cutoff": cutoff.isoformat(),
            "rows": len(df),
            "materialized_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "columns": json.dumps(list(df.columns)),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            with sqlite3.connect(tmp) as db:
                df.to_sql(self.TABLE, db, index=False, if_exists="replace", chunksize=50_000)
                db.execute(f"CREATE UNIQUE INDEX ix_customer ON {self.TABLE}(customer_id)")
                pd.DataFrame({"key": list(meta), "value": [str(v) for v in meta.values()]}).to_sql(
                    "meta", db, index=False, if_exists="replace"
                )
            db.close()
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("materialized %d customers from %s (cutoff %s)", len(df), snapshot.snapshot_id, cutoff.date())
        return meta

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise StoreError(f"online store {self.path} does not exist: run `custops features materialize`")
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def metadata(self) -> dict[str, str]:
        with self._connect() as db:
            return dict(db.execute("SELECT key, value FROM meta").fetchall())

    def get(self, customer_ids: Sequence[str]) -> pd.DataFrame:
        """Feature rows for these customers, indexed by customer_id; unknown ids are absent."""
        ids = [str(c) for c in customer_ids]
        frames = []
        with self._connect() as db:
            for i in range(0, len(ids), 900):  # SQLite caps bound parameters per statement
                chunk = ids[i : i + 900]
                q = f"SELECT * FROM {self.TABLE} WHERE customer_id IN ({','.join('?' * len(chunk))})"
                frames.append(pd.read_sql_query(q, db, params=chunk))
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return df.set_index("customer_id") if not df.empty else df
