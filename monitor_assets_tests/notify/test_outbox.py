"""The outbox against real servers: retries until a channel accepts, each channel on its own, a hanging
server cannot stall a tick, overlapping ticks never send twice, acknowledgements and silences stop
notifications, and a delivery that never succeeds is given up and announced. Tests that keep alert state
run on both stores (`state_backend`: the local SQLite file, and PostgreSQL as MONITOR_ENV=prod keeps it)."""

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from monitor_assets.config import ChannelConfig, load_config
from monitor_assets.notify.channels import ChannelError, deliver
from monitor_assets.notify.outbox import channels_by_model, dispatch
from monitor_assets.storage.alert_state import AlertState

from ..servers import silent_server, smtp_server, webhook_server
from ..storage.alert_state_backends import postgres_server, state_backend  # noqa: F401 - fixtures

T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15): the tests move time by passing `now`


def make_config(tmp_path: Path, channels: dict[str, ChannelConfig], names: tuple[str, ...], **extra):
    config = load_config()
    return replace(config, warehouse_path=str(tmp_path / "w.duckdb"), reports_dir=str(tmp_path / "reports"),
                   channels={"file": config.channels["file"], **channels},
                   models=tuple(replace(m, alert_channels=names) for m in config.models), **extra)


def failure(model="demand_forecaster", check="latency_p95_within_sla", day="2026-10-14", value=1346.0, **kw):
    return {"partition_date": day, "model_id": model, "check_name": check, "severity": "WARN", "value": value,
            "threshold": 500.0, "message": f"latency p95 {value:g} ms (SLA 500 ms)", **kw}


def email_channel(port: int, timeout: float = 10) -> ChannelConfig:
    return ChannelConfig("email", "email", {"host": "127.0.0.1", "port": port, "to": ["oncall@shop.example"],
                                            "timeout": timeout})


def file_lines(config) -> list[dict]:
    path = Path(config.reports_dir) / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_smtp_that_refuses_then_accepts_gets_the_alert_once(tmp_path, state_backend):  # noqa: F811
    with smtp_server() as (port, inbox):
        config = make_config(tmp_path, {"email": email_channel(port)}, ("email",))
        state = AlertState.for_config(config)
        state.enqueue([failure()], channels_by_model(config), "run-1", T0, now=T0)
        inbox.refusing = True
        first = dispatch(state, config, now=T0)
        assert first.sent == 0 and inbox.refused == 1 and "451" in first.failed[0]
        row = state.table("monitoring.alert_deliveries").iloc[0]
        assert row.status == "pending" and row.attempts == 1 and "451" in row.last_error
        assert row.next_attempt_at > T0  # backoff: not again on the same tick's clock
        assert dispatch(state, config, now=T0 + 1).sent == 0 and inbox.refused == 1  # not due yet
        inbox.refusing = False
        second = dispatch(state, config, now=row.next_attempt_at + 1)
        assert second.sent == 1 and len(inbox.messages) == 1
        assert "demand_forecaster: latency_p95_within_sla failed on 2026-10-14" in inbox.subjects()[0]
        for later in (row.next_attempt_at + 60, row.next_attempt_at + 7200):  # restarts, later ticks: nothing again
            assert dispatch(state, config, now=later).sent == 0
        assert len(inbox.messages) == 1
        final = state.table("monitoring.alert_deliveries").iloc[0]
        assert final.status == "sent" and final.attempts == 2 and final.last_error is None


def test_a_server_that_never_answers_cannot_stall_a_tick_and_the_alert_is_retried(tmp_path, state_backend):  # noqa: F811
    with silent_server() as port:
        config = make_config(tmp_path, {"email": email_channel(port, timeout=2)}, ("email",))
        state = AlertState.for_config(config)
        # Three problems for the same channel: one hang per tick, the others wait for the next attempt.
        state.enqueue([failure(), failure(check="error_rate_within_sla", value=0.08),
                       failure(model="fraud_detector", check="drift_share_below_threshold", value=0.3)],
                      channels_by_model(config), "run-1", T0, now=T0)
        began = time.monotonic()
        report = dispatch(state, config, now=T0)
        took = time.monotonic() - began
        assert took < 6, took  # one 2 s timeout, not three
        assert report.sent == 0 and len(report.failed) == 1 and "did not answer within 2 s" in report.failed[0]
        rows = state.table("monitoring.alert_deliveries")
        assert set(rows.status) == {"pending"} and rows.attempts.sum() == 1
    with smtp_server(port) as (_, inbox):  # the server comes back on the same port
        report = dispatch(state, config, now=T0 + 3600)
        assert report.sent == 3 and len(inbox.messages) == 3
        assert set(state.table("monitoring.alert_deliveries").status) == {"sent"}


def test_slack_500_then_200_and_channels_retry_on_their_own(tmp_path, monkeypatch, state_backend):  # noqa: F811
    with webhook_server() as hook, smtp_server() as (port, inbox):
        monkeypatch.setenv("TEST_SLACK_URL", hook.url)
        slack = ChannelConfig("slack", "slack", {"webhook_url_env": "TEST_SLACK_URL"})
        config = make_config(tmp_path, {"slack": slack, "email": email_channel(port)}, ("email", "slack"))
        state = AlertState.for_config(config)
        state.enqueue([failure(message="from the log: <!channel> & <@U123> see <https://evil|here>")],
                      channels_by_model(config), "run-1", T0, now=T0)
        hook.statuses = [500]
        report = dispatch(state, config, now=T0)
        assert report.sent == 1 and len(inbox.messages) == 1  # e-mail went through beside the failing webhook
        assert report.failed == ["slack: Slack webhook answered HTTP 500"]
        rows = state.table("monitoring.alert_deliveries").set_index("channel")
        assert rows.loc["email", "status"] == "sent" and rows.loc["slack", "status"] == "pending"
        report = dispatch(state, config, now=T0 + 3600)
        assert report.sent == 1 and len(hook.received) == 1 and len(inbox.messages) == 1
        text = hook.received[0][1]["text"]
        # Escaped for Slack: the log's <!channel> and <@U123> stay literal text, nobody is pinged.
        assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&lt;@U123&gt;" in text
        assert "&amp;" in text and "secret-token" not in text
        assert "<!channel>" in inbox.parsed()[0].get_content()  # plain-text e-mail: shown as written


def test_overlapping_ticks_send_each_message_once(tmp_path, state_backend):  # noqa: F811
    with smtp_server() as (port, inbox):
        config = make_config(tmp_path, {"email": email_channel(port)}, ("email",))
        state = AlertState.for_config(config)
        state.enqueue([failure(day=f"2026-10-{d:02d}", check=c) for d in range(10, 20)
                       for c in ("latency_p95_within_sla", "error_rate_within_sla")],
                      channels_by_model(config), "run-1", T0, now=T0)
        reports = []
        threads = [threading.Thread(target=lambda: reports.append(dispatch(state, config, now=T0)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.sent for r in reports) == 2 and len(inbox.messages) == 2
        assert sorted(s.split("] ")[1].split(" failed")[0] for s in inbox.subjects()) == [
            "demand_forecaster: error_rate_within_sla", "demand_forecaster: latency_p95_within_sla"]


def test_enqueue_is_idempotent_and_a_newer_pass_resolves_before_sending(tmp_path, state_backend):  # noqa: F811
    config = make_config(tmp_path, {}, ("file",))
    state = AlertState.for_config(config)
    channels = channels_by_model(config)
    assert state.enqueue([failure()], channels, "run-1", T0, now=T0) == 1
    assert state.enqueue([failure()], channels, "run-1", T0, now=T0) == 0  # same evaluation read twice
    assert state.resolve("latency_p95_within_sla", "2026-10-14", set(), T0 - 10) == 0  # older pass: ignored
    assert state.resolve("latency_p95_within_sla", "2026-10-14", {"demand_forecaster"}, T0 + 10) == 0
    assert state.resolve("latency_p95_within_sla", "2026-10-14", set(), T0 + 10) == 1
    assert dispatch(state, config, now=T0 + 20).sent == 0 and file_lines(config) == []
    row = state.table("monitoring.alert_deliveries").iloc[0]
    assert row.status == "resolved" and row.closed_reason == "passed again before it was sent"
    # It fails again later: a new alert, sent.
    assert state.enqueue([failure(value=900.0)], channels, "run-2", T0 + 30, now=T0 + 30) == 1
    assert dispatch(state, config, now=T0 + 40).sent == 1
    assert "latency p95 900 ms" in file_lines(config)[0]["body"]


def test_acknowledged_and_silenced_alerts_are_not_sent_and_the_cooldown_holds_repeats(tmp_path, state_backend):  # noqa: F811
    config = make_config(tmp_path, {}, ("file",), alert_cooldown_hours=24.0)
    state = AlertState.for_config(config)
    channels = channels_by_model(config)
    silence = state.silence("fraud_detector", None, 2.0, "bo", "retraining today", now=T0)
    state.enqueue([failure(), failure(model="fraud_detector", check="drift_share_below_threshold"),
                   failure(check="error_rate_within_sla")], channels, "run-1", T0, now=T0)
    # Acknowledged once it is there (an acknowledgement of an alert still to come is refused).
    state.acknowledge("demand_forecaster", "latency_p95_within_sla", None, "ana", "known: cache migration",
                      now=T0)
    report = dispatch(state, config, now=T0 + 1)
    assert report.sent == 1 and report.closed == {"acknowledged": 1, "silenced": 1}
    rows = state.table("monitoring.alert_deliveries").set_index("check_name")
    assert rows.loc["latency_p95_within_sla", "status"] == "acknowledged"
    assert rows.loc["drift_share_below_threshold", "status"] == "silenced"
    assert rows.loc["drift_share_below_threshold", "closed_reason"] == f"silence #{silence}"
    # After the silence ends, a new day of the fraud model's drift is sent again.
    state.enqueue([failure(model="fraud_detector", check="drift_share_below_threshold", day="2026-10-15")],
                  channels, "run-2", T0 + 3 * 3600, now=T0 + 3 * 3600)
    assert dispatch(state, config, now=T0 + 3 * 3600 + 1).sent == 1
    # A new day of the error-rate problem within the cooldown waits, then goes out as one follow-up.
    state.enqueue([failure(check="error_rate_within_sla", day="2026-10-15"),
                   failure(check="error_rate_within_sla", day="2026-10-16")], channels, "run-3", T0 + 7200,
                  now=T0 + 7200)
    held = dispatch(state, config, now=T0 + 7201)
    assert held.sent == 0 and held.deferred == 2
    later = dispatch(state, config, now=T0 + 24 * 3600 + 5)
    assert later.sent == 1 and "2026-10-15 .. 2026-10-16 (2 days)" in file_lines(config)[-1]["subject"]


def test_a_delivery_that_never_succeeds_is_given_up_and_announced(tmp_path, monkeypatch, state_backend):  # noqa: F811
    monkeypatch.setenv("TEST_SLACK_URL", "hooks.slack.com/services/T0/B0/not-a-url-secret")  # no scheme
    slack = ChannelConfig("slack", "slack", {"webhook_url_env": "TEST_SLACK_URL"})
    config = make_config(tmp_path, {"slack": slack}, ("slack",), alert_give_up_hours=24.0)
    state = AlertState.for_config(config)
    state.enqueue([failure()], channels_by_model(config), "run-1", T0, now=T0)
    now = T0
    while now < T0 + 24 * 3600:
        report = dispatch(state, config, now=now)
        assert "not-a-url-secret" not in " ".join(report.failed)  # a malformed secret is never echoed
        now = max(now + 60, float(state.table("monitoring.alert_deliveries").next_attempt_at.iloc[0]))
    row = state.table("monitoring.alert_deliveries").iloc[0]
    assert row.attempts >= 5 and "is not an http(s) URL" in row.last_error  # doubling backoff, up to 30 min
    report = dispatch(state, config, now=T0 + 24 * 3600 + 1)
    assert len(report.gave_up) == 1
    row = state.table("monitoring.alert_deliveries").iloc[0]
    assert row.status == "gave_up" and "gave up after" in row.closed_reason
    notice = file_lines(config)[-1]
    assert notice["subject"] == "[ERROR] gave up delivering 1 alert through slack"
    assert "demand_forecaster|latency_p95_within_sla|2026-10-14" in notice["body"]
    assert "not-a-url-secret" not in json.dumps(notice)


def test_channel_errors_never_carry_secrets(monkeypatch):
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("TEST_SMTP_USER", "mlops")
    with smtp_server() as (port, _):
        # The demo SMTP server offers no AUTH: login fails, and the error must not contain the password.
        channel = ChannelConfig("email", "email", {"host": "127.0.0.1", "port": port, "to": ["a@b.c"],
                                                   "username_env": "TEST_SMTP_USER",
                                                   "password_env": "TEST_SMTP_PASSWORD"})
        from monitor_assets.notify.channels import Notification

        with pytest.raises(ChannelError) as err:
            deliver(channel, Notification("s\r\nBcc: victim@example.com", "b", "WARN"), "/tmp")
        assert "hunter2" not in str(err.value) and "SMTP" in str(err.value)


def test_email_is_plain_text_and_a_subject_cannot_inject_headers(tmp_path):
    from monitor_assets.notify.channels import Notification

    with smtp_server() as (port, inbox):
        note = Notification("[WARN] m: check failed\r\nBcc: victim@example.com",
                            "<b>not html</b>\r\nBcc: victim@example.com\n", "WARN")
        deliver(email_channel(port), note, str(tmp_path))
        message = inbox.parsed()[0]
        assert message["Bcc"] is None and message["To"] == "oncall@shop.example"
        assert message.get_content_type() == "text/plain"
        assert str(message["Subject"]) == "[WARN] m: check failed Bcc: victim@example.com"
        assert "<b>not html</b>" in message.get_content()
