"""Dagster wiring of the Prometheus export: one asset after the alerts, writing the text file, the alert
rules and the Grafana dashboard into `<reports>/prometheus/`."""

import os
from pathlib import Path

import dagster as dg

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_REPORTING, OWNERS
from monitor_assets.export.grafana import write_dashboard
from monitor_assets.export.prometheus import export_metrics
from monitor_assets.export.rules import alert_rules, write_rules
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import IO_RETRY, daily_partitions, run_days

# Where node_exporter's textfile collector (or Prometheus' rule_files, Grafana's provisioning) reads from.
EXPORT_FOLDER = "prometheus"
PUSHGATEWAY_ENV = "MONITOR_PUSHGATEWAY"


def export_folder(config: MonitorConfig) -> Path:
    return Path(config.reports_dir) / EXPORT_FOLDER


def build_export_definitions(config: MonitorConfig) -> dg.Definitions:
    """The Prometheus/Grafana export, after the alerts."""

    @dg.asset(
        key=keys.PROMETHEUS_METRICS,
        description="The models' service levels for Prometheus and Grafana, for the latest day of the run: per "
                    "model (and version) volume, error rate, availability (requests served, hours with traffic), "
                    "latency p50/p95/p99, main metric against baseline, drift share, open alerts by severity, "
                    "retraining requests; per segment (models with `segments:`) the main metric against its floor "
                    "and each feature's drift; per ranker (task: ranking) its metrics on its latest fully labelled day "
                    "(monitor_ranking_metric), floor, label coverage and requests. Writes "
                    "prometheus/monitor_assets.prom (node_exporter's textfile collector; pushed to $MONITOR_PUSHGATEWAY too when set), monitor_assets.rules.yml (alert "
                    "rules from the config's thresholds) and grafana_dashboard.json in the reports folder.",
        group_name=GROUP_REPORTING, kinds={"prometheus", "grafana"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, pool=DUCKDB_POOL,
        deps=[keys.ALERTS, *([keys.RANKING_PERFORMANCE] if config.rankers else [])],
    )
    def prometheus_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        day = max(run_days(context))
        folder = export_folder(config)
        pushgateway = os.environ.get(PUSHGATEWAY_ENV) or None
        with warehouse.connect() as con:
            result = export_metrics(con, config, day, folder, pushgateway=pushgateway)
        rules = write_rules(config, folder)
        dashboard = write_dashboard(folder)
        # The URL is not logged: it may carry credentials.
        context.log.info(f"{result.series} series for {day} in {result.path}"
                         + (f", pushed to the Pushgateway of ${PUSHGATEWAY_ENV}" if pushgateway else ""))
        return dg.MaterializeResult(metadata={
            "day": str(day),
            "series": result.series,
            "alert_rules": sum(len(g["rules"]) for g in alert_rules(config)["groups"]),
            "pushed_to_pushgateway": bool(pushgateway),
            "path": dg.MetadataValue.path(str(result.path)),
            "rules_path": dg.MetadataValue.path(str(rules)),
            "grafana_dashboard": dg.MetadataValue.path(str(dashboard)),
        })

    return dg.Definitions(assets=[prometheus_metrics])
