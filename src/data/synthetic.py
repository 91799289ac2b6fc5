"""Seeded synthetic customer data with known ground truth: the product's demo and benchmark data.

`generate(config, out_dir)` writes four raw input tables (transactions, interactions, customers,
products; CSV or Parquet), `ground_truth.parquet` and `metadata.json`. The same config gives
byte-identical files. Everything is vectorised with NumPy and customers are simulated in chunks,
so 1M customers / 20M events run in bounded memory.

Generative process (time is measured in days since `start`, 00:00 UTC; `end` is exclusive)
-----------------------------------------------------------------------------------------
1. Customers. Signup times follow exponential growth over [start, end) (the signup rate at the
   end is 4x the rate at the start); customer ids are assigned in signup order. Country is skewed
   (DE, FR, GB, NL, ES, IT, US) and the acquisition channel (organic, paid_search, social,
   referral, email) shifts quality: referral customers buy more often, churn less and spend more;
   paid_search and social customers churn faster and are more often prospects.
2. Latent traits (BG/NBD + Gamma-Gamma). Purchase rate lambda ~ Gamma(shape r=1.5, rate
   alpha=60) per day, times a channel multiplier (the median customer buys about every 50 days);
   dropout probability p ~ Beta(a=1.2, b=7), times a channel multiplier, applied after every
   purchase; mean order value m = p_s / nu with nu ~ Gamma(shape q=4, rate gamma=30) and p_s=6
   (population mean ~60), times a channel multiplier; a Dirichlet preference over product
   categories (its argmax is the preferred category); a channel mix over web / app / store. All
   parameters are in `metadata.json` under "population".
3. Purchases. A share of customers are prospects who never buy. Others make a first purchase some
   hours or days after signup, then repeat purchases form a Poisson process with rate lambda in
   *seasonal time* W(t) = integral of s(u) du, where s is a daily factor (November/December peak,
   Black Friday to Cyber Monday spike, summer dip, a weekly pattern) normalised to mean 1 over the
   data period, so lambda is the average purchases per day. After each purchase the customer drops
   out with probability p; the dropout moment lies uniformly (in seasonal time) between the last
   purchase and the purchase that would have come next. No purchases happen after dropout. Times of
   day follow a diurnal curve (evening peak, night trough).
4. Orders. Each order has 1-5 lines sharing order_id and timestamp. Order value ~ Gamma(p_s,
   scale m / p_s) is split over the lines. A line re-buys the product of a random earlier line of
   the same customer with probability 0.3; otherwise it takes, of four candidates (category from
   the customer's preference, product by popularity within it), the one whose price fits the
   line's budget best. Quantity = budget / price rounded (1..12); amount = price * quantity *
   discount (20% of lines have a 5-30% promo). Realised order values track m (log-correlation
   ~0.8) without equalling it. With popular products drawn again by chance, ~45% of lines in
   repeat orders were bought before by the same customer.
   About 3% of lines (10% in a churner's last order) are refunded: an extra row with status
   'refund', the same order_id and product_id, 1-30 days later, and a POSITIVE amount equal to the
   refunded amount (refunds are identified by status, never by sign). Half of refunds come with a
   support ticket.
5. Interactions. While alive, customers browse in sessions at a rate tied to lambda (about 1.5
   sessions per purchase); a session has views, clicks, add_to_cart events and often a login.
   Online orders are usually preceded by a view and an add_to_cart of each line's product.
   Engagement carries the churn signal: in the 60-90 days before dropout the session rate and the
   email open rate fall linearly to a quarter, while the support-ticket rate rises linearly to six
   times its base. After dropout a little residual activity continues (a few views, rare opens).
   Weekly email campaigns (Tuesdays 08:00 UTC) go to a rotating ~15% of signed-up customers; opens
   and clicks are likelier for engaged, alive customers.
6. Ground truth (`ground_truth.parquet`, one row per customer): lambda, p_dropout,
   mean_order_value (the latent m), dropout_at (null when still alive at `end`), alive_at_end,
   n_purchases and first_purchase_at (observed in [start, end)), preferred_category, is_prospect.
   Prospects never buy; their dropout_at is when they stop browsing.
7. Dirty rows. Extra rows (about `dirty_fraction` of each event table) are injected at random
   positions: null or empty customer_id, exact duplicate order lines, timestamps in the year
   2099+, and in CSV non-numeric amounts ('N/A', '12,50 EUR', ...) and unparsable timestamps
   ('not a date', ...); Parquet gets null amounts instead. Every dirty row is a modified copy of a
   clean row, so dropping them restores the clean data; `GenerateResult.dirty_counts` counts them.

8. Drift (opt-in, `drift_from`; the default output is unchanged). From `drift_from` on, the
   world shifts the way monitoring must catch: prices rise by 40% (every amount on or after the
   date), 70% of store orders move to the app, a churn wave makes 60% of the buyers still active
   at the date stop buying (and engaging) within 180 days, and half of the customers signing up
   after the date come through a new acquisition channel, 'affiliate'. The shift draws from its
   own random stream, so the clean events before `drift_from` are those of the undrifted data.

Encoding. Parquet timestamps are naive UTC `timestamp[us]`. CSV timestamps are ISO strings: the
web platform exports naive UTC ('2024-03-05T14:22:31'), while store tills (transactions) and the
app (interactions) export local time with an explicit offset ('2024-03-05T15:22:31+01:00'), as do
~30% of customer signups. Timestamps have whole seconds. Rows of an event table are sorted by
time within each chunk of customers (one chunk up to 50,000 customers); files are not globally
ordered beyond that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from custops.data import schema
from custops.errors import ConfigError
from custops.io import atomic_path, file_sha256, write_json, write_parquet

logger = logging.getLogger(__name__)

Cols = dict[str, np.ndarray]

_CHUNK_CUSTOMERS: Final = 50_000
_PRODUCT_CANDIDATES: Final = 4
_US_PER_DAY: Final = 86_400 * 1_000_000
_NEVER: Final = 1e9  # "no dropout within reach": a day count far beyond any horizon
_CALENDAR_EXTENSION_DAYS: Final = 730
_FUTURE_YEAR: Final = 2099
_NAIVE: Final = np.int16(-32768)  # tz-offset sentinel: write the timestamp as naive UTC

ORDER_CHANNELS: Final = ("web", "app", "store")
INTERACTION_CHANNELS: Final = ("web", "app", "email", "phone")
STATUSES: Final = ("purchase", "refund")
_EV = {name: code for code, name in enumerate(schema.EVENT_TYPES)}
_BAD_AMOUNTS: Final = ("N/A", "12,50 EUR", "unknown", "#VALUE!")
_BAD_TIMESTAMPS: Final = ("not a date", "2024-13-45T25:61:00", "31/02/2024", "yesterday")


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """What to generate: size, period, seed, dirtiness and file format."""

    n_customers: int = 5000
    start: date = date(2022, 1, 1)
    end: date = date(2025, 12, 31)
    seed: int = 42
    n_products: int = 300
    n_categories: int = 8
    dirty_fraction: float = 0.005
    file_format: Literal["csv", "parquet"] = "csv"
    events_per_customer_target: float | None = None
    drift_from: date | None = None  # opt-in distribution shift from this date (see "Drift" above)


@dataclass(frozen=True)
class GenerateResult:
    """Where the files are, how many rows each has, and which dirty rows were injected."""

    paths: dict[str, Path]
    row_counts: dict[str, int]
    dirty_counts: dict[str, dict[str, int]]


@dataclass(frozen=True)
class _Population:
    """True population parameters of the generative process (written to metadata.json)."""

    signup_growth: float = 4.0  # signup rate at `end` / signup rate at `start`
    lambda_r: float = 1.5  # lambda ~ Gamma(shape r, rate alpha), purchases per day
    lambda_alpha: float = 60.0
    dropout_a: float = 1.2  # p ~ Beta(a, b)
    dropout_b: float = 7.0
    spend_p: float = 6.0  # order value ~ Gamma(p, rate nu); nu ~ Gamma(q, rate gamma)
    spend_q: float = 4.0
    spend_gamma: float = 30.0
    category_concentration: float = 2.0  # Dirichlet concentration of category preferences
    popularity_sigma: float = 1.2  # product popularity ~ LogNormal(0, sigma) within category
    price_sigma: float = 0.45  # price ~ category median * LogNormal(0, sigma)
    immediate_first_purchase: float = 0.3  # share buying within hours of signup
    first_purchase_mean_days: float = 15.0  # otherwise Exp(mean) days after signup
    prospect_interest_mean_days: float = 60.0  # prospects browse this long on average
    extra_lines_mean: float = 1.2  # lines per order = 1 + min(Poisson(mean), 4)
    repeat_buy: float = 0.3  # P(a line re-buys a product from an earlier order)
    promo_share: float = 0.2
    refund_rate: float = 0.03
    refund_rate_last_order: float = 0.10  # in the last order before dropout
    refund_ticket: float = 0.5
    sessions_per_purchase: float = 1.5  # session rate = k * lambda + baseline
    session_baseline: float = 0.003  # sessions per day
    views_extra_mean: float = 1.0  # views per session = 1 + Poisson(mean)
    click_per_view: float = 0.3
    cart_per_click: float = 0.25
    login_per_session_app: float = 0.6
    login_per_session_web: float = 0.3
    order_linked_browse: float = 0.6  # online order preceded by view + add_to_cart per line
    ticket_rate: float = 0.003  # support tickets per day while engaged
    ticket_rate_prospect: float = 0.3  # multiplier for prospects
    decline_days: tuple[float, float] = (60.0, 90.0)  # engagement declines over U(a, b) days
    engagement_at_dropout: float = 0.25  # session / open multiplier reached at dropout
    engagement_after_dropout: float = 0.08
    tickets_at_dropout: float = 6.0  # ticket multiplier reached at dropout
    tickets_after_dropout: float = 0.2
    email_send: float = 0.15  # share of signed-up customers in each weekly campaign
    email_open_beta: tuple[float, float] = (2.0, 5.0)
    email_click_per_open: float = 0.2
    # fmt: off
    acquisition_channels: tuple[str, ...] = (
        "organic", "paid_search", "social", "referral", "email",
    )
    acquisition_share: tuple[float, ...] = (0.35, 0.25, 0.17, 0.08, 0.15)
    acquisition_lambda_mult: tuple[float, ...] = (1.0, 0.9, 0.8, 1.35, 1.1)
    acquisition_dropout_mult: tuple[float, ...] = (1.0, 1.5, 1.3, 0.6, 0.9)
    acquisition_spend_mult: tuple[float, ...] = (1.0, 0.95, 0.9, 1.15, 1.05)
    acquisition_prospect_share: tuple[float, ...] = (0.18, 0.25, 0.32, 0.10, 0.15)
    countries: tuple[str, ...] = ("DE", "FR", "GB", "NL", "ES", "IT", "US")
    country_share: tuple[float, ...] = (0.34, 0.20, 0.15, 0.12, 0.08, 0.07, 0.04)
    country_utc_offset_min: tuple[tuple[int, int], ...] = (
        (60, 120), (60, 120), (0, 60), (60, 120), (60, 120), (60, 120), (-300, -240),
    )  # (winter, summer); summer = April..October
    order_channel_dirichlet: tuple[float, ...] = (4.0, 3.0, 2.0)  # web, app, store
    month_factor: tuple[float, ...] = (
        0.85, 0.85, 0.95, 1.0, 1.0, 0.85, 0.75, 0.8, 1.0, 1.05, 1.35, 1.55,
    )
    black_friday_factor: float = 1.8  # Black Friday .. Cyber Monday
    weekday_factor: tuple[float, ...] = (1.05, 1.0, 0.95, 0.95, 0.95, 1.0, 1.1)  # Mon..Sun
    hourly_weight: tuple[float, ...] = (
        0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.0, 1.0, 1.05,
        1.1, 1.0, 1.0, 1.0, 1.05, 1.15, 1.35, 1.5, 1.5, 1.3, 0.9, 0.5,
    )  # UTC hours
    # fmt: on


_POP: Final = _Population()


@dataclass(frozen=True)
class _Drift:
    """How the world shifts from `SyntheticConfig.drift_from` on (written to metadata.json)."""

    price_factor: float = 1.4  # every amount on or after the date
    store_to_app: float = 0.7  # share of store orders that move to the app
    churn_wave: float = 0.6  # share of buyers active at the date who stop within `wave_days`
    wave_days: float = 180.0
    new_channel: str = "affiliate"  # acquisition channel that appears with the drift
    new_channel_share: float = 0.5  # of signups after the date
    stream: int = 0xD1F7  # seeds the drift's own random stream with the config seed


_DRIFT: Final = _Drift()

# name, share of customers' attention, median price
_CATEGORIES: Final = (
    ("grocery", 0.22, 6.0),
    ("fashion", 0.16, 35.0),
    ("home", 0.14, 28.0),
    ("beauty", 0.12, 16.0),
    ("electronics", 0.10, 85.0),
    ("sports", 0.09, 40.0),
    ("toys", 0.08, 22.0),
    ("books", 0.08, 14.0),
    ("garden", 0.06, 30.0),
    ("pets", 0.06, 20.0),
    ("health", 0.05, 12.0),
    ("auto", 0.04, 35.0),
)

_GROUND_TRUTH_COLUMNS: Final = {
    "customer_id": "customer id, as in every raw table",
    "lambda": "purchase rate while alive, purchases per day (seasonally averaged)",
    "p_dropout": "probability of dropping out after each purchase",
    "dropout_at": "moment the customer became inactive (naive UTC); null if alive at end",
    "alive_at_end": "dropout_at is null: still active at the end of the data",
    "mean_order_value": "latent mean order value (Gamma-Gamma), before integer quantities",
    "n_purchases": "orders with status 'purchase' in [start, end)",
    "first_purchase_at": "first order (naive UTC); null if none in [start, end)",
    "preferred_category": "category with the largest share of the customer's preference",
    "is_prospect": "never buys; dropout_at is when the prospect stops browsing",
}

_PROCESS_IN_WORDS: Final = (
    "Signups grow exponentially over [start, end); ids follow signup order.",
    "Country and acquisition channel are categorical; the channel shifts purchase rate, dropout,"
    " spend and the prospect share.",
    "Purchase rate lambda ~ Gamma(r, alpha) per day; dropout p ~ Beta(a, b) after each purchase"
    " (BG/NBD); both times channel multipliers.",
    "Prospects never buy. Buyers buy first some hours/days after signup, then repeat as a Poisson"
    " process with rate lambda in seasonal time (Nov/Dec peak, Black Friday, summer dip, weekly"
    " pattern), until dropout, which falls between the last and the would-be next purchase.",
    "Order value ~ Gamma(p, nu), nu ~ Gamma(q, gamma) (Gamma-Gamma); 1-5 lines per order; products"
    " from a Dirichlet category preference, popularity within category and price fit; 30% of"
    " lines re-buy an earlier product.",
    "About 3% of lines are refunded later as separate rows with status 'refund' and a positive amount.",
    "Sessions (view/click/add_to_cart/login) at a rate tied to lambda; online orders are preceded"
    " by view + add_to_cart; weekly email campaigns to a rotating ~15% with engagement-dependent"
    " opens/clicks.",
    "Churn signal: in the 60-90 days before dropout sessions and opens fall to 25% and support"
    " tickets rise to 6x; after dropout only residual activity remains.",
    "Dirty rows (null/empty customer_id, duplicates, year-2099 timestamps, bad amounts/timestamps)"
    " are modified copies of clean rows, injected at random positions.",
)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


def generate(config: SyntheticConfig, out_dir: Path) -> GenerateResult:
    """Generate the synthetic raw tables, ground truth and metadata into `out_dir`."""
    _validate(config)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = config.file_format
    rng = np.random.default_rng(config.seed)

    cal = _Calendar.build(config.start, config.end)
    catalog = _Catalog.build(rng, config.n_products, config.n_categories)
    people = _Customers.build(rng, config.n_customers, cal.horizon)
    n_chunks = max(1, math.ceil(config.n_customers / _CHUNK_CUSTOMERS))
    chunk_rngs = rng.spawn(n_chunks)
    truth = _Truth.empty(config.n_customers)

    paths = {t: out_dir / f"{t}.{fmt}" for t in schema.TABLES}
    paths["ground_truth"] = out_dir / "ground_truth.parquet"
    paths["metadata"] = out_dir / "metadata.json"
    rows = {"transactions": 0, "interactions": 0}
    dirty: dict[str, dict[str, int]] = {
        "transactions": dict.fromkeys(_dirty_kinds("transactions", fmt), 0),
        "interactions": dict.fromkeys(_dirty_kinds("interactions", fmt), 0),
    }
    scale: float | None = None if config.events_per_customer_target is not None else 1.0
    next_order = 1
    tz_tables = _TzTables.build(people.country)

    with contextlib.ExitStack() as stack:
        sinks = {t: _Sink.open(stack, paths[t], _event_schema(t, fmt), fmt) for t in ("transactions", "interactions")}
        for k in range(n_chunks):
            idx = np.arange(k, config.n_customers, n_chunks)
            sim = _ChunkSimulator(chunk_rngs[k], idx, people, catalog, cal)
            tx = sim.purchases(next_order)
            next_order += sim.n_orders
            if scale is None:
                scale = sim.interaction_scale(config.events_per_customer_target, len(tx["ts"]))
            ix = sim.interactions(scale)
            if config.drift_from is not None:
                tx, ix = _apply_drift(config, cal, sim, k, tx, ix)
            sim.fill_truth(truth)
            for table, cols in (("transactions", tx), ("interactions", ix)):
                cols, counts = _inject_dirty(chunk_rngs[k], cols, table, fmt, config, cal)
                for kind, c in counts.items():
                    dirty[table][kind] += c
                rows[table] += len(cols["ts"])
                sinks[table].write(_render_events(table, cols, fmt, people, catalog, tz_tables))
            logger.info(
                "synthetic chunk %d/%d: %d customers, %d transaction rows, %d interaction rows",
                k + 1,
                n_chunks,
                len(idx),
                len(tx["ts"]),
                len(ix["ts"]),
            )

    customers = _render_customers(people, cal, fmt, tz_tables)
    if config.drift_from is not None:
        customers = _drift_customers(config, cal, people, customers)
    _write_table(customers, paths["customers"], fmt)
    _write_table(_render_products(catalog), paths["products"], fmt)
    write_parquet(truth.to_arrow(people, catalog, cal), paths["ground_truth"])
    rows |= {
        "customers": config.n_customers,
        "products": config.n_products,
        "ground_truth": config.n_customers,
    }
    write_json(
        _metadata(config, paths, rows, dirty, scale or 1.0, truth),
        paths["metadata"],
    )
    logger.info(
        "synthetic data: %d customers, %d transaction rows, %d interaction rows in %.1fs -> %s",
        config.n_customers,
        rows["transactions"],
        rows["interactions"],
        time.perf_counter() - started,
        out_dir,
    )
    return GenerateResult(paths=paths, row_counts=rows, dirty_counts=dirty)


def _validate(config: SyntheticConfig) -> None:
    def bad(field: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"SyntheticConfig.{field}: {problem} ({fix})")

    if config.n_customers < 1:
        raise bad("n_customers", f"{config.n_customers} is not positive", "use at least 1")
    if config.end <= config.start:
        raise bad("end", f"{config.end} is not after start {config.start}", "set end > start")
    if config.n_categories < 1:
        raise bad("n_categories", f"{config.n_categories} is not positive", "use at least 1")
    if config.n_products < config.n_categories:
        raise bad(
            "n_products",
            f"{config.n_products} < n_categories {config.n_categories}",
            "every category needs a product",
        )
    if not 0.0 <= config.dirty_fraction < 0.5:
        raise bad("dirty_fraction", f"{config.dirty_fraction} outside [0, 0.5)", "use e.g. 0.005")
    if config.file_format not in ("csv", "parquet"):
        raise bad("file_format", f"{config.file_format!r} unknown", "use 'csv' or 'parquet'")
    target = config.events_per_customer_target
    if target is not None and not target > 0:
        raise bad("events_per_customer_target", f"{target} is not positive", "use None or > 0")
    if config.drift_from is not None and not config.start < config.drift_from < config.end:
        raise bad(
            "drift_from",
            f"{config.drift_from} is not inside ({config.start}, {config.end})",
            "pick a date between start and end, or None for no drift",
        )


# ----------------------------------------------------------------------------------------------
# Calendar: seasonality, seasonal time warp, diurnal curve
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """Day grid from `start` with the seasonal factor s(t) and the warp W(t) = integral of s."""

    start_day: int  # days since 1970-01-01
    horizon: float  # days in [start, end)
    t_grid: np.ndarray
    w_grid: np.ndarray
    hour_cdf: np.ndarray

    @classmethod
    def build(cls, start: date, end: date) -> _Calendar:
        horizon = (end - start).days
        start_day = int(np.datetime64(start, "D").astype(np.int64))
        n_days = horizon + _CALENDAR_EXTENSION_DAYS
        days = np.arange(n_days) + start_day
        d = days.astype("datetime64[D]")
        year = d.astype("datetime64[Y]").astype(np.int64) + 1970
        doy = (d - d.astype("datetime64[Y]")).astype(np.int64)
        # smooth monthly factors: anchors at mid-month, circular interpolation over the year
        anchors = np.array([15.5 + 30.44 * i for i in range(12)])
        factor = np.interp(doy, anchors, np.array(_POP.month_factor), period=365.25)
        factor = factor * np.array(_POP.weekday_factor)[(days + 3) % 7]  # 1970-01-01 = Thursday
        for y in np.unique(year):
            nov1 = np.datetime64(f"{y}-11-01", "D").astype(np.int64)
            thanksgiving = nov1 + (3 - (nov1 + 3) % 7) % 7 + 21  # fourth Thursday
            factor[(days >= thanksgiving + 1) & (days <= thanksgiving + 4)] *= _POP.black_friday_factor
        factor = factor / factor[:horizon].mean()
        w_grid = np.concatenate([[0.0], np.cumsum(factor)])
        t_grid = np.arange(n_days + 1, dtype=np.float64)
        hourly = np.array(_POP.hourly_weight)
        hour_cdf = np.concatenate([[0.0], np.cumsum(hourly) / hourly.sum()])
        return cls(start_day, float(horizon), t_grid, w_grid, hour_cdf)

    @property
    def w_end(self) -> float:
        return float(self.warp(np.array([self.horizon]))[0])

    def warp(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self.t_grid, self.w_grid)

    def unwarp(self, w: np.ndarray) -> np.ndarray:
        return np.interp(w, self.w_grid, self.t_grid, right=_NEVER)

    def diurnal(self, t: np.ndarray) -> np.ndarray:
        """Move each time within its day so times of day follow the diurnal curve (monotone)."""
        day = np.floor(t)
        return day + np.interp(t - day, self.hour_cdf, np.linspace(0.0, 1.0, 25))

    def to_us(self, t: np.ndarray) -> np.ndarray:
        """Days since start -> epoch microseconds, floored to whole seconds."""
        secs = np.floor(t * 86_400.0).astype(np.int64)
        return self.start_day * _US_PER_DAY + secs * 1_000_000

    def weekly_campaigns(self) -> np.ndarray:
        """Campaign send times: Tuesdays 08:00 UTC in [start, end)."""
        first = (1 - (self.start_day + 3) % 7) % 7  # days until the first Tuesday
        return np.arange(first, self.horizon, 7.0) + 8.0 / 24.0


# ----------------------------------------------------------------------------------------------
# Catalog and customers (global, drawn once)
# ----------------------------------------------------------------------------------------------


def _category_table(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = [c[0] for c in _CATEGORIES[:n]] + [f"category_{i + 1:02d}" for i in range(12, n)]
    share = np.array([c[1] for c in _CATEGORIES[:n]] + [0.03] * max(0, n - 12))
    price = np.array([c[2] for c in _CATEGORIES[:n]] + [25.0] * max(0, n - 12))
    return names, share / share.sum(), price


@dataclass(frozen=True)
class _Catalog:
    """Products: category, price, popularity; plus a sampler index by category."""

    category_names: list[str]
    category_share: np.ndarray
    product_category: np.ndarray  # int per product
    price: np.ndarray
    by_category: np.ndarray  # product indices sorted by category
    keys: np.ndarray  # category + cumulative popularity within category (for searchsorted)
    category_end: np.ndarray  # exclusive end of each category in `by_category`

    @classmethod
    def build(cls, rng: np.random.Generator, n_products: int, n_categories: int) -> _Catalog:
        names, share, median_price = _category_table(n_categories)
        counts = 1 + rng.multinomial(n_products - n_categories, share)
        cats = rng.permutation(np.repeat(np.arange(n_categories), counts))
        raw = median_price[cats] * rng.lognormal(0.0, _POP.price_sigma, n_products)
        price = np.floor(raw) + 0.99
        popularity = rng.lognormal(0.0, _POP.popularity_sigma, n_products)
        order = np.argsort(cats, kind="stable")
        pop_sorted = popularity[order]
        cat_sorted = cats[order]
        totals = np.bincount(cat_sorted, weights=pop_sorted, minlength=n_categories)
        cum = _group_cumsum(pop_sorted, counts) / totals[cat_sorted]
        ends = np.cumsum(counts)
        cum[ends - 1] = 1.0
        return cls(names, share, cats, price, order, cat_sorted + cum, ends)

    def sample(self, rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
        """One product per row, by popularity within the row's category."""
        pos = np.searchsorted(self.keys, category + rng.random(len(category)), side="right")
        return self.by_category[np.minimum(pos, self.category_end[category] - 1)]


@dataclass(frozen=True)
class _Customers:
    """Observable customer attributes, indexed by customer number (signup order)."""

    signup: np.ndarray  # days since start
    country: np.ndarray
    acquisition: np.ndarray

    @classmethod
    def build(cls, rng: np.random.Generator, n: int, horizon: float) -> _Customers:
        g = math.log(_POP.signup_growth)
        u = rng.random(n)
        signup = np.sort(horizon * np.log1p(u * math.expm1(g)) / g)
        country = rng.choice(len(_POP.countries), n, p=np.array(_POP.country_share))
        acquisition = rng.choice(len(_POP.acquisition_channels), n, p=np.array(_POP.acquisition_share))
        return cls(signup, country, acquisition)

    @property
    def n(self) -> int:
        return len(self.signup)

    def ids(self, idx: np.ndarray | None = None) -> pa.Array:
        num = np.arange(1, self.n + 1) if idx is None else idx + 1
        width = max(6, len(str(self.n)))
        digits = pc.utf8_lpad(pa.array(num).cast(pa.string()), width=width, padding="0")
        return pc.binary_join_element_wise("C", digits, "")


# ----------------------------------------------------------------------------------------------
# Per-chunk simulation
# ----------------------------------------------------------------------------------------------


@dataclass
class _Truth:
    """Per-customer latent traits and outcomes, filled chunk by chunk."""

    lam: np.ndarray
    p: np.ndarray
    mov: np.ndarray
    dropout: np.ndarray  # days since start; NaN when alive at end
    prospect: np.ndarray
    n_purchases: np.ndarray
    first_purchase: np.ndarray  # NaN when no purchase in the period
    preferred: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Truth:
        f = np.full(n, np.nan)
        return cls(
            f.copy(),
            f.copy(),
            f.copy(),
            f.copy(),
            np.zeros(n, bool),
            np.zeros(n, np.int64),
            f.copy(),
            np.zeros(n, np.int64),
        )

    def to_arrow(self, people: _Customers, catalog: _Catalog, cal: _Calendar) -> pa.Table:
        def ts(t: np.ndarray) -> pa.Array:
            valid = ~np.isnan(t)
            us = cal.to_us(np.where(valid, t, 0.0))
            return pa.array(us, type=pa.int64(), mask=~valid).cast(pa.timestamp("us"))

        return pa.table(
            {
                "customer_id": people.ids(),
                "lambda": self.lam,
                "p_dropout": self.p,
                "dropout_at": ts(self.dropout),
                "alive_at_end": np.isnan(self.dropout),
                "mean_order_value": self.mov,
                "n_purchases": self.n_purchases,
                "first_purchase_at": ts(self.first_purchase),
                "preferred_category": pa.array(np.array(catalog.category_names)[self.preferred]),
                "is_prospect": self.prospect,
            }
        )


class _ChunkSimulator:
    """Simulates one chunk of customers: latent traits, purchases, then interactions."""

    def __init__(
        self,
        rng: np.random.Generator,
        idx: np.ndarray,
        people: _Customers,
        catalog: _Catalog,
        cal: _Calendar,
    ) -> None:
        self.rng, self.idx, self.catalog, self.cal = rng, idx, catalog, cal
        self.m = m = len(idx)
        self.signup = people.signup[idx]  # raw time; outputs go through cal.diurnal
        self.signup_out = cal.diurnal(self.signup)
        acq = people.acquisition[idx]
        self.lam = rng.gamma(_POP.lambda_r, 1.0 / _POP.lambda_alpha, m) * np.take(_POP.acquisition_lambda_mult, acq)
        p = rng.beta(_POP.dropout_a, _POP.dropout_b, m)
        self.p = np.clip(p * np.take(_POP.acquisition_dropout_mult, acq), 1e-6, 0.99)
        nu = rng.gamma(_POP.spend_q, 1.0 / _POP.spend_gamma, m)
        self.mov = _POP.spend_p / nu * np.take(_POP.acquisition_spend_mult, acq)
        n_cat = len(catalog.category_names)
        pref = rng.gamma(_POP.category_concentration * catalog.category_share, size=(m, n_cat))
        pref += 1e-12
        self.pref = pref / pref.sum(axis=1, keepdims=True)
        self.preferred = np.argmax(self.pref, axis=1)
        self.pref_keys = _row_keys(self.pref)
        self.chan_keys = _row_keys(rng.dirichlet(np.array(_POP.order_channel_dirichlet), m))
        self.prospect = rng.random(m) < np.take(_POP.acquisition_prospect_share, acq)
        self.open_affinity = np.clip(rng.beta(*_POP.email_open_beta, m) * (self.lam / 0.02) ** 0.25, 0.0, 0.9)
        self.app_share = rng.beta(2.0, 3.0, m)
        self.decline = rng.uniform(*_POP.decline_days, m)

    # -- purchases -------------------------------------------------------------------------

    def purchases(self, first_order_number: int) -> Cols:
        """Simulate the BG/NBD purchase process and the order lines; returns transaction rows."""
        rng, cal, m = self.rng, self.cal, self.m
        horizon, w_end = cal.horizon, cal.w_end
        immediate = rng.random(m) < _POP.immediate_first_purchase
        delay = rng.exponential(np.where(immediate, 0.1, _POP.first_purchase_mean_days))
        t1 = self.signup + delay
        buys = ~self.prospect & (t1 < horizon)
        w1 = cal.warp(np.where(buys, t1, horizon))
        dw = np.where(buys, w_end - w1, 0.0)
        n_points = rng.poisson(self.lam * dw)  # repeat-purchase chances if never dropping out
        n_repeat_max = rng.geometric(self.p) - 1  # repeat purchases before the dropout decision
        k = np.minimum(n_points, n_repeat_max + 1)  # order statistics we need
        # first k of n_points uniform order statistics on (w1, w_end): exponential spacings,
        # normalised by the spacing sum, whose remainder is Gamma(n_points + 1 - k)
        spacing = _group_cumsum(rng.standard_exponential(int(k.sum())), k)
        starts = np.cumsum(k) - k
        last_k = np.where(k > 0, _padded(spacing)[np.maximum(starts + k - 1, 0)], 0.0)
        total = last_k + rng.standard_gamma(n_points + 1 - k)
        owner = np.repeat(np.arange(m), k)
        w_pts = w1[owner] + dw[owner] * spacing / total[owner]
        j = np.arange(len(owner)) - starts[owner]
        n_rep = np.minimum(n_points, n_repeat_max)
        is_purchase = j < n_rep[owner]

        # dropout between the last purchase and the would-be next one (seasonal time)
        drops = buys & (n_repeat_max <= n_points)
        w_pad = _padded(w_pts)
        last_w = np.where(n_rep > 0, w_pad[np.maximum(starts + n_rep - 1, 0)], w1)
        beyond = w_end + rng.standard_exponential(m) / np.maximum(self.lam, 1e-12)
        next_w = np.where(n_repeat_max < n_points, w_pad[starts + n_rep], beyond)
        w_drop = last_w + rng.random(m) * (next_w - last_w)
        t_drop = np.where(drops, cal.unwarp(w_drop), _NEVER)
        # prospects lose interest after a while (their engagement ends like a dropout)
        interest = self.signup + rng.exponential(_POP.prospect_interest_mean_days, m)
        t_drop = np.where(self.prospect, interest, t_drop)
        self.t_drop = np.minimum(t_drop, _NEVER)  # raw time
        self.t_first = np.where(buys, t1, np.nan)  # raw time

        # orders: first purchase + repeat purchases, grouped by customer in time order
        o_cust = np.concatenate([np.flatnonzero(buys), owner[is_purchase]])
        o_t = np.concatenate([t1[buys], cal.unwarp(w_pts[is_purchase])])  # raw time
        order = np.lexsort((o_t, o_cust))
        o_cust, o_t = o_cust[order], o_t[order]
        self.n_orders = len(o_cust)
        self.n_purch = np.bincount(o_cust, minlength=m)
        o_last = np.r_[o_cust[1:] != o_cust[:-1], True] & (self.t_drop[o_cust] < horizon)
        by_time = np.argsort(o_t, kind="stable")
        o_number = np.empty(self.n_orders, np.int64)
        o_number[by_time] = first_order_number + np.arange(self.n_orders, dtype=np.int64)
        o_channel = _draw_rows(rng, self.chan_keys, o_cust, len(ORDER_CHANNELS))
        o_value = rng.gamma(_POP.spend_p, self.mov[o_cust] / _POP.spend_p)
        return self._lines(o_cust, o_t, o_number, o_channel, o_value, o_last)

    def _lines(
        self,
        o_cust: np.ndarray,
        o_t: np.ndarray,
        o_number: np.ndarray,
        o_channel: np.ndarray,
        o_value: np.ndarray,
        o_last: np.ndarray,
    ) -> Cols:
        rng, catalog = self.rng, self.catalog
        n_lines = 1 + np.minimum(rng.poisson(_POP.extra_lines_mean, len(o_cust)), 4)
        lo = np.repeat(np.arange(len(o_cust)), n_lines)  # line -> order
        cust = o_cust[lo]
        n = len(lo)
        # repeat-buy: copy the product of a random line from one of the customer's earlier orders
        line_start_of_order = np.cumsum(n_lines) - n_lines
        cust_first_line = np.zeros(self.m, np.int64)
        firsts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]]) if n else np.zeros(0, int)
        cust_first_line[cust[firsts]] = firsts
        n_earlier = line_start_of_order[lo] - cust_first_line[cust]
        repeat = (n_earlier > 0) & (rng.random(n) < _POP.repeat_buy)
        src = np.arange(n)
        src[repeat] = cust_first_line[cust[repeat]] + (rng.random(int(repeat.sum())) * n_earlier[repeat]).astype(
            np.int64
        )
        while True:  # pointer jumping: every repeat resolves to a fresh line
            nxt = src[src]
            if np.array_equal(nxt, src):
                break
            src = nxt
        # the order value is split over its lines; a fresh line picks, among a few candidates
        # drawn from the customer's preferences, the product whose price fits its budget best
        share = rng.standard_exponential(n)
        budget = o_value[lo] * share / np.bincount(lo, weights=share, minlength=len(o_cust))[lo]
        k = _PRODUCT_CANDIDATES
        cand_cat = _draw_rows(rng, self.pref_keys, np.repeat(cust, k), len(catalog.category_names))
        cand = catalog.sample(rng, cand_cat).reshape(n, k)
        cand_price = catalog.price[cand]
        cand_qty = np.clip(np.rint(budget[:, None] / cand_price), 1, 12)
        misfit = np.abs(np.log(cand_price * cand_qty / budget[:, None]))
        product = cand[np.arange(n), np.argmin(misfit, axis=1)][src]
        # one line per product within an order (keep the first)
        key = lo * np.int64(len(catalog.price)) + product
        _, first = np.unique(key, return_index=True)
        keep = np.zeros(n, bool)
        keep[first] = True
        lo, cust, product, share = lo[keep], cust[keep], product[keep], share[keep]
        n = len(lo)
        budget = o_value[lo] * share / np.bincount(lo, weights=share, minlength=len(o_cust))[lo]
        price = catalog.price[product]
        qty = np.clip(np.rint(budget / price), 1, 12).astype(np.int64)
        promo = rng.random(n) < _POP.promo_share
        discount = np.where(promo, 1.0 - 0.05 * rng.integers(1, 7, n), 1.0)
        amount = np.round(price * qty * discount, 2)
        t_raw = o_t[lo]
        t = self.cal.diurnal(t_raw)
        lines: Cols = {
            "cust": self.idx[cust],
            "ts": self.cal.to_us(t),
            "amount": amount,
            "order": o_number[lo],
            "product": product,
            "qty": qty,
            "status": np.zeros(n, np.int8),
            "channel": o_channel[lo].astype(np.int8),
        }
        # refunds: extra rows 1-30 days later, positive amount, status 'refund'
        p_refund = np.where(o_last[lo], _POP.refund_rate_last_order, _POP.refund_rate)
        ref = np.flatnonzero(rng.random(n) < p_refund)
        t_ref = t_raw[ref] + rng.uniform(1.0, 30.0, len(ref))  # raw time
        ok = t_ref < self.cal.horizon
        ref, t_ref = ref[ok], t_ref[ok]
        refunds = {c: v[ref] for c, v in lines.items()}
        refunds["ts"] = self.cal.to_us(self.cal.diurnal(t_ref))
        refunds["status"] = np.ones(len(ref), np.int8)
        # keep for interactions: online order lines and refund times
        online = lines["channel"] != ORDER_CHANNELS.index("store")
        self.line_cust, self.line_t = cust[online], t[online]
        self.line_product, self.line_channel = product[online], lines["channel"][online]
        self.ref_cust, self.ref_t, self.ref_order_t = cust[ref], t_ref, t_raw[ref]
        self.n_purchase_lines = n
        return _concat([lines, refunds])

    # -- interactions ----------------------------------------------------------------------

    def _segments(
        self, start_val: float, at_dropout: float, after: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Piecewise-linear intensity multipliers per customer: before/within/after the decline."""
        s, d, T = self.signup, self.t_drop, self.cal.horizon
        r0 = d - self.decline

        def ramp(t: np.ndarray, i: np.ndarray) -> np.ndarray:
            frac = np.clip((t - r0[i]) / self.decline[i], 0.0, 1.0)
            return start_val + (at_dropout - start_val) * frac

        a_end = np.minimum(r0, T)
        b_start, b_end = np.maximum(s, r0), np.minimum(d, T)
        c_start = np.maximum(s, d)
        ia = np.flatnonzero(s < a_end)
        ib = np.flatnonzero(b_start < b_end)
        ic = np.flatnonzero(c_start < T)
        owner = np.concatenate([ia, ib, ic])
        a = np.concatenate([s[ia], b_start[ib], c_start[ic]])
        b = np.concatenate([a_end[ia], b_end[ib], np.full(len(ic), T)])
        ra = np.concatenate([np.full(len(ia), start_val), ramp(b_start[ib], ib), np.full(len(ic), after)])
        rb = np.concatenate([np.full(len(ia), start_val), ramp(b_end[ib], ib), np.full(len(ic), after)])
        return owner, a, b, ra, rb

    def _session_rate(self) -> np.ndarray:
        return _POP.sessions_per_purchase * self.lam + _POP.session_baseline

    def _ticket_rate(self) -> np.ndarray:
        return _POP.ticket_rate * np.where(self.prospect, _POP.ticket_rate_prospect, 1.0)

    def _email_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(customer, campaign time) for every campaign after each customer's signup."""
        camp = self.cal.weekly_campaigns()
        first = np.searchsorted(camp, self.signup_out)
        n = len(camp) - first
        owner = np.repeat(np.arange(self.m), n)
        j = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
        return owner, camp[first[owner] + j]

    def _engagement(self, owner: np.ndarray, t: np.ndarray) -> np.ndarray:
        d = self.t_drop[owner]
        frac = np.clip((t - (d - self.decline[owner])) / self.decline[owner], 0.0, 1.0)
        e = 1.0 - (1.0 - _POP.engagement_at_dropout) * frac
        return np.where(t >= d, _POP.engagement_after_dropout, e)

    def interaction_scale(self, target: float | None, n_transactions: int) -> float:
        """Rate multiplier so that events per customer hit `target` (computed on this chunk)."""
        if target is None:
            return 1.0
        per_session = (
            1.0
            + _POP.views_extra_mean
            + (1.0 + _POP.views_extra_mean) * _POP.click_per_view * (1.0 + _POP.cart_per_click)
            + _POP.login_per_session_app * self.app_share.mean()
            + _POP.login_per_session_web * (1.0 - self.app_share.mean())
        )
        owner, a, b, ra, rb = self._segments(1.0, _POP.engagement_at_dropout, _POP.engagement_after_dropout)
        sessions = float(np.sum(self._session_rate()[owner] * (ra + rb) / 2 * (b - a)))
        owner, a, b, ra, rb = self._segments(1.0, _POP.tickets_at_dropout, _POP.tickets_after_dropout)
        tickets = float(np.sum(self._ticket_rate()[owner] * (ra + rb) / 2 * (b - a)))
        e_owner, e_t = self._email_pairs()
        engaged = self._engagement(e_owner, e_t)
        p_open = self.open_affinity[e_owner] * engaged
        emails = _POP.email_send * float(np.sum(1.0 + p_open * (1.0 + _POP.email_click_per_open * engaged)))
        linked = 2.0 * _POP.order_linked_browse * len(self.line_cust)
        base = sessions * per_session + tickets + emails + linked
        base += _POP.refund_ticket * len(self.ref_cust)
        wanted = target * self.m - n_transactions
        scale = wanted / base if base > 0 else 1.0
        if scale < 0.02:
            logger.warning(
                "events_per_customer_target=%.1f is below the transactions alone (%.1f per "
                "customer); interactions are cut to 2%% of their natural volume",
                target,
                n_transactions / self.m,
            )
        scale = max(scale, 0.02)
        if max(_POP.email_send, _POP.order_linked_browse) * scale > 1.0:
            logger.warning(
                "events_per_customer_target=%.1f needs more email/browse events than "
                "one per campaign/order line; the target will be undershot",
                target,
            )
        return scale

    def interactions(self, scale: float) -> Cols:
        """Simulate sessions, order-linked browsing, support tickets and email events."""
        rng, cal, T = self.rng, self.cal, self.cal.horizon
        parts: list[Cols] = []

        # browsing sessions
        owner, a, b, ra, rb = self._segments(1.0, _POP.engagement_at_dropout, _POP.engagement_after_dropout)
        s_cust, s_t = _sample_linear_poisson(rng, owner, a, b, ra, rb, scale * self._session_rate()[owner])
        s_t = cal.diurnal(s_t)
        app = rng.random(len(s_cust)) < self.app_share[s_cust]
        s_chan = np.where(app, 1, 0).astype(np.int8)
        p_login = np.where(app, _POP.login_per_session_app, _POP.login_per_session_web)
        login = rng.random(len(s_cust)) < p_login
        parts.append(self._rows(s_cust[login], s_t[login], "login", None, s_chan[login]))
        n_views = 1 + rng.poisson(_POP.views_extra_mean, len(s_cust))
        v_sess = np.repeat(np.arange(len(s_cust)), n_views)
        gaps = _group_cumsum(rng.exponential(1.5 / 1440, len(v_sess)), n_views)
        v_cust, v_t, v_chan = s_cust[v_sess], s_t[v_sess] + gaps, s_chan[v_sess]
        cat = _draw_rows(rng, self.pref_keys, v_cust, len(self.catalog.category_names))
        v_prod = self.catalog.sample(rng, cat)
        parts.append(self._rows(v_cust, v_t, "view", v_prod, v_chan))
        clk = np.flatnonzero(rng.random(len(v_cust)) < _POP.click_per_view)
        c_t = v_t[clk] + rng.exponential(20 / 86_400, len(clk))
        parts.append(self._rows(v_cust[clk], c_t, "click", v_prod[clk], v_chan[clk]))
        cart = clk[rng.random(len(clk)) < _POP.cart_per_click]
        k_t = v_t[cart] + rng.exponential(60 / 86_400, len(cart))
        parts.append(self._rows(v_cust[cart], k_t, "add_to_cart", v_prod[cart], v_chan[cart]))

        # online orders are preceded by a view and an add_to_cart of each line's product
        linked = rng.random(len(self.line_cust)) < min(1.0, _POP.order_linked_browse * scale)
        lc, lt = self.line_cust[linked], self.line_t[linked]
        lp, lch = self.line_product[linked], self.line_channel[linked]
        floor = self.signup_out[lc]
        view_t = np.maximum(lt - rng.uniform(10, 40, len(lc)) / 1440, floor)
        cart_t = np.maximum(lt - rng.uniform(1, 9, len(lc)) / 1440, view_t)
        parts.append(self._rows(lc, view_t, "view", lp, lch))
        parts.append(self._rows(lc, cart_t, "add_to_cart", lp, lch))

        # support tickets: base rate, rising before dropout; half of refunds come with one
        owner, a, b, ra, rb = self._segments(1.0, _POP.tickets_at_dropout, _POP.tickets_after_dropout)
        t_cust, t_t = _sample_linear_poisson(rng, owner, a, b, ra, rb, scale * self._ticket_rate()[owner])
        with_ticket = rng.random(len(self.ref_cust)) < min(1.0, _POP.refund_ticket * scale)
        rc, rt, rot = (
            self.ref_cust[with_ticket],
            self.ref_t[with_ticket],
            self.ref_order_t[with_ticket],
        )
        rt = np.maximum(rt - rng.uniform(0.0, 2.0, len(rc)), rot)
        t_cust, t_t = np.concatenate([t_cust, rc]), cal.diurnal(np.concatenate([t_t, rt]))
        t_chan = rng.choice(np.array([0, 1, 3], np.int8), len(t_cust), p=[0.5, 0.2, 0.3])
        parts.append(self._rows(t_cust, t_t, "support_ticket", None, t_chan))

        # weekly email campaigns to a rotating share; opens/clicks follow engagement
        e_owner, e_t = self._email_pairs()
        sent = rng.random(len(e_owner)) < min(1.0, _POP.email_send * scale)
        e_owner, e_t = e_owner[sent], e_t[sent] + rng.uniform(0.0, 2.0 / 24, int(sent.sum()))
        email = np.int8(INTERACTION_CHANNELS.index("email"))
        parts.append(self._rows(e_owner, e_t, "email_sent", None, email))
        engaged = self._engagement(e_owner, e_t)
        opened = rng.random(len(e_owner)) < self.open_affinity[e_owner] * engaged
        o_owner, o_t = e_owner[opened], e_t[opened] + rng.exponential(0.25, int(opened.sum()))
        parts.append(self._rows(o_owner, o_t, "email_open", None, email))
        clicked = rng.random(len(o_owner)) < _POP.email_click_per_open * engaged[opened]
        c_owner = o_owner[clicked]
        c_t = o_t[clicked] + rng.exponential(3 / 1440, int(clicked.sum()))
        parts.append(self._rows(c_owner, c_t, "email_click", None, email))

        out = _concat(parts)
        return _take(out, np.flatnonzero(out["_t"] < T))

    def _rows(
        self,
        cust: np.ndarray,
        t: np.ndarray,
        event: str,
        product: np.ndarray | None,
        channel: np.ndarray | np.int8,
    ) -> Cols:
        n = len(cust)
        return {
            "cust": self.idx[cust],
            "ts": self.cal.to_us(t),
            "_t": t,
            "event": np.full(n, _EV[event], np.int8),
            "product": np.full(n, -1, np.int64) if product is None else product.astype(np.int64),
            "channel": np.broadcast_to(np.asarray(channel, np.int8), (n,)).copy(),
        }

    def fill_truth(self, truth: _Truth) -> None:
        i = self.idx
        truth.lam[i], truth.p[i], truth.mov[i] = self.lam, self.p, self.mov
        dropped = self.t_drop < self.cal.horizon
        truth.dropout[i] = np.where(dropped, self.cal.diurnal(np.where(dropped, self.t_drop, 0.0)), np.nan)
        truth.prospect[i] = self.prospect
        truth.n_purchases[i] = self.n_purch
        truth.first_purchase[i] = self.cal.diurnal(self.t_first)
        truth.preferred[i] = self.preferred


# ----------------------------------------------------------------------------------------------
# Vectorised helpers
# ----------------------------------------------------------------------------------------------


def _group_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each group (groups are consecutive runs of `counts`)."""
    cs = np.cumsum(values)
    starts = np.cumsum(counts) - counts
    base = np.concatenate([[0.0], cs])[starts]
    return cs - np.repeat(base, counts)


def _row_keys(probs: np.ndarray) -> np.ndarray:
    """Flattened row-offset cumulative probabilities for `_draw_rows`."""
    cum = np.cumsum(probs, axis=1)
    cum[:, -1] = 1.0
    return (np.arange(len(probs))[:, None] + cum).ravel()


def _draw_rows(rng: np.random.Generator, keys: np.ndarray, row: np.ndarray, k: int) -> np.ndarray:
    """One categorical draw per element, from the probability row `row` (no row matrix built)."""
    pos = np.searchsorted(keys, row + rng.random(len(row)), side="right")
    return np.clip(pos - row * k, 0, k - 1)


def _sample_linear_poisson(
    rng: np.random.Generator,
    owner: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    ra: np.ndarray,
    rb: np.ndarray,
    rate: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson events on [a, b) with intensity rate * (ra -> rb, linear); returns owner, time."""
    expected = rate * (ra + rb) / 2.0 * (b - a)
    n = rng.poisson(np.maximum(expected, 0.0))
    seg = np.repeat(np.arange(len(owner)), n)
    u = rng.random(len(seg))
    xa, xb = ra[seg], rb[seg]
    # inverse CDF of the density proportional to xa + (xb - xa) x on [0, 1] (stable form)
    x = u * (xa + xb) / (xa + np.sqrt(xa * xa + (xb - xa) * u * (xa + xb)))
    return owner[seg], a[seg] + x * (b[seg] - a[seg])


def _padded(values: np.ndarray) -> np.ndarray:
    """`values` plus one trailing 0, so gathers at index len(values) are safe."""
    return np.concatenate([values, [0.0]])


def _concat(parts: list[Cols]) -> Cols:
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def _take(cols: Cols, idx: np.ndarray) -> Cols:
    return {c: v[idx] for c, v in cols.items()}


# ----------------------------------------------------------------------------------------------
# Drift (opt-in)
# ----------------------------------------------------------------------------------------------


def _drift_day(config: SyntheticConfig) -> float:
    assert config.drift_from is not None
    return float((config.drift_from - config.start).days)


def _apply_drift(
    config: SyntheticConfig, cal: _Calendar, sim: _ChunkSimulator, chunk: int, tx: Cols, ix: Cols
) -> tuple[Cols, Cols]:
    """Shift one chunk's events from `drift_from` on: prices, channel mix and a churn wave."""
    rng = np.random.default_rng([config.seed, _DRIFT.stream, chunk + 1])
    day = _drift_day(config)
    drift_us = cal.to_us(np.array([day]))[0]
    tx = dict(tx)
    after = tx["ts"] >= drift_us
    tx["amount"] = np.where(after, np.round(tx["amount"] * _DRIFT.price_factor, 2), tx["amount"])
    store = ORDER_CHANNELS.index("store")
    moving = after & (tx["channel"] == store)
    orders, inverse = np.unique(tx["order"][moving], return_inverse=True)
    to_app = rng.random(len(orders))[inverse] < _DRIFT.store_to_app  # one decision per order
    channel = tx["channel"].copy()
    channel[np.flatnonzero(moving)[to_app]] = ORDER_CHANNELS.index("app")
    tx["channel"] = channel
    # churn wave: buyers still active at the date stop within wave_days (local index -> stop day)
    active = ~sim.prospect & (sim.t_first < day) & (sim.t_drop > day)
    waved = active & (rng.random(sim.m) < _DRIFT.churn_wave)
    stop = np.where(waved, day + rng.uniform(0.0, _DRIFT.wave_days, sim.m), np.inf)
    sim.t_drop = np.where(waved, np.minimum(sim.t_drop, stop), sim.t_drop)
    local = np.full(int(sim.idx.max()) + 1, -1, np.int64)
    local[sim.idx] = np.arange(sim.m)
    stop_us = np.where(np.isfinite(stop), cal.to_us(np.where(np.isfinite(stop), stop, 0.0)), np.iinfo(np.int64).max)
    tx = _take(tx, np.flatnonzero(tx["ts"] < stop_us[local[tx["cust"]]]))
    ix = _take(ix, np.flatnonzero(ix["ts"] < stop_us[local[ix["cust"]]]))
    purchases = tx["status"] == 0
    orders_per = np.unique(np.stack([local[tx["cust"][purchases]], tx["order"][purchases]]), axis=1)[0]
    sim.n_purch = np.bincount(orders_per, minlength=sim.m)
    return tx, ix


def _drift_customers(config: SyntheticConfig, cal: _Calendar, people: _Customers, table: pa.Table) -> pa.Table:
    """Half of the customers signing up after `drift_from` come through a new acquisition channel."""
    rng = np.random.default_rng([config.seed, _DRIFT.stream])
    new = (people.signup >= _drift_day(config)) & (rng.random(people.n) < _DRIFT.new_channel_share)
    channel = pc.if_else(pa.array(new), pa.scalar(_DRIFT.new_channel), table["acquisition_channel"])
    return table.set_column(table.schema.get_field_index("acquisition_channel"), "acquisition_channel", channel)


# ----------------------------------------------------------------------------------------------
# Dirty rows
# ----------------------------------------------------------------------------------------------


def _dirty_kinds(table: str, fmt: str) -> tuple[str, ...]:
    if table == "transactions":
        if fmt == "csv":
            return (
                "null_customer_id",
                "duplicate",
                "future_timestamp",
                "non_numeric_amount",
                "unparsable_timestamp",
            )
        return ("null_customer_id", "duplicate", "future_timestamp", "null_amount")
    if fmt == "csv":
        return ("null_customer_id", "future_timestamp", "unparsable_timestamp")
    return ("null_customer_id", "future_timestamp")


def _inject_dirty(
    rng: np.random.Generator,
    cols: Cols,
    table: str,
    fmt: str,
    config: SyntheticConfig,
    cal: _Calendar,
) -> tuple[Cols, dict[str, int]]:
    """Sort clean rows by time, then insert modified copies of random rows at random positions."""
    cols = {c: v for c, v in cols.items() if not c.startswith("_")}
    cols = _take(cols, np.argsort(cols["ts"], kind="stable"))
    n = len(cols["ts"])
    kinds = _dirty_kinds(table, fmt)
    n_dirty = round(config.dirty_fraction * n) if n else 0
    per_kind = rng.multinomial(n_dirty, np.full(len(kinds), 1.0 / len(kinds)))
    kind = np.repeat(np.arange(len(kinds)), per_kind)
    dirty = _take(cols, rng.integers(0, max(n, 1), n_dirty))
    cols["cid"] = np.zeros(n, np.int8)  # 0 ok, 1 null, 2 empty string
    cols["bad"] = np.full(n, -1, np.int8)  # index into _BAD_AMOUNTS / _BAD_TIMESTAMPS
    dirty["cid"] = np.zeros(n_dirty, np.int8)
    dirty["bad"] = np.full(n_dirty, -1, np.int8)
    for code, name in enumerate(kinds):
        sel = kind == code
        if name == "null_customer_id":
            dirty["cid"][sel] = 1 + rng.integers(0, 2, int(sel.sum()))
        elif name == "future_timestamp":
            future = np.datetime64(f"{_FUTURE_YEAR}-01-01", "us").astype(np.int64)
            dirty["ts"][sel] += future - cal.start_day * _US_PER_DAY
        elif name in ("non_numeric_amount", "unparsable_timestamp"):
            dirty["bad"][sel] = rng.integers(0, 4, int(sel.sum()))
        elif name == "null_amount":
            dirty["amount"][sel] = np.nan
    dirty["kind"] = kind.astype(np.int8)
    cols["kind"] = np.full(n, -1, np.int8)
    key = np.concatenate([np.arange(n, dtype=np.float64), rng.random(n_dirty) * n])
    merged = _take(_concat([cols, dirty]), np.argsort(key, kind="stable"))
    return merged, {name: int(c) for name, c in zip(kinds, per_kind, strict=True)}


# ----------------------------------------------------------------------------------------------
# Rendering to Arrow tables and writing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TzTables:
    """Per-customer UTC offsets (minutes) in winter and summer."""

    winter: np.ndarray
    summer: np.ndarray

    @classmethod
    def build(cls, country: np.ndarray) -> _TzTables:
        offsets = np.array(_POP.country_utc_offset_min, np.int16)
        return cls(offsets[country, 0], offsets[country, 1])

    def offset(self, cust: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
        month = ts_us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64) % 12 + 1
        summer = (month >= 4) & (month <= 10)
        return np.where(summer, self.summer[cust], self.winter[cust])


def _time_of_day_table() -> np.ndarray:
    """'HH:MM:SS' as bytes for every second of a day (86,400 x 8)."""
    sod = np.arange(86_400)
    parts = [sod // 3600, (sod // 60) % 60, sod % 60]
    table = np.full((86_400, 8), ord(":"), np.uint8)
    for pos, v in zip((0, 3, 6), parts, strict=True):
        table[:, pos] = 48 + v // 10
        table[:, pos + 1] = 48 + v % 10
    return table


def _iso_strings(ts_us: np.ndarray, offset_min: np.ndarray) -> pa.Array:
    """ISO-8601 strings (seconds); rows with an offset get local time plus '+HH:MM'."""
    n = len(ts_us)
    if n == 0:
        return pa.array([], pa.string())
    has_off = offset_min != _NAIVE
    secs = ts_us // 1_000_000 + np.where(has_off, offset_min, 0).astype(np.int64) * 60
    days, sod = np.divmod(secs, 86_400)
    d0 = int(days.min())
    span = int(days.max()) - d0 + 1
    date_str = np.datetime_as_string(np.arange(d0, d0 + span).astype("datetime64[D]"))
    date_tab = np.frombuffer(date_str.astype("S10").tobytes(), np.uint8).reshape(-1, 10)
    mat = np.empty((n, 19), np.uint8)
    mat[:, :10] = date_tab[days - d0]
    mat[:, 10] = ord("T")
    mat[:, 11:] = _time_of_day_table()[sod]
    offsets = pa.py_buffer(np.arange(0, 19 * n + 1, 19, dtype=np.int32))
    base = pa.StringArray.from_buffers(n, offsets, pa.py_buffer(mat.tobytes()))
    if not has_off.any():
        return base
    codes, inverse = np.unique(np.where(has_off, offset_min, 0), return_inverse=True)
    labels = [f"{'+' if c >= 0 else '-'}{abs(c) // 60:02d}:{abs(c) % 60:02d}" for c in codes]
    suffix = pa.array(labels).take(pa.array(inverse.ravel()))
    suffix = pc.if_else(pa.array(has_off), suffix, "")
    return pc.binary_join_element_wise(base, suffix, "")


def _event_schema(table: str, fmt: str) -> pa.Schema:
    ts = pa.string() if fmt == "csv" else pa.timestamp("us")
    if table == "transactions":
        amount = pa.string() if fmt == "csv" else pa.float64()
        return pa.schema(
            [
                ("order_id", pa.string()),
                ("customer_id", pa.string()),
                ("timestamp", ts),
                ("product_id", pa.string()),
                ("category", pa.string()),
                ("quantity", pa.int64()),
                ("amount", amount),
                ("status", pa.string()),
                ("channel", pa.string()),
            ]
        )
    return pa.schema(
        [
            ("customer_id", pa.string()),
            ("timestamp", ts),
            ("event_type", pa.string()),
            ("product_id", pa.string()),
            ("channel", pa.string()),
        ]
    )


def _customer_id_column(people: _Customers, cols: Cols) -> pa.Array:
    ids = people.ids(cols["cust"])
    cid = cols["cid"]
    ids = pc.if_else(pa.array(cid == 2), "", ids)
    return pc.if_else(pa.array(cid == 1), pa.scalar(None, pa.string()), ids)


def _render_events(
    table: str,
    cols: Cols,
    fmt: str,
    people: _Customers,
    catalog: _Catalog,
    tz: _TzTables,
) -> pa.Table:
    kinds = _dirty_kinds(table, fmt)
    kind = np.array(kinds + ("",))[cols["kind"]]  # -1 (clean) -> ""
    bad = cols["bad"]
    ts_us = cols["ts"]
    if table == "transactions":
        local = cols["channel"] == ORDER_CHANNELS.index("store")
    else:
        local = cols["channel"] == INTERACTION_CHANNELS.index("app")
    if fmt == "csv":
        offset = np.where(local, tz.offset(cols["cust"], ts_us), _NAIVE).astype(np.int16)
        ts = _iso_strings(ts_us, offset)
        bad_ts = kind == "unparsable_timestamp"
        if bad_ts.any():
            ts = pc.replace_with_mask(ts, pa.array(bad_ts), pa.array(np.array(_BAD_TIMESTAMPS)[bad[bad_ts]]))
    else:
        ts = pa.array(ts_us, type=pa.timestamp("us"))
    product = cols["product"]
    has_product = product >= 0
    product_ids = _product_ids(len(catalog.price)).take(pa.array(np.where(has_product, product, 0), mask=~has_product))
    data: dict[str, Any] = {"customer_id": _customer_id_column(people, cols), "timestamp": ts}
    if table == "transactions":
        amount_f = cols["amount"]
        if fmt == "csv":
            amount: pa.Array = pa.array(amount_f).cast(pa.string())
            bad_amt = kind == "non_numeric_amount"
            if bad_amt.any():
                amount = pc.replace_with_mask(amount, pa.array(bad_amt), pa.array(np.array(_BAD_AMOUNTS)[bad[bad_amt]]))
        else:
            amount = pa.array(amount_f, from_pandas=True)  # NaN -> null
        width = 9
        order_ids = pc.binary_join_element_wise(
            "O",
            pc.utf8_lpad(pa.array(cols["order"]).cast(pa.string()), width=width, padding="0"),
            "",
        )
        category = pa.array(catalog.category_names).take(pa.array(catalog.product_category[product]))
        data |= {
            "order_id": order_ids,
            "product_id": product_ids,
            "category": category,
            "quantity": pa.array(cols["qty"]),
            "amount": amount,
            "status": pa.array(STATUSES).take(pa.array(cols["status"])),
            "channel": pa.array(ORDER_CHANNELS).take(pa.array(cols["channel"])),
        }
    else:
        data |= {
            "event_type": pa.array(schema.EVENT_TYPES).take(pa.array(cols["event"])),
            "product_id": product_ids,
            "channel": pa.array(INTERACTION_CHANNELS).take(pa.array(cols["channel"])),
        }
    target = _event_schema(table, fmt)
    return pa.table([data[f.name] for f in target], schema=target)


def _product_ids(n: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(np.arange(1, n + 1)).cast(pa.string()), width=max(5, len(str(n))), padding="0")
    return pc.binary_join_element_wise("P", digits, "")


def _render_customers(people: _Customers, cal: _Calendar, fmt: str, tz: _TzTables) -> pa.Table:
    signup_us = cal.to_us(cal.diurnal(people.signup))  # same as the simulator's signup_out
    if fmt == "csv":
        # ~30% of signups were exported by a system writing local time with an offset
        flag = (np.arange(people.n) * 7919) % 10 < 3
        offset = np.where(flag, tz.offset(np.arange(people.n), signup_us), _NAIVE)
        signup: pa.Array = _iso_strings(signup_us, offset.astype(np.int16))
    else:
        signup = pa.array(signup_us, type=pa.timestamp("us"))
    return pa.table(
        {
            "customer_id": people.ids(),
            "signup_at": signup,
            "country": pa.array(_POP.countries).take(pa.array(people.country)),
            "acquisition_channel": pa.array(_POP.acquisition_channels).take(pa.array(people.acquisition)),
        }
    )


def _render_products(catalog: _Catalog) -> pa.Table:
    return pa.table(
        {
            "product_id": _product_ids(len(catalog.price)),
            "category": pa.array(catalog.category_names).take(pa.array(catalog.product_category)),
            "price": catalog.price,
        }
    )


class _Sink:
    """Streaming writer for one file (CSV or Parquet) inside an atomic temp path."""

    def __init__(self, writer: pacsv.CSVWriter | pq.ParquetWriter) -> None:
        self._writer = writer

    @classmethod
    def open(cls, stack: contextlib.ExitStack, path: Path, arrow_schema: pa.Schema, fmt: str) -> _Sink:
        tmp = stack.enter_context(atomic_path(path))
        if fmt == "csv":
            writer: pacsv.CSVWriter | pq.ParquetWriter = pacsv.CSVWriter(str(tmp), arrow_schema)
        else:
            writer = pq.ParquetWriter(str(tmp), arrow_schema, compression="zstd")
        stack.callback(writer.close)
        return cls(writer)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    with contextlib.ExitStack() as stack:
        _Sink.open(stack, path, table.schema, fmt).write(table)


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


def _metadata(
    config: SyntheticConfig,
    paths: dict[str, Path],
    rows: dict[str, int],
    dirty: dict[str, dict[str, int]],
    scale: float,
    truth: _Truth,
) -> dict[str, Any]:
    cfg = dataclasses.asdict(config)
    cfg["start"], cfg["end"] = config.start.isoformat(), config.end.isoformat()
    drift = cfg.pop("drift_from")  # absent without drift, so undrifted metadata is unchanged
    if drift is not None:
        cfg["drift_from"] = drift.isoformat()
    buyers = truth.n_purchases > 0
    events = rows["transactions"] + rows["interactions"]
    return {
        "generator": "custops.data.synthetic",
        "config": cfg,
        "process": list(_PROCESS_IN_WORDS),
        "population": dataclasses.asdict(_POP),
        **({"drift": dataclasses.asdict(_DRIFT)} if config.drift_from is not None else {}),
        "categories": [
            {"name": n, "share": float(s), "median_price": float(p)}
            for n, s, p in zip(*_category_table(config.n_categories), strict=True)
        ],
        "ground_truth_columns": _GROUND_TRUTH_COLUMNS,
        "encoding": {
            "timestamps": "naive UTC in Parquet; ISO strings in CSV, naive = UTC, store/app rows "
            "and ~30% of signups carry an explicit offset",
            "refunds": "status 'refund', positive amount, same order_id/product_id as the sale",
            "time_origin": config.start.isoformat(),
        },
        "interaction_scale": scale,
        "realised": {
            "events_per_customer": events / config.n_customers,
            "share_prospects": float(truth.prospect.mean()),
            "share_buyers": float(buyers.mean()),
            "share_alive_at_end_among_buyers": float(np.isnan(truth.dropout[buyers]).mean()) if buyers.any() else None,
            "mean_purchases_per_buyer": float(truth.n_purchases[buyers].mean()) if buyers.any() else None,
            "median_lambda": float(np.median(truth.lam)),
            "mean_order_value_mean": float(truth.mov.mean()),
        },
        "row_counts": rows,
        "dirty_counts": dirty,
        "files": {name: {"file": p.name, "sha256": file_sha256(p)} for name, p in paths.items() if name != "metadata"},
    }
