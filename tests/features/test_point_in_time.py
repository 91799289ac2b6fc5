"""Point-in-time correctness, property-based: events at or after a cutoff never change its features,
and labels are exactly what happens in [cutoff, cutoff + horizon).

These run DuckDB's default plan, the prefix plan (running totals and as-of lookups; see
`tests/features/test_prefix.py::test_plan_choice`), on random data: events exactly at the cutoff,
several events in one second, customers with no events."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custops.data.schema import EVENT_TYPES
from custops.features.definitions import build_registry
from custops.settings import FeatureSettings
from tests.conftest import write_validated
from tests.features.test_engine import compute

CUTOFF = pd.Timestamp("2024-04-01")
FS = FeatureSettings(
    windows_days=(30, 90),
    engagement_windows_days=(7, 30),
    churn_horizon_days=30,
    value_horizon_days=60,
    propensity_horizon_days=14,
    top_categories=2,
)
OBSERVED = pd.Timestamp("2024-09-01")
CUSTOMER_IDS = ["a", "b", "c", "d"]

minutes = st.integers(min_value=0, max_value=60 * 24 * 90)  # offsets within ~3 months


@st.composite
def tx_rows(draw: st.DrawFn, start: pd.Timestamp, ids: list[str]) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        rows.append(
            dict(
                customer_id=draw(st.sampled_from(ids)),
                timestamp=start + pd.Timedelta(minutes=draw(minutes)),
                amount=float(draw(st.integers(1, 500))) / 4,
                order_id=f"o{draw(st.integers(0, 15))}",
                product_id=draw(st.sampled_from(["p1", "p2", "p3", None])),
                category=draw(st.sampled_from(["x", "y", None])),
                quantity=float(draw(st.integers(1, 3))),
                status=draw(st.sampled_from(["purchase", "purchase", "purchase", "refund"])),
            )
        )
    return rows


@st.composite
def ix_rows(draw: st.DrawFn, start: pd.Timestamp, ids: list[str]) -> list[dict]:
    return [
        dict(
            customer_id=draw(st.sampled_from(ids)),
            timestamp=start + pd.Timedelta(minutes=draw(minutes)),
            event_type=draw(st.sampled_from(EVENT_TYPES)),
        )
        for _ in range(draw(st.integers(0, 12)))
    ]


def customers(extra: list[str] = ()) -> list[dict]:
    rows = [dict(customer_id=c, signup_at="2023-12-15") for c in CUSTOMER_IDS]
    return rows + [dict(customer_id=c, signup_at=str(CUTOFF.date())) for c in extra]


def build(tx: list[dict], ix: list[dict], extra_customers: list[str] = ()) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        v = write_validated(Path(d), [dict(r) for r in tx], [dict(r) for r in ix], customers(list(extra_customers)))
        return compute(v, [str(CUTOFF.date())], FS, OBSERVED)


def assert_frames_equal(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> None:
    assert list(a.index) == list(b.index)
    for col in columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x) or pd.api.types.is_float_dtype(y):
            np.testing.assert_allclose(x.astype(float), y.astype(float), rtol=1e-9, atol=1e-9, err_msg=col)
        else:
            assert x.fillna("<NA>").tolist() == y.fillna("<NA>").tolist(), col


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base_tx=tx_rows(pd.Timestamp("2024-01-10"), CUSTOMER_IDS),
    base_ix=ix_rows(pd.Timestamp("2024-01-10"), CUSTOMER_IDS),
    late_tx=tx_rows(CUTOFF, CUSTOMER_IDS + ["new1"]),
    late_ix=ix_rows(CUTOFF, CUSTOMER_IDS + ["new2"]),
)
def test_events_at_or_after_cutoff_change_no_feature(base_tx, base_ix, late_tx, late_ix) -> None:
    before = build(base_tx, base_ix)
    after = build(base_tx + late_tx, base_ix + late_ix, extra_customers=["new1", "new2"])
    registry = build_registry(FS, ["x", "y"])
    features = [f for f in registry.feature_names if f in before.columns]
    assert_frames_equal(before, after, features)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base_tx=tx_rows(pd.Timestamp("2024-01-10"), CUSTOMER_IDS),
    late_tx=tx_rows(CUTOFF - pd.Timedelta(days=10), CUSTOMER_IDS),
)
def test_labels_are_exactly_the_events_in_the_horizon(base_tx, late_tx) -> None:
    tx = base_tx + late_tx
    got = build(tx, [])
    df = pd.DataFrame(tx, columns=["customer_id", "timestamp", "amount", "order_id", "status", "category"])

    def window(days: int) -> pd.DataFrame:
        return df[(df.timestamp >= CUTOFF) & (df.timestamp < CUTOFF + pd.Timedelta(days=days))]

    value, prop = window(FS.value_horizon_days), window(FS.propensity_horizon_days)
    for cid in got.index.get_level_values("customer_id"):
        row = got.loc[(cid, str(CUTOFF.date()))]
        v = value[value.customer_id == cid]
        want_value = v[v.status == "purchase"].amount.sum() - v[v.status == "refund"].amount.sum()
        assert np.isclose(row["label_value_60d"], want_value), cid
        p = prop[(prop.customer_id == cid) & (prop.status == "purchase")]
        # an order whose first line is before the cutoff is not a new purchase after it
        started_before = set(df[(df.customer_id == cid) & (df.timestamp < CUTOFF) & (df.status == "purchase")].order_id)
        want_purchase = int(bool(set(p.order_id) - started_before))
        assert row["label_purchase_14d"] == want_purchase, cid
