"""A Grafana dashboard over the exported series, with a `model` variable (from monitor_model_info) and a
Prometheus data source variable, importable as is (Dashboards → New → Import, or file provisioning).

Plain Python: the dashboard is built as a mapping and written as JSON; no Dagster here.
"""

from __future__ import annotations

import json
from pathlib import Path

from monitor_assets.export.prometheus import PREFIX

DASHBOARD_FILE = "grafana_dashboard.json"
UID = "monitor-assets-models"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model_id=~"$model"'


def _target(expr: str, legend: str, ref: str = "A") -> dict:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(pid: int, title: str, kind: str, targets: list[dict], grid: tuple[int, int, int, int],
           unit: str = "short", description: str = "", thresholds: list[tuple[float | None, str]] | None = None,
           **options) -> dict:
    x, y, w, h = grid
    steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
    return {
        "id": pid, "title": title, "type": kind, "description": description, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
                        "overrides": []},
        "options": options,
    }


def dashboard() -> dict:
    """The dashboard JSON as a mapping. Series are daily figures: panels plot them over time with steps."""
    m = PREFIX
    panels = [
        _panel(1, "Open alerts by severity", "stat",
               [_target(f'sum by (severity) ({m}open_alerts{{{MODEL}}})', "{{severity}}")], (0, 0, 6, 4),
               thresholds=[(None, "green"), (1, "red")], description="Open alerts up to the exported day, "
               "acknowledged and silenced ones included (state label)."),
        _panel(2, "Retraining requests", "stat",
               [_target(f'sum by (status) ({m}retraining_requests{{{MODEL}}})', "{{status}}")], (6, 0, 6, 4)),
        _panel(3, "Age of the export", "stat",
               [_target(f"time() - {m}export_timestamp_seconds", "age")], (12, 0, 6, 4), unit="s",
               thresholds=[(None, "green"), (129600, "orange"), (172800, "red")],
               description="Seconds since monitor_assets last wrote its figures (the daily run)."),
        _panel(4, "Day exported", "stat",
               [_target(f"{m}day_timestamp_seconds * 1000", "day")], (18, 0, 6, 4), unit="dateTimeAsIsoNoDateIfToday"),
        _panel(5, "Predictions per day", "timeseries",
               [_target(f"{m}daily_predictions{{{MODEL}}}", "{{model_id}}")], (0, 4, 12, 8)),
        _panel(6, "Error rate", "timeseries",
               [_target(f"{m}error_ratio{{{MODEL}}}", "{{model_id}}")], (12, 4, 12, 8), unit="percentunit"),
        _panel(7, "Availability", "timeseries",
               [_target(f"{m}availability_ratio{{{MODEL}}}", "{{model_id}} ({{basis}})")], (0, 12, 12, 8),
               unit="percentunit", thresholds=[(None, "red"), (0.999, "green")],
               description="basis=requests: share served without error; basis=hours: share of the day's hours "
                           "with traffic."),
        _panel(8, "Latency", "timeseries",
               [_target(f"{m}latency_seconds{{{MODEL}}}", "{{model_id}} p{{percentile}}")], (12, 12, 12, 8),
               unit="s"),
        _panel(9, "Main metric against its baseline", "timeseries",
               [_target(f"{m}main_metric_ratio{{{MODEL}}}", "{{model_id}} {{metric}}")], (0, 20, 12, 8),
               unit="percentunit", thresholds=[(None, "red"), (0.95, "green")],
               description="1 = as good as on the reference set; lower is worse for every metric."),
        _panel(10, "Main metric", "timeseries",
               [_target(f"{m}main_metric{{{MODEL}}}", "{{model_id}} {{metric}}"),
                _target(f"{m}main_metric_baseline{{{MODEL}}}", "{{model_id}} {{metric}} baseline")],
               (12, 20, 12, 8)),
        _panel(11, "Drift share", "timeseries",
               [_target(f"{m}drift_share_ratio{{{MODEL}}}", "{{model_id}}")], (0, 28, 12, 8), unit="percentunit"),
        _panel(12, "Label coverage", "timeseries",
               [_target(f"{m}label_coverage_ratio{{{MODEL}}}", "{{model_id}}")], (12, 28, 12, 8),
               unit="percentunit"),
        _panel(13, "Per model version", "table",
               [_target(f"{m}version_daily_predictions{{{MODEL}}}", "predictions"),
                _target(f"{m}version_error_ratio{{{MODEL}}}", "error rate"),
                _target(f'{m}version_latency_seconds{{{MODEL},percentile="95"}}', "latency p95"),
                _target(f"{m}version_main_metric{{{MODEL}}}", "main metric")],
               (0, 36, 24, 8), description="The latest day's figures per model version (canary against stable)."),
        _panel(14, "Day of the main metric", "stat",
               [_target(f"{m}main_metric_day_timestamp_seconds{{{MODEL}}} * 1000", "{{model_id}}")], (0, 44, 24, 4),
               unit="dateTimeAsIso", description="The latest day with labels on at least 80% of served requests: "
               "the day monitor_main_metric describes (labels arrive late)."),
        # The main metric only: the estimates of every metric joined with each model's main_metric label.
        _panel(15, "Main metric estimated before labels", "timeseries",
               [_target(f"{m}estimated_performance{{{MODEL}}} and on (model_id, metric) "
                        f'label_replace({m}model_info{{{MODEL}}}, "metric", "$1", "main_metric", "(.*)")',
                        "{{model_id}} {{metric}} {{bound}}")], (0, 48, 12, 8),
               description="The estimate from the day's scores alone and its 95% band (bound=lower, upper), on "
                           "the latest estimated day; it does not wait for labels."),
        _panel(16, "Estimate's band held", "timeseries",
               [_target(f"{m}estimated_band_coverage_ratio{{{MODEL}}}", "{{model_id}} {{metric}}")], (12, 48, 12, 8),
               unit="percentunit", thresholds=[(None, "orange"), (0.9, "green")],
               description="Share of the days whose labels have landed on which the realized value fell inside "
                           "the estimate's 95% band."),
        _panel(17, "Estimates: day and reconciled days", "table",
               [_target(f"{m}estimated_performance_day_timestamp_seconds{{{MODEL}}} * 1000", "estimated day"),
                _target(f"{m}estimated_band_reconciled{{{MODEL}}}", "reconciled days")], (0, 56, 24, 6),
               description="Per model and metric: the day the estimate describes, and over how many reconciled "
                           "days the band's share is."),
        # Rankers (task=ranking): their own metrics, on the latest day whose interactions are all read.
        _panel(18, "Ranker: main metric against its floor", "timeseries",
               [_target(f"{m}ranking_metric{{{MODEL}}} and on (model_id, metric) "
                        f"{m}ranking_main_metric_floor{{{MODEL}}}", "{{model_id}} {{metric}}"),
                _target(f"{m}ranking_main_metric_floor{{{MODEL}}}", "{{model_id}} {{metric}} floor"),
                _target(f"{m}ranking_main_metric_baseline{{{MODEL}}}", "{{model_id}} {{metric}} reference")],
               (0, 62, 12, 8), description="The ranker's main metric on its latest fully labelled day, its floor "
               "(min_metric_ratio x the reference) and its reference value."),
        _panel(19, "Ranker: NDCG at each cut-off", "timeseries",
               [_target(f'{m}ranking_metric{{{MODEL},metric=~"ndcg_at_.*"}}', "{{model_id}} {{metric}}")],
               (12, 62, 12, 8)),
        _panel(20, "Ranker: popularity concentration and catalogue coverage", "timeseries",
               [_target(f'{m}ranking_metric{{{MODEL},metric=~"popularity_concentration|catalogue_coverage"}}',
                        "{{model_id}} {{metric}}")], (0, 70, 12, 8), unit="percentunit",
               description="popularity_concentration: share of impressions going to the top 1% of items (a "
                           "collapse onto a few items raises it); catalogue_coverage: share of the catalogue shown."),
        _panel(21, "Ranker: requests and label coverage", "timeseries",
               [_target(f"{m}ranking_requests{{{MODEL}}}", "{{model_id}} requests"),
                _target(f"{m}ranking_label_coverage_ratio{{{MODEL}}}", "{{model_id}} label coverage")],
               (12, 70, 12, 8), description="Requests on the exported day; share of the metric day's requests "
               "with an interaction."),
        _panel(22, "Ranker: day of the ranking metrics", "stat",
               [_target(f"{m}ranking_day_timestamp_seconds{{{MODEL}}} * 1000", "{{model_id}}")], (0, 78, 24, 4),
               unit="dateTimeAsIso", description="The latest day whose interactions (labels) are all read."),
        # Segments (models with `segments:`): performance on the latest tested day, drift on the exported day.
        _panel(23, "Segments below their floor", "timeseries",
               [_target(f"sum by (model_id) ({m}segment_below_floor{{{MODEL}}})", "{{model_id}}")], (0, 82, 12, 8),
               description="Segments whose main metric is below their floor beyond chance (adjusted across the "
                           "model-day's segments), on the model's latest day with a tested segment."),
        _panel(24, "Segments with drifted features", "timeseries",
               [_target(f"count by (model_id) ({m}segment_drifted_features{{{MODEL}}} > 0)", "{{model_id}}")],
               (12, 82, 12, 8), description="Segments with at least one drifted feature on the exported day (false "
               "alarms controlled across the model-day's segments and features)."),
        _panel(25, "Segments: main metric against its floor", "table",
               [_target(f"{m}segment_main_metric{{{MODEL}}}", "main metric"),
                _target(f"{m}segment_main_metric_floor{{{MODEL}}}", "floor"),
                _target(f"{m}segment_below_floor{{{MODEL}}}", "below floor"),
                _target(f"{m}segment_day_timestamp_seconds{{{MODEL}}} * 1000", "day")], (0, 90, 24, 8),
               description="Each tested segment on its model's latest day with a tested segment (labels arrive "
                           "late: the day column says which)."),
        _panel(26, "Segments: most drifted features", "table",
               [_target(f"topk(20, {m}segment_drift_evidence{{{MODEL}}})", "evidence"),
                _target(f"{m}segment_drifted_features{{{MODEL}}} > 0", "drifted features")], (0, 98, 24, 8),
               description="The exported day's strongest segment-feature drift (statistic over threshold, 1 = at "
                           "the threshold) and the segments with drifted features."),
    ]
    for panel in (panels[12], panels[16], panels[24], panels[25]):
        for target in panel["targets"]:
            target.update(instant=True, format="table")
    return {
        "uid": UID, "title": "ML models: service levels", "tags": ["monitor_assets", "mlops"],
        "timezone": "utc", "schemaVersion": 39, "version": 1, "editable": True, "refresh": "5m",
        "time": {"from": "now-30d", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            {"name": "model", "label": "Model", "type": "query", "datasource": DATASOURCE,
             "query": {"query": f"label_values({m}model_info, model_id)", "refId": "model"},
             "definition": f"label_values({m}model_info, model_id)", "refresh": 2, "multi": True,
             "includeAll": True, "current": {"text": "All", "value": "$__all"}, "sort": 1},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def write_dashboard(folder: str | Path) -> Path:
    """Write `<folder>/grafana_dashboard.json` (temporary file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DASHBOARD_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dashboard(), indent=2) + "\n")
    tmp.replace(path)
    return path
