"""The Spark engine computes the same snapshot as DuckDB: same definitions, same layout, same values."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from custops.cli import app
from custops.errors import ConfigError, StoreError
from custops.features.builder import build_snapshot, connect
from custops.features.store import OfflineStore, Snapshot
from custops.settings import FeatureSettings
from custops.spark import check_java
from tests.conftest import CUTOFFS
from tests.spark.conftest import TEST_SPARK

# Early history, the last cutoff with a complete 365-day label, a complete 30-day label only, nothing complete.
PARITY_CUTOFFS = ["2023-02-01", "2024-12-01", "2025-10-01", "2026-01-01"]


def assert_same_snapshot(duck: Snapshot, spark: Snapshot) -> None:
    """Every column equal: exact for integers, strings and timestamps, 1e-9 relative for floats."""
    schema_d, schema_s = pq.read_schema(duck.features_path), pq.read_schema(spark.features_path)
    assert schema_s.names == schema_d.names
    assert [f.type for f in schema_s] == [f.type for f in schema_d]
    a, b = duck.read(), spark.read()
    assert len(a) == len(b) > 0
    mismatched = []
    for field in schema_d:
        x, y = a[field.name], b[field.name]
        if not x.isna().equals(y.isna()):
            mismatched.append((field.name, "null positions"))
        elif pa.types.is_floating(field.type):
            ok = np.isclose(y.to_numpy(float), x.to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
            if not ok.all():
                mismatched.append((field.name, f"{int((~ok).sum())} rows"))
        elif not x[x.notna()].equals(y[y.notna()]):
            mismatched.append((field.name, "values"))
    assert not mismatched, mismatched
    for key in ("cutoffs", "features", "labels", "categories", "rows", "rows_per_cutoff", "buyers_per_cutoff"):
        assert spark.manifest[key] == duck.manifest[key], key
    assert (spark.manifest["engine"], duck.manifest["engine"]) == ("spark", "duckdb")


@pytest.mark.slow
def test_cli_build_on_spark_equals_duckdb_on_demo_data(
    spark: Any, feature_store_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / ".custops"
    shutil.copytree(feature_store_home / "data" / "validated", home / "data" / "validated")
    monkeypatch.setenv("CUSTOPS_HOME", str(home))
    monkeypatch.setenv("CUSTOPS_SPARK__SHUFFLE_PARTITIONS", "4")
    monkeypatch.chdir(tmp_path)
    args = ["features", "build", "--engine", "spark", "--no-materialize"]
    res = CliRunner().invoke(app, [*args, *[a for c in PARITY_CUTOFFS for a in ("--cutoff", c)]])
    assert res.exit_code == 0, res.output
    spark_snap = OfflineStore(home / "store" / "offline").get()
    assert not list(spark_snap.path.glob(".spark-parts*")) and (spark_snap.path / "features.parquet").is_file()
    assert spark_snap.manifest["spark"]["master"] == "local[2]"

    duck_snap = build_snapshot(
        home / "data" / "validated", OfflineStore(tmp_path / "duck"), FeatureSettings(), cutoffs=PARITY_CUTOFFS
    )
    assert_same_snapshot(duck_snap, spark_snap)
    assert spark_snap.manifest["fingerprint"] == duck_snap.manifest["fingerprint"]  # same data, same settings
    # the labels really vary across these cutoffs (complete at some, NULL at others)
    labels = spark_snap.read(columns=["cutoff", "label_value_365d", "label_purchase_30d"]).groupby("cutoff").count()
    assert labels["label_value_365d"].iloc[1] > 0 and labels["label_value_365d"].iloc[-1] == 0
    assert labels["label_purchase_30d"].iloc[2] > 0


@pytest.mark.slow
def test_uri_source_and_edge_cases_equal_duckdb(
    spark: Any, hand_validated: Path, small_fs: FeatureSettings, tmp_path: Path
) -> None:
    # the hand-computed fixture: a customer without signup date, one without any event, refunds
    duck = build_snapshot(hand_validated, OfflineStore(tmp_path / "duck"), small_fs, cutoffs=CUTOFFS)
    uri = hand_validated.resolve().as_uri()  # file:///...: read by Spark, not by this process
    snap = build_snapshot(
        uri, OfflineStore(tmp_path / "spark"), small_fs, cutoffs=CUTOFFS, engine="spark", spark=TEST_SPARK
    )
    assert_same_snapshot(duck, snap)
    tx = snap.manifest["sources"]["transactions"]
    assert tx["path"] == f"{uri}/transactions.parquet" and tx["rows"] == 7 and tx["content_hash"].startswith("xxhash64")

    (hand_validated / "interactions.parquet").unlink()  # optional table: built without it
    no_ix = build_snapshot(
        uri, OfflineStore(tmp_path / "spark2"), small_fs, cutoffs=CUTOFFS, engine="spark", spark=TEST_SPARK
    )
    assert "interactions" not in no_ix.manifest["sources"]
    assert no_ix.read(columns=["interactions_90d"])["interactions_90d"].eq(0).all()

    (hand_validated / "transactions.parquet").unlink()
    with pytest.raises(StoreError, match=r"validated table 'transactions' .* not found"):
        build_snapshot(uri, OfflineStore(tmp_path / "s3"), small_fs, cutoffs=CUTOFFS, engine="spark", spark=TEST_SPARK)


def test_unknown_engine_is_a_config_error(hand_validated: Path, small_fs: FeatureSettings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'flink' is not supported.*duckdb, spark"):
        connect("flink")
    with pytest.raises(ConfigError, match="'flink' is not supported"):
        build_snapshot(hand_validated, OfflineStore(tmp_path), small_fs, engine="flink")
    res = CliRunner().invoke(app, ["features", "build", "--engine", "flink"])
    assert res.exit_code == 2 and "--engine 'flink' is not supported" in res.output


def test_missing_java_is_a_config_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="needs Java 17.*openjdk-17-jre-headless"):
        check_java()


def test_session_settings_reach_spark(spark: Any) -> None:
    from custops.spark import get_session

    assert get_session(TEST_SPARK) is spark  # reused, not restarted
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"
    assert spark.sparkContext.master == "local[2]"
    # naive timestamps round-trip unchanged (UTC session, microseconds)
    ts = pd.Timestamp("2024-03-10 23:59:59.123456")
    back = spark.createDataFrame(pd.DataFrame({"t": [ts]})).toPandas()["t"].iloc[0]
    assert pd.Timestamp(back) == ts
