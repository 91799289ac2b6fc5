"""A straightforward pandas implementation of every column of the engine's snapshot, and a parity check.

This is the baseline `features_bench.py` measures the feature engine against. It computes every
feature and label column of a `custops.features` snapshot (the 71 features and 4 + one per top
category labels of `build_registry(FeatureSettings(), top_categories)`, plus `customer_id` and
`cutoff`), in the engine's column order, with the
semantics, names and NULL rules declared in `custops.features.definitions` and the default
`FeatureSettings` (windows 30/90/180/365 days, engagement windows 30/90 days, churn horizon 90 days,
value horizon 365 days, propensity horizon 30 days, the 5 top categories, lifecycle thresholds):

- history-level facts are computed once, as the engine's grains are (`custops.features.engine`):
  the order grain (one row per customer, order and timestamp, with order-start, new-purchase-day,
  first-purchase-day and day-gap columns), each customer's first purchase of each product and
  category, interaction days, purchased lines of the top categories, and when each customer was
  first seen;
- then, for each cutoff, events with `timestamp < cutoff` (and `>= cutoff - window` for windowed
  features, `[cutoff, cutoff + horizon)` for labels) are filtered and grouped by customer; derived
  ratios, RFM scores (`Series.rank`, among buyers), segments, value tiers, lifecycle stages and
  labels are computed column-wise on the cutoff's customers.

It is a fair baseline, not a strawman: customer ids are mapped to integer codes once (or read as
the `customer_key` ingest stores, as the engine reads them) and string columns are read
dictionary-encoded, so groupbys run on integers; string outputs are categoricals; labels whose
window is not fully observed (NULL in the engine too) are not computed.

`check_parity` compares its output with an engine snapshot: integers, strings and timestamps
exactly, floats to a relative 1e-9 (absolute 1e-9 near zero), NULL where the engine has NULL, the
same (customer_id, cutoff) population, and no engine column the baseline lacks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

# The constants below repeat custops' declarations so that the baseline stays a standalone pandas
# program: defaults of custops.settings.FeatureSettings, and custops.features.definitions.
KEY = ["customer_id", "cutoff"]
WINDOWS_DAYS = (30, 90, 180, 365)  # FeatureSettings.windows_days
ENGAGEMENT_WINDOWS_DAYS = (30, 90)  # FeatureSettings.engagement_windows_days
CHURN_HORIZON_DAYS = 90  # FeatureSettings.churn_horizon_days
VALUE_HORIZON_DAYS = 365  # FeatureSettings.value_horizon_days
PROPENSITY_HORIZON_DAYS = 30  # FeatureSettings.propensity_horizon_days
TOP_CATEGORIES = 5  # FeatureSettings.top_categories
# Lifecycle-stage rules (FeatureSettings.new_days, at_risk_days, churned_days, loyal_min_orders_365d;
# the loyal window is 365 days when 365 is one of the windows: definitions._segments).
NEW_DAYS, AT_RISK_DAYS, CHURNED_DAYS, LOYAL_MIN_ORDERS, LOYAL_WINDOW_DAYS = 90, 90, 180, 4, 365
# Trend windows (definitions._rfm_derived): the shortest and longest engagement windows, and the
# longest window <= 90 days against the longest window.
TREND_ENGAGEMENT = (min(ENGAGEMENT_WINDOWS_DAYS), max(ENGAGEMENT_WINDOWS_DAYS))
TREND_ORDERS = (max(w for w in WINDOWS_DAYS if w <= 90), max(WINDOWS_DAYS))
# Event types with their own count columns (custops.data.schema.EVENT_TYPES).
EVENT_TYPES = (
    "view",
    "click",
    "add_to_cart",
    "email_sent",
    "email_open",
    "email_click",
    "support_ticket",
    "login",
)
# RF segment map (definitions.RFM_SEGMENTS: (R score range, F score range), first match wins;
# buyers that match none are "Other", customers who never bought "Prospect").
RFM_SEGMENTS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("Champions", (5, 5), (4, 5)),
    ("Loyal Customers", (3, 4), (4, 5)),
    ("Can't Lose Them", (1, 2), (5, 5)),
    ("At Risk", (1, 2), (3, 4)),
    ("Hibernating", (1, 2), (1, 2)),
    ("Potential Loyalists", (4, 5), (2, 3)),
    ("New Customers", (5, 5), (1, 1)),
    ("Promising", (4, 4), (1, 1)),
    ("Need Attention", (3, 3), (3, 3)),
    ("About To Sleep", (3, 3), (1, 2)),
)
# Value tiers by percent rank of revenue in the longest window among buyers (definitions.VALUE_TIERS).
VALUE_TIERS = (("platinum", 0.9), ("gold", 0.7), ("silver", 0.4), ("bronze", 0.0))
# Ranks order floats rounded to 6 decimals, so sums equal up to rounding tie (definitions._rank_key).
RANK_DECIMALS = 6
DAY = pd.Timedelta(days=1)

SEGMENT_NAMES = [name for name, _, _ in RFM_SEGMENTS] + ["Other", "Prospect"]
# Segment code of each (r_score, f_score), index 0 unused: filled in reverse so the first match wins.
SEGMENT_CODE = np.full((6, 6), SEGMENT_NAMES.index("Other"), dtype=np.int8)
for _code, (_, (_r_lo, _r_hi), (_f_lo, _f_hi)) in reversed(list(enumerate(RFM_SEGMENTS))):
    SEGMENT_CODE[_r_lo : _r_hi + 1, _f_lo : _f_hi + 1] = _code
TIER_NAMES = [name for name, _ in VALUE_TIERS] + ["inactive", "none"]
LIFECYCLE_STAGES = ["prospect", "churned", "at-risk", "new", "loyal", "active"]

_E_SHORT, _E_LONG = TREND_ENGAGEMENT
_O_SHORT, _O_LONG = TREND_ORDERS
# Every feature column, in the engine's order (build_registry(...).feature_names).
FEATURE_COLUMNS = (
    "n_orders",
    "n_purchase_days",
    "n_lines",
    "total_quantity",
    "revenue_total",
    "max_order_value",
    "revenue_first_day",
    "first_purchase_at",
    "last_purchase_at",
    "ipt_sum_days",
    "ipt_sumsq_days",
    *(c for w in WINDOWS_DAYS for c in (f"orders_{w}d", f"revenue_{w}d")),
    "n_refunds",
    "refund_amount_total",
    "distinct_products",
    "distinct_categories",
    *(f"{et}_{w}d" for w in ENGAGEMENT_WINDOWS_DAYS for et in (*EVENT_TYPES, "interactions")),
    "last_interaction_at",
    "last_login_at",
    "active_days",
    "country",
    "acquisition_channel",
    "tenure_days",
    "recency_days",
    "customer_age_days",
    "frequency_btyd",
    "btyd_recency_days",
    "btyd_age_days",
    "btyd_monetary",
    "avg_order_value",
    "basket_size",
    "ipt_mean_days",
    "ipt_std_days",
    "refund_rate",
    "days_since_last_interaction",
    "days_since_last_login",
    f"email_open_rate_{_E_LONG}d",
    f"email_click_rate_{_E_LONG}d",
    f"engagement_trend_{_E_SHORT}_{_E_LONG}",
    f"orders_trend_{_O_SHORT}_{_O_LONG}",
    f"revenue_trend_{_O_SHORT}_{_O_LONG}",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "value_tier",
    "lifecycle_stage",
)
CATEGORY_LABEL_PREFIX = f"label_purchase_{PROPENSITY_HORIZON_DAYS}d_cat_"
# Labels, in the engine's order; one `CATEGORY_LABEL_PREFIX + slug(category)` per top category follows.
LABEL_COLUMNS = (
    f"label_churn_{CHURN_HORIZON_DAYS}d",
    f"label_value_{VALUE_HORIZON_DAYS}d",
    f"label_purchase_days_{VALUE_HORIZON_DAYS}d",
    f"label_purchase_{PROPENSITY_HORIZON_DAYS}d",
)

COUNT_COLUMNS = (
    "n_orders",
    "n_purchase_days",
    "n_lines",
    "n_refunds",
    "distinct_products",
    "distinct_categories",
    "active_days",
    *(f"orders_{w}d" for w in WINDOWS_DAYS),
    *(f"{et}_{w}d" for w in ENGAGEMENT_WINDOWS_DAYS for et in (*EVENT_TYPES, "interactions")),
)
# Columns whose customers without source rows get 0.0 (the declared fill), not NULL.
SUM_COLUMNS = (
    "total_quantity",
    "revenue_total",
    "revenue_first_day",
    "ipt_sum_days",
    "ipt_sumsq_days",
    "refund_amount_total",
    *(f"revenue_{w}d" for w in WINDOWS_DAYS),
)
INTEGER_COLUMNS = (
    *COUNT_COLUMNS,
    "frequency_btyd",
    "r_score",
    "f_score",
    "m_score",
    f"label_churn_{CHURN_HORIZON_DAYS}d",
    f"label_purchase_days_{VALUE_HORIZON_DAYS}d",
    f"label_purchase_{PROPENSITY_HORIZON_DAYS}d",
)
TIMESTAMP_COLUMNS = (
    "first_purchase_at",
    "last_purchase_at",
    "last_interaction_at",
    "last_login_at",
)
STRING_COLUMNS = ("country", "acquisition_channel", "rfm_segment", "value_tier", "lifecycle_stage")


def slug(text: str) -> str:
    """Column-safe lower-case name for a category value (definitions.slug)."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "blank"


# ---------------------------------------------------------------- loading


def _read(path: Path, columns: list[str], categorical: list[str]) -> pd.DataFrame:
    return pq.read_table(path, columns=columns, read_dictionary=categorical).to_pandas()


def _codes(ids: pd.Series, customers: pd.Index) -> np.ndarray:
    """Integer code of each customer id (its position in the customers table)."""
    codes = pd.Categorical(ids, categories=customers).codes
    if (codes < 0).any():
        raise ValueError("events reference customer ids missing from customers.parquet")
    return codes.astype(np.int64)


def _stored_keys(validated_dir: Path, n_customers: int) -> bool:
    """Whether one ingest run stored `customer_key` (a customer's position in customers.parquet, what
    `_codes` computes) on every table, as the engine checks before it reads them."""
    customers = validated_dir / "customers.parquet"
    events = [p for p in (validated_dir / "transactions.parquet", validated_dir / "interactions.parquet") if p.exists()]
    schemas = [pq.read_schema(p) for p in (customers, *events)]
    runs = {(s.metadata or {}).get(b"custops.ingest_run") for s in schemas}
    if not all("customer_key" in s.names for s in schemas) or len(runs) != 1 or None in runs:
        return False
    key = pq.read_table(customers, columns=["customer_key"])["customer_key"].to_numpy()
    return bool(np.array_equal(key, np.arange(n_customers)))


@dataclass
class _History:
    """History-level facts, computed once for all cutoffs."""

    customer_ids: pd.Index
    exists_from: pd.Series  # by customer code: least(signup_at, first event)
    country: pd.Categorical  # by customer code
    acquisition_channel: pd.Categorical  # by customer code
    # order grain: cust, timestamp, revenue, lines, quantity, order_start, new_day,
    # revenue_first_day (revenue on the customer's first purchase day, else NaN), gap_days, gap_days_sq
    orders: pd.DataFrame
    refunds: pd.DataFrame  # cust, timestamp, amount
    first_products: pd.DataFrame  # cust, timestamp (first purchase of each product)
    first_categories: pd.DataFrame  # cust, timestamp (first purchase of each category)
    interactions: pd.DataFrame  # cust, timestamp, event_type
    activity_days: pd.DataFrame  # cust, day, last_ts: one row per customer and day with interactions
    logins: pd.DataFrame  # cust, timestamp
    categories: list[str]  # the top categories, most purchased lines first
    category_lines: pd.DataFrame  # cust, timestamp, category (codes into `categories`)


def _top_categories(purchases: pd.DataFrame, n: int) -> list[str]:
    """The `n` categories with the most purchased lines, ties by name (engine.top_categories)."""
    counts = purchases["category"].value_counts()  # NULL categories are not counted
    counts = counts[counts > 0]
    top = pd.DataFrame({"category": counts.index.astype(str), "n": counts.to_numpy()})
    return top.sort_values(["n", "category"], ascending=[False, True])["category"].head(n).tolist()


def _order_grain(purchases: pd.DataFrame) -> pd.DataFrame:
    """engine.order_events: purchases per (customer, order, timestamp), sorted by customer and time."""
    orders = (
        purchases.groupby(["cust", "order_id", "timestamp"], observed=True, sort=False)
        .agg(revenue=("amount", "sum"), lines=("amount", "count"), quantity=("quantity", "sum"))
        .reset_index()
        .sort_values(["cust", "timestamp"], ignore_index=True)
    )
    # An order starts at its first timestamp.
    orders["order_start"] = (~orders.duplicated(["cust", "order_id"])).astype(np.int64)
    # A purchase day is new when the customer's previous purchase was on another day (or none);
    # its gap is the days since that previous purchase day.
    day = orders["timestamp"].dt.floor("D")
    prev_day = day.shift()
    same_customer = orders["cust"].eq(orders["cust"].shift())
    new_day = ~same_customer | (day != prev_day)
    orders["new_day"] = new_day.astype(np.int64)
    orders["gap_days"] = ((day - prev_day) / DAY).where(new_day & same_customer)
    orders["gap_days_sq"] = orders["gap_days"] ** 2
    first_day = day.groupby(orders["cust"]).transform("first")
    orders["revenue_first_day"] = orders["revenue"].where(day == first_day)
    return orders.drop(columns="order_id")


def _load_history(validated_dir: Path) -> _History:
    validated_dir = Path(validated_dir)
    customers = _read(
        validated_dir / "customers.parquet",
        ["customer_id", "signup_at", "country", "acquisition_channel"],
        ["country", "acquisition_channel"],
    )
    ids = pd.Index(customers["customer_id"].astype(object))
    stored = _stored_keys(validated_dir, len(ids))
    # The customer of each event: the key ingest stored, or the id mapped to its code here.
    who = ["customer_key"] if stored else ["customer_id"]

    def customer_codes(frame: pd.DataFrame) -> np.ndarray:
        return frame.pop("customer_key").to_numpy(np.int64) if stored else _codes(frame.pop("customer_id"), ids)

    tx = _read(
        validated_dir / "transactions.parquet",
        [*who, "timestamp", "amount", "order_id", "product_id", "category", "quantity", "status"],
        ["customer_id", "order_id", "product_id", "category", "status"],
    )
    tx["cust"] = customer_codes(tx)
    ix_path = validated_dir / "interactions.parquet"
    if ix_path.exists():
        ix = _read(ix_path, [*who, "timestamp", "event_type"], ["customer_id", "event_type"])
        ix["cust"] = customer_codes(ix)
    else:
        ix = pd.DataFrame(
            {
                "cust": pd.Series(dtype=np.int64),
                "timestamp": pd.Series(dtype="datetime64[us]"),
                "event_type": pd.Series(dtype=object),
            }
        )

    first_seen = pd.concat([tx[["cust", "timestamp"]], ix[["cust", "timestamp"]]]).groupby("cust")["timestamp"].min()
    signup = pd.Series(customers["signup_at"].to_numpy(), index=np.arange(len(ids)))
    exists_from = pd.concat([signup, first_seen.reindex(signup.index)], axis=1).min(axis=1)

    purchases = tx[tx["status"] == "purchase"]

    def first_purchase(col: str) -> pd.DataFrame:
        p = purchases[purchases[col].notna()]
        first = p.groupby(["cust", col], observed=True)["timestamp"].min()
        return first.reset_index()[["cust", "timestamp"]]

    categories = _top_categories(purchases, TOP_CATEGORIES)
    lines = purchases.loc[purchases["category"].isin(categories), ["cust", "timestamp", "category"]]
    lines["category"] = lines["category"].cat.set_categories(categories).cat.codes  # 0..n-1 as in `categories`

    ix_day = ix["timestamp"].dt.floor("D")
    activity = ix.groupby(["cust", ix_day.rename("day")])["timestamp"].max().rename("last_ts").reset_index()
    return _History(
        customer_ids=ids,
        exists_from=exists_from,
        country=pd.Categorical(customers["country"]),
        acquisition_channel=pd.Categorical(customers["acquisition_channel"]),
        orders=_order_grain(purchases),
        refunds=tx.loc[tx["status"] == "refund", ["cust", "timestamp", "amount"]],
        first_products=first_purchase("product_id"),
        first_categories=first_purchase("category"),
        interactions=ix,
        activity_days=activity,
        logins=ix.loc[ix["event_type"] == "login", ["cust", "timestamp"]],
        categories=categories,
        category_lines=lines,
    )


# ---------------------------------------------------------------- features


def _days(later: pd.Timestamp | pd.Series, earlier: pd.Series) -> pd.Series:
    return (later - earlier).dt.total_seconds() / 86400.0


def _ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    """num / den, NULL where den is 0 or NULL (definitions.ratio)."""
    return num / den.where(den != 0)


def _rank_key(values: pd.Series) -> pd.Series:
    """Floats rounded to RANK_DECIMALS as SQL ROUND does (halves away from zero), so that sums equal
    up to rounding error tie; integers as they are (definitions._rank_key)."""
    if values.dtype.kind != "f":
        return values
    scaled = values * 10.0**RANK_DECIMALS
    whole = np.trunc(scaled)
    rounded = whole + np.where(np.abs(scaled - whole) >= 0.5, np.sign(scaled), 0.0)
    return rounded / 10.0**RANK_DECIMALS


def _quintile(values: pd.Series, *, ascending: bool = True) -> pd.Series:
    """1..5 score from the cumulative distribution (ties share a score; definitions._quintile)."""
    cume_dist = _rank_key(values).rank(method="max", ascending=ascending, pct=True)
    return np.ceil(cume_dist * 5).clip(1, 5).astype(np.int64)


def _percent_rank(values: pd.Series) -> pd.Series:
    """(rank - 1) / (rows - 1), 0 for a single row; ties share the lowest rank."""
    rank = _rank_key(values).rank(method="min")
    return (rank - 1) / (len(values) - 1) if len(values) > 1 else rank * 0.0


def _categorical(codes: np.ndarray, names: list[str], index: pd.Index) -> pd.Series:
    return pd.Series(pd.Categorical.from_codes(codes, categories=names), index=index)


def _segments(out: dict[str, pd.Series], spine: pd.Index) -> None:
    """RFM scores, named RF segment, value tier and lifecycle stage (definitions._segments)."""
    is_buyer = (out["n_orders"] > 0).to_numpy()
    r = _quintile(out["recency_days"][is_buyer], ascending=False)
    f = _quintile(out["n_orders"][is_buyer])
    m = _quintile(out["revenue_total"][is_buyer])
    for name, score in (("r_score", r), ("f_score", f), ("m_score", m)):
        out[name] = score.astype("Int64").reindex(spine)

    segment = np.full(len(spine), SEGMENT_NAMES.index("Prospect"), dtype=np.int8)
    segment[is_buyer] = SEGMENT_CODE[r.to_numpy(), f.to_numpy()]
    out["rfm_segment"] = _categorical(segment, SEGMENT_NAMES, spine)

    revenue = out[f"revenue_{max(WINDOWS_DAYS)}d"]
    pct = _percent_rank(revenue[is_buyer]).to_numpy()
    tier = np.full(len(spine), TIER_NAMES.index("none"), dtype=np.int8)
    tier[is_buyer] = np.select([pct >= lo for _, lo in VALUE_TIERS], list(range(len(VALUE_TIERS))), 0)
    tier[is_buyer & (revenue <= 0).to_numpy()] = TIER_NAMES.index("inactive")
    out["value_tier"] = _categorical(tier, TIER_NAMES, spine)

    recency, age = out["recency_days"], out["customer_age_days"]
    stage = np.select(
        [
            ~is_buyer,
            recency > CHURNED_DAYS,
            recency > AT_RISK_DAYS,
            age <= NEW_DAYS,
            out[f"orders_{LOYAL_WINDOW_DAYS}d"] >= LOYAL_MIN_ORDERS,
        ],
        [0, 1, 2, 3, 4],  # positions in LIFECYCLE_STAGES
        LIFECYCLE_STAGES.index("active"),
    )
    out["lifecycle_stage"] = _categorical(stage.astype(np.int8), LIFECYCLE_STAGES, spine)


def _labels(
    h: _History, out: dict[str, pd.Series], spine: pd.Index, cutoff: pd.Timestamp, observed_until: pd.Timestamp
) -> None:
    """Labels from events in [cutoff, cutoff + horizon); NULL unless that window is fully observed.
    (Windows that are not fully observed are not computed: every value would be NULL.)"""

    def ahead(frame: pd.DataFrame, days: int) -> pd.DataFrame:
        ts = frame["timestamp"]
        return frame[(ts >= cutoff) & (ts < cutoff + days * DAY)]

    def complete(days: int) -> bool:
        return cutoff + days * DAY <= observed_until

    def per_customer(values: pd.Series) -> pd.Series:
        return values.reindex(spine, fill_value=0)

    def missing(dtype: str) -> pd.Series:
        return pd.Series(pd.NA if dtype == "Int64" else np.nan, index=spine, dtype=dtype)

    orders = h.orders
    starts = orders[orders["order_start"] == 1]
    ch, va, pr = CHURN_HORIZON_DAYS, VALUE_HORIZON_DAYS, PROPENSITY_HORIZON_DAYS
    if complete(ch):
        future = per_customer(ahead(starts, ch).groupby("cust").size())
        churn = (future == 0).astype("Int64").where(out["n_orders"] > 0)
    else:
        churn = missing("Int64")
    out[f"label_churn_{ch}d"] = churn
    if complete(va):
        future = ahead(orders, va).groupby("cust").agg(revenue=("revenue", "sum"), days=("new_day", "sum"))
        refunds = ahead(h.refunds, va).groupby("cust")["amount"].sum()
        out[f"label_value_{va}d"] = per_customer(future["revenue"]) - per_customer(refunds)
        out[f"label_purchase_days_{va}d"] = per_customer(future["days"]).astype("Int64")
    else:
        out[f"label_value_{va}d"] = missing("float64")
        out[f"label_purchase_days_{va}d"] = missing("Int64")
    names = [CATEGORY_LABEL_PREFIX + slug(c) for c in h.categories]
    if complete(pr):
        out[f"label_purchase_{pr}d"] = (per_customer(ahead(starts, pr).groupby("cust").size()) > 0).astype("Int64")
        lines = ahead(h.category_lines, pr)
        bought = lines.groupby(["cust", "category"]).size().unstack(fill_value=0)
        bought = bought.reindex(index=spine, columns=range(len(names)), fill_value=0) > 0
        for i, name in enumerate(names):
            out[name] = bought[i].astype("Int64")
    else:
        for name in (f"label_purchase_{pr}d", *names):
            out[name] = missing("Int64")


def _features_at(h: _History, cutoff: pd.Timestamp, observed_until: pd.Timestamp) -> pd.DataFrame:
    """Features and labels of every customer that exists before `cutoff`."""
    spine = h.exists_from.index[h.exists_from < cutoff]
    out: dict[str, pd.Series] = {}  # every column, indexed by the spine's customer codes

    def add(agg: pd.DataFrame | pd.Series) -> None:
        frame = agg.reindex(spine) if isinstance(agg, pd.DataFrame) else agg.reindex(spine).to_frame()
        out.update(frame.items())

    orders = h.orders
    past = orders[orders["timestamp"] < cutoff]
    add(
        past.groupby("cust").agg(
            n_orders=("order_start", "sum"),
            n_purchase_days=("new_day", "sum"),
            n_lines=("lines", "sum"),
            total_quantity=("quantity", "sum"),
            revenue_total=("revenue", "sum"),
            max_order_value=("revenue", "max"),
            revenue_first_day=("revenue_first_day", "sum"),
            first_purchase_at=("timestamp", "min"),
            last_purchase_at=("timestamp", "max"),
            ipt_sum_days=("gap_days", "sum"),
            ipt_sumsq_days=("gap_days_sq", "sum"),
        )
    )
    recent = past
    for w in sorted(WINDOWS_DAYS, reverse=True):  # each window filters the wider one's rows
        recent = recent[recent["timestamp"] >= cutoff - w * DAY]
        add(recent.groupby("cust").agg(**{f"orders_{w}d": ("order_start", "sum"), f"revenue_{w}d": ("revenue", "sum")}))

    refunds = h.refunds[h.refunds["timestamp"] < cutoff]
    add(refunds.groupby("cust")["amount"].agg(n_refunds="count", refund_amount_total="sum"))
    for name, first in (
        ("distinct_products", h.first_products),
        ("distinct_categories", h.first_categories),
    ):
        add(first[first["timestamp"] < cutoff].groupby("cust").size().rename(name))

    ix = h.interactions
    wmax = max(ENGAGEMENT_WINDOWS_DAYS)
    recent_ix = ix[(ix["timestamp"] < cutoff) & (ix["timestamp"] >= cutoff - wmax * DAY)]
    for w in ENGAGEMENT_WINDOWS_DAYS:
        win = recent_ix[recent_ix["timestamp"] >= cutoff - w * DAY]
        by_type = win.groupby(["cust", "event_type"], observed=True).size().unstack(fill_value=0)
        by_type = by_type.reindex(columns=list(EVENT_TYPES), fill_value=0)
        by_type.columns = [f"{et}_{w}d" for et in EVENT_TYPES]
        by_type[f"interactions_{w}d"] = by_type.sum(axis=1)
        add(by_type)
    days = h.activity_days[h.activity_days["day"] < cutoff]
    add(days.groupby("cust")["last_ts"].agg(last_interaction_at="max", active_days="count"))
    add(h.logins[h.logins["timestamp"] < cutoff].groupby("cust")["timestamp"].max().rename("last_login_at"))

    for c in COUNT_COLUMNS:
        out[c] = out[c].fillna(0).astype(np.int64)
    for c in SUM_COLUMNS:
        out[c] = out[c].fillna(0.0)

    # Profile (definitions._profile).
    out["country"] = pd.Series(h.country[spine], index=spine)
    out["acquisition_channel"] = pd.Series(h.acquisition_channel[spine], index=spine)
    out["tenure_days"] = _days(cutoff, h.exists_from.loc[spine])

    # Recency, frequency, monetary and engagement ratios (definitions._rfm_derived).
    first, last = out["first_purchase_at"], out["last_purchase_at"]
    gaps = (out["n_purchase_days"] - 1).clip(lower=0)  # gaps between purchase days
    out["recency_days"] = _days(cutoff, last)
    out["customer_age_days"] = _days(cutoff, first)
    out["frequency_btyd"] = gaps
    out["btyd_recency_days"] = (last.dt.floor("D") - first.dt.floor("D")) / DAY
    out["btyd_age_days"] = (cutoff - first.dt.floor("D")) / DAY
    out["btyd_monetary"] = _ratio(out["revenue_total"] - out["revenue_first_day"], gaps)
    out["avg_order_value"] = _ratio(out["revenue_total"], out["n_orders"])
    out["basket_size"] = _ratio(out["n_lines"], out["n_orders"])
    out["ipt_mean_days"] = _ratio(out["ipt_sum_days"], gaps)
    # NULL below two purchase days, as the mean; rounding's tiny negative variances are 0.
    variance = _ratio(out["ipt_sumsq_days"], gaps) - out["ipt_mean_days"] ** 2
    out["ipt_std_days"] = np.sqrt(variance.clip(lower=0.0))
    out["refund_rate"] = _ratio(out["n_refunds"], out["n_lines"])
    out["days_since_last_interaction"] = _days(cutoff, out["last_interaction_at"])
    out["days_since_last_login"] = _days(cutoff, out["last_login_at"])
    out[f"email_open_rate_{_E_LONG}d"] = _ratio(out[f"email_open_{_E_LONG}d"], out[f"email_sent_{_E_LONG}d"])
    out[f"email_click_rate_{_E_LONG}d"] = _ratio(out[f"email_click_{_E_LONG}d"], out[f"email_open_{_E_LONG}d"])
    out[f"engagement_trend_{_E_SHORT}_{_E_LONG}"] = _ratio(
        out[f"interactions_{_E_SHORT}d"] * (_E_LONG / _E_SHORT), out[f"interactions_{_E_LONG}d"]
    )
    for what in ("orders", "revenue"):
        out[f"{what}_trend_{_O_SHORT}_{_O_LONG}"] = _ratio(
            out[f"{what}_{_O_SHORT}d"] * (_O_LONG / _O_SHORT), out[f"{what}_{_O_LONG}d"]
        )

    _segments(out, spine)
    _labels(h, out, spine, cutoff, observed_until)

    labels = [*LABEL_COLUMNS, *(CATEGORY_LABEL_PREFIX + slug(c) for c in h.categories)]
    frame = pd.DataFrame({c: out[c] for c in (*FEATURE_COLUMNS, *labels)}, index=spine)
    frame.insert(0, "cutoff", cutoff)
    frame.insert(0, "customer_id", h.customer_ids[spine])
    return frame.reset_index(drop=True)


def compute_features_pandas(
    validated_dir: Path, cutoffs: list[pd.Timestamp], observed_until: pd.Timestamp
) -> pd.DataFrame:
    """Features and labels per (customer_id, cutoff) from the validated layer, cutoff by cutoff."""
    history = _load_history(validated_dir)
    # Cutoffs in the events' time unit: arithmetic with them then needs no unit conversion.
    unit = history.orders["timestamp"].dt.unit
    observed_until = pd.Timestamp(observed_until).as_unit(unit)
    frames = [_features_at(history, pd.Timestamp(c).as_unit(unit), observed_until) for c in sorted(cutoffs)]
    out = pd.concat(frames, ignore_index=True)
    out["cutoff"] = out["cutoff"].astype("datetime64[us]")
    return out


def write_features_pandas(df: pd.DataFrame, path: str | Path) -> None:
    """Write the baseline's output to one Parquet file, as the engine writes its snapshot
    (pandas' defaults: pyarrow, snappy)."""
    df.to_parquet(path, index=False)


# ---------------------------------------------------------------- parity


@dataclass
class ColumnParity:
    """How one column compares between the pandas baseline and the engine."""

    name: str
    kind: str  # "exact" (integers) | "string" | "timestamp" | "float"
    compared: int
    mismatches: int
    example: dict[str, Any] | None = None


@dataclass
class ParityReport:
    """Baseline vs engine snapshot on the (customer_id, cutoff) rows both have."""

    rows_pandas: int
    rows_engine: int
    rows_shared: int
    only_pandas: int
    only_engine: int
    key_examples: list[dict[str, Any]] = field(default_factory=list)
    columns: list[ColumnParity] = field(default_factory=list)
    missing_in_engine: list[str] = field(default_factory=list)
    missing_in_pandas: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.rows_shared > 0
            and not self.only_pandas
            and not self.only_engine
            and not self.missing_in_engine
            and not self.missing_in_pandas
            and all(c.mismatches == 0 for c in self.columns)
        )

    def summary(self) -> str:
        if self.ok:
            return f"OK: {len(self.columns)} columns equal on {self.rows_shared:,} rows"
        parts = []
        if self.only_pandas or self.only_engine:
            parts.append(f"population differs (only pandas {self.only_pandas:,}, only engine {self.only_engine:,})")
        if self.missing_in_engine:
            parts.append(f"missing in engine: {self.missing_in_engine}")
        if self.missing_in_pandas:
            parts.append(f"missing in pandas: {self.missing_in_pandas}")
        bad = [c for c in self.columns if c.mismatches]
        if bad:
            listed = ", ".join(f"{c.name} ({c.mismatches:,})" for c in bad)
            parts.append(f"{len(bad)} of {len(self.columns)} columns differ on {self.rows_shared:,} rows: {listed}")
        return "FAILED: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "rows_pandas": self.rows_pandas,
            "rows_engine": self.rows_engine,
            "rows_shared": self.rows_shared,
            "only_pandas": self.only_pandas,
            "only_engine": self.only_engine,
            "key_examples": self.key_examples,
            "missing_in_engine": self.missing_in_engine,
            "missing_in_pandas": self.missing_in_pandas,
            "columns": [c.__dict__ for c in self.columns],
        }


def _kind(name: str) -> str:
    if name in INTEGER_COLUMNS or name.startswith(CATEGORY_LABEL_PREFIX):
        return "exact"
    if name in STRING_COLUMNS:
        return "string"
    if name in TIMESTAMP_COLUMNS:
        return "timestamp"
    return "float"


def _scalar(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, pd.Timestamp | np.datetime64):
        return str(pd.Timestamp(v))
    return v.item() if isinstance(v, np.generic) else v


def _normalise_keys(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["customer_id"] = df["customer_id"].astype(str)
    df["cutoff"] = pd.to_datetime(df["cutoff"]).astype("datetime64[us]")
    return df


def check_parity(
    pandas_df: pd.DataFrame,
    engine_df: pd.DataFrame,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    columns: Sequence[str] | None = None,
) -> ParityReport:
    """Compare the baseline's columns with the engine's on the (customer, cutoff) rows both have.

    Floats are equal within `rtol` of the larger value, or `atol`: a difference of sums that cancel
    (e.g. future revenue minus equal refunds) is 0.0 in one and 1e-14 in the other, depending on
    the order the amounts were added in. Columns of `engine_df` the baseline lacks are reported
    (`missing_in_pandas`) unless `columns` names the columns to compare."""
    cols = [c for c in (columns or pandas_df.columns) if c not in KEY]
    missing = [c for c in cols if c not in engine_df.columns]
    missing_pd = [] if columns else [c for c in engine_df.columns if c not in KEY and c not in pandas_df.columns]
    cols = [c for c in cols if c in engine_df.columns]
    left = _normalise_keys(pandas_df[[*KEY, *cols]])
    right = _normalise_keys(engine_df[[*KEY, *cols]])
    merged = left.merge(right, on=KEY, how="outer", suffixes=("_pd", "_en"), indicator=True)
    side = merged.pop("_merge")
    only_pd, only_en = merged[side == "left_only"], merged[side == "right_only"]
    shared = merged[side == "both"]
    key_examples = [
        {"side": s, "customer_id": r.customer_id, "cutoff": str(r.cutoff)}
        for s, frame in (("only_pandas", only_pd), ("only_engine", only_en))
        for r in frame[KEY].head(3).itertuples()
    ]
    report = ParityReport(
        rows_pandas=len(left),
        rows_engine=len(right),
        rows_shared=len(shared),
        only_pandas=len(only_pd),
        only_engine=len(only_en),
        key_examples=key_examples,
        missing_in_engine=missing,
        missing_in_pandas=missing_pd,
    )
    for c in cols:
        a, b = shared[f"{c}_pd"], shared[f"{c}_en"]
        kind = _kind(c)
        a_null, b_null = a.isna().to_numpy(), b.isna().to_numpy()
        both = ~a_null & ~b_null
        equal = a_null & b_null
        if kind == "float":
            x = a.to_numpy(dtype=np.float64, na_value=np.nan)
            y = b.to_numpy(dtype=np.float64, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                close = np.abs(x - y) <= np.maximum(rtol * np.maximum(np.abs(x), np.abs(y)), atol)
            equal |= both & close
        elif kind == "timestamp":
            equal |= both & (pd.to_datetime(a).to_numpy() == pd.to_datetime(b).to_numpy())
        elif kind == "string":
            equal |= both & (a.astype(object).to_numpy() == b.astype(object).to_numpy())
        else:  # integers: float64 holds every integer up to 2**53 exactly
            x = a.to_numpy(dtype=np.float64, na_value=np.nan)
            y = b.to_numpy(dtype=np.float64, na_value=np.nan)
            equal |= both & (x == y)
        bad = np.flatnonzero(~equal)
        example = None
        if len(bad):
            i = bad[0]
            example = {
                "customer_id": shared["customer_id"].iloc[i],
                "cutoff": str(shared["cutoff"].iloc[i]),
                "pandas": _scalar(a.iloc[i]),
                "engine": _scalar(b.iloc[i]),
            }
        report.columns.append(ColumnParity(c, kind, len(shared), len(bad), example))
    return report
