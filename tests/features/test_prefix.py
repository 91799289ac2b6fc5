"""The prefix-sum / as-of plan computes exactly what the range-join plan computes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from custops.errors import ConfigError
from custops.features import builder, engine, prefix
from custops.features.builder import build_snapshot, connect, write_batched
from custops.features.definitions import CUSTOMER, Feature, FeatureRegistry, FeatureView, build_registry, ratio, within
from custops.features.engine import (
    GRAINS,
    _groups,
    build_expression,
    choose_plan,
    normalize_cutoffs,
    top_categories,
)
from custops.features.engine import replay_batch as real_replay
from custops.features.store import OfflineStore
from custops.settings import FeatureSettings
from tests.conftest import CUTOFFS, OBSERVED_UNTIL

# Before any event (no customer exists), the fixture's two cutoffs, one where the 30-day windows are
# empty but lifetime totals are not, and one after all data (empty label windows).
EDGE_CUTOFFS = ["2023-12-01", *CUTOFFS, "2024-05-15", "2024-09-01"]


def tables_of(validated: Path) -> dict[str, ibis.Table]:
    con = ibis.duckdb.connect()
    return {
        t: con.read_parquet(str(validated / f"{t}.parquet"), table_name=t)
        for t in ("transactions", "interactions", "customers")
    }


def run(validated: Path, registry: FeatureRegistry, cutoffs: list[str], plan: str) -> pd.DataFrame:
    expr = build_expression(
        tables_of(validated), normalize_cutoffs(cutoffs), registry, observed_until=OBSERVED_UNTIL, plan=plan
    )
    return expr.to_pandas().sort_values(["customer_id", "cutoff"]).reset_index(drop=True)


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same rows and columns; NULLs in the same places; floats to 1e-9 relative, the rest exactly."""
    assert list(a.columns) == list(b.columns)
    assert a[["customer_id", "cutoff"]].equals(b[["customer_id", "cutoff"]])
    bad = {}
    for col in a.columns:
        x, y = a[col], b[col]
        if not x.isna().equals(y.isna()):
            bad[col] = "NULL positions"
        elif pd.api.types.is_float_dtype(x):
            if not np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True):
                bad[col] = list(zip(x, y, strict=True))
        elif not x[x.notna()].equals(y[y.notna()]):
            bad[col] = list(zip(x, y, strict=True))
    assert not bad, bad


def test_prefix_plan_equals_range_plan_on_every_feature(
    hand_validated: Path, small_fs: FeatureSettings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = build_registry(small_fs, top_categories(tables_of(hand_validated)["transactions"], 2))
    by_range = run(hand_validated, registry, EDGE_CUTOFFS, "range")
    with caplog.at_level("INFO", logger="custops.features.engine"):
        by_prefix = run(hand_validated, registry, EDGE_CUTOFFS, "prefix")
    # the segments' four windows (R, F, M quintiles, value tier) were ranked by numpy, not SQL
    assert "segments: 4 rank windows computed from sorted keys" in caplog.text
    assert_same(by_range, by_prefix)
    rows = by_prefix.set_index(["customer_id", "cutoff"])
    # windows without events are exactly 0 (not a float residue), lifetime totals still count
    a_may = rows.loc[("A", pd.Timestamp("2024-05-15"))]
    assert a_may["revenue_30d"] == 0.0 and a_may["orders_30d"] == 0 and a_may["revenue_total"] == 65.0
    # a customer without purchases: counts 0, timestamps and BTYD ratios NULL
    b_march = rows.loc[("B", pd.Timestamp("2024-03-01"))]
    assert b_march["n_orders"] == 0 and pd.isna(b_march["first_purchase_at"]) and pd.isna(b_march["max_order_value"])
    # nobody exists before the first event; D (signup 2024-05-01, no events) appears after it
    assert pd.Timestamp("2023-12-01") not in set(by_prefix.cutoff)
    d = rows.loc[("D", pd.Timestamp("2024-05-15"))]
    assert d["n_orders"] == 0 and d["interactions_90d"] == 0 and pd.isna(d["last_interaction_at"])


def custom_registry() -> FeatureRegistry:
    """Shapes the defaults do not use: NULL semantics without fills, expressions over aggregates,
    and features that cannot be prefix sums (they must fall back to the range join)."""
    feats = (
        Feature(
            name="rev_14d_nofill",
            description="Sum without fill (NULL when empty).",
            expr=lambda t: t.revenue.sum(where=within(t, 14)),
        ),
        Feature(
            name="orders_14d_nofill",
            description="Count without fill.",
            expr=lambda t: t.order_start.count(where=within(t, 14)),
        ),
        Feature(
            name="big_share_60d",
            description="Share of revenue in orders over 25 (ratio of two windowed sums, static predicate).",
            expr=lambda t: ratio(
                t.revenue.sum(where=within(t, 60) & (t.revenue > 25)), t.revenue.sum(where=within(t, 60))
            ),
        ),
        Feature(
            name="max_order_60d",
            description="Windowed max: no prefix form.",
            expr=lambda t: t.revenue.max(where=within(t, 60)),
        ),
        Feature(
            name="mean_order_60d",
            description="Mean: no prefix form.",
            expr=lambda t: t.revenue.mean(where=within(t, 60)),
        ),
    )
    windowed = FeatureView(
        name="customer_60d_test",
        entity=CUSTOMER,
        description="test",
        kind="aggregate",
        source="order_events",
        window_days=60,
        features=feats,
    )
    lifetime = FeatureView(
        name="customer_lifetime_test",
        entity=CUSTOMER,
        description="test",
        kind="aggregate",
        source="order_events",
        features=(
            Feature(
                name="n_orders",
                description="Orders.",
                expr=lambda t: t.order_start.sum().cast("int64"),
                dtype="int64",
                fill=0,
            ),
            Feature(
                name="first_at", description="First purchase.", expr=lambda t: t.timestamp.min(), dtype="timestamp"
            ),
            Feature(name="quantity_nofill", description="Units, NULL for non-buyers.", expr=lambda t: t.quantity.sum()),
        ),
    )
    return FeatureRegistry(views=(lifetime, windowed))


def test_prefix_plan_keeps_null_semantics_and_falls_back_for_other_shapes(hand_validated: Path) -> None:
    registry = custom_registry()
    plans: dict[str, prefix.GrainPlan] = {}
    left = {}
    con = ibis.duckdb.connect()
    grain = GRAINS["order_events"][1](con.read_parquet(str(hand_validated / "transactions.parquet")))
    for group in _groups(registry):
        plan = plans.setdefault(group.source, prefix.GrainPlan(group.source, prefix.template(grain)))
        for v in group.views:
            left[v.name] = [f.name for f in prefix.plan_view_features(plan, v, group.direction, group.reach_days)]
    assert left == {"customer_lifetime_test": [], "customer_60d_test": ["max_order_60d", "mean_order_60d"]}
    assert {pf.feature.name for pf in plans["order_events"].features} == {
        "n_orders",
        "first_at",
        "quantity_nofill",
        "rev_14d_nofill",
        "orders_14d_nofill",
        "big_share_60d",
    }

    by_range = run(hand_validated, registry, EDGE_CUTOFFS, "range")
    by_prefix = run(hand_validated, registry, EDGE_CUTOFFS, "prefix")
    assert_same(by_range, by_prefix)
    rows = by_prefix.set_index(["customer_id", "cutoff"])
    # A at 04-01: o3 (03-10, 30.0) is in the 60-day reach, nothing in the last 14 days
    a_april = rows.loc[("A", pd.Timestamp("2024-04-01"))]
    assert pd.isna(a_april["rev_14d_nofill"]) and a_april["orders_14d_nofill"] == 0
    assert math.isclose(a_april["big_share_60d"], 30 / 50) and a_april["max_order_60d"] == 30.0
    b_march = rows.loc[("B", pd.Timestamp("2024-03-01"))]  # no order at all yet: the left join's NULLs
    assert pd.isna(b_march["orders_14d_nofill"]) and pd.isna(b_march["quantity_nofill"]) and b_march["n_orders"] == 0


def test_plan_choice(hand_validated: Path) -> None:
    tables = tables_of(hand_validated)
    assert choose_plan(tables) == "prefix"  # DuckDB: so the point-in-time property test runs the prefix plan
    assert choose_plan(tables, materialize=False) == "range"
    assert choose_plan(tables, "range") == "range"
    with pytest.raises(ConfigError, match="needs materialize"):
        choose_plan(tables, "prefix", materialize=False)
    with pytest.raises(ConfigError, match="plan 'asof' is not known"):
        choose_plan(tables, "asof")


def test_batched_build_writes_one_snapshot_equal_to_one_batch(
    hand_validated: Path, small_fs: FeatureSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = build_snapshot(hand_validated, OfflineStore(tmp_path / "a"), small_fs, cutoffs=EDGE_CUTOFFS)
    replayed = []
    monkeypatch.setattr(builder, "replay_batch", lambda *a: replayed.append(real_replay(*a)) or replayed[-1])
    # 4 customers and 2 rows per batch: one cutoff per batch, streamed into one Parquet file;
    # rows: A, B at 03-01; C too at 04-01; D (signed up 05-01) too at 05-15 and 09-01
    plans = []
    real_batches = engine.OutputPlan.batches
    monkeypatch.setattr(engine.OutputPlan, "batches", lambda self, *a: plans.append(self) or real_batches(self, *a))
    batched = build_snapshot(hand_validated, OfflineStore(tmp_path / "b"), small_fs, cutoffs=EDGE_CUTOFFS, batch_rows=2)
    assert replayed == [True] * (len(EDGE_CUTOFFS) - 1)  # batches after the first run the recorded SQL
    # every batch's lookup columns passed through (fills applied by Arrow), the rest computed
    assert len(plans) == len(EDGE_CUTOFFS)
    assert {"n_orders", "revenue_30d", "last_purchase_at", "cutoff"} <= set(plans[0].passthrough)
    assert plans[0].passthrough["n_orders"][1] == 0 and plans[0].passthrough["last_purchase_at"][1] is None
    assert not {"recency_days", "r_score", "rfm_segment", "label_churn_90d"} & set(plans[0].passthrough)
    assert pq.ParquetFile(batched.features_path).metadata.num_rows == len(whole.read()) == 2 + 3 + 4 + 4
    written = pq.read_schema(batched.features_path)
    # one batch or many, the same schema: names, types, and which columns are never NULL
    fields = [(f.name, f.type, f.nullable) for f in written]
    assert fields == [(f.name, f.type, f.nullable) for f in pq.read_schema(whole.features_path)]
    assert not any(written.field(c).nullable for c in ("customer_id", "cutoff", "n_orders", "revenue_30d"))
    assert all(written.field(c).nullable for c in ("last_purchase_at", "r_score", "label_churn_90d"))
    key = ["customer_id", "cutoff"]
    a = whole.read().sort_values(key).reset_index(drop=True)
    b = batched.read().sort_values(key).reset_index(drop=True)
    assert_same(a, b)
    assert batched.manifest["rows_per_cutoff"] == whole.manifest["rows_per_cutoff"]


def test_running_kernel_matches_pandas_grouped_cumulatives() -> None:
    """The per-customer running sum/max/min kernel gives pandas' grouped results bit for bit
    (compensated float sums, NaN kept at its row and skipped), restarting at every customer."""
    from custops.features import kernels

    rng = np.random.default_rng(7)
    cust = np.sort(rng.integers(0, 300, 5_000))
    values = rng.normal(size=5_000) * 1e3
    values[rng.random(5_000) < 0.02] = np.nan
    for how, name, identity in (
        (kernels.SUM, "cumsum", 0),
        (kernels.MAX, "cummax", -np.inf),
        (kernels.MIN, "cummin", np.inf),
    ):
        got = kernels.running(values, cust, how, identity, np.empty_like(values))
        want = getattr(pd.Series(values).groupby(cust), name)().to_numpy()
        assert np.array_equal(got, want, equal_nan=True), name
    stamps = rng.integers(-(10**15), 10**15, 5_000)
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    assert np.array_equal(
        kernels.running(stamps, cust, kernels.MAX, lo, np.empty_like(stamps)), pd.Series(stamps).groupby(cust).cummax()
    )
    assert np.array_equal(
        kernels.running(stamps, cust, kernels.MIN, hi, np.empty_like(stamps)), pd.Series(stamps).groupby(cust).cummin()
    )
    # a customer's first row starts afresh: no carry-over from the previous customer
    first = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
    sums = kernels.running(values, cust, kernels.SUM, 0, np.empty_like(values))
    assert np.array_equal(sums[first], values[first], equal_nan=True)
    # counts of true flags (one byte a row) into int32: pandas' grouped cumsum of the flags
    flags = rng.random(5_000) < 0.3
    counts = kernels.running_count(flags, cust, np.empty(5_000, np.int32))
    assert counts.dtype == np.int32
    assert np.array_equal(counts, pd.Series(flags.astype(int)).groupby(cust).cumsum().to_numpy())
    # the same counts from flags packed as bits of an int32 column (as grain queries return them)
    other = rng.random(5_000) < 0.5
    words = flags.astype(np.int32) | (other.astype(np.int32) << 30)
    assert np.array_equal(kernels.running_count_bit(words, 0, cust, np.empty(5_000, np.int32)), counts)
    want = pd.Series(other.astype(int)).groupby(cust).cumsum().to_numpy()
    assert np.array_equal(kernels.running_count_bit(words, 30, cust, np.empty(5_000, np.int32)), want)


def test_kernel_warm_up_loads_every_kernel() -> None:
    """The background warm-up runs through (a failure there is only logged, and the build would
    then compile or load the remaining kernels on its critical path)."""
    from custops.features import kernels

    kernels.warm_up()


def test_positions_many_equals_one_search_per_bound() -> None:
    """All window bounds searched in one pass give, bound by bound, the single-bound search's rows
    (customers without rows, keys past the last customer, bounds before and after every row)."""
    from custops.features import kernels

    rng = np.random.default_rng(3)
    cust_rows = np.sort(rng.integers(0, 200, 3_000))
    cust_rows = cust_rows[cust_rows != 17]  # a customer without rows
    seconds = np.concatenate([np.sort(rng.integers(0, 10_000, (cust_rows == c).sum())) for c in np.unique(cust_rows)])
    row_start = np.zeros(202, np.int64)
    np.cumsum(np.bincount(cust_rows, minlength=201), out=row_start[1:])
    spine = np.sort(rng.integers(0, 205, 4_000))  # keys 201.. are past the last customer's
    cutoff = rng.integers(-1_000, 11_000, 4_000)
    offsets = np.array([-3_000, -100, 0, 50, 2_500], np.int64)
    for dtype in (np.int32, np.int64):
        many = kernels.positions_many(row_start, seconds, spine, cutoff, offsets, np.empty((5, 4_000), dtype))
        for j, off in enumerate(offsets):
            one = kernels.positions(row_start, seconds, spine, cutoff + off)
            assert np.array_equal(many[j], one), (dtype, off)


def test_batched_build_with_range_joins_is_planned_per_batch(hand_validated: Path, tmp_path: Path) -> None:
    """Features left to range joins are planned for each batch (no replay) and still equal one batch."""
    registry = custom_registry()
    con = connect()
    tables = {
        t: con.read_parquet(str(hand_validated / f"{t}.parquet"), table_name=f"src_{t}")
        for t in ("transactions", "interactions", "customers")
    }
    cuts = normalize_cutoffs(EDGE_CUTOFFS)
    write_batched(con, tables, cuts, registry, OBSERVED_UNTIL, tmp_path / "batched.parquet", batch_rows=2)
    batched = pd.read_parquet(tmp_path / "batched.parquet").sort_values(["customer_id", "cutoff"])
    whole = run(hand_validated, registry, EDGE_CUTOFFS, "prefix")
    assert_same(whole, batched.reset_index(drop=True).astype(whole.dtypes.to_dict()))  # Parquet reads µs
    assert "max_order_60d" in batched.columns  # a range-join feature


def test_output_plan_fills_passthrough_columns_and_checks_row_order() -> None:
    con = ibis.duckdb.connect()
    lookups = pa.table(
        {"customer_id": pa.array([1, 0, 2], pa.int64()), "r0": pa.array([5, None, 7], pa.int64()), "x": [1.0, 2.0, 4.0]}
    )
    con.con.register("lk", lookups)
    plan = engine.OutputPlan(
        sql='SELECT customer_id, x * 2 AS doubled FROM "lk"',
        columns=["customer_id", "n", "doubled"],
        passthrough={"n": ("r0", 0)},
        id_values=pa.array(["a", "b", "c"]),
    )
    schema = pa.schema([("customer_id", pa.string()), ("n", pa.int64()), ("doubled", pa.float64())])
    out = pa.Table.from_batches(list(plan.batches(con, lookups, schema, 2)))
    assert out.to_pydict() == {"customer_id": ["b", "a", "c"], "n": [5, 0, 7], "doubled": [2.0, 4.0, 8.0]}
    shuffled = dataclasses.replace(plan, sql='SELECT customer_id, x * 2 AS doubled FROM "lk" ORDER BY customer_id')
    with pytest.raises(RuntimeError, match="another order"):
        list(shuffled.batches(con, lookups, schema, 2))
    # The keys and the filled lookup are never NULL: written as required columns; computed ones stay nullable.
    strict = plan.output_schema(schema)
    assert [f.nullable for f in strict] == [False, False, True]
    assert pa.Table.from_batches(list(plan.batches(con, lookups, strict, 2))).to_pydict() == out.to_pydict()
    unfilled = dataclasses.replace(plan, passthrough={"n": ("r0", None)})
    with pytest.raises(RuntimeError, match="n has NULL values"):
        list(unfilled.batches(con, lookups, strict, 2))


def test_segment_windows_that_do_not_qualify_stay_sql_and_keep_the_join(
    hand_validated: Path, small_fs: FeatureSettings
) -> None:
    base = build_registry(small_fs, [])
    dense = FeatureView(
        name="customer_order_rank",
        entity=CUSTOMER,
        kind="segment",
        description="test only",
        features=(
            Feature(
                name="orders_dense_rank",
                description="dense rank of n_orders within the cutoff",
                expr=lambda t: ibis.dense_rank().over(ibis.window(group_by=t.cutoff, order_by=t.n_orders)),
                dtype="int64",
            ),
        ),
    )
    registry = FeatureRegistry(views=(*base.views, dense), categories=())
    shared: dict = {}
    expr = build_expression(
        tables_of(hand_validated), normalize_cutoffs(CUTOFFS), registry, observed_until=OBSERVED_UNTIL, shared=shared
    )
    assert shared.get("output") is None  # the SQL window pass joins back: no positional output plan
    key = ["customer_id", "cutoff"]
    got = expr.to_pandas().sort_values(key).reset_index(drop=True)
    want = run(hand_validated, registry, CUTOFFS, "range")
    assert_same(want, got)
    assert got["orders_dense_rank"].notna().all()
