"""Prometheus alert rules over the exported series, generated from the config's thresholds.

One rule per check and distinct (threshold, severity): models sharing a threshold share a rule through a
`model_id=~"..."` matcher, so hundreds of models with default thresholds are still a handful of rules.
Thresholds are the config's (`thresholds` and each model's overrides); severities are the config's
(`thresholds.severity`), WARN becoming Prometheus' `warning` and ERROR `critical`.

- latency p95 above `latency_p95_ms` (the file holds seconds: the threshold is divided by 1000);
- error rate above `error_rate`;
- availability below `AVAILABILITY_OBJECTIVE` (99.9%) of the day's hours with traffic: a model that served
  nothing for an hour of the day. The request-level availability is 1 - error rate, which the error-rate
  rule already bounds; a 99.9% objective on requests would fire every day on a model whose error SLA is 1%.
  A model's `thresholds.availability` is used where the config has one;
- main metric below `min_metric_ratio` of its reference baseline (monitor_main_metric_ratio, oriented so
  that lower is worse for every metric);
- the export itself going stale (no new file for `STALE_AFTER_SECONDS`).

Plain Python: no Dagster here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.constants import ERROR_RATE_CHECK, LATENCY_CHECK, PERFORMANCE_CHECK, VOLUME_CHECK
from monitor_assets.export.prometheus import PREFIX

RULES_FILE = "monitor_assets.rules.yml"
GROUP = "monitor_assets"
AVAILABILITY_OBJECTIVE = 0.999
STALE_AFTER_SECONDS = 2 * 86400  # the daily schedule runs once a day; two missed days are worth a page
PROMETHEUS_SEVERITY = {"WARN": "warning", "ERROR": "critical"}
RE2_SPECIAL = set("\\.+*?()|[]{}^$")


def _regex_literal(text: str) -> str:
    """`text` as an RE2 regex matching exactly it (Prometheus anchors label regexes itself)."""
    return "".join("\\" + c if c in RE2_SPECIAL else c for c in text)


def promql_string(text: str) -> str:
    """A double-quoted PromQL string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_matcher(model_ids: list[str]) -> str:
    """A label matcher selecting exactly these models."""
    if len(model_ids) == 1:
        return f"model_id={promql_string(model_ids[0])}"
    return f"model_id=~{promql_string('|'.join(_regex_literal(m) for m in sorted(model_ids)))}"


def availability_objective(model: ModelConfig) -> float:
    return float(getattr(model.thresholds, "availability", None) or AVAILABILITY_OBJECTIVE)


# check -> (alert name, series and extra matchers, comparison, threshold of a model, check whose severity,
#           summary, description); the series' value is $value in the texts.
RuleSpec = tuple[str, str, str, str, Callable[[ModelConfig], float], str, str, str]
RULES: tuple[RuleSpec, ...] = (
    ("latency_p95", "ModelLatencyP95AboveSLA", "latency_seconds", 'percentile="95"',
     lambda m: m.thresholds.latency_p95_ms / 1000, LATENCY_CHECK,
     "{{ $labels.model_id }}: latency p95 above its SLA",
     "Latency p95 of {{ $labels.model_id }} was {{ $value | humanizeDuration }} on the day exported; "
     "SLA: {threshold_text}."),
    ("error_rate", "ModelErrorRateAboveSLA", "error_ratio", "",
     lambda m: m.thresholds.error_rate, ERROR_RATE_CHECK,
     "{{ $labels.model_id }}: error rate above its SLA",
     "{{ $value | humanizePercentage }} of the requests of {{ $labels.model_id }} failed on the day exported; "
     "SLA: {threshold_text}."),
    ("availability", "ModelAvailabilityBelowObjective", "availability_ratio", 'basis="hours"',
     availability_objective, VOLUME_CHECK,
     "{{ $labels.model_id }}: hours without traffic",
     "{{ $labels.model_id }} served requests in {{ $value | humanizePercentage }} of the day's hours; "
     "objective: {threshold_text}."),
    ("main_metric", "ModelMainMetricBelowBaseline", "main_metric_ratio", "",
     lambda m: m.thresholds.min_metric_ratio, PERFORMANCE_CHECK,
     "{{ $labels.model_id }}: {{ $labels.metric }} below its baseline",
     "{{ $labels.metric }} of {{ $labels.model_id }} is at {{ $value | humanizePercentage }} of its reference "
     "baseline on its latest labelled day; threshold: {threshold_text}."),
)
ABOVE = {"latency_p95", "error_rate"}  # the others fire below their threshold


def _threshold_text(key: str, value: float) -> str:
    if key == "latency_p95":
        return f"{value * 1000:g} ms"
    if key == "main_metric":
        return f"{value * 100:g}% of baseline"
    return f"{value * 100:g}%"


def alert_rules(config: MonitorConfig) -> dict:
    """The rules file as a mapping (Prometheus' `groups:` format)."""
    rules = []
    for key, alert, series, extra, threshold_of, check, summary, description in RULES:
        groups: dict[tuple[float, str], list[str]] = defaultdict(list)
        for model in config.models:
            groups[(float(threshold_of(model)), model.severity(check))].append(model.id)
        for (threshold, level), models in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1])):
            matchers = ",".join(part for part in (extra, model_matcher(models)) if part)
            op = ">" if key in ABOVE else "<"
            rules.append({
                "alert": alert,
                "expr": f"{PREFIX}{series}{{{matchers}}} {op} {threshold:g}",
                "labels": {"severity": PROMETHEUS_SEVERITY[level], "check": check, "team": "mlops"},
                "annotations": {"summary": summary,
                                "description": description.replace("{threshold_text}",
                                                                   _threshold_text(key, threshold))},
            })
    rules.append({
        "alert": "ModelMonitoringExportStale",
        "expr": f"time() - {PREFIX}export_timestamp_seconds > {STALE_AFTER_SECONDS}",
        "labels": {"severity": "warning", "team": "mlops"},
        "annotations": {"summary": "monitor_assets has not exported new figures",
                        "description": "The last export is {{ $value | humanizeDuration }} old: is the daily "
                                       "monitoring schedule running?"},
    })
    return {"groups": [{"name": GROUP, "rules": rules}]}


def write_rules(config: MonitorConfig, folder: str | Path) -> Path:
    """Write `<folder>/monitor_assets.rules.yml` (temporary file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RULES_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("# Generated by monitor_assets from " + str(config.file) + ": do not edit.\n"
                   + yaml.safe_dump(alert_rules(config), sort_keys=False, width=120))
    tmp.replace(path)
    return path
