"""Compile the declarative feature definitions into one Ibis expression and run it.

Design (why it is fast and point-in-time correct):
- Raw tables are first reduced to a few *grains* (order events, refund events, first purchases,
  interaction days, ...) with window functions computed once over all history. Each grain row
  only carries facts known at its own timestamp (e.g. the gap to the *previous* purchase day).
- Cutoffs are midnight UTC dates. Each grain is range-joined to the cutoffs on
  `timestamp < cutoff` (and `>= cutoff - max window` where every view of that grain is windowed),
  and *all* views of one grain are fused into a single grouped aggregation with conditional
  aggregates, so each grain is scanned once for every feature and cutoff.
- Label inputs are joined on `cutoff <= timestamp < cutoff + horizon`: the two sides never meet.
The expression is engine-portable Ibis: DuckDB by default, PySpark with the same definitions.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ibis
import ibis.expr.types as ir
import pandas as pd

from custops.errors import ConfigError
from custops.features.definitions import FeatureRegistry, FeatureView, days_between

log = logging.getLogger(__name__)

KEY = ("customer_id", "cutoff")


# ---------------------------------------------------------------- grains


def order_events(tx: ir.Table) -> ir.Table:
    """Purchases per (customer, order, timestamp) with order-start, new-day, first-day and day-gap columns."""
    purchases = tx.filter(tx.status == "purchase")
    ev = purchases.group_by(["customer_id", "order_id", "timestamp"]).aggregate(
        revenue=purchases.amount.sum(),
        lines=purchases.amount.count(),
        quantity=purchases.quantity.sum(),
    )
    by_order = ibis.window(group_by=[ev.customer_id, ev.order_id], order_by=ev.timestamp)
    by_customer = ibis.window(group_by=ev.customer_id, order_by=[ev.timestamp, ev.order_id])
    ev = ev.mutate(
        order_start=(ibis.row_number().over(by_order) == 0).cast("int64"),
        prev_ts=ev.timestamp.lag().over(by_customer),
    )
    day, prev_day = ev.timestamp.truncate("D"), ev.prev_ts.truncate("D")
    new_day = ev.prev_ts.isnull() | (day != prev_day)
    first_day = ev.timestamp.min().over(ibis.window(group_by=ev.customer_id)).truncate("D")
    return ev.mutate(
        new_day=new_day.cast("int64"),
        first_day=(day == first_day).cast("int64"),
        gap_days=ibis.ifelse(new_day & ev.prev_ts.notnull(), days_between(day, prev_day), ibis.null("float64")),
    ).drop("prev_ts")


def refund_events(tx: ir.Table) -> ir.Table:
    """Refund lines (amounts positive)."""
    return tx.filter(tx.status == "refund").select("customer_id", "timestamp", "amount")


def first_purchases(tx: ir.Table) -> ir.Table:
    """First purchase time of each product and each category per customer."""
    purchases = tx.filter(tx.status == "purchase")
    parts = []
    for kind, col in (("product", "product_id"), ("category", "category")):
        p = purchases.filter(purchases[col].notnull())
        parts.append(
            p.group_by(["customer_id", col])
            .aggregate(timestamp=p.timestamp.min())
            .select("customer_id", "timestamp", kind=ibis.literal(kind))
        )
    return parts[0].union(parts[1])


def category_lines(tx: ir.Table) -> ir.Table:
    """Purchased lines with a category (for per-category labels)."""
    purchases = tx.filter((tx.status == "purchase") & tx.category.notnull())
    return purchases.select("customer_id", "timestamp", "category")


def interaction_days(ix: ir.Table) -> ir.Table:
    """Interaction counts per (customer, day, event type); `timestamp` is the day start."""
    day = ix.mutate(timestamp=ix.timestamp.truncate("D"))
    return day.group_by(["customer_id", "timestamp", "event_type"]).aggregate(n=day.timestamp.count())


def activity_days(ix: ir.Table) -> ir.Table:
    """Last interaction and last login per (customer, day); `timestamp` is the day start."""
    day = ix.mutate(day=ix.timestamp.truncate("D"))
    return (
        day.group_by(["customer_id", "day"])
        .aggregate(
            last_ts=day.timestamp.max(),
            last_login_ts=day.timestamp.max(where=day.event_type == "login"),
        )
        .rename(timestamp="day")
    )


GRAINS = {
    "order_events": ("transactions", order_events),
    "refund_events": ("transactions", refund_events),
    "first_purchases": ("transactions", first_purchases),
    "category_lines": ("transactions", category_lines),
    "interaction_days": ("interactions", interaction_days),
    "activity_days": ("interactions", activity_days),
}


# ---------------------------------------------------------------- cutoffs


def normalize_cutoffs(cutoffs: Sequence[dt.date | dt.datetime | str | pd.Timestamp]) -> list[pd.Timestamp]:
    """Sorted unique cutoffs as midnight timestamps; a cutoff with a time of day is an error."""
    if not cutoffs:
        raise ConfigError("no cutoffs given: pass at least one date (YYYY-MM-DD)")
    out = []
    for c in cutoffs:
        try:
            ts = pd.Timestamp(dt.datetime.fromisoformat(c) if isinstance(c, str) else c)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"cutoff {c!r} is not a date (expected YYYY-MM-DD)") from e
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        if ts != ts.normalize():
            raise ConfigError(f"cutoff {c!r} has a time of day; cutoffs are dates (midnight UTC)")
        out.append(ts)
    return sorted(set(out))


def default_cutoffs(data_end: pd.Timestamp, n: int, every_months: int = 1) -> list[pd.Timestamp]:
    """`n` month-start cutoffs, the last one the first month start after `data_end`."""
    last = (pd.Timestamp(data_end).normalize() + pd.offsets.MonthBegin(1)).normalize()
    return [last - pd.DateOffset(months=every_months * i) for i in range(n - 1, -1, -1)]


# ---------------------------------------------------------------- assembly


@dataclass(frozen=True)
class _Group:
    source: str
    direction: str  # "past" | "future"
    views: tuple[FeatureView, ...]

    @property
    def reach_days(self) -> int | None:
        if any(v.window_days is None for v in self.views):
            return None
        return max(v.window_days for v in self.views)  # type: ignore[type-var]


def _groups(registry: FeatureRegistry) -> list[_Group]:
    by: dict[tuple[str, str], list[FeatureView]] = defaultdict(list)
    for v in registry.views:
        if v.kind in ("aggregate", "future"):
            assert v.source is not None
            by[(v.source, "past" if v.kind == "aggregate" else "future")].append(v)
    return [_Group(src, d, tuple(vs)) for (src, d), vs in by.items()]


def _spine(tables: Mapping[str, ir.Table], cut: ir.Table, observed_until: pd.Timestamp) -> ir.Table:
    """One row per (customer, cutoff) for customers who existed before the cutoff."""
    tx, ix, cust = tables["transactions"], tables.get("interactions"), tables["customers"]
    seen = tx.select("customer_id", "timestamp")
    if ix is not None:
        seen = seen.union(ix.select("customer_id", "timestamp"))
    first_seen = seen.group_by("customer_id").aggregate(first_seen_at=seen.timestamp.min())
    c = cust.select("customer_id", "signup_at", "country", "acquisition_channel")
    c = c.left_join(first_seen, "customer_id").select(c, first_seen.first_seen_at)
    c = c.mutate(exists_from=ibis.least(c.signup_at, c.first_seen_at))
    spine = c.join(cut, c.exists_from < cut.cutoff)
    return spine.mutate(observed_until=ibis.literal(observed_until.to_pydatetime(), type="timestamp"))


def _aggregate(grain: ir.Table, cut: ir.Table, group: _Group) -> ir.Table:
    if group.direction == "past":
        pred = [grain.timestamp < cut.cutoff]
        if group.reach_days is not None:
            pred.append(grain.timestamp >= cut.cutoff - ibis.interval(days=group.reach_days))
    else:
        reach = group.reach_days
        assert reach is not None
        pred = [grain.timestamp >= cut.cutoff, grain.timestamp < cut.cutoff + ibis.interval(days=reach)]
    j = grain.join(cut, pred)
    feats = {f.name: f.expr(j) for v in group.views for f in v.features}
    return j.group_by(list(KEY)).aggregate(**feats)


def _empty_grain(source_table: str, grain_name: str) -> ir.Table:
    """A typed empty grain for an absent optional table (e.g. no interactions file)."""
    schemas = {
        "interaction_days": {"customer_id": "string", "timestamp": "timestamp", "event_type": "string", "n": "int64"},
        "activity_days": {
            "customer_id": "string",
            "timestamp": "timestamp",
            "last_ts": "timestamp",
            "last_login_ts": "timestamp",
        },
    }
    if grain_name not in schemas:
        raise ConfigError(f"the '{source_table}' table is required for grain '{grain_name}'")
    return ibis.memtable(pd.DataFrame({k: pd.Series(dtype=_pd_dtype(v)) for k, v in schemas[grain_name].items()}))


def _pd_dtype(ibis_type: str) -> str:
    return {"string": "object", "timestamp": "datetime64[us]", "int64": "int64"}[ibis_type]


def build_expression(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[pd.Timestamp],
    registry: FeatureRegistry,
    *,
    observed_until: pd.Timestamp,
    materialize: bool = True,
) -> ir.Table:
    """The feature + label table for every (customer, cutoff) as one Ibis expression.

    `tables` holds validated `transactions`, `customers` and optionally `interactions` as Ibis
    tables; `observed_until` is the exclusive end of observed data (labels past it are NULL).
    """
    cut = ibis.memtable(pd.DataFrame({"cutoff": pd.to_datetime(list(cutoffs)).astype("datetime64[us]")}))
    t = _spine(tables, cut, observed_until)

    grains: dict[str, ir.Table] = {}
    for group in _groups(registry):
        table_name, make = GRAINS[group.source]
        if group.source not in grains:
            src = tables.get(table_name)
            grain = make(src) if src is not None else _empty_grain(table_name, group.source)
            # Materialise each grain once: several groups (past and future) read it.
            grains[group.source] = grain.cache() if materialize else grain
        agg = _aggregate(grains[group.source], cut, group)
        cols = [c for c in agg.columns if c not in KEY]
        t = t.left_join(agg, list(KEY)).select(*t.columns, *[agg[c] for c in cols])

    fills = {
        f.name: t[f.name].fill_null(f.fill)
        for v in registry.views
        if v.kind in ("aggregate", "future")
        for f in v.features
        if f.fill is not None
    }
    t = t.mutate(**fills)
    t = t.mutate(is_buyer=t.n_orders > 0)
    for v in registry.views:
        if v.kind == "derived":
            t = t.mutate(**{f.name: f.expr(t) for f in v.features})
    if materialize:
        # Materialise before the window functions: otherwise the SQL compiler inlines the
        # join tree into every window expression that references an earlier one.
        t = t.cache()
    pending = [f for v in registry.views if v.kind in ("segment", "label") for f in v.features]
    while pending:
        # Features that only reference existing columns are added together; those that reference
        # a feature of this pass wait for the next pass (after a materialisation, see above).
        ready, waiting = {}, []
        for f in pending:
            try:
                ready[f.name] = f.expr(t)
            except (AttributeError, ibis.common.exceptions.IbisTypeError):
                waiting.append(f)
        if not ready:
            raise ConfigError(f"features reference unknown columns: {[f.name for f in waiting]}")
        t = t.mutate(**ready)
        if waiting and materialize:
            t = t.cache()
        pending = waiting

    keep = [*KEY, *registry.feature_names, *registry.label_names]
    return t.select(*keep)


def top_categories(tx: ir.Table, n: int) -> list[str]:
    """The `n` categories with the most purchased lines (for per-category labels)."""
    if n <= 0 or "category" not in tx.columns:
        return []
    p = tx.filter((tx.status == "purchase") & tx.category.notnull())
    top = p.group_by("category").aggregate(n=p.category.count()).order_by([ibis.desc("n"), "category"]).limit(n)
    return [str(c) for c in top.to_pandas()["category"].tolist()]
