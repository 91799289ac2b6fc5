"""Benchmark the HTTP service: load on loopback against a real server, next to the in-process floor.

Builds (or reuses) a trained home with N synthetic customers, starts the server the way
`custops serve` does (`custops.serving.app.start_server`), and runs each scenario with an async
httpx client, bounded by a request count and a time limit:

- `score_1`: POST /score with one random customer, open loop at `--rate` (and `--score-rates`) requests/s;
- `score_100`: POST /score with 100 random customers, closed loop with `--batch-concurrency` callers;
- `score_100_plain`: the same with `include_reasons: false` (no churn reasons: no LightGBM pred_contrib);
- `recommend`: POST /recommend (k=10) for one random customer, open loop at `--rate`.

Open loop means requests are sent on a fixed schedule whatever the answers (at most
`--max-in-flight` outstanding), so an overloaded server shows up as latency and a lower achieved
rate rather than as a politely slower client. Reported per scenario: achieved request rate,
throughput (requests and customers per second), p50/p95/p99/max latency and the error count
(non-200 answers, transport errors, or answers that do not match the in-process scores), the CPU
time per request of the server (all its processes, read from /proc) and of the load generator, and
the 1-minute load average when the scenario started. On a shared machine latency follows the
neighbours' load; the CPU columns much less so.

The in-process floor makes the same predictions without HTTP, one request's work at a time in one
thread: the service's `StoreReader.read` (one open connection, as the server keeps) + `predict_rows`
for the same batch sizes, and `Recommender.recommend`; it is reported as wall time and as CPU time per call
(`time.process_time`), the latter being what other processes on a shared machine do not inflate.
`ratio` is served p50 / floor p50. The load generator shares the machine with the server, so on a
small machine its CPU use lowers the served numbers.

Goal (product issue, 2 cores): `score_1` at 200 requests/s with p99 < 25 ms and no errors;
`score_100` p99 < 100 ms. The `goal` column says whether a row meets it.

    .venv/bin/python benchmarks/serving_bench.py --customers 5000 --rate 200 --duration 20 [--workers 1]

Prints a table and writes JSON (default `benchmarks/results/serving.json`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "serving.json"
DEFAULT_HOME = Path(tempfile.gettempdir()) / "custops-serving-bench" / ".custops"
AS_OF = "2026-01-01T00:00:00"

console = Console(stderr=True, width=200)
log = logging.getLogger("serving_bench")


@dataclass
class Result:
    """One scenario's load numbers."""

    scenario: str
    customers_per_request: int
    mode: str
    target_rate: float | None
    load_before: float | None = None  # 1-minute load average when the scenario started
    server_cpu_s: float | None = None  # CPU time of every server process during the scenario
    client_cpu_s: float | None = None  # CPU time of this process (the load generator) during the scenario
    sent: int = 0
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    error_examples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([math.nan])
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(
            achieved_rate=self.sent / self.elapsed_s if self.elapsed_s else math.nan,
            throughput_rps=self.ok / self.elapsed_s if self.elapsed_s else math.nan,
            customers_per_s=self.ok * self.customers_per_request / self.elapsed_s if self.elapsed_s else math.nan,
            p50_ms=float(np.percentile(lat, 50)),
            p95_ms=float(np.percentile(lat, 95)),
            p99_ms=float(np.percentile(lat, 99)),
            max_ms=float(np.max(lat)),
            server_cpu_ms_per_request=1000 * self.server_cpu_s / self.sent if self.server_cpu_s and self.sent else None,
            client_cpu_ms_per_request=1000 * self.client_cpu_s / self.sent if self.client_cpu_s and self.sent else None,
        )
        return out


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (the server's workers)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def metered(result: Result, server_pid: int | None, load: Awaitable[None]) -> None:
    """Run one scenario's load and record the CPU time the server and this process spent meanwhile."""
    with CPUMeter(server_pid) as cpu:
        await load
    result.server_cpu_s, result.client_cpu_s = cpu.server_s, cpu.client_s


class CPUMeter:
    """CPU time of the server's processes and of this one over a scenario: what a busy machine does not inflate
    (much), unlike latency."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid

    def __enter__(self) -> CPUMeter:
        self.pids = process_tree(self.server_pid) if self.server_pid else []
        self.server0, self.client0 = cpu_seconds(self.pids), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_s = cpu_seconds(self.pids) - self.server0 if self.pids else None
        self.client_s = time.process_time() - self.client0


# ------------------------------------------------------------------------------------- set-up


def bench_settings(home: Path) -> Any:
    from custops.settings import ModelSettings, Settings

    tracking = f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"
    return Settings(home=home, as_of=AS_OF, models=ModelSettings(tracking_uri=tracking))


def ensure_trained_home(home: Path, customers: int) -> Any:
    """A home with data, a snapshot, the online store and every champion (built once, then reused)."""
    from custops.errors import StoreError
    from custops.pipelines.scoring import load_champions

    settings = bench_settings(home)
    try:
        load_champions(settings)
        from custops.models.registry import Registry

        if Registry(settings).alias_version("recommender", "champion") is not None:
            console.print(f"reusing trained home {home}")
            return settings
    except StoreError:
        pass
    from custops.pipelines.features import run_feature_pipeline
    from custops.pipelines.recommender import train_recommender
    from custops.pipelines.training import train_all

    started = time.perf_counter()
    console.print(f"building {customers:,} customers into {home} ...")
    run_feature_pipeline(settings, generate_customers=customers)
    console.print("training churn, clv, propensity and the recommender ...")
    train_all(settings)
    train_recommender(settings)
    console.print(f"trained home ready in {time.perf_counter() - started:.0f}s")
    return settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------- load


async def _timed(
    result: Result, call: Callable[[], Awaitable[httpx.Response]], check: Callable[[httpx.Response], str | None]
) -> None:
    started = time.perf_counter()
    try:
        response = await call()
        problem = check(response)
    except httpx.HTTPError as e:
        problem = f"{type(e).__name__}: {e}"
    latency = (time.perf_counter() - started) * 1000
    if problem is None:
        result.ok += 1
        result.latencies_ms.append(latency)
    else:
        result.errors += 1
        if len(result.error_examples) < 5:
            result.error_examples.append(problem[:300])


async def open_loop(
    result: Result,
    make_call: Callable[[], Callable[[], Awaitable[httpx.Response]]],
    check: Callable[[httpx.Response], str | None],
    *,
    rate: float,
    duration: float,
    max_requests: int,
    max_in_flight: int,
) -> None:
    """Send on a fixed schedule (at most `max_in_flight` outstanding) for `duration` or `max_requests`."""
    gate = asyncio.Semaphore(max_in_flight)
    tasks: list[asyncio.Task[None]] = []

    async def one(call: Callable[[], Awaitable[httpx.Response]]) -> None:
        try:
            await _timed(result, call, check)
        finally:
            gate.release()

    start = time.perf_counter()
    for i in range(max_requests):
        due = start + i / rate
        if due - start > duration:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await gate.acquire()
        result.sent += 1
        tasks.append(asyncio.create_task(one(make_call())))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start


async def closed_loop(
    result: Result,
    make_call: Callable[[], Callable[[], Awaitable[httpx.Response]]],
    check: Callable[[httpx.Response], str | None],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
) -> None:
    """`concurrency` callers, each sending its next request when the previous one is answered."""
    start = time.perf_counter()

    async def caller() -> None:
        while result.sent < max_requests and time.perf_counter() - start < duration:
            result.sent += 1
            await _timed(result, make_call(), check)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start


def score_check(expected: dict[str, dict[str, float | None]]) -> Callable[[httpx.Response], str | None]:
    """200, one item per id, and the churn/propensity values of the in-process scores (to 1e-9)."""

    def check(response: httpx.Response) -> str | None:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        for item in response.json()["items"]:
            want = expected.get(item["customer_id"])
            if want is None:
                continue
            for name, value in want.items():
                got = item[name]
                if (got is None) != (value is None) or (got is not None and abs(got - value) > 1e-9):
                    return f"{item['customer_id']} {name}: served {got}, in-process {value}"
        return None

    return check


def ok_check(response: httpx.Response) -> str | None:
    return None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"


# ------------------------------------------------------------------------------ in-process floor


def in_process_floor(settings: Any, ids: list[str], repeats: int, rng: random.Random) -> dict[str, dict[str, float]]:
    """Per-request latency of the same work without HTTP, one request at a time.

    Features come through the service's own reader (`StoreReader`: one open connection, the object
    frame the server scores), so the floor is the server's scoring work minus HTTP and logging.
    """
    from custops.features.store import OnlineStore
    from custops.models.registry import Registry
    from custops.pipelines.scoring import load_champions, predict_rows
    from custops.serving.service import StoreReader

    champions = load_champions(settings)
    store = StoreReader(OnlineStore(settings.online_store_path), required=[])
    recommender = Registry(settings).load("recommender", "champion")

    def score(batch: list[str], reasons: bool) -> Any:
        rows, _ = store.read(batch)
        return predict_rows(rows, champions, reasons_k=3 if reasons else 0)

    floors = {}
    for name, size, reasons in (("score_1", 1, True), ("score_100", 100, True), ("score_100_plain", 100, False)):
        n = repeats if size == 1 else max(10, repeats // 10)
        batches = [rng.sample(ids, size) for _ in range(n)]
        floors[name] = _timed_calls(lambda b, r=reasons: score(b, r), batches, size)
    floors["recommend"] = _timed_calls(
        lambda c: recommender.recommend(c, 10), [rng.choice(ids) for _ in range(repeats)], 1
    )
    return floors


def _timed_calls(fn: Callable[[Any], Any], args: list[Any], size: int) -> dict[str, float]:
    """Wall and CPU time per call of `fn` over `args` (one warm-up call first)."""
    fn(args[0])
    wall, cpu = [], []
    for arg in args:
        t, c = time.perf_counter(), time.process_time()
        fn(arg)
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return {
        "calls": len(wall),
        "p50_ms": statistics.median(wall),
        "p99_ms": float(np.percentile(wall, 99)),
        "cpu_mean_ms": statistics.mean(cpu),
        "rps_one_thread": 1000 / statistics.mean(wall),
        "customers_per_s_one_thread": 1000 * size / statistics.mean(wall),
    }


# -------------------------------------------------------------------------------------------- run


async def run_load(
    url: str, ids: list[str], expected: dict[str, dict], args: argparse.Namespace, server_pid: int | None = None
) -> list[Result]:
    rng = random.Random(args.seed)
    # Idle connections expire before the server's keep-alive timeout (uvicorn: 5 s), or a request
    # may race the server closing its connection (a ReadError that says nothing about the service).
    limits = httpx.Limits(
        max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight, keepalive_expiry=2.0
    )
    results = []
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        for _ in range(20):  # warm-up
            await client.post("/score", json={"customer_ids": [rng.choice(ids)]})
            await client.post("/recommend", json={"customer_id": rng.choice(ids), "k": 10})

        check = score_check(expected)

        def score_one() -> Callable[[], Awaitable[httpx.Response]]:
            body = {"customer_ids": [rng.choice(ids)]}
            return lambda: client.post("/score", json=body)

        def score_hundred() -> Callable[[], Awaitable[httpx.Response]]:
            body = {"customer_ids": rng.sample(ids, 100)}
            return lambda: client.post("/score", json=body)

        def score_hundred_plain() -> Callable[[], Awaitable[httpx.Response]]:
            body = {"customer_ids": rng.sample(ids, 100), "include_reasons": False}
            return lambda: client.post("/score", json=body)

        def recommend() -> Callable[[], Awaitable[httpx.Response]]:
            body = {"customer_id": rng.choice(ids), "k": 10}
            return lambda: client.post("/recommend", json=body)

        async def open_scenario(
            r: Result, make: Callable[[], Callable[[], Awaitable[httpx.Response]]], check: Callable[..., str | None]
        ) -> None:
            assert r.target_rate is not None
            load = open_loop(
                r,
                make,
                check,
                rate=r.target_rate,
                duration=args.duration,
                max_requests=args.max_requests,
                max_in_flight=args.max_in_flight,
            )
            await metered(r, server_pid, load)
            results.append(r)

        for rate in sorted({*args.score_rates, args.rate}):
            r = Result("score_1", 1, "open loop", rate, load_before=os.getloadavg()[0])
            console.print(f"score_1: open loop at {rate:g}/s for {args.duration:g}s ...")
            await open_scenario(r, score_one, check)

        for name, make in (("score_100", score_hundred), ("score_100_plain", score_hundred_plain)):
            mode = f"closed loop x{args.batch_concurrency}"
            r = Result(name, 100, mode, None, load_before=os.getloadavg()[0])
            console.print(f"{name}: {args.batch_concurrency} callers for {args.duration:g}s ...")
            await metered(
                r,
                server_pid,
                closed_loop(
                    r,
                    make,
                    check,
                    concurrency=args.batch_concurrency,
                    duration=args.duration,
                    max_requests=args.max_requests,
                ),
            )
            results.append(r)

        r = Result("recommend", 1, "open loop", args.rate, load_before=os.getloadavg()[0])
        console.print(f"recommend: open loop at {args.rate:g}/s for {args.duration:g}s ...")
        await open_scenario(r, recommend, ok_check)
    return results


def table(rows: list[dict[str, Any]], floors: dict[str, dict[str, float]]) -> Table:
    t = Table(title="custops serving benchmark (loopback)")
    for col in (
        "scenario",
        "load",
        "load1",
        "sent",
        "errors",
        "rate/s",
        "req/s",
        "cust/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "srv cpu ms",
        "cli cpu ms",
        "floor p50",
        "floor cpu",
        "floor cust/s",
        "p50 ratio",
        "goal",
    ):
        t.add_column(col, justify="left" if col in ("scenario", "load") else "right")
    for row in rows:
        floor = floors[row["scenario"]]
        load = row["mode"] + (f" @{row['target_rate']:g}/s" if row["target_rate"] else "")
        t.add_row(
            row["scenario"],
            load,
            f"{row['load_before']:.1f}" if row["load_before"] is not None else "",
            f"{row['sent']:,}",
            f"{row['errors']:,}",
            f"{row['achieved_rate']:.0f}",
            f"{row['throughput_rps']:.0f}",
            f"{row['customers_per_s']:,.0f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            _ms(row["server_cpu_ms_per_request"]),
            _ms(row["client_cpu_ms_per_request"]),
            f"{floor['p50_ms']:.2f}",
            f"{floor['cpu_mean_ms']:.2f}",
            f"{floor['customers_per_s_one_thread']:,.0f}",
            f"{row['p50_ms'] / floor['p50_ms']:.1f}x",
            {True: "met", False: "NOT met", None: ""}[row["goal_met"]],
        )
    return t


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def goal_met(row: dict[str, Any]) -> bool | None:
    """The issue's goal for this row, if it has one: single /score at 200/s p99 < 25 ms, batch p99 < 100 ms."""
    if row["scenario"] == "score_1" and row["target_rate"] == 200:
        return row["p99_ms"] < 25 and row["errors"] == 0 and row["achieved_rate"] >= 0.95 * 200
    if row["scenario"] == "score_100":
        return row["p99_ms"] < 100 and row["errors"] == 0
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="Trained home (built when missing).")
    parser.add_argument("--customers", type=int, default=5000, help="Synthetic customers when building the home.")
    parser.add_argument("--rate", type=float, default=200.0, help="Open-loop target rate (requests/s).")
    parser.add_argument(
        "--score-rates",
        type=lambda v: [float(x) for x in v.split(",") if x],
        default=[50.0],
        help="Extra open-loop rates for single-customer /score (comma-separated), besides --rate.",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds per scenario (upper bound).")
    parser.add_argument("--max-requests", type=int, default=10_000, help="Requests per scenario (upper bound).")
    parser.add_argument("--max-in-flight", type=int, default=256, help="Outstanding requests (open loop).")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="Callers of the 100-customer scenario.")
    parser.add_argument(
        "--workers", type=int, default=2, help="Server worker processes (2: the setting documented for 2 cores)."
    )
    parser.add_argument("--coalesce-ms", type=float, default=2.0, help="CUSTOPS_SERVING_COALESCE_MS of the server.")
    parser.add_argument("--floor-repeats", type=int, default=300, help="Calls per in-process floor measurement.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in the server (custops.serving.app.server_env)

    import pandas as pd

    from custops.serving.app import start_server, stop_server, wait_ready
    from custops.serving.config import ServingSettings

    settings = ensure_trained_home(args.home.resolve(), args.customers)
    ids = _all_ids(settings.online_store_path)
    rng = random.Random(args.seed)

    from custops.pipelines.scoring import score

    sample = rng.sample(ids, min(len(ids), 2000))
    batch = score(settings, sample)
    expected = {
        r.customer_id: {
            "churn_probability": None if pd.isna(r.churn_probability) else float(r.churn_probability),
            "purchase_propensity": float(
                getattr(r, f"purchase_propensity_{settings.features.propensity_horizon_days}d")
            ),
        }
        for r in batch.itertuples()
    }

    console.print("in-process floor ...")
    floors = in_process_floor(settings, sample, args.floor_repeats, random.Random(args.seed))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serving = ServingSettings(workers=args.workers, coalesce_ms=args.coalesce_ms, log_dir=args.home.parent / "logs")
    out_log = open(args.home.parent / "server.out", "wb")  # noqa: SIM115
    started = time.perf_counter()
    process = start_server(settings, port=port, serving=serving, stdout=out_log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process, timeout=300)
        startup_s = time.perf_counter() - started
        console.print(f"server ready in {startup_s:.1f}s ({args.workers} worker(s)) at {url}")
        results = asyncio.run(run_load(url, sample, expected, args, process.pid))
    finally:
        stop_server(process)
        out_log.close()

    rows = [r.summary() for r in results]
    for row in rows:
        row["goal_met"] = goal_met(row)
    console.print(table(rows, floors))
    for row in rows:
        for example in row["error_examples"]:
            console.print(f"[red]{row['scenario']}: {example}[/red]")
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "customers_in_store": len(ids),
        "server_startup_s": startup_s,
        "scenarios": rows,
        "in_process_floor": floors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(f"results written to {args.out}")
    return 1 if any(r["errors"] for r in rows) else 0


def _all_ids(path: Path) -> list[str]:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [r[0] for r in db.execute("SELECT customer_id FROM customer_features ORDER BY customer_id")]


if __name__ == "__main__":
    sys.exit(main())
