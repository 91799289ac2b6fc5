"""Hand-computed expected features for a small fixture: every feature family is covered."""

from __future__ import annotations

import math
from pathlib import Path

import ibis
import pandas as pd
import pytest

from custops.errors import ConfigError
from custops.features.definitions import build_registry
from custops.features.engine import build_expression, default_cutoffs, normalize_cutoffs, top_categories
from custops.settings import FeatureSettings
from tests.conftest import CUSTOMERS, CUTOFFS, IX, OBSERVED_UNTIL, TX, write_validated


def compute(validated: Path, cutoffs: list[str], fs: FeatureSettings, observed_until: pd.Timestamp) -> pd.DataFrame:
    con = ibis.duckdb.connect()
    tables = {
        t: con.read_parquet(str(validated / f"{t}.parquet"), table_name=t)
        for t in ("transactions", "interactions", "customers")
    }
    registry = build_registry(fs, top_categories(tables["transactions"], fs.top_categories))
    expr = build_expression(tables, normalize_cutoffs(cutoffs), registry, observed_until=observed_until)
    df = expr.to_pandas()
    df["cutoff"] = df["cutoff"].dt.strftime("%Y-%m-%d")
    return df.set_index(["customer_id", "cutoff"]).sort_index()


@pytest.fixture
def features(hand_validated: Path, small_fs: FeatureSettings) -> pd.DataFrame:
    return compute(hand_validated, CUTOFFS, small_fs, OBSERVED_UNTIL)


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


EXPECTED = {
    ("A", "2024-03-01"): dict(
        # RFM / transactions (o3 on 03-10 is after the cutoff and must not count)
        n_orders=2,
        n_purchase_days=2,
        n_lines=3,
        total_quantity=4.0,
        revenue_total=35.0,
        max_order_value=20.0,
        first_purchase_at=ts("2024-01-10 10:00"),
        last_purchase_at=ts("2024-02-15 12:00"),
        recency_days=14.5,
        customer_age_days=50 + 14 / 24,
        frequency_btyd=1,
        avg_order_value=17.5,
        basket_size=1.5,
        ipt_mean_days=36.0,
        ipt_std_days=0.0,
        btyd_recency_days=36.0,
        btyd_age_days=51.0,
        btyd_monetary=20.0,
        revenue_first_day=15.0,
        orders_30d=1,
        revenue_30d=20.0,
        orders_90d=2,
        revenue_90d=35.0,
        orders_trend_30_90=1.5,
        revenue_trend_30_90=20 * 3 / 35,
        # refunds and assortment
        n_refunds=1,
        refund_amount_total=5.0,
        refund_rate=1 / 3,
        distinct_products=2,
        distinct_categories=2,
        # engagement (the support ticket on 03-15 is after the cutoff)
        view_30d=0,
        view_90d=1,
        login_30d=1,
        email_sent_30d=1,
        email_open_30d=1,
        support_ticket_30d=0,
        support_ticket_90d=0,
        interactions_30d=3,
        interactions_90d=4,
        active_days=4,
        last_interaction_at=ts("2024-02-25 08:00"),
        days_since_last_interaction=4 + 16 / 24,
        days_since_last_login=4 + 16 / 24,
        email_open_rate_90d=1.0,
        email_click_rate_90d=0.0,
        engagement_trend_30_90=3 * 3 / 4,
        # profile
        country="DE",
        acquisition_channel="organic",
        tenure_days=60.0,
        # segments: the only buyer at this cutoff
        r_score=5,
        f_score=5,
        m_score=5,
        rfm_segment="Champions",
        value_tier="bronze",
        lifecycle_stage="new",
        # labels: o3 within 30 and 90 days; value horizon (365d) is not observed -> NULL
        label_churn_90d=0,
        label_purchase_30d=1,
        label_purchase_30d_cat_x=1,
        label_purchase_30d_cat_y=0,
        label_value_365d=None,
        label_purchase_days_365d=None,
    ),
    ("B", "2024-03-01"): dict(
        n_orders=0,
        revenue_total=0.0,
        recency_days=None,
        frequency_btyd=0,
        ipt_mean_days=None,
        ipt_std_days=None,  # no gap between purchase days: no spread either (not 0)
        view_30d=1,
        interactions_30d=1,
        tenure_days=10.0,
        country="FR",
        r_score=None,
        rfm_segment="Prospect",
        value_tier="none",
        lifecycle_stage="prospect",
        label_churn_90d=None,
        label_purchase_30d=1,
        label_purchase_30d_cat_y=1,
        label_purchase_30d_cat_x=0,
    ),
    ("A", "2024-04-01"): dict(
        n_orders=3,
        revenue_total=65.0,
        recency_days=22.0,
        orders_30d=1,
        orders_90d=3,
        revenue_90d=65.0,
        support_ticket_30d=1,
        ipt_mean_days=(36 + 24) / 2,
        ipt_std_days=6.0,
        r_score=4,
        f_score=5,
        m_score=5,
        rfm_segment="Loyal Customers",
        value_tier="platinum",
        lifecycle_stage="loyal",
        label_churn_90d=1,
        label_purchase_30d=0,
    ),
    ("B", "2024-04-01"): dict(
        n_orders=1,
        recency_days=11 + 9 / 24,
        r_score=5,
        f_score=4,
        m_score=2,
        rfm_segment="Champions",
        value_tier="bronze",
        lifecycle_stage="new",
        label_churn_90d=1,
    ),
    ("C", "2024-04-01"): dict(
        n_orders=1,
        recency_days=27.0,
        tenure_days=27.0,
        country=None,
        r_score=2,
        f_score=4,
        m_score=4,
        rfm_segment="At Risk",
        value_tier="silver",
        lifecycle_stage="new",
    ),
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_hand_computed_features(features: pd.DataFrame, key: tuple[str, str]) -> None:
    row = features.loc[key]
    mismatches = {}
    for name, want in EXPECTED[key].items():
        got = row[name]
        if want is None:
            ok = got is None or pd.isna(got)
        elif isinstance(want, float):
            ok = got is not None and not pd.isna(got) and math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
        else:
            ok = got == want
        if not ok:
            mismatches[name] = (want, got)
    assert not mismatches, f"{key}: (expected, got) = {mismatches}"


def test_population_only_customers_that_exist_before_the_cutoff(features: pd.DataFrame) -> None:
    # C is first seen on 03-05, D signs up on 05-01: neither exists at 2024-03-01; D never does.
    assert sorted(features.index) == [
        ("A", "2024-03-01"),
        ("A", "2024-04-01"),
        ("B", "2024-03-01"),
        ("B", "2024-04-01"),
        ("C", "2024-04-01"),
    ]


def test_events_of_ids_missing_from_customers_change_nothing(
    tmp_path: Path, features: pd.DataFrame, small_fs: FeatureSettings
) -> None:
    """The integer keys number the customers table's ids only: events of another id (a validated
    layer not made by ingest, which adds them) are left out, and no output row changes."""
    stray_tx = [
        dict(customer_id="Z", timestamp="2024-02-01 09:00", amount=99.0, order_id="z1", product_id="p1"),
        dict(customer_id="Z", timestamp="2024-03-20 09:00", amount=12.0, order_id="z2"),
    ]
    stray_ix = [dict(customer_id="Z", timestamp="2024-02-02 00:00", event_type="login")]
    validated = write_validated(
        tmp_path / "stray",
        [dict(r) for r in TX + stray_tx],
        [dict(r) for r in IX + stray_ix],
        [dict(r) for r in CUSTOMERS],
    )
    with_stray = compute(validated, CUTOFFS, small_fs, OBSERVED_UNTIL)
    assert "Z" not in with_stray.index.get_level_values("customer_id")
    pd.testing.assert_frame_equal(with_stray, features)


def test_labels_null_where_the_window_is_not_observed(hand_validated: Path, small_fs: FeatureSettings) -> None:
    # Data observed until 2024-04-15: the 30-day window after 2024-04-01 is incomplete.
    df = compute(hand_validated, CUTOFFS, small_fs, pd.Timestamp("2024-04-15"))
    assert df.loc[("A", "2024-04-01"), "label_purchase_30d"] is None or pd.isna(
        df.loc[("A", "2024-04-01"), "label_purchase_30d"]
    )
    assert df.loc[("A", "2024-03-01"), "label_purchase_30d"] == 1


def test_cutoffs_validated() -> None:
    with pytest.raises(ConfigError, match="time of day"):
        normalize_cutoffs(["2024-03-01 12:00"])
    with pytest.raises(ConfigError, match="not a date"):
        normalize_cutoffs(["March"])
    with pytest.raises(ConfigError, match="no cutoffs"):
        normalize_cutoffs([])
    assert normalize_cutoffs(["2024-04-01", "2024-03-01", "2024-04-01"]) == [ts("2024-03-01"), ts("2024-04-01")]


def test_default_cutoffs_are_month_starts_ending_after_the_data() -> None:
    cuts = default_cutoffs(ts("2025-12-31 18:00"), 3)
    assert cuts == [ts("2025-11-01"), ts("2025-12-01"), ts("2026-01-01")]
