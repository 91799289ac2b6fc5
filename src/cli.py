"""The `custops` command line. It owns user-facing output; the library only logs."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from custops.errors import ConfigError, CustopsError, DataContractError, StoreError

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
# contract; 4 store missing or inconsistent.
EXIT_CODES: dict[type[CustopsError], int] = {ConfigError: 2, DataContractError: 3, StoreError: 4}

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
    engine: Annotated[str, typer.Option(help="Execution engine.")] = "duckdb",
    materialize: Annotated[bool, typer.Option(help="Also refresh the online store.")] = True,
) -> None:
    """Compute point-in-time features and labels at each cutoff into a new offline snapshot."""

    def body() -> None:
        from custops.pipelines.features import build_features
        from custops.pipelines.features import materialize as do_materialize

        s = _settings()
        if n_cutoffs:
            s.features.n_cutoffs = n_cutoffs
        with _step("Building feature snapshot"):
            snap = build_features(s, cutoffs=cutoff, engine=engine)
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


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option("--customers", "-n", min=100, help="Synthetic customers.")] = 5000,
    regenerate: Annotated[bool, typer.Option(help="Regenerate the demo data even if present.")] = False,
) -> None:
    """The main job end to end on embedded defaults: generate -> ingest -> features -> online store."""

    def body() -> None:
        from custops.pipelines.features import (
            build_features,
            generate_demo_data,
            ingest_raw,
            materialize,
            raw_sources,
        )

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
        out.print(f"Done in {(dt.datetime.now() - started).total_seconds():.1f}s. Next: `custops features describe`.")

    _run(body)


if __name__ == "__main__":  # pragma: no cover
    app()
