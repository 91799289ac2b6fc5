"""Task splits read straight from a snapshot: filtered, time-ordered and (for big data) sampled by cutoff."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from custops.errors import ConfigError
from custops.features.store import OfflineStore
from custops.models.datasets import allocate_sample, load_split, split_cutoffs, task_specs
from custops.settings import FeatureSettings

SPECS = task_specs(FeatureSettings())


def test_allocation_is_proportional_and_sums_to_the_cap() -> None:
    counts = {pd.Timestamp("2024-01-01"): 1000, pd.Timestamp("2024-02-01"): 2000, pd.Timestamp("2024-03-01"): 7}
    keep = allocate_sample(counts, 1001)
    assert sum(keep.values()) == 1001
    total = sum(counts.values())
    assert all(abs(keep[c] - 1001 * n / total) < 1 and keep[c] <= n for c, n in counts.items())
    assert allocate_sample(counts, None) == counts == allocate_sample(counts, 5000)


def test_split_cutoffs_leave_the_label_window_before_validation() -> None:
    cuts = list(pd.date_range("2024-01-01", periods=6, freq="MS"))
    train, valid = split_cutoffs(cuts, SPECS["churn"])  # 90-day label
    assert valid == cuts[-1] and train == cuts[:3]
    with pytest.raises(ConfigError, match="no training cutoff"):
        split_cutoffs(cuts[-2:], SPECS["churn"])
    with pytest.raises(ConfigError, match="no cutoff has a complete 'label_churn_90d'"):
        split_cutoffs([], SPECS["churn"])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["churn", "propensity"])
def test_split_reads_the_task_rows_and_samples_training_rows_by_cutoff(feature_store_home: Path, task: str) -> None:
    snap = OfflineStore(feature_store_home / "store" / "offline").get()
    spec = SPECS[task]
    full = load_split(snap, spec)
    everything = snap.read(["customer_id", "cutoff", "n_orders", spec.label])
    rows = everything[everything[spec.label].notna()]
    if spec.population == "buyers":
        rows = rows[rows["n_orders"] > 0]
    assert full.valid_cutoff == rows["cutoff"].max() and (full.valid["cutoff"] == full.valid_cutoff).all()
    assert len(full.valid) == (rows["cutoff"] == full.valid_cutoff).sum()
    assert len(full.train) == full.train_rows_available == rows["cutoff"].isin(full.train_cutoffs).sum()
    assert full.train[spec.label].notna().all()

    cap = len(full.train) // 4
    small = load_split(snap, spec, max_train_rows=cap, seed=3)
    assert len(small.train) == cap and small.train_rows_available == len(full.train)
    assert small.describe()["train_rows"] == cap
    pd.testing.assert_frame_equal(small.valid, full.valid)  # validation is never sampled
    share = small.train["cutoff"].value_counts() / full.train["cutoff"].value_counts()
    assert share.between(0.25 - 0.01, 0.25 + 0.01).all()  # stratified: every cutoff keeps its share
    merged = small.train.merge(full.train, on=["customer_id", "cutoff"], suffixes=("", "_full"))
    assert len(merged) == cap and (merged[spec.label] == merged[f"{spec.label}_full"]).all()
    pd.testing.assert_frame_equal(small.train, load_split(snap, spec, max_train_rows=cap, seed=3).train)


@pytest.mark.slow
def test_in_memory_split_matches_the_split_read_from_the_snapshot(feature_store_home: Path) -> None:
    from custops.models.datasets import load_task_frame, time_split

    snap = OfflineStore(feature_store_home / "store" / "offline").get()
    spec = SPECS["clv"]
    in_memory, read = time_split(load_task_frame(snap, spec), spec), load_split(snap, spec)
    assert in_memory.describe() == read.describe()
    pd.testing.assert_frame_equal(in_memory.train, read.train)
    pd.testing.assert_frame_equal(in_memory.valid, read.valid)
