"""Shards through Dagster's own machinery (`shards: N` in the config, or $MONITOR_SHARDS).

The daily schedule and a backfill (the plan job's page in the UI, or `dagster job backfill`) each make one
*plan* run per day: it checks the day's inputs and nothing else. The shard sensor then launches, through
the run queue and whichever run launcher the instance has (the default one locally, Kubernetes / ECS / Docker
in production), one run per shard of the shard jobs and, when every shard of the day has succeeded, one
fleet run for the day's cross-model steps (`sharding.logic` decides the order). A shard run that dies is
retried by the instance's run retries; one that fails for good holds its day (and the later days' same
stage) and the sensor's tick says which shard of which day.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

import dagster as dg

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import SHARD_TAG
from monitor_assets.sharding.logic import STAGES, PlanRun, StageRun, decide, shard_labels
from monitor_assets.wiring import daily_partitions, fail_fast

PLAN_JOB = "shard_plan_job"
SHARD_SENSOR = "shard_sensor"
SHARD_SCHEDULE = "sharded_daily_schedule"
PLAN_TAG = "monitor_assets/plan"  # the plan run a stage run belongs to
STAGE_TAG = "monitor_assets/stage"  # ingest | analysis | fleet
PLANS_LOOKED_AT = 60  # the newest plan runs the sensor follows (two months of days)
SENSOR_INTERVAL_S = int(os.environ.get("MONITOR_SHARD_SENSOR_INTERVAL", "15"))


def build_sharding_definitions(config: MonitorConfig, stage_jobs: Mapping[str, dg.UnresolvedAssetJobDefinition]
                               ) -> dg.Definitions:
    """The plan job, its daily schedule and the shard sensor; `stage_jobs` maps each of STAGES to its job."""
    count = config.shard_count

    @dg.op(description="Checks the day's inputs (the preflight) before any shard run is launched.")
    def plan_shards(context) -> None:
        from monitor_assets.preflight import require

        day = dt.date.fromisoformat(context.partition_key)
        with fail_fast():
            warnings = require(config, [day])
        for problem in warnings:
            context.log.warning(str(problem))
        sizes = ", ".join(f"{label}: {len(config.for_shard(i, count).models)}"
                          for i, label in enumerate(shard_labels(count)))
        context.log.info(f"{day}: {count} shards of {len(config.models)} models planned (models per shard "
                         f"{sizes}); the shard sensor launches their runs")

    plan_job = dg.JobDefinition(
        name=PLAN_JOB, graph_def=dg.GraphDefinition(name=PLAN_JOB, node_defs=[plan_shards]),
        partitions_def=daily_partitions(config), executor_def=dg.in_process_executor,
        description=f"Plans a day of the sharded pipeline ({count} shards): the shard sensor then launches each "
                    "shard's runs and the day's fleet run. Backfill this job to run days again.")
    schedule = dg.build_schedule_from_partitioned_job(plan_job, hour_of_day=6, minute_of_hour=0,
                                                      name=SHARD_SCHEDULE)

    @dg.sensor(name=SHARD_SENSOR, jobs=[stage_jobs[s] for s in STAGES], minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Launches each planned day's {count} shard runs (ingestion, then analysis) and its "
                           "fleet run, each stage once every shard of the stage before succeeded, days in order.")
    def shard_sensor(context: dg.SensorEvaluationContext):
        instance = context.instance
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=PLAN_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=PLANS_LOOKED_AT)
        plans = [PlanRun(r.dagster_run.run_id, r.dagster_run.tags["dagster/partition"], r.create_timestamp.timestamp())
                 for r in records if r.dagster_run.tags.get("dagster/partition")]
        if not plans:
            return dg.SkipReason(f"no successful {PLAN_JOB} run yet: the schedule or a backfill makes them")
        stage_runs = instance.get_runs(filters=dg.RunsFilter(tags={PLAN_TAG: [p.run_id for p in plans]}))
        runs = [StageRun(r.run_id, r.tags[PLAN_TAG], r.tags.get(STAGE_TAG, ""), r.tags.get(SHARD_TAG, ""),
                         r.status.value, r.tags.get("dagster/will_retry") == "true") for r in stage_runs]
        decision = decide(plans, runs, count)
        for note in decision.notes:
            (context.log.warning if "failed" in note else context.log.info)(note)
        requests = [dg.RunRequest(run_key=launch.run_key, job_name=stage_jobs[launch.stage].name,
                                  partition_key=launch.day,
                                  tags={PLAN_TAG: launch.plan, STAGE_TAG: launch.stage,
                                        **({SHARD_TAG: launch.shard} if launch.shard else {})})
                    for launch in decision.launches]
        summary = "; ".join(decision.notes) or "nothing waiting"
        if not requests:
            return dg.SkipReason(summary)
        return dg.SensorResult(run_requests=requests)

    return dg.Definitions(jobs=[plan_job], schedules=[schedule], sensors=[shard_sensor])

