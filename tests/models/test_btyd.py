"""BTYD baseline: published CDNOW parameters and holdout forecast, churn score, sklearn contract, snapshot data."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from custops.data.ingest import ingest
from custops.data.synthetic import SyntheticConfig, generate
from custops.errors import ConfigError, DataContractError
from custops.features.builder import build_snapshot
from custops.features.store import OfflineStore
from custops.models.btyd import (
    CDNOW_CALIBRATION_END,
    CDNOW_HOLDOUT_END,
    BTYDModel,
    cdnow_summary,
    churn_score,
    read_cdnow_sample,
)
from custops.settings import FeatureSettings, Settings

# Published maximum-likelihood estimates on the CDNOW sample, 39-week calibration, weekly units:
# BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader & Hardie's note 025). Pareto/NBD: Fader &
# Hardie's MATLAB note reports 0.55 / 10.58 / 0.61 / 11.67; these are the 4-digit values lifetimes
# and PyMC-Marketing test against.
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_PARETONBD = {"r": 0.5534, "alpha": 10.5802, "s": 0.6061, "beta": 11.6562}
PUBLISHED_GAMMA_GAMMA = {"p": 6.25, "q": 3.74, "v": 15.44}
HOLDOUT_DAYS = (pd.Timestamp(CDNOW_HOLDOUT_END) - pd.Timestamp(CDNOW_CALIBRATION_END)).days  # 273 = 39 weeks


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    return cdnow_summary()


@pytest.fixture(scope="module")
def bgnbd(cdnow: pd.DataFrame) -> BTYDModel:
    return BTYDModel(transaction_model="bgnbd", time_unit_days=7).fit(cdnow)


@pytest.fixture(scope="module")
def paretonbd(cdnow: pd.DataFrame) -> BTYDModel:
    return BTYDModel(transaction_model="paretonbd", time_unit_days=7).fit(cdnow)


def no_holdout_purchase(cdnow: pd.DataFrame) -> np.ndarray:
    return (cdnow["label_purchase_days_holdout"] == 0).to_numpy()


# ---------------------------------------------------------------- CDNOW: the published results


def test_cdnow_summary_is_the_classic_split(cdnow: pd.DataFrame) -> None:
    assert len(read_cdnow_sample()) == 6919
    assert len(cdnow) == 2357
    purchase_days = (cdnow["frequency_btyd"] + 1).sum() + cdnow["label_purchase_days_holdout"].sum()
    assert purchase_days == 6696  # same-day purchases merged
    assert cdnow["label_purchase_days_holdout"].sum() == 1882
    assert HOLDOUT_DAYS == 39 * 7
    # Same x, t_x, T as the summary lifetimes ships (weeks, two decimals).
    with resources.as_file(resources.files("lifetimes") / "datasets" / "cdnow_customers_summary.csv") as path:
        ref = pd.read_csv(path, index_col="ID")
    ours = cdnow.loc[ref.index]
    assert (ours["frequency_btyd"] == ref["frequency"]).all()
    assert np.abs(ours["btyd_recency_days"] / 7 - ref["recency"]).max() < 0.006
    assert np.abs(ours["btyd_age_days"] / 7 - ref["T"]).max() < 0.006
    assert ours["btyd_monetary"].isna().eq(ref["frequency"] == 0).all()


def test_bgnbd_and_gamma_gamma_match_published_cdnow_parameters(bgnbd: BTYDModel) -> None:
    for name, published in {**PUBLISHED_BGNBD, **PUBLISHED_GAMMA_GAMMA}.items():
        assert bgnbd.params_[name] == pytest.approx(published, rel=0.01), name
    assert bgnbd.n_customers_ == 2357 and bgnbd.n_repeat_customers_ == 946


def test_paretonbd_matches_published_cdnow_parameters(paretonbd: BTYDModel) -> None:
    for name, published in PUBLISHED_PARETONBD.items():
        assert paretonbd.params_[name] == pytest.approx(published, rel=0.01), name


def test_holdout_forecast_matches_the_published_under_forecast(
    cdnow: pd.DataFrame, bgnbd: BTYDModel, paretonbd: BTYDModel
) -> None:
    actual = cdnow["label_purchase_days_holdout"].sum()
    bg = bgnbd.expected_purchases(cdnow, HOLDOUT_DAYS).sum()
    pnbd = paretonbd.expected_purchases(cdnow, HOLDOUT_DAYS).sum()
    assert bg == pytest.approx(1653, rel=0.005)  # Fader, Hardie & Lee: 1,653 vs 1,882 actual
    assert 0.11 < 1 - bg / actual < 0.16 and 0.11 < 1 - pnbd / actual < 0.16


def test_time_unit_changes_reported_rates_not_predictions(cdnow: pd.DataFrame, bgnbd: BTYDModel) -> None:
    daily = BTYDModel(transaction_model="bgnbd", time_unit_days=1).fit(cdnow)
    assert daily.params_["alpha"] == pytest.approx(7 * bgnbd.params_["alpha"], rel=1e-3)
    assert daily.params_["r"] == pytest.approx(bgnbd.params_["r"], rel=1e-3)
    np.testing.assert_allclose(daily.predict(cdnow), bgnbd.predict(cdnow), rtol=1e-3)


# ---------------------------------------------------------------- P(alive) and churn


def test_p_alive_is_a_probability_and_one_for_one_time_buyers_under_bgnbd(
    cdnow: pd.DataFrame, bgnbd: BTYDModel, paretonbd: BTYDModel
) -> None:
    one_time = (cdnow["frequency_btyd"] == 0).to_numpy()
    for model in (bgnbd, paretonbd):
        p = model.p_alive(cdnow)
        assert ((p >= 0) & (p <= 1)).all()
    assert (bgnbd.p_alive(cdnow)[one_time] == 1.0).all()
    assert (paretonbd.p_alive(cdnow)[one_time] < 1.0).all()


def test_churn_score_beats_random_where_bgnbd_p_alive_does_not(
    cdnow: pd.DataFrame, bgnbd: BTYDModel, paretonbd: BTYDModel
) -> None:
    y = no_holdout_purchase(cdnow)
    # The DOMAIN.md pitfall: 1 - P(alive) ranks one-time buyers as the safest (AUC ~0.32).
    assert roc_auc_score(y, 1 - bgnbd.p_alive(cdnow)) < 0.4
    for model in (bgnbd, paretonbd):
        score = churn_score(model, cdnow, HOLDOUT_DAYS)
        assert ((score >= 0) & (score <= 1)).all()
        assert roc_auc_score(y, score) > 0.7  # ~0.76 BG/NBD, ~0.77 Pareto/NBD
    # As a probability it is about right on average: 71% made no repeat purchase, predicted 74% / 78%.
    assert churn_score(bgnbd, cdnow, HOLDOUT_DAYS).mean() == pytest.approx(y.mean(), abs=0.1)


# ---------------------------------------------------------------- value


def test_expected_value_is_purchases_times_gamma_gamma_spend(cdnow: pd.DataFrame, bgnbd: BTYDModel) -> None:
    spend = bgnbd.expected_spend(cdnow)
    p, q, v = (bgnbd.params_[k] for k in ("p", "q", "v"))
    one_time = (cdnow["frequency_btyd"] == 0).to_numpy()
    np.testing.assert_allclose(spend[one_time], v * p / (q - 1))
    repeat = ~one_time
    m = cdnow["btyd_monetary"].to_numpy()[repeat]
    assert (np.minimum(m, v * p / (q - 1)) <= spend[repeat] + 1e-9).all()  # shrunk towards the mean
    assert (spend[repeat] <= np.maximum(m, v * p / (q - 1)) + 1e-9).all()
    np.testing.assert_allclose(
        bgnbd.expected_value(cdnow, HOLDOUT_DAYS), bgnbd.expected_purchases(cdnow, HOLDOUT_DAYS) * spend
    )
    np.testing.assert_allclose(bgnbd.predict(cdnow), bgnbd.expected_value(cdnow, 365))


def test_customers_who_never_bought_get_nan_and_stay_out_of_the_fit(cdnow: pd.DataFrame, bgnbd: BTYDModel) -> None:
    prospect = pd.DataFrame(
        {"frequency_btyd": [0], "btyd_recency_days": [np.nan], "btyd_age_days": [np.nan], "btyd_monetary": [np.nan]},
        index=[-1],
    )
    X = pd.concat([cdnow, prospect])
    refit = clone(bgnbd).fit(X)
    assert refit.n_customers_ == 2357
    assert refit.params_ == pytest.approx(bgnbd.params_)
    for values in (refit.predict(X), refit.p_alive(X), churn_score(refit, X, 90)):
        assert np.isnan(values[-1]) and np.isfinite(values[:-1]).all()


# ---------------------------------------------------------------- sklearn contract and errors


def test_sklearn_contract(cdnow: pd.DataFrame, bgnbd: BTYDModel) -> None:
    fresh = BTYDModel(transaction_model="paretonbd", penalizer=0.01, time_unit_days=7, horizon_days=90)
    with pytest.raises(NotFittedError):
        fresh.predict(cdnow)
    with pytest.raises(NotFittedError):
        churn_score(fresh, cdnow, 90)
    copy = clone(fresh)
    assert copy.get_params() == fresh.get_params() and not hasattr(copy, "params_")
    assert not hasattr(clone(bgnbd), "params_")
    assert fresh.fit(cdnow) is fresh and set(fresh.params_) == {"r", "alpha", "s", "beta", "p", "q", "v"}


def test_fit_leaves_the_process_warning_filters_alone(cdnow: pd.DataFrame) -> None:
    # lifetimes puts an 'ignore FutureWarning' filter first on import and in every likelihood call
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        before = list(warnings.filters)
        BTYDModel(transaction_model="bgnbd").fit(cdnow).predict(cdnow)
        assert warnings.filters == before


def test_bad_input_names_the_column_and_the_fix(cdnow: pd.DataFrame) -> None:
    with pytest.raises(DataContractError, match="'btyd_monetary': column is missing.*feature-snapshot rows"):
        BTYDModel().fit(cdnow.drop(columns="btyd_monetary"))
    broken = cdnow.assign(btyd_recency_days=cdnow["btyd_age_days"] + 1)
    with pytest.raises(DataContractError, match="'btyd_recency_days': 2357 row"):
        BTYDModel().fit(broken)
    with pytest.raises(ConfigError, match="transaction_model='pareto'.*bgnbd, paretonbd"):
        BTYDModel(transaction_model="pareto").fit(cdnow)


# ---------------------------------------------------------------- on a feature snapshot


@pytest.mark.slow
def test_fits_a_feature_snapshot_and_ranks_future_purchases(tmp_path: Path) -> None:
    raw = generate(SyntheticConfig(n_customers=1500, file_format="parquet"), tmp_path / "raw")
    settings = Settings(home=tmp_path / ".custops", as_of="2026-01-01T00:00:00")
    ingest({t: raw.paths[t] for t in ("transactions", "interactions", "customers")}, settings)
    fs = FeatureSettings(windows_days=(90,), engagement_windows_days=(30,), top_categories=0)
    snap = build_snapshot(settings.validated_dir, OfflineStore(settings.offline_store_dir), fs, cutoffs=["2024-12-01"])
    df = snap.read()
    label = f"label_purchase_days_{fs.value_horizon_days}d"
    assert df[label].notna().all()  # data run to 2025-12-31: the 365-day label is complete

    model = BTYDModel().fit(df)
    expected = model.expected_purchases(df, fs.value_horizon_days)
    buyer = df["btyd_age_days"].notna().to_numpy()
    assert model.n_customers_ == buyer.sum() and np.isnan(expected[~buyer]).all()
    assert spearmanr(expected[buyer], df.loc[buyer, label]).statistic > 0.3
    assert spearmanr(model.predict(df)[buyer], df.loc[buyer, f"label_value_{fs.value_horizon_days}d"]).statistic > 0.3


def test_fit_does_not_depend_on_the_global_random_state(cdnow: pd.DataFrame, paretonbd: BTYDModel) -> None:
    """lifetimes' Pareto/NBD starts from numpy's global random state: the fit is the same whatever ran
    before it, and leaves that state as it found it."""
    np.random.seed(12345)
    np.random.normal(size=17)
    state = np.random.get_state()
    again = BTYDModel(transaction_model="paretonbd", time_unit_days=7).fit(cdnow)
    assert again.params_ == paretonbd.params_
    after = np.random.get_state()
    assert after[2] == state[2] and np.array_equal(after[1], state[1])
