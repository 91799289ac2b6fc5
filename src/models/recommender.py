"""Product recommender: item-item collaborative filtering with a popularity-within-segment fallback.

Model (why item-item and not ALS): customers x items is a sparse matrix of weighted events
(purchase > add_to_cart > click > view, optionally time-decayed, log-damped). Each item keeps its
top-N cosine neighbours (computed in blocks of items, so memory stays bounded at 1M x 10k) as two
small arrays, and a customer's score for item j is sum_h w(customer, h) * sim(h, j) over the items
h in their history, with the customer's weights scaled to unit length so light and heavy
customers score on one scale. With `exclude_purchased=False`, `repeat_weight` * log(1 + net
purchases of j) is added: the "buy again" part. We chose this over `implicit`'s ALS because on the
synthetic demo data (time split, 20k customers) it was clearly more accurate (precision@10 on new
items 0.075 vs 0.061 for 32-factor ALS; implicit's own item-item BM25 scored the same as ours), it
explains itself (the neighbour that contributes most gives "bought together with X"), it needs no
extra compiled dependency, and a request is a gather plus a `bincount` over about 50 x |history|
numbers (about 0.1 ms).

Reasons: every `Recommendation` carries a human-readable `reason` and a stable `reason_code`:
`similar_items` (anchored on the product of the customer's history that contributes most),
`buy_again` (only when `exclude_purchased=False`: any product the customer bought before; in
grocery-like data most of a next basket was bought before, so repeat purchases are first-class),
`segment_popular` and `popular` (the fallback: for cold-start customers, and to fill a list the
collaborative scores cannot fill after filters).

Point in time: `fit(..., as_of=t)` uses only events strictly before `t`; ages, decay and the
exclusion window are measured from `t`. Refund rows cancel the purchase they refund in the event
weights and buy-again counts, but the item still counts as bought for `exclude_purchased`.

Evaluation protocol (`time_split` + `evaluate_recommenders`): fit on events before a cutoff,
test on purchases in [cutoff, cutoff + 30 days). The relevant items of a customer are the
products they bought in the test window; with `exclude_purchased=True` products they had bought
before the cutoff are removed from that set (the model is not allowed to show them, so they
cannot be hits), with `exclude_purchased=False` re-purchases count as hits. Both settings are
reported because "buy again" matters.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, clone
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

from custops.errors import DataContractError

log = logging.getLogger(__name__)

DEFAULT_EVENT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {"purchase": 1.0, "add_to_cart": 0.5, "click": 0.25, "view": 0.1}
)
_PURCHASE: Final = "purchase"
_REFUND: Final = "refund"
_KIND_PURCHASE: Final = 0
_KIND_REFUND: Final = 1
_KIND_FIRST_INTERACTION: Final = 2
_BLOCK_ITEMS: Final = 2048  # items per block of the similarity product: a block is 2048 x n_items floats
_US_PER_DAY: Final = 86_400 * 1_000_000

REASON_SIMILAR: Final = "similar_items"
REASON_BUY_AGAIN: Final = "buy_again"
REASON_SEGMENT: Final = "segment_popular"
REASON_POPULAR: Final = "popular"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One recommended product: a score comparable within its list only, and why it was chosen."""

    product_id: str
    score: float
    reason: str
    reason_code: str  # similar_items | buy_again | segment_popular | popular
    category: str | None = None
    anchor_product_id: str | None = None  # the history item behind a similar_items reason


# ----------------------------------------------------------------------------------------------
# Fitted data shared by the models
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalogue:
    """Items (sorted product ids) with their category codes."""

    product_ids: np.ndarray  # object array of str, sorted
    index: dict[str, int]
    category_codes: np.ndarray  # int32, -1 = unknown
    category_names: tuple[str, ...]

    def category(self, item: int) -> str | None:
        code = int(self.category_codes[item])
        return self.category_names[code] if code >= 0 else None


@dataclass(frozen=True)
class _PurchaseHistory:
    """Per customer (CSR rows), the items bought before as_of: counts, net buy-again weight, last age."""

    indptr: np.ndarray
    items: np.ndarray  # int32
    counts: np.ndarray  # int32, purchase lines
    net_weight: np.ndarray  # float64, (time-decayed) purchases minus refunds, >= 0
    last_age_days: np.ndarray  # float64, days from the last purchase to as_of

    def span(self, row: int | None) -> slice:
        if row is None:
            return slice(0, 0)
        return slice(int(self.indptr[row]), int(self.indptr[row + 1]))


@dataclass(frozen=True)
class _Events:
    """All product events before as_of in long form, coded against the catalogue and customers."""

    as_of: pd.Timestamp
    catalogue: _Catalogue
    customer_ids: np.ndarray  # object array of str
    customer: np.ndarray  # int64 code per event
    item: np.ndarray  # int64 code per event
    kind: np.ndarray  # int8: _KIND_PURCHASE, _KIND_REFUND or an interaction event (in event_weights order)
    weight: np.ndarray  # float64 event weight (refunds: minus the purchase weight)
    age_days: np.ndarray  # float64, as_of - timestamp

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    @property
    def n_items(self) -> int:
        return len(self.catalogue.product_ids)


def _require(df: pd.DataFrame, source: str, columns: Sequence[str]) -> None:
    for col in columns:
        if col not in df.columns:
            raise DataContractError(source, col, "missing column", "pass a validated-layer table (custops.data.schema)")


def _to_utc_naive(ts: Any, name: str) -> pd.Timestamp:
    out = pd.Timestamp(ts)
    if out is pd.NaT:
        raise ValueError(f"{name} must be a timestamp, got {ts!r}")
    if out.tzinfo is not None:
        out = out.tz_convert("UTC").tz_localize(None)
    return out


def _collect_events(
    transactions: pd.DataFrame,
    interactions: pd.DataFrame | None,
    products: pd.DataFrame | None,
    *,
    as_of: pd.Timestamp | None,
    event_weights: Mapping[str, float],
) -> _Events:
    """Product events strictly before as_of (default: all), weighted and coded.

    Ids are factorised once per column (hashing) and never compared as strings row by row: this
    is most of the fit time on millions of events.
    """
    _require(transactions, "transactions", ("customer_id", "timestamp", "product_id"))
    interaction_kinds = tuple(e for e in event_weights if e not in (_PURCHASE, _REFUND))
    kind_names = (_PURCHASE, _REFUND, *interaction_kinds)
    tx = transactions
    if "status" in tx.columns:  # other statuses than purchase and refund (none in the validated layer) are ignored
        status_codes, statuses = pd.factorize(tx["status"])
        by_status = {_PURCHASE: _KIND_PURCHASE, _REFUND: _KIND_REFUND}
        tx_kind = np.array([by_status.get(str(x).lower(), -1) for x in statuses] + [-1], np.int8)[status_codes]
    else:
        tx_kind = np.full(len(tx), _KIND_PURCHASE, np.int8)
    parts = [(tx, tx_kind)]
    if interactions is not None and len(interactions):
        _require(interactions, "interactions", ("customer_id", "timestamp", "event_type", "product_id"))
        event_codes, events = pd.factorize(interactions["event_type"])
        lookup = {name: code for code, name in enumerate(kind_names) if code >= _KIND_FIRST_INTERACTION}
        to_kind = np.array([lookup.get(str(e).lower(), -1) for e in events] + [-1], np.int8)
        parts.append((interactions, to_kind[event_codes]))
    cutoff_us = None if as_of is None else np.datetime64(as_of.to_datetime64(), "us")
    customers, product_ids, stamps, kinds = [], [], [], []
    for df, kind in parts:
        ts = df["timestamp"].to_numpy("datetime64[us]")
        keep = (kind >= 0) & df["customer_id"].notna().to_numpy() & df["product_id"].notna().to_numpy()
        keep &= ~np.isnat(ts)
        if cutoff_us is not None:
            keep &= ts < cutoff_us
        customers.append(df["customer_id"].to_numpy(object)[keep])
        product_ids.append(df["product_id"].to_numpy(object)[keep])
        stamps.append(ts[keep])
        kinds.append(kind[keep])
    customer, customer_ids = pd.factorize(np.concatenate(customers))
    product, event_products = pd.factorize(np.concatenate(product_ids))
    customer_ids = np.asarray(customer_ids, dtype=object).astype(str).astype(object)
    event_products = np.asarray(event_products, dtype=object).astype(str).astype(object)
    ok = (customer_ids != "")[customer] & (event_products != "")[product]
    ts, kind = np.concatenate(stamps)[ok], np.concatenate(kinds)[ok]
    if not ok.any():
        where = "" if as_of is None else f" before as_of {as_of}"
        raise DataContractError("transactions", "product_id", f"no product event{where}", "pass more data")
    if as_of is None:
        as_of = pd.Timestamp(ts.max()) + pd.Timedelta(microseconds=1)
    catalogue = _build_catalogue(event_products[np.unique(product[ok])], transactions, products)
    item = np.searchsorted(catalogue.product_ids, event_products)[product[ok]]
    customer, used = pd.factorize(customer[ok])  # drop ids whose only events were dropped
    customer_ids = customer_ids[used]
    purchase_w = float(event_weights.get(_PURCHASE, 1.0))
    kind_weight = np.array([purchase_w, -purchase_w, *(float(event_weights[e]) for e in interaction_kinds)])
    age_us = (np.datetime64(as_of.to_datetime64(), "us") - ts).astype(np.int64)
    return _Events(
        as_of=as_of,
        catalogue=catalogue,
        customer_ids=customer_ids,
        customer=customer,
        item=item.astype(np.int64),
        kind=kind,
        weight=kind_weight[kind],
        age_days=age_us / _US_PER_DAY,
    )


def _build_catalogue(
    event_products: np.ndarray, transactions: pd.DataFrame, products: pd.DataFrame | None
) -> _Catalogue:
    """Sorted product ids of events and the products table; category from products, else transactions."""
    ids = [event_products]
    category = pd.Series(dtype=object)
    if "category" in transactions.columns:
        tx = transactions[transactions["product_id"].notna() & transactions["category"].notna()]
        category = tx.drop_duplicates("product_id", keep="last").set_index("product_id")["category"].astype(object)
    if products is not None:
        _require(products, "products", ("product_id",))
        pr = products[products["product_id"].notna()]
        ids.append(pr["product_id"].to_numpy(object).astype(str).astype(object))
        if "category" in pr.columns:
            pr_cat = pr[pr["category"].notna()].drop_duplicates("product_id", keep="last")
            category = pr_cat.set_index("product_id")["category"].astype(object).combine_first(category)
    product_ids = np.unique(np.concatenate(ids).astype(str)).astype(object)
    product_ids = product_ids[product_ids != ""]
    category.index = category.index.astype(str)
    codes, names = pd.factorize(category.reindex(product_ids), sort=True)
    return _Catalogue(
        product_ids=product_ids,
        index={p: i for i, p in enumerate(product_ids)},
        category_codes=codes.astype(np.int32),
        category_names=tuple(str(n) for n in names),
    )


def _decay(age_days: np.ndarray, half_life_days: float | None) -> np.ndarray:
    if half_life_days is None:
        return np.ones_like(age_days)
    return np.exp2(-age_days / half_life_days)


def _purchase_history(ev: _Events, half_life_days: float | None) -> _PurchaseHistory:
    """Per customer and item: purchase lines, net (decayed) purchases and days since the last purchase."""
    is_purchase = ev.kind == _KIND_PURCHASE
    is_refund = ev.kind == _KIND_REFUND
    sel = is_purchase | is_refund
    signed = np.where(is_purchase[sel], 1.0, -1.0) * _decay(ev.age_days[sel], half_life_days)
    df = pd.DataFrame(
        {
            "customer": ev.customer[sel],
            "item": ev.item[sel],
            "count": is_purchase[sel].astype(np.int32),
            "signed": signed,
            "age": np.where(is_purchase[sel], ev.age_days[sel], np.inf),
        }
    )
    agg = df.groupby(["customer", "item"], sort=True).agg(
        count=("count", "sum"), signed=("signed", "sum"), age=("age", "min")
    )
    agg = agg[agg["count"] > 0]  # refunds alone (purchase before the data) are not purchases
    customers = agg.index.get_level_values("customer").to_numpy()
    indptr = np.zeros(ev.n_customers + 1, np.int64)
    np.cumsum(np.bincount(customers, minlength=ev.n_customers), out=indptr[1:])
    return _PurchaseHistory(
        indptr=indptr,
        items=agg.index.get_level_values("item").to_numpy().astype(np.int32),
        counts=agg["count"].to_numpy(np.int32),
        net_weight=np.clip(agg["signed"].to_numpy(float), 0.0, None),
        last_age_days=agg["age"].to_numpy(float),
    )


def _segment_codes(
    segments: pd.Series | Mapping[str, str] | None,
) -> tuple[dict[str, int], tuple[str, ...]]:
    """customer_id -> segment code, and the segment labels (sorted)."""
    if segments is None:
        return {}, ()
    seg = pd.Series(segments).dropna().astype(str)
    labels = tuple(sorted(seg.unique()))
    lookup = {label: i for i, label in enumerate(labels)}
    return {str(c): lookup[s] for c, s in seg.items()}, labels


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer (number of products to return), got k={k!r}")


def _check_positive(name: str, value: float | None, *, allow_none: bool = True, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}{' or None' if allow_none else ''}, got {value!r}")


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, best first; ties go to the lower position (deterministic)."""
    part = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def _age_text(days: float) -> str:
    d = int(days)
    return "today" if d == 0 else ("yesterday" if d == 1 else f"{d} days ago")


# ----------------------------------------------------------------------------------------------
# Estimators
# ----------------------------------------------------------------------------------------------


class _BaseRecommender(BaseEstimator):
    """Shared request path: validation, filters, exclusion, fallback fill and batch calls."""

    exclude_window_days: float | None

    def recommend(
        self,
        customer_id: str,
        k: int = 10,
        *,
        exclude_purchased: bool = True,
        include_categories: Collection[str] | None = None,
        exclude_categories: Collection[str] | None = None,
        allowed_items: Iterable[str] | None = None,
        segment: str | None = None,
    ) -> list[Recommendation]:
        """Up to k products for one customer, best first (fewer only when filters leave fewer).

        `exclude_purchased` drops items the customer bought before as_of (only those bought in the
        last `exclude_window_days` when that is set). `include_categories` keeps only those
        categories, `exclude_categories` drops some, `allowed_items` is an allow-list of product ids.
        `segment` overrides the segment learned at fit (it picks the fallback's popularity list).
        """
        check_is_fitted(self, "catalogue_")
        _check_k(k)
        row = self.customer_index_.get(customer_id)
        allowed = self._allowed_mask(include_categories, exclude_categories, allowed_items)
        blocked = self._blocked_items(row, exclude_purchased)
        seg = self._segment_of(customer_id, segment)
        return self._recommend(row, seg, k, exclude_purchased, allowed, blocked)

    def recommend_batch(
        self, customer_ids: Iterable[str], k: int = 10, **filters: Any
    ) -> dict[str, list[Recommendation]]:
        """`recommend` for many customers (same k and filters), keyed by customer id."""
        return {cid: self.recommend(cid, k, **filters) for cid in customer_ids}

    # -- request helpers ------------------------------------------------------------------------

    def _allowed_mask(
        self,
        include_categories: Collection[str] | None,
        exclude_categories: Collection[str] | None,
        allowed_items: Iterable[str] | None,
    ) -> np.ndarray | None:
        cat = self.catalogue_
        if include_categories is None and exclude_categories is None and allowed_items is None:
            return None
        mask = np.ones(len(cat.product_ids), bool)
        if isinstance(include_categories, str) or isinstance(exclude_categories, str):
            raise TypeError("include_categories / exclude_categories take a collection of names, not one string")
        if include_categories is not None:
            mask &= self._category_lookup(include_categories)[cat.category_codes]
        if exclude_categories is not None:
            mask &= ~self._category_lookup(exclude_categories)[cat.category_codes]
        if allowed_items is not None:
            if isinstance(allowed_items, str):
                raise TypeError("allowed_items takes a collection of product ids, not one string")
            allow = np.zeros_like(mask)
            allow[[i for p in allowed_items if (i := cat.index.get(p)) is not None]] = True
            mask &= allow
        return mask

    def _category_lookup(self, names: Collection[str]) -> np.ndarray:
        """Boolean per category code (the extra last slot, code -1, is the unknown category)."""
        wanted = set(names)
        return np.array([n in wanted for n in self.catalogue_.category_names] + [False])

    def _blocked_items(self, row: int | None, exclude_purchased: bool) -> np.ndarray:
        if not exclude_purchased or row is None:
            return np.empty(0, np.int32)
        span = self.history_.span(row)
        items = self.history_.items[span]
        if self.exclude_window_days is not None:
            items = items[self.history_.last_age_days[span] < self.exclude_window_days]
        return items

    def _segment_of(self, customer_id: str, segment: str | None) -> int | None:
        if segment is not None:
            return self.segment_index_.get(segment)
        return self.customer_segment_.get(customer_id)

    def _recommend(
        self,
        row: int | None,
        seg: int | None,
        k: int,
        exclude_purchased: bool,
        allowed: np.ndarray | None,
        blocked: np.ndarray,
    ) -> list[Recommendation]:
        raise NotImplementedError


class PopularityRecommender(_BaseRecommender):
    """Most-bought products, globally or within the customer's segment: the baselines and the fallback.

    Popularity is the number of distinct buyers of an item before as_of (each weighted by the
    decay of their last purchase when `half_life_days` is set). Per segment it is the share of the
    segment's buyers, shrunk towards the global share by `segment_prior` pseudo-customers so small
    segments do not recommend noise. With `buy_again=True` (a baseline for `exclude_purchased=False`)
    the customer's own most-bought items come first. `interactions` are accepted by `fit` so every
    model fits with the same call, but popularity only counts purchases.
    """

    def __init__(
        self,
        *,
        by_segment: bool = True,
        buy_again: bool = False,
        half_life_days: float | None = None,
        exclude_window_days: float | None = None,
        segment_prior: float = 20.0,
    ) -> None:
        self.by_segment = by_segment
        self.buy_again = buy_again
        self.half_life_days = half_life_days
        self.exclude_window_days = exclude_window_days
        self.segment_prior = segment_prior

    def fit(
        self,
        transactions: pd.DataFrame,
        interactions: pd.DataFrame | None = None,
        products: pd.DataFrame | None = None,
        segments: pd.Series | Mapping[str, str] | None = None,
        *,
        as_of: pd.Timestamp | str | None = None,
    ) -> PopularityRecommender:
        """Count buyers per item (and per segment) from purchases strictly before as_of."""
        self._check_params()
        cutoff = None if as_of is None else _to_utc_naive(as_of, "as_of")
        ev = _collect_events(transactions, None, products, as_of=cutoff, event_weights=DEFAULT_EVENT_WEIGHTS)
        history = _purchase_history(ev, self.half_life_days)
        return self._fit_prepared(ev, history, segments)

    def _check_params(self) -> None:
        _check_positive("half_life_days", self.half_life_days)
        _check_positive("exclude_window_days", self.exclude_window_days)
        _check_positive("segment_prior", self.segment_prior, allow_none=False, allow_zero=True)

    def _fit_prepared(
        self, ev: _Events, history: _PurchaseHistory, segments: pd.Series | Mapping[str, str] | None
    ) -> PopularityRecommender:
        customer_segment, labels = _segment_codes(segments) if self.by_segment else ({}, ())
        n_items = ev.n_items
        rows = np.repeat(np.arange(ev.n_customers), np.diff(history.indptr))
        buyer_weight = _decay(history.last_age_days, self.half_life_days)
        buyers_global = np.bincount(history.items, buyer_weight, minlength=n_items)
        n_buyers = max(int(np.count_nonzero(np.diff(history.indptr))), 1)
        share_global = buyers_global / n_buyers
        seg_of_row = np.array([customer_segment.get(c, -1) for c in ev.customer_ids], np.int64)
        seg_of_pair = seg_of_row[rows] if len(rows) else np.empty(0, np.int64)
        scores = np.zeros((len(labels), n_items))
        for s in range(len(labels)):
            in_seg = seg_of_pair == s
            buyers = np.bincount(history.items[in_seg], buyer_weight[in_seg], minlength=n_items)
            n_seg = int(np.count_nonzero(np.diff(history.indptr)[seg_of_row == s]))
            denominator = n_seg + self.segment_prior
            scores[s] = (buyers + self.segment_prior * share_global) / denominator if denominator else share_global
        self.as_of_ = ev.as_of
        self.catalogue_ = ev.catalogue
        self.customer_index_ = {c: i for i, c in enumerate(ev.customer_ids)}
        self.history_ = history
        self.segment_labels_ = labels
        self.segment_index_ = {label: i for i, label in enumerate(labels)}
        self.customer_segment_ = customer_segment
        self.global_scores_ = share_global
        self.global_order_ = self._order(share_global)
        self.segment_scores_ = scores
        self.segment_orders_ = tuple(self._order(s) for s in scores)
        return self

    def without_segments(self) -> PopularityRecommender:
        """The global-popularity model of the same fit (what `by_segment=False` would learn), without refitting.

        Popularity per item does not depend on segments, so the segment model already holds it; the
        pipeline gets both baselines from one pass over the events (13 s at 1M customers).
        """
        check_is_fitted(self, "catalogue_")
        out = clone(self).set_params(by_segment=False)
        for name, value in vars(self).items():
            if name.endswith("_") and not name.startswith("_"):
                setattr(out, name, value)
        out.segment_labels_, out.segment_index_, out.customer_segment_ = (), {}, {}
        out.segment_scores_ = np.zeros((0, len(self.global_scores_)))
        out.segment_orders_ = ()
        return out

    @staticmethod
    def _order(scores: np.ndarray) -> np.ndarray:
        positive = np.flatnonzero(scores > 0)
        return positive[_top(scores[positive], len(positive))].astype(np.int32)

    def _recommend(
        self,
        row: int | None,
        seg: int | None,
        k: int,
        exclude_purchased: bool,
        allowed: np.ndarray | None,
        blocked: np.ndarray,
    ) -> list[Recommendation]:
        recs: list[Recommendation] = []
        if self.buy_again and not exclude_purchased and row is not None:
            recs = self._buy_again(row, k, allowed)
        taken = np.fromiter((self.catalogue_.index[r.product_id] for r in recs), np.int64, len(recs))
        return recs + self._popular(seg, k - len(recs), allowed, np.concatenate([blocked, taken]))

    def _buy_again(self, row: int, k: int, allowed: np.ndarray | None) -> list[Recommendation]:
        h = self.history_
        span = h.span(row)
        items, weight = h.items[span], h.net_weight[span]
        ok = weight > 0
        if allowed is not None:
            ok &= allowed[items]
        pos = np.flatnonzero(ok)
        pos = pos[_top(weight[pos], k)]
        return [_buy_again_rec(self.catalogue_, h, span.start + p, float(weight[p])) for p in pos]

    def _popular(
        self, seg: int | None, k: int, allowed: np.ndarray | None, blocked: np.ndarray
    ) -> list[Recommendation]:
        """The k most popular items of the segment (global when None) that pass the filters."""
        if k <= 0:
            return []
        if seg is None:
            order, scores = self.global_order_, self.global_scores_
        else:
            order, scores = self.segment_orders_[seg], self.segment_scores_[seg]
        ok = np.ones(len(order), bool) if allowed is None else allowed[order]
        if len(blocked):
            is_blocked = np.zeros(len(self.catalogue_.product_ids), bool)
            is_blocked[blocked] = True
            ok &= ~is_blocked[order]
        picked = order[ok][:k]
        cat = self.catalogue_
        if seg is None:
            code, reason = REASON_POPULAR, "popular with all customers"
        else:
            code, reason = REASON_SEGMENT, f"popular in your segment ({self.segment_labels_[seg]})"
        return [
            Recommendation(
                product_id=cat.product_ids[i],
                score=float(scores[i]),
                reason=reason,
                reason_code=code,
                category=cat.category(i),
            )
            for i in picked
        ]


def _buy_again_rec(cat: _Catalogue, h: _PurchaseHistory, pos: int, score: float) -> Recommendation:
    item = int(h.items[pos])
    n = int(h.counts[pos])
    times = "once" if n == 1 else f"{n} times"
    return Recommendation(
        product_id=cat.product_ids[item],
        score=score,
        reason=f"buy again: you bought this {times}, last {_age_text(h.last_age_days[pos])}",
        reason_code=REASON_BUY_AGAIN,
        category=cat.category(item),
    )


class Recommender(_BaseRecommender):
    """Item-item collaborative filtering on weighted events, with popularity-within-segment fallback.

    Parameters
    ----------
    n_neighbors: neighbours kept per item (the top cosine similarities).
    event_weights: weight per event ('purchase' for transactions, interaction event types for the
        rest; types not listed are ignored). Default `DEFAULT_EVENT_WEIGHTS`.
    half_life_days: time decay of event weights (None: no decay).
    exclude_window_days: with `exclude_purchased=True`, exclude only items bought in the last
        this-many days before as_of (None: every item ever bought).
    repeat_weight: weight of the customer's own purchase count in the score when
        `exclude_purchased=False` (the "buy again" part; 0 turns it off).
    segment_prior: shrinkage of segment popularity towards global popularity (pseudo-customers).
    """

    def __init__(
        self,
        *,
        n_neighbors: int = 50,
        event_weights: Mapping[str, float] | None = None,
        half_life_days: float | None = None,
        exclude_window_days: float | None = None,
        repeat_weight: float = 1.0,
        segment_prior: float = 20.0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.event_weights = event_weights
        self.half_life_days = half_life_days
        self.exclude_window_days = exclude_window_days
        self.repeat_weight = repeat_weight
        self.segment_prior = segment_prior

    def fit(
        self,
        transactions: pd.DataFrame,
        interactions: pd.DataFrame | None = None,
        products: pd.DataFrame | None = None,
        segments: pd.Series | Mapping[str, str] | None = None,
        *,
        as_of: pd.Timestamp | str | None = None,
    ) -> Recommender:
        """Learn item neighbours from events strictly before as_of (default: all events).

        `segments` maps customer_id -> segment label (value tier, RFM segment, ...) for the fallback.
        """
        weights = self._check_params()
        started = time.perf_counter()
        cutoff = None if as_of is None else _to_utc_naive(as_of, "as_of")
        ev = _collect_events(transactions, interactions, products, as_of=cutoff, event_weights=weights)
        history = _purchase_history(ev, self.half_life_days)
        signal = sp.csr_matrix(
            (ev.weight * _decay(ev.age_days, self.half_life_days), (ev.customer, ev.item)),
            shape=(ev.n_customers, ev.n_items),
        )
        signal.sum_duplicates()
        # log-damped: a customer's 20th view of an item says little more than the 5th
        signal.data = np.log1p(np.clip(signal.data, 0.0, None)).astype(np.float32)
        signal.eliminate_zeros()
        self.neighbors_, self.similarities_ = _top_neighbors(signal, self.n_neighbors)
        self.profile_ = normalize(signal, norm="l2", axis=1)  # scores on one scale for light and heavy customers
        self.history_ = history
        self.fallback_ = PopularityRecommender(
            by_segment=True,
            half_life_days=self.half_life_days,
            exclude_window_days=self.exclude_window_days,
            segment_prior=self.segment_prior,
        )._fit_prepared(ev, history, segments)
        self.as_of_ = ev.as_of
        self.catalogue_ = ev.catalogue
        self.customer_index_ = self.fallback_.customer_index_
        self.segment_index_ = self.fallback_.segment_index_
        self.customer_segment_ = self.fallback_.customer_segment_
        log.info(
            "recommender fitted: %d customers, %d items, %d weighted pairs, as_of %s, %.1fs",
            ev.n_customers,
            ev.n_items,
            signal.nnz,
            ev.as_of,
            time.perf_counter() - started,
        )
        return self

    def _check_params(self) -> Mapping[str, float]:
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, int) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got n_neighbors={self.n_neighbors!r}")
        weights = DEFAULT_EVENT_WEIGHTS if self.event_weights is None else self.event_weights
        for event, w in weights.items():
            _check_positive(f"event_weights[{event!r}]", w, allow_none=False, allow_zero=True)
        _check_positive("half_life_days", self.half_life_days)
        _check_positive("exclude_window_days", self.exclude_window_days)
        _check_positive("repeat_weight", self.repeat_weight, allow_none=False, allow_zero=True)
        _check_positive("segment_prior", self.segment_prior, allow_none=False, allow_zero=True)
        return weights

    def _recommend(
        self,
        row: int | None,
        seg: int | None,
        k: int,
        exclude_purchased: bool,
        allowed: np.ndarray | None,
        blocked: np.ndarray,
    ) -> list[Recommendation]:
        profile = self.profile_
        start, stop = (0, 0) if row is None else (profile.indptr[row], profile.indptr[row + 1])
        if stop == start:  # cold start: unknown customer or no product history
            return self.fallback_._popular(seg, k, allowed, blocked)
        anchors, anchor_w = profile.indices[start:stop], profile.data[start:stop]
        nbr = self.neighbors_[anchors]
        contrib = self.similarities_[anchors] * anchor_w[:, None]
        n_items = len(self.catalogue_.product_ids)
        scores = np.bincount(nbr.ravel(), contrib.ravel(), minlength=n_items)
        h, span = self.history_, self.history_.span(row)
        repeat = np.zeros(0)
        if not exclude_purchased and self.repeat_weight > 0:
            repeat = self.repeat_weight * np.log1p(h.net_weight[span])
            scores[h.items[span]] += repeat
        valid = scores > 0
        if allowed is not None:
            valid &= allowed
        valid[blocked] = False
        candidates = np.flatnonzero(valid)
        top = candidates[_top(scores[candidates], k)]
        bought = h.items[span]  # sorted within a customer
        in_history = np.minimum(np.searchsorted(bought, top), max(len(bought) - 1, 0))
        is_bought = (bought[in_history] == top) if len(bought) else np.zeros(len(top), bool)
        anchor_of = _strongest_anchors(top, anchors, nbr, contrib)
        anchor_pos = np.minimum(np.searchsorted(bought, anchor_of), max(len(bought) - 1, 0))
        anchor_bought = (bought[anchor_pos] == anchor_of) if len(bought) else np.zeros(len(top), bool)
        recs = []
        for item, pos, was_bought, anchor, anchor_was_bought in zip(
            top, in_history, is_bought, anchor_of, anchor_bought, strict=True
        ):
            score = float(scores[item])
            if len(repeat) and was_bought and repeat[pos] > 0:  # bought before: say so, whatever else scored it
                recs.append(_buy_again_rec(self.catalogue_, h, span.start + int(pos), score))
            else:
                recs.append(self._similar_rec(int(item), score, int(anchor), bool(anchor_was_bought)))
        if len(recs) < k:
            blocked = np.concatenate([blocked, top])
            recs += self.fallback_._popular(seg, k - len(recs), allowed, blocked)
        return recs

    def _similar_rec(self, item: int, score: float, anchor: int, anchor_bought: bool) -> Recommendation:
        cat = self.catalogue_
        anchor_id = cat.product_ids[anchor]
        if anchor_bought:
            reason = f"bought together with {anchor_id}, which you bought"
        else:
            reason = f"often bought with {anchor_id}, which you looked at"
        return Recommendation(
            product_id=cat.product_ids[item],
            score=score,
            reason=reason,
            reason_code=REASON_SIMILAR,
            category=cat.category(item),
            anchor_product_id=anchor_id,
        )


def _strongest_anchors(top: np.ndarray, anchors: np.ndarray, nbr: np.ndarray, contrib: np.ndarray) -> np.ndarray:
    """For each top item, the history item whose neighbour slot contributes most to its score (-1: none)."""
    is_top = np.zeros(int(nbr.max(initial=0)) + 1, bool)
    is_top[top[top < len(is_top)]] = True
    rows, cols = np.nonzero(is_top[nbr] & (contrib > 0))
    items, values = nbr[rows, cols], contrib[rows, cols]
    order = np.lexsort((rows, -values, items))  # per item: largest contribution first, then earliest anchor
    items, rows = items[order], rows[order]
    first = np.r_[True, items[1:] != items[:-1]] if len(items) else np.zeros(0, bool)
    best = dict(zip(items[first].tolist(), anchors[rows[first]].tolist(), strict=True))
    return np.array([best.get(int(t), -1) for t in top], np.int64)


def _top_neighbors(signal: sp.csr_matrix, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n cosine neighbours of every item (column), best first; the item itself excluded.

    Computed in blocks of items so the dense similarity block stays small at 10k+ items.
    Neighbour slots with no co-occurrence have similarity 0 (they never score).
    """
    n_items = signal.shape[1]
    n = min(n_neighbors, max(n_items - 1, 0))
    items = normalize(signal.T.tocsr(), norm="l2", axis=1).astype(np.float32)  # items x customers
    items_t = items.T.tocsr()
    neighbors = np.zeros((n_items, n), np.int32)
    similarities = np.zeros((n_items, n), np.float32)
    if n == 0:
        return neighbors, similarities
    for lo in range(0, n_items, _BLOCK_ITEMS):
        hi = min(lo + _BLOCK_ITEMS, n_items)
        block = (items[lo:hi] @ items_t).toarray()
        block[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        part = np.sort(np.argpartition(-block, n - 1, axis=1)[:, :n], axis=1)
        sims = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")
        neighbors[lo:hi] = np.take_along_axis(part, order, axis=1)
        similarities[lo:hi] = np.take_along_axis(sims, order, axis=1)
    return neighbors, similarities


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def time_split(
    transactions: pd.DataFrame, cutoff: pd.Timestamp | str, *, horizon_days: int = 30
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions before `cutoff` (train) and purchases in [cutoff, cutoff + horizon) (test)."""
    t0 = _to_utc_naive(cutoff, "cutoff")
    t1 = t0 + pd.Timedelta(days=horizon_days)
    ts = transactions["timestamp"]
    train = transactions[ts < t0]
    test = transactions[(ts >= t0) & (ts < t1)]
    if "status" in test.columns:
        test = test[test["status"].astype(str).str.lower() == _PURCHASE]
    return train, test


def evaluate_recommenders(
    models: Mapping[str, Recommender | PopularityRecommender],
    train_tx: pd.DataFrame,
    test_tx: pd.DataFrame,
    *,
    k: int = 10,
    catalogue_size: int,
    exclude_purchased: Sequence[bool] = (True, False),
    max_users: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy, catalogue coverage and diversity of fitted models on a time split, one row per model and setting.

    Relevant items = products a customer bought in `test_tx`; with exclude_purchased=True minus
    those they bought in `train_tx` (customers left with none are not evaluated). With `max_users`,
    a seeded sample of that many of those customers is evaluated (the same sample for every
    model; `n_users` says how many): at 1M customers scoring every test customer one by one
    took ~65 s, while 20,000 customers put the standard error of NDCG@10 near 0.002. Precision@k
    divides by k; recall@k by the number of relevant items; NDCG@k uses binary gains; MAP@k
    normalises by min(k, relevant). Coverage = distinct recommended products / catalogue_size;
    diversity = mean share of pairs of recommended products in different categories.
    """
    _check_k(k)
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be >= 1 (or None for every customer), got {max_users}")
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size must be >= 1, got {catalogue_size}")
    test = test_tx[test_tx["customer_id"].notna() & test_tx["product_id"].notna()]
    if test.empty:
        raise ValueError("test_tx has no purchase with a customer and a product: choose another cutoff")
    first_test = pd.Timestamp(test["timestamp"].min())
    for name, model in models.items():
        check_is_fitted(model, "catalogue_")
        if model.as_of_ > first_test:
            raise ValueError(f"model {name!r} was fitted with as_of {model.as_of_} after the test window starts")
    bought_test = test.groupby("customer_id", sort=True)["product_id"].agg(set)
    train = train_tx[train_tx["product_id"].notna() & train_tx["customer_id"].isin(bought_test.index)]
    if "status" in train.columns:
        train = train[train["status"].astype(str).str.lower() == _PURCHASE]
    bought_before = train.groupby("customer_id")["product_id"].agg(set)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    rows = []
    for flag in exclude_purchased:
        relevant = {c: items - bought_before.get(c, set()) if flag else items for c, items in bought_test.items()}
        relevant = {c: r for c, r in relevant.items() if r}
        if max_users is not None and len(relevant) > max_users:
            users = list(relevant)
            picked = np.sort(np.random.default_rng(seed).choice(len(users), size=max_users, replace=False))
            relevant = {users[i]: relevant[users[i]] for i in picked}
        for name, model in models.items():
            recs = model.recommend_batch(list(relevant), k, exclude_purchased=flag)
            metrics = [_list_metrics(recs[c], relevant[c], k, discounts) for c in relevant]
            shown = {r.product_id for lst in recs.values() for r in lst}
            rows.append(
                {
                    "model": name,
                    "exclude_purchased": flag,
                    **{m: float(np.mean([x[m] for x in metrics])) if metrics else math.nan for m in _METRICS},
                    "coverage": len(shown) / catalogue_size,
                    "diversity": _mean_or_nan([_category_diversity(lst) for lst in recs.values() if len(lst) > 1]),
                    "n_users": len(relevant),
                }
            )
    out = pd.DataFrame(rows)
    return out.rename(columns={m: m.replace("@k", f"@{k}") for m in _METRICS})


_METRICS: Final = ("precision@k", "recall@k", "ndcg@k", "map@k")


def _list_metrics(recs: list[Recommendation], relevant: set[str], k: int, discounts: np.ndarray) -> dict[str, float]:
    hits = np.array([r.product_id in relevant for r in recs[:k]], dtype=float)
    n_hits = hits.sum()
    ideal = discounts[: min(len(relevant), k)].sum()
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1) if len(hits) else hits
    return {
        "precision@k": n_hits / k,
        "recall@k": n_hits / len(relevant),
        "ndcg@k": float((hits * discounts[: len(hits)]).sum() / ideal),
        "map@k": float((precision_at * hits).sum() / min(len(relevant), k)),
    }


def _category_diversity(recs: list[Recommendation]) -> float:
    """Share of pairs of a list (two items or more) whose categories differ."""
    n = len(recs)
    same = sum(c * (c - 1) for c in Counter(r.category for r in recs).values())
    return 1.0 - same / (n * (n - 1))


def _mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
