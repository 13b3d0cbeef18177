"""The "one monitoring_job run at a time" limit, counted on real runs: a persistent DAGSTER_HOME with the prod
template's run queue and limits (SQLite storage instead of PostgreSQL), the real `dagster-daemon`, three runs of
a job named monitoring_job with the real job's run tags submitted at once. At no moment may more than one be
starting or started, and all succeed; three runs of the same job without the tags do run together (the limit,
not the machine, kept them apart).

The job here sleeps instead of running the pipeline (a real run takes minutes); `test_the_real_job_carries_the_tags`
checks that the real monitoring_job puts the same tags on its runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import yaml

from monitor_assets.definitions import MONITORING_JOB, MONITORING_JOB_TAGS

REPO = Path(__file__).resolve().parents[1]
PROD = REPO / "deploy" / "prod" / "dagster.yaml"
ACTIVE = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
DONE = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)

JOBS = '''
import time

import dagster as dg


@dg.op
def work():
    time.sleep(3)


# In process: one process per run, not one more per step.
@dg.job(name={name!r}, tags={tags!r}, executor_def=dg.in_process_executor)
def monitoring_job():
    work()


@dg.job(executor_def=dg.in_process_executor)
def untagged_job():
    work()


defs = dg.Definitions(jobs=[monitoring_job, untagged_job])
'''


def test_the_real_job_carries_the_tags():
    from monitor_assets.definitions import defs

    job = defs.resolve_job_def(MONITORING_JOB)
    assert MONITORING_JOB_TAGS.items() <= job.tags.items()
    limits = yaml.safe_load(PROD.read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    assert [(x["key"], x["value"]) for x in limits] == list(MONITORING_JOB_TAGS.items())


def launch_at_once(job: str, n: int, workspace: Path, env: dict) -> None:
    """`dagster job launch` n times in parallel: each run goes into the queue."""
    bin_dir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bin_dir / "dagster"), "job", "launch", "-w", str(workspace), "-j", job],
                              env=env, cwd=workspace.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(n)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]


def max_active(instance: dg.DagsterInstance, job: str, n: int, timeout: float) -> tuple[int, list]:
    """Poll the runs of `job` until n are done; the most that were starting or started at one poll."""
    most, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
        most = max(most, sum(r.status in ACTIVE for r in runs))
        if len(runs) == n and all(r.status in DONE for r in runs):
            return most, runs
        time.sleep(0.2)
    raise AssertionError(f"{job}: runs not done after {timeout:.0f} s: {[r.status for r in runs]}")


def overlapping(instance: dg.DagsterInstance, job: str) -> int:
    """The most runs of `job` whose recorded start..end intervals overlap at one instant."""
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job))
    events = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records])
    most = current = 0
    for _, step in events:  # an end at the same instant as a start sorts first: touching is not overlapping
        current += step
        most = max(most, current)
    return most


def test_one_monitoring_job_run_at_a_time(tmp_path):
    started = time.monotonic()
    config = yaml.safe_load(PROD.read_text())
    # The prod template's queue, limits, pools, retries and monitoring; SQLite storage in the home.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(
        {k: v for k, v in config.items() if k not in ("storage", "compute_logs")}))
    (tmp_path / "jobs.py").write_text(JOBS.format(name=MONITORING_JOB, tags=MONITORING_JOB_TAGS))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": "jobs.py", "location_name": "jobs", "working_directory": str(tmp_path)}}]}))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("MONITOR_ENV", None)
    # Create the SQLite storages once, before several processes open them at the same time.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
        instance.all_instigator_state()
        instance.event_log_storage.get_concurrency_keys()

    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "daemon.log", "w"), start_new_session=True)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            launch_at_once(MONITORING_JOB, 3, workspace, env)
            most, runs = max_active(instance, MONITORING_JOB, 3, timeout=75)
            assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 3, (tmp_path / "daemon.log").read_text()[-3000:]
            assert all(MONITORING_JOB_TAGS.items() <= r.tags.items() for r in runs)
            assert most == 1 and overlapping(instance, MONITORING_JOB) == 1

            # The same runs without the tags: nothing holds them back, they run together.
            launch_at_once("untagged_job", 3, workspace, env)
            most_untagged, runs = max_active(instance, "untagged_job", 3, timeout=60)
            assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 3
            assert most_untagged >= 2 and overlapping(instance, "untagged_job") >= 2
    finally:
        os.killpg(daemon.pid, 15)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, 9)
            daemon.wait(timeout=10)
    print(f"queue limit test: {time.monotonic() - started:.0f} s; most at once: tagged {most}, untagged "
          f"{most_untagged}")
