"""Rank windows computed outside the engine (radix and numpy sorts) equal DuckDB's window functions,
ties, NULLs and NaN included."""

from __future__ import annotations

import ibis
import ibis.expr.operations as ops
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custops.features import ranks


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=n), 1)  # many ties
    x[rng.random(n) < 0.05] = np.nan
    x[rng.random(n) < 0.05] = -0.0
    x[rng.random(n) < 0.02] = np.inf
    flag = pd.array(rng.random(n) < 0.5, dtype="boolean")
    flag[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame(
        {
            "cutoff": pd.to_datetime("2024-01-01") + pd.to_timedelta(rng.integers(0, 3, n), unit="D"),
            "flag": flag,
            "x": pd.array(x, dtype="Float64"),
            "k": pd.array(rng.integers(-3, 4, n), dtype="Int64"),
            "s": rng.choice(["a", "b", "B", "é", None], n),
        }
    ).assign(x=lambda d: d.x.mask(rng.random(n) < 0.05, pd.NA), k=lambda d: d.k.mask(rng.random(n) < 0.05, pd.NA))


def _check(df: pd.DataFrame, make) -> None:
    con = ibis.duckdb.connect()
    t = con.create_table("t", df.assign(rid=np.arange(len(df))))
    exprs = make(t)
    expected = t.select("rid", **exprs).order_by("rid").to_pyarrow()  # window results come in any order
    nodes = [next(iter(e.op().find(ops.WindowFunction))) for e in exprs.values()]
    assert all(ranks.rankable(n, t.op()) for n in nodes)
    windows, keys = ranks.plan_windows(nodes)
    values = t.select("rid", **{f"k{i}": k.to_expr() for i, k in enumerate(keys)}).order_by("rid").to_pyarrow()
    for name, w in zip(exprs, windows, strict=True):
        got = ranks.compute(w, [values[f"k{i}"] for i in range(len(keys))])
        assert np.array_equal(got, ranks.compute_all([w], [values[f"k{i}"] for i in range(len(keys))])[0])
        want = expected[name].to_numpy()
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_windows_equal_duckdb(seed: int) -> None:
    df = _frame(seed, 2000)

    def make(t):
        by = [t.cutoff, t.flag]
        return {
            "cume_asc": ibis.cume_dist().over(ibis.window(group_by=by, order_by=ibis.asc(t.x))),
            "cume_desc": ibis.cume_dist().over(ibis.window(group_by=by, order_by=ibis.desc(t.x))),
            "cume_desc_nulls_first": ibis.cume_dist().over(
                ibis.window(group_by=by, order_by=ibis.desc(t.x, nulls_first=True))
            ),
            "cume_round": ibis.cume_dist().over(ibis.window(group_by=by, order_by=ibis.asc(t.x.round(2)))),
            "pct_int": ibis.percent_rank().over(ibis.window(group_by=[t.cutoff], order_by=ibis.desc(t.k))),
            "pct_two_keys": ibis.percent_rank().over(
                ibis.window(group_by=[t.flag], order_by=[ibis.asc(t.k), ibis.desc(t.x)])
            ),
            "pct_string": ibis.percent_rank().over(ibis.window(order_by=ibis.asc(t.s))),
            "cume_no_partition": ibis.cume_dist().over(ibis.window(order_by=ibis.asc(t.cutoff))),
        }

    _check(df, make)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-2, 2)), min_size=1, max_size=30),
    groups=st.lists(st.integers(0, 2), min_size=30, max_size=30),
    ascending=st.booleans(),
)
def test_rank_windows_equal_duckdb_small(values: list[int | None], groups: list[int], ascending: bool) -> None:
    df = pd.DataFrame({"g": groups[: len(values)], "v": pd.array(values, dtype="Int64")})

    def make(t):
        w = ibis.window(group_by=[t.g], order_by=ibis.asc(t.v) if ascending else ibis.desc(t.v))
        return {"cume": ibis.cume_dist().over(w), "pct": ibis.percent_rank().over(w)}

    _check(df, make)


def test_other_windows_are_left_to_the_engine() -> None:
    t = ibis.table({"g": "int64", "v": "float64"}, name="t")
    w = ibis.window(group_by=[t.g], order_by=t.v)

    def node(expr):
        return next(iter(expr.op().find(ops.WindowFunction)))

    assert ranks.rankable(node(ibis.cume_dist().over(w)), t.op())
    assert not ranks.rankable(node(ibis.row_number().over(w)), t.op())  # tie order is the engine's
    assert not ranks.rankable(node(ibis.rank().over(w)), t.op())
    framed = ibis.cume_dist().over(ibis.window(group_by=[t.g], order_by=t.v, preceding=2, following=0))
    assert not ranks.rankable(node(framed), t.op())
    other = ibis.table({"v": "float64"}, name="u")
    assert not ranks.rankable(node(ibis.cume_dist().over(ibis.window(order_by=other.v))), t.op())


def test_windows_computed_together_equal_each_alone() -> None:
    """compute_all shares partitions and sorts between windows (two windows here order by the same
    key): the values are those of each window computed on its own."""
    df = _frame(2, 3000)
    con = ibis.duckdb.connect()
    t = con.create_table("t", df)
    by = [t.cutoff, t.flag]
    exprs = [
        ibis.cume_dist().over(ibis.window(group_by=by, order_by=ibis.desc(t.x))),
        ibis.percent_rank().over(ibis.window(group_by=by, order_by=ibis.desc(t.x))),
        ibis.cume_dist().over(ibis.window(group_by=[t.cutoff], order_by=ibis.asc(t.k))),
        ibis.percent_rank().over(ibis.window(group_by=by, order_by=ibis.asc(t.k))),
    ]
    windows, keys = ranks.plan_windows([next(iter(e.op().find(ops.WindowFunction))) for e in exprs])
    values = t.select(**{f"k{i}": k.to_expr() for i, k in enumerate(keys)}).to_pyarrow()
    columns = [values[f"k{i}"] for i in range(len(keys))]
    together = ranks.compute_all(windows, columns)
    for w, got in zip(windows, together, strict=True):
        np.testing.assert_array_equal(got, ranks.compute(w, columns))
    assert not np.array_equal(together[0], together[1])  # cume_dist and percent_rank differ


@settings(max_examples=30, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**63, 2**64 - 1]), min_size=0, max_size=200),
    codes=st.integers(1, 3),
)
def test_radix_order_is_a_stable_sort_by_code_then_key(keys: list[int], codes: int) -> None:
    from custops.features import kernels

    k = np.array(keys, np.uint64)
    code = (np.arange(len(k)) % codes * 1000).astype(np.uint16)
    before = k.copy(), code.copy()
    got, sorted_keys, sorted_code = kernels.radix_order(
        k,
        code,
        np.empty(len(k), np.int32),
        np.empty(len(k), np.int32),
        np.empty_like(k),
        np.empty_like(k),
        np.empty_like(code),
    )
    np.testing.assert_array_equal(got, np.lexsort([k, code]))  # lexsort is stable: ties keep row order
    np.testing.assert_array_equal(sorted_keys, k[got])  # the keys and codes come along in that order
    np.testing.assert_array_equal(sorted_code, code[got])
    np.testing.assert_array_equal(k, before[0])  # the inputs are left as they were
    np.testing.assert_array_equal(code, before[1])


@pytest.mark.parametrize("dtype", ["float64", "int64"])
@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("nulls_first", [True, False])
def test_rank_keys_order_rows_as_sql_orders_them(dtype: str, ascending: bool, nulls_first: bool) -> None:
    """(code, key bits) order rows as ORDER BY value ASC/DESC NULLS FIRST/LAST does in a partition:
    NaN the largest number, -0.0 equal to 0.0, extremes of both types kept apart."""
    from custops.features import kernels

    rng = np.random.default_rng(3)
    if dtype == "float64":
        special = [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, np.nan, np.nan, 1.5, 1.5]
        v = np.concatenate([rng.normal(0, 1e6, 300), special])
    else:
        special = [0, -1, np.iinfo(np.int64).min, np.iinfo(np.int64).max, 7, 7]
        v = np.concatenate([rng.integers(-(2**62), 2**62, 300), special])
    null = rng.random(len(v)) < 0.1
    part = rng.integers(0, 3, len(v))
    bits, code = np.empty(len(v), np.uint64), np.empty(len(v), np.uint16)
    kernel = kernels.rank_keys_float if dtype == "float64" else kernels.rank_keys_int
    kernel(v, null, part, ascending, nulls_first, bits, code)

    def sql_key(r: int) -> tuple[int, int, float]:  # (partition, class, value in the key's order)
        if null[r]:
            return (int(part[r]), 0 if nulls_first else 4, 0)
        if dtype == "float64" and np.isnan(v[r]):
            return (int(part[r]), 3 if ascending else 1, 0)
        x = int(v[r]) if dtype == "int64" else float(v[r]) + 0.0
        return (int(part[r]), 2, x if ascending else -x)

    expected = [sql_key(r) for r in range(len(v))]
    i, j = rng.integers(0, len(v), (2, 5000))
    got = [(int(code[a]), int(bits[a])) for a in range(len(v))]
    assert all((got[a] < got[b]) == (expected[a] < expected[b]) for a, b in zip(i, j, strict=True))
    assert all((got[a] == got[b]) == (expected[a] == expected[b]) for a, b in zip(i, j, strict=True))
