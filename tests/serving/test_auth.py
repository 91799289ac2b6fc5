"""API-key authentication: off by default, and when on every endpoint but the probes needs X-API-Key."""

from __future__ import annotations

import time

import pytest

from custops.models.registry import CHAMPION, Registry
from custops.settings import Settings
from tests.serving.conftest import API_KEY, Server

pytestmark = pytest.mark.slow


def test_without_a_key_configured_no_header_is_needed(server: Server) -> None:
    with server.client() as c:
        assert c.post("/score", json={"customer_ids": ["x"]}).status_code == 200
        assert c.get("/metadata").json()["auth_required"] is False


def test_requests_without_a_valid_key_get_401(auth_server: Server) -> None:
    for key in (None, "wrong-key"):
        with auth_server.client(key) as c:
            for method, path, body in (
                ("POST", "/score", {"customer_ids": ["x"]}),
                ("POST", "/recommend", {"customer_id": "x"}),
                ("POST", "/score_features", {"rows": [{}]}),
                ("POST", "/admin/reload", {}),
                ("GET", "/metadata", None),
            ):
                r = c.request(method, path, json=body)
                assert r.status_code == 401, (key, path, r.text)
                assert "X-API-Key" in r.json()["error"]


def test_the_right_key_is_let_through_and_probes_stay_open(auth_server: Server) -> None:
    with auth_server.client(API_KEY) as c:
        assert c.post("/score", json={"customer_ids": ["x"]}).status_code == 200
        assert c.get("/metadata").json()["auth_required"] is True
    with auth_server.client() as c:
        for path in ("/healthz", "/livez", "/readyz"):
            assert c.get(path).status_code == 200, path


def _churn_version_served(server: Server, want: str, timeout: float = 60.0) -> str:
    """Poll /metadata until the churn champion served is `want` (or the timeout passes); the last seen."""
    deadline, seen = time.monotonic() + timeout, ""
    with server.client(API_KEY) as c:
        while time.monotonic() < deadline:
            seen = c.get("/metadata").json()["models"]["churn"]["version"]
            if seen == want:
                break
            time.sleep(0.5)
    return seen


def test_hot_reload_follows_promotion_and_rollback_without_a_request(
    auth_server: Server, serving_settings: Settings
) -> None:
    registry = Registry(serving_settings)
    old = registry.alias_version("churn", CHAMPION)
    assert _churn_version_served(auth_server, old) == old
    info = registry.version_info("churn", old)
    new = registry.register("churn", f"models:/{registry.name('churn')}/{old}", info["run_id"], {})
    registry.promote("churn", new, None)
    try:
        assert _churn_version_served(auth_server, new) == new
        with auth_server.client(API_KEY) as c:
            item = c.post("/score", json={"customer_ids": ["ghost"]}).json()["items"][0]
        assert item["model_versions"]["churn"] == new
    finally:
        registry.rollback("churn")
    assert _churn_version_served(auth_server, old) == old
