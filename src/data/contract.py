"""Pandera schemas of the ingest contract: file-level (columns, types), row-level and output.

Ingest validates in three steps, each a pandera schema built from `custops.data.schema`:

- `columns_schema`: the raw header has every required column (file-level).
- `types_schema`: a typed column (numbers, timestamps) whose raw values are present but of which
  none parses has the wrong type (file-level).
- `rows_schema`: per-row problems, validated lazily; the failure cases' index says which rows to
  quarantine and `row_reasons` turns them into readable reasons.

`rows_schema` and `types_schema` run on a *parsed* frame: every contract column parsed to its
validated dtype; for every typed column also `<column>__raw` (the stripped raw value, empty as
null) and `<column>__unparsed` (the raw value where it did not parse, else null); for tables whose
duplicate rows are quarantined, `__row` (the same id for rows equal on every contract column).
Row checks are column checks: pandera reports their failure cases cheaply at any row count,
unlike frame-wide checks, whose failure cases it reshapes row by row.
`validated_schema` is the contract of the validated layer (columns and dtypes of schema.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Final

import pandas as pd
import pandera.pandas as pa

from custops.data import schema

RAW_SUFFIX: Final = "__raw"
UNPARSED_SUFFIX: Final = "__unparsed"
ROW_KEY: Final = "__row"
# In memory, validated string columns are Arrow-backed (`string[pyarrow]`: `dtype == "string"`
# holds, it is compact and fast at 20M rows); on disk they are Arrow strings either way.
STRING_DTYPE: Final = pd.StringDtype("pyarrow")

_CONTRACTS: Final[dict[str, dict[str, str]]] = {
    "transactions": schema.TRANSACTIONS,
    "interactions": schema.INTERACTIONS,
    "customers": schema.CUSTOMERS,
    "products": schema.PRODUCTS,
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "transactions": schema.TRANSACTIONS_REQUIRED,
    "interactions": schema.INTERACTIONS_REQUIRED,
    "customers": schema.CUSTOMERS_REQUIRED,
    "products": schema.PRODUCTS_REQUIRED,
}
# Table -> its key column: duplicates of the key are quarantined (first occurrence kept).
_KEYS: Final = {"customers": "customer_id", "products": "product_id"}
# Tables whose exact duplicate rows (on every contract column) are quarantined.
_DUPLICATE_ROW_REASONS: Final = {"transactions": "duplicate order line"}
_UNPARSABLE: Final = {"numbers": "not a number", "timestamps": "unparsable"}


def contract_columns(table: str) -> dict[str, str]:
    """Column -> validated dtype of `table` (KeyError for an unknown table)."""
    return _CONTRACTS[table]


def required_columns(table: str) -> tuple[str, ...]:
    """Columns `table` must have in its input."""
    return _REQUIRED[table]


def typed_columns(table: str) -> dict[str, str]:
    """Column -> 'numbers' or 'timestamps' for the columns that are parsed from strings."""
    kinds = {"float64": "numbers", "datetime64[us]": "timestamps"}
    return {c: kinds[d] for c, d in contract_columns(table).items() if d in kinds}


def raw_column(column: str) -> str:
    """Name of the raw value of a typed column in the parsed frame."""
    return column + RAW_SUFFIX


def unparsed_column(column: str) -> str:
    """Name of the raw value of a typed column where it did not parse (else null)."""
    return column + UNPARSED_SUFFIX


def has_row_key(table: str) -> bool:
    """Whether `table` quarantines rows equal on all contract columns (parsed frame has ROW_KEY)."""
    return table in _DUPLICATE_ROW_REASONS


def columns_schema(table: str) -> pa.DataFrameSchema:
    """File-level: the input has every required column (validate an empty frame of its header)."""
    required = set(required_columns(table))
    return pa.DataFrameSchema(
        {c: pa.Column(required=c in required, nullable=True) for c in contract_columns(table)},
        name=f"{table} columns",
    )


def _parses_where_present(column: str) -> Callable[[pd.DataFrame], bool]:
    def check(df: pd.DataFrame) -> bool:
        present = df[raw_column(column)].count()
        return present == 0 or df[unparsed_column(column)].count() < present

    return check


def types_schema(table: str) -> pa.DataFrameSchema:
    """File-level: a typed column with values present of which none parses has the wrong type.

    Each check's `title` is the column it is about.
    """
    checks = [
        pa.Check(_parses_where_present(c), title=c, error=f"wrong type: expected {kind}")
        for c, kind in typed_columns(table).items()
    ]
    return pa.DataFrameSchema(checks=checks, name=f"{table} types")


def _is_null(values: pd.Series) -> pd.Series:
    return values.isna()


def rows_schema(table: str, now: dt.datetime) -> pa.DataFrameSchema:
    """Row-level checks on the parsed frame; validate with `lazy=True` and read `row_reasons`.

    `now` is naive UTC: timestamps after it are in the future.
    """
    required = set(required_columns(table))
    typed = typed_columns(table)
    key = _KEYS.get(table)
    columns = {}
    for c, dtype in contract_columns(table).items():
        if c not in typed:
            columns[c] = pa.Column(nullable=c not in required, unique=c == key, report_duplicates="exclude_first")
            continue
        checks = []
        if dtype == "datetime64[us]":
            checks.append(pa.Check.le(pd.Timestamp(now), error=f"{c}: in the future"))
        columns[c] = pa.Column(nullable=True, checks=checks)
        # A typed value is missing when its raw value is; a parsed null may be unparsable.
        columns[raw_column(c)] = pa.Column(nullable=c not in required)
        columns[unparsed_column(c)] = pa.Column(
            nullable=True,
            checks=pa.Check(_is_null, ignore_na=False, error=f"{c}: {_UNPARSABLE[typed[c]]}"),
        )
    if has_row_key(table):
        columns[ROW_KEY] = pa.Column(unique=True, report_duplicates="exclude_first")
    return pa.DataFrameSchema(columns, name=f"{table} rows")


def row_reasons(table: str, failure_cases: pd.DataFrame) -> pd.DataFrame:
    """Pandera failure cases of `rows_schema` -> one row per (index, reason), no duplicates.

    Pandera's built-in checks get readable reasons: a null required value is '<column>: missing',
    a repeated key 'duplicate <column>', a repeated row the table's duplicate reason.
    """
    fc = failure_cases[["column", "check", "index"]]
    if fc["index"].isna().any():
        # A check that failed as a whole (an exception, a dtype) is a bug, not a bad row.
        raise RuntimeError(f"{table}: row validation failed as a whole:\n{fc[fc['index'].isna()]}")
    check = fc["check"].astype(str)
    column = fc["column"].astype(str).str.removesuffix(RAW_SUFFIX)
    reason = check.where(check != "not_nullable", column + ": missing")
    reason = reason.where(check != "field_uniqueness", "duplicate " + column)
    duplicate_row = (check == "field_uniqueness") & (column == ROW_KEY)
    reason = reason.mask(duplicate_row, _DUPLICATE_ROW_REASONS.get(table, "duplicate row"))
    out = pd.DataFrame({"index": fc["index"].astype("int64"), "reason": reason})
    return out.drop_duplicates(ignore_index=True)


def validated_schema(table: str) -> pa.DataFrameSchema:
    """The validated layer of `table`: contract columns first, in order, with their dtypes.

    Customers keep extra attribute columns after the contract columns; other tables are strict.
    """
    required = set(required_columns(table))
    if table == "transactions":
        required |= {"order_id", "quantity", "status"}
    columns = {}
    for c, dtype in contract_columns(table).items():
        checks = []
        if table == "transactions" and c == "status":
            checks.append(pa.Check.isin(["purchase", "refund"]))
        columns[c] = pa.Column(
            STRING_DTYPE if dtype == "string" else dtype,
            nullable=c not in required,
            checks=checks,
            unique=c == _KEYS.get(table),
        )
    return pa.DataFrameSchema(columns, strict=table != "customers", ordered=True, name=f"{table} validated")
