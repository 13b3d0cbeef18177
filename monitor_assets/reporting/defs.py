"""The dashboard (index, a page per model, shared plotly.js) and the per-model summaries, regenerated on
every run."""

import json
from pathlib import Path

import dagster as dg

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_REPORTING, OWNERS
from monitor_assets.reporting.dashboard import (
    build_dashboard,
    load_report_data,
    model_summaries,
    ranker_summaries,
    summaries_markdown,
)
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import daily_partitions, frame_markdown, run_days

# The dashboard shows the retraining state too, so it is drawn after retraining's assets.
DASHBOARD_AFTER = (keys.MODEL_VERSIONS, keys.RETRAINING_TRIGGER, keys.VERSION_COMPARISON, keys.DRIFT_DISTRIBUTIONS)


def build_reporting_definitions(config: MonitorConfig) -> dg.Definitions:
    """The per-model summaries and the dashboard, after the alerts."""
    partitions = daily_partitions(config)

    @dg.asset(
        key=keys.MODEL_PERFORMANCE_SUMMARY,
        description="Per model: status by its most severe current problem (retrain suggested / action needed: "
                    "an ERROR alert in the last 7 days / watch / healthy), the current champion version and its "
                    "main metric with the trend against the previous week, most drifted features and open alerts, "
                    "written as model_summaries.md and model_summaries.json in the reports folder.",
        group_name=GROUP_REPORTING, kinds={"python", "markdown"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), deps=[keys.ALERTS],
    )
    def model_performance_summary(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        with warehouse.connect() as con:
            data = load_report_data(con, config, max(run_days(context)))
        summaries = model_summaries(data)
        folder = Path(config.reports_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model_summaries.json").write_text(json.dumps(summaries, indent=2, default=str))
        (folder / "model_summaries.md").write_text(summaries_markdown(summaries))
        import pandas as pd

        table = pd.DataFrame([{k: s[k] for k in ("model_id", "recommendation", "why", "champion_version",
                                                 "latest_main_metric", "baseline", "open_alert_count")}
                              for s in summaries])
        return dg.MaterializeResult(metadata={
            "summary": dg.MetadataValue.md(frame_markdown(table)),
            "models_needing_retraining": sum(s["recommendation"] == "retrain suggested" for s in summaries),
            "models_needing_action": sum(s["recommendation"] == "action needed" for s in summaries),
            "open_alerts": sum(s["open_alert_count"] for s in [*summaries, *ranker_summaries(data)]),
            "path": dg.MetadataValue.path(str(folder / "model_summaries.md")),
        })

    @dg.asset(
        key=keys.MONITORING_DASHBOARD,
        description="The HTML dashboard, offline from file://: dashboard.html lists every model (status, why, "
                    "main metric against baseline, open / acknowledged / silenced alerts, latency p95, error rate, "
                    "volume, a sparkline), sortable and filterable, plus the data-quality summary; "
                    "models/<model>.html holds each model's time series with thresholds and alert markers, "
                    "feature x day drift heatmap, the reference against the day's distribution of each drifted feature "
                    "(a menu of its drift days), selection rate by group, the worst segments first (segmented models) "
                    "and its alerts; a ranker (task: ranking) has a row in the index's Ranking models and a page with "
                    "its main metric against its floor, NDCG at each k, popularity concentration, catalogue and "
                    "label coverage. plotly.js is written "
                    "once to assets/plotly.min.js in the reports folder.",
        group_name=GROUP_REPORTING, kinds={"html", "plotly"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[keys.ALERTS, keys.MODEL_PERFORMANCE_SUMMARY, *DASHBOARD_AFTER,
              *([keys.RANKING_PERFORMANCE] if config.rankers else [])],
    )
    def monitoring_dashboard(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        with warehouse.connect() as con:
            data = load_report_data(con, config, max(run_days(context)))
        dashboard = build_dashboard(data, config.reports_dir, title="Model monitoring")
        open_alerts = data.alerts[data.alerts.status == "open"]
        return dg.MaterializeResult(metadata={
            "path": dg.MetadataValue.path(str(dashboard.index)),
            "size_mb": round(dashboard.index.stat().st_size / 1e6, 2),
            "model_pages": len(dashboard.model_pages),
            "largest_model_page_mb": round(dashboard.largest_model_page_bytes / 1e6, 2),
            "open_alerts": len(open_alerts),  # as before: acknowledged and silenced ones are still open
            "unhandled_alerts": int((open_alerts.state == "open").sum()),
            "acknowledged_alerts": int((open_alerts.state == "acknowledged").sum()),
            "silenced_alerts": int((open_alerts.state == "silenced").sum()),
        })

    return dg.Definitions(assets=[model_performance_summary, monitoring_dashboard])
