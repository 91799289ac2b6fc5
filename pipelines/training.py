"""Training pipelines: feature snapshot in, evaluated, tracked and registered model out.

Plain functions, callable from the CLI, notebooks or a scheduler. Each run logs parameters,
metrics (model and baselines on the same validation rows), lineage (the feature snapshot's
manifest), plots and the model with its signature to MLflow, registers the model as
`challenger`, and promotes it to `champion` only through the quality gate.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from custops.features.store import OfflineStore, Snapshot
from custops.models import metrics as M
from custops.models import plots
from custops.models.baselines import BASELINE_COLUMNS, baseline_scores, btyd_for
from custops.models.boosted import ChurnModel, HurdleCLVModel, PropensityModel
from custops.models.datasets import TASKS, TaskSpec, load_split, task_specs
from custops.models.registry import CHAMPION, GateDecision, GateError, Registry, quality_gate
from custops.settings import Settings

log = logging.getLogger(__name__)

PRIMARY_METRIC = {"churn": "roc_auc", "propensity": "roc_auc", "clv": "gini", "recommender": "ndcg@10"}
# Propensity's per-category metrics are diagnostics (the gate reads the main model): above this
# many validation rows they are measured on a seeded sample (ROC-AUC standard error ~0.001), which
# saves five full scorings (~50 s at 1M customers).
CATEGORY_EVAL_ROWS = 200_000


@dataclass
class TrainResult:
    """What one training run produced and decided."""

    task: str
    snapshot_id: str
    run_id: str
    version: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    grade: str
    gate: GateDecision
    promoted: bool
    split: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return PRIMARY_METRIC[self.task]


def make_model(task: str, settings: Settings, features: Sequence[str]) -> Any:
    """A fresh, unfitted model for the task with the settings' hyper-parameters."""
    m = settings.models
    common = dict(
        features=list(features),
        n_estimators=m.n_estimators,
        learning_rate=m.learning_rate,
        num_leaves=m.num_leaves,
        min_child_samples=m.min_child_samples,
        random_state=settings.seed,
        n_jobs=m.num_threads,
    )
    if task == "churn":
        # Its own tree shape: every served churn score is explained (pred_contrib), and shallow trees
        # make that ~20x cheaper at about the same accuracy (see ModelSettings.churn_max_depth).
        shape = dict(
            n_estimators=m.churn_n_estimators,
            learning_rate=m.churn_learning_rate,
            num_leaves=m.churn_num_leaves,
            max_depth=m.churn_max_depth,
        )
        return ChurnModel(risk_bands=m.risk_bands, **(common | shape))
    if task == "propensity":
        return PropensityModel(category_max_rows=m.category_max_rows, **common)
    if task == "clv":
        return HurdleCLVModel(**common)
    raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")


def predict_scores(task: str, model: Any, X: pd.DataFrame) -> np.ndarray:
    """The score a task is evaluated on: probability for classifiers, value for CLV."""
    return model.predict(X) if task == "clv" else model.predict_proba(X)[:, 1]


def evaluate_scores(task: str, y: np.ndarray, score: np.ndarray, *, probabilities: bool = True) -> dict[str, float]:
    return M.value_metrics(y, score) if task == "clv" else M.binary_metrics(y, score, probabilities=probabilities)


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Object strings with None for missing values (what MLflow signatures and JSON handle cleanly)."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.StringDtype) or out[c].dtype == object:
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def _sample_rows(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most n rows of df, a seeded sample in the original order."""
    return df if len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


def train_task(settings: Settings, task: str, *, snapshot_id: str | None = None, promote: bool = True) -> TrainResult:
    """Train, evaluate against baselines, log to MLflow, register as challenger, gate, promote."""
    snap = OfflineStore(settings.offline_store_dir).get(snapshot_id)
    spec = task_specs(settings.features)[task]
    feats = snap.manifest["feature_services"][f"{task}_v1"]
    cat_labels = [lab["name"] for lab in snap.manifest["labels"] if lab["name"].startswith(f"{spec.label}_cat_")]
    extra = (*BASELINE_COLUMNS, *(cat_labels if task == "propensity" else ()))
    split = load_split(snap, spec, extra, max_train_rows=settings.models.max_train_rows, seed=settings.seed)
    train, valid = split.train, split.valid
    model = make_model(task, settings, feats)
    if task == "propensity":  # also one model per top category (labels exist where data has categories)
        model.fit(train[feats], train[spec.label], cutoff=train["cutoff"], category_targets=train[cat_labels])
    else:
        model.fit(train[feats], train[spec.label], cutoff=train["cutoff"])

    y = valid[spec.label].to_numpy(dtype=float)
    score = predict_scores(task, model, valid[feats])
    metrics = evaluate_scores(task, y, score)
    btyd_fits: dict[str, Any] = {}
    base_scores = baseline_scores(task, train, valid, spec, btyd_fits)
    baselines = {name: evaluate_scores(task, y, s, probabilities=False) for name, s in base_scores.items()}
    primary = PRIMARY_METRIC[task]
    if task == "clv":
        # Two CLV models compete on the same validation rows; the better one is the one served.
        btyd = btyd_for(btyd_fits, train, spec, "bgnbd")  # the baseline's fit, not a second one
        btyd_metrics = evaluate_scores(task, y, np.nan_to_num(btyd.predict(valid)))
        if btyd_metrics[primary] > metrics[primary]:
            baselines["lightgbm_hurdle"] = metrics
            base_scores["lightgbm_hurdle"] = score
            baselines.pop("btyd_bgnbd_gamma_gamma", None)
            base_scores.pop("btyd_bgnbd_gamma_gamma", None)
            model, metrics = btyd, btyd_metrics
            score = np.nan_to_num(btyd.predict(valid))
    best_base = max(b[primary] for b in baselines.values())
    grade = M.grade(metrics[primary], best_base)

    registry = Registry(settings)
    champion_metric = None
    champion_version = registry.alias_version(task, CHAMPION)
    if champion_version is not None:
        champ = registry.load(task, CHAMPION)
        try:
            champion_metric = evaluate_scores(task, y, predict_scores(task, champ, valid))[primary]
        except (KeyError, ValueError) as e:  # the champion reads features this snapshot does not have
            log.warning(
                "champion v%s of %s cannot score this snapshot (%s): gate compares baselines only",
                champion_version,
                task,
                e,
            )
    decision = quality_gate(
        primary_metric=primary,
        challenger=metrics[primary],
        baselines={k: v[primary] for k, v in baselines.items()},
        champion=champion_metric,
        tolerance=settings.models.gate_tolerance,
    )

    tables = _tables(task, model, valid, y, score, spec)
    if task == "propensity" and model.category_models_:
        cat_valid = _sample_rows(valid, CATEGORY_EVAL_ROWS, settings.seed)
        cat_scores = model.predict_categories(cat_valid[feats])
        rows = []
        for col in cat_scores.columns:
            m = M.binary_metrics(cat_valid[col].to_numpy(), cat_scores[col].to_numpy())
            rows.append({"category": col.rsplit("_cat_", 1)[1], **m})
            metrics[f"cat_{col.rsplit('_cat_', 1)[1]}_roc_auc"] = m["roc_auc"]
            metrics[f"cat_{col.rsplit('_cat_', 1)[1]}_lift_top_decile"] = m["lift_top_decile"]
        tables["categories"] = pd.DataFrame(rows)
    run_id, model_uri = _log_run(
        settings,
        registry,
        snap,
        spec,
        task,
        model,
        train,
        valid,
        feats,
        metrics,
        baselines,
        grade,
        decision,
        split.describe(),
        base_scores,
        y,
        score,
        tables,
        champion_metric,
    )
    version = registry.register(task, model_uri, run_id, metrics)
    promoted = promote and registry.promote_if_gate_passes(task, version, decision)
    return TrainResult(
        task, snap.snapshot_id, run_id, version, metrics, baselines, grade, decision, promoted, split.describe(), tables
    )


def _tables(task: str, model: Any, valid: pd.DataFrame, y: np.ndarray, score: np.ndarray, spec: TaskSpec) -> dict:
    if task == "churn":
        value = valid["revenue_365d"].fillna(0).to_numpy()
        return {"targeting": M.targeting_table(y, score, value), "reliability": M.reliability(y, score)}
    if task == "clv":
        return {"deciles": M.decile_table(y, score)}
    return {"reliability": M.reliability(y, score)}


def _log_run(
    settings: Settings,
    registry: Registry,
    snap: Snapshot,
    spec: TaskSpec,
    task: str,
    model: Any,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    feats: list[str],
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    grade: str,
    decision: GateDecision,
    split: dict[str, Any],
    base_scores: dict[str, np.ndarray],
    y: np.ndarray,
    score: np.ndarray,
    tables: dict[str, pd.DataFrame],
    champion_metric: float | None,
) -> tuple[str, str]:
    exp = registry.experiment_id()
    with mlflow.start_run(experiment_id=exp, run_name=f"{task}-{snap.snapshot_id}") as run:
        mlflow.set_tags(
            {
                "task": task,
                "snapshot_id": snap.snapshot_id,
                "snapshot_fingerprint": snap.manifest.get("fingerprint", ""),
                "git_commit": snap.manifest.get("git_commit") or "",
                "grade": grade,
                "gate": "passed" if decision.passed else "failed",
            }
        )
        params = {k: v for k, v in model.get_params().items() if k != "features"}
        mlflow.log_params(
            {
                **params,
                "task": task,
                "label": spec.label,
                "horizon_days": spec.horizon_days,
                "population": spec.population,
                "snapshot_id": snap.snapshot_id,
                "n_features": len(feats),
                "valid_cutoff": split["valid_cutoff"],
                "n_train_cutoffs": len(split["train_cutoffs"]),
                "train_rows": len(train),
                "valid_rows": len(valid),
            }
        )
        mlflow.log_metrics({f"valid_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        for name, bm in baselines.items():
            mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in bm.items() if np.isfinite(v)})
        if champion_metric is not None:
            mlflow.log_metric(f"champion_{PRIMARY_METRIC[task]}", champion_metric)
        mlflow.log_dict(
            {
                "snapshot_id": snap.snapshot_id,
                "fingerprint": snap.manifest.get("fingerprint"),
                "sources": snap.manifest.get("sources"),
                "cutoffs": snap.manifest.get("cutoffs"),
                "split": split,
                "features": feats,
            },
            "lineage.json",
        )
        mlflow.log_dict({"passed": decision.passed, "reason": decision.reason, "checks": decision.checks}, "gate.json")
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            booster = getattr(model, "booster_", None) or getattr(model, "spend_booster_", None)
            if booster is not None:  # the BTYD model has no trees
                plots.feature_importance(
                    model.encoder_.columns, booster.feature_importance("gain"), out / "feature_importance.png"
                )
            if task in ("churn", "propensity"):
                plots.calibration(tables["reliability"], out / "calibration_curve.png")
                plots.gain_chart(y, {"model": score, **base_scores}, out / "lift_gain_chart.png")
            else:
                plots.decile_chart(tables["deciles"], out / "clv_decile_chart.png")
                plots.gain_chart(y, {"model": score, **base_scores}, out / "value_gain_chart.png")
            for name, t in tables.items():
                t.to_csv(out / f"{name}.csv", index=task == "clv")
            mlflow.log_artifacts(str(out), artifact_path="evaluation")
        example = _plain(valid[feats].head(5))
        output = predict_scores(task, model, valid[feats].head(5))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, output),
            input_example=example,
            pyfunc_predict_fn="predict" if task == "clv" else "predict_proba",
            # skops (MLflow's default) only loads allow-listed types; our estimators hold a LightGBM
            # Booster and an encoder, so use cloudpickle (the registry is trusted, local by default).
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            pip_requirements=model_requirements(),
        )
        return run.info.run_id, info.model_uri


def model_requirements() -> list[str]:
    """The packages a logged model needs, pinned to this environment.

    Given explicitly: MLflow's inference imports the model in a subprocess (~10 s per model) and
    misses LightGBM, which the pickled boosters need.
    """
    return [f"{p}=={version(p)}" for p in ("custops", "lightgbm", "scikit-learn", "pandas", "numpy", "cloudpickle")]


def train_all(
    settings: Settings, tasks: Sequence[str] = TASKS, *, snapshot_id: str | None = None, promote: bool = True
) -> list[TrainResult]:
    """Train every task on the same snapshot."""
    snap_id = snapshot_id or OfflineStore(settings.offline_store_dir).latest_id()
    return [train_task(settings, t, snapshot_id=snap_id, promote=promote) for t in tasks]


def promote(settings: Settings, task: str, version: str | None = None, *, force: bool = False) -> str:
    """Promote a version (default: the challenger) through the gate recorded at its training."""
    reg = Registry(settings)
    version = version or reg.alias_version(task, "challenger")
    if version is None:
        raise GateError(f"{reg.name(task)} has no challenger: run `custops train {task}` first")
    info = reg.version_info(task, version)
    gate = mlflow.artifacts.load_dict(f"runs:/{info['run_id']}/gate.json")
    decision = GateDecision(
        gate["passed"],
        PRIMARY_METRIC[task],
        info["metrics"].get(f"valid_{PRIMARY_METRIC[task]}", float("nan")),
        gate["checks"],
    )
    reg.promote(task, version, decision, force=force)
    return version


def rollback(settings: Settings, task: str) -> str:
    return Registry(settings).rollback(task)
