"""The local instance's batched SQLite event log (monitor_assets/event_log.py): a run's events land as with
Dagster's own storage, in fewer transactions, and a failed batch leaves nothing behind."""

import datetime as dt

import dagster as dg
import pytest
from dagster._core.storage.event_log import SqliteEventLogStorage

from monitor_assets.event_log import BatchedSqliteEventLogStorage
from monitor_assets.runner import INSTANCE_TEMPLATES, instance_yaml

DAYS = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-08")


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run())
def daily(context: dg.AssetExecutionContext) -> None:
    for key in context.partition_keys:
        context.log.info(f"day {key}")


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[daily])
def downstream(context: dg.AssetExecutionContext):
    return dg.MaterializeResult(metadata={"days": len(context.partition_keys)})


CHECK = dg.AssetCheckSpec("positive", asset="daily", partitions_def=DAYS)


@dg.multi_asset_check(specs=[CHECK])
def daily_check(context: dg.AssetCheckExecutionContext):
    """One evaluation per day (events Dagster never batches: each goes through the per-event path)."""
    for key in context.partition_keys:
        yield dg.AssetCheckEvaluation(asset_key=CHECK.asset_key, check_name=CHECK.name, partition=key,
                                      passed=key != "2026-01-03", metadata={"day": key})
    yield dg.Output(None, output_name=CHECK.get_python_identifier())


JOB = dg.define_asset_job("two_steps", [daily, downstream], partitions_def=DAYS)
DEFS = dg.Definitions(assets=[daily, downstream], asset_checks=[daily_check], jobs=[JOB])


def home_with(tmp_path, name: str, template: bool):
    home = tmp_path / name
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(INSTANCE_TEMPLATES["local"], home) if template
                                       else "telemetry:\n  enabled: false\n")
    return home


def run_range(home) -> tuple[dg.DagsterInstance, str]:
    instance = dg.DagsterInstance.from_config(str(home))
    result = DEFS.resolve_job_def("two_steps").execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": "2026-01-01",
                                 "dagster/asset_partition_range_end": "2026-01-07"})
    assert result.success
    return instance, result.run_id


def summary(instance: dg.DagsterInstance, run_id: str) -> dict:
    logs = instance.all_logs(run_id)
    kinds = {}
    for entry in logs:
        if entry.dagster_event is not None:
            kinds[entry.dagster_event.event_type_value] = kinds.get(entry.dagster_event.event_type_value, 0) + 1
    materialized = {key.to_user_string(): sorted(instance.get_materialized_partitions(key))
                    for key in (dg.AssetKey("daily"), dg.AssetKey("downstream"))}
    checks = sorted((r.partition, r.status.value) for r in
                    instance.event_log_storage.get_asset_check_execution_history(CHECK.key, limit=100))
    # in storage order: held-back check evaluations land before the step's next event, as Dagster stores them
    sequence = [(e.dagster_event.event_type_value, e.step_key) for e in logs if e.dagster_event is not None]
    return {"kinds": kinds, "materialized": materialized, "checks": checks, "sequence": sequence}


def test_a_run_stores_the_same_events_as_dagsters_own_sqlite_storage(tmp_path, monkeypatch):
    batches = []
    original = BatchedSqliteEventLogStorage.store_event_batch

    def spy(self, events):
        batches.append(len(events))
        return original(self, events)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "store_event_batch", spy)
    batched, batched_run = run_range(home_with(tmp_path, "batched", template=True))
    # The planned events of the run (2 assets x 7 days) and each step's 7 materializations came as batches.
    assert max(batches) >= 14 and batches.count(7) >= 2, batches
    plain, plain_run = run_range(home_with(tmp_path, "plain", template=False))
    with batched, plain:
        assert type(batched.event_log_storage) is BatchedSqliteEventLogStorage
        assert type(plain.event_log_storage) is SqliteEventLogStorage
        got, expected = summary(batched, batched_run), summary(plain, plain_run)
        assert got == expected
        # 7 days x 2 assets, planned and materialized, each kept per partition (the UI's per-day view).
        assert got["kinds"]["ASSET_MATERIALIZATION"] == 14 and got["kinds"]["ASSET_MATERIALIZATION_PLANNED"] == 14
        assert got["materialized"]["daily"] == [f"2026-01-0{d}" for d in range(1, 8)]
        assert got["checks"] == [(f"2026-01-0{d}", "FAILED" if d == 3 else "SUCCEEDED") for d in range(1, 8)]
        # The cross-run index answers as Dagster's does (the asset's latest materialization and its metadata).
        event = batched.get_latest_materialization_event(dg.AssetKey("downstream"))
        assert event.asset_materialization.metadata["days"].value == 7


def index_tables(instance: dg.DagsterInstance, run_id: str) -> dict:
    """The index file's rows a run leaves (events, asset rows, asset tags, check executions), comparable across
    two instances: the run's id as RUN, times left out, each storage id as the (kind, step, asset, partition)
    of the event it points to, each serialized event as its kind and partition."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import (
        AssetCheckExecutionsTable,
        AssetEventTagsTable,
        AssetKeyTable,
        SqlEventLogStorageTable,
    )
    from dagster_shared.serdes import deserialize_value

    storage = instance.event_log_storage
    with storage.index_connection() as conn:
        events = {row.id: row for row in conn.execute(db.select(SqlEventLogStorageTable))}

        def at(storage_id):
            row = events.get(storage_id)
            return None if row is None else (row.dagster_event_type, row.step_key, row.asset_key, row.partition)

        def parsed(text):
            if text is None:
                return None
            value = deserialize_value(text)
            entry = getattr(value, "event_log_entry", value)  # an EventLogRecord or an EventLogEntry
            return (entry.dagster_event.event_type_value, entry.dagster_event.partition,
                    at(getattr(value, "storage_id", None)))

        run = {run_id: "RUN"}
        tables = {
            "events": sorted((row.dagster_event_type or "", row.step_key or "", row.asset_key or "",
                              row.partition or "", run.get(row.run_id, row.run_id)) for row in events.values()),
            "asset_keys": sorted((row.asset_key, parsed(row.last_materialization), run.get(row.last_run_id),
                                  row.last_materialization_timestamp is not None)
                                 for row in conn.execute(db.select(AssetKeyTable))),
            # a data version without a code version is made from the run's id
            "tags": sorted((at(row.event_id), row.asset_key, row.key,
                            bool(row.value) if row.key == "dagster/data_version" else row.value)
                           for row in conn.execute(db.select(AssetEventTagsTable))),
            "checks": sorted((row.asset_key, row.check_name, row.partition or "", run.get(row.run_id),
                              row.execution_status, parsed(row.evaluation_event), at(row.evaluation_event_storage_id),
                              at(row.materialization_event_storage_id))
                             for row in conn.execute(db.select(AssetCheckExecutionsTable))),
        }
    return tables


def test_the_index_rows_are_those_dagsters_own_storage_writes_event_by_event(tmp_path):
    """The batch writes the index file's rows itself (one statement per table, not per event): row for row what
    Dagster's SQLite storage writes, the asset's row pointing to its last materialization, each check row to
    its evaluation and the materialization it judged, each event serialized as Dagster serializes it."""
    batched, batched_run = run_range(home_with(tmp_path, "batched", template=True))
    plain, plain_run = run_range(home_with(tmp_path, "plain", template=False))
    with batched, plain:
        got, expected = index_tables(batched, batched_run), index_tables(plain, plain_run)
        assert got == expected
        assert len(got["tags"]) == 14  # each materialization's data version
        assert len(got["checks"]) == 7 and all(row[5] is not None and row[6] is not None for row in got["checks"])
        downstream = next(row for row in got["asset_keys"] if "downstream" in row[0])
        assert downstream[1] == ("ASSET_MATERIALIZATION", "2026-01-07",
                                 ("ASSET_MATERIALIZATION", "downstream", '["downstream"]', "2026-01-07"))
        assert downstream[2] == "RUN"


def test_a_batch_costs_a_few_statements_whatever_its_size(tmp_path):
    """Dagster's storage runs three to six statements an event; the batch a handful per table, so a year of
    days costs what a week does."""
    import sqlalchemy as db

    counted: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        counted.append(statement.split()[0])

    db.event.listen(db.engine.Engine, "before_cursor_execute", count)
    try:
        instance, run_id = run_range(home_with(tmp_path, "batched", template=True))
        with instance:
            planned = [e for e in instance.all_logs(run_id) if e.dagster_event is not None
                       and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION_PLANNED"]
            for _ in range(20):  # 280 events in one batch
                planned = planned + planned[:14]
            counted.clear()
            instance.event_log_storage.store_event_batch(planned)
            writes = [s for s in counted if s in ("INSERT", "UPDATE")]
            assert len(planned) == 294 and 2 <= len(writes) <= 6, counted
            assert len(instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)) == 14 + 294
    finally:
        db.event.remove(db.engine.Engine, "before_cursor_execute", count)


def test_a_failed_batch_leaves_nothing_and_the_events_can_be_stored_again(tmp_path, monkeypatch):
    instance, run_id = run_range(home_with(tmp_path, "batched", template=True))
    with instance:
        storage = instance.event_log_storage
        events = [e for e in instance.all_logs(run_id) if e.dagster_event is not None
                  and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
        before = len(instance.all_logs(run_id))

        def latest_in_asset_row():
            return instance.get_asset_records([dg.AssetKey("daily")])[0].asset_entry.last_materialization_record.storage_id

        latest = latest_in_asset_row()

        class Broken:  # not an event: storing it raises before anything is written
            is_dagster_event = False

        with pytest.raises(AttributeError):
            storage.store_event_batch([*events[:3], Broken()])
        assert len(instance.all_logs(run_id)) == before

        def disk_full(*args):  # after both files' event rows were inserted
            raise RuntimeError("disk full, say")

        monkeypatch.setattr(storage, "_store_asset_rows", disk_full)
        with pytest.raises(RuntimeError, match="disk full"):
            storage.store_event_batch(events[:3])
        assert len(instance.all_logs(run_id)) == before  # the rows inserted before the failure were rolled back
        assert latest_in_asset_row() == latest
        monkeypatch.undo()
        storage.store_event_batch(events[:3])
        assert len(instance.all_logs(run_id)) == before + 3
        assert latest_in_asset_row() > latest


def test_the_kept_engines_survive_a_wipe(tmp_path):
    """The storage keeps one engine per database file; a wipe deletes the files, and the next run must make
    their tables again rather than write into empty files."""
    home = home_with(tmp_path, "batched", template=True)
    instance, _ = run_range(home)
    with instance:
        instance.wipe()
        assert instance.get_runs() == []
        result = DEFS.resolve_job_def("two_steps").execute_in_process(instance=instance, partition_key="2026-01-02")
        assert result.success
        assert summary(instance, result.run_id)["checks"] == [("2026-01-02", "SUCCEEDED")]


def test_held_back_check_evaluations_are_written_one_by_one_if_their_batch_fails(tmp_path, monkeypatch):
    def broken(self, events):
        raise RuntimeError("disk full, say")

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "_write_batch", broken)
    instance, run_id = run_range(home_with(tmp_path, "batched", template=True))
    with instance:
        got = summary(instance, run_id)
    assert got["checks"] == [(f"2026-01-0{d}", "FAILED" if d == 3 else "SUCCEEDED") for d in range(1, 8)]
    assert got["kinds"]["ASSET_CHECK_EVALUATION"] == 7


def test_which_tables_and_columns_exist_is_asked_once_not_for_every_event(tmp_path, monkeypatch):
    """Dagster asks before every asset event whether optional tables and an index column exist (a schema query
    each, through a new engine): asked once per process, and the events land as before."""
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    asked: list[str] = []
    has_table, has_column = SqliteEventLogStorage.has_table, SqlEventLogStorage._has_asset_key_col_on_connection
    monkeypatch.setattr(SqliteEventLogStorage, "has_table",
                        lambda self, name: asked.append(name) or has_table(self, name))
    monkeypatch.setattr(SqlEventLogStorage, "_has_asset_key_col_on_connection",
                        lambda self, conn, column: asked.append(f"asset_keys.{column}") or has_column(self, conn, column))
    instance, first = run_range(home_with(tmp_path, "batched", template=True))
    with instance:
        assert len(asked) == len(set(asked)) and "asset_check_executions" in asked
        before = list(asked)
        again = DEFS.resolve_job_def("two_steps").execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": "2026-01-01", "dagster/asset_partition_range_end": "2026-01-07"})
        assert again.success and asked == before  # 28 more asset events, 7 check evaluations: not one question
        kinds = summary(instance, again.run_id)["kinds"]
        assert kinds == summary(instance, first)["kinds"] and kinds["ASSET_CHECK_EVALUATION"] == 7


def test_each_days_latest_materialization_is_found_in_two_queries(tmp_path):
    """`wiring.latest_materializations` (what a check evaluation targets): per day, the newest of the asset's
    materializations across runs; a day never materialized is left out. The same answer as asking day by day."""
    from monitor_assets.wiring import latest_materializations

    instance, first = run_range(home_with(tmp_path, "batched", template=True))
    with instance:
        second = DEFS.resolve_job_def("two_steps").execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": "2026-01-03", "dagster/asset_partition_range_end": "2026-01-04"})
        days = [dt.date(2026, 1, d) for d in range(1, 9)]  # the 8th has no partition run
        found = latest_materializations(instance, dg.AssetKey("daily"), days)
        assert sorted(found) == days[:7]
        assert {d: t.run_id for d, t in found.items()} == {
            d: second.run_id if d.day in (3, 4) else first for d in days[:7]}
        for day, target in found.items():
            newest = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("daily"), asset_partitions=[str(day)]), limit=1).records[0]
            assert (target.storage_id, target.timestamp) == (newest.storage_id, newest.timestamp)
        assert latest_materializations(instance, dg.AssetKey("daily"), []) == {}
        assert latest_materializations(instance, dg.AssetKey("never"), days) == {}


CONCURRENT_RUNS = r"""
import sys
import dagster as dg
from monitor_assets_tests.test_event_log import DEFS
instance = dg.DagsterInstance.from_config(sys.argv[1])
for _ in range(3):
    result = DEFS.resolve_job_def("two_steps").execute_in_process(instance=instance, tags={
        "dagster/asset_partition_range_start": "2026-01-01", "dagster/asset_partition_range_end": "2026-01-07"})
    assert result.success
    print(result.run_id)
"""


def test_processes_writing_one_home_at_once_each_get_their_own_rows(tmp_path):
    """Several processes write one SQLite home at once (the daemon's runs, `make run` beside `make dev`): a batch's
    index ids are read back from the file's write lock, so each run's events, asset rows and check rows must
    point to that run's own events, none lost, none crossed."""
    import subprocess
    import sys
    from pathlib import Path

    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
    from dagster_shared.serdes import deserialize_value

    home = home_with(tmp_path, "shared", template=True)
    first, first_run = run_range(home)  # a home in use: its files made (Dagster's own set-up races otherwise)
    first.dispose()
    repo = Path(__file__).parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUNS, str(home)], cwd=repo, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    run_ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "Exception while storing event batch" not in err, err[-3000:]  # no batch fell back
        run_ids += out.split()
    assert len(set(run_ids)) == 9
    run_ids.append(first_run)
    instance = dg.DagsterInstance.from_config(str(home))
    with instance:
        expected = [(f"2026-01-0{d}", "FAILED" if d == 3 else "SUCCEEDED") for d in range(1, 8)]
        for run_id in run_ids:
            kinds = summary(instance, run_id)["kinds"]
            assert kinds["ASSET_MATERIALIZATION"] == 14 and kinds["ASSET_MATERIALIZATION_PLANNED"] == 14
            assert kinds["ASSET_CHECK_EVALUATION"] == 7
        with instance.event_log_storage.index_connection() as conn:
            events = {row.id: row for row in conn.execute(db.select(SqlEventLogStorageTable))}
            checks = list(conn.execute(db.select(AssetCheckExecutionsTable)))
        per_run = {}
        for row in checks:
            event = events[row.evaluation_event_storage_id]  # the evaluation it names is this run's, this day's
            evaluation = deserialize_value(event.event).dagster_event.event_specific_data
            assert (event.run_id, evaluation.partition, event.dagster_event_type) == (
                row.run_id, row.partition, "ASSET_CHECK_EVALUATION")
            per_run.setdefault(row.run_id, []).append((row.partition, row.execution_status))
        assert {run_id: sorted(rows) for run_id, rows in per_run.items()} == {run_id: expected for run_id in run_ids}
        indexed = [e for e in events.values() if e.dagster_event_type == "ASSET_MATERIALIZATION"]
        assert len(indexed) == 10 * 14 and {e.run_id for e in indexed} == set(run_ids)
        record = instance.get_asset_records([dg.AssetKey("downstream")])[0].asset_entry.last_materialization_record
        assert events[record.storage_id].dagster_event_type == "ASSET_MATERIALIZATION"
        assert events[record.storage_id].asset_key == '["downstream"]'


@dg.asset
def plain() -> None:
    pass


@dg.asset_check(asset=plain)
def plain_is_fine():
    return dg.AssetCheckResult(passed=False, metadata={"value": 1})


def test_an_unpartitioned_checks_rows_are_those_dagsters_own_storage_writes(tmp_path):
    """A check without partitions (its row matched by `partition IS NULL`): the same rows as Dagster's storage."""
    got = {}
    for name, template in (("batched", True), ("plain", False)):
        instance = dg.DagsterInstance.from_config(str(home_with(tmp_path, name, template)))
        with instance:
            result = dg.materialize([plain, plain_is_fine], instance=instance)
            assert result.success
            got[name] = index_tables(instance, result.run_id)
    assert got["batched"] == got["plain"]
    assert [row[4] for row in got["batched"]["checks"]] == ["FAILED"]
