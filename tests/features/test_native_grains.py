"""Grains computed in one pass over ingest-sorted events equal the grains' SQL definitions."""

from __future__ import annotations

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from custops.features import engine, native

SOURCES = ("order_events", "first_purchases", "activity_days")
START = pd.Timestamp("2023-12-30 22:00")


def _instants(rng: np.random.Generator, k: int) -> pd.DatetimeIndex:
    """Few distinct instants 20 minutes apart over six days: many ties, several per day, midnights."""
    return START + pd.to_timedelta(np.sort(rng.integers(0, 6 * 24 * 3, size=max(1, k // 2))) * 20, unit="min")


def _lines(rng: np.random.Generator, n_customers: int, per_customer: int) -> pd.DataFrame:
    """Purchase and refund lines sorted by (customer, time) as ingest writes them: several orders at
    one instant, an order's lines at several instants and days, order ids, products and categories
    reused within a customer (products and categories sometimes NULL), customers with few lines and
    with many."""
    rows = []
    for c in range(n_customers):
        k = int(rng.integers(1, per_customer * (4 if c % 3 == 0 else 1) + 1))
        instants = _instants(rng, k)
        for _ in range(k):
            rows.append(
                {
                    "customer_id": c,
                    "timestamp": instants[int(rng.integers(0, len(instants)))],
                    "order_id": f"o{c}-{int(rng.integers(0, max(2, k // 3)))}",
                    "product_id": None if rng.random() < 0.1 else f"p{int(rng.integers(0, 12))}",
                    "category": None if rng.random() < 0.1 else ["toys", "home", "books"][int(rng.integers(0, 3))],
                    "amount": float(rng.integers(1, 5000)) / 100,
                    "quantity": float(rng.integers(1, 4)),
                    "status": "purchase" if rng.random() < 0.9 else "refund",
                }
            )
    return pd.DataFrame(rows).sort_values(["customer_id", "timestamp"], kind="stable").reset_index(drop=True)


def _interactions(rng: np.random.Generator, n_customers: int, per_customer: int) -> pd.DataFrame:
    rows = []
    for c in range(n_customers):
        k = int(rng.integers(1, per_customer + 1))
        instants = _instants(rng, k)
        for _ in range(k):
            kind = ["view", "login", "click", None][int(rng.integers(0, 4))]
            rows.append(
                {"customer_id": c, "timestamp": instants[int(rng.integers(0, len(instants)))], "event_type": kind}
            )
    return pd.DataFrame(rows).sort_values(["customer_id", "timestamp"], kind="stable").reset_index(drop=True)


def _rows(table: object) -> pd.DataFrame:
    frame = table.to_pandas()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_grains_equal_the_sql_grains(seed: int) -> None:
    rng = np.random.default_rng(seed)
    con = ibis.duckdb.connect()
    tx = con.create_table("tx", _lines(rng, n_customers=60, per_customer=30))
    ix = con.create_table("ix", _interactions(rng, n_customers=60, per_customer=40))
    builders = native.grains(engine._purchases(tx), ix, SOURCES)
    assert set(builders) == set(SOURCES)
    for source in SOURCES:
        got = builders[source](con)
        assert got is not None, source
        want = engine.GRAINS[source][1](ix if source == "activity_days" else tx).to_pyarrow()
        assert got.schema.names == want.schema.names, source
        a, b = _rows(got), _rows(want)
        assert len(a) == len(b) > 200, source
        for col in a.columns:
            if pd.api.types.is_float_dtype(b[col]):
                assert a[col].isna().equals(b[col].isna()), (source, col)
                assert np.allclose(a[col].fillna(0), b[col].fillna(0), rtol=1e-12), (source, col)
            else:
                assert a[col].equals(b[col]), (source, col)
        if source == "order_events":  # the cases the kernel has to tell apart were generated
            assert (b.groupby(["customer_id", "timestamp"]).size() > 1).any()  # orders sharing an instant
            assert (b.groupby(["customer_id", "order_id"]).size() > 1).any()  # an order at several instants
            assert (b.groupby("customer_id").size() > 16).any()  # order starts found by sorting hashes
        if source == "activity_days":
            assert b["last_login_ts"].isna().any() and b["last_login_ts"].notna().any()


def test_native_grains_leave_events_out_of_order_to_sql() -> None:
    rng = np.random.default_rng(5)
    con = ibis.duckdb.connect()
    lines = _lines(rng, n_customers=5, per_customer=10)
    shuffled = con.create_table("shuffled", lines.sample(frac=1.0, random_state=1).reset_index(drop=True))
    for tx, built in ((con.create_table("sorted", lines), True), (shuffled, False)):
        builders = native.grains(engine._purchases(tx), None, SOURCES)
        assert set(builders) == {"order_events", "first_purchases"}  # no interactions: no activity days
        assert [(builders[s](con) is not None) for s in builders] == [built, built]


def test_native_first_seen_equals_the_grouped_minimum() -> None:
    rng = np.random.default_rng(7)
    con = ibis.duckdb.connect()
    lines = _lines(rng, n_customers=40, per_customer=10)
    tx = con.create_table("tx", lines[lines["customer_id"] % 5 != 1])  # some customers only interact
    ix = con.create_table("ix", _interactions(rng, n_customers=45, per_customer=10).query("customer_id % 4 != 2"))
    got = native.first_seen(con, engine._seen_parts(tx, ix))
    seen = engine._seen_events(tx, ix)
    want = seen.group_by("customer_id").aggregate(
        first_seen_at=seen.timestamp.min(), buyer_from=seen.timestamp.min(where=seen.purchase)
    )
    got, want = _rows(got), _rows(want.to_pyarrow())
    assert got.equals(want)
    # The data has customers whose first line is a refund, and customers who never bought.
    assert (got["buyer_from"] > got["first_seen_at"]).any() and got["buyer_from"].isna().any()
    shuffled = con.create_table("shuffled", lines.sample(frac=1.0, random_state=2))
    assert native.first_seen(con, engine._seen_parts(shuffled, ix)) is None


def test_native_spine_has_the_sql_spines_rows_buyers_first() -> None:
    rng = np.random.default_rng(5)
    con = ibis.duckdb.connect()
    n = 60
    day = pd.Timestamp("2024-01-01")

    def times(p_null: float) -> list[pd.Timestamp | None]:
        hours = rng.integers(0, 24 * 90, n)
        return [None if rng.random() < p_null else day + pd.Timedelta(hours=int(h)) for h in hours]

    customers = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "signup_at": times(0.3),
            "country": rng.choice(["DE", "FR", None], n),
            "acquisition_channel": rng.choice(["ads", "seo"], n),
            "first_seen_at": times(0.2),
            "buyer_from": times(0.4),
        }
    )
    for c in ("signup_at", "first_seen_at", "buyer_from"):
        customers[c] = pd.to_datetime(customers[c]).astype("datetime64[us]")
    table = con.create_table("customers", customers)
    table = table.mutate(exists_from=ibis.least(table.signup_at, table.first_seen_at))
    cutoffs = [day, day + pd.Timedelta(days=30), day + pd.Timedelta(days=61, hours=5)]  # the first: nobody yet
    cut = ibis.memtable(pd.DataFrame({"cutoff": pd.to_datetime(cutoffs).astype("datetime64[us]")}))
    until = pd.Timestamp("2024-05-01")
    sql = engine._spine(table, cut, until)
    rows = con.to_pyarrow(table.order_by("customer_id"))
    got = native.spine(rows, cutoffs, until, sql.schema().to_pyarrow())
    assert got.schema == sql.schema().to_pyarrow()
    # Customers' times in another unit are compared as the same instants.
    ms = [f.with_type(pa.timestamp("ms")) if f.type == pa.timestamp("us") else f for f in rows.schema]
    in_ms = rows.cast(pa.schema(ms))
    assert native.spine(in_ms, cutoffs, until, sql.schema().to_pyarrow()).equals(got)
    want = sql.to_pyarrow().to_pandas()
    want["other"] = ~(want["buyer_from"] < want["cutoff"])  # NULL: not a buyer
    want = want.sort_values(["cutoff", "other", "customer_id"]).drop(columns="other").reset_index(drop=True)
    got = got.to_pandas()
    assert len(got) > n and got["buyer_from"].isna().any() and (got["buyer_from"] >= got["cutoff"]).any()
    pd.testing.assert_frame_equal(got, want)
