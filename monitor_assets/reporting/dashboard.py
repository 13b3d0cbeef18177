"""The monitoring dashboard (an index page and a page per model) and per-model summaries. No Dagster here.

`dashboard.html` lists every model (status, why, main metric against baseline, open alerts, latency,
error rate, volume, a sparkline), sortable and filterable with a few lines of inline JavaScript;
`models/<model>.html` holds the model's Plotly charts and alerts. plotly.js is written once as
`assets/plotly.min.js` and referenced relatively, so every page opens offline from file://. The HTML
comes from Jinja2 templates in monitor_assets/templates/dashboard/ (autoescaped).
`load_report_data` reads the warehouse into small frames; everything else works on those frames, so
the benchmark can build a dashboard for hundreds of models without a warehouse.

Status, worst first (`STATUS_ORDER`). "Current" means dated within the last `RECENT_DAYS` days of the
model's data *and* on a day the model's current champion version was champion (from
monitoring.version_daily: the version serving most requests that day), so a version that no longer
serves drives nothing:
  retrain suggested  a current open performance alert, or inputs drifted on 3+ current days in 2+ features;
  action needed      a current open ERROR alert (fairness, error rate, ...);
  watch              a current open WARN alert, or an open ERROR alert that is not current (older, or from
                     a previous version) and has not recurred: never "healthy" while an ERROR is open;
  healthy            nothing of the above (open WARN alerts that are not current are only counted in "why").
The headline figure (the main metric shown against the baseline) and its week-over-week trend come from
the current champion's days only; a model without version records uses all its days.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    ERROR_RATE_CHECK,
    ESTIMATED_PERFORMANCE_CHECK,
    LATENCY_CHECK,
    PERFORMANCE_CHECK,
    RANKING_PERFORMANCE_CHECK,
    VOLUME_CHECK,
)
from monitor_assets.formatting import fmt_day, fmt_num, fmt_p, plural
from monitor_assets.links import INDEX_PAGE, MODELS_DIR, model_page
from monitor_assets.stats.distributions import P_FLOOR, Comparison, drift_evidence  # noqa: F401 - P_FLOOR: public
from monitor_assets.stats.drift import P_VALUE_METHODS
from monitor_assets.stats.versions import current_champions
from monitor_assets.storage.alert_state import AlertState
from monitor_assets.storage.reads import CHAMPION_COLUMNS, champion_days

STATUS_ORDER = {"healthy": 0, "watch": 1, "action needed": 2, "retrain suggested": 3}
RECENT_DAYS = 7  # an alert older than this (that has not recurred) no longer drives the status on its own


@dataclass
class ReportData:
    models: pd.DataFrame  # model_id, task, main_metric, baseline, latency_sla, error_sla
    performance: pd.DataFrame  # partition_date, model_id, main_metric, latency_p95_ms, error_rate, volume, label_coverage
    drift: pd.DataFrame  # partition_date, model_id, feature, statistic, threshold, drifted (optional: method,
    #                      p_value, p_value_adjusted; without them every row is read as a distance)
    drift_share: pd.DataFrame  # partition_date, model_id, drift_share
    fairness: pd.DataFrame  # partition_date, model_id, attribute, grp, selection_rate, below_min_size
    alerts: pd.DataFrame  # partition_date, model_id, check_name, severity, value, threshold, message, status,
    #                       state (open, acknowledged, silenced, resolved), state_note (who, until, why)
    quality: pd.DataFrame  # partition_date, source, records_read, records_loaded, records_quarantined
    quarantine_reasons: pd.DataFrame  # source, reason, n
    # The closed loop (empty when the warehouse has none): per day and model the day's mean loss, the
    # reference band and the flag; requests; versions; the latest comparison of each challenger.
    loss: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LOSS_COLUMNS))
    requests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REQUEST_COLUMNS))
    versions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=VERSION_COLUMNS))
    comparison: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMPARISON_COLUMNS))
    # The champion of each model on each day with traffic (empty: no version records, every day counts).
    champions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHAMPION_COLUMNS))
    # The main metric estimated before labels, per model and day, with its band and, once labels have landed,
    # the realized value and whether it fell inside the band (monitoring.estimated_performance; empty: none).
    estimated: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ESTIMATE_COLUMNS))
    # Reference against current distributions of the drifted feature-days (monitoring.drift_distributions;
    # empty: none drawn yet).
    distributions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DISTRIBUTION_COLUMNS))
    # The same for the evaluation windows whose drift verdict flagged a feature (monitoring.window_distributions;
    # empty: none).
    window_distributions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=WINDOW_DISTRIBUTION_COLUMNS))
    # Rankers (`task: ranking`, config.rankers, kept apart from `models`): one row each, and their whole-day rows
    # of monitoring.ranking_performance (empty: no ranker).
    rankers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANKER_COLUMNS))
    ranking: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANKING_COLUMNS))
    # Segmented rankers' main metric per day and segment, in the columns of `segments` (volume: requests,
    # n_labelled: labelled requests; monitoring.ranking_segment_performance; empty: none).
    ranker_segments: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_COLUMNS))
    # The segments of segmented models, per day (monitoring.segment_performance; empty: none).
    segments: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_COLUMNS))
    # Their judged segment-features on each model's latest day with any (monitoring.segment_drift; empty: none).
    segment_drift: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_DRIFT_COLUMNS))


LOSS_COLUMNS = ["partition_date", "model_id", "model_version", "loss", "mean_loss_day", "band_low", "band_high",
                "mean_current", "flagged"]
REQUEST_COLUMNS = ["request_id", "model_id", "model_version", "opened_on", "status", "reason", "decided_by", "note",
                   "outcome"]
VERSION_COLUMNS = ["model_id", "model_version", "first_seen", "last_seen", "traffic_share", "role", "champion_since"]
COMPARISON_COLUMNS = ["partition_date", "model_id", "champion_version", "challenger_version", "metric",
                      "champion_value", "challenger_value", "p_value", "gate", "verdict"]
ESTIMATE_COLUMNS = ["partition_date", "model_id", "metric", "estimate", "lower", "upper", "realized", "within_band"]
DISTRIBUTION_COLUMNS = ["partition_date", "model_id", "feature", "role", "kind", "method", "statistic", "p_value",
                        "threshold", "evidence", "bins", "n_current", "n_reference"]
WINDOW_DISTRIBUTION_COLUMNS = ["window_id", "window_name", "window_start", "window_end", "model_id", "feature", "kind",
                               "method", "statistic", "p_value", "threshold", "evidence", "bins", "n_current",
                               "n_reference"]
RANKER_COLUMNS = ["model_id", "main_metric", "ks", "labelled", "check"]  # labelled: has interactions configured
RANKING_COLUMNS = ["partition_date", "model_id", "metric", "value", "n_requests", "label_coverage", "labels_complete",
                   "reference_value", "floor", "p_value", "below_baseline"]
SEGMENT_COLUMNS = ["partition_date", "model_id", "segment", "volume", "n_labelled", "metric", "value",
                   "reference_value", "floor", "p_adjusted", "below_floor"]
SEGMENT_DRIFT_COLUMNS = ["partition_date", "model_id", "segment", "feature", "method", "statistic", "threshold",
                         "evidence", "drifted", "n_rows"]
SEGMENTS_SHOWN = 15  # per model page: the worst segments of the latest judged day
SEGMENT_LINES = 5  # per model page: the worst segments drawn over the days
REQUESTS_SHOWN = 20  # per model page: the newest requests
PICTURES_SHOWN = 12  # per model page: drifted features drawn side by side, the latest drift first


def load_report_data(con: duckdb.DuckDBPyConnection, config: MonitorConfig, last_day: dt.date) -> ReportData:
    base = dict(((m, k), v) for m, k, v in con.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall())
    models = pd.DataFrame([{
        "model_id": m.id, "task": m.task, "main_metric": m.main_metric, "baseline": base.get((m.id, m.main_metric)),
        "latency_sla": m.thresholds.latency_p95_ms, "error_sla": m.thresholds.error_rate,
    } for m in config.models])
    q = lambda sql: con.execute(sql, [last_day]).df()  # noqa: E731
    alerts = q("""SELECT partition_date, model_id, check_name, severity, value, threshold, message, status
                  FROM monitoring.alerts WHERE partition_date <= ?
                  ORDER BY partition_date DESC, model_id, severity, check_name""")  # a day's rows in one order
    return ReportData(
        models=models,
        performance=q("""SELECT partition_date, model_id, main_metric_value AS main_metric, latency_p95_ms,
                                error_rate, volume, label_coverage
                         FROM monitoring.performance_daily WHERE partition_date <= ? ORDER BY 1"""),
        drift=q("""SELECT partition_date, model_id, feature, statistic, threshold, drifted, method, p_value,
                          p_value_adjusted
                   FROM monitoring.feature_drift WHERE role = 'feature' AND partition_date <= ?"""),
        drift_share=q("SELECT partition_date, model_id, drift_share FROM monitoring.drift_summary WHERE partition_date <= ?"),
        fairness=q("""SELECT partition_date, model_id, attribute, grp, selection_rate, below_min_size
                      FROM monitoring.fairness WHERE partition_date <= ?"""),
        alerts=AlertState.for_config(config).annotate(alerts),
        quality=q("""SELECT partition_date, source, sum(records_read) AS records_read,
                            sum(records_loaded) AS records_loaded, sum(records_quarantined) AS records_quarantined
                     FROM raw.ingestion_log WHERE partition_date <= ? GROUP BY 1, 2 ORDER BY 1"""),
        quarantine_reasons=q("""SELECT source, split_part(reason, ':', 1) AS reason, count(*) AS n FROM raw.quarantine
                                WHERE partition_date <= ? GROUP BY ALL ORDER BY n DESC"""),
        loss=q(f"""SELECT {', '.join(LOSS_COLUMNS)} FROM monitoring.retraining_trigger WHERE partition_date <= ?
                   ORDER BY partition_date"""),
        requests=q(f"""SELECT {', '.join(REQUEST_COLUMNS)} FROM monitoring.retraining_requests WHERE opened_on <= ?
                       ORDER BY opened_on DESC, request_id DESC"""),
        versions=con.execute(f"SELECT {', '.join(VERSION_COLUMNS)} FROM monitoring.model_versions ORDER BY first_seen"
                             ).df(),
        comparison=q(f"""SELECT {', '.join(COMPARISON_COLUMNS)} FROM monitoring.version_comparison
                         WHERE partition_date <= ? QUALIFY partition_date = max(partition_date) OVER (PARTITION BY
                         model_id, challenger_version) ORDER BY model_id, challenger_version, metric"""),
        champions=champion_days(con, last_day),
        estimated=con.execute(f"""
            SELECT {', '.join(f'e.{c}' for c in ESTIMATE_COLUMNS)} FROM monitoring.estimated_performance AS e
            JOIN (SELECT unnest(?::VARCHAR[]) AS model_id, unnest(?::VARCHAR[]) AS metric) USING (model_id, metric)
            WHERE e.partition_date <= ? ORDER BY e.partition_date""",
                              [list(models.model_id), list(models.main_metric), last_day]).df(),
        distributions=q(f"""SELECT {', '.join(DISTRIBUTION_COLUMNS)} FROM monitoring.drift_distributions
                           WHERE partition_date <= ? ORDER BY partition_date"""),
        window_distributions=q(f"""SELECT {', '.join(WINDOW_DISTRIBUTION_COLUMNS)} FROM monitoring.window_distributions
                                  WHERE window_end <= ? ORDER BY window_end, window_name"""),
        **_ranking_data(con, config, last_day),
        segments=q(f"""SELECT {', '.join(SEGMENT_COLUMNS)} FROM monitoring.segment_performance
                       WHERE partition_date <= ? ORDER BY partition_date""")
        if any(m.segments.by for m in config.models) else pd.DataFrame(columns=SEGMENT_COLUMNS),
        # one day per model: a day holds segments x features rows
        segment_drift=q(f"""SELECT {', '.join(SEGMENT_DRIFT_COLUMNS)} FROM monitoring.segment_drift
                            WHERE partition_date <= ? AND judged
                            QUALIFY partition_date = max(partition_date) OVER (PARTITION BY model_id)
                            ORDER BY model_id, segment, feature""")
        if any(m.segments.by for m in config.models) else pd.DataFrame(columns=SEGMENT_DRIFT_COLUMNS),
    )


def _ranking_data(con: duckdb.DuckDBPyConnection, config: MonitorConfig, last_day: dt.date) -> dict:
    """The rankers and their whole-day rows up to `last_day` (nothing without a ranker)."""
    if not config.rankers:
        return {}
    # The check's name lives with the ranking stage's wiring (imported here, where Dagster is loaded anyway).

    rankers = pd.DataFrame([{"model_id": r.id, "main_metric": r.main_metric, "ks": list(r.ranking.ks),
                             "labelled": r.labels is not None, "check": RANKING_PERFORMANCE_CHECK}
                            for r in config.rankers], columns=RANKER_COLUMNS)
    ranking = con.execute(f"""SELECT {', '.join(RANKING_COLUMNS)} FROM monitoring.ranking_performance
                              WHERE model_version = '*' AND partition_date <= ? ORDER BY partition_date, metric""",
                          [last_day]).df()
    segmented = [r for r in config.rankers if r.segments.by]
    as_models = {"volume": "n_requests AS volume", "n_labelled": "n_labelled_requests AS n_labelled"}
    # A label-based main metric only on days whose interactions are all read, as the ranker's own charts: a day
    # still waiting for clicks counts them as misses, and its segments' lines would dive to zero at the end.
    segments = con.execute(f"""
        SELECT {', '.join(f's.{as_models.get(c, c)}' for c in SEGMENT_COLUMNS)}
        FROM monitoring.ranking_segment_performance AS s
        JOIN (SELECT unnest(?::VARCHAR[]) AS model_id, unnest(?::VARCHAR[]) AS metric) USING (model_id, metric)
        LEFT JOIN (SELECT DISTINCT model_id, partition_date, labels_complete FROM monitoring.ranking_performance
                   WHERE model_version = '*') AS c USING (model_id, partition_date)
        WHERE s.partition_date <= ? AND (coalesce(c.labels_complete, false) OR s.metric IN (SELECT unnest(?::VARCHAR[])))
        ORDER BY s.partition_date""",
                           [[r.id for r in segmented], [r.main_metric for r in segmented], last_day,
                            list(LABEL_FREE)]).df() if segmented else pd.DataFrame(columns=SEGMENT_COLUMNS)
    return {"rankers": rankers, "ranking": ranking, "ranker_segments": segments}


# ---------------------------------------------------------------------------------------------
# Summaries


def _by_model(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per model, split once (filtering the whole frame per model is quadratic at 100 models)."""
    return {k: g for k, g in df.groupby("model_id", sort=False)}


def _rows_by_model(df: pd.DataFrame) -> dict[str, list]:
    """The frame's rows as named tuples per model, in the frame's order (plain Python per model: a dozen
    pandas operations on a small frame cost 10 ms, 6 s at 500 models)."""
    out: dict[str, list] = {}
    for r in df.itertuples(index=False):
        out.setdefault(r.model_id, []).append(r)
    return out


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def model_summaries(data: ReportData, recent_days: int = RECENT_DAYS) -> list[dict]:
    """Per model: status (ranked as the module says), why, the current champion's headline figure and trend,
    top drifted features, open alerts."""
    open_alerts = data.alerts[data.alerts.status == "open"]  # acknowledged and silenced ones stay open
    perf_by = _rows_by_model(data.performance.assign(partition_date=pd.to_datetime(data.performance.partition_date))
                             .sort_values("partition_date", kind="stable"))
    drifted = data.drift[data.drift.drifted.fillna(False).astype(bool)]
    drift_by = _rows_by_model(drifted.assign(partition_date=pd.to_datetime(drifted.partition_date)))
    alerts_by = _rows_by_model(open_alerts.assign(partition_date=pd.to_datetime(open_alerts.partition_date)))
    champions = current_champions(data.champions)
    return [_model_summary(m, perf_by.get(m.model_id, []), drift_by.get(m.model_id, []),
                           alerts_by.get(m.model_id, []), champions.get(m.model_id, (None, None)), recent_days)
            for m in data.models.itertuples()]


def _model_summary(m, perf: list, drifted: list, alerts: list, champion: tuple, recent_days: int) -> dict:
    """One model's summary from its rows (days in order), drifted rows, open alerts and (champion, since)."""
    last_day = max(r.partition_date for r in perf) if perf else None
    recent_start = last_day - pd.Timedelta(days=recent_days - 1) if last_day is not None else None
    version, since = champion
    since = pd.Timestamp(since) if since is not None else None
    # first: the current champion's first day (its figures); window: also within the recent days (status).
    window = max((d for d in (recent_start, since) if d is not None), default=pd.Timestamp.min)
    first = since if since is not None else pd.Timestamp.min
    labelled, trend = _headline(perf, first, recent_start, recent_days)
    drift = [r for r in drifted if r.partition_date >= window]
    top_drift = _top_drifted(drift)
    not_since = (f"since {version} became champion on {since.date()}" if since is not None and window == since
                 else f"in the last {recent_days} days")
    status, why = _status(alerts, window, len({r.partition_date for r in drift}), len(top_drift), version,
                          not_since, recent_days)
    latest = perf[-1] if perf else None
    states = [a.state for a in alerts]
    return {
        "model_id": m.model_id, "task": m.task, "status": status, "recommendation": status, "why": why,
        "last_day": str(last_day.date()) if last_day is not None else None,
        "main_metric": m.main_metric,
        "latest_main_metric": _num(labelled[-1].main_metric) if labelled else None,
        "main_metric_day": str(labelled[-1].partition_date.date()) if labelled else None,
        "champion_version": version, "champion_since": str(since.date()) if since is not None else None,
        "baseline": _num(m.baseline), "trend_vs_previous_week": _num(trend),
        "latest_latency_p95_ms": _num(latest.latency_p95_ms) if latest is not None else None,
        "latest_error_rate": _num(latest.error_rate) if latest is not None else None,
        "latest_volume": int(latest.volume) if latest is not None else 0,
        "top_drifted_features": top_drift,
        "open_alerts": [{"date": str(a.partition_date.date()), "check": a.check_name,
                         "severity": a.severity, "message": a.message, "state": a.state,
                         "state_note": a.state_note} for a in alerts[:10]],
        "open_alert_count": len(alerts),
        "unhandled_alert_count": states.count("open"),
        "acknowledged_alert_count": states.count("acknowledged"),
        "silenced_alert_count": states.count("silenced"),
    }


def _headline(perf: list, first, recent_start, recent_days: int) -> tuple[list, float | None]:
    """The well-labelled days since `first` (the current champion's) and the main metric's mean over the
    recent days minus its mean over the `recent_days` before them (None without both)."""
    labelled = [r for r in perf if _num(r.label_coverage) is not None and r.label_coverage >= 0.8
                and _num(r.main_metric) is not None and r.partition_date >= first]
    recent = [r for r in labelled if recent_start is None or r.partition_date >= recent_start]
    before = [r for r in labelled if recent_start is not None and r.partition_date < recent_start]
    trend = None
    if recent and before:
        trend = float(_mean([r.main_metric for r in recent]) - _mean([r.main_metric for r in before[-recent_days:]]))
    return labelled, trend


def _top_drifted(drift: list) -> dict[str, int]:
    """The three features drifted on most days: feature -> days."""
    counts: dict[str, int] = {}
    for r in drift:
        counts[r.feature] = counts.get(r.feature, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:3])


def _status(alerts: list, window, drift_days: int, drifted_features: int, version: str | None, not_since: str,
            recent_days: int, performance_check: str = PERFORMANCE_CHECK) -> tuple[str, str]:
    """Status and why, by the rules in the module's docstring; `window`: where "current" starts;
    `performance_check`: the check whose failure suggests retraining (a ranker's is its own)."""
    now = [a for a in alerts if a.partition_date >= window]
    errors_now = [a for a in now if a.severity == "ERROR"]
    old_errors = [a for a in alerts if a.partition_date < window and a.severity == "ERROR"]
    old = [a for a in alerts if a.partition_date < window]
    perf_alert = max((a.partition_date for a in now if a.check_name == performance_check), default=None)
    if perf_alert is not None or (drift_days >= 3 and drifted_features >= 2):
        return "retrain suggested", (
            f"performance below baseline on {perf_alert.date()}" + (f" (version {version})" if version else "")
            if perf_alert is not None else f"inputs drifted on {drift_days} of the last {recent_days} days")
    if errors_now:
        return "action needed", (f"{len(errors_now)} open ERROR alert(s) in the last {recent_days} days: "
                                 + ", ".join(sorted({a.check_name for a in errors_now})))
    if now:
        return "watch", f"{len(now)} open WARN alert(s) in the last {recent_days} days"
    if old_errors:  # an open ERROR alert is never "healthy", however old
        latest_error = max(a.partition_date for a in old_errors).date()
        return "watch", f"{len(old_errors)} open ERROR alert(s), latest {latest_error}, none {not_since}"
    return "healthy", f"no open alerts {not_since}" + (f" ({len(old)} older open WARN alert(s))" if old else "")


def summaries_markdown(summaries: list[dict]) -> str:
    lines = ["# Model performance summary", ""]
    for s in summaries:
        trend = s["trend_vs_previous_week"]
        lines += [f"## {s['model_id']}: {s['recommendation']}", "",
                  f"- why: {s['why']}",
                  f"- {s['main_metric']}: {fmt_num(s['latest_main_metric'])}"
                  + (f" on {s['main_metric_day']}" if s["main_metric_day"] else "")
                  + f" (baseline {fmt_num(s['baseline'])}, week-over-week {'n/a' if trend is None else f'{trend:+.3f}'})",
                  *([f"- champion: version {s['champion_version']} since {s['champion_since']}"]
                    if s["champion_version"] else []),
                  f"- latency p95 {fmt_num(s['latest_latency_p95_ms'])} ms, error rate {fmt_num(s['latest_error_rate'])}, "
                  f"volume {s['latest_volume']:,}",
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
    if isinstance(x, float):  # most calls (a heatmap of 100 models x 365 days asks 1.4 million times): no pandas
        return None if x != x else float(x)
    return None if x is None or pd.isna(x) else float(x)


# ---------------------------------------------------------------------------------------------
# Dashboard: an index page with one row per model, and one page per model with its Plotly charts.
# plotly.js is written once beside them and referenced relatively, so every page opens offline
# from file:// and a model page stays small however many models there are.

PLOTLY_ASSET = "assets/plotly.min.js"
TABLE_LIMIT = 200  # rows per alert or quality table; the rest is counted


@dataclass
class Dashboard:
    """The files `build_dashboard` wrote."""

    index: Path
    model_pages: dict[str, Path]  # model_id -> page
    plotly_js: Path

    @property
    def largest_model_page_bytes(self) -> int:
        return max((p.stat().st_size for p in self.model_pages.values()), default=0)


def build_dashboard(data: ReportData, folder: str | Path, generated: dt.datetime | None = None,
                    title: str = "Model monitoring") -> Dashboard:
    """Write the index (dashboard.html), a page per model (models/*.html) and plotly.js (assets/) into
    `folder`. Each file is replaced atomically; pages of models no longer in `data` are removed."""
    from plotly.offline import get_plotlyjs

    folder = Path(folder)
    pages = render_dashboard(data, generated, title)
    for rel, text in pages.items():
        _replace(folder / rel, text)
    plotly_js = folder / PLOTLY_ASSET
    js = get_plotlyjs()
    if not plotly_js.exists() or plotly_js.read_text(encoding="utf-8") != js:
        _replace(plotly_js, js)
    written = {folder / rel for rel in pages}
    for old in (folder / MODELS_DIR).glob("*.html"):
        if old not in written:
            old.unlink()
    return Dashboard(index=folder / INDEX_PAGE, plotly_js=plotly_js,
                     model_pages={m: folder / model_page(m) for m in [*data.models.model_id, *data.rankers.model_id]})


def render_dashboard(data: ReportData, generated: dt.datetime | None = None,
                     title: str = "Model monitoring") -> dict[str, str]:
    """Every page as text, keyed by its path relative to the reports folder (plotly.js not included)."""
    generated = generated or dt.datetime.now(dt.UTC)
    env = _templates()
    summaries = {s["model_id"]: s for s in model_summaries(data)}
    perf_by, loss_by = _by_model(data.performance), _by_model(data.loss)
    estimated_by = _by_model(_dated(data.estimated))
    drift = data.drift.assign(ratio=drift_evidence(data.drift))
    drift_by, fair_by = _rows_by_model(_dated(drift)), _rows_by_model(_dated(data.fairness))
    pictures_by = _rows_by_model(_dated(drawable(data.distributions, data.drift)))
    window_pictures_by = _rows_by_model(_as_pictures(data.window_distributions))
    alerts_by = _rows_by_model(_dated(data.alerts))
    requests_by, versions_by, comparison_by = (_table_rows_by_model(data.requests), _table_rows_by_model(data.versions),
                                               _table_rows_by_model(data.comparison))
    segments_by, segment_drift_by = _by_model(data.segments), _by_model(data.segment_drift)
    open_alerts = data.alerts[data.alerts.status == "open"]
    last = data.performance.partition_date.max()
    common = {
        "title": title, "generated": f"{generated:%Y-%m-%d %H:%M} UTC",
        "data_through": str(pd.Timestamp(last).date()) if pd.notna(last) else "n/a",
        "alert_counts": {s: int((open_alerts.state == s).sum()) for s in ("open", "acknowledged", "silenced")},
    }
    rows, pages = [], {}
    for m in data.models.itertuples():
        s = summaries[m.model_id]
        perf = perf_by.get(m.model_id, data.performance.iloc[0:0]).sort_values("partition_date")
        alerts = alerts_by.get(m.model_id, [])
        row = _index_row(s, m, perf)
        rows.append(row)
        figures = []
        if len(perf):
            figures.append({"id": "perf", "title": "Performance and service", "figure": _model_figure(perf, m, alerts)})
        drift = drift_by.get(m.model_id)
        if drift:
            figures.append({"id": "drift", "title": "Feature drift by day", "figure": _drift_figure(drift),
                            "note": DRIFT_LEGEND})
        figures += _distribution_figures(pictures_by.get(m.model_id, []))
        figures += _distribution_figures(window_pictures_by.get(m.model_id, []), over="window")
        fair = fair_by.get(m.model_id)
        if fair and any(_num(r.selection_rate) is not None for r in fair):
            figures.append({"id": "fair", "title": "Fairness by group", "figure": _fairness_figure(fair)})
        estimated = estimated_by.get(m.model_id)
        if estimated is not None and estimated.estimate.notna().any():
            figures.append({"id": "estimated", "title": f"Estimated {m.main_metric} before labels, and realized",
                            "figure": _estimate_figure(estimated, m, alerts), "note": estimate_note(estimated)})
        loss = loss_by.get(m.model_id)
        if loss is not None and loss.mean_loss_day.notna().any():
            figures.append({"id": "loss", "title": "Loss against the reference band", "figure": _loss_figure(loss)})
        segments = _segment_view(segments_by.get(m.model_id))
        if segments is not None and segments["figure"] is not None:
            figures.append(segments["figure"])
        pages[model_page(m.model_id)] = env.get_template("dashboard/model.html.j2").render(
            common, root="../", model=row, summary=s, figures=figures, estimate=_latest_estimate(estimated),
            segments=segments, segment_drift=_segment_drift_view(segment_drift_by.get(m.model_id)),
            alerts=_alerts_by_state([a for a in alerts if a.status == "open"]), closed_loop=_loop_tables(
                requests_by.get(m.model_id), versions_by.get(m.model_id), comparison_by.get(m.model_id)))
    rows.sort(key=lambda r: -STATUS_ORDER[r["status"]])  # worst first; stable, so config order within a status
    quality = data.quality.groupby("source", as_index=False)[["records_read", "records_loaded",
                                                              "records_quarantined"]].sum()
    rankers = ranker_summaries(data)
    ranking_by, ranker_segments_by = _by_model(data.ranking), _by_model(data.ranker_segments)
    for r, spec in zip(rankers, data.rankers.itertuples(), strict=True):
        rows_of = ranking_by.get(r["model_id"])
        days = _ranker_days(rows_of, bool(spec.labelled)) if rows_of is not None else pd.DataFrame()
        alerts = alerts_by.get(r["model_id"], [])
        main = rows_of[rows_of.metric == spec.main_metric] if rows_of is not None else data.ranking.iloc[0:0]
        marked = alerts  # the checks' failures, as alert rows
        figures = _ranker_figures(days, r, list(spec.ks), marked) if len(days) else []
        segments = _segment_view(ranker_segments_by.get(r["model_id"]))  # as a model page's, worst first
        if segments is not None and segments["figure"] is not None:
            figures.append(segments["figure"])
        pages[model_page(r["model_id"])] = env.get_template("dashboard/ranker.html.j2").render(
            common, root="../", ranker=r, figures=figures, segments=segments,
            alerts=_alerts_by_state([a for a in alerts if a.status == "open"]),
            below=sorted(_ranker_failures(main, spec), key=lambda a: a.partition_date, reverse=True),
            closed_loop=_loop_tables(requests_by.get(r["model_id"]), versions_by.get(r["model_id"]),
                                     comparison_by.get(r["model_id"])))
    rankers.sort(key=lambda r: -r["status_rank"])
    pages[INDEX_PAGE] = env.get_template("dashboard/index.html.j2").render(
        common, root="", rows=rows, rankers=rankers,
        status_counts={k: sum(r["status"] == k for r in rows) for k in STATUS_ORDER},
        quality=_frame_rows(quality), quarantine=_frame_rows(data.quarantine_reasons))
    return pages


def _replace(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@functools.cache
def _templates():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("monitor_assets", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "separators": (",", ":")}  # tojson escapes <>&'
    env.filters["cell"] = _cell
    env.filters["signed"] = _signed
    return env


def _cell(v) -> str:
    """A value as table text (the template escapes it): counts and whole numbers with thousands separators,
    others with `fmt_num` (4 significant digits, no scientific notation for everyday magnitudes)."""
    if type(v) is float:  # the common case first (every heatmap cell's hover text has two or three)
        return "" if v != v else fmt_num(v, whole=True)
    if v is None or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return ""
        return fmt_num(v, whole=True)  # a sum of counts comes back as a float (115800.0): still a count
    if isinstance(v, pd.Timestamp | dt.date):
        return fmt_day(v)
    return str(v)


def _signed(v) -> str:
    """A difference with its sign, formatted as `_cell`."""
    return "" if v is None else ("+" if v >= 0 else "") + _cell(v)


def _frame_rows(df: pd.DataFrame) -> dict:
    return {"columns": [str(c) for c in df.columns], "rows": [list(r) for r in df.itertuples(index=False)]}


def _dated(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(partition_date=pd.to_datetime(df.partition_date))


def _table_rows_by_model(df: pd.DataFrame) -> dict[str, dict]:
    """Per model, its rows as a table for a template (`_frame_rows` without the model_id column)."""
    columns = [str(c) for c in df.columns if c != "model_id"]
    at = list(df.columns).index("model_id")
    out: dict[str, dict] = {}
    for r in df.itertuples(index=False):
        out.setdefault(r[at], {"columns": columns, "rows": []})["rows"].append([*r[:at], *r[at + 1:]])
    return out


def _alerts_by_state(alerts: list) -> dict[str, list[dict]]:
    """Open alerts (rows with a Timestamp partition_date), newest first, apart by state: open (notified),
    acknowledged, silenced."""
    alerts = sorted(alerts, key=lambda a: a.partition_date, reverse=True)  # stable, as the newest-first SQL
    return {state: [{"date": _cell(a.partition_date), "check": a.check_name, "severity": a.severity,
                     "value": a.value, "threshold": a.threshold, "message": a.message, "note": a.state_note}
                    for a in alerts if a.state == state]
            for state in ("open", "acknowledged", "silenced")}


def _index_row(s: dict, model, perf: pd.DataFrame) -> dict:
    latest, baseline = s["latest_main_metric"], s["baseline"]
    latency, error = s["latest_latency_p95_ms"], s["latest_error_rate"]
    return {
        **s, "href": model_page(s["model_id"]), "status_rank": STATUS_ORDER[s["status"]],
        "delta": None if latest is None or baseline is None else latest - baseline,
        "latency_over": latency is not None and not pd.isna(model.latency_sla) and latency > model.latency_sla,
        "error_over": error is not None and not pd.isna(model.error_sla) and error > model.error_sla,
        "latency_sla": _num(model.latency_sla), "error_sla": _num(model.error_sla),
        "sparkline": _sparkline(perf, s["main_metric"], baseline),
    }


SPARK_W, SPARK_H, SPARK_PAD = 120, 28, 3


def _sparkline(perf: pd.DataFrame, metric: str, baseline: float | None) -> dict | None:
    """An SVG path of the main metric over the days (gaps where there is no value) and the baseline's height."""
    values = perf.main_metric.to_numpy(dtype=float)
    ok = ~np.isnan(values)
    if not ok.any():
        return None
    days = pd.DatetimeIndex(perf.partition_date)
    t = np.asarray((days - days.min()).days / max((days.max() - days.min()).days, 1) * SPARK_W)
    lo, hi = np.nanmin(values), np.nanmax(values)
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    y = SPARK_PAD + (hi - values) / (hi - lo) * (SPARK_H - 2 * SPARK_PAD)
    parts, drawing = [], False
    for i in range(len(values)):
        if not ok[i]:
            drawing = False
            continue
        isolated = not drawing and (i + 1 == len(values) or not ok[i + 1])
        parts.append(f"{'L' if drawing else 'M'}{t[i]:.1f} {y[i]:.1f}" + ("h0" if isolated else ""))
        drawing = True
    shown = values[ok]
    last = int(np.flatnonzero(ok)[-1])
    return {
        "path": "".join(parts), "last_x": round(float(t[last]), 1), "last_y": round(float(y[last]), 1),
        "baseline_y": None if baseline is None else round(SPARK_PAD + (hi - baseline) / (hi - lo)
                                                          * (SPARK_H - 2 * SPARK_PAD), 1),
        "title": f"{metric} from {_cell(shown[0])} to {_cell(shown[-1])} over {len(values)} days"
                 + ("" if baseline is None else f", baseline {_cell(baseline)} (dashed)"),
    }


# Figures are plain plotly.js specs (data + layout), not plotly.graph_objects: validating graph objects
# took 0.25 s per model, most of the build at 100 models. The browser test checks that they draw.
LAYOUT = {"plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "font": {"size": 11, "color": "#374151"}}
AXIS = {"gridcolor": "#eef0f3", "zeroline": False, "linecolor": "#d1d5db", "automargin": True}
LINE = {"color": "#2563eb", "width": 1.5}
ALERT_MARKER = {"color": "#dc2626", "size": 10, "symbol": "x"}
# ColorBrewer RdYlGn reversed: green below the threshold, yellow at it (evidence 1), red at twice it.
DRIFT_COLORS = ["#006837", "#1a9850", "#66bd63", "#a6d96a", "#d9ef8b", "#ffffbf", "#fee08b", "#fdae61",
                "#f46d43", "#d73027", "#a50026"]


def _days(values) -> list[str]:
    return pd.DatetimeIndex(values).strftime("%Y-%m-%d").tolist()


def _round(values, digits: int = 4) -> list:
    """`digits` significant digits (plenty on a chart, half the JSON); missing values become gaps (None).
    Vectorised: formatting each number took most of the build at 100 models."""
    arr = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = digits - 1 - np.floor(np.log10(np.abs(arr)))
        shift = np.where(np.isfinite(shift), shift, 0)
        up = 10.0 ** np.clip(shift, 0, 22)  # powers of ten are exact doubles: 0.1234 comes out as 0.1234
        down = 10.0 ** np.clip(-shift, 0, 22)
        out = np.round(arr * up / down) * down / up
    missing = ~np.isfinite(out)
    return [None if m else v for v, m in zip(out.tolist(), missing.tolist(), strict=True)]


def _label(text) -> str:
    """Plotly reads labels as its own small HTML; escaped, a name shows as written."""
    return html.escape(str(text), quote=False)


def _model_figure(perf: pd.DataFrame, model, alerts: list) -> dict:
    """Main metric, latency p95, error rate and volume side by side, thresholds dashed, alert days marked."""
    return _panels_figure(perf, [
        ("main_metric", f"{model.main_metric} (baseline dashed)", model.baseline, [PERFORMANCE_CHECK]),
        ("latency_p95_ms", "latency p95 (ms)", model.latency_sla, [LATENCY_CHECK]),
        ("error_rate", "error rate", model.error_sla, [ERROR_RATE_CHECK]),
        ("volume", "volume", None, [VOLUME_CHECK])], alerts)


def _panels_figure(perf: pd.DataFrame, panels: list[tuple], alerts: list) -> dict:
    """Columns of `perf` (one row per day) side by side: per panel (column, title, threshold drawn dashed or
    None, checks whose alert days are marked)."""
    gap = 0.06
    width = (1 - gap * (len(panels) - 1)) / len(panels)
    x = _days(perf.partition_date)
    dates = list(pd.DatetimeIndex(perf.partition_date))
    data, shapes, annotations = [], [], []
    layout = {"height": 260, "margin": {"l": 40, "r": 10, "t": 40, "b": 30}, **LAYOUT}
    for i, (col, title, line, checks) in enumerate(panels):
        n = "" if i == 0 else str(i + 1)
        left = i * (width + gap)
        layout[f"xaxis{n}"] = {"domain": [left, left + width], "anchor": f"y{n}", "type": "date", **AXIS}
        layout[f"yaxis{n}"] = {"anchor": f"x{n}", **AXIS}
        annotations.append({"text": _label(title), "x": left + width / 2, "y": 1, "xref": "paper", "yref": "paper",
                            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 13}})
        data.append({"type": "scatter", "x": x, "y": _round(perf[col]), "mode": "lines+markers", "name": col,
                     "showlegend": False, "xaxis": f"x{n}", "yaxis": f"y{n}", "line": LINE, "marker": {"size": 4}})
        if line is not None and not pd.isna(line):
            shapes.append({"type": "line", "xref": f"x{n} domain", "x0": 0, "x1": 1, "yref": f"y{n}",
                           "y0": float(line), "y1": float(line), "line": {"dash": "dash", "color": "#9ca3af", "width": 1}})
        hit: dict[pd.Timestamp, list[str]] = {}  # alert day -> its messages, days in order
        for a in alerts:
            if a.check_name in checks:
                hit.setdefault(a.partition_date, []).append(_label(a.message))
        if hit:
            days = sorted(hit)
            value = dict(zip(dates, perf[col].tolist(), strict=True))
            data.append({"type": "scatter", "x": _days(days), "y": _round([value.get(d, np.nan) for d in days]),
                         "mode": "markers", "name": "alert", "showlegend": False, "xaxis": f"x{n}", "yaxis": f"y{n}",
                         "marker": ALERT_MARKER, "text": ["<br>".join(hit[d]) for d in days],
                         "hovertemplate": "%{x}<br>%{text}<extra>alert</extra>"})
    layout.update(shapes=shapes, annotations=annotations)
    return {"data": data, "layout": layout}


DRIFT_LEGEND = ("Colour: evidence of drift against the feature's own alert threshold, the same scale for every "
                "method: 1 (yellow) = exactly at the threshold, above 1 = drifted (red at 2), below 1 = not "
                "drifted. Distances (psi, jensenshannon, wasserstein): statistic / threshold. Tests (ks, "
                "chisquare): log(p) / log(threshold), with the p-value the flag is decided on (adjusted "
                "across the model's features).")
def _drift_figure(drift: list) -> dict:
    """Feature x day heatmap of `drift_evidence` (1 = at the threshold); `drift`: one model's rows with their
    `ratio` (the evidence). The hover text gives the method, statistic, p-value, threshold and the flag."""
    cells: dict[tuple, object] = {}  # (feature, day) -> its strongest row (one per role and method, at most)
    for r in drift:
        if isinstance(r.feature, str) and _num(r.ratio) is not None:
            best = cells.get((r.feature, r.partition_date))
            if best is None or r.ratio > best.ratio:
                cells[(r.feature, r.partition_date)] = r
    features, days = sorted({f for f, _ in cells}), sorted({d for _, d in cells})
    z = [_round([cells[(f, d)].ratio if (f, d) in cells else np.nan for d in days], 2) for f in features]
    text = [[_drift_hover(cells[(f, d)]) if (f, d) in cells else "" for d in days] for f in features]
    scale = [[i / (len(DRIFT_COLORS) - 1), c] for i, c in enumerate(DRIFT_COLORS)]
    return {"data": [{"type": "heatmap", "z": z, "x": _days(days), "y": [_label(f) for f in features],
                      "text": text, "hovertemplate": "%{y} %{x}<br>%{text}<br>evidence %{z}<extra></extra>",
                      "zmin": 0, "zmax": 2, "colorscale": scale,
                      "colorbar": {"title": {"text": "evidence vs<br>threshold"}}}],
            "layout": {"height": 120 + 22 * len(features), "margin": {"l": 140, "r": 10, "t": 30, "b": 30},
                       "xaxis": {"type": "date", **AXIS}, "yaxis": {"type": "category", **AXIS}, **LAYOUT}}


def _drift_hover(r) -> str:
    method = getattr(r, "method", None)
    p = _num(getattr(r, "p_value_adjusted", None))
    if p is None:
        p = _num(getattr(r, "p_value", None))
    parts = [_label(method) if isinstance(method, str) else "statistic", _cell(_num(r.statistic)) or "n/a"]
    if isinstance(method, str) and method in P_VALUE_METHODS:
        parts.append(f"p {_cell(p) or 'n/a'} vs {_cell(_num(r.threshold))}")
    else:
        parts.append(f"vs {_cell(_num(r.threshold))}")
    return " ".join(parts) + (": drifted" if bool(_num(r.drifted)) else ": not drifted")


def drawable(distributions: pd.DataFrame, drift: pd.DataFrame) -> pd.DataFrame:
    """The pictures a model page may draw: an input feature's only while `drift` (monitoring.feature_drift) flags
    it on that day, so a stable feature is never drawn as drifted, even beside pictures left from an older run.
    (Prediction and label rows are not in `drift`; their pictures exist only for flagged rows.)"""
    if not len(distributions) or "role" not in distributions:
        return distributions
    flagged = drift[drift.drifted.fillna(False).astype(bool)] if len(drift) else drift
    keys = set(zip(pd.to_datetime(flagged.partition_date), flagged.model_id, flagged.feature, strict=True))
    feature = (distributions.role == "feature").to_numpy()
    held = [(d, m, f) in keys for d, m, f in zip(pd.to_datetime(distributions.partition_date),
                                                 distributions.model_id, distributions.feature, strict=True)]
    return distributions[~feature | np.asarray(held, dtype=bool)]


PICTURE_NOTE = ("Grey: the reference; blue: the day, each as shares of its own rows (missing values included). "
                "Numbers on the reference's quantile bins, so each grey bar holds about the same share; values "
                "outside the reference's range, and missing ones, have bars of their own. Categories: the largest "
                "of either side, the rest as 'other'.")


def _picture_name(role: str, feature: str) -> str:
    """An input feature by its name; the model's output and the label as such."""
    return feature if role in ("feature", feature) else f"{feature} ({role})"


def _picture_title(r, window: bool = False) -> str:
    """The figure's title for one drift day (or window): feature, day, method, statistic (and p-value) against the
    threshold."""
    name = _picture_name(r.role, r.feature)
    figures = f"{r.method} {fmt_num(_num(r.statistic))}"
    if r.method in P_VALUE_METHODS:
        figures += f", {fmt_p(_num(r.p_value))} against threshold {fmt_num(_num(r.threshold))}"
    else:
        figures += f" against threshold {fmt_num(_num(r.threshold))}"
    return _label(f"{name} {'in ' + r.label if window else 'on ' + fmt_day(r.partition_date)}: {figures}")


def _unique(labels: list[str]) -> list[str]:
    """Bin labels as distinct category names (two narrow bins may print alike; Plotly would merge them)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _as_pictures(windows: pd.DataFrame) -> pd.DataFrame:
    """monitoring.window_distributions rows in the form `_distribution_figures` draws: dated by the window's last day,
    named by the window (`week 2026-10-12..2026-10-18`), every one a feature's."""
    if not len(windows):
        return windows.assign(partition_date=pd.Series(dtype="datetime64[ns]"), role="feature", label="")
    return windows.assign(partition_date=pd.to_datetime(windows.window_end), role="feature",
                          label=[f"{n} {pd.Timestamp(a).date()}..{pd.Timestamp(b).date()}" for n, a, b in
                                 zip(windows.window_name, windows.window_start, windows.window_end, strict=True)])


def _distribution_figures(pictures: list, over: str = "day") -> list[dict]:
    """Per drifted feature (the latest drift first, at most PICTURES_SHOWN), reference against current as grouped
    bars; a feature drifted on several days has a menu of those days (the latest shown first). `over="window"`:
    the pictures are evaluation windows' (`_as_pictures`), named by their window."""
    window = over == "window"
    by_feature: dict[tuple[str, str], list] = {}
    for r in pictures:
        by_feature.setdefault((r.role, r.feature), []).append(r)
    for rows in by_feature.values():
        rows.sort(key=lambda r: r.partition_date, reverse=True)
    order = sorted(by_feature, key=lambda k: (by_feature[k][0].partition_date, _num(by_feature[k][0].evidence) or 0),
                   reverse=True)
    figures = []
    for i, key in enumerate(order[:PICTURES_SHOWN]):
        views = []
        for r in by_feature[key]:
            buckets = Comparison.buckets_from_json(r.bins)
            views.append({"x": _unique([_label(b.label) for b in buckets]), "title": _picture_title(r, window),
                          "day": r.label if window else fmt_day(r.partition_date),
                          "reference": _round([b.reference_share for b in buckets]),
                          "current": _round([b.current_share for b in buckets]),
                          "reference_n": [b.reference_count for b in buckets],
                          "current_n": [b.current_count for b in buckets]})
        first = views[0]
        hover = "%{x}<br>%{y:.2%} of its rows (%{customdata:,})<extra>%{fullData.name}</extra>"
        data = [{"type": "bar", "name": "reference", "x": first["x"], "y": first["reference"],
                 "customdata": first["reference_n"], "marker": {"color": "#9ca3af"}, "hovertemplate": hover},
                {"type": "bar", "name": "the window" if window else "current day", "x": first["x"], "y": first["current"],
                 "customdata": first["current_n"], "marker": {"color": "#2563eb"}, "hovertemplate": hover}]
        layout = {"height": 300, "barmode": "group", "bargap": 0.15, "margin": {"l": 50, "r": 10, "t": 60, "b": 60},
                  "title": {"text": first["title"], "font": {"size": 13}, "x": 0.5, "y": 0.97}, "legend": {"orientation": "h", "y": -0.3},
                  "xaxis": {"type": "category", **AXIS}, "yaxis": {"tickformat": ".0%", **AXIS}, **LAYOUT}
        if len(views) > 1:
            layout["updatemenus"] = [{
                "type": "dropdown", "direction": "down", "showactive": True, "active": 0, "x": 0, "xanchor": "left",
                "y": 1.02, "yanchor": "bottom", "pad": {"r": 2, "t": 2},
                "buttons": [{"label": v["day"] + (" (latest)" if j == 0 else ""), "method": "update",
                             "args": [{"x": [v["x"], v["x"]], "y": [v["reference"], v["current"]],
                                       "customdata": [v["reference_n"], v["current_n"]]},
                                      {"title.text": v["title"]}]} for j, v in enumerate(views)]}]
        role, feature = key
        days = [v["day"] for v in views]
        note = (f"Drifted {'over' if window else 'on'} {plural(len(days), 'window' if window else 'day')}: "
                f"{', '.join(days)}" + (" (choose one in the menu). " if len(days) > 1 else ". ")
                + (PICTURE_NOTE.replace("blue: the day", "blue: the window") + " A window's counts are its days' "
                   "profiles added up (no rescan of its rows)." if window else PICTURE_NOTE))
        figures.append({"id": f"{'wdist' if window else 'dist'}-{i}", "note": note,
                        "figure": {"data": data, "layout": layout},
                        "title": f"What changed{' over a window' if window else ''}: {_picture_name(role, feature)}"})
    return figures


def _fairness_figure(fair: list) -> dict:
    """Selection rate by group over the days; `fair`: one model's rows."""
    lines: dict[tuple, list] = {}
    for r in sorted(fair, key=lambda r: r.partition_date):
        if isinstance(r.attribute, str) and isinstance(r.grp, str):  # a NULL group draws no line
            lines.setdefault((r.attribute, r.grp), []).append(r)
    data = [{"type": "scatter", "x": _days([r.partition_date for r in g]), "y": _round([r.selection_rate for r in g], 3),
             "mode": "lines", "name": _label(f"{attr}={grp}" + (" (small)" if any(bool(_num(r.below_min_size)) for r in g)
                                                              else ""))}
            for (attr, grp), g in sorted(lines.items())]
    return {"data": data, "layout": {"height": 240, "margin": {"l": 40, "r": 10, "t": 30, "b": 30},
                                     "title": {"text": "selection rate by group", "font": {"size": 13}},
                                     "xaxis": {"type": "date", **AXIS}, "yaxis": AXIS, **LAYOUT}}


def _loss_figure(loss: pd.DataFrame) -> dict:
    """The day's mean loss of the champion, the band a day would fall in if the model were as good as its
    reference batch (shaded), the window's mean, and the days the trigger flagged (red x)."""
    loss = loss.sort_values("partition_date")
    x = _days(loss.partition_date)
    name = _label(loss["loss"].dropna().iloc[-1]) if loss["loss"].notna().any() else "loss"
    band = {"mode": "lines", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
    data = [{"type": "scatter", "x": x, "y": _round(loss.band_low), **band},
            {"type": "scatter", "x": x, "y": _round(loss.band_high), "fill": "tonexty",
             "fillcolor": "rgba(156,163,175,0.25)", **band, "name": "reference band"},
            {"type": "scatter", "x": x, "y": _round(loss.mean_loss_day), "mode": "lines+markers", "name": f"day's mean {name}",
             "line": LINE, "marker": {"size": 4}},
            {"type": "scatter", "x": x, "y": _round(loss.mean_current), "mode": "lines", "name": "window mean",
             "line": {"color": "#6b7280", "width": 1, "dash": "dot"}}]
    flagged = loss[loss.flagged.fillna(False).astype(bool)]
    if len(flagged):
        data.append({"type": "scatter", "x": _days(flagged.partition_date), "y": _round(flagged.mean_loss_day),
                     "mode": "markers", "name": "flagged", "marker": ALERT_MARKER})
    return {"data": data, "layout": {"height": 260, "margin": {"l": 40, "r": 10, "t": 30, "b": 30},
                                     "legend": {"orientation": "h"}, "xaxis": {"type": "date", **AXIS}, "yaxis": AXIS,
                                     **LAYOUT}}


def band_coverage(estimated: pd.DataFrame) -> tuple[int, int]:
    """(days the realized value fell inside the estimate's band, reconciled days): a day counts once its labels
    have landed (`within_band` known)."""
    known = estimated.within_band.dropna().astype(bool)
    return int(known.sum()), len(known)


def coverage_text(held: int, reconciled: int) -> str:
    if not reconciled:
        return "no day reconciled yet (its labels are still to come)"
    return (f"realized inside the band on {held} of {plural(reconciled, 'reconciled day')} "
            f"({held / reconciled:.0%})")


def estimate_note(estimated: pd.DataFrame) -> str:
    return (f"Shaded: the 95% band of the estimate, computed from the day's scores alone (no labels needed). "
            f"Solid: the realized value once the day's labels have landed. Red crosses: "
            f"{ESTIMATED_PERFORMANCE_CHECK} failed. The {coverage_text(*band_coverage(estimated))}.")


def _latest_estimate(estimated: pd.DataFrame | None) -> dict | None:
    """The model page's line: the latest estimate with its band and day, and how often the band held."""
    if estimated is None or not estimated.estimate.notna().any():
        return None
    last = estimated[estimated.estimate.notna()].sort_values("partition_date").iloc[-1]
    return {"metric": last.metric, "estimate": _num(last.estimate), "lower": _num(last.lower),
            "upper": _num(last.upper), "day": fmt_day(last.partition_date),
            "coverage": coverage_text(*band_coverage(estimated))}


def _estimate_figure(estimated: pd.DataFrame, model, alerts: list) -> dict:
    """The estimated main metric with its 95% band (shaded), the realized value over it where labels have landed,
    the baseline (dashed), and the days `estimated_performance_within_baseline` failed (red x)."""
    est = estimated.sort_values("partition_date")
    x = _days(est.partition_date)
    band = {"mode": "lines", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
    data = [{"type": "scatter", "x": x, "y": _round(est.lower), **band},
            {"type": "scatter", "x": x, "y": _round(est.upper), "fill": "tonexty",
             "fillcolor": "rgba(37,99,235,0.15)", **band, "showlegend": True, "name": "95% band"},
            {"type": "scatter", "x": x, "y": _round(est.estimate), "mode": "lines", "name": "estimated",
             "line": {"color": "#2563eb", "width": 1.5, "dash": "dot"}},
            {"type": "scatter", "x": x, "y": _round(est.realized), "mode": "lines+markers", "name": "realized",
             "line": {"color": "#111827", "width": 1.5}, "marker": {"size": 4}}]
    outside = est[est.within_band.notna() & ~est.within_band.fillna(True).astype(bool)]
    if len(outside):
        data.append({"type": "scatter", "x": _days(outside.partition_date), "y": _round(outside.realized),
                     "mode": "markers", "name": "realized outside the band",
                     "marker": {"color": "#f59e0b", "size": 9, "symbol": "circle-open", "line": {"width": 2}}})
    hit: dict[pd.Timestamp, list[str]] = {}
    for a in alerts:
        if a.check_name == ESTIMATED_PERFORMANCE_CHECK:
            hit.setdefault(a.partition_date, []).append(_label(a.message))
    if hit:
        value = dict(zip(pd.DatetimeIndex(est.partition_date), est.estimate.tolist(), strict=True))
        days = sorted(hit)
        data.append({"type": "scatter", "x": _days(days), "y": _round([value.get(d, np.nan) for d in days]),
                     "mode": "markers", "name": "check failed", "marker": ALERT_MARKER,
                     "text": ["<br>".join(hit[d]) for d in days], "hovertemplate": "%{x}<br>%{text}<extra>alert</extra>"})
    shapes = []
    if _num(model.baseline) is not None:
        shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": float(model.baseline),
                       "y1": float(model.baseline), "line": {"dash": "dash", "color": "#9ca3af", "width": 1}})
    return {"data": data, "layout": {"height": 260, "margin": {"l": 40, "r": 10, "t": 30, "b": 30},
                                     "legend": {"orientation": "h"}, "shapes": shapes,
                                     "xaxis": {"type": "date", **AXIS}, "yaxis": AXIS, **LAYOUT}}


def _loop_tables(requests: dict | None, versions: dict | None, comparison: dict | None) -> dict:
    """The model page's closed-loop tables (from `_table_rows_by_model`): newest requests, versions with
    traffic, latest comparison."""
    empty = {"columns": [], "rows": []}
    return {
        "requests": {**requests, "rows": requests["rows"][:REQUESTS_SHOWN]} if requests is not None else empty,
        "request_count": 0 if requests is None else len(requests["rows"]),
        "versions": versions or empty,
        "comparison": comparison or empty,
    }


# ---------------------------------------------------------------------------------------------
# Rankers (`task: ranking`): a row each on the index, a page each like a model's.

# Figures computed without interactions; the others are left out on days whose interactions are still arriving.
LABEL_FREE = ("catalogue_coverage", "popularity_concentration", "novelty", "item_drift_js", "score_drift_ks")
RANKER_PANELS = (("popularity_concentration", "popularity concentration (top 1% of items)"),
                 ("catalogue_coverage", "catalogue coverage"), ("label_coverage", "label coverage"))


def _ranker_days(rows: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    """One ranker's rows as one row per day and a column per metric (plus label coverage, requests and whether
    the day's interactions are all read); label-based figures of unfinished days blanked."""
    rows = _dated(rows)
    wide = rows.pivot_table(index="partition_date", columns="metric", values="value", aggfunc="first", dropna=False)
    per_day = rows.groupby("partition_date").agg(label_coverage=("label_coverage", "first"),
                                                 n_requests=("n_requests", "first"),
                                                 labels_complete=("labels_complete", "first"))
    days = wide.join(per_day).sort_index()
    complete = days.labels_complete.fillna(False).astype(bool) | (not labelled)
    days["labels_complete"] = complete
    for metric in days.columns:
        if metric not in (*LABEL_FREE, "label_coverage", "n_requests", "labels_complete"):
            days.loc[~complete, metric] = np.nan
    if labelled:
        days.loc[~complete, "label_coverage"] = np.nan
    return days.rename_axis("partition_date").reset_index()


def ranker_summaries(data: ReportData, recent_days: int = RECENT_DAYS) -> list[dict]:
    """Per ranker: status (as a model's, its own check suggesting retraining), why, and the figures of its latest
    day whose interactions are all read: the main metric against its reference and floor, NDCG at each k,
    popularity concentration, catalogue coverage, label coverage; and the latest day's requests."""
    by_ranker = _by_model(data.ranking)
    alerts_by = _rows_by_model(_dated(data.alerts[data.alerts.status == "open"]))
    out = []
    for r in data.rankers.itertuples():
        rows = by_ranker.get(r.model_id, data.ranking.iloc[0:0])
        days = _ranker_days(rows, bool(r.labelled)) if len(rows) else pd.DataFrame()
        alerts = alerts_by.get(r.model_id, [])
        last = days.partition_date.max() if len(days) else None
        done = days[days.labels_complete] if len(days) else days
        metric_day = done.iloc[-1] if len(done) else None
        main = rows[(rows.metric == r.main_metric)] if len(rows) else rows
        judged = _dated(main).set_index("partition_date") if len(main) else None
        at = judged.loc[metric_day.partition_date] if judged is not None and metric_day is not None \
            and metric_day.partition_date in judged.index else None
        recent_start = last - pd.Timedelta(days=recent_days - 1) if last is not None else pd.Timestamp.min
        # Its checks' failures are alert rows like every model's; the table's verdicts word the why.
        failed = _ranker_failures(main, r)
        recent = [f for f in failed if f.partition_date >= recent_start]
        status, why = _status(alerts, recent_start, 0, 0, None, f"in the last {recent_days} days",
                              recent_days, performance_check=r.check)
        if recent:  # said in the ranker's terms
            why = f"{r.main_metric} below its floor on {max(f.partition_date for f in recent).date()}"
        elif failed:
            why += (f"; {r.main_metric} below its floor on {plural(len(failed), 'earlier day')}, latest "
                    f"{max(f.partition_date for f in failed).date()}")
        figures = {m: _num(metric_day.get(m)) if metric_day is not None else None
                   for m in (*(f"ndcg_at_{k}" for k in r.ks), "popularity_concentration", "catalogue_coverage",
                             "label_coverage")}
        states = [a.state for a in alerts]
        out.append({
            "model_id": r.model_id, "task": "ranking", "check": r.check, "status": status, "why": why, "main_metric": r.main_metric,
            "href": model_page(r.model_id), "status_rank": STATUS_ORDER[status],
            "last_day": str(last.date()) if last is not None else None,
            "metric_day": str(metric_day.partition_date.date()) if metric_day is not None else None,
            "latest_main_metric": _num(metric_day.get(r.main_metric)) if metric_day is not None else None,
            "reference": _num(at.reference_value) if at is not None else None,
            "floor": _num(at.floor) if at is not None else None,
            "p_value": _num(at.p_value) if at is not None else None,
            "below_floor": bool(at.below_baseline) if at is not None and pd.notna(at.below_baseline) else None,
            "figures": figures,
            "latest_requests": int(days.n_requests.iloc[-1]) if len(days) else 0,
            "open_alert_count": len(alerts), "unhandled_alert_count": states.count("open"),
            "acknowledged_alert_count": states.count("acknowledged"), "silenced_alert_count": states.count("silenced"),
            "sparkline": _sparkline(days.assign(main_metric=days.get(r.main_metric, np.nan)), r.main_metric,
                                    _num(at.floor) if at is not None else None) if len(days) else None,
        })
    return out


def _ranker_failures(main: pd.DataFrame, ranker) -> list:
    """The days a ranker's main metric was judged below its floor, as open ERROR alerts of its check (for the
    status rules and the charts' markers)."""
    if not len(main):
        return []
    below = _dated(main[main.below_baseline.fillna(False).astype(bool)])
    return [SimpleNamespace(partition_date=b.partition_date, check_name=ranker.check, severity="ERROR",
                            state="open", message=f"{b.metric} {_cell(b.value)} below its floor {_cell(b.floor)} "
                                                  f"(one-sided p {fmt_p(_num(b.p_value))})")
            for b in below.itertuples()]


def _ranker_figures(days: pd.DataFrame, summary: dict, ks: list[int], alerts: list) -> list[dict]:
    """A ranker page's charts: its main metric (floor dashed, failed days marked), popularity concentration,
    catalogue coverage and label coverage side by side; NDCG at each k."""
    main = summary["main_metric"]
    if main not in days:
        days = days.assign(**{main: np.nan})
    panels = [(main, f"{main} (floor dashed)", summary["floor"], [summary["check"]]),
              *((c, title, None, []) for c, title in RANKER_PANELS if c in days)]
    note = (f"Days whose interactions are still arriving are left out of the label-based figures; red crosses: "
            f"days {summary['check']} judged the main metric below its floor.")
    figures = [{"id": "ranking", "title": "Ranking quality and popularity", "note": note,
                "figure": _panels_figure(days, panels, alerts)}]
    lines = [c for c in (f"ndcg_at_{k}" for k in ks) if c in days and days[c].notna().any()]
    if lines:
        x = _days(days.partition_date)
        figures.append({"id": "ndcg", "title": "NDCG at each cut-off", "figure": {
            "data": [{"type": "scatter", "x": x, "y": _round(days[c]), "mode": "lines+markers", "name": c,
                      "marker": {"size": 4}} for c in lines],
            "layout": {"height": 240, "margin": {"l": 40, "r": 10, "t": 30, "b": 30}, "legend": {"orientation": "h"},
                       "xaxis": {"type": "date", **AXIS}, "yaxis": AXIS, **LAYOUT}}})
    return figures


# ---------------------------------------------------------------------------------------------
# Segments: on a segmented model's page, the worst segments of its latest judged day first.


def _segment_view(rows: pd.DataFrame | None, recent_days: int = RECENT_DAYS) -> dict | None:
    """The latest day with a judged segment (else the latest day): its segments, the most significant shortfall
    first (adjusted p-value, then the furthest below the floor), with the days each was below its floor in the
    last `recent_days`; and the worst few drawn over the days against their floors."""
    if rows is None or not len(rows):
        return None
    rows = _dated(rows)
    judged = rows[rows.p_adjusted.notna()]
    day = (judged if len(judged) else rows).partition_date.max()
    today = rows[rows.partition_date == day]
    shortfall = (today.floor - today.value) / today.floor.abs().where(today.floor.abs() > 0)
    order = today.assign(_short=shortfall).sort_values(["p_adjusted", "_short"], ascending=[True, False],
                                                       na_position="last", kind="stable")
    recent = rows[rows.partition_date > day - pd.Timedelta(days=recent_days)]
    below_days = recent[recent.below_floor.fillna(False).astype(bool)].groupby("segment").size()
    table = [{"segment": r.segment, "n_labelled": r.n_labelled, "volume": r.volume, "metric": r.metric,
              "value": _num(r.value), "reference": _num(r.reference_value), "floor": _num(r.floor),
              "p_adjusted": _num(r.p_adjusted), "below": bool(r.below_floor) if pd.notna(r.below_floor) else False,
              "below_days": int(below_days.get(r.segment, 0))}
             for r in order.head(SEGMENTS_SHOWN).itertuples()]
    worst = [t["segment"] for t in table[:SEGMENT_LINES]]
    data = []
    for i, segment in enumerate(worst):
        mine = rows[rows.segment == segment].sort_values("partition_date")
        color = PALETTE[i % len(PALETTE)]
        data.append({"type": "scatter", "x": _days(mine.partition_date), "y": _round(mine.value),
                     "mode": "lines+markers", "name": _label(segment), "line": {"color": color, "width": 1.5},
                     "marker": {"size": 4}, "legendgroup": str(i)})
        data.append({"type": "scatter", "x": _days(mine.partition_date), "y": _round(mine.floor), "mode": "lines",
                     "name": _label(f"{segment} floor"), "line": {"color": color, "width": 1, "dash": "dash"},
                     "showlegend": False, "legendgroup": str(i), "hoverinfo": "skip"})
        below = mine[mine.below_floor.fillna(False).astype(bool)]
        if len(below):
            data.append({"type": "scatter", "x": _days(below.partition_date), "y": _round(below.value),
                         "mode": "markers", "name": "below floor", "marker": ALERT_MARKER, "showlegend": False,
                         "legendgroup": str(i), "hovertemplate": f"%{{x}}<br>{_label(segment)} below its floor"
                                                                 "<extra></extra>"})
    metric = today.metric.dropna().iloc[0] if today.metric.notna().any() else "main metric"
    figure = {"id": "segment-lines", "title": f"Worst segments: {metric} over the days (floors dashed)", "figure": {
        "data": data, "layout": {"height": 280, "margin": {"l": 40, "r": 10, "t": 30, "b": 30},
                                 "legend": {"orientation": "h"}, "xaxis": {"type": "date", **AXIS}, "yaxis": AXIS,
                                 **LAYOUT}}}
    return {"day": fmt_day(day), "rows": table, "total": len(today), "metric": metric,
            "below": int(today.below_floor.fillna(False).astype(bool).sum()), "figure": figure if data else None}


def _segment_drift_view(rows: pd.DataFrame | None) -> dict | None:
    """The model's latest day of judged segment drift: the segments with drifted features, the most drifted
    features first, then the strongest evidence (statistic over threshold), each naming its drifted features
    strongest first; None for a model without segment drift."""
    if rows is None or not len(rows):
        return None
    rows = _dated(rows)
    day = rows.partition_date.max()
    today = rows[rows.partition_date == day]
    drifted = today[today.drifted.fillna(False).astype(bool)].sort_values("evidence", ascending=False,
                                                                           na_position="last", kind="stable")
    table = [{"segment": segment, "n_rows": int(g.n_rows.max()), "n_drifted": len(g),
              "evidence": _num(g.evidence.max()), "n_features": int((today.segment == segment).sum()),
              "features": [{"feature": r.feature, "method": r.method, "statistic": _num(r.statistic),
                            "threshold": _num(r.threshold), "evidence": _num(r.evidence)} for r in g.itertuples()]}
             for segment, g in drifted.groupby("segment", sort=False)]
    table.sort(key=lambda t: (-t["n_drifted"], -(t["evidence"] if t["evidence"] is not None else -np.inf)))
    return {"day": fmt_day(day), "judged": int(today.segment.nunique()), "drifted": len(table),
            "rows": table[:SEGMENTS_SHOWN]}


PALETTE = ["#dc2626", "#2563eb", "#059669", "#d97706", "#7c3aed"]
