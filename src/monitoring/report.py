"""What a monitoring run leaves behind: a dated run folder, the index of runs and the alert log.

    <monitoring>/index.html                      every run, newest first, with a status badge and links
    <monitoring>/alerts.jsonl                    append-only alert records (one JSON object a line)
    <monitoring>/runs/<YYYY-MM-DD>/<HHMMSS>-<label>/
        report.html     the Evidently report (self-contained: its JS bundle is inlined)
        summary.json    drifted features, share drifted, per-model status, segments, thresholds
        summary.html    the same for people: status, reasons, models, segments, data quality
        quarantine.parquet   rows of the current window left out, with a `_reason` (if any)

The pages are static HTML (no script), so they open from the file system in any browser.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, Undefined, select_autoescape

from custops.io import atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)

REPORT_FILE, SUMMARY_FILE, PAGE_FILE, QUARANTINE_FILE = (
    "report.html",
    "summary.json",
    "summary.html",
    "quarantine.parquet",
)
INDEX_FILE, ALERTS_FILE, WORKSPACE_DIR = "index.html", "alerts.jsonl", "workspace"

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def _missing(v: Any) -> bool:
    return v is None or isinstance(v, Undefined) or v != v


_ENV.filters["pct"] = lambda v: "-" if _missing(v) else f"{v:.0%}"
_ENV.filters["num"] = lambda v, d=3: "-" if _missing(v) else f"{v:,.{d}f}"

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2933;max-width:75rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #d9e2ec;padding:.35rem .7rem;text-align:left;vertical-align:top}
th{background:#f0f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;font-weight:600;font-size:.8rem;color:#fff}
.ok{background:#2f8132}.warning{background:#c47f00}.drift{background:#c62828}
.muted{color:#627d98}a{color:#0b69a3}code{background:#f0f4f8;padding:0 .25rem}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>custops monitoring: {{ s.run_id }}</title>
<style>{{ style }}</style></head><body>
<p><a href="../../../index.html">&larr; all runs</a></p>
<h1>Monitoring run {{ s.run_id }} <span class="badge {{ s.status }}">{{ s.status }}</span></h1>
<p class="muted">{{ s.created_at }} &middot; reference: {{ s.reference.source }} {{ s.reference.snapshot_id or '' }}
{{ s.reference.cutoff or '' }} ({{ s.reference.rows }} rows) &middot; current: {{ s.current.source }}
{{ s.current.snapshot_id or s.current.path or '' }} {{ s.current.cutoff or '' }} ({{ s.current.rows }} rows
{%- if s.current.quarantined %}, {{ s.current.quarantined }} quarantined{% endif %})</p>
<p><a href="{{ files.report }}">Evidently report (data drift, prediction drift, data quality)</a> &middot;
<a href="{{ files.summary }}">summary.json</a>{% if files.quarantine %} &middot;
<a href="{{ files.quarantine }}">quarantined rows</a>{% endif %}</p>
{% if s.recommendation %}<p><strong>Recommendation:</strong> {{ s.recommendation }}</p>{% endif %}
<h2>Why this status</h2>
{% if s.reasons %}<table><tr><th>status</th><th>area</th><th>finding</th></tr>
{% for r in s.reasons %}<tr><td><span class="badge {{ r.status }}">{{ r.status }}</span></td><td>{{ r.area }}</td>
<td>{{ r.message }}</td></tr>{% endfor %}</table>
{% else %}<p>Nothing passed a threshold.</p>{% endif %}
<h2>Models</h2>
<table><tr><th>model</th><th>status</th><th>output drift</th><th>metric</th><th>at training</th>
<th>estimated, reference (CBPE)</th><th>estimated, current (CBPE)</th><th>realised, current</th></tr>
{% for task, m in s.models.items() %}<tr><td>{{ task }} v{{ m.version }}</td>
<td><span class="badge {{ m.status }}">{{ m.status }}</span></td>
<td>{% if m.prediction_drift %}{{ m.prediction_drift.method }} {{ m.prediction_drift.score|num }}
(threshold {{ m.prediction_drift.threshold|num }})
{%- if m.prediction_drift.drifted %} <strong>drifted</strong>{% endif %}{% else %}-{% endif %}</td>
<td>{{ m.metric }}</td><td class="n">{{ m.training.get(m.metric)|num }}</td>
<td class="n">{{ m.estimated.reference.get(m.metric)|num if m.estimated else '-' }}</td>
<td class="n">{{ m.estimated.current.get(m.metric)|num if m.estimated else '-' }}</td>
<td class="n">{{ m.realised.current.get(m.metric)|num if m.realised.current else 'labels not yet observed' }}</td></tr>
{% endfor %}</table>
<p class="muted">CBPE estimates ROC-AUC from the calibrated probabilities alone (no labels needed); the realised
value appears once the label window of the current rows is observed.</p>
<h2>Data drift: {{ s.data_drift.n_drifted }} of {{ s.data_drift.n_features }} features
({{ s.data_drift.share_drifted|pct }})</h2>
<table><tr><th>feature</th><th>method (Evidently's choice)</th><th>score</th><th>threshold</th><th>drifted</th></tr>
{% for f in drift_rows %}<tr><td>{{ f.column }}</td><td>{{ f.method }}</td><td class="n">{{ f.score|num }}</td>
<td class="n">{{ f.threshold|num }}</td><td>{{ 'yes' if f.drifted else '' }}</td></tr>{% endfor %}</table>
<h2>Segments</h2>
<table><tr><th>segment</th><th>priority</th><th>reference rows</th><th>current rows</th><th>features drifted</th>
<th>drifted features</th></tr>
{% for g in s.segments %}<tr><td>{{ g.segment }}</td><td>{{ 'yes' if g.priority else '' }}</td>
<td class="n">{{ g.reference_rows }}</td><td class="n">{{ g.current_rows }}</td>
<td class="n">{{ g.share_drifted|pct if g.tested else 'too few rows' }}</td>
<td>{{ g.drifted_features[:6]|join(', ') }}</td></tr>{% endfor %}</table>
<h2>Data quality</h2>
{% if quality_rows %}<table><tr><th>feature</th><th>missing, reference</th><th>missing, current</th>
<th>outside reference range</th><th>new categories</th></tr>
{% for q in quality_rows %}<tr><td>{{ q.column }}</td><td class="n">{{ q.reference_missing_share|pct }}</td>
<td class="n">{{ q.missing_share|pct }}</td><td class="n">{{ q.out_of_range_share|pct }}</td>
<td>{{ q.new_categories|join(', ') }}</td></tr>{% endfor %}</table>
{% else %}<p>No missing values, new categories or out-of-range values.</p>{% endif %}
<h2>Thresholds</h2><pre>{{ thresholds }}</pre>
</body></html>
"""

_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>custops monitoring</title>
<style>{{ style }}</style></head><body>
<h1>custops monitoring</h1>
<p class="muted">{{ runs|length }} runs, newest first. Alerts: <a href="alerts.jsonl">alerts.jsonl</a>.
Re-run with <code>custops monitor</code>.</p>
<table><tr><th>run</th><th>status</th><th>current window</th><th>features drifted</th><th>models</th>
<th>top findings</th><th>links</th></tr>
{% for r in runs %}<tr><td>{{ r.created_at }}<br><span class="muted">{{ r.label }}</span></td>
<td><span class="badge {{ r.status }}">{{ r.status }}</span></td>
<td>{{ r.current }}</td><td class="n">{{ r.share|pct }}</td>
<td>{% for task, st in r.models.items() %}{{ task }} <span class="badge {{ st }}">{{ st }}</span> {% endfor %}</td>
<td>{{ r.findings|join('; ') }}</td>
<td><a href="{{ r.page }}">summary</a> &middot; <a href="{{ r.report }}">Evidently report</a></td></tr>
{% endfor %}</table>
</body></html>
"""


def new_run_dir(root: Path, created_at: dt.datetime, label: str) -> Path:
    """runs/<date>/<time>-<label>/ (a suffix keeps two runs in the same second apart)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:60] or "run"
    base = Path(root) / "runs" / f"{created_at:%Y-%m-%d}" / f"{created_at:%H%M%S}-{slug}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def write_run(
    run_dir: Path, summary: dict[str, Any], snapshot: Any, quarantine: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write the Evidently HTML, summary.json, summary.html (and quarantined rows) into `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": run_dir / REPORT_FILE, "summary": run_dir / SUMMARY_FILE, "page": run_dir / PAGE_FILE}
    with atomic_path(paths["report"]) as tmp:
        snapshot.save_html(str(tmp))
    if quarantine is not None and len(quarantine):
        paths["quarantine"] = write_parquet(quarantine.astype({"_reason": "string"}), run_dir / QUARANTINE_FILE)
    summary["files"] = {k: p.name for k, p in paths.items()}
    summary.update(json_safe(summary))
    write_json(summary, paths["summary"])
    drift_rows = sorted(summary["data_drift"]["features"].values(), key=lambda f: (not f["drifted"], f["column"]))
    quality_rows = [
        {"column": c, **q}
        for c, q in summary["data_quality"].items()
        if q.get("missing_share")
        or q.get("reference_missing_share")
        or q.get("out_of_range_share")
        or q.get("new_categories")
    ]
    html = _ENV.from_string(_PAGE).render(
        s=summary,
        files=summary["files"],
        drift_rows=drift_rows,
        quality_rows=quality_rows,
        thresholds=json.dumps(summary["thresholds"], indent=2, default=str),
        style=_STYLE,
    )
    with atomic_path(paths["page"]) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return paths


def json_safe(obj: Any) -> Any:
    """The same structure with NaN and infinities as None (JSON has neither; browsers reject them)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_index(root: Path) -> Path:
    """Rebuild index.html from every run's summary.json (newest first)."""
    root = Path(root)
    runs = []
    for path in sorted(root.glob(f"runs/*/*/{SUMMARY_FILE}")):
        try:
            s = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # a run folder being written or damaged: list the rest
            log.warning("skipping %s in the index: %s", path, e)
            continue
        rel = path.parent.relative_to(root).as_posix()
        cur = s.get("current", {})
        where = cur.get("snapshot_id") or cur.get("path") or cur.get("source")
        runs.append(
            {
                "created_at": s.get("created_at", ""),
                "label": s.get("label", ""),
                "status": s.get("status", "ok"),
                "current": f"{cur.get('source', '')}: {where or ''} {cur.get('cutoff') or ''} "
                f"({cur.get('rows', 0):,} rows)",
                "share": s.get("data_drift", {}).get("share_drifted"),
                "models": {t: m.get("status", "ok") for t, m in s.get("models", {}).items()},
                "findings": [r["message"] for r in s.get("reasons", [])[:3]],
                "page": f"{rel}/{PAGE_FILE}",
                "report": f"{rel}/{REPORT_FILE}",
            }
        )
    runs.sort(key=lambda r: r["created_at"], reverse=True)
    index = root / INDEX_FILE
    with atomic_path(index) as tmp:
        tmp.write_text(_ENV.from_string(_INDEX).render(runs=runs, style=_STYLE), encoding="utf-8")
    return index


def add_to_workspace(root: Path, snapshot: Any, name: str, project: str = "custops") -> str:
    """Add the run's Evidently snapshot to a local Evidently workspace under `root`/workspace.

    Browse it with `evidently ui --workspace <root>/workspace` (dashboards over runs); returns the
    snapshot id there.
    """
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(Path(root) / WORKSPACE_DIR))
    found = ws.search_project(project)
    target = found[0] if found else ws.create_project(project, description="custops monitoring runs")
    return str(ws.add_run(target.id, snapshot, name=name).id)


def append_alert(root: Path, record: dict[str, Any]) -> Path:
    """Append one alert record (a single write of one line, then fsync: never interleaved or lost)."""
    path = Path(root) / ALERTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_alerts(root: Path) -> list[dict[str, Any]]:
    path = Path(root) / ALERTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
