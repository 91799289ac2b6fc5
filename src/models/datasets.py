"""Training data from a feature snapshot: task definitions and honest time-based splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from custops.errors import ConfigError
from custops.features.store import Snapshot
from custops.settings import FeatureSettings

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

    def describe(self) -> dict[str, object]:
        return {
            "train_cutoffs": [str(c.date()) for c in self.train_cutoffs],
            "valid_cutoff": str(self.valid_cutoff.date()),
            "train_rows": len(self.train),
            "valid_rows": len(self.valid),
        }


def load_task_frame(snapshot: Snapshot, spec: TaskSpec, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Snapshot rows with a complete label for the task's population."""
    feats = snapshot.manifest["feature_services"][f"{spec.name}_v1"]
    cols = list(dict.fromkeys(["customer_id", "cutoff", *feats, *extra, spec.label, "n_orders"]))
    df = snapshot.read(columns=cols)
    df = df[df[spec.label].notna()]
    if spec.population == "buyers":
        df = df[df["n_orders"] > 0]
    return df.reset_index(drop=True)


def time_split(df: pd.DataFrame, spec: TaskSpec, valid_cutoff: pd.Timestamp | None = None) -> Split:
    """Validate on the latest labelled cutoff; train on cutoffs whose label window ends before it.

    A training cutoff t qualifies only if t + horizon <= validation cutoff, so no training label
    looks at events the validation features or labels see.
    """
    cutoffs = sorted(pd.Timestamp(c) for c in df["cutoff"].unique())
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
    train = df[df["cutoff"].isin(train_cuts)].reset_index(drop=True)
    valid = df[df["cutoff"] == vc].reset_index(drop=True)
    return Split(train, valid, train_cuts, vc)
