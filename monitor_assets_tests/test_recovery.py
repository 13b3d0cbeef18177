"""Failure and recovery: transient source errors heal through retries, a killed write leaves no partial
partition, and several partitions run at once against one DuckDB file."""

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg

from monitor_assets.config import load_config
from monitor_assets.ingestion.defs import build_ingestion_assets
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import open_warehouse

from .conftest import write

CONFIG = """
partitions: {{start_date: 2026-03-01, end_date: 2026-03-10}}
warehouse: {tmp}/wh.duckdb
reports_dir: {tmp}/reports
sources:
  predictions: {{path: "logs/{{date}}.jsonl.gz"}}
  labels: {{path: "labels/{{date}}.csv"}}
models:
  - id: fraud
    task: binary_classification
    reference: ref.parquet
    features: {{amount: numeric, channel: categorical}}
"""


def log_lines(day: str, n: int, model: str = "fraud") -> bytes:
    rows = [json.dumps({"timestamp": f"{day}T10:00:00Z", "prediction_id": f"{day}-{i}", "model_id": model,
                        "model_version": "1", "latency_ms": 5.0 + i % 7, "status": "ok", "score": (i % 100) / 100,
                        "features": {"amount": i * 1.5, "channel": "web" if i % 2 else "app"}}) for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def test_source_that_fails_twice_then_succeeds_heals_without_duplicates(tmp_path):
    config = load_config(write(tmp_path / "m.yaml", CONFIG.format(tmp=tmp_path)))
    (tmp_path / "logs").mkdir()
    target = tmp_path / "logs" / "2026-03-01.jsonl.gz"
    # A source that cannot be read yet (a mount not ready, a writer that has not moved its file in place):
    # here a folder where the file will be. (A truncated gzip is not transient: its readable part loads.)
    target.mkdir()
    predictions = build_ingestion_assets(config)[0]
    with dg.DagsterInstance.ephemeral() as instance:
        def feeder():  # the upstream writer finishes the file after the second failed attempt
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                retries = instance.get_event_records(
                    dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_UP_FOR_RETRY), limit=10)
                if len(retries) >= 2:
                    target.rmdir()
                    target.write_bytes(gzip.compress(log_lines("2026-03-01", 500)))
                    return
                time.sleep(0.05)

        thread = threading.Thread(target=feeder)
        thread.start()
        result = dg.materialize([predictions], partition_key="2026-03-01", instance=instance,
                                resources={"warehouse": WarehouseResource(path=config.warehouse_path, lake_path=config.lake_path)})
        thread.join()
        failures = instance.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))
    assert result.success and len(failures) == 2
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT prediction_id) FROM raw.predictions").fetchall()[0]
        logged = con.execute("SELECT records_read, records_loaded FROM raw.ingestion_log").fetchall()
    assert rows == distinct == 500 and logged == [(500, 500)]



def test_a_file_without_a_mapped_column_fails_at_once_naming_it(tmp_path):
    """A deterministic input error is not retried: one attempt, one line naming the file and the column."""
    text = CONFIG.format(tmp=tmp_path).replace('"logs/{date}.jsonl.gz"}', '"logs/{date}.csv", fields: {prediction_id: '
                                               'request_id}}')
    config = load_config(write(tmp_path / "m.yaml", text))
    write(tmp_path / "logs" / "2026-03-01.csv", "timestamp,prediction_id,model_id,model_version,latency_ms,status,"
          "score,amount,channel\n2026-03-01T10:00:00Z,p1,fraud,1,5.0,ok,0.5,1.0,web\n")
    predictions = build_ingestion_assets(config)[0]
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([predictions], partition_key="2026-03-01", instance=instance, raise_on_error=False,
                                resources={"warehouse": WarehouseResource(path=config.warehouse_path,
                                                                          lake_path=config.lake_path)})
        retries = instance.get_event_records(dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_UP_FOR_RETRY))
    assert not result.success and retries == []
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    # The preflight at the top of the step names the config key, the column and the file; the labels and the
    # reference (missing here) are other steps' inputs, so they do not stop this one.
    assert failure == (f"preflight found 1 problem, nothing run: {tmp_path / 'm.yaml'}: "
                       "sources.predictions.fields.prediction_id: column 'request_id' not in logs/2026-03-01.csv")
    assert "\n" not in failure


KILLABLE = """
import datetime as dt, sys
from monitor_assets.config import load_config
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.warehouse import connect
config = load_config(sys.argv[1])
with connect(config.warehouse_path) as con:
    print("start", flush=True)
    ingest_day(con, config, "predictions", dt.date(2026, 3, 1))
print("done", flush=True)
"""


def test_sigkill_halfway_leaves_the_previous_partition_and_the_next_run_completes(tmp_path):
    cfg = write(tmp_path / "m.yaml", CONFIG.format(tmp=tmp_path).replace(".jsonl.gz", ".jsonl"))
    config = load_config(cfg)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "2026-03-01.jsonl"
    log.write_bytes(log_lines("2026-03-01", 1000))
    subprocess.run([sys.executable, "-c", KILLABLE, str(cfg)], check=True, capture_output=True)
    log.write_bytes(log_lines("2026-03-01", 400_000))  # a big re-delivery of the same day
    killed = False
    for delay in (0.8, 1.2, 1.6, 0.5):  # kill while the transaction is open
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(cfg)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "start"
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
            break
        proc.wait()
    assert killed, "ingestion finished before it could be killed"
    with open_warehouse(config.warehouse_path) as con:  # recovery replays the WAL: only committed work
        rows = con.execute("SELECT count(*) FROM raw.predictions").fetchall()[0][0]
        assert rows in (1000, 400_000)  # the old partition, or (if the commit won the race) the new one
    subprocess.run([sys.executable, "-c", KILLABLE, str(cfg)], check=True, capture_output=True)
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT prediction_id) FROM raw.predictions").fetchall()[0] == (
            400_000, 400_000)


PARTITION_RUN = """
import sys
from monitor_assets.config import load_config
from monitor_assets_tests.conftest import run_job
config = load_config(sys.argv[1])
result = run_job(config, sys.argv[2])
print("ok" if result.success else "failed", flush=True)
"""


def test_four_partitions_at_once_against_one_duckdb_file(tmp_path):
    import pandas as pd

    cfg = write(tmp_path / "m.yaml", CONFIG.format(tmp=tmp_path))
    config = load_config(cfg)
    (tmp_path / "logs").mkdir()
    (tmp_path / "labels").mkdir()
    days = [dt.date(2026, 3, d).isoformat() for d in range(1, 5)]
    for day in days:
        (tmp_path / "logs" / f"{day}.jsonl.gz").write_bytes(gzip.compress(log_lines(day, 3000)))
        (tmp_path / "labels" / f"{day}.csv").write_text("prediction_id,label\n")
    pd.DataFrame({"amount": [1.0, 2.0, 3.0] * 100, "channel": ["web", "app", "web"] * 100,
                  "score": [0.1, 0.5, 0.9] * 100, "label": [0, 1, 1] * 100}).to_parquet(tmp_path / "ref.parquet")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", PARTITION_RUN, str(cfg), day], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for day in days]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [o[0].strip().splitlines()[-1] for o in outputs] == ["ok"] * 4, [o[1][-2000:] for o in outputs]
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        per_day = con.execute("""SELECT partition_date::VARCHAR, count(*) FROM raw.predictions
                                 GROUP BY 1 ORDER BY 1""").fetchall()
        perf = con.execute("SELECT count(DISTINCT partition_date) FROM monitoring.performance_daily").fetchall()[0][0]
    assert per_day == [(d, 3000) for d in days] and perf == 4


def test_a_failed_quality_suite_holds_only_the_model_whose_rows_failed(tmp_path):
    """A misfiled batch (last week's records in today's file) of one model loads, fails the GX suite and is
    held out of metrics and drift; the other model of the same file goes on."""
    import pandas as pd

    text = CONFIG.format(tmp=tmp_path) + """  - id: churn
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric, channel: categorical}
"""
    config = load_config(write(tmp_path / "m.yaml", text))
    (tmp_path / "logs").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "logs" / "2026-03-09.jsonl.gz").write_bytes(
        gzip.compress(log_lines("2026-03-01", 200) + log_lines("2026-03-09", 300, model="churn")))
    (tmp_path / "labels" / "2026-03-09.csv").write_text("prediction_id,label\n")
    pd.DataFrame({"amount": [1.0, 2.0] * 50, "channel": ["web", "app"] * 50, "score": [0.2, 0.8] * 50,
                  "label": [0, 1] * 50}).to_parquet(tmp_path / "ref.parquet")
    from .conftest import run_job

    with dg.DagsterInstance.ephemeral() as instance:
        result = run_job(config, "2026-03-09", instance=instance, raise_on_error=False)
        assert result.success  # a held model is not a failed run
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        check = evaluations["predictions_are_complete_and_valid"]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
        failures = check.metadata["failures"].value
        # The failure names the model whose rows failed, so it reaches that model's channels.
        assert [f["model_id"] for f in failures] == ["fraud"]
        assert ("expect_column_values_to_be_between on ts (hours after its day's midnight, UTC): 200 unexpected"
            in failures[0]["message"])
        assert check.partition == "2026-03-09"
        materialized = {tuple(e.asset_key.path) for e in result.get_asset_materialization_events()}
    assert {("raw", "predictions"), ("monitoring", "performance_daily"), ("monitoring", "feature_drift")} <= materialized
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        verdicts = con.execute("SELECT model_id, rows, passed, unexpected FROM monitoring.quality_verdicts "
                               "ORDER BY model_id").fetchall()
        performance = con.execute("SELECT model_id, volume FROM monitoring.performance_daily "
                                  "WHERE partition_date = '2026-03-09'").fetchall()
        drifted_models = con.execute("SELECT DISTINCT model_id FROM monitoring.feature_drift "
                                     "WHERE partition_date = '2026-03-09'").fetchall()
    assert verdicts == [("churn", 300, True, 0), ("fraud", 200, False, 200)]
    assert performance == [("churn", 300)]
    assert drifted_models == [("churn",)]
