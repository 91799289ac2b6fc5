"""Benchmark model training: wall time, peak memory and quality vs baselines per customer count.

For each size (customers): generate synthetic Parquet data, ingest it and build a feature snapshot
at N monthly cutoffs (each layer cached per size in the work dir, rebuilt when its inputs or the
code that makes it change), then train each of the four models in a fresh Python process: churn,
clv and propensity (`custops.pipelines.training.train_task`) and the recommender
(`custops.pipelines.recommender.train_recommender`). Every training gets its own home (its own
MLflow SQLite store, registry and audit log; the data and the snapshot are shared through
symlinks) and starts from an empty registry, so it measures a first training: fit, evaluation
against the baselines, MLflow logging, registration and the quality gate. Each worker reports its
wall time split into phases and its peak RSS (`ru_maxrss`, Python and imports included).

    .venv/bin/python benchmarks/training_bench.py --customers 10000,100000 --cutoffs 36

Prints a table and writes JSON (default `benchmarks/results/training.json`). A failing phase is
reported in its row; the other tasks and sizes still run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Shared with the feature benchmark (a sibling script, importable because this script's directory
# is on sys.path): machine info, labels, the ingest clock and the phase error.
from features_bench import GB, INGEST_AS_OF, PhaseError, _label, _machine, _peak_rss_bytes

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "training.json"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "custops-training-bench"
TASKS = ("churn", "clv", "propensity", "recommender")
GOAL = {"customers": 1_000_000, "wall_s": 600.0, "cores": 2}
RAW_TABLES = ("transactions", "interactions", "customers", "products")
PHASE_MARK = "benchmark phase:"
POLL_S = 0.5
MIN_AVAILABLE_GB = 0.75  # kill a worker when the machine's available memory falls below this

log = logging.getLogger("training_bench")


class PhaseKilled(PhaseError):
    """A worker was killed: by the benchmark (memory or time limit) or by a signal (the OOM killer)."""

    def __init__(self, message: str, *, phase: str | None, reason: str, after_s: float, rss_bytes: int):
        super().__init__(message)
        self.detail = {"phase": phase, "reason": reason, "after_s": after_s, "rss_bytes": rss_bytes}


# ---------------------------------------------------------------- workers (run in a fresh process)


class _PhaseClock:
    """Wall time per phase of one call tree, by wrapping the functions it calls (measurement only).

    `phases` are the outermost timed calls, so they never overlap and `wall - sum(phases)` is the
    untimed rest; calls made inside another timed call go to `detail` (e.g. BTYD fits inside the
    baselines, `log_model` inside the MLflow logging).
    """

    def __init__(self) -> None:
        self.phases: dict[str, float] = defaultdict(float)
        self.detail: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def wrap(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name(*args, **kwargs) if callable(name) else name
            outer = self._depth == 0
            if outer:  # in the worker's log: where a run that is killed (memory, timeout) was
                log.info("%s %s", PHASE_MARK, label)
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                (self.phases if outer else self.detail)[label] += time.perf_counter() - started
                self.calls[label] += 1

        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[Any, str, str | Callable[..., str]]]) -> Iterator[None]:
        from unittest import mock

        with contextlib.ExitStack() as stack:
            for owner, attr, name in targets:
                if hasattr(owner, attr):  # code that no longer has a step is not an error
                    stack.enter_context(mock.patch.object(owner, attr, self.wrap(name, getattr(owner, attr))))
            yield

    def report(self, wall: float) -> dict[str, Any]:
        phases = dict(self.phases)
        phases["other"] = wall - sum(phases.values())
        return {"phases_s": phases, "detail_s": dict(self.detail), "calls": dict(self.calls)}


def _work_generate(spec: dict[str, Any]) -> dict[str, Any]:
    from custops.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        n_customers=spec["n_customers"],
        seed=spec["seed"],
        file_format="parquet",
        events_per_customer_target=spec["events_per_customer"],
    )
    started = time.perf_counter()
    result = generate(cfg, Path(spec["raw_dir"]))
    return {"wall_s": time.perf_counter() - started, "row_counts": result.row_counts}


def _work_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    from custops.data.ingest import ingest
    from custops.settings import Settings

    raw = Path(spec["raw_dir"])
    settings = Settings(home=Path(spec["home"]), as_of=INGEST_AS_OF)
    started = time.perf_counter()
    report = ingest({t: raw / f"{t}.parquet" for t in RAW_TABLES}, settings)
    return {
        "wall_s": time.perf_counter() - started,
        "rows_valid": {t: r.rows_valid for t, r in report.tables.items()},
        "rows_quarantined": {t: r.rows_quarantined for t, r in report.tables.items()},
    }


def _work_features(spec: dict[str, Any]) -> dict[str, Any]:
    from custops.features.builder import build_snapshot, connect
    from custops.features.store import OfflineStore
    from custops.settings import FeatureSettings, Settings

    settings = Settings(home=Path(spec["home"]), features=FeatureSettings(n_cutoffs=spec["n_cutoffs"]))
    con = connect("duckdb", threads=spec.get("threads"), memory_limit=spec.get("memory_limit"))
    started = time.perf_counter()
    snap = build_snapshot(settings.validated_dir, OfflineStore(settings.offline_store_dir), settings.features, con=con)
    return {
        "wall_s": time.perf_counter() - started,
        "snapshot_id": snap.snapshot_id,
        "rows": snap.manifest["rows"],
        "n_features": len(snap.manifest["features"]),
        "cutoffs": [str(c)[:10] for c in snap.manifest["cutoffs"]],
        "observed_until": str(snap.manifest["observed_until"]),
    }


def _train_settings(spec: dict[str, Any]) -> Any:
    from custops.settings import ModelSettings, Settings

    home = Path(spec["home"])
    # Row caps: None keeps the setting's default, 0 means no cap (every row).
    caps = {k: spec.get(k) or None for k in ("max_train_rows", "category_max_rows") if spec.get(k) is not None}
    models = ModelSettings(
        tracking_uri=f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}",  # never a shared server
        num_threads=spec["num_threads"] or ModelSettings().num_threads,
        **caps,
    )
    return Settings(home=home, as_of=INGEST_AS_OF, models=models)


def _common_targets() -> list[tuple[Any, str, str | Callable[..., str]]]:
    """What both kinds of training call: the registry and MLflow's logging."""
    import mlflow
    import mlflow.sklearn

    from custops.models.registry import Registry

    return [
        (Registry, "__init__", "registry_open"),
        (Registry, "experiment_id", "registry_experiment"),
        (Registry, "register", "register"),
        (Registry, "promote", "promote"),
        (mlflow.sklearn, "log_model", "mlflow_log_model"),
        *((mlflow, f, "mlflow_log_other") for f in ("set_tags", "log_params", "log_metrics", "log_dict")),
        (mlflow, "log_artifacts", "mlflow_log_artifacts"),
    ]


def _work_train_task(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from custops.models import btyd, plots
    from custops.models.boosted import BinaryBoostedModel, HurdleCLVModel, PropensityModel
    from custops.pipelines import training

    task, settings = spec["task"], _train_settings(spec)
    clock = _PhaseClock()
    fitted: dict[str, int] = {}

    def model_fit(model: Any, X: Any, *args: Any, **kwargs: Any) -> str:
        if type(model) is BinaryBoostedModel and isinstance(X, np.ndarray):  # propensity's model per top category
            fitted["category_rows"] = len(X)
            return "category_models_fit"
        fitted["rows"], fitted["features"] = len(X), X.shape[1]
        return "model_fit"

    targets = [
        (training, "load_split", "load_frame"),
        (BinaryBoostedModel, "fit", model_fit),
        (PropensityModel, "_encode_fit", "encode"),  # propensity encodes once for all its models
        (BinaryBoostedModel, "_fit_encoded", model_fit),
        (HurdleCLVModel, "fit", model_fit),
        (training, "predict_scores", "model_predict"),
        (PropensityModel, "predict_categories", "category_models_predict"),
        (training, "evaluate_scores", "metrics"),
        (training, "baseline_scores", "baselines"),
        (btyd.BTYDModel, "fit", "btyd_fit"),
        (btyd.BTYDModel, "predict", "btyd_predict"),
        (training, "_tables", "evaluation_tables"),
        (training, "_log_run", "mlflow_log_run"),
        *((plots, f, "plots") for f in ("feature_importance", "calibration", "gain_chart", "decile_chart")),
        *_common_targets(),
    ]
    with clock.patched(targets):
        started, cpu = time.perf_counter(), time.process_time()
        result = training.train_task(settings, task, snapshot_id=spec["snapshot_id"])
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    served = None
    if task == "clv":  # the better of the two CLV models serves; the other is then listed as a baseline
        served = "btyd_bgnbd_gamma_gamma" if "lightgbm_hurdle" in result.baselines else "lightgbm_hurdle"
    return {
        "wall_s": wall,
        # CPU time of the process (all threads): what the run costs regardless of other load on the machine
        "cpu_s": cpu,
        **clock.report(wall),
        "train_rows_available": result.split.get("train_rows_available", result.split["train_rows"]),
        "train_rows": fitted.get("rows"),
        "category_train_rows": fitted.get("category_rows"),
        "n_features": fitted.get("features"),
        "valid_rows": result.split["valid_rows"],
        "train_cutoffs": len(result.split["train_cutoffs"]),
        "valid_cutoff": result.split["valid_cutoff"],
        "primary_metric": result.primary,
        "metrics": result.metrics,
        "baselines": result.baselines,
        "served_model": served,
        "grade": result.grade,
        "gate_passed": result.gate.passed,
        "gate_reason": result.gate.reason,
        "promoted": result.promoted,
    }


def _work_train_recommender(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from custops.models import metrics as M
    from custops.models.recommender import PopularityRecommender, Recommender
    from custops.pipelines import recommender as rec

    settings = _train_settings(spec)
    clock = _PhaseClock()
    fitted: dict[str, int] = {}

    def cf_fit(model: Any, transactions: Any, interactions: Any = None, *args: Any, **kwargs: Any) -> str:
        if kwargs.get("as_of") is None:  # the final refit on everything, after the backtest
            return "cf_refit_all"
        fitted["transactions"] = len(transactions)
        fitted["interactions"] = 0 if interactions is None else len(interactions)
        return "cf_fit_backtest"

    targets = [
        (pd, "read_parquet", "read_validated"),
        (rec, "_segments", "segments"),
        (rec, "time_split", "split"),
        (Recommender, "fit", cf_fit),
        (PopularityRecommender, "fit", "popularity_fit"),
        (rec, "evaluate_recommenders", "backtest_evaluate"),
        *_common_targets(),
    ]
    with clock.patched(targets):
        started, cpu = time.perf_counter(), time.process_time()
        result = rec.train_recommender(settings)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    best = max(b[rec.PRIMARY] for b in result.baselines.values())
    return {
        "wall_s": wall,
        # CPU time of the process (all threads): what the run costs regardless of other load on the machine
        "cpu_s": cpu,
        **clock.report(wall),
        # The events the backtested model learned from: purchase lines and interactions before the cutoff.
        "train_rows": fitted.get("transactions", 0) + fitted.get("interactions", 0),
        "train_transactions": fitted.get("transactions"),
        "train_interactions": fitted.get("interactions"),
        "valid_cutoff": result.split_cutoff,
        "valid_users": int(result.table["n_users"].iloc[0]),
        "primary_metric": rec.PRIMARY,
        "metrics": result.metrics,
        "baselines": result.baselines,
        "grade": M.grade(result.metrics[rec.PRIMARY], best),
        "gate_passed": result.gate.passed,
        "gate_reason": result.gate.reason,
        "promoted": result.promoted,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "features": _work_features,
    "train_task": _work_train_task,
    "train_recommender": _work_train_recommender,
}


def _run_worker(phase: str, spec_path: Path, result_path: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    result = WORKERS[phase](spec)
    result["worker_s"] = time.perf_counter() - started  # minus wall_s: the imports the phase needed
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result_path.write_text(json.dumps(result, default=str))
    return 0


# ---------------------------------------------------------------- orchestration (parent process)


def _run_phase(phase: str, name: str, spec: dict[str, Any], run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its result, or PhaseError with the log's tail.

    The worker is killed when it runs past `--timeout` or its RSS passes `--rss-limit-gb` (so a
    size that does not fit fails alone instead of waking the OOM killer on a shared machine); the
    error then names the phase it was in.
    """
    import psutil

    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = run_dir / f"{name}.spec.json", run_dir / f"{name}.result.json"
    log_path = run_dir / f"{name}.log"
    spec_path.write_text(json.dumps(spec, default=str))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", phase]
    cmd += ["--spec", str(spec_path), "--result", str(result_path)]
    limit = args.rss_limit_gb * GB
    load = os.getloadavg()[0]
    started = time.perf_counter()
    killed: tuple[str, str] | None = None  # (reason, message)
    max_rss = 0
    with log_path.open("w") as out:
        # cwd: DuckDB spills to `.tmp` in the working directory, and no custops.toml is read from there.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                max_rss = max(max_rss, watched.memory_info().rss)
            available = psutil.virtual_memory().available
            if max_rss > limit:
                killed = ("memory", f"RSS {max_rss / GB:.1f} GB passed --rss-limit-gb {args.rss_limit_gb:g}")
            elif available < MIN_AVAILABLE_GB * GB:  # other processes share the machine: leave them room
                killed = ("machine memory", f"{available / GB:.1f} GB of RAM left (RSS {max_rss / GB:.1f} GB)")
            elif time.perf_counter() - started > args.timeout:
                killed = ("timeout", f"timed out after {args.timeout:.0f} s")
            if killed:
                proc.kill()
                proc.wait()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=POLL_S)
    elapsed = time.perf_counter() - started
    text = log_path.read_text()
    if killed is None and proc.returncode is not None and proc.returncode < 0:  # e.g. SIGKILL from the OOM killer
        sig = -proc.returncode
        hint = " (SIGKILL: likely the kernel's OOM killer)" if sig == 9 else ""
        killed = (f"signal {sig}", f"signal {sig}{hint} at RSS {max_rss / GB:.1f} GB")
    if killed:
        marks = [ln.split(PHASE_MARK, 1)[1].strip() for ln in text.splitlines() if PHASE_MARK in ln]
        where = f" in phase {marks[-1]}" if marks else ""
        raise PhaseKilled(
            f"{name} killed after {elapsed:.0f} s{where}: {killed[1]} (log: {log_path})",
            phase=marks[-1] if marks else None,
            reason=killed[0],
            after_s=elapsed,
            rss_bytes=max_rss,
        )
    if proc.returncode != 0 or not result_path.exists():
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:]
        raise PhaseError(f"{name} failed (exit {proc.returncode}): {' '.join(tail)} (log: {log_path})")
    result = json.loads(result_path.read_text())
    return result | {"process_wall_s": elapsed, "load_before": load}


def _source_hash(*modules: str) -> str:
    """Hash of the source of these custops modules or packages: cached layers from older code are rebuilt."""
    import importlib.util

    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        if spec.submodule_search_locations:  # a package: every module in it
            paths = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.py"))
        else:
            paths = [Path(spec.origin)]
        for path in paths:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached_layer(
    path: Path,
    key: str,
    build: Callable[[], dict[str, Any]],
    exists: Callable[[dict[str, Any]], bool],
    rebuild: bool,
    reuse: bool = False,
) -> dict[str, Any]:
    """A layer's result from `path` when its key matches and its output exists; else build and record it."""
    if not rebuild and path.exists():
        cached = json.loads(path.read_text())
        if (cached.get("key") == key or reuse) and exists(cached["result"]):
            return cached["result"] | {"cached": True}
    path.unlink(missing_ok=True)
    result = build()
    path.write_text(json.dumps({"key": key, "result": result}, default=str))
    return result | {"cached": False}


def _prepare(size: int, size_dir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Generate, ingest and featurize one size (each layer cached); what each layer took and made."""
    import shutil

    from custops.features.store import OfflineStore

    label = _label(size)
    raw_dir, home, runs = size_dir / "raw", size_dir / "home", size_dir / "runs"
    epc = args.events_per_customer
    raw_key = _key(n=size, seed=args.seed, epc=epc, code=_source_hash("custops.data.synthetic", "custops.data.schema"))

    def generate() -> dict[str, Any]:
        say(f"[{label}] generating {size:,} customers ...")
        shutil.rmtree(raw_dir, ignore_errors=True)
        spec = {"n_customers": size, "seed": args.seed, "events_per_customer": epc, "raw_dir": str(raw_dir)}
        return _run_phase("generate", "generate", spec, runs, args)

    gen = _cached_layer(
        size_dir / "generate.json",
        raw_key,
        generate,
        lambda r: all((raw_dir / f"{t}.parquet").exists() for t in RAW_TABLES),
        args.rebuild,
        args.reuse_data,
    )
    ingest_key = _key(raw=raw_key, as_of=INGEST_AS_OF, code=_source_hash("custops.data"))

    def ingest() -> dict[str, Any]:
        say(f"[{label}] ingesting ...")
        shutil.rmtree(home / "data", ignore_errors=True)
        return _run_phase("ingest", "ingest", {"raw_dir": str(raw_dir), "home": str(home)}, runs, args)

    ing = _cached_layer(
        size_dir / "ingest.json",
        ingest_key,
        ingest,
        lambda r: (home / "data" / "validated" / "transactions.parquet").exists(),
        args.rebuild,
        args.reuse_data,
    )
    feat_key = _key(ingest=ingest_key, cutoffs=args.cutoffs, code=_source_hash("custops.features"))
    store = OfflineStore(home / "store" / "offline")

    def snapshot_exists(result: dict[str, Any]) -> bool:
        try:
            same = len(result["cutoffs"]) == args.cutoffs  # --reuse-data must not reuse another cutoff count
            return same and store.get(result["snapshot_id"]).snapshot_id == result["snapshot_id"]
        except Exception:
            return False

    def features() -> dict[str, Any]:
        say(f"[{label}] building the feature snapshot at {args.cutoffs} cutoffs ...")
        shutil.rmtree(home / "store", ignore_errors=True)  # one snapshot per size: the recommender reads the latest
        spec = {
            "home": str(home),
            "n_cutoffs": args.cutoffs,
            "threads": args.threads,
            "memory_limit": args.memory_limit,
        }
        return _run_phase("features", "features", spec, runs, args)

    feat = _cached_layer(size_dir / "features.json", feat_key, features, snapshot_exists, args.rebuild, args.reuse_data)
    return {"generate": gen, "ingest": ing, "features": feat, "home": str(home)}


def _task_home(size_dir: Path, data_home: Path, task: str) -> Path:
    """A fresh home for one training: its own MLflow store and registry, the shared data and store linked in."""
    import shutil

    home = size_dir / "train" / task
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    for sub in ("data", "store"):
        (home / sub).symlink_to((data_home / sub).resolve(), target_is_directory=True)
    return home


def _bench_size(size: int, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    label = _label(size)
    epc = "natural" if args.events_per_customer is None else f"{args.events_per_customer:g}"
    size_dir = Path(args.workdir) / f"customers-{size}-epc-{epc}-seed-{args.seed}"
    row: dict[str, Any] = {"customers": size, "label": label, "tasks": {}, "errors": {}}
    prep = _prepare(size, size_dir, args, say)
    row["prep"] = {k: v for k, v in prep.items() if k != "home"}
    counts = prep["ingest"]["rows_valid"]
    row["events"] = counts["transactions"] + counts.get("interactions", 0)
    feat = prep["features"]
    say(
        f"[{label}] data: {row['events']:,} valid events; snapshot {feat['snapshot_id']}: {feat['rows']:,} rows x "
        f"{feat['n_features']} features at {len(feat['cutoffs'])} cutoffs "
        f"({feat['cutoffs'][0]}..{feat['cutoffs'][-1]})"
    )
    for task in args.tasks:
        home = _task_home(size_dir, Path(prep["home"]), task)
        spec = {
            "task": task,
            "home": str(home),
            "snapshot_id": feat["snapshot_id"],
            "max_train_rows": args.max_train_rows,
            "category_max_rows": args.category_max_rows,
            "num_threads": args.num_threads,
        }
        phase = "train_recommender" if task == "recommender" else "train_task"
        say(f"[{label}] training {task} ...")
        try:
            res = _run_phase(phase, f"train-{task}", spec, size_dir / "runs", args)
        except PhaseError as e:
            row["errors"][task] = str(e)
            if isinstance(e, PhaseKilled):
                row.setdefault("killed", {})[task] = e.detail
            continue
        row["tasks"][task] = res
        top = sorted(((k, v) for k, v in res["phases_s"].items() if v >= 0.05), key=lambda kv: -kv[1])
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in top)
        say(f"[{label}] {task}: {res['wall_s']:.1f}s ({phases})")
    done = [t for t in TASKS if t in row["tasks"]]
    total = sum(row["tasks"][t]["wall_s"] for t in done)
    row["totals"] = {
        "tasks": done,
        "wall_s": total,
        "cpu_s": sum(row["tasks"][t].get("cpu_s", 0.0) for t in done),
        "process_wall_s": sum(row["tasks"][t]["process_wall_s"] for t in done),
        "peak_rss_bytes": max((row["tasks"][t]["peak_rss_bytes"] for t in done), default=None),
        "all_four": len(done) == len(TASKS),
        "within_goal": total < GOAL["wall_s"] if len(done) == len(TASKS) else None,
    }
    return row


# ---------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _best_baseline(res: dict[str, Any]) -> tuple[str, float] | None:
    primary = res["primary_metric"]
    scored = [(name, m[primary]) for name, m in res["baselines"].items() if not math.isnan(m.get(primary, math.nan))]
    return max(scored, key=lambda nv: nv[1]) if scored else None


def _effective(name: str, option: int | None) -> int | None:
    """The row cap a training used: the option (0 = none), else the setting's default."""
    from custops.settings import ModelSettings

    return getattr(ModelSettings(), name) if option is None else (option or None)


def _table(rows: list[dict[str, Any]], max_train_rows: int | None) -> Any:
    from rich.table import Table

    cap = f", max_train_rows {max_train_rows:,}" if max_train_rows else ", every training row"
    t = Table(title=f"Training: wall time, peak memory and quality vs baselines{cap}")
    columns = ("size", "task", "train rows", "wall s", "cpu s", "peak RSS GB", "metric", "model", "best baseline")
    numeric = ("train rows", "wall s", "cpu s", "peak RSS GB", "model")
    for col in (*columns, "grade", "gate"):
        t.add_column(col, justify="right" if col in numeric else "left")
    for r in rows:
        if "skipped" in r:
            t.add_row(r["label"], "-", *["-"] * 8, r["skipped"])
            continue
        if "setup" in r["errors"]:
            t.add_row(r["label"], "-", *["-"] * 8, "setup error")
            continue
        for task in TASKS:
            res = r["tasks"].get(task)
            if res is None:
                killed = r.get("killed", {}).get(task)
                if killed:
                    how = killed["reason"] if killed["reason"].startswith("signal") else "killed"
                    where = f"{how} in {killed['phase']}" if killed["phase"] else how
                    at = f"{killed['rss_bytes'] / GB:.2f}+"
                    after = f"{killed['after_s']:.0f}+"
                    t.add_row(r["label"], task, "-", after, "-", at, where, "-", "-", "-", "error")
                elif task in r["errors"]:
                    t.add_row(r["label"], task, *["-"] * 8, "error")
                continue
            rows_cell = f"{res['train_rows']:,}" if res.get("train_rows") is not None else "-"
            if res.get("train_rows_available") and res["train_rows_available"] > (res.get("train_rows") or 0):
                rows_cell += f" of {res['train_rows_available']:,}"
            best = _best_baseline(res)
            model_metric = res["metrics"][res["primary_metric"]]
            served = res.get("served_model")
            metric = res["primary_metric"] + (" (BTYD serves)" if served and served.startswith("btyd") else "")
            t.add_row(
                r["label"],
                task,
                rows_cell,
                _fmt(res["wall_s"], ".1f"),
                _fmt(res.get("cpu_s"), ".1f"),
                _fmt(res["peak_rss_bytes"] / GB, ".2f"),
                metric,
                _fmt(model_metric, ".4f"),
                f"{best[1]:.4f} {best[0]}" if best else "-",
                res["grade"],
                "passed" if res["gate_passed"] else "failed",
            )
        tot = r.get("totals") or {}
        if tot.get("tasks"):
            goal = ""
            if tot["all_four"]:
                goal = f"{'<' if tot['within_goal'] else '>='} {GOAL['wall_s']:g} s"
            t.add_row(
                r["label"],
                f"total ({len(tot['tasks'])})",
                "",
                _fmt(tot["wall_s"], ".1f"),
                _fmt(tot.get("cpu_s"), ".1f"),
                _fmt(tot["peak_rss_bytes"] / GB, ".2f"),
                "",
                "",
                "",
                "",
                goal,
                end_section=True,
            )
    return t


def _totals_line(r: dict[str, Any]) -> str:
    tot = r["totals"]
    n = len(tot["tasks"])
    line = f"{r['label']} customers: {n} training{'s' if n != 1 else ''} {tot['wall_s']:.1f} s in-process "
    line += f"({tot['process_wall_s']:.1f} s with interpreter start and imports; {tot.get('cpu_s', 0):.1f} s CPU)"
    if tot["all_four"]:
        verdict = "met" if tot["within_goal"] else "NOT met"
        line += f" vs the {GOAL['wall_s']:g} s goal for all four: {verdict}"
    else:
        line += f"; {', '.join(t for t in TASKS if t not in tot['tasks'])} missing, so no goal check"
    prep = r["prep"]
    parts = []
    for layer in ("generate", "ingest", "features"):
        p = prep[layer]
        parts.append(f"{layer} {p['wall_s']:.1f}s" + (" (cached)" if p["cached"] else ""))
    return line + f". Data: {', '.join(parts)}."


def _goal_check(rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, Any] | None:
    """The product goal, when this run trained the goal's size: met, not met, or why it cannot say."""
    row = next((r for r in rows if r["customers"] == GOAL["customers"] and "skipped" not in r), None)
    if row is None or set(tasks) != set(TASKS):
        return None
    tot = row.get("totals") or {"tasks": [], "wall_s": 0.0}
    missing = [t for t in TASKS if t not in tot["tasks"]]
    check: dict[str, Any] = {"target": GOAL, "wall_s": tot["wall_s"], "failed_tasks": missing}
    if not missing:
        check["met"] = tot["wall_s"] < GOAL["wall_s"]
        check["cpu_s"] = tot.get("cpu_s")
        cpu = f", {tot['cpu_s']:.0f} s CPU" if tot.get("cpu_s") else ""
        check["verdict"] = f"{'met' if check['met'] else 'NOT met'} ({tot['wall_s']:.0f} s wall{cpu})"
    else:
        check["met"] = False
        where = {t: (row.get("killed", {}).get(t) or {}).get("phase") for t in missing}
        failed = ", ".join(f"{t} ({'in ' + p if p else 'error'})" for t, p in where.items())
        check["verdict"] = f"NOT met: {failed} did not finish; the others took {tot['wall_s']:.0f} s"
    return check


def _machine_info() -> dict[str, Any]:
    from importlib.metadata import version

    info = _machine()
    for pkg in ("lightgbm", "scikit-learn", "mlflow", "lifetimes", "scipy"):
        with contextlib.suppress(Exception):
            info["versions"][pkg] = version(pkg)
    return info


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", default="10000,100000,1000000", help="comma-separated customer counts")
    p.add_argument("--skip-above", type=int, default=None, metavar="N", help="skip sizes above N customers")
    p.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated tasks to train (default all: {','.join(TASKS)}); the goal needs all four",
    )
    p.add_argument(
        "--cutoffs",
        type=int,
        default=36,
        help="monthly cutoffs of the snapshot (the product default; at least 27 give the 365-day CLV "
        "label two training cutoffs)",
    )
    p.add_argument(
        "--events-per-customer",
        type=float,
        default=20.0,
        help="generator knob events_per_customer_target (scales interactions; transactions stay "
        "~10.5 lines per customer); 0 for the generator's natural volume (~61 per customer)",
    )
    p.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        metavar="N",
        help="settings.models.max_train_rows: sample the boosted models' training rows down to N "
        "(default: the setting's default; 0: train on every row)",
    )
    p.add_argument(
        "--category-max-rows",
        type=int,
        default=None,
        metavar="N",
        help="settings.models.category_max_rows: rows for propensity's per-category models "
        "(default: the setting's default; 0: all training rows)",
    )
    p.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="settings.models.num_threads (LightGBM threads; default: the setting's default, 1)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="where data, snapshots and MLflow stores live (cached per size)",
    )
    p.add_argument("--rebuild", action="store_true", help="regenerate, re-ingest and rebuild features")
    p.add_argument(
        "--reuse-data",
        action="store_true",
        help="reuse cached data and snapshots even when the code that made them changed (the 1M snapshot "
        "takes ~9 min to build; only training is being measured)",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads for the feature build")
    p.add_argument("--memory-limit", default=None, metavar="SIZE", help="DuckDB memory_limit, e.g. 8GB")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per phase")
    p.add_argument(
        "--rss-limit-gb",
        type=float,
        default=None,
        help="kill a phase whose RSS passes this (default: 75%% of RAM)",
    )
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker:
        args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in args.tasks if t not in TASKS]
        if unknown:
            p.error(f"unknown task(s) {unknown}: choose from {', '.join(TASKS)}")
        if args.events_per_customer is not None and args.events_per_customer <= 0:
            args.events_per_customer = None
        if args.rss_limit_gb is None:
            import psutil

            args.rss_limit_gb = round(0.75 * psutil.virtual_memory().total / GB, 1)
        for name in ("max_train_rows", "category_max_rows"):
            value = getattr(args, name)
            if value is not None and 0 < value < 1000:
                p.error(f"--{name.replace('_', '-')} must be 0 (no cap) or at least 1000 (the setting's minimum)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return _run_worker(args.worker, args.spec, args.result)

    from rich.console import Console

    from custops.io import write_json

    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the table
        console = Console(width=170)
    sizes = [int(float(s)) for s in args.customers.split(",") if s.strip()]
    started = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {msg}")

    rows = []
    for size in sizes:
        if args.skip_above is not None and size > args.skip_above:
            rows.append({"customers": size, "label": _label(size), "skipped": f"> --skip-above {args.skip_above:,}"})
            continue
        try:
            row = _bench_size(size, args, say)
        except Exception as e:  # a broken size is a row in the table, not the end of the run
            error = {"setup": f"{type(e).__name__}: {e}"}
            row = {"customers": size, "label": _label(size), "tasks": {}, "errors": error}
        for phase, err in row["errors"].items():
            console.print(f"[red]{row['label']} {phase}: {err}[/red]")
        rows.append(row)

    console.print(_table(rows, _effective("max_train_rows", args.max_train_rows)))
    for r in rows:
        if r.get("totals", {}).get("tasks"):
            console.print(_totals_line(r))
    goal = _goal_check(rows, args.tasks)
    if goal is not None:
        console.print(f"Goal (all four models on 1M customers in < {GOAL['wall_s']:g} s, 2 cores): {goal['verdict']}")
    result = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine_info(),
        "config": {
            "customers": sizes,
            "skip_above": args.skip_above,
            "tasks": args.tasks,
            "cutoffs": args.cutoffs,
            "events_per_customer_target": args.events_per_customer,
            "max_train_rows": _effective("max_train_rows", args.max_train_rows),
            "category_max_rows": _effective("category_max_rows", args.category_max_rows),
            "num_threads": args.num_threads,
            "reuse_data": args.reuse_data,
            "seed": args.seed,
            "duckdb_threads": args.threads,
            "memory_limit": args.memory_limit,
            "rss_limit_gb": args.rss_limit_gb,
            "timeout_s": args.timeout,
            "workdir": str(args.workdir),
            "env_overrides": sorted(k for k in os.environ if k.startswith(("CUSTOPS_", "MLFLOW_"))),
        },
        "goal": goal,
        "results": rows,
        "total_wall_s": time.perf_counter() - started,
    }
    write_json(result, args.out)
    console.print(f"results written to {args.out}")
    return 1 if any(r.get("errors") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
