"""The demo's ranking and segment incidents (data/demo/incidents.yaml) found on their first day, named, and no
stable day flagged; on the session's demo run (conftest `demo_run`)."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from sklearn.metrics import ndcg_score

from monitor_assets.constants import (
    PERFORMANCE_CHECK,
    RANKING_DRIFT_CHECK,
    RANKING_PERFORMANCE_CHECK,
    SEGMENT_PERFORMANCE_CHECK,
)

DEMO = Path(__file__).parents[1] / "data" / "demo"
INCIDENTS = yaml.safe_load((DEMO / "incidents.yaml").read_text())
ALL_DAYS = [str(dt.date.fromisoformat(INCIDENTS["start_date"]) + dt.timedelta(days=n)) for n in range(INCIDENTS["days"])]


def incident(kind):
    return next(i for i in INCIDENTS["incidents"] if i["kind"] == kind)


def _evaluations(result, check):
    return {e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == check}


def test_popularity_collapse_alerts_on_its_first_day_and_no_stable_day_does(demo_run):
    """The drift check needs no label: it fails on every collapsed day (the first included) with WARN, and passes
    every other day of the ranker."""
    collapse = incident("popularity_collapse")
    _, result = demo_run
    drift = _evaluations(result, RANKING_DRIFT_CHECK)
    assert sorted(drift) == ALL_DAYS  # one evaluation per day
    assert {d for d, e in drift.items() if not e.passed} == set(collapse["dates"])
    first = drift[collapse["dates"][0]]
    assert first.severity == dg.AssetCheckSeverity.WARN and first.metadata["evaluated"].value == 1
    assert "item_drift_js" in first.metadata["reason"].value
    assert all(drift[d].metadata["evaluated"].value == 1 for d in ALL_DAYS)  # every day judged, none skipped


def test_ranker_alerts_are_in_the_alerts_table_as_their_checks_judge_them(demo_run, demo_db):
    """monitoring.alerts (the dashboard's and Prometheus' open alerts) holds the ranker's failed days of both
    checks, the same days the check steps failed, with the checks' severities."""
    _, result = demo_run
    model = incident("popularity_collapse")["model_id"]
    rows = demo_db.execute("""SELECT check_name, partition_date::VARCHAR, severity, status FROM monitoring.alerts
                              WHERE model_id = ?""", [model]).fetchall()
    for check, severity in ((RANKING_DRIFT_CHECK, "WARN"), (RANKING_PERFORMANCE_CHECK, "ERROR")):
        failed = {d for d, e in _evaluations(result, check).items() if not e.passed}
        assert failed and {d for c, d, _, _ in rows if c == check} == failed, check
        assert {(s, st) for c, _, s, st in rows if c == check} == {(severity, "open")}


def test_popularity_collapse_fails_ndcg_once_its_interactions_land(demo_run, demo_db):
    """NDCG@10 is judged once the interactions of the day and the 3 after it are read: the collapsed days fall
    below 0.95 x the reference's (a one-sided test), no judged stable day does; the figure equals scikit-learn's
    ndcg_score on the warehouse's impressions and interactions."""
    collapse = incident("popularity_collapse")
    model = collapse["model_id"]
    config, result = demo_run
    judged = _evaluations(result, RANKING_PERFORMANCE_CHECK)
    assert {d for d, e in judged.items() if not e.passed} == set(collapse["dates"])
    assert judged[collapse["dates"][0]].severity == dg.AssetCheckSeverity.ERROR
    rows = demo_db.execute("""SELECT partition_date::VARCHAR, value, floor, below_baseline, labels_complete
                              FROM monitoring.ranking_performance
                              WHERE model_id = ? AND model_version = '*' AND metric = 'ndcg_at_10'
                              ORDER BY 1""", [model]).fetchall()
    by_day = {d: (v, f, below, complete) for d, v, f, below, complete in rows}
    assert sorted(by_day) == ALL_DAYS
    complete = [d for d in ALL_DAYS if by_day[d][3]]
    # the last label_delay_days days wait for interaction files beyond the demo's end
    assert complete == ALL_DAYS[:-config.label_delay_days]
    assert set(collapse["dates"]) <= set(complete) and collapse["details"]["labels_complete"] in ALL_DAYS
    assert {d for d in complete if by_day[d][2]} == set(collapse["dates"])
    assert all(by_day[d][0] < by_day[d][1] for d in collapse["dates"])
    # scikit-learn's NDCG@10 on the first collapsed day, interactions graded by their best event
    day = collapse["dates"][0]
    frame = demo_db.execute("""
        WITH g AS (SELECT request_id, item_id, max(grade) AS grade FROM raw.ranking_interactions
                   WHERE model_id = $1 AND partition_date BETWEEN $2::DATE AND $2::DATE + 3 GROUP BY ALL)
        SELECT i.request_id, i.rank, coalesce(g.grade, 0) AS grade FROM raw.ranking_impressions i
        LEFT JOIN g USING (request_id, item_id) WHERE i.model_id = $1 AND i.partition_date = $2::DATE""",
                            [model, day]).df()
    grades = frame.pivot(index="request_id", columns="rank", values="grade").to_numpy(float)
    each = [ndcg_score([g], [-pd.RangeIndex(10).to_numpy(float)], k=10) if g.any() else 0.0 for g in grades]
    assert by_day[day][0] == pytest.approx(sum(each) / len(each), abs=1e-12)


def test_segment_incident_is_named_on_its_first_day_while_the_whole_model_passes(demo_config, demo_db):
    """One market's mobile traffic of the conversion model breaks: the segment check fails on exactly those days
    (apart from the model's concept drift, which breaks every segment), naming market and device first; the
    whole model's ROC AUC stays above its floor those days and its own check passes."""
    seg = incident("segment_degradation")
    model = demo_config.model(seg["model_id"])
    concept = incident("concept_drift")
    canary = incident("canary")
    alerts = demo_db.execute("""SELECT partition_date::VARCHAR AS partition_date, model_id, check_name, message
                                FROM monitoring.alerts WHERE check_name IN (?, ?)""",
                             [SEGMENT_PERFORMANCE_CHECK, PERFORMANCE_CHECK]).df()
    mine = alerts[(alerts.model_id == model.id) & (alerts.check_name == SEGMENT_PERFORMANCE_CHECK)]
    later = set(concept["dates"]) | set(canary["dates"]) | {d for d in ALL_DAYS if d > max(concept["dates"])}
    assert set(mine.partition_date) - later == set(seg["dates"])  # its first day and on, no stable day
    for day in seg["dates"]:
        message = mine[mine.partition_date == day].message.iloc[0]
        assert message.split(": ", 1)[1].startswith(seg["segment"]), message  # the most significant first
    assert not ((alerts.model_id == model.id) & (alerts.check_name == PERFORMANCE_CHECK)
                & alerts.partition_date.isin(seg["dates"])).any()
    baseline = demo_db.execute("SELECT value FROM monitoring.reference_baselines WHERE model_id = ? AND metric = ?",
                               [model.id, seg["metric"]]).fetchone()[0]
    overall = dict(demo_db.execute("""SELECT partition_date::VARCHAR, roc_auc FROM monitoring.performance_daily
                                      WHERE model_id = ?""", [model.id]).fetchall())
    assert all(overall[d] > model.thresholds.min_metric_ratio * baseline for d in seg["dates"])
    # no segment of any other model flags outside that model's own incident days
    incident_days = {}
    for i in INCIDENTS["incidents"]:
        for m in [i["model_id"]] if isinstance(i["model_id"], str) else i["model_id"]:
            incident_days.setdefault(m, set()).update(i["dates"])
    others = alerts[(alerts.model_id != model.id) & (alerts.check_name == SEGMENT_PERFORMANCE_CHECK)]
    assert all(d in incident_days.get(m, set()) for d, m in zip(others.partition_date, others.model_id, strict=True))
