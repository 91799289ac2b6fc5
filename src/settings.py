"""One typed settings object: defaults < TOML file (custops.toml) < CUSTOPS_* environment variables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# A DuckDB memory size, e.g. "1500MB", "2GB", "1.5GiB".
MEMORY_SIZE_PATTERN = r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"


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
    # How the DuckDB engine runs (not what it computes: left out of snapshot fingerprints).
    memory_limit: str | None = Field(
        None,
        pattern=MEMORY_SIZE_PATTERN,
        description="DuckDB memory cap for feature builds, e.g. '1500MB' (default: DuckDB's, 80% of RAM); it "
        "spills to disk beyond it. The process also holds the running totals (~60 bytes per event).",
    )
    threads: int | None = Field(None, ge=1, description="DuckDB threads for feature builds (default: all cores).")

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
    churn_n_estimators: int = Field(
        200, ge=10, description="Churn: maximum boosting rounds (early stopping may use fewer)."
    )
    churn_learning_rate: float = Field(0.15, gt=0, le=1, description="Churn: learning rate.")
    churn_num_leaves: int = Field(8, ge=2, description="Churn: leaves per tree.")
    churn_max_depth: int = Field(
        3,
        ge=-1,
        description="Churn: tree depth limit (-1: none). The served churn reasons are TreeSHAP contributions "
        "(LightGBM pred_contrib), whose cost grows with trees x leaves x depth^2: 200 trees of depth 3 explain a "
        "customer ~20x faster than 400 unbounded 31-leaf trees, at a ROC-AUC within 0.0015 (measured trade-off in "
        "benchmarks/README.md, serving).",
    )
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
    max_train_rows: int | None = Field(
        500_000,
        ge=1000,
        description="Train the boosted models on a seeded sample of at most this many rows, stratified by cutoff "
        "(None: every row). Validation rows are never sampled. On the 100k-customer benchmark, 500k of 990k churn "
        "rows cost 0.0003 ROC-AUC and halved the fit.",
    )
    category_max_rows: int | None = Field(
        200_000,
        ge=1000,
        description="Propensity's per-category models learn from a seeded sample of at most this many of the "
        "training rows (None: all of them).",
    )


class MonitoringSettings(BaseModel):
    """Drift and performance thresholds of `custops monitor` (Evidently picks each column's test)."""

    drift_share: float = Field(
        0.3, gt=0, le=1, description="Share of drifted features at which the data counts as drifted (status drift)."
    )
    warning_share: float = Field(0.15, ge=0, le=1, description="Share of drifted features that raises a warning.")
    num_method: str | None = Field(
        None, description="Evidently drift method for numeric features (e.g. 'ks', 'psi'); None: Evidently's choice."
    )
    cat_method: str | None = Field(None, description="Evidently drift method for categorical features; None: auto.")
    num_threshold: float | None = Field(
        None,
        description="Per-feature threshold as the method takes it (p-value for tests, distance for "
        "Wasserstein/Jensen-Shannon/PSI); None: the method's default.",
    )
    cat_threshold: float | None = Field(None, description="Like num_threshold, for categorical features.")
    prediction_method: str | None = Field(None, description="Drift method for model outputs; None: auto.")
    prediction_threshold: float | None = Field(
        None, description="Threshold for drift of each model's output (churn probability, CLV, propensity)."
    )
    performance_tolerance: float = Field(
        0.05, ge=0, description="Largest tolerated drop of ROC-AUC (churn, propensity) or Gini (CLV) vs training."
    )
    calibration_tolerance: float = Field(
        0.05,
        ge=0,
        description="Largest tolerated change (vs the reference) of the gap between observed and mean predicted "
        "rate of churn / propensity on labelled data.",
    )
    segment_columns: tuple[str, ...] = Field(
        ("value_tier", "lifecycle_stage"), description="Columns whose values are monitored as separate segments."
    )
    priority_segments: tuple[str, ...] = Field(
        ("value_tier=platinum", "value_tier=gold"),
        description="column=value segments whose drift counts as drift (others only warn).",
    )
    segment_min_rows: int = Field(100, ge=10, description="Segments smaller than this in either window are not tested.")
    segment_drift_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of drifted features at which a segment counts as drifted. Higher than drift_share: "
        "segments below 1,000 rows get p-value tests, which also catch seasonal shifts a distance ignores.",
    )
    out_of_range_share: float = Field(
        0.05, ge=0, le=1, description="Share of a feature's values outside the reference range that raises a warning."
    )
    missing_increase: float = Field(
        0.1, ge=0, le=1, description="Rise in a feature's missing share (vs reference) that raises a warning."
    )
    max_rows: int = Field(50_000, ge=1000, description="Sample each window down to this many rows (seeded).")
    workspace: bool = Field(
        False, description="Also add each run to an Evidently workspace (output_dir/workspace; `evidently ui`)."
    )
    output_dir: Path | None = Field(
        None, description="Where runs, index.html and alerts.jsonl go; default home/monitoring."
    )

    @field_validator("priority_segments")
    @classmethod
    def _column_equals_value(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if "=" not in s or not s.split("=", 1)[0] or not s.split("=", 1)[1]]
        if bad:
            raise ValueError(f"segments are written column=value (e.g. value_tier=platinum), not {bad[0]!r}")
        return v


class SparkSettings(BaseModel):
    """Where and how the Spark engine runs (`--engine spark`)."""

    master: str | None = Field(
        None,
        description="Spark master URL (local[N], spark://host:7077, yarn, k8s://...); default: spark-submit's "
        "master when run inside spark-submit, else local[2].",
    )
    remote: str | None = Field(
        None, description="Spark Connect URL (sc://host:15002); SPARK_REMOTE is honoured too. Wins over `master`."
    )
    app_name: str = Field("custops", description="Spark application name (shown in the Spark UI / history server).")
    shuffle_partitions: int = Field(
        8, ge=1, description="spark.sql.shuffle.partitions: a few per core locally; raise it on a cluster."
    )
    driver_memory: str = Field("2g", description="spark.driver.memory for a session custops starts itself.")
    ui: bool = Field(False, description="Serve the Spark web UI (off by default: tests and batch jobs).")
    log_level: str = Field("WARN", description="Spark's log level (ERROR, WARN, INFO, ...).")
    conf: dict[str, str] = Field(
        default_factory=dict, description="Extra Spark configuration, e.g. spark.executor.memory = '8g'."
    )
    validated_uri: str | None = Field(
        None,
        description="Where Spark reads the validated layer (a path or URI: s3a://, hdfs://, abfss://); "
        "default: <home>/data/validated.",
    )


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
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb", description="Engine for `features build` and `score`: duckdb (in-process) or spark."
    )
    spark: SparkSettings = Field(default_factory=SparkSettings)

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

    @property
    def monitoring_dir(self) -> Path:
        return self.monitoring.output_dir or self.home / "monitoring"

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
