"""A backfill launched from the asset graph, as users launch it: every asset of the pipeline for two days,
through the real webserver's GraphQL API (`launchPartitionBackfill` with an asset selection, what the UI's
"Materialize all" → backfill sends), carried out by the real `dagster-daemon` on a persistent DAGSTER_HOME.

The daemon plans the backfill's runs from the asset graph and may put only some of a multi-asset check's
checks in a run (those whose assets that run materializes); a check that cannot be subset failed the whole
backfill ("DagsterInvalidSubsetError: ... does not support subsetting"), which the in-process job runs never
show."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.execution.backfill import BulkActionStatus

from monitor_assets.config import REPO_ROOT
from monitor_assets.devtools.webserver import graphql, running_webserver, stop_group

from .conftest import persistent_home

DAYS = ["2026-10-13", "2026-10-14"]
DEMO = REPO_ROOT / "data" / "demo"


def one_model_demo_config(folder: Path) -> Path:
    """The bundled demo with its first model only (every asset and check still exists; less data per step)."""
    data = yaml.safe_load((DEMO / "monitor.yaml").read_text())
    data["models"] = data["models"][:1]
    for source in data["sources"].values():
        source["path"] = str(DEMO / source["path"])
    for model in data["models"]:
        model["reference"] = str(DEMO / model["reference"])
    data["allow_outside_paths"] = True  # the demo's files stay where they are
    path = folder / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on NoModeProvidedError { message }
    ... on PresetNotFoundError { message }
  }
}
"""
ASSET_KEYS = "{ assetNodes { assetKey { path } isPartitioned } }"


@contextmanager
def daemon_logging_to(log: Path, env: dict[str, str]):
    """The real `dagster-daemon` on the repo's workspace, its log in a file (for the failure message)."""
    cmd = [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            stop_group(proc, timeout=30)


def wait_for_backfill(home, backfill_id: str, timeout: float):
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline:
            backfill = instance.get_backfill(backfill_id)
            if backfill.status != BulkActionStatus.REQUESTED:
                return backfill, instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
            time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} still running after {timeout:.0f} s")


def test_asset_graph_backfill_of_every_asset_succeeds(tmp_path):
    home = persistent_home(tmp_path / "home")
    env = {**os.environ, "DAGSTER_HOME": str(home), "TQDM_DISABLE": "1",
           "MONITOR_WAREHOUSE": str(tmp_path / "warehouse" / "monitor.duckdb"),
           "MONITOR_REPORTS_DIR": str(tmp_path / "reports"), "MONITOR_CONFIG": str(one_model_demo_config(tmp_path))}
    env.pop("MONITOR_ENV", None)
    started = time.monotonic()
    log = tmp_path / "daemon.log"
    with running_webserver(env) as url, daemon_logging_to(log, env):
        nodes = graphql(url, ASSET_KEYS)["assetNodes"]
        # Every asset, as "Materialize all" selects them: the unpartitioned reference profiles too, which the
        # daemon runs first, so the first partitioned run holds only the assets that do not wait for them.
        selection = [{"path": n["assetKey"]["path"]} for n in nodes]
        partitioned = [{"path": n["assetKey"]["path"]} for n in nodes if n["isPartitioned"]]
        assert len(partitioned) > 10 and len(selection) > len(partitioned)
        launched = graphql(url, LAUNCH, {"params": {"partitionNames": DAYS, "assetSelection": selection}})
        result = launched["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        # Several runs one after the other, each step a process of its own: minutes on two busy cores.
        backfill, runs = wait_for_backfill(home, result["backfillId"], timeout=1200)
    print(f"asset backfill of {len(selection)} assets x {len(DAYS)} days: {time.monotonic() - started:.0f} s, "
          f"{len(runs)} runs")
    statuses = Counter(r.status for r in runs)
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (
        backfill.status, backfill.failure_count, backfill.error and backfill.error.message[:2000], statuses,
        [line for line in log.read_text().splitlines() if "Error" in line][-5:])
    assert statuses == {dg.DagsterRunStatus.SUCCESS: len(runs)}
    # Every selected asset was materialized for both days, and every check was evaluated for both.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for node in partitioned:
            key = dg.AssetKey(node["path"])
            done = {r.partition_key for r in instance.fetch_materializations(key, limit=100).records}
            assert set(DAYS) <= done, (key, done)
