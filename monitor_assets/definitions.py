"""The one entry point: builds every asset, check, job, schedule and sensor from the monitoring config.

The config comes from $MONITOR_CONFIG (default: the bundled demo's) and is validated here, so a wrong
config fails when the code location loads, before any run starts.
"""

from __future__ import annotations

import dagster as dg

from monitor_assets.alerting.defs import build_alerting_assets
from monitor_assets.analysis.defs import build_analysis_assets
from monitor_assets.config import MonitorConfig, load_config
from monitor_assets.export.defs import build_export_assets
from monitor_assets.history.defs import build_history_asset
from monitor_assets.ingestion.defs import build_ingestion_assets, build_quality_checks
from monitor_assets.metrics.defs import build_metrics_assets
from monitor_assets.notify.defs import build_alert_action_jobs, build_sensors
from monitor_assets.reporting.defs import build_reporting_assets
from monitor_assets.retraining.defs import build_retraining_assets, build_retraining_jobs
from monitor_assets.storage.defs import build_storage_definitions
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import daily_partitions

MONITORING_JOB = "monitoring_job"
# The same pipeline cut for shards (`run_pipeline --shards N`): each shard's runs (tag monitor_assets/shard
# "i/N") handle its models, first the predictions and reference profiles of every shard, then labels (matched
# to any shard's predictions, so after all of them) and the per-model figures; then one fleet run does the
# rest for every model (alerts, dashboard, history, retraining, export).
SHARD_JOBS = ("shard_ingest_job", "shard_analysis_job")
FLEET_JOB = "fleet_job"


def build_definitions(config: MonitorConfig) -> dg.Definitions:
    ingestion = build_ingestion_assets(config)
    keys = {a.key.path[-1]: a.key for a in ingestion}
    metrics = build_metrics_assets(config, keys["predictions"], keys["labels"],
                                   keys.get("interactions"), keys.get("sales"))
    analysis = build_analysis_assets(config, keys["predictions"], keys["labels"])
    upstream = {a.key.path[-1]: a.key for a in [*metrics, *analysis] if a.key.path[-1] != "reference_profiles"}
    history = build_history_asset(config, upstream)
    alerting, threshold_checks = build_alerting_assets(config, {**upstream, "history": history.key})
    retraining, retraining_checks = build_retraining_assets(config, keys["predictions"], keys["labels"])
    checks = [*build_quality_checks(config, keys["predictions"]), *threshold_checks, *retraining_checks]
    reporting = build_reporting_assets(config, alerting[-1].key, after=[a.key for a in retraining])
    export = build_export_assets(config, [alerting[-1].key])
    assets = [*ingestion, *metrics, *analysis, history, *alerting, *retraining, *reporting, *export]

    job = dg.define_asset_job(MONITORING_JOB, selection=dg.AssetSelection.assets(*assets).without_checks()
                              | dg.AssetSelection.checks(*checks),
                              partitions_def=daily_partitions(config),
                              description="The daily monitoring pipeline for every configured model.")
    ingest_keys = [keys["predictions"], dg.AssetKey(["monitoring", "reference_profiles"])]
    analysis_keys = [keys["labels"], *(a.key for a in [*metrics, *analysis]
                                       if a.key.path[-1] in ("performance_daily", "feature_drift", "fairness"))]
    quality_checks = [c for c in checks if keys["predictions"] in {k.asset_key for k in c.check_keys}]
    shard_ingest = dg.define_asset_job(
        SHARD_JOBS[0], selection=dg.AssetSelection.assets(*ingest_keys).without_checks()
        | dg.AssetSelection.checks(*quality_checks), partitions_def=daily_partitions(config),
        description="One shard's models (run tag monitor_assets/shard = i/N): predictions and reference profiles.")
    shard_analysis = dg.define_asset_job(
        SHARD_JOBS[1], selection=dg.AssetSelection.assets(*analysis_keys).without_checks(),
        partitions_def=daily_partitions(config),
        description="One shard's models (run tag monitor_assets/shard = i/N): labels, performance, drift, "
                    "fairness; after every shard's predictions.")
    fleet = dg.define_asset_job(
        FLEET_JOB, selection=(dg.AssetSelection.assets(*assets).without_checks()
                              - dg.AssetSelection.assets(*ingest_keys, *analysis_keys))
        | dg.AssetSelection.checks(*[c for c in checks if c not in quality_checks]),
        partitions_def=daily_partitions(config),
        description="Every model's cross-model steps, after the shards: alerts, history, retraining, dashboard, export.")
    schedule = dg.build_schedule_from_partitioned_job(job, hour_of_day=6, minute_of_hour=0,
                                                      name="daily_monitoring_schedule")
    storage_assets, storage_jobs, storage_schedules = build_storage_definitions(config)
    retraining_jobs, retraining_sensors = build_retraining_jobs(config)
    return dg.Definitions(
        assets=[*assets, *storage_assets],
        asset_checks=checks,
        jobs=[job, shard_ingest, shard_analysis, fleet, *build_alert_action_jobs(config), *storage_jobs,
              *retraining_jobs],
        schedules=[schedule, *storage_schedules],
        sensors=build_sensors(config, [key for c in checks for key in c.check_keys], alerting[-1].key,
                              monitored_jobs=[job]) + retraining_sensors,
        resources={"warehouse": WarehouseResource(path=config.warehouse_path, lake_path=config.lake_path)},
    )


defs = build_definitions(load_config())
