"""Alert channels: e-mail (SMTP), Slack incoming webhook, JSON-lines file. No Dagster here.

Secrets (SMTP user and password, webhook URL) are read from the environment variables the config
names, at send time. They never enter a message, a log line, an error text or metadata: errors are
scrubbed of every secret value before they leave this module, and a malformed secret is described,
never echoed. Network calls have a short timeout so one dead server cannot stall a sensor tick.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from monitor_assets.config import ChannelConfig

DEFAULT_TIMEOUT_S = 10.0


@dataclass
class Notification:
    subject: str
    body: str
    severity: str
    fields: dict = field(default_factory=dict)  # structured copy for the file channel


class ChannelError(RuntimeError):
    """A send that failed; the text is safe to store and show (no secrets)."""


def _env(options: dict, key: str, required: bool = True) -> str | None:
    name = options.get(f"{key}_env")
    value = os.environ.get(name) if name else None
    if required and not value:
        raise ChannelError(f"environment variable {name or key.upper() + '_ENV (not configured)'} is not set")
    return value


def secret_values(channel: ChannelConfig) -> list[str]:
    """The current values of every secret the channel names (for scrubbing error texts)."""
    values = [os.environ.get(str(v)) for k, v in channel.options.items() if k.endswith("_env")]
    return [v for v in values if v and len(v) >= 4]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def slack_escape(text: str) -> str:
    """Slack's mrkdwn control characters, so `<!channel>` or `<@U123>` from a log stay literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header_safe(text: str, limit: int = 200) -> str:
    """One line for a mail header: no CR/LF (header injection), bounded length."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def send_email(options: dict, note: Notification) -> None:
    msg = EmailMessage()
    msg["Subject"] = header_safe(note.subject)
    msg["From"] = header_safe(str(options.get("sender", "monitor-assets@localhost")))
    to = options["to"] if isinstance(options["to"], list) else [options["to"]]
    msg["To"] = ", ".join(header_safe(str(t)) for t in to)
    msg.set_content(note.body)  # text/plain: nothing in the body is interpreted as markup
    host = options.get("host") or _env(options, "host", required=False) or "127.0.0.1"
    port = int(options.get("port", 25))
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
    try:
        smtp_class = smtplib.SMTP_SSL if options.get("ssl") else smtplib.SMTP  # implicit TLS, e.g. port 465
        kwargs = {"context": ssl.create_default_context()} if options.get("ssl") else {}
        with smtp_class(host, port, timeout=timeout, **kwargs) as smtp:
            if options.get("starttls") and not options.get("ssl"):
                smtp.starttls(context=ssl.create_default_context())
            user = _env(options, "username", required=False)
            if user:
                smtp.login(user, _env(options, "password"))
            smtp.send_message(msg)
    except TimeoutError:
        raise ChannelError(f"SMTP server {host}:{port} did not answer within {timeout:g} s") from None
    except smtplib.SMTPResponseException as exc:
        raise ChannelError(f"SMTP server {host}:{port} answered {exc.smtp_code}: "
                           f"{exc.smtp_error.decode(errors='replace')[:200]}") from None
    except (OSError, smtplib.SMTPException) as exc:
        if "timed out" in str(exc):  # smtplib turns a read timeout into a disconnect
            raise ChannelError(f"SMTP server {host}:{port} did not answer within {timeout:g} s") from None
        raise ChannelError(f"SMTP delivery to {host}:{port} failed: {type(exc).__name__}: {exc}") from None


def send_slack(options: dict, note: Notification) -> None:
    url = _env(options, "webhook_url")
    if not url.startswith(("https://", "http://")):  # never echo the value: it is the secret
        raise ChannelError(f"the webhook URL in ${options.get('webhook_url_env')} is not an http(s) URL")
    payload = {"text": f"*{slack_escape(note.subject)}*\n{slack_escape(note.body)}"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status >= 300:
                raise ChannelError(f"Slack webhook answered HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"Slack webhook answered HTTP {exc.code}") from None
    except TimeoutError:
        raise ChannelError(f"Slack webhook did not answer within {timeout:g} s") from None
    except ChannelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the URL is a secret: say what failed, not where
        reason = getattr(exc, "reason", None)
        detail = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
        raise ChannelError(f"Slack webhook request failed: {detail}") from None


def append_file(options: dict, note: Notification, default_path: Path) -> None:
    path = Path(options.get("path") or default_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"subject": note.subject, "severity": note.severity, "body": note.body,
                            **note.fields}, default=str) + "\n")


def deliver(channel: ChannelConfig, note: Notification, reports_dir: str) -> None:
    """Send through one channel; raises ChannelError with a secret-free text when it fails."""
    try:
        if channel.type == "email":
            send_email(channel.options, note)
        elif channel.type == "slack":
            send_slack(channel.options, note)
        else:
            append_file(channel.options, note, Path(reports_dir) / "alerts.jsonl")
    except ChannelError as exc:
        raise ChannelError(scrub(str(exc), secret_values(channel))) from None
    except Exception as exc:  # noqa: BLE001 - anything else: its type and a scrubbed text
        raise ChannelError(scrub(f"{type(exc).__name__}: {exc}", secret_values(channel))[:300]) from None
