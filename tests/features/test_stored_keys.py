"""Customer keys stored by ingest: the engine reads them, and builds what it builds numbering the ids itself."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from custops.data.ingest import ingest
from custops.data.schema import CUSTOMER_KEY, INGEST_RUN_METADATA
from custops.data.synthetic import SyntheticConfig, generate
from custops.features import engine, native
from custops.features.builder import build_snapshot, keys_from_one_ingest, validated_files
from custops.features.store import OfflineStore
from custops.settings import FeatureSettings, Settings
from tests.features.test_prefix import assert_same

TABLES = ("transactions", "interactions", "customers", "products")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset through ingest: its validated layer."""
    root = tmp_path_factory.mktemp("keys")
    generate(SyntheticConfig(n_customers=300, seed=11, file_format="parquet"), root / "raw")
    settings = Settings(home=root / "home", as_of=dt.datetime(2026, 1, 1))
    ingest({t: root / "raw" / f"{t}.parquet" for t in TABLES}, settings)
    return settings.validated_dir


def test_ingest_numbers_customers_and_sorts_events_by_key_and_time(ingested: Path) -> None:
    customers = pq.read_table(ingested / "customers.parquet").to_pandas()
    assert customers["customer_id"].is_monotonic_increasing and customers["customer_id"].is_unique
    assert np.array_equal(customers[CUSTOMER_KEY], np.arange(len(customers)))
    position = pd.Series(np.arange(len(customers)), index=customers["customer_id"].astype(object))
    runs = set()
    for table in ("transactions", "interactions", "customers"):
        found = pq.read_table(ingested / f"{table}.parquet")
        runs.add(found.schema.metadata[INGEST_RUN_METADATA])
        if table == "customers":
            continue
        events = found.to_pandas()
        assert len(events) > 100
        assert np.array_equal(events[CUSTOMER_KEY], position.loc[events["customer_id"].astype(object)].to_numpy())
        order = events[[CUSTOMER_KEY, "timestamp"]]
        assert order.equals(order.sort_values([CUSTOMER_KEY, "timestamp"]).reset_index(drop=True))
    assert len(runs) == 1
    assert keys_from_one_ingest(validated_files(ingested))


def _rewrite(
    source: Path, target: Path, *, drop_keys: bool = False, run: bytes | None = None, shuffle: bool = False
) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        found = pq.read_table(source / f"{table}.parquet")
        if shuffle and table in ("transactions", "interactions"):  # keys and run kept, ingest's order lost
            found = found.take(np.random.default_rng(3).permutation(found.num_rows))
        if drop_keys and CUSTOMER_KEY in found.column_names:
            found = found.drop_columns([CUSTOMER_KEY])
        if run is not None and table == "customers":
            found = found.replace_schema_metadata({**found.schema.metadata, INGEST_RUN_METADATA: run})
        pq.write_table(found, target / f"{table}.parquet")
    return target


def test_stored_keys_build_the_snapshot_the_joined_ids_build(
    ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FeatureSettings(n_cutoffs=4)
    used: list[str] = []
    for name in ("_stored_keys", "_integer_keys"):
        real = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _real=real, _name=name, **k: used.append(_name) or _real(*a, **k))
    # batch_rows: 300 customers, a few cutoffs per batch (the replayed path)
    stored = build_snapshot(ingested, OfflineStore(tmp_path / "stored"), fs, batch_rows=700)
    assert used == ["_stored_keys"]

    used.clear()
    plain = _rewrite(ingested, tmp_path / "plain", drop_keys=True)
    assert not keys_from_one_ingest(validated_files(plain))
    joined = build_snapshot(plain, OfflineStore(tmp_path / "joined"), fs, batch_rows=700)
    assert used == ["_integer_keys"]

    used.clear()  # keys from two ingest runs (a layer replaced file by file): not trusted
    mixed = _rewrite(ingested, tmp_path / "mixed", run=b"another-run")
    assert not keys_from_one_ingest(validated_files(mixed))
    build_snapshot(mixed, OfflineStore(tmp_path / "mixed-store"), fs, batch_rows=700)
    assert used == ["_integer_keys"]

    # Rows as written: by cutoff, then the customers who had bought before it, then the others, each
    # part in customer order (the ids' order is the keys' order): a buyer's NULL columns form one run.
    written = pq.read_table(stored.features_path).to_pandas()
    bought = written["n_orders"] > 0
    assert bought.any() and (~bought).any()
    order = pd.DataFrame({"cutoff": written["cutoff"], "other": ~bought, "id": written["customer_id"]})
    assert order.equals(order.sort_values(["cutoff", "other", "id"]))
    assert written["last_purchase_at"].isna().equals(~bought)

    key = ["customer_id", "cutoff"]
    a = stored.read().sort_values(key).reset_index(drop=True)
    b = joined.read().sort_values(key).reset_index(drop=True)
    assert len(a) > 300
    assert_same(a, b)


def test_grains_in_ingest_order_are_not_sorted_again_and_any_other_order_is(
    ingested: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Grains that project the sorted events skip the engine's sort; rows in another order (keys of
    one run, but the files rewritten in any order) are detected and sorted, with the same snapshot."""
    from custops.features import prefix

    fs = FeatureSettings(n_cutoffs=4)
    calls: list[tuple[str, bool]] = []
    real = prefix._running
    monkeypatch.setattr(
        prefix,
        "_running",
        lambda plan, con, presorted=False, **kw: (
            calls.append((plan.source, presorted)) or real(plan, con, presorted, **kw)
        ),
    )
    built: list[tuple[str, bool]] = []  # grains computed from the sorted events, or left to SQL
    real_grains = native.grains

    class Recorded:
        def __init__(self, source: str, grain: native.NativeGrain) -> None:
            self.source, self.grain = source, grain

        def __call__(self, con: object) -> object:
            built.append((self.source, (out := self.grain(con)) is not None))
            return out

    def grains(*args: object) -> dict[str, object]:
        return {source: Recorded(source, grain) for source, grain in real_grains(*args).items()}

    monkeypatch.setattr(native, "grains", grains)
    sorted_build = build_snapshot(ingested, OfflineStore(tmp_path / "sorted"), fs, batch_rows=700)
    natives = {"order_events", "first_purchases", "activity_days"}
    assert sorted(built) == sorted((s, True) for s in natives)  # once each: the totals serve every batch
    skipped = {source for source, presorted in calls if presorted}
    # projections and filters of the events; aggregated grains (orders, first purchases, days) are sorted
    assert skipped == {"interaction_events", "refund_events", "category_lines"}
    assert not [r for r in caplog.records if "not in (customer, time) order" in r.getMessage()]

    calls.clear()
    shuffled = _rewrite(ingested, tmp_path / "shuffled", shuffle=True)
    assert keys_from_one_ingest(validated_files(shuffled))
    with caplog.at_level("WARNING", logger="custops.features.prefix"):
        rebuilt = build_snapshot(shuffled, OfflineStore(tmp_path / "shuffled-store"), fs, batch_rows=700)
    assert sorted(built[3:]) == sorted((s, False) for s in natives)  # shuffled: the SQL grains, which sort
    warned = {r.getMessage().split(":")[0] for r in caplog.records if "not in (customer, time) order" in r.getMessage()}
    assert warned == skipped  # each presorted grain was checked, found out of order and sorted
    assert ("interaction_events", False) in calls  # ... by the sorting path

    key = ["customer_id", "cutoff"]
    assert_same(
        sorted_build.read().sort_values(key).reset_index(drop=True),
        rebuilt.read().sort_values(key).reset_index(drop=True),
    )
