"""The one entry point: builds every asset, check, job, schedule and sensor from the monitoring config.

Each stage builds its own `Definitions` (wired to the others by the asset keys in `keys`); this module
merges them and adds what spans stages: the daily job, its cut for shards, its schedule, the resources.

The config comes from $MONITOR_CONFIG (default: the bundled demo's) and is validated here, so a wrong
config fails when the code location loads, before any run starts. So does a Dagster instance that is not the
one $MONITOR_ENV asks for (prod: PostgreSQL): every service loads this module (the code servers of the
webserver, the daemon and `dagster dev`, run workers, `run_pipeline`), so none of them works on the wrong one.
"""

from __future__ import annotations

import os

import dagster as dg

from monitor_assets import keys
from monitor_assets.alerting.defs import build_alerting_definitions
from monitor_assets.analysis.defs import build_analysis_assets
from monitor_assets.config import MonitorConfig, load_config
from monitor_assets.estimation.defs import build_estimation_definitions
from monitor_assets.evaluation.defs import build_evaluation_definitions
from monitor_assets.export.defs import build_export_definitions
from monitor_assets.history.defs import build_history_definitions
from monitor_assets.ingestion.defs import build_ingestion_assets, build_quality_checks
from monitor_assets.metrics.defs import build_metrics_assets
from monitor_assets.multivariate.defs import build_multivariate_definitions
from monitor_assets.notify.defs import build_notify_definitions
from monitor_assets.pictures.defs import build_pictures_definitions
from monitor_assets.ranking.defs import build_ranking_definitions
from monitor_assets.reporting.defs import build_reporting_definitions
from monitor_assets.retraining.defs import build_retraining_definitions
from monitor_assets.segments.defs import build_segments_definitions
from monitor_assets.sharding.defs import build_sharding_definitions
from monitor_assets.storage.defs import build_storage_definitions
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import daily_partitions

MONITORING_JOB = "monitoring_job"
# Run tags of every monitoring_job run (schedule, backfills, the UI): the prod instance's "one monitoring_job
# at a time" limit keys on them. Dagster puts no job-name tag on runs.
MONITORING_JOB_TAGS = {"monitor_assets/job": MONITORING_JOB}
# The same pipeline cut for shards (`run_pipeline --shards N`): each shard's runs (tag monitor_assets/shard
# "i/N") handle its models, first the predictions and reference profiles of every shard, then labels (matched
# to any shard's predictions, so after all of them) and the per-model figures; then one fleet run does the
# rest for every model (alerts, dashboard, history, retraining, export).
SHARD_JOBS = ("shard_ingest_job", "shard_analysis_job")
FLEET_JOB = "fleet_job"
SHARD_INGEST = (keys.PREDICTIONS, keys.REFERENCE_PROFILES)
SHARD_ANALYSIS = (keys.LABELS, keys.PERFORMANCE_DAILY, keys.FEATURE_DRIFT, keys.FAIRNESS, keys.ESTIMATED_PERFORMANCE,
                  keys.MULTIVARIATE_DRIFT, keys.DRIFT_DISTRIBUTIONS, keys.DAILY_PROFILES, keys.EVALUATION_STORE)


# -- the stages whose builders return lists: wrapped into Definitions here ------------------------------

def build_ingestion_definitions(config: MonitorConfig) -> dg.Definitions:
    """The raw inputs and the data-quality checks on the predictions."""
    return dg.Definitions(assets=build_ingestion_assets(config),
                          asset_checks=build_quality_checks(config, keys.PREDICTIONS))


def build_metrics_definitions(config: MonitorConfig) -> dg.Definitions:
    """Daily performance, and business KPIs when the config has interactions and sales."""
    return dg.Definitions(assets=build_metrics_assets(config, keys.PREDICTIONS, keys.LABELS,
                                                      keys.INTERACTIONS if config.interactions else None,
                                                      keys.SALES if config.sales else None))


def build_analysis_definitions(config: MonitorConfig) -> dg.Definitions:
    """Reference profiles, feature drift and fairness."""
    return dg.Definitions(assets=build_analysis_assets(config, keys.PREDICTIONS, keys.LABELS))


def build_maintenance_definitions(config: MonitorConfig) -> dg.Definitions:
    """The lake's weekly maintenance: its asset, job and schedule."""
    assets, jobs, schedules = build_storage_definitions(config)
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)


# -- the pipeline: stages merged, then the jobs and schedule that span them ------------------------------

def asset_keys(*stages: dg.Definitions) -> list[dg.AssetKey]:
    """The keys of the stages' assets, in order."""
    return [key for stage in stages for asset in stage.assets or [] for key in asset.keys]


def check_keys(*stages: dg.Definitions) -> list[dg.AssetCheckKey]:
    """The keys of the stages' checks, in order."""
    return [key for stage in stages for check in stage.asset_checks or [] for key in check.check_keys]


def pipeline_jobs(config: MonitorConfig, assets: list[dg.AssetKey],
                  checks: list[dg.AssetCheckKey]) -> dict[str, dg.UnresolvedAssetJobDefinition]:
    """The daily job over every pipeline asset and check, and its cut into shard and fleet jobs. A shard or
    fleet run is one process (in-process executor, as `run_pipeline` runs them): the parallelism is the shards,
    one run (one pod under Kubernetes) each, not a process per step."""
    partitions = daily_partitions(config)
    every_asset = dg.AssetSelection.assets(*assets).without_checks()
    quality = [c for c in checks if c.asset_key == keys.PREDICTIONS]
    job = dg.define_asset_job(MONITORING_JOB, selection=every_asset | dg.AssetSelection.checks(*checks),
                              partitions_def=partitions, tags=MONITORING_JOB_TAGS,
                              description="The daily monitoring pipeline for every configured model.")
    shard_ingest = dg.define_asset_job(
        SHARD_JOBS[0], selection=dg.AssetSelection.assets(*SHARD_INGEST).without_checks()
        | dg.AssetSelection.checks(*quality), partitions_def=partitions, executor_def=dg.in_process_executor,
        description="One shard's models (run tag monitor_assets/shard = i/N): predictions and reference profiles.")
    shard_analysis = dg.define_asset_job(
        SHARD_JOBS[1], selection=dg.AssetSelection.assets(*SHARD_ANALYSIS).without_checks(),
        partitions_def=partitions, executor_def=dg.in_process_executor,
        description="One shard's models (run tag monitor_assets/shard = i/N): labels, performance, drift, "
                    "fairness, estimated performance; after every shard's predictions.")
    fleet = dg.define_asset_job(
        FLEET_JOB, selection=(every_asset - dg.AssetSelection.assets(*SHARD_INGEST, *SHARD_ANALYSIS))
        | dg.AssetSelection.checks(*[c for c in checks if c not in quality]),
        partitions_def=partitions, executor_def=dg.in_process_executor,
        description="Every model's cross-model steps, after the shards: alerts, history, retraining, dashboard, export.")
    return {j.name: j for j in (job, shard_ingest, shard_analysis, fleet)}


def build_definitions(config: MonitorConfig) -> dg.Definitions:
    ingestion = build_ingestion_definitions(config)
    metrics = build_metrics_definitions(config)
    analysis = build_analysis_definitions(config)
    estimation = build_estimation_definitions(config)
    segments = build_segments_definitions(config)
    multivariate = build_multivariate_definitions(config)
    pictures = build_pictures_definitions(config)
    evaluation = build_evaluation_definitions(config)
    history = build_history_definitions(config, upstream=asset_keys(metrics, analysis, estimation, segments,
                                                                    multivariate, evaluation))
    alerting = build_alerting_definitions(config)
    retraining = build_retraining_definitions(config)
    reporting = build_reporting_definitions(config)
    export = build_export_definitions(config)
    ranking = build_ranking_definitions(config)  # nothing without a `task: ranking` model
    pipeline = (ingestion, metrics, analysis, estimation, segments, multivariate, pictures, evaluation, history,
                alerting, retraining, reporting, export, ranking)

    checks = check_keys(ingestion, alerting, retraining, evaluation, ranking)
    jobs = pipeline_jobs(config, asset_keys(*pipeline), checks)
    schedule = dg.build_schedule_from_partitioned_job(jobs[MONITORING_JOB], hour_of_day=6, minute_of_hour=0,
                                                      name="daily_monitoring_schedule")
    sharded = [build_sharding_definitions(config, dict(zip(("ingest", "analysis", "fleet"),
                                                           (jobs[SHARD_JOBS[0]], jobs[SHARD_JOBS[1]], jobs[FLEET_JOB]),
                                                           strict=True)))] if config.shard_count > 1 else []
    # A failed shard or fleet run is reported like a failed monitoring_job run.
    monitored = [jobs[MONITORING_JOB], *([jobs[j] for j in (*SHARD_JOBS, FLEET_JOB)] if sharded else [])]
    notify = build_notify_definitions(config, checks, monitored_jobs=monitored)
    return dg.Definitions.merge(
        *pipeline, notify, build_maintenance_definitions(config), *sharded,
        dg.Definitions(jobs=list(jobs.values()), schedules=[schedule], executor=STEP_PROCESSES,
                       resources={"warehouse": WarehouseResource(path=config.warehouse_path,
                                                                 lake_path=config.lake_path)}),
    )


# What a run launched from the UI, the schedule or an asset backfill runs its steps with (the shard and fleet jobs
# run in one process): a process per step, forked from a server that has imported these once per run, instead of
# each step's process importing Dagster, the definitions, pandas, SciPy and scikit-learn again (2 to 4 s a step,
# 30-odd steps). Nothing in them starts a thread at import, so forking from it is safe; Great Expectations (2.7 s)
# is left to the one step that uses it.
PRELOADED = ["monitor_assets.definitions", "pandas", "pyarrow", "duckdb", "scipy.stats", "sklearn.ensemble"]
STEP_PROCESSES = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": PRELOADED}}}, name="multiprocess_forkserver")


class WrongInstanceError(RuntimeError):
    """The Dagster instance in $DAGSTER_HOME is not the one $MONITOR_ENV asks for."""


def check_instance_for_env() -> None:
    """With MONITOR_ENV=prod, refuse to load unless $DAGSTER_HOME's instance keeps runs, events and schedules
    in PostgreSQL: a service started without the prod dagster.yaml would otherwise run on SQLite of its own.
    Reads the instance's settings only (no connection); an unknown MONITOR_ENV fails as in `run_pipeline`."""
    from monitor_assets.runner import INSTANCE_TEMPLATES, instance_template

    if instance_template() != INSTANCE_TEMPLATES["prod"]:
        return
    home = os.environ.get("DAGSTER_HOME")
    fix = "copy deploy/prod/dagster.yaml there (make run and make dev do) and set the DAGSTER_PG_* variables"
    if not home or not os.path.isdir(home):
        raise WrongInstanceError(f"MONITOR_ENV=prod needs DAGSTER_HOME set to an existing folder "
                                 f"(got {home!r}): {fix}")
    from dagster._core.instance.ref import InstanceRef

    ref = InstanceRef.from_dir(home)
    # A `storage: custom:` class (the local template's) stands behind Dagster's Legacy* wrappers: name it instead.
    storages = [s for s in (ref.storage_data, ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data)
                if s is not None and not s.class_name.startswith("Legacy")]
    wrong = sorted({s.class_name for s in storages if not s.module_name.startswith("dagster_postgres")})
    if wrong:
        raise WrongInstanceError(f"MONITOR_ENV=prod, but the instance in DAGSTER_HOME={home} uses "
                                 f"{', '.join(wrong)}, not PostgreSQL: {fix}")


check_instance_for_env()
defs = build_definitions(load_config())
