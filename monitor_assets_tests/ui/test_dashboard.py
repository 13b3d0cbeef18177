"""The dashboard as a person sees it, in headless Chromium, and the reports beside it."""

import json
from pathlib import Path

import yaml

from .browser import browser_page

INCIDENTS = yaml.safe_load((Path(__file__).parents[2] / "data" / "demo" / "incidents.yaml").read_text())


def test_dashboard_renders_offline_with_charts_and_alert_rows(demo_run, demo_db):
    config, _ = demo_run
    path = Path(config.reports_dir) / "dashboard.html"
    assert path.stat().st_size < 10e6
    open_alerts = demo_db.execute("SELECT count(*) FROM monitoring.alerts WHERE status = 'open'").fetchall()[0][0]
    with browser_page() as (page, errors):
        page.goto(path.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
        charts = page.locator("div.chart").count()
        rendered = page.locator("div.chart.js-plotly-plot").count()
        alert_rows = page.locator("tr.alert-row").count()
        statuses = page.locator("#overview .status").all_inner_texts()
        page.screenshot(path=str(Path(config.reports_dir) / "dashboard.png"), full_page=False)
    assert errors == []
    assert charts >= 3 * len(config.models) - 1 and rendered == charts  # every chart drew
    assert alert_rows == open_alerts > 0
    assert len(statuses) == len(config.models)
    assert (Path(config.reports_dir) / "dashboard.png").stat().st_size > 20000


def test_summaries_recommend_retraining_where_performance_dropped(demo_run):
    config, _ = demo_run
    summaries = {s["model_id"]: s for s in json.loads((Path(config.reports_dir) / "model_summaries.json").read_text())}
    concept = next(i for i in INCIDENTS["incidents"] if i["kind"] == "concept_drift")
    assert summaries[concept["model_id"]]["recommendation"] == "retrain suggested"
    assert summaries[concept["model_id"]]["trend_vs_previous_week"] < -0.1
    assert summaries["demand_forecaster"]["recommendation"] == "healthy"  # its spike is long past
    assert "retrain suggested" in (Path(config.reports_dir) / "model_summaries.md").read_text()


def test_anomaly_report_holds_the_spike_and_the_drop_and_nothing_on_stable_days(demo_run, demo_db):
    config, _ = demo_run
    found = demo_db.execute("SELECT partition_date::VARCHAR, model_id, metric FROM monitoring.anomalies").fetchall()
    spike = next(i for i in INCIDENTS["incidents"] if i["kind"] == "latency_error_spike")
    concept = next(i for i in INCIDENTS["incidents"] if i["kind"] == "concept_drift")
    assert (spike["dates"][0], spike["model_id"], "latency_p95_ms") in found
    assert (concept["dates"][0], concept["model_id"], "roc_auc") in found
    incident_days = {(d, m) for i in INCIDENTS["incidents"] for d in i["dates"]
                     for m in (i["model_id"] if isinstance(i["model_id"], list) else [i["model_id"]])}
    stray = [f for f in found if (f[0], f[1]) not in incident_days and f[1] != "_business"]
    assert stray == []
    report = (Path(config.reports_dir) / "anomaly_report.md").read_text()
    assert spike["dates"][0] in report and "latency_p95_ms" in report
