"""Synthetic data generator: determinism, contract, dirty rows, ground truth and planted signals."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custops.data import schema, synthetic
from custops.data.synthetic import GenerateResult, SyntheticConfig, generate
from custops.errors import ConfigError
from custops.io import file_sha256

END = pd.Timestamp("2025-12-31")
DAY = pd.Timedelta(days=1)
_TS = r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:([+-])(\d{2}):(\d{2}))?$"
GROUND_TRUTH_COLUMNS = [
    "customer_id",
    "lambda",
    "p_dropout",
    "dropout_at",
    "alive_at_end",
    "mean_order_value",
    "n_purchases",
    "first_purchase_at",
    "preferred_category",
]


# -- helpers ------------------------------------------------------------------------------------


def read(result: GenerateResult, table: str) -> pd.DataFrame:
    """A raw table as written: CSV as strings (nulls as ''), Parquet as typed."""
    path = result.paths[table]
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


def parse_ts(values: pd.Series) -> pd.Series:
    """Naive-UTC timestamps; ISO strings with an offset are converted, unparsable -> NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.astype("datetime64[ns]")
    parts = values.astype(str).str.extract(_TS)
    base = pd.to_datetime(parts[0], format="%Y-%m-%dT%H:%M:%S", errors="coerce")
    sign = parts[1].map({"+": 1.0, "-": -1.0}).fillna(0.0)
    minutes = sign * (parts[2].astype(float).fillna(0) * 60 + parts[3].astype(float).fillna(0))
    return base - pd.to_timedelta(minutes, unit="min")


def has_id(df: pd.DataFrame) -> pd.Series:
    return df["customer_id"].fillna("").astype(str).str.len() > 0


def clean(result: GenerateResult, table: str) -> pd.DataFrame:
    """Rows a validator would keep: an id, a parsable past timestamp, a numeric amount."""
    df = read(result, table)
    df = df.assign(timestamp=parse_ts(df["timestamp"]))
    ok = has_id(df) & df["timestamp"].notna() & (df["timestamp"] < END)
    if table == "transactions":
        df = df.assign(amount=pd.to_numeric(df["amount"], errors="coerce"))
        ok &= df["amount"].notna()
    return df[ok]


def truth(result: GenerateResult) -> pd.DataFrame:
    gt = pd.read_parquet(result.paths["ground_truth"]).set_index("customer_id")
    customers = read(result, "customers").set_index("customer_id")
    return gt.join(parse_ts(customers["signup_at"]).rename("signup_at"))


def events_per_customer(result: GenerateResult) -> float:
    rows = result.row_counts
    return (rows["transactions"] + rows["interactions"]) / rows["customers"]


# -- fixtures -------------------------------------------------------------------------------------


SMALL = SyntheticConfig(n_customers=1500, seed=7)


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    return generate(SMALL, tmp_path_factory.mktemp("csv"))


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    return generate(replace(SMALL, file_format="parquet"), tmp_path_factory.mktemp("parquet"))


@pytest.fixture(params=["csv", "parquet"])
def data(request: pytest.FixtureRequest) -> GenerateResult:
    return request.getfixturevalue(f"{request.param}_data")


# -- determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_same_config_gives_identical_files_and_other_seed_differs(tmp_path: Path, file_format: str) -> None:
    config = SyntheticConfig(n_customers=300, seed=3, file_format=file_format)
    first = generate(config, tmp_path / "a")
    second = generate(config, tmp_path / "b")
    other = generate(replace(config, seed=4), tmp_path / "c")

    assert set(first.paths) == {*schema.TABLES, "ground_truth", "metadata"}
    for name, path in first.paths.items():
        assert file_sha256(path) == file_sha256(second.paths[name]), name
    for name in (*schema.TABLES, "ground_truth"):
        assert file_sha256(first.paths[name]) != file_sha256(other.paths[name]), name
    assert first.row_counts == second.row_counts
    assert first.dirty_counts == second.dirty_counts


# -- contract ------------------------------------------------------------------------------------


def test_tables_carry_contract_columns_and_reported_row_counts(data: GenerateResult) -> None:
    contracts = {
        "transactions": schema.TRANSACTIONS,
        "interactions": schema.INTERACTIONS,
        "customers": schema.CUSTOMERS,
        "products": schema.PRODUCTS,
    }
    for table, columns in contracts.items():
        df = read(data, table)
        assert set(columns) <= set(df.columns), table
        assert len(df) == data.row_counts[table], table
    gt = pd.read_parquet(data.paths["ground_truth"])
    assert set(GROUND_TRUTH_COLUMNS) <= set(gt.columns)
    assert len(gt) == data.row_counts["customers"] == gt["customer_id"].nunique()

    tx, ix = clean(data, "transactions"), clean(data, "interactions")
    assert set(tx["status"]) == {"purchase", "refund"}
    assert (tx["amount"] > 0).all()  # refunds are positive, identified by status
    assert set(ix["event_type"]) == set(schema.EVENT_TYPES)
    products = read(data, "products")
    assert set(tx["product_id"]) <= set(products["product_id"])
    assert set(tx["customer_id"]) <= set(gt["customer_id"])
    meta = json.loads(data.paths["metadata"].read_text())
    assert meta["config"]["n_customers"] == SMALL.n_customers
    assert {"lambda_r", "lambda_alpha", "dropout_a", "dropout_b"} <= set(meta["population"])


def test_csv_mixes_offset_and_naive_timestamps_that_agree_with_parquet(
    csv_data: GenerateResult, parquet_data: GenerateResult
) -> None:
    raw = read(csv_data, "transactions")["timestamp"]
    with_offset = raw.str.contains(r"[+-]\d{2}:\d{2}$")
    assert 0.05 < with_offset.mean() < 0.95

    # the same seed simulates the same clean data in both formats: instants must agree
    key = ["order_id", "product_id", "status"]
    a = clean(csv_data, "transactions").drop_duplicates().sort_values(key)
    b = clean(parquet_data, "transactions").drop_duplicates().sort_values(key)
    assert len(a) == len(b)
    assert (a["timestamp"].to_numpy() == b["timestamp"].to_numpy()).all()
    assert np.allclose(a["amount"].to_numpy(), b["amount"].to_numpy())


# -- dirty rows ----------------------------------------------------------------------------------


def test_dirty_rows_are_present_and_counted_as_reported(csv_data: GenerateResult) -> None:
    counts = csv_data.dirty_counts
    tx = read(csv_data, "transactions")
    ts = parse_ts(tx["timestamp"])
    amount = pd.to_numeric(tx["amount"], errors="coerce")
    assert (~has_id(tx)).sum() == counts["transactions"]["null_customer_id"] > 0
    assert ts.isna().sum() == counts["transactions"]["unparsable_timestamp"] > 0
    assert (ts.dt.year >= 2099).sum() == counts["transactions"]["future_timestamp"] > 0
    assert amount.isna().sum() == counts["transactions"]["non_numeric_amount"] > 0
    otherwise_clean = tx[has_id(tx) & ts.notna() & (ts < END) & amount.notna()]
    assert otherwise_clean.duplicated().sum() == counts["transactions"]["duplicate"] > 0

    ix = read(csv_data, "interactions")
    ix_ts = parse_ts(ix["timestamp"])
    assert (~has_id(ix)).sum() == counts["interactions"]["null_customer_id"] > 0
    assert ix_ts.isna().sum() == counts["interactions"]["unparsable_timestamp"] > 0
    assert (ix_ts.dt.year >= 2099).sum() == counts["interactions"]["future_timestamp"] > 0

    for table in ("transactions", "interactions"):
        share = sum(counts[table].values()) / csv_data.row_counts[table]
        assert share == pytest.approx(SMALL.dirty_fraction, rel=0.2), table


def test_parquet_dirty_amounts_are_null_not_strings(parquet_data: GenerateResult) -> None:
    counts = parquet_data.dirty_counts["transactions"]
    tx = read(parquet_data, "transactions")
    assert pd.api.types.is_float_dtype(tx["amount"])
    assert pd.api.types.is_datetime64_any_dtype(tx["timestamp"])
    assert "non_numeric_amount" not in counts
    assert tx["amount"].isna().sum() == counts["null_amount"] > 0
    assert (~has_id(tx)).sum() == counts["null_customer_id"] > 0


def test_zero_dirty_fraction_writes_clean_tables(tmp_path: Path) -> None:
    result = generate(SyntheticConfig(n_customers=300, dirty_fraction=0.0), tmp_path)
    assert all(c == 0 for kinds in result.dirty_counts.values() for c in kinds.values())
    for table in ("transactions", "interactions"):
        assert len(clean(result, table)) == result.row_counts[table]
    assert not read(result, "transactions").duplicated().any()


# -- ground truth ----------------------------------------------------------------------------------


def test_ground_truth_matches_the_transactions(data: GenerateResult) -> None:
    gt = truth(data)
    tx = clean(data, "transactions")
    purchases = tx[tx["status"] == "purchase"]
    per_customer = purchases.groupby("customer_id").agg(
        n=("order_id", "nunique"), first=("timestamp", "min"), last=("timestamp", "max")
    )
    joined = gt.join(per_customer)

    assert (joined["n"].fillna(0).astype(int) == joined["n_purchases"]).all()
    assert (joined["first"].dropna() == joined["first_purchase_at"].dropna()).all()
    assert joined["first_purchase_at"].isna().equals(joined["first"].isna())
    assert not (joined["last"] > joined["dropout_at"]).any()  # nothing bought after dropout
    assert not (joined["first"] < joined["signup_at"]).any()
    assert (joined.loc[joined["is_prospect"], "n_purchases"] == 0).all()
    assert joined["alive_at_end"].equals(joined["dropout_at"].isna())
    ix = clean(data, "interactions").join(gt["signup_at"], on="customer_id")
    assert not (ix["timestamp"] < ix["signup_at"]).any()
    assert (purchases.groupby("order_id")["customer_id"].nunique() == 1).all()
    assert (purchases.groupby("order_id")["timestamp"].nunique() == 1).all()
    # planted heterogeneity is visible in the data, not only in the ground truth
    buyers = joined[joined["n_purchases"] >= 3]
    aov = purchases.groupby(["customer_id", "order_id"])["amount"].sum().groupby("customer_id")
    rho = np.corrcoef(np.log(buyers["mean_order_value"]), np.log(aov.mean()[buyers.index]))[0, 1]
    assert rho > 0.5


def test_refunds_follow_their_purchase(csv_data: GenerateResult) -> None:
    tx = clean(csv_data, "transactions").drop_duplicates()
    sales = tx[tx["status"] == "purchase"].set_index(["order_id", "product_id"])
    refunds = tx[tx["status"] == "refund"].set_index(["order_id", "product_id"])
    assert 0.01 < len(refunds) / len(sales) < 0.08
    matched = refunds.join(sales, rsuffix="_sale", how="inner")
    assert len(matched) == len(refunds)
    assert (matched["timestamp"] > matched["timestamp_sale"]).all()
    assert np.allclose(matched["amount"], matched["amount_sale"])


# -- planted signals ------------------------------------------------------------------------------


def test_support_tickets_rise_and_sessions_fall_before_dropout(csv_data: GenerateResult) -> None:
    gt = truth(csv_data)
    ix = clean(csv_data, "interactions").join(gt[["dropout_at"]], on="customer_id")
    buyers = gt[gt["n_purchases"] > 0]
    churners = buyers[buyers["dropout_at"] - buyers["signup_at"] >= 120 * DAY]
    stayers = buyers[buyers["alive_at_end"] & (buyers["signup_at"] <= END - 60 * DAY)]
    assert len(churners) > 100 and len(stayers) > 100

    tickets = ix[ix["event_type"] == "support_ticket"]
    before = tickets["dropout_at"] - tickets["timestamp"]
    in_window = (before > pd.Timedelta(0)) & (before <= 60 * DAY)
    churn_rate = (in_window & tickets["customer_id"].isin(churners.index)).sum() / (len(churners) * 60)
    stay_window = tickets["customer_id"].isin(stayers.index) & (tickets["timestamp"] >= END - 60 * DAY)
    stay_rate = stay_window.sum() / (len(stayers) * 60)
    assert churn_rate > 2.0 * stay_rate

    logins = ix[(ix["event_type"] == "login") & ix["customer_id"].isin(churners.index)]
    ahead = logins["dropout_at"] - logins["timestamp"]
    last_60 = ((ahead > pd.Timedelta(0)) & (ahead <= 60 * DAY)).sum()
    previous_60 = ((ahead > 60 * DAY) & (ahead <= 120 * DAY)).sum()
    assert last_60 < 0.8 * previous_60


def test_orders_per_active_buyer_peak_in_november_december(csv_data: GenerateResult) -> None:
    gt = truth(csv_data)
    purchases = clean(csv_data, "transactions").query("status == 'purchase'")
    orders = purchases.drop_duplicates("order_id")["timestamp"]
    first = gt["first_purchase_at"].dropna().to_numpy()
    dropout = gt.loc[gt["first_purchase_at"].notna(), "dropout_at"].fillna(END).to_numpy()

    def rate(lo: str, hi: str) -> float:
        days = pd.date_range(lo, hi, freq="D", inclusive="left").to_numpy()[:, None]
        active = ((first <= days) & (dropout > days)).sum()
        return ((orders >= lo) & (orders < hi)).sum() / active

    peak = rate("2024-11-01", "2025-01-01")
    assert peak > 1.3 * rate("2024-06-01", "2024-08-01")
    assert peak > 1.3 * rate("2025-06-01", "2025-08-01")


def test_events_per_customer_target_scales_interactions(tmp_path: Path, csv_data: GenerateResult) -> None:
    config = SyntheticConfig(n_customers=2000, seed=11, file_format="parquet", events_per_customer_target=20)
    result = generate(config, tmp_path)
    assert events_per_customer(result) == pytest.approx(20, rel=0.3)
    assert events_per_customer(csv_data) > 30  # the knob changed the natural volume


def test_chunked_generation_keeps_ids_and_truth_consistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "_CHUNK_CUSTOMERS", 250)
    config = SyntheticConfig(
        n_customers=1000,
        file_format="parquet",
        events_per_customer_target=25,
        start=date(2024, 1, 1),
    )
    result = generate(config, tmp_path)
    assert json.loads(result.paths["metadata"].read_text())["interaction_scale"] < 1.0
    gt = truth(result)
    purchases = clean(result, "transactions").query("status == 'purchase'")
    assert (purchases.groupby("order_id")["customer_id"].nunique() == 1).all()
    n = purchases.groupby("customer_id")["order_id"].nunique()
    assert (n.reindex(gt.index, fill_value=0) == gt["n_purchases"]).all()
    assert purchases["timestamp"].min() >= pd.Timestamp("2024-01-01")
    assert events_per_customer(result) == pytest.approx(25, rel=0.3)


def test_invalid_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="SyntheticConfig.end"):
        generate(SyntheticConfig(start=date(2025, 1, 1), end=date(2024, 1, 1)), Path("unused"))


# -- drift (opt-in) -------------------------------------------------------------------------------

DRIFT_FROM = date(2025, 1, 1)


def test_drift_is_opt_in_and_shifts_prices_channels_churn_and_acquisition(
    tmp_path: Path, parquet_data: GenerateResult
) -> None:
    result = generate(replace(SMALL, file_format="parquet", drift_from=DRIFT_FROM), tmp_path)
    meta = json.loads(result.paths["metadata"].read_text())
    assert meta["config"]["drift_from"] == "2025-01-01" and meta["drift"]["price_factor"] == 1.4
    plain_meta = json.loads(parquet_data.paths["metadata"].read_text())
    assert "drift_from" not in plain_meta["config"] and "drift" not in plain_meta  # default output unchanged

    start = pd.Timestamp(DRIFT_FROM)
    tx = {name: clean(r, "transactions") for name, r in (("plain", parquet_data), ("drifted", result))}
    cols = ["customer_id", "timestamp", "order_id", "product_id", "amount", "status", "channel"]
    before = [t.loc[t["timestamp"] < start, cols].drop_duplicates().sort_values(cols) for t in tx.values()]
    pd.testing.assert_frame_equal(*(b.reset_index(drop=True) for b in before))  # the history is the same

    plain, drifted = (t[(t["timestamp"] >= start) & (t["status"] == "purchase")] for t in tx.values())
    # prices +40% on the same kind of lines; the churn wave removes purchases
    assert (drifted["amount"] / drifted["quantity"]).mean() > 1.3 * (plain["amount"] / plain["quantity"]).mean()
    assert drifted["order_id"].nunique() < 0.9 * plain["order_id"].nunique()
    store = [a.drop_duplicates("order_id")["channel"].eq("store").mean() for a in (plain, drifted)]
    assert store[1] < 0.5 * store[0]  # store orders moved to the app
    customers = read(result, "customers")
    affiliate = customers[customers["acquisition_channel"] == "affiliate"]
    assert len(affiliate) > 0 and (affiliate["signup_at"] >= start).all()
    assert "affiliate" not in set(read(parquet_data, "customers")["acquisition_channel"])
    wave = (start, start + pd.Timedelta(days=180))
    assert truth(result)["dropout_at"].between(*wave).sum() > truth(parquet_data)["dropout_at"].between(*wave).sum()
    # ground truth stays true: no purchase after a customer's dropout
    gt = truth(result)["dropout_at"].rename("dropout_at").reset_index()
    bought = tx["drifted"][tx["drifted"]["status"] == "purchase"].merge(gt, on="customer_id")
    assert not (bought["timestamp"] > bought["dropout_at"] + pd.Timedelta(days=1)).any()


def test_drift_from_outside_the_period_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SyntheticConfig.drift_from: 2030-01-01 is not inside"):
        generate(SyntheticConfig(drift_from=date(2030, 1, 1)), Path("unused"))
