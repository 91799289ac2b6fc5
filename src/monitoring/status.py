"""Turn drift, quality and performance findings into one status (ok / warning / drift) with reasons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from custops.settings import MonitoringSettings

OK, WARNING, DRIFT = "ok", "warning", "drift"
_RANK = {OK: 0, WARNING: 1, DRIFT: 2}


@dataclass
class Assessment:
    """The worst status found and every reason behind it, most severe first."""

    status: str = OK
    reasons: list[dict[str, str]] = field(default_factory=list)

    def add(self, status: str, area: str, message: str) -> None:
        self.reasons.append({"status": status, "area": area, "message": message})
        if _RANK[status] > _RANK[self.status]:
            self.status = status

    def sorted_reasons(self) -> list[dict[str, str]]:
        return sorted(self.reasons, key=lambda r: -_RANK[r["status"]])


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=lambda s: _RANK[s], default=OK)


def assess_data(
    share: float, n_drifted: int, n_features: int, drifted: Sequence[str], ms: MonitoringSettings, out: Assessment
) -> None:
    """Dataset drift: the share of drifted features against the thresholds."""
    names = ", ".join(drifted[:8]) + (f" and {len(drifted) - 8} more" if len(drifted) > 8 else "")
    msg = f"{n_drifted} of {n_features} features drifted ({share:.0%})" + (f": {names}" if names else "")
    if share >= ms.drift_share:
        out.add(DRIFT, "data drift", f"{msg}; threshold {ms.drift_share:.0%}")
    elif share >= ms.warning_share:
        out.add(WARNING, "data drift", f"{msg}; warning at {ms.warning_share:.0%}")


def assess_quality(quality: Mapping[str, Mapping[str, Any]], ms: MonitoringSettings, out: Assessment) -> None:
    """Data quality: new categories, rising missing values, values outside the reference range."""
    for col, q in quality.items():
        if q.get("new_categories"):
            shown = ", ".join(repr(v) for v in q["new_categories"][:5])
            out.add(
                WARNING,
                "data quality",
                f"{col}: new categories {shown} ({q.get('new_category_share') or 0:.1%} of rows)",
            )
        rise = (q.get("missing_share") or 0.0) - (q.get("reference_missing_share") or 0.0)
        if rise > ms.missing_increase:
            out.add(
                WARNING,
                "data quality",
                f"{col}: missing values rose from {q['reference_missing_share']:.1%} to {q['missing_share']:.1%}",
            )
        if (q.get("out_of_range_share") or 0.0) > ms.out_of_range_share:
            lo, hi = q.get("reference_range", (None, None))
            out.add(
                WARNING,
                "data quality",
                f"{col}: {q['out_of_range_share']:.1%} of values outside the reference range [{lo:.4g}, {hi:.4g}]",
            )


def assess_segments(segments: Sequence[Mapping[str, Any]], ms: MonitoringSettings, out: Assessment) -> None:
    """Segment drift: a drifted priority segment (e.g. the high-value tier) is drift, others warn."""
    for seg in segments:
        share = seg.get("share_drifted")
        if share is None or share < ms.segment_drift_share:
            continue
        names = ", ".join(seg["drifted_features"][:5])
        msg = f"segment {seg['segment']} ({seg['current_rows']:,} customers): {share:.0%} of features drifted ({names})"
        out.add(DRIFT if seg["priority"] else WARNING, "segment drift", msg)
