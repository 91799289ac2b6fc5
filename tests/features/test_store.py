"""Offline snapshots (atomic, versioned, with lineage) and the online store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from custops.errors import StoreError
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


def test_crashed_build_leaves_previous_snapshot_intact(
    hand_validated: Path, store: OfflineStore, small_fs: FeatureSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_snapshot(hand_validated, store, small_fs, cutoffs=CUTOFFS)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    import ibis.backends.duckdb as duck

    monkeypatch.setattr(duck.Backend, "to_parquet", boom)
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
