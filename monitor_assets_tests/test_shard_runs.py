"""Shards through Dagster's own machinery, as a platform runs them: the prod instance template on a real
PostgreSQL server (queued run coordinator, default run launcher: each run its own process, run retries), the
real `dagster-daemon`, `shards: 2` from $MONITOR_SHARDS, and a backfill of 3 days of the plan job from the
command line (what the UI's backfill of that job does). The shard sensor launches the days' shard runs through
the queue, at most the configured number at once; the fleet run of a day starts only after both shards of the
day succeeded; one shard run killed with SIGKILL is retried and its day completes; the per-model tables equal
an unsharded run's, row for row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from monitor_assets.constants import SHARD_TAG
from monitor_assets.devtools.dev import descendants
from monitor_assets.sharding.defs import PLAN_JOB, PLAN_TAG, STAGE_TAG

from .postgres import PostgresServer, postgres_server  # noqa: F401  (a pytest fixture)
from .test_deploy import prod_env
from .test_shards import TABLES, snapshot

REPO = Path(__file__).parents[1]
DEMO = REPO / "data" / "demo"
PROD = REPO / "deploy" / "prod" / "dagster.yaml"
BACKFILL = ["2026-10-05", "2026-10-06", "2026-10-07"]  # test_shards' days: 10-06 has a corrupted batch
MAX_RUNS = 3  # the queue's limit here (the template says 4)
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


def two_model_config(folder: Path) -> Path:
    """The demo with its first two models: one per shard."""
    data = yaml.safe_load((DEMO / "monitor.yaml").read_text())
    data["models"] = [m for m in data["models"] if m.get("task") != "ranking"][:2]
    for source in data["sources"].values():
        source["path"] = str(DEMO / source["path"])
    for model in data["models"]:
        model["reference"] = str(DEMO / model["reference"])
    data["allow_outside_paths"] = True
    path = folder / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prod_home(folder: Path) -> Path:
    """deploy/prod/dagster.yaml with a lower run limit and quicker monitoring, so the test sees them act."""
    config = yaml.safe_load(PROD.read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = MAX_RUNS
    config["run_monitoring"]["poll_interval_seconds"] = 5
    home = folder / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from the launcher's "Started process for run (pid: N)." event."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        message = record.event_log_entry.message or ""
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ")[1].rstrip(")."))
    return None


@pytest.fixture(scope="module")
def sharded(postgres_server, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("sharded")
    config = two_model_config(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "DAGSTER_"))}
    env.update(prod_env(postgres_server, folder), DAGSTER_HOME=str(prod_home(folder)), MONITOR_ENV="prod",
               MONITOR_SHARDS="2", MONITOR_SHARD_SENSOR_INTERVAL="2", MONITOR_CONFIG=str(config),
               MONITOR_WAREHOUSE=str(folder / "wh.duckdb"), MONITOR_REPORTS_DIR=str(folder / "reports"),
               MONITOR_ALERT_SENSOR_INTERVAL="3600", TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    saved = dict(os.environ)
    os.environ.update({k: env[k] for k in env if k.startswith(("DAGSTER_", "MONITOR_"))})
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    try:
        with dg.DagsterInstance.get() as instance:
            instance.wipe()
            instance.wipe_all_schedules()
        daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=open(folder / "daemon.log", "w"), start_new_session=True)
        try:
            backfill = subprocess.run([str(bin_dir / "dagster"), "job", "backfill", "-w", str(REPO / "workspace.yaml"),
                                       "-j", PLAN_JOB, "--partitions", ",".join(BACKFILL), "--noprompt"],
                                      env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
            assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
            out = watch(folder, timeout=1500)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out["seconds"] = time.monotonic() - started
    # The same days without shards, on a local home: the tables to equal.
    whole = tmp_path_factory.mktemp("whole")
    from .conftest import persistent_home

    local = {**{k: v for k, v in env.items() if not k.startswith(("DAGSTER_", "MONITOR_"))},
             "DAGSTER_HOME": str(persistent_home(whole / "home")), "MONITOR_CONFIG": str(config),
             "MONITOR_WAREHOUSE": str(whole / "wh.duckdb"), "MONITOR_REPORTS_DIR": str(whole / "reports")}
    done = subprocess.run([sys.executable, "-m", "monitor_assets.run_pipeline", "--start", BACKFILL[0],
                           "--end", BACKFILL[-1]], env=local, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out["whole"], out["sharded"] = snapshot(whole), snapshot(folder)
    print(f"sharded backfill of {len(BACKFILL)} days x 2 shards through the daemon: {out['seconds']:.0f} s, "
          f"{len(out['runs'])} runs, at most {out['most']} at once")
    return out


def watch(folder: Path, timeout: float) -> dict:
    """Poll the runs until every day's fleet run succeeded: the most runs active at once, every run's
    record, and the shard run killed on the way (the second day's analysis of shard 1/2, once it started)."""
    most, killed, deadline = 0, None, time.monotonic() + timeout
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            records = instance.get_run_records()
            most = max(most, sum(r.dagster_run.status in ACTIVE for r in records))
            fleet_done = {r.dagster_run.tags.get("dagster/partition") for r in records
                          if r.dagster_run.tags.get(STAGE_TAG) == "fleet"
                          and r.dagster_run.status == dg.DagsterRunStatus.SUCCESS}
            if fleet_done >= set(BACKFILL):
                return {"runs": records, "most": most, "killed": killed}
            if killed is None:
                for r in records:
                    run = r.dagster_run
                    if (run.status == dg.DagsterRunStatus.STARTED and run.tags.get(STAGE_TAG) == "analysis"
                            and run.tags.get(SHARD_TAG) == "1/2" and run.tags.get("dagster/partition") == BACKFILL[1]
                            and (pid := run_pid(instance, run.run_id))):
                        time.sleep(1.0)  # into its steps
                        for p in [*descendants(pid), pid]:
                            try:
                                os.kill(p, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                        killed = run.run_id
                        break
            failed = [r.dagster_run for r in records if r.dagster_run.status == dg.DagsterRunStatus.FAILURE
                      and r.dagster_run.run_id != killed and r.dagster_run.tags.get("dagster/will_retry") != "true"]
            assert not failed, (failed[0].job_name, failed[0].tags, (folder / "daemon.log").read_text()[-3000:])
            time.sleep(0.5)
    raise AssertionError(f"fleet runs not all done after {timeout:.0f} s: "
                         f"{[(r.dagster_run.job_name, r.dagster_run.status.value) for r in records]}\n"
                         + (folder / "daemon.log").read_text()[-3000:])


def stage_runs(out: dict, day: str, stage: str) -> list:
    return [r for r in out["runs"] if r.dagster_run.tags.get("dagster/partition") == day
            and r.dagster_run.tags.get(STAGE_TAG) == stage]


def test_each_day_runs_as_one_run_per_shard_through_the_queue(sharded):
    for day in BACKFILL:
        for stage in ("ingest", "analysis"):
            ok = [r.dagster_run for r in stage_runs(sharded, day, stage)
                  if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS]
            assert sorted(r.tags[SHARD_TAG] for r in ok) == ["0/2", "1/2"], (day, stage)
        assert len(stage_runs(sharded, day, "fleet")) == 1
    plans = {r.dagster_run.run_id for r in sharded["runs"] if r.dagster_run.job_name == PLAN_JOB}
    assert len(plans) == 3 and {r.dagster_run.tags[PLAN_TAG] for r in sharded["runs"]
                                if STAGE_TAG in r.dagster_run.tags} == plans
    assert 2 <= sharded["most"] <= MAX_RUNS  # shards ran side by side, never above the queue's limit


def test_a_days_fleet_run_starts_after_both_its_shards_succeeded(sharded):
    for day in BACKFILL:
        (fleet,) = stage_runs(sharded, day, "fleet")
        analysis = [r for r in stage_runs(sharded, day, "analysis") if r.dagster_run.status.value == "SUCCESS"]
        assert fleet.start_time >= max(r.end_time for r in analysis), day
        ingest = [r for r in stage_runs(sharded, day, "ingest") if r.dagster_run.status.value == "SUCCESS"]
        assert min(r.start_time for r in analysis) >= max(r.end_time for r in ingest), day
    # Days in order through each stage: day 2's fleet run after day 1's.
    fleets = [stage_runs(sharded, day, "fleet")[0] for day in BACKFILL]
    assert all(a.end_time <= b.start_time for a, b in zip(fleets, fleets[1:], strict=False))


def test_the_killed_shard_run_was_retried_and_its_day_completed(sharded):
    killed = sharded["killed"]
    assert killed, "no shard run was killed"
    runs = {r.dagster_run.run_id: r.dagster_run for r in sharded["runs"]}
    assert runs[killed].status == dg.DagsterRunStatus.FAILURE
    retries = [r for r in runs.values() if r.tags.get("dagster/parent_run_id") == killed]
    assert len(retries) == 1 and retries[0].status == dg.DagsterRunStatus.SUCCESS
    assert retries[0].tags[SHARD_TAG] == "1/2" and retries[0].tags[STAGE_TAG] == "analysis"


def test_the_tables_equal_an_unsharded_run(sharded):
    for table in TABLES:
        assert sharded["sharded"][table] == sharded["whole"][table], table
        assert sharded["whole"][table], table
    assert sharded["sharded"]["ingestion"] == sharded["whole"]["ingestion"]
