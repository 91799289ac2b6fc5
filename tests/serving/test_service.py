"""The service over real HTTP: each endpoint, equality with batch scoring, bad input, the prediction log."""

from __future__ import annotations

import json
import math
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from custops.features.store import OnlineStore
from custops.models.registry import CHAMPION, Registry
from custops.pipelines import scoring
from custops.serving.prediction_log import read_predictions
from custops.settings import Settings
from tests.serving.conftest import MAX_BATCH, MAX_K, Server

pytestmark = pytest.mark.slow

TASKS = ("churn", "clv", "propensity")


@pytest.fixture(scope="module")
def batch_scores(serving_settings: Settings) -> pd.DataFrame:
    return scoring.score(serving_settings)


@pytest.fixture(scope="module")
def sample_ids(batch_scores: pd.DataFrame) -> list[str]:
    """Buyers and prospects (no churn/CLV score), in a fixed mixed order."""
    prospects = batch_scores[batch_scores["lifecycle_stage"] == "prospect"]["customer_id"]
    buyers = batch_scores[batch_scores["lifecycle_stage"] != "prospect"]["customer_id"]
    assert len(prospects) >= 5
    return [*buyers.iloc[::97][:20], *prospects.iloc[:5]]


def _same(a: object, b: object) -> bool:
    """Equal, with floats to 1e-9 and NaN/NA/None as one missing value."""
    missing_a = a is None or a is pd.NA or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or b is pd.NA or (isinstance(b, float) and math.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    if isinstance(a, int | float | np.floating) and isinstance(b, int | float | np.floating):
        return abs(float(a) - float(b)) <= 1e-9
    return str(a) == str(b)


def assert_item_matches(item: dict, row: pd.Series, settings: Settings) -> None:
    fs = settings.features
    expected = {
        "customer_id": row["customer_id"],
        "status": row["status"],
        "churn_probability": row["churn_probability"],
        "risk_band": row["risk_band"],
        "clv": row[f"clv_{fs.value_horizon_days}d"],
        "purchase_propensity": row[f"purchase_propensity_{fs.propensity_horizon_days}d"],
        "rfm_segment": row["rfm_segment"],
        "value_tier": row["value_tier"],
        "lifecycle_stage": row["lifecycle_stage"],
        "snapshot_id": row["snapshot_id"],
    }
    for name, value in expected.items():
        assert _same(item[name], value), f"{row['customer_id']} {name}: served {item[name]!r}, batch {value!r}"
    reasons = item["churn_top_reasons"]
    served_text = "; ".join(f"{r['feature']} = {r['value']}" for r in reasons) if reasons else None
    assert _same(served_text, row["churn_top_reasons"]), (served_text, row["churn_top_reasons"])
    prefix = f"purchase_propensity_{fs.propensity_horizon_days}d_cat_"
    by_category = {c.removeprefix(prefix): row[c] for c in row.index if c.startswith(prefix)}
    assert by_category, "batch scores should carry per-category propensity columns"
    if row["status"] == "ok":
        assert set(item["propensity_by_category"]) == set(by_category)
        for category, value in by_category.items():
            assert _same(item["propensity_by_category"][category], value), category
    else:
        assert item["propensity_by_category"] is None
    assert pd.Timestamp(item["cutoff"]) == row["cutoff"]
    assert item["model_versions"] == {t: row[f"{t}_model_version"] for t in TASKS}
    assert item["clv_horizon_days"] == fs.value_horizon_days
    assert item["propensity_horizon_days"] == fs.propensity_horizon_days
    assert item["churn_horizon_days"] == fs.churn_horizon_days


# --------------------------------------------------------------------------------------- probes


def test_health_and_readiness_probes(client: httpx.Client) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200, path


def test_metadata_lists_models_versions_metrics_and_features(client: httpx.Client, serving_settings: Settings) -> None:
    r = client.get("/metadata")
    assert r.status_code == 200
    meta = r.json()
    registry = Registry(serving_settings)
    assert meta["ready"] and meta["load_error"] is None
    assert set(meta["models"]) == {*TASKS, "recommender"}
    for task, info in meta["models"].items():
        assert info["version"] == registry.alias_version(task, CHAMPION)
        assert "champion" in info["aliases"]
        assert info["name"] == registry.name(task)
    assert meta["models"]["churn"]["metrics"]["valid_roc_auc"] > 0.5
    assert "ndcg_at_10" in " ".join(meta["models"]["recommender"]["metrics"])
    online = OnlineStore(serving_settings.online_store_path).metadata()
    assert meta["feature_snapshot"]["snapshot_id"] == online["snapshot_id"]
    features = {f["name"]: f for f in meta["features"]}
    champions = scoring.load_champions(serving_settings)
    for champ in champions.values():
        assert set(champ.features) <= set(features)
    assert features["recency_days"]["type"] == "number" and features["recency_days"]["description"]
    assert features["country"]["type"] == "category" and features["country"]["categories"]
    assert meta["limits"] == {"max_batch": MAX_BATCH, "max_k": MAX_K}
    assert meta["horizons_days"]["clv"] == serving_settings.features.value_horizon_days
    assert meta["auth_required"] is False


# -------------------------------------------------------------------------------------- scoring


def test_score_equals_batch_scoring_for_the_same_snapshot(
    client: httpx.Client, serving_settings: Settings, sample_ids: list[str]
) -> None:
    ids = [*sample_ids, "NO-SUCH-CUSTOMER"]
    r = client.post("/score", json={"customer_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"]
    items = body["items"]
    expected = scoring.score(serving_settings, ids)
    assert [i["customer_id"] for i in items] == ids
    for item, (_, row) in zip(items, expected.iterrows(), strict=True):
        assert_item_matches(item, row, serving_settings)
    prospects = [i for i in items if i["lifecycle_stage"] == "prospect"]
    assert prospects and all(i["churn_probability"] is None and i["clv"] is None for i in prospects)
    assert all(i["purchase_propensity"] is not None for i in items if i["status"] == "ok")
    buyer = next(i for i in items if i["churn_probability"] is not None)
    for reason in buyer["churn_top_reasons"]:
        assert set(reason) == {"feature", "value", "contribution", "text"} and reason["contribution"] > 0
        assert reason["value"] in reason["text"] and "raises" in reason["text"]


def test_reasons_can_be_left_out(client: httpx.Client, sample_ids: list[str]) -> None:
    with_reasons = client.post("/score", json={"customer_ids": sample_ids[:5]}).json()["items"]
    r = client.post("/score", json={"customer_ids": sample_ids[:5], "include_reasons": False})
    assert r.status_code == 200, r.text
    for plain, full in zip(r.json()["items"], with_reasons, strict=True):
        assert plain["churn_top_reasons"] is None
        assert plain["churn_probability"] == full["churn_probability"]
        assert plain["propensity_by_category"] == full["propensity_by_category"]


def test_unknown_customer_is_a_not_found_item_and_duplicates_are_scored_once(
    client: httpx.Client, sample_ids: list[str]
) -> None:
    known = sample_ids[0]
    r = client.post("/score", json={"customer_ids": ["ghost-1", known, " ghost-1 ", known]})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [(i["customer_id"], i["status"]) for i in items] == [("ghost-1", "not_found"), (known, "ok")]
    ghost = items[0]
    assert ghost["churn_probability"] is None and ghost["purchase_propensity"] is None and ghost["snapshot_id"]


def test_concurrent_requests_get_their_own_customers(
    server: Server, batch_scores: pd.DataFrame, serving_settings: Settings
) -> None:
    """Requests coalesced into one model call still answer exactly their own ids, equal to batch scoring."""
    import asyncio

    ids = batch_scores["customer_id"].iloc[:120].tolist()
    groups = [ids[i : i + 3] for i in range(0, len(ids), 3)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/score", json={"customer_ids": g}) for g in groups))

    responses = asyncio.run(fire())
    expected = batch_scores.set_index("customer_id")
    for group, r in zip(groups, responses, strict=True):
        assert r.status_code == 200
        items = r.json()["items"]
        assert [i["customer_id"] for i in items] == group
        for item in items:
            row = expected.loc[item["customer_id"]]
            assert _same(item["churn_probability"], row["churn_probability"])
            assert _same(item["purchase_propensity"], row["purchase_propensity_30d"])


def _feature_rows(server_meta: dict, settings: Settings, ids: list[str]) -> list[dict]:
    """The online store's features of these customers as a caller would send them (JSON types)."""
    features = {f["name"]: f["type"] for f in server_meta["features"]}
    frame = OnlineStore(settings.online_store_path).get(ids)
    rows = []
    for cid in ids:
        rec = frame.loc[cid]
        row: dict = {"customer_id": cid}
        for name, kind in features.items():
            value = rec[name]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                row[name] = None
            else:
                row[name] = float(value) if kind == "number" else str(value)
        rows.append(row)
    return rows


def test_score_features_equals_scoring_the_stored_features(
    client: httpx.Client, serving_settings: Settings, sample_ids: list[str]
) -> None:
    ids = sample_ids[:10]
    rows = _feature_rows(client.get("/metadata").json(), serving_settings, ids)
    by_id = {i["customer_id"]: i for i in client.post("/score", json={"customer_ids": ids}).json()["items"]}
    r = client.post("/score_features", json={"rows": rows})
    assert r.status_code == 200, r.text
    for item in r.json()["items"]:
        stored = by_id[item["customer_id"]]
        for name in ("churn_probability", "clv", "purchase_propensity", "risk_band"):
            assert _same(item[name], stored[name]), name
        assert item["churn_top_reasons"] == stored["churn_top_reasons"]
        assert item["propensity_by_category"] == pytest.approx(stored["propensity_by_category"], abs=1e-12)
        assert item["model_versions"] == stored["model_versions"] and item["snapshot_id"] is None


def test_score_features_treats_missing_features_as_nan(client: httpx.Client, serving_settings: Settings) -> None:
    rows = [{"customer_id": "partial", "n_orders": 3, "recency_days": 40.0, "country": "DE"}, {}]
    r = client.post("/score_features", json={"rows": rows})
    assert r.status_code == 200, r.text
    partial, empty = r.json()["items"]
    champions = scoring.load_champions(serving_settings)
    columns = {c for champ in champions.values() for c in champ.features} | {"n_orders", *scoring.SEGMENT_COLUMNS}
    frame = pd.DataFrame([{c: rows[0].get(c, np.nan) for c in columns}] * 1)
    for c in ("country", "acquisition_channel", *scoring.SEGMENT_COLUMNS):
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    frame["customer_id"], frame["cutoff"] = "partial", pd.NaT
    local = scoring.score_rows(frame, champions, serving_settings).iloc[0]
    assert _same(partial["churn_probability"], local["churn_probability"])
    assert _same(partial["clv"], local["clv_365d"])
    assert partial["churn_probability"] is not None
    assert empty["customer_id"] is None and empty["churn_probability"] is None  # no n_orders: a prospect
    assert empty["purchase_propensity"] is not None


# ------------------------------------------------------------------------------- recommendations


def test_recommend_ranks_products_like_the_champion_recommender(
    client: httpx.Client, serving_settings: Settings, sample_ids: list[str]
) -> None:
    model = Registry(serving_settings).load("recommender", CHAMPION)
    cid = sample_ids[0]
    r = client.post("/recommend", json={"customer_id": cid, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["customer_id"] == cid and body["model_version"] == Registry(serving_settings).alias_version(
        "recommender", CHAMPION
    )
    expected = model.recommend(cid, 5)  # exclude_purchased=True is the default on both sides
    assert [p["product_id"] for p in body["items"]] == [e.product_id for e in expected]
    assert [p["rank"] for p in body["items"]] == [1, 2, 3, 4, 5]
    for served, local in zip(body["items"], expected, strict=True):
        assert _same(served["score"], local.score) and served["reason"] == local.reason
        assert served["reason_code"] == local.reason_code and served["category"] == local.category
    bought = model.recommend(cid, 5, exclude_purchased=False)
    r = client.post("/recommend", json={"customer_id": cid, "k": 5, "exclude_purchased": False})
    assert [p["product_id"] for p in r.json()["items"]] == [e.product_id for e in bought]


def test_recommend_category_filters(client: httpx.Client, sample_ids: list[str]) -> None:
    cid = sample_ids[1]
    r = client.post("/recommend", json={"customer_id": cid, "k": 8, "include_categories": ["books", "toys"]})
    assert r.status_code == 200, r.text
    assert r.json()["items"] and {p["category"] for p in r.json()["items"]} <= {"books", "toys"}
    r = client.post("/recommend", json={"customer_id": cid, "k": 8, "exclude_categories": ["books"]})
    assert "books" not in {p["category"] for p in r.json()["items"]}


def test_cold_start_customer_gets_the_popularity_fallback(client: httpx.Client) -> None:
    r = client.post("/recommend", json={"customer_id": "brand-new-customer", "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] is True and len(body["items"]) == 4
    assert {p["reason_code"] for p in body["items"]} <= {"popular", "segment_popular"}
    assert all(p["reason"].startswith("popular") for p in body["items"])


# ------------------------------------------------------------------------------------ bad input

BAD_REQUESTS = [
    # (path, body as JSON text, field the error names)
    ("/score", "{not json", "body"),
    ("/score", "", "customer_ids"),
    ("/score", '{"customer_ids": [1, 2]}', "customer_ids.0"),
    ("/score", '{"customer_ids": "C1"}', "customer_ids"),
    ("/score", '{"customer_ids": []}', "customer_ids"),
    ("/score", '{"customer_ids": ["  "]}', "customer_ids.0"),
    ("/score", json.dumps({"customer_ids": [f"C{i}" for i in range(MAX_BATCH + 1)]}), "CUSTOPS_SERVING_MAX_BATCH"),
    ("/score", '{"customer_ids": ["a"], "limit": 3}', "limit"),
    ("/score", "[1, 2]", "body"),
    ("/score_features", '{"rows": [{"recency_days": "12"}]}', "rows.0.recency_days"),
    ("/score_features", '{"rows": [{"n_orders": true}]}', "rows.0.n_orders"),
    ("/score_features", '{"rows": [{"country": 7}]}', "rows.0.country"),
    ("/score_features", '{"rows": [{"recency_dayz": 1}]}', "rows.0.recency_dayz"),
    ("/score_features", '{"rows": []}', "rows"),
    ("/score_features", json.dumps({"rows": [{}] * (MAX_BATCH + 1)}), "rows"),
    ("/recommend", '{"customer_id": "C1", "k": 0}', "k"),
    ("/recommend", json.dumps({"customer_id": "C1", "k": MAX_K + 1}), "k"),
    ("/recommend", '{"customer_id": "C1", "k": "5"}', "k"),
    ("/recommend", '{"customer_id": "C1", "k": 2.5}', "k"),
    ("/recommend", '{"customer_id": "C1", "exclude_purchased": "no"}', "exclude_purchased"),
    ("/recommend", '{"customer_id": "C1", "include_categories": ["bookz"]}', "include_categories.0"),
    ("/recommend", '{"customer_id": "C1", "include_categories": "books"}', "include_categories"),
    ("/recommend", '{"k": 3}', "customer_id"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_REQUESTS)
def test_bad_input_is_a_400_naming_the_field(client: httpx.Client, path: str, body: str, field: str) -> None:
    r = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"], r.json()


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "text/csv"])
def test_non_json_bodies_are_rejected_not_crashed_on(client: httpx.Client, content_type: str) -> None:
    r = client.post("/score", content=b"customer_ids=C1", headers={"Content-Type": content_type})
    assert r.status_code == 415 and "application/json" in r.json()["error"]


def test_unknown_path_and_wrong_method_are_4xx(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert 400 <= client.get("/score").status_code < 500


# ----------------------------------------------------------------------------------- operations


def test_every_prediction_is_logged(
    server: Server, client: httpx.Client, sample_ids: list[str], serving_settings: Settings
) -> None:
    ids = [*sample_ids[:4], "ghost-log"]
    body = client.post("/score", json={"customer_ids": ids}).json()
    rec = client.post("/recommend", json={"customer_id": ids[0], "k": 3}).json()
    sent = _feature_rows(client.get("/metadata").json(), serving_settings, ids[:2])
    sent[1] = {k: v for k, v in sent[1].items() if k in ("customer_id", "n_orders", "recency_days")}  # the rest missing
    features = client.post("/score_features", json={"rows": sent}).json()
    wanted = {body["request_id"], rec["request_id"], features["request_id"]}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the writer thread appends shortly after the response
        logged = read_predictions(server.log_db)
        logged = logged[logged["request_id"].isin(wanted)]
        if len(logged) == len(ids) + 1 + len(sent):
            break
        time.sleep(0.1)
    scores = logged[logged["endpoint"] == "score"].set_index("customer_id")
    assert list(scores.index) == ids
    assert scores.loc["ghost-log", "status"] == "not_found" and scores.loc["ghost-log", "inputs"] is None
    first = json.loads(scores.loc[ids[0], "prediction"])
    assert first == body["items"][0]
    assert json.loads(scores.loc[ids[0], "model_versions"]) == body["items"][0]["model_versions"]

    # Model inputs of every scored row, as the model read them (monitoring compares them with training).
    inputs_columns = scoring.model_inputs(scoring.load_champions(serving_settings))
    stored = OnlineStore(serving_settings.online_store_path).get(ids[:4])
    for cid in ids[:4]:
        inputs = json.loads(scores.loc[cid, "inputs"])
        assert list(inputs) == inputs_columns
        for name, value in inputs.items():
            assert _same(value, stored.loc[cid, name]), (cid, name, value)
    by_features = logged[logged["endpoint"] == "score_features"].set_index("customer_id")
    assert list(by_features.index) == ids[:2]
    full, partial = (json.loads(by_features.loc[c, "inputs"]) for c in ids[:2])
    assert full == json.loads(scores.loc[ids[0], "inputs"])
    assert list(partial) == inputs_columns and partial["recency_days"] == sent[1]["recency_days"]
    assert partial["country"] is None  # not sent: scored (and logged) as missing
    assert json.loads(by_features.loc[ids[0], "prediction"]) == features["items"][0]
    recs = logged[logged["endpoint"] == "recommend"]
    assert len(recs) == 1 and json.loads(recs["inputs"].iloc[0])["k"] == 3


def _answers(server: Server, requests: int = 24) -> list[tuple[str, str]]:
    """(churn version, loaded_at) answered on `requests` fresh connections: each worker loaded its
    models at its own time, so `loaded_at` tells the workers apart."""
    seen = []
    for _ in range(requests):
        with server.client() as c:  # a new connection each time: any worker may take it
            meta = c.get("/metadata").json()
            seen.append((meta["models"]["churn"]["version"], meta["loaded_at"]))
    return seen


def _every_worker_serves(server: Server, want: str, timeout: float = 15.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        versions = {v for v, _ in _answers(server)}
        if versions == {want} or time.monotonic() > deadline:
            return versions
        time.sleep(0.5)


def test_admin_reload_reaches_every_worker(multi_server: Server, serving_settings: Settings) -> None:
    registry = Registry(serving_settings)
    old = registry.alias_version("churn", CHAMPION)
    before = _answers(multi_server, requests=48)
    assert {v for v, _ in before} == {old}
    assert len({at for _, at in before}) == 2, "the requests did not reach both workers: the test could not tell"
    info = registry.version_info("churn", old)
    new = registry.register("churn", f"models:/{registry.name('churn')}/{old}", info["run_id"], {})
    registry.promote("churn", new, None)
    try:
        with multi_server.client() as c:  # one request: one worker reloads, the other follows it
            assert c.post("/admin/reload").json()["model_versions"]["churn"] == new
        assert _every_worker_serves(multi_server, new) == {new}
    finally:
        registry.rollback("churn")
        with multi_server.client() as c:
            c.post("/admin/reload")
    assert _every_worker_serves(multi_server, old) == {old}


def test_admin_reload_picks_up_a_new_champion(client: httpx.Client, serving_settings: Settings) -> None:
    registry = Registry(serving_settings)
    old = registry.alias_version("churn", CHAMPION)
    info = registry.version_info("churn", old)
    new = registry.register("churn", f"models:/{registry.name('churn')}/{old}", info["run_id"], {})
    registry.promote("churn", new, None)
    try:
        r = client.post("/admin/reload")
        assert r.status_code == 200 and r.json()["reloaded"] and r.json()["model_versions"]["churn"] == new
        assert client.get("/metadata").json()["models"]["churn"]["version"] == new
        item = client.post("/score", json={"customer_ids": ["ghost"]}).json()["items"][0]
        assert item["model_versions"]["churn"] == new
    finally:
        registry.rollback("churn")
        assert client.post("/admin/reload").json()["model_versions"]["churn"] == old
