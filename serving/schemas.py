"""Request and response models of the HTTP service (pydantic; the OpenAPI page is generated from them).

Requests forbid unknown fields, so a misspelt field is a 400 naming it rather than a silent default.
Limits that come from settings (batch size, k) are checked after parsing and reported in the same
shape as pydantic's own errors: `{"error": ..., "detail": [{"loc": [field, ...], "msg": ...}]}`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import bentoml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    create_model,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
RiskBand = Literal["low", "medium", "high"]
ReasonCode = Literal["similar_items", "buy_again", "segment_popular", "popular"]


# ---------------------------------------------------------------------------------------- requests


class ScoreRequest(bentoml.IODescriptor):
    """Customers to score from the online store (duplicates are scored once, in first-seen order)."""

    model_config = ConfigDict(extra="forbid")

    customer_ids: list[CustomerId] = Field(
        min_length=1, description="Customer ids; at most CUSTOPS_SERVING_MAX_BATCH (default 500)."
    )


class ScoreFeaturesRequest(bentoml.IODescriptor):
    """Feature rows supplied by the caller, one per customer, keyed by feature name (see GET /metadata).

    Every feature is optional: a missing or null feature is scored as missing (NaN). Numbers must be
    JSON numbers and categories JSON strings; unknown names are rejected. `customer_id` is an
    optional label echoed back. Without `n_orders` > 0 a row is a prospect: no churn or CLV score.
    """

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] = Field(min_length=1, description="Feature rows; at most CUSTOPS_SERVING_MAX_BATCH.")


class RecommendRequest(bentoml.IODescriptor):
    """One customer's product recommendations, with optional category filters."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    k: StrictInt = Field(10, ge=1, description="Products to return; at most CUSTOPS_SERVING_MAX_K (default 100).")
    exclude_purchased: StrictBool = Field(True, description="Leave out products the customer already bought.")
    include_categories: list[Name] | None = Field(None, description="Only these categories.")
    exclude_categories: list[Name] | None = Field(None, description="Not these categories.")
    segment: Name | None = Field(
        None, description="Segment whose popular products fill the list (default: the customer's value tier)."
    )


# --------------------------------------------------------------------------------------- responses


class ScoreItem(BaseModel):
    """One customer's scores. Churn and CLV are null for prospects (no order yet) and unknown customers."""

    customer_id: str | None
    status: Literal["ok", "not_found"]
    cutoff: dt.datetime | None = Field(description="The features' as-of time (online store cutoff).")
    churn_probability: float | None = Field(description="P(no purchase in the next churn_horizon_days).")
    risk_band: RiskBand | None
    churn_horizon_days: int
    clv: float | None = Field(description="Expected net spend in the next clv_horizon_days.")
    clv_horizon_days: int
    purchase_propensity: float | None = Field(description="P(any purchase in the next propensity_horizon_days).")
    propensity_horizon_days: int
    rfm_segment: str | None
    value_tier: str | None
    lifecycle_stage: str | None
    churn_top_reasons: str | None = Field(description="Features raising the churn score most: 'feature = value; ...'.")
    model_versions: dict[str, str] = Field(description="Champion registry version per task.")
    snapshot_id: str | None = Field(description="Feature snapshot the online store was materialized from.")


class ScoreResponse(BaseModel):
    request_id: str
    items: list[ScoreItem]


class RecommendedProduct(BaseModel):
    rank: int
    product_id: str
    score: float = Field(description="Comparable within this list only.")
    reason: str
    reason_code: ReasonCode
    category: str | None
    anchor_product_id: str | None = Field(description="The purchased product behind a similar_items reason.")


class RecommendResponse(BaseModel):
    request_id: str
    customer_id: str
    model_version: str
    fallback: bool = Field(description="True when every product comes from the popularity fallback (cold start).")
    items: list[RecommendedProduct]


class ModelInfo(BaseModel):
    task: str
    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    trained_on_snapshot: str | None
    metrics: dict[str, float]


class FeatureInfo(BaseModel):
    name: str
    type: Literal["number", "category"]
    categories: list[str] | None = Field(description="Categories seen in training (others score as missing).")
    description: str
    used_by: list[str]


class ServiceMetadata(BaseModel):
    service: str
    custops_version: str
    ready: bool
    load_error: str | None
    loaded_at: dt.datetime | None
    models: dict[str, ModelInfo]
    feature_snapshot: dict[str, str]
    features: list[FeatureInfo]
    horizons_days: dict[str, int]
    risk_bands: tuple[float, float] | None
    limits: dict[str, int]
    auth_required: bool


class ReloadResponse(BaseModel):
    reloaded: bool
    model_versions: dict[str, str]
    snapshot_id: str | None
    error: str | None


# ------------------------------------------------------------------------------ runtime validation


def feature_row_model(numeric: Sequence[str], categorical: Sequence[str]) -> type[BaseModel]:
    """Strict per-row model of /score_features: numbers or null, strings or null, nothing else."""
    fields: dict[str, Any] = {"customer_id": (CustomerId | None, None)}
    fields |= {name: (float | None, None) for name in numeric}
    fields |= {name: (str | None, None) for name in categorical}
    row = create_model("FeatureRow", __config__=ConfigDict(extra="forbid", strict=True), **fields)
    return create_model("ScoreFeaturesRequest", rows=(list[row], Field(min_length=1)))  # type: ignore[valid-type]


def request_error(title: str, loc: tuple[str | int, ...], kind: str, message: str, **ctx: Any) -> ValidationError:
    """A pydantic ValidationError for a check made after parsing (BentoML answers it with a 400)."""
    detail = InitErrorDetails(type=PydanticCustomError(kind, message, ctx or None), loc=loc, input=None)
    return ValidationError.from_exception_data(title, [detail])


def check_max_items(title: str, field: str, values: Sequence[Any], limit: int, setting: str) -> None:
    if len(values) > limit:
        raise request_error(
            title,
            (field,),
            "too_long",
            "{field}: at most {max_length} items per request, got {actual_length} (server limit {setting})",
            field=field,
            max_length=limit,
            actual_length=len(values),
            setting=setting,
        )


def check_known(title: str, field: str, values: Sequence[str] | None, known: Mapping[str, Any] | set[str]) -> None:
    """Reject names the model has never seen (a typo would otherwise filter everything out)."""
    for i, value in enumerate(values or ()):
        if value not in known:
            raise request_error(
                title,
                (field, i),
                "unknown_value",
                "{field}: unknown value '{value}' (known: {known})",
                field=field,
                value=value,
                known=", ".join(sorted(known)),
            )
