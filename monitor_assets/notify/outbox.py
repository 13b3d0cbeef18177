"""Reliable delivery: failed checks go into the outbox once per alert and channel, and each sensor tick
sends what is due. No Dagster here.

Guarantees: every alert of a model reaches each of the model's channels at least once, or is closed
with a reason (acknowledged, silenced, resolved before it was sent, or given up after
`alerts.give_up_hours`, which is itself announced on the file channel). A row is claimed before it
is sent, so overlapping ticks never send it twice; a send that fails is retried on later ticks with
doubling backoff, each channel on its own. An e-mail that the server took for some recipients and
refused for others is recorded per recipient (`delivered_to`, `refused_to`) and retried for the
refused ones only. Channels are sent to side by side (one thread each), so a slow channel cannot hold
back another; a send starts only when its whole timeout (which bounds the whole exchange, see
`channels.Deadline`) fits in what is left of the tick's budget, so a tick ends within the budget.
The only duplicate left is the at-least-once one: a process killed between a send and its record.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby

from monitor_assets.config import ChannelConfig, MonitorConfig
from monitor_assets.formatting import iso, plural
from monitor_assets.links import dashboard_url
from monitor_assets.notify.channels import (
    DEFAULT_TIMEOUT_S,
    ChannelError,
    Notification,
    PartialDelivery,
    deliver,
)
from monitor_assets.notify.messages import compose
from monitor_assets.storage.alert_state import AlertState

BASE_BACKOFF_S = 30.0
MAX_BACKOFF_S = 1800.0
CLAIM_TTL_S = 180.0  # longer than a tick: a claim outlives its sender only if the process died
TICK_BUDGET_S = 25.0  # Dagster gives a sensor tick 60 s; each send may take its 10 s timeout
MAX_PARALLEL_CHANNELS = 8


@dataclass
class DispatchReport:
    sent: int = 0  # messages
    alerts_sent: int = 0  # (alert, channel) rows
    failed: list[str] = field(default_factory=list)  # "channel: error" per failed message
    deferred: int = 0  # rows held back by the cooldown
    closed: dict[str, int] = field(default_factory=dict)  # acknowledged / silenced before sending
    gave_up: list[dict] = field(default_factory=list)
    out_of_time: bool = False

    def summary(self) -> str:
        parts = [f"sent {plural(self.sent, 'message')} ({plural(self.alerts_sent, 'alert')})"]
        if self.failed:
            parts.append(f"{plural(len(self.failed), 'send')} failed, will retry: " + "; ".join(self.failed[:3]))
        if self.deferred:
            parts.append(f"{plural(self.deferred, 'alert')} held by the cooldown")
        for reason, n in self.closed.items():
            if n:
                parts.append(f"{n} {reason}")
        if self.gave_up:
            parts.append(f"gave up on {plural(len(self.gave_up), 'alert')}")
        if self.out_of_time:
            parts.append("stopped at the time budget, the rest goes next tick")
        return "; ".join(parts)


def channels_by_model(config: MonitorConfig) -> dict[str, list[str]]:
    """Each model's channel names; '*' (anything not a configured model) gets every model's channels."""
    mapping = {m.id: list(m.alert_channels) or ["file"] for m in (*config.models, *config.rankers)}
    mapping["*"] = sorted({c for names in mapping.values() for c in names}) or ["file"]
    return mapping


def send_timeout(channel: ChannelConfig) -> float:
    """How long one send through the channel may take (the file channel: no network, no timeout)."""
    return float(channel.options.get("timeout", DEFAULT_TIMEOUT_S)) if channel.type in ("email", "slack") else 0.0


def dispatch(state: AlertState, config: MonitorConfig, now: float | None = None,
             budget_s: float = TICK_BUDGET_S, send: Callable[[ChannelConfig, Notification, str], list[str] | None]
             = deliver, clock: Callable[[], float] = time.monotonic) -> DispatchReport:
    """Send every due message once; record what happened to each row."""
    now = time.time() if now is None else now
    tick = _Tick(state, config, now, clock(), budget_s, send, clock, DispatchReport())
    tick.report.closed = state.close_muted(now)
    tick.report.gave_up = state.give_up(now, config.alert_give_up_hours * 3600)
    if tick.report.gave_up:
        _announce_give_up(config, tick.report.gave_up, send)
    by_channel = {name: list(rows) for name, rows in groupby(state.due(now), key=lambda r: r["channel"])}
    if len(by_channel) <= 1:
        for name, rows in by_channel.items():
            _run_channel(tick, name, rows)
    else:
        with ThreadPoolExecutor(max_workers=min(len(by_channel), MAX_PARALLEL_CHANNELS)) as pool:
            for future in [pool.submit(_run_channel, tick, name, rows) for name, rows in by_channel.items()]:
                future.result()  # a bug in one channel's thread is raised here, not lost
    return tick.report


@dataclass
class _Tick:
    """What the channels' senders of one tick share; `lock` guards `report`."""

    state: AlertState
    config: MonitorConfig
    now: float
    started: float  # clock() at the start of the tick
    budget_s: float
    send: Callable[[ChannelConfig, Notification, str], list[str] | None]
    clock: Callable[[], float]
    report: DispatchReport
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self) -> float:
        """The time now, on the tick's `now` scale."""
        return self.now + self.clock() - self.started


def _run_channel(tick: _Tick, channel_name: str, rows: list[dict]) -> None:
    """One channel's due rows: a message per model and check, in turn, until one fails or time runs out."""
    channel = tick.config.channels.get(channel_name) or tick.config.channels["file"]
    # A send starts only when its whole timeout fits in what is left of the tick (one longer than
    # the whole budget is cut to it), so the tick ends within its budget.
    timeout = min(send_timeout(channel), tick.budget_s)
    if timeout and timeout != send_timeout(channel):
        channel = replace(channel, options={**channel.options, "timeout": timeout})
    cooldown_s = tick.config.alert_cooldown_hours * 3600
    # Rows that already reached some e-mail recipients go apart: each message goes to the ones missing it.
    for (model_id, check, delivered_json), group in groupby(
            rows, key=lambda r: (r["model_id"], r["check_name"], r.get("delivered_to"))):
        group = list(group)
        if tick.clock() - tick.started + timeout > tick.budget_s:
            with tick.lock:
                tick.report.out_of_time = True
            return
        last = tick.state.last_sent(channel_name, model_id, check)
        if last is not None and cooldown_s and tick.now - last < cooldown_s:
            tick.state.defer([r["alert_key"] for r in group], channel_name, last + cooldown_s)
            with tick.lock:
                tick.report.deferred += len(group)
            continue
        if not _send_group(tick, channel_name, channel, group, delivered_json):
            return  # one failure per channel and tick: the rest waits for the channel's next attempt


def _send_group(tick: _Tick, channel_name: str, channel: ChannelConfig, group: list[dict],
                delivered_json: str | None) -> bool:
    """Claim the rows, send them as one message and record the outcome; False when the send failed."""
    token = uuid.uuid4().hex
    claimed = tick.state.claim([r["alert_key"] for r in group], channel_name, token, tick.now, CLAIM_TTL_S)
    if not claimed:
        return True  # another tick has them
    note = _notification(tick.config, tick.state, claimed)
    delivered = set(json.loads(delivered_json or "[]"))
    if channel.type == "email":
        note.recipients = [str(t) for t in _recipients(channel) if str(t) not in delivered]
    try:
        took = tick.send(channel, note, tick.config.reports_dir) if note.recipients != [] else []
    except PartialDelivery as exc:
        tick.state.mark_partial(token, exc.delivered, exc.refused, str(exc), tick.at(), BASE_BACKOFF_S, MAX_BACKOFF_S)
        with tick.lock:
            tick.report.failed.append(f"{channel_name}: {exc}")
        return False
    except ChannelError as exc:
        tick.state.mark_failed(token, str(exc), tick.at(), BASE_BACKOFF_S, MAX_BACKOFF_S)
        with tick.lock:
            tick.report.failed.append(f"{channel_name}: {exc}")
        return False
    sent_rows = tick.state.mark_sent(token, tick.at(), took)
    with tick.lock:
        tick.report.alerts_sent += sent_rows
        tick.report.sent += 1
    return True


def _recipients(channel: ChannelConfig) -> list:
    to = channel.options.get("to") or []
    return to if isinstance(to, list) else [to]


def _notification(config: MonitorConfig, state: AlertState, rows: list[dict]) -> Notification:
    latest = max(rows, key=lambda r: str(r["partition_date"]))
    model_id, check = latest["model_id"], latest["check_name"]
    also_open = state.open_for_model(model_id, check)
    run_url = f"{config.ui_url}/runs/{latest['run_id']}" if latest.get("run_id") else config.ui_url
    hint = None
    if model_id in config.model_ids:
        hint = (f"python -m monitor_assets.notify ack --model {model_id} --check {check} "
                "--by <you> --reason '<why>'")
    subject, body = compose(rows, also_open, run_url, dashboard_url(config, model_id), hint)
    return Notification(subject, body, "ERROR" if subject.startswith("[ERROR]") else "WARN",
                        {"model_id": model_id, "check_name": check, "run_id": latest.get("run_id"),
                         "dates": sorted({str(r["partition_date"]) for r in rows}),
                         "alert_keys": [r["alert_key"] for r in rows]})


def _announce_give_up(config: MonitorConfig, rows: list[dict], send) -> None:
    """Tell the file channel (the one that cannot be down for a day) which deliveries were given up."""
    by_channel: dict[str, list[dict]] = {}
    for r in rows:
        by_channel.setdefault(r["channel"], []).append(r)
    file_channel = config.channels["file"]
    for channel_name, items in by_channel.items():
        if channel_name == file_channel.name:
            continue  # the file channel itself failed: the sensor's log and the UI say so
        lines = [f"- {r['alert_key']} (first queued {iso(r['enqueued_at'])}, {plural(r['attempts'], 'attempt')}); "
                 f"last error: {r['last_error'] or 'none'}" for r in items]
        note = Notification(
            f"[ERROR] gave up delivering {plural(len(items), 'alert')} through {channel_name}",
            f"These alerts could not be delivered through channel '{channel_name}' within "
            f"{config.alert_give_up_hours:g} h and will not be retried:\n" + "\n".join(lines) + "\n",
            "ERROR", {"channel": channel_name, "gave_up": [r["alert_key"] for r in items]})
        try:
            send(file_channel, note, config.reports_dir)
        except ChannelError:
            pass  # reported by the sensor through its log and an observation in the UI
