"""`custops monitor` end to end: a drifted synthetic period exits 6 with an alert (and --retrain runs training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from custops import cli
from custops.cli import app
from custops.data.synthetic import SyntheticConfig, generate
from custops.features.store import OfflineStore
from custops.models.registry import Registry
from custops.monitoring import report as R
from custops.pipelines import monitoring as PM
from custops.pipelines.features import build_features, ingest_raw
from custops.settings import Settings

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def env(mon_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLI environment on the shared trained home; monitoring output goes to a private folder."""
    monkeypatch.setenv("CUSTOPS_HOME", str(mon_settings.home))
    monkeypatch.setenv("CUSTOPS_AS_OF", "2026-01-01T00:00:00")
    monkeypatch.setenv("CUSTOPS_MODELS__TRACKING_URI", mon_settings.tracking_uri())
    monkeypatch.setenv("CUSTOPS_MONITORING__OUTPUT_DIR", str(tmp_path / "monitoring"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(cli.out, "width", 200)
    return tmp_path / "monitoring"


def drifted_home(settings: Settings, root: Path) -> tuple[Path, str]:
    """A synthetic world whose prices, channel mix and churn shift 6 months before the reference cutoff."""
    _, cutoff = PM.champion_reference(Registry(settings))
    drift_from = (pd.Timestamp(cutoff) - pd.DateOffset(months=6)).date()
    world = Settings(home=root, as_of="2026-01-01T00:00:00")
    generate(SyntheticConfig(n_customers=1500, seed=11, drift_from=drift_from), world.raw_dir)
    ingest_raw(world)
    return root, build_features(world, cutoffs=[cutoff]).snapshot_id


def test_drifted_period_exits_6_with_alert_and_retrain(
    env: Path, mon_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, snapshot_id = drifted_home(mon_settings, tmp_path / "drifted")
    calls = []

    def fake_train_all(settings: Settings, *, snapshot_id: str, promote: bool) -> list:
        calls.append((snapshot_id, promote))  # training itself is tested in tests/models
        gate = SimpleNamespace(reason="all checks passed")
        return [
            SimpleNamespace(
                task="churn", version="2", primary="roc_auc", metrics={"roc_auc": 0.9}, gate=gate, promoted=True
            )
        ]

    monkeypatch.setattr("custops.pipelines.training.train_all", fake_train_all)
    res = runner.invoke(
        app, ["monitor", "--current-home", str(home), "--snapshot", snapshot_id, "--label", "q3", "--retrain"]
    )
    assert res.exit_code == 6, res.output
    assert "DRIFT" in res.output and "error: drift detected" in res.output
    assert "retrained churn v2: promoted" in res.output
    latest = OfflineStore(mon_settings.offline_store_dir).latest_id()
    assert calls == [(latest, True)]  # the training pipeline, with promotion through the gate
    summary = json.loads(next(env.glob("runs/*/*-q3/summary.json")).read_text())
    assert summary["status"] == "drift" and summary["current"]["snapshot_id"] == snapshot_id
    assert "affiliate" in summary["data_quality"]["acquisition_channel"]["new_categories"]  # the new channel
    assert summary["retrain"]["tasks"]["churn"]["promoted"] is True
    alerts = R.read_alerts(env)
    assert alerts[0]["run_id"] == summary["run_id"] and "retrain" in alerts[0]["recommendation"]
    assert alerts[1]["retrain"]["snapshot_id"] == latest
    assert (env / "index.html").exists()


def test_same_window_exits_0_and_bad_options_exit_2(env: Path, mon_settings: Settings) -> None:
    snapshot_id, cutoff = PM.champion_reference(Registry(mon_settings))
    res = runner.invoke(app, ["monitor", "--snapshot", snapshot_id, "--cutoff", cutoff, "--label", "same"])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "0 of" in res.output
    assert R.read_alerts(env) == []
    for args in (["--since", "2026-01-01"], ["--from-log", "--snapshot", snapshot_id], ["--from-log", "--since", "x"]):
        res = runner.invoke(app, ["monitor", *args])
        assert res.exit_code == 2, (args, res.output)
        assert res.output.startswith("error:") and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["monitor", "--snapshot", snapshot_id, "--cutoff", "1999-01-01"])
    assert res.exit_code == 3 and "column 'cutoff'" in res.output


def test_exit_code_of_drift_is_documented() -> None:
    from custops.errors import DriftDetected

    assert cli._exit_code(DriftDetected("x")) == 6
    assert "6 monitoring found drift" in Path(cli.__file__).read_text()
