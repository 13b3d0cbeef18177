"""Acknowledge and silence from the command line and from the UI's jobs (typed run config, as the
Launchpad sends it): who, when and why are recorded, notifications stop, and the dashboard shows
open, acknowledged and silenced alerts apart. On both alert-state stores (`state_backend`)."""

import os
import subprocess
import sys
from dataclasses import replace

import pandas as pd

from monitor_assets.config import REPO_ROOT, load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.notify.defs import ACK_JOB, LIFT_SILENCE_JOB, SILENCE_JOB
from monitor_assets.reporting.dashboard import ReportData, model_summaries
from monitor_assets.storage.alert_state import AlertState
from monitor_assets_tests.storage.alert_state_backends import postgres_server, state_backend  # noqa: F401 - fixtures


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MONITOR_WAREHOUSE": str(tmp_path / "w.duckdb"), "MONITOR_REPORTS_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "monitor_assets.notify", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)


def open_alert(tmp_path, model_id: str, check_name: str, day: str = "2026-10-25") -> None:
    """An alert in the outbox, as the sensor puts it there (only those can be acknowledged)."""
    state = AlertState.for_config(replace(load_config(), warehouse_path=str(tmp_path / "w.duckdb")))
    state.enqueue([{"partition_date": day, "model_id": model_id, "check_name": check_name, "severity": "ERROR",
                    "value": 0.5, "threshold": 0.8, "message": "m"}], {"*": ["file"]}, "run-1", 1.0, now=1.0)


def test_command_line_acknowledges_silences_and_lists(tmp_path, state_backend):  # noqa: F811
    open_alert(tmp_path, "fraud_detector", "drift_share_below_threshold")
    done = cli(tmp_path, "ack", "--model", "fraud_detector", "--check", "drift_share_below_threshold",
               "--by", "ana", "--reason", "planned payment-provider change")
    assert done.returncode == 0, done.stderr
    assert "acknowledgement #1: fraud_detector drift_share_below_threshold up to today" in done.stdout
    done = cli(tmp_path, "silence", "--model", "demand_forecaster", "--hours", "4", "--by", "bo",
               "--reason", "load test")
    assert done.returncode == 0 and "silence #1: demand_forecaster / every check until" in done.stdout
    listing = cli(tmp_path, "list", "silences").stdout
    assert "demand_forecaster" in listing and "load test" in listing and "bo" in listing
    acks = cli(tmp_path, "list", "acknowledgements").stdout
    assert "ana" in acks and "planned payment-provider change" in acks
    # Mistakes get one line naming what is wrong, and nothing is recorded.
    wrong = cli(tmp_path, "ack", "--model", "fraud_detectr", "--by", "ana", "--reason", "x")
    assert wrong.returncode == 2 and wrong.stderr.strip().startswith("error: unknown model 'fraud_detectr'")
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert cli(tmp_path, "unsilence", "1", "--by", "bo").returncode == 0
    assert cli(tmp_path, "unsilence", "1", "--by", "bo").returncode == 2  # already lifted


def test_launchpad_jobs_record_decisions_and_the_summary_tells_them_apart(tmp_path, state_backend):  # noqa: F811
    config = replace(load_config(), warehouse_path=str(tmp_path / "w.duckdb"), reports_dir=str(tmp_path))
    defs = build_definitions(config)
    open_alert(tmp_path, "purchase_propensity", "performance_within_baseline")
    ack = defs.resolve_job_def(ACK_JOB).execute_in_process(run_config={"ops": {"acknowledge_alerts": {"config": {
        "model_id": "purchase_propensity", "check_name": "performance_within_baseline", "by": "ana",
        "reason": "retraining scheduled"}}}})
    assert ack.success
    silence = defs.resolve_job_def(SILENCE_JOB).execute_in_process(run_config={"ops": {"silence_alerts": {"config": {
        "model_id": "fraud_detector", "hours": 2, "by": "bo", "reason": "known upstream outage"}}}})
    assert silence.success
    wrong = defs.resolve_job_def(SILENCE_JOB).execute_in_process(raise_on_error=False, run_config={"ops": {
        "silence_alerts": {"config": {"by": "bo", "reason": "no scope"}}}})
    assert not wrong.success
    failure = wrong.get_step_failure_events()[0].step_failure_data.error
    assert "a silence needs a model, a check, or both" in failure.message

    alerts = pd.DataFrame([
        ("2026-10-25", "purchase_propensity", "performance_within_baseline", "ERROR"),
        ("2026-10-25", "fraud_detector", "demographic_parity_above_threshold", "ERROR"),
        ("2026-10-25", "demand_forecaster", "latency_p95_within_sla", "WARN"),
        ("2026-10-01", "demand_forecaster", "error_rate_within_sla", "ERROR"),
    ], columns=["partition_date", "model_id", "check_name", "severity"]).assign(
        value=0.5, threshold=0.8, message="m", status="open", partition_date=lambda d: pd.to_datetime(d.partition_date))
    state = AlertState.for_config(config)
    annotated = state.annotate(alerts).set_index("model_id")
    assert annotated.loc["purchase_propensity", "state"] == "acknowledged"
    assert "by ana" in annotated.loc["purchase_propensity", "state_note"]
    assert annotated.loc["fraud_detector", "state"] == "silenced"
    assert "by bo: known upstream outage" in annotated.loc["fraud_detector", "state_note"]
    assert annotated.loc["demand_forecaster", "state"].tolist() == ["open", "open"]

    lift = defs.resolve_job_def(LIFT_SILENCE_JOB).execute_in_process(run_config={"ops": {"lift_silence": {
        "config": {"silence_id": 1, "by": "bo"}}}})
    assert lift.success and state.annotate(alerts).state.tolist()[1] == "open"

    # A model with an old open ERROR alert and nothing recent is never "healthy".
    days = pd.date_range("2026-10-01", "2026-10-25")
    perf = pd.DataFrame({"partition_date": days, "model_id": "demand_forecaster", "main_metric": 5.0,
                         "latency_p95_ms": 200.0, "error_rate": 0.001, "volume": 1000, "label_coverage": 1.0})
    data = ReportData(
        models=pd.DataFrame([{"model_id": "demand_forecaster", "task": "regression", "main_metric": "mae",
                              "baseline": 5.0, "latency_sla": 500.0, "error_sla": 0.01}]),
        performance=perf, drift=pd.DataFrame(columns=["partition_date", "model_id", "feature", "statistic",
                                                      "threshold", "drifted"]),
        drift_share=pd.DataFrame(), fairness=pd.DataFrame(),
        alerts=state.annotate(alerts[alerts.check_name == "error_rate_within_sla"]),
        quality=pd.DataFrame(), quarantine_reasons=pd.DataFrame())
    summary = model_summaries(data)[0]
    assert summary["status"] == "watch" and "open ERROR" in summary["why"]
    assert summary["unhandled_alert_count"] == 1
    # Once acknowledged it stays open (and not healthy), but is counted apart.
    open_alert(tmp_path, "demand_forecaster", "error_rate_within_sla", day="2026-10-01")
    state.acknowledge("demand_forecaster", None, None, "cy", "investigating")
    data.alerts = state.annotate(alerts[alerts.check_name == "error_rate_within_sla"])
    summary = model_summaries(data)[0]
    assert summary["status"] == "watch" and summary["acknowledged_alert_count"] == 1
    assert summary["unhandled_alert_count"] == 0
