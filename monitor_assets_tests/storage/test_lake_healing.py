"""A damaged or missing data file in the lake harms only its own table and partition, is named by the check
command, and a re-run of its day heals it (README, "Reliability")."""

import datetime as dt
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from monitor_assets.config import load_config
from monitor_assets.storage.lake import Lake
from monitor_assets_tests.conftest import run_job

ROOT = Path(__file__).resolve().parents[2]
DAY1, DAY2 = "2026-10-01", "2026-10-02"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The demo pipeline over two days, once; each test works on its own copy."""
    out = tmp_path_factory.mktemp("healing_built")
    assert run_job(_config(out), DAY1, DAY2).success
    return out


def _config(folder: Path):
    return replace(load_config(), warehouse_path=str(folder / "monitor.duckdb"), reports_dir=str(folder / "reports"))


@pytest.fixture
def site(built, tmp_path) -> Path:
    folder = tmp_path / "site"
    shutil.copytree(built, folder)
    return folder


def _env(folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MONITOR_CONFIG", "MONITOR_LAKE")}
    return {**env, "MONITOR_WAREHOUSE": str(folder / "monitor.duckdb"), "MONITOR_REPORTS_DIR": str(folder / "reports"),
            "PYTHONPATH": str(ROOT)}


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=_env(folder), cwd=ROOT,
                          timeout=300)


def query(folder: Path, sql: str) -> subprocess.CompletedProcess:
    return _cli(folder, "monitor_assets.query", sql)


def rows(folder: Path, sql: str) -> list[list[str]]:
    done = query(folder, sql)
    assert done.returncode == 0, done.stderr
    return [line.split(",") for line in done.stdout.strip().splitlines()[1:]]


def check(folder: Path) -> subprocess.CompletedProcess:
    return _cli(folder, "monitor_assets.storage.maintenance", "check")


def per_day(folder: Path, table: str) -> list[list[str]]:
    return rows(folder, f"SELECT partition_date, count(*) FROM {table} GROUP BY 1 ORDER BY 1")


def only_file(folder: Path, table_dir: str, day: str) -> Path:
    files = list((folder / "monitor_lake" / table_dir / f"partition_date={day}").glob("*.parquet"))
    assert len(files) == 1, files
    return files[0]


def test_truncated_predictions_file_fails_only_its_partition_and_a_rerun_of_the_day_restores_it(site):
    predictions = per_day(site, "raw.predictions")
    performance = per_day(site, "monitoring.performance_daily")
    alerts = rows(site, "SELECT count(*) FROM monitoring.alerts")
    assert [d for d, _ in predictions] == [DAY1, DAY2] and all(int(n) > 1000 for _, n in predictions)
    assert [int(n) for _, n in performance] == [4, 4]
    damaged = only_file(site, "raw/predictions/model_id=fraud_detector", DAY1)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # a copy cut short

    # Other tables, and the table's other day, read as before.
    assert rows(site, "SELECT count(*) FROM monitoring.alerts") == alerts
    assert per_day(site, "monitoring.performance_daily") == performance
    assert rows(site, f"SELECT count(*) FROM raw.predictions WHERE partition_date = DATE '{DAY2}'") == [
        [predictions[1][1]]]
    # The damaged day fails, naming the file, in one line.
    failed = query(site, "SELECT count(*) FROM raw.predictions")
    assert failed.returncode == 2 and str(damaged) in failed.stderr and "cut short" in failed.stderr
    assert failed.stderr.strip().count("\n") == 0 or "query:" in failed.stderr.strip().splitlines()[-1]

    found = check(site)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.strip().splitlines()
    assert lines[0] == (f"damaged: raw.predictions__fraud_detector partition_date={DAY1}: {damaged} (1775 rows): "
                        f"cut short or overwritten: {len(data) // 2} bytes on storage, {len(data)} in the Delta log")
    assert len(lines) == 2 and lines[1].startswith("1 damaged of ") and lines[1].endswith(f"re-run: {DAY1}")

    assert run_job(_config(site), DAY1).success  # the re-run of the day heals it
    assert per_day(site, "raw.predictions") == predictions
    assert per_day(site, "monitoring.performance_daily") == performance
    clean = check(site)
    assert clean.returncode == 0 and clean.stdout.strip().endswith("all readable"), clean.stdout


def test_missing_feature_drift_file_spares_other_steps_and_a_rerun_of_the_day_heals_it(site):
    drift = per_day(site, "monitoring.feature_drift")
    predictions = per_day(site, "raw.predictions")
    missing = only_file(site, "monitoring/feature_drift", DAY1)
    missing.unlink()

    # Reported with the file; the table's other day and the other tables read.
    found = check(site)
    assert found.returncode == 1 and found.stdout.startswith(
        f"damaged: monitoring.feature_drift partition_date={DAY1}: {missing} ({drift[0][1]} rows): missing"), found.stdout
    assert rows(site, f"SELECT count(*) FROM monitoring.feature_drift WHERE partition_date = DATE '{DAY2}'") == [
        [drift[1][1]]]
    failed = query(site, "SELECT count(*) FROM monitoring.feature_drift")
    assert failed.returncode == 2 and str(missing) in failed.stderr and "missing" in failed.stderr
    assert per_day(site, "raw.predictions") == predictions

    # Steps of another day that only register the table succeed (they used to fail on it).
    result = run_job(_config(site), DAY2, raise_on_error=False)
    succeeded = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"raw__predictions", "monitoring__reference_profiles"} <= succeeded
    assert result.success, [e.step_key for e in result.all_events if e.is_step_failure]
    assert per_day(site, "raw.predictions") == predictions

    assert run_job(_config(site), DAY1).success  # the re-run of the day
    assert per_day(site, "monitoring.feature_drift") == drift
    clean = check(site)
    assert clean.returncode == 0 and clean.stdout.strip().endswith("all readable"), clean.stdout


def _day_rows(day: dt.date, models: list[str]) -> pa.Table:
    return pa.table({"partition_date": [day] * len(models), "model_id": models, "feature": ["f"] * len(models),
                     "statistic": [0.5] * len(models)})


def test_heal_takes_out_only_the_replaced_partitions_files(tmp_path):
    """A missing file of a day not being written stays listed and reported: nothing is dropped silently."""
    lake = Lake(tmp_path / "lake")
    days = [dt.date(2026, 3, d) for d in (1, 2)]
    for day in days:
        lake.replace("monitoring.feature_drift", _day_rows(day, ["a", "b"]), [day])
    table = lake.path("monitoring.feature_drift")
    day1 = next(Path(table).glob("partition_date=2026-03-01/*.parquet"))
    day2 = next(Path(table).glob("partition_date=2026-03-02/*.parquet"))
    day1.unlink()
    day2.write_bytes(day2.read_bytes()[:100])

    lake.replace("monitoring.feature_drift", _day_rows(days[1], ["a"]), [days[1]], models=["a"])

    tables, files, problems = lake.check()
    assert [(p.partition, p.path, p.problem) for p in problems] == [
        ("partition_date=2026-03-01", str(day1), "missing: listed in the Delta log, not on storage")]
    assert (Path(table) / "_damaged" / day2.relative_to(table)).stat().st_size == 100  # kept aside, not deleted
    # Day 2 now holds the rewritten model only: b's row was in the damaged file (its day is to be re-run).
    import duckdb

    from monitor_assets.storage.warehouse import connect

    with connect(None, str(tmp_path / "lake")) as con:
        assert con.execute("SELECT model_id FROM monitoring.feature_drift WHERE partition_date = DATE '2026-03-02'"
                           ).fetchall() == [("a",)]
        with pytest.raises(duckdb.Error, match="partition_date=2026-03-01: .* missing"):
            con.execute("SELECT count(*) FROM monitoring.feature_drift").fetchall()


def test_weekly_maintenance_compacts_the_sound_tables_and_fails_naming_the_damaged_file(tmp_path):
    import dagster as dg
    from deltalake import DeltaTable

    from monitor_assets.storage import defs as storage_defs
    from monitor_assets.storage.resource import WarehouseResource

    lake = Lake(tmp_path / "lake")
    day = dt.date(2026, 3, 1)
    for model in ("a", "b", "c"):  # three small files in one partition: work for compaction
        lake.replace("monitoring.feature_drift", _day_rows(day, [model]), [day], models=[model])
        lake.replace("monitoring.drift_summary", pa.table({"partition_date": [day], "model_id": [model]}), [day],
                     models=[model])
    sound, broken = lake.path("monitoring.feature_drift"), lake.path("monitoring.drift_summary")
    damaged = sorted(Path(broken).glob("partition_date=2026-03-01/*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:50])

    assets, _, _ = storage_defs.build_storage_definitions(load_config())
    resource = WarehouseResource(path=str(tmp_path / "wh.duckdb"), lake_path=str(tmp_path / "lake"))
    result = dg.materialize(assets, resources={"warehouse": resource}, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.description.startswith("1 damaged lake files, their tables not compacted")
    assert f"monitoring.drift_summary partition_date=2026-03-01: {damaged} (1 rows): cut short" in failure.description
    assert "\n" not in failure.description
    assert len(DeltaTable(str(sound)).file_uris()) == 1  # the sound table was compacted all the same
    assert len(DeltaTable(str(broken)).file_uris()) == 3  # the damaged one left as it was
