"""Numba kernels of the prefix plan's as-of lookups (`custops.features.prefix`).

Hand-written loops rather than numpy: a lookup searches one customer's few rows of a grain, and a
window total is a gather, a difference and an emptiness test per spine row. In numpy that is a
`searchsorted` over the whole grain plus one full pass per operation (about 2 µs per spine row at
20M events); here it is one pass. Compiled on first use and cached next to this file.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _search(seconds: np.ndarray, lo: int, hi: int, bound: int) -> int:
    """The first row in [lo, hi) with `seconds >= bound` (hi if none): a binary search."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if seconds[mid] < bound:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(nogil=True, cache=True)
def positions(row_start: np.ndarray, seconds: np.ndarray, cust: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Per spine row: the first of its customer's rows at or after `bound` (binary search within them).

    `row_start[c]` to `row_start[c + 1]` are customer `c`'s rows; a key past the end has none.
    """
    pos = np.empty(len(cust), np.int64)
    last = len(row_start) - 1
    for i in range(len(cust)):
        c = cust[i]
        lo, hi = (row_start[c], row_start[c + 1]) if c < last else (len(seconds), len(seconds))
        pos[i] = _search(seconds, lo, hi, bound[i])
    return pos


@numba.njit(nogil=True, cache=True)
def positions_many(
    row_start: np.ndarray,
    seconds: np.ndarray,
    cust: np.ndarray,
    cutoff: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """`positions` for several bounds `cutoff + offsets[j]` at once (`offsets` ascending): row `j`
    of `out` (shape (len(offsets), len(cust))) for offset `j`.

    One pass over the spine rows: each row's customer range is read once, and each bound's search
    starts where the previous (smaller) bound's ended.
    """
    last = len(row_start) - 1
    for i in range(len(cust)):
        c = cust[i]
        lo, end = (row_start[c], row_start[c + 1]) if c < last else (len(seconds), len(seconds))
        for j in range(len(offsets)):
            lo = _search(seconds, lo, end, cutoff[i] + offsets[j])
            out[j, i] = lo
    return out


@numba.njit(nogil=True, cache=True)
def window_total(total: np.ndarray, first: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Total of the rows in [lo, hi) into `out`: exactly 0 when there is none, whatever the totals'
    rounding. `out` may be wider than `total` (int32 totals into int64 results: no cast afterwards).

    With `lo = first` (the customer's first row) it is the running total just before `hi`.
    """
    for i in range(len(hi)):
        if hi[i] == lo[i]:
            out[i] = 0
            continue
        top = total[hi[i] - 1] if hi[i] > first[i] else total.dtype.type(0)
        bottom = total[lo[i] - 1] if lo[i] > first[i] else total.dtype.type(0)
        out[i] = top - bottom
    return out


@numba.njit(nogil=True, cache=True)
def floor_seconds(micros: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Whole seconds (floor) of microsecond timestamps, written into `out` (int32 when they fit)."""
    for i in range(len(micros)):
        out[i] = micros[i] // 1_000_000
    return out


@numba.njit(nogil=True, cache=True)
def in_customer_order(cust: np.ndarray, seconds: np.ndarray) -> bool:
    """Whether the rows are sorted by customer, and by time (whole seconds) within a customer."""
    for i in range(1, len(cust)):
        if cust[i] < cust[i - 1] or (cust[i] == cust[i - 1] and seconds[i] < seconds[i - 1]):
            return False
    return True


@numba.njit(nogil=True, cache=True)
def running_count(flags: np.ndarray, cust: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-customer running count of true `flags` (one byte a row) into `out` (int32 or int64)."""
    acc = 0
    for i in range(len(flags)):
        if i == 0 or cust[i] != cust[i - 1]:
            acc = 0
        if flags[i]:
            acc += 1
        out[i] = acc
    return out


@numba.njit(nogil=True, cache=True)
def running_count_bit(bits: np.ndarray, bit: int, cust: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`running_count` of the flags packed as bit `bit` of the integers `bits`."""
    acc = 0
    for i in range(len(bits)):
        if i == 0 or cust[i] != cust[i - 1]:
            acc = 0
        acc += (bits[i] >> bit) & 1
        out[i] = acc
    return out


# Classes of a rank key (`rank_keys_float`, `rank_keys_int`): NULLs first or last, NaN before or
# after the numbers.
CLASS_NULL_FIRST, CLASS_NAN_LOW, CLASS_VALUE, CLASS_NAN_HIGH, CLASS_NULL_LAST = 0, 1, 2, 3, 4
N_CLASSES = 5
SIGN = np.uint64(1 << 63)


@numba.njit(nogil=True, cache=True)
def _rank_classes(
    null: np.ndarray, nan: np.ndarray, part: np.ndarray, ascending: bool, nulls_first: bool, code: np.ndarray
) -> None:
    for i in range(len(null)):
        klass = CLASS_VALUE
        if null[i]:
            klass = CLASS_NULL_FIRST if nulls_first else CLASS_NULL_LAST
        elif nan[i]:
            klass = CLASS_NAN_HIGH if ascending else CLASS_NAN_LOW
        code[i] = part[i] * N_CLASSES + klass


@numba.njit(nogil=True, cache=True)
def rank_keys_float(
    values: np.ndarray,
    null: np.ndarray,
    part: np.ndarray,
    ascending: bool,
    nulls_first: bool,
    keys: np.ndarray,
    code: np.ndarray,
) -> None:
    """The radix sort's inputs for one SQL order key over floats (`rank_keys_int`: integers).

    `code` = partition * N_CLASSES + class (NULLs first or last, NaN as the largest value, numbers);
    `keys` (uint64) are the values' bits in the key's order: descending negates; the sign bit is
    flipped for non-negative values and every bit for negative ones (-0.0 is 0.0). NULL and NaN rows
    get key 0 (their class orders them). Three passes in numba, where numpy took about eight.
    """
    nan = np.isnan(values) & ~null
    _rank_classes(null, nan, part, ascending, nulls_first, code)
    fkeys = keys.view(np.float64)
    for i in range(len(values)):
        if null[i] or nan[i]:
            fkeys[i] = 0.0
        else:
            fkeys[i] = (values[i] + 0.0) if ascending else -(values[i] + 0.0)
    for i in range(len(keys)):
        x = keys[i]
        keys[i] = ~x if x & SIGN else x | SIGN


@numba.njit(nogil=True, cache=True)
def rank_keys_int(
    values: np.ndarray,
    null: np.ndarray,
    part: np.ndarray,
    ascending: bool,
    nulls_first: bool,
    keys: np.ndarray,
    code: np.ndarray,
) -> None:
    """`rank_keys_float` for int64 values: descending is the complement (-x - 1, no overflow), and
    the sign bit is flipped."""
    # Integers have no NaN: the NULL mask stands in for the NaN mask (only read where a row is not
    # NULL, so always false there), with no all-false array allocated per call.
    _rank_classes(null, null, part, ascending, nulls_first, code)
    ikeys = keys.view(np.int64)
    for i in range(len(values)):
        if null[i]:
            ikeys[i] = 0
        else:
            ikeys[i] = values[i] if ascending else ~values[i]
        keys[i] ^= SIGN


@numba.njit(nogil=True, cache=True)
def rank_sorted(
    order: np.ndarray,
    keys: np.ndarray,
    code: np.ndarray,
    size: np.ndarray,
    cume: bool,
    out: np.ndarray,
) -> np.ndarray:
    """`cume_dist` (`cume`) or `percent_rank` of every row into `out`, from the rows' sorted `order`
    and their sorted `keys` and `code`s (`radix_order`'s outputs, read in order).

    A code's partition is `code // N_CLASSES` (`size[p]` rows, consecutive); peers are rows equal
    in code and key. One pass (each peer group scanned once, then filled): only the writes to `out`
    jump, where reading each row's key and code through `order` made every read jump too.
    """
    n = len(order)
    i, part_start, current = 0, 0, -1
    while i < n:
        c, x = code[i], keys[i]
        p = c // N_CLASSES
        if p != current:
            current, part_start = p, i
        j = i + 1
        while j < n and code[j] == c and keys[j] == x:
            j += 1
        rows = np.float64(size[p])
        # cume_dist: rows up to the last peer / rows; percent_rank: (rank - 1) / (rows - 1), 0 alone
        v = (j - part_start) / rows if cume else ((i - part_start) / (rows - 1) if rows > 1 else 0.0)
        for k in range(i, j):
            out[order[k]] = v
        i = j
    return out


RADIX_BITS = 11  # 2048 buckets: a histogram row stays in L1; six passes cover 64 bits


@numba.njit(nogil=True, cache=True)
def radix_order(
    keys: np.ndarray,
    code: np.ndarray,
    out: np.ndarray,
    other_idx: np.ndarray,
    k: np.ndarray,
    other_k: np.ndarray,
    sorted_code: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows' order sorted by (`code`, `keys`) into `out` (int32 or int64): a stable LSD radix
    sort of unsigned keys (uint64, see `rank_keys_float`) and 16-bit codes. Returns the order and the
    keys and codes in that order; `keys` and `code` are not changed. Work arrays, each with a slot
    per row: `other_idx` (as `out`), `k` and `other_k` (as `keys`), `sorted_code` (as `code`); the
    sorted keys are `k` or `other_k`, the codes `sorted_code`.

    Hand-written because numpy has no radix sort for 64-bit keys: its argsort compares (introsort,
    ~100 ms for 1M float64 keys here) where this is ~25 ms. All digit histograms come from one read;
    a digit that is the same for every row (high bits of small counts, a single code) is skipped.
    """
    n = len(keys)
    mask = (1 << RADIX_BITS) - 1
    key_passes = (64 + RADIX_BITS - 1) // RADIX_BITS
    counts = np.zeros((key_passes + 1, 1 << 16), np.int64)  # the last row: the code (16 bits)
    for i in range(n):
        x = keys[i]
        for p in range(key_passes):
            counts[p, (x >> np.uint64(p * RADIX_BITS)) & np.uint64(mask)] += 1
        counts[key_passes, code[i]] += 1
    idx = out
    for i in range(n):
        idx[i] = i
        k[i] = keys[i]
    # The codes in sorted order come from the last (code) pass; one code throughout skips it.
    sorted_code[:] = code[0] if n else 0
    swapped = False
    for p in range(key_passes + 1):
        buckets = (1 << 16) if p == key_passes else (1 << RADIX_BITS)
        row = counts[p]
        if row[:buckets].max() == n:
            continue  # every row has this digit: the order stays as it is
        total = 0
        for d in range(buckets):
            cnt = row[d]
            row[d] = total
            total += cnt
        if p == key_passes:
            for i in range(n):
                r = idx[i]
                d = code[r]
                q = row[d]
                row[d] = q + 1
                other_k[q] = k[i]
                other_idx[q] = r
                sorted_code[q] = d
        else:
            shift = np.uint64(p * RADIX_BITS)
            for i in range(n):
                x = k[i]
                d = (x >> shift) & np.uint64(mask)
                q = row[d]
                row[d] = q + 1
                other_k[q] = x
                other_idx[q] = idx[i]
        k, other_k = other_k, k
        idx, other_idx = other_idx, idx
        swapped = not swapped
    if swapped:
        out[:] = idx
    return out, k, sorted_code


SUM, MAX, MIN = 0, 1, 2


@numba.njit(nogil=True, cache=True)
def running(values: np.ndarray, cust: np.ndarray, how: int, identity: float | int, out: np.ndarray) -> np.ndarray:
    """Per-customer running sum / max / min of `values` over rows sorted by customer.

    Each customer starts from `identity` (0, or the fill that marks "no value yet") and combines
    its rows in order exactly as pandas' grouped cumsum (compensated sum)/cummax/cummin do (a NaN
    stays at its row and is skipped by the total), without their group codes and frame copies.
    Written into `out` (same type as `values`).
    """
    start = values.dtype.type(identity)
    acc = start
    comp = values.dtype.type(0)  # Kahan compensation of a float sum, as pandas' group_cumsum keeps
    for i in range(len(values)):
        if i == 0 or cust[i] != cust[i - 1]:
            acc = start
            comp = values.dtype.type(0)
        v = values[i]
        if v != v:  # NaN
            out[i] = v
            continue
        if how == SUM:
            y = v - comp
            t = acc + y
            comp = (t - acc) - y
            acc = t
        elif how == MAX:
            if v > acc:
                acc = v
        elif v < acc:
            acc = v
        out[i] = acc
    return out


# ---------------------------------------------------------------- order events from sorted lines

DAY_MICROS = 86_400_000_000
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)
# Up to this many rows of one customer, repeated strings are found by comparing each row with the
# earlier ones; above it, with a hash set (a customer with thousands of orders stays linear).
_FEW_EVENTS = 8


@numba.njit(nogil=True, cache=True)
def _hash(offsets: np.ndarray, data: np.ndarray, i: int) -> np.uint64:
    """64-bit FNV-1a hash of string i of an Arrow string array (`offsets`, `data` buffers)."""
    h = _FNV_OFFSET
    for k in range(offsets[i], offsets[i + 1]):
        h = (h ^ np.uint64(data[k])) * _FNV_PRIME
    return h


@numba.njit(nogil=True, cache=True)
def _same(offsets: np.ndarray, data: np.ndarray, i: int, j: int) -> bool:
    """Whether strings i and j of an Arrow string array are equal."""
    a, b = offsets[i], offsets[j]
    size = offsets[i + 1] - a
    if offsets[j + 1] - b != size:
        return False
    for k in range(size):  # noqa: SIM110 (a loop numba compiles; not a generator in all())
        if data[a + k] != data[b + k]:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _less(offsets: np.ndarray, data: np.ndarray, i: int, j: int) -> bool:
    """Whether string i sorts before string j (bytewise, as the engine orders VARCHAR)."""
    a, b = offsets[i], offsets[j]
    size_i, size_j = offsets[i + 1] - a, offsets[j + 1] - b
    for k in range(min(size_i, size_j)):
        if data[a + k] != data[b + k]:
            return data[a + k] < data[b + k]
    return size_i < size_j


@numba.njit(nogil=True, cache=True)
def _firsts(
    offsets: np.ndarray,
    data: np.ndarray,
    index: np.ndarray,
    first: int,
    end: int,
    out: np.ndarray,
    table: np.ndarray,
    touched: np.ndarray,
) -> None:
    """For positions [first, end) (one customer's, in time order) naming strings `index[p]`: set
    `out[p]` to 1 where no earlier position's string equals it, else 0.

    A few positions are compared pairwise; more go through `table`, an open-addressing set of
    string rows (-1: empty) with a power-of-two size at least twice the positions, which is left
    empty again (`touched`: work space for the slots used).
    """
    if end - first <= _FEW_EVENTS:
        for e in range(first, end):
            out[e] = 1
            for q in range(first, e):
                if _same(offsets, data, index[q], index[e]):
                    out[e] = 0
                    break
        return
    mask = np.uint64(len(table) - 1)
    used = 0
    for e in range(first, end):
        r = index[e]
        out[e] = 1
        slot = np.int64(_hash(offsets, data, r) & mask)
        while table[slot] >= 0:
            if _same(offsets, data, table[slot], r):
                out[e] = 0
                break
            slot = np.int64(np.uint64(slot + 1) & mask)
        if out[e]:
            table[slot] = r
            touched[used] = slot
            used += 1
    for i in range(used):
        table[touched[i]] = -1


@numba.njit(nogil=True, cache=True)
def _string_set(cust: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empty work space for `_firsts` over rows grouped by customer: a table twice the largest
    customer's rows (rounded up to a power of two), and room for its slots."""
    most, run = 1, 1
    for i in range(1, len(cust)):
        run = run + 1 if cust[i] == cust[i - 1] else 1
        most = max(most, run)
    size = 1
    while size < 2 * most:
        size *= 2
    return np.full(size, -1, np.int64), np.empty(most, np.int64)


@numba.njit(nogil=True, cache=True)
def order_events(
    cust: np.ndarray,
    micros: np.ndarray,
    offsets: np.ndarray,
    data: np.ndarray,
    amount: np.ndarray,
    quantity: np.ndarray,
    line: np.ndarray,
    customer: np.ndarray,
    revenue: np.ndarray,
    lines: np.ndarray,
    units: np.ndarray,
    order_start: np.ndarray,
    new_day: np.ndarray,
    first_day: np.ndarray,
    gap: np.ndarray,
) -> int:
    """The order events grain (`custops.features.engine.order_events`) from purchase lines sorted by
    (customer, time), in one pass: no hash table over all lines, no sort, no window.

    Lines: customer key, timestamp (µs), order id (Arrow string buffers), amount and quantity (no
    NULLs). An event is the lines of one (customer, order, timestamp); they are adjacent but for
    other orders' lines at the same timestamp. Writes, per event in (customer, time, order id) order
    (the grain's window order): its first line, customer, revenue, lines, quantity, the flags
    order_start, new_day and first_day, and the gap in days from the previous purchase day (NaN
    where there is none), into the arrays after `quantity` (a slot per line); returns the number
    of events.
    """
    n = len(cust)
    table, touched = _string_set(cust)
    m = 0
    a = 0
    while a < n:
        b = a + 1
        while b < n and cust[b] == cust[a]:
            b += 1
        first = m
        i = a
        while i < b:  # lines of one timestamp: an event per distinct order among them
            j = i + 1
            while j < b and micros[j] == micros[i]:
                j += 1
            block = m
            for r in range(i, j):
                e = block
                while e < m and not _same(offsets, data, line[e], r):
                    e += 1
                if e == m:
                    line[m], customer[m], revenue[m], lines[m], units[m] = r, cust[a], 0.0, 0, 0.0
                    m += 1
                revenue[e] += amount[r]
                lines[e] += 1
                units[e] += quantity[r]
            # Events of one instant in order id order, as the grain's window orders them (an
            # insertion sort: there is rarely more than one).
            for e in range(block + 1, m):
                q = e
                while q > block and _less(offsets, data, line[q], line[q - 1]):
                    line[q], line[q - 1] = line[q - 1], line[q]
                    revenue[q], revenue[q - 1] = revenue[q - 1], revenue[q]
                    lines[q], lines[q - 1] = lines[q - 1], lines[q]
                    units[q], units[q - 1] = units[q - 1], units[q]
                    q -= 1
            i = j
        day0 = micros[line[first]] // DAY_MICROS
        before = day0
        for e in range(first, m):
            day = micros[line[e]] // DAY_MICROS
            new_day[e] = e == first or day != before
            gap[e] = float(day - before) if e > first and day != before else np.nan
            first_day[e] = day == day0
            before = day
        _firsts(offsets, data, line, first, m, order_start, table, touched)
        a = b
    return m


@numba.njit(nogil=True, cache=True)
def first_purchases(
    cust: np.ndarray, product: np.ndarray, category: np.ndarray, line: np.ndarray, kind: np.ndarray
) -> int:
    """The first purchases grain (`custops.features.engine.first_purchases`) from purchase lines
    sorted by (customer, time): per customer, the first line of each product and of each category.
    `product` and `category` are dictionary codes (-1: NULL, skipped). Writes each row's line and
    kind (0 product, 1 category; the product first on a line with both) into `line` and `kind`, in
    (customer, time) order; returns the number of rows.
    """
    # The last customer seen with each code: a code is new for a customer when it was last seen with
    # another (rows come customer by customer).
    seen_product = np.full(max(product.max(), 0) + 1 if len(product) else 1, -1, np.int64)
    seen_category = np.full(max(category.max(), 0) + 1 if len(category) else 1, -1, np.int64)
    m = 0
    for r in range(len(cust)):
        c = cust[r]
        p = product[r]
        if p >= 0 and seen_product[p] != c:
            seen_product[p] = c
            line[m], kind[m] = r, 0
            m += 1
        g = category[r]
        if g >= 0 and seen_category[g] != c:
            seen_category[g] = c
            line[m], kind[m] = r, 1
            m += 1
    return m


@numba.njit(nogil=True, cache=True)
def activity_days(
    cust: np.ndarray,
    micros: np.ndarray,
    login: np.ndarray,
    customer: np.ndarray,
    day: np.ndarray,
    last: np.ndarray,
    last_login: np.ndarray,
) -> int:
    """The activity days grain (`custops.features.engine.activity_days`) from interactions sorted
    by (customer, time): per (customer, day), the day's start, its last interaction and its last
    login (µs; the int64 minimum where the day has none). Returns the number of days.
    """
    none = np.iinfo(np.int64).min
    m = -1
    for i in range(len(cust)):
        start = (micros[i] // DAY_MICROS) * DAY_MICROS
        if m < 0 or cust[i] != customer[m] or start != day[m]:
            m += 1
            customer[m], day[m], last_login[m] = cust[i], start, none
        last[m] = micros[i]  # rows in time order: the day's last so far
        if login[i]:
            last_login[m] = micros[i]
    return m + 1


@numba.njit(nogil=True, cache=True)
def earliest(cust: np.ndarray, micros: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Lower `out[c]` to customer c's first time, over rows sorted by (customer, time)."""
    for i in range(len(cust)):
        if (i == 0 or cust[i] != cust[i - 1]) and micros[i] < out[cust[i]]:
            out[cust[i]] = micros[i]
    return out


@numba.njit(nogil=True, cache=True)
def earliest_where(cust: np.ndarray, micros: np.ndarray, flag: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Lower `out[c]` to customer c's earliest time among the rows whose `flag` is set."""
    for i in range(len(cust)):
        if flag[i] and micros[i] < out[cust[i]]:
            out[cust[i]] = micros[i]
    return out


def warm_up() -> None:
    """Load (or compile) every specialisation the prefix plan calls, on tiny arrays.

    Loading the first cached kernel costs ~0.7 s (numba's and LLVM's set-up); a build starts this
    on a background thread (`custops.features.prefix.warm_kernels`) while the engine reads its sources.
    """
    i64, i32, f64 = np.zeros(2, np.int64), np.zeros(2, np.int32), np.zeros(2, np.float64)
    for values, identity in ((i64, 0), (i64, np.iinfo(np.int64).min), (f64, 0), (f64, -np.inf)):
        running(values, i64, SUM, identity, np.empty_like(values))
    running_count(np.zeros(2, np.bool_), i64, i32)
    running_count_bit(np.zeros(2, np.int32), 0, i64, i32)
    for seconds in (i32, i64):
        in_customer_order(i64, seconds)
        positions(i64, seconds, i64, i64)
        floor_seconds(i64, seconds)
        for index in (i32, i64):
            positions_many(i64, seconds, i64, i64, i64, np.zeros((2, 2), index.dtype))
    u64, u16, no = np.zeros(2, np.uint64), np.zeros(2, np.uint16), np.zeros(2, np.bool_)
    rank_keys_float(f64, no, i64, True, False, u64, u16)
    rank_keys_int(i64, no, i64, True, False, u64, u16)
    for index in (i32, i64):
        keys = np.array([2, 1], np.uint64)
        radix_order(keys, u16, index, np.empty_like(index), np.empty_like(keys), np.empty_like(keys), u16.copy())
        rank_sorted(index, u64, u16, np.full(2, 2, np.int64), True, np.zeros(2))
    for total, out in ((i32, i64), (i64, i64), (f64, f64)):
        for index in (i32, i64):
            window_total(total, index, index, index, out)
    # The grain kernels write: each output its own array, as large as the kernel may fill.
    offsets, data = np.zeros(3, np.int64), np.zeros(0, np.uint8)
    out = [np.empty(4, t) for t in (np.int64, np.int64, np.float64, np.int64, np.float64, np.int8, np.int8, np.int8)]
    order_events(i64, i64, offsets, data, f64, f64, *out, np.empty(4))
    first_purchases(i64, i32, i32, np.empty(4, np.int64), np.empty(4, np.int8))
    activity_days(i64, i64, no, *(np.empty(4, np.int64) for _ in range(4)))
    earliest(i64, i64, np.empty(4, np.int64))
    earliest_where(i64, i64, no, np.empty(4, np.int64))
