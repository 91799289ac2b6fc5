"""One typed settings object: defaults < TOML file (custops.toml) < CUSTOPS_* environment variables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class FeatureSettings(BaseModel):
    """How features and labels are computed."""

    windows_days: tuple[int, ...] = Field((30, 90, 180, 365), description="Look-back windows for windowed features.")
    engagement_windows_days: tuple[int, ...] = Field((30, 90), description="Look-back windows for interaction counts.")
    n_cutoffs: int = Field(36, ge=1, description="How many cutoffs `features build` makes by default.")
    cutoff_every_months: int = Field(1, ge=1, description="Spacing of the default cutoff series, in months.")
    churn_horizon_days: int = Field(90, ge=1, description="Churn label: no purchase in [t, t+H).")
    value_horizon_days: int = Field(365, ge=1, description="Future-value label: net spend in [t, t+H).")
    propensity_horizon_days: int = Field(30, ge=1, description="Propensity labels: any purchase in [t, t+K).")
    top_categories: int = Field(5, ge=0, description="Per-category propensity labels for this many top categories.")
    # Lifecycle-stage rules (documented in custops.features.segments).
    new_days: int = Field(90, ge=1, description="A customer whose first purchase is this recent is 'new'.")
    at_risk_days: int = Field(90, ge=1, description="Days since last purchase after which a customer is 'at-risk'.")
    churned_days: int = Field(180, ge=1, description="Days since last purchase after which a customer is 'churned'.")
    loyal_min_orders_365d: int = Field(4, ge=1, description="Orders in the last 365 days that make a customer 'loyal'.")

    @field_validator("windows_days", "engagement_windows_days")
    @classmethod
    def _positive_sorted(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(w <= 0 for w in v):
            raise ValueError("windows must be a non-empty list of positive day counts")
        return tuple(sorted(set(v)))


class ModelSettings(BaseModel):
    """How models are trained, gated and tracked."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: SQLite under home (MLFLOW_TRACKING_URI is honoured too).",
    )
    experiment: str = Field("custops", description="MLflow experiment name.")
    registry_prefix: str = Field("custops", description="Registered models are named <prefix>-<task>.")
    n_estimators: int = Field(400, ge=10, description="Maximum boosting rounds (early stopping may use fewer).")
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(50, ge=1)
    risk_bands: tuple[float, float] = Field(
        (0.3, 0.6), description="Churn probability thresholds: < low is 'low', >= high is 'high', else 'medium'."
    )
    gate_tolerance: float = Field(
        0.005, ge=0, description="A challenger may be at most this much worse than the champion on the primary metric."
    )
    num_threads: int = Field(
        1,
        ge=1,
        description="LightGBM threads. OpenMP spin-waiting makes >1 slower on a busy 2-core machine; "
        "raise it on a dedicated one.",
    )
    max_train_rows: int | None = Field(None, ge=1000, description="Sample training rows down to this many (speed).")


class Settings(BaseSettings):
    """custops settings. Paths default under a project-local `.custops/` directory."""

    model_config = SettingsConfigDict(
        env_prefix="CUSTOPS_",
        env_nested_delimiter="__",
        toml_file="custops.toml",
        extra="ignore",
    )

    home: Path = Field(Path(".custops"), description="Root of every local artefact.")
    seed: int = Field(42, description="Seed for data generation and model training.")
    as_of: dt.datetime | None = Field(
        None, description="'Now' for validation (future-timestamp check); default: the current UTC time."
    )
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # Derived paths (one place, so every layer agrees on the layout).
    @property
    def raw_dir(self) -> Path:
        return self.home / "data" / "raw"

    @property
    def validated_dir(self) -> Path:
        return self.home / "data" / "validated"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "data" / "quarantine"

    @property
    def offline_store_dir(self) -> Path:
        return self.home / "store" / "offline"

    @property
    def online_store_path(self) -> Path:
        return self.home / "store" / "online.sqlite"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def audit_log_path(self) -> Path:
        return self.home / "registry" / "audit.jsonl"

    @property
    def scores_dir(self) -> Path:
        return self.home / "scores"

    def tracking_uri(self) -> str:
        """MLflow tracking URI: settings, else MLFLOW_TRACKING_URI, else SQLite under home."""
        import os

        uri = self.models.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    def now(self) -> dt.datetime:
        """The reference 'now' (naive UTC)."""
        if self.as_of is not None:
            ts = self.as_of
            if ts.tzinfo is not None:
                ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
            return ts
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def load_settings(**overrides: Any) -> Settings:
    """Settings from defaults, `custops.toml` in the working directory and CUSTOPS_* variables."""
    return Settings(**overrides)
