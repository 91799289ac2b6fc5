"""Offline snapshots (atomic, versioned, with lineage) and the online store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from custops.errors import ConfigError, StoreError
from custops.features import builder
from custops.features.builder import build_snapshot
from custops.features.store import OfflineStore, OnlineStore
from custops.io import file_sha256
from custops.settings import FeatureSettings
from tests.conftest import CUTOFFS


@pytest.fixture
def store(tmp_path: Path) -> OfflineStore:
    return OfflineStore(tmp_path / "offline")


def test_snapshot_manifest_names_its_data(hand_validated: Path, store: OfflineStore, small_fs: FeatureSettings) -> None:
    snap = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)
    m = snap.manifest
    assert m["cutoffs"] == CUTOFFS
    assert m["rows"] == 5 and m["rows_per_cutoff"] == {"2024-03-01": 2, "2024-04-01": 3}
    assert m["buyers_per_cutoff"] == {"2024-03-01": 1, "2024-04-01": 3}
    assert m["sources"]["transactions"]["sha256"] == file_sha256(hand_validated / "transactions.parquet")
    names = [f["name"] for f in m["features"]]
    assert "recency_days" in names and "lifecycle_stage" in names
    assert all(f["description"] for f in m["features"])
    assert "label_churn_90d" in [lab["name"] for lab in m["labels"]]
    # data ends 2024-03-20: no churn window after either cutoff is fully observed
    churn = next(lab for lab in m["labels"] if lab["name"] == "label_churn_90d")
    assert churn["complete_cutoffs"] == []
    assert set(m["feature_services"]) == {"churn_v1", "clv_v1", "propensity_v1"}
    df = snap.read()
    assert list(df.columns[:2]) == ["customer_id", "cutoff"]
    assert df["customer_id"].tolist() == ["A", "B", "A", "B", "C"]  # ordered by cutoff, customer
    assert store.latest_id() == snap.snapshot_id


def test_rebuild_is_reproducible(hand_validated: Path, store: OfflineStore, small_fs: FeatureSettings) -> None:
    a = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)
    b_store = OfflineStore(store.root.parent / "other")
    b = build_snapshot(hand_validated, b_store, small_fs, cutoffs=CUTOFFS)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]
    pd.testing.assert_frame_equal(a.read(), b.read())


def test_engine_limits_apply_without_changing_the_snapshot(
    hand_validated: Path, store: OfflineStore, small_fs: FeatureSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    real_connect = builder.connect

    def spy(*args, **kwargs):
        con = real_connect(*args, **kwargs)
        seen.append(con.raw_sql("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone())
        return con

    monkeypatch.setattr(builder, "connect", spy)
    limited = small_fs.model_copy(update={"memory_limit": "256MB", "threads": 1})
    a = build_snapshot(hand_validated, store, limited, cutoffs=CUTOFFS)
    assert seen == [("244.1 MiB", 1)]  # 256 MB as DuckDB reports it
    b = build_snapshot(hand_validated, OfflineStore(store.root.parent / "other"), small_fs, cutoffs=CUTOFFS)
    assert a.manifest["fingerprint"] == b.manifest["fingerprint"]  # how it ran is not what it computed
    pd.testing.assert_frame_equal(a.read(), b.read())
    with pytest.raises(ValidationError, match="memory_limit"):
        FeatureSettings(memory_limit="lots")
    with pytest.raises(ConfigError, match="'lots' is not a size"):
        real_connect("duckdb", memory_limit="lots")


def test_crashed_build_leaves_previous_snapshot_intact(
    hand_validated: Path, store: OfflineStore, small_fs: FeatureSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    # the Parquet writer fails mid-build (on its thread; the build raises it)
    monkeypatch.setattr(pq.ParquetWriter, "write_batch", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_snapshot(hand_validated, store, small_fs, cutoffs=["2024-04-01"])
    assert store.list() == [first.snapshot_id]
    assert store.latest_id() == first.snapshot_id
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []  # no temp folder left
    assert len(store.get().read()) == 5


def test_missing_snapshot_and_missing_tables_are_clear(tmp_path: Path, store: OfflineStore, small_fs) -> None:
    with pytest.raises(StoreError, match="no feature snapshot .* run `custops features build`"):
        store.get()
    with pytest.raises(StoreError, match="validated table.*transactions.*custops data ingest"):
        build_snapshot(tmp_path / "nothing", store, small_fs)


def test_online_store_serves_latest_cutoff(hand_validated: Path, store: OfflineStore, small_fs, tmp_path: Path) -> None:
    snap = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)
    online = OnlineStore(tmp_path / "online.sqlite")
    meta = online.materialize(snap)
    assert meta["rows"] == 3 and meta["cutoff"].startswith("2024-04-01")
    got = online.get(["C", "A", "nobody"])
    assert sorted(got.index) == ["A", "C"]
    offline = snap.read(cutoffs=["2024-04-01"]).set_index("customer_id")
    assert got.loc["A", "revenue_total"] == offline.loc["A", "revenue_total"] == 65.0
    assert got.loc["A", "lifecycle_stage"] == "loyal"
    assert online.metadata()["snapshot_id"] == snap.snapshot_id


def test_online_refresh_is_atomic_for_open_readers(hand_validated: Path, store, small_fs, tmp_path: Path) -> None:
    snap = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)
    online = OnlineStore(tmp_path / "online.sqlite")
    online.materialize(snap)
    reader = sqlite3.connect(online.path)
    before = reader.execute("SELECT count(*) FROM customer_features").fetchone()[0]
    snap2 = build_snapshot(hand_validated, store, small_fs, cutoffs=["2024-03-01"])
    online.materialize(snap2)
    # the open reader still sees a complete (old) table; a new lookup sees the new one
    assert reader.execute("SELECT count(*) FROM customer_features").fetchone()[0] == before == 3
    assert len(online.get(["A", "B", "C"])) == 2


def test_online_store_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="custops features materialize"):
        OnlineStore(tmp_path / "none.sqlite").get(["A"])


def test_describe_lists_features_with_stats(hand_validated: Path, store: OfflineStore, small_fs) -> None:
    snap = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)
    desc = snap.describe()
    assert desc.attrs["cutoff"] == "2024-04-01"
    assert desc.loc["revenue_total", "mean"] == pytest.approx((65 + 8 + 12) / 3)
    assert desc.loc["revenue_total", "view"] == "customer_lifetime_transactions"
    assert desc.loc["country", "null_pct"] == pytest.approx(100 / 3, rel=1e-3)
    assert desc.loc["label_churn_90d", "description"].startswith("1 if")


# ---------------------------------------------------------------- filtered, sampled reads (training at scale)


@pytest.fixture
def big_snapshot(store: OfflineStore):
    """3 cutoffs x 1,000 customers in shuffled order and many row groups; label missing for one in five."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame(
        {
            "customer_id": [f"C{i % 1000:04d}" for i in range(n)],
            "cutoff": pd.to_datetime(np.repeat(["2024-01-01", "2024-02-01", "2024-03-01"], 1000)),
            "n_orders": rng.integers(0, 3, n),
            "x": rng.normal(size=n),
            "label": np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 2, n)),
        }
    ).sample(frac=1.0, random_state=1)

    def write(path: Path) -> None:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=256)

    snap = store.write("fs-20240101T000000-0123abcd", write, {"cutoffs": ["2024-01-01", "2024-02-01", "2024-03-01"]})
    return snap, df


def test_filtered_read_matches_pandas_and_counts(big_snapshot) -> None:
    import pyarrow.compute as pc

    snap, df = big_snapshot
    where = pc.field("label").is_valid() & (pc.field("n_orders") > 0)
    expected = df[df["label"].notna() & (df["n_orders"] > 0)]
    counts = snap.count_rows(where)
    assert counts == {pd.Timestamp(c): n for c, n in expected.groupby("cutoff").size().items()}
    got = snap.read(["customer_id", "cutoff", "x"], cutoffs=["2024-02-01"], where=where)
    want = expected[expected["cutoff"] == "2024-02-01"].sort_values("customer_id")[["customer_id", "cutoff", "x"]]
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))


def test_sampled_read_caps_each_cutoff_reproducibly(big_snapshot) -> None:
    import pyarrow.compute as pc

    snap, df = big_snapshot
    where = pc.field("label").is_valid()
    sample = {"2024-01-01": 100, "2024-02-01": 250}  # 2024-03-01 not listed: read in full
    a = snap.read(["customer_id", "cutoff", "label"], where=where, sample=sample, seed=7)
    per_cutoff = a.groupby("cutoff").size()
    assert per_cutoff[pd.Timestamp("2024-01-01")] == 100 and per_cutoff[pd.Timestamp("2024-02-01")] == 250
    assert per_cutoff[pd.Timestamp("2024-03-01")] == snap.count_rows(where)[pd.Timestamp("2024-03-01")]
    assert a["label"].notna().all() and not a.duplicated(["customer_id", "cutoff"]).any()
    pd.testing.assert_frame_equal(a, snap.read(["customer_id", "cutoff", "label"], where=where, sample=sample, seed=7))
    other = snap.read(["customer_id", "cutoff", "label"], where=where, sample=sample, seed=8)
    first = a["customer_id"][a["cutoff"] == "2024-01-01"]
    assert set(other["customer_id"][other["cutoff"] == "2024-01-01"]) != set(first)
    # a cutoff's sample does not depend on the other cutoffs' caps
    alone = snap.read(["customer_id"], cutoffs=["2024-01-01"], where=where, sample={"2024-01-01": 100}, seed=7)
    assert alone["customer_id"].tolist() == first.tolist()
    # no row matches: an empty frame with the asked columns
    none = snap.read(["customer_id", "x"], where=pc.field("n_orders") > 5)
    assert none.empty and list(none.columns) == ["customer_id", "x"]
