"""The `custops` CLI end to end on a small demo dataset, and its error contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from custops.cli import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CUSTOPS_HOME", str(tmp_path / ".custops"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / ".custops"


def test_every_command_has_help() -> None:
    for args in (
        [],
        ["data"],
        ["features"],
        ["data", "generate"],
        ["data", "ingest"],
        ["features", "build"],
        ["features", "materialize"],
        ["features", "describe"],
        ["features", "get"],
        ["demo"],
    ):
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0, (args, res.output)
        assert "Usage" in res.output


@pytest.mark.slow
def test_demo_then_describe_and_get(home: Path) -> None:
    res = runner.invoke(app, ["demo", "--customers", "400"])
    assert res.exit_code == 0, res.output
    assert "quarantined" in res.output and "Snapshot fs-" in res.output
    quarantine = home / "data" / "quarantine" / "transactions.parquet"
    assert quarantine.exists()

    res = runner.invoke(app, ["features", "describe", "--json"])
    assert res.exit_code == 0, res.output
    described = json.loads(res.output)
    names = {f["name"] for f in described["features"]}
    assert {"recency_days", "rfm_segment", "lifecycle_stage", "label_churn_90d"} <= names

    import pandas as pd

    validated = pd.read_parquet(home / "data" / "validated" / "customers.parquet")
    some_id = validated["customer_id"].iloc[0]
    res = runner.invoke(app, ["features", "get", some_id, "no-such-customer"])
    assert res.exit_code == 4
    assert some_id in res.output and "not found in the online store: no-such-customer" in res.output


def test_errors_are_one_line_with_exit_code(home: Path) -> None:
    res = runner.invoke(app, ["features", "describe"])
    assert res.exit_code == 4
    assert "error: no feature snapshot" in res.output
    res = runner.invoke(app, ["features", "build", "--cutoff", "2024-13-01"])
    assert res.exit_code in (2, 4)  # no validated data yet, or a bad cutoff: both named
    res = runner.invoke(app, ["data", "ingest", "--transactions", "missing.csv"])
    assert res.exit_code == 3
    assert "missing.csv" in res.output and "file not found" in res.output


def test_bad_cutoff_is_named(home: Path, hand_validated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validated = home / "data" / "validated"
    validated.parent.mkdir(parents=True)
    hand_validated.rename(validated)
    res = runner.invoke(app, ["features", "build", "--cutoff", "2024-13-01"])
    assert res.exit_code == 2
    assert "cutoff '2024-13-01' is not a date" in res.output
