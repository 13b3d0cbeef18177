"""Threshold checks over the monitoring tables, the alerts table, and the text of an alert.

No Dagster here: the asset, the asset checks and the sensor all call these functions.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

import duckdb
import pandas as pd

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.constants import ANOMALY_CHECK as ANOMALIES
from monitor_assets.constants import DRIFT_CHECK as DRIFT
from monitor_assets.constants import ERROR_RATE_CHECK as ERROR_RATE
from monitor_assets.constants import FAIRNESS_CHECK as FAIRNESS
from monitor_assets.constants import LATENCY_CHECK as LATENCY
from monitor_assets.constants import PERFORMANCE_CHECK as PERFORMANCE
from monitor_assets.constants import VOLUME_CHECK as VOLUME
from monitor_assets.warehouse import transaction

DEFAULT_SEVERITY = {PERFORMANCE: "ERROR", LATENCY: "WARN", ERROR_RATE: "ERROR", VOLUME: "ERROR", DRIFT: "WARN",
                    FAIRNESS: "ERROR", ANOMALIES: "WARN"}
MIN_LABELLED = 100  # fewer labelled rows than this: the performance check waits for more labels
FAIRNESS_MAX_P = 0.001  # a disparity must also be unlikely to be chance (see stats.fairness)

COLUMNS = ["partition_date", "model_id", "check_name", "severity", "value", "threshold", "passed", "message"]


def severity(model: ModelConfig, check: str) -> str:
    return model.thresholds.severity.get(check, DEFAULT_SEVERITY[check])


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Every threshold check for every model on `days`: one row each, `passed` True or False.
    A check whose input is not known yet (no labels, no rows) yields no row rather than a pass."""
    rows = []
    perf = con.execute("""SELECT * FROM monitoring.performance_daily
                          WHERE partition_date IN (SELECT unnest(?::DATE[]))""", [days]).df()
    base = {(m, k): v for m, k, v in con.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
    drift = con.execute("""SELECT partition_date, model_id, drift_share, n_drifted, n_features
                           FROM monitoring.drift_summary WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                        [days]).df()
    fair = con.execute("""
        SELECT partition_date, model_id, attribute, any_value(demographic_parity_ratio) AS ratio,
               any_value(disparity_p_value) AS p, arg_max(grp, selection_rate) AS top_group,
               arg_min(grp, selection_rate) FILTER (WHERE NOT below_min_size) AS low_group
        FROM monitoring.fairness WHERE partition_date IN (SELECT unnest(?::DATE[]))
        GROUP BY ALL""", [days]).df()
    anomalies = con.execute("""SELECT partition_date, model_id, metric, value, expected, robust_z
                               FROM monitoring.anomalies WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                            [days]).df()

    def add(day, model: ModelConfig, check, value, threshold, passed, message):
        rows.append((day, model.id, check, severity(model, check), value, threshold, bool(passed), message))

    for model in config.models:
        t = model.thresholds
        for r in perf[perf.model_id == model.id].itertuples():
            day = r.partition_date.date() if hasattr(r.partition_date, "date") else r.partition_date
            add(day, model, VOLUME, float(r.volume), 1.0, r.volume > 0,
                "no predictions were logged" if r.volume == 0 else f"{r.volume} predictions logged")
            if r.volume == 0:
                continue
            add(day, model, LATENCY, r.latency_p95_ms, t.latency_p95_ms, r.latency_p95_ms <= t.latency_p95_ms,
                f"latency p95 {_fmt(r.latency_p95_ms)} ms (SLA {_fmt(t.latency_p95_ms)} ms)")
            add(day, model, ERROR_RATE, r.error_rate, t.error_rate, r.error_rate <= t.error_rate,
                f"error rate {r.error_rate:.2%} (SLA {t.error_rate:.2%}), {r.n_errors} failed requests")
            metric = model.main_metric
            current, baseline = getattr(r, metric), base.get((model.id, metric))
            if r.n_labelled >= MIN_LABELLED and _known(current) and _known(baseline) and baseline > 0 and current > 0:
                # A ratio where 1 means as good as the reference; MAE is lower-is-better, so invert it.
                ratio = current / baseline if model.is_classifier else baseline / current
                se = metric_standard_error(metric, current, r.n_labelled, r.positive_rate)
                # Alert only when even the optimistic end (2 standard errors) is below the threshold:
                # a day's AUC on a few dozen positives swings by several points on noise alone.
                optimistic = ((current + 2 * se) / baseline if model.is_classifier
                              else baseline / max(current - 2 * se, 1e-12))
                add(day, model, PERFORMANCE, ratio, t.min_metric_ratio, optimistic >= t.min_metric_ratio,
                    f"{metric} {_fmt(current)} ± {_fmt(2 * se)} vs baseline {_fmt(baseline)}: {ratio:.0%} of "
                    f"baseline (threshold {t.min_metric_ratio:.0%}, {r.n_labelled} labelled rows, "
                    f"label coverage {r.label_coverage:.0%})")
        for r in drift[(drift.model_id == model.id) & drift.drift_share.notna()].itertuples():
            day = r.partition_date.date()
            add(day, model, DRIFT, r.drift_share, t.drift_share, r.drift_share <= t.drift_share,
                f"{int(r.n_drifted)} of {int(r.n_features)} features drifted (share {r.drift_share:.0%}, "
                f"threshold {t.drift_share:.0%})")
        part = fair[(fair.model_id == model.id) & fair.ratio.notna()]
        for day, g in part.groupby("partition_date"):
            worst = g.sort_values("ratio").iloc[0]
            failing = g[(g.ratio < t.demographic_parity_ratio) & (g.p < FAIRNESS_MAX_P)]
            shown = failing.sort_values("ratio").iloc[0] if len(failing) else worst
            add(day.date(), model, FAIRNESS, float(shown.ratio), t.demographic_parity_ratio, failing.empty,
                f"{shown.attribute}: selection rate of '{shown.low_group}' is {shown.ratio:.0%} of "
                f"'{shown.top_group}' (four-fifths rule: {t.demographic_parity_ratio:.0%}; "
                f"chi-square p={shown.p:.2g})")
        for day, g in anomalies[anomalies.model_id == model.id].groupby("partition_date"):
            top = g.reindex(g.robust_z.abs().sort_values(ascending=False).index).iloc[0]
            add(day.date(), model, ANOMALIES, float(abs(top.robust_z)), config.anomaly_threshold, False,
                f"{len(g)} unusual metrics; largest: {top.metric} {_fmt(top.value)} vs expected "
                f"{_fmt(top.expected)} (robust z {top.robust_z:+.1f})")
        # Days with no anomaly for this model pass the anomaly check (resolving earlier alerts).
        flagged = set(anomalies[anomalies.model_id == model.id].partition_date.dt.date)
        for day in days:
            if day not in flagged and ((perf.model_id == model.id) & (perf.partition_date.dt.date == day)).any():
                add(day, model, ANOMALIES, 0.0, config.anomaly_threshold, True, "no unusual metrics")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame


def metric_standard_error(metric: str, value: float, n: int, positive_rate: float | None) -> float:
    """Standard error of a day's metric: Hanley & McNeil (1982) for ROC AUC; for MAE, that of a mean of
    absolute errors, taking their spread as for normal errors (sd = MAE * sqrt(pi/2 - 1))."""
    if metric == "roc_auc":
        if not _known(positive_rate):
            return 0.0
        n_pos = max(round(n * positive_rate), 1)
        n_neg = max(n - n_pos, 1)
        a = value
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
        return math.sqrt(max(var, 0.0))
    if metric == "mae":
        return value * math.sqrt(math.pi / 2 - 1) / math.sqrt(max(n, 1))
    return 0.0


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def upsert_alerts(con: duckdb.DuckDBPyConnection, evaluated: pd.DataFrame, now: dt.datetime) -> dict[str, int]:
    """Open or refresh an alert per failed (day, model, check); resolve open alerts that now pass.
    Re-runs update rows in place: never a duplicate."""
    con.register("_evaluated", evaluated)
    try:
        with transaction(con):
            resolved = con.execute("""
                UPDATE monitoring.alerts AS a SET status = 'resolved', last_seen = ?, value = e.value,
                       message = e.message
                FROM _evaluated AS e
                WHERE e.passed AND a.status = 'open' AND a.partition_date = e.partition_date
                      AND a.model_id = e.model_id AND a.check_name = e.check_name""", [now]).fetchall()
            refreshed = con.execute("""
                UPDATE monitoring.alerts AS a SET status = 'open', last_seen = ?, value = e.value,
                       threshold = e.threshold, severity = e.severity, message = e.message
                FROM _evaluated AS e
                WHERE NOT e.passed AND a.partition_date = e.partition_date AND a.model_id = e.model_id
                      AND a.check_name = e.check_name""", [now]).fetchall()
            opened = con.execute("""
                INSERT INTO monitoring.alerts
                SELECT e.partition_date, e.model_id, e.check_name, e.severity, e.value, e.threshold, e.message,
                       'open', ?, ?
                FROM _evaluated AS e
                WHERE NOT e.passed AND NOT EXISTS (
                    SELECT 1 FROM monitoring.alerts AS a WHERE a.partition_date = e.partition_date
                    AND a.model_id = e.model_id AND a.check_name = e.check_name)""", [now, now]).fetchall()
    finally:
        con.unregister("_evaluated")
    return {"resolved": resolved[0][0], "refreshed": refreshed[0][0], "opened": opened[0][0]}


def group_failures(failures: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Failures by (model, check), each list sorted by day: one problem, one message."""
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for f in failures:
        grouped[(f["model_id"], f["check_name"])].append(f)
    return {k: sorted(v, key=lambda f: str(f["partition_date"])) for k, v in grouped.items()}


def compose(model_id: str, check: str, failures: list[dict], others: list[str], run_url: str) -> tuple[str, str]:
    """Subject and body of one alert message."""
    latest = failures[-1]
    days = [str(f["partition_date"]) for f in failures]
    span = days[0] if len(days) == 1 else f"{days[0]} .. {days[-1]} ({len(days)} days)"
    level = "ERROR" if any(f["severity"] == "ERROR" for f in failures) else "WARN"
    subject = f"[{level}] {model_id}: {check} failed on {span}"
    lines = [
        f"Model:      {model_id}",
        f"Check:      {check} ({level})",
        f"Partition:  {span}",
        f"Value:      {_fmt(latest['value'])} (threshold {_fmt(latest['threshold'])}) on {days[-1]}",
        f"What:       {latest['message']}",
    ]
    if len(failures) > 1:
        lines.append("Days:       " + ", ".join(f"{d} = {_fmt(f['value'])}" for d, f in zip(days, failures, strict=True)))
    lines.append("Also open:  " + ("; ".join(others) if others else "nothing else"))
    lines.append(f"Run:        {run_url}")
    return subject, "\n".join(lines) + "\n"
