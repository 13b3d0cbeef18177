"""Alert channels: e-mail (SMTP), Slack incoming webhook, JSON-lines file. No Dagster here.

Secrets (SMTP password, webhook URL) are read from the environment variables the config names, at
send time; they are never part of a message, a log line or metadata.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from monitor_assets.config import ChannelConfig


@dataclass
class Notification:
    subject: str
    body: str
    severity: str
    fields: dict = field(default_factory=dict)  # structured copy for the file channel


class ChannelError(RuntimeError):
    pass


def _env(options: dict, key: str, required: bool = True) -> str | None:
    name = options.get(f"{key}_env")
    value = os.environ.get(name) if name else None
    if required and not value:
        raise ChannelError(f"environment variable {name or key.upper() + '_ENV (not configured)'} is not set")
    return value


def send_email(options: dict, note: Notification) -> None:
    msg = EmailMessage()
    msg["Subject"] = note.subject
    msg["From"] = options.get("sender", "monitor-assets@localhost")
    to = options["to"] if isinstance(options["to"], list) else [options["to"]]
    msg["To"] = ", ".join(to)
    msg.set_content(note.body)
    host = options.get("host") or _env(options, "host", required=False) or "127.0.0.1"
    port = int(options.get("port", 25))
    with smtplib.SMTP(host, port, timeout=float(options.get("timeout", 10))) as smtp:
        if options.get("starttls"):
            smtp.starttls(context=ssl.create_default_context())
        user = _env(options, "username", required=False)
        if user:
            smtp.login(user, _env(options, "password"))
        smtp.send_message(msg)


def send_slack(options: dict, note: Notification) -> None:
    url = _env(options, "webhook_url")
    payload = {"text": f"*{note.subject}*\n{note.body}"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=float(options.get("timeout", 10))) as response:
            if response.status >= 300:
                raise ChannelError(f"Slack webhook answered HTTP {response.status}")
    except OSError as exc:  # the URL is a secret: say what failed, not where
        raise ChannelError(f"Slack webhook request failed: {type(exc).__name__}") from None


def append_file(options: dict, note: Notification, default_path: Path) -> None:
    path = Path(options.get("path") or default_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"subject": note.subject, "severity": note.severity, "body": note.body,
                            **note.fields}, default=str) + "\n")


def deliver(channel: ChannelConfig, note: Notification, reports_dir: str) -> None:
    if channel.type == "email":
        send_email(channel.options, note)
    elif channel.type == "slack":
        send_slack(channel.options, note)
    else:
        append_file(channel.options, note, Path(reports_dir) / "alerts.jsonl")
