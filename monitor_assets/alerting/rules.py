"""Threshold checks over the monitoring tables, the alerts table, and the text of an alert.

No Dagster here: the asset, the asset checks and the sensor all call these functions.
"""

from __future__ import annotations

import datetime as dt
import json
import math

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
from monitor_assets.notify.messages import fmt_num, fmt_p, fmt_pct, plural
from monitor_assets.storage.warehouse import transaction

DEFAULT_SEVERITY = {PERFORMANCE: "ERROR", LATENCY: "WARN", ERROR_RATE: "ERROR", VOLUME: "ERROR", DRIFT: "WARN",
                    FAIRNESS: "ERROR", ANOMALIES: "WARN"}
MIN_LABELLED = 100  # fewer labelled rows than this: the performance check waits for more labels
FAIRNESS_MAX_P = 0.001  # a disparity must also be unlikely to be chance (see stats.fairness)

COLUMNS = ["partition_date", "model_id", "check_name", "severity", "value", "threshold", "passed", "message",
           "details"]


def severity(model: ModelConfig, check: str) -> str:
    return model.thresholds.severity.get(check, DEFAULT_SEVERITY[check])


def evaluate(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Every threshold check for every model on `days`: one row each, `passed` True or False.
    A check whose input is not known yet (no labels, no rows) yields no row rather than a pass."""
    rows = []
    perf = con.execute("""SELECT * FROM monitoring.performance_daily
                          WHERE partition_date IN (SELECT unnest(?::DATE[]))""", [days]).df()
    # Days whose logs were never ingested tell nothing (a label refresh reaches back before the first
    # ingested day): judging their zero volume would raise false "nothing logged" alerts.
    ingested = {d for (d,) in con.execute("""SELECT DISTINCT partition_date FROM raw.ingestion_log
                                             WHERE source = 'predictions'
                                             AND partition_date IN (SELECT unnest(?::DATE[]))""", [days]).fetchall()}
    perf = perf[perf.partition_date.dt.date.isin(ingested)]
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
    drifted = con.execute("""SELECT partition_date, model_id, feature, method, statistic, threshold,
                                    reference_summary, current_summary
                             FROM monitoring.feature_drift WHERE partition_date IN (SELECT unnest(?::DATE[]))
                             AND drifted AND role = 'feature'""", [days]).df()
    anomalies = con.execute("""SELECT partition_date, model_id, metric, value, expected, robust_z
                               FROM monitoring.anomalies WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                            [days]).df()

    def add(day, model: ModelConfig, check, value, threshold, passed, message, details=None):
        rows.append((day, model.id, check, severity(model, check), value, threshold, bool(passed), message,
                     json.dumps(details or {}, default=str)))

    for model in config.models:
        t = model.thresholds
        for r in perf[perf.model_id == model.id].itertuples():
            day = r.partition_date.date() if hasattr(r.partition_date, "date") else r.partition_date
            add(day, model, VOLUME, float(r.volume), 1.0, r.volume > 0,
                "no predictions were logged" if r.volume == 0 else f"{r.volume} predictions logged")
            if r.volume == 0:
                continue
            if _known(r.latency_p95_ms):  # latency not logged: nothing to judge, not a breach
                add(day, model, LATENCY, r.latency_p95_ms, t.latency_p95_ms, r.latency_p95_ms <= t.latency_p95_ms,
                    f"latency p95 {fmt_num(r.latency_p95_ms)} ms (SLA {fmt_num(t.latency_p95_ms)} ms)")
            if _known(r.error_rate):
                add(day, model, ERROR_RATE, r.error_rate, t.error_rate, r.error_rate <= t.error_rate,
                    f"error rate {fmt_pct(r.error_rate)} (SLA {fmt_pct(t.error_rate)}), "
                    f"{plural(int(r.n_errors), 'failed request')}")
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
                    f"{metric} {fmt_num(current)} ± {fmt_num(2 * se)} vs baseline {fmt_num(baseline)}: {ratio:.0%} of "
                    f"baseline (threshold {t.min_metric_ratio:.0%}, {r.n_labelled} labelled rows, "
                    f"label coverage {r.label_coverage:.0%})")
        mine = drifted[drifted.model_id == model.id]
        for r in drift[(drift.model_id == model.id) & drift.drift_share.notna()].itertuples():
            day = r.partition_date.date()
            features = mine[mine.partition_date.dt.date == day].assign(
                excess=lambda f: f.statistic / f.threshold.where(f.threshold > 0)).sort_values(
                "excess", ascending=False)
            names = ", ".join(features.feature.head(5)) + (", …" if len(features) > 5 else "")
            add(day, model, DRIFT, r.drift_share, t.drift_share, r.drift_share <= t.drift_share,
                f"{int(r.n_drifted)} of {plural(int(r.n_features), 'feature')} drifted (share "
                f"{fmt_pct(r.drift_share)}, threshold {fmt_pct(t.drift_share)})" + (f": {names}" if names else ""),
                {"drifted_features": features.drop(columns=["partition_date", "model_id", "excess"])
                 .to_dict("records")})
        part = fair[(fair.model_id == model.id) & fair.ratio.notna()]
        for day, g in part.groupby("partition_date"):
            worst = g.sort_values("ratio").iloc[0]
            failing = g[(g.ratio < t.demographic_parity_ratio) & (g.p < FAIRNESS_MAX_P)]
            shown = failing.sort_values("ratio").iloc[0] if len(failing) else worst
            add(day.date(), model, FAIRNESS, float(shown.ratio), t.demographic_parity_ratio, failing.empty,
                f"{shown.attribute}: selection rate of '{shown.low_group}' is {fmt_pct(shown.ratio)} of "
                f"'{shown.top_group}' (four-fifths rule: {fmt_pct(t.demographic_parity_ratio)}; "
                f"chi-square {fmt_p(shown.p)})")
        for day, g in anomalies[anomalies.model_id == model.id].groupby("partition_date"):
            top = g.reindex(g.robust_z.abs().sort_values(ascending=False).index).iloc[0]
            add(day.date(), model, ANOMALIES, float(abs(top.robust_z)), config.anomaly_threshold, False,
                f"{plural(len(g), 'unusual metric')}; largest: {top.metric} {fmt_num(top.value)} vs expected "
                f"{fmt_num(top.expected)} (robust z {top.robust_z:+.1f})")
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
