"""BentoML service for CRM systems: scores, recommendations and model metadata over HTTP.

The service adapts requests to custops functions and holds no business logic: scores come from
`custops.pipelines.scoring.score_rows` with the same champions batch scoring loads
(`load_champions`), features from the online store, recommendations from the champion recommender.

Endpoints: POST /score, /score_features, /recommend, /admin/reload; GET /metadata, /healthz,
/livez, /readyz (the last three are BentoML's probes; /readyz answers 200 once the champions and
the online store are loaded). With an API key configured (env var CUSTOPS_API_KEY by default),
every path but the three probes needs the header X-API-Key.

Models load at start (so a restart picks up new champions) and on POST /admin/reload, which swaps
them in the worker that receives it; the server's other workers start the same reload within about a
second. If loading fails the server still starts: the probes and GET /metadata report the error, other
endpoints answer 503, and /readyz retries the load.

Concurrent /score requests are coalesced into one model call (`custops.serving.batcher`), and
every prediction is appended to a SQLite log off the request path (`custops.serving.prediction_log`),
flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import gc
import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any

import bentoml
import numpy as np
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from custops.errors import CustopsError, StoreError
from custops.features.store import OfflineStore, OnlineStore
from custops.models.datasets import TASKS
from custops.models.registry import CHAMPION, Registry
from custops.pipelines.scoring import (
    SEGMENT_COLUMNS,
    STATUS_NOT_FOUND,
    STATUS_OK,
    Champion,
    RowScores,
    load_champions,
    model_inputs,
    predict_rows,
)
from custops.serving.batcher import MicroBatcher
from custops.serving.config import ServingSettings
from custops.serving.prediction_log import FrameInputs, PredictionLog, PredictionRecord
from custops.serving.reload_signal import ReloadSignal, signal_path
from custops.serving.schemas import (
    FeatureInfo,
    ModelInfo,
    ReasonItem,
    RecommendedProduct,
    RecommendRequest,
    RecommendResponse,
    ReloadResponse,
    ScoreFeaturesRequest,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ServiceMetadata,
    check_known,
    check_max_items,
    feature_row_model,
    request_error,
)
from custops.settings import Settings, load_settings

log = logging.getLogger(__name__)

RECOMMENDER = "recommender"
FALLBACK_REASONS = frozenset({"popular", "segment_popular"})
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
RETRY_LOAD_SECONDS = 10.0

# GET routes live on a FastAPI app mounted at "/" (BentoML API methods are POST only).
http_app = FastAPI(title="custops", docs_url=None, redoc_url=None, openapi_url=None)


# ---------------------------------------------------------------------------------------- loading


class StoreReader:
    """Online-store lookups that know which snapshot they read.

    `materialize` replaces the SQLite file atomically; a changed file (inode, mtime, size) makes
    the next read refresh the metadata and re-check the columns the champions need. Each thread
    keeps one read connection open (opening one per lookup costs more than the lookup), reopened
    when the file changes.
    """

    def __init__(self, store: OnlineStore, required: Sequence[str]):
        self.store = store
        self.required = list(required)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._meta: dict[str, str] = {}
        self._local = threading.local()
        self._timestamps: dict[str, pd.Timestamp] = {}

    def _connection(self, key: tuple[int, int, int]) -> Any:
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == key:
            return held[1]
        if held is not None:
            held[1].close()
        db = self.store.connect()
        self._local.held = (key, db)
        return db

    def _file_key(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.store.path)
        except FileNotFoundError:
            raise StoreError(
                f"online store {self.store.path} does not exist: run `custops features materialize`"
            ) from None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def metadata(self) -> dict[str, str]:
        """The store's metadata (snapshot id, cutoff, ...), refreshed when the file changed."""
        key = self._file_key()
        with self._lock:
            if key != self._key:
                meta = self.store.metadata()
                columns = set(json.loads(meta.get("columns", "[]")))
                lacking = [c for c in self.required if c not in columns]
                if lacking:
                    raise StoreError(
                        f"online store {self.store.path} (snapshot {meta.get('snapshot_id')}) lacks "
                        f"{len(lacking)} column(s) the champions read ({', '.join(lacking[:5])}): materialize the "
                        "snapshot the champions were trained on, or retrain (`custops train all`)"
                    )
                self._key, self._meta = key, meta
            return self._meta

    def read(self, customer_ids: Sequence[str]) -> tuple[pd.DataFrame, dict[str, str]]:
        """Feature rows (a `customer_id` column, `cutoff` as a timestamp) and the metadata they came with."""
        for _ in range(3):
            meta = self.metadata()
            key = self._key
            assert key is not None
            columns, records = self.store.fetch(customer_ids, db=self._connection(key))
            if self._file_key() == key:  # not re-materialized while reading
                break
        if not records:
            return pd.DataFrame(columns=["customer_id", "cutoff"]), meta
        # One object block, values as SQLite gives them (float, int, str, None): the models' encoders
        # convert them anyway. Per-column type inference (~0.4 ms), or a datetime64 `cutoff` column
        # (~0.6 ms: it splits the block), would cost several times the lookup.
        values = np.empty((len(records), len(columns)), dtype=object)
        values[:] = records
        at = columns.index("cutoff")
        values[:, at] = [self._timestamp(v) for v in values[:, at]]  # SQLite keeps timestamps as ISO text
        return pd.DataFrame(values, columns=columns, dtype=object), meta

    def _timestamp(self, text: str | None) -> pd.Timestamp | None:
        """`pd.Timestamp(text)`, remembered: an online store holds one cutoff (and a few at most)."""
        if text is None:
            return None
        parsed = self._timestamps.get(text)
        if parsed is None:
            if len(self._timestamps) > 1000:
                self._timestamps.clear()
            parsed = self._timestamps[text] = pd.Timestamp(text)
        return parsed


@dataclass(frozen=True)
class LoadedModels:
    """Everything one generation of the service answers with; replaced whole on reload."""

    settings: Settings
    champions: dict[str, Champion]
    recommender: Any | None
    recommender_version: str | None
    store: StoreReader
    models: dict[str, ModelInfo]
    features: list[FeatureInfo]
    feature_request: type[BaseModel]
    loaded_at: dt.datetime
    inputs: list[str]  # the model-input columns the prediction log records
    descriptions: dict[str, str]  # feature descriptions: the words of the churn reasons
    snapshot_id: str | None = None  # the online store's snapshot when loaded

    def generation(self) -> tuple[tuple[tuple[str, str], ...], str | None, str | None]:
        """What a reload would change: champion versions, recommender version, online snapshot."""
        return tuple(sorted(self.versions.items())), self.recommender_version, self.snapshot_id

    @property
    def versions(self) -> dict[str, str]:
        return {task: champ.version for task, champ in self.champions.items()}

    @classmethod
    def load(cls, settings: Settings) -> LoadedModels:
        """Champions, the champion recommender (optional), their registry records and the online store."""
        champions = load_champions(settings)
        registry = Registry(settings)
        recommender, rec_version = None, registry.alias_version(RECOMMENDER, CHAMPION)
        if rec_version is not None:
            recommender = registry.load(RECOMMENDER, CHAMPION)
        else:
            log.warning("no champion recommender: /recommend answers 503 (run `custops train recommender`)")
        versions = {task: c.version for task, c in champions.items()}
        if rec_version is not None:
            versions[RECOMMENDER] = rec_version
        models = {task: _model_info(registry, task, v) for task, v in versions.items()}

        required = ["customer_id", "cutoff", "n_orders", *SEGMENT_COLUMNS]
        required += [f for c in champions.values() for f in c.features if f not in required]
        store = StoreReader(OnlineStore(settings.online_store_path), required)
        meta = store.metadata()
        features = _feature_infos(settings, champions, meta.get("snapshot_id"))
        numeric = [f.name for f in features if f.type == "number"]
        categorical = [f.name for f in features if f.type == "category"]
        return cls(
            settings=settings,
            champions=champions,
            recommender=recommender,
            recommender_version=rec_version,
            store=store,
            models=models,
            features=features,
            feature_request=feature_row_model(numeric, categorical),
            loaded_at=dt.datetime.now(dt.UTC),
            inputs=model_inputs(champions),
            descriptions={f.name: f.description for f in features if f.description},
            snapshot_id=meta.get("snapshot_id"),
        )


def _freeze_heap() -> None:
    """Hide every object alive now (libraries, loaded models) from the cyclic garbage collector.

    Its full collections scan every tracked object, ~400k here before the first request; the ones the
    request garbage triggers took ~15% of a 100-customer /score (34 vs 40 ms CPU in-process, measured).
    Frozen objects are still freed by reference counting; the unfreeze-collect-freeze on each (re)load
    lets the cycles of models replaced by a reload be collected (one full collection: ~0.2 s).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def current_generation(settings: Settings) -> tuple[tuple[tuple[str, str], ...], str | None, str | None]:
    """`LoadedModels.generation()` as the registry and the online store say now (cheap: no model loads)."""
    registry = Registry(settings)
    champions = {task: registry.alias_version(task, CHAMPION) for task in TASKS}
    versions = tuple(sorted((t, str(v)) for t, v in champions.items() if v is not None))
    rec = registry.alias_version(RECOMMENDER, CHAMPION)
    store = OnlineStore(settings.online_store_path)
    snapshot = store.metadata().get("snapshot_id") if store.path.exists() else None
    return versions, (str(rec) if rec is not None else None), snapshot


def _model_info(registry: Registry, task: str, version: str) -> ModelInfo:
    info = registry.version_info(task, version)
    return ModelInfo(
        task=task,
        name=registry.name(task),
        version=info["version"],
        aliases=sorted(info["aliases"]),
        run_id=info["run_id"],
        trained_on_snapshot=info["snapshot_id"],
        metrics={k: float(v) for k, v in sorted(info["metrics"].items())},
    )


def _feature_infos(settings: Settings, champions: dict[str, Champion], snapshot_id: str | None) -> list[FeatureInfo]:
    """The features /score_features accepts: every champion's inputs plus what score_rows reads."""
    try:
        manifest = OfflineStore(settings.offline_store_dir).get(snapshot_id).manifest
        descriptions = {f["name"]: f.get("description", "") for f in manifest.get("features", [])}
    except StoreError:  # a serving host may carry the online store only
        descriptions = {}
    used_by: dict[str, list[str]] = {}
    categories: dict[str, list[str]] = {}
    for task, champ in champions.items():
        encoder = getattr(champ.model, "encoder_", None)
        for name in champ.features:
            used_by.setdefault(name, []).append(task)
            if encoder is not None and name in encoder.categories:
                categories[name] = list(encoder.categories[name])
    for name in ("n_orders", *SEGMENT_COLUMNS):  # read by score_rows even if no model uses them
        used_by.setdefault(name, [])
        if name in SEGMENT_COLUMNS:
            categories.setdefault(name, [])
    return [
        FeatureInfo(
            name=name,
            type="category" if name in categories else "number",
            categories=categories.get(name) or None,
            description=descriptions.get(name, ""),
            used_by=tasks,
        )
        for name, tasks in used_by.items()
    ]


# ------------------------------------------------------------------------------------- adaptation


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one coalesced batch of customer ids: items (and logged inputs) by customer id."""

    items: dict[str, ScoreItem]
    inputs: dict[str, Any]
    versions: dict[str, str]
    snapshot_id: str | None
    cutoff: dt.datetime | None


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _text(value: Any) -> str | None:
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else str(value)


def _time(value: Any) -> dt.datetime | None:
    return None if value is None or value is pd.NaT else pd.Timestamp(value).to_pydatetime()


def _score_items(
    rows: pd.DataFrame, scores: RowScores, settings: Settings, versions: dict[str, str], snapshot_id: str | None
) -> list[ScoreItem]:
    """One ScoreItem per row, validated: pydantic-core checks an item with three reasons in ~4 us, less
    than `model_construct`'s Python loop takes to skip the checks (~10 us)."""
    fs = settings.features
    churn, clv = scores.churn_probability.tolist(), scores.clv.tolist()
    propensity = scores.purchase_propensity.tolist()
    categories = {c: v.tolist() for c, v in scores.propensity_by_category.items()}
    # One object matrix (the store's frames are one object block: no copy) instead of a Series per column.
    block, position = rows.to_numpy(dtype=object), {c: i for i, c in enumerate(rows.columns)}
    segments = {c: block[:, position[c]].tolist() for c in SEGMENT_COLUMNS}
    ids, cutoffs = block[:, position["customer_id"]].tolist(), block[:, position["cutoff"]].tolist()
    items = []
    for i, reasons in enumerate(scores.churn_reasons):
        items.append(
            ScoreItem(
                customer_id=_text(ids[i]),
                status=STATUS_OK,
                cutoff=_time(cutoffs[i]),
                churn_probability=_number(churn[i]),
                risk_band=_text(scores.risk_band[i]),
                churn_horizon_days=fs.churn_horizon_days,
                clv=_number(clv[i]),
                clv_horizon_days=fs.value_horizon_days,
                purchase_propensity=_number(propensity[i]),
                propensity_by_category={c: _number(v[i]) for c, v in categories.items()},
                propensity_horizon_days=fs.propensity_horizon_days,
                **{c: _text(segments[c][i]) for c in SEGMENT_COLUMNS},
                churn_top_reasons=None
                if reasons is None
                else [
                    ReasonItem(feature=r.feature, value=r.value, contribution=r.contribution, text=r.text)
                    for r in reasons
                ],
                model_versions=versions,
                snapshot_id=snapshot_id,
            )
        )
    return items


def _not_found(customer_id: str, batch: ScoredBatch, settings: Settings) -> ScoreItem:
    fs = settings.features
    return ScoreItem.model_construct(
        customer_id=customer_id,
        status=STATUS_NOT_FOUND,
        cutoff=batch.cutoff,
        churn_horizon_days=fs.churn_horizon_days,
        clv_horizon_days=fs.value_horizon_days,
        propensity_horizon_days=fs.propensity_horizon_days,
        model_versions=batch.versions,
        snapshot_id=batch.snapshot_id,
        **dict.fromkeys(
            (
                "churn_probability",
                "risk_band",
                "clv",
                "purchase_propensity",
                "propensity_by_category",
                *SEGMENT_COLUMNS,
                "churn_top_reasons",
            )
        ),
    )


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=503)


def _request_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ service


@bentoml.asgi_app(http_app, path="/")
@bentoml.service(name="custops", workers=1, traffic={"timeout": 60})
class CustopsService:
    """Churn, CLV, propensity and segments by customer id or from supplied features; recommendations."""

    def __init__(self) -> None:
        self.settings = load_settings()
        self.serving = ServingSettings()
        self.models: LoadedModels | None = None
        self.load_error: str | None = None
        self._load_lock = threading.Lock()
        self._last_attempt = 0.0
        # Read before the first load: a reload announced while this worker loads is followed after it.
        self._reload_signal = ReloadSignal(signal_path())
        self._load()
        self.prediction_log: PredictionLog | None = None
        if self.serving.log_predictions:
            self.prediction_log = PredictionLog(self.serving.predictions_db(self.settings)).start()
        # One batcher per reasons choice: a batch is explained or not as a whole.
        self.batchers: dict[bool, MicroBatcher[ScoredBatch]] = {
            reasons: MicroBatcher(
                functools.partial(self._score_ids, reasons=reasons),
                max_keys=max(1000, self.serving.max_batch),
                max_wait_s=self.serving.coalesce_ms / 1000,
                name=f"score-batcher-{'reasons' if reasons else 'plain'}",
            )
            for reasons in (True, False)
        }
        self._stop_watch = threading.Event()
        if self.serving.watch_seconds > 0:
            threading.Thread(target=self._watch, name="champion-watch", daemon=True).start()
        # POST /admin/reload reaches one worker; it tells the others (`custops.serving.reload_signal`).
        self._reload_signal.follow(functools.partial(self._load, wait=True), self._stop_watch)

    # -- lifecycle --------------------------------------------------------------------------------

    def _load(self, wait: bool = False) -> bool:
        """(Re)load models and store; on failure keep what is loaded and remember the error.

        While another thread loads, returns False at once, or with `wait` loads after it (a reload
        another worker announced must read the registry as it is now, not as that load read it).
        """
        if not self._load_lock.acquire(blocking=wait):
            return False  # another thread is loading
        try:
            self._last_attempt = time.monotonic()
            started = time.perf_counter()
            self.models = LoadedModels.load(self.settings)
            self.load_error = None
            _freeze_heap()
            log.info(
                "loaded %s from %s in %.1fs",
                ", ".join(f"{t} v{v}" for t, v in self.models.versions.items()),
                self.settings.home,
                time.perf_counter() - started,
            )
            return True
        except CustopsError as e:
            self.load_error = str(e)
            log.error("models not loaded: %s", e)
            return False
        except Exception as e:  # a corrupt model or registry: stay up, unready, and say why
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("models not loaded")
            return False
        finally:
            self._load_lock.release()

    def _watch(self) -> None:
        """Hot reload: poll the registry aliases and the online store; swap in what changed.

        Each worker polls for itself, so every worker of a multi-worker server follows a promotion,
        a rollback or a `features materialize` within `watch_seconds` without a request.
        """
        while not self._stop_watch.wait(self.serving.watch_seconds):
            try:
                now = current_generation(self.settings)
                models = self.models
                if models is None or models.generation() != now:
                    log.info("registry or online store changed (%s): reloading", now)
                    self._load()
            except Exception:  # the registry briefly unreachable must not kill the watcher
                log.warning("champion watch: check failed; retrying in %ss", self.serving.watch_seconds, exc_info=True)

    def __is_ready__(self) -> bool:
        if self.models is None and time.monotonic() - self._last_attempt > RETRY_LOAD_SECONDS:
            self._load()
        return self.models is not None and self.models.store.store.path.exists()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Finish queued scoring and write every logged prediction before the worker exits."""
        gc.unfreeze()  # let the interpreter's exit see (and free) what `_freeze_heap` hid
        self._stop_watch.set()
        self._reload_signal.remove()
        for batcher in self.batchers.values():
            batcher.close()
        if self.prediction_log is not None:
            self.prediction_log.close()
            log.info("prediction log flushed (%d records this run)", self.prediction_log.written)

    def _not_ready(self) -> JSONResponse:
        return _unavailable(f"models not loaded: {self.load_error or 'loading'}")

    def _log(self, records: list[PredictionRecord]) -> None:
        if self.prediction_log is not None:
            self.prediction_log.append(records)

    # -- scoring ----------------------------------------------------------------------------------

    def _score_ids(self, customer_ids: list[str], *, reasons: bool = True) -> ScoredBatch:
        """One model call for a coalesced batch (runs in the batcher thread)."""
        models = self.models
        if models is None:
            raise StoreError(f"models not loaded: {self.load_error or 'loading'}")
        rows, meta = models.store.read(customer_ids)
        snapshot_id = meta.get("snapshot_id")
        items: dict[str, ScoreItem] = {}
        inputs: dict[str, Any] = {}
        if len(rows):
            scores = predict_rows(
                rows, models.champions, reasons_k=3 if reasons else 0, descriptions=models.descriptions
            )
            scored = _score_items(rows, scores, models.settings, models.versions, snapshot_id)
            logged = FrameInputs(rows, models.inputs)
            for i, item in enumerate(scored):
                items[str(item.customer_id)] = item
                inputs[str(item.customer_id)] = logged.row(i)
        cutoff = pd.Timestamp(meta["cutoff"]).to_pydatetime() if meta.get("cutoff") else None
        return ScoredBatch(items=items, inputs=inputs, versions=models.versions, snapshot_id=snapshot_id, cutoff=cutoff)

    @bentoml.api(route="/score")
    async def score(self, request: ScoreRequest, /) -> ScoreResponse:
        """Score customers by id from the online store; unknown ids come back with status `not_found`."""
        check_max_items(
            "ScoreRequest", "customer_ids", request.customer_ids, self.serving.max_batch, "CUSTOPS_SERVING_MAX_BATCH"
        )
        if self.models is None:
            return self._not_ready()  # type: ignore[return-value]
        ids = list(dict.fromkeys(request.customer_ids))
        try:
            batch = await asyncio.wrap_future(self.batchers[request.include_reasons].submit(ids))
        except StoreError as e:
            return _unavailable(str(e))  # type: ignore[return-value]
        items = [batch.items.get(c) or _not_found(c, batch, self.settings) for c in ids]
        response = ScoreResponse.model_construct(request_id=_request_id(), items=items)
        self._log(
            [
                PredictionRecord(
                    request_id=response.request_id,
                    endpoint="score",
                    customer_id=item.customer_id,
                    status=item.status,
                    snapshot_id=item.snapshot_id,
                    model_versions=item.model_versions,
                    prediction=item,
                    inputs=batch.inputs.get(c),
                )
                for c, item in zip(ids, items, strict=True)
            ]
        )
        return response

    @bentoml.api(route="/score_features")
    async def score_features(self, request: ScoreFeaturesRequest, /) -> ScoreResponse:
        """Score feature rows sent by the caller (schema: GET /metadata `features`); missing features are NaN."""
        check_max_items(
            "ScoreFeaturesRequest", "rows", request.rows, self.serving.max_batch, "CUSTOPS_SERVING_MAX_BATCH"
        )
        models = self.models
        if models is None:
            return self._not_ready()  # type: ignore[return-value]
        rows = models.feature_request.model_validate({"rows": request.rows}).rows  # type: ignore[attr-defined]
        items, inputs = await asyncio.to_thread(self._score_feature_rows, models, rows)
        response = ScoreResponse.model_construct(request_id=_request_id(), items=items)
        self._log(
            [
                PredictionRecord(
                    request_id=response.request_id,
                    endpoint="score_features",
                    customer_id=item.customer_id,
                    status=item.status,
                    snapshot_id=None,
                    model_versions=item.model_versions,
                    prediction=item,
                    inputs=inputs.row(i),
                )
                for i, item in enumerate(items)
            ]
        )
        return response

    @staticmethod
    def _score_feature_rows(models: LoadedModels, rows: list[BaseModel]) -> tuple[list[ScoreItem], FrameInputs]:
        columns = [f.name for f in models.features]
        frame = pd.DataFrame([row.model_dump() for row in rows], columns=["customer_id", *columns])
        for f in models.features:
            frame[f.name] = frame[f.name].astype(float if f.type == "number" else object)
        frame["cutoff"] = pd.NaT
        scores = predict_rows(frame, models.champions, descriptions=models.descriptions)
        items = _score_items(frame, scores, models.settings, models.versions, None)
        return items, FrameInputs(frame, models.inputs)

    # -- recommendations --------------------------------------------------------------------------

    @bentoml.api(route="/recommend")
    async def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        """Top-k products for a customer with reasons; unknown or new customers get the popularity fallback."""
        if request.k > self.serving.max_k:
            raise request_error(
                "RecommendRequest",
                ("k",),
                "less_than_equal",
                "k: at most {max_k} products per request, got {k} (server limit CUSTOPS_SERVING_MAX_K)",
                max_k=self.serving.max_k,
                k=request.k,
            )
        models = self.models
        if models is None:
            return self._not_ready()  # type: ignore[return-value]
        if models.recommender is None or models.recommender_version is None:
            return _unavailable("no champion recommender: run `custops train recommender`")  # type: ignore[return-value]
        rec = models.recommender
        known = set(rec.catalogue_.category_names)
        check_known("RecommendRequest", "include_categories", request.include_categories, known)
        check_known("RecommendRequest", "exclude_categories", request.exclude_categories, known)
        recs = rec.recommend(
            request.customer_id,
            request.k,
            exclude_purchased=request.exclude_purchased,
            include_categories=request.include_categories or None,  # [] means no filter, like null
            exclude_categories=request.exclude_categories or None,
            segment=request.segment,
        )
        response = RecommendResponse(
            request_id=_request_id(),
            customer_id=request.customer_id,
            model_version=models.recommender_version,
            fallback=bool(recs) and all(r.reason_code in FALLBACK_REASONS for r in recs),
            items=[RecommendedProduct(rank=i, **dataclasses.asdict(r)) for i, r in enumerate(recs, start=1)],
        )
        self._log(
            [
                PredictionRecord(
                    request_id=response.request_id,
                    endpoint="recommend",
                    customer_id=request.customer_id,
                    status="fallback" if response.fallback else STATUS_OK,
                    snapshot_id=None,
                    model_versions={RECOMMENDER: models.recommender_version},
                    prediction=[item.model_dump(mode="json") for item in response.items],
                    inputs=request.model_dump(exclude_none=True),
                )
            ]
        )
        return response

    # -- operations -------------------------------------------------------------------------------

    @bentoml.api(route="/admin/reload")
    def reload(self, ctx: bentoml.Context) -> ReloadResponse:
        """Reload champions and the online store now; the server's other workers start the same reload
        within about a second (`custops.serving.reload_signal`). On failure the old models stay."""
        reloaded = self._load()
        models = self.models
        if reloaded:
            self._reload_signal.announce()
        else:
            ctx.response.status_code = 503
        return ReloadResponse(
            reloaded=reloaded,
            model_versions=(models.versions | _rec_version(models)) if models else {},
            snapshot_id=models.store.metadata().get("snapshot_id") if models else None,
            error=None if reloaded else (self.load_error or "a reload is already running"),
        )

    @http_app.get("/metadata", response_model=ServiceMetadata)
    def metadata(self) -> ServiceMetadata:
        """Model names, versions, aliases and training metrics; feature schema; limits."""
        models = self.models
        store: dict[str, str] = {}
        if models is not None:
            try:
                store = {k: v for k, v in models.store.metadata().items() if k != "columns"}
            except StoreError as e:
                store = {"error": str(e)}
        fs = self.settings.features
        churn = models.champions["churn"].model if models else None
        return ServiceMetadata(
            service="custops",
            custops_version=package_version("custops"),
            ready=models is not None,
            load_error=self.load_error,
            loaded_at=models.loaded_at if models else None,
            models=models.models if models else {},
            feature_snapshot=store,
            features=models.features if models else [],
            horizons_days={
                "churn": fs.churn_horizon_days,
                "clv": fs.value_horizon_days,
                "propensity": fs.propensity_horizon_days,
            },
            risk_bands=tuple(churn.risk_bands) if churn is not None else None,
            limits={"max_batch": self.serving.max_batch, "max_k": self.serving.max_k},
            auth_required=self.serving.api_key() is not None,
        )


def _rec_version(models: LoadedModels) -> dict[str, str]:
    return {RECOMMENDER: models.recommender_version} if models.recommender_version else {}


class APIKeyMiddleware:
    """401 unless the request carries the configured key in X-API-Key (probes stay open)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = ServingSettings().api_key()
        self.key = key.encode() if key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
        if not hmac.compare_digest(supplied, self.key):
            reason = "invalid API key" if supplied else "missing API key"
            response = JSONResponse(
                {"error": f"{reason}: send the header X-API-Key"},
                status_code=401,
                headers={"WWW-Authenticate": "X-API-Key"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class JSONErrorsMiddleware:
    """Bad input never reaches a 500, and every 400 names its fields in one readable line.

    POST bodies must be JSON (415 otherwise: BentoML would try to parse other media types and fail
    with a 500). BentoML answers pydantic errors as `{"error": "1 validation error for X",
    "detail": [{"loc": [...], "msg": ...}]}`; the `error` line gets `loc: msg` for each detail.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"application/json")
        media_type = content_type.split(b";")[0].strip().lower()
        if media_type not in (b"application/json", b""):
            sent = media_type.decode(errors="replace")
            response = JSONResponse({"error": f"Content-Type {sent} is not supported: send application/json"}, 415)
            await response(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def send_readable(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message  # hold it until the body is rewritten
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _readable_error(b"".join(chunks))
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_readable)


def _readable_error(body: bytes) -> bytes:
    """`{"error": "1 validation error for X: loc: msg", "detail": [...]}` from BentoML's 400 body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML wraps InvalidArgument messages in a one-element list
    if isinstance(data, dict) and isinstance(data.get("detail"), list):
        parts = []
        for d in data["detail"]:
            loc = ".".join(str(p) for p in d.get("loc", ())) or "body"
            msg = str(d.get("msg", ""))
            parts.append(msg if msg.startswith(f"{loc}:") else f"{loc}: {msg}")
        data["error"] = f"{data.get('error', 'invalid request')}: {'; '.join(parts)}"
    return json.dumps(data).encode()


CustopsService.add_asgi_middleware(APIKeyMiddleware)
CustopsService.add_asgi_middleware(JSONErrorsMiddleware)
