"""The alert sensor as users run it: the real `dagster-daemon` on a persistent DAGSTER_HOME made from
the repo's instance template (run-sharded SQLite storage), two headless pipeline runs, a real SMTP
server; and the same sensor on a real PostgreSQL instance."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import dagster as dg
import yaml

from monitor_assets.config import REPO_ROOT, load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.devtools.webserver import running_daemon
from monitor_assets.notify.defs import ALERT_SENSOR

from ..conftest import persistent_home, run_job
from ..postgres import PASSWORD_ENV_VAR, postgres_server, write_postgres_instance  # noqa: F401 (fixture)
from ..servers import smtp_server
from ..storage.alert_state_backends import empty_pg_state, pg_connect, pg_env

DEMO = REPO_ROOT / "data" / "demo"


def demo_config_file(folder: Path, smtp_port: int) -> Path:
    """The demo config with absolute paths, e-mail + file channels for every model, no cooldown."""
    data = yaml.safe_load((DEMO / "monitor.yaml").read_text())
    for source in data["sources"].values():
        source["path"] = str(DEMO / source["path"])
    for model in data["models"]:
        model["reference"] = str(DEMO / model["reference"])
        for key in ("source", "labels"):  # a ranker's own files
            if isinstance(model.get(key), dict):
                model[key]["path"] = str(DEMO / model[key]["path"])
            elif isinstance(model.get(key), str):
                model[key] = str(DEMO / model[key])
        model["alert_channels"] = ["email", "file"]
    data["allow_outside_paths"] = True  # the demo's files stay where they are
    data["alerts"] = {"cooldown_hours": 0, "channels": {"email": {
        "type": "email", "host": "127.0.0.1", "port": smtp_port, "to": ["oncall@shop.example"]}}}
    path = folder / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sent_alert_keys(reports: Path) -> Counter:
    """How often each alert (model|check|day) went out through the file channel."""
    path = reports / "alerts.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return Counter(k for line in lines for k in line.get("alert_keys", []))


def sensor_ticks(home: Path) -> list:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        state = next((s for s in instance.all_instigator_state() if s.name == ALERT_SENSOR), None)
        if state is None:
            return []
        return instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=200)


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_pipeline(env: dict, start: str, end: str) -> None:
    done = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline", "--start", start, "--end", end],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_daemon_ticks_deliver_each_new_failure_exactly_once(tmp_path):
    home = persistent_home(tmp_path / "home")
    reports = tmp_path / "reports"
    with smtp_server() as (port, inbox):
        env = {**os.environ, "DAGSTER_HOME": str(home), "MONITOR_CONFIG": str(demo_config_file(tmp_path, port)),
               "MONITOR_WAREHOUSE": str(tmp_path / "warehouse" / "monitor.duckdb"),
               "MONITOR_REPORTS_DIR": str(reports), "MONITOR_ALERT_SENSOR_INTERVAL": "3"}
        # First run before the daemon starts: a latency and error spike (10-14) and feature drift (10-12..14).
        run_pipeline(env, "2026-10-12", "2026-10-14")
        with running_daemon(env):
            # The file channel's lines are appended alert by alert as the tick delivers: read them once the
            # first tick has finished, not at its first line (under load that read missed the drift alerts).
            wait_for(lambda: [t for t in sensor_ticks(home) if t.status.value in ("SKIPPED", "SUCCESS")]
                     and sent_alert_keys(reports), 120, "the first finished tick's alerts")
            first = sent_alert_keys(reports)
            # Channels are sent in parallel: the e-mails may land a moment after the file channel's lines.
            wait_for(lambda: len(inbox.messages) >= 3, 60, "the first tick's e-mails")
            ticks_before = len(sensor_ticks(home))
            assert ticks_before >= 1
            assert any("drift_share_below_threshold" in k for k in first)
            # Second run while the daemon ticks: drift goes on (10-15, 10-16) and a model logs nothing (10-19).
            run_pipeline(env, "2026-10-15", "2026-10-19")
            new_keys = {"fraud_detector|drift_share_below_threshold|2026-10-16",
                        "purchase_propensity|predictions_logged|2026-10-19"}
            wait_for(lambda: new_keys <= set(sent_alert_keys(reports)), 120, f"delivery of {new_keys}")
            wait_for(lambda: len(sensor_ticks(home)) >= max(3, ticks_before + 2), 60, "two more ticks")
            time.sleep(8)  # and a few more ticks, which must send nothing again
        ticks = sensor_ticks(home)
        statuses = Counter(t.status.value for t in ticks)
        assert len(ticks) >= 3 and statuses.get("FAILURE", 0) == 0, (statuses, [t.error for t in ticks if t.error])
        sent = sent_alert_keys(reports)
        assert max(sent.values()) == 1, [k for k, n in sent.items() if n > 1]  # exactly once per alert
        assert new_keys <= set(sent)
        # E-mail got the same messages as the file channel, each once.
        subjects = inbox.subjects()
        assert len(subjects) == len(set(subjects))
        file_messages = (reports / "alerts.jsonl").read_text().splitlines()
        assert len(subjects) == len(file_messages)


def test_alert_sensor_on_a_postgres_instance(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(PASSWORD_ENV_VAR, postgres_server.password)
    for name, value in pg_env(postgres_server).items():  # MONITOR_ENV=prod: the alert state in PostgreSQL too
        monkeypatch.setenv(name, value)
    empty_pg_state(postgres_server)
    home = tmp_path / "pg_home"
    home.mkdir()
    write_postgres_instance(home, postgres_server)
    config = replace(load_config(), warehouse_path=str(tmp_path / "w.duckdb"), reports_dir=str(tmp_path / "r"),
                     alert_cooldown_hours=0.0)
    sensor = next(s for s in build_definitions(config).sensors if s.name == ALERT_SENSOR)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.wipe()
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert run_job(config, "2026-10-13", "2026-10-14", instance=instance).success
        cursor = None
        counts = []
        for days in (None, ("2026-10-15", "2026-10-16"), None):
            if days:
                assert run_job(config, *days, instance=instance).success
            result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
            cursor = result.cursor
            counts.append(sum(sent_alert_keys(Path(config.reports_dir)).values()))
        sent = sent_alert_keys(Path(config.reports_dir))
        assert max(sent.values()) == 1
        assert "demand_forecaster|latency_p95_within_sla|2026-10-14" in sent
        assert "fraud_detector|drift_share_below_threshold|2026-10-16" in sent
        assert counts[0] < counts[1] == counts[2]  # the second run's failures once; the third tick: nothing
    # the outbox the sensor worked through is PostgreSQL's: every file alert sent there, no state file written
    con = pg_connect(postgres_server)
    try:
        with con, con.cursor() as cur:
            cur.execute("SELECT count(*) FROM alert_deliveries WHERE channel = 'file' AND status = 'sent'")
            assert cur.fetchone()[0] == len(sent)
    finally:
        con.close()
    assert not list(tmp_path.rglob("*_state.sqlite"))
