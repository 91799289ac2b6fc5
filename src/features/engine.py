"""Compile the declarative feature definitions into one Ibis expression and run it.

Design (why it is fast and point-in-time correct):
- Raw tables are first reduced to a few *grains* (order events, refund events, first purchases,
  interaction days, ...) with window functions computed once over all history. Each grain row
  only carries facts known at its own timestamp (e.g. the gap to the *previous* purchase day).
  Over events ingest sorted, `custops.features.native` builds the same grains in kernel passes.
- Cutoffs are midnight UTC dates. Each grain is range-joined to the cutoffs on
  `timestamp < cutoff` (and `>= cutoff - max window` where every view of that grain is windowed),
  and *all* views of one grain are fused into a single grouped aggregation with conditional
  aggregates, so each grain is scanned once for every feature and cutoff.
- Label inputs are joined on `cutoff <= timestamp < cutoff + horizon`: the two sides never meet.
The expression is engine-portable Ibis: DuckDB by default, PySpark with the same definitions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.operations as ops
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from custops.data.schema import CUSTOMER_KEY
from custops.errors import ConfigError
from custops.features import native, prefix, ranks
from custops.features.definitions import Feature, FeatureRegistry, FeatureView, days_between

log = logging.getLogger(__name__)

KEY = ("customer_id", "cutoff")


# ---------------------------------------------------------------- grains


def _is_purchase(tx: ir.Table) -> ir.BooleanValue:
    """Whether a transaction line is a purchase (NULL status: not one)."""
    return tx.status == "purchase"


def _purchases(tx: ir.Table) -> ir.Table:
    return tx.filter(_is_purchase(tx))


def _flag_purchases(tx: ir.Table) -> ir.Table:
    """(customer_id, timestamp, purchase): every transaction line, flagged when `_purchases` keeps it."""
    return tx.select("customer_id", "timestamp", purchase=_is_purchase(tx).fill_null(False))


def order_events(tx: ir.Table) -> ir.Table:
    """Purchases per (customer, order, timestamp) with order-start, new-day, first-day and day-gap columns.

    Over events ingest sorted, `custops.features.native.order_events` computes the same rows in one pass.
    """
    purchases = _purchases(tx)
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
        # The first purchase time, from the same window as `prev_ts` (one sort for both, not a
        # third window): ordered by time, the frame's first row is the customer's earliest.
        first_ts=ev.timestamp.first().over(by_customer),
    )
    day, prev_day = ev.timestamp.truncate("D"), ev.prev_ts.truncate("D")
    new_day = ev.prev_ts.isnull() | (day != prev_day)
    first_day = ev.first_ts.truncate("D")
    return ev.mutate(
        new_day=new_day.cast("int64"),
        first_day=(day == first_day).cast("int64"),
        gap_days=ibis.ifelse(new_day & ev.prev_ts.notnull(), days_between(day, prev_day), ibis.null("float64")),
    ).drop("prev_ts", "first_ts")


def refund_events(tx: ir.Table) -> ir.Table:
    """Refund lines (amounts positive)."""
    return tx.filter(tx.status == "refund").select("customer_id", "timestamp", "amount")


def first_purchases(tx: ir.Table) -> ir.Table:
    """First purchase time of each product and each category per customer."""
    purchases = tx.filter(_is_purchase(tx))
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
    purchases = tx.filter(_is_purchase(tx) & tx.category.notnull())
    return purchases.select("customer_id", "timestamp", "category")


def interaction_events(ix: ir.Table) -> ir.Table:
    """Interactions, one row each.

    Not compacted per (customer, day, event type): at 20M events that grouping kept 80% of the rows
    and cost more than it saved (windows are whole days from a midnight cutoff, so counting events
    and counting their days' totals give the same numbers).
    """
    return ix.select("customer_id", "timestamp", "event_type")


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
    "interaction_events": ("interactions", interaction_events),
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
    """Views fused per (source, direction): one range join and one aggregation each.

    (Measured alternatives that lost on 2 cores: stacking all grains into one UNION with a single
    join, and per-bucket partials combined by a running window for all-history views.)
    """
    by: dict[tuple[str, str], list[FeatureView]] = defaultdict(list)
    for v in registry.views:
        if v.kind in ("aggregate", "future"):
            assert v.source is not None
            by[(v.source, "past" if v.kind == "aggregate" else "future")].append(v)
    return [_Group(src, d, tuple(vs)) for (src, d), vs in by.items()]


def _spine(customers: ir.Table, cut: ir.Table, observed_until: pd.Timestamp) -> ir.Table:
    """One row per (customer, cutoff) for customers who existed before the cutoff."""
    spine = customers.join(cut, customers.exists_from < cut.cutoff)
    return spine.mutate(observed_until=ibis.literal(observed_until.to_pydatetime(), type="timestamp"))


def _customers(tables: Mapping[str, ir.Table], first_seen: ir.Table | None = None) -> ir.Table:
    """Every customer with profile columns, `exists_from` (signup or first activity, if earlier) and
    `buyer_from` (first purchase: the prefix plan orders its rows by it, see `native.spine`).

    `first_seen`: the (customer_id, first_seen_at, buyer_from) rows this defines, computed
    elsewhere (`custops.features.native.first_seen`).
    """
    tx, ix, cust = tables["transactions"], tables.get("interactions"), tables["customers"]
    if first_seen is None:
        seen = _seen_events(tx, ix)
        first_seen = seen.group_by("customer_id").aggregate(
            first_seen_at=seen.timestamp.min(), buyer_from=seen.timestamp.min(where=seen.purchase)
        )
    c = cust.select("customer_id", "signup_at", "country", "acquisition_channel")
    c = c.left_join(first_seen, "customer_id").select(c, first_seen.first_seen_at, first_seen.buyer_from)
    return c.mutate(exists_from=ibis.least(c.signup_at, c.first_seen_at))


def _seen_parts(tx: ir.Table, ix: ir.Table | None) -> list[ir.Table]:
    """(customer_id, timestamp, purchase) of every event, per source table: what a customer's first
    activity and first purchase are taken from (in SQL, or by `native.first_seen`)."""
    parts = [_flag_purchases(tx)]
    if ix is not None:
        parts.append(ix.select("customer_id", "timestamp", purchase=ibis.literal(False)))
    return parts


def _seen_events(tx: ir.Table, ix: ir.Table | None) -> ir.Table:
    """`_seen_parts` as one table."""
    return functools.reduce(ir.Table.union, _seen_parts(tx, ix))


def _aggregate(grain: ir.Table, cut: ir.Table, group: _Group) -> ir.Table:
    """Every feature of one group: the grain range-joined to the cutoffs, then one grouped aggregate."""
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


def _referenced(value: ir.Value) -> set[str]:
    """Column names an expression reads."""
    return {f.name for f in value.op().find(ops.Field, filter=ops.Value)}  # not the tables' own lineage


def _empty_grain(source_table: str, grain_name: str) -> ir.Table:
    """A typed empty grain for an absent optional table (e.g. no interactions file)."""
    # customer_id is the integer key of `_integer_keys` here, like in every other grain.
    schemas = {
        "interaction_events": {"customer_id": "int64", "timestamp": "timestamp", "event_type": "string"},
        "activity_days": {
            "customer_id": "int64",
            "timestamp": "timestamp",
            "last_ts": "timestamp",
            "last_login_ts": "timestamp",
        },
    }
    if grain_name not in schemas:
        raise ConfigError(f"the '{source_table}' table is required for grain '{grain_name}'")
    frame = pd.DataFrame({k: pd.Series(dtype=_pd_dtype(v)) for k, v in schemas[grain_name].items()})
    return ibis.memtable(frame, schema=schemas[grain_name])  # explicit: empty object columns infer as NULL type


def _pd_dtype(ibis_type: str) -> str:
    return {"string": "object", "timestamp": "datetime64[us]", "int64": "int64"}[ibis_type]


def build_expression(
    tables: Mapping[str, ir.Table],
    cutoffs: Sequence[pd.Timestamp],
    registry: FeatureRegistry,
    *,
    observed_until: pd.Timestamp,
    materialize: bool = True,
    plan: str | None = None,
    shared: dict[str, Any] | None = None,
) -> ir.Table:
    """The feature + label table for every (customer, cutoff) as one Ibis expression.

    `tables` holds validated `transactions`, `customers` and optionally `interactions` as Ibis
    tables; `observed_until` is the exclusive end of observed data (labels past it are NULL).
    `plan` is "prefix" (running totals and as-of lookups, `custops.features.prefix`) or "range"
    (range joins); default: `choose_plan`. Both compute the same values. `shared` (a dict the caller
    keeps) lets calls for batches of cutoffs of one build share what does not depend on the cutoffs:
    integer keys, customers and the prefix plan's running totals.
    """
    cutoffs = sorted(pd.Timestamp(c) for c in cutoffs)
    shared = shared if shared is not None else {}
    shared["cutoffs"], shared["observed_until"] = cutoffs, observed_until
    if shared.get("steps") is not None:
        # A replayable batch (see `replay_batch`): the cutoffs are a table of a fixed name.
        cut = register_cutoffs(ibis.get_backend(tables["transactions"]), shared, cutoffs)
    else:
        cut = ibis.memtable(pd.DataFrame({"cutoff": pd.to_datetime(cutoffs).astype("datetime64[us]")}))
    physical = choose_plan(tables, plan, materialize)
    if "keyed" not in shared:
        if physical == "prefix":
            prefix.warm_kernels()  # while the engine reads (joins, copies) the events: it holds no GIL
        if shared.get("stored_keys"):
            shared["keyed"] = _stored_keys(tables)  # ingest's keys (`custops.features.builder.keys_from_one_ingest`)
            if physical == "prefix":
                # Grains computed in one pass over the events as ingest sorted them, not in SQL.
                keyed = shared["keyed"][0]
                tx, ix = keyed.get("transactions"), keyed.get("interactions")
                shared["native_sources"] = (_purchases(tx) if tx is not None else None, ix)
        else:
            keyed, ids = _integer_keys(tables, materialize)
            if physical == "prefix":
                # Every grain and the customers read the re-keyed events once each: join the ids once,
                # keeping only the columns they read (e.g. not the interactions' product and channel).
                keyed = {
                    n: tab.select(*_read_columns(n, tab)).cache() if n != "customers" else tab
                    for n, tab in keyed.items()
                }
            shared["keyed"] = keyed, ids
    tables, ids = shared["keyed"]
    if "customers" not in shared:
        # Batches of cutoffs share it; the range plan (Spark) keeps it inline as before.
        first_seen = None
        if "native_sources" in shared:
            tx = tables["transactions"]
            arrow = native.first_seen(ibis.get_backend(tx), _seen_parts(tx, tables.get("interactions")))
            first_seen = ibis.memtable(arrow) if arrow is not None else None
        shared["customers"] = (
            _customers(tables, first_seen).cache() if physical == "prefix" else _customers(tables, first_seen)
        )
    t = _spine(shared["customers"], cut, observed_until)

    grains: dict[str, ir.Table] = {}
    groups = _groups(registry)
    for group in groups:
        if group.source not in grains:
            table_name, make = GRAINS[group.source]
            src = tables.get(table_name)
            grain = make(src) if src is not None else _empty_grain(table_name, group.source)
            grains[group.source] = grain
    rebase = None
    if physical == "prefix":
        t, groups, rebase = _attach_prefix_features(t, groups, grains, shared)
        if groups:
            shared["steps"] = None  # range joins are planned per batch: no replay
        else:
            # Every grain's running totals are computed and kept: the re-keyed events are not read
            # again by this or a later batch, so their copies leave the engine's memory.
            for name, tab in tables.items():
                if name != "customers":
                    _release(tab)
    for source in {g.source for g in groups}:
        if materialize and not isinstance(grains[source].op(), ops.InMemoryTable):
            # Materialise each grain the range join reads once: both directions read it. (An empty
            # grain is an in-memory table: caching it would run on Ibis's default backend.)
            grains[source] = grains[source].cache()
    for group in groups:
        agg = _aggregate(grains[group.source], cut, group)
        cols = [c for c in agg.columns if c not in KEY]
        t = t.left_join(agg, list(KEY)).select(*t.columns, *[agg[c] for c in cols])

    t = _derive(t, registry)
    if materialize and groups:
        # Materialise before the window functions: otherwise the SQL compiler inlines the
        # join tree into every window expression that references an earlier one. (Without range
        # joins, t is the cached spine and its lookups: recomputing that is cheaper than a copy.)
        t = t.cache()

    # Segment features use window functions (sorts): run them on a narrow projection of just the
    # columns they read, then join back, instead of sorting the whole wide table once per window.
    segment = [f for v in registry.views if v.kind == "segment" for f in v.features]
    ranked = None
    if segment and rebase is not None and not groups:
        ranked = _rank_segments(t, segment, registry, rebase, shared)
    if ranked is not None:
        t = ranked
    elif segment:
        needed = set().union(*(_referenced(f.expr(t)) for f in segment if _try_expr(f, t) is not None))
        narrow = t.select(*KEY, *sorted(needed - set(KEY)))

        def between(table: ir.Table, done: int) -> ir.Table:  # a materialisation before the next pass
            return _materialize(table, shared, f"segments{done}") if materialize else table

        narrow = _in_passes(narrow, segment, between=between)
        seg = narrow.select(*KEY, *[f.name for f in segment])
        t = t.join(seg, list(KEY)).select(*t.columns, *[seg[f.name] for f in segment])

    labels = [f for v in registry.views if v.kind == "label" for f in v.features]
    t = t.mutate(**{f.name: f.expr(t) for f in labels})
    keep = [*registry.feature_names, *registry.label_names]
    if rebase is not None and not groups and "lookup_arrow" in shared:
        shared["output"] = _output_plan(t, keep, ids, shared)
    t = t.join(ids, t.customer_id == ids.customer_key)
    return t.select(customer_id=ids.customer_id, cutoff=t.cutoff, **{c: t[c] for c in keep})


@dataclass
class OutputPlan:
    """How a batch's output rows are put together without a second copy through the engine.

    Most output columns are lookups as they are (counts, sums, last-seen times): they are taken from
    the lookup table's Arrow columns, with the declared fill applied by Arrow. Only the computed
    columns (ratios, segments, labels) come from the engine, from a query that only projects the
    lookup table, so its rows are in the lookup table's order (checked per chunk). String ids are
    looked up by integer key in one array instead of a join. Measured at 1M customers: the engine's
    conversion of all 80 columns to Arrow was the largest part of the final query.
    """

    sql: str  # customer key, then the computed columns, in lookup-table order
    columns: list[str]  # output columns, in order (customer_id and cutoff first)
    passthrough: dict[str, tuple[str, Any]]  # output column -> (lookup column, fill or None)
    id_values: pa.Array  # string id of each integer key (position = key)

    def never_null(self) -> set[str]:
        """Output columns this plan never leaves NULL: the keys, and lookups passed through with a fill."""
        return {"customer_id", "cutoff"} | {c for c, (_, fill) in self.passthrough.items() if fill is not None}

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """`schema` with the `never_null` columns marked non-nullable, as the Spark engine's analysed
        schema marks them: Parquet stores them as required columns, without definition levels (about
        a tenth less encoding time for the snapshot's 20M-event build)."""
        keep = self.never_null()
        return pa.schema([f.with_nullable(f.name not in keep) for f in schema], metadata=schema.metadata)

    def batches(self, con: Any, lookups: pa.Table, schema: pa.Schema, chunk_rows: int) -> Any:
        """Yield the output record batches of the current lookup table."""
        offset = 0
        # One array per column (the spine's come in a few chunks), sliced without copying below.
        sources = {c: lookups.column(c) for c in ("customer_id", *(src for src, _ in self.passthrough.values()))}
        sources = {c: a.chunk(0) if a.num_chunks == 1 else a.combine_chunks() for c, a in sources.items()}
        for chunk in con.con.sql(self.sql).to_arrow_reader(chunk_rows):
            n = chunk.num_rows
            keys = chunk.column(0)
            if not keys.equals(sources["customer_id"].slice(offset, n)):
                raise RuntimeError("the engine returned the feature rows in another order than the lookup table")
            arrays = []
            for name, field in zip(self.columns, schema, strict=True):
                if name == "customer_id":
                    values = self.id_values.take(keys)
                elif name in self.passthrough:
                    source, fill = self.passthrough[name]
                    values = sources[source].slice(offset, n)
                    if fill is not None and values.null_count:
                        values = pc.fill_null(values, pa.scalar(fill, values.type))
                else:
                    values = chunk.column(name)
                if not field.nullable and values.null_count:
                    raise RuntimeError(f"{name} has NULL values where the output plan has none")
                arrays.append(values if values.type == field.type else values.cast(field.type))
            offset += n
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        if offset != lookups.num_rows:
            raise RuntimeError(f"the engine returned {offset} of {lookups.num_rows} feature rows")


def _output_plan(t: ir.Table, keep: Sequence[str], ids: ir.Table, shared: dict[str, Any]) -> OutputPlan | None:
    """The `OutputPlan` of the feature table `t` (over the registered lookup table), or None."""
    tables = list(t.op().find(ops.DatabaseTable))
    if len(tables) != 1 or tables[0].name != shared.get("lookup_table") or t.op().find(ops.JoinChain):
        return None  # e.g. segment windows run in SQL and joined back: rows in any order
    base = tables[0]
    passthrough: dict[str, tuple[str, Any]] = {}
    for name in ("cutoff", *keep):
        resolved = _resolve_column(t[name].op(), base)
        if resolved is not None:
            passthrough[name] = resolved
    computed = [c for c in keep if c not in passthrough]
    con = ibis.get_backend(t)
    sql = con.compile(t.select("customer_id", *computed))
    if "id_values" not in shared:
        table = ids.order_by("customer_key").to_pyarrow()
        keys = table["customer_key"].to_numpy()
        if not np.array_equal(keys, np.arange(len(keys))):
            return None  # keys not dense from 0: the join stays
        shared["id_values"] = table["customer_id"].combine_chunks()
    log.info("output: %d columns passed through from the lookups, %d computed", len(passthrough), len(computed))
    return OutputPlan(sql, ["customer_id", "cutoff", *keep], passthrough, shared["id_values"])


def _resolve_column(value: ops.Value, base: ops.Relation) -> tuple[str, Any] | None:
    """(lookup column, fill) when `value` is a column of `base` as it is, or with a constant fill
    (`coalesce(column, literal)`) or a cast to its own type, through any projections; else None."""
    fill = None
    while True:
        if isinstance(value, ops.Field):
            if value.rel == base:
                return value.name, fill
            if not isinstance(value.rel, ops.Project):
                return None
            value = value.rel.values[value.name]
        elif isinstance(value, ops.Cast) and value.to == value.arg.dtype:
            value = value.arg
        elif (
            isinstance(value, ops.Coalesce)
            and fill is None
            and len(value.arg) == 2
            and isinstance(value.arg[1], ops.Literal)
            and value.arg[1].value is not None
            and value.dtype == value.arg[0].dtype  # e.g. an int8 literal 0 filling an int64 column
        ):
            fill = value.arg[1].value
            value = value.arg[0]
        else:
            return None


def _derive(t: ir.Table, registry: FeatureRegistry) -> ir.Table:
    """Fill the aggregates' empty values, then add `is_buyer` and the derived features."""
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
    return t


def _rank_segments(
    t: ir.Table,
    segment: Sequence[Feature],
    registry: FeatureRegistry,
    rebase: Callable[[ir.Table, Sequence[str]], ir.Table],
    shared: dict[str, Any],
) -> ir.Table | None:
    """The feature table with the segment features, their rank windows computed by `ranks`.

    Each batch runs one query for the windows' partition and order keys (a projection of the lookup
    table, so its rows come in the lookup table's order), ranks them with numpy and appends the
    results to the lookup table as columns; the segment expressions read those columns in place of
    their windows. No sort in the engine and no join back. None when a segment window does not
    qualify (see `ranks.rankable`): the caller then runs the windows in SQL.
    """
    rel = t.op()
    nodes: list[ops.WindowFunction] = []

    def collect(e: ir.Value, first: bool) -> ir.Value:
        for node in e.op().find(ops.WindowFunction, filter=ops.Value):
            # Later passes read earlier segment features: a window there (or any other) disqualifies.
            if not ranks.rankable(node, rel):
                raise _NotRankable
            if node not in nodes:
                nodes.append(node)
        return e

    try:
        _in_passes(t, segment, rewrite=collect)
    except _NotRankable:
        return None
    windows, keys = ranks.plan_windows(nodes)
    con = ibis.get_backend(t)
    name = shared["lookup_table"]
    key_sql = con.compile(t.select(*KEY, **{f"k{i}": k.to_expr() for i, k in enumerate(keys)}))
    columns = [f"custops_rank_{i}" for i in range(len(windows))]

    def compute_ranks() -> None:
        table = shared["lookup_arrow"]
        values = con.con.sql(key_sql).to_arrow_table()
        for k in KEY:  # a projection keeps the scan's order; checked, as the columns are appended by position
            if not values[k].equals(table[k]):
                raise RuntimeError(f"rank keys came back in another order than the lookup table ({k})")
        key_columns = [values[f"k{i}"] for i in range(len(keys))]
        results = ranks.compute_all(windows, key_columns)
        for col, result in zip(columns, results, strict=True):
            table = table.append_column(col, pa.array(result))
        release_lookups(con, shared)
        con.con.register(name, table)
        shared["lookup_arrow"] = table

    log.info("segments: %d rank windows computed from sorted keys, not SQL windows", len(windows))
    if windows:
        compute_ranks()
        if shared.get("steps") is not None:
            shared["steps"].append(compute_ranks)
    ranked = _derive(rebase(con.table(name), columns), registry)
    new_rel = ranked.op()
    swap = {}
    for w, col in zip(windows, columns, strict=True):
        node = w.node.replace(
            {f: ops.Field(new_rel, f.name) for f in w.node.find(ops.Field, filter=ops.Value)}, filter=ops.Value
        )
        swap[node] = ops.Field(new_rel, col)

    def read_ranks(e: ir.Value, first: bool) -> ir.Value:  # windows only occur in the first pass
        return e.op().replace(swap, filter=ops.Value).to_expr() if first else e

    return _in_passes(ranked, segment, rewrite=read_ranks)


class _NotRankable(Exception):
    """A segment window `ranks` does not compute (it runs in SQL)."""


def _in_passes(
    t: ir.Table,
    features: Sequence[Feature],
    *,
    rewrite: Callable[[ir.Value, bool], ir.Value] | None = None,
    between: Callable[[ir.Table, int], ir.Table] | None = None,
) -> ir.Table:
    """Add `features` to `t` in passes: each pass adds those whose inputs exist; one that reads a
    feature of this pass waits for the next. `rewrite(expr, first_pass)` may change each expression,
    `between(table, features_done)` runs between passes."""
    pending, first = list(features), True
    while pending:
        ready = {f.name: e for f in pending if (e := _try_expr(f, t)) is not None}
        waiting = [f for f in pending if f.name not in ready]
        if not ready:
            raise ConfigError(f"features reference unknown columns: {[f.name for f in waiting]}")
        if rewrite is not None:
            ready = {name: rewrite(e, first) for name, e in ready.items()}
        t = t.mutate(**ready)
        if waiting and between is not None:
            t = between(t, len(features) - len(waiting))
        pending, first = waiting, False
    return t


PREFIX_BACKENDS = frozenset({"duckdb"})


def choose_plan(tables: Mapping[str, ir.Table], plan: str | None = None, materialize: bool = True) -> str:
    """The physical plan: "prefix" on in-process backends we can fetch Arrow data from, else "range".

    The prefix plan executes queries while the expression is built (running totals per grain), so
    it needs `materialize`; backends without it (PySpark) use the range-join plan.
    """
    if plan is not None:
        if plan not in ("prefix", "range"):
            raise ConfigError(f"feature plan {plan!r} is not known (choose prefix or range)")
        if plan == "prefix" and not materialize:
            raise ConfigError("the prefix plan executes queries: it needs materialize=True")
        return plan
    backend = ibis.get_backend(tables["transactions"])
    return "prefix" if materialize and backend.name in PREFIX_BACKENDS else "range"


def _attach_prefix_features(
    t: ir.Table, groups: list[_Group], grains: Mapping[str, ir.Table], shared: dict[str, Any]
) -> tuple[ir.Table, list[_Group], Callable[[ir.Table, Sequence[str]], ir.Table] | None]:
    """Join every prefix-decomposable feature onto the spine `t`; returns it, the groups left for
    the range join (only the features that did not fit the prefix form) and a function that builds
    the same table over the lookup table again (with extra columns of it passed through)."""
    plans: dict[str, prefix.GrainPlan] = {}
    left: list[_Group] = []
    for group in groups:
        gp = plans.setdefault(group.source, prefix.GrainPlan(group.source, prefix.template(grains[group.source])))
        rest = {v.name: prefix.plan_view_features(gp, v, group.direction, group.reach_days) for v in group.views}
        views = prefix.split_views(group.views, rest)
        if views:
            left.append(_Group(group.source, group.direction, views))
    used = [p for p in plans.values() if p.features]
    if not used:
        return t, groups, None
    if "native_sources" in shared and "running_totals" not in shared:
        natives = native.grains(*shared["native_sources"], [p.source for p in used])
        for p in used:
            p.native = natives.get(p.source)
    after: dict[str, Callable[[], None]] = {}
    if not left:
        # Grains grouped by source table, each table's cached copy released after its last grain:
        # nothing reads it again, and the engine's memory then peaks lower.
        source_of = {p.source: GRAINS[p.source][0] for p in used}
        used.sort(key=lambda p: source_of[p.source])
        keyed = shared["keyed"][0]
        last = {source_of[p.source]: p.source for p in used}
        after = {grain: functools.partial(_release, keyed.get(table)) for table, grain in last.items()}
    con = ibis.get_backend(t)
    spine_columns = t.columns
    # The spine, in the order `native.spine` gives it (the searches then walk forward), becomes the
    # lookup table itself: its rows are the spine's, so no join brings them together. Each batch
    # reads its cutoffs from `shared` (replayed batches included).
    schema = t.schema().to_pyarrow()
    name = shared.setdefault("lookup_table", f"custops_prefix_lookups_{uuid.uuid4().hex[:12]}")
    running = shared.setdefault("running_totals", {})

    def compute_lookups() -> tuple[dict[int, dict[ops.Value, str]], dict[int, dict[prefix.Window, str]]]:
        if "customers_arrow" not in shared:  # every customer once, in key order
            customers = con.to_pyarrow(shared["customers"].order_by("customer_id"))
            shared["customers_arrow"] = customers.combine_chunks()  # one take per column and cutoff
        spine = native.spine(shared["customers_arrow"], shared["cutoffs"], shared["observed_until"], schema)
        # Ingest's keys come with its sort: events by (customer_key, timestamp).
        sorted_sources = bool(shared.get("stored_keys"))
        table, red_cols, presence_cols = prefix.lookup_table(used, con, spine, running, after, sorted_sources)
        # Registered as a view DuckDB scans in place (copying it with CREATE TABLE cost more than
        # computing it); each batch replaces the last one's (`release_lookups` drops the last).
        release_lookups(con, shared)
        con.con.register(name, table)
        shared["lookup_arrow"] = table  # `_rank_segments` appends its columns to it
        return red_cols, presence_cols

    red_cols, presence_cols = compute_lookups()
    if shared.get("steps") is not None:
        shared["steps"].append(compute_lookups)
    lookups = con.table(name)
    feats = prefix.feature_columns(used, lookups, red_cols, presence_cols)
    log.info(
        "prefix plan: %d features from running totals, %d left to range joins",
        len(feats),
        sum(len(v.features) for g in left for v in g.views),
    )

    def rebase(table: ir.Table, extra: Sequence[str] = ()) -> ir.Table:
        columns = prefix.feature_columns(used, table, red_cols, presence_cols)
        return table.select(*spine_columns, *extra, **columns)

    return lookups.select(*spine_columns, **feats), left, rebase


# ---------------------------------------------------------------- replayable batches


def start_replay(shared: dict[str, Any]) -> None:
    """Make the next `build_expression(..., shared=shared)` record its steps for `replay_batch`.

    A build in batches of cutoffs runs the same queries for every batch but with other cutoffs.
    Compiling the expression (Ibis to SQL) costs about 0.8 s per batch at 1M customers, so the first
    batch records what it executes: the SQL of each materialised step under a fixed name, and the
    lookups (Python); later batches register their cutoffs under the same name and run the recorded
    steps and the final SQL. Plans with range joins are not replayed (`shared["steps"]` is None).
    """
    shared["steps"] = []
    shared["build_id"] = uuid.uuid4().hex[:12]


def replay_batch(con: Any, shared: dict[str, Any], cutoffs: Sequence[pd.Timestamp]) -> bool:
    """Run the recorded steps for other cutoffs; False when the build cannot be replayed."""
    if not shared.get("steps"):
        return False
    register_cutoffs(con, shared, cutoffs)
    shared["cutoffs"] = sorted(pd.Timestamp(c) for c in cutoffs)
    for step in shared["steps"]:
        step()
    return True


def register_cutoffs(con: Any, shared: dict[str, Any], cutoffs: Sequence[pd.Timestamp]) -> ir.Table:
    """Register the batch's cutoffs as an Arrow view of a fixed name; returns it as a table."""
    name = f"custops_cutoffs_{shared['build_id']}"
    values = pd.to_datetime(sorted(pd.Timestamp(c) for c in cutoffs)).astype("datetime64[us]")
    with contextlib.suppress(Exception):
        con.con.unregister(name)
    con.con.register(name, pa.table({"cutoff": pa.array(values)}))
    shared.setdefault("registered", set()).add(name)
    return con.table(name)


def _materialize(expr: ir.Table, shared: dict[str, Any], key: str) -> ir.Table:
    """`expr.cache()`, or when recording for replay, a temp table of a fixed name whose SQL is kept."""
    if shared.get("steps") is None:
        return expr.cache()
    con = ibis.get_backend(expr)
    name = f"custops_{key}_{shared['build_id']}"
    sql = f'CREATE OR REPLACE TEMP TABLE "{name}" AS {con.compile(expr)}'

    def step() -> None:
        con.con.execute(sql)

    step()
    shared["steps"].append(step)
    shared.setdefault("temp_tables", set()).add(name)
    return con.table(name)


def release_batch_tables(con: Any, shared: dict[str, Any]) -> None:
    """Drop what a batched build registered or materialised under fixed names."""
    release_lookups(con, shared)
    for name in shared.get("registered", ()):
        with contextlib.suppress(Exception):
            con.con.unregister(name)
    for name in shared.get("temp_tables", ()):
        with contextlib.suppress(Exception):
            con.con.execute(f'DROP TABLE IF EXISTS "{name}"')


def release_lookups(con: Any, shared: dict[str, Any]) -> None:
    """Unregister the last batch's lookup table (its Arrow memory is freed with it)."""
    name = shared.get("lookup_table")
    if name is not None:
        with contextlib.suppress(Exception):  # never registered (no prefix features) or already gone
            con.con.unregister(name)
    shared.pop("lookup_arrow", None)


def _release(tab: ir.Table | None) -> None:
    """Drop a cached table from the engine (nothing when it is not one, or already released)."""
    if tab is not None and isinstance(tab.op(), ops.PhysicalTable):
        with contextlib.suppress(Exception):
            tab.release()


def _read_columns(table_name: str, tab: ir.Table) -> list[str]:
    """The columns of a source table that its grains or the customers' first activity may read.

    A superset, by name: every column a grain names on a derived relation, and every column it
    reads from the table itself except those a projection only passes through (`mutate` lists
    them all).
    """
    rel = tab.op()
    used = {"customer_id", "timestamp"}
    for source, make in GRAINS.values():
        if source != table_name:
            continue
        root = make(tab).op()
        used |= {f.name for f in root.find(ops.Field) if f.rel != rel}
        for node in root.find(ops.Relation):
            if rel not in node.__children__:
                continue
            if isinstance(node, ops.Project):
                values = [v for k, v in node.values.items() if not (isinstance(v, ops.Field) and v.name == k)]
            else:  # filter predicates, group keys, metrics, sort keys
                values = []
                for arg in node.__args__:
                    items = arg.values() if isinstance(arg, Mapping) else arg if isinstance(arg, tuple) else [arg]
                    values += [v for v in items if isinstance(v, ops.Value)]
            for v in values:
                used |= {f.name for f in v.find(ops.Field, filter=ops.Value) if f.rel == rel}
    return [c for c in tab.columns if c in used]


def _integer_keys(tables: Mapping[str, ir.Table], materialize: bool) -> tuple[dict[str, ir.Table], ir.Table]:
    """Replace string customer ids by dense int64 keys for the whole computation.

    Joins and group-bys on an int64 key are several times cheaper than on strings; the ids are
    mapped back once at the end. The keys number the customers table's ids: every output row is a
    customer of that table (`_spine`), and no feature of one customer reads another's events, so
    the events of an id it lacks (ingest adds every id seen in events) are left out by the join
    without changing any output. (Numbering the ids of every table took a distinct over each
    event's id: ~0.5 s CPU more at 20M events.) Returns the re-keyed tables and the
    (customer_id, customer_key) map.
    """
    ids = tables["customers"].select("customer_id").distinct()
    ids = ids.mutate(customer_key=ibis.row_number().over(order_by=ids.customer_id).cast("int64"))
    if materialize:
        ids = ids.cache()
    keyed = {}
    for name, tab in tables.items():
        if "customer_id" not in tab.columns:
            keyed[name] = tab
            continue
        j = tab.join(ids, tab.customer_id == ids.customer_id)
        keyed[name] = j.select(customer_id=ids.customer_key, **{c: j[c] for c in tab.columns if c != "customer_id"})
    return keyed, ids


def _stored_keys(tables: Mapping[str, ir.Table]) -> tuple[dict[str, ir.Table], ir.Table]:
    """`_integer_keys` from the keys ingest stored (`custops.data.schema.CUSTOMER_KEY`): each table's
    `customer_key` as its customer_id, and the customers' (customer_id, customer_key) as the map.

    Nothing is joined or copied: the grains read the validated files, whose events ingest sorted by
    (customer_key, timestamp). The caller checks that the keys come from one ingest run.
    """
    keyed = {
        name: tab.drop("customer_id").rename(customer_id=CUSTOMER_KEY) if CUSTOMER_KEY in tab.columns else tab
        for name, tab in tables.items()
    }
    return keyed, tables["customers"].select("customer_id", customer_key=tables["customers"][CUSTOMER_KEY])


def _try_expr(f: Feature, t: ir.Table) -> ir.Value | None:
    """The feature's expression on `t`, or None if it references a column `t` lacks."""
    try:
        return f.expr(t)
    except (AttributeError, ibis.common.exceptions.IbisTypeError):
        return None


def top_categories(tx: ir.Table, n: int) -> list[str]:
    """The `n` categories with the most purchased lines (for per-category labels)."""
    if n <= 0 or "category" not in tx.columns:
        return []
    p = tx.filter(_is_purchase(tx) & tx.category.notnull())
    top = p.group_by("category").aggregate(n=p.category.count()).order_by([ibis.desc("n"), "category"]).limit(n)
    return [str(c) for c in top.to_pandas()["category"].tolist()]
