"""The headless runner (`make run`) as users run it: a subprocess on a persistent DAGSTER_HOME made from
deploy/local/dagster.yaml. Short terminal output, the full event log in a file, one-line config errors,
and recovery from a run killed with SIGKILL while it held the `duckdb` pool slot."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from monitor_assets.constants import DUCKDB_POOL
from monitor_assets.run_pipeline import HOST_TAG, PID_TAG, PoolUse, pool_holders, recover_dead_runs
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import persistent_home, write

DAYS = ["--start", "2026-10-01", "--end", "2026-10-03"]
RUNNER = [sys.executable, "-m", "monitor_assets.run_pipeline"]
REPO = Path(__file__).parents[1]


def runner_env(tmp: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MONITOR_", "DAGSTER_HOME"))}
    return {**env, "DAGSTER_HOME": str(persistent_home(tmp / "home")), "MONITOR_WAREHOUSE": str(tmp / "wh.duckdb"),
            "MONITOR_REPORTS_DIR": str(tmp / "reports"), "PYTHONPATH": str(REPO)}


def run_id_of(stdout: str) -> str:
    return next(line.split()[1].rstrip(":") for line in stdout.splitlines() if line.startswith("run ")
                and ("SUCCESS" in line or "FAILURE" in line))


def start_and_kill_holding_a_slot(env: dict[str, str], instance: dg.DagsterInstance) -> tuple[str | None, str]:
    """Start a run, SIGKILL it as soon as it holds a pool slot; its run id if the kill left the slot held."""
    proc = subprocess.Popen([*RUNNER, *DAYS], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    holder, deadline = None, time.monotonic() + 180
    while holder is None and proc.poll() is None and time.monotonic() < deadline:
        holder = next((run_id for run_id, use in pool_holders(instance.event_log_storage).items() if use.slots), None)
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0]
    still_held = holder is not None and pool_holders(instance.event_log_storage).get(holder, PoolUse()).slots
    return (holder if still_held else None), output


@pytest.fixture(scope="module")
def killed_then_rerun(tmp_path_factory):
    """A 3-day run SIGKILLed while it holds the duckdb slot, then the same command again."""
    tmp = tmp_path_factory.mktemp("killed")
    env = runner_env(tmp)
    began = time.monotonic()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for _ in range(3):  # the kill may land between two steps, when no slot is held: try again
            killed, output = start_and_kill_holding_a_slot(env, instance)
            if killed:
                break
        assert killed, f"no run was killed while holding a slot; last output:\n{output}"
        rerun = subprocess.run([*RUNNER, *DAYS], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        killed_status = instance.get_run_by_id(killed).status
        left_over = pool_holders(instance.event_log_storage)
    print(f"killed, then rerun: {time.monotonic() - began:.1f} s")
    return {"tmp": tmp, "env": env, "killed": killed, "killed_status": killed_status, "rerun": rerun,
            "left_over": left_over}


def test_rerun_after_a_killed_run_frees_its_slot_and_completes_without_duplicates(killed_then_rerun):
    rerun, killed = killed_then_rerun["rerun"], killed_then_rerun["killed"]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"recovered run {killed}: process" in rerun.stdout
    assert killed_then_rerun["killed_status"] == dg.DagsterRunStatus.FAILURE
    assert killed_then_rerun["left_over"] == {}  # the new run released what it took
    with open_warehouse(str(killed_then_rerun["tmp"] / "wh.duckdb"), read_only=True) as con:
        rows, distinct, days = con.execute("""SELECT count(*), count(DISTINCT prediction_id),
                                              count(DISTINCT partition_date) FROM raw.predictions""").fetchall()[0]
    assert rows == distinct > 0 and days == 3


def test_successful_run_prints_a_short_summary_and_logs_every_event_to_a_file(killed_then_rerun):
    rerun, tmp = killed_then_rerun["rerun"], killed_then_rerun["tmp"]
    lines = rerun.stdout.splitlines()
    run_id = run_id_of(rerun.stdout)
    steps = [line for line in lines if line.startswith("  ok ")]
    # one line per step and a few around them (no event log on the terminal)
    assert len(steps) >= 25 and len(lines) <= len(steps) + 10, rerun.stdout
    assert f"run {run_id}: SUCCESS" in rerun.stdout
    assert f"dashboard {tmp / 'reports' / 'dashboard.html'}" in rerun.stdout
    assert not any("DEBUG" in line for line in lines) and rerun.stderr == ""
    assert any("raw/predictions" in line and "3 days" in line and "records loaded" in line for line in steps)
    assert any("threshold_checks" in line and "check evaluations" in line for line in steps)
    log = Path(killed_then_rerun["env"]["DAGSTER_HOME"]) / "run_logs" / f"{run_id}.log"
    assert f"full log  {log}" in rerun.stdout
    text = log.read_text()
    assert " - DEBUG - monitoring_job - " in text and "STEP_SUCCESS" in text and "RUN_SUCCESS" in text
    assert "ASSET_MATERIALIZATION" in text and "ASSET_CHECK_EVALUATION" in text


def test_failed_step_prints_its_one_line_error_and_logs_the_traceback(tmp_path):
    env = {**runner_env(tmp_path), "MONITOR_WAREHOUSE": "/dev/null/wh.duckdb"}  # cannot be created
    result = subprocess.run([*RUNNER, "--start", "2026-10-01", "--end", "2026-10-01"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("  FAILED")]
    assert failed and all("Error" in line for line in failed), result.stdout
    assert f"run {run_id_of(result.stdout)}: FAILURE" in result.stdout
    assert "failed: " in result.stdout and "(not updated by this run)" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr and len(result.stdout.splitlines()) < 40
    log = Path(env["DAGSTER_HOME"]) / "run_logs" / f"{run_id_of(result.stdout)}.log"
    assert "Stack Trace:" in log.read_text() and "STEP_FAILURE" in log.read_text()


def test_config_error_prints_one_line_and_exits_with_2(tmp_path):
    bad = write(tmp_path / "broken.yaml", "partitions: {start_date: 2026-01-01\nmodels: [\n")
    result = subprocess.run(RUNNER, env={**runner_env(tmp_path), "MONITOR_CONFIG": str(bad)}, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"config error: {bad}: (file): not valid YAML")


def test_invalid_key_names_file_and_key(tmp_path):
    demo = (REPO / "data" / "demo" / "monitor.yaml").read_text()
    bad = write(tmp_path / "demo" / "monitor.yaml", demo.replace("label_delay_days: 3", "label_delay_days: -1", 1))
    result = subprocess.run(RUNNER, env={**runner_env(tmp_path), "MONITOR_CONFIG": str(bad)}, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"config error: {bad}: label_delay_days: ")


def test_recovery_frees_finished_and_dead_runs_and_leaves_live_ones(tmp_path):
    """Runs as the runner finds them: one finished still holding the slot, one whose process is gone,
    one alive (this test's process), both queued behind the first."""
    home = persistent_home(tmp_path / "home")
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(DUCKDB_POOL)
        runs = {}
        for name, status, pid in (("finished", dg.DagsterRunStatus.FAILURE, None),
                                  ("dead", dg.DagsterRunStatus.STARTED, gone.pid),
                                  ("alive", dg.DagsterRunStatus.STARTED, os.getpid())):
            tags = {PID_TAG: str(pid), HOST_TAG: host} if pid else {}
            run = instance.add_run(dg.DagsterRun(job_name="monitoring_job", run_id=str(uuid.uuid4()),
                                                 status=status, tags=tags))
            storage.claim_concurrency_slot(DUCKDB_POOL, run.run_id, "raw__predictions")
            runs[name] = run.run_id
        assert set(pool_holders(storage)[runs["finished"]].slots) == {(DUCKDB_POOL, "raw__predictions")}

        lines = recover_dead_runs(instance)

        assert any(line.startswith(f"freed 1 slot of pool duckdb of run {runs['finished']} (FAILURE)")
                   for line in lines), lines
        assert any(line.startswith(f"recovered run {runs['dead']}: process {gone.pid} on {host} is gone")
                   for line in lines), lines
        assert instance.get_run_by_id(runs["dead"]).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(runs["dead"]).tags["dagster/max_retries"] == "0"
        assert instance.get_run_by_id(runs["alive"]).status == dg.DagsterRunStatus.STARTED
        assert set(pool_holders(storage)) == {runs["alive"]}  # the live run got the slot
