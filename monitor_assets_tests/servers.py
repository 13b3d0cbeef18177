"""Real servers on 127.0.0.1 for the alert tests: SMTP (aiosmtpd) that accepts or refuses on demand, a
Slack-like webhook that answers the status codes it is told, a server that accepts a connection
and never answers, and one that trickles its answer a byte at a time. Each starts on a free port and is stopped by its fixture."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler: refuses the message with a 451 while `refusing`, else keeps it. Recipients in
    `refuse_rcpt` are refused at RCPT with 550 (the others still get the message); `envelopes` keeps
    (recipients, message) of every message taken."""

    def __init__(self):
        self.messages: list[str] = []
        self.envelopes: list[tuple[list[str], str]] = []
        self.refused = 0
        self.refusing = False
        self.refuse_rcpt: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address in self.refuse_rcpt:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def copies(self, recipient: str) -> int:
        """How many messages reached this recipient's envelope."""
        return sum(recipient in rcpts for rcpts, _ in self.envelopes)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        if self.refusing:
            self.refused += 1
            return "451 4.3.0 try again later"
        self.messages.append(envelope.content.decode())
        self.envelopes.append((list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"

    def parsed(self) -> list[email.message.EmailMessage]:
        return [email.message_from_string(m, policy=email.policy.default) for m in self.messages]

    def subjects(self) -> list[str]:
        return [str(m["subject"]) for m in self.parsed()]


@contextmanager
def smtp_server(port: int | None = None) -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port or free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


class Webhook:
    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.statuses: list[int] = []  # answered in order; 200 once they run out
        self.url = ""


@contextmanager
def webhook_server() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status = hook.statuses.pop(0) if hook.statuses else 200
            if status == 200:
                hook.received.append((self.path, body))
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"error")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token-0123"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[int]:
    """Accepts connections and never sends a byte (an SMTP server that hangs before its greeting)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        for conn in held:
            conn.close()
        sock.close()


@contextmanager
def trickling_server(answer: bytes, every_s: float = 2.0) -> Iterator[int]:
    """Answers each connection with `answer`, one byte every `every_s` seconds (after reading what the
    client sends meanwhile): every read gets a byte well within a socket timeout, the whole never ends
    in time. For SMTP pass a greeting; for HTTP a status line and headers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def trickle(conn: socket.socket):
        conn.settimeout(0.05)
        with conn:
            for i in range(len(answer)):
                if stop.wait(every_s):
                    return
                try:
                    while True:
                        if not conn.recv(65536):
                            break
                except TimeoutError:
                    pass
                except OSError:
                    return
                try:
                    conn.sendall(answer[i:i + 1])
                except OSError:
                    return  # the client gave up and closed

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()
