"""`make dev`: the Dagster UI, schedules and sensors (`dagster dev`), stopped completely on request.

    python -m monitor_assets.devtools.dev [--host 127.0.0.1] [--port 3000]

The port defaults to $MONITOR_UI_PORT, else 3000. `dagster dev` started from a script or a service manager
inherits an ignored SIGINT, and it makes SIGTERM do what SIGINT does: it then ignores both and leaves its
webserver, daemon and code servers running. This supervisor starts it in a process group of its own with
default signal handling, and on SIGTERM, SIGINT or SIGHUP stops that whole group: SIGINT (Dagster's own
clean shutdown), SIGTERM after GRACE_INT seconds, SIGKILL after GRACE_TERM more, then any descendant that
left the group. It is also a child subreaper (Linux), so processes orphaned on the way stay its
descendants and are found. A port already in use is said at once (exit 2): the webserver would log it
and `dagster dev` would carry on without a UI. Exit status: 0 stopped on request, 2 port in use, else
dagster dev's own status (1 if it ended with 0 on its own).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from monitor_assets.config import REPO_ROOT

GRACE_INT = 8.0  # dagster dev stops its webserver and daemon in 2 to 4 s on this machine
GRACE_TERM = 3.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process-group stop still works
        pass


def _child_setup() -> None:
    """In the child before exec: handled signals reset themselves at exec, ignored ones do not."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # if this supervisor is SIGKILLed, dagster dev still stops


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group, start time) of a live process, None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else (int(fields[1]), int(fields[2]), fields[19])


def descendants(root: int, pgid: int | None = None) -> dict[int, str]:
    """Live descendants of `root` and members of process group `pgid`, as {pid: start time}."""
    table = {pid: s for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()) if (s := _stat(pid))}
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    if pgid is not None:
        found.update({pid: start for pid, (_, group, start) in table.items() if group == pgid and pid != os.getpid()})
    return found


def _alive(procs: dict[int, str]) -> dict[int, str]:
    """Those still running (same pid and same start time: a reused pid is another process)."""
    return {pid: start for pid, start in procs.items() if (s := _stat(pid)) and s[2] == start}


def _reap(keep: int | None = None) -> None:
    """Collect exited orphans handed to this subreaper (all exited children but `keep`, whose status
    Popen reads)."""
    for pid in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid() and int(pid) != keep:
            try:
                os.waitpid(int(pid), os.WNOHANG)
            except ChildProcessError:
                pass


def stop(child: subprocess.Popen, known: dict[int, str]) -> tuple[float, int]:
    """Stop the child's process group and every process in `known` (plus descendants found on the way):
    SIGINT, then SIGTERM, then SIGKILL. Returns the seconds taken and how many needed SIGKILL."""
    began = time.monotonic()
    procs = {**known, **descendants(os.getpid(), child.pid)}
    killed, previous = 0, None
    for sig, grace in ((signal.SIGINT, GRACE_INT), (signal.SIGTERM, GRACE_TERM), (signal.SIGKILL, 2.0)):
        left = _alive(procs)
        if not left:
            break
        if previous:  # said, so that a slow stop is not a silent one
            print(f"dev: {len(left)} process{'es' * (len(left) != 1)} still running {previous}: {sig.name}",
                  flush=True)
        previous = f"{grace:.0f} s after {sig.name}"
        if sig == signal.SIGKILL:
            killed = len(left)
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in left:  # those that left the group (a new session) get it too; once: a second SIGINT
            if (stat := _stat(pid)) is None or stat[1] == child.pid:  # makes uvicorn skip its clean exit
                continue
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            child.poll()
            _reap(child.pid)
            procs.update(descendants(os.getpid(), child.pid))  # children started while stopping
            if not _alive(procs):
                break
            time.sleep(0.1)
    child.poll()
    _reap(child.pid)
    return time.monotonic() - began, killed


def port_taken(host: str, port: int) -> str | None:
    """Why the webserver could not listen there, or None. Checked first: with the port taken, the webserver
    logs one error line and `dagster dev` keeps running without a UI."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.devtools.dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MONITOR_UI_PORT") or 3000),
                        help="default $MONITOR_UI_PORT, else 3000")
    args = parser.parse_args(argv)

    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)  # a repeat (make forwards SIGTERM after the group got it) changes nothing

    # Installed before the child starts: a signal from now on is not lost, and the child execs with defaults.
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    if problem := port_taken(args.host, args.port):
        print(f"dev: {problem}; choose another: make dev PORT=<port> (or MONITOR_UI_PORT)", file=sys.stderr)
        return 2
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    cmd = [str(Path(sys.executable).parent / "dagster"), "dev", "-h", args.host, "-p", str(args.port),
           "-w", str(REPO_ROOT / "workspace.yaml")]
    child = subprocess.Popen(cmd, cwd=REPO_ROOT, process_group=0, preexec_fn=_child_setup)
    print(f"dev: dagster dev (pid {child.pid}) on http://{args.host}:{args.port}; stop with Ctrl-C or "
          f"kill -TERM {os.getpid()}", flush=True)
    known: dict[int, str] = {}
    began, ready = time.monotonic(), False
    while not received and child.poll() is None:
        known.update(descendants(os.getpid(), child.pid))
        if not ready and (ready := answers(f"http://{args.host}:{args.port}/server_info")):
            print(f"dev: the UI answers on http://{args.host}:{args.port} ({time.monotonic() - began:.0f} s)",
                  flush=True)
        _reap(child.pid)
        time.sleep(0.5)
    if not received:  # dagster dev ended by itself (a bad workspace, a port in use): stop what it left
        stop(child, known)
        print(f"dev: dagster dev exited with status {child.returncode}", file=sys.stderr, flush=True)
        return child.returncode or 1
    name = signal.Signals(received[0]).name
    print(f"dev: {name} received, stopping dagster dev and its {len(_alive(known))} processes", flush=True)
    seconds, killed = stop(child, known)
    forced = f" ({killed} needed SIGKILL)" if killed else ""
    print(f"dev: stopped in {seconds:.1f} s{forced}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
