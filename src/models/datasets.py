"""Training data from a feature snapshot: task definitions and honest time-based splits."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import pyarrow.compute as pc

from custops.errors import ConfigError, StoreError
from custops.features.store import Snapshot
from custops.settings import FeatureSettings

log = logging.getLogger(__name__)

TaskName = Literal["churn", "clv", "propensity"]
TASKS: tuple[TaskName, ...] = ("churn", "clv", "propensity")


@dataclass(frozen=True)
class TaskSpec:
    """What a model predicts, for whom, and over which horizon."""

    name: TaskName
    label: str
    horizon_days: int
    population: Literal["buyers", "all"]
    description: str


def task_specs(fs: FeatureSettings) -> dict[str, TaskSpec]:
    ch, va, pr = fs.churn_horizon_days, fs.value_horizon_days, fs.propensity_horizon_days
    return {
        "churn": TaskSpec(
            "churn",
            f"label_churn_{ch}d",
            ch,
            "buyers",
            f"P(no purchase in the next {ch} days) for customers who have bought.",
        ),
        "clv": TaskSpec("clv", f"label_value_{va}d", va, "buyers", f"Net spend in the next {va} days."),
        "propensity": TaskSpec(
            "propensity", f"label_purchase_{pr}d", pr, "all", f"P(any purchase in the next {pr} days)."
        ),
    }


@dataclass
class Split:
    """Rows to train on and the later cutoff to validate on (label windows do not overlap)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    train_cutoffs: list[pd.Timestamp]
    valid_cutoff: pd.Timestamp
    train_rows_available: int | None = None  # before sampling (None: not sampled)

    def describe(self) -> dict[str, object]:
        return {
            "train_cutoffs": [str(c.date()) for c in self.train_cutoffs],
            "valid_cutoff": str(self.valid_cutoff.date()),
            "train_rows": len(self.train),
            "train_rows_available": self.train_rows_available or len(self.train),
            "valid_rows": len(self.valid),
        }


def task_rows(spec: TaskSpec) -> pc.Expression:
    """The snapshot rows a task learns from: a complete label, in the task's population."""
    expr = pc.field(spec.label).is_valid()
    if spec.population == "buyers":
        expr = expr & (pc.field("n_orders") > 0)
    return expr


def split_cutoffs(
    cutoffs: Sequence[pd.Timestamp], spec: TaskSpec, valid_cutoff: pd.Timestamp | None = None
) -> tuple[list[pd.Timestamp], pd.Timestamp]:
    """Validate on the latest labelled cutoff; train on cutoffs whose label window ends before it.

    A training cutoff t qualifies only if t + horizon <= validation cutoff, so no training label
    looks at events the validation features or labels see.
    """
    cutoffs = sorted(pd.Timestamp(c) for c in cutoffs)
    if not cutoffs:
        raise ConfigError(
            f"no cutoff has a complete '{spec.label}' label: build a snapshot whose cutoffs reach at least "
            f"{spec.horizon_days} days before the end of the data (e.g. more cutoffs: --n-cutoffs)"
        )
    vc = pd.Timestamp(valid_cutoff) if valid_cutoff is not None else cutoffs[-1]
    if vc not in cutoffs:
        raise ConfigError(f"validation cutoff {vc.date()} has no complete '{spec.label}' label")
    train_cuts = [c for c in cutoffs if c + pd.Timedelta(days=spec.horizon_days) <= vc]
    if not train_cuts:
        raise ConfigError(
            f"no training cutoff ends its {spec.horizon_days}-day label window before the validation cutoff "
            f"{vc.date()}: build a snapshot with more (earlier) cutoffs"
        )
    return train_cuts, vc


def load_task_frame(snapshot: Snapshot, spec: TaskSpec, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Every snapshot row with a complete label for the task's population (filtered in the scan).

    For exploration; training reads through `load_split`, which also samples big data.
    """
    feats = snapshot.manifest["feature_services"][f"{spec.name}_v1"]
    cols = list(dict.fromkeys(["customer_id", "cutoff", *feats, *extra, spec.label, "n_orders"]))
    return snapshot.read(columns=cols, where=task_rows(spec))


def time_split(df: pd.DataFrame, spec: TaskSpec, valid_cutoff: pd.Timestamp | None = None) -> Split:
    """`split_cutoffs` applied to a frame already in memory (see `load_task_frame`)."""
    train_cuts, vc = split_cutoffs(list(df["cutoff"].unique()), spec, valid_cutoff)
    train = df[df["cutoff"].isin(train_cuts)].reset_index(drop=True)
    valid = df[df["cutoff"] == vc].reset_index(drop=True)
    return Split(train, valid, train_cuts, vc)


def allocate_sample(counts: Mapping[pd.Timestamp, int], max_rows: int | None) -> dict[pd.Timestamp, int]:
    """Rows to keep per cutoff so the total is at most `max_rows`, proportional to each cutoff's rows.

    Proportional (stratified) allocation keeps every cutoff's share, so the sample has the same
    mix of seasons and customer ages as the full data; largest remainders fill the rounding gap.
    """
    total = sum(counts.values())
    if max_rows is None or total <= max_rows:
        return dict(counts)
    exact = {c: max_rows * n / total for c, n in counts.items()}
    out = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (out[c] - exact[c], c))[: max_rows - sum(out.values())]:
        out[c] += 1
    return out


def load_split(
    snapshot: Snapshot,
    spec: TaskSpec,
    extra: Sequence[str] = (),
    *,
    max_train_rows: int | None = None,
    seed: int = 0,
    valid_cutoff: pd.Timestamp | None = None,
) -> Split:
    """The task's time split read straight from the snapshot: filtered, projected and sampled in the scan.

    Only the task's columns and rows (complete label, population, training and validation cutoffs)
    are read; training rows are capped at `max_train_rows` by a seeded sample stratified by cutoff.
    The validation cutoff is always read in full, so metrics are measured on every customer.
    """
    feats = snapshot.manifest["feature_services"][f"{spec.name}_v1"]
    cols = list(dict.fromkeys(["customer_id", "cutoff", *feats, *extra, spec.label, "n_orders"]))
    counts = snapshot.count_rows(task_rows(spec))
    train_cuts, vc = split_cutoffs(list(counts), spec, valid_cutoff)
    keep = allocate_sample({c: counts[c] for c in train_cuts}, max_train_rows)
    available = sum(counts[c] for c in train_cuts)
    table = snapshot.read_table(cols, cutoffs=[*train_cuts, vc], where=task_rows(spec), sample=keep, seed=seed)
    n_train = sum(keep.values())  # ordered by cutoff, and every training cutoff is before vc: slice, no copy
    if table.num_rows != n_train + counts[vc]:  # the snapshot changed between the count and the read
        raise StoreError(f"snapshot {snapshot.snapshot_id} changed while it was read: train again")
    train, valid = table.slice(0, n_train).to_pandas(), table.slice(n_train).to_pandas()
    del table
    if len(train) < available:
        log.info("%s: training on %d of %d rows (max_train_rows=%s)", spec.name, len(train), available, max_train_rows)
    return Split(train, valid, train_cuts, vc, available)
