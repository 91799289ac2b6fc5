"""A straightforward pandas implementation of the engine's core features, and a parity check.

This is the baseline `features_bench.py` measures the feature engine against. It computes a
substantial subset of the features declared in `custops.features.definitions` with the same
semantics as `custops.features.engine` (default `FeatureSettings`: windows 30/90/180/365 days,
engagement windows 30/90 days, churn horizon 90 days, propensity horizon 30 days):

- history-level facts are computed once, as the engine's grains are: the order grain (one row per
  customer, order and timestamp, with order-start and new-purchase-day flags), each customer's
  first purchase of each product and category, and when each customer was first seen;
- then, for each cutoff, events with `timestamp < cutoff` (and `>= cutoff - window` for windowed
  features, `[cutoff, cutoff + horizon)` for labels) are filtered and grouped by customer.

It is a fair baseline, not a strawman: customer ids are mapped to integer codes once (or read as
the `customer_key` ingest stores, as the engine reads them) and string columns are read
dictionary-encoded, so groupbys run on integers. It computes fewer columns than
the engine (no RFM scores, segments, trends or per-category labels), which favours pandas.

`check_parity` compares its output with an engine snapshot: counts and timestamps exactly, floats
to a relative 1e-9, NULL where the engine has NULL, and the same (customer_id, cutoff) population.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

KEY = ["customer_id", "cutoff"]
WINDOWS_DAYS = (30, 90, 180, 365)
ENGAGEMENT_WINDOWS_DAYS = (30, 90)
CHURN_HORIZON_DAYS = 90
PROPENSITY_HORIZON_DAYS = 30
# Event types with their own count columns (custops.data.schema.EVENT_TYPES, repeated here so
# the baseline stays a standalone pandas program).
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
DAY = pd.Timedelta(days=1)

COUNT_COLUMNS = (
    "n_orders",
    "n_purchase_days",
    "n_lines",
    "n_refunds",
    "distinct_products",
    "distinct_categories",
    *(f"orders_{w}d" for w in WINDOWS_DAYS),
    *(f"{et}_{w}d" for w in ENGAGEMENT_WINDOWS_DAYS for et in (*EVENT_TYPES, "interactions")),
)
TIMESTAMP_COLUMNS = (
    "first_purchase_at",
    "last_purchase_at",
    "last_interaction_at",
    "last_login_at",
)
LABEL_COLUMNS = (f"label_churn_{CHURN_HORIZON_DAYS}d", f"label_purchase_{PROPENSITY_HORIZON_DAYS}d")


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
    orders: pd.DataFrame  # order grain: cust, timestamp, revenue, lines, quantity, order_start, new_day
    refunds: pd.DataFrame  # cust, timestamp, amount
    first_products: pd.DataFrame  # cust, timestamp (first purchase of each product)
    first_categories: pd.DataFrame  # cust, timestamp (first purchase of each category)
    interactions: pd.DataFrame  # cust, timestamp, event_type
    logins: pd.DataFrame  # cust, timestamp


def _load_history(validated_dir: Path) -> _History:
    validated_dir = Path(validated_dir)
    customers = _read(validated_dir / "customers.parquet", ["customer_id", "signup_at"], [])
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
    orders = (
        purchases.groupby(["cust", "order_id", "timestamp"], observed=True, sort=False)
        .agg(revenue=("amount", "sum"), lines=("amount", "count"), quantity=("quantity", "sum"))
        .reset_index()
    )
    # An order starts at its first timestamp; a purchase day is counted once per customer.
    first_ts = orders.groupby(["cust", "order_id"], observed=True)["timestamp"].transform("min")
    orders["order_start"] = (orders["timestamp"] == first_ts).astype(np.int64)
    orders["day"] = orders["timestamp"].dt.floor("D")
    orders["new_day"] = (~orders.duplicated(["cust", "day"])).astype(np.int64)
    orders = orders.drop(columns=["order_id", "day"])

    def first_purchase(col: str) -> pd.DataFrame:
        p = purchases[purchases[col].notna()]
        first = p.groupby(["cust", col], observed=True)["timestamp"].min()
        return first.reset_index()[["cust", "timestamp"]]

    refunds = tx.loc[tx["status"] == "refund", ["cust", "timestamp", "amount"]]
    return _History(
        customer_ids=ids,
        exists_from=exists_from,
        orders=orders,
        refunds=refunds,
        first_products=first_purchase("product_id"),
        first_categories=first_purchase("category"),
        interactions=ix,
        logins=ix.loc[ix["event_type"] == "login", ["cust", "timestamp"]],
    )


# ---------------------------------------------------------------- features


def _days(later: pd.Timestamp | pd.Series, earlier: pd.Series) -> pd.Series:
    return (later - earlier).dt.total_seconds() / 86400.0


def _features_at(h: _History, cutoff: pd.Timestamp, observed_until: pd.Timestamp) -> pd.DataFrame:
    """Features and labels of every customer that exists before `cutoff`."""
    spine = h.exists_from.index[h.exists_from < cutoff]
    out = pd.DataFrame(index=spine)
    out["tenure_days"] = _days(cutoff, h.exists_from.loc[spine])

    orders = h.orders
    past = orders[orders["timestamp"] < cutoff]
    lifetime = past.groupby("cust").agg(
        n_orders=("order_start", "sum"),
        n_purchase_days=("new_day", "sum"),
        n_lines=("lines", "sum"),
        total_quantity=("quantity", "sum"),
        revenue_total=("revenue", "sum"),
        max_order_value=("revenue", "max"),
        first_purchase_at=("timestamp", "min"),
        last_purchase_at=("timestamp", "max"),
    )
    out = out.join(lifetime)
    for w in WINDOWS_DAYS:
        recent = past[past["timestamp"] >= cutoff - w * DAY]
        agg = recent.groupby("cust").agg(
            **{f"orders_{w}d": ("order_start", "sum"), f"revenue_{w}d": ("revenue", "sum")}
        )
        out = out.join(agg)

    refunds = h.refunds[h.refunds["timestamp"] < cutoff]
    out = out.join(refunds.groupby("cust")["amount"].agg(n_refunds="count", refund_amount_total="sum"))

    for name, first in (
        ("distinct_products", h.first_products),
        ("distinct_categories", h.first_categories),
    ):
        out[name] = first[first["timestamp"] < cutoff].groupby("cust").size()

    ix = h.interactions
    wmax = max(ENGAGEMENT_WINDOWS_DAYS)
    recent_ix = ix[(ix["timestamp"] < cutoff) & (ix["timestamp"] >= cutoff - wmax * DAY)]
    for w in ENGAGEMENT_WINDOWS_DAYS:
        win = recent_ix[recent_ix["timestamp"] >= cutoff - w * DAY]
        by_type = win.groupby(["cust", "event_type"], observed=True).size().unstack(fill_value=0)
        by_type = by_type.reindex(columns=list(EVENT_TYPES), fill_value=0)
        by_type.columns = [f"{et}_{w}d" for et in EVENT_TYPES]
        out = out.join(by_type)
        out[f"interactions_{w}d"] = win.groupby("cust").size()
    out["last_interaction_at"] = ix[ix["timestamp"] < cutoff].groupby("cust")["timestamp"].max()
    out["last_login_at"] = h.logins[h.logins["timestamp"] < cutoff].groupby("cust")["timestamp"].max()

    counts = [c for c in COUNT_COLUMNS if c in out]
    out[counts] = out[counts].fillna(0).astype(np.int64)
    sums = [
        "total_quantity",
        "revenue_total",
        "refund_amount_total",
        *(f"revenue_{w}d" for w in WINDOWS_DAYS),
    ]
    out[sums] = out[sums].fillna(0.0)

    out["recency_days"] = _days(cutoff, out["last_purchase_at"])
    out["customer_age_days"] = _days(cutoff, out["first_purchase_at"])
    out["days_since_last_interaction"] = _days(cutoff, out["last_interaction_at"])
    out["days_since_last_login"] = _days(cutoff, out["last_login_at"])

    # Labels: orders begun in [cutoff, cutoff + horizon); NULL unless the window is fully observed.
    starts = orders[orders["order_start"] == 1]
    is_buyer = out["n_orders"] > 0
    for name, horizon in (("churn", CHURN_HORIZON_DAYS), ("purchase", PROPENSITY_HORIZON_DAYS)):
        ahead = starts[(starts["timestamp"] >= cutoff) & (starts["timestamp"] < cutoff + horizon * DAY)]
        future = ahead.groupby("cust").size().reindex(out.index, fill_value=0)
        complete = cutoff + horizon * DAY <= observed_until
        if name == "churn":
            label = (future == 0).astype(np.float64).where(is_buyer & complete)
        else:
            label = (future > 0).astype(np.float64).where(pd.Series(complete, index=out.index))
        out[f"label_{name}_{horizon}d"] = label

    out.insert(0, "cutoff", cutoff)
    out.insert(0, "customer_id", h.customer_ids[out.index])
    return out.reset_index(drop=True)


def compute_features_pandas(
    validated_dir: Path, cutoffs: list[pd.Timestamp], observed_until: pd.Timestamp
) -> pd.DataFrame:
    """Features and labels per (customer_id, cutoff) from the validated layer, cutoff by cutoff."""
    history = _load_history(validated_dir)
    observed_until = pd.Timestamp(observed_until)
    frames = [_features_at(history, pd.Timestamp(c), observed_until) for c in sorted(cutoffs)]
    out = pd.concat(frames, ignore_index=True)
    out["cutoff"] = out["cutoff"].astype("datetime64[us]")
    return out


# ---------------------------------------------------------------- parity


@dataclass
class ColumnParity:
    """How one column compares between the pandas baseline and the engine."""

    name: str
    kind: str  # "exact" | "timestamp" | "float"
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

    @property
    def ok(self) -> bool:
        return (
            self.rows_shared > 0
            and not self.only_pandas
            and not self.only_engine
            and not self.missing_in_engine
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
            "columns": [c.__dict__ for c in self.columns],
        }


def _kind(name: str) -> str:
    if name in COUNT_COLUMNS or name in LABEL_COLUMNS:
        return "exact"
    if name in TIMESTAMP_COLUMNS:
        return "timestamp"
    return "float"


def _scalar(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT:
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
    columns: Sequence[str] | None = None,
) -> ParityReport:
    """Compare the baseline's columns with the engine's on the (customer, cutoff) rows both have."""
    cols = [c for c in (columns or pandas_df.columns) if c not in KEY]
    missing = [c for c in cols if c not in engine_df.columns]
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
                close = np.abs(x - y) <= rtol * np.maximum(np.abs(x), np.abs(y))
            equal |= both & close
        elif kind == "timestamp":
            equal |= both & (pd.to_datetime(a).to_numpy() == pd.to_datetime(b).to_numpy())
        else:
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
