"""`python -m monitor_assets.query` on a small warehouse and lake, and the weekly lake maintenance."""

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from deltalake import DeltaTable

from monitor_assets.config import load_config
from monitor_assets.definitions import MONITORING_JOB, build_definitions
from monitor_assets.keys import LAKE_MAINTENANCE
from monitor_assets.storage import defs as storage_defs
from monitor_assets.storage.lake import Lake
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import write

ROOT = Path(__file__).resolve().parents[2]
DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
  - id: fraud
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric}
  - id: churn_v2
    task: binary_classification
    reference: ref.parquet
    features: {tenure: numeric, plan: categorical}
"""
# Each model's own feature columns (the per-model table has them; raw.predictions does not).
FEATURES = {"fraud": "round(12.5 * (i + 1), 2) AS amount",
            "churn_v2": "(i * 3)::BIGINT AS tenure, CASE WHEN i % 2 = 0 THEN 'basic' ELSE 'pro' END AS plan"}
ROWS = {("fraud", DAY1): 3, ("fraud", DAY2): 2, ("churn_v2", DAY1): 4}


def predictions(model: str, day: dt.date, n: int):
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(f"""
            SELECT DATE '{day}' AS partition_date, '{model}' AS model_id, '{model}-{day}-' || i AS prediction_id,
                   TIMESTAMPTZ '{day} 10:00:00+00' + i * INTERVAL 1 MINUTE AS ts, '1' AS model_version,
                   10.0 + i AS latency_ms, 'ok' AS status, true AS is_ok, 0.25 * (i % 4) AS score,
                   'logs/{day}.jsonl' AS source_file, i::BIGINT AS line_no, {FEATURES[model]}
            FROM range({n}) t(i)""").to_arrow_table()


def labels(model: str, day: dt.date, n: int):
    with duckdb.connect() as con:
        return con.sql(f"""SELECT DATE '{day}' AS partition_date, '{model}' AS model_id,
                                  '{model}-{day}-' || i AS prediction_id, DATE '{day}' AS prediction_date,
                                  (i % 2)::DOUBLE AS label, 'labels.csv' AS source_file, i::BIGINT AS line_no
                           FROM range({n}) t(i)""").to_arrow_table()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A warehouse file and a lake with two models (different features) over two days; the variables the
    pipeline reads, set for this process and returned for subprocesses."""
    config = write(tmp_path / "monitor.yaml", CONFIG)
    warehouse, lake_path = tmp_path / "wh" / "monitor.duckdb", tmp_path / "lake"
    lake = Lake(lake_path)
    for (model, day), n in ROWS.items():
        lake.replace_model_day(model, predictions(model, day, n), day)
    for model in ("fraud", "churn_v2"):
        lake.replace("raw.labels", labels(model, DAY1, 2), [DAY1], models=[model])
    with connect(str(warehouse), str(lake_path), models=None):  # the writer creates the views
        pass
    values = {"MONITOR_CONFIG": str(config), "MONITOR_WAREHOUSE": str(warehouse), "MONITOR_LAKE": str(lake_path)}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def query(env: dict, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor_assets.query", *args], env=env, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def rows(out: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(out)))


def test_query_prints_csv_of_the_union_and_of_one_models_features(env):
    done = query(env, "SELECT model_id, count(*) AS n FROM raw.predictions GROUP BY 1 ORDER BY 1")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [["model_id", "n"], ["churn_v2", "4"], ["fraud", "5"]]

    done = query(env, """SELECT prediction_id, tenure, plan, NULL AS nothing FROM raw."predictions__churn_v2"
                         WHERE partition_date = DATE '2026-03-01' ORDER BY tenure""")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [["prediction_id", "tenure", "plan", "nothing"],
                                 ["churn_v2-2026-03-01-0", "0", "basic", ""], ["churn_v2-2026-03-01-1", "3", "pro", ""],
                                 ["churn_v2-2026-03-01-2", "6", "basic", ""], ["churn_v2-2026-03-01-3", "9", "pro", ""]]

    done = query(env, "--json", "SELECT model_id, max(amount) AS top, min(partition_date) AS first "
                                "FROM raw.predictions__fraud GROUP BY 1")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"model_id": "fraud", "top": 37.5, "first": "2026-03-01"}]
    # The union has only the shared columns: a model's feature is not one of them.
    done = query(env, "SELECT amount FROM raw.predictions")
    assert done.returncode == 2 and done.stderr.startswith("query: ")


def test_bad_sql_and_missing_warehouse_say_one_line_and_exit_2(env, tmp_path):
    done = query(env, "SELEC model_id FROM raw.predictions")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("query: ") and "Traceback" not in done.stderr

    missing = tmp_path / "nowhere" / "absent.duckdb"
    done = query({**env, "MONITOR_WAREHOUSE": str(missing), "MONITOR_LAKE": str(missing.parent / "lake")}, "SELECT 1")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and done.stderr.startswith("query: no tables")
    assert not missing.parent.exists()  # read-only: nothing created


def test_sql_from_stdin_and_the_read_only_warehouse_is_unchanged(env):
    def files() -> dict:
        return {p: p.stat().st_mtime_ns for p in Path(env["MONITOR_WAREHOUSE"]).parents[1].rglob("*") if p.is_file()}

    before = files()
    done = query(env, stdin="SELECT count(*) AS n FROM raw.labels;\n")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [["n"], ["4"]]
    done = query(env, stdin="CREATE TABLE raw.oops AS SELECT 1")
    assert done.returncode == 2 and done.stderr.startswith("query: ")
    assert files() == before  # no file made or changed, lake or other


def test_tables_lists_the_documented_names(env):
    from monitor_assets.query import table_names
    from monitor_assets.storage.warehouse import open_warehouse

    con = open_warehouse(env["MONITOR_WAREHOUSE"], env["MONITOR_LAKE"], models=None, read_only=True)
    try:
        names = table_names(con)
    finally:
        con.close()
    assert {"raw.predictions", 'raw."predictions__fraud"', 'raw."predictions__churn_v2"', "raw.labels",
            "raw.ingestion_log", "monitoring.performance_daily", "monitoring.alerts"} <= set(names)
    assert not [n for n in names if "__lake_" in n]


def _files_on_disk(path: Path) -> int:
    return len(list(path.rglob("*.parquet")))


def _snapshot(env: dict) -> dict[str, list]:
    with connect(env["MONITOR_WAREHOUSE"], env["MONITOR_LAKE"], models=None, read_only=True) as con:
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("raw.predictions", "raw.labels", 'raw."predictions__fraud"')}


def test_maintenance_compacts_and_vacuums_and_keeps_every_row(env, monkeypatch):
    lake = Lake(env["MONITOR_LAKE"])
    labels_path = lake.path("raw.labels")
    # The same partition written again and again: old versions' files, and (one write per model) several
    # live small files in one partition.
    for _ in range(3):
        for model in ("fraud", "churn_v2", "extra"):
            lake.replace("raw.labels", labels(model, DAY1, 2), [DAY1], models=[model])
        lake.replace_model_day("fraud", predictions("fraud", DAY1, 3), DAY1)
    live_before = len(DeltaTable(str(labels_path)).file_uris())
    assert live_before == 3 and _files_on_disk(labels_path) > 3
    fraud_before = _files_on_disk(lake.model_path("fraud"))
    before = _snapshot(env)

    assets, _, _ = storage_defs.build_storage_definitions(load_config())
    resource = WarehouseResource(path=env["MONITOR_WAREHOUSE"], lake_path=env["MONITOR_LAKE"])
    # Default retention: compacted, but the files of the last week's versions stay (time travel works).
    result = dg.materialize(assets, resources={"warehouse": resource})
    assert result.success
    meta = result.asset_materializations_for_node("monitoring__lake_maintenance")[0].metadata
    assert meta["files_compacted"].value >= 3 and meta["files_vacuumed"].value == 0
    assert meta["retention_hours"].value == storage_defs.RETENTION_HOURS == 168
    assert "raw/labels" in meta["per_table"].value and meta["tables"].value == 3  # labels + two models
    assert len(DeltaTable(str(labels_path)).file_uris()) == 1
    assert _snapshot(env) == before

    # Zero retention: every file no current version uses is gone from disk.
    monkeypatch.setattr(storage_defs, "RETENTION_HOURS", 0.0)
    result = dg.materialize(assets, resources={"warehouse": resource})
    meta = result.asset_materializations_for_node("monitoring__lake_maintenance")[0].metadata
    assert meta["files_vacuumed"].value > 0 and meta["files_after"].value == meta["files_before"].value
    for path in [labels_path, lake.model_path("fraud"), lake.model_path("churn_v2")]:
        assert _files_on_disk(path) == len(DeltaTable(str(path)).file_uris())
    assert _files_on_disk(labels_path) == 1 and _files_on_disk(lake.model_path("fraud")) < fraud_before
    assert _snapshot(env) == before


def test_weekly_maintenance_schedule_and_the_daily_job_without_it(demo_config):
    defs = build_definitions(demo_config)
    schedule = defs.get_repository_def().get_schedule_def(storage_defs.LAKE_MAINTENANCE_SCHEDULE)
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.job_name == storage_defs.LAKE_MAINTENANCE_JOB
    maintenance = defs.resolve_job_def(storage_defs.LAKE_MAINTENANCE_JOB)
    assert set(maintenance.asset_layer.executable_asset_keys) == {LAKE_MAINTENANCE}
    daily = defs.resolve_job_def(MONITORING_JOB)
    keys = set(daily.asset_layer.executable_asset_keys)
    assert dg.AssetKey(["monitoring", "history"]) in keys and LAKE_MAINTENANCE not in keys
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 3, 8, 3, 0))
    assert len(list(schedule.evaluate_tick(context).run_requests)) == 1


def test_interactive_shell_runs_multi_line_statements_and_lists_tables(env):
    done = query(env, "-i", stdin="SELECT model_id,\n count(*) AS n FROM raw.predictions\n GROUP BY 1 ORDER BY 1;\n"
                                  "SELEC 1;\n.tables\n.quit\nSELECT 'after quit';\n")
    assert done.returncode == 0, done.stderr
    assert "monitor> " in done.stdout and "...> " in done.stdout
    table = done.stdout[done.stdout.index("model_id"):]
    assert "churn_v2" in table and "fraud" in table and "│" in table  # an aligned box, not CSV
    assert 'raw."predictions__fraud"' in done.stdout and "monitoring.performance_daily" in done.stdout
    assert done.stderr.startswith("query: ") and len(done.stderr.splitlines()) == 1  # the bad one, then on
    assert "after quit" not in done.stdout
