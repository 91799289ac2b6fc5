"""Baselines at scale: BTYD fitted once per run, on a seeded customer sample, predicting for everyone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from custops.features.store import OfflineStore
from custops.models import baselines
from custops.models.btyd import BTYDModel
from custops.models.datasets import load_split, task_specs
from custops.settings import FeatureSettings

pytestmark = pytest.mark.slow
SPECS = task_specs(FeatureSettings())


@pytest.fixture(scope="module")
def churn_split(feature_store_home: Path):
    snap = OfflineStore(feature_store_home / "store" / "offline").get()
    return load_split(snap, SPECS["churn"], baselines.BASELINE_COLUMNS)


def test_btyd_fits_a_customer_sample_and_still_scores_everyone(churn_split) -> None:
    train, valid, spec = churn_split.train, churn_split.valid, SPECS["churn"]
    latest = (train["cutoff"] == train["cutoff"].max()).sum()
    full = baselines.fit_btyd(train, spec, "bgnbd", max_customers=None)
    part = baselines.fit_btyd(train, spec, "bgnbd", max_customers=latest // 3, seed=1)
    assert full.n_customers_ == latest and part.n_customers_ == latest // 3
    assert part.params_ != full.params_
    again = baselines.fit_btyd(train, spec, "bgnbd", max_customers=latest // 3, seed=1).params_
    assert again == pytest.approx(part.params_, rel=1e-3)  # the same sample (lifetimes' optimizer: ~1e-5 jitter)
    y = valid[spec.label].to_numpy()
    auc_full = roc_auc_score(y, full.probability_no_purchase(valid, spec.horizon_days))
    scores = part.probability_no_purchase(valid, spec.horizon_days)
    assert np.isfinite(scores).all() and len(scores) == len(valid)
    assert abs(roc_auc_score(y, scores) - auc_full) < 0.01  # population parameters: a third of the customers do


def test_clv_fits_bgnbd_once_for_baseline_and_competitor(feature_store_home: Path, monkeypatch) -> None:
    snap = OfflineStore(feature_store_home / "store" / "offline").get()
    spec = SPECS["clv"]
    split = load_split(snap, spec, baselines.BASELINE_COLUMNS)
    calls = []
    real_fit = BTYDModel.fit

    def counting_fit(self: BTYDModel, X, y=None):
        calls.append(self.transaction_model)
        return real_fit(self, X, y)

    monkeypatch.setattr(BTYDModel, "fit", counting_fit)
    fits: dict[str, BTYDModel] = {}
    scores = baselines.baseline_scores("clv", split.train, split.valid, spec, fits)
    competitor = baselines.btyd_for(fits, split.train, spec, "bgnbd")
    assert calls == ["bgnbd"] and competitor is fits["bgnbd"]
    np.testing.assert_allclose(
        scores["btyd_bgnbd_gamma_gamma"], np.nan_to_num(competitor.expected_value(split.valid, spec.horizon_days))
    )
