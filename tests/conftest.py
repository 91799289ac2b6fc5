"""Shared fixtures: small hand-made validated tables and settings rooted in a temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from custops.data import schema
from custops.settings import FeatureSettings, ModelSettings, Settings


def frame(columns: dict[str, str], rows: list[dict]) -> pd.DataFrame:
    """A DataFrame with exactly the validated-layer columns and dtypes (missing values -> null)."""
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=list(columns))
    for col, dtype in columns.items():
        if dtype == "string":
            df[col] = df[col].astype("string")
        elif dtype.startswith("datetime64"):
            df[col] = pd.to_datetime(df[col]).astype("datetime64[us]")
        else:
            df[col] = pd.to_numeric(df[col]).astype(dtype)
    return df


def write_validated(directory: Path, tx: list[dict], ix: list[dict], customers: list[dict]) -> Path:
    """Write validated-layer Parquet files the way ingest does."""
    directory.mkdir(parents=True, exist_ok=True)
    for row in tx:
        row.setdefault("status", "purchase")
        row.setdefault("quantity", 1.0)
    frame(schema.TRANSACTIONS, tx).to_parquet(directory / "transactions.parquet", index=False)
    frame(schema.INTERACTIONS, ix).to_parquet(directory / "interactions.parquet", index=False)
    frame(schema.CUSTOMERS, customers).to_parquet(directory / "customers.parquet", index=False)
    return directory


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".custops", as_of="2026-01-01T00:00:00")


@pytest.fixture
def small_fs() -> FeatureSettings:
    """Feature settings of the hand-computed fixture (short windows so every family is exercised)."""
    return FeatureSettings(
        windows_days=(30, 90),
        engagement_windows_days=(30, 90),
        churn_horizon_days=90,
        value_horizon_days=365,
        propensity_horizon_days=30,
        top_categories=2,
        new_days=60,
        at_risk_days=30,
        churned_days=60,
        loyal_min_orders_365d=2,
    )


TX = [
    # customer A: o1 (2 lines) and o2 before 2024-03-01, a refund, o3 after it
    dict(customer_id="A", timestamp="2024-01-10 10:00", amount=10.0, order_id="o1", product_id="p1", category="x"),
    dict(
        customer_id="A",
        timestamp="2024-01-10 10:00",
        amount=5.0,
        order_id="o1",
        product_id="p2",
        category="y",
        quantity=2.0,
    ),
    dict(customer_id="A", timestamp="2024-02-15 12:00", amount=20.0, order_id="o2", product_id="p1", category="x"),
    dict(
        customer_id="A",
        timestamp="2024-02-20 09:00",
        amount=5.0,
        order_id="o1",
        product_id="p2",
        category="y",
        status="refund",
    ),
    dict(customer_id="A", timestamp="2024-03-10 00:00", amount=30.0, order_id="o3", product_id="p3", category="x"),
    # customer B: signed up before 2024-03-01, first order after it
    dict(customer_id="B", timestamp="2024-03-20 15:00", amount=8.0, order_id="o4", product_id="p2", category="y"),
    # customer C: no signup date; first seen through its order
    dict(customer_id="C", timestamp="2024-03-05 00:00", amount=12.0, order_id="o5", product_id="p1", category="x"),
]
IX = [
    dict(customer_id="A", timestamp="2024-01-05 00:00", event_type="view"),
    dict(customer_id="A", timestamp="2024-02-10 00:00", event_type="email_sent"),
    dict(customer_id="A", timestamp="2024-02-11 00:00", event_type="email_open"),
    dict(customer_id="A", timestamp="2024-02-25 08:00", event_type="login"),
    dict(customer_id="A", timestamp="2024-03-15 00:00", event_type="support_ticket"),
    dict(customer_id="B", timestamp="2024-02-21 00:00", event_type="view"),
]
CUSTOMERS = [
    dict(customer_id="A", signup_at="2024-01-01", country="DE", acquisition_channel="organic"),
    dict(customer_id="B", signup_at="2024-02-20", country="FR", acquisition_channel="referral"),
    dict(customer_id="C"),
    dict(customer_id="D", signup_at="2024-05-01"),
]
CUTOFFS = ["2024-03-01", "2024-04-01"]
OBSERVED_UNTIL = pd.Timestamp("2024-07-01")


@pytest.fixture
def hand_validated(tmp_path: Path) -> Path:
    """The hand-computed fixture as a validated layer."""
    return write_validated(
        tmp_path / "validated", [dict(r) for r in TX], [dict(r) for r in IX], [dict(r) for r in CUSTOMERS]
    )


# ---------------------------------------------------------------- models: ONE shared synthetic store

MODEL_TEST_CUSTOMERS = 2000


def model_test_settings(home: Path, **model_overrides: object) -> Settings:
    """Settings for model tests: a fixed 'now', fewer trees, and MLflow in SQLite under `home`."""
    models = {
        "n_estimators": 150,
        "tracking_uri": f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}",
        **model_overrides,
    }
    return Settings(home=home, as_of="2026-01-01T00:00:00", models=ModelSettings(**models))


def copy_feature_store(source_home: Path, home: Path) -> Path:
    """A fresh home holding a copy of `source_home`'s validated data and offline snapshots (no models, no audit log)."""
    shutil.copytree(source_home / "store" / "offline", home / "store" / "offline")
    shutil.copytree(source_home / "data" / "validated", home / "data" / "validated")
    return home


@pytest.fixture(scope="session")
def feature_store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded synthetic dataset (2,000 customers, 36 monthly cutoffs) built into one feature snapshot."""
    from custops.pipelines.features import run_feature_pipeline

    home = tmp_path_factory.mktemp("feature_store") / ".custops"
    run_feature_pipeline(model_test_settings(home), generate_customers=MODEL_TEST_CUSTOMERS)
    return home


@pytest.fixture(scope="session")
def trained(feature_store_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict]:
    """Every task trained once and promoted through the gate; read-only for the tests that share it."""
    from custops.pipelines.training import train_all

    settings = model_test_settings(copy_feature_store(feature_store_home, tmp_path_factory.mktemp("trained")))
    return settings, {r.task: r for r in train_all(settings)}
