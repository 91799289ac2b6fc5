"""The LightGBM models keep the scikit-learn contract, calibrate, band risk and encode categories safely."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from custops.models.boosted import ChurnModel, HurdleCLVModel, PropensityModel
from custops.models.tabular import FrameEncoder

FEATURES = ["signal", "noise", "channel"]


@pytest.fixture
def frame() -> pd.DataFrame:
    """1,200 rows over three cutoffs: the label follows `signal` and channel 'a'; `noise` is noise."""
    rng = np.random.default_rng(0)
    n = 1200
    df = pd.DataFrame(
        {
            "customer_id": [f"C{i:05d}" for i in range(n)],
            "cutoff": pd.to_datetime(np.repeat(["2024-01-01", "2024-02-01", "2024-03-01"], n // 3)),
            "signal": rng.normal(size=n),
            "noise": rng.normal(size=n),
            "channel": pd.Series(rng.choice(["a", "b", "c"], size=n), dtype="string"),
        }
    )
    logit = 1.5 * df["signal"] + np.where(df["channel"] == "a", 1.0, 0.0) - 0.3
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df["value"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), np.exp(3 + 0.5 * df["signal"]), 0.0)
    return df


def small(model_cls: type, **kw: object) -> object:
    return model_cls(features=FEATURES, n_estimators=40, min_child_samples=20, **kw)


def test_clone_keeps_parameters_and_drops_fitted_state(frame: pd.DataFrame) -> None:
    model = small(ChurnModel, risk_bands=(0.2, 0.5), learning_rate=0.1)
    model.fit(frame, frame["y"], cutoff=frame["cutoff"])
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert copy.get_params()["risk_bands"] == (0.2, 0.5)
    assert not hasattr(copy, "booster_") and not hasattr(copy, "encoder_")
    assert model.fit(frame, frame["y"]) is model  # fit returns self


@pytest.mark.parametrize("model_cls", [ChurnModel, PropensityModel, HurdleCLVModel])
def test_predict_before_fit_raises_not_fitted(model_cls: type, frame: pd.DataFrame) -> None:
    with pytest.raises(NotFittedError):
        model_cls().predict(frame)


def test_risk_bands_follow_the_thresholds() -> None:
    bands = ChurnModel(risk_bands=(0.3, 0.6)).risk_band(np.array([0.0, 0.299, 0.3, 0.599, 0.6, 1.0]))
    assert bands.tolist() == ["low", "low", "medium", "medium", "high", "high"]


def test_probabilities_are_calibrated_on_the_latest_cutoff(frame: pd.DataFrame) -> None:
    model = small(ChurnModel).fit(frame, frame["y"], cutoff=frame["cutoff"])
    assert model.calibrator_ is not None  # isotonic fitted on the held-out latest cutoff
    proba = model.predict_proba(frame)
    assert proba.shape == (len(frame), 2)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert roc_auc_score(frame["y"], proba[:, 1]) > 0.75
    # without cutoffs there is nothing to hold out: raw LightGBM probabilities, still in [0, 1]
    raw = small(ChurnModel).fit(frame, frame["y"])
    assert raw.calibrator_ is None
    assert ((raw.predict_proba(frame) >= 0) & (raw.predict_proba(frame) <= 1)).all()


def test_single_class_label_is_a_clear_error(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="single class"):
        small(PropensityModel).fit(frame, np.zeros(len(frame), dtype=int))


def test_hurdle_needs_buyers_and_non_buyers(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="both buyers and non-buyers"):
        small(HurdleCLVModel).fit(frame, np.zeros(len(frame)))


def test_hurdle_value_is_probability_times_spend(frame: pd.DataFrame) -> None:
    model = small(HurdleCLVModel).fit(frame, frame["value"], cutoff=frame["cutoff"])
    p, spend = model.predict_parts(frame)
    assert ((p >= 0) & (p <= 1)).all() and (spend > 0).all()
    np.testing.assert_allclose(model.predict(frame), p * spend)
    assert np.corrcoef(model.predict(frame), frame["value"])[0, 1] > 0.3


def test_only_the_declared_features_are_used(frame: pd.DataFrame) -> None:
    model = small(ChurnModel).fit(frame.assign(extra=1.0), frame["y"])
    assert model.feature_names_in_.tolist() == FEATURES and model.n_features_in_ == 3
    with pytest.raises(ValueError, match=r"lacks columns \['noise'\]"):
        model.predict_proba(frame.drop(columns="noise"))


def test_encoder_maps_unseen_categories_to_missing(frame: pd.DataFrame) -> None:
    enc = FrameEncoder.fit(frame, FEATURES)
    assert enc.categories == {"channel": ["a", "b", "c"]}
    new = pd.DataFrame({"signal": [0.1, 0.2, 0.3], "noise": [0.0, 0.0, 0.0], "channel": ["b", "zzz", None]})
    X = enc.transform(new)
    assert X[0, 2] == 1.0
    assert np.isnan(X[1, 2]) and np.isnan(X[2, 2])
    assert enc.decode("channel", X[1, 2]) == "missing"
    model = small(ChurnModel).fit(frame, frame["y"], cutoff=frame["cutoff"])
    assert np.isfinite(model.predict_proba(new)[:, 1]).all()


def test_reasons_name_features_that_raise_the_score(frame: pd.DataFrame) -> None:
    model = small(ChurnModel).fit(frame, frame["y"], cutoff=frame["cutoff"])
    high = frame.nlargest(5, "signal")
    reasons = model.reasons(high, k=2)
    assert len(reasons) == 5
    assert all(0 < len(r) <= 2 for r in reasons)
    assert all(x.contribution > 0 and x.feature in FEATURES for r in reasons for x in r)
    assert reasons[0][0].feature == "signal"


def test_propensity_learns_one_model_per_category(frame: pd.DataFrame) -> None:
    targets = pd.DataFrame(
        {
            "label_cat_x": (frame["signal"] > 0.5).astype(int),  # learnable from `signal`
            "label_cat_rare": (np.arange(len(frame)) < 5).astype(int),  # too few positives to model
        }
    )
    model = small(PropensityModel).fit(frame[FEATURES], frame["y"], cutoff=frame["cutoff"], category_targets=targets)
    assert list(model.category_models_) == ["label_cat_x"]
    probs = model.predict_categories(frame[FEATURES])
    assert list(probs.columns) == ["label_cat_x"] and probs.shape == (len(frame), 1)
    assert roc_auc_score(targets["label_cat_x"], probs["label_cat_x"]) > 0.9
    # the overall model is unchanged by the category models
    plain = small(PropensityModel).fit(frame[FEATURES], frame["y"], cutoff=frame["cutoff"])
    np.testing.assert_array_equal(plain.predict_proba(frame[FEATURES]), model.predict_proba(frame[FEATURES]))


def test_category_models_share_the_encoding_and_learn_from_a_seeded_sample(frame: pd.DataFrame) -> None:
    targets = pd.DataFrame({"label_cat_x": (frame["signal"] > 0.5).astype(int)})
    X, y, cut = frame[FEATURES], frame["y"], frame["cutoff"]
    full = small(PropensityModel, category_max_rows=None).fit(X, y, cutoff=cut, category_targets=targets)
    sampled = small(PropensityModel, category_max_rows=600).fit(X, y, cutoff=cut, category_targets=targets)
    assert sampled.category_models_["label_cat_x"].encoder_ is sampled.encoder_  # encoded once
    p_full = full.predict_categories(X)["label_cat_x"]
    p_sampled = sampled.predict_categories(X)["label_cat_x"]
    assert not np.allclose(p_full, p_sampled)  # really fitted on other rows
    assert roc_auc_score(targets["label_cat_x"], p_sampled) > 0.9
    again = small(PropensityModel, category_max_rows=600).fit(X, y, cutoff=cut, category_targets=targets)
    np.testing.assert_array_equal(again.predict_categories(X)["label_cat_x"], p_sampled)
    # a cap above the row count is no cap; the main model never depends on it
    roomy = small(PropensityModel, category_max_rows=5000).fit(X, y, cutoff=cut, category_targets=targets)
    np.testing.assert_array_equal(roomy.predict_categories(X)["label_cat_x"], p_full)
    np.testing.assert_array_equal(sampled.predict_proba(X), full.predict_proba(X))
    assert clone(sampled).get_params()["category_max_rows"] == 600


def _depth(node: dict) -> int:
    return 0 if "leaf_index" in node else 1 + max(_depth(node["left_child"]), _depth(node["right_child"]))


def test_max_depth_bounds_every_tree_and_reasons_are_the_served_boosters_contributions(frame: pd.DataFrame) -> None:
    model = small(ChurnModel, max_depth=2, num_leaves=4).fit(frame, frame["y"], cutoff=frame["cutoff"])
    assert model.get_params()["max_depth"] == 2
    assert max(_depth(t["tree_structure"]) for t in model.booster_.dump_model()["tree_info"]) == 2
    rows = frame.head(60)
    X = model.encoder_.transform(rows)
    contrib = model.booster_.predict(X, pred_contrib=True)
    # TreeSHAP is exact for the served booster: contributions and bias add up to its raw score
    np.testing.assert_allclose(contrib.sum(axis=1), model.booster_.predict(X, raw_score=True), rtol=0, atol=1e-9)
    for reasons, c in zip(model.reasons(rows, k=2), contrib[:, :-1], strict=True):
        top = [j for j in np.argsort(-c, kind="stable")[:2] if c[j] > 0]
        assert [r.feature for r in reasons] == [FEATURES[j] for j in top]
        np.testing.assert_allclose([r.contribution for r in reasons], c[top], rtol=0, atol=1e-12)


def test_the_few_rows_path_encodes_like_the_column_path(frame: pd.DataFrame) -> None:
    """Serving encodes a few rows from one object block (SQLite values); batch scoring column by column."""
    data = frame[FEATURES].copy()
    data.loc[3, "channel"], data.loc[4, "channel"], data.loc[5, "signal"] = pd.NA, "unseen", np.nan
    enc = FrameEncoder.fit(frame, FEATURES)
    assert len(data) > 1000  # the column path (SMALL_FRAME)
    whole = enc.transform(data)
    values = data.astype(object).where(data.notna(), None).to_numpy()  # floats, str and None, as SQLite returns them
    pieces = [enc.transform(pd.DataFrame(values[i : i + 7], columns=FEATURES, dtype=object)) for i in range(0, 1200, 7)]
    np.testing.assert_array_equal(np.vstack(pieces), whole)
    assert np.isnan(whole[3, 2]) and np.isnan(whole[4, 2]) and np.isnan(whole[5, 0])
    with pytest.raises(ValueError, match=r"lacks columns \['noise'\]"):
        enc.transform(pd.DataFrame(values[:2, [0, 2]], columns=["signal", "channel"], dtype=object))
