"""Registry: the quality gate, refusals, promotions and rollbacks (all audited), and faithful reloads."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from custops.errors import GateError, StoreError
from custops.features.store import OfflineStore
from custops.models.baselines import BASELINE_COLUMNS
from custops.models.boosted import ChurnModel, HurdleCLVModel, PropensityModel
from custops.models.datasets import load_task_frame, task_specs, time_split
from custops.models.registry import CHALLENGER, CHAMPION, Registry, quality_gate
from custops.pipelines import training
from custops.settings import Settings
from tests.conftest import copy_feature_store, model_test_settings

# ---------------------------------------------------------------- the gate as a pure function


def test_gate_passes_a_challenger_that_beats_baselines_and_holds_against_the_champion() -> None:
    d = quality_gate(
        primary_metric="roc_auc",
        challenger=0.80,
        baselines={"recency": 0.75, "frequency": 0.70},
        champion=0.803,
        tolerance=0.005,
    )
    assert d.passed and d.reason == "all checks passed" and len(d.checks) == 3


@pytest.mark.parametrize(
    ("challenger", "baselines", "champion", "failed"),
    [
        (0.74, {"recency": 0.75}, None, "beats baseline recency"),
        (0.75, {"recency": 0.75}, None, "beats baseline recency"),  # a tie is not a win
        (0.80, {"recency": 0.75}, 0.81, "within 0.005 of champion"),
        (math.nan, {"recency": 0.75}, None, "beats baseline recency"),
    ],
)
def test_gate_refuses_with_the_failed_check_named(
    challenger: float, baselines: dict[str, float], champion: float | None, failed: str
) -> None:
    d = quality_gate(
        primary_metric="roc_auc", challenger=challenger, baselines=baselines, champion=champion, tolerance=0.005
    )
    assert not d.passed
    assert d.reason.startswith("failed: ") and failed in d.reason


def test_gate_handles_lower_is_better_metrics() -> None:
    kw = dict(primary_metric="rmse", baselines={"mean": 10.0}, champion=None, tolerance=0.0, higher_is_better=False)
    assert quality_gate(challenger=9.0, **kw).passed
    assert not quality_gate(challenger=11.0, **kw).passed


# ---------------------------------------------------------------- registry against MLflow


@pytest.fixture
def settings(feature_store_home: Path, tmp_path: Path) -> Settings:
    """A fresh home (own MLflow database and audit log) over a copy of the shared snapshot."""
    return model_test_settings(copy_feature_store(feature_store_home, tmp_path / ".custops"))


def task_rows(settings: Settings, task: str) -> tuple[list[str], str, pd.DataFrame, pd.DataFrame]:
    snap = OfflineStore(settings.offline_store_dir).get()
    spec = task_specs(settings.features)[task]
    split = time_split(load_task_frame(snap, spec, extra=BASELINE_COLUMNS), spec)
    return snap.manifest["feature_services"][f"{task}_v1"], spec.label, split.train, split.valid


def log_and_register(settings: Settings, task: str, model: object) -> str:
    """Log a fitted model to MLflow the way training does and register it (challenger)."""
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            pip_requirements=training.model_requirements(),
        )
    return registry.register(task, info.model_uri, run.info.run_id, {})


class ShuffledLabelChurnModel(ChurnModel):
    """A deliberately degraded churn model: it learns from labels shuffled across customers."""

    def fit(self, X: pd.DataFrame, y: object, *, cutoff: pd.Series | None = None) -> ShuffledLabelChurnModel:
        shuffled = np.random.default_rng(0).permutation(np.asarray(y))
        return super().fit(X, shuffled, cutoff=cutoff)  # type: ignore[return-value]


@pytest.mark.slow
def test_gate_refuses_a_degraded_model_and_keeps_the_champion(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = training.train_task(settings, "churn")
    registry = Registry(settings)
    assert good.promoted and registry.alias_version("churn", CHAMPION) == good.version

    def degraded(task: str, s: Settings, features: list[str]) -> ChurnModel:
        return ShuffledLabelChurnModel(features=features, n_estimators=s.models.n_estimators, random_state=s.seed)

    monkeypatch.setattr(training, "make_model", degraded)
    bad = training.train_task(settings, "churn")
    assert bad.metrics["roc_auc"] < 0.6 < good.metrics["roc_auc"]
    assert not bad.gate.passed and not bad.promoted
    assert "beats baseline recency" in bad.gate.reason
    assert registry.alias_version("churn", CHAMPION) == good.version
    assert registry.alias_version("churn", CHALLENGER) == bad.version
    refusal = registry.history("churn")[-1]
    assert refusal["action"] == "refuse" and refusal["version"] == bad.version
    assert refusal["previous"] == good.version and refusal["gate"]["passed"] is False

    # asking again (what `custops promote churn` does) is refused with the reason, and audited
    with pytest.raises(GateError, match=rf"custops-churn v{bad.version} not promoted: failed: roc_auc"):
        training.promote(settings, "churn")
    assert registry.alias_version("churn", CHAMPION) == good.version
    assert [r["action"] for r in registry.history("churn")][-2:] == ["refuse", "refuse"]

    # a human may override; the audit log says so
    training.promote(settings, "churn", force=True)
    assert registry.alias_version("churn", CHAMPION) == bad.version
    forced = registry.history("churn")[-1]
    assert forced["action"] == "promote" and forced["reason"] == "forced by user"


@pytest.mark.slow
def test_rollback_restores_the_previous_champion_step_by_step(settings: Settings) -> None:
    feats, label, train, _ = task_rows(settings, "churn")
    model = ChurnModel(features=feats, n_estimators=20).fit(train[feats], train[label])
    registry = Registry(settings)
    versions = []
    for _ in range(3):
        versions.append(log_and_register(settings, "churn", model))
        registry.promote("churn", versions[-1], None)
    v1, v2, v3 = versions
    assert registry.alias_version("churn", CHAMPION) == v3

    assert registry.rollback("churn") == v2
    assert registry.alias_version("churn", CHAMPION) == v2
    record = registry.history("churn")[-1]
    assert record["action"] == "rollback" and record["version"] == v2 and record["previous"] == v3

    # a second rollback steps further back (not forward to v3 again)
    assert registry.rollback("churn") == v1
    assert registry.alias_version("churn", CHAMPION) == v1
    with pytest.raises(StoreError, match=rf"v{v1} has no earlier champion"):
        registry.rollback("churn")
    assert registry.alias_version("churn", CHAMPION) == v1
    assert [r["action"] for r in registry.history("churn")].count("rollback") == 2


def test_rollback_without_a_champion_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="custops-propensity has no champion to roll back"):
        Registry(model_test_settings(tmp_path)).rollback("propensity")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "model_cls"), [("churn", ChurnModel), ("propensity", PropensityModel), ("clv", HurdleCLVModel)]
)
def test_model_loaded_from_the_registry_predicts_exactly_like_in_memory(
    settings: Settings, task: str, model_cls: type
) -> None:
    feats, label, train, valid = task_rows(settings, task)
    model = model_cls(features=feats, n_estimators=30).fit(train[feats], train[label], cutoff=train["cutoff"])
    version = log_and_register(settings, task, model)
    registry = Registry(settings)
    registry.promote(task, version, None)
    loaded = registry.load(task, CHAMPION)
    assert type(loaded) is model_cls and loaded.get_params() == model.get_params()
    if task == "clv":
        np.testing.assert_array_equal(loaded.predict(valid), model.predict(valid))
    else:
        np.testing.assert_array_equal(loaded.predict_proba(valid), model.predict_proba(valid))
    assert loaded.reasons(valid.head(20)) == model.reasons(valid.head(20))


def test_registries_of_two_homes_keep_their_own_tracking_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = Registry(Settings(home=tmp_path / "a"))
    second = Registry(Settings(home=tmp_path / "b"))  # MLflow exported the first URI to the environment
    assert str(tmp_path / "a") in first.tracking_uri and str(tmp_path / "b") in second.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared.db'}")
    assert Registry(Settings(home=tmp_path / "c")).tracking_uri.endswith("shared.db")  # the user's choice wins


def test_missing_champion_names_the_task_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"custops-clv has no 'champion' version: run `custops train clv` first"):
        Registry(model_test_settings(tmp_path)).load("clv")
