"""API-key authentication: off by default, and when on every endpoint but the probes needs X-API-Key."""

from __future__ import annotations

import pytest

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
