"""Service parts without a server: request coalescing, the prediction log, and start-up without models."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custops.serving.batcher import MicroBatcher
from custops.serving.prediction_log import FrameInputs, PredictionLog, PredictionRecord, read_predictions


def test_coalesced_callers_each_get_a_result_covering_their_keys() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def fn(keys: list[str]) -> dict[str, str]:
        gate.wait(5)  # hold the first call so the others queue up behind it
        calls.append(keys)
        return {k: k.upper() for k in keys}

    batcher = MicroBatcher(fn, max_keys=100)
    futures = [batcher.submit([f"k{i}", "shared"]) for i in range(20)]
    gate.set()
    for i, f in enumerate(futures):
        result = f.result(5)
        assert result[f"k{i}"] == f"K{i}" and result["shared"] == "SHARED"
    assert len(calls) < 20 and all(len(c) == len(set(c)) for c in calls)  # coalesced, keys deduplicated
    batcher.close()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(["late"]).result(1)


def test_a_lone_request_does_not_wait_for_company() -> None:
    """The coalescing wait applies only while requests arrive together; one request alone runs at once."""
    batcher = MicroBatcher(lambda keys: list(keys), max_keys=100, max_wait_s=30.0)
    try:
        for i in range(3):
            assert batcher.submit([f"k{i}"]).result(5) == [f"k{i}"]  # a 30 s wait would time out here
    finally:
        batcher.close()


def test_frame_inputs_become_json_objects_with_nulls(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "n_orders": np.array([3, 0], dtype="int64"),
            "recency_days": [12.5, np.nan],
            "country": ["DE", None],
            "unused": [1, 2],
        }
    )
    inputs = FrameInputs(frame, ["n_orders", "recency_days", "country", "not_in_frame"])
    path = tmp_path / "predictions.sqlite"
    log = PredictionLog(path).start()
    log.append(
        [
            PredictionRecord(f"r{i}", "score", cid, "ok", None, {"churn": "1"}, {"p": 0.5}, inputs=inputs.row(i))
            for i, cid in enumerate(frame["customer_id"])
        ]
    )
    log.close()
    logged = read_predictions(path)
    assert [json.loads(v) for v in logged["inputs"]] == [
        {"n_orders": 3, "recency_days": 12.5, "country": "DE"},
        {"n_orders": 0, "recency_days": None, "country": None},
    ]


def test_a_failing_batch_fails_each_of_its_callers() -> None:
    def fn(keys: list[str]) -> None:
        raise ValueError(f"boom {len(keys)}")

    batcher = MicroBatcher(fn, max_keys=10)
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(["a"]).result(5)
    batcher.close()


def test_prediction_log_keeps_every_record_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "predictions.sqlite"
    log = PredictionLog(path, batch_size=50).start()

    def write(t: int) -> None:
        for i in range(500):
            log.append(
                [
                    PredictionRecord(
                        request_id=f"r{t}-{i}",
                        endpoint="score",
                        customer_id=f"C{i}",
                        status="ok",
                        snapshot_id="fs-x",
                        model_versions={"churn": "1"},
                        prediction={"p": i / 500},
                    )
                ]
            )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    log.close()
    df = read_predictions(path)
    assert len(df) == 2000 and df["request_id"].is_unique
    assert log.written == 2000
    log.close()  # idempotent


@pytest.mark.slow
def test_without_models_the_service_starts_unready_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custops.serving.schemas import ScoreRequest
    from custops.serving.service import CustopsService

    monkeypatch.setenv("CUSTOPS_HOME", str(tmp_path / ".custops"))
    monkeypatch.setenv("CUSTOPS_SERVING_LOG_DIR", str(tmp_path / "logs"))
    service = CustopsService.inner()  # the class itself, as a BentoML worker creates it
    try:
        assert service.models is None and "custops train" in (service.load_error or "")
        assert service.__is_ready__() is False
        meta = service.metadata()
        assert meta.ready is False and meta.load_error == service.load_error and meta.models == {}
        response = asyncio.run(service.score(ScoreRequest(customer_ids=["C1"])))
        assert response.status_code == 503
        assert "custops train" in json.loads(response.body)["error"]
    finally:
        service.shutdown()


def test_every_endpoint_documents_an_example() -> None:
    """The OpenAPI page shows a filled-in request and response for each of the service's own endpoints."""
    from custops.serving.service import CustopsService

    spec = CustopsService.openapi_spec.asdict()
    schemas = spec["components"]["schemas"]

    def example(part: dict) -> object:
        """The example of a requestBody content or of the 200 response (BentoML keys it 200, FastAPI "200")."""
        content = part.get(200) or part.get("200") or part
        schema = content.get("content", content)["application/json"]["schema"]
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema.get("example")

    for path in ("/score", "/score_features", "/recommend"):
        op = spec["paths"][path]["post"]
        assert example(op["requestBody"]["content"]), path
        assert example(op["responses"]), path
    assert example(spec["paths"]["/admin/reload"]["post"]["responses"])
    assert example(spec["paths"]["/metadata"]["get"]["responses"])
    score = example(spec["paths"]["/score"]["post"]["responses"])
    assert {"propensity_by_category", "churn_top_reasons"} <= set(score["items"][0])  # type: ignore[index]


def test_workers_default_to_one_per_available_core_at_most_four(monkeypatch: pytest.MonkeyPatch) -> None:
    from custops.serving import config

    for cores, expected in ((1, 1), (2, 2), (16, 4)):
        monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        monkeypatch.delenv("CUSTOPS_SERVING_WORKERS", raising=False)
        assert config.ServingSettings().workers == expected
    monkeypatch.setenv("CUSTOPS_SERVING_WORKERS", "3")
    assert config.ServingSettings().workers == 3


# ---------------------------------------------------------------- reload signal (every worker follows /admin/reload)


def test_a_reload_announced_by_one_worker_is_seen_once_by_each_other(tmp_path: Path) -> None:
    from custops.serving.reload_signal import ReloadSignal

    path = tmp_path / "reload"
    first, second = ReloadSignal(path), ReloadSignal(path)
    assert not first.poll() and not second.poll()  # nothing announced yet
    first.announce()
    assert not first.poll()  # the announcing worker has reloaded already
    assert second.poll() and not second.poll()  # once per announcement
    late = ReloadSignal(path)  # started after it: loaded the new models at start
    assert not late.poll()
    second.announce()
    assert first.poll() and late.poll() and not second.poll()


def test_the_follower_thread_reloads_on_an_announcement_and_stops(tmp_path: Path) -> None:
    from custops.serving.reload_signal import ReloadSignal

    path = tmp_path / "reload"
    reloads = threading.Semaphore(0)
    stop = threading.Event()
    thread = ReloadSignal(path).follow(reloads.release, stop, every=0.02)
    assert not reloads.acquire(timeout=0.2)  # no announcement: no reload
    ReloadSignal(path).announce()
    assert reloads.acquire(timeout=5)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_each_server_has_its_own_reload_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    from custops.serving.app import server_env
    from custops.serving.reload_signal import SERVER_ID_ENV, signal_path
    from custops.settings import Settings

    settings = Settings(home=Path("/tmp/custops-home-for-env"))
    one, two = server_env(settings)[SERVER_ID_ENV], server_env(settings)[SERVER_ID_ENV]
    assert one != two
    assert signal_path(one) != signal_path(two)
    monkeypatch.delenv(SERVER_ID_ENV, raising=False)
    assert signal_path() == signal_path(f"ppid{os.getppid()}")  # a bare `bentoml serve`: its workers' parent
