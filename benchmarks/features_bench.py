"""Benchmark the feature store builder against a straightforward pandas baseline.

For each size (events): generate synthetic Parquet data (cached per size in the work dir), ingest
it, build the feature snapshot at N monthly cutoffs with the DuckDB engine, run the pandas baseline
on the same validated data and cutoffs, and check that both compute the same values. Every
measured phase runs in a fresh Python process, so phases do not share caches or memory; each
worker reports its own wall time and peak RSS (`ru_maxrss`, Python and imports included).

    .venv/bin/python benchmarks/features_bench.py --sizes 1000000,5000000 --cutoffs 12

Prints a table and writes JSON (default `benchmarks/results/features.json`). A failing phase is
reported in its row; the other sizes still run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "features.json"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "custops-features-bench"
EVENTS_PER_CUSTOMER = 20
# "Now" for ingest's future-timestamp check; fixed so reruns quarantine the same rows.
INGEST_AS_OF = dt.datetime(2026, 1, 1)
GOAL = {"events": 20_000_000, "cutoffs": 12, "wall_s": 30.0, "peak_rss_gb": 4.0, "speedup": 5.0}
GB = 1024**3


class PhaseError(RuntimeError):
    """A benchmark phase (a worker process) failed or timed out."""


# ---------------------------------------------------------------- workers (run in a fresh process)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _work_generate(spec: dict[str, Any]) -> dict[str, Any]:
    from custops.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        n_customers=spec["n_customers"],
        seed=spec["seed"],
        file_format="parquet",
        events_per_customer_target=EVENTS_PER_CUSTOMER,
    )
    started = time.perf_counter()
    result = generate(cfg, Path(spec["raw_dir"]))
    return {"wall_s": time.perf_counter() - started, "row_counts": result.row_counts}


def _work_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    from custops.data.ingest import ingest
    from custops.settings import Settings

    raw = Path(spec["raw_dir"])
    settings = Settings(home=Path(spec["home"]), as_of=INGEST_AS_OF)
    sources = {t: raw / f"{t}.parquet" for t in ("transactions", "interactions", "customers", "products")}
    started = time.perf_counter()
    report = ingest(sources, settings)
    return {
        "wall_s": time.perf_counter() - started,
        "rows_valid": {t: r.rows_valid for t, r in report.tables.items()},
        "rows_quarantined": {t: r.rows_quarantined for t, r in report.tables.items()},
        "validated_dir": str(settings.validated_dir),
    }


def _timed(timings: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name] += time.perf_counter() - started

    return wrapper


@contextlib.contextmanager
def _phase_timers(timings: dict[str, float]) -> Iterator[None]:
    """Time the builder's steps by wrapping the functions it calls (measurement only)."""
    from unittest import mock

    from custops.features import builder
    from custops.features.store import OfflineStore

    targets = [
        (builder, "file_sha256", "hash_sources"),
        (builder, "top_categories", "top_categories"),
        (builder, "build_expression", "build_expression"),
        (OfflineStore, "write", "store_write"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, attr, name in targets:
            if hasattr(owner, attr):
                stack.enter_context(mock.patch.object(owner, attr, _timed(timings, name, getattr(owner, attr))))
        yield


def _work_engine(spec: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    from custops.features.builder import build_snapshot, connect
    from custops.features.store import OfflineStore
    from custops.settings import FeatureSettings

    fs = FeatureSettings(n_cutoffs=len(spec["cutoffs"]))
    timings: dict[str, float] = defaultdict(float)
    con = connect("duckdb", threads=spec.get("threads"), memory_limit=spec.get("memory_limit"))
    store = OfflineStore(Path(spec["store_dir"]))
    with _phase_timers(timings):
        started, cpu_started = time.perf_counter(), time.process_time()
        snap = build_snapshot(Path(spec["validated_dir"]), store, fs, cutoffs=spec["cutoffs"], con=con)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # Phases that add up to the wall time: the store's write runs the batches, and the first
    # batch's build_expression (later batches replay its queries) computes the grains.
    write, first = timings.get("store_write", 0.0), timings.get("build_expression", 0.0)
    phases = {"setup": wall - write, "grains_and_first_plan": first, "batches_and_write": write - first}
    return {
        "wall_s": wall,
        "cpu_s": cpu,  # every thread of the process (DuckDB's, the writer's, the lookups')
        "phases_s": phases,
        # within setup; and the sources' hashes, on a thread beside it
        "phase_parts_s": {
            "top_categories": timings.get("top_categories", 0.0),
            "hash_sources": timings.get("hash_sources", 0.0),
        },
        "rows": snap.manifest["rows"],
        "n_features": len(snap.manifest["features"]),
        "n_labels": len(snap.manifest["labels"]),
        "cutoffs": snap.manifest["cutoffs"],
        "observed_until": str(pd.Timestamp(snap.manifest["observed_until"])),
        "features_path": str(snap.features_path),
    }


def _work_spark(spec: dict[str, Any]) -> dict[str, Any]:
    """The same build on Spark (`local[N]` by default); CPU time includes the JVM (a child process)."""
    import psutil

    from custops.features.builder import build_snapshot
    from custops.features.store import OfflineStore
    from custops.settings import FeatureSettings, SparkSettings
    from custops.spark import get_session

    ss = SparkSettings(master=spec["master"], shuffle_partitions=spec["shuffle_partitions"], driver_memory="4g")
    started = time.perf_counter()
    session = get_session(ss)
    session_s = time.perf_counter() - started
    fs = FeatureSettings(n_cutoffs=len(spec["cutoffs"]))
    started = time.perf_counter()
    snap = build_snapshot(
        Path(spec["validated_dir"]),
        OfflineStore(Path(spec["store_dir"])),
        fs,
        cutoffs=spec["cutoffs"],
        engine="spark",
        spark=ss,
    )
    wall = time.perf_counter() - started
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    jvm_rss = sum(p.memory_info().rss for p in procs[1:])
    session.stop()
    return {
        "wall_s": wall,
        "session_start_s": session_s,
        "cpu_s": cpu,
        "jvm_rss_bytes": jvm_rss,
        "rows": snap.manifest["rows"],
        "features_path": str(snap.features_path),
    }


def _work_engine_parity(spec: dict[str, Any]) -> dict[str, Any]:
    """Spark snapshot vs DuckDB snapshot: rows and every column (floats to 1e-9 relative)."""
    import duckdb
    import pyarrow.parquet as pq

    schema = pq.read_schema(spec["duckdb_path"])
    cols = [f for f in schema if f.name not in ("customer_id", "cutoff")]

    def differs(f: Any) -> str:
        a, b = f'a."{f.name}"', f'b."{f.name}"'
        if str(f.type) in ("double", "float"):
            tol = f"1e-9 * greatest(abs({a}), abs({b})) + 1e-12"
            return f"NOT ({a} IS NULL AND {b} IS NULL) AND ({a} IS NULL OR {b} IS NULL OR abs({a} - {b}) > {tol})"
        return f"{a} IS DISTINCT FROM {b}"

    sums = ", ".join(f'sum(CASE WHEN {differs(f)} THEN 1 ELSE 0 END) AS "{f.name}"' for f in cols)
    with duckdb.connect() as db:
        join = "read_parquet(?) a JOIN read_parquet(?) b USING (customer_id, cutoff)"
        query = f"SELECT count(*) AS matched, {sums} FROM {join}"
        counts = db.execute(query, [spec["duckdb_path"], spec["spark_path"]]).df().iloc[0]
        n_a = db.execute("SELECT count(*) FROM read_parquet(?)", [spec["duckdb_path"]]).fetchone()[0]
        n_b = db.execute("SELECT count(*) FROM read_parquet(?)", [spec["spark_path"]]).fetchone()[0]
    bad = {c: int(v) for c, v in counts.drop("matched").items() if v}
    ok = not bad and n_a == n_b == int(counts["matched"])
    return {"ok": ok, "rows": [int(n_a), int(n_b), int(counts["matched"])], "mismatched_columns": bad}


def _work_pandas(spec: dict[str, Any]) -> dict[str, Any]:
    """The baseline computes every column of the engine's snapshot and writes it to Parquet: its time
    is compute + write, as the engine's build includes writing its snapshot (each part is kept)."""
    import pandas as pd
    from pandas_baseline import compute_features_pandas, write_features_pandas

    cutoffs = [pd.Timestamp(c) for c in spec["cutoffs"]]
    started, cpu_started = time.perf_counter(), time.process_time()
    df = compute_features_pandas(Path(spec["validated_dir"]), cutoffs, pd.Timestamp(spec["observed_until"]))
    compute_s, compute_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    write_features_pandas(df, spec["out_path"])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "compute_s": compute_s,
        "compute_cpu_s": compute_cpu_s,
        "write_s": wall - compute_s,
        "rows": len(df),
        "n_columns": len(df.columns) - 2,
    }


def _work_parity(spec: dict[str, Any]) -> dict[str, Any]:
    import duckdb
    import pyarrow.parquet as pq
    from pandas_baseline import check_parity

    cols = pq.read_schema(spec["pandas_path"]).names
    engine_cols = pq.read_schema(spec["engine_path"]).names  # all: a column the baseline lacks fails parity
    every = max(1, int(spec["every"]))
    where = f"WHERE hash(customer_id) % {every} = 0" if every > 1 else ""
    con = duckdb.connect()

    def load(path: str, columns: list[str]) -> Any:
        sel = ", ".join(f'"{c}"' for c in columns)
        return con.execute(f"SELECT {sel} FROM read_parquet(?) {where}", [path]).df()

    report = check_parity(load(spec["pandas_path"], cols), load(spec["engine_path"], engine_cols))
    out = report.to_dict()
    out["sampled_every"] = every
    return out


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "generate": _work_generate,
    "ingest": _work_ingest,
    "engine": _work_engine,
    "pandas": _work_pandas,
    "parity": _work_parity,
    "spark": _work_spark,
    "spark_parity": _work_engine_parity,
}


def _run_worker(phase: str, spec_path: Path, result_path: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = json.loads(spec_path.read_text())
    result = WORKERS[phase](spec)
    result["peak_rss_bytes"] = _peak_rss_bytes()
    result_path.write_text(json.dumps(result, default=str))
    return 0


# ---------------------------------------------------------------- orchestration (parent process)


def _run_phase(phase: str, spec: dict[str, Any], run_dir: Path, timeout: float) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its result, or PhaseError with the log's tail."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = run_dir / f"{phase}.spec.json", run_dir / f"{phase}.result.json"
    log_path = run_dir / f"{phase}.log"
    spec_path.write_text(json.dumps(spec, default=str))
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        phase,
        "--spec",
        str(spec_path),
        "--result",
        str(result_path),
    ]
    started = time.perf_counter()
    with log_path.open("w") as log:
        try:
            # cwd: DuckDB spills to `.tmp` in the working directory; keep that out of the repo.
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False, cwd=run_dir)
        except subprocess.TimeoutExpired as e:
            raise PhaseError(f"{phase} timed out after {timeout:.0f} s (log: {log_path})") from e
    if proc.returncode != 0 or not result_path.exists():
        tail = [ln for ln in log_path.read_text().strip().splitlines() if ln.strip()][-1:]
        raise PhaseError(f"{phase} failed (exit {proc.returncode}): {' '.join(tail)} (log: {log_path})")
    result = json.loads(result_path.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    return result


def _measure(
    phase: str,
    spec: dict[str, Any],
    run_dir: Path,
    args: argparse.Namespace,
    before: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run a measured phase `--repeat` times; the fastest run, with every wall time and the peak RSS.

    Other processes on the machine slow a run down but never speed it up, so the minimum is the
    least noisy estimate; the load average before each run is recorded to show the noise.
    """
    runs = []
    for _ in range(max(1, args.repeat)):
        if before is not None:
            before()
        load = os.getloadavg()[0]
        result = _run_phase(phase, spec, run_dir, args.timeout)
        runs.append(result | {"load_before": load})
    best = min(runs, key=lambda r: r["wall_s"])
    # Outputs on disk are the last run's (each run replaces them; all runs compute the same).
    outputs = {k: v for k, v in runs[-1].items() if k.endswith("_path")}
    return (
        best
        | outputs
        | {
            "walls_s": [r["wall_s"] for r in runs],
            "loads_before": [r["load_before"] for r in runs],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        }
    )


def _label(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit}"
    return str(n)


def _generator_hash() -> str:
    """Hash of the generator's source: cached data from an older generator is regenerated."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("custops.data.synthetic")
    assert spec is not None and spec.origin is not None
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def _generated(raw_dir: Path, n_customers: int, seed: int) -> dict[str, Any] | None:
    """Metadata of cached synthetic data of this config and generator version, if present."""
    meta_path, marker = raw_dir / "metadata.json", raw_dir / "generator.sha256"
    if not meta_path.exists() or not marker.exists() or marker.read_text() != _generator_hash():
        return None
    meta = json.loads(meta_path.read_text())
    cfg = meta.get("config", {})
    same = (
        cfg.get("n_customers"),
        cfg.get("seed"),
        cfg.get("file_format"),
        cfg.get("events_per_customer_target"),
    ) == (n_customers, seed, "parquet", EVENTS_PER_CUSTOMER)
    return meta if same else None


def _cutoffs(validated_dir: Path, n: int) -> tuple[list[str], str]:
    """The builder's default cutoffs (`n` month starts) and observed_until, from the data end."""
    import duckdb
    import pandas as pd

    from custops.features.engine import default_cutoffs

    ends = []
    for table in ("transactions", "interactions"):
        path = validated_dir / f"{table}.parquet"
        if path.exists():
            ends.append(duckdb.execute("SELECT max(timestamp) FROM read_parquet(?)", [str(path)]).fetchone()[0])
    data_end = pd.Timestamp(max(e for e in ends if e is not None))
    observed_until = data_end.normalize() + pd.Timedelta(days=1)
    return [str(c.date()) for c in default_cutoffs(data_end, n)], str(observed_until)


def _bench_size(size: int, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    label = _label(size)
    n_customers = max(1, size // EVENTS_PER_CUSTOMER)
    size_dir = Path(args.workdir) / f"events-{size}"
    raw_dir, home, runs = size_dir / "raw", size_dir / "home", size_dir / "runs"
    row: dict[str, Any] = {"size": size, "label": label, "customers": n_customers, "errors": {}}

    meta = _generated(raw_dir, n_customers, args.seed)
    if meta is None:
        say(f"[{label}] generating {n_customers:,} customers (~{size:,} events) ...")
        gen = _run_phase(
            "generate",
            {"n_customers": n_customers, "seed": args.seed, "raw_dir": str(raw_dir)},
            runs,
            args.timeout,
        )
        row["generate"] = {"wall_s": gen["wall_s"], "cached": False}
        (raw_dir / "generator.sha256").write_text(_generator_hash())
        meta = _generated(raw_dir, n_customers, args.seed)
        assert meta is not None
    else:
        row["generate"] = {"cached": True}
    counts = meta["row_counts"]
    row["raw_events"] = counts["transactions"] + counts["interactions"]

    ingest_cache = size_dir / "ingest.json"
    validated = home / "data" / "validated"
    reusable = row["generate"]["cached"] and ingest_cache.exists() and (validated / "ingest_report.json").exists()
    if args.reuse_ingest and reusable:
        ing = json.loads(ingest_cache.read_text()) | {"cached": True}
    else:
        say(f"[{label}] ingesting {row['raw_events']:,} raw event rows ...")
        ing = _run_phase("ingest", {"raw_dir": str(raw_dir), "home": str(home)}, runs, args.timeout)
        ingest_cache.write_text(json.dumps(ing))
        ing["cached"] = False
    row["ingest"] = ing
    valid = ing["rows_valid"]
    row["events"] = valid["transactions"] + valid.get("interactions", 0)
    row["customers"] = valid.get("customers", n_customers)

    cutoffs, observed_until = _cutoffs(validated, args.cutoffs)
    row["cutoffs"], row["observed_until"] = cutoffs, observed_until

    engine: dict[str, Any] | None = None
    store_dir = size_dir / "store"

    def clear_store() -> None:  # keep one snapshot per size on disk
        with contextlib.suppress(FileNotFoundError):
            for old in store_dir.iterdir():
                if old.is_dir():
                    _rmtree(old)

    say(f"[{label}] engine: {row['events']:,} events x {len(cutoffs)} cutoffs ...")
    try:
        engine = _measure(
            "engine",
            {
                "validated_dir": str(validated),
                "store_dir": str(store_dir),
                "cutoffs": cutoffs,
                "threads": args.threads,
                "memory_limit": args.memory_limit,
            },
            runs,
            args,
            before=clear_store,
        )
        if engine["observed_until"] != observed_until:
            row["errors"]["observed_until"] = f"engine {engine['observed_until']} != benchmark {observed_until}"
        row["engine"] = engine | {"events_per_s": row["events"] / engine["wall_s"]}
    except PhaseError as e:
        row["errors"]["engine"] = str(e)

    pandas_out = size_dir / "pandas_features.parquet"
    pandas_res: dict[str, Any] | None = None
    if args.skip_pandas_above is not None and size > args.skip_pandas_above:
        row["pandas"] = {"skipped": f"size > --skip-pandas-above {args.skip_pandas_above:,}"}
    else:
        say(f"[{label}] pandas baseline ...")
        try:
            pandas_res = _measure(
                "pandas",
                {
                    "validated_dir": str(validated),
                    "cutoffs": cutoffs,
                    "observed_until": observed_until,
                    "out_path": str(pandas_out),
                },
                runs,
                args,
            )
            row["pandas"] = pandas_res
        except PhaseError as e:
            row["errors"]["pandas"] = str(e)
    if engine and pandas_res:
        # Both write a snapshot of the same columns: the baseline's time includes its Parquet write as
        # the engine's does. Its compute alone against the whole build is kept too.
        row["speedup"] = pandas_res["wall_s"] / engine["wall_s"]
        row["speedup_compute_only"] = pandas_res["compute_s"] / engine["wall_s"]
        # CPU seconds: what other jobs on a shared machine do not inflate (wall time is what users wait for).
        row["cpu_ratio"] = pandas_res["cpu_s"] / engine["cpu_s"]
        every = max(1, math.ceil(n_customers / args.parity_sample))
        say(f"[{label}] parity check" + (f" (1 in {every} customers)" if every > 1 else "") + " ...")
        try:
            row["parity"] = _run_phase(
                "parity",
                {
                    "pandas_path": str(pandas_out),
                    "engine_path": engine["features_path"],
                    "every": every,
                },
                runs,
                args.timeout,
            )
        except PhaseError as e:
            row["errors"]["parity"] = str(e)
    _bench_spark(row, size, validated, cutoffs, size_dir, engine, args, say)
    return row


def _bench_spark(
    row: dict[str, Any],
    size: int,
    validated: Path,
    cutoffs: list[str],
    size_dir: Path,
    engine: dict[str, Any] | None,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> None:
    """The same build on Spark (`--spark-master`, default local[2]) and its parity with DuckDB's snapshot."""
    if args.no_spark:
        return
    if args.skip_spark_above is not None and size > args.skip_spark_above:
        row["spark"] = {"skipped": f"size > --skip-spark-above {args.skip_spark_above:,}"}
        return
    store_dir = size_dir / "spark-store"
    _rmtree(store_dir)
    say(f"[{row['label']}] spark {args.spark_master}: {row['events']:,} events x {len(cutoffs)} cutoffs ...")
    spec = {
        "validated_dir": str(validated),
        "store_dir": str(store_dir),
        "cutoffs": cutoffs,
        "master": args.spark_master,
        "shuffle_partitions": args.spark_shuffle_partitions,
    }
    timed_args = argparse.Namespace(**{**vars(args), "timeout": args.spark_timeout})
    try:
        spark = _measure("spark", spec, size_dir / "runs", timed_args, before=lambda: _rmtree(store_dir))
    except PhaseError as e:
        row["errors"]["spark"] = str(e)
        return
    row["spark"] = spark | {"events_per_s": row["events"] / spark["wall_s"]}
    if engine:
        row["spark_vs_duckdb"] = spark["wall_s"] / engine["wall_s"]
        try:
            row["spark_parity"] = _run_phase(
                "spark_parity",
                {"duckdb_path": engine["features_path"], "spark_path": spark["features_path"]},
                size_dir / "runs",
                args.timeout,
            )
        except PhaseError as e:
            row["errors"]["spark_parity"] = str(e)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _machine() -> dict[str, Any]:
    import duckdb
    import ibis
    import numpy as np
    import pandas as pd
    import psutil
    import pyarrow as pa

    import custops

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "ram_gb": round(psutil.virtual_memory().total / GB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "custops": custops.__version__,
            "duckdb": duckdb.__version__,
            "ibis": ibis.__version__,
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
            "numpy": np.__version__,
        },
    }


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="Feature build: DuckDB engine vs pandas baseline and Spark")
    for col in (
        "size",
        "customers",
        "events",
        "ingest s",
        "engine s",
        "engine CPU s",
        "events/s",
        "engine RSS GB",
        "pandas s",
        "pandas CPU s",
        "pandas RSS GB",
        "speed-up",
        "CPU ratio",
        "parity",
        "spark s",
        "spark CPU s",
        "spark/duckdb",
        "spark parity",
    ):
        t.add_column(col, justify="left" if col in ("size", "parity", "spark parity") else "right")
    for r in rows:
        eng, pdr, par = r.get("engine") or {}, r.get("pandas") or {}, r.get("parity")
        if par is not None:
            parity = "OK" if par["ok"] else "FAILED"
        elif "parity" in r["errors"]:
            parity = "error"
        else:
            parity = "-"
        errors = ", ".join(f"{k} error" for k in r["errors"])
        t.add_row(
            r["label"],
            f"{r['customers']:,}",
            f"{r.get('events', 0):,}",
            _fmt((r.get("ingest") or {}).get("wall_s"), ".1f"),
            _fmt(eng.get("wall_s"), ".1f") if eng else ("error" if "engine" in r["errors"] else "-"),
            _fmt(eng.get("cpu_s"), ".1f"),
            _fmt(eng.get("events_per_s"), ",.0f"),
            _fmt(eng["peak_rss_bytes"] / GB if eng else None, ".2f"),
            _fmt(pdr.get("wall_s"), ".1f") if "wall_s" in pdr else ("skipped" if pdr else "error"),
            _fmt(pdr.get("cpu_s"), ".1f"),
            _fmt(pdr["peak_rss_bytes"] / GB if "peak_rss_bytes" in pdr else None, ".2f"),
            _fmt(r.get("speedup"), ".1f") + ("x" if r.get("speedup") else ""),
            _fmt(r.get("cpu_ratio"), ".1f") + ("x" if r.get("cpu_ratio") else ""),
            parity + (f" ({errors})" if errors else ""),
            *_spark_cells(r),
        )
    return t


def _spark_cells(r: dict[str, Any]) -> list[str]:
    spk, par = r.get("spark") or {}, r.get("spark_parity")
    if "skipped" in spk:
        return ["skipped", "-", "-", "-"]
    if "spark" in r["errors"]:
        return ["error", "-", "-", "-"]
    if not spk:
        return ["-", "-", "-", "-"]
    parity = "-" if par is None else ("OK" if par["ok"] else f"FAILED {sorted(par['mismatched_columns'])[:3]}")
    ratio = r.get("spark_vs_duckdb")
    return [
        _fmt(spk["wall_s"], ".1f"),
        _fmt(spk["cpu_s"], ".1f"),
        _fmt(ratio, ".1f") + ("x" if ratio else ""),
        "error" if "spark_parity" in r["errors"] else parity,
    ]


def _goal_check(rows: list[dict[str, Any]], n_cutoffs: int) -> dict[str, Any] | None:
    row = next((r for r in rows if r["size"] == GOAL["events"]), None)
    if row is None or n_cutoffs != GOAL["cutoffs"]:
        return None
    eng = row.get("engine")
    check: dict[str, Any] = {"target": GOAL}
    if eng:
        check["wall_ok"] = eng["wall_s"] < GOAL["wall_s"]
        check["rss_ok"] = eng["peak_rss_bytes"] / GB < GOAL["peak_rss_gb"]
    if row.get("speedup") is not None:
        check["speedup_ok"] = row["speedup"] >= GOAL["speedup"]
    return check


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        default="1000000,5000000,20000000",
        help="comma-separated event counts (n_customers = events / 20)",
    )
    p.add_argument("--cutoffs", type=int, default=12, help="monthly cutoffs to build at")
    p.add_argument(
        "--skip-pandas-above",
        type=int,
        default=None,
        metavar="N",
        help="do not run the pandas baseline for sizes above N events",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="where data is generated (cached per size) and snapshots are written",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    p.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="DuckDB memory_limit, e.g. 8GB (default: DuckDB's, 80%% of RAM); above it DuckDB spills",
    )
    p.add_argument(
        "--parity-sample",
        type=int,
        default=250_000,
        metavar="CUSTOMERS",
        help="check parity on about this many customers (all when fewer)",
    )
    p.add_argument(
        "--reuse-ingest",
        action="store_true",
        help="reuse the validated layer of an earlier run (ingest time from that run)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of the engine and of the pandas baseline per size (the fastest is reported)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per phase")
    p.add_argument("--no-spark", action="store_true", help="do not run the Spark engine")
    p.add_argument("--spark-master", default="local[2]", help="Spark master for the Spark column")
    p.add_argument("--spark-shuffle-partitions", type=int, default=8, help="spark.sql.shuffle.partitions")
    p.add_argument(
        "--skip-spark-above", type=int, default=None, metavar="N", help="do not run Spark for sizes above N events"
    )
    p.add_argument("--spark-timeout", type=float, default=1800.0, help="seconds for one Spark build (then: error)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return _run_worker(args.worker, args.spec, args.result)

    from rich.console import Console

    from custops.io import write_json

    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the table
        console = Console(width=170)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {msg}")

    rows = []
    for size in sizes:
        try:
            row = _bench_size(size, args, say)
        except Exception as e:  # a broken size is a row in the table, not the end of the run
            row = {
                "size": size,
                "label": _label(size),
                "customers": size // EVENTS_PER_CUSTOMER,
                "errors": {"setup": f"{type(e).__name__}: {e}"},
            }
        for phase, err in row["errors"].items():
            console.print(f"[red]{row['label']} {phase}: {err}[/red]")
        if row.get("parity") and not row["parity"]["ok"]:
            console.print(f"[red]{row['label']} parity {row['parity']['summary']}[/red]")
            bad = [c for c in row["parity"]["columns"] if c["mismatches"]]
            for c in bad[:8]:
                console.print(f"  {c['name']}: e.g. {c['example']}")
        if row.get("engine"):
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in row["engine"]["phases_s"].items())
            say(f"[{row['label']}] engine phases: {phases}")
        rows.append(row)

    console.print(_table(rows))
    goal = _goal_check(rows, args.cutoffs)
    if goal:
        marks = {k: ("met" if v else "NOT met") for k, v in goal.items() if k.endswith("_ok")}
        console.print(
            f"Goal at 20M events x 12 cutoffs (<{GOAL['wall_s']:g} s, "
            f"<{GOAL['peak_rss_gb']:g} GB, >={GOAL['speedup']:g}x pandas): {marks}"
        )
    result = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": {
            "sizes": sizes,
            "cutoffs": args.cutoffs,
            "seed": args.seed,
            "events_per_customer_target": EVENTS_PER_CUSTOMER,
            "threads": args.threads,
            "memory_limit": args.memory_limit,
            "skip_pandas_above": args.skip_pandas_above,
            "spark": None
            if args.no_spark
            else {
                "master": args.spark_master,
                "shuffle_partitions": args.spark_shuffle_partitions,
                "skip_above": args.skip_spark_above,
            },
            "parity_sample": args.parity_sample,
            "repeat": args.repeat,
            "workdir": str(args.workdir),
        },
        "goal": goal,
        "results": rows,
        "total_wall_s": time.perf_counter() - started,
    }
    write_json(result, args.out)
    console.print(f"results written to {args.out}")
    failed = any(
        r["errors"]
        or (r.get("parity") and not r["parity"]["ok"])
        or (r.get("spark_parity") and not r["spark_parity"]["ok"])
        for r in rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
