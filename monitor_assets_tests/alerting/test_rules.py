"""Alerts end to end: the demo's incidents become one message each, over real SMTP and HTTP servers,
read from check evaluations recorded per partition on a persistent (run-sharded SQLite) instance."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import dagster as dg
import yaml

from monitor_assets.alerting import rules as A
from monitor_assets.config import ChannelConfig
from monitor_assets.definitions import build_definitions
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import run_job
from monitor_assets_tests.servers import smtp_server, webhook_server

INCIDENTS = yaml.safe_load((Path(__file__).parents[2] / "data" / "demo" / "incidents.yaml").read_text())
# Which check each injected incident must trip.
EXPECTED_CHECKS = {
    "feature_drift": [A.DRIFT], "bias": [A.FAIRNESS], "concept_drift": [A.PERFORMANCE],
    "latency_error_spike": [A.LATENCY, A.ERROR_RATE], "no_logs": [A.VOLUME],
}


def with_channels(config, channels: dict[str, ChannelConfig], names: tuple[str, ...], tmp_path: Path):
    """The demo config with these channels for every model, and its own alert state and reports."""
    return replace(config, channels={**config.channels, **channels}, reports_dir=str(tmp_path / "reports"),
                   warehouse_path=str(tmp_path / "w.duckdb"),  # only the state file beside it is used
                   models=tuple(replace(m, alert_channels=names) for m in config.models))


def sensor_named(config, name: str):
    return next(s for s in build_definitions(config).sensors if s.name == name)


def evaluate_sensor(config, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor_named(config, "alert_notification_sensor")(context)
    return result, result.cursor


def test_demo_incidents_send_one_email_each_and_a_restart_sends_nothing_again(demo_run, demo_instance, tmp_path):
    config, result = demo_run
    with smtp_server() as (port, inbox):
        email = ChannelConfig("email", "email", {"host": "127.0.0.1", "port": port, "to": ["oncall@shop.example"]})
        config = with_channels(config, {"email": email}, ("email",), tmp_path)
        _, cursor = evaluate_sensor(config, demo_instance)
        got = inbox.subjects()
        assert len(got) == len(set(got))  # one problem, one message
        for incident in INCIDENTS["incidents"]:
            models = incident["model_id"] if isinstance(incident["model_id"], list) else [incident["model_id"]]
            for check in EXPECTED_CHECKS.get(incident["kind"], []):
                matching = [s for s in got if f"{models[0]}: {check} failed" in s]
                assert len(matching) == 1, (incident["kind"], check, got)
                assert incident["dates"][0] in matching[0]
        bodies = {str(m["subject"]): m.get_content() for m in inbox.parsed()}
        latency = next(b for s, b in bodies.items() if f"{A.LATENCY} failed" in s)
        assert "threshold 500" in latency and f"/runs/{result.run_id}" in latency and "00:00:00" not in latency
        assert "/models/demand_forecaster.html" in latency and "Also open:  " in latency
        drift = next(b for s, b in bodies.items() if f"{A.DRIFT} failed" in s)
        # The drifted features by name, with statistic, threshold, reference and current, most drifted first.
        lines = [x for x in drift.splitlines() if x.startswith("  - ")]
        # fraud_detector's last drift day is the covariate shift's: its features, the e-mail shows the latest day
        shift = next(i for i in INCIDENTS["incidents"] if i["kind"] == "covariate_shift")
        assert sorted(x.split(":")[0].strip(" -") for x in lines) == sorted(shift["features"])
        assert "wasserstein" in lines[0] and "threshold" in lines[0] and "reference" in lines[0]
        fairness = next(b for s, b in bodies.items() if f"{A.FAIRNESS} failed" in s)
        assert "p < 1e-300" in fairness or "p = " in fairness
        # No model breaks a performance, SLA, drift or fairness threshold without an injected incident.
        incident_pairs = {(m, c) for i in INCIDENTS["incidents"] for c in EXPECTED_CHECKS.get(i["kind"], [])
                          for m in (i["model_id"] if isinstance(i["model_id"], list) else [i["model_id"]])}
        for s in got:
            model, rest = s.split("] ", 1)[1].split(": ", 1)
            check = rest.split(" failed")[0]
            if check in {c for cs in EXPECTED_CHECKS.values() for c in cs}:
                assert (model, check) in incident_pairs, s
        # A restart (the same cursor, or none at all) sends nothing again.
        count = len(inbox.messages)
        again, _ = evaluate_sensor(config, demo_instance, cursor)
        assert "sent 0 messages" in again.skip_reason.skip_message
        evaluate_sensor(config, demo_instance, None)
        assert len(inbox.messages) == count


def test_a_re_run_sends_nothing_new_and_slack_gets_the_webhook(demo_run, demo_instance, tmp_path, monkeypatch):
    config, _ = demo_run
    with webhook_server() as hook:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", hook.url)
        slack = ChannelConfig("slack", "slack", {"webhook_url_env": "TEST_SLACK_WEBHOOK"})
        alerting = with_channels(config, {"slack": slack}, ("slack",), tmp_path)
        _, cursor = evaluate_sensor(alerting, demo_instance)
        first = len(hook.received)
        assert first > 0 and all(path == "/services/T000/B000/secret-token-0123" for path, _ in hook.received)
        assert any(f"{A.FAIRNESS} failed" in payload["text"] for _, payload in hook.received)
        assert not any("secret-token" in payload["text"] for _, payload in hook.received)
        # Re-run one incident day: its checks fail again with the same alerts, which were delivered already.
        db = tmp_path / "rerun.duckdb"
        shutil.copytree(config.lake_path, replace(config, warehouse_path=str(db)).lake_path)
        assert run_job(replace(config, warehouse_path=str(db), reports_dir=str(tmp_path / "r")), "2026-10-14",
                       instance=demo_instance).success
        result, _ = evaluate_sensor(alerting, demo_instance, cursor)
        assert "sent 0 messages" in result.skip_reason.skip_message and len(hook.received) == first


def test_alerts_table_updates_in_place_and_resolves(demo_run, tmp_path):
    config, _ = demo_run
    lake = tmp_path / "lake"  # a copy: the alerts are edited in the lake, the session's demo lake stays as it is
    shutil.copytree(config.lake_path, lake)
    con = open_warehouse(None, str(lake))
    before = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'open') FROM monitoring.alerts").fetchall()[0]
    days = [r[0] for r in con.execute("SELECT DISTINCT partition_date FROM monitoring.performance_daily").fetchall()]
    evaluated = A.evaluate(con, config, days)
    import datetime as dt
    A.upsert_alerts(con, evaluated, dt.datetime(2030, 1, 1))
    after = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'open') FROM monitoring.alerts").fetchall()[0]
    assert before == after  # re-evaluation updates, never duplicates
    spike = con.execute("""SELECT first_seen < last_seen, value, threshold FROM monitoring.alerts
                           WHERE check_name = ? AND model_id = 'demand_forecaster'""", [A.LATENCY]).fetchall()
    assert spike[0][0] and spike[0][1] > spike[0][2] == 500
    # The latency spike "heals" (as if the day were re-logged): the alert resolves.
    evaluated.loc[evaluated.check_name == A.LATENCY, "passed"] = True
    counts = A.upsert_alerts(con, evaluated, dt.datetime(2030, 1, 2))
    assert counts["resolved"] >= 1
    status = con.execute("SELECT status FROM monitoring.alerts WHERE check_name = ?", [A.LATENCY]).fetchall()
    assert status == [("resolved",)]


def test_run_failure_sensor_writes_to_the_file_channel(demo_config, tmp_path):
    # A labels path that matches nothing fails the run (a missing reference no longer does: it is that model's).
    broken = replace(demo_config, warehouse_path=str(tmp_path / "w.duckdb"), reports_dir=str(tmp_path),
                     labels=replace(demo_config.labels, path=str(tmp_path / "nowhere" / "{date}.csv")))
    with dg.DagsterInstance.ephemeral() as instance:
        from monitor_assets.definitions import MONITORING_JOB

        job = build_definitions(broken).resolve_job_def(MONITORING_JOB)
        result = job.execute_in_process(instance=instance, partition_key="2026-10-01", raise_on_error=False)
        assert not result.success
        sensor = sensor_named(broken, "run_failure_notification_sensor")
        out = tmp_path / "alerts.jsonl"
        # A shard's run that run retries will start again says nothing yet; its last attempt names the shard.
        for will_retry in ("true", "false"):
            run = result.dagster_run.with_tags({**result.dagster_run.tags, "dagster/will_retry": will_retry,
                                                "monitor_assets/shard": "1/2"})
            sensor(dg.build_run_status_sensor_context(
                sensor_name=sensor.name, dagster_instance=instance, dagster_run=run,
                dagster_event=result.get_run_failure_event()).for_run_failure())
            assert out.exists() == (will_retry == "false")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 1
    assert lines[-1]["subject"] == "[ERROR] run failed: monitoring_job" and lines[-1]["run_id"] == result.run_id
    assert "2026-10-01" in lines[-1]["body"] and "monitoring_job (shard 1/2) failed" in lines[-1]["body"]
