"""Sensors that turn failed checks and failed runs into messages (Dagster open source has no built-in
alerting on asset checks, and a failed check does not fail its run, so run-failure sensors miss it).

Each tick of the alert sensor (1) reads the check evaluations recorded since its watermark through
the asset-check execution history, which every Dagster storage supports (SQLite's run-sharded one
and Postgres alike), (2) puts each failed (model, check, day) into the outbox once per channel and
marks alerts that passed again as resolved, then (3) sends what is due (see `notify.outbox`). The
cursor only moves once the evaluations are safely in the outbox, and re-reading an evaluation is
harmless (the outbox is idempotent), so a restart neither resends nor misses.
"""

import json
import os
import time
from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import ALL_MODELS, SHARD_TAG
from monitor_assets.formatting import fmt_day
from monitor_assets.keys import ALERTS
from monitor_assets.notify.actions import acknowledge, lift_silence, silence
from monitor_assets.notify.outbox import channels_by_model, dispatch
from monitor_assets.storage.alert_state import AlertState

ALERT_SENSOR = "alert_notification_sensor"
FAILURE_SENSOR = "run_failure_notification_sensor"
RUN_FAILED = "run_failed"
ACK_JOB = "acknowledge_alerts_job"
SILENCE_JOB = "silence_alerts_job"
LIFT_SILENCE_JOB = "lift_silence_job"
# Evaluations are read again this far behind the newest one seen: a check planned early in a long
# run is recorded under its planning order, and commits of concurrent runs may land out of order.
REREAD_S = 900.0
PAGE = 500
FIRST_LOOKBACK_S = 24 * 3600.0
SENSOR_INTERVAL_S = int(os.environ.get("MONITOR_ALERT_SENSOR_INTERVAL", "30"))


# An evaluation is complete once its execution record says so (planned ones are still running).
DONE = ("SUCCEEDED", "FAILED")


def _metadata_value(metadata: dict, key: str):
    value = metadata.get(key)
    return getattr(value, "value", getattr(value, "data", value))


def read_evaluations(instance: dg.DagsterInstance, check_keys: Sequence[dg.AssetCheckKey],
                     since: float) -> list[dict]:
    """Completed check evaluations recorded after `since` (epoch seconds), oldest first, as plain dicts:
    check_name, partition, passed, severity, failures, run_id, timestamp."""
    out = []
    for key in check_keys:
        cursor = None
        while True:
            records = instance.event_log_storage.get_asset_check_execution_history(
                key, limit=PAGE, cursor=cursor)
            for record in records:
                event = record.event
                if record.status.value not in DONE or event is None or event.timestamp <= since or event.dagster_event is None:
                    continue
                evaluation = event.dagster_event.event_specific_data
                failures = _metadata_value(evaluation.metadata, "failures")
                out.append({
                    "check_name": key.name, "partition": record.partition or evaluation.partition,
                    "passed": bool(evaluation.passed), "severity": evaluation.severity.value,
                    "failures": failures if isinstance(failures, list) else None,
                    "reason": str(_metadata_value(evaluation.metadata, "reason") or evaluation.description or ""),
                    "run_id": record.run_id, "timestamp": float(event.timestamp),
                })
            # Older pages matter only while whole pages are new (records come newest planned first).
            if len(records) < PAGE or min(r.create_timestamp for r in records) <= since:
                break
            cursor = records[-1].id
    return sorted(out, key=lambda e: e["timestamp"])


def record_evaluations(state: AlertState, config: MonitorConfig, evaluations: list[dict]) -> tuple[int, int]:
    """Failed evaluations into the outbox, passed models resolved; returns (rows enqueued, rows resolved)."""
    channels = channels_by_model(config)
    enqueued = resolved = 0
    for ev in evaluations:
        failures = ev["failures"]
        if failures is None and not ev["passed"]:
            # A check without the standard breach list: say what the check said, to every channel.
            failures = [{"partition_date": ev["partition"] or "", "model_id": ALL_MODELS,
                         "check_name": ev["check_name"], "severity": ev["severity"], "value": None,
                         "threshold": None, "message": ev["reason"][:500] or "see the check in the UI"}]
        failures = failures or []
        enqueued += state.enqueue(failures, channels, ev["run_id"], ev["timestamp"])
        days = {fmt_day(f["partition_date"]) for f in failures} | ({ev["partition"]} if ev["partition"] else set())
        for day in days:
            failing = {f["model_id"] for f in failures if fmt_day(f["partition_date"]) == day}
            resolved += state.resolve(ev["check_name"], day, failing, ev["timestamp"])
    return enqueued, resolved


def build_notify_definitions(config: MonitorConfig, check_keys: Sequence[dg.AssetCheckKey],
                             monitored_jobs: Sequence[dg.JobDefinition]) -> dg.Definitions:
    """The alert and run-failure sensors (delivering the given checks' failures and the monitored jobs'
    failed runs) and the acknowledge/silence jobs."""
    return dg.Definitions(jobs=build_alert_action_jobs(config),
                          sensors=build_sensors(config, check_keys, monitored_jobs=monitored_jobs))


def build_sensors(config: MonitorConfig, check_keys: Sequence[dg.AssetCheckKey],
                  monitored_jobs: Sequence | None = None) -> list:
    alerts_asset = ALERTS  # delivery problems are reported on the alerts asset

    @dg.sensor(name=ALERT_SENSOR, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Delivers failed asset checks (threshold and data-quality) to each model's channels "
                           "through an outbox: one message per model and check, at least once per channel, "
                           "retried with backoff, quiet for the cooldown, never for acknowledged or silenced "
                           "alerts.")
    def alert_sensor(context: dg.SensorEvaluationContext):
        state = AlertState.for_config(config)
        # A sensor turned on for the first time (or reset) looks back one day, not through all history:
        # last month's failures are on the dashboard, not worth a page now.
        watermark = (float(json.loads(context.cursor)["watermark"]) if context.cursor
                     else time.time() - FIRST_LOOKBACK_S)
        evaluations = read_evaluations(context.instance, check_keys, watermark - REREAD_S)
        enqueued, resolved = record_evaluations(state, config, evaluations)
        new_watermark = max([watermark, *(e["timestamp"] for e in evaluations)])
        report = dispatch(state, config)
        for failure in report.failed:
            context.log.warning(f"alert delivery failed, will retry: {failure}")
        events = []
        if report.gave_up:
            keys = sorted({f"{r['alert_key']} via {r['channel']}" for r in report.gave_up})
            context.log.error(f"gave up delivering {len(keys)} alert(s) after {config.alert_give_up_hours:g} h: "
                              + "; ".join(keys[:10]))
            events.append(dg.AssetObservation(asset_key=alerts_asset, metadata={
                "delivery_gave_up": len(keys),
                "undelivered": dg.MetadataValue.md("\n".join(f"- {k}: {r['last_error'] or ''}" for k, r in zip(
                    keys, report.gave_up, strict=False))[:5000])}))
        message = (f"{len(evaluations)} recent check evaluation(s), {enqueued} alert deliveries queued, "
                   f"{resolved} resolved; "
                   + report.summary())
        return dg.SensorResult(skip_reason=message, cursor=json.dumps({"watermark": new_watermark}),
                               asset_events=events)

    @dg.run_failure_sensor(name=FAILURE_SENSOR, default_status=dg.DefaultSensorStatus.RUNNING,
                           monitored_jobs=monitored_jobs,
                           description="Sends a message when a monitoring run fails (after its retries), "
                                       "through the same outbox as the alerts.")
    def run_failure_sensor(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        if run.tags.get("dagster/will_retry") == "true":  # run retries start it again: its retry reports
            context.log.info(f"run {run.run_id} of {run.job_name} failed and will be retried: no message yet")
            return
        error = " ".join((context.failure_event.message or "run failed").split())
        shard = run.tags.get(SHARD_TAG)
        partition = (run.tags.get("dagster/partition") or
                     "..".join(filter(None, (run.tags.get("dagster/asset_partition_range_start"),
                                             run.tags.get("dagster/asset_partition_range_end")))))
        state = AlertState.for_config(config)
        state.enqueue([{
            "alert_key": f"run|{run.run_id}", "model_id": ALL_MODELS, "check_name": RUN_FAILED,
            "partition_date": partition or time.strftime("%Y-%m-%d", time.gmtime()), "severity": "ERROR",
            "value": None, "threshold": None,
            "message": f"run of {run.job_name}{f' (shard {shard})' if shard else ''} failed: {error[:1000]}",
            "details": {"job": run.job_name, "partitions": partition, **({"shard": shard} if shard else {})}}],
            channels_by_model(config), run.run_id, time.time())
        report = dispatch(state, config)
        for failure in report.failed:
            context.log.warning(f"run-failure delivery failed, will retry: {failure}")

    return [alert_sensor, run_failure_sensor]


# -- decisions from the UI: jobs with typed config, launched from the Launchpad ------------------------


class AcknowledgeConfig(dg.Config):
    """Acknowledge a model's open alerts (ones already in the outbox; for alerts still to come, silence):
    they stay open and on the dashboard, their notifications stop."""

    model_id: str = Field(description="the model whose alerts you acknowledge")
    check_name: str | None = Field(default=None, description="one check (default: every check of the model)")
    day: str | None = Field(default=None, description="one day, YYYY-MM-DD (default: every day up to today)")
    by: str = Field(description="who decides (recorded)")
    reason: str = Field(description="why (recorded)")


class SilenceConfig(dg.Config):
    """Silence a model, a check, or a model's check: no notifications until the silence ends."""

    model_id: str | None = Field(default=None, description="the model (default: every model)")
    check_name: str | None = Field(default=None, description="the check (default: every check)")
    hours: float = Field(default=24.0, description="how long, in hours (at most 90 days)")
    by: str = Field(description="who decides (recorded)")
    reason: str = Field(description="why (recorded)")


class LiftSilenceConfig(dg.Config):
    silence_id: int = Field(description="the silence's number (see monitoring.alert_silences)")
    by: str = Field(description="who decides (recorded)")


# A decision that failed (a typo in a model name) is not transient: no run retries.
NO_RUN_RETRY = {"dagster/max_retries": "0"}


def build_alert_action_jobs(monitor: MonitorConfig) -> list[dg.JobDefinition]:
    def state() -> AlertState:
        return AlertState.for_config(monitor)

    def run(context, action) -> None:
        try:
            message = action()
        except ValueError as exc:  # a wrong model, check or day: say so, do not retry
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.log.info(message)

    @dg.op(name="acknowledge_alerts", tags={"kind": "alerts"})
    def acknowledge_op(context: dg.OpExecutionContext, config: AcknowledgeConfig) -> None:
        run(context, lambda: acknowledge(monitor, state(), config.model_id, config.check_name, config.day, config.by, config.reason))

    @dg.op(name="silence_alerts", tags={"kind": "alerts"})
    def silence_op(context: dg.OpExecutionContext, config: SilenceConfig) -> None:
        run(context, lambda: silence(monitor, state(), config.model_id, config.check_name, config.hours, config.by, config.reason))

    @dg.op(name="lift_silence", tags={"kind": "alerts"})
    def lift_op(context: dg.OpExecutionContext, config: LiftSilenceConfig) -> None:
        run(context, lambda: lift_silence(state(), config.silence_id, config.by))

    @dg.job(name=ACK_JOB, tags=NO_RUN_RETRY, description="Acknowledge a model's alerts (Launchpad: fill in model_id, by, reason).")
    def acknowledge_job():
        acknowledge_op()

    @dg.job(name=SILENCE_JOB, tags=NO_RUN_RETRY, description="Silence a model, a check or a model's check for some hours.")
    def silence_job():
        silence_op()

    @dg.job(name=LIFT_SILENCE_JOB, tags=NO_RUN_RETRY, description="Lift a silence before it ends.")
    def lift_job():
        lift_op()

    return [acknowledge_job, silence_job, lift_job]
