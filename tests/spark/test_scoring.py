"""Spark batch scoring applies the same champions as local scoring and gets the same scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from custops.cli import app
from custops.errors import ConfigError
from custops.pipelines.scoring import score
from custops.pipelines.spark_scoring import score_spark
from custops.settings import Settings


@pytest.mark.slow
def test_spark_scores_equal_local_scores(spark: Any, trained: tuple[Settings, dict], tmp_path: Path) -> None:
    settings, _ = trained
    run = score_spark(settings, out=tmp_path / "scores.parquet", session=spark)
    local = score(settings).sort_values("customer_id").reset_index(drop=True)
    remote = pd.read_parquet(run.path).sort_values("customer_id").reset_index(drop=True)

    assert run.rows == len(local) == len(remote) > 0
    assert list(remote.columns) == list(local.columns)
    assert remote["churn_probability"].notna().sum() > 0 and remote["churn_probability"].isna().sum() > 0  # prospects
    for col in local.columns:
        a, b = local[col], remote[col]
        assert a.isna().equals(b.isna()), col
        if pd.api.types.is_float_dtype(a):
            np.testing.assert_allclose(b.to_numpy(float), a.to_numpy(float), rtol=1e-9, equal_nan=True, err_msg=col)
        else:
            assert a[a.notna()].astype(str).equals(b[b.notna()].astype(str)), col
    assert run.versions == {t: local[f"{t}_model_version"].iloc[0] for t in ("churn", "clv", "propensity")}


@pytest.mark.slow
def test_cli_score_on_spark(
    spark: Any, trained: tuple[Settings, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ = trained
    monkeypatch.setenv("CUSTOPS_HOME", str(settings.home))
    monkeypatch.setenv("CUSTOPS_MODELS__TRACKING_URI", settings.tracking_uri())
    out = tmp_path / "cli-scores.parquet"
    res = CliRunner().invoke(app, ["score", "--engine", "spark", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "customers at cutoff" in res.output and out.is_dir()
    assert len(pd.read_parquet(out)) == len(score(settings))

    res = CliRunner().invoke(app, ["score", "--engine", "spark", "--customers", "C000001"])
    assert res.exit_code == 2 and "drop --engine spark" in res.output


def test_csv_output_is_refused_before_any_work(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "empty")  # no snapshot, no models: the output is checked first
    with pytest.raises(ConfigError, match="Spark engine writes Parquet"):
        score_spark(settings, out=tmp_path / "scores.csv")
