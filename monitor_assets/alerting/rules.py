"""Threshold checks over the monitoring tables, the alerts table, and the text of an alert.

No Dagster here: the asset, the asset checks and the sensor all call these functions.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

import duckdb
import pandas as pd

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.constants import ANOMALY_CHECK as ANOMALIES
from monitor_assets.constants import DRIFT_CHECK as DRIFT
from monitor_assets.constants import EQUALIZED_ODDS_CHECK as EQUALIZED_ODDS
from monitor_assets.constants import ERROR_RATE_CHECK as ERROR_RATE
from monitor_assets.constants import ESTIMATED_PERFORMANCE_CHECK as ESTIMATED_PERFORMANCE
from monitor_assets.constants import FAIRNESS_CHECK as FAIRNESS
from monitor_assets.constants import FAIRNESS_MAX_P, MIN_LABELLED
from monitor_assets.constants import FEATURE_VALUES_CHECK as FEATURE_VALUES
from monitor_assets.constants import KEY_FEATURE_DRIFT_CHECK as KEY_FEATURE_DRIFT
from monitor_assets.constants import LATENCY_CHECK as LATENCY
from monitor_assets.constants import MULTIVARIATE_DRIFT_CHECK as MULTIVARIATE_DRIFT
from monitor_assets.constants import PERFORMANCE_CHECK as PERFORMANCE
from monitor_assets.constants import PREDICTION_DRIFT_CHECK as PREDICTION_DRIFT
from monitor_assets.constants import RANKING_DRIFT_CHECK as RANKING_DRIFT
from monitor_assets.constants import RANKING_PERFORMANCE_CHECK as RANKING_PERFORMANCE
from monitor_assets.constants import RANKING_SEGMENT_CHECK as RANKING_SEGMENT
from monitor_assets.constants import SEGMENT_DRIFT_CHECK as SEGMENT_DRIFT
from monitor_assets.constants import SEGMENT_ESTIMATED_PERFORMANCE_CHECK as SEGMENT_ESTIMATED_PERFORMANCE
from monitor_assets.constants import SEGMENT_PERFORMANCE_CHECK as SEGMENT_PERFORMANCE
from monitor_assets.constants import VOLUME_CHECK as VOLUME
from monitor_assets.formatting import fmt_num, fmt_p, fmt_pct, plural
from monitor_assets.stats.anomaly import find_anomalies
from monitor_assets.stats.drift import P_VALUE_METHODS
from monitor_assets.stats.estimation import band_standard_error
from monitor_assets.stats.metrics_spec import HIGHER, METRIC_DIRECTION
from monitor_assets.stats.performance import metric_floor, metric_standard_error, share_of_baseline
from monitor_assets.stats.shortfall import ALPHA as ESTIMATE_ALPHA
from monitor_assets.stats.shortfall import CUSUM_DAYS, adjusted_fails, family_size, shortfall_test
from monitor_assets.storage.lake import days_predicate
from monitor_assets.storage.warehouse import edit, lake_of, replace_partitions_from_frame, transaction

# A model-day that could not be analysed (see analysis.logic.TRANSIENT_ERRORS) fails its check at this
# severity whatever the config says: a check that could not run must not look like a quiet day.
ANALYSIS_ERROR_SEVERITY = "ERROR"

COLUMNS = ["partition_date", "model_id", "check_name", "severity", "value", "threshold", "passed", "message",
           "details"]


def evaluate(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Every threshold check for every model on `days`: one row each, `passed` True or False.
    A check whose input is not known yet (no labels, no rows) yields no row rather than a pass."""
    inputs = _by_model(**_read_inputs(con, config, days))
    rows = _Rows()
    for model in config.models:
        _judge_service(rows, model, inputs)
        _judge_drift(rows, model, inputs)
        _judge_fairness(rows, model, inputs, config)
        _judge_anomalies(rows, model, inputs, config, days)
    _judge_estimates(rows, config, inputs, days)
    _judge_segments(rows, config, inputs)
    _judge_segment_estimates(rows, config, inputs)
    _judge_segment_drift(rows, config, inputs)
    _judge_multivariate(rows, config, inputs)
    if config.rankers:
        _judge_rankers(rows, con, config, days)
    return pd.DataFrame(rows, columns=COLUMNS)


def _judge_rankers(rows: _Rows, con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> None:
    """Rankers' checks, judged as their own check step judges them (`ranking.logic`), so their alerts
    open, stay and resolve in `monitoring.alerts` like every other model's: a failure row per failed ranker-day,
    a pass per judged one."""
    from monitor_assets.ranking.logic import baseline_failures, drift_failures, segment_failures

    rankers = {r.id: r for r in config.rankers}
    for check, judge in ((RANKING_PERFORMANCE, baseline_failures), (RANKING_DRIFT, drift_failures),
                         (RANKING_SEGMENT, segment_failures)):
        judged: list[tuple[dt.date, str]] = []
        failures, _ = judge(con, config, days, check, judged)
        failed = {(f["partition_date"], f["model_id"]): f for f in failures}
        for day, model_id in judged:
            if (f := failed.get((day, model_id))) is not None:
                rows.add(day, rankers[model_id], check, f["value"], f["threshold"], False, f["message"],
                         f.get("details"), level=f["severity"])
            else:
                rows.add(day, rankers[model_id], check, None, None, True, "within the reference's range")


def _read_inputs(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> dict:
    """What the checks judge, for `days`: the daily figures, the baselines, drift, fairness, which optional
    fields were logged, anomalies."""
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
    drift = con.execute("""SELECT partition_date, model_id, drift_share, n_drifted, n_features, analysis_error
                           FROM monitoring.drift_summary WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                        [days]).df()
    # One row per attribute: the disparities and the groups they compare (eligible groups only), with the
    # rates at the ends of the equalized odds gap.
    fair = con.execute("""
        SELECT partition_date, model_id, attribute, any_value(demographic_parity_ratio) AS ratio,
               any_value(demographic_parity_p_value) AS p,
               any_value(most_favoured_group) AS top_group, any_value(most_favoured_n) AS top_n,
               any_value(most_favoured_selection_rate) AS top_rate,
               any_value(least_favoured_group) AS low_group, any_value(least_favoured_n) AS low_n,
               any_value(least_favoured_selection_rate) AS low_rate,
               any_value(equalized_odds_difference) AS odds, any_value(equalized_odds_p_value) AS odds_p,
               any_value(equalized_odds_rate) AS odds_rate,
               any_value(equalized_odds_max_group) AS odds_hi_group, any_value(equalized_odds_max_n) AS odds_hi_n,
               any_value(equalized_odds_min_group) AS odds_lo_group, any_value(equalized_odds_min_n) AS odds_lo_n,
               any_value(CASE WHEN grp = equalized_odds_max_group THEN
                   CASE equalized_odds_rate WHEN 'true_positive_rate' THEN true_positive_rate
                   ELSE false_positive_rate END END) AS odds_hi_rate,
               any_value(CASE WHEN grp = equalized_odds_min_group THEN
                   CASE equalized_odds_rate WHEN 'true_positive_rate' THEN true_positive_rate
                   ELSE false_positive_rate END END) AS odds_lo_rate,
               any_value(n_eligible_groups) AS n_eligible, count(*) AS n_groups,
               any_value(fairness_baseline) AS baseline, any_value(baseline_note) AS baseline_note,
               any_value(reference_demographic_parity_ratio) AS ref_ratio,
               any_value(reference_equalized_odds_difference) AS ref_odds, any_value(analysis_error) AS analysis_error
        FROM monitoring.fairness WHERE partition_date IN (SELECT unnest(?::DATE[]))
        GROUP BY ALL""", [days]).df()
    features = con.execute("""SELECT partition_date, model_id, feature, method, statistic, p_value, p_value_adjusted,
                                     threshold, drifted, reference_summary, current_summary, missing_share,
                                     reference_missing_share, missing_drift, unseen_share, unseen_drift,
                                     all_missing, all_unseen, message, role, importance, key_feature,
                                     strong_drift, current_mean, reference_mean
                              FROM monitoring.feature_drift WHERE partition_date IN (SELECT unnest(?::DATE[]))
                              AND role IN ('feature', 'prediction')""", [days]).df()
    predictions = features[features.role == "prediction"]
    features = features[features.role == "feature"]
    # Which optional fields each model logged each day: a figure from a field not logged is not judged.
    logged = {(d.date() if hasattr(d, "date") else d, m): (lat, status) for d, m, lat, status in con.execute(f"""
        SELECT partition_date, model_id, count(latency_ms), count(status)
        FROM ({lake_of(con).predictions_union(con, config.model_ids)})
        WHERE partition_date IN (SELECT unnest(?::DATE[])) GROUP BY ALL""", [days]).fetchall()}
    anomalies = con.execute("""SELECT partition_date, model_id, metric, value, expected, robust_z
                               FROM monitoring.anomalies WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                            [days]).df()
    # The estimates of the days and the CUSUM_DAYS - 1 before each (the sequential test's window).
    estimated = con.execute("""SELECT partition_date, model_id, metric, estimate, lower, upper, n_rows
                               FROM monitoring.estimated_performance
                               WHERE partition_date BETWEEN ? AND ?""",
                            [min(days) - dt.timedelta(days=CUSUM_DAYS - 1), max(days)]).df()
    segments = con.execute("""SELECT partition_date, model_id, segment, n_labelled, metric, value, reference_value,
                                     reference_source, floor, p_value, p_adjusted, below_floor
                              FROM monitoring.segment_performance WHERE partition_date IN (SELECT unnest(?::DATE[]))
                              AND p_value IS NOT NULL""", [days]).df()
    # The main metric's estimate per segment, where it was tested (a band, a floor).
    segment_estimates = con.execute("""
        SELECT partition_date, model_id, segment, metric, estimate AS value, lower, upper, n_rows, n_labelled,
               reference_value, reference_source, floor, p_value, p_adjusted, below_floor
        FROM monitoring.segment_estimated_performance WHERE partition_date IN (SELECT unnest(?::DATE[]))
        AND p_value IS NOT NULL""", [days]).df()
    segment_drift = con.execute("""SELECT partition_date, model_id, segment, feature, method, statistic, threshold,
                                          evidence, test, p_value, p_adjusted, drifted, judged, n_rows, reference_source
                                   FROM monitoring.segment_drift WHERE partition_date IN (SELECT unnest(?::DATE[]))""",
                                [days]).df()
    multivariate = con.execute("""SELECT partition_date, model_id, method, statistic, threshold, drifted, n_current,
                                         top_features, analysis_error
                                  FROM monitoring.multivariate_drift WHERE partition_date IN (SELECT unnest(?::DATE[]))
                                  ORDER BY model_id, partition_date, method""", [days]).df()
    return {"perf": perf, "base": base, "drift": drift, "fair": fair, "features": features,
            "predictions": predictions, "logged": logged, "anomalies": anomalies, "estimated": estimated,
            "segments": segments, "segment_estimates": segment_estimates, "segment_drift": segment_drift,
            "multivariate": multivariate}


@dataclass
class _Inputs:
    """The inputs split by model (and day): each check family looks its model's rows up."""

    base: dict
    logged: dict
    perf_by: dict
    drift_by: dict
    drifted_by: dict
    errors_by: dict
    prediction_by: dict
    key_by: dict
    values_by: dict
    fair_by: dict
    anomalies_by: dict
    estimated_by: dict
    segments_by: dict
    segment_estimates_by: dict
    segment_drift_by: dict
    multivariate_by: dict


def _by_model(perf, base, drift, fair, features, predictions, logged, anomalies, estimated, segments,
              segment_estimates, segment_drift, multivariate) -> _Inputs:
    # Every frame is split by model (and day) once: filtering frames of 500 models per model took 15 s.
    features = features.assign(excess=_excess(features))
    return _Inputs(
        base=base, logged=logged,
        perf_by=_rows_by(perf, "model_id"), drift_by=_rows_by(drift[drift.drift_share.notna()], "model_id"),
        drifted_by=_rows_by(features[features.drifted.fillna(False).astype(bool)], "model_id", "day"),
        errors_by=_rows_by(drift[drift.analysis_error.notna()], "model_id"),
        prediction_by=_rows_by(predictions, "model_id", "day"),
        key_by=_rows_by(features[features.key_feature.fillna(False).astype(bool)], "model_id", "day"),
        values_by=_rows_by(features[_values_changed(features)], "model_id", "day"),
        fair_by=_rows_by(fair, "model_id", "day"), anomalies_by=_rows_by(anomalies, "model_id", "day"),
        estimated_by=_rows_by(estimated, "model_id", "metric"), segments_by=_rows_by(segments, "model_id", "day"),
        segment_estimates_by=_rows_by(segment_estimates, "model_id", "day"),
        segment_drift_by=_rows_by(segment_drift, "model_id", "day"),
        multivariate_by=_rows_by(multivariate, "model_id", "day"))


class _Rows(list):
    """The evaluated rows, in `COLUMNS` order."""

    def add(self, day, model: ModelConfig, check, value, threshold, passed, message, details=None, level=None):
        value = None if not _known(value) else float(value)
        self.append((day, model.id, check, level or model.severity(check), value, threshold, bool(passed), message,
                     json.dumps(details or {}, default=str)))


def _judge_service(rows: _Rows, model: ModelConfig, inputs: _Inputs) -> None:
    """Volume, latency and error-rate SLAs, and the main metric against its baseline."""
    add, t = rows.add, model.thresholds
    for r in inputs.perf_by.get((model.id,), ()):
        day = r.day
        add(day, model, VOLUME, float(r.volume), 1.0, r.volume > 0,
            "no predictions were logged" if r.volume == 0 else f"{r.volume} predictions logged")
        if r.volume == 0:
            continue
        n_latency, n_status = inputs.logged.get((day, model.id), (0, 0))
        if _known(r.latency_p95_ms) and n_latency:
            add(day, model, LATENCY, r.latency_p95_ms, t.latency_p95_ms, r.latency_p95_ms <= t.latency_p95_ms,
                f"latency p95 {fmt_num(r.latency_p95_ms)} ms (SLA {fmt_num(t.latency_p95_ms)} ms)")
        else:  # nothing to judge: never a breach (NULL is not above any SLA)
            add(day, model, LATENCY, None, t.latency_p95_ms, True, "latency not logged: nothing to judge")
        if not n_status:
            add(day, model, ERROR_RATE, None, t.error_rate, True,
                "status not logged: every request counts as served, no error rate to judge")
        elif _known(r.error_rate):
            add(day, model, ERROR_RATE, r.error_rate, t.error_rate, r.error_rate <= t.error_rate,
                f"error rate {fmt_pct(r.error_rate)} (SLA {fmt_pct(t.error_rate)}), "
                f"{plural(int(r.n_errors), 'failed request')}")
        judged = performance_judgement(model, r, inputs.base.get((model.id, model.main_metric)))
        if judged is not None:
            add(day, model, PERFORMANCE, *judged)


def _judge_drift(rows: _Rows, model: ModelConfig, inputs: _Inputs) -> None:
    """Drift share, feature values, prediction drift and key features; a day not analysed fails with why."""
    add, t = rows.add, model.thresholds
    for r in inputs.drift_by.get((model.id,), ()):
        day = r.day
        flagged = sorted(inputs.drifted_by.get((model.id, day), ()),
                         key=lambda f: (not _known(f.excess), -f.excess if _known(f.excess) else 0))
        names = ", ".join(f.feature for f in flagged[:5]) + (", …" if len(flagged) > 5 else "")
        add(day, model, DRIFT, r.drift_share, t.drift_share, r.drift_share <= t.drift_share,
            f"{int(r.n_drifted)} of {plural(int(r.n_features), 'feature')} drifted (share "
            f"{fmt_pct(r.drift_share)}, threshold {fmt_pct(t.drift_share)})" + (f": {names}" if names else ""),
            {"drifted_features": [_pick(f, DRIFTED_DETAILS) for f in flagged]})
        add(day, model, *feature_values_judgement(inputs.values_by.get((model.id, day), [])))
        for p in inputs.prediction_by.get((model.id, day), ()):
            add(day, model, *prediction_drift_judgement(p))
        add(day, model, *key_feature_judgement(inputs.key_by.get((model.id, day), [])))
    for r in inputs.errors_by.get((model.id,), ()):  # not analysed: the drift checks fail with the reason
        for check in (DRIFT, PREDICTION_DRIFT):
            add(r.day, model, check, None, t.drift_share if check == DRIFT else 0.0, False, r.analysis_error,
                level=ANALYSIS_ERROR_SEVERITY)


def _judge_fairness(rows: _Rows, model: ModelConfig, inputs: _Inputs, config: MonitorConfig) -> None:
    """Demographic parity and equalized odds per attribute; a day not analysed fails with why."""
    for day in sorted(k[1] for k in inputs.fair_by if k[0] == model.id):
        day_rows = inputs.fair_by[(model.id, day)]
        for r in [r for r in day_rows if _known(r.analysis_error)]:
            rows.add(day, model, FAIRNESS, None, model.thresholds.demographic_parity_ratio, False, r.analysis_error,
                     level=ANALYSIS_ERROR_SEVERITY)
        day_rows = [r for r in day_rows if not _known(r.analysis_error)]
        for check, value, threshold, passed, message in fairness_judgements(model, day_rows, config):
            rows.add(day, model, check, value, threshold, passed, message)


def _judge_anomalies(rows: _Rows, model: ModelConfig, inputs: _Inputs, config: MonitorConfig,
                     days: list[dt.date]) -> None:
    """The largest unusual figure of each day; a day with figures and none unusual passes."""
    for day in days:
        unusual = inputs.anomalies_by.get((model.id, day))
        if unusual:
            top = max(unusual, key=lambda a: abs(a.robust_z))
            rows.add(day, model, ANOMALIES, float(abs(top.robust_z)), config.anomaly_threshold, False,
                     f"{plural(len(unusual), 'unusual metric')}; largest: {top.metric} {fmt_num(top.value)} vs "
                     f"expected {fmt_num(top.expected)} (robust z {top.robust_z:+.1f})")
        elif any(r.day == day for r in inputs.perf_by.get((model.id,), ())):
            # Days with no anomaly for this model pass the anomaly check (resolving earlier alerts).
            rows.add(day, model, ANOMALIES, 0.0, config.anomaly_threshold, True, "no unusual metrics")


def _judge_estimates(rows: _Rows, config: MonitorConfig, inputs: _Inputs, days: list[dt.date]) -> None:
    """The estimated main metric of every model against its baseline, on each day with an estimate: each model's
    evidence first, then the day's p-values judged together (`stats.shortfall.adjusted_fails`), so the fleet's
    false alerts stay bounded however many models are monitored."""
    for day in days:
        judged = []
        for model in config.models:
            by_day = {r.day: r for r in inputs.estimated_by.get((model.id, model.main_metric), ())}
            if day in by_day:
                window = [by_day.get(day - dt.timedelta(days=i)) for i in range(CUSUM_DAYS - 1, -1, -1)]
                evidence = estimate_evidence(model, window, inputs.base.get((model.id, model.main_metric)))
                if evidence is not None:
                    judged.append((model, evidence))
        adjusted, fails = adjusted_fails([e["p_value"] for _, e in judged])
        size = family_size(len(judged))
        for (model, evidence), p_adjusted, failed in zip(judged, adjusted, fails, strict=True):
            rows.add(day, model, ESTIMATED_PERFORMANCE, *estimate_verdict(model, evidence, p_adjusted, bool(failed),
                                                                           size))


def _judge_segments(rows: _Rows, config: MonitorConfig, inputs: _Inputs) -> None:
    """Each segmented model-day: fails when a segment's main metric is below its floor beyond chance
    (`monitoring.segment_performance.below_floor`, adjusted across the model-day's segments), naming the
    segments, worst first."""
    _judge_floors(rows, config, inputs.segments_by, SEGMENT_PERFORMANCE, "", "tested", "chance",
                  lambda r: (f" on {int(r.n_labelled)} labelled rows", {"n_labelled": int(r.n_labelled)}))


def _judge_segment_estimates(rows: _Rows, config: MonitorConfig, inputs: _Inputs) -> None:
    """Each model-day with segment estimates: fails when a segment's estimated main metric is below its floor
    beyond its band (`monitoring.segment_estimated_performance.below_floor`, adjusted across the model-day's
    segments), naming the segments, worst first; labels are not needed."""
    def text(r) -> tuple[str, dict]:
        labelled = f", {int(r.n_labelled)} labelled" if r.n_labelled else ", no labels yet"
        return (f" (95% band {fmt_num(r.lower)} to {fmt_num(r.upper)}, {int(r.n_rows)} rows{labelled})",
                {"lower": r.lower, "upper": r.upper, "n_rows": int(r.n_rows), "n_labelled": int(r.n_labelled)})

    _judge_floors(rows, config, inputs.segment_estimates_by, SEGMENT_ESTIMATED_PERFORMANCE, "estimated ",
                  "estimated", "the band", text)


def _judge_floors(rows: _Rows, config: MonitorConfig, found_by: dict, check: str, prefix: str, verb: str,
                  beyond: str, describe) -> None:
    """A segment check per model-day from its segments' rows (`value`, `reference_value`, `reference_source`,
    `floor`, `p_value`, `p_adjusted`, `below_floor`): fails naming the segments below their floor, the most
    significant first. `describe(row)`: the text after a segment's value and its details."""
    by_model: dict[str, list] = {}
    for (model_id, day), found in found_by.items():
        by_model.setdefault(model_id, []).append((day, found))
    for model in config.models:
        for day, found in by_model.get(model.id, ()):
            ranked = sorted(found, key=lambda r: (r.p_adjusted, r.p_value))
            below = [r for r in ranked if _flag(r.below_floor)]
            worst = below[0] if below else ranked[0]
            score = share_of_baseline(worst.metric, worst.reference_value, worst.value)
            details = {f"segments_{verb}": len(found), "segments_below_floor": len(below),
                       "segments": [{"segment": r.segment, "value": r.value, "reference_value": r.reference_value,
                                     **describe(r)[1], "p_adjusted": r.p_adjusted} for r in (below or ranked)[:5]]}
            if below:
                named = "; ".join(
                    f"{r.segment}: {prefix}{r.metric} {fmt_num(r.value)}{describe(r)[0]} vs "
                    f"{fmt_num(r.reference_value)} in the {'segment' if r.reference_source == 'segment' else 'whole'}"
                    f" reference (floor {fmt_num(r.floor)}, adjusted {fmt_p(r.p_adjusted)})" for r in below[:3])
                more = f"; and {plural(len(below) - 3, 'more segment')}" if len(below) > 3 else ""
                message = (f"{plural(len(below), 'segment')} of {len(found)} below {model.thresholds.min_metric_ratio:.0%}"
                           f" of their reference beyond {beyond}: {named}{more}")
            else:
                message = (f"{plural(len(found), 'segment')} {verb}, none below its floor beyond {beyond} (closest: "
                           f"{worst.segment}, {prefix}{worst.metric} {fmt_num(worst.value)} vs "
                           f"{fmt_num(worst.reference_value)}, adjusted {fmt_p(worst.p_adjusted)})")
            rows.add(day, model, check, score, model.thresholds.min_metric_ratio, not below, message, details)


def _judge_segment_drift(rows: _Rows, config: MonitorConfig, inputs: _Inputs) -> None:
    """Each segmented model-day with a judged segment: fails when any segment has a drifted feature after the
    adjustment across the model-day's segments and features (`monitoring.segment_drift.drifted`), naming the
    segments and features, worst first. A model-day whose segments were all too small yields no row."""
    by_model: dict[str, list] = {}
    for (model_id, day), found in inputs.segment_drift_by.items():
        by_model.setdefault(model_id, []).append((day, found))
    for model in config.models:
        for day, found in sorted(by_model.get(model.id, ()), key=lambda item: item[0]):
            judged = [r for r in found if _flag(r.judged)]
            if not judged:
                continue
            rows.add(day, model, *segment_drift_judgement(judged, len(found) - len(judged)))


def segment_drift_judgement(judged: list, too_small: int = 0) -> tuple:
    """(check, value, threshold, passed, message, details) for a model-day's judged segment-features (rows of
    monitoring.segment_drift): the value is the count of drifted segment-features; the message names each
    drifted segment (the strongest evidence first) with its drifted features."""
    def strength(r) -> float:
        return -float(r.evidence) if _known(r.evidence) else 0.0

    drifted = sorted([r for r in judged if _flag(r.drifted)], key=lambda r: (strength(r), r.segment, r.feature))
    segments = sorted({r.segment for r in judged})
    details = {"segments_judged": len(segments), "segments_too_small": too_small, "tests": len(judged),
               "drifted": [{"segment": r.segment, "feature": r.feature, "method": r.method, "statistic": r.statistic,
                            "threshold": r.threshold, "p_adjusted": r.p_adjusted, "evidence": r.evidence,
                            "n_rows": int(r.n_rows), "reference_source": r.reference_source} for r in drifted[:10]]}
    if not drifted:
        closest = min(judged, key=lambda r: (strength(r), r.segment, r.feature))
        return (SEGMENT_DRIFT, 0.0, 0.0, True,
                f"{plural(len(segments), 'segment')} judged ({plural(len(judged), 'segment-feature')}), no feature "
                f"drifted after the adjustment across them (closest: {closest.segment}: {closest.feature}, "
                f"{_segment_drift_text(closest)})", details)
    by_segment: dict[str, list] = {}
    for r in drifted:  # dicts keep insertion order: the segment of the strongest drift first
        by_segment.setdefault(r.segment, []).append(r)
    named = "; ".join(f"{segment}: " + ", ".join(f"{r.feature} drifted ({_segment_drift_text(r)})" for r in feats[:3])
                      + (f" and {plural(len(feats) - 3, 'more feature')}" if len(feats) > 3 else "")
                      for segment, feats in list(by_segment.items())[:3])
    more = f"; and {plural(len(by_segment) - 3, 'more segment')}" if len(by_segment) > 3 else ""
    return (SEGMENT_DRIFT, float(len(drifted)), 0.0, False,
            f"{plural(len(by_segment), 'segment')} of {len(segments)} with drifted features (false alarms "
            f"controlled across {plural(len(judged), 'segment-feature')}): {named}{more}", details)


def _segment_drift_text(r) -> str:
    """'psi 0.31 over threshold 0.12', or for a test 'ks adjusted p = 2.1e-05 under 0.01'."""
    if r.method in P_VALUE_METHODS:
        return f"{r.method} adjusted {fmt_p(r.p_adjusted)} {'under' if _flag(r.drifted) else 'vs'} {fmt_num(r.threshold)}"
    word = "over" if _known(r.statistic) and _known(r.threshold) and r.statistic >= r.threshold else "under"
    return f"{r.method} {fmt_num(r.statistic)} {word} threshold {fmt_num(r.threshold)}"


def _judge_multivariate(rows: _Rows, config: MonitorConfig, inputs: _Inputs) -> None:
    """Each model-day with multivariate drift figures: fails when either method's statistic reaches its
    threshold (`monitoring.multivariate_drift.drifted`), naming the method, statistic vs threshold and the
    features that carried it; a model-day that could not be computed fails with why. A day too small for a
    verdict (no statistic) yields no row."""
    by_model: dict[str, list] = {}
    for (model_id, day), found in inputs.multivariate_by.items():
        by_model.setdefault(model_id, []).append((day, found))
    for model in config.models:
        for day, found in sorted(by_model.get(model.id, ()), key=lambda item: item[0]):
            failed = [r for r in found if _known(r.analysis_error)]
            if failed:
                rows.add(day, model, MULTIVARIATE_DRIFT, None, None, False, failed[0].analysis_error,
                         level=ANALYSIS_ERROR_SEVERITY)
                continue
            judged = [r for r in found if _known(r.statistic)]
            if not judged:
                continue
            drifted = [r for r in judged if _flag(r.drifted)]
            shown = drifted or judged
            details = {"n_current": int(judged[0].n_current), "methods": [
                {"method": r.method, "statistic": r.statistic, "threshold": r.threshold, "drifted": _flag(r.drifted),
                 "top_features": r.top_features} for r in judged]}
            if drifted:
                named = "; ".join(f"{r.method} {fmt_num(r.statistic)} >= threshold {fmt_num(r.threshold)}"
                                  + (f" (features: {r.top_features})" if _known(r.top_features) else "")
                                  for r in drifted)
                message = (f"the features go together unlike the reference on {int(judged[0].n_current):,} rows: "
                           f"{named}")
            else:
                message = "no multivariate drift: " + "; ".join(
                    f"{r.method} {fmt_num(r.statistic)} < {fmt_num(r.threshold)}" for r in judged)
            rows.add(day, model, MULTIVARIATE_DRIFT, shown[0].statistic, shown[0].threshold, not drifted, message,
                     details)


def estimate_evidence(model: ModelConfig, window: list, baseline: float | None) -> dict | None:
    """A model's evidence for `estimated_performance_within_baseline` on the last day of `window` (its estimate
    rows of the main metric over CUSUM_DAYS days, None for a day without one), or None when it cannot be judged
    (no estimate or band that day, no baseline, a baseline of 0).

    The floor is `min_metric_ratio` x baseline (for a lower-is-better metric the ceiling (2 - ratio) x
    baseline, as the performance check's ratio); the evidence is the day's standardized shortfall and the
    CUSUM of the window's shortfalls, with their p-value (`stats.shortfall.shortfall_test`)."""
    metric, ratio, last = model.main_metric, model.thresholds.min_metric_ratio, window[-1]
    if last is None or not _known(last.estimate) or not _known(last.lower) or not _known(baseline) or baseline == 0:
        return None
    higher = METRIC_DIRECTION[metric] == HIGHER
    floor = metric_floor(metric, baseline, ratio)

    def se(r) -> float:
        return band_standard_error(r.lower, r.upper) if r is not None and _known(r.lower) else math.nan

    test = shortfall_test([r.estimate if r is not None else math.nan for r in window], [se(r) for r in window],
                          floor, higher_is_better=higher)
    if not _known(test.p_value):
        return None
    return {"estimate": last.estimate, "lower": last.lower, "upper": last.upper, "n_rows": int(last.n_rows),
            "baseline": baseline, "floor": floor, "cusum": test.cusum, "cusum_days": test.steps,
            "z": test.z_last, "level_fails": test.level_fails, "p_value": test.p_value}


def estimate_verdict(model: ModelConfig, e: dict, p_adjusted: float, failed: bool, size: float):
    """(value, threshold, passed, message, details) of the check from a model's evidence and the day's
    adjusted p-value."""
    metric, ratio = model.main_metric, model.thresholds.min_metric_ratio
    higher = METRIC_DIRECTION[metric] == HIGHER
    score = share_of_baseline(metric, e["baseline"], e["estimate"])
    across = f", {size:.3g} models counted" if size > 1 else ""
    why = (f"{'its band is beyond the floor' if e['level_fails'] else 'the shortfall accumulated'} "
           f"({fmt_p(e['p_value'])}; adjusted {fmt_p(p_adjusted)}{across})" if failed else
           f"within the baseline ({fmt_p(e['p_value'])}{across})")
    word = "lower" if higher else "higher"
    message = (f"estimated {metric} {fmt_num(e['estimate'])} (95% band {fmt_num(e['lower'])} to {fmt_num(e['upper'])}, "
               f"{e['n_rows']} rows, no labels needed) vs baseline {fmt_num(e['baseline'])}: "
               f"{abs(e['estimate'] - e['baseline']) / abs(e['baseline']):.1%} {word if score < 1 else 'better'}; "
               f"alert when {'below' if higher else 'above'} {fmt_num(e['floor'])} ({ratio:.0%} of the baseline) "
               f"beyond chance: {why}; CUSUM {e['cusum']:.2f} over {e['cusum_days']} days")
    return (score, ratio, not failed, message,
            {**{k: v for k, v in e.items() if k != "n_rows"}, "p_adjusted": p_adjusted, "family_size": size,
             "alpha": ESTIMATE_ALPHA})


def performance_judgement(model: ModelConfig, r, baseline: float | None):
    """(value, threshold, passed, message) of the main-metric check for one performance row, or None when
    it cannot be judged yet (fewer than MIN_LABELLED labelled rows, no baseline, a baseline of 0).

    The value is the day's metric as a share of the baseline in the good direction: 1 - degradation /
    |baseline| (for a higher-is-better metric, current / baseline). It fails below `min_metric_ratio` even
    at the optimistic end (the value moved 2 standard errors in the good direction), so a day's noise
    on a few hundred labels does not page anyone."""
    metric, t = model.main_metric, model.thresholds
    current = getattr(r, metric, None)
    if r.n_labelled < MIN_LABELLED or not _known(current) or not _known(baseline) or baseline == 0:
        return None
    se = metric_standard_error(metric, current, r.n_labelled, getattr(r, "positive_rate", None),
                               getattr(r, "predicted_positive_rate", None))
    higher = METRIC_DIRECTION[metric] == HIGHER
    score = share_of_baseline(metric, baseline, current)
    optimistic = share_of_baseline(metric, baseline, current + 2 * se if higher else current - 2 * se)
    extra = ""
    if metric == "mape" and _known(getattr(r, "mape_zero_labels", None)) and r.mape_zero_labels:
        extra = f", {plural(int(r.mape_zero_labels), 'zero label')} left out of MAPE"
    if _known(getattr(r, "n_decision_missing", None)) and r.n_decision_missing:
        extra += f", {plural(int(r.n_decision_missing), 'row')} without a logged decision judged by the threshold"
    word = "lower" if higher else "higher"
    return (score, t.min_metric_ratio, optimistic >= t.min_metric_ratio,
            f"{metric} {fmt_num(current)} ± {fmt_num(2 * se)} vs baseline {fmt_num(baseline)}: "
            f"{abs(current - baseline) / abs(baseline):.1%} {word if score < 1 else 'better'} than the baseline "
            f"(alert below {t.min_metric_ratio:.0%} of it; {r.n_labelled} labelled rows, "
            f"label coverage {fmt_pct(r.label_coverage)}{extra})")


def _excess(f: pd.DataFrame) -> pd.Series:
    """How far past its threshold each flagged feature is (p-value tests: threshold / adjusted p)."""
    p = f.p_value_adjusted.fillna(f.p_value)
    is_test = f.method.isin(P_VALUE_METHODS)
    return (f.threshold / p.where(p > 0, 1e-300)).where(is_test, f.statistic / f.threshold.where(f.threshold > 0))


DRIFTED_DETAILS = ("feature", "method", "statistic", "p_value", "p_value_adjusted", "threshold", "reference_summary",
                   "current_summary")
VALUES_DETAILS = ("feature", "missing_share", "reference_missing_share", "unseen_share", "all_missing", "all_unseen",
                  "message")
VALUES_FLAGS = ("missing_drift", "unseen_drift", "all_missing", "all_unseen")


def _rows_by(frame: pd.DataFrame, *keys: str) -> dict[tuple, list]:
    """The frame's rows (named tuples, with `day`: the partition date as a date) grouped by `keys`."""
    frame = frame.assign(day=pd.to_datetime(frame.partition_date).dt.date)
    out: dict[tuple, list] = {}
    for r in frame.itertuples(index=False):
        out.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    return out


def _pick(row, names: tuple[str, ...]) -> dict:
    return {n: getattr(row, n) for n in names}


def _flag(x) -> bool:
    """A nullable boolean as read from a table: NULL (None, NaN, NA) is False."""
    return x is not pd.NA and _known(x) and bool(x)


def _values_changed(f: pd.DataFrame) -> pd.Series:
    return pd.concat([f[c].fillna(False).astype(bool) for c in VALUES_FLAGS], axis=1).any(axis=1)


def feature_values_judgement(rows: list) -> tuple:
    """(check, value, threshold, passed, message, details) for a model-day's input features (rows of
    monitoring.feature_drift): fails when a feature's missing share or its share of categories the reference
    never saw moved significantly (Benjamini-Hochberg across the features); all missing and all unseen come
    first, said loudly."""
    bad = [f for f in rows if any(_flag(getattr(f, c)) for c in VALUES_FLAGS)]
    if not bad:
        return FEATURE_VALUES, 0.0, 0.0, True, "missing and unseen-category shares as in the reference"
    loud = [f for f in bad if _flag(f.all_missing) or _flag(f.all_unseen)]
    bad.sort(key=lambda f: (f not in loud, f.feature))
    head = (f"{plural(len(loud), 'feature')} with no usable value: " if loud
            else f"{plural(len(bad), 'feature')} with missing or unseen values changed: ")
    text = "; ".join(f"{f.feature}: {f.message or 'missing or unseen share changed'}" for f in bad)
    return (FEATURE_VALUES, float(len(bad)), 0.0, False, head + text,
            {"features": [_pick(f, VALUES_DETAILS) for f in bad]})


def _stat_text(f) -> str:
    p = f.p_value_adjusted if _known(f.p_value_adjusted) else f.p_value
    test = f", {fmt_p(p)}" if f.method in P_VALUE_METHODS and _known(p) else ""
    return f"{f.method} {fmt_num(f.statistic)}{test} (threshold {fmt_num(f.threshold)})"


def prediction_drift_judgement(p) -> tuple:
    """(check, value, threshold, passed, message, details) for the model output's drift row of a model-day:
    fails when the score's distribution drifted (the same test and Benjamini-Hochberg family as the
    features), whatever the share of drifted features."""
    change = (f"; mean {fmt_num(p.current_mean)} vs {fmt_num(p.reference_mean)} in the reference"
              if _known(p.current_mean) and _known(p.reference_mean) else "")
    drifted = _flag(p.drifted)
    value = p.statistic if p.method not in P_VALUE_METHODS else (p.p_value_adjusted if _known(p.p_value_adjusted)
                                                                 else p.p_value)
    return (PREDICTION_DRIFT, value, float(p.threshold), not drifted,
            f"prediction (score) {'drifted' if drifted else 'stable'}: {_stat_text(p)}{change}",
            {"prediction": _pick(p, DRIFTED_DETAILS)})


def key_feature_judgement(rows: list) -> tuple:
    """(check, value, threshold, passed, message, details) for a model-day's key features (declared in the
    config, else the reference's most score-associated ones): fails when any drifted strongly (a distance at
    `STRONG_DISTANCE_FACTOR` times its threshold, a p-value test at `STRONG_P_FACTOR` times it)."""
    strong = sorted([f for f in rows if _flag(f.strong_drift)], key=lambda f: f.feature)
    names = ", ".join(f.feature for f in rows) or "none"
    if not strong:
        return KEY_FEATURE_DRIFT, 0.0, 0.0, True, f"no strong drift of the key features ({names})"
    text = "; ".join(f"{f.feature}: {_stat_text(f)}, {f.current_summary} vs {f.reference_summary}" for f in strong)
    return (KEY_FEATURE_DRIFT, float(len(strong)), 0.0, False,
            f"{plural(len(strong), 'key feature')} drifted strongly: {text}",
            {"features": [_pick(f, DRIFTED_DETAILS) for f in strong]})


def fairness_judgements(model: ModelConfig, rows: list, config: MonitorConfig | None = None) -> list[tuple]:
    """(check, value, threshold, passed, message) for demographic parity and for equalized odds, per
    model-day (its rows: one per attribute), over the attributes with at least two eligible groups (of
    `min_group_size` rows or more). Each fails only when its disparity passes its threshold and its test
    says p < FAIRNESS_MAX_P; the message names the eligible groups compared, with their sizes.

    Judged against the reference (`fairness_baseline` 'reference' on the row): a disparity the reference
    already had does not alert; it must also be worse than the reference's by more than
    `config.fairness_tolerance`, unless it passes the hard floor (`fairness_floor_ratio` for the parity
    ratio, `fairness_ceiling_odds` for equalized odds), which alerts whatever the reference."""
    t = model.thresholds
    tolerance = config.fairness_tolerance if config else 0.05
    floor = config.fairness_floor_ratio if config else 0.0
    ceiling = config.fairness_ceiling_odds if config else 1.0
    out = []

    def vs_reference(r) -> bool:
        return getattr(r, "baseline", None) == "reference"

    def note(r, ref, worse: str) -> str:
        if vs_reference(r) and _known(ref):
            return f"; reference {fmt_num(ref)}, alert when {worse} by more than {fmt_num(tolerance)}"
        text = getattr(r, "baseline_note", None)
        return f"; {text}" if isinstance(text, str) and text else ""

    parity = [r for r in rows if _known(r.ratio)]
    if parity:
        def parity_fails(r) -> bool:
            if not (_known(r.p) and r.p < FAIRNESS_MAX_P):
                return False
            if vs_reference(r) and _known(r.ref_ratio):
                return r.ratio < floor or (r.ratio < t.demographic_parity_ratio and r.ratio < r.ref_ratio - tolerance)
            return r.ratio < t.demographic_parity_ratio
        failing = [r for r in parity if parity_fails(r)]
        shown = min(failing or parity, key=lambda r: r.ratio)
        out.append((FAIRNESS, float(shown.ratio), t.demographic_parity_ratio, not failing,
                    f"{shown.attribute}: selection rate of '{shown.low_group}' ({fmt_pct(shown.low_rate)}, "
                    f"n={int(shown.low_n)}) is {fmt_pct(shown.ratio)} of '{shown.top_group}' "
                    f"({fmt_pct(shown.top_rate)}, n={int(shown.top_n)}) (four-fifths rule: "
                    f"{fmt_pct(t.demographic_parity_ratio)}; {fmt_p(shown.p)}; groups under the minimum size "
                    f"left out: {int(shown.n_groups - shown.n_eligible)}"
                    f"{note(shown, getattr(shown, 'ref_ratio', None), 'lower')})"))
    odds = [r for r in rows if _known(r.odds)]
    if odds:
        def odds_fails(r) -> bool:
            if not (_known(r.odds_p) and r.odds_p < FAIRNESS_MAX_P):
                return False
            if vs_reference(r) and _known(r.ref_odds):
                return r.odds > ceiling or (r.odds > t.equalized_odds_difference and r.odds > r.ref_odds + tolerance)
            return r.odds > t.equalized_odds_difference
        failing = [r for r in odds if odds_fails(r)]
        shown = max(failing or odds, key=lambda r: r.odds)
        rate = "true positive rate" if shown.odds_rate == "true_positive_rate" else "false positive rate"
        among = "positives" if shown.odds_rate == "true_positive_rate" else "negatives"
        out.append((EQUALIZED_ODDS, float(shown.odds), t.equalized_odds_difference, not failing,
                    f"{shown.attribute}: {rate} {fmt_num(shown.odds_hi_rate)} in '{shown.odds_hi_group}' "
                    f"({int(shown.odds_hi_n)} labelled {among}) vs {fmt_num(shown.odds_lo_rate)} in "
                    f"'{shown.odds_lo_group}' ({int(shown.odds_lo_n)}): equalized odds difference "
                    f"{fmt_num(shown.odds)} (threshold {fmt_num(t.equalized_odds_difference)}; {fmt_p(shown.odds_p)}"
                    f"{note(shown, getattr(shown, 'ref_odds', None), 'higher')})"))
    return out


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def upsert_alerts(con: duckdb.DuckDBPyConnection, evaluated: pd.DataFrame, now: dt.datetime) -> dict[str, int]:
    """Open or refresh an alert per failed (day, model, check); resolve open alerts that now pass.
    Re-runs update rows in place: never a duplicate. One lake commit for the evaluated days' alerts (`edit`:
    applied again if another run changed the table meanwhile)."""
    if evaluated.empty:
        return {"resolved": 0, "refreshed": 0, "opened": 0}
    days = sorted({pd.Timestamp(d).date() for d in evaluated.partition_date})
    con.register("_evaluated", evaluated)
    try:
        return edit(con, "monitoring.alerts", lambda con: _upsert(con, now), days_predicate(days))
    finally:
        con.unregister("_evaluated")


def _upsert(con: duckdb.DuckDBPyConnection, now: dt.datetime) -> dict[str, int]:
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
    return {"resolved": resolved[0][0], "refreshed": refreshed[0][0], "opened": opened[0][0]}


def store_anomalies(con: duckdb.DuckDBPyConnection, config: MonitorConfig,
                    days: list[dt.date]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The days' unusual figures (robust z-score over the trailing window), stored in `monitoring.anomalies`;
    returns (found on these days, every stored anomaly for the report)."""
    first = min(days) - dt.timedelta(days=config.anomaly_window_days)
    history = con.execute("""SELECT partition_date, model_id, metric, segment, value FROM monitoring.history
                             WHERE partition_date BETWEEN ? AND ? AND segment = ''""", [first, max(days)]).df()
    found = find_anomalies(history, days, config.anomaly_window_days, config.anomaly_threshold)
    replace_partitions_from_frame(con, "monitoring.anomalies", days, found)
    report = con.execute("""SELECT partition_date, model_id, metric, value, expected, robust_z, direction
                            FROM monitoring.anomalies ORDER BY partition_date, model_id, metric""").df()
    return found, report


def open_alerts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The open alerts, newest day first."""
    return con.execute("""SELECT partition_date, model_id, check_name, severity, value, threshold,
                                 message FROM monitoring.alerts WHERE status = 'open'
                          ORDER BY partition_date DESC, severity, model_id""").df()
