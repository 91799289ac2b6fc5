"""Batch scoring with the champions: one row per customer, honest NaNs, unknown ids flagged, atomic output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from custops.errors import ConfigError, StoreError
from custops.features.store import OfflineStore
from custops.models.registry import CHAMPION, Registry
from custops.pipelines import scoring
from custops.settings import Settings
from tests.conftest import MODEL_TEST_CUSTOMERS, copy_feature_store, model_test_settings

pytestmark = pytest.mark.slow

HEAD = [
    "customer_id",
    "status",
    "cutoff",
    "churn_probability",
    "risk_band",
    "clv_365d",
    "purchase_propensity_30d",
]
TAIL = [
    "rfm_segment",
    "value_tier",
    "lifecycle_stage",
    "churn_top_reasons",
    "churn_model_version",
    "clv_model_version",
    "propensity_model_version",
    "snapshot_id",
]


@pytest.fixture(scope="module")
def category_columns(trained: tuple[Settings, dict]) -> list[str]:
    """One propensity column per category the champion propensity model has a model for."""
    model = Registry(trained[0]).load("propensity", CHAMPION)
    assert model.category_models_, "the test data should give the propensity model per-category models"
    return [f"purchase_propensity_30d_cat_{scoring.category_name(label)}" for label in model.category_models_]


@pytest.fixture(scope="module")
def columns(category_columns: list[str]) -> list[str]:
    return [*HEAD, *category_columns, *TAIL]


@pytest.fixture(scope="module")
def scores(trained: tuple[Settings, dict]) -> pd.DataFrame:
    settings, _ = trained
    return scoring.score(settings)


def test_every_customer_is_scored_at_the_latest_cutoff(
    trained: tuple[Settings, dict], scores: pd.DataFrame, columns: list[str]
) -> None:
    settings, results = trained
    snap = OfflineStore(settings.offline_store_dir).get()
    assert list(scores.columns) == columns
    assert len(scores) == MODEL_TEST_CUSTOMERS and scores["customer_id"].is_unique
    assert (scores["status"] == "ok").all()
    assert (scores["cutoff"] == pd.Timestamp(max(snap.manifest["cutoffs"]))).all()
    assert (scores["snapshot_id"] == snap.snapshot_id).all()
    registry = Registry(settings)
    for task in ("churn", "clv", "propensity"):
        assert (scores[f"{task}_model_version"] == registry.alias_version(task, CHAMPION)).all()


def test_prospects_get_no_churn_or_value_score(scores: pd.DataFrame) -> None:
    prospect = scores["lifecycle_stage"] == "prospect"
    assert prospect.any() and (~prospect).any()
    assert scores.loc[prospect, ["churn_probability", "clv_365d"]].isna().all().all()
    assert scores.loc[prospect, ["risk_band", "churn_top_reasons"]].isna().all().all()
    buyers = scores[~prospect]
    assert buyers["churn_probability"].between(0, 1).all()
    assert (buyers["clv_365d"] >= 0).all()
    assert buyers["churn_top_reasons"].notna().mean() > 0.95
    assert scores["purchase_propensity_30d"].between(0, 1).all()  # everyone can buy


def test_per_category_propensity_matches_the_category_models(
    trained: tuple[Settings, dict], scores: pd.DataFrame, category_columns: list[str]
) -> None:
    settings, _ = trained
    model = Registry(settings).load("propensity", CHAMPION)
    rows = scoring.scoring_rows(OfflineStore(settings.offline_store_dir).get(), scoring.load_champions(settings))
    expected = model.predict_categories(rows)
    for label, column in zip(model.category_models_, category_columns, strict=True):
        np.testing.assert_allclose(scores[column].to_numpy(), expected[label].to_numpy(), rtol=0, atol=1e-12)
        assert scores[column].between(0, 1).all() and scores[column].nunique() > 10  # everyone, and not constant


def test_churn_reasons_name_the_customer_values_the_model_read(
    trained: tuple[Settings, dict], scores: pd.DataFrame
) -> None:
    settings, _ = trained
    champions = scoring.load_champions(settings)
    rows = scoring.scoring_rows(OfflineStore(settings.offline_store_dir).get(), champions)
    buyers = rows[rows["n_orders"] > 0].head(20).reset_index(drop=True)
    predicted = scoring.predict_rows(buyers, champions)
    text = scores.set_index("customer_id").loc[buyers["customer_id"], "churn_top_reasons"].tolist()
    for reasons, line in zip(predicted.churn_reasons, text, strict=True):
        assert reasons and len(reasons) <= 3
        assert [r.contribution for r in reasons] == sorted((r.contribution for r in reasons), reverse=True)
        assert line == "; ".join(f"{r.feature} = {r.value}" for r in reasons)
    without = scoring.predict_rows(buyers, champions, reasons_k=0)
    assert without.churn_reasons == [None] * len(buyers)
    np.testing.assert_array_equal(without.churn_probability, predicted.churn_probability)


def test_risk_band_follows_the_configured_thresholds(trained: tuple[Settings, dict], scores: pd.DataFrame) -> None:
    settings, _ = trained
    lo, hi = settings.models.risk_bands
    p, band = scores["churn_probability"], scores["risk_band"]
    assert ((band == "low") == (p < lo)).all()
    assert ((band == "medium") == ((p >= lo) & (p < hi))).all()
    assert ((band == "high") == (p >= hi)).all()
    assert set(band.dropna()) == {"low", "medium", "high"}


def test_churn_scores_rank_true_dropouts_above_live_customers(feature_store_home: Path, scores: pd.DataFrame) -> None:
    truth = pd.read_parquet(feature_store_home / "data" / "raw" / "ground_truth.parquet")
    df = scores.merge(truth[["customer_id", "alive_at_end"]], on="customer_id").dropna(subset=["churn_probability"])
    auc = roc_auc_score(~df["alive_at_end"], df["churn_probability"])
    assert auc > 0.8, auc


def test_a_customer_list_keeps_its_order_and_flags_unknown_ids(
    trained: tuple[Settings, dict], scores: pd.DataFrame
) -> None:
    settings, _ = trained
    buyer = scores.loc[scores["lifecycle_stage"] != "prospect", "customer_id"].iloc[0]
    prospect = scores.loc[scores["lifecycle_stage"] == "prospect", "customer_id"].iloc[0]
    some = scoring.score(settings, ["nope", buyer, " ", prospect, buyer])
    assert some["customer_id"].tolist() == ["nope", buyer, prospect]
    assert some["status"].tolist() == ["not_found", "ok", "ok"]
    unknown = some.iloc[0]
    assert np.isnan(unknown["churn_probability"]) and np.isnan(unknown["purchase_propensity_30d"])
    assert pd.isna(unknown["lifecycle_stage"]) and unknown["snapshot_id"] == scores["snapshot_id"].iloc[0]
    expected = scores.set_index("customer_id").loc[[buyer, prospect]].reset_index()
    pd.testing.assert_frame_equal(some.iloc[1:].reset_index(drop=True), expected)


def test_a_list_of_buyers_only_is_scored_like_the_full_batch(
    trained: tuple[Settings, dict], scores: pd.DataFrame
) -> None:
    settings, _ = trained
    buyers = scores.loc[scores["lifecycle_stage"] != "prospect", "customer_id"].iloc[:2].tolist()
    some = scoring.score(settings, buyers)
    expected = scores.set_index("customer_id").loc[buyers].reset_index()
    pd.testing.assert_frame_equal(some, expected)


def test_only_unknown_ids_still_returns_rows(trained: tuple[Settings, dict], columns: list[str]) -> None:
    settings, _ = trained
    out = scoring.score(settings, ["x1", "x2"])
    assert out["status"].tolist() == ["not_found", "not_found"]
    assert list(out.columns) == columns


@pytest.mark.parametrize("name", ["scores.parquet", "scores.csv"])
def test_scores_are_written_by_suffix(scores: pd.DataFrame, tmp_path: Path, name: str, columns: list[str]) -> None:
    path = scoring.write_scores(scores.head(50), tmp_path / "out" / name)
    back = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
    assert list(back.columns) == columns and len(back) == 50
    np.testing.assert_allclose(back["churn_probability"], scores["churn_probability"].head(50))
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temp file left behind


def test_a_failed_write_leaves_the_previous_file_intact(
    scores: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = scoring.write_scores(scores.head(5), tmp_path / "scores.csv")
    before = path.read_bytes()

    def broken(self: pd.DataFrame, target: object, **kw: object) -> None:
        Path(str(target)).write_text("half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        scoring.write_scores(scores, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_unsupported_output_suffix_is_a_config_error(scores: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scores\.xlsx: unsupported suffix '\.xlsx' \(use \.parquet or \.csv\)"):
        scoring.write_scores(scores, tmp_path / "scores.xlsx")


def test_scoring_without_champions_names_the_tasks_and_the_fix(feature_store_home: Path, tmp_path: Path) -> None:
    settings = model_test_settings(copy_feature_store(feature_store_home, tmp_path / ".custops"))
    with pytest.raises(StoreError, match=r"no champion model for churn, clv, propensity: run `custops train all`"):
        scoring.score(settings)
