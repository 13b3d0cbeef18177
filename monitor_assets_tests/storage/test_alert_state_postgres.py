"""The alert state in PostgreSQL (MONITOR_ENV=prod), on a real server: two OS processes enqueueing and
delivering at once lose nothing and send nothing twice; both stores give the same tables for the same
operations; a missing DAGSTER_PG_* variable fails in one line, before anything is written, without the
password; a prod deployment's local state file is copied in once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from monitor_assets.config import REPO_ROOT, load_config
from monitor_assets.query import _copy_state_tables
from monitor_assets.storage import state_sql
from monitor_assets.storage.alert_state import STATE_TABLES, AlertState
from monitor_assets.storage.state_sql import (
    PG_ENV,
    PgLocation,
    PostgresStore,
    StateConfigError,
    StateUnavailable,
)

from .alert_state_backends import empty_pg_state, pg_connect, pg_env, postgres_server  # noqa: F401 - a fixture

T0 = 1_800_000_000.0
CHANNELS = {"*": ["file", "email"]}
DAYS = [f"2026-10-{d:02d}" for d in range(1, 13)]
CHECKS = ("drift_share_below_threshold", "latency_p95_within_sla")


def failures(models: list[str], day: str) -> list[dict]:
    return [{"partition_date": day, "model_id": m, "check_name": c, "severity": "WARN", "value": 0.5,
             "threshold": 0.3, "message": f"{m} {c} {day}"} for m in models for c in CHECKS]


def worker(name: str, models: list[str], env: dict, start, out_file: str) -> None:
    """One process: per day, enqueue its models' failures, then claim and mark every due row it can get
    (its own and the other process's), as overlapping sensor ticks on two machines would."""
    os.environ.update(env)
    state = AlertState.for_config(load_config())
    claims: list[list[str]] = []
    start.wait(timeout=60)
    rounds = 0
    for day in [*DAYS, None, None, None]:  # three last rounds drain what is left
        if day is not None:
            state.enqueue(failures(models, day), CHANNELS, f"run-{name}", evaluated_at=T0, now=T0)
        now = T0 + 1
        for channel in ("file", "email"):
            keys = [r["alert_key"] for r in state.due(now) if r["channel"] == channel]
            if not keys:
                continue
            rounds += 1
            token = f"{name}-{rounds}"
            taken = state.claim(keys, channel, token, now=now, ttl_s=600)
            claims += [[r["alert_key"], r["channel"]] for r in taken]
            time.sleep(0.002)  # a delivery takes a while: the other process may try the same rows meanwhile
            state.mark_sent(token, now)
    Path(out_file).write_text(json.dumps(claims))


def test_two_processes_enqueue_and_deliver_at_once_without_loss_or_repeats(postgres_server, tmp_path,  # noqa: F811
                                                                           monkeypatch):
    empty_pg_state(postgres_server)
    env = {**pg_env(postgres_server), "MONITOR_WAREHOUSE": str(tmp_path / "w.duckdb"),
           "MONITOR_REPORTS_DIR": str(tmp_path / "reports")}
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    models = {"a": [f"model_a{i}" for i in range(4)], "b": [f"model_b{i}" for i in range(4)]}
    procs = [ctx.Process(target=worker, args=(n, models[n], env, start, str(tmp_path / f"{n}.json")))
             for n in models]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"

    claims = {n: [tuple(c) for c in json.loads((tmp_path / f"{n}.json").read_text())] for n in models}
    expected = {(f"{m}|{c}|{d}", ch) for ms in models.values() for m in ms for c in CHECKS for d in DAYS
                for ch in CHANNELS["*"]}
    per_key = Counter(claims["a"] + claims["b"])
    assert set(per_key) == expected  # none lost
    assert max(per_key.values()) == 1  # each row claimed by exactly one process, once
    for n in models:
        assert claims[n], f"process {n} claimed nothing"

    monkeypatch.setenv("MONITOR_ENV", "prod")
    for name, value in pg_env(postgres_server).items():
        monkeypatch.setenv(name, value)
    rows = AlertState.for_config(replace(load_config(), warehouse_path=env["MONITOR_WAREHOUSE"])).table(
        "monitoring.alert_deliveries")
    assert len(rows) == len(expected) and set(zip(rows.alert_key, rows.channel, strict=True)) == expected
    assert set(rows.status) == {"sent"} and set(rows.attempts) == {1}  # sent once each
    assert not list(tmp_path.glob("*_state.sqlite"))  # nothing went to a local file


def script(state: AlertState) -> None:
    """The same operations, in the same order, for both stores."""
    ch = {"*": ["file"], "m2": ["file", "email"]}
    state.enqueue([{"partition_date": "2026-10-14", "model_id": m, "check_name": c, "severity": "ERROR",
                    "value": v, "threshold": 0.25, "message": f"{m} {c}", "details": {"features": ["a", "b"]}}
                   for m, c, v in [("m1", "c1", 0.5), ("m1", "c2", None), ("m2", "c1", 0.75), ("m3", "c1", 1e-9)]],
                  ch, "run-1", T0, now=T0)
    state.resolve("c2", "2026-10-14", set(), T0 + 5)
    state.silence("m3", None, 2.0, "bo", "load test", now=T0)
    state.silence(None, "c9", 1.0, "bo", "noise", now=T0)
    state.lift_silence(2, "bo", now=T0 + 1)
    state.acknowledge("m1", "c1", None, "ana", "known", now=T0 + 10)
    state.close_muted(T0 + 11)
    taken = state.claim(["m2|c1|2026-10-14"], "email", "t1", T0 + 12, 60)
    assert len(taken) == 1
    state.mark_partial("t1", ["a@x.example"], {"b@x.example": "550 no"}, "refused", T0 + 13, 60, 1800)
    state.claim(["m2|c1|2026-10-14"], "file", "t2", T0 + 14, 60)
    state.mark_sent("t2", T0 + 15)
    state.defer(["m2|c1|2026-10-14"], "email", T0 + 500)
    state.give_up(T0 + 90_000, 3600)


def test_both_stores_give_the_same_tables_for_the_same_operations(postgres_server, tmp_path):  # noqa: F811
    empty_pg_state(postgres_server)
    local = AlertState(tmp_path / "w_state.sqlite")
    pg = AlertState(PostgresStore(PgLocation.from_env(pg_env(postgres_server))))
    for state in (local, pg):
        script(state)
    for name in STATE_TABLES:
        pd.testing.assert_frame_equal(local.table(name), pg.table(name))
        pd.testing.assert_frame_equal(local.listing(name), pg.listing(name))
    deliveries = local.table("monitoring.alert_deliveries").set_index(["alert_key", "channel"])
    assert deliveries.loc[("m1|c1|2026-10-14", "file"), "status"] == "acknowledged"
    assert deliveries.loc[("m3|c1|2026-10-14", "file"), "closed_reason"] == "silence #1"
    assert deliveries.loc[("m2|c1|2026-10-14", "email"), "status"] == "gave_up"
    assert deliveries.loc[("m2|c1|2026-10-14", "email"), "next_attempt_at"] == T0 + 500
    assert local.last_sent("file", "m2", "c1") == pg.last_sent("file", "m2", "c1") == T0 + 15
    assert local.open_for_model("m1", "c9") == pg.open_for_model("m1", "c9") == [("c1", 1)]
    alerts = pd.DataFrame({"partition_date": pd.to_datetime(["2026-10-14"] * 3), "model_id": ["m1", "m3", "m2"],
                           "check_name": ["c1", "c1", "c1"], "status": "open"})
    pd.testing.assert_frame_equal(local.annotate(alerts, now=T0 + 20), pg.annotate(alerts, now=T0 + 20))
    assert local.annotate(alerts, now=T0 + 20).state.tolist() == ["acknowledged", "silenced", "open"]
    # The read-only SQL shell's copy: same columns, declared types and rows, as DuckDB tables.
    assert local.snapshot() == pg.snapshot()
    copies = []
    for state in (local, pg):
        con = duckdb.connect(":memory:")
        con.execute("CREATE SCHEMA monitoring")
        _copy_state_tables(con, state)
        copies.append({name: con.sql(f"SELECT * FROM {name}").df() for name in STATE_TABLES})
        con.close()
    for name in STATE_TABLES:
        pd.testing.assert_frame_equal(*(c[name] for c in copies))
    assert len(copies[1]["monitoring.alert_deliveries"]) == 5


@pytest.mark.parametrize("missing", list(PG_ENV.values()))
def test_prod_without_a_pg_variable_fails_in_one_line_naming_it(postgres_server, missing):  # noqa: F811
    env = {k: v for k, v in pg_env(postgres_server).items() if k != missing}
    with pytest.raises(StateConfigError) as err:
        AlertState.for_config(load_config(), environ=env)
    message = str(err.value)
    assert missing in message and "\n" not in message and postgres_server.password not in message


def test_the_command_line_writes_nothing_without_the_host_and_never_shows_the_password(postgres_server,  # noqa: F811
                                                                                        tmp_path):
    empty_pg_state(postgres_server)
    env = {**os.environ, **pg_env(postgres_server), "MONITOR_WAREHOUSE": str(tmp_path / "w.duckdb"),
           "MONITOR_REPORTS_DIR": str(tmp_path)}
    del env["DAGSTER_PG_HOST"]
    done = subprocess.run([sys.executable, "-m", "monitor_assets.notify", "silence", "--model", "demand_forecaster",
                           "--hours", "1", "--by", "bo", "--reason", "r"], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("error: MONITOR_ENV=prod keeps the alert state in the instance's PostgreSQL "
                                   "database, but DAGSTER_PG_HOST is not set")
    assert postgres_server.password not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no state file either
    con = pg_connect(postgres_server)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT to_regclass('monitor_state.alert_silences')")
            table = cur.fetchone()[0]
            if table:
                cur.execute("SELECT count(*) FROM monitor_state.alert_silences")
                assert cur.fetchone()[0] == 0
    finally:
        con.close()
    # A wrong password: the connection error names the server, never the password.
    wrong = PgLocation.from_env({**pg_env(postgres_server), "DAGSTER_PG_PASSWORD": "hunter2-wrong-secret"})
    state = AlertState(PostgresStore(wrong))
    assert "hunter2" not in repr(state) and postgres_server.password not in repr(state)
    with pytest.raises(StateUnavailable) as err:
        state.due(T0)
    assert "hunter2" not in str(err.value) and "password authentication failed" in str(err.value)


def test_a_prod_state_file_is_copied_into_empty_postgres_once(postgres_server, tmp_path, monkeypatch):  # noqa: F811
    config = replace(load_config(), warehouse_path=str(tmp_path / "w.duckdb"))
    old = AlertState(config.state_path)  # the file a prod deployment kept before this release
    script(old)
    empty_pg_state(postgres_server)
    monkeypatch.setattr(state_sql, "_ready", set())  # a process starting after the upgrade
    env = pg_env(postgres_server)
    moved = AlertState.for_config(config, environ=env)
    for name in STATE_TABLES:
        pd.testing.assert_frame_equal(old.table(name), moved.table(name))
    # New ids continue after the copied ones; a later start copies nothing again.
    assert moved.silence("m1", None, 1.0, "cy", "after the move", now=T0) == 3
    monkeypatch.setattr(state_sql, "_ready", set())
    again = AlertState.for_config(config, environ=env)
    assert len(again.table("monitoring.alert_silences")) == 3
    assert len(again.table("monitoring.alert_deliveries")) == len(old.table("monitoring.alert_deliveries"))
