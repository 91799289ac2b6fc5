"""The `custops` CLI end to end on a small demo dataset, and its error contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from custops import cli
from custops.cli import app
from tests.conftest import copy_feature_store

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CUSTOPS_HOME", str(tmp_path / ".custops"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / ".custops"


def _command_paths() -> list[list[str]]:
    """Every command and group of the CLI, walked from the click tree (so a new command cannot be missed)."""
    import typer.main

    paths: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        # typer ships its own click: duck-type groups instead of isinstance(click.Group)
        paths.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def test_every_command_has_help() -> None:
    paths = _command_paths()
    for expected in (["data", "generate"], ["features", "build"], ["monitor"], ["serve"], ["demo"]):
        assert expected in paths, expected
    for args in paths:
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0, (args, res.output)
        assert "Usage" in res.output


@pytest.mark.slow
def test_demo_then_describe_and_get(home: Path, feature_store_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the shared synthetic raw data (2,000 customers: enough for every model to pass its gate); demo reuses it
    shutil.copytree(feature_store_home / "data" / "raw", home / "data" / "raw")
    monkeypatch.setenv("CUSTOPS_MODELS__N_ESTIMATORS", "150")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cli.out, "width", 160)
    res = runner.invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    assert "quarantined" in res.output and "Snapshot fs-" in res.output
    quarantine = home / "data" / "quarantine" / "transactions.parquet"
    assert quarantine.exists()
    assert "Models vs baselines" in res.output and "vs recency" in res.output
    assert res.output.count("v1 champion") == 3, res.output
    assert "Scored 2,000 customers" in res.output
    assert len(list((home / "scores").glob("scores-fs-*.parquet"))) == 1

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


# ---------------------------------------------------------------- models: train, gate, promote, rollback, score


@pytest.fixture
def model_home(feature_store_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home over a copy of the shared feature snapshot, configured through the environment like a user would."""
    home = copy_feature_store(feature_store_home, tmp_path / ".custops")
    monkeypatch.setenv("CUSTOPS_HOME", str(home))
    monkeypatch.setenv("CUSTOPS_AS_OF", "2026-01-01T00:00:00")
    monkeypatch.setenv("CUSTOPS_MODELS__N_ESTIMATORS", "150")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.out, "width", 160)  # assert on whole cells, not on where an 80-column table wraps
    return home


def test_model_commands_have_help() -> None:
    for args in (["train"], ["evaluate"], ["promote"], ["rollback"], ["history"], ["score"]):
        res = runner.invoke(app, [*args, "--help"])
        assert res.exit_code == 0, (args, res.output)
        assert "Usage" in res.output


def test_model_commands_reject_bad_input_with_one_line(home: Path) -> None:
    res = runner.invoke(app, ["train", "recommenderz"])
    assert res.exit_code == 2
    assert "error: unknown task 'recommenderz': choose one of churn, clv, propensity, recommender, all" in res.output
    res = runner.invoke(app, ["promote", "all"])
    assert res.exit_code == 2 and "choose one of churn, clv, propensity" in res.output
    res = runner.invoke(app, ["history", "nope"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["history"])
    assert res.exit_code == 0 and "No registry decisions yet" in res.output
    res = runner.invoke(app, ["promote", "churn"])
    assert res.exit_code == 4 and "custops-churn has no challenger: run `custops train churn` first" in res.output
    res = runner.invoke(app, ["rollback", "churn"])
    assert res.exit_code == 4 and "has no champion to roll back" in res.output
    res = runner.invoke(app, ["score", "--customers-file", "ids.txt"])
    assert res.exit_code == 3 and "ids.txt: file not found" in res.output
    res = runner.invoke(app, ["score", "--out", "scores.xlsx"])
    assert res.exit_code == 2 and "unsupported suffix '.xlsx'" in res.output


@pytest.mark.slow
def test_train_gate_promote_rollback_history_and_score(model_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from custops.features.store import OfflineStore
    from custops.models.boosted import ChurnModel
    from custops.pipelines import training
    from tests.models.test_registry import ShuffledLabelChurnModel

    res = runner.invoke(app, ["train"])
    assert res.exit_code == 0, res.output
    for task in ("churn", "clv", "propensity"):
        assert f"{task} v1: validation cutoff" in res.output
    assert "baseline recency" in res.output and "baseline last_period_spend" in res.output
    assert res.output.count("v1 champion") == 3

    # a deliberately degraded challenger: trained and registered, but the gate refuses it
    def degraded(task: str, s: object, features: list[str]) -> ChurnModel:
        return ShuffledLabelChurnModel(features=features, n_estimators=50)

    monkeypatch.setattr(training, "make_model", degraded)
    res = runner.invoke(app, ["train", "churn"])
    assert res.exit_code == 0, res.output
    assert "v2 refused" in res.output
    res = runner.invoke(app, ["promote", "churn"])
    assert res.exit_code == 5
    assert "error: custops-churn v2 not promoted: failed: roc_auc" in res.output

    res = runner.invoke(app, ["evaluate", "churn"])
    assert res.exit_code == 0, res.output
    assert "v1 (champion)" in res.output and "v2 (challenger)" in res.output
    assert "Churn targeting" in res.output and "value at stake" in res.output

    res = runner.invoke(app, ["promote", "churn", "--force"])
    assert res.exit_code == 0, res.output
    assert "custops-churn v2 is now champion (was v1): forced by user" in res.output
    res = runner.invoke(app, ["rollback", "churn"])
    assert res.exit_code == 0, res.output
    assert "custops-churn champion rolled back: v2 -> v1" in res.output
    res = runner.invoke(app, ["rollback", "churn"])
    assert res.exit_code == 4 and "v1 has no earlier champion" in res.output

    res = runner.invoke(app, ["history", "churn"])
    assert res.exit_code == 0, res.output
    for action in ("register", "promote", "refuse", "rollback"):
        assert action in res.output
    assert "forced by user" in res.output and "clv" not in res.output

    ids = OfflineStore(model_home / "store" / "offline").get().read(columns=["customer_id"])["customer_id"]
    some = ids.drop_duplicates().iloc[:2].tolist()
    res = runner.invoke(app, ["score", "--customers", f"{some[0]},no-such-id,{some[1]}", "--out", "picked.csv"])
    assert res.exit_code == 0, res.output
    assert "Scored 2 customers" in res.output and "1 not found" in res.output
    picked = pd.read_csv(model_home.parent / "picked.csv")
    assert picked["customer_id"].tolist() == [some[0], "no-such-id", some[1]]
    assert picked["status"].tolist() == ["ok", "not_found", "ok"]
    assert (picked["churn_model_version"] == 1).all()

    res = runner.invoke(app, ["score"])
    assert res.exit_code == 0, res.output
    written = list((model_home / "scores").glob("scores-fs-*.parquet"))
    assert len(written) == 1 and len(pd.read_parquet(written[0])) == 2000
