"""The dashboard as a person sees it, in headless Chromium, and the reports beside it.

The dashboard is an index page (dashboard.html, one row per model, sortable and filterable), a page per
model (models/<model>.html, its Plotly charts and alerts) and plotly.js once (assets/plotly.min.js).
"""

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from monitor_assets.links import dashboard_url, model_page
from monitor_assets.reporting.dashboard import (
    DISTRIBUTION_COLUMNS,
    ReportData,
    build_dashboard,
    load_report_data,
    model_summaries,
    ranker_summaries,
)

from .browser import browser_page

INCIDENTS = yaml.safe_load((Path(__file__).parents[2] / "data" / "demo" / "incidents.yaml").read_text())
CONCEPT = next(i for i in INCIDENTS["incidents"] if i["kind"] == "concept_drift")
SHIFT = next(i for i in INCIDENTS["incidents"] if i["kind"] == "covariate_shift")
VISIBLE_IDS = "rows => rows.map(r => r.id.slice('model-'.length))"


def summaries_of(config) -> dict[str, dict]:
    return {s["model_id"]: s for s in json.loads((Path(config.reports_dir) / "model_summaries.json").read_text())}


def test_index_lists_every_model_and_sorts_and_filters_offline(demo_run):
    config, _ = demo_run
    reports = Path(config.reports_dir)
    index = reports / "dashboard.html"
    summaries = summaries_of(config)
    ids = config.model_ids
    assert index.stat().st_size < 5e6
    assert (reports / "assets" / "plotly.min.js").stat().st_size > 1e6
    assert "plotly" not in index.read_text().lower()  # the index draws no Plotly charts
    with browser_page() as (page, errors):
        page.goto(index.as_uri())
        shown = lambda: page.eval_on_selector_all("#models tbody tr:not([hidden])", VISIBLE_IDS)  # noqa: E731
        assert sorted(shown()) == sorted(ids)
        statuses = page.locator("#overview .status").all_inner_texts()
        assert len(statuses) == len(ids)
        assert page.locator(f"#model-{CONCEPT['model_id']} .status").inner_text() == "retrain suggested"
        assert page.locator("#models svg.spark path").count() == len(ids)  # a sparkline per model
        for m in ids:  # every row links to the model's page, which exists
            assert (reports / page.locator(f"#model-{m} a").first.get_attribute("href")).exists()
        # Default order: worst status first.
        ranks = [["healthy", "watch", "action needed", "retrain suggested"].index(summaries[m]["status"])
                 for m in shown()]
        assert ranks == sorted(ranks, reverse=True)

        def sort_by(column: str) -> None:  # the sorted column's name gains an arrow
            page.locator("#models thead").get_by_role("button", name=re.compile(rf"^{column}( .)?$")).click()

        sort_by("model")
        assert shown() == sorted(ids)
        sort_by("model")
        assert shown() == sorted(ids, reverse=True)
        sort_by("volume")  # numbers sort as numbers
        volumes = [summaries[m]["latest_volume"] for m in shown()]
        assert volumes == sorted(volumes) and len(set(volumes)) > 1
        assert page.locator("th[aria-sort=ascending]").inner_text() == "volume"

        page.locator("#filter").fill(CONCEPT["model_id"])
        assert shown() == [CONCEPT["model_id"]]
        assert page.locator("#shown").inner_text() == "1"
        page.locator("#filter").fill("RETRAIN")
        assert shown() == [m for m in ids if summaries[m]["status"] == "retrain suggested"] != []
        page.locator("#filter").fill("watch")
        assert sorted(shown()) == sorted(m for m in ids if summaries[m]["status"] == "watch")
        page.locator("#filter").fill("")
        assert len(shown()) == len(ids)

        # Links of the first release (index#model-<id>) still land on the model's row.
        page.goto((reports / "dashboard.html").as_uri() + "#model-demand_forecaster")
        assert page.evaluate("document.querySelector(':target').id") == "model-demand_forecaster"
        assert page.locator("#model-demand_forecaster").is_visible()
        page.screenshot(path=str(reports / "dashboard.png"), full_page=False)
        # The link in alert messages opens the model's own page, whose back link returns to its row.
        page.goto(dashboard_url(config, "demand_forecaster"))
        assert page.url.endswith("/models/demand_forecaster.html")
        assert page.locator("#back").get_attribute("href").endswith("dashboard.html#model-demand_forecaster")
    assert errors == []
    assert (reports / "dashboard.png").stat().st_size > 20000


def test_model_pages_draw_their_charts_with_the_shared_plotly(demo_run, demo_db):
    config, _ = demo_run
    reports = Path(config.reports_dir)
    summaries = summaries_of(config)
    open_alerts = dict(demo_db.execute("SELECT model_id, count(*) FROM monitoring.alerts WHERE status = 'open' "
                                       "GROUP BY ALL").fetchall())
    assert sum(n for m, n in open_alerts.items() if m in config.model_ids) == sum(
        s["open_alert_count"] for s in summaries.values()) > 0
    # rankers' alerts are alert rows too, counted on their own rows of the index
    rankers = ranker_summaries(load_report_data(demo_db, config, config.end_date))
    assert {r["model_id"]: r["open_alert_count"] for r in rankers} == {
        r.id: open_alerts.get(r.id, 0) for r in config.rankers}
    assert any(r["open_alert_count"] for r in rankers)
    # a ranker's page lists its retraining requests as a model's page does (rankers are in the closed loop)
    for r in config.rankers:
        requests = demo_db.execute("SELECT request_id FROM monitoring.retraining_requests WHERE model_id = ?",
                                   [r.id]).fetchall()
        text = (reports / model_page(r.id)).read_text()
        assert f"Retraining requests ({len(requests)})" in text and "not in <code>monitoring.alerts</code>" not in text
        assert all(f">{rid}<" in text for (rid,) in requests)
    # each model page draws the reference against every closed window whose drift verdict flagged a feature
    windows = demo_db.execute("""SELECT model_id, feature, window_name, window_start, window_end
                                 FROM monitoring.window_distributions WHERE window_end <= ?""",
                              [config.end_date]).fetchall()
    assert windows  # the demo's drifted week
    for model_id, feature, name, start, end in windows:
        text = (reports / model_page(model_id)).read_text()
        assert f"What changed over a window: {feature}" in text and f"{name} {start}..{end}" in text
    charts = rendered = alert_rows = 0
    with browser_page() as (page, errors):
        scripts: list[str] = []
        page.on("request", lambda r: scripts.append(r.url) if r.resource_type == "script" else None)
        for m in config.model_ids:
            assert (reports / model_page(m)).stat().st_size < 1e6
            page.goto((reports / "dashboard.html").as_uri())
            page.locator(f"#model-{m} a").first.click()  # from the index row to the model's page
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
            assert page.url.endswith(model_page(m))
            charts += page.locator("div.chart").count()
            rendered += page.locator("div.chart.js-plotly-plot").count()
            alert_rows += page.locator("tr.alert-row").count()
            assert page.locator("header .status").inner_text() == summaries[m]["status"]
            if m == CONCEPT["model_id"]:
                assert page.locator("tr.alert-row", has_text="performance_within_baseline").count() > 0
                page.screenshot(path=str(reports / "dashboard_model.png"), full_page=True)
            # every model is estimated before labels: its chart draws, band, estimate and realized line
            assert page.locator("#estimated.js-plotly-plot").count() == 1
            assert page.locator("#estimated .scatterlayer .trace").count() >= 4
            if m == SHIFT["model_id"]:
                page.locator("#estimated").screenshot(path=str(reports / "dashboard_estimated.png"))
            page.locator("#back").click()  # and back to the model's row
            assert page.url.endswith(f"dashboard.html#model-{m}")
    assert errors == []
    assert charts >= 3 * len(config.models) - 1 and rendered == charts  # every chart drew
    assert alert_rows == sum(s["unhandled_alert_count"] for s in summaries.values()) > 0
    plotly = [u for u in scripts if "plotly" in u]
    assert plotly and {u for u in plotly} == {(reports / "assets" / "plotly.min.js").as_uri()}


def test_summaries_recommend_retraining_where_performance_dropped(demo_run, demo_db):
    config, _ = demo_run
    summaries = summaries_of(config)
    assert summaries[CONCEPT["model_id"]]["recommendation"] == "retrain suggested"
    # The drop, seen on the last day of the concept drift (the retrained version takes over the next day).
    then = {s["model_id"]: s for s in model_summaries(load_report_data(demo_db, config,
                                                                       dt.date.fromisoformat(CONCEPT["dates"][-1])))}
    assert then[CONCEPT["model_id"]]["recommendation"] == "retrain suggested"
    assert then[CONCEPT["model_id"]]["trend_vs_previous_week"] < -0.1
    # Its latency spike is long past, but the error-rate ERROR alert of that day is still open: never "healthy".
    assert summaries["demand_forecaster"]["recommendation"] == "watch"
    assert summaries["demand_forecaster"]["why"] == "1 open ERROR alert(s), latest 2026-10-14, none in the last 7 days"
    # fraud_detector's inputs shifted on the last days (several features on each): retraining comes first.
    assert summaries[SHIFT["model_id"]]["recommendation"] == "retrain suggested"
    assert summaries[SHIFT["model_id"]]["why"] == f"inputs drifted on {len(SHIFT['dates'])} of the last 7 days"
    assert "retrain suggested" in (Path(config.reports_dir) / "model_summaries.md").read_text()


def test_anomaly_report_holds_the_spike_and_the_drop_and_nothing_on_stable_days(demo_run, demo_db):
    config, _ = demo_run
    found = demo_db.execute("SELECT partition_date::VARCHAR, model_id, metric FROM monitoring.anomalies").fetchall()
    spike = next(i for i in INCIDENTS["incidents"] if i["kind"] == "latency_error_spike")
    assert (spike["dates"][0], spike["model_id"], "latency_p95_ms") in found
    assert (CONCEPT["dates"][0], CONCEPT["model_id"], "roc_auc") in found
    incident_days = {(d, m) for i in INCIDENTS["incidents"] for d in i["dates"]
                     for m in (i["model_id"] if isinstance(i["model_id"], list) else [i["model_id"]])}
    # A retrained version taking all traffic shifts the score level: the days after its takeover, until the
    # trailing window has learnt the new level, are expected too.
    takeover = {(i["model_id"], i["details"]["all_traffic_from"]) for i in INCIDENTS["incidents"]
                if i["kind"] == "canary"}
    stray = [f for f in found if (f[0], f[1]) not in incident_days and f[1] != "_business"
             and not any(f[1] == m and f[0] >= since and f[2] == "mean_score" for m, since in takeover)]
    assert stray == [], stray
    report = (Path(config.reports_dir) / "anomaly_report.md").read_text()
    assert spike["dates"][0] in report and "latency_p95_ms" in report


# ---------------------------------------------------------------------------------------------
# Names from the data: escaped in every page, and safe as file names.

EVIL_ID = 'Fraud"><img src=x onerror="window.pwned=1">'
EVIL_FEATURE = "</script><script>window.pwned=2</script>"


def tiny_report(model_ids: list[str]) -> ReportData:
    days = pd.date_range("2026-10-01", periods=5)
    perf = pd.DataFrame([(d, m, 0.8 - i / 100, 100.0, 0.001, 500, 1.0) for m in model_ids for i, d in enumerate(days)],
                        columns=["partition_date", "model_id", "main_metric", "latency_p95_ms", "error_rate",
                                 "volume", "label_coverage"])
    drift = pd.DataFrame([(d, m, f, 0.05, 0.1, False) for m in model_ids for d in days for f in ("age", EVIL_FEATURE)],
                         columns=["partition_date", "model_id", "feature", "statistic", "threshold", "drifted"])
    fairness = pd.DataFrame([(d, m, "segment", g, 0.3, False) for m in model_ids for d in days for g in ("a", "<b>b</b>")],
                            columns=["partition_date", "model_id", "attribute", "grp", "selection_rate",
                                     "below_min_size"])
    alerts = pd.DataFrame([(days[-1], m, "latency_p95_within_sla", "WARN", 600.0, 500.0, f"<script>{m}</script>",
                            "open", state, "by <i>ana</i>" if state != "open" else "")
                           for m in model_ids for state in ("open", "acknowledged", "silenced")],
                          columns=["partition_date", "model_id", "check_name", "severity", "value", "threshold",
                                   "message", "status", "state", "state_note"])
    models = pd.DataFrame({"model_id": model_ids, "task": "binary_classification", "main_metric": "roc_auc",
                           "baseline": 0.8, "latency_sla": 500.0, "error_sla": 0.01})
    quality = pd.DataFrame({"partition_date": days, "source": "<predictions>", "records_read": 10,
                            "records_loaded": 10, "records_quarantined": 0})
    return ReportData(models, perf, drift, perf[["partition_date", "model_id"]].assign(drift_share=0.0), fairness,
                      alerts, quality, pd.DataFrame({"source": ["<p>"], "reason": ["<x>"], "n": [1]}))


def test_names_from_data_are_escaped_and_files_named_safely(tmp_path):
    assert model_page("fraud_detector") == "models/fraud_detector.html"
    assert re.fullmatch(r"models/Fraud_img_src_x_onerror_window_pwned_1-[0-9a-f]{10}\.html", model_page(EVIL_ID))
    assert model_page("Model") != model_page("model")  # distinct on case-insensitive disks too
    assert model_page("../up") != model_page("__up") and "/" not in model_page("../up")[len("models/"):]

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "retired_model.html").write_text("old")
    dashboard = build_dashboard(tiny_report([EVIL_ID, "plain"]), tmp_path)
    assert not (tmp_path / "models" / "retired_model.html").exists()  # pages of models gone are removed
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        Path(model_page(m)).name for m in (EVIL_ID, "plain"))
    for page_file in [dashboard.index, *dashboard.model_pages.values()]:
        text = page_file.read_text()
        assert "<img src=x" not in text and "<script>window.pwned" not in text and "<script>plain" not in text
        assert "<i>ana" not in text and "<predictions>" not in text
    with browser_page() as (page, errors):
        page.goto(dashboard.index.as_uri())
        assert page.locator("#models tbody tr").count() == 2
        assert page.locator("#models tbody tr a", has_text=EVIL_ID).count() == 1
        page.locator("#filter").fill("fraud\"><img")
        assert page.eval_on_selector_all("#models tbody tr:not([hidden])", "rs => rs.length") == 1
        page.locator("#models tbody tr a", has_text=EVIL_ID).click()
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
        assert page.locator("h1").inner_text().startswith(EVIL_ID)
        assert page.locator("div.chart.js-plotly-plot").count() == 3
        assert page.locator("tr.alert-row td", has_text=f"<script>{EVIL_ID}</script>").count() == 1
        assert page.locator("tr.alert-acknowledged td", has_text="by <i>ana</i>").count() == 1
        assert page.locator("tr.alert-silenced").count() == 1
        assert page.evaluate("window.pwned") is None
        page.locator("#back").click()
        assert page.evaluate("document.querySelector(':target').id") == f"model-{EVIL_ID}"
    assert errors == []


def _figures(page: str) -> dict[str, dict]:
    """The Plotly figures a model page draws, by chart id (the JSON the page hands to Plotly.newPlot)."""
    return {f["id"]: f for f in json.loads(re.search(r"const figures = (.*);\n", page).group(1))}


def test_model_page_plots_the_estimate_its_band_and_the_realized_value(demo_run, demo_db):
    config, _ = demo_run
    model = config.model(SHIFT["model_id"])
    page = (Path(config.reports_dir) / model_page(model.id)).read_text()
    rows = demo_db.execute("""SELECT partition_date::VARCHAR, estimate, lower, upper, realized, within_band
                              FROM monitoring.estimated_performance WHERE model_id = ? AND metric = ?
                              ORDER BY partition_date""", [model.id, model.main_metric]).fetchall()
    held, reconciled = sum(r[5] is True for r in rows), sum(r[5] is not None for r in rows)
    assert 0 < held < reconciled  # the demo's bias days push realized values out of the band
    sentence = f"realized inside the band on {held} of {reconciled} reconciled days ({held / reconciled:.0%})"
    assert sentence in page
    assert re.search(rf'<dd id="estimate">{rows[-1][1]:.4f} on {rows[-1][0]} \(95% band ', page)
    figure = _figures(page)["estimated"]
    assert figure["title"] == f"Estimated {model.main_metric} before labels, and realized"
    traces = {t.get("name"): t for t in figure["figure"]["data"]}
    assert traces["95% band"]["fill"] == "tonexty"  # shaded down to the lower bound drawn just before it
    lower = figure["figure"]["data"][0]

    def drawn(trace: dict) -> dict:
        return dict(zip(trace["x"], trace["y"], strict=True))

    # the table's values to 4 significant digits, day by day; gaps where labels are still to come
    for trace, column in ((lower, 2), (traces["95% band"], 3), (traces["estimated"], 1), (traces["realized"], 4)):
        expected = {r[0]: r[column] for r in rows}
        got = drawn(trace)
        assert set(got) == set(expected)
        assert all((got[d] is None) == (v is None) for d, v in expected.items())
        assert all(got[d] == pytest.approx(v, rel=5e-4) for d, v in expected.items() if v is not None)
    assert traces["realized outside the band"]["x"] == [r[0] for r in rows if r[5] is False]
    assert traces["check failed"]["x"] == SHIFT["dates"]  # the days the estimate found the shift
    for m in config.models:  # every estimated model has the chart, and the page the line
        assert "estimated" in _figures((Path(config.reports_dir) / model_page(m.id)).read_text())


# ---------------------------------------------------------------------------------------------
# What changed: reference against current distributions of the drifted feature-days.

def _pictured_report() -> tuple[ReportData, dict]:
    """tiny_report with `age` drifted on its last two days (pictures of both), and a picture of `income` on a day
    feature_drift calls stable (left by an older run): it must not be drawn."""
    from monitor_assets.stats.distributions import compare

    data = tiny_report(["shop"])
    days = sorted(data.drift.partition_date.unique())
    rng = np.random.default_rng(3)
    ref = rng.normal(40, 10, 2000)
    found = {days[-1]: compare(ref, rng.normal(55, 10, 500), "numeric"),
             days[-2]: compare(ref, rng.normal(50, 10, 400), "numeric")}
    drift = data.drift.copy()
    drift.loc[(drift.feature == "age") & drift.partition_date.isin(days[-2:]), ["statistic", "drifted"]] = [0.3, True]
    rows = [(d, "shop", "age", "feature", "numeric", "wasserstein", 0.3, None, 0.1, 3.0, c.to_json(), c.n_current,
             c.n_reference) for d, c in found.items()]
    stale = compare(ref, ref[:300], "numeric")
    rows.append((days[-1], "shop", "income", "feature", "numeric", "wasserstein", 0.2, None, 0.1, 2.0,
                 stale.to_json(), stale.n_current, stale.n_reference))
    data.drift = drift
    data.distributions = pd.DataFrame(rows, columns=DISTRIBUTION_COLUMNS)
    return data, found


def test_model_page_draws_reference_against_current_for_each_drifted_feature_day(tmp_path):
    data, found = _pictured_report()
    dashboard = build_dashboard(data, tmp_path)
    page = dashboard.model_pages["shop"].read_text()
    figures = _figures(page)
    pictures = {k: f for k, f in figures.items() if k.startswith("dist-")}
    assert list(pictures) == ["dist-0"]  # age only: income is stable in feature_drift that day
    assert pictures["dist-0"]["title"] == "What changed: age"
    latest, earlier = sorted(found, reverse=True)
    figure = pictures["dist-0"]["figure"]
    reference, current = figure["data"]
    # the latest drift day is shown first: the bars are its shares, to 4 significant digits
    assert current["y"] == pytest.approx([b.current_share for b in found[latest].buckets], rel=5e-4)
    assert reference["y"] == pytest.approx([b.reference_share for b in found[latest].buckets], rel=5e-4)
    assert current["customdata"] == [b.current_count for b in found[latest].buckets]
    layout = figure["layout"]
    assert layout["title"]["text"] == f"age on {latest:%Y-%m-%d}: wasserstein 0.3 against threshold 0.1"
    menu = layout["updatemenus"][0]["buttons"]
    assert [b["label"] for b in menu] == [f"{latest:%Y-%m-%d} (latest)", f"{earlier:%Y-%m-%d}"]
    assert menu[1]["args"][0]["y"][1] == pytest.approx([b.current_share for b in found[earlier].buckets], rel=5e-4)
    with browser_page() as (browser, errors):
        browser.goto(dashboard.model_pages["shop"].as_uri())
        browser.wait_for_selector("#dist-0 .main-svg", timeout=30000)
        assert browser.locator("#dist-0 .barlayer .trace").count() == 2
        assert browser.locator("#dist-0 .gtitle").text_content().startswith(f"age on {latest:%Y-%m-%d}")
        browser.locator("#dist-0 .updatemenu-header-group").click()  # the menu of drift days
        browser.locator("#dist-0 .updatemenu-item-text", has_text=f"{earlier:%Y-%m-%d}").click()
        browser.wait_for_function(
            f"document.querySelector('#dist-0 .gtitle').textContent.includes('{earlier:%Y-%m-%d}')")
        shown = browser.evaluate("document.getElementById('dist-0').data[1].y")
        assert shown == pytest.approx([b.current_share for b in found[earlier].buckets], rel=5e-4)
    assert errors == []


def test_demo_model_page_shows_what_changed_on_the_drift_days_and_nothing_stable(demo_run, demo_db):
    config, _ = demo_run
    drifted = {(m, f, str(d)) for m, f, d in demo_db.execute(
        "SELECT model_id, feature, partition_date FROM monitoring.feature_drift WHERE drifted").fetchall()}
    incidents = [i for i in INCIDENTS["incidents"] if i["kind"] in ("feature_drift", "covariate_shift")]
    for m in config.model_ids:
        figures = _figures((Path(config.reports_dir) / model_page(m)).read_text())
        for key, f in figures.items():
            if not key.startswith("dist-"):
                continue
            feature = f["title"].removeprefix("What changed: ").split(" (")[0]
            menu = f["figure"]["layout"].get("updatemenus")
            days = [b["label"].split(" ")[0] for b in menu[0]["buttons"]] if menu else [
                f["figure"]["layout"]["title"]["text"].split(" on ")[1][:10]]
            assert days == sorted(days, reverse=True)  # the latest drift day first
            for day in days:  # never a picture of a day the drift table calls stable
                assert (m, feature, day) in drifted, (m, feature, day)
    for incident in incidents:  # every drifted feature of the demo's incidents, on each of its days
        figures = _figures((Path(config.reports_dir) / model_page(incident["model_id"])).read_text())
        menus = {f["title"].removeprefix("What changed: "): [b["label"].split(" ")[0] for b in
                                                             f["figure"]["layout"]["updatemenus"][0]["buttons"]]
                 for k, f in figures.items() if k.startswith("dist-") and f["figure"]["layout"].get("updatemenus")}
        for feature in incident["features"]:
            assert set(incident["dates"]) <= set(menus[feature]), (feature, menus.get(feature))
    with browser_page() as (page, errors):
        shift = next(i for i in incidents if i["kind"] == "feature_drift")
        page.goto((Path(config.reports_dir) / model_page(shift["model_id"])).as_uri())
        page.wait_for_selector("#dist-0 .barlayer .trace", timeout=30000)
        assert page.locator("[id^=dist-].js-plotly-plot").count() == sum(
            1 for k in _figures(page.content()) if k.startswith("dist-"))
        page.locator("#dist-0").screenshot(path=str(Path(config.reports_dir) / "dashboard_drift_picture.png"))
    assert errors == []
