"""Grains computed in one pass over ingest-sorted events equal the grains' SQL definitions."""

from __future__ import annotations

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from custops.features import engine

DAY = pd.Timedelta(days=1)


def _lines(rng: np.random.Generator, n_customers: int, per_customer: int) -> pd.DataFrame:
    """Purchase and refund lines, sorted by (customer, time) as ingest writes them: timestamps with
    many ties (several orders at one instant, lines of an order at several instants and days), order
    ids reused within a customer, and customers with few and with many events."""
    start = pd.Timestamp("2023-12-30 22:00")
    rows = []
    for c in range(n_customers):
        k = int(rng.integers(1, per_customer * (4 if c % 3 == 0 else 1) + 1))
        instants = start + pd.to_timedelta(np.sort(rng.integers(0, 6 * 24 * 3, size=max(1, k // 2))) * 20, unit="min")
        for _ in range(k):
            rows.append(
                {
                    "customer_id": c,
                    "timestamp": instants[int(rng.integers(0, len(instants)))],
                    "order_id": f"o{c}-{int(rng.integers(0, max(2, k // 3)))}",
                    "amount": float(rng.integers(1, 5000)) / 100,
                    "quantity": float(rng.integers(1, 4)),
                    "status": "purchase" if rng.random() < 0.9 else "refund",
                }
            )
    frame = pd.DataFrame(rows)
    return frame.sort_values(["customer_id", "timestamp"], kind="stable").reset_index(drop=True)


def _by_event(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().sort_values(["customer_id", "timestamp", "order_id"]).reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_order_events_equal_the_sql_grain(seed: int) -> None:
    con = ibis.duckdb.connect()
    tx = con.create_table("tx", _lines(np.random.default_rng(seed), n_customers=60, per_customer=30))
    native = engine.sorted_order_events(tx, con)
    assert native is not None
    sql = engine.order_events(tx).to_pyarrow()
    assert native.schema.names == sql.schema.names
    a, b = _by_event(native), _by_event(sql)
    assert len(a) == len(b) > 500
    # the cases the kernel has to tell apart were generated
    assert (b.groupby(["customer_id", "timestamp"]).size() > 1).any()  # several orders at one instant
    assert (b.groupby(["customer_id", "order_id"]).size() > 1).any()  # an order at several instants
    assert (b.groupby("customer_id").size() > 16).any()  # customers whose order starts are sorted by hash
    for col in a.columns:
        if pd.api.types.is_float_dtype(b[col]):
            assert a[col].isna().equals(b[col].isna()), col
            assert np.allclose(a[col].fillna(0), b[col].fillna(0), rtol=1e-12), col
        else:
            assert a[col].equals(b[col]), col


def test_sorted_order_events_leave_lines_out_of_order_to_sql() -> None:
    con = ibis.duckdb.connect()
    lines = _lines(np.random.default_rng(5), n_customers=5, per_customer=10)
    shuffled = lines.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert engine.sorted_order_events(con.create_table("sorted", lines), con) is not None
    assert engine.sorted_order_events(con.create_table("shuffled", shuffled), con) is None
