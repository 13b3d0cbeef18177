import os
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from monitor_assets.config import load_config
from monitor_assets.definitions import MONITORING_JOB, build_definitions
from monitor_assets.storage.warehouse import open_warehouse

os.environ.setdefault("TQDM_DISABLE", "1")

# The slowest modules (daemons, servers, many pipeline runs: about 50 to 370 s each in CI), slowest first. `make
# test` shares files out in collection order (`--no-loadscope-reorder`), so these start first and the workers end
# together, instead of one worker starting the longest module when the others are nearly done.
SLOW_FIRST = ("test_shard_runs.py", "storage/test_lake_healing.py", "test_shards.py", "test_commands.py",
              "test_pipeline.py", "notify/test_sensor_daemon.py", "test_asset_backfill.py", "test_run_pipeline.py",
              "test_recovery.py", "retraining/test_ranker_loop.py", "ranking/test_ranking_segments.py",
              "evaluation/test_window_multivariate.py", "storage/test_object_storage.py", "alerting/test_rules.py",
              "evaluation/test_evaluation_store.py", "test_queue_limits.py", "storage/test_lake_state.py",
              "test_scale_bench.py", "ingestion/test_many_days.py", "notify/test_acknowledge.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("monitor_assets_tests/"), len(rank)))


def run_job(config, start: str, end: str | None = None, instance=None, raise_on_error: bool = True):
    """Materialize the monitoring job in process over start..end (one run, like `make run`)."""
    defs = build_definitions(config)
    job = defs.resolve_job_def(MONITORING_JOB)
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=raise_on_error,
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end or start},
    )


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_run")
    config = load_config()
    return replace(config, warehouse_path=str(out / "monitor.duckdb"), reports_dir=str(out / "reports"))


def instance_template() -> Path:
    """The repo's instance settings (what `make run` / `make dev` copy into DAGSTER_HOME)."""
    from monitor_assets.runner import INSTANCE_TEMPLATE

    return INSTANCE_TEMPLATE


def persistent_home(path: Path) -> Path:
    """A DAGSTER_HOME made from the repo's template: SQLite storage, as users run it."""
    path.mkdir(parents=True, exist_ok=True)
    from monitor_assets.runner import instance_yaml

    (path / "dagster.yaml").write_text(instance_yaml(instance_template(), path))
    return path


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    return persistent_home(tmp_path_factory.mktemp("demo_home"))


@pytest.fixture(scope="session")
def demo_instance(demo_home):
    """A persistent instance (run-sharded SQLite storage, like a user's): the webserver reads it too."""
    with dg.DagsterInstance.from_config(str(demo_home)) as instance:
        yield instance


@pytest.fixture(scope="session")
def demo_run(demo_config, demo_instance):
    """The whole demo pipeline over its 30 days, once per test session (its events stay in
    `demo_instance`, where the sensors read them)."""
    result = run_job(demo_config, "2026-10-01", "2026-10-30", instance=demo_instance)
    assert result.success
    return demo_config, result


@pytest.fixture
def demo_db(demo_run):
    config, _ = demo_run
    con = open_warehouse(config.warehouse_path, read_only=True)
    yield con
    con.close()


# Two models with their own features, a file per model and day: the ingestion and object-storage tests' config.
TWO_MODELS_CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}/{model}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
  - id: fraud
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric}
  - id: reco
    task: binary_classification
    reference: ref.parquet
    features: {clicks: numeric, device: categorical}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# The middle of a test world's config (str.format'ed with `tmp`): its warehouse and reports in `tmp`, CSV
# prediction logs export/<date>/<model>.csv (request_id, ts, proba) and labels truth/<date>.csv (request_id, y).
CSV_WORLD = """warehouse: {tmp}/wh.duckdb
reports_dir: {tmp}/reports
sources:
  predictions:
    path: export/{{date}}/{{model}}.csv
    fields: {{prediction_id: request_id, timestamp: ts, score: proba}}
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request_id, label: y}}
"""
