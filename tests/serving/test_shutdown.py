"""Stopping the server under load loses no logged prediction (it stops the auth server; later users restart it)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from custops.serving.prediction_log import read_predictions
from tests.serving.conftest import API_KEY, Server

pytestmark = pytest.mark.slow


def test_shutdown_flushes_every_logged_prediction(auth_server: Server) -> None:
    before = len(read_predictions(auth_server.log_db)) if auth_server.log_db.exists() else 0

    async def fire() -> int:
        async with httpx.AsyncClient(base_url=auth_server.url, headers={"X-API-Key": API_KEY}, timeout=60) as c:
            bodies = [{"customer_ids": [f"C{j:06d}" for j in range(i, i + 10)] + ["ghost"]} for i in range(1, 801, 10)]
            responses = await asyncio.gather(*(c.post("/score", json=b) for b in bodies))
        assert {r.status_code for r in responses} == {200}
        return sum(len(r.json()["items"]) for r in responses)

    served = asyncio.run(fire())
    auth_server.stop()  # SIGTERM right away: records may still be queued in the writer
    assert auth_server.process is not None and auth_server.process.poll() is not None
    assert len(read_predictions(auth_server.log_db)) - before == served
