"""MLflow model registry with aliases, a promotion quality gate and an audit log.

MLflow keeps which version an alias points to *now*, not who moved it when and why; the audit
log (append-only JSON lines) keeps that history, and `rollback` reads it to restore the previous
champion.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from custops.errors import GateError, StoreError
from custops.settings import Settings

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass
class GateDecision:
    """Whether a challenger may become champion, with every check and its numbers."""

    passed: bool
    primary_metric: str
    challenger: float
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reason(self) -> str:
        failed = [c["check"] for c in self.checks if not c["passed"]]
        return "all checks passed" if not failed else "failed: " + "; ".join(failed)


def quality_gate(
    *,
    primary_metric: str,
    challenger: float,
    baselines: dict[str, float],
    champion: float | None,
    tolerance: float,
    higher_is_better: bool = True,
) -> GateDecision:
    """Beat every baseline, and be no worse than the champion (same validation data) beyond `tolerance`."""
    sign = 1 if higher_is_better else -1
    checks = []
    for name, value in baselines.items():
        ok = not math.isnan(challenger) and (math.isnan(value) or sign * (challenger - value) > 0)
        checks.append({"check": f"{primary_metric} {challenger:.4f} beats baseline {name} ({value:.4f})", "passed": ok})
    if champion is not None and not math.isnan(champion):
        ok = sign * (challenger - champion) >= -tolerance
        checks.append(
            {
                "check": f"{primary_metric} {challenger:.4f} within {tolerance} of champion ({champion:.4f})",
                "passed": ok,
            }
        )
    return GateDecision(all(c["passed"] for c in checks), primary_metric, challenger, checks)


class Registry:
    """Registered models `<prefix>-<task>`, their aliases, and the audit log of every decision."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # No usage telemetry leaves this machine unless the user opts in.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.tracking_uri = settings.tracking_uri()
        if self.tracking_uri.startswith("sqlite:"):
            settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.tracking_uri)
        # MLflow also exports the URI to MLFLOW_TRACKING_URI, which Settings.tracking_uri() honours:
        # restore the user's value so a later Settings with another home gets its own database.
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
        self.client = MlflowClient(self.tracking_uri)
        self.audit_path = settings.audit_log_path

    def experiment_id(self) -> str:
        """The experiment (created on first use, with artifacts under home for the SQLite default)."""
        name = self.settings.models.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:"):
            location = (self.settings.mlflow_dir / "artifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def name(self, task: str) -> str:
        return f"{self.settings.models.registry_prefix}-{task}"

    def register(self, task: str, model_uri: str, run_id: str, metrics: dict[str, float]) -> str:
        """Register a new version and point `challenger` at it."""
        name = self.name(task)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=f"custops {task} model")
        mv = self.client.create_model_version(name, model_uri, run_id=run_id)
        self.client.set_registered_model_alias(name, CHALLENGER, mv.version)
        self._audit(task, "register", mv.version, reason="new challenger", metrics=metrics)
        return str(mv.version)

    def alias_version(self, task: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name(task), alias).version)
        except MlflowException:
            return None

    def model_uri(self, task: str, alias: str = CHAMPION) -> str:
        version = self.alias_version(task, alias)
        if version is None:
            raise StoreError(f"{self.name(task)} has no '{alias}' version: run `custops train {task}` first")
        return f"models:/{self.name(task)}/{version}"

    def load(self, task: str, alias: str = CHAMPION) -> Any:
        """The model object behind an alias (the custops estimator, not a pyfunc wrapper)."""
        return mlflow.sklearn.load_model(self.model_uri(task, alias))

    def version_info(self, task: str, version: str) -> dict[str, Any]:
        mv = self.client.get_model_version(self.name(task), version)
        run = self.client.get_run(mv.run_id)
        return {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "metrics": run.data.metrics,
            "snapshot_id": run.data.params.get("snapshot_id"),
            "aliases": list(mv.aliases),
        }

    def promote(self, task: str, version: str, decision: GateDecision | None, *, force: bool = False) -> None:
        """Make `version` champion if the gate passed (or `force`); every decision is audited."""
        previous = self.alias_version(task, CHAMPION)
        if decision is not None and not decision.passed and not force:
            self._audit(task, "refuse", version, previous=previous, reason=decision.reason, gate=asdict(decision))
            raise GateError(f"{self.name(task)} v{version} not promoted: {decision.reason}")
        self.client.set_registered_model_alias(self.name(task), CHAMPION, version)
        reason = (
            "forced by user"
            if force and decision is not None and not decision.passed
            else (decision.reason if decision else "manual promotion")
        )
        self._audit(
            task, "promote", version, previous=previous, reason=reason, gate=asdict(decision) if decision else None
        )

    def promote_if_gate_passes(self, task: str, version: str, decision: GateDecision) -> bool:
        """Promote when the gate passed; a refusal is audited and logged, not raised. True if promoted."""
        try:
            self.promote(task, version, decision)
        except GateError as e:
            log.warning("%s", e)
            return False
        return True

    def rollback(self, task: str) -> str:
        """Point `champion` back at the version that was champion before the current one."""
        current = self.alias_version(task, CHAMPION)
        if current is None:
            raise StoreError(f"{self.name(task)} has no champion to roll back")
        promotions = [r for r in self.history(task) if r["action"] == "promote"]
        # Walk the champion chain backwards: the previous champion of the promotion that installed
        # `current`. Rollback records are not promotions: following them would flip back and forth
        # between the last two champions instead of stepping further back.
        for rec in reversed(promotions):
            if rec["version"] == current and rec.get("previous") not in (None, current):
                target = rec["previous"]
                break
        else:
            raise StoreError(f"{self.name(task)} v{current} has no earlier champion to roll back to")
        self.client.set_registered_model_alias(self.name(task), CHAMPION, target)
        self._audit(task, "rollback", target, previous=current, reason=f"rolled back from v{current}")
        return target

    def history(self, task: str | None = None) -> list[dict[str, Any]]:
        """Audit records, oldest first."""
        if not self.audit_path.exists():
            return []
        recs = [json.loads(line) for line in self.audit_path.read_text().splitlines() if line.strip()]
        return [r for r in recs if task is None or r["task"] == task]

    def _audit(self, task: str, action: str, version: str, **extra: Any) -> None:
        rec = {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "task": task,
            "model": self.name(task),
            "action": action,
            "version": str(version),
            "by": os.environ.get("CUSTOPS_USER") or _user(),
            **{k: v for k, v in extra.items() if v is not None},
        }
        self.audit_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, default=str) + "\n"
        # One write of one line in append mode, then fsync: records are never interleaved or lost.
        with open(self.audit_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        log.info("registry %s %s v%s: %s", action, rec["model"], version, extra.get("reason", ""))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
