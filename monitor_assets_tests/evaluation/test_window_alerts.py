"""Evaluation windows that warn and reach people (issue 24 item 5), as users run it: a persistent DAGSTER_HOME
(the repo's SQLite instance template), the pipeline's assets up to the evaluation store with the window check, the
alert sensor reading the check's evaluations, the file channel and a real SMTP server.

A binary classifier over four calendar weeks: its labels follow the score for two weeks, then are coin flips
(accuracy falls from about 0.75 to 0.5; the features do not move). The stable weeks send nothing; the week the
performance drops sends one message naming it, by file and e-mail; the next week's warning, held by the cooldown,
is acknowledged and never sent.
"""

import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from monitor_assets import keys
from monitor_assets.config import load_config
from monitor_assets.definitions import build_definitions
from monitor_assets.evaluation.logic import STORE, WINDOW_CHECK, WINDOW_PICTURES
from monitor_assets.notify.defs import ALERT_SENSOR, build_sensors
from monitor_assets.notify.outbox import dispatch
from monitor_assets.storage.alert_state import AlertState
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import CSV_WORLD, persistent_home, write

from ..servers import smtp_server

START = dt.date(2026, 10, 5)  # a Monday
DAYS = [START + dt.timedelta(days=i) for i in range(28)]
DROP_FROM = dt.date(2026, 10, 19)  # labels are coin flips from here (the third week)
ROWS = 400
CHECK_KEY = dg.AssetCheckKey(keys.EVALUATION_STORE, WINDOW_CHECK)

CONFIG = """
partitions: {{start_date: 2026-10-05, end_date: 2026-11-01}}
label_delay_days: 0
evaluation: {{windows: [week]}}
alerts:
  cooldown_hours: 24
  channels: {{email: {{type: email, host: 127.0.0.1, port: {port}, to: [oncall@shop.example]}}}}
""" + CSV_WORLD + """models:
  - id: shop
    task: binary_classification
    main_metric: accuracy
    reference: shop.parquet
    reference_fields: {{score: proba}}
    features: {{x0: numeric, channel: categorical}}
    alert_channels: [email, file]
"""


def _rows(rng, n):
    x0 = rng.normal(0, 1, n)
    channel = rng.choice(["web", "app", "store"], n, p=[0.5, 0.3, 0.2])
    proba = 1 / (1 + np.exp(-2 * x0))
    return pd.DataFrame({"x0": x0, "channel": channel, "proba": proba})


def _world(tmp: Path, port: int):
    rng = np.random.default_rng(7)
    ref = _rows(rng, 4000)
    ref.assign(label=(rng.random(len(ref)) < ref.proba).astype(int)).to_parquet(tmp / "shop.parquet")
    for i, day in enumerate(DAYS):
        frame = _rows(rng, ROWS)
        frame["request_id"] = [f"r{i}-{k}" for k in range(ROWS)]
        frame["ts"] = f"{day:%Y-%m-%d} 10:00"
        chance = frame.proba if day < DROP_FROM else 0.5
        frame["y"] = (rng.random(ROWS) < chance).astype(int)
        write(tmp / "export" / f"{day:%Y-%m-%d}" / "shop.csv", frame.drop(columns="y").to_csv(index=False))
        write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", frame[["request_id", "y"]].to_csv(index=False))
    return load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp, port=port)))


def _sent(reports: Path) -> list[dict]:
    path = reports / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def smtp():
    with smtp_server() as (port, inbox):
        yield port, inbox


def test_a_window_that_drops_sends_one_message_and_a_stable_one_none(tmp_path, smtp, monkeypatch):
    port, inbox = smtp
    config = _world(tmp_path, port)
    job = dg.define_asset_job("window_alert_job", selection=dg.AssetSelection.assets(keys.EVALUATION_STORE).upstream()
                              | dg.AssetSelection.checks(CHECK_KEY))
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[job]))
    sensor = next(s for s in build_sensors(config, [CHECK_KEY]) if s.name == ALERT_SENSOR)
    reports = Path(config.reports_dir)
    home = persistent_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the instance template's storage folders resolve from it
    cursor = None

    def run_and_tick(start: dt.date, end: dt.date):
        nonlocal cursor
        result = defs.resolve_job_def("window_alert_job").execute_in_process(
            instance=instance, tags={"dagster/asset_partition_range_start": str(start),
                                     "dagster/asset_partition_range_end": str(end)})
        assert result.success
        tick = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        cursor = tick.cursor

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert "Sqlite" in type(instance.event_log_storage).__name__  # a user's storage, not in-memory
        run_and_tick(DAYS[0], DAYS[13])  # two stable weeks
        assert _sent(reports) == [] and inbox.messages == []
        run_and_tick(DAYS[14], DAYS[20])  # the week the labels stop following the score
        sent = _sent(reports)
        assert len(sent) == 1, sent
        assert sent[0]["alert_keys"] == [f"shop|{WINDOW_CHECK}|2026-10-25"]
        body = sent[0]["body"]
        assert sent[0]["severity"] == "WARN" and "week 2026-10-19..10-25" in sent[0]["subject"] + body
        assert "week 2026-10-19..10-25" in body and "accuracy" in body
        assert "week_2026-10-19.html" in body  # the message points to the report
        assert len(inbox.messages) == 1 and "week 2026-10-19..10-25" in inbox.parsed()[0].get_content()

        # recorded per partition: the Sundays judged, the drop week failed with severity WARN
        history = {r.partition: r for r in instance.event_log_storage.get_asset_check_execution_history(
            CHECK_KEY, limit=100)}
        failed = history["2026-10-25"].event.dagster_event.event_specific_data
        assert not failed.passed and failed.severity == dg.AssetCheckSeverity.WARN
        for day in ("2026-10-11", "2026-10-18", "2026-10-20"):
            assert history[day].event.dagster_event.event_specific_data.passed

        # The next week warns too (labels still coin flips): queued, held by the day's cooldown. Acknowledged, it
        # is closed and never sent, even once the cooldown is over.
        run_and_tick(DAYS[21], DAYS[27])
        history = {r.partition: r for r in instance.event_log_storage.get_asset_check_execution_history(
            CHECK_KEY, limit=100)}
        assert not history["2026-11-01"].event.dagster_event.event_specific_data.passed
        state = AlertState(config.state_path)
        pending = state.table("monitoring.alert_deliveries").set_index("alert_key")
        assert set(pending.loc[f"shop|{WINDOW_CHECK}|2026-11-01", "status"]) == {"pending"}
        state.acknowledge("shop", WINDOW_CHECK, None, "ana", "labels pipeline rebuilt, retraining planned")
        report = dispatch(state, config, now=time.time() + 2 * 86400)
        assert report.sent == 0 and report.closed["acknowledged"] == 2  # one row per channel
        assert len(_sent(reports)) == 1 and len(inbox.messages) == 1
    keys_sent = Counter(k for line in _sent(reports) for k in line["alert_keys"])
    assert keys_sent == {f"shop|{WINDOW_CHECK}|2026-10-25": 1}

    # the reports say which check warned; nothing drifted, so no pictures
    folder = reports / "evaluation" / "shop"
    assert f"Check {WINDOW_CHECK} warned" in (folder / "week_2026-10-19.html").read_text()
    assert "performance: accuracy" in (folder / "week_2026-10-19.md").read_text()
    assert "nothing warned on this window" in (folder / "week_2026-10-12.md").read_text()
    with connect(None, config.lake_path) as con:
        drifted = con.execute(f"SELECT metric, value FROM {STORE} WHERE metric LIKE 'drift.%.drifted' "
                              "AND model_version = '*'").fetchall()
        assert drifted and all(v == 0.0 for _, v in drifted)
        assert con.execute(f"SELECT count(*) FROM {WINDOW_PICTURES}").fetchone()[0] == 0
