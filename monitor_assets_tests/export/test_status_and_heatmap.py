"""What a person sees: the drift heatmap's colour means the same for every method, a model's status ranks its
most severe current problem, its headline figure follows the current champion version (dashboard and
Prometheus file), and numbers are written one way."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor_assets.constants import LATENCY_CHECK, PERFORMANCE_CHECK
from monitor_assets.export.defs import export_folder
from monitor_assets.export.prometheus import TEXTFILE
from monitor_assets.links import INDEX_PAGE, model_page
from monitor_assets.reporting.dashboard import (
    ReportData,
    _cell,
    drift_evidence,
    load_report_data,
    model_summaries,
    render_dashboard,
)
from monitor_assets_tests.ui.test_dashboard import tiny_report

DRIFT_COLUMNS = ["partition_date", "model_id", "feature", "statistic", "threshold", "drifted", "method", "p_value",
                 "p_value_adjusted"]


def figures_of(page: str) -> dict[str, dict]:
    """The Plotly figures a model page draws, by chart id."""
    found = re.search(r"const figures = (.*);\n", page)
    return {f["id"]: f["figure"] for f in json.loads(found[1])}


# ---------------------------------------------------------------------------------------------
# The heatmap


def test_heatmap_colour_is_evidence_against_the_threshold_for_every_method():
    rows = pd.DataFrame([
        # KS on a stable 500-row day: the statistic is 3.4x the threshold, which is a p-value.
        ("2026-10-01", "m", "amount", 0.0335, 0.01, False, "ks", 0.4, 0.4),
        ("2026-10-01", "m", "age", 0.21, 0.01, True, "ks", 1e-7, 4e-7),  # decided on the adjusted p
        ("2026-10-01", "m", "segment", 9.1, 0.01, False, "chisquare", 0.2, None),  # no adjusted p: the raw one
        ("2026-10-01", "m", "tenure", 0.15, 0.1, True, "psi", None, None),
        ("2026-10-01", "m", "price", 0.05, 0.1, False, "wasserstein", None, None),
        ("2026-10-01", "m", "zeros", 0.9, 0.01, True, "ks", 0.0, 0.0),  # p underflowed to 0: strong, not a gap
        # Raw p below the threshold but not after Benjamini-Hochberg: not drifted, and not drawn as drifted.
        ("2026-10-01", "m", "channel", 0.05, 0.01, False, "ks", 0.004, 0.03),
    ], columns=DRIFT_COLUMNS)
    evidence = dict(zip(rows.feature, drift_evidence(rows), strict=True))
    assert rows.statistic[0] / rows.threshold[0] == pytest.approx(3.35)  # the old colour: red on a stable day
    assert evidence["amount"] == pytest.approx(math.log(0.4) / math.log(0.01), rel=1e-12)
    assert evidence["amount"] == pytest.approx(0.19897, rel=1e-4) and evidence["amount"] < 1
    assert evidence["age"] == pytest.approx(math.log(4e-7) / math.log(0.01), rel=1e-12) and evidence["age"] > 1
    assert evidence["segment"] == pytest.approx(math.log(0.2) / math.log(0.01), rel=1e-12) and evidence["segment"] < 1
    assert evidence["tenure"] == pytest.approx(0.15 / 0.1, rel=1e-12)  # distances unchanged
    assert evidence["price"] == pytest.approx(0.5, rel=1e-12)
    assert evidence["zeros"] == pytest.approx(math.log(1e-300) / math.log(0.01), rel=1e-12)
    assert evidence["channel"] == pytest.approx(math.log(0.03) / math.log(0.01), rel=1e-12) and evidence["channel"] < 1
    # The colour's side of 1 agrees with the table's flag on every row.
    assert [bool(e > 1) for e in evidence.values()] == rows.drifted.tolist()
    # Frames of the first release (no method, no p-value) read as distances, as before.
    old = rows[["partition_date", "model_id", "feature", "statistic", "threshold", "drifted"]]
    assert list(drift_evidence(old)) == pytest.approx(list(rows.statistic / rows.threshold), rel=1e-12)


def small_volume_report(days: int = 30, drifted_cell: tuple[int, str] | None = None) -> ReportData:
    """A demo-like model serving about 500 rows a day: KS on every numeric feature, stable every day."""
    data = tiny_report(["small_model"])
    dates = pd.date_range("2026-10-01", periods=days)
    features = ["amount", "age", "tenure", "basket_size"]
    drift = pd.DataFrame([(d, "small_model", f, 0.0335, 0.01, False, "ks", 0.4, 0.4)
                          for d in dates for f in features], columns=DRIFT_COLUMNS)
    if drifted_cell is not None:
        day, feature = drifted_cell
        at = (drift.partition_date == dates[day]) & (drift.feature == feature)
        drift.loc[at, ["statistic", "drifted", "p_value", "p_value_adjusted"]] = [0.2, True, 1e-9, 4e-9]
    data.drift = drift
    return data


def test_a_stable_small_volume_model_has_no_red_cells():
    pages = render_dashboard(small_volume_report())
    page = pages[model_page("small_model")]
    heat = figures_of(page)["drift"]["data"][0]
    cells = [v for row in heat["z"] for v in row]
    assert len(heat["y"]) == 4 and len(heat["x"]) == 30 and len(cells) == 120 and None not in cells  # none lost
    assert max(cells) < 1 and set(cells) == {round(math.log(0.4) / math.log(0.01), 2)}  # 0.2: green
    assert (heat["zmin"], heat["zmax"]) == (0, 2)
    texts = [t for row in heat["text"] for t in row]
    assert len(texts) == 120 and all(t == "ks 0.0335 p 0.4 vs 0.01: not drifted" for t in texts)
    assert "evidence of drift against the feature&#39;s own alert threshold" in page  # the legend says what it means
    assert "log(p) / log(threshold)" in page

    # One drifted cell is drawn red, and only that one.
    heat = figures_of(render_dashboard(small_volume_report(drifted_cell=(12, "age")))[model_page("small_model")]
                      )["drift"]["data"][0]
    red = [(f, d) for f, row in zip(heat["y"], heat["z"], strict=True) for d, v in zip(heat["x"], row, strict=True)
           if v > 1]
    assert red == [("age", "2026-10-13")]
    assert heat["z"][heat["y"].index("age")][12] == round(math.log(4e-9) / math.log(0.01), 2)  # 4.2


# ---------------------------------------------------------------------------------------------
# Status


def alert(day: str, model: str, check: str, severity: str) -> tuple:
    return (pd.Timestamp(day), model, check, severity, 1.0, 0.5, f"{check} failed", "open", "open", "")


ALERT_COLUMNS = ["partition_date", "model_id", "check_name", "severity", "value", "threshold", "message", "status",
                 "state", "state_note"]


def test_status_ranks_a_current_error_above_an_old_latency_spike():
    models = ["demand_forecaster", "fraud_detector", "quiet_model"]  # config order: the spike's model first
    data = tiny_report(models)
    data.performance = data.performance.iloc[0:0]
    days = pd.date_range("2026-10-01", "2026-10-30")
    data.performance = pd.DataFrame([(d, m, 0.8, 100.0, 0.001, 500, 1.0) for m in models for d in days],
                                    columns=data.performance.columns)
    data.alerts = pd.DataFrame(
        [alert(d, "fraud_detector", "demographic_parity_above_threshold", "ERROR")
         for d in ("2026-10-27", "2026-10-28", "2026-10-29", "2026-10-30")]
        + [alert("2026-10-14", "demand_forecaster", LATENCY_CHECK, "WARN"),
           alert("2026-10-14", "demand_forecaster", "error_rate_within_sla", "ERROR"),
           alert("2026-10-14", "quiet_model", LATENCY_CHECK, "WARN")], columns=ALERT_COLUMNS)
    summaries = {s["model_id"]: s for s in model_summaries(data)}
    assert {m: s["status"] for m, s in summaries.items()} == {
        "fraud_detector": "action needed", "demand_forecaster": "watch", "quiet_model": "healthy"}
    assert summaries["fraud_detector"]["why"] == \
        "4 open ERROR alert(s) in the last 7 days: demographic_parity_above_threshold"
    assert summaries["demand_forecaster"]["why"] == \
        "1 open ERROR alert(s), latest 2026-10-14, none in the last 7 days"
    assert summaries["quiet_model"]["why"] == "no open alerts in the last 7 days (1 older open WARN alert(s))"
    assert summaries["quiet_model"]["open_alert_count"] == 1  # still counted, not dropped

    index = render_dashboard(data)[INDEX_PAGE]
    rows = re.findall(r'<tr id="model-(\w+)".*?<span class="status (\w+)">([^<]+)</span>', index, re.S)
    assert rows == [("fraud_detector", "action", "action needed"), ("demand_forecaster", "watch", "watch"),
                    ("quiet_model", "healthy", "healthy")]  # worst first, a badge of its own
    assert "0 retrain suggested, 1 action needed,\n1 watch,\n1 healthy" in index


# ---------------------------------------------------------------------------------------------
# Champion


def switched_model(through: str) -> ReportData:
    """A model whose version 1 fell to AUC 0.48 (performance alerts) until version 2 took all traffic on
    10-28; labels lag a day."""
    data = tiny_report(["reco"])
    days = pd.date_range("2026-10-01", through)
    switch = pd.Timestamp("2026-10-28")
    perf = [(d, "reco", 0.48 if pd.Timestamp("2026-10-21") <= d < switch else (0.79 if d >= switch else 0.8),
             100.0, 0.001, 1000, 0.0 if d == days[-1] else 1.0) for d in days]
    data.performance = pd.DataFrame(perf, columns=data.performance.columns)
    data.alerts = pd.DataFrame([alert(str(d.date()), "reco", PERFORMANCE_CHECK, "ERROR")
                                for d in pd.date_range("2026-10-21", "2026-10-27") if d <= days[-1]],
                               columns=ALERT_COLUMNS)
    data.drift = data.drift.iloc[0:0]
    data.champions = pd.DataFrame([(d.date(), "reco", "v2" if d >= switch else "v1") for d in days],
                                  columns=["partition_date", "model_id", "model_version"])
    return data


def test_after_a_champion_switch_the_headline_and_status_follow_the_new_version():
    before = model_summaries(switched_model("2026-10-27"))[0]
    assert (before["status"], before["why"]) == ("retrain suggested", "performance below baseline on 2026-10-27 "
                                                 "(version v1)")
    assert (before["latest_main_metric"], before["main_metric_day"], before["champion_version"]) == (0.48, "2026-10-26", "v1")

    after = model_summaries(switched_model("2026-10-30"))[0]
    assert (after["champion_version"], after["champion_since"]) == ("v2", "2026-10-28")
    assert (after["latest_main_metric"], after["main_metric_day"]) == (0.79, "2026-10-29")  # not 0.48 of 10-27
    assert after["status"] == "watch"  # v1's alerts are open, but no longer drive the status
    assert after["why"] == "7 open ERROR alert(s), latest 2026-10-27, none since v2 became champion on 2026-10-28"
    assert after["trend_vs_previous_week"] is None  # v2 has no previous week
    page = render_dashboard(switched_model("2026-10-30"))[model_page("reco")]
    assert "<dd>v2 (since 2026-10-28; figures below from its days)</dd>" in page
    assert "<dd>0.79 on 2026-10-29 (baseline 0.8" in page


def test_demo_dashboard_and_prometheus_file_name_the_new_champion(demo_run, demo_db):
    """The demo's purchase_propensity: version 2026.10.1 takes all traffic from 10-28."""
    config, _ = demo_run
    model = "purchase_propensity"
    summaries = {s["model_id"]: s for s in json.loads((Path(config.reports_dir) / "model_summaries.json").read_text())}
    s = summaries[model]
    assert (s["champion_version"], s["champion_since"]) == ("2026.10.1", "2026-10-28")
    labelled = demo_db.execute("""SELECT max(partition_date)::VARCHAR FROM monitoring.performance_daily
                                  WHERE model_id = ? AND label_coverage >= 0.8 AND main_metric_value IS NOT NULL
                                  AND partition_date >= '2026-10-28'""", [model]).fetchall()[0][0]
    assert s["main_metric_day"] == labelled  # None while the new version has no day 80% labelled
    assert s["main_metric_day"] is None or s["main_metric_day"] >= "2026-10-28"
    # As of 10-27 the old version was champion, failing: retraining was the advice, on its own figure.
    then = {x["model_id"]: x for x in model_summaries(load_report_data(demo_db, config, dt.date(2026, 10, 27)))}[model]
    assert (then["status"], then["champion_version"], then["main_metric_day"]) == \
        ("retrain suggested", "2026.08.1", "2026-10-27")
    assert then["latest_main_metric"] < 0.5

    text = (export_folder(config) / TEXTFILE).read_text()
    info = {s.labels["model_id"]: s.labels for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "monitor_model_info"}
    assert (info[model]["version"], info[model]["champion_since"], info[model]["configured_version"]) == \
        ("2026.10.1", "2026-10-28", "2026.08.1")
    assert config.model(model).version == "2026.08.1"  # the config still names the old one
    assert len(info) == len(config.models) + len(config.rankers)  # rankers are listed too (task=ranking)
    # Its main metric is the new version's or absent, never the old version's 10-27 figure.
    mains = [s for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "monitor_main_metric" and s.labels["model_id"] == model]
    assert len(mains) == (0 if labelled is None else 1)


# ---------------------------------------------------------------------------------------------
# Numbers


def test_numbers_are_written_one_way():
    assert (_cell(115800.0), _cell(115800), _cell(3096), _cell(3096.0)) == ("115,800", "115,800", "3,096", "3,096")
    assert (_cell(0.0335), _cell(0.78123), _cell(1234.567), _cell(None), _cell(float("nan"))) == \
        ("0.0335", "0.7812", "1,235", "", "")
    data = tiny_report(["m"])
    # The quality table's sums come back as floats beside integer columns: the page once showed 1.158e+05.
    data.quality = pd.DataFrame({"partition_date": ["2026-10-01", "2026-10-01"], "source": ["interactions", "sales"],
                                 "records_read": [115800.0, 3096], "records_loaded": [115800.0, 3096],
                                 "records_quarantined": [0.0, 0]})
    index = render_dashboard(data)[INDEX_PAGE]
    assert "<td>interactions</td><td>115,800</td><td>115,800</td><td>0</td>" in index
    assert "<td>sales</td><td>3,096</td><td>3,096</td><td>0</td>" in index
    assert not re.search(r"\de[+-]\d", index)
