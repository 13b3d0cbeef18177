"""The monitoring dashboard (one self-contained HTML file) and per-model summaries. No Dagster here.

Charts are Plotly figures; plotly.js is inlined once, so the file opens offline in any browser.
`load_report_data` reads the warehouse into small frames; everything else works on those frames, so
the benchmark can build a dashboard for hundreds of models without a warehouse.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    ERROR_RATE_CHECK,
    LATENCY_CHECK,
    PERFORMANCE_CHECK,
    VOLUME_CHECK,
)
from monitor_assets.notify.state import AlertState

STATUS_ORDER = {"healthy": 0, "watch": 1, "retrain suggested": 2}


@dataclass
class ReportData:
    models: pd.DataFrame  # model_id, task, main_metric, baseline, latency_sla, error_sla
    performance: pd.DataFrame  # partition_date, model_id, main_metric, latency_p95_ms, error_rate, volume, label_coverage
    drift: pd.DataFrame  # partition_date, model_id, feature, statistic, threshold, drifted
    drift_share: pd.DataFrame  # partition_date, model_id, drift_share
    fairness: pd.DataFrame  # partition_date, model_id, attribute, grp, selection_rate, below_min_size
    alerts: pd.DataFrame  # partition_date, model_id, check_name, severity, value, threshold, message, status,
    #                       state (open, acknowledged, silenced, resolved), state_note (who, until, why)
    quality: pd.DataFrame  # partition_date, source, records_read, records_loaded, records_quarantined
    quarantine_reasons: pd.DataFrame  # source, reason, n


def load_report_data(con: duckdb.DuckDBPyConnection, config: MonitorConfig, last_day: dt.date) -> ReportData:
    base = dict(((m, k), v) for m, k, v in con.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall())
    models = pd.DataFrame([{
        "model_id": m.id, "task": m.task, "main_metric": m.main_metric, "baseline": base.get((m.id, m.main_metric)),
        "latency_sla": m.thresholds.latency_p95_ms, "error_sla": m.thresholds.error_rate,
    } for m in config.models])
    q = lambda sql: con.execute(sql, [last_day]).df()  # noqa: E731
    alerts = q("""SELECT partition_date, model_id, check_name, severity, value, threshold, message, status
                  FROM monitoring.alerts WHERE partition_date <= ? ORDER BY partition_date DESC""")
    return ReportData(
        models=models,
        performance=q("""SELECT partition_date, model_id, coalesce(roc_auc, mae) AS main_metric, latency_p95_ms,
                                error_rate, volume, label_coverage
                         FROM monitoring.performance_daily WHERE partition_date <= ? ORDER BY 1"""),
        drift=q("""SELECT partition_date, model_id, feature, statistic, threshold, drifted FROM monitoring.feature_drift
                   WHERE role = 'feature' AND partition_date <= ?"""),
        drift_share=q("SELECT partition_date, model_id, drift_share FROM monitoring.drift_summary WHERE partition_date <= ?"),
        fairness=q("""SELECT partition_date, model_id, attribute, grp, selection_rate, below_min_size
                      FROM monitoring.fairness WHERE partition_date <= ?"""),
        alerts=AlertState(config.state_path).annotate(alerts),
        quality=q("""SELECT partition_date, source, records_read, records_loaded, records_quarantined
                     FROM raw.ingestion_log WHERE partition_date <= ? ORDER BY 1"""),
        quarantine_reasons=q("""SELECT source, split_part(reason, ':', 1) AS reason, count(*) AS n FROM raw.quarantine
                                WHERE partition_date <= ? GROUP BY ALL ORDER BY n DESC"""),
    )


# ---------------------------------------------------------------------------------------------
# Summaries


def model_summaries(data: ReportData, recent_days: int = 7) -> list[dict]:
    """Per model: latest status, metric trend, top drifted features, open alerts, recommendation."""
    out = []
    open_alerts = data.alerts[data.alerts.status == "open"]  # acknowledged and silenced ones stay open
    for m in data.models.itertuples():
        perf = data.performance[data.performance.model_id == m.model_id].sort_values("partition_date")
        last_day = perf.partition_date.max() if len(perf) else None
        recent_start = last_day - pd.Timedelta(days=recent_days - 1) if last_day is not None else None
        labelled = perf[perf.label_coverage.fillna(0) >= 0.8].dropna(subset=["main_metric"])
        recent = labelled[labelled.partition_date >= recent_start] if recent_start is not None else labelled
        before = labelled[labelled.partition_date < recent_start] if recent_start is not None else labelled.iloc[0:0]
        trend = None
        if len(recent) and len(before):
            trend = float(recent.main_metric.mean() - before.tail(recent_days).main_metric.mean())
        drift = data.drift[(data.drift.model_id == m.model_id) & data.drift.drifted]
        if recent_start is not None:
            drift = drift[pd.to_datetime(drift.partition_date) >= recent_start]
        top_drift = drift.feature.value_counts().head(3).to_dict()
        alerts = open_alerts[open_alerts.model_id == m.model_id]
        recent_alerts = alerts[pd.to_datetime(alerts.partition_date) >= recent_start] if recent_start is not None else alerts
        perf_alert = (recent_alerts.check_name == PERFORMANCE_CHECK).any()
        drift_days = drift.partition_date.nunique()
        if perf_alert or (drift_days >= 3 and len(top_drift) >= 2):
            status, why = "retrain suggested", ("performance below baseline in the last days" if perf_alert
                                                 else f"inputs drifted on {drift_days} of the last {recent_days} days")
        elif len(recent_alerts):
            status, why = "watch", f"{len(recent_alerts)} open alert(s) in the last {recent_days} days"
        elif (alerts.severity == "ERROR").any():  # an open ERROR alert is never "healthy", however old
            status, why = "watch", f"{int((alerts.severity == 'ERROR').sum())} open ERROR alert(s)"
        else:
            status, why = "healthy", "no open alerts in the last days"
        latest = perf.iloc[-1] if len(perf) else None
        out.append({
            "model_id": m.model_id, "task": m.task, "status": status, "recommendation": status, "why": why,
            "last_day": str(last_day.date()) if last_day is not None else None,
            "main_metric": m.main_metric,
            "latest_main_metric": _num(labelled.main_metric.iloc[-1]) if len(labelled) else None,
            "baseline": _num(m.baseline), "trend_vs_previous_week": _num(trend),
            "latest_latency_p95_ms": _num(latest.latency_p95_ms) if latest is not None else None,
            "latest_error_rate": _num(latest.error_rate) if latest is not None else None,
            "latest_volume": int(latest.volume) if latest is not None else 0,
            "top_drifted_features": top_drift,
            "open_alerts": [{"date": str(pd.Timestamp(a.partition_date).date()), "check": a.check_name,
                             "severity": a.severity, "message": a.message, "state": a.state,
                             "state_note": a.state_note} for a in alerts.head(10).itertuples()],
            "open_alert_count": int(len(alerts)),
            "unhandled_alert_count": int((alerts.state == "open").sum()),
            "acknowledged_alert_count": int((alerts.state == "acknowledged").sum()),
            "silenced_alert_count": int((alerts.state == "silenced").sum()),
        })
    return out


def summaries_markdown(summaries: list[dict]) -> str:
    lines = ["# Model performance summary", ""]
    for s in summaries:
        trend = s["trend_vs_previous_week"]
        lines += [f"## {s['model_id']}: {s['recommendation']}", "",
                  f"- why: {s['why']}",
                  f"- {s['main_metric']}: {_fmt(s['latest_main_metric'])} (baseline {_fmt(s['baseline'])}, "
                  f"week-over-week {'n/a' if trend is None else f'{trend:+.3f}'})",
                  f"- latency p95 {_fmt(s['latest_latency_p95_ms'])} ms, error rate {_fmt(s['latest_error_rate'])}, "
                  f"volume {s['latest_volume']}",
                  f"- most drifted features (days, last week): "
                  f"{', '.join(f'{k} ({v})' for k, v in s['top_drifted_features'].items()) or 'none'}",
                  f"- open alerts: {s['open_alert_count']} ({s['unhandled_alert_count']} unhandled, "
                  f"{s['acknowledged_alert_count']} acknowledged, {s['silenced_alert_count']} silenced)"]
        lines += [f"  - {a['date']} {a['severity']} {a['check']}"
                  + (f" [{a['state']} {a['state_note']}]" if a["state"] != "open" else "") + f": {a['message']}"
                  for a in s["open_alerts"][:5]]
        lines.append("")
    return "\n".join(lines)


def _num(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) or pd.isna(x) else float(x)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}"


# ---------------------------------------------------------------------------------------------
# Dashboard

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1f2328}
header{background:#1f2937;color:#fff;padding:16px 28px} header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:13px} main{padding:20px 28px;max-width:1400px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:16px 20px;margin-bottom:18px}
h2{font-size:18px;margin:0 0 12px} h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{padding:6px 8px;border-bottom:1px solid #eef0f3;text-align:left}
th{background:#f3f4f6;font-weight:600} .status{padding:2px 8px;border-radius:10px;font-weight:600;font-size:12px}
.healthy{background:#dcfce7;color:#166534} .watch{background:#fef9c3;color:#854d0e}
.retrain{background:#fee2e2;color:#991b1b} .ERROR{color:#b91c1c;font-weight:600} .WARN{color:#a16207;font-weight:600}
nav a{margin-right:14px;color:#2563eb;text-decoration:none;font-size:14px} .muted{color:#6b7280;font-size:12px}
"""


def _status_badge(status: str) -> str:
    cls = "retrain" if status.startswith("retrain") else status
    return f'<span class="status {cls}">{html.escape(status)}</span>'


def _table(df: pd.DataFrame, row_class: str = "", limit: int = 200) -> str:
    if df.empty:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.head(limit).itertuples(index=False):
        cells = "".join(f"<td>{_cell(v)}</td>" for v in row)
        body.append(f'<tr class="{row_class}">{cells}</tr>')
    more = f'<p class="muted">{len(df) - limit} more rows</p>' if len(df) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _cell(v) -> str:
    if isinstance(v, str) and v.startswith("<span"):
        return v
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.4g}"
    if isinstance(v, pd.Timestamp):
        return str(v.date())
    return html.escape(str(v))


# Plotly's templates add ~8 kB of JSON to every figure; one small shared layout keeps the file small.
LAYOUT = {"plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "font": {"size": 11, "color": "#374151"}}
AXIS = {"gridcolor": "#eef0f3", "zeroline": False, "linecolor": "#d1d5db"}


def _days(values) -> list[str]:
    return [str(pd.Timestamp(v).date()) for v in values]


def _round(values, digits: int = 4) -> list:
    """Four significant digits are plenty on a chart and halve the JSON."""
    arr = np.asarray(values, dtype=float)
    return [None if np.isnan(v) else float(f"{v:.{digits}g}") for v in arr]


def _model_figure(perf: pd.DataFrame, model, alerts: pd.DataFrame):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=4, subplot_titles=(
        f"{model.main_metric} (baseline dashed)", "latency p95 (ms)", "error rate", "volume"),
        horizontal_spacing=0.06)
    x = _days(perf.partition_date)
    series = [("main_metric", model.baseline), ("latency_p95_ms", model.latency_sla), ("error_rate", model.error_sla),
              ("volume", None)]
    checks = {"main_metric": [PERFORMANCE_CHECK], "latency_p95_ms": [LATENCY_CHECK],
              "error_rate": [ERROR_RATE_CHECK], "volume": [VOLUME_CHECK]}
    for col, (name, line) in enumerate(series, start=1):
        fig.add_trace(go.Scatter(x=x, y=_round(perf[name]), mode="lines+markers", name=name, showlegend=False,
                                 line={"color": "#2563eb", "width": 1.5}, marker={"size": 4}), row=1, col=col)
        if line is not None and not pd.isna(line):
            fig.add_hline(y=float(line), line_dash="dash", line_color="#9ca3af", row=1, col=col)
        hit = alerts[alerts.check_name.isin(checks[name])]
        if len(hit):
            days = pd.to_datetime(hit.partition_date)
            ys = perf.set_index(pd.to_datetime(perf.partition_date))[name].reindex(days)
            fig.add_trace(go.Scatter(x=_days(days), y=_round(ys), mode="markers", name="alert", showlegend=False,
                                     marker={"color": "#dc2626", "size": 10, "symbol": "x"}), row=1, col=col)
    fig.update_layout(height=260, margin={"l": 40, "r": 10, "t": 40, "b": 30}, template="none", **LAYOUT)
    fig.update_xaxes(type="date", **AXIS)
    fig.update_yaxes(**AXIS)
    return fig


def _drift_figure(drift: pd.DataFrame):
    import plotly.graph_objects as go

    d = drift.assign(ratio=drift.statistic / drift.threshold)
    pivot = d.pivot_table(index="feature", columns="partition_date", values="ratio", aggfunc="max")
    z = [[None if np.isnan(v) else float(f"{v:.2g}") for v in row] for row in pivot.to_numpy()]
    fig = go.Figure(go.Heatmap(z=z, x=_days(pivot.columns),
                               y=list(pivot.index), zmin=0, zmax=2, colorscale="RdYlGn_r",
                               colorbar={"title": "stat / threshold"}))
    fig.update_layout(height=120 + 22 * len(pivot.index), margin={"l": 140, "r": 10, "t": 30, "b": 30},
                      title={"text": "drift (1 = threshold)", "font": {"size": 13}}, template="none", **LAYOUT)
    return fig


def _fairness_figure(fair: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    for (attr, grp), g in fair.groupby(["attribute", "grp"]):
        fig.add_trace(go.Scatter(x=_days(g.partition_date), y=_round(g.selection_rate, 3), mode="lines",
                                 name=f"{attr}={grp}" + (" (small)" if g.below_min_size.any() else "")))
    fig.update_layout(height=240, margin={"l": 40, "r": 10, "t": 30, "b": 30}, template="none", **LAYOUT,
                      title={"text": "selection rate by group", "font": {"size": 13}})
    fig.update_xaxes(type="date", **AXIS)
    fig.update_yaxes(**AXIS)
    return fig


def build_dashboard(data: ReportData, generated: dt.datetime | None = None, title: str = "Model monitoring") -> str:
    """The whole dashboard as one HTML string with plotly.js inline (no network needed)."""
    from plotly.offline import get_plotlyjs

    generated = generated or dt.datetime.now(dt.UTC)
    summaries = model_summaries(data)
    figures: list[tuple[str, object]] = []
    overview = pd.DataFrame([{
        "model": s["model_id"], "status": _status_badge(s["status"]), "why": s["why"],
        "main metric": f"{s['main_metric']} {_fmt(s['latest_main_metric'])}",
        "baseline": s["baseline"], "latency p95 ms": s["latest_latency_p95_ms"], "error rate": s["latest_error_rate"],
        "volume": s["latest_volume"], "open alerts": s["unhandled_alert_count"],
        "acknowledged": s["acknowledged_alert_count"], "silenced": s["silenced_alert_count"],
    } for s in sorted(summaries, key=lambda s: -STATUS_ORDER[s["status"]])])
    sections = [f'<section id="overview"><h2>Models</h2>{_table(overview)}</section>']
    open_alerts = data.alerts[data.alerts.status == "open"].copy()
    open_alerts["severity"] = [f'<span class="{s}">{s}</span>' for s in open_alerts.severity]
    parts = ['<section id="alerts">']
    for state, title in (("open", "Open alerts"), ("acknowledged", "Acknowledged (open, not notified)"),
                         ("silenced", "Silenced (open, not notified)")):
        rows = open_alerts[open_alerts.state == state].drop(columns=["status", "state"])
        if state == "open":
            rows = rows.drop(columns=["state_note"])
        parts.append(f'<h2 id="alerts-{state}">{title} ({len(rows)})</h2>'
                     f'{_table(rows, row_class="alert-row" if state == "open" else f"alert-{state}")}')
    sections.append("".join(parts) + "</section>")
    for m in data.models.itertuples():
        perf = data.performance[data.performance.model_id == m.model_id].sort_values("partition_date")
        alerts = data.alerts[data.alerts.model_id == m.model_id]
        parts = [f'<section id="model-{html.escape(m.model_id)}"><h2>{html.escape(m.model_id)} '
                 f'<span class="muted">{html.escape(m.task)}</span></h2>']
        if len(perf):
            figures.append((f"perf-{m.model_id}", _model_figure(perf, m, alerts)))
            parts.append(f'<div class="chart" id="perf-{html.escape(m.model_id)}"></div>')
        drift = data.drift[data.drift.model_id == m.model_id]
        if len(drift):
            figures.append((f"drift-{m.model_id}", _drift_figure(drift)))
            parts.append(f'<h3>Feature drift by day</h3><div class="chart" id="drift-{html.escape(m.model_id)}"></div>')
        fair = data.fairness[data.fairness.model_id == m.model_id]
        if len(fair) and fair.selection_rate.notna().any():
            figures.append((f"fair-{m.model_id}", _fairness_figure(fair)))
            parts.append(f'<h3>Fairness by group</h3><div class="chart" id="fair-{html.escape(m.model_id)}"></div>')
        parts.append("</section>")
        sections.append("".join(parts))
    quality = data.quality.groupby("source", as_index=False)[["records_read", "records_loaded",
                                                              "records_quarantined"]].sum()
    sections.append(f'<section id="quality"><h2>Data quality</h2>{_table(quality)}'
                    f'<h3>Quarantine reasons</h3>{_table(data.quarantine_reasons)}</section>')
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in
                   [("overview", "Models"), ("alerts", "Alerts"), ("quality", "Data quality")] +
                   [(f"model-{m}", m) for m in data.models.model_id])
    scripts = "\n".join(
        f"(function(){{var f={fig.to_json()};Plotly.newPlot({json.dumps(div)},f.data,f.layout,"
        "{displaylogo:false,responsive:true});})();"
        for div, fig in figures)
    last = data.performance.partition_date.max()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>
<script>{get_plotlyjs()}</script></head>
<body><header><h1>{html.escape(title)}</h1>
<p>Data through {html.escape(str(pd.Timestamp(last).date()) if pd.notna(last) else "n/a")} · generated
{generated:%Y-%m-%d %H:%M} UTC · {len(data.models)} models · {int((open_alerts.state == "open").sum())} open alerts,
{int((open_alerts.state == "acknowledged").sum())} acknowledged, {int((open_alerts.state == "silenced").sum())} silenced</p>
<nav>{nav}</nav></header>
<main>{''.join(sections)}</main>
<script>{scripts}</script></body></html>"""
