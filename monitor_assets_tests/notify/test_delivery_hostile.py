"""Delivery against servers that misbehave, on 127.0.0.1: an SMTP server that refuses one recipient,
servers that trickle one byte every 2 s (SMTP and HTTP); and the command line's promises: no
acknowledgement of an alert that does not exist, silences that end, listings people can read."""

import csv
import datetime as dt
import io
import json
import re
import sqlite3
import time
from collections import Counter
from dataclasses import replace

from monitor_assets.config import ChannelConfig
from monitor_assets.notify.outbox import channels_by_model, dispatch
from monitor_assets.storage.alert_state import SCHEMA, AlertState

from ..servers import smtp_server, trickling_server, webhook_server
from .test_acknowledge import cli
from .test_outbox import T0, failure, file_lines, make_config

TEAM = ["ana@shop.example", "bo@shop.example", "cy@shop.example"]
ISO_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
EPOCH_FLOAT = re.compile(r"\b1\d{9}\.\d+")  # 2001..2033 as epoch seconds with a fraction


def team_channel(port: int, name: str = "email", timeout: float = 10) -> ChannelConfig:
    return ChannelConfig(name, "email", {"host": "127.0.0.1", "port": port, "to": TEAM, "timeout": timeout})


def deliveries(state: AlertState):
    return state.table("monitoring.alert_deliveries").set_index("check_name")


def test_a_refused_recipient_is_retried_alone_and_the_others_get_exactly_one_copy(tmp_path):
    with smtp_server() as (port, inbox):
        config = make_config(tmp_path, {"email": team_channel(port)}, ("email",))
        state = AlertState(config.state_path)
        state.enqueue([failure()], channels_by_model(config), "run-1", T0, now=T0)
        inbox.refuse_rcpt = {"cy@shop.example"}
        first = dispatch(state, config, now=T0)
        assert first.sent == 0 and first.failed == [
            f"email: SMTP server 127.0.0.1:{port} refused 1 of 3 recipients: "
            "cy@shop.example (550 5.1.1 mailbox unavailable)"]
        row = deliveries(state).loc["latency_p95_within_sla"]
        assert row.status == "pending" and row.attempts == 1 and row.next_attempt_at > T0
        assert json.loads(row.delivered_to) == ["ana@shop.example", "bo@shop.example"]
        assert json.loads(row.refused_to) == {"cy@shop.example": "550 5.1.1 mailbox unavailable"}
        assert [rcpts for rcpts, _ in inbox.envelopes] == [["ana@shop.example", "bo@shop.example"]]

        # A second problem arrives meanwhile: it goes to all three (cy still refuses).
        state.enqueue([failure(check="error_rate_within_sla", value=0.08)], channels_by_model(config), "run-2",
                      T0 + 10, now=T0 + 10)
        second = dispatch(state, config, now=row.next_attempt_at + 1)
        assert second.sent == 0 and "refused 1 of 3 recipients: cy@shop.example" in second.failed[0]
        # Retried for cy alone while cy still refuses: ana and bo get no second copy.
        third = dispatch(state, config, now=max(deliveries(state).next_attempt_at) + 1)
        assert third.sent == 0 and third.failed == [
            f"email: SMTP server 127.0.0.1:{port} refused 1 of 1 recipients: "
            "cy@shop.example (550 5.1.1 mailbox unavailable)"]
        assert len(inbox.envelopes) == 2
        inbox.refuse_rcpt = set()
        retry_at = max(deliveries(state).next_attempt_at) + 1
        assert dispatch(state, config, now=retry_at).sent == 2
        for later in (retry_at + 60, retry_at + 7200):
            assert dispatch(state, config, now=later).sent == 0

    copies = Counter((str(m["subject"]).split("] ")[1].split(" failed")[0], rcpt)
                     for (rcpts, _), m in zip(inbox.envelopes, inbox.parsed(), strict=True) for rcpt in rcpts)
    for check in ("latency_p95_within_sla", "error_rate_within_sla"):
        assert [copies[(f"demand_forecaster: {check}", r)] for r in TEAM] == [1, 1, 1], copies
    assert sum(copies.values()) == 6  # 2 alerts x 3 recipients, nothing more
    final = deliveries(state)
    assert set(final.status) == {"sent"} and final.refused_to.isna().all()
    assert [json.loads(x) for x in final.delivered_to] == [TEAM, TEAM]
    assert final.attempts.to_dict() == {"latency_p95_within_sla": 2, "error_rate_within_sla": 3}
    # The retry's header still names the whole team: cy sees who else got it.
    assert str(inbox.parsed()[-1]["To"]) == ", ".join(TEAM)


def test_trickling_servers_fail_within_their_timeout_and_a_healthy_channel_gets_its_message(tmp_path, monkeypatch):
    smtp_greeting = b"220 " + b"x" * 60 + b"\r\n"  # a byte every 2 s: 2 minutes for the greeting alone
    http_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with (trickling_server(smtp_greeting) as slow_smtp, trickling_server(http_answer) as slow_http,
          smtp_server() as (port, inbox)):
        monkeypatch.setenv("TEST_SLOW_HOOK", f"http://127.0.0.1:{slow_http}/services/T0/B0/slow-secret-0123")
        channels = {"slow_mail": team_channel(slow_smtp, "slow_mail", timeout=3),
                    "slow_hook": ChannelConfig("slow_hook", "slack", {"webhook_url_env": "TEST_SLOW_HOOK",
                                                                      "timeout": 3}),
                    "email": team_channel(port)}
        config = make_config(tmp_path, channels, ("slow_mail", "slow_hook", "email", "file"))
        state = AlertState(config.state_path)
        state.enqueue([failure()], channels_by_model(config), "run-1", T0, now=T0)
        began = time.monotonic()
        report = dispatch(state, config, now=T0)
        took = time.monotonic() - began
        # Two 3 s deadlines side by side: one after the other would be 6 s, without deadlines minutes.
        assert 2.9 < took < 6, took
        assert sorted(report.failed) == ["slow_hook: Slack webhook did not answer within 3 s",
                                         f"slow_mail: SMTP server 127.0.0.1:{slow_smtp} did not answer within 3 s"]
        assert report.sent == 2 and len(inbox.messages) == 1 and len(file_lines(config)) == 1
        rows = state.table("monitoring.alert_deliveries").set_index("channel")
        assert rows.status.to_dict() == {"email": "sent", "file": "sent", "slow_hook": "pending",
                                         "slow_mail": "pending"}
        assert rows.loc["slow_mail", "attempts"] == 1 and rows.loc["slow_hook", "next_attempt_at"] > T0
        assert "slow-secret" not in " ".join(rows.last_error.dropna())

    # Both come back (healthy servers now): the retry delivers, the others are not sent again.
    with smtp_server() as (port2, inbox2), webhook_server() as hook:
        monkeypatch.setenv("TEST_SLOW_HOOK", hook.url)
        config = replace(config, channels={**config.channels, "slow_mail": team_channel(port2, "slow_mail", 3)})
        again = dispatch(state, config, now=T0 + 3600)
        assert again.sent == 2 and again.failed == []
        assert len(inbox2.messages) == 1 and len(hook.received) == 1
    assert len(inbox.messages) == 1 and len(file_lines(config)) == 1
    assert set(state.table("monitoring.alert_deliveries").status) == {"sent"}


def test_a_tick_does_not_start_a_send_that_cannot_finish_within_its_budget(tmp_path):
    with trickling_server(b"220 " + b"x" * 60 + b"\r\n") as slow_smtp:
        config = make_config(tmp_path, {"slow_mail": team_channel(slow_smtp, "slow_mail", timeout=3)},
                             ("slow_mail",))
        state = AlertState(config.state_path)
        state.enqueue([failure()], channels_by_model(config), "run-1", T0, now=T0)
        began = time.monotonic()
        clock = iter([0.0])  # then 8 s: the tick has used 8 s of its 10 when this channel's turn comes
        report = dispatch(state, config, now=T0, budget_s=10, clock=lambda: next(clock, 8.0))
        assert time.monotonic() - began < 1 and report.out_of_time and report.sent == 0 and not report.failed
        row = state.table("monitoring.alert_deliveries").iloc[0]
        assert row.status == "pending" and row.attempts == 0  # untouched: next tick


def test_ack_of_an_alert_that_does_not_exist_is_refused_and_the_later_alert_is_delivered(tmp_path):
    config = make_config(tmp_path, {}, ("file",), alert_cooldown_hours=0.0)
    state = AlertState(config.state_path)
    refused = cli(tmp_path, "ack", "--model", "fraud_detector", "--check", "drift_share_below_threshold",
                  "--day", "2026-10-14", "--by", "ana", "--reason", "expected")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (
        "error: no open alert to acknowledge for model fraud_detector, check drift_share_below_threshold, day "
        "2026-10-14; for alerts still to come use a silence, which ends: silence --model fraud_detector --hours H\n")
    assert len(state.table("monitoring.alert_acknowledgements")) == 0
    now = time.time()
    state.enqueue([failure(model="fraud_detector", check="drift_share_below_threshold")],
                  channels_by_model(config), "run-1", now, now=now)
    report = dispatch(state, config, now=now)
    assert report.sent == 1 and report.closed == {"acknowledged": 0, "silenced": 0}
    assert file_lines(config)[0]["alert_keys"] == ["fraud_detector|drift_share_below_threshold|2026-10-14"]
    # Now it exists: acknowledged. A day that fails after the acknowledgement is a new alert, still sent.
    done = cli(tmp_path, "ack", "--model", "fraud_detector", "--by", "ana", "--reason", "provider change")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    later = time.time() + 1
    state.enqueue([failure(model="fraud_detector", check="drift_share_below_threshold", day="2026-10-15")],
                  channels_by_model(config), "run-2", later, now=later)
    assert dispatch(state, config, now=later).sent == 1 and len(file_lines(config)) == 2
    assert len(state.table("monitoring.alert_acknowledgements")) == 1


def test_a_silence_with_an_end_suppresses_before_and_not_after(tmp_path):
    config = make_config(tmp_path, {}, ("file",), alert_cooldown_hours=0.0)
    state = AlertState(config.state_path)
    assert cli(tmp_path, "silence", "--model", "fraud_detector", "--by", "bo", "--reason", "x").returncode == 2
    zero = cli(tmp_path, "silence", "--model", "fraud_detector", "--hours", "0", "--by", "bo", "--reason", "x")
    assert zero.returncode == 2
    assert zero.stderr == "error: hours: expected more than 0 and at most 2160 (90 days), got 0\n"
    assert len(state.table("monitoring.alert_silences")) == 0
    done = cli(tmp_path, "silence", "--model", "fraud_detector", "--hours", "1", "--by", "bo", "--reason", "load test")
    assert done.returncode == 0 and done.stderr == ""
    silence = state.table("monitoring.alert_silences").iloc[0]
    assert abs(silence.ends_at - silence.starts_at - 3600) < 1e-6
    during = silence.starts_at + 60
    state.enqueue([failure(model="fraud_detector", check="drift_share_below_threshold")],
                  channels_by_model(config), "run-1", during, now=during)
    report = dispatch(state, config, now=during)
    assert report.sent == 0 and report.closed == {"acknowledged": 0, "silenced": 1} and file_lines(config) == []
    after = silence.ends_at + 1
    state.enqueue([failure(model="fraud_detector", check="drift_share_below_threshold", day="2026-10-15")],
                  channels_by_model(config), "run-2", after, now=after)
    report = dispatch(state, config, now=after)
    assert report.sent == 1 and report.closed == {"acknowledged": 0, "silenced": 0}
    assert [line["alert_keys"] for line in file_lines(config)] == [
        ["fraud_detector|drift_share_below_threshold|2026-10-15"]]


def test_list_prints_utc_dates_and_plain_numbers_and_nothing_else(tmp_path):
    config = make_config(tmp_path, {}, ("file",))
    state = AlertState(config.state_path)
    state.enqueue([failure(), failure(check="error_rate_within_sla", value=0.0812345)],
                  channels_by_model(config), "run-1", T0, now=T0)
    assert dispatch(state, config, now=T0 + 5).sent == 2
    assert cli(tmp_path, "ack", "--model", "demand_forecaster", "--by", "ana", "--reason", "known").returncode == 0
    assert cli(tmp_path, "silence", "--model", "fraud_detector", "--hours", "2", "--by", "bo",
               "--reason", "x").returncode == 0
    listings = {}
    for table in ("deliveries", "acknowledgements", "silences"):
        done = cli(tmp_path, "list", table)
        assert done.returncode == 0 and done.stderr == ""  # no DEBUG or warning lines on either stream
        assert "DEBUG" not in done.stdout and not EPOCH_FLOAT.search(done.stdout), done.stdout
        listings[table] = list(csv.DictReader(io.StringIO(done.stdout)))
    rows = {r["check_name"]: r for r in listings["deliveries"]}
    t0 = dt.datetime.fromtimestamp(T0, dt.UTC)
    assert rows["latency_p95_within_sla"]["enqueued_at"] == t0.strftime("%Y-%m-%dT%H:%M:%SZ") == "2027-01-15T08:00:00Z"
    assert rows["latency_p95_within_sla"]["sent_at"] == "2027-01-15T08:00:05Z"
    assert rows["latency_p95_within_sla"]["value"] == "1346" and rows["latency_p95_within_sla"]["threshold"] == "500"
    assert rows["error_rate_within_sla"]["value"] == "0.0812345" and rows["error_rate_within_sla"]["attempts"] == "1"
    assert rows["latency_p95_within_sla"]["claimed_until"] == ""
    ack = listings["acknowledgements"][0]
    assert ISO_SECOND.fullmatch(ack["acknowledged_at"]) and ack["id"] == "1"
    silence = listings["silences"][0]
    starts = dt.datetime.strptime(silence["starts_at"], "%Y-%m-%dT%H:%M:%SZ")
    ends = dt.datetime.strptime(silence["ends_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert ends - starts == dt.timedelta(hours=2) and silence["lifted_at"] == ""


def test_a_state_file_from_the_last_release_gets_the_new_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "w_state.sqlite"
    old_schema = "\n".join(line for line in SCHEMA.splitlines()
                           if not line.lstrip().startswith(("delivered_to", "refused_to")))
    with sqlite3.connect(path) as con:
        con.executescript(old_schema)
        con.execute("""INSERT INTO alert_deliveries (alert_key, channel, model_id, check_name, partition_date,
                       severity, message, evaluated_at, status, enqueued_at, next_attempt_at, sent_at)
                       VALUES ('m|c|2026-10-14', 'file', 'm', 'c', '2026-10-14', 'WARN', 'x', ?, 'sent', ?, ?, ?)""",
                    [T0, T0, T0, T0])
    con.close()
    state = AlertState(path)
    before = state.table("monitoring.alert_deliveries")
    assert len(before) == 1 and {"delivered_to", "refused_to"} <= set(before.columns)
    assert before.status.iloc[0] == "sent" and before.delivered_to.isna().all()
