"""Sensors that turn failed checks and failed runs into messages (Dagster open source has no built-in
alerting on asset checks, and a failed check does not fail its run, so run-failure sensors miss it).

The alert sensor reads new check evaluations from the instance after a cursor (the event storage
id), so a restart neither resends nor misses; a cooldown per (model, check), kept in the cursor,
makes one problem one message.
"""

import datetime as dt
import json

import dagster as dg

from monitor_assets import alerting as A
from monitor_assets.config import MonitorConfig
from monitor_assets.notify import Notification, deliver

ALERT_SENSOR = "alert_notification_sensor"
FAILURE_SENSOR = "run_failure_notification_sensor"


def _metadata_value(metadata: dict, key: str):
    value = metadata.get(key)
    return getattr(value, "value", getattr(value, "data", value))


def _channels_for(config: MonitorConfig, model_ids: set[str]) -> list:
    names = {c for m in config.models if m.id in model_ids for c in m.alert_channels} or {"file"}
    return [config.channels[n] for n in sorted(names)]


def send(context, config: MonitorConfig, channels: list, note: Notification) -> list[str]:
    """Deliver through every channel; a failing channel is logged and the others still get it."""
    delivered = []
    for channel in channels:
        try:
            deliver(channel, note, config.reports_dir)
            delivered.append(channel.name)
        except Exception as exc:  # noqa: BLE001 - one broken channel must not silence the rest
            context.log.error(f"alert channel {channel.name} ({channel.type}) failed: {exc}")
    return delivered


def build_sensors(config: MonitorConfig) -> list:
    @dg.sensor(name=ALERT_SENSOR, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Sends failed asset checks (threshold and data-quality) to the configured channels: "
                           "one message per model and check, then quiet for the cooldown.")
    def alert_sensor(context: dg.SensorEvaluationContext):
        state = json.loads(context.cursor) if context.cursor else {}
        after, sent = state.get("after"), state.get("sent", {})
        records = context.instance.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                                  after_cursor=after), limit=1000, ascending=True)
        if not records:
            return dg.SkipReason("no new check evaluations")
        problems: dict[tuple[str, str], dict] = {}
        for record in records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            if evaluation.passed:
                continue
            run_id = record.event_log_entry.run_id
            failures = _metadata_value(evaluation.metadata, "failures")
            if isinstance(failures, list) and failures:
                for key, items in A.group_failures(failures).items():
                    problems[key] = {"failures": items, "run_id": run_id}
            else:  # a check without the standard breach list: say what the check said
                problems[("all models", evaluation.check_name)] = {"run_id": run_id, "failures": [{
                    "partition_date": evaluation.partition or "(run)", "model_id": "all models",
                    "check_name": evaluation.check_name, "severity": evaluation.severity.value,
                    "value": float("nan"), "threshold": float("nan"),
                    "message": str(_metadata_value(evaluation.metadata, "reason") or evaluation.description
                                   or "see the check in the UI")[:500]}]}
        now = dt.datetime.now(dt.UTC)
        cooldown = dt.timedelta(hours=config.alert_cooldown_hours)
        messages = 0
        for (model_id, check), problem in problems.items():
            key = f"{model_id}|{check}"
            last = sent.get(key)
            if last and now - dt.datetime.fromisoformat(last) < cooldown:
                continue
            others = [f"{m} {c} ({len(p['failures'])} day(s))" for (m, c), p in problems.items()
                      if (m, c) != (model_id, check)]
            subject, body = A.compose(model_id, check, problem["failures"], others,
                                      f"{config.ui_url}/runs/{problem['run_id']}")
            level = "ERROR" if subject.startswith("[ERROR]") else "WARN"
            note = Notification(subject, body, level, {"model_id": model_id, "check_name": check,
                                                       "run_id": problem["run_id"],
                                                       "dates": [f["partition_date"] for f in problem["failures"]]})
            if send(context, config, _channels_for(config, {model_id}), note):
                sent[key] = now.isoformat()
                messages += 1
        context.update_cursor(json.dumps({"after": records[-1].storage_id, "sent": sent}))
        return dg.SkipReason(f"read {len(records)} check evaluations, sent {messages} message(s)")

    @dg.run_failure_sensor(name=FAILURE_SENSOR, default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Sends a message when a monitoring run fails (after its retries).")
    def run_failure_sensor(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        error = context.failure_event.message or "run failed"
        note = Notification(
            f"[ERROR] run failed: {run.job_name}",
            f"Job:        {run.job_name}\nRun:        {config.ui_url}/runs/{run.run_id}\n"
            f"Partition:  {run.tags.get('dagster/partition') or run.tags.get('dagster/asset_partition_range_start', '')}\n"
            f"Error:      {error[:1000]}\n", "ERROR", {"run_id": run.run_id, "job": run.job_name})
        send(context, config, _channels_for(config, set(config.model_ids)), note)

    return [alert_sensor, run_failure_sensor]
