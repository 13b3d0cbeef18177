"""Alerts end to end: the demo's incidents become one message each, over real SMTP and HTTP servers."""

import email
import email.policy
import json
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from aiosmtpd.controller import Controller

from monitor_assets import alerting as A
from monitor_assets.config import ChannelConfig
from monitor_assets.sensors import build_sensors

from .conftest import run_job

INCIDENTS = yaml.safe_load((Path(__file__).parents[1] / "data" / "demo" / "incidents.yaml").read_text())
# Which check each injected incident must trip.
EXPECTED_CHECKS = {
    "feature_drift": [A.DRIFT], "bias": [A.FAIRNESS], "concept_drift": [A.PERFORMANCE],
    "latency_error_spike": [A.LATENCY, A.ERROR_RATE], "no_logs": [A.VOLUME],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope.content.decode())
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


@pytest.fixture
def webhook_server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token", received
    server.shutdown()


def with_channels(config, channels: dict[str, ChannelConfig], names: tuple[str, ...]):
    return replace(config, channels={**config.channels, **channels},
                   models=tuple(replace(m, alert_channels=names) for m in config.models))


def evaluate_sensor(config, instance, cursor=None):
    sensor = next(s for s in build_sensors(config) if s.name == "alert_notification_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(context)
    return result, context.cursor


def subjects(inbox):
    return [str(email.message_from_string(m, policy=email.policy.default)["subject"]) for m in inbox.messages]


def test_demo_incidents_send_one_email_each_and_a_restart_sends_nothing_again(demo_run, demo_instance, smtp_server,
                                                                             tmp_path):
    config, result = demo_run
    controller, inbox = smtp_server
    email = ChannelConfig("email", "email", {"host": "127.0.0.1", "port": controller.port, "to": ["oncall@shop.example"]})
    config = with_channels(replace(config, reports_dir=str(tmp_path)), {"email": email}, ("email",))
    _, cursor = evaluate_sensor(config, demo_instance)
    got = subjects(inbox)
    assert len(got) == len(set(got))  # one problem, one message
    for incident in INCIDENTS["incidents"]:
        models = incident["model_id"] if isinstance(incident["model_id"], list) else [incident["model_id"]]
        for check in EXPECTED_CHECKS.get(incident["kind"], []):
            matching = [s for s in got if f"{models[0]}: {check} failed" in s]
            assert len(matching) == 1, (incident["kind"], check, got)
            assert incident["dates"][0] in matching[0]
    body = next(m for m in inbox.messages if f"{A.LATENCY} failed" in m)
    assert "Value:" in body and "threshold 500" in body and f"/runs/{result.run_id}" in body
    # No model breaks a performance, SLA, drift or fairness threshold without an injected incident.
    incident_pairs = {(m, c) for i in INCIDENTS["incidents"] for c in EXPECTED_CHECKS.get(i["kind"], [])
                      for m in (i["model_id"] if isinstance(i["model_id"], list) else [i["model_id"]])}
    for s in got:
        model, rest = s.split("] ", 1)[1].split(": ", 1)
        check = rest.split(" failed")[0]
        if check in {c for cs in EXPECTED_CHECKS.values() for c in cs}:
            assert (model, check) in incident_pairs, s
    # The sensor kept its place: evaluating again finds nothing new and sends nothing.
    count = len(inbox.messages)
    again, _ = evaluate_sensor(config, demo_instance, cursor)
    assert isinstance(again, dg.SkipReason) and "no new check evaluations" in again.skip_message
    assert len(inbox.messages) == count


def test_cooldown_keeps_a_re_run_quiet_and_slack_gets_the_webhook(demo_run, demo_instance, webhook_server, tmp_path,
                                                                   monkeypatch):
    config, _ = demo_run
    url, received = webhook_server
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", url)
    slack = ChannelConfig("slack", "slack", {"webhook_url_env": "TEST_SLACK_WEBHOOK"})
    config = with_channels(replace(config, reports_dir=str(tmp_path)), {"slack": slack}, ("slack",))
    _, cursor = evaluate_sensor(config, demo_instance)
    first = len(received)
    assert first > 0 and all(path == "/services/T000/B000/secret-token" for path, _ in received)
    assert any(f"{A.FAIRNESS} failed" in payload["text"] for _, payload in received)
    assert not any("secret-token" in payload["text"] for _, payload in received)
    # Re-run one incident day: its checks fail again, but within the cooldown nothing is resent.
    db = tmp_path / "rerun.duckdb"
    db.write_bytes(Path(config.warehouse_path).read_bytes())
    assert run_job(replace(config, warehouse_path=str(db)), "2026-10-14", instance=demo_instance).success
    result, _ = evaluate_sensor(config, demo_instance, cursor)
    assert "sent 0 message" in result.skip_message and len(received) == first


def test_alerts_table_updates_in_place_and_resolves(demo_run, tmp_path):
    config, _ = demo_run
    db = tmp_path / "alerts.duckdb"
    db.write_bytes(Path(config.warehouse_path).read_bytes())
    con = duckdb.connect(str(db))
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
    broken = replace(demo_config, warehouse_path=str(tmp_path / "w.duckdb"), reports_dir=str(tmp_path),
                     models=(replace(demo_config.models[0], reference_path=str(tmp_path / "missing.parquet")),
                             *demo_config.models[1:]))
    with dg.DagsterInstance.ephemeral() as instance:
        from monitor_assets.definitions import MONITORING_JOB, build_definitions
        job = build_definitions(broken).resolve_job_def(MONITORING_JOB)
        result = job.execute_in_process(instance=instance, partition_key="2026-10-01", raise_on_error=False)
        assert not result.success
        sensor = next(s for s in build_sensors(broken) if s.name == "run_failure_notification_sensor")
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event()).for_run_failure()
        sensor(context)
    lines = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert lines[-1]["subject"] == "[ERROR] run failed: monitoring_job" and lines[-1]["run_id"] == result.run_id
