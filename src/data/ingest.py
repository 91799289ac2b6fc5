"""Ingest raw files into the validated layer; rows that break the contract go to quarantine.

A file that breaks the contract as a whole (missing, unreadable, missing column, a column of the
wrong type) raises `DataContractError`. A row that breaks it is quarantined with its reasons and
never silently dropped. Validation is pandera (`custops.data.contract`) on a parsed frame.
Parsing is vectorised, with no per-row Python: Arrow-backed strings, Arrow casts for numbers,
`pd.to_datetime` for timestamps (about 0.5M rows/s for a full transactions table on 2 cores).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import pyarrow.parquet as pq

from custops.data import contract, schema
from custops.errors import DataContractError
from custops.io import write_json, write_parquet
from custops.settings import Settings

log = logging.getLogger(__name__)

STRING = contract.STRING_DTYPE
REASON_SEPARATOR = "; "
DERIVED_SOURCE = "derived from events"
_CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
_COMPRESSION_SUFFIXES = {".gz", ".zst"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_DUCKDB_SEPARATOR = "::"
# Rows the slow per-value timestamp parser ('mixed') tries before it is run on every leftover.
_MIXED_PROBE = 1000
_DECIMAL = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# Columns on which duplicate order lines must agree first (cheap pre-filter of `_row_key`).
_DUPLICATE_PROBE = ("customer_id", "timestamp", "amount")
# A time followed by a UTC offset or zone: '10:00:00+02:00', '10:00Z', '10:00:00 UTC'.
_UTC_OFFSET = r"\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:[zZ]|UTC|GMT|[+-]\d\d(?::?\d\d)?)$"


@dataclass
class TableReport:
    """What happened to one input table."""

    table: str
    source: str
    rows_in: int
    rows_valid: int
    rows_quarantined: int
    reasons: dict[str, int]  # reason -> rows; a row with two reasons counts in both


@dataclass
class IngestReport:
    """What one `ingest` run read, kept and quarantined."""

    tables: dict[str, TableReport]
    customers_added_from_events: int
    validated_dir: Path
    quarantine_dir: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "tables": {name: dataclasses.asdict(r) for name, r in self.tables.items()},
            "customers_added_from_events": self.customers_added_from_events,
            "validated_dir": str(self.validated_dir),
            "quarantine_dir": str(self.quarantine_dir),
        }


# --- reading -------------------------------------------------------------------------------


def read_source(source: str | Path) -> pd.DataFrame:
    """Read a CSV, Parquet or DuckDB table (`file.duckdb::[schema.]table`) as a raw frame.

    CSV columns are all strings, so bad values surface per row during validation. Text columns
    come back as Arrow-backed `string` columns; Parquet and DuckDB keep their other types.
    """
    text = str(source)
    if _DUCKDB_SEPARATOR in text:
        db, _, table = text.partition(_DUCKDB_SEPARATOR)
        return _read_duckdb(Path(db), table, text)
    path = Path(text)
    if not path.is_file():
        raise DataContractError(text, None, "file not found", "check the path")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _CSV_SUFFIXES:
        return _read_csv(path, text)
    if suffix in _PARQUET_SUFFIXES:
        return _read_parquet(path, text)
    raise DataContractError(
        text,
        None,
        f"unsupported file type '{suffix or path.name}'",
        "use .csv, .parquet or 'warehouse.duckdb::schema.table'",
    )


def _arrow_to_pandas(table: pyarrow.Table) -> pd.DataFrame:
    def types_mapper(t: pyarrow.DataType) -> pd.api.extensions.ExtensionDtype | None:
        is_text = pyarrow.types.is_string(t) or pyarrow.types.is_large_string(t) or pyarrow.types.is_string_view(t)
        return STRING if is_text else None

    return table.to_pandas(types_mapper=types_mapper)


def _unreadable(source: str, exc: Exception, fix: str) -> DataContractError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataContractError(source, None, f"unreadable file: {first_line}", fix)


def _read_csv(path: Path, source: str) -> pd.DataFrame:
    try:
        with duckdb.connect() as con:
            table = con.sql(
                "SELECT * FROM read_csv(?, all_varchar = true, header = true)", params=[str(path)]
            ).to_arrow_table()
    except duckdb.Error as exc:
        raise _unreadable(source, exc, "check it is a well-formed CSV with a header row") from exc
    return _arrow_to_pandas(table)


def _read_parquet(path: Path, source: str) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise _unreadable(source, exc, "check it is a Parquet file") from exc
    return _arrow_to_pandas(table)


def _quote_identifier(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _read_duckdb(db: Path, table: str, source: str) -> pd.DataFrame:
    if not db.is_file():
        raise DataContractError(source, None, "file not found", "check the DuckDB file path")
    if not table:
        raise DataContractError(source, None, "no table named", "write 'file.duckdb::schema.table'")
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            arrow = con.sql(f"SELECT * FROM {_quote_identifier(table)}").to_arrow_table()
    except duckdb.Error as exc:
        raise _unreadable(source, exc, f"check that table '{table}' exists in {db}") from exc
    return _arrow_to_pandas(arrow)


# --- parsing -------------------------------------------------------------------------------


def _to_string(values: pd.Series) -> pd.Series:
    """Stripped strings, empty as null; whole floats lose their '.0' (1.0 -> '1')."""
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        if (present % 1 == 0).all():
            values = values.astype("Int64")
    text = values.astype(STRING).str.strip()
    return text.replace("", None)


def _to_number(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(float64 with NaN for missing or unparsable, raw value with empty as null)."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        raw = values
        number = values.astype("Float64")
        array = number.to_numpy(dtype="float64", na_value=np.nan)
    else:
        raw = _to_string(values)
        array = _parse_number_text(raw)
    array[~np.isfinite(array)] = np.nan
    return pd.Series(array, index=values.index), raw


def _parse_number_text(text: pd.Series) -> np.ndarray:
    """float64 from text, NaN where missing or unparsable.

    Arrow's strict cast (~20x faster than `pd.to_numeric`) of every value, else of the values that
    look like decimal numbers; pandas' coercing parser only if Arrow still refuses one.
    """
    values = pyarrow.array(text)
    looks_numeric = pc.match_substring_regex(values, _DECIMAL)
    for candidate in (values, pc.if_else(looks_numeric, values, pyarrow.scalar(None, values.type))):
        try:
            number = pc.cast(candidate, pyarrow.float64()).to_numpy(zero_copy_only=False)
        except pyarrow.ArrowInvalid:
            continue
        return number if number.flags.writeable else number.copy()
    number = pd.to_numeric(text, errors="coerce").astype("Float64")
    return number.to_numpy(dtype="float64", na_value=np.nan)


def _parse_timestamp_text(text: pd.Series) -> pd.Series:
    """UTC timestamps from text; values without a UTC offset are taken as UTC.

    Values with and without an offset are parsed apart: in one `pd.to_datetime` call (pandas 2.3,
    format='ISO8601') a naive value after an offset one silently takes that offset. 'now' and
    'today', which pandas reads as the current time, are unparsable.
    """
    aware = text.str.contains(_UTC_OFFSET, regex=True).fillna(False).to_numpy(dtype=bool)
    if not aware.any() or aware.all():
        ts = _parse_uniform_timestamp_text(text)
    else:
        ts = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        ts[aware] = _parse_uniform_timestamp_text(text[aware])
        ts[~aware] = _parse_uniform_timestamp_text(text[~aware])
    relative = text.isin(["now", "today"]).to_numpy(dtype=bool)
    return ts.mask(relative) if relative.any() else ts


def _parse_uniform_timestamp_text(text: pd.Series) -> pd.Series:
    """ISO 8601 (and YYYYMMDD) first, then the format of the first leftover, then pandas'
    per-value parser on what is still left, if a sample of it parses."""
    ts = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    left = ts.isna() & text.notna()
    if left.any():
        fmt = pd.tseries.api.guess_datetime_format(text[left].iloc[0])
        if fmt is not None:
            ts[left] = pd.to_datetime(text[left], utc=True, errors="coerce", format=fmt)
            left = ts.isna() & text.notna()
    if left.any():
        rest = text[left]
        probe = pd.to_datetime(rest.head(_MIXED_PROBE), utc=True, errors="coerce", format="mixed")
        if probe.notna().any():
            ts[left] = pd.to_datetime(rest, utc=True, errors="coerce", format="mixed")
    return ts


def _to_timestamp(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(naive UTC datetime64[us], raw value with empty as null); naive input is taken as UTC."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        raw = values
        ts = pd.to_datetime(values, utc=True)
    else:
        raw = _to_string(values)  # numbers too: 19970101 is a YYYYMMDD date
        ts = _parse_timestamp_text(raw)
    return ts.dt.tz_convert(None).astype("datetime64[us]"), raw


def _source_columns(raw: pd.DataFrame, table: str) -> dict[str, Any]:
    """Contract column -> raw column; headers match case-insensitively, spaces as '_'."""
    contract_cols = contract.contract_columns(table)
    found: dict[str, Any] = {c: c for c in raw.columns if c in contract_cols}
    for col in raw.columns:
        key = str(col).strip().lower().replace(" ", "_")
        if key in contract_cols and key not in found:
            found[key] = col
    return found


def _parse(table: str, raw: pd.DataFrame, columns: Mapping[str, Any]) -> pd.DataFrame:
    """The parsed frame: contract columns in validated dtypes plus raw companions of typed ones."""
    typed = contract.typed_columns(table)
    data: dict[str, pd.Series] = {}
    for col in contract.contract_columns(table):
        values = raw[columns[col]] if col in columns else pd.Series(None, index=raw.index)
        if col in typed:
            parse = _to_timestamp if typed[col] == "timestamps" else _to_number
            value, given = parse(values)
            data[col] = value
            data[contract.raw_column(col)] = given
            data[contract.unparsed_column(col)] = given.where(value.isna())
        else:
            data[col] = _to_string(values)
    parsed = pd.DataFrame(data, index=raw.index)
    for col in ("event_type", "status"):
        if col in parsed:
            parsed[col] = parsed[col].str.lower()
    if table == "transactions":
        refund = parsed["status"].isin(sorted(schema.REFUND_STATUSES)).to_numpy(dtype=bool)
        status = pc.if_else(pyarrow.array(refund), "refund", "purchase")
        parsed["status"] = pd.Series(status, index=parsed.index, dtype=STRING)
        parsed["amount"] = parsed["amount"].mask(refund, parsed["amount"].abs())
    if contract.has_row_key(table):
        parsed[contract.ROW_KEY] = _row_key(parsed, list(contract.contract_columns(table)))
    return parsed


def _row_key(parsed: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """An id per row, equal exactly for rows equal on `columns` (null equal to null).

    Only rows that share customer, time and amount with another row can be equal; grouping just
    those on every column is ~2x faster than grouping all rows.
    """
    key = np.arange(len(parsed), dtype="int64")
    maybe = parsed.duplicated(list(_DUPLICATE_PROBE), keep=False).to_numpy()
    if maybe.any():
        groups = parsed.loc[maybe, columns].groupby(columns, sort=False, dropna=False).ngroup()
        key[maybe] = len(parsed) + groups.to_numpy()
    return key


# --- validation ----------------------------------------------------------------------------


def _check_columns(table: str, columns: Mapping[str, Any], raw: pd.DataFrame, source: str) -> None:
    header = pd.DataFrame(columns=list(columns))
    try:
        contract.columns_schema(table).validate(header, lazy=True)
    except pa.errors.SchemaErrors as exc:
        missing = [str(c) for c in exc.failure_cases["failure_case"]]
        found = ", ".join(map(str, raw.columns)) or "none"
        problem = "missing required column" + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else "")
        raise DataContractError(
            source, missing[0], problem, f"add a '{missing[0]}' column; columns found: {found}"
        ) from exc


def _check_types(table: str, parsed: pd.DataFrame, columns: Mapping[str, Any], source: str) -> None:
    type_schema = contract.types_schema(table)
    try:
        type_schema.validate(parsed, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as exc:
        first = exc.failure_cases.iloc[0]
        column = type_schema.checks[int(first["check_number"])].title
        example = parsed[contract.unparsed_column(column)].dropna().iloc[0]
        raise DataContractError(
            source,
            str(columns.get(column, column)),
            str(first["check"]),
            f"no value parses, e.g. {str(example)!r}; fix the values or map the right column",
        ) from exc


def _row_reasons(table: str, parsed: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    """(index, reason) of every row-level failure."""
    try:
        contract.rows_schema(table, now).validate(parsed, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as exc:
        return contract.row_reasons(table, exc.failure_cases)
    return pd.DataFrame({"index": pd.Series(dtype="int64"), "reason": pd.Series(dtype=object)})


def _naive_utc(ts: dt.datetime) -> dt.datetime:
    return ts.astimezone(dt.UTC).replace(tzinfo=None) if ts.tzinfo is not None else ts


def _isoformat(ts: pd.Series) -> pd.Series:
    """`datetime.isoformat()` of naive timestamps, vectorised (microseconds only when non-zero)."""
    values = ts.to_numpy(dtype="datetime64[us]")
    seconds = np.datetime_as_string(values, unit="s")
    fraction = values != values.astype("datetime64[s]")
    if fraction.any():
        seconds[fraction] = np.datetime_as_string(values[fraction], unit="us")
    return pd.Series(seconds, index=ts.index, dtype=STRING)


def _normalise(table: str, valid: pd.DataFrame) -> pd.DataFrame:
    """Valid rows (contract columns parsed, then customer extras) -> the validated layer."""
    out = valid
    if table == "transactions":
        no_order = out["order_id"].isna()
        if no_order.any():
            stamp = _isoformat(out.loc[no_order, "timestamp"])
            filled = out.loc[no_order, "customer_id"] + "@" + stamp
            out = out.assign(order_id=out["order_id"].mask(no_order, filled))
        out = out.assign(quantity=out["quantity"].fillna(1.0))
    out = out.reset_index(drop=True)
    return contract.validated_schema(table).validate(out, inplace=True)


def _join_reasons(reasons: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(row index, its reasons joined in alphabetical order), vectorised over the few reasons."""
    index = reasons["index"].to_numpy()
    rows, position = np.unique(index, return_inverse=True)
    joined = np.full(len(rows), "", dtype=object)
    text = reasons["reason"].to_numpy()
    for reason in sorted(set(text)):
        at = position[text == reason]
        first = joined[at] == ""
        joined[at] = np.where(first, reason, joined[at] + REASON_SEPARATOR + reason)
    return rows, joined


def _quarantine(raw: pd.DataFrame, reasons: pd.DataFrame) -> pd.DataFrame:
    """Raw rows (all columns as strings) with `_reason` and `_source_row`."""
    rows, joined = _join_reasons(reasons)
    quarantined = raw.iloc[rows].astype(STRING).reset_index(drop=True)
    quarantined["_reason"] = pd.Series(joined, dtype=STRING)
    quarantined["_source_row"] = rows.astype("int64")
    return quarantined


def validate_table(
    table: str, raw: pd.DataFrame, *, source: str, now: dt.datetime
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """Validate one raw table: (valid rows normalised, quarantined raw rows + reasons, report).

    `_source_row` in the quarantine is the 0-based row position in `raw` (the data row of a CSV,
    header not counted). Raises `DataContractError` when the table breaks the contract as a whole.
    """
    if table not in schema.TABLES:
        raise DataContractError(source, None, f"unknown table '{table}'", f"use one of: {', '.join(schema.TABLES)}")
    raw = raw.reset_index(drop=True)
    columns = _source_columns(raw, table)
    _check_columns(table, columns, raw, source)
    parsed = _parse(table, raw, columns)
    _check_types(table, parsed, columns, source)
    reasons = _row_reasons(table, parsed, _naive_utc(now))

    extras = [c for c in raw.columns if c not in columns.values()] if table == "customers" else []
    valid = parsed[list(contract.contract_columns(table))]
    if extras:
        valid = pd.concat([valid, raw[extras]], axis=1)
    if len(reasons):
        good = np.ones(len(raw), dtype=bool)
        good[reasons["index"].to_numpy()] = False
        valid = valid[good]
    del parsed
    valid = _normalise(table, valid)
    quarantined = _quarantine(raw, reasons)
    report = TableReport(
        table=table,
        source=source,
        rows_in=len(raw),
        rows_valid=len(valid),
        rows_quarantined=len(quarantined),
        reasons={str(k): int(v) for k, v in reasons["reason"].value_counts().items()},
    )
    return valid, quarantined, report


# --- the whole run -------------------------------------------------------------------------


def _empty_table(table: str) -> pd.DataFrame:
    dtypes = contract.contract_columns(table)
    return pd.DataFrame({c: pd.Series(dtype=STRING if d == "string" else d) for c, d in dtypes.items()})


def _with_event_customers(customers: pd.DataFrame, events: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Customers plus one row (attributes null) per customer_id seen only in events."""
    seen = pd.concat([e["customer_id"] for e in events], ignore_index=True).drop_duplicates()
    added = seen[~seen.isin(customers["customer_id"])]
    if added.empty:
        return customers, 0
    merged = customers.reindex(pd.RangeIndex(len(customers) + len(added)))  # new rows all null
    merged["customer_id"] = pd.concat([customers["customer_id"], added], ignore_index=True).astype(STRING)
    return contract.validated_schema("customers").validate(merged, inplace=True), len(added)


def _keyed_tables(valid: dict[str, pd.DataFrame]) -> Iterator[tuple[str, pyarrow.Table]]:
    """Each table as Arrow with the `schema.CUSTOMER_KEY` of its rows' customers, event tables sorted
    by (customer_key, timestamp), each marked with this ingest run (`schema.INGEST_RUN_METADATA`).
    Consumes `valid` (each frame is dropped once converted: ingest's memory peaks lower).

    Done once here for every later feature build: with the keys stored, a build neither joins the
    string ids nor copies the events, and its grains read the events in customer order. Measured at
    20M events, 12 cutoffs: 23.1-26.9 s a build from such a layer against 28.9-31.3 s joining and
    copying (benchmarks/README.md); the keys without the sort gained ~1.5 s of that. Ingest pays for
    it once: 55.0-62.5 s instead of 36.6-44.5 s at 20M events, so it pays back from a layer's third build.
    """
    customers = valid["customers"].sort_values("customer_id", kind="stable", ignore_index=True)
    ids = pyarrow.array(customers["customer_id"])  # unique (ingest quarantines repeated ids)
    run = uuid.uuid4().hex.encode()
    for table in list(valid):
        frame = valid.pop(table)
        if table == "customers":
            frame = customers.assign(**{schema.CUSTOMER_KEY: np.arange(len(customers), dtype=np.int64)})
        arrow = pyarrow.Table.from_pandas(frame, preserve_index=False)
        del frame
        if table != "customers" and "customer_id" in arrow.column_names:
            # Arrow's hash lookup and (stable) sort: 0.5 s each per 10M rows, where `pd.Index.get_indexer`
            # (a Python string per event) took 1.9 s and `np.lexsort` 2.5 s. Moving every column into
            # that order (`take`, random reads of the strings) is most of the cost: ~6 s per 10M rows.
            keys = pc.index_in(arrow["customer_id"], value_set=ids)
            if keys.null_count:  # `_with_event_customers` added every id: a bug if not
                raise RuntimeError(f"{table}: customer ids missing from customers after ingest")
            arrow = arrow.append_column(schema.CUSTOMER_KEY, keys.cast(pyarrow.int64()))
            arrow = arrow.take(pc.sort_indices(arrow, [(schema.CUSTOMER_KEY, "ascending"), ("timestamp", "ascending")]))
        yield table, arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), schema.INGEST_RUN_METADATA: run})


def ingest(sources: Mapping[str, str | Path | None], settings: Settings) -> IngestReport:
    """Validate every given source and write the validated layer and the quarantine.

    `sources` maps table name -> source ('transactions' required). Nothing is written unless
    every table validates; each file is then replaced atomically. A table without a source gets
    an empty validated file (customers: derived from the events) and no quarantine file.
    """
    for name in sources:
        if name not in schema.TABLES:
            raise DataContractError(
                str(sources[name]),
                None,
                f"unknown table '{name}'",
                f"use one of: {', '.join(schema.TABLES)}",
            )
    if sources.get("transactions") is None:
        raise DataContractError("transactions", None, "no source given", "pass the transactions file (required)")
    now = settings.now()
    valid: dict[str, pd.DataFrame] = {}
    quarantined: dict[str, pd.DataFrame] = {}
    reports: dict[str, TableReport] = {}
    for table in schema.TABLES:
        source = sources.get(table)
        if source is None:
            valid[table] = _empty_table(table)
            continue
        raw = read_source(source)
        valid[table], quarantined[table], reports[table] = validate_table(table, raw, source=str(source), now=now)
        del raw
    if "customers" not in reports:
        reports["customers"] = TableReport("customers", DERIVED_SOURCE, 0, 0, 0, {})
    valid["customers"], added = _with_event_customers(
        valid["customers"], [valid["transactions"], valid["interactions"]]
    )

    for table, arrow in _keyed_tables(valid):
        write_parquet(arrow, settings.validated_dir / f"{table}.parquet")
    for table in schema.TABLES:
        path = settings.quarantine_dir / f"{table}.parquet"
        if table in quarantined:
            write_parquet(quarantined[table], path)
        else:
            path.unlink(missing_ok=True)  # a stale quarantine of an earlier run
    report = IngestReport(
        tables={t: reports[t] for t in schema.TABLES if t in reports},
        customers_added_from_events=added,
        validated_dir=settings.validated_dir,
        quarantine_dir=settings.quarantine_dir,
    )
    write_json(report.to_dict(), settings.validated_dir / "ingest_report.json")
    for r in report.tables.values():
        log.info(
            "%s from %s: %d rows in, %d valid, %d quarantined",
            r.table,
            r.source,
            r.rows_in,
            r.rows_valid,
            r.rows_quarantined,
        )
        if r.reasons:
            log.info("%s quarantined rows by reason: %s", r.table, r.reasons)
    log.info("customers added from events: %d", added)
    return report
