"""Column names of the validated layer: the contract between ingest and the feature engine.

Validated tables are Parquet files in `Settings.validated_dir`, one per table, with these columns
and types. Timestamps are naive UTC (`timestamp[us]`); ids are strings.
"""

from __future__ import annotations

from typing import Final

TABLES: Final = ("transactions", "interactions", "customers", "products")

# Ingest also numbers the customers: `customer_key` is a customer's position in the customers table
# (sorted by customer_id), on that table and on every event table, whose rows are sorted by
# (customer_key, timestamp). Each file records the ingest run that wrote it (Parquet schema
# metadata `INGEST_RUN_METADATA`): the feature engine reads the keys as they are only when the
# files come from one run, and otherwise joins the ids itself (see `custops.features.builder`).
CUSTOMER_KEY: Final = "customer_key"
INGEST_RUN_METADATA: Final = b"custops.ingest_run"

# required -> Arrow/pandas dtype of the validated layer
TRANSACTIONS: Final[dict[str, str]] = {
    "customer_id": "string",
    "timestamp": "datetime64[us]",
    "amount": "float64",
    "order_id": "string",  # filled as "<customer_id>@<timestamp>" when the input has none
    "product_id": "string",
    "category": "string",
    "quantity": "float64",  # 1.0 when the input has none
    "status": "string",  # 'purchase' or 'refund' (normalised)
    "channel": "string",
}
TRANSACTIONS_REQUIRED: Final = ("customer_id", "timestamp", "amount")

INTERACTIONS: Final[dict[str, str]] = {
    "customer_id": "string",
    "timestamp": "datetime64[us]",
    "event_type": "string",  # lower-case: view, click, add_to_cart, email_sent, email_open, ...
    "product_id": "string",
    "channel": "string",
}
INTERACTIONS_REQUIRED: Final = ("customer_id", "timestamp", "event_type")

CUSTOMERS: Final[dict[str, str]] = {
    "customer_id": "string",
    "signup_at": "datetime64[us]",
    "country": "string",
    "acquisition_channel": "string",
}
CUSTOMERS_REQUIRED: Final = ("customer_id",)

PRODUCTS: Final[dict[str, str]] = {
    "product_id": "string",
    "category": "string",
    "price": "float64",
}
PRODUCTS_REQUIRED: Final = ("product_id",)

EVENT_TYPES: Final = (
    "view",
    "click",
    "add_to_cart",
    "email_sent",
    "email_open",
    "email_click",
    "support_ticket",
    "login",
)
REFUND_STATUSES: Final = frozenset({"refund", "refunded", "return", "returned", "chargeback"})
