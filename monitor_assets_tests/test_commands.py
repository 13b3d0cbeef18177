"""Commands as users run them: `make dev` stopped by the signals a script, a service manager or a terminal
sends (the real make, dagster dev, webserver, daemon and code servers), and the retraining command line's
output on a demo warehouse."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from monitor_assets.config import REPO_ROOT
from monitor_assets.devtools.dev import descendants
from monitor_assets.devtools.webserver import free_port

STOP_WITHIN = 15.0  # seconds from the signal until the last process is gone


def _background_shape() -> None:
    """What `cmd &` in a non-interactive script does to the child: SIGINT and SIGQUIT ignored, SIGTERM as the
    shell has it (default). Not as this pytest may have it: Dagster maps SIGTERM to SIGINT's handler after an
    in-process run, and SIGINT is ignored when pytest itself runs in the background (CI), so an inherited
    ignored SIGTERM would make make deaf to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _alive(pids: dict[int, str]) -> list[int]:
    out = []
    for pid, start in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in "ZX" and fields[19] == start:
            out.append(pid)
    return out


def _commands(pids) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode())
        except OSError:
            pass
    return out


@pytest.fixture
def make_dev(tmp_path):
    """`setsid make dev PORT=<free> &` as a script starts it, on a tmp DAGSTER_HOME and warehouse; yields
    (make's Popen, every process under it once the UI answers, the log path, the port). Stops leftovers after."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "MONITOR_WAREHOUSE": str(tmp_path / "wh" / "m.duckdb"),
           "MONITOR_REPORTS_DIR": str(tmp_path / "reports"), "MONITOR_ENV": "local"}
    env.pop("MONITOR_UI_PORT", None)
    # -o: never reinstall the shared virtualenv from a test, even if pyproject.toml is newer than its stamp
    with open(log, "wb") as out:
        make = subprocess.Popen(["make", "-o", ".venv/.installed-stamp", "dev", f"PORT={port}"], cwd=REPO_ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_background_shape)
    procs: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert make.poll() is None, f"make dev exited with {make.returncode}: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no UI on port {port}: {log.read_text()[-2000:]}"
                time.sleep(0.5)
        # the daemon and the code servers are up when the webserver answers; collect them all via /proc
        deadline = time.monotonic() + 30
        while True:
            procs = descendants(make.pid)
            names = " ".join(_commands(procs))
            if ("dagster._daemon" in names and "dagster_webserver" in names and "code-server" in names) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        procs[make.pid] = Path(f"/proc/{make.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        yield make, procs, log, port
    finally:
        for pid in _alive(procs):  # a failed test must not leave a UI running
            os.kill(pid, signal.SIGKILL)
        make.wait(timeout=30)


def _stop_and_wait(make: subprocess.Popen, procs: dict[int, str], send) -> float:
    names = " ".join(_commands(procs))
    for part in ("monitor_assets.devtools.dev", "dagster dev", "dagster_webserver", "dagster._daemon",
                 "code-server", "dagster api grpc"):
        assert part in names, f"{part} not running before the signal: {names}"
    began = time.monotonic()
    send()
    while _alive(procs) and time.monotonic() - began < 60:
        time.sleep(0.1)
    took = time.monotonic() - began
    print(f"{len(procs)} processes stopped in {took:.1f} s")
    left = _alive(procs)
    assert not left, f"still running {took:.0f} s after the signal: {_commands(left)}"
    make.wait(timeout=5)
    return took


def _assert_clean_stop(log: Path, port: int) -> None:
    """The supervisor said so, without SIGKILL, and nothing listens on the UI's port any more."""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    text = log.read_text()
    assert re.search(r"dev: stopped in \d+\.\d s\n", text), text[-1500:]
    assert "needed SIGKILL" not in text  # dagster dev's own shutdown did it


def test_make_dev_stops_on_sigterm_to_its_process_group(make_dev):
    make, procs, log, port = make_dev
    assert len(procs) >= 7  # make, supervisor, dagster dev, webserver, daemon, code server, its gRPC server
    took = _stop_and_wait(make, procs, lambda: os.killpg(make.pid, signal.SIGTERM))
    assert took < STOP_WITHIN
    _assert_clean_stop(log, port)
    assert "dev: SIGTERM received" in log.read_text()


def test_make_dev_stops_on_sigint_to_its_process_group(make_dev):
    """make ignores the SIGINT (inherited from `&`); the supervisor does not, and dagster dev gets one
    it can act on."""
    make, procs, log, port = make_dev
    took = _stop_and_wait(make, procs, lambda: os.killpg(make.pid, signal.SIGINT))
    assert took < STOP_WITHIN
    _assert_clean_stop(log, port)
    assert "dev: SIGINT received" in log.read_text()
    assert make.returncode == 0  # the supervisor's clean stop: make reports no error


def test_make_dev_stops_on_sigterm_to_make_only(make_dev):
    """`timeout make dev` or a service manager: SIGTERM to make's pid only; make passes it to the supervisor."""
    make, procs, log, port = make_dev
    took = _stop_and_wait(make, procs, lambda: os.kill(make.pid, signal.SIGTERM))
    assert took < STOP_WITHIN
    _assert_clean_stop(log, port)
    assert make.returncode == -signal.SIGTERM  # make re-raises the signal once its child is done


def test_make_dev_says_at_once_when_the_port_is_taken(tmp_path):
    """The port from $MONITOR_UI_PORT is taken: one line and a failed make, not a dagster dev without a UI."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "MONITOR_UI_PORT": str(port)}
        began = time.monotonic()
        done = subprocess.run(["make", "-o", ".venv/.installed-stamp", "--no-print-directory", "dev"], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - began < 30
    assert done.returncode == 2
    assert f"--port {port}" in done.stdout and "dagster dev (pid" not in done.stdout
    assert done.stderr.splitlines()[0] == (f"dev: cannot listen on 127.0.0.1:{port}: Address already in use; "
                                           "choose another: make dev PORT=<port> (or MONITOR_UI_PORT)")


# --- the retraining command line -----------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m monitor_assets.retraining ...` in its own process: what a terminal shows."""
    return subprocess.run([sys.executable, "-m", "monitor_assets.retraining", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_human(text: str) -> None:
    for raw in ("DEBUG", "Timestamp(", "NaT", "nan", "None", "{'"):
        assert raw not in text, f"{raw!r} in the output:\n{text}"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The demo's week 2026-10-21..27 in a tmp warehouse (predictions and labels enough for the demo's real
    retraining), and two requests opened by hand on 2026-10-27. Steps of the run that need the earlier
    reference weeks may fail; the retraining commands read only what ingestion wrote."""
    from monitor_assets.config import load_config
    from monitor_assets.retraining import logic as L
    from monitor_assets.storage.warehouse import connect
    from monitor_assets_tests.conftest import persistent_home, run_job

    out = tmp_path_factory.mktemp("commands")
    config = replace(load_config(), warehouse_path=str(out / "wh" / "monitor.duckdb"),
                     reports_dir=str(out / "reports"), lake_dir="")
    run_job(config, "2026-10-21", "2026-10-27", raise_on_error=False)
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        first = L.open_by_hand(con, config, "purchase_propensity", "ana", "accuracy dropped after the sale",
                               version="2026.08.1", day=dt.date(2026, 10, 27))
        second = L.open_by_hand(con, config, "fraud_detector", "bo", "manual check", day=dt.date(2026, 10, 27))
    env = {**os.environ, "MONITOR_WAREHOUSE": config.warehouse_path, "MONITOR_REPORTS_DIR": config.reports_dir,
           "DAGSTER_HOME": str(persistent_home(out / "home")), "TQDM_DISABLE": "1"}
    env.pop("MONITOR_LAKE", None)
    env.pop("MONITOR_CONFIG", None)
    return env, first["request_id"], second["request_id"], out / "home"


def test_retraining_cli_prints_sentences_and_tables_not_reprs(small_demo):
    env, approve_id, reject_id, home = small_demo
    listed = _cli("list", env=env)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    _assert_human(listed.stdout)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:6] == ["#", "model", "version", "opened", "status", "p"]
    assert lines[-1] == "2 rows of monitoring.retraining_requests"
    rows = {int(line.split()[0]): line.split() for line in lines[2:-1]}
    assert rows[approve_id][1:5] == ["purchase_propensity", "2026.08.1", "2026-10-27", "proposed"]
    assert rows[reject_id][4] == "proposed" and rows[reject_id][5] == "-"  # no p-value: opened by hand

    rejected = _cli("reject", str(reject_id), "--by", "bo", "--note", "seasonal, expected", env=env)
    assert (rejected.returncode, rejected.stdout, rejected.stderr) == (0, f"request #{reject_id}: rejected by bo\n", "")

    approved = _cli("approve", str(approve_id), "--by", "ana", "--note", "go", env=env)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert approved.stderr == ""  # Dagster's events, library warnings and logs went to the run's log file
    _assert_human(approved.stdout)
    out = approved.stdout.splitlines()
    assert len(out) == 3, approved.stdout
    run_id = re.fullmatch(rf"request #{approve_id}: approving retraining of purchase_propensity 2026\.08\.1, "
                          r"opened on 2026-10-27 \(run ([0-9a-f-]{36})\)", out[0]).group(1)
    assert out[1].startswith(f"request #{approve_id}: done; succeeded: ")
    assert "trained_on=2026-10-21..2026-10-27" in out[1]
    assert out[2] == f"full log {home / 'run_logs' / (run_id + '.log')}"
    log = (home / "run_logs" / f"{run_id}.log").read_text()
    assert " - DEBUG - " in log and "RUN_SUCCESS" in log  # nothing lost: the full event log is in the file

    # a decided request cannot be approved: one line on stderr, exit 2, nothing else changed
    again = _cli("approve", str(reject_id), "--by", "bo", env=env)
    assert again.returncode == 2
    assert again.stderr == (f"request #{reject_id}: rejected, not approved: request #{reject_id} is rejected; "
                            "only a proposed or approved request can be approved\n")
    _assert_human(again.stdout + again.stderr)
    missing = _cli("approve", "99", "--by", "bo", env=env)
    assert (missing.returncode, missing.stdout, missing.stderr) == (2, "", "error: no retraining request #99\n")

    after = _cli("list", "requests", env=env)
    _assert_human(after.stdout)
    rows = {int(line.split()[0]): line for line in after.stdout.splitlines()[2:-1]}
    assert after.stdout.splitlines()[-1] == "2 rows of monitoring.retraining_requests"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    # fmt_cell writes a whole minute without its seconds: ":SS" is absent one time in sixty
    assert re.search(rf"\b2026-10-27\s+done\s+-\s+ana\s+{today} \d\d:\d\d(:\d\d)?\s", rows[approve_id])
    assert "succeeded: " in rows[approve_id]
    assert re.search(rf"\brejected\s+-\s+bo\s+{today} ", rows[reject_id]) and "seasonal, expected" in rows[reject_id]


def test_retraining_list_csv_keeps_every_column_for_scripts(small_demo):
    import csv
    import io

    env, approve_id, _, _ = small_demo
    listed = _cli("list", "requests", "--csv", env=env)
    assert listed.returncode == 0 and listed.stderr == ""
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert len(rows) == 2 and list(rows[0]) == [
        "request_id", "model_id", "model_version", "opened_on", "reason", "statistic", "p_value", "window", "status",
        "opened_by", "decided_by", "decided_at", "note", "outcome", "run_id", "finished_at", "created_at"]
    assert {r["request_id"] for r in rows} >= {str(approve_id)}


def test_a_run_leaves_sigterm_as_it_found_it(tmp_path):
    """`nohup run_pipeline &` ignores SIGINT; Dagster maps SIGTERM to SIGINT's handler after an in-process
    run, which made SIGTERM ignored for the rest of the process and for every child it starts (shards, make)."""
    script = (
        "import signal, uuid, dagster as dg\n"
        "from monitor_assets.runner import execute_logged\n"
        "@dg.asset\n"
        "def one(): return 1\n"
        "job = dg.Definitions(assets=[one], jobs=[dg.define_asset_job('j')]).resolve_job_def('j')\n"
        "with dg.instance_for_test() as instance:\n"
        "    result = execute_logged(job, instance, str(uuid.uuid4()), lambda entry: None)\n"
        "print(result.success, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
        "dg.materialize([one])\n"  # Dagster's own entry point, for contrast: it does leave SIGTERM ignored
        "print(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, preexec_fn=_background_shape, env={**os.environ, "DAGSTER_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]
