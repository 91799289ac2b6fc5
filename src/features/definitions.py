"""Declarative feature definitions: entity, feature views, feature services.

Every feature is declared once, with a name, a one-line description and an Ibis expression. Ibis
expressions compile to DuckDB (the default engine) and to PySpark, so the same definitions run on
either. Views are named `<entity>_<window>_<topic>` (Feast convention).

Kinds of view:
- `aggregate`: an aggregation over a *source grain* (see `custops.features.engine.GRAINS`) joined to
  the cutoffs on `timestamp < cutoff` (and `timestamp >= cutoff - window` when the view has a
  window). Expressions receive that joined table; only events strictly before the cutoff reach them.
- `derived`: row-wise expressions over the assembled feature table (ratios, recency, rates).
- `segment`: expressions with window functions partitioned by cutoff (RFM scores, tiers, stages).
- `future`: aggregations over events in `[cutoff, cutoff + horizon)` (label inputs, never features).
- `label`: row-wise labels from the `future` columns; NULL where the label window is not fully
  observed in the data (`cutoff + horizon > observed_until`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import ibis
import ibis.expr.types as ir

from custops.data.schema import EVENT_TYPES
from custops.settings import FeatureSettings

ViewKind = Literal["aggregate", "derived", "segment", "future", "label"]
Expr = Callable[[ir.Table], ir.Value]

DAY_SECONDS = 86400.0


@dataclass(frozen=True, kw_only=True)
class Entity:
    """What features describe, and the key that joins them."""

    name: str
    join_key: str
    description: str


CUSTOMER = Entity(name="customer", join_key="customer_id", description="A person or account that buys or engages.")


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One named column, computed by `expr` from the view's input table."""

    name: str
    description: str
    expr: Expr
    dtype: Literal["float64", "int64", "string", "timestamp"] = "float64"
    fill: float | None = None  # value for customers with no source rows (counts: 0)
    model_input: bool = True  # False for helper columns (timestamps, raw sums) models should not see


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """A group of features from one source, window and topic."""

    name: str
    entity: Entity
    description: str
    kind: ViewKind
    features: tuple[Feature, ...]
    source: str | None = None  # grain name for aggregate and label views
    window_days: int | None = None  # look-back (aggregate) or horizon (future); None = all history


@dataclass(frozen=True, kw_only=True)
class FeatureService:
    """A versioned set of features one model consumes (e.g. `churn_v1`)."""

    name: str
    description: str
    features: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class FeatureRegistry:
    """All views for one settings object, in evaluation order."""

    views: tuple[FeatureView, ...]
    categories: tuple[str, ...] = field(default=())

    def features(self, kinds: Sequence[ViewKind] = ("aggregate", "derived", "segment")) -> list[Feature]:
        return [f for v in self.views if v.kind in kinds for f in v.features]

    def view_of(self, feature_name: str) -> FeatureView:
        for v in self.views:
            if any(f.name == feature_name for f in v.features):
                return v
        raise KeyError(feature_name)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features()]

    @property
    def model_features(self) -> list[str]:
        return [f.name for f in self.features() if f.model_input]

    @property
    def label_names(self) -> list[str]:
        return [f.name for f in self.features(("label",))]


# ---------------------------------------------------------------- expression helpers


def within(t: ir.Table, days: int) -> ir.BooleanValue:
    """Row timestamp lies in [cutoff - days, cutoff) (the join already guarantees `< cutoff`)."""
    return t.timestamp >= t.cutoff - ibis.interval(days=days)


def ahead(t: ir.Table, days: int) -> ir.BooleanValue:
    """Row timestamp lies in [cutoff, cutoff + days) (the join already guarantees `>= cutoff`)."""
    return t.timestamp < t.cutoff + ibis.interval(days=days)


def days_between(later: ir.TimestampValue, earlier: ir.TimestampValue) -> ir.FloatingValue:
    """Fractional days from `earlier` to `later`."""
    return (later.epoch_seconds() - earlier.epoch_seconds()) / DAY_SECONDS


def ratio(num: ir.NumericValue, den: ir.NumericValue) -> ir.FloatingValue:
    """num / den, NULL where den is 0 or NULL."""
    return num.cast("float64") / den.cast("float64").nullif(0.0)


def slug(text: str) -> str:
    """Column-safe lower-case name for a category value."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "blank"


def _gaps(t: ir.Table) -> ir.IntegerValue:
    """Number of gaps between purchase days (0 for fewer than two purchase days)."""
    return ibis.greatest(t.n_purchase_days - 1, 0)


def _count(expr: ir.Value) -> ir.Value:
    return expr.cast("int64")


# ---------------------------------------------------------------- views


def _transactions_lifetime() -> FeatureView:
    return FeatureView(
        name="customer_lifetime_transactions",
        entity=CUSTOMER,
        kind="aggregate",
        source="order_events",
        description="Purchase history before the cutoff (all time).",
        features=(
            Feature(
                name="n_orders",
                description="Distinct orders placed before the cutoff.",
                expr=lambda t: _count(t.order_start.sum()),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name="n_purchase_days",
                description="Distinct days with a purchase (BTYD transactions).",
                expr=lambda t: _count(t.new_day.sum()),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name="n_lines",
                description="Purchased order lines.",
                expr=lambda t: _count(t.lines.sum()),
                dtype="int64",
                fill=0,
            ),
            Feature(name="total_quantity", description="Units purchased.", expr=lambda t: t.quantity.sum(), fill=0.0),
            Feature(
                name="revenue_total",
                description="Gross purchase revenue (refunds not deducted).",
                expr=lambda t: t.revenue.sum(),
                fill=0.0,
            ),
            Feature(name="max_order_value", description="Largest single order value.", expr=lambda t: t.revenue.max()),
            Feature(
                name="revenue_first_day",
                description="Revenue on the first purchase day (helper for BTYD monetary value).",
                expr=lambda t: t.revenue.sum(where=t.first_day == 1),
                fill=0.0,
                model_input=False,
            ),
            Feature(
                name="first_purchase_at",
                description="Timestamp of the first purchase.",
                expr=lambda t: t.timestamp.min(),
                dtype="timestamp",
                model_input=False,
            ),
            Feature(
                name="last_purchase_at",
                description="Timestamp of the last purchase.",
                expr=lambda t: t.timestamp.max(),
                dtype="timestamp",
                model_input=False,
            ),
            Feature(
                name="ipt_sum_days",
                description="Sum of gaps between purchase days (helper).",
                expr=lambda t: t.gap_days.sum(),
                fill=0.0,
                model_input=False,
            ),
            Feature(
                name="ipt_sumsq_days",
                description="Sum of squared gaps between purchase days (helper).",
                expr=lambda t: (t.gap_days * t.gap_days).sum(),
                fill=0.0,
                model_input=False,
            ),
        ),
    )


def _transactions_window(days: int) -> FeatureView:
    return FeatureView(
        name=f"customer_{days}d_transactions",
        entity=CUSTOMER,
        kind="aggregate",
        source="order_events",
        window_days=days,
        description=f"Purchases in the {days} days before the cutoff.",
        features=(
            Feature(
                name=f"orders_{days}d",
                description=f"Orders begun in the {days} days before the cutoff.",
                expr=lambda t: _count(t.order_start.sum(where=within(t, days))),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name=f"revenue_{days}d",
                description=f"Gross revenue in the {days} days before the cutoff.",
                expr=lambda t: t.revenue.sum(where=within(t, days)),
                fill=0.0,
            ),
        ),
    )


def _refunds_lifetime() -> FeatureView:
    return FeatureView(
        name="customer_lifetime_refunds",
        entity=CUSTOMER,
        kind="aggregate",
        source="refund_events",
        description="Refunds issued before the cutoff.",
        features=(
            Feature(
                name="n_refunds",
                description="Refunded order lines.",
                expr=lambda t: _count(t.amount.count()),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name="refund_amount_total",
                description="Total refunded amount.",
                expr=lambda t: t.amount.sum(),
                fill=0.0,
            ),
        ),
    )


def _assortment_lifetime() -> FeatureView:
    return FeatureView(
        name="customer_lifetime_assortment",
        entity=CUSTOMER,
        kind="aggregate",
        source="first_purchases",
        description="Breadth of what the customer bought before the cutoff.",
        features=(
            Feature(
                name="distinct_products",
                description="Distinct products bought.",
                expr=lambda t: _count((t.kind == "product").sum()),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name="distinct_categories",
                description="Distinct categories bought.",
                expr=lambda t: _count((t.kind == "category").sum()),
                dtype="int64",
                fill=0,
            ),
        ),
    )


def _engagement_window(days: int) -> FeatureView:
    def count_of(event_type: str | None) -> Expr:
        if event_type is None:
            return lambda t: _count(t.timestamp.count(where=within(t, days)))
        return lambda t: _count(t.timestamp.count(where=within(t, days) & (t.event_type == event_type)))

    feats = [
        Feature(
            name=f"{et}_{days}d",
            description=f"'{et}' events in the {days} days before the cutoff.",
            expr=count_of(et),
            dtype="int64",
            fill=0,
        )
        for et in EVENT_TYPES
    ]
    feats.append(
        Feature(
            name=f"interactions_{days}d",
            description=f"All interactions in the {days} days before the cutoff.",
            expr=count_of(None),
            dtype="int64",
            fill=0,
        )
    )
    return FeatureView(
        name=f"customer_{days}d_engagement",
        entity=CUSTOMER,
        kind="aggregate",
        source="interaction_events",
        window_days=days,
        description=f"Interactions by type in the {days} days before the cutoff.",
        features=tuple(feats),
    )


def _activity_lifetime() -> FeatureView:
    return FeatureView(
        name="customer_lifetime_activity",
        entity=CUSTOMER,
        kind="aggregate",
        source="activity_days",
        description="Last seen times before the cutoff.",
        features=(
            Feature(
                name="last_interaction_at",
                description="Timestamp of the last interaction of any type.",
                expr=lambda t: t.last_ts.max(),
                dtype="timestamp",
                model_input=False,
            ),
            Feature(
                name="last_login_at",
                description="Timestamp of the last login.",
                expr=lambda t: t.last_login_ts.max(),
                dtype="timestamp",
                model_input=False,
            ),
            Feature(
                name="active_days",
                description="Distinct days with any interaction.",
                expr=lambda t: _count(t.last_ts.count()),
                dtype="int64",
                fill=0,
            ),
        ),
    )


def _profile() -> FeatureView:
    return FeatureView(
        name="customer_profile",
        entity=CUSTOMER,
        kind="derived",
        description="Who the customer is (from the customers table).",
        features=(
            Feature(name="country", description="Country of the customer.", expr=lambda t: t.country, dtype="string"),
            Feature(
                name="acquisition_channel",
                description="Channel the customer was acquired through.",
                expr=lambda t: t.acquisition_channel,
                dtype="string",
            ),
            Feature(
                name="tenure_days",
                description="Days from signup (or first activity, if earlier) to the cutoff.",
                expr=lambda t: days_between(t.cutoff, t.exists_from),
            ),
        ),
    )


def _non_negative(value: ir.NumericValue) -> ir.NumericValue:
    """`value` with rounding's tiny negatives as 0, NULL kept NULL (SQL's GREATEST(NULL, 0) is 0: a
    customer without two purchase days would get a standard deviation of 0 instead of none)."""
    return ibis.ifelse(value < 0, 0.0, value)


def _rfm_derived(fs: FeatureSettings) -> FeatureView:
    wmax = max(fs.windows_days)
    emax = max(fs.engagement_windows_days)
    emin = min(fs.engagement_windows_days)
    feats = [
        Feature(
            name="recency_days",
            description="Days since the last purchase (NULL: never bought).",
            expr=lambda t: days_between(t.cutoff, t.last_purchase_at),
        ),
        Feature(
            name="customer_age_days",
            description="Days since the first purchase (BTYD 'T').",
            expr=lambda t: days_between(t.cutoff, t.first_purchase_at),
        ),
        Feature(
            name="frequency_btyd",
            description="Repeat purchase days (BTYD frequency = purchase days - 1).",
            expr=lambda t: ibis.greatest(t.n_purchase_days - 1, 0).cast("int64"),
            dtype="int64",
        ),
        Feature(
            name="btyd_recency_days",
            description="BTYD recency t_x: days from the first to the last purchase day.",
            expr=lambda t: t.last_purchase_at.date().delta(t.first_purchase_at.date(), unit="day").cast("float64"),
        ),
        Feature(
            name="btyd_age_days",
            description="BTYD age T: days from the first purchase day to the cutoff.",
            expr=lambda t: t.cutoff.date().delta(t.first_purchase_at.date(), unit="day").cast("float64"),
        ),
        Feature(
            name="btyd_monetary",
            description="BTYD monetary value: mean revenue of repeat purchase days (first day excluded).",
            expr=lambda t: ratio(t.revenue_total - t.revenue_first_day, _gaps(t)),
        ),
        Feature(
            name="avg_order_value", description="Revenue per order.", expr=lambda t: ratio(t.revenue_total, t.n_orders)
        ),
        Feature(name="basket_size", description="Order lines per order.", expr=lambda t: ratio(t.n_lines, t.n_orders)),
        Feature(
            name="ipt_mean_days",
            description="Mean days between purchase days.",
            expr=lambda t: ratio(t.ipt_sum_days, _gaps(t)),
        ),
        Feature(
            name="ipt_std_days",
            description="Standard deviation of days between purchase days.",
            expr=lambda t: _non_negative(
                ratio(t.ipt_sumsq_days, _gaps(t)) - ratio(t.ipt_sum_days, _gaps(t)) ** 2
            ).sqrt(),
        ),
        Feature(
            name="refund_rate",
            description="Refunded lines per purchased line.",
            expr=lambda t: ratio(t.n_refunds, t.n_lines),
        ),
        Feature(
            name="days_since_last_interaction",
            description="Days since any interaction (NULL: none).",
            expr=lambda t: days_between(t.cutoff, t.last_interaction_at),
        ),
        Feature(
            name="days_since_last_login",
            description="Days since the last login (NULL: none).",
            expr=lambda t: days_between(t.cutoff, t.last_login_at),
        ),
        Feature(
            name=f"email_open_rate_{emax}d",
            description=f"Email opens per email sent, last {emax} days.",
            expr=lambda t: ratio(t[f"email_open_{emax}d"], t[f"email_sent_{emax}d"]),
        ),
        Feature(
            name=f"email_click_rate_{emax}d",
            description=f"Email clicks per email opened, last {emax} days.",
            expr=lambda t: ratio(t[f"email_click_{emax}d"], t[f"email_open_{emax}d"]),
        ),
    ]
    if emin != emax:
        feats.append(
            Feature(
                name=f"engagement_trend_{emin}_{emax}",
                description=f"Interaction rate in the last {emin} days relative to the last {emax} "
                "(1 = steady, <1 = falling).",
                expr=lambda t: ratio(t[f"interactions_{emin}d"] * (emax / emin), t[f"interactions_{emax}d"]),
            )
        )
    short = [w for w in fs.windows_days if w < wmax]
    if short:
        w = max(w for w in short if w <= 90) if any(w <= 90 for w in short) else min(short)
        feats += [
            Feature(
                name=f"orders_trend_{w}_{wmax}",
                description=f"Order rate in the last {w} days relative to the last {wmax} (1 = steady).",
                expr=lambda t: ratio(t[f"orders_{w}d"] * (wmax / w), t[f"orders_{wmax}d"]),
            ),
            Feature(
                name=f"revenue_trend_{w}_{wmax}",
                description=f"Revenue rate in the last {w} days relative to the last {wmax} (1 = steady).",
                expr=lambda t: ratio(t[f"revenue_{w}d"] * (wmax / w), t[f"revenue_{wmax}d"]),
            ),
        ]
    return FeatureView(
        name="customer_rfm",
        entity=CUSTOMER,
        kind="derived",
        description="Recency, frequency, monetary and engagement ratios.",
        features=tuple(feats),
    )


# Classic RF segment map (R score, F score), first match wins. Scores are 1..5, 5 = best.
RFM_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("Champions", r"5[4-5]"),
    ("Loyal Customers", r"[3-4][4-5]"),
    ("Can't Lose Them", r"[1-2]5"),
    ("At Risk", r"[1-2][3-4]"),
    ("Hibernating", r"[1-2][1-2]"),
    ("Potential Loyalists", r"[4-5][2-3]"),
    ("New Customers", r"51"),
    ("Promising", r"41"),
    ("Need Attention", r"33"),
    ("About To Sleep", r"3[1-2]"),
)

VALUE_TIERS: tuple[tuple[str, float], ...] = (("platinum", 0.9), ("gold", 0.7), ("silver", 0.4), ("bronze", 0.0))


def _rank_key(value: ir.NumericValue) -> ir.NumericValue:
    """The value a rank orders by: floats rounded to 1e-6, so that sums equal up to rounding tie.

    Running-total (DuckDB) and range-join (Spark) plans add the same amounts in different orders, so
    a tie can come out as 196.83 vs 196.82999999999998 and move a customer across a tier boundary.
    """
    return value.round(6) if value.type().is_floating() else value


def _quintile(t: ir.Table, col: str, *, descending: bool = False) -> ir.IntegerValue:
    """1..5 score from the cumulative distribution among buyers at the same cutoff (ties share a score)."""
    key = ibis.desc(_rank_key(t[col])) if descending else ibis.asc(_rank_key(t[col]))
    w = ibis.window(group_by=[t.cutoff, t.is_buyer], order_by=key)
    score = (ibis.cume_dist().over(w) * 5).ceil().clip(lower=1, upper=5).cast("int64")
    return ibis.ifelse(t.is_buyer, score, ibis.null("int64"))


def _segment_of(t: ir.Table) -> ir.StringValue:
    cases = []
    for name, pattern in RFM_SEGMENTS:
        r_set, f_set = re.fullmatch(r"(\[[0-9-]+\]|[0-9])(\[[0-9-]+\]|[0-9])", pattern).groups()
        cases.append((_score_in(t.r_score, r_set) & _score_in(t.f_score, f_set), name))
    return ibis.ifelse(t.is_buyer, ibis.cases(*cases, else_="Other"), "Prospect")


def _score_in(score: ir.IntegerValue, spec: str) -> ir.BooleanValue:
    if spec.startswith("["):
        lo, hi = (int(x) for x in spec[1:-1].split("-"))
        return score.between(lo, hi)
    return score == int(spec)


def _value_tier(t: ir.Table, revenue_col: str) -> ir.StringValue:
    w = ibis.window(group_by=[t.cutoff, t.is_buyer], order_by=ibis.asc(_rank_key(t[revenue_col])))
    pct = ibis.percent_rank().over(w)
    tier = ibis.cases(*[(pct >= lo, name) for name, lo in VALUE_TIERS], else_="bronze")
    return ibis.cases((~t.is_buyer, "none"), (t[revenue_col] <= 0, "inactive"), else_=tier)


def _segments(fs: FeatureSettings) -> FeatureView:
    wmax = max(fs.windows_days)
    loyal_window = 365 if 365 in fs.windows_days else wmax

    def lifecycle(t: ir.Table) -> ir.StringValue:
        return ibis.cases(
            (~t.is_buyer, "prospect"),
            (t.recency_days > fs.churned_days, "churned"),
            (t.recency_days > fs.at_risk_days, "at-risk"),
            (t.customer_age_days <= fs.new_days, "new"),
            (t[f"orders_{loyal_window}d"] >= fs.loyal_min_orders_365d, "loyal"),
            else_="active",
        )

    return FeatureView(
        name="customer_segments",
        entity=CUSTOMER,
        kind="segment",
        description="RFM scores, named RFM segment, value tier and lifecycle stage at the cutoff.",
        features=(
            Feature(
                name="r_score",
                description="Recency quintile among buyers (5 = most recent).",
                expr=lambda t: _quintile(t, "recency_days", descending=True),
                dtype="int64",
            ),
            Feature(
                name="f_score",
                description="Order-count quintile among buyers (5 = most orders).",
                expr=lambda t: _quintile(t, "n_orders"),
                dtype="int64",
            ),
            Feature(
                name="m_score",
                description="Revenue quintile among buyers (5 = highest spend).",
                expr=lambda t: _quintile(t, "revenue_total"),
                dtype="int64",
            ),
            Feature(
                name="rfm_segment",
                description="Named RF segment (Champions, Loyal Customers, At Risk, ...).",
                expr=_segment_of,
                dtype="string",
            ),
            Feature(
                name="value_tier",
                description=f"Tier by revenue in the last {wmax} days among buyers: platinum top 10%, "
                "gold next 20%, silver next 30%, bronze rest; inactive: no spend in the window; none: never bought.",
                expr=lambda t: _value_tier(t, f"revenue_{wmax}d"),
                dtype="string",
            ),
            Feature(
                name="lifecycle_stage",
                description=f"prospect (never bought) > churned (no purchase in {fs.churned_days}d) > "
                f"at-risk (none in {fs.at_risk_days}d) > new (first purchase within {fs.new_days}d) > "
                f"loyal (>= {fs.loyal_min_orders_365d} orders in {loyal_window}d) > active.",
                expr=lifecycle,
                dtype="string",
            ),
        ),
    )


def _complete(t: ir.Table, days: int) -> ir.BooleanValue:
    """The label window [cutoff, cutoff + days) lies inside the observed data."""
    return t.cutoff + ibis.interval(days=days) <= t.observed_until


def _labels(fs: FeatureSettings, categories: Sequence[str]) -> tuple[FeatureView, ...]:
    ch, va, pr = fs.churn_horizon_days, fs.value_horizon_days, fs.propensity_horizon_days
    future = FeatureView(
        name="customer_future_orders",
        entity=CUSTOMER,
        kind="future",
        source="order_events",
        window_days=max(ch, va, pr),
        description="Purchases at or after the cutoff (label inputs).",
        features=(
            Feature(
                name=f"future_orders_{ch}d",
                description=f"Orders begun in [t, t+{ch}d).",
                expr=lambda t: _count(t.order_start.sum(where=ahead(t, ch))),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name=f"future_orders_{pr}d",
                description=f"Orders begun in [t, t+{pr}d).",
                expr=lambda t: _count(t.order_start.sum(where=ahead(t, pr))),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name=f"future_purchase_days_{va}d",
                description=f"Purchase days in [t, t+{va}d).",
                expr=lambda t: _count(t.new_day.sum(where=ahead(t, va))),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name=f"future_revenue_{va}d",
                description=f"Gross revenue in [t, t+{va}d).",
                expr=lambda t: t.revenue.sum(where=ahead(t, va)),
                fill=0.0,
            ),
        ),
    )
    future_refunds = FeatureView(
        name="customer_future_refunds",
        entity=CUSTOMER,
        kind="future",
        source="refund_events",
        window_days=va,
        description="Refunds at or after the cutoff (deducted from future value).",
        features=(
            Feature(
                name=f"future_refunds_{va}d",
                description=f"Refunded amount in [t, t+{va}d).",
                expr=lambda t: t.amount.sum(where=ahead(t, va)),
                fill=0.0,
            ),
        ),
    )
    labels = [
        Feature(
            name=f"label_churn_{ch}d",
            description=f"1 if a customer who has bought makes no purchase in [t, t+{ch}d); NULL for prospects.",
            expr=lambda t: ibis.ifelse(
                t.is_buyer & _complete(t, ch), (t[f"future_orders_{ch}d"] == 0).cast("int64"), ibis.null("int64")
            ),
            dtype="int64",
        ),
        Feature(
            name=f"label_value_{va}d",
            description=f"Net spend (revenue - refunds) in [t, t+{va}d).",
            expr=lambda t: ibis.ifelse(
                _complete(t, va), t[f"future_revenue_{va}d"] - t[f"future_refunds_{va}d"], ibis.null("float64")
            ),
        ),
        Feature(
            name=f"label_purchase_days_{va}d",
            description=f"Purchase days (BTYD transactions) in [t, t+{va}d).",
            expr=lambda t: ibis.ifelse(_complete(t, va), t[f"future_purchase_days_{va}d"], ibis.null("int64")),
            dtype="int64",
        ),
        Feature(
            name=f"label_purchase_{pr}d",
            description=f"1 if any purchase in [t, t+{pr}d).",
            expr=lambda t: ibis.ifelse(
                _complete(t, pr), (t[f"future_orders_{pr}d"] > 0).cast("int64"), ibis.null("int64")
            ),
            dtype="int64",
        ),
    ]
    views = [future, future_refunds]
    if categories:

        def bought(cat: str) -> Expr:
            return lambda t: _count((t.category == cat).sum(where=ahead(t, pr)))

        def label_of(cat: str) -> Expr:
            col = f"future_lines_{pr}d_cat_{slug(cat)}"
            return lambda t: ibis.ifelse(_complete(t, pr), (t[col] > 0).cast("int64"), ibis.null("int64"))

        views.append(
            FeatureView(
                name="customer_future_categories",
                entity=CUSTOMER,
                kind="future",
                source="category_lines",
                window_days=pr,
                description="Purchased lines per top category at or after the cutoff (label inputs).",
                features=tuple(
                    Feature(
                        name=f"future_lines_{pr}d_cat_{slug(c)}",
                        description=f"Lines bought in '{c}' in [t, t+{pr}d).",
                        expr=bought(c),
                        dtype="int64",
                        fill=0,
                    )
                    for c in categories
                ),
            )
        )
        labels += [
            Feature(
                name=f"label_purchase_{pr}d_cat_{slug(c)}",
                description=f"1 if the customer buys in category '{c}' in [t, t+{pr}d).",
                expr=label_of(c),
                dtype="int64",
            )
            for c in categories
        ]
    views.append(
        FeatureView(
            name="customer_labels",
            entity=CUSTOMER,
            kind="label",
            description="Training labels; NULL where the label window is not fully observed.",
            features=tuple(labels),
        )
    )
    return tuple(views)


def build_registry(fs: FeatureSettings, categories: Sequence[str] = ()) -> FeatureRegistry:
    """Every feature view for these settings, in evaluation order."""
    views: list[FeatureView] = [_transactions_lifetime()]
    views += [_transactions_window(w) for w in fs.windows_days]
    views += [_refunds_lifetime(), _assortment_lifetime()]
    views += [_engagement_window(w) for w in fs.engagement_windows_days]
    views += [_activity_lifetime(), _profile(), _rfm_derived(fs), _segments(fs)]
    views += list(_labels(fs, categories))
    names = [f.name for v in views for f in v.features]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:  # pragma: no cover - guards future edits of this module
        raise ValueError(f"feature names declared twice: {sorted(dupes)}")
    return FeatureRegistry(views=tuple(views), categories=tuple(categories))


def feature_services(registry: FeatureRegistry) -> dict[str, FeatureService]:
    """Versioned feature sets per model. v1: every model input feature."""
    inputs = tuple(registry.model_features)
    return {
        name: FeatureService(name=name, description=desc, features=inputs)
        for name, desc in (
            ("churn_v1", "Inputs of the churn classifier."),
            ("clv_v1", "Inputs of the future-value model."),
            ("propensity_v1", "Inputs of the purchase-propensity model."),
        )
    }
