"""Monitoring fixtures: the shared trained champions, their reference window, and two same-distribution halves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custops.monitoring.windows import Window
from custops.pipelines import monitoring as PM
from custops.settings import MonitoringSettings, Settings


def with_output(settings: Settings, out: Path, **thresholds: object) -> Settings:
    """The shared trained settings with monitoring output in `out` (the trained home stays read-only)."""
    return settings.model_copy(update={"monitoring": MonitoringSettings(output_dir=out, **thresholds)})


@pytest.fixture(scope="session")
def monitoring_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("monitoring")


@pytest.fixture(scope="session")
def mon_settings(trained: tuple[Settings, dict], monitoring_out: Path) -> Settings:
    return with_output(trained[0], monitoring_out)


@pytest.fixture(scope="session")
def champions(mon_settings: Settings) -> dict:
    return PM.load_champions(mon_settings)


@pytest.fixture(scope="session")
def reference(mon_settings: Settings, champions: dict) -> Window:
    """The churn champion's validation cutoff, scored by the champions (labels observed)."""
    return PM.reference_window(mon_settings, champions)


@pytest.fixture(scope="session")
def halves(reference: Window) -> tuple[Window, Window]:
    """The reference customers split at random in two: one distribution, two windows."""
    mask = np.random.default_rng(0).random(reference.rows) < 0.5
    frame = reference.frame
    return (
        Window("reference", "frame", frame[mask].reset_index(drop=True), dict(reference.meta)),
        Window("current", "frame", frame[~mask].reset_index(drop=True), {"half": "second"}),
    )


def features_only(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Feature rows without the model outputs (so a window built from them is scored afresh)."""
    return frame.drop(columns=list(PM.prediction_columns(settings).values()))


INJECTED = ("revenue_365d", "recency_days", "avg_order_value")


@pytest.fixture(scope="session")
def ok_run(mon_settings: Settings, champions: dict, halves: tuple[Window, Window]) -> PM.MonitorResult:
    ref, cur = halves
    return PM.monitor_windows(mon_settings, ref, cur, champions, label="same-distribution")


@pytest.fixture(scope="session")
def drift_run(
    mon_settings: Settings, champions: dict, halves: tuple[Window, Window], ok_run: PM.MonitorResult
) -> PM.MonitorResult:
    """A price rise and a churn wave injected into the second half, rescored by the champions."""
    ref, cur = halves
    rows = features_only(cur.frame, mon_settings)
    rows["revenue_365d"] *= 3.0
    rows["avg_order_value"] *= 3.0
    rows["recency_days"] += 120
    current = PM.frame_window(rows, champions, mon_settings, source="injected drift")
    return PM.monitor_windows(mon_settings, ref, current, champions, label="injected-drift")
