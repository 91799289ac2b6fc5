"""Prefix-sum / as-of plan of the feature engine: every prefix-decomposable feature without range joins.

The range-join plan (`custops.features.engine._aggregate`) copies each grain row once per cutoff it
reaches (about ten copies per order event at 12 monthly cutoffs over four years of history). This
plan instead sorts each grain once per customer and reads every feature off running totals:

- Each reduction of a declared feature (Sum / Count / Max / Min) is split into its *measure* (the
  argument and the static part of its `where`, e.g. `event_type == 'login'`) and its *window*
  relative to the cutoff: `[cutoff + lo, cutoff + hi)` from the view's direction and reach and the
  cutoff-dependent conjuncts of `where` (`within(t, w)`: lo = -w; `ahead(t, h)`: hi = h).
- The grain is compacted to one row per (customer, timestamp) and the measures are accumulated per
  customer in time order: P(x) = the running total at the last row with `timestamp < x`.
- A windowed sum is P(cutoff + hi) - P(cutoff + lo) (exactly 0 when both boundaries fall on the same
  row); a lifetime max/min is the running max/min at the cutoff. SUM's NULL-when-empty is kept with a
  running count of non-NULL values; a customer without rows in the group's range gets NULL, as from
  the range join's left join.

Which features fit is derived from the declared expressions themselves (definitions stay the single
source); anything that does not fit (a windowed max, an unknown predicate form, an expression that
reads the cutoff outside its reductions) stays on the range-join plan.

The as-of lookups are binary searches within each customer's rows of the sorted grain (numba
kernels) rather than DuckDB's `ASOF JOIN`: measured at 5M events, one ASOF JOIN costs ~0.6 s CPU per
boundary offset and each extra join to bring its columns together another ~0.6 s, and a snapshot
needs ~17 offsets (each window bound of each grain); one sort of each grain answers every offset
here. (numpy's `searchsorted` over the whole grain, and one numpy pass per gather/difference/mask,
took about 2 µs per spine row at 20M events; the kernels do one pass per lookup.) Only backends
we can fetch Arrow data from in-process use this plan (see `custops.features.engine`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.operations as ops
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa

from custops.features.definitions import Feature, FeatureView

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
# Measures whose boolean values are counted (`count` of a value's presence, `rows`, `sum` of a
# predicate), and how many such flags share one packed int32 column of a grain query.
FLAG_KINDS = ("sum", "count", "rows")
FLAG_BITS = 31
# Grains are looked up, and a grain's measures accumulated, on this many threads (the numba kernels,
# Arrow casts and numpy copies release the GIL).
LOOKUP_THREADS = 2
# Grain times are compared as whole seconds since 1970. Flooring is exact here: every lookup
# boundary is a cutoff (midnight) plus whole days, and for integer b, `ts < b` <=> `floor(ts) < b`.


@dataclass(frozen=True)
class Measure:
    """One running total of a grain: `kind` of `arg` over rows where `where` holds (None: all rows)."""

    kind: str  # "sum" | "count" | "max" | "min" | "rows"
    arg: ops.Value | None
    where: ops.Value | None


@dataclass(frozen=True)
class Window:
    """`[cutoff + lo days, cutoff + hi days)`; lo None = all history."""

    lo: int | None
    hi: int


@dataclass
class Lookup:
    """A reduction resolved to a measure over a window (with the NULL-tracking count for sums)."""

    measure: Measure
    window: Window
    nonnull: Measure | None = None


@dataclass
class PrefixFeature:
    """A feature computed from lookups: `expr` with each reduction node replaced by its lookup."""

    feature: Feature
    expr: ir.Value
    lookups: dict[ops.Value, Lookup]
    presence: Window | None  # NULL where the customer has no grain row in this window


@dataclass
class GrainPlan:
    """Every prefix feature of one grain, with the measures they need."""

    source: str
    template: ir.Table
    features: list[PrefixFeature] = field(default_factory=list)
    measures: dict[Measure, str] = field(default_factory=dict)
    # The grain's rows computed outside the engine's SQL, in (customer, timestamp) order, or None
    # where it cannot (`custops.features.native`).
    native: Callable[[Any], pa.Table | None] | None = None  # e.g. `custops.features.native.NativeGrain`

    def measure_name(self, m: Measure) -> str:
        if m not in self.measures:
            self.measures[m] = f"m{len(self.measures)}"
        return self.measures[m]


# ---------------------------------------------------------------- planning (expression analysis)


def template(grain: ir.Table) -> ir.Table:
    """The grain with a `cutoff` column, the table view expressions are written against."""
    return grain.mutate(cutoff=ibis.literal(None, type="timestamp"))


def _conjuncts(node: ops.Value | None) -> list[ops.Value]:
    if node is None:
        return []
    if isinstance(node, ops.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _reads(node: ops.Node, rel: ops.Relation, name: str) -> bool:
    return any(f.name == name and f.rel == rel for f in node.find(ops.Field, filter=ops.Value))


def _day_offset(node: ops.Value, rel: ops.Relation) -> int | None:
    """Days d when `node` is `cutoff + d days` (or `cutoff - d days`, or `cutoff`), else None."""
    if isinstance(node, ops.Field):
        return 0 if node.name == "cutoff" and node.rel == rel else None
    if isinstance(node, (ops.TimestampAdd, ops.TimestampSub)) and isinstance(node.right, ops.Literal):
        base = _day_offset(node.left, rel)
        unit = getattr(node.right.dtype, "unit", None)
        if base is None or unit is None or unit.short != "D" or not isinstance(node.right.value, int):
            return None
        return base + node.right.value * (1 if isinstance(node, ops.TimestampAdd) else -1)
    return None


def _bound(conjunct: ops.Value, rel: ops.Relation) -> tuple[str, int] | None:
    """('lo', d) for `timestamp >= cutoff + d`, ('hi', d) for `timestamp < cutoff + d`, else None."""
    if isinstance(conjunct, (ops.GreaterEqual, ops.Less)):
        ts = conjunct.left
        if isinstance(ts, ops.Field) and ts.name == "timestamp" and ts.rel == rel:
            d = _day_offset(conjunct.right, rel)
            if d is not None:
                return ("lo" if isinstance(conjunct, ops.GreaterEqual) else "hi", d)
    return None


KINDS: dict[type, str] = {ops.Sum: "sum", ops.Count: "count", ops.Max: "max", ops.Min: "min"}


def _resolve(red: ops.Reduction, rel: ops.Relation, base: Window) -> tuple[Measure, Window] | None:
    """The measure and window of one reduction, or None when it is not prefix-decomposable."""
    kind = KINDS.get(type(red))
    if kind is None or _reads(red.arg, rel, "cutoff"):
        return None
    lo, hi = base.lo, base.hi
    static = []
    for c in _conjuncts(red.where):
        if not _reads(c, rel, "cutoff"):
            static.append(c)
            continue
        bound = _bound(c, rel)
        if bound is None:
            return None
        side, d = bound
        if side == "lo":
            lo = d if lo is None else max(lo, d)
        else:
            hi = min(hi, d)
    if lo is not None and hi <= lo:
        return None  # an empty window: rare enough to leave to the range join
    if kind in ("max", "min") and lo is not None:
        return None  # running max/min cannot be differenced
    where = None
    for c in static:
        where = c if where is None else ops.And(where, c)
    return Measure(kind, red.arg, where), Window(lo, hi)


def _bare(node: ops.Value) -> ops.Value:
    while isinstance(node, ops.Cast):
        node = node.arg
    return node


def plan_view_features(plan: GrainPlan, view: FeatureView, direction: str, reach: int | None) -> list[Feature]:
    """Add the view's prefix-decomposable features to `plan`; returns those that are not."""
    tmpl = plan.template
    rel = tmpl.op()
    base = Window(-reach if reach is not None else None, 0) if direction == "past" else Window(0, reach or 0)
    rest = []
    for f in view.features:
        pf = _plan_feature(plan, f, tmpl, rel, base)
        if pf is None:
            rest.append(f)
        else:
            plan.features.append(pf)
    return rest


def _plan_feature(plan: GrainPlan, f: Feature, tmpl: ir.Table, rel: ops.Relation, base: Window) -> PrefixFeature | None:
    expr = f.expr(tmpl)
    # Only the value expression is searched, not the grain's own definition behind its fields.
    reductions = expr.op().find(ops.Reduction, filter=ops.Value)
    if not reductions:
        return None
    outside = expr.op().replace({r: ops.Literal(None, r.dtype) for r in reductions}, filter=ops.Value)
    if any(fld.rel == rel for fld in outside.find(ops.Field, filter=ops.Value)):
        return None  # reads grain columns or the cutoff outside an aggregate
    bare = _bare(expr.op())
    is_bare = isinstance(bare, ops.Reduction)
    lookups = {}
    for red in reductions:
        resolved = _resolve(red, rel, base)
        if resolved is None:
            return None
        measure, window = resolved
        # SUM over no non-NULL value is NULL; skip tracking it where the fill makes NULL and 0 alike.
        track = measure.kind == "sum" and not (is_bare and f.fill == 0)
        nonnull = Measure("count", measure.arg, measure.where) if track else None
        lookups[red] = Lookup(measure, window, nonnull)
    presence_free = is_bare and (KINDS[type(bare)] != "count" or f.fill == 0)
    pf = PrefixFeature(f, expr, lookups, None if presence_free else base)
    for lk in lookups.values():
        plan.measure_name(lk.measure)
        if lk.nonnull is not None:
            plan.measure_name(lk.nonnull)
    if pf.presence is not None:
        plan.measure_name(Measure("rows", None, None))
    return pf


# ---------------------------------------------------------------- execution (running totals, lookups)


def warm_kernels() -> threading.Thread:
    """Import and load the numba kernels on a background thread (about 1.5 s of mostly Python work).

    The engine builds it while it copies the re-keyed events, work that runs without the GIL, so
    the warm-up costs the build little time (on the main thread, it would follow the query).
    """

    def run() -> None:
        try:
            from custops.features import kernels

            kernels.warm_up()
        except Exception:  # the first real call raises it again, on the build's thread
            log.debug("warming the lookup kernels failed", exc_info=True)

    thread = threading.Thread(target=run, name="custops-kernel-warm-up", daemon=True)
    thread.start()
    return thread


@dataclass
class _Prefix:
    """A grain's rows sorted by (customer, time) and every measure's running total per customer.

    `row_start[c]` is the first row of customer key `c` (rows of `c` are `row_start[c]` up to
    `row_start[c + 1]`), so a lookup searches only that customer's few rows.
    """

    row_start: np.ndarray
    seconds: np.ndarray
    totals: dict[str, np.ndarray]
    empty: dict[str, Any]  # max/min measure name -> identity value marking "no value yet"


def _measure_expr(m: Measure) -> ir.Value:
    """The per-row value whose running total (or max/min) is the measure."""
    if m.kind == "rows":
        return ibis.literal(True)
    arg = m.arg.to_expr()
    if m.where is not None:
        arg = ibis.ifelse(m.where.to_expr(), arg, ibis.null(arg.type()))
    # Counts leave the engine as booleans (a bit per row, not a 64-bit integer); `_running` counts them.
    return arg.notnull() if m.kind == "count" else arg


def in_source_order(grain: ir.Table) -> bool:
    """Whether the grain's rows come in the order of one source table's rows: only projections and
    filters of it (no aggregate, join, union or sort), which DuckDB returns in scan order."""
    rels = grain.op().find(ops.Relation)
    sources = [r for r in rels if isinstance(r, ops.PhysicalTable)]
    return len(sources) == 1 and all(
        isinstance(r, (ops.Project, ops.DropColumns, ops.Filter, ops.PhysicalTable)) for r in rels
    )


def _running(plan: GrainPlan, con: Any, presorted: bool = False, native: bool = True) -> _Prefix:
    """Sort the grain by (customer, timestamp) and accumulate every measure per customer.

    Rows sharing a timestamp need no merging: a lookup reads the total at the last row before
    its boundary, which includes all of them. `presorted`: the grain's rows already come in that
    order (a projection of events ingest sorted, `in_source_order`), so the engine does not sort
    them again (~0.3 s wall and 0.55 s CPU for 10M rows); checked, and sorted when they do not.
    `native`: use the plan's `native` rows where it has them (they come in that order); the
    measures are then computed by the engine over those rows, from the same expressions.
    """
    from custops.features import kernels  # numba: imported (~0.7 s) only by builds that need it

    tmpl = plan.template
    values = {name: _measure_expr(m) for m, name in plan.measures.items()}
    # Flags (counts, sums of a predicate) leave the engine packed as the bits of one integer column:
    # the engine's sort then moves one 4-byte value per row instead of a byte per flag (at 20M events,
    # the interactions grain's query 1.5 -> 0.95 s in a build with its nine flags packed).
    flags = [name for m, name in plan.measures.items() if m.kind in FLAG_KINDS and values[name].type().is_boolean()]
    packed: dict[str, tuple[str, int]] = {}
    for start in range(0, len(flags), FLAG_BITS):
        column = f"flags{start // FLAG_BITS}"
        bits = [
            ibis.ifelse(values.pop(name).fill_null(False), ibis.literal(1 << bit, type="int32"), 0)
            for bit, name in enumerate(flags[start : start + FLAG_BITS])
        ]
        values[column] = functools.reduce(operator.or_, bits).cast("int32")
        packed |= {name: (column, bit) for bit, name in enumerate(flags[start : start + FLAG_BITS])}
    rows = tmpl.select("customer_id", "timestamp", **values)
    registered = None
    if native and plan.native is not None and (grain := plan.native(con)) is not None:
        # The engine scans the Arrow rows in place (no copy) and keeps their order.
        registered = f"custops_grain_{uuid.uuid4().hex[:12]}"
        con.con.register(registered, grain.cast(tmpl.op().parent.to_expr().schema().to_pyarrow()))
        rows = rows.op().replace({tmpl.op().parent: con.table(registered).op()}).to_expr()
        presorted = True
    try:
        table = con.to_pyarrow(rows if presorted else rows.order_by(["customer_id", "timestamp"]))
    finally:
        if registered is not None:
            con.con.unregister(registered)
    cust = table["customer_id"].to_numpy().astype(np.int64, copy=False)
    micros = table["timestamp"].cast(pa.int64()).to_numpy()
    # Seconds until 2038 fit int32: half the memory, and these are kept for the whole build.
    fits = not len(micros) or (micros.min() // 1_000_000 >= -(2**31) and micros.max() // 1_000_000 < 2**31)
    secs = kernels.floor_seconds(micros, np.empty(len(micros), np.int32 if fits else np.int64))
    del micros
    if presorted and not kernels.in_customer_order(cust, secs):
        log.warning("%s: rows not in (customer, time) order as ingest writes them; sorting", plan.source)
        del table, cust, secs
        return _running(plan, con, native=False)
    table = table.drop_columns(["customer_id", "timestamp"])
    # First row of each customer key: rows per key, accumulated.
    row_start = np.zeros((int(cust.max()) + 2) if len(cust) else 1, dtype=np.int64)
    if len(cust):
        np.cumsum(np.bincount(cust), out=row_start[1:])
    columns = {name: table[name] for name in plan.measures.values() if name not in packed}
    words = {c: table[c].to_numpy() for c in {c for c, _ in packed.values()}}
    del table

    def accumulate(item: tuple[Measure, str]) -> tuple[str, np.ndarray, Any]:
        m, name = item
        fill = None
        index = np.int32 if len(cust) < 2**31 else np.int64
        if name in packed:
            # A count cannot pass the row count: int32 totals, straight from the packed bit.
            column, bit = packed[name]
            return name, kernels.running_count_bit(words[column], bit, cust, np.empty(len(cust), index)), fill
        col = columns.pop(name)  # each column's buffers go once it is converted
        if m.kind in FLAG_KINDS and pa.types.is_boolean(col.type):
            # Counts, and sums of a predicate: the true rows counted from one byte a row straight
            # into int32 totals (a count cannot pass the row count), no 64-bit copies in between.
            flags = col.fill_null(False).to_numpy(zero_copy_only=False)
            cum = kernels.running_count(flags, cust, np.empty(len(flags), index))
        elif m.kind in FLAG_KINDS:
            values = col.fill_null(0).to_numpy()
            if values.dtype.kind in "iu":  # (booleans took the count path above)
                # Integer running totals are exact in any order; kept as int32 when they fit (half
                # the memory: these arrays live for the whole build).
                cum = kernels.running(
                    values.astype(np.int64, copy=False), cust, kernels.SUM, 0, np.empty(len(values), np.int64)
                )
                if len(cum) and cum.min() >= -(2**31) and cum.max() < 2**31:
                    cum = cum.astype(np.int32)
            else:
                # Floats: summed per customer from its first row, so rounding depends on this
                # customer's amounts only (as a grouped cumsum; a global one would not be).
                cum = kernels.running(values, cust, kernels.SUM, 0, np.empty_like(values))
        else:
            values, fill = _extreme_input(col, m.kind)
            cum = kernels.running(
                values, cust, kernels.MAX if m.kind == "max" else kernels.MIN, fill, np.empty_like(values)
            )
        return name, cum, fill

    # Measures are independent: converted and accumulated on two threads (Arrow casts, numpy copies
    # and the kernels release the GIL), which halves this part of the grain's time on 2 cores.
    totals: dict[str, np.ndarray] = {}
    fills: dict[str, Any] = {}
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="custops-running") as pool:
        for name, cum, fill in pool.map(accumulate, plan.measures.items()):
            totals[name] = cum
            if fill is not None:
                fills[name] = fill
    log.debug("running totals of %s: %d rows, %d measures", plan.source, len(secs), len(totals))
    return _Prefix(row_start, secs, totals, fills)


def _extreme_input(col: pa.ChunkedArray, kind: str) -> tuple[np.ndarray, Any]:
    """Values for a running max/min, NULL replaced by the identity (which marks 'no value yet')."""
    if pa.types.is_timestamp(col.type) or pa.types.is_integer(col.type):
        fill = np.iinfo(np.int64).min if kind == "max" else np.iinfo(np.int64).max
        return col.cast(pa.int64()).fill_null(fill).to_numpy(), fill
    fill = -np.inf if kind == "max" else np.inf
    return col.cast(pa.float64()).fill_null(fill).to_numpy(), fill


class _GrainLookups:
    """Lookups of one grain for the spine rows; positions are computed once per boundary offset."""

    def __init__(self, prefix: _Prefix, cust: np.ndarray, cutoff_s: np.ndarray, offsets: Iterable[int] = ()) -> None:
        from custops.features import kernels  # numba: imported (~0.7 s) only by builds that need it

        self.k = kernels
        self.prefix, self.cust, self.cutoff_s = prefix, cust, cutoff_s
        # Each spine row's first grain row (a key past the last customer's: the grain's end, no rows).
        # Row numbers as int32 where the grain allows: half the bytes each lookup pass reads.
        index = np.int32 if len(prefix.seconds) < 2**31 else np.int64
        self.first = prefix.row_start[np.minimum(cust, len(prefix.row_start) - 1)].astype(index)
        self.positions: dict[int, np.ndarray] = {}
        # Every window bound the grain's lookups need, searched in one pass (about half the time of
        # one search pass per bound: each spine row's customer and range are read once).
        days = sorted(set(offsets))
        if days:
            out = np.empty((len(days), len(cust)), index)
            seconds = np.array(days, np.int64) * DAY_SECONDS
            kernels.positions_many(prefix.row_start, prefix.seconds, cust, cutoff_s, seconds, out)
            self.positions = dict(zip(days, out, strict=True))

    def position(self, offset: int) -> np.ndarray:
        """Per spine row: one past the customer's last row with `timestamp < cutoff + offset days`."""
        if offset not in self.positions:
            bound = self.cutoff_s + offset * DAY_SECONDS
            pos = self.k.positions(self.prefix.row_start, self.prefix.seconds, self.cust, bound)
            self.positions[offset] = pos.astype(self.first.dtype, copy=False)
        return self.positions[offset]

    def window_total(self, name: str, w: Window) -> np.ndarray:
        lo = self.first if w.lo is None else self.position(w.lo)
        return self._total(self.prefix.totals[name], lo, self.position(w.hi))

    def _total(self, total: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Window totals as int64 or float64 (the Arrow types of the lookups: no cast after)."""
        out = np.empty(len(hi), np.float64 if total.dtype.kind == "f" else np.int64)
        return self.k.window_total(total, self.first, lo, hi, out)

    def extreme(self, name: str, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """Running max/min at the window's end, and where it is NULL (no row, or no value yet)."""
        hi = self.position(w.hi)
        values = self._total(self.prefix.totals[name], self.first, hi)
        return values, (hi <= self.first) | (values == self.prefix.empty[name])


def _lookup_array(plan: GrainPlan, lookups: _GrainLookups, lk: Lookup, red: ops.Reduction) -> pa.Array:
    name = plan.measures[lk.measure]
    dtype = red.dtype.to_pyarrow()
    if lk.measure.kind in ("max", "min"):
        return _to_arrow(*lookups.extreme(name, lk.window), dtype)
    values = lookups.window_total(name, lk.window)
    null = None
    if lk.nonnull is not None:
        null = lookups.window_total(plan.measures[lk.nonnull], lk.window) == 0
    return _to_arrow(values, null, dtype)


def _to_arrow(values: np.ndarray, null: np.ndarray | None, dtype: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(dtype):
        return pa.array(values.astype(np.int64), type=pa.int64(), mask=null).cast(dtype)
    return pa.array(values, mask=null).cast(dtype)


def _grain_columns(
    plan: GrainPlan, prefix: _Prefix, cust: np.ndarray, cutoff_s: np.ndarray
) -> tuple[dict[ops.Value, pa.Array], dict[Window, pa.Array]]:
    """Every lookup (per reduction node) and presence flag (per window) of one grain."""
    windows = [lk.window for pf in plan.features for lk in pf.lookups.values()]
    windows += [pf.presence for pf in plan.features if pf.presence is not None]
    offsets = {w.hi for w in windows} | {w.lo for w in windows if w.lo is not None}
    # Positions of this grain only: freed when it is done.
    lookups = _GrainLookups(prefix, cust, cutoff_s, offsets)
    reds: dict[ops.Value, pa.Array] = {}
    presences: dict[Window, pa.Array] = {}
    for pf in plan.features:
        for red, lk in pf.lookups.items():
            if red not in reds:
                reds[red] = _lookup_array(plan, lookups, lk, red)
        if pf.presence is not None and pf.presence not in presences:
            rows = plan.measures[Measure("rows", None, None)]
            presences[pf.presence] = pa.array(lookups.window_total(rows, pf.presence) > 0)
    return reds, presences


def lookup_table(
    plans: Sequence[GrainPlan],
    con: Any,
    spine: pa.Table,
    cache: dict[str, Any] | None = None,
    after: Mapping[str, Callable[[], None]] | None = None,
    sorted_sources: bool = False,
) -> tuple[pa.Table, dict[int, dict[ops.Value, str]], dict[int, dict[Window, str]]]:
    """Every lookup value of every plan for the spine's (customer_id, cutoff) rows, as Arrow columns.

    Returns the spine with `r<i>` lookup and `p<i>` presence columns appended and, per plan, the
    column of each reduction node and of each presence window. `cache` keeps each grain's running
    totals for the next call with the same tables and registry (cutoff batches of one build).
    `after` names a function to call
    once a grain's running totals exist (the engine frees source tables no later grain reads).
    `sorted_sources`: the source tables' rows are sorted by (customer, timestamp), as ingest writes
    them; grains that keep their source's order are then not sorted again.
    """
    cust = spine["customer_id"].to_numpy().astype(np.int64)
    cutoff_s = np.floor_divide(spine["cutoff"].cast(pa.int64()).to_numpy(), 1_000_000)
    prefixes = []
    for plan in plans:  # running totals one grain at a time: each is a query on the engine
        if cache is not None and plan.source in cache:
            prefixes.append(cache[plan.source])
            continue
        prefixes.append(_running(plan, con, presorted=sorted_sources and in_source_order(plan.template)))
        if cache is not None:
            cache[plan.source] = prefixes[-1]
        if after and plan.source in after:
            after[plan.source]()
    with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="custops-lookups") as pool:
        results = list(pool.map(lambda pair: _grain_columns(*pair, cust, cutoff_s), zip(plans, prefixes, strict=True)))
    columns: dict[str, pa.Array] = {}
    red_cols: dict[int, dict[ops.Value, str]] = {}
    presence_cols: dict[int, dict[Window, str]] = {}
    for gid, (plan, (reds, presences)) in enumerate(zip(plans, results, strict=True)):
        red_cols[gid], presence_cols[gid] = {}, {}
        for pf in plan.features:  # names in declaration order, whichever thread finished first
            for red in pf.lookups:
                if red not in red_cols[gid]:
                    name = f"r{len(columns)}"
                    columns[name] = reds[red]
                    red_cols[gid][red] = name
            if pf.presence is not None and pf.presence not in presence_cols[gid]:
                name = f"p{len(columns)}"
                columns[name] = presences[pf.presence]
                presence_cols[gid][pf.presence] = name
    table = spine
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table, red_cols, presence_cols


def feature_columns(
    plans: Sequence[GrainPlan],
    lookups: ir.Table,
    red_cols: Mapping[int, Mapping[ops.Value, str]],
    presence_cols: Mapping[int, Mapping[Window, str]],
) -> dict[str, ir.Value]:
    """Each prefix feature as an expression over the lookup table (its declared expression, rebound)."""
    out = {}
    for gid, plan in enumerate(plans):
        for pf in plan.features:
            mapping = {red: lookups[red_cols[gid][red]].op() for red in pf.lookups}
            value = pf.expr.op().replace(mapping, filter=ops.Value).to_expr()
            if pf.presence is not None:
                value = ibis.ifelse(lookups[presence_cols[gid][pf.presence]], value, ibis.null(value.type()))
            out[pf.feature.name] = value.name(pf.feature.name)
    return out


def split_views(views: Iterable[FeatureView], remaining: Mapping[str, Sequence[Feature]]) -> tuple[FeatureView, ...]:
    """The views restricted to the features left for the range join (views left empty are dropped)."""
    out = []
    for v in views:
        keep = tuple(f for f in v.features if f.name in {x.name for x in remaining.get(v.name, ())})
        if keep:
            out.append(dataclasses.replace(v, features=keep))
    return tuple(out)
