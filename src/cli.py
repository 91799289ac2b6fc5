"""The `custops` command line. It owns user-facing output; the library only logs."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from custops.errors import ConfigError, CustopsError, DataContractError, DriftDetected, GateError, StoreError

app = typer.Typer(
    name="custops",
    help="custops: customer-operations ML platform (feature store, models, serving, monitoring).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Demo data and ingestion into the validated layer.", no_args_is_help=True)
features_app = typer.Typer(help="Feature store: build snapshots, materialize, describe.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

out = Console()
err = Console(stderr=True)

# Exit codes: 0 ok; 1 unexpected failure; 2 bad usage or settings; 3 input data breaks the
# contract; 4 store or registry missing or inconsistent; 5 the quality gate refused a promotion;
# 6 monitoring found drift or model decay beyond the thresholds (an alert was written).
EXIT_CODES: dict[type[CustopsError], int] = {
    ConfigError: 2,
    DataContractError: 3,
    StoreError: 4,
    GateError: 5,
    DriftDetected: 6,
}

T = TypeVar("T")


def _exit_code(exc: CustopsError) -> int:
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return 1


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")] = False,
) -> None:
    """custops: know every customer, predict churn, value and next purchase, and watch it stay true."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # MLflow logs set-up chatter and generic advice at INFO/WARNING on every run; keep the
        # terminal for our own output (read by MLflow when it is first imported, which is later).
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")


def _settings() -> Any:
    from custops.settings import load_settings

    try:
        return load_settings()
    except Exception as e:  # pydantic ValidationError from env/TOML
        raise ConfigError(f"invalid settings (custops.toml or CUSTOPS_* variables): {e}") from e


@contextlib.contextmanager
def _step(label: str) -> Iterator[None]:
    """A spinner with elapsed time for one long step."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        progress.add_task(label, total=None)
        yield
    err.print(f"[green]✓[/] {label}")


def _run(fn: Callable[[], T]) -> T:
    """Run a command body; project errors become one line on stderr and a meaningful exit code."""
    try:
        return fn()
    except CustopsError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(_exit_code(e)) from None


def _print_ingest(report: Any) -> None:
    t = Table(title="Ingest", show_lines=False)
    for col in ("table", "rows in", "valid", "quarantined", "top reasons"):
        t.add_column(col, justify="right" if col in ("rows in", "valid", "quarantined") else "left")
    for r in report.tables.values():
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])[:3])
        t.add_row(r.table, f"{r.rows_in:,}", f"{r.rows_valid:,}", f"{r.rows_quarantined:,}", reasons or "-")
    out.print(t)
    if report.customers_added_from_events:
        out.print(f"{report.customers_added_from_events:,} customers seen only in events were added to customers.")
    out.print(f"Quarantined rows (with reasons): {report.quarantine_dir}")


def _print_snapshot(snap: Any) -> None:
    m = snap.manifest
    out.print(
        f"Snapshot [bold]{snap.snapshot_id}[/]: {m['rows']:,} rows, {len(m['features'])} features, "
        f"{len(m['labels'])} labels, {len(m['cutoffs'])} cutoffs ({m['cutoffs'][0]} .. {m['cutoffs'][-1]})"
    )
    out.print(f"  {snap.path}")


# ---------------------------------------------------------------- data


@data_app.command("generate")
def data_generate(
    customers: Annotated[int, typer.Option("--customers", "-n", min=1, help="Number of customers.")] = 5000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: settings.seed).")] = None,
    file_format: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: the raw layer).")] = None,
    events_per_customer: Annotated[float | None, typer.Option(help="Scale event volume (e.g. 20).")] = None,
    drift_from: Annotated[
        str | None,
        typer.Option(help="Shift the world from this date (prices, channels, churn wave, new acquisition channel)."),
    ] = None,
) -> None:
    """Write a seeded synthetic dataset (transactions, interactions, customers, products, ground truth)."""

    def body() -> None:
        from custops.data.synthetic import SyntheticConfig, generate

        s = _settings()
        if file_format not in ("csv", "parquet"):
            raise ConfigError(f"--format {file_format!r} is not supported (use csv or parquet)")
        cfg = SyntheticConfig(
            n_customers=customers,
            seed=s.seed if seed is None else seed,
            file_format=file_format,
            events_per_customer_target=events_per_customer,
            drift_from=None if drift_from is None else _when(drift_from, "--drift-from").date(),  # type: ignore[union-attr]
        )  # type: ignore[arg-type]
        with _step(f"Generating {customers:,} customers"):
            res = generate(cfg, out_dir or s.raw_dir)
        t = Table(title="Generated")
        t.add_column("table")
        t.add_column("rows", justify="right")
        t.add_column("dirty rows", justify="right")
        for name, n in res.row_counts.items():
            t.add_row(name, f"{n:,}", f"{sum(res.dirty_counts.get(name, {}).values()):,}")
        out.print(t)
        out.print(f"Written to {Path(out_dir or s.raw_dir)}")

    _run(body)


@data_app.command("ingest")
def data_ingest(
    transactions: Annotated[str | None, typer.Option(help="CSV/Parquet path or db.duckdb::table.")] = None,
    interactions: Annotated[str | None, typer.Option(help="CSV/Parquet path or db.duckdb::table.")] = None,
    customers: Annotated[str | None, typer.Option(help="CSV/Parquet path or db.duckdb::table.")] = None,
    products: Annotated[str | None, typer.Option(help="CSV/Parquet path or db.duckdb::table.")] = None,
) -> None:
    """Validate raw tables into the validated layer; bad rows are quarantined with reasons."""

    def body() -> None:
        from custops.pipelines.features import ingest_raw, raw_sources

        s = _settings()
        given = {
            "transactions": transactions,
            "interactions": interactions,
            "customers": customers,
            "products": products,
        }
        sources = given if transactions else {**raw_sources(s.raw_dir), **{k: v for k, v in given.items() if v}}
        if not sources.get("transactions"):
            raise ConfigError(f"no transactions source: pass --transactions or put transactions.csv in {s.raw_dir}")
        with _step("Validating input tables"):
            report = ingest_raw(s, sources)
        _print_ingest(report)

    _run(body)


# ---------------------------------------------------------------- features


@features_app.command("build")
def features_build(
    cutoff: Annotated[list[str] | None, typer.Option("--cutoff", help="Cutoff date YYYY-MM-DD (repeatable).")] = None,
    n_cutoffs: Annotated[
        int | None, typer.Option(min=1, help="Number of monthly cutoffs (default from settings).")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="duckdb or spark (default: settings `engine`).")] = None,
    spark_master: Annotated[str | None, typer.Option(help="Spark master URL (implies spark).")] = None,
    materialize: Annotated[bool, typer.Option(help="Also refresh the online store.")] = True,
    memory_limit: Annotated[
        str | None, typer.Option(help="DuckDB memory cap, e.g. 1500MB (default: settings, else 80% of RAM).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="DuckDB threads (default: all cores).")] = None,
) -> None:
    """Compute point-in-time features and labels at each cutoff into a new offline snapshot."""

    def body() -> None:
        from custops.pipelines.features import build_features
        from custops.pipelines.features import materialize as do_materialize

        s = _engine_settings(_settings(), engine, spark_master)
        if n_cutoffs:
            s.features.n_cutoffs = n_cutoffs
        if memory_limit:
            s.features.memory_limit = memory_limit  # checked where the engine is configured (ConfigError)
        if threads:
            s.features.threads = threads
        with _step("Building feature snapshot"):
            snap = build_features(s, cutoffs=cutoff)
        _print_snapshot(snap)
        if materialize:
            with _step("Materializing online store"):
                meta = do_materialize(s, snap.snapshot_id)
            out.print(
                f"Online store: {meta['rows']:,} customers at cutoff {meta['cutoff'][:10]} -> {s.online_store_path}"
            )

    _run(body)


@features_app.command("materialize")
def features_materialize(
    snapshot: Annotated[str | None, typer.Option(help="Snapshot id (default: latest).")] = None,
) -> None:
    """Refresh the online store with the latest cutoff of a snapshot."""

    def body() -> None:
        from custops.pipelines.features import materialize

        s = _settings()
        with _step("Materializing online store"):
            meta = materialize(s, snapshot)
        out.print(
            f"Online store: {meta['rows']:,} customers from {meta['snapshot_id']} "
            f"(cutoff {meta['cutoff'][:10]}) -> {s.online_store_path}"
        )

    _run(body)


@features_app.command("describe")
def features_describe(
    snapshot: Annotated[str | None, typer.Option(help="Snapshot id (default: latest).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Cutoff for statistics (default: latest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List features with their view, description and statistics."""

    def body() -> None:
        from custops.features.store import OfflineStore

        s = _settings()
        snap = OfflineStore(s.offline_store_dir).get(snapshot)
        desc = snap.describe(cutoff)
        if as_json:
            out.print_json(
                json.dumps(
                    {
                        "snapshot_id": snap.snapshot_id,
                        "cutoff": desc.attrs["cutoff"],
                        "features": desc.reset_index().to_dict(orient="records"),
                    },
                    default=str,
                )
            )
            return
        t = Table(title=f"{snap.snapshot_id} at cutoff {desc.attrs['cutoff']}")
        for col in ("feature", "view", "description", "null %", "mean", "min", "max"):
            t.add_column(col, overflow="fold", justify="right" if col in ("null %", "mean") else "left")
        for name, r in desc.iterrows():
            mean = "" if r["mean"] != r["mean"] else f"{r['mean']:.3g}"
            t.add_row(
                str(name),
                r["view"],
                r["description"],
                f"{r['null_pct']:.1f}",
                mean,
                str(r["min"])[:19],
                str(r["max"])[:19],
            )
        out.print(t)

    _run(body)


@features_app.command("get")
def features_get(
    customer_id: Annotated[list[str], typer.Argument(help="One or more customer ids.")],
) -> None:
    """Look up customers in the online store (what the serving layer sees)."""

    def body() -> None:
        from custops.features.store import OnlineStore

        s = _settings()
        df = OnlineStore(s.online_store_path).get(customer_id)
        missing = [c for c in customer_id if df.empty or c not in df.index]
        if not df.empty:
            out.print_json(df.to_json(orient="index", date_format="iso"))
        if missing:
            err.print(f"not found in the online store: {', '.join(missing)}")
            raise typer.Exit(4)

    _run(body)


@features_app.command("list-snapshots")
def features_list() -> None:
    """List committed offline snapshots."""

    def body() -> None:
        from custops.features.store import OfflineStore

        store = OfflineStore(_settings().offline_store_dir)
        t = Table(title="Offline snapshots")
        for col in ("snapshot", "created", "rows", "cutoffs"):
            t.add_column(col)
        for sid in store.list():
            m = store.get(sid).manifest
            t.add_row(sid, m["created_at"], f"{m['rows']:,}", f"{m['cutoffs'][0]} .. {m['cutoffs'][-1]}")
        out.print(t)

    _run(body)


# ---------------------------------------------------------------- models

MODEL_TASKS = ("churn", "clv", "propensity")
TRAIN_TASKS = (*MODEL_TASKS, "recommender")
# Metrics shown per task; the gate decides on the primary one (custops.pipelines.training.PRIMARY_METRIC).
SHOWN_METRICS = {
    "churn": ("roc_auc", "pr_auc", "lift_top_decile", "brier"),
    "propensity": ("roc_auc", "pr_auc", "lift_top_decile", "brier"),
    "clv": ("gini", "spearman", "decile_mape", "total_error_pct"),
}


def _tasks(task: str, *, allow_all: bool, recommender: bool = False) -> list[str]:
    """The tasks a TASK argument names; an unknown name is a usage error listing the valid ones."""
    known = list(TRAIN_TASKS if recommender else MODEL_TASKS)
    valid = [*known, "all"] if allow_all else known
    if task not in valid:
        raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(valid)}")
    return known if task == "all" else [task]


def _print_recommender(result: Any) -> None:
    t = Table(title=f"recommender v{result.version}: backtest on the 30 days from {result.split_cutoff} (k=10)")
    for col in ("model", "precision@10", "recall@10", "ndcg@10", "map@10", "coverage", "diversity"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in result.table.to_dict(orient="records"):
        t.add_row(
            str(r["model"]),
            *[_cell(r[c]) for c in ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage", "diversity")],
        )
    out.print(t)
    verdict = "promoted to champion" if result.promoted else f"not promoted ({result.gate.reason})"
    out.print(f"  gate: {result.gate.reason}; {verdict}")


def _cell(value: Any, digits: int = 3) -> str:
    """A table cell: '-' for missing values, numbers rounded, anything else as text."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _metric(name: str, value: Any) -> str:
    return _cell(value, 1 if name in ("decile_mape", "total_error_pct") else 3)


METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "lift_top_decile": "lift@10%",
    "brier": "Brier",
    "positive_rate": "positive rate",
    "gini": "Gini",
    "spearman": "Spearman",
    "decile_mape": "decile MAPE %",
    "total_error_pct": "total error %",
    "mae": "MAE",
    "rmse": "RMSE",
}


def _decision(r: Any, *, promotion_tried: bool = True) -> str:
    if r.promoted:
        return f"[green]v{r.version} champion[/]"
    if not r.gate.passed:
        return f"[red]v{r.version} refused[/]"
    return f"v{r.version} challenger" + ("" if promotion_tried else " (--no-promote)")


def _print_training(r: Any, *, promotion_tried: bool = True) -> None:
    cols = SHOWN_METRICS[r.task]
    gate = "[green]passed[/]" if r.gate.passed else "[red]refused[/]"
    t = Table(
        title=f"{r.task} v{r.version}: validation cutoff {r.split['valid_cutoff']}, "
        f"{r.split['valid_rows']:,} customers",
        caption=f"grade {r.grade}; gate {gate} ({r.gate.reason}); {_decision(r, promotion_tried=promotion_tried)}",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    t.add_column("scorer", no_wrap=True)
    for c in cols:
        t.add_column(METRIC_LABELS[c] + (" *" if c == r.primary else ""), justify="right")
    t.add_row("model", *(_metric(c, r.metrics.get(c)) for c in cols), style="bold")
    for name, m in r.baselines.items():
        t.add_row(f"baseline {name}", *(_metric(c, m.get(c)) for c in cols))
    out.print(t)


def _print_summary(results: list[Any]) -> None:
    t = Table(title="Models vs baselines (validation cutoff, same customers)", box=box.SIMPLE_HEAD)
    for col in ("task", "metric", "scorer", "value", "grade", "decision"):
        t.add_column(col, justify="right" if col == "value" else "left", no_wrap=col != "scorer")
    for r in results:
        metric = METRIC_LABELS[r.primary]
        t.add_row(
            r.task, metric, "model", _metric(r.primary, r.metrics[r.primary]), r.grade, _decision(r), style="bold"
        )
        for name, m in r.baselines.items():
            t.add_row("", "", f"vs {name}", _metric(r.primary, m[r.primary]), "", "")
    out.print(t)


def _print_scores(scores: Any, path: Path, *, per_customer: bool) -> None:
    from custops.pipelines.scoring import STATUS_NOT_FOUND, STATUS_OK

    ok = scores[scores["status"] == STATUS_OK]
    not_found = int((scores["status"] == STATUS_NOT_FOUND).sum())
    clv_col = next(c for c in scores.columns if c.startswith("clv_"))
    prop_col = next(c for c in scores.columns if c.startswith("purchase_propensity_"))
    if per_customer:
        clv_h, prop_h = clv_col.removeprefix("clv_"), prop_col.removeprefix("purchase_propensity_")
        t = Table(title="Scores", box=box.SIMPLE_HEAD)
        for col in ("customer", "status", "churn", "risk", f"CLV {clv_h}", f"buys in {prop_h}", "segment", "lifecycle"):
            right = col in ("churn", f"CLV {clv_h}", f"buys in {prop_h}")
            t.add_column(col, justify="right" if right else "left", no_wrap=col != "segment")
        for _, r in scores.iterrows():
            t.add_row(
                r["customer_id"],
                r["status"] if r["status"] == STATUS_OK else f"[yellow]{r['status']}[/]",
                _cell(r["churn_probability"]),
                _cell(r["risk_band"]),
                _cell(r[clv_col], 2),
                _cell(r[prop_col]),
                _cell(r["rfm_segment"]),
                _cell(r["lifecycle_stage"]),
            )
        out.print(t)
        for _, r in ok[ok["churn_top_reasons"].notna()].iterrows():
            out.print(f"  {r['customer_id']} churn reasons: {r['churn_top_reasons']}", highlight=False)
    versions = ", ".join(
        f"{c.removesuffix('_model_version')} v{scores[c].iloc[0]}"
        for c in scores.columns
        if c.endswith("_model_version")
    )
    cutoff = str(scores["cutoff"].iloc[0])[:10] if len(scores) else "-"
    out.print(
        f"Scored {len(ok):,} customers at cutoff {cutoff} with {versions}"
        + (f"; [yellow]{not_found:,} not found[/]" if not_found else "")
    )
    if len(ok):
        bands = ok["risk_band"].value_counts()
        prospects = int(ok["risk_band"].isna().sum())
        out.print(
            f"  churn risk: high {int(bands.get('high', 0)):,}, medium {int(bands.get('medium', 0)):,}, "
            f"low {int(bands.get('low', 0)):,}, prospects (not scored for churn) {prospects:,}; "
            f"expected {clv_col.removeprefix('clv_')} value {ok[clv_col].sum():,.0f}"
        )
    out.print(f"  -> {path}")


def _engine_settings(s: Any, engine: str | None, spark_master: str | None) -> Any:
    """Settings with --engine / --spark-master applied (ConfigError naming a bad engine)."""
    if engine is not None:
        if engine not in ("duckdb", "spark"):
            raise ConfigError(f"--engine {engine!r} is not supported (choose duckdb or spark)")
        s.engine = engine
    if spark_master is not None:
        s.spark.master = spark_master
        s.engine = "spark" if engine is None else s.engine
    return s


def _score_on_spark(s: Any, ids: list[str] | None, out_path: Path | None, snapshot: str | None) -> None:
    """`custops score --engine spark`: every customer of the snapshot, written as a Parquet dataset."""
    from custops.pipelines.spark_scoring import score_spark

    if ids is not None:
        raise ConfigError("--customers/--customers-file score a list locally: drop --engine spark for that")
    with _step("Scoring customers on Spark"):
        run = score_spark(s, snapshot_id=snapshot, out=out_path)
    count = "all" if run.rows is None else f"{run.rows:,}"
    out.print(
        f"Scored {count} customers at cutoff {run.cutoff.date()} of {run.snapshot_id} "
        f"({', '.join(f'{t} v{v}' for t, v in run.versions.items())}) -> {run.path}"
    )


def _read_ids(customers: str | None, customers_file: Path | None) -> list[str] | None:
    """Customer ids from --customers (comma-separated) and --customers-file (one per line, # comments)."""
    if customers is None and customers_file is None:
        return None
    ids = [c.strip() for c in (customers or "").split(",") if c.strip()]
    if customers_file is not None:
        if not customers_file.is_file():
            raise DataContractError(str(customers_file), None, "file not found", "pass a text file, one id per line")
        lines = (line.strip() for line in customers_file.read_text().splitlines())
        ids += [line for line in lines if line and not line.startswith("#")]
    if not ids:
        raise ConfigError("no customer ids given: --customers / --customers-file is empty")
    return ids


def _require_version(registry: Any, task: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        registry.client.get_model_version(registry.name(task), version)
    except MlflowException:
        raise StoreError(
            f"{registry.name(task)} has no version {version!r}: see `custops history {task}` for the versions"
        ) from None


def _download_table(run_id: str, artifact: str) -> Any:
    """A CSV artifact of a training run as a DataFrame (None when the run has none)."""
    import tempfile

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=d)
        except (MlflowException, OSError):
            return None
        return pd.read_csv(local)


@app.command("train")
def train(
    task: Annotated[str, typer.Argument(help="churn, clv, propensity, recommender or all.")] = "all",
    snapshot: Annotated[str | None, typer.Option(help="Snapshot id (default: latest).")] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Promote to champion if the quality gate passes.")
    ] = True,
) -> None:
    """Train, compare with baselines, register as challenger and promote through the quality gate."""

    def body() -> None:
        from custops.features.store import OfflineStore
        from custops.pipelines.recommender import train_recommender
        from custops.pipelines.training import train_task

        s = _settings()
        tasks = _tasks(task, allow_all=True, recommender=True)
        snapshot_id = snapshot or OfflineStore(s.offline_store_dir).latest_id()
        for t in tasks:
            if t == "recommender":
                with _step("Training the recommender (time-split backtest, popularity baselines)"):
                    rec = train_recommender(s, promote=promote)
                _print_recommender(rec)
                continue
            with _step(f"Training {t} on {snapshot_id}"):
                result = train_task(s, t, snapshot_id=snapshot_id, promote=promote)
            _print_training(result, promotion_tried=promote)

    _run(body)


@app.command("evaluate")
def evaluate(
    task: Annotated[str, typer.Argument(help="churn, clv, propensity or all.")] = "all",
) -> None:
    """Validation metrics of each task's champion and challenger (from MLflow), and the churn targeting table."""

    def body() -> None:
        from custops.models.registry import CHALLENGER, CHAMPION, Registry
        from custops.pipelines.training import PRIMARY_METRIC

        s = _settings()
        tasks = _tasks(task, allow_all=True)
        reg = Registry(s)
        shown = 0
        for t in tasks:
            roles: dict[str, list[str]] = {}
            for alias in (CHAMPION, CHALLENGER):
                if (v := reg.alias_version(t, alias)) is not None:
                    roles.setdefault(v, []).append(alias)
            if not roles:
                out.print(f"{reg.name(t)}: no model yet (run `custops train {t}`)")
                continue
            shown += 1
            infos = {v: reg.version_info(t, v) for v in roles}
            _print_evaluation(t, PRIMARY_METRIC[t], roles, infos)
            if t == "churn":
                v = next(iter(roles))  # the champion when there is one
                table = _download_table(infos[v]["run_id"], "evaluation/targeting.csv")
                if table is not None:
                    _print_targeting(table, f"v{v} ({', '.join(roles[v])})")
        if not shown:
            raise StoreError(f"no registered model for {', '.join(tasks)}: run `custops train {task}` first")

    _run(body)


def _print_evaluation(task: str, primary: str, roles: dict[str, list[str]], infos: dict[str, dict]) -> None:
    t = Table(title=f"{task}: metrics at training (each on its own validation cutoff)", box=box.SIMPLE_HEAD)
    t.add_column("metric", no_wrap=True)
    for v, names in roles.items():
        t.add_column(f"v{v} ({', '.join(names)})", justify="right")
    t.add_row("snapshot", *(str(infos[v]["snapshot_id"]) for v in roles))
    metric_names = sorted({k for i in infos.values() for k in i["metrics"] if k.startswith("valid_")})
    for k in metric_names:
        name = k.removeprefix("valid_")
        t.add_row(
            METRIC_LABELS.get(name, name),
            *(_metric(name, infos[v]["metrics"].get(k)) for v in roles),
            style="bold" if name == primary else "",
        )
    baseline_keys = sorted(
        {k for i in infos.values() for k in i["metrics"] if k.startswith("baseline_") and k.endswith(f"_{primary}")}
    )
    for k in baseline_keys:
        label = f"{METRIC_LABELS[primary]} of baseline {k.removeprefix('baseline_').removesuffix(f'_{primary}')}"
        t.add_row(label, *(_metric(primary, infos[v]["metrics"].get(k)) for v in roles))
    key = f"champion_{primary}"
    if any(key in i["metrics"] for i in infos.values()):
        label = f"{METRIC_LABELS[primary]} of the champion then"
        t.add_row(label, *(_metric(primary, infos[v]["metrics"].get(key)) for v in roles))
    out.print(t)


def _print_targeting(table: Any, which: str) -> None:
    t = Table(
        title=f"Churn targeting, {which}: contact the top % by risk (validation cutoff)",
        caption="value at stake: trailing 365-day revenue of the churners reached",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for label in ("top %", "customers", "churners", "false alarms", "precision", "reached %", "value at stake"):
        t.add_column(label, justify="right")
    for _, r in table.iterrows():
        t.add_row(
            _cell(r["contact_top_pct"], 0),
            _cell(int(r["customers"]), 0),
            _cell(int(r["true_churners"]), 0),
            _cell(int(r["false_alarms"]), 0),
            _cell(r["precision"], 2),
            _cell(r["churners_reached_pct"], 1),
            _cell(r["value_at_stake"], 0),
        )
    out.print(t)


@app.command("promote")
def promote(
    task: Annotated[str, typer.Argument(help="churn, clv or propensity.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Version to promote (default: the challenger).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the quality gate refused (audited).")] = False,
) -> None:
    """Make a version champion if it passed the quality gate at its training (exit 5 if refused)."""

    def body() -> None:
        from custops.models.registry import CHALLENGER, CHAMPION, Registry
        from custops.pipelines.training import promote as promote_version

        s = _settings()
        (t,) = _tasks(task, allow_all=False, recommender=True)
        reg = Registry(s)
        target = version or reg.alias_version(t, CHALLENGER)
        if target is None:
            raise StoreError(f"{reg.name(t)} has no challenger: run `custops train {t}` first")
        _require_version(reg, t, target)
        before = reg.alias_version(t, CHAMPION)
        if before == target:
            out.print(f"{reg.name(t)} v{target} is already champion; nothing changed.")
            return
        promote_version(s, t, target, force=force)
        reason = reg.history(t)[-1].get("reason", "")
        was = f" (was v{before})" if before else ""
        out.print(f"{reg.name(t)} v{target} is now champion{was}: {reason}")

    _run(body)


@app.command("rollback")
def rollback(task: Annotated[str, typer.Argument(help="churn, clv or propensity.")]) -> None:
    """Point champion back at the version that was champion before the current one (audited)."""

    def body() -> None:
        from custops.models.registry import CHAMPION, Registry
        from custops.pipelines.training import rollback as rollback_task

        s = _settings()
        (t,) = _tasks(task, allow_all=False, recommender=True)
        reg = Registry(s)
        before = reg.alias_version(t, CHAMPION)
        target = rollback_task(s, t)
        out.print(f"{reg.name(t)} champion rolled back: v{before} -> v{target}")

    _run(body)


@app.command("history")
def history(
    task: Annotated[str, typer.Argument(help="churn, clv, propensity or all.")] = "all",
    limit: Annotated[int, typer.Option(min=1, help="Show the last N decisions.")] = 50,
) -> None:
    """The registry audit log: which version was champion when, why, and by which metrics."""

    def body() -> None:
        from custops.models.registry import Registry
        from custops.pipelines.training import PRIMARY_METRIC

        s = _settings()
        tasks = _tasks(task, allow_all=True, recommender=True)
        records = Registry(s).history(None if task == "all" else tasks[0])[-limit:]
        if not records:
            out.print("No registry decisions yet: run `custops train`.")
            return
        t = Table(
            title=f"Registry audit log ({s.audit_log_path})",
            caption="champion: the alias moved from -> to; metric: the primary metric on the validation cutoff",
            caption_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for col in ("at (UTC)", "task", "action", "champion", "metric", "by", "reason"):
            t.add_column(col, overflow="fold", no_wrap=col != "reason")
        colors = {"promote": "green", "refuse": "red", "rollback": "yellow"}
        for rec in records:
            primary = PRIMARY_METRIC.get(rec["task"], "")
            if rec.get("gate"):
                metric = _metric(primary, rec["gate"]["challenger"])
            else:
                metric = _metric(primary, rec.get("metrics", {}).get(primary))
            action = rec["action"]
            previous = f"v{rec['previous']}" if rec.get("previous") else "none"
            moved = {"register": "-", "refuse": f"{previous} kept"}.get(action, f"{previous} -> v{rec['version']}")
            t.add_row(
                rec["at"][:16].replace("T", " "),
                rec["task"],
                f"[{colors[action]}]{action}[/]" if action in colors else action,
                moved,
                metric,
                rec.get("by", "-"),
                rec.get("reason", "") + (f" (v{rec['version']})" if action in ("register", "refuse") else ""),
            )
        out.print(t)

    _run(body)


@app.command("score")
def score(
    customers: Annotated[str | None, typer.Option(help="Comma-separated customer ids (default: everyone).")] = None,
    customers_file: Annotated[Path | None, typer.Option(help="Text file with one customer id per line.")] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Output .parquet or .csv (default: the scores folder).")
    ] = None,
    snapshot: Annotated[str | None, typer.Option(help="Snapshot id (default: latest).")] = None,
    engine: Annotated[str | None, typer.Option(help="duckdb (local) or spark (default: settings `engine`).")] = None,
    spark_master: Annotated[str | None, typer.Option(help="Spark master URL (implies spark).")] = None,
) -> None:
    """Batch-score customers with each champion: churn risk, CLV, propensity, segment, lifecycle stage."""

    def body() -> None:
        from custops.features.store import OfflineStore
        from custops.pipelines.scoring import default_scores_path, scores_format, write_scores
        from custops.pipelines.scoring import score as score_customers

        s = _engine_settings(_settings(), engine, spark_master)
        ids = _read_ids(customers, customers_file)
        if s.engine == "spark":
            _score_on_spark(s, ids, out_path, snapshot)
            return
        if out_path is not None:
            scores_format(out_path)  # fail on a bad suffix before the work
        snapshot_id = snapshot or OfflineStore(s.offline_store_dir).latest_id()
        with _step("Scoring customers"):
            scores = score_customers(s, ids, snapshot_id=snapshot_id)
            path = write_scores(scores, out_path or default_scores_path(s, snapshot_id))
        _print_scores(scores, path, per_customer=ids is not None and len(scores) <= 20)

    _run(body)


# ---------------------------------------------------------------- monitoring


def _when(value: str | None, option: str) -> dt.datetime | None:
    """An ISO date/time option (naive = UTC); a bad value is a usage error naming the option."""
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not an ISO date or time (e.g. 2026-01-31 or 2026-01-31T12:00)"
        ) from None


@app.command("monitor")
def monitor(
    snapshot: Annotated[str | None, typer.Option(help="Current window: this snapshot (default: latest).")] = None,
    cutoff: Annotated[str | None, typer.Option(help="Cutoff of that snapshot (default: its latest).")] = None,
    current_home: Annotated[
        Path | None, typer.Option(help="Read --snapshot from another custops home (e.g. production's).")
    ] = None,
    from_log: Annotated[
        bool, typer.Option("--from-log", help="Current window: requests logged by the serving layer.")
    ] = False,
    log_path: Annotated[Path | None, typer.Option("--log", help="Prediction log (default: the serving log).")] = None,
    since: Annotated[str | None, typer.Option(help="With --from-log: from this time (ISO, UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="With --from-log: before this time (ISO, UTC).")] = None,
    reference_snapshot: Annotated[
        str | None, typer.Option(help="Reference snapshot (default: the churn champion's training snapshot).")
    ] = None,
    reference_cutoff: Annotated[
        str | None, typer.Option(help="Reference cutoff (default: the churn champion's validation cutoff).")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Name of the run (in its folder name and the index).")] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="On drift, run `train all` (promotion through the quality gate).")
    ] = False,
) -> None:
    """Compare the champions' training data and predictions with a current window; exit 6 on drift.

    Writes Evidently's report, summary.json and summary.html to a dated run folder; updates index.html and alerts.jsonl.
    """

    def body() -> None:
        from custops.pipelines.monitoring import monitor as run_monitor

        s = _settings()
        if (since or until or log_path) and not from_log:
            raise ConfigError("--since/--until/--log read the prediction log: add --from-log")
        if from_log and (snapshot or cutoff or current_home):
            raise ConfigError("--from-log and --snapshot/--cutoff/--current-home pick different current windows")
        with _step("Monitoring (Evidently drift, data quality, performance)"):
            result = run_monitor(
                s,
                snapshot_id=snapshot,
                cutoff=cutoff,
                current_home=current_home,
                from_log=from_log,
                log_path=log_path,
                since=_when(since, "--since"),
                until=_when(until, "--until"),
                reference_snapshot=reference_snapshot,
                reference_cutoff=reference_cutoff,
                label=label,
                retrain=retrain,
                raise_on_drift=False,
            )
        _print_monitor(result)
        if result.drifted:
            from custops.pipelines.monitoring import drift_message

            raise DriftDetected(drift_message(result), str(result.paths["summary"]))

    _run(body)


def _print_monitor(result: Any) -> None:
    s = result.summary
    colors = {"ok": "green", "warning": "yellow", "drift": "red"}
    ref, cur = s["reference"], s["current"]
    where = cur.get("snapshot_id") or cur.get("path") or cur["source"]
    t = Table(
        title=f"Monitoring {s['run_id']}: [{colors[s['status']]}]{s['status'].upper()}[/]",
        caption=f"reference {ref.get('snapshot_id')} @ {ref.get('cutoff')} ({ref['rows']:,} rows); "
        f"current {where} {cur.get('cutoff') or ''} ({cur['rows']:,} rows"
        + (f", {cur['quarantined']:,} quarantined" if cur.get("quarantined") else "")
        + ")",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("model", "status", "output drift", "metric", "training", "estimated (CBPE)", "realised"):
        t.add_column(col, justify="right" if col in ("training", "estimated (CBPE)", "realised") else "left")
    for task, m in s["models"].items():
        pdrift = m.get("prediction_drift")
        drift_cell = "-" if not pdrift else f"{pdrift['score']:.3f}" + (" [red]drifted[/]" if pdrift["drifted"] else "")
        est = (m.get("estimated") or {}).get("current") or {}
        real = (m.get("realised") or {}).get("current") or {}
        t.add_row(
            f"{task} v{m['version']}",
            f"[{colors[m['status']]}]{m['status']}[/]",
            drift_cell,
            METRIC_LABELS.get(m["metric"], m["metric"]),
            _cell(m["training"].get(m["metric"])),
            _cell(est.get(m["metric"])),
            _cell(real.get(m["metric"])) if real else "no labels yet",
        )
    out.print(t)
    d = s["data_drift"]
    out.print(
        f"Data drift: {d['n_drifted']} of {d['n_features']} features ({d['share_drifted']:.0%})"
        + (f": {', '.join(d['drifted_features'][:8])}" if d["drifted_features"] else ""),
        highlight=False,
    )
    for r in s["reasons"][:10]:
        out.print(f"  [{colors[r['status']]}]{r['status']}[/] {r['area']}: {r['message']}", highlight=False)
    if s.get("retrain"):
        for task, r in s["retrain"]["tasks"].items():
            verdict = "[green]promoted[/]" if r["promoted"] else f"not promoted ({r['gate']})"
            out.print(f"  retrained {task} v{r['version']}: {verdict}")
    out.print(f"Report: {result.paths['page']}\nAll runs: {result.index}", highlight=False)


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option("--customers", "-n", min=100, help="Synthetic customers.")] = 5000,
    regenerate: Annotated[bool, typer.Option(help="Regenerate the demo data even if present.")] = False,
) -> None:
    """The main job end to end: generate -> ingest -> features -> train all -> gate/promote -> score -> monitor."""

    def body() -> None:
        from custops.models.registry import CHAMPION, Registry
        from custops.pipelines.features import (
            build_features,
            generate_demo_data,
            ingest_raw,
            materialize,
            raw_sources,
        )
        from custops.pipelines.recommender import train_recommender
        from custops.pipelines.scoring import default_scores_path, write_scores
        from custops.pipelines.scoring import score as score_customers
        from custops.pipelines.training import train_task

        s = _settings()
        started = dt.datetime.now()
        if regenerate or not raw_sources(s.raw_dir)["transactions"]:
            with _step(f"Generating demo data ({customers:,} customers)"):
                generate_demo_data(s, n_customers=customers)
        with _step("Validating input tables"):
            report = ingest_raw(s)
        _print_ingest(report)
        with _step("Building feature snapshot"):
            snap = build_features(s)
        _print_snapshot(snap)
        with _step("Materializing online store"):
            meta = materialize(s, snap.snapshot_id)
        out.print(f"Online store: {meta['rows']:,} customers at cutoff {meta['cutoff'][:10]}")
        results = []
        for task in MODEL_TASKS:
            with _step(f"Training {task} (baselines, MLflow, quality gate)"):
                results.append(train_task(s, task, snapshot_id=snap.snapshot_id))
        _print_summary(results)
        with _step("Training the recommender (time-split backtest, popularity baselines)"):
            rec = train_recommender(s)
        _print_recommender(rec)
        registry = Registry(s)
        refused = [r for r in results if registry.alias_version(r.task, CHAMPION) is None]
        if refused:
            r = refused[0]
            raise GateError(
                f"batch scoring needs a champion per task; the quality gate refused {r.task} v{r.version} "
                f"({r.gate.reason}) and there is no earlier champion: review `custops evaluate {r.task}`, then "
                f"`custops promote {r.task} --force`, or run the demo on more customers"
            )
        with _step("Batch scoring every customer with the champions"):
            scores = score_customers(s, snapshot_id=snap.snapshot_id)
            path = write_scores(scores, default_scores_path(s, snap.snapshot_id))
        _print_scores(scores, path, per_customer=False)
        from custops.pipelines.monitoring import monitor_demo

        with _step("Monitoring a new sample of the same world, then the same world after a drift"):
            runs = monitor_demo(s, n_customers=max(1000, customers // 2))
        for run in runs:
            _print_monitor(run)
        out.print(
            "`custops monitor` exits 6 on a drifted run and appends an alert to "
            f"{runs[-1].index.parent / 'alerts.jsonl'}.",
            highlight=False,
        )
        out.print(
            f"Done in {(dt.datetime.now() - started).total_seconds():.1f}s. "
            "Next: `custops evaluate`, `custops history`, `custops score --customers ID,ID`, "
            f"open {runs[-1].index}."
        )

    _run(body)


@app.command("serve")
def serve(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="Hot reload: pick up a new champion (promote/rollback) and a refreshed online store without a "
            "restart; each worker checks every CUSTOPS_SERVING_WATCH_SECONDS (10 unless set).",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes (default: CUSTOPS_SERVING_WORKERS, else one per core, at most 4)."),
    ] = None,
) -> None:
    """Serve scores, recommendations and model metadata over HTTP for CRM systems (Ctrl-C stops)."""

    def body() -> None:
        from custops.serving.app import serve as run_server
        from custops.serving.config import ServingSettings

        s = _settings()
        options: dict[str, Any] = {} if workers is None else {"workers": workers}
        if reload and ServingSettings().watch_seconds == 0:
            options["watch_seconds"] = 10.0
        serving = ServingSettings(**options)
        auth = "on (X-API-Key)" if serving.api_key() else "off"
        out.print(f"Serving {s.home} on http://{host}:{port}  (docs at /, probes /healthz /readyz, auth {auth})")
        if serving.watch_seconds > 0:
            out.print(
                f"Hot reload on: new champions and store refreshes are picked up within {serving.watch_seconds:g} s"
            )
        code = run_server(s, host=host, port=port, serving=serving)
        if code not in (0, None):
            raise typer.Exit(1)

    _run(body)


if __name__ == "__main__":  # pragma: no cover
    app()
