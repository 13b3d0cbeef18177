"""The models' service levels in the Prometheus text format, for the on-call team's Prometheus and Grafana.

One file per run, describing the latest day of the run: per model (and per model version) the volume,
error rate, availability (share of requests served without error, and share of the day's hours with
traffic), latency p50/p95/p99, the main metric against its reference baseline, drift share, open alerts
by severity and retraining requests by status. The file is meant for node_exporter's textfile collector
(`--collector.textfile.directory` pointed at its folder) and can also be pushed to a Pushgateway.

Neither of them accepts sample timestamps, so the day the figures describe is a series of its own
(`monitor_day_timestamp_seconds`); a figure that is not known (no labels yet, no traffic) is left out,
never written as 0. The main metric is that of the latest day with labels on at least
`MAIN_METRIC_MIN_LABEL_COVERAGE` of the served requests (the dashboard's rule): with late labels, the
latest day's own is usually unknown; `monitor_main_metric_day_timestamp_seconds` says which day it is.
Like the dashboard, it follows the current champion version (the version serving most requests, from
monitoring.version_daily): only days since that version became champion count, so a day of the version it
replaced is never shown as the model's figure (no labelled day since the switch: the series is left out).
`monitor_model_info`'s `version` is that champion (the configured version while no traffic is recorded;
`configured_version` keeps the config's) and its `champion_since` label says since when.

Performance estimated before labels (monitoring.estimated_performance): per model and metric the latest
estimate up to the day with its 95% band (`monitor_estimated_performance`, bound=estimate|lower|upper; the day
in `monitor_estimated_performance_day_timestamp_seconds`), and how often the band held once labels landed: the
share of reconciled days whose realized value fell inside the band, and how many days that share is over.

Rankers (`task: ranking`, monitoring.ranking_performance, the whole day's rows): every metric of the ranker's
latest day up to the export's whose interactions are all read (`labels_complete`; a ranker without `labels:` its
latest day) in `monitor_ranking_metric{model_id, metric}`, that day in `monitor_ranking_day_timestamp_seconds`, its
label coverage, the main metric's floor and reference value, and the export day's requests. Rankers are in
`monitor_model_info` (task=ranking) but not in the per-model service series, which their logs do not carry.

Segments (models with `segments:`, label `segment` spelt as monitoring.segment_performance spells it, `market=DE`):
the main metric, its floor and whether it is below it beyond chance, per tested segment on the model's latest day up
to the export's with a tested segment (`monitor_segment_day_timestamp_seconds`: labels arrive late); and the export
day's drift per judged segment: each feature's evidence (statistic over threshold, 1 = at the threshold) and the count
of drifted features. To keep the label sets bounded only segments with a row on that day are written (at most the
model's segments x features: 50 per segmentation are kept apart, the rest pool as `(other)`).

Plain Python (prometheus_client, DuckDB): no Dagster here.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from monitor_assets.config import MonitorConfig
from monitor_assets.stats.metrics_spec import HIGHER, METRIC_DIRECTION
from monitor_assets.stats.performance import performance_sql
from monitor_assets.stats.versions import current_champions
from monitor_assets.storage.reads import champion_days, latest_labels_sql
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import lake_of

PREFIX = "monitor_"
TEXTFILE = "monitor_assets.prom"
PUSH_JOB = "monitor_assets"
PERCENTILES = {"50": "latency_p50_ms", "95": "latency_p95_ms", "99": "latency_p99_ms"}
MAIN_METRIC_MIN_LABEL_COVERAGE = 0.8
HOURS_PER_DAY = 24
RETRAINING_TABLE = ("monitoring", "retraining_requests")
# Alert severities always written (0 when none is open), so a panel or rule sees a series per model.
SEVERITIES = ("WARN", "ERROR")
ALERT_STATES = ("open", "acknowledged", "silenced")
ESTIMATED_COLUMNS = ["model_id", "metric", "day", "estimate", "lower", "upper", "held", "reconciled"]
RANKING_COLUMNS = ["model_id", "metric", "value", "day", "label_coverage", "reference_value", "floor"]
RANKING_TABLE = ("monitoring", "ranking_performance")
BOUNDS = ("estimate", "lower", "upper")
SEGMENT_COLUMNS = ["model_id", "segment", "day", "metric", "value", "floor", "below_floor"]
SEGMENT_DRIFT_COLUMNS = ["model_id", "segment", "feature", "evidence", "drifted"]


@dataclass
class ExportData:
    """What the export reads for one day; every frame has `model_id`."""

    day: dt.date
    performance: pd.DataFrame  # volume, error_rate, latency_p*_ms, label_coverage
    hours_with_traffic: pd.DataFrame  # hours
    main_metric: pd.DataFrame  # metric, value, day, baseline
    versions: pd.DataFrame  # model_version, partition_date, volume, error_rate, latency_p*_ms, main metric columns
    drift: pd.DataFrame  # drift_share
    alerts: pd.DataFrame  # severity, state, n
    retraining: pd.DataFrame | None  # status, n; None when the table does not exist (yet)
    # model_version, since: each model's current champion up to the day (empty: no version records)
    champions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["model_id", "model_version", "since"]))
    # metric, day, estimate, lower, upper, held, reconciled: the latest estimate per model and metric up to the
    # day, and its band's record over every reconciled day up to it (empty: nothing estimated)
    estimated: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ESTIMATED_COLUMNS))
    # metric, value, day, label_coverage, reference_value, floor: each ranker's metrics on its latest day with its
    # interactions read (empty: no ranker); ranking_requests: model_id, n_requests on the export day
    ranking: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RANKING_COLUMNS))
    ranking_requests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["model_id", "n_requests"]))
    # segment, day, metric, value, floor, below_floor: each segmented model's tested segments on its latest day up
    # to the export's with one; segment, feature, evidence, drifted: the export day's judged segment-features
    segments: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_COLUMNS))
    segment_drift: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SEGMENT_DRIFT_COLUMNS))


def _metric_column(metric: str) -> str:
    return quote_ident(metric)


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    """Whether a table or view of that name is visible on the connection."""
    return bool(con.sql("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                        params=[schema, name]).fetchall()[0][0])


def _main_metric(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date,
                 since: dict[str, dt.date] | None = None) -> pd.DataFrame:
    """Per model: its main metric on the latest labelled day up to `day` (and not before the model's
    `since`, its champion's first day), that day, and the baseline."""
    since = since or {}
    by_metric: dict[str, list[str]] = {}
    for m in config.models:
        by_metric.setdefault(m.main_metric, []).append(m.id)
    frames = []
    for metric, models in by_metric.items():
        column = _metric_column(metric)
        first = [since.get(m, dt.date.min) for m in models]
        frames.append(con.sql(f"""
            SELECT model_id, ? AS metric, arg_max({column}, partition_date) AS value, max(partition_date) AS day
            FROM monitoring.performance_daily
            JOIN (SELECT unnest(?::VARCHAR[]) AS model_id, unnest(?::DATE[]) AS since) USING (model_id)
            WHERE partition_date <= ? AND partition_date >= since
              AND label_coverage >= ? AND {column} IS NOT NULL
            GROUP BY model_id""", params=[metric, models, first, day, MAIN_METRIC_MIN_LABEL_COVERAGE]).df())
    found = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model_id", "metric", "value", "day"])
    # As the alert rules read it: the reference baseline of (model, metric).
    baselines = {(m, k): v for m, k, v in con.sql(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
    found["baseline"] = [baselines.get((m, k)) for m, k in zip(found.model_id, found.metric, strict=True)]
    return found


def _versions(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Every metric per model version on `days` (the export day and the main metric's days). A model-day
    that served one version has the model's figures (`monitoring.performance_daily`); only a model-day
    with several versions (a canary) is computed per version, from the logged predictions the way
    performance_daily computes them per model: a full pass over every model's rows cost seconds and
    gigabytes at a hundred models."""
    from monitor_assets.storage.reads import performance_models_sql

    daily = con.sql("""SELECT * EXCLUDE (model_versions), coalesce(model_versions, '') AS model_version
                       FROM monitoring.performance_daily
                       WHERE partition_date IN (SELECT unnest(?::DATE[])) AND volume > 0""", params=[days]).df()
    several = daily[daily.model_version.str.contains(",", regex=False)]
    daily = daily.drop(index=several.index)
    if several.empty:
        return daily
    models, params = performance_models_sql(config.models)
    logged = bool(config.predictions.fields.get("decision"))  # as performance_daily takes the predicted class
    source = f"""
        SELECT p.partition_date, p.model_id, coalesce(p.model_version, '') AS model_version, p.is_ok,
               p.latency_ms, p.score, l.label, m.threshold, m.task{', p.decision' if logged else ''}
        FROM ({lake_of(con).predictions_union(con, sorted(set(several.model_id)))}) AS p
        JOIN {models} AS m USING (model_id)
        LEFT JOIN ({latest_labels_sql(prediction_dates="?::DATE[]")}) AS l USING (prediction_id)
        WHERE (p.partition_date, p.model_id) IN (SELECT (unnest(?::DATE[]), unnest(?::VARCHAR[])))"""
    sql = performance_sql(source, ["partition_date", "model_id", "model_version"],
                          decision="decision" if logged else None)
    per_version = con.sql(sql, params=[*params, days, list(several.partition_date.dt.date),
                                       list(several.model_id)]).df()
    return pd.concat([daily, per_version], ignore_index=True)


def load_export_data(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date) -> ExportData:
    """Read the tables for `day` (and, for the main metric, the latest labelled day before it)."""
    models = config.model_ids
    performance = con.sql("""
        SELECT model_id, volume, n_ok, n_errors, error_rate, latency_p50_ms, latency_p95_ms, latency_p99_ms,
               label_coverage
        FROM monitoring.performance_daily WHERE partition_date = ? AND model_id IN (SELECT unnest(?::VARCHAR[]))""",
                          params=[day, models]).df()
    hours = con.sql(f"""
        SELECT model_id, count(DISTINCT date_trunc('hour', ts)) AS hours
        FROM ({lake_of(con).predictions_union(con, models)})
        WHERE partition_date = ? GROUP BY model_id""", params=[day]).df()

    current = current_champions(champion_days(con, day))
    champions = pd.DataFrame([(m, v, s) for m, (v, s) in current.items()], columns=["model_id", "model_version", "since"])
    main = _main_metric(con, config, day, {m: s for m, (_, s) in current.items()})
    version_days = sorted({day, *(pd.Timestamp(d).date() for d in main.day.dropna())})
    drift = con.sql("SELECT model_id, drift_share FROM monitoring.drift_summary WHERE partition_date = ?",
                    params=[day]).df()
    alerts = con.sql("""SELECT partition_date, model_id, check_name, severity, status FROM monitoring.alerts
                        WHERE status = 'open' AND partition_date <= ?""", params=[day]).df()
    from monitor_assets.storage.alert_state import AlertState

    alerts = AlertState.for_config(config).annotate(alerts)
    alerts = (alerts.groupby(["model_id", "severity", "state"]).size().rename("n").reset_index()
              if len(alerts) else pd.DataFrame(columns=["model_id", "severity", "state", "n"]))
    retraining = None
    if table_exists(con, *RETRAINING_TABLE):
        retraining = con.sql("""SELECT model_id, status, count(*) AS n FROM monitoring.retraining_requests
                                GROUP BY ALL""").df()
    return ExportData(day=day, performance=performance, hours_with_traffic=hours, main_metric=main,
                      versions=_versions(con, config, version_days), drift=drift, alerts=alerts,
                      retraining=retraining, champions=champions, estimated=_estimated(con, config, day),
                      **_ranking(con, config, day), **_segments(con, config, day))


def _ranking(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date) -> dict[str, pd.DataFrame]:
    """Per ranker: every metric (version `*`) on its latest day up to `day` whose interactions are all read (a
    ranker without interactions: its latest day), with that day's label coverage and the main metric's reference
    and floor; and the requests of `day` itself."""
    if not config.rankers or not table_exists(con, *RANKING_TABLE):
        return {}
    ids = [r.id for r in config.rankers]
    unlabelled = [r.id for r in config.rankers if r.labels is None]
    ranking = con.sql("""
        SELECT model_id, metric, value, partition_date AS day, label_coverage, reference_value, floor
        FROM monitoring.ranking_performance
        WHERE model_version = '*' AND partition_date <= ? AND model_id IN (SELECT unnest(?::VARCHAR[]))
              AND (labels_complete OR model_id IN (SELECT unnest(?::VARCHAR[])))
        QUALIFY partition_date = max(partition_date) OVER (PARTITION BY model_id)
        ORDER BY model_id, metric""", params=[day, ids, unlabelled]).df()
    requests = con.sql("""SELECT model_id, max(n_requests) AS n_requests FROM monitoring.ranking_performance
                          WHERE model_version = '*' AND partition_date = ? AND model_id IN (SELECT unnest(?::VARCHAR[]))
                          GROUP BY model_id ORDER BY model_id""", params=[day, ids]).df()
    return {"ranking": ranking, "ranking_requests": requests}


def _segments(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date) -> dict[str, pd.DataFrame]:
    """Per segmented model: its tested segments (an adjusted p-value) on its latest day up to `day` with one, and
    the judged segment-features of `day` itself (nothing without a segmented model)."""
    ids = [m.id for m in config.models if m.segments.by]
    if not ids:
        return {}
    segments = con.sql(f"""
        SELECT {', '.join(c if c != 'day' else 'partition_date AS day' for c in SEGMENT_COLUMNS)}
        FROM monitoring.segment_performance
        WHERE partition_date <= ? AND model_id IN (SELECT unnest(?::VARCHAR[])) AND p_adjusted IS NOT NULL
        QUALIFY partition_date = max(partition_date) OVER (PARTITION BY model_id)
        ORDER BY model_id, segment""", params=[day, ids]).df()
    drift = con.sql(f"""
        SELECT {', '.join(SEGMENT_DRIFT_COLUMNS)} FROM monitoring.segment_drift
        WHERE partition_date = ? AND model_id IN (SELECT unnest(?::VARCHAR[])) AND judged
        ORDER BY model_id, segment, feature""", params=[day, ids]).df()
    return {"segments": segments, "segment_drift": drift}


def _estimated(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date) -> pd.DataFrame:
    """Per model and metric: the latest day up to `day` with an estimate, that estimate and its band, and over
    every day up to `day` whose labels have landed, how many realized values fell inside the band."""
    return con.sql("""
        SELECT model_id, metric, max(partition_date) FILTER (WHERE isfinite(estimate)) AS day,
               arg_max(estimate, partition_date) FILTER (WHERE isfinite(estimate)) AS estimate,
               arg_max(lower, partition_date) FILTER (WHERE isfinite(estimate)) AS lower,
               arg_max(upper, partition_date) FILTER (WHERE isfinite(estimate)) AS upper,
               count(*) FILTER (WHERE within_band) AS held, count(within_band) AS reconciled
        FROM monitoring.estimated_performance
        WHERE partition_date <= ? AND model_id IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY ALL ORDER BY ALL""", params=[day, config.model_ids]).df()


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


def _day_seconds(day) -> float:
    """Midnight UTC of a day, as a Unix time."""
    day = pd.Timestamp(day).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def main_metric_ratio(metric: str, value: float, baseline: float | None) -> float | None:
    """The main metric relative to its baseline, oriented so that 1 is as good as the reference and lower is
    worse whichever way the metric points (MAE: baseline / current), as the performance check compares it."""
    if not (_known(value) and _known(baseline)) or value <= 0 or baseline <= 0:
        return None
    return value / baseline if METRIC_DIRECTION[metric] == HIGHER else baseline / value


def build_registry(data: ExportData, config: MonitorConfig, now: float | None = None) -> CollectorRegistry:
    """A fresh registry holding every series of the export (in this order: they are written so)."""
    registry = CollectorRegistry(auto_describe=True)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(PREFIX + name, doc, labels, registry=registry)

    _model_info_series(gauge, data, config, now)
    _service_series(gauge, data)
    _main_metric_series(gauge, data)
    _version_series(gauge, data)
    _drift_alert_retraining_series(gauge, data, config)
    _estimated_series(gauge, data)
    _ranking_series(gauge, data, config)
    _segment_series(gauge, data)
    return registry


def _model_info_series(gauge: Callable[..., Gauge], data: ExportData, config: MonitorConfig,
                       now: float | None) -> None:
    """When and which day, and every configured model with its champion."""
    gauge("export_timestamp_seconds", "When monitor_assets wrote these figures (Unix time).").set(
        time.time() if now is None else now)
    gauge("day_timestamp_seconds", "The day the figures describe: its midnight UTC (Unix time).").set(
        _day_seconds(data.day))
    info = gauge("model_info", "Every configured model (always 1), with its task, main metric, version (the "
                 "current champion: the version serving most requests; the configured one while no traffic is "
                 "recorded), owner, configured version and the day the champion took over (champion_since, "
                 "empty while no traffic is recorded).",
                 ("model_id", "task", "main_metric", "version", "owner", "configured_version", "champion_since"))
    champion = {r.model_id: r for r in data.champions.itertuples(index=False)}
    for m in config.models:
        c = champion.get(m.id)
        info.labels(m.id, m.task, m.main_metric, c.model_version if c else m.version, m.owner, m.version,
                    str(pd.Timestamp(c.since).date()) if c else "").set(1)
    for r in config.rankers:  # no version records for rankers: the configured version
        info.labels(r.id, r.task, r.main_metric, r.version, r.owner, r.version, "").set(1)


def _service_series(gauge: Callable[..., Gauge], data: ExportData) -> None:
    """Volume, errors, availability, latency and label coverage per model."""
    m_ = ("model_id",)
    volume = gauge("daily_predictions", "Requests logged on the day (served or failed).", m_)
    errors = gauge("error_ratio", "Share of the day's requests that failed (status not ok).", m_)
    availability = gauge("availability_ratio", "basis=requests: share of the day's requests served without "
                         "error; basis=hours: share of the day's 24 hours (UTC) with traffic.", (*m_, "basis"))
    latency = gauge("latency_seconds", "Latency percentile of the day's requests (percentile=50, 95, 99).",
                    (*m_, "percentile"))
    coverage = gauge("label_coverage_ratio", "Share of the day's served requests with a label so far.", m_)
    hours = dict(zip(data.hours_with_traffic.model_id, data.hours_with_traffic.hours, strict=True))
    for r in data.performance.itertuples(index=False):
        volume.labels(r.model_id).set(r.volume)
        if _known(r.error_rate):
            errors.labels(r.model_id).set(r.error_rate)
            availability.labels(r.model_id, "requests").set(1 - r.error_rate)
        availability.labels(r.model_id, "hours").set(hours.get(r.model_id, 0) / HOURS_PER_DAY)
        for p, column in PERCENTILES.items():
            if _known(getattr(r, column)):
                latency.labels(r.model_id, p).set(getattr(r, column) / 1000)
        if _known(r.label_coverage):
            coverage.labels(r.model_id).set(r.label_coverage)


def _main_metric_series(gauge: Callable[..., Gauge], data: ExportData) -> None:
    """The main metric, its baseline and their ratio per model."""
    m_ = ("model_id",)
    mm = ("model_id", "metric")
    main = gauge("main_metric", "The model's main metric on its latest day with labels on at least 80% of "
                 "served requests since its current champion version took over (that day: "
                 "monitor_main_metric_day_timestamp_seconds).", mm)
    baseline = gauge("main_metric_baseline", "The main metric on the model's reference set.", mm)
    ratio = gauge("main_metric_ratio", "Main metric relative to its baseline, 1 = as good as the reference, "
                  "lower = worse (inverted for lower-is-better metrics such as MAE).", mm)
    main_day = gauge("main_metric_day_timestamp_seconds", "The day monitor_main_metric describes (midnight UTC).", m_)
    for r in data.main_metric.itertuples(index=False):
        main.labels(r.model_id, r.metric).set(r.value)
        main_day.labels(r.model_id).set(_day_seconds(r.day))
        if _known(r.baseline):
            baseline.labels(r.model_id, r.metric).set(r.baseline)
        if (value := main_metric_ratio(r.metric, r.value, r.baseline)) is not None:
            ratio.labels(r.model_id, r.metric).set(value)


def _version_series(gauge: Callable[..., Gauge], data: ExportData) -> None:
    """Volume, errors, latency and the main metric per model version."""
    mv = ("model_id", "model_version")
    v_volume = gauge("version_daily_predictions", "Requests logged on the day per model version.", mv)
    v_errors = gauge("version_error_ratio", "Share of failed requests on the day per model version.", mv)
    v_latency = gauge("version_latency_seconds", "Latency percentile per model version.", (*mv, "percentile"))
    v_main = gauge("version_main_metric", "The main metric per model version, on the day monitor_main_metric "
                   "describes.", (*mv, "metric"))
    versions = data.versions.assign(day=[pd.Timestamp(d).date() for d in data.versions.partition_date])
    main_days = {r.model_id: (pd.Timestamp(r.day).date(), r.metric) for r in data.main_metric.itertuples()}
    for r in versions[versions.day == data.day].itertuples(index=False):
        v_volume.labels(r.model_id, r.model_version).set(r.volume)
        if _known(r.error_rate):
            v_errors.labels(r.model_id, r.model_version).set(r.error_rate)
        for p, column in PERCENTILES.items():
            if _known(getattr(r, column)):
                v_latency.labels(r.model_id, r.model_version, p).set(getattr(r, column) / 1000)
    for r in versions.itertuples(index=False):
        day, metric = main_days.get(r.model_id, (None, None))
        if day == r.day and _known(value := getattr(r, metric)):
            v_main.labels(r.model_id, r.model_version, metric).set(value)


def _drift_alert_retraining_series(gauge: Callable[..., Gauge], data: ExportData, config: MonitorConfig) -> None:
    """Drift share, open alerts by severity and state, retraining requests by status."""
    m_ = ("model_id",)
    drift = gauge("drift_share_ratio", "Share of the model's input features drifted on the day.", m_)
    for r in data.drift.itertuples(index=False):
        if _known(r.drift_share):
            drift.labels(r.model_id).set(r.drift_share)

    alerts = gauge("open_alerts", "Open alerts up to the day by severity (WARN, ERROR) and state (open, "
                   "acknowledged, silenced).", (*m_, "severity", "state"))
    counts = {(r.model_id, r.severity, r.state): r.n for r in data.alerts.itertuples(index=False)}
    for m in config.models:
        for severity in SEVERITIES:
            for state in ALERT_STATES:
                alerts.labels(m.id, severity, state).set(counts.get((m.id, severity, state), 0))
    for (model_id, severity, state), n in counts.items():  # a severity or model outside the defaults
        alerts.labels(model_id, severity, state).set(n)

    requests = gauge("retraining_requests", "Retraining requests by status (proposed, approved, rejected, done, "
                     "superseded; 0 proposed for a model without requests).", (*m_, "status"))
    for m in config.models:
        requests.labels(m.id, "proposed").set(0)  # every model has the series an alert rule can watch
    if data.retraining is not None:
        for r in data.retraining.itertuples(index=False):
            requests.labels(r.model_id, r.status).set(r.n)


def _estimated_series(gauge: Callable[..., Gauge], data: ExportData) -> None:
    """The latest estimate per model and metric with its band, its day, and how often the band held."""
    mm = ("model_id", "metric")
    estimate = gauge("estimated_performance", "The metric estimated before labels on the model's latest estimated "
                     "day (monitor_estimated_performance_day_timestamp_seconds): bound=estimate, or the 95% band's "
                     "lower and upper ends.", (*mm, "bound"))
    day = gauge("estimated_performance_day_timestamp_seconds", "The day monitor_estimated_performance describes "
                "(midnight UTC).", mm)
    coverage = gauge("estimated_band_coverage_ratio", "Share of the reconciled days (labels landed) whose realized "
                     "value fell inside the estimate's 95% band, over every day up to the export's.", mm)
    reconciled = gauge("estimated_band_reconciled", "How many days monitor_estimated_band_coverage_ratio is "
                       "over: the days up to the export's whose labels have landed.", mm)
    for r in data.estimated.itertuples(index=False):
        if pd.notna(r.day):  # a metric never estimated (no predicted positives, say) has no day
            day.labels(r.model_id, r.metric).set(_day_seconds(r.day))
            for bound in BOUNDS:
                if _known(getattr(r, bound)):
                    estimate.labels(r.model_id, r.metric, bound).set(getattr(r, bound))
        reconciled.labels(r.model_id, r.metric).set(r.reconciled)
        if r.reconciled:
            coverage.labels(r.model_id, r.metric).set(r.held / r.reconciled)


def _ranking_series(gauge: Callable[..., Gauge], data: ExportData, config: MonitorConfig) -> None:
    """Each ranker's metrics on its latest fully labelled day, that day, its label coverage, the main metric's
    reference and floor, and the export day's requests."""
    mm = ("model_id", "metric")
    metric = gauge("ranking_metric", "A ranker's metric (ndcg_at_10, precision_at_5, mrr, catalogue_coverage, "
                   "popularity_concentration, novelty, item_drift_js, mean_loss, ...) on its latest day whose "
                   "interactions are all read (monitor_ranking_day_timestamp_seconds).", mm)
    day = gauge("ranking_day_timestamp_seconds", "The day monitor_ranking_metric describes (midnight UTC).",
                ("model_id",))
    coverage = gauge("ranking_label_coverage_ratio", "Share of that day's requests with an interaction.",
                     ("model_id",))
    baseline = gauge("ranking_main_metric_baseline", "The ranker's main metric on its reference set.", mm)
    floor = gauge("ranking_main_metric_floor", "The main metric's floor: min_metric_ratio x its reference value "
                  "(the reference divided by it for popularity_concentration, where lower is better).", mm)
    requests = gauge("ranking_requests", "Requests the ranker served on the exported day.", ("model_id",))
    mains = {r.id: r.main_metric for r in config.rankers}
    for r in data.ranking.itertuples(index=False):
        if _known(r.value):
            metric.labels(r.model_id, r.metric).set(r.value)
        day.labels(r.model_id).set(_day_seconds(r.day))  # every row of a ranker has its day and coverage
        if _known(r.label_coverage):
            coverage.labels(r.model_id).set(r.label_coverage)
        if r.metric == mains.get(r.model_id):
            if _known(r.reference_value):
                baseline.labels(r.model_id, r.metric).set(r.reference_value)
            if _known(r.floor):
                floor.labels(r.model_id, r.metric).set(r.floor)
    for r in data.ranking_requests.itertuples(index=False):
        requests.labels(r.model_id).set(r.n_requests)


def _segment_series(gauge: Callable[..., Gauge], data: ExportData) -> None:
    """Each tested segment's main metric, floor and verdict on its model's latest tested day, that day; each judged
    segment's drift evidence per feature and its drifted features on the export day."""
    ms = ("model_id", "segment")
    value = gauge("segment_main_metric", "A segment's main metric on its model's latest day with a tested segment "
                  "(monitor_segment_day_timestamp_seconds; only segments with enough labelled rows are tested).",
                  (*ms, "metric"))
    floor = gauge("segment_main_metric_floor", "The segment's floor: min_metric_ratio x its reference value "
                  "(its own in the reference set, else the model's).", (*ms, "metric"))
    below = gauge("segment_below_floor", "1 when the segment's main metric is below its floor beyond chance "
                  "(adjusted across the model-day's segments), else 0.", ms)
    day = gauge("segment_day_timestamp_seconds", "The day monitor_segment_main_metric describes (midnight UTC).",
                ("model_id",))
    for r in data.segments.itertuples(index=False):
        day.labels(r.model_id).set(_day_seconds(r.day))
        below.labels(r.model_id, r.segment).set(float(bool(r.below_floor) if _known(r.below_floor) else 0))
        if _known(r.value):
            value.labels(r.model_id, r.segment, r.metric).set(r.value)
        if _known(r.floor):
            floor.labels(r.model_id, r.segment, r.metric).set(r.floor)
    evidence = gauge("segment_drift_evidence", "A segment's drift of one feature on the day relative to its "
                     "threshold: statistic / threshold for a distance, log(p) / log(level) for a test (1 = at the "
                     "threshold; drifted only when also significant across the model-day's segments and "
                     "features).", (*ms, "feature"))
    drifted = gauge("segment_drifted_features", "Features drifted in the segment on the day (false alarms "
                    "controlled across the model-day's segments and features).", ms)
    for r in data.segment_drift.itertuples(index=False):
        if _known(r.evidence) and math.isfinite(r.evidence):
            evidence.labels(r.model_id, r.segment, r.feature).set(r.evidence)
        drifted.labels(r.model_id, r.segment).inc(float(bool(r.drifted) if _known(r.drifted) else 0))


@dataclass
class ExportResult:
    path: Path
    series: int
    pushed_to: str | None


def export_metrics(con: duckdb.DuckDBPyConnection, config: MonitorConfig, day: dt.date, folder: str | Path,
                   pushgateway: str | None = None, now: float | None = None) -> ExportResult:
    """Read the tables for `day`, write `<folder>/monitor_assets.prom` atomically (a temporary file renamed
    over it, so the textfile collector never reads half a file) and push the same registry to
    `pushgateway` when given (job `monitor_assets`; the push replaces that job's previous series)."""
    registry = build_registry(load_export_data(con, config, day), config, now)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TEXTFILE
    write_to_textfile(str(path), registry)  # writes <path>.<pid>.<thread>.tmp, then os.replace
    if pushgateway:
        push_to_gateway(pushgateway, job=PUSH_JOB, registry=registry, timeout=10)
    series = sum(len(family.samples) for family in registry.collect())
    return ExportResult(path=path, series=series, pushed_to=pushgateway or None)
