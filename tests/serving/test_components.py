"""Service parts without a server: request coalescing, the prediction log, and start-up without models."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from pathlib import Path

import pytest

from custops.serving.batcher import MicroBatcher
from custops.serving.prediction_log import PredictionLog, PredictionRecord, read_predictions


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
