"""Ingest: file-level contract errors, quarantined rows, normalisation and the written layer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import custops.data.ingest as ingest_module
from custops.data import schema
from custops.data.ingest import ingest, read_source, validate_table
from custops.errors import DataContractError

NOW = dt.datetime(2024, 1, 1)  # 'now' of validate_table; ingest uses the `settings` fixture's


def write_text(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def validate_csv(tmp_path: Path, text: str, table: str = "transactions"):
    path = write_text(tmp_path, f"{table}.csv", text)
    return validate_table(table, read_source(path), source=str(path), now=NOW)


def reason_of(quarantined: pd.DataFrame, source_row: int) -> str:
    row = quarantined.loc[quarantined["_source_row"] == source_row, "_reason"]
    assert len(row) == 1, f"row {source_row} is not quarantined exactly once"
    return row.iloc[0]


# --- file-level errors ---------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataContractError, match="nope.csv: file not found"):
        read_source(path)


def test_missing_duckdb_file_names_the_file(tmp_path):
    with pytest.raises(DataContractError, match="wh.duckdb::sales: file not found"):
        read_source(f"{tmp_path / 'wh.duckdb'}::sales")


def test_unreadable_parquet_names_the_file(tmp_path):
    path = write_text(tmp_path, "broken.parquet", "this is not parquet")
    with pytest.raises(DataContractError, match=r"broken.parquet: unreadable file"):
        read_source(path)


def test_unsupported_suffix_is_a_contract_error(tmp_path):
    path = write_text(tmp_path, "data.xlsx", "x")
    with pytest.raises(DataContractError, match=r"unsupported file type '.xlsx'"):
        read_source(path)


def test_missing_required_column_names_file_column_and_fix(tmp_path):
    with pytest.raises(DataContractError) as err:
        validate_csv(tmp_path, "customer_id,timestamp\n1,2020-01-01\n")
    assert err.value.column == "amount"
    assert err.value.problem == "missing required column"
    message = str(err.value)
    assert "transactions.csv, column 'amount': missing required column" in message
    assert "columns found: customer_id, timestamp" in message


def test_column_of_text_only_is_wrong_type(tmp_path):
    with pytest.raises(DataContractError) as err:
        validate_csv(tmp_path, "customer_id,timestamp,amount\n1,2020-01-01,abc\n2,2020-01-02,x\n")
    assert err.value.column == "amount"
    assert err.value.problem == "wrong type: expected numbers"
    assert "'abc'" in str(err.value)


def test_timestamp_column_of_text_only_is_wrong_type(tmp_path):
    with pytest.raises(DataContractError, match="column 'timestamp': wrong type: expected time"):
        validate_csv(tmp_path, "customer_id,timestamp,amount\n1,yesterday,1\n2,today,2\n3,now,3\n")


def test_unknown_table_is_a_contract_error(tmp_path):
    with pytest.raises(DataContractError, match="unknown table 'orders'"):
        validate_table("orders", pd.DataFrame({"a": ["1"]}), source="x.csv", now=NOW)


def test_ingest_rejects_unknown_table_and_missing_transactions(tmp_path, settings):
    path = write_text(tmp_path, "t.csv", "customer_id,timestamp,amount\n1,2020-01-01,1\n")
    with pytest.raises(DataContractError, match="unknown table 'orders'"):
        ingest({"transactions": path, "orders": path}, settings)
    with pytest.raises(DataContractError, match="transactions: no source given"):
        ingest({"customers": path}, settings)


# --- quarantined rows ----------------------------------------------------------------------

HEADER = "customer_id,timestamp,amount\n"


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        (",2020-01-02,5", "customer_id: missing"),
        ("   ,2020-01-02,5", "customer_id: missing"),
        ("2,not a date,5", "timestamp: unparsable"),
        ("2,,5", "timestamp: missing"),
        ("2,2030-01-01,5", "timestamp: in the future"),
        ("2,2020-01-02,twelve", "amount: not a number"),
        ("2,2020-01-02,", "amount: missing"),
    ],
)
def test_bad_row_is_quarantined_with_its_reason(tmp_path, bad_line, reason):
    valid, quarantined, report = validate_csv(tmp_path, HEADER + f"1,2020-01-01,10\n{bad_line}\n3,2020-01-03,7\n")
    assert reason_of(quarantined, 1) == reason
    assert valid["customer_id"].tolist() == ["1", "3"]
    assert report.reasons == {reason: 1}


def test_number_spellings(tmp_path):
    amounts = ["1e3", ".5", "+2", "-3", " 4 ", '"12,50 EUR"', "N/A", '"1,000"', "inf"]
    lines = "".join(f"{i},2020-01-01,{a}\n" for i, a in enumerate(amounts))
    valid, quarantined, _ = validate_csv(tmp_path, HEADER + lines)
    assert valid["amount"].tolist() == [1000.0, 0.5, 2.0, -3.0, 4.0]
    assert quarantined["_source_row"].tolist() == [5, 6, 7, 8]
    assert set(quarantined["_reason"]) == {"amount: not a number"}


def test_row_with_several_problems_lists_every_reason(tmp_path):
    _, quarantined, report = validate_csv(tmp_path, HEADER + "1,2020-01-01,10\n,2031-05-01,abc\n")
    assert reason_of(quarantined, 1) == ("amount: not a number; customer_id: missing; timestamp: in the future")
    assert report.reasons == {
        "amount: not a number": 1,
        "customer_id: missing": 1,
        "timestamp: in the future": 1,
    }


def test_quarantine_keeps_raw_values_as_strings(tmp_path):
    text = "customer_id,timestamp,amount,note\n1,2020-01-01,10,a\n007,20200102,1.50x,b\n"
    _, quarantined, _ = validate_csv(tmp_path, text)
    assert list(quarantined.columns) == [
        "customer_id",
        "timestamp",
        "amount",
        "note",
        "_reason",
        "_source_row",
    ]
    row = quarantined.iloc[0]
    assert (row["customer_id"], row["timestamp"], row["amount"], row["note"]) == (
        "007",
        "20200102",
        "1.50x",
        "b",
    )
    assert row["_source_row"] == 1


def test_duplicate_order_lines_keep_the_first(tmp_path):
    text = (
        "customer_id,timestamp,amount,product_id\n"
        "1,2020-01-01,10,p1\n"
        "1,2020-01-01,10,p2\n"  # same order, other product: not a duplicate
        "1,2020-01-01,10,p1\n"
        "1,2020-01-01T00:00:00Z,10.0,p1\n"  # same values, other spelling
    )
    valid, quarantined, report = validate_csv(tmp_path, text)
    assert valid["product_id"].tolist() == ["p1", "p2"]
    assert quarantined["_source_row"].tolist() == [2, 3]
    assert set(quarantined["_reason"]) == {"duplicate order line"}
    assert report.reasons == {"duplicate order line": 2}


def test_null_event_type_is_quarantined_and_event_type_lower_cased(tmp_path):
    text = "customer_id,timestamp,event_type\n1,2020-01-01, View \n2,2020-01-02,\n"
    valid, quarantined, _ = validate_csv(tmp_path, text, table="interactions")
    assert valid["event_type"].tolist() == ["view"]
    assert reason_of(quarantined, 1) == "event_type: missing"


def test_duplicate_customer_keeps_the_first(tmp_path):
    text = "customer_id,country,tier\nc1,FR,gold\nc2,DE,\nc1,US,silver\n,NL,\n,BE,\n"
    valid, quarantined, _ = validate_csv(tmp_path, text, table="customers")
    assert valid["customer_id"].tolist() == ["c1", "c2"]
    assert valid.loc[valid["customer_id"] == "c1", "country"].item() == "FR"
    assert reason_of(quarantined, 2) == "duplicate customer_id"
    # null ids are missing, not duplicates of each other
    assert reason_of(quarantined, 3) == reason_of(quarantined, 4) == "customer_id: missing"


def test_product_without_id_is_quarantined(tmp_path):
    text = "product_id,category,price\np1,books,9.5\n,music,3\np3,toys,cheap\n"
    valid, quarantined, _ = validate_csv(tmp_path, text, table="products")
    assert valid["product_id"].tolist() == ["p1"]
    assert reason_of(quarantined, 1) == "product_id: missing"
    assert reason_of(quarantined, 2) == "price: not a number"


def test_report_counts_add_up(tmp_path):
    text = HEADER + "1,2020-01-01,10\n,2020-01-01,1\n2,bad,x\n2,2020-01-05,3\n2,2020-01-05,3\n"
    valid, quarantined, report = validate_csv(tmp_path, text)
    assert (report.rows_in, report.rows_valid, report.rows_quarantined) == (5, 2, 3)
    assert report.rows_in == report.rows_valid + report.rows_quarantined
    assert (len(valid), len(quarantined)) == (2, 3)
    # row 2 has two reasons and counts under both
    assert sum(report.reasons.values()) == 4


# --- normalisation -------------------------------------------------------------------------


def test_cdnow_like_three_column_file(tmp_path):
    text = "customer_id,timestamp,amount\n00001,19970101,11.77\n2,19970112,12.00\n2,19970112,77\n"
    valid, quarantined, _ = validate_csv(tmp_path, text)
    assert quarantined.empty
    assert list(valid.columns) == list(schema.TRANSACTIONS)
    assert valid.dtypes.astype(str).to_dict() == schema.TRANSACTIONS
    assert valid["customer_id"].tolist() == ["00001", "2", "2"]
    assert valid["timestamp"].tolist() == [
        pd.Timestamp("1997-01-01"),
        pd.Timestamp("1997-01-12"),
        pd.Timestamp("1997-01-12"),
    ]
    assert valid["order_id"].tolist() == [
        "00001@1997-01-01T00:00:00",
        "2@1997-01-12T00:00:00",
        "2@1997-01-12T00:00:00",
    ]
    assert valid["quantity"].tolist() == [1.0, 1.0, 1.0]
    assert valid["status"].tolist() == ["purchase"] * 3
    assert valid[["product_id", "category", "channel"]].isna().all().all()


def test_aware_and_naive_timestamps_are_the_same_utc_instant(tmp_path):
    text = (
        HEADER
        + "a,2020-03-01T10:00:00+02:00,1\n"
        + "b,2020-03-01 08:00:00,1\n"  # naive, after an aware one
        + "c,2020-03-01T03:00:00-05:00,1\n"
        + "d,2020-03-01T08:00:00Z,1\n"
    )
    valid, quarantined, _ = validate_csv(tmp_path, text)
    assert quarantined.empty
    assert valid["timestamp"].dtype == "datetime64[us]"
    assert set(valid["timestamp"]) == {pd.Timestamp("2020-03-01 08:00:00")}


def test_aware_and_naive_parquet_timestamps_agree(tmp_path):
    instant = pd.Timestamp("2020-03-01 08:00:00")
    frames = {
        "aware": pd.Series([instant.tz_localize("UTC").tz_convert("Asia/Tokyo")]),
        "naive": pd.Series([instant]),
    }
    stamps = []
    for name, ts in frames.items():
        path = tmp_path / f"{name}.parquet"
        pd.DataFrame({"customer_id": [1], "timestamp": ts, "amount": [2.5]}).to_parquet(path)
        valid, _, _ = validate_table("transactions", read_source(path), source=name, now=NOW)
        stamps.append(valid["timestamp"].item())
    assert stamps == [instant, instant]


def test_refunds_are_positive_and_statuses_normalised(tmp_path):
    text = (
        "customer_id,timestamp,amount,status\n"
        "1,2020-01-01,-5,Refunded\n"
        "1,2020-01-02,5, RETURN \n"
        "1,2020-01-03,7,completed\n"
        "1,2020-01-04,8,\n"
    )
    valid, _, _ = validate_csv(tmp_path, text)
    assert valid["status"].tolist() == ["refund", "refund", "purchase", "purchase"]
    assert valid["amount"].tolist() == [5.0, 5.0, 7.0, 8.0]


def test_given_order_ids_and_quantities_are_kept(tmp_path):
    text = (
        "customer_id,timestamp,amount,order_id,quantity\n"
        "1,2020-01-01 10:30:00.25,5,A-1,3\n"
        "1,2020-01-01 10:30:00.25,5,,\n"
    )
    valid, _, _ = validate_csv(tmp_path, text)
    assert valid["order_id"].tolist() == ["A-1", "1@2020-01-01T10:30:00.250000"]
    assert valid["quantity"].tolist() == [3.0, 1.0]


def test_numeric_ids_do_not_gain_a_decimal(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"customer_id": [1.0, 2.0], "timestamp": ["2020-01-01", "2020-01-02"], "amount": [1, 2]}).to_parquet(
        path
    )
    valid, _, _ = validate_table("transactions", read_source(path), source="t", now=NOW)
    assert valid["customer_id"].tolist() == ["1", "2"]


def test_customers_keep_extra_attributes_after_contract_columns(tmp_path):
    text = "Customer_ID,signup_at,tier\nc1,2019-05-01,gold\nc2,,\n"
    valid, quarantined, _ = validate_csv(tmp_path, text, table="customers")
    assert quarantined.empty
    assert list(valid.columns) == [*schema.CUSTOMERS, "tier"]
    assert valid["tier"].iloc[0] == "gold"
    assert pd.isna(valid["tier"].iloc[1])
    assert valid["signup_at"].iloc[0] == pd.Timestamp("2019-05-01")


# --- sources and the whole run -------------------------------------------------------------


@pytest.mark.parametrize("table_ref", ["sales.orders", "orders"])
def test_duckdb_source(tmp_path, table_ref):
    db = tmp_path / "wh.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE SCHEMA sales")
        for name in ("sales.orders", "orders"):
            con.execute(
                f"CREATE TABLE {name} AS SELECT * FROM (VALUES "
                "(7, TIMESTAMPTZ '2020-01-01 10:00:00+02', 12.5), "
                "(8, TIMESTAMPTZ '2020-01-02 00:00:00+00', NULL)) t(customer_id, timestamp, amount)"
            )
    raw = read_source(f"{db}::{table_ref}")
    valid, quarantined, _ = validate_table("transactions", raw, source=table_ref, now=NOW)
    assert valid["customer_id"].tolist() == ["7"]
    assert valid["timestamp"].item() == pd.Timestamp("2020-01-01 08:00:00")
    assert reason_of(quarantined, 1) == "amount: missing"


def test_duckdb_missing_table_is_unreadable(tmp_path):
    db = tmp_path / "wh.duckdb"
    duckdb.connect(str(db)).close()
    with pytest.raises(DataContractError, match=r"wh.duckdb::nope: unreadable file"):
        read_source(f"{db}::nope")


def test_ingest_derives_customers_from_events(tmp_path, settings):
    tx = write_text(tmp_path, "t.csv", HEADER + "1,2020-01-01,5\n2,2020-01-02,6\n1,2020-01-03,7\n")
    events = "customer_id,timestamp,event_type\n3,2020-01-01,view\n1,2020-01-01,click\n"
    ix = write_text(tmp_path, "i.csv", events)
    report = ingest({"transactions": tx, "interactions": ix}, settings)
    customers = pd.read_parquet(settings.validated_dir / "customers.parquet")
    assert customers["customer_id"].tolist() == ["1", "2", "3"]
    assert customers["signup_at"].isna().all()
    assert report.customers_added_from_events == 3
    products = pd.read_parquet(settings.validated_dir / "products.parquet")
    assert list(products.columns) == list(schema.PRODUCTS) and products.empty


def test_ingest_adds_event_customers_missing_from_the_customers_file(tmp_path, settings):
    tx = write_text(tmp_path, "t.csv", HEADER + "1,2020-01-01,5\n9,2020-01-02,6\n")
    cu = write_text(tmp_path, "c.csv", "customer_id,country\n1,FR\n2,DE\n")
    report = ingest({"transactions": tx, "customers": cu}, settings)
    customers = pd.read_parquet(settings.validated_dir / "customers.parquet")
    assert customers["customer_id"].tolist() == ["1", "2", "9"]
    assert customers["country"].tolist()[:2] == ["FR", "DE"]
    assert pd.isna(customers["country"].iloc[2])
    assert report.customers_added_from_events == 1
    assert report.tables["customers"].rows_in == 2  # the file's rows; additions counted apart


def test_ingest_writes_validated_quarantine_and_report(tmp_path, settings):
    tx = write_text(tmp_path, "t.csv", HEADER + "1,2020-01-01,5\n2,2099-01-01,6\n")
    report = ingest({"transactions": tx}, settings)
    validated = pd.read_parquet(settings.validated_dir / "transactions.parquet")
    assert validated["customer_id"].tolist() == ["1"]
    assert str(validated["timestamp"].dtype) == "datetime64[us]"
    quarantine = pd.read_parquet(settings.quarantine_dir / "transactions.parquet")
    assert quarantine["_reason"].tolist() == ["timestamp: in the future"]
    on_disk = json.loads((settings.validated_dir / "ingest_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert on_disk["tables"]["transactions"]["rows_quarantined"] == 1
    assert on_disk["customers_added_from_events"] == 1  # customer 2 was quarantined


def test_failed_validation_leaves_previous_files_untouched(tmp_path, settings, monkeypatch):
    tx = write_text(tmp_path, "t.csv", HEADER + "1,2020-01-01,5\n")
    ingest({"transactions": tx}, settings)
    target = settings.validated_dir / "transactions.parquet"
    before = target.read_bytes()

    tx.write_text(HEADER + "1,2020-01-01,5\n2,2020-01-02,6\n")
    real = ingest_module.validate_table

    def fail_on_interactions(table, raw, **kwargs):
        if table == "interactions":
            raise RuntimeError("boom during validation")
        return real(table, raw, **kwargs)

    monkeypatch.setattr(ingest_module, "validate_table", fail_on_interactions)
    ix = write_text(tmp_path, "i.csv", "customer_id,timestamp,event_type\n1,2020-01-01,view\n")
    with pytest.raises(RuntimeError, match="boom"):
        ingest({"transactions": tx, "interactions": ix}, settings)
    assert target.read_bytes() == before
    assert not list(settings.validated_dir.glob(".*.tmp"))


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, settings, monkeypatch):
    tx = write_text(tmp_path, "t.csv", HEADER + "1,2020-01-01,5\n")
    ingest({"transactions": tx}, settings)
    target = settings.validated_dir / "transactions.parquet"
    before = target.read_bytes()

    def half_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half written")
        raise OSError("disk full")

    monkeypatch.setattr("custops.io.pq.write_table", half_write)
    tx.write_text(HEADER + "1,2020-01-01,5\n2,2020-01-02,6\n")
    with pytest.raises(OSError, match="disk full"):
        ingest({"transactions": tx}, settings)
    assert target.read_bytes() == before
    assert not list(settings.validated_dir.glob(".*.tmp"))
