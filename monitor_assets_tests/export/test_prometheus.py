"""The Prometheus export after the demo pipeline run: the text file parses with prometheus_client's parser
and every series equals what the tables say; unknown figures are left out; a Pushgateway (a real HTTP
server on 127.0.0.1) receives the same series; the retraining table is picked up once it exists."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor_assets.export.defs import export_folder
from monitor_assets.export.prometheus import TEXTFILE, build_registry, export_metrics, load_export_data
from monitor_assets.stats.metrics_spec import METRIC_DIRECTION
from monitor_assets.storage.warehouse import connect, edit

DAY = dt.date(2026, 10, 30)  # the demo run's last day
INCIDENTS = yaml.safe_load((Path(__file__).parents[2] / "data" / "demo" / "incidents.yaml").read_text())


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a text-format document."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series: dict, name: str, **labels) -> float | None:
    return series.get((name, frozenset(labels.items())))


def by_name(series: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in series.items() if n == name}


@pytest.fixture(scope="module")
def exported(demo_run):
    """The file the pipeline run wrote, parsed."""
    config, _ = demo_run
    path = export_folder(config) / TEXTFILE
    return config, path, samples(path.read_text())


def test_pipeline_wrote_each_models_series_equal_to_the_tables(exported, demo_db):
    config, path, series = exported
    assert value(series, "monitor_day_timestamp_seconds") == dt.datetime(2026, 10, 30, tzinfo=dt.UTC).timestamp()
    perf = demo_db.execute("""SELECT model_id, volume, error_rate, latency_p50_ms, latency_p95_ms, latency_p99_ms,
                                     label_coverage
                              FROM monitoring.performance_daily WHERE partition_date = ?""", [DAY]).df()
    hours = dict(demo_db.execute("""SELECT model_id, count(DISTINCT hour(ts)) FROM raw.predictions
                                    WHERE partition_date = ? GROUP BY 1""", [DAY]).fetchall())
    assert set(perf.model_id) == set(config.model_ids) == {"fraud_detector", "purchase_propensity",
                                                          "demand_forecaster", "product_categoriser"}
    for r in perf.itertuples():
        m = r.model_id
        # version: the current champion (the demo's retrained purchase_propensity took over on 10-28).
        serving, since = {"purchase_propensity": ("2026.10.1", "2026-10-28")}.get(
            m, (config.model(m).version, "2026-10-01"))
        assert value(series, "monitor_model_info", model_id=m, task=config.model(m).task,
                     main_metric=config.model(m).main_metric, version=serving, owner=config.model(m).owner,
                     configured_version=config.model(m).version, champion_since=since) == 1
        assert value(series, "monitor_daily_predictions", model_id=m) == r.volume > 0
        assert value(series, "monitor_error_ratio", model_id=m) == r.error_rate
        assert value(series, "monitor_availability_ratio", model_id=m, basis="requests") == 1 - r.error_rate
        assert value(series, "monitor_availability_ratio", model_id=m, basis="hours") == hours[m] / 24
        for p, ms in (("50", r.latency_p50_ms), ("95", r.latency_p95_ms), ("99", r.latency_p99_ms)):
            assert value(series, "monitor_latency_seconds", model_id=m, percentile=p) == ms / 1000
        assert value(series, "monitor_label_coverage_ratio", model_id=m) == r.label_coverage


def test_main_metric_is_the_latest_labelled_days_against_its_baseline(exported, demo_db, tmp_path):
    config, _, series = exported
    baselines = {(m, k): v for m, k, v in demo_db.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
    since = {"purchase_propensity": "2026-10-28"}  # the demo's champion switch; others: since the start
    for model in config.models:
        metric = model.main_metric
        rows = demo_db.execute(f"""SELECT partition_date, "{metric}" FROM monitoring.performance_daily
                                   WHERE model_id = ? AND label_coverage >= 0.8 AND "{metric}" IS NOT NULL
                                   AND partition_date >= ?::DATE
                                   ORDER BY partition_date DESC LIMIT 1""", [model.id, since.get(model.id, "2026-10-01")]
                               ).fetchall()
        if not rows:  # the new champion has no day 80% labelled yet: unknown, left out
            assert value(series, "monitor_main_metric", model_id=model.id, metric=metric) is None
            assert value(series, "monitor_main_metric_day_timestamp_seconds", model_id=model.id) is None
            continue
        day, current = rows[0]
        assert day < DAY  # the last day's labels are still to come
        assert value(series, "monitor_main_metric_day_timestamp_seconds", model_id=model.id) == \
            dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        assert value(series, "monitor_main_metric", model_id=model.id, metric=metric) == current
        baseline = baselines[(model.id, metric)]
        assert value(series, "monitor_main_metric_baseline", model_id=model.id, metric=metric) == baseline
        # 1 = as good as the baseline, lower = worse: inverted for lower-is-better metrics (MAE, log loss).
        expected = current / baseline if METRIC_DIRECTION[metric] == "higher" else baseline / current
        assert value(series, "monitor_main_metric_ratio", model_id=model.id, metric=metric) == expected
    # The demo's concept drift: purchase_propensity's ROC AUC far below its baseline, in an export of the
    # drift's last day, before the retrained version took over.
    series = samples(export_metrics(demo_db, config, dt.date(2026, 10, 27), tmp_path).path.read_text())
    assert value(series, "monitor_main_metric_ratio", model_id="purchase_propensity", metric="roc_auc") < 0.7


def test_drift_alerts_and_retraining_requests_equal_the_tables(exported, demo_db):
    config, _, series = exported
    drift = dict(demo_db.execute("SELECT model_id, drift_share FROM monitoring.drift_summary WHERE partition_date = ?",
                                 [DAY]).fetchall())
    open_alerts = dict(((m, s), n) for m, s, n in demo_db.execute(
        """SELECT model_id, severity, count(*) FROM monitoring.alerts WHERE status = 'open' AND partition_date <= ?
           GROUP BY ALL""", [DAY]).fetchall())
    assert sum(open_alerts.values()) > 0
    alerts = by_name(series, "monitor_open_alerts")
    for m in config.model_ids:
        assert value(series, "monitor_drift_share_ratio", model_id=m) == drift[m]
        for severity in ("WARN", "ERROR"):
            # Nothing was acknowledged or silenced in the demo run: every open alert is in state "open".
            assert sum(v for labels, v in alerts.items()
                       if {("model_id", m), ("severity", severity)} <= labels) == open_alerts.get((m, severity), 0)
            assert value(series, "monitor_open_alerts", model_id=m, severity=severity, state="open") == \
                open_alerts.get((m, severity), 0)
    has_table = demo_db.execute("""SELECT count(*) FROM information_schema.tables
                                   WHERE table_schema = 'monitoring' AND table_name = 'retraining_requests'""").fetchall()[0][0]
    requests = by_name(series, "monitor_retraining_requests")
    if has_table:
        counts = dict(((m, s), n) for m, s, n in demo_db.execute(
            "SELECT model_id, status, count(*) FROM monitoring.retraining_requests GROUP BY ALL").fetchall())
        for (m, s), n in counts.items():
            assert requests[frozenset({("model_id", m), ("status", s)})] == n
    else:
        assert requests == {frozenset({("model_id", m), ("status", "proposed")}): 0 for m in config.model_ids}


def test_per_version_series_equal_the_logged_predictions(exported, demo_db, tmp_path):
    config, _, series = exported
    rows = demo_db.execute("""SELECT model_id, model_version, count(*), avg((NOT is_ok)::INT),
                                     quantile_cont(latency_ms, 0.95)
                              FROM raw.predictions WHERE partition_date = ? GROUP BY ALL""", [DAY]).fetchall()
    assert {m for m, *_ in rows} == set(config.model_ids)
    for m, version, n, error_rate, p95 in rows:
        assert value(series, "monitor_version_daily_predictions", model_id=m, model_version=version) == n
        assert value(series, "monitor_version_error_ratio", model_id=m, model_version=version) == \
            pytest.approx(error_rate, abs=1e-15)
        assert value(series, "monitor_version_latency_seconds", model_id=m, model_version=version,
                     percentile="95") == p95 / 1000
    # A model with one version on its main metric's day has that version's figure. purchase_propensity's
    # new champion has no day 80% labelled yet: no figure; on 10-27 the demo's canary served two versions,
    # each with its own figure.
    canary = samples(export_metrics(demo_db, config, dt.date(2026, 10, 27), tmp_path).path.read_text())
    for model in config.models:
        versions = {labels: v for labels, v in by_name(series, "monitor_version_main_metric").items()
                    if ("model_id", model.id) in labels}
        if model.id == "purchase_propensity":
            assert versions == {}
            assert {dict(labels)["model_version"] for labels in by_name(canary, "monitor_version_main_metric")
                    if ("model_id", model.id) in labels} == {"2026.08.1", "2026.10.1"}
            continue
        assert len(versions) == 1
        assert list(versions.values())[0] == pytest.approx(
            value(series, "monitor_main_metric", model_id=model.id, metric=model.main_metric), rel=1e-12)


def test_unknown_figures_are_left_out_not_zero(demo_run, demo_db, tmp_path):
    """On the demo's day without logs, the silent model has volume 0, no error rate, no latency and no
    hour with traffic: the file says so and invents nothing."""
    config, _ = demo_run
    gap = next(i for i in INCIDENTS["incidents"] if i["kind"] == "no_logs")
    day, model = dt.date.fromisoformat(gap["dates"][0]), gap["model_id"]
    result = export_metrics(demo_db, config, day, tmp_path)
    series = samples(result.path.read_text())
    assert value(series, "monitor_daily_predictions", model_id=model) == 0
    assert value(series, "monitor_availability_ratio", model_id=model, basis="hours") == 0
    assert value(series, "monitor_error_ratio", model_id=model) is None
    assert value(series, "monitor_availability_ratio", model_id=model, basis="requests") is None
    assert not any(("model_id", model) in labels for labels in by_name(series, "monitor_latency_seconds"))
    others = [m for m in config.model_ids if m != model]
    assert all(value(series, "monitor_daily_predictions", model_id=m) > 0 for m in others)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TEXTFILE]  # no temporary file left behind


class _Pushgateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, str]] = []

    def do_PUT(self):  # noqa: N802 - http.server's hook name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def pushgateway() -> Iterator[tuple[str, list]]:
    _Pushgateway.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Pushgateway.received
    finally:
        server.shutdown()
        server.server_close()


def test_push_to_a_pushgateway_sends_the_files_series(demo_run, demo_db, tmp_path):
    config, _ = demo_run
    with pushgateway() as (url, received):
        result = export_metrics(demo_db, config, DAY, tmp_path, pushgateway=url, now=1.8e9)
    assert result.pushed_to == url
    assert len(received) == 1
    path, content_type, body = received[0]
    assert path == "/metrics/job/monitor_assets"  # PUT: replaces the job's previous series
    assert content_type.startswith("text/plain")
    assert samples(body) == samples(result.path.read_text())
    assert value(samples(body), "monitor_export_timestamp_seconds") == 1.8e9


def test_retraining_requests_are_counted_once_the_table_exists(demo_run, tmp_path):
    config, _ = demo_run
    lake = tmp_path / "lake"  # a copy: the session's demo lake stays as the run left it
    shutil.copytree(config.lake_path, lake)
    with connect(None, str(lake)) as con:
        edit(con, "monitoring.retraining_requests", lambda con: con.execute("""
            DELETE FROM monitoring.retraining_requests;
            INSERT INTO monitoring.retraining_requests (request_id, model_id, model_version, opened_on, status)
            VALUES (1, 'purchase_propensity', '2026.08.1', '2026-10-25', 'proposed'),
                   (2, 'purchase_propensity', '2026.08.1', '2026-10-20', 'approved'),
                   (3, 'fraud_detector', '2026.09.2', '2026-10-26', 'proposed'),
                   (4, 'fraud_detector', '2026.09.2', '2026-10-27', 'proposed')"""))
        result = export_metrics(con, config, DAY, tmp_path / "out")
    requests = by_name(samples(result.path.read_text()), "monitor_retraining_requests")
    assert requests == {
        frozenset({("model_id", "purchase_propensity"), ("status", "proposed")}): 1,
        frozenset({("model_id", "purchase_propensity"), ("status", "approved")}): 1,
        frozenset({("model_id", "fraud_detector"), ("status", "proposed")}): 2,
        frozenset({("model_id", "demand_forecaster"), ("status", "proposed")}): 0,
        frozenset({("model_id", "product_categoriser"), ("status", "proposed")}): 0,
    }


def test_estimated_performance_and_band_coverage_equal_the_table(exported, demo_db):
    """Per model and metric: the latest estimate with its band and its day, and the share of reconciled days
    whose realized value fell inside the band, as monitoring.estimated_performance holds them."""
    config, _, series = exported
    rows = demo_db.execute("""SELECT model_id, metric, partition_date, estimate, lower, upper, within_band
                              FROM monitoring.estimated_performance WHERE partition_date <= ?""", [DAY]).df()
    assert set(rows.model_id) == set(config.model_ids)
    for (model, metric), g in rows.groupby(["model_id", "metric"]):
        estimated = g[g.estimate.notna()].sort_values("partition_date")
        last = estimated.iloc[-1]
        for bound in ("estimate", "lower", "upper"):  # a band end that is not known is left out
            assert value(series, "monitor_estimated_performance", model_id=model, metric=metric, bound=bound) == \
                (None if pd.isna(last[bound]) else last[bound]), (model, metric, bound)
        assert value(series, "monitor_estimated_performance_day_timestamp_seconds", model_id=model, metric=metric) == \
            dt.datetime.combine(last.partition_date.date(), dt.time(), dt.UTC).timestamp()
        known = g.within_band.dropna().astype(bool)
        assert value(series, "monitor_estimated_band_reconciled", model_id=model, metric=metric) == len(known) > 0
        assert value(series, "monitor_estimated_band_coverage_ratio", model_id=model, metric=metric) == \
            pytest.approx(known.mean(), rel=1e-12)
    # The demo's covariate shift: on its last day fraud_detector's estimated ROC AUC and its whole band are below
    # the floor of the estimated-performance check, days before any label of those days can land.
    shift = next(i for i in INCIDENTS["incidents"] if i["kind"] == "covariate_shift")
    model = config.model(shift["model_id"])
    baseline = value(series, "monitor_main_metric_baseline", model_id=model.id, metric=shift["metric"])
    upper = value(series, "monitor_estimated_performance", model_id=model.id, metric=shift["metric"], bound="upper")
    assert upper < model.thresholds.min_metric_ratio * baseline
    # While no day is reconciled the coverage is unknown and left out (never 0); the count says 0.
    data = load_export_data(demo_db, config, DAY)
    data.estimated = data.estimated.assign(held=0, reconciled=0)
    fresh = samples(generate_latest(build_registry(data, config)).decode())
    assert value(fresh, "monitor_estimated_band_reconciled", model_id=model.id, metric=shift["metric"]) == 0
    assert by_name(fresh, "monitor_estimated_band_coverage_ratio") == {}
    assert value(fresh, "monitor_estimated_performance", model_id=model.id, metric=shift["metric"], bound="upper") \
        == upper


def test_segment_series_hold_only_the_segments_of_their_day(exported, demo_db):
    """Segment drift: the judged segment-features of the exported day, no other day's; segment performance: the
    tested segments of each segmented model's latest tested day (labels arrive late), that day in its own series."""
    config, _, series = exported
    drift = demo_db.execute("""SELECT model_id, segment, feature, evidence, drifted FROM monitoring.segment_drift
                               WHERE partition_date = ? AND judged""", [DAY]).df()
    segmented = {m.id for m in config.models if m.segments.by}
    assert set(drift.model_id) == segmented and len(drift) > 0
    assert by_name(series, "monitor_segment_drift_evidence") == pytest.approx({
        frozenset({("model_id", r.model_id), ("segment", r.segment), ("feature", r.feature)}): r.evidence
        for r in drift.itertuples()}, rel=1e-12)
    counts = drift.assign(drifted=drift.drifted.astype(int)).groupby(["model_id", "segment"]).drifted.sum()
    assert by_name(series, "monitor_segment_drifted_features") == {
        frozenset({("model_id", m), ("segment", s)}): n for (m, s), n in counts.items()}
    tested = demo_db.execute("""SELECT model_id, segment, metric, value, partition_date FROM monitoring.segment_performance
                                WHERE partition_date <= ? AND p_adjusted IS NOT NULL
                                QUALIFY partition_date = max(partition_date) OVER (PARTITION BY model_id)""",
                             [DAY]).df()
    assert set(tested.model_id) == segmented
    assert by_name(series, "monitor_segment_main_metric") == pytest.approx({
        frozenset({("model_id", r.model_id), ("segment", r.segment), ("metric", r.metric)}): r.value
        for r in tested.itertuples()}, rel=1e-12)
    for m, g in tested.groupby("model_id"):
        day = pd.Timestamp(g.partition_date.iloc[0]).date()
        assert value(series, "monitor_segment_day_timestamp_seconds", model_id=m) == \
            dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
