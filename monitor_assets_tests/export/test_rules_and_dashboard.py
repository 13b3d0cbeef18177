"""Alert rules generated from the config's thresholds, the Grafana dashboard over the exported series, and
Prometheus' own promtool (Debian's `prometheus` package) on the files the demo run wrote: its linter on
the metrics, its rule checker, and its rule unit tests evaluating the rules on the exported values."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from monitor_assets.config import load_config
from monitor_assets.constants import ERROR_RATE_CHECK, LATENCY_CHECK, PERFORMANCE_CHECK, VOLUME_CHECK
from monitor_assets.export.defs import export_folder
from monitor_assets.export.grafana import DASHBOARD_FILE
from monitor_assets.export.prometheus import TEXTFILE, export_metrics
from monitor_assets.export.rules import AVAILABILITY_OBJECTIVE, RULES_FILE, alert_rules, model_matcher

PROMETHEUS_SEVERITY = {"WARN": "warning", "ERROR": "critical"}
# alert -> (series, extra matcher, comparison, threshold of a model, check whose severity applies)
EXPECTED = {
    "ModelLatencyP95AboveSLA": ("monitor_latency_seconds", 'percentile="95"', ">",
                                lambda m: m.thresholds.latency_p95_ms / 1000, LATENCY_CHECK),
    "ModelErrorRateAboveSLA": ("monitor_error_ratio", "", ">", lambda m: m.thresholds.error_rate, ERROR_RATE_CHECK),
    "ModelAvailabilityBelowObjective": ("monitor_availability_ratio", 'basis="hours"', "<",
                                        lambda m: AVAILABILITY_OBJECTIVE, VOLUME_CHECK),
    "ModelMainMetricBelowBaseline": ("monitor_main_metric_ratio", "", "<",
                                     lambda m: m.thresholds.min_metric_ratio, PERFORMANCE_CHECK),
}
RULE_EXPR = re.compile(r'^(?P<series>\w+)\{(?P<matchers>.*)\} (?P<op>[<>]) (?P<threshold>\S+)$')
MATCHER = re.compile(r'model_id(?P<op>=~?)"(?P<value>(?:[^"\\]|\\.)*)"')


def models_of(matchers: str, model_ids: list[str]) -> set[str]:
    """The models a rule's model_id matcher selects, evaluated as Prometheus does (anchored regex)."""
    found = MATCHER.search(matchers)
    text = found["value"].encode().decode("unicode_escape")  # the PromQL string literal's value
    if found["op"] == "=":
        return {m for m in model_ids if m == text}
    return {m for m in model_ids if re.fullmatch(text, m)}


def render(template: str, labels: dict, value: float) -> str:
    """An annotation as Prometheus expands it, for the template functions the rules use on ratios."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], template)
    text = text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")  # Go's %.4g
    assert "{{" not in text, f"no expected rendering for {text!r}"
    return text


def check_rules_match_config(rules: dict, config) -> None:
    """Every model has exactly one rule per alert, with its own threshold and severity from the config."""
    by_alert: dict[str, list[dict]] = {}
    for rule in rules["groups"][0]["rules"]:
        by_alert.setdefault(rule["alert"], []).append(rule)
    assert set(EXPECTED) <= set(by_alert)
    for alert, (series, extra, op, threshold_of, check) in EXPECTED.items():
        covered: list[str] = []
        for rule in by_alert[alert]:
            parsed = RULE_EXPR.match(rule["expr"])
            assert parsed, rule["expr"]
            assert (parsed["series"], parsed["op"]) == (series, op)
            assert extra in parsed["matchers"]
            models = models_of(parsed["matchers"], config.model_ids)
            assert models, rule["expr"]
            covered += models
            for m in models:
                model = config.model(m)
                assert float(parsed["threshold"]) == pytest.approx(threshold_of(model), rel=1e-12), (alert, m)
                assert rule["labels"]["severity"] == PROMETHEUS_SEVERITY[model.severity(check)], (alert, m)
        assert sorted(covered) == sorted(config.model_ids), alert


def test_rules_from_the_demo_run_hold_the_configs_thresholds(demo_run):
    config, _ = demo_run
    path = export_folder(config) / RULES_FILE
    rules = yaml.safe_load(path.read_text())
    assert rules == alert_rules(config)
    check_rules_match_config(rules, config)
    # The demo's values: 500 ms, 1%, 95% of baseline, one rule each (every model has the defaults).
    exprs = {r["alert"]: r["expr"] for r in rules["groups"][0]["rules"]}
    assert exprs["ModelLatencyP95AboveSLA"].endswith("> 0.5")
    assert exprs["ModelErrorRateAboveSLA"].endswith("> 0.01")
    assert exprs["ModelMainMetricBelowBaseline"].endswith("< 0.95")
    assert exprs["ModelAvailabilityBelowObjective"].endswith("< 0.999")


def test_models_with_their_own_thresholds_and_odd_ids_get_their_own_rules():
    base = load_config()
    fraud, reco, demand = base.models[:3]
    models = (
        replace(fraud, id="fraud.eu|1 (canary)", thresholds=replace(fraud.thresholds, latency_p95_ms=120.0,
                                                                    severity={LATENCY_CHECK: "ERROR"})),
        replace(reco, id='reco "v2"'),
        replace(demand, thresholds=replace(demand.thresholds, min_metric_ratio=0.9, error_rate=0.02)),
    )
    config = replace(base, models=models)
    rules = alert_rules(config)
    check_rules_match_config(rules, config)
    latency = [r for r in rules["groups"][0]["rules"] if r["alert"] == "ModelLatencyP95AboveSLA"]
    assert sorted((r["expr"].rsplit(" ", 1)[1], r["labels"]["severity"]) for r in latency) == [
        ("0.12", "critical"), ("0.5", "warning")]
    assert model_matcher(["a.b", "c"]) == 'model_id=~"a\\\\.b|c"'


def test_grafana_dashboard_queries_only_exported_series(demo_run):
    config, _ = demo_run
    folder = export_folder(config)
    board = json.loads((folder / DASHBOARD_FILE).read_text())
    exported = {f.name for f in text_string_to_metric_families((folder / TEXTFILE).read_text())}
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["model"]["query"]["query"] == "label_values(monitor_model_info, model_id)"
    assert variables["model"]["multi"] and variables["datasource"]["query"] == "prometheus"
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bmonitor_[a-z0-9_]+", e)}
    assert used <= exported, used - exported
    # Every per-model series of the file is on the dashboard, filtered by the model variable.
    per_model = {f.name for f in text_string_to_metric_families((folder / TEXTFILE).read_text())
                 if any("model_id" in s.labels for s in f.samples)} - {"monitor_model_info"}
    assert per_model <= used, per_model - used
    assert all('model_id=~"$model"' in e for e in exprs if re.search(r"\bmonitor_(?!export|day_)", e))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian's `prometheus` package)")


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd)


@needs_promtool
def test_promtool_checks_the_metrics_and_rules_of_the_demo_run(demo_run):
    config, _ = demo_run
    folder = export_folder(config)
    text = (folder / TEXTFILE).read_text()
    # the demo's segmented models put their segments' series in the file the linter reads
    assert {"monitor_segment_main_metric", "monitor_segment_main_metric_floor", "monitor_segment_below_floor",
            "monitor_segment_day_timestamp_seconds", "monitor_segment_drift_evidence",
            "monitor_segment_drifted_features"} <= {f.name for f in text_string_to_metric_families(text)}
    metrics = promtool("check", "metrics", stdin=text)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr  # the linter: names, units, help texts
    rules = promtool("check", "rules", str(folder / RULES_FILE))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules(config)['groups'][0]['rules'])} rules found" in rules.stdout


@needs_promtool
def test_promtool_evaluates_the_rules_on_the_exported_values(demo_run, demo_db, tmp_path):
    """Prometheus' rule engine, fed the exported series as constant series, fires exactly the alerts the
    config's thresholds imply for the exported values (an export of 2026-10-27, the concept drift's last day
    before the retrained purchase_propensity took over)."""
    config, _ = demo_run
    folder = export_folder(config)
    exported = export_metrics(demo_db, config, dt.date(2026, 10, 27), tmp_path / "export").path
    families = list(text_string_to_metric_families(exported.read_text()))
    # The export is fresh at the rule evaluation's time 0: shift the timestamp series to 0.
    series = []
    for f in families:
        for s in f.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            v = 0.0 if s.name == "monitor_export_timestamp_seconds" else s.value
            series.append({"series": f"{s.name}{{{labels}}}", "values": f"{v!r}x10"})
    values = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    annotations = {r["alert"]: r["annotations"] for r in alert_rules(config)["groups"][0]["rules"]}
    expected: dict[str, list[dict]] = {}
    for alert, (name, extra, op, threshold_of, check) in EXPECTED.items():
        key, wanted = (extra.split("=")[0], extra.split('"')[1]) if extra else (None, None)
        for (n, labels), v in values.items():
            labels = dict(labels)
            if n != name or (key and labels.get(key) != wanted):
                continue
            model = config.model(labels["model_id"])
            threshold = threshold_of(model)
            if (v > threshold) if op == ">" else (v < threshold):
                expected.setdefault(alert, []).append({
                    "exp_labels": {**labels, "severity": PROMETHEUS_SEVERITY[model.severity(check)],
                                   "check": check, "team": "mlops"},
                    "exp_annotations": {k: render(t, labels, v) for k, t in annotations[alert].items()}})
    # 2026-10-27: purchase_propensity's ROC AUC is far below its baseline.
    assert any(a["exp_labels"]["model_id"] == "purchase_propensity"
               for a in expected["ModelMainMetricBelowBaseline"])
    alerts = [{"eval_time": "5m", "alertname": alert, "exp_alerts": expected.get(alert, [])}
              for alert in [*EXPECTED, "ModelMonitoringExportStale"]]
    shutil.copy(folder / RULES_FILE, tmp_path / RULES_FILE)
    test = {"rule_files": [RULES_FILE], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alerts}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
