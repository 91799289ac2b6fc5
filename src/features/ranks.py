"""Rank windows of segment features (`cume_dist`, `percent_rank`) computed with sorts outside the engine.

Segment features (RFM quintiles, value tiers) rank customers within a cutoff. On DuckDB each such
window is a partition-and-sort operator over the whole feature table, and its result must then be
joined back: measured at 1M customers, ~0.25 s CPU per window per cutoff plus the join. The prefix
plan already holds each batch's rows as Arrow columns, so the ranks are computed here instead (one
radix sort by partition and key per distinct window order, ~25 ms per 1M rows) and appended as
columns the final query reads.

Which windows qualify is derived from the declared expressions (definitions stay the single
source): a `cume_dist` or `percent_rank` over the whole partition, whose partition and order keys
read only the feature table's own columns. Anything else stays a SQL window. Results equal the
engine's, including ties (peers share a value), NULL keys (last unless `nulls_first`) and NaN
(greater than every number, as DuckDB orders it); the test suite compares both on random data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ibis.expr.operations as ops
import numpy as np
import pandas as pd
import pyarrow as pa

FUNCS = (ops.CumeDist, ops.PercentRank)


@dataclass(frozen=True)
class RankWindow:
    """One rank window: its function, and the positions of its partition and order keys among the
    key columns the engine evaluates once for all windows."""

    node: ops.WindowFunction
    groups: tuple[int, ...]
    orders: tuple[tuple[int, bool, bool], ...]  # (key column, ascending, nulls first)


def rankable(node: ops.WindowFunction, rel: ops.Relation) -> bool:
    """True when `node` is a whole-partition cume_dist / percent_rank over columns of `rel` only."""
    if not isinstance(node.func, FUNCS) or node.start is not None or node.end is not None or not node.order_by:
        return False
    values = [*node.group_by, *(k.arg for k in node.order_by)]
    for v in values:
        if v.find(ops.WindowFunction, filter=ops.Value) or v.find(ops.Reduction, filter=ops.Value):
            return False
        if any(f.rel != rel for f in v.find(ops.Field, filter=ops.Value)):
            return False
    return True


def plan_windows(nodes: Sequence[ops.WindowFunction]) -> tuple[list[RankWindow], list[ops.Value]]:
    """The windows with indexes into one shared list of key expressions (each evaluated once)."""
    keys: list[ops.Value] = []

    def index(v: ops.Value) -> int:
        if v not in keys:
            keys.append(v)
        return keys.index(v)

    windows = [
        RankWindow(
            node=n,
            groups=tuple(index(g) for g in n.group_by),
            orders=tuple((index(k.arg), bool(k.ascending), bool(k.nulls_first)) for k in n.order_by),
        )
        for n in nodes
    ]
    return windows, keys


def compute_all(windows: Sequence[RankWindow], keys: Sequence[pa.ChunkedArray | pa.Array]) -> list[np.ndarray]:
    """Every window's values; partitions and sorts shared by windows are computed once (e.g. a
    quintile and a tier over the same revenue key: one sort for both).

    One thread: measured on two, the sorts and gathers contend for memory bandwidth (0.39 s wall,
    0.54 s CPU vs 0.33 s on one for four windows of 850k rows), and the other core is writing.
    """
    n = len(keys[0]) if keys else 0
    parts: dict[tuple[int, ...], np.ndarray] = {}
    sorts: dict[tuple[Any, ...], _Sorted] = {}
    out = []
    for w in windows:
        if w.groups not in parts:
            parts[w.groups] = _partition_codes([keys[i] for i in w.groups], n)
        if (w.groups, w.orders) not in sorts:
            sorts[w.groups, w.orders] = _sort(w, keys, parts[w.groups])
        out.append(_rank(w, parts[w.groups], sorts[w.groups, w.orders]))
    return out


def compute(
    window: RankWindow, keys: Sequence[pa.ChunkedArray | pa.Array], part: np.ndarray | None = None
) -> np.ndarray:
    """The window's value for every row (float64), in the rows' order."""
    if part is None:
        part = _partition_codes([keys[i] for i in window.groups], len(keys[0]) if keys else 0)
    return _rank(window, part, _sort(window, keys, part))


@dataclass
class _Sorted:
    """The rows sorted by partition and the window's order keys; `radix` when sorted by (code,
    key bits) with one order key (`value` and `code` then hold the sorted key bits and codes, in
    which `rank_sorted` finds peers and partitions), else by lexsort."""

    order: np.ndarray
    radix: bool
    value: np.ndarray | None = None
    code: np.ndarray | None = None
    sort_keys: list[np.ndarray] | None = None


def _sort(window: RankWindow, keys: Sequence[pa.ChunkedArray | pa.Array], part: np.ndarray) -> _Sorted:
    n = len(part)
    if len(window.orders) == 1 and n and part.max() < 2**13:
        # One order key: a radix sort by (partition and class as one 16-bit code, value), 4x as
        # fast as numpy's argsort of the values alone (which then needed a second, stable sort).
        from custops.features import kernels  # numba: imported only by builds that need it

        column, ascending, nulls_first = window.orders[0]
        values, null = _to_numpy(keys[column])
        bits, code = np.empty(n, np.uint64), np.empty(n, np.uint16)
        if values.dtype.kind == "f":
            kernels.rank_keys_float(
                values.astype(np.float64, copy=False), null, part, ascending, nulls_first, bits, code
            )
        else:
            kernels.rank_keys_int(values.astype(np.int64, copy=False), null, part, ascending, nulls_first, bits, code)
        index = np.int32 if n < 2**31 else np.int64
        # Work arrays from numpy, which asks for transparent huge pages (first touch of numba's
        # own allocations, in 4 kB pages, cost several times more).
        order, sorted_bits, sorted_code = kernels.radix_order(
            bits,
            code,
            np.empty(n, index),
            np.empty(n, index),
            np.empty_like(bits),
            np.empty_like(bits),
            np.empty_like(code),
        )
        return _Sorted(order, True, value=sorted_bits, code=sorted_code)
    order_keys = [_order_key(keys[i], asc, nulls_first) for i, asc, nulls_first in window.orders]
    # np.lexsort sorts by its last key first: partition, then each order key (class, then value).
    # Keys with one value throughout (one partition, no NULL or NaN) are left out.
    sort_keys = []
    for value, klass in reversed(order_keys):
        sort_keys += [k for k in (value, klass) if n and k.min() != k.max()]
    if n and part.max() != 0:
        sort_keys.append(part)
    order = np.lexsort(sort_keys) if sort_keys else np.arange(n)
    return _Sorted(order, False, sort_keys=sort_keys)


def _rank(window: RankWindow, part: np.ndarray, s: _Sorted) -> np.ndarray:
    n = len(part)
    cume = isinstance(window.node.func, ops.CumeDist)
    if s.radix:
        # Peers and partitions in one pass over the sorted rows (numba; numpy's passes below cost
        # twice the sort).
        from custops.features import kernels

        return kernels.rank_sorted(s.order, s.value, s.code, np.bincount(part), cume, np.empty(n, np.float64))
    order = s.order
    # Peers: consecutive sorted rows equal in partition and every order key.
    same = np.zeros(n, bool)
    same[1:] = True
    for k in s.sort_keys or ():
        sk = k[order]
        same[1:] &= sk[1:] == sk[:-1]
    new_peer = ~same
    part_sorted = part[order]
    size = np.bincount(part_sorted)
    part_start = np.concatenate(([0], np.cumsum(size)[:-1]))[part_sorted]
    peer_starts = np.flatnonzero(new_peer)
    peer_id = np.cumsum(new_peer) - 1
    rows_in_part = size[part_sorted].astype(np.float64)
    if cume:
        peer_end = np.append(peer_starts[1:], n)[peer_id]
        sorted_values = (peer_end - part_start) / rows_in_part
    else:  # PercentRank: (rank - 1) / (rows - 1), 0 in a one-row partition
        denom = rows_in_part - 1
        rank0 = (peer_starts[peer_id] - part_start).astype(np.float64)
        sorted_values = np.divide(rank0, denom, out=np.zeros(n), where=denom > 0)
    out = np.empty(n, np.float64)
    out[order] = sorted_values
    return out


def _to_numpy(a: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Values (NULLs as 0) and the NULL mask of a key column; timestamps and booleans as integers."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks() if a.num_chunks != 1 else a.chunk(0)
    null = a.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(a.type) or pa.types.is_date(a.type) or pa.types.is_boolean(a.type):
        a = a.cast(pa.int64())
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        # Strings: ranked by their sorted distinct values' positions (byte order, as DuckDB's).
        _, codes = np.unique(a.fill_null("").to_numpy(zero_copy_only=False), return_inverse=True)
        return codes.astype(np.int64), null
    values = a.fill_null(0).to_numpy(zero_copy_only=False)
    return values, null


def _order_key(a: pa.ChunkedArray | pa.Array, ascending: bool, nulls_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """A (value, class) pair whose ascending lexicographic order is the SQL order of the key.

    Class: NULLs before (nulls first) or after everything; NaN after every number ascending, before
    every number descending (NaN is the largest value). Within a class, values sort ascending.
    """
    values, null = _to_numpy(a)
    klass = np.ones(len(values), np.int8)
    if values.dtype.kind == "f":
        nan = np.isnan(values) & ~null
        values = np.where(nan, 0.0, values)
        klass[nan] = 2 if ascending else 0
        values = values + 0.0  # -0.0 and 0.0 are peers (+ 0.0 turns -0.0 into 0.0)
    if not ascending:
        # Order-reversing maps: negation for floats, bitwise NOT (-x - 1, no overflow) for integers.
        values = -values if values.dtype.kind == "f" else ~values.astype(np.int64)
    klass[null] = -1 if nulls_first else 3
    values = np.where(null, np.zeros(1, values.dtype), values)
    return values, klass


def _partition_codes(columns: Sequence[pa.ChunkedArray | pa.Array], n: int) -> np.ndarray:
    """Partition numbers 0..k-1 (NULL is a value of its own, as in PARTITION BY); hash-based
    (`pandas.factorize`), as the numbering's order does not matter."""
    part = np.zeros(n, np.int64)
    for col in columns:
        values, null = _to_numpy(col)
        if n and not null.any() and values.min() == values.max():
            continue  # one value throughout (e.g. the cutoff of a one-cutoff batch): it splits nothing
        codes, uniques = pd.factorize(values, sort=False)
        codes = np.where(null, len(uniques), codes)
        part = part * (len(uniques) + 1) + codes
        part = pd.factorize(part, sort=False)[0]  # dense again
    return part.astype(np.int64, copy=False)
