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

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"customer_ids": ["C000002", "C000417"]}},
    )

    customer_ids: list[CustomerId] = Field(
        min_length=1, description="Customer ids; at most CUSTOPS_SERVING_MAX_BATCH (default 500)."
    )
    include_reasons: StrictBool = Field(
        True,
        description="Explain each churn score (top reasons). They cost ~2 ms per customer (LightGBM "
        "pred_contrib); large batches that only need the scores are several times faster without.",
    )


class ScoreFeaturesRequest(bentoml.IODescriptor):
    """Feature rows supplied by the caller, one per customer, keyed by feature name (see GET /metadata).

    Every feature is optional: a missing or null feature is scored as missing (NaN). Numbers must be
    JSON numbers and categories JSON strings; unknown names are rejected. `customer_id` is an
    optional label echoed back. Without `n_orders` > 0 a row is a prospect: no churn or CLV score.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "rows": [
                    {
                        "customer_id": "crm-8812",
                        "n_orders": 3,
                        "recency_days": 40.0,
                        "revenue_365d": 182.5,
                        "country": "DE",
                        "lifecycle_stage": "active",
                    },
                    {"customer_id": "new-lead"},
                ]
            }
        },
    )

    rows: list[dict[str, Any]] = Field(min_length=1, description="Feature rows; at most CUSTOPS_SERVING_MAX_BATCH.")


class RecommendRequest(bentoml.IODescriptor):
    """One customer's product recommendations, with optional category filters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"customer_id": "C000001", "k": 5, "include_categories": ["books"], "exclude_purchased": True}
        },
    )

    customer_id: CustomerId
    k: StrictInt = Field(10, ge=1, description="Products to return; at most CUSTOPS_SERVING_MAX_K (default 100).")
    exclude_purchased: StrictBool = Field(True, description="Leave out products the customer already bought.")
    include_categories: list[Name] | None = Field(None, description="Only these categories.")
    exclude_categories: list[Name] | None = Field(None, description="Not these categories.")
    segment: Name | None = Field(
        None, description="Segment whose popular products fill the list (default: the customer's value tier)."
    )


# --------------------------------------------------------------------------------------- responses


class ReasonItem(BaseModel):
    """One feature pushing the churn score up, with the customer's value of it."""

    feature: str = Field(description="Feature name (see GET /metadata `features`).")
    value: str = Field(description="The customer's value as the model read it ('missing' when absent).")
    contribution: float = Field(description="Contribution to the churn score in log-odds (LightGBM pred_contrib).")
    text: str = Field(description="The reason in words.")


_SCORE_ITEM_EXAMPLE = {
    "customer_id": "C000002",
    "status": "ok",
    "cutoff": "2026-01-01T00:00:00",
    "churn_probability": 0.71,
    "risk_band": "high",
    "churn_horizon_days": 90,
    "clv": 54.2,
    "clv_horizon_days": 365,
    "purchase_propensity": 0.12,
    "propensity_by_category": {"books": 0.05, "grocery": 0.08},
    "propensity_horizon_days": 30,
    "rfm_segment": "At Risk",
    "value_tier": "silver",
    "lifecycle_stage": "at-risk",
    "churn_top_reasons": [
        {
            "feature": "recency_days",
            "value": "131",
            "contribution": 0.84,
            "text": "Days since the last purchase = 131 (raises the score)",
        }
    ],
    "model_versions": {"churn": "3", "clv": "2", "propensity": "4"},
    "snapshot_id": "fs-20260101T000000-1a2b3c4d",
}


class ScoreItem(BaseModel):
    """One customer's scores. Churn and CLV are null for prospects (no order yet) and unknown customers."""

    model_config = ConfigDict(json_schema_extra={"example": _SCORE_ITEM_EXAMPLE})

    customer_id: str | None
    status: Literal["ok", "not_found"]
    cutoff: dt.datetime | None = Field(description="The features' as-of time (online store cutoff).")
    churn_probability: float | None = Field(description="P(no purchase in the next churn_horizon_days).")
    risk_band: RiskBand | None
    churn_horizon_days: int
    clv: float | None = Field(description="Expected net spend in the next clv_horizon_days.")
    clv_horizon_days: int
    purchase_propensity: float | None = Field(description="P(any purchase in the next propensity_horizon_days).")
    propensity_by_category: dict[str, float] | None = Field(
        description="P(a purchase in the category in the next propensity_horizon_days), per modelled category."
    )
    propensity_horizon_days: int
    rfm_segment: str | None
    value_tier: str | None
    lifecycle_stage: str | None
    churn_top_reasons: list[ReasonItem] | None = Field(
        description="Features raising the churn score most, strongest first (null without a churn score or "
        "when include_reasons is false)."
    )
    model_versions: dict[str, str] = Field(description="Champion registry version per task.")
    snapshot_id: str | None = Field(description="Feature snapshot the online store was materialized from.")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"request_id": "5f0c9d2e8a4b4c1e9f3a7b6d2c1e0f9a", "items": [_SCORE_ITEM_EXAMPLE]}
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "request_id": "9b1d3c5e7f0a4b2c8d6e1f3a5b7c9d0e",
                "customer_id": "C000001",
                "model_version": "2",
                "fallback": False,
                "items": [
                    {
                        "rank": 1,
                        "product_id": "P00042",
                        "score": 0.61,
                        "reason": "bought with P00017, which you bought",
                        "reason_code": "similar_items",
                        "category": "books",
                        "anchor_product_id": "P00017",
                    }
                ],
            }
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "service": "custops",
                "custops_version": "0.1.0",
                "ready": True,
                "load_error": None,
                "loaded_at": "2026-01-02T08:00:00Z",
                "models": {
                    "churn": {
                        "task": "churn",
                        "name": "custops-churn",
                        "version": "3",
                        "aliases": ["champion"],
                        "run_id": "0f3c2b1a9e8d7c6b5a4f3e2d1c0b9a8f",
                        "trained_on_snapshot": "fs-20260101T000000-1a2b3c4d",
                        "metrics": {"valid_roc_auc": 0.87},
                    }
                },
                "feature_snapshot": {"snapshot_id": "fs-20260101T000000-1a2b3c4d", "cutoff": "2026-01-01T00:00:00"},
                "features": [
                    {
                        "name": "recency_days",
                        "type": "number",
                        "categories": None,
                        "description": "Days since the last purchase.",
                        "used_by": ["churn", "clv", "propensity"],
                    }
                ],
                "horizons_days": {"churn": 90, "clv": 365, "propensity": 30},
                "risk_bands": [0.3, 0.6],
                "limits": {"max_batch": 500, "max_k": 100},
                "auth_required": False,
            }
        }
    )

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
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "reloaded": True,
                "model_versions": {"churn": "3", "clv": "2", "propensity": "4", "recommender": "1"},
                "snapshot_id": "fs-20260101T000000-1a2b3c4d",
                "error": None,
            }
        }
    )

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
