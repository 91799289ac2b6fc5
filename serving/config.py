"""Serving-only options (CUSTOPS_SERVING_* variables); the rest comes from `custops.settings`."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from custops.settings import Settings


def default_workers() -> int:
    """One worker process per core this process may use, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4))


class ServingSettings(BaseSettings):
    """Limits, authentication, prediction logging and request coalescing of the HTTP service."""

    model_config = SettingsConfigDict(env_prefix="CUSTOPS_SERVING_", extra="ignore")

    max_batch: int = Field(500, ge=1, description="Most customer ids (or feature rows) one scoring request may carry.")
    max_k: int = Field(100, ge=1, description="Most products one recommendation request may ask for.")
    api_key_env: str = Field(
        "CUSTOPS_API_KEY",
        description="Name of the environment variable holding the API key; when it is set and non-empty, every "
        "endpoint except /healthz, /livez and /readyz needs the header X-API-Key.",
    )
    log_predictions: bool = Field(True, description="Append every scoring request and its predictions to the log.")
    log_dir: Path | None = Field(None, description="Prediction log folder (default: <home>/serving_logs).")
    coalesce_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Concurrent /score requests arriving within this many ms are scored in one model call "
        "(0: no waiting, but requests queued meanwhile are still scored together).",
    )
    workers: int = Field(
        default_factory=lambda: default_workers(),
        ge=1,
        description="Server worker processes (each loads the models, ~0.4 GB, and uses at most about one core). "
        "Default: one per available core, at most 4; on a 2-core box 2 workers are what meets the single-customer "
        "/score goal at 200 requests/s (benchmarks/README.md).",
    )
    watch_seconds: float = Field(
        0,
        ge=0,
        description="Hot reload: every this many seconds each worker checks the registry's champion aliases and "
        "the online store's snapshot, and swaps in new models / a refreshed store (0: off; `custops serve "
        "--reload` sets it to 10 unless given).",
    )

    def api_key(self) -> str | None:
        """The configured API key, or None when authentication is off."""
        return os.environ.get(self.api_key_env) or None

    def predictions_db(self, settings: Settings) -> Path:
        """The SQLite file the prediction log appends to."""
        return (self.log_dir or settings.home / "serving_logs") / "predictions.sqlite"
