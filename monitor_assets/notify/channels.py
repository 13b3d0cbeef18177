"""Alert channels: e-mail (SMTP), Slack incoming webhook, JSON-lines file. No Dagster here.

Secrets (SMTP user and password, webhook URL) are read from the environment variables the config
names, at send time. They never enter a message, a log line, an error text or metadata: errors are
scrubbed of every secret value before they leave this module, and a malformed secret is described,
never echoed.

A channel's `timeout` bounds the whole exchange of one send, not each read: a socket timeout alone
lets a server that trickles a byte every few seconds hold a send for ever, so every socket of a send
is registered with a `Deadline` that shuts it down when the time is up (DNS lookups are not covered).
An SMTP server that refuses some recipients is a partial delivery (`PartialDelivery`), not a success.
"""

from __future__ import annotations

import http.client
import json
import os
import smtplib
import socket
import ssl
import threading
import time
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
    recipients: list[str] | None = None  # e-mail: only these (the ones still missing it); None: all


class ChannelError(RuntimeError):
    """A send that failed; the text is safe to store and show (no secrets)."""


class PartialDelivery(ChannelError):
    """The server took the message for some recipients and refused the others."""

    def __init__(self, text: str, delivered: list[str], refused: dict[str, str]):
        super().__init__(text)
        self.delivered, self.refused = delivered, refused


class Deadline:
    """Shuts down every socket registered with `watch` once `seconds` have passed, so a blocked read or
    write returns at once; each socket's own timeout is also set to the time left."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return max(0.05, self.ends - time.monotonic())  # never 0: that would make the socket non-blocking

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if not any(s is sock for s in self._sockets):
                self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)
        sock.settimeout(self.remaining())
        return sock

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done = True  # no shutdown after the send is over (its sockets may be closed and reused)
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet, already closed, or detached by a TLS wrap (the TLS socket is watched)


def _tls_context(deadline: Deadline) -> ssl.SSLContext:
    """A default TLS context whose sockets register with the deadline before their handshake."""

    class WatchedSSLSocket(ssl.SSLSocket):
        def do_handshake(self, *args, **kwargs):
            deadline.watch(self)
            return super().do_handshake(*args, **kwargs)

    context = ssl.create_default_context()
    context.sslsocket_class = WatchedSSLSocket
    return context


def _smtp_class(base: type[smtplib.SMTP], deadline: Deadline) -> type[smtplib.SMTP]:
    class WatchedSMTP(base):
        def _get_socket(self, host, port, timeout):
            return deadline.watch(super()._get_socket(host, port, deadline.remaining()))

    return WatchedSMTP


def _webhook_opener(deadline: Deadline) -> urllib.request.OpenerDirector:
    """urllib as usual (proxies from the environment included), with every connection watched."""
    context = _tls_context(deadline)

    class Http(http.client.HTTPConnection):
        def connect(self):
            super().connect()
            deadline.watch(self.sock)

    class Https(http.client.HTTPSConnection):
        def connect(self):
            super().connect()  # the TLS socket registered itself before its handshake
            deadline.watch(self.sock)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(Https, req, context=context)

    return urllib.request.build_opener(HttpHandler, HttpsHandler)


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


def send_email(options: dict, note: Notification) -> list[str]:
    """Send to `note.recipients` (default: every configured one); returns the recipients the server
    took. Raises PartialDelivery when it refused some of them, ChannelError when the send failed."""
    msg = EmailMessage()
    msg["Subject"] = header_safe(note.subject)
    msg["From"] = header_safe(str(options.get("sender", "monitor-assets@localhost")))
    to = [str(t) for t in (options["to"] if isinstance(options["to"], list) else [options["to"]])]
    msg["To"] = ", ".join(header_safe(t) for t in to)  # the header names everyone, a retry or not
    msg.set_content(note.body)  # text/plain: nothing in the body is interpreted as markup
    recipients = [t for t in to if note.recipients is None or t in note.recipients]
    host = options.get("host") or _env(options, "host", required=False) or "127.0.0.1"
    port = int(options.get("port", 25))
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
    late = f"SMTP server {host}:{port} did not answer within {timeout:g} s"
    with Deadline(timeout) as deadline:
        try:
            context = _tls_context(deadline)
            # The constructor connects and reads the greeting, through the watched socket.
            if options.get("ssl"):  # implicit TLS, e.g. port 465
                smtp = _smtp_class(smtplib.SMTP_SSL, deadline)(host, port, timeout=timeout, context=context)
            else:
                smtp = _smtp_class(smtplib.SMTP, deadline)(host, port, timeout=timeout)
            try:
                if options.get("starttls") and not options.get("ssl"):
                    smtp.starttls(context=context)
                user = _env(options, "username", required=False)
                if user:
                    smtp.login(user, _env(options, "password"))
                refused = smtp.send_message(msg, to_addrs=recipients)
            finally:
                _close_quietly(smtp)  # the message is in once DATA was accepted: QUIT cannot undo it
        except smtplib.SMTPRecipientsRefused as exc:  # every recipient refused
            if deadline.expired:
                raise ChannelError(late) from None
            raise _partial(host, port, recipients, exc.recipients) from None
        except smtplib.SMTPResponseException as exc:
            if deadline.expired:
                raise ChannelError(late) from None
            raise ChannelError(f"SMTP server {host}:{port} answered {exc.smtp_code}: "
                               f"{_one_line(exc.smtp_error)}") from None
        except (OSError, smtplib.SMTPException) as exc:
            if deadline.expired or isinstance(exc, TimeoutError) or "timed out" in str(exc):
                raise ChannelError(late) from None
            raise ChannelError(f"SMTP delivery to {host}:{port} failed: {type(exc).__name__}: {exc}") from None
    if refused:
        raise _partial(host, port, recipients, refused)
    return recipients


def _one_line(answer) -> str:
    text = answer.decode(errors="replace") if isinstance(answer, bytes) else str(answer)
    return " ".join(text.split())[:200]


def _partial(host: str, port: int, recipients: list[str], refused: dict) -> PartialDelivery:
    answers = {str(r): f"{code} {_one_line(text)}" for r, (code, text) in refused.items()}
    delivered = [r for r in recipients if r not in answers]
    listed = "; ".join(f"{r} ({a})" for r, a in answers.items())
    return PartialDelivery(f"SMTP server {host}:{port} refused {len(answers)} of {len(recipients)} "
                           f"recipients: {listed}"[:480], delivered, answers)


def _close_quietly(smtp: smtplib.SMTP) -> None:
    try:
        if smtp.sock is not None:
            smtp.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        smtp.close()


def send_slack(options: dict, note: Notification) -> None:
    url = _env(options, "webhook_url")
    if not url.startswith(("https://", "http://")):  # never echo the value: it is the secret
        raise ChannelError(f"the webhook URL in ${options.get('webhook_url_env')} is not an http(s) URL")
    payload = {"text": f"*{slack_escape(note.subject)}*\n{slack_escape(note.body)}"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
    late = f"Slack webhook did not answer within {timeout:g} s"
    with Deadline(timeout) as deadline:
        try:
            with _webhook_opener(deadline).open(request, timeout=timeout) as response:
                if response.status >= 300:
                    raise ChannelError(f"Slack webhook answered HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise ChannelError(f"Slack webhook answered HTTP {exc.code}") from None
        except ChannelError:
            raise
        except Exception as exc:  # noqa: BLE001 - the URL is a secret: say what failed, not where
            reason = getattr(exc, "reason", None)
            if deadline.expired or isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                raise ChannelError(late) from None
            detail = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
            raise ChannelError(f"Slack webhook request failed: {detail}") from None


def append_file(options: dict, note: Notification, default_path: Path) -> None:
    path = Path(options.get("path") or default_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"subject": note.subject, "severity": note.severity, "body": note.body,
                            **note.fields}, default=str) + "\n")


def deliver(channel: ChannelConfig, note: Notification, reports_dir: str) -> list[str] | None:
    """Send through one channel; returns the e-mail recipients the server took (None for other
    channels). Raises ChannelError (PartialDelivery for refused recipients) with a secret-free text."""
    try:
        if channel.type == "email":
            return send_email(channel.options, note)
        if channel.type == "slack":
            send_slack(channel.options, note)
        else:
            append_file(channel.options, note, Path(reports_dir) / "alerts.jsonl")
        return None
    except PartialDelivery as exc:
        raise PartialDelivery(scrub(str(exc), secret_values(channel)), exc.delivered, exc.refused) from None
    except ChannelError as exc:
        raise ChannelError(scrub(str(exc), secret_values(channel))) from None
    except Exception as exc:  # noqa: BLE001 - anything else: its type and a scrubbed text
        raise ChannelError(scrub(f"{type(exc).__name__}: {exc}", secret_values(channel))[:300]) from None
