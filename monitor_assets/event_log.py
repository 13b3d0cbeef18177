"""Dagster's SQLite instance storage with batched event writes (the local instance of `make run` / `make dev`).

Dagster stores each event in its own transactions, three or four of them for an asset event (the run's
database, then the index database: the event, its tags, the asset's row), and makes a new SQLAlchemy engine
for each (about 8 ms): 63 ms a check evaluation here, which Dagster never batches (a year of one model's
14 threshold checks: 5,100 evaluations, 5 minutes). This storage keeps one engine per file (each use still
opens and closes its own connection, as Dagster's does): 14 ms an event. A run
over 30 days of the demo records about 3,000 events: the planned materializations of every asset and day
when the run starts, then each step's materializations of its days. Dagster hands those over in batches
(when `DAGSTER_EVENT_BATCH_SIZE` is set), but its SQLite storage writes a batch one event at a time.
`BatchedSqliteEventLogStorage` writes a batch in one transaction per database file, with the same rows, and
with one statement per table rather than Dagster's three to six an event (`_store_together`): each event
serialized once, the event rows inserted together, an asset's row set once, check rows inserted or updated
together. A year of one model's event traffic (`benchmarks/event_log_bench.py`, 20,541 events) took 24.0 s
event by event in one transaction and 9.4 s so. The rows are Dagster's own, compared table by table in
`test_event_log.py`; what the fast path does not cover (an old schema, a batch planning and evaluating the
same checks) goes through Dagster's code. A failed batch is rolled back whole, and Dagster then stores its
events one by one.

Check evaluations, which Dagster hands over one at a time, are held back until the run's next other event (a
check step yields its output right after its evaluations) or a full batch, and written together, in order: a
year of one model's 14 daily checks is 5,110 evaluations, 72 s one by one at 14 ms, well under a second in
batches; 840 evaluations took 65.7 s with Dagster's storage and 3.6 s here.

Same files as Dagster's default (`$DAGSTER_HOME/history`, `.../history/runs`, `.../schedules`): an
existing home keeps its history, and the daemon and webserver read it as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import sqlalchemy as db
import sqlalchemy.exc as db_exc
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    DagsterEventType,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool

BATCH_SIZE = "1000"  # events per batch: a step's materializations of a year of days fit in one


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log, writing a batch of events in one transaction per file."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: dict[str, db.Engine] = {}
        self._pending: list = []  # check evaluations held back (`_held_back`)
        self._pending_lock = threading.Lock()
        self._present: set[tuple[str, str]] = set()  # (table, column or "") known to exist (`has_table`)
        super().__init__(base_dir, inst_data=inst_data)
        self._batch = threading.local()
        # Dagster batches a step's events only when this is set; every process writing events through this
        # storage (runner, run workers of the daemon, the webserver's launches) loads the instance first.
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", BATCH_SIZE)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BatchedSqliteEventLogStorage:  # noqa: D102
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> db.Engine:
        """One engine per database file, kept: Dagster makes one per statement group (about 8 ms each, five
        an event), though with NullPool an engine holds no connection; each use still opens and closes its own."""
        engine = self._engines.get(shard)
        if engine is None:
            engine = self._engines[shard] = db.create_engine(
                self.conn_string_for_shard(shard), poolclass=NullPool,
                connect_args={"timeout": 15})  # Dagster's SQLITE_BUSY_TIMEOUT_SECONDS
        if shard not in self._initialized_dbs:  # also after a wipe, which deletes the files
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        return engine

    # Dagster asks, for every asset event, whether its optional tables and columns exist: a new engine and a
    # schema query each time, about 1.5 ms three times an event (3 s of a 30-day demo run). What exists stays
    # (a wipe deletes the files, and the next use creates every table again), so a yes is kept.
    def has_table(self, table_name: str) -> bool:
        if (table_name, "") in self._present:
            return True
        found = super().has_table(table_name)
        if found:
            self._present.add((table_name, ""))
        return found

    def _has_asset_key_col_on_connection(self, conn: db.Connection, column_name: str) -> bool:
        if ("asset_keys", column_name) in self._present:
            return True
        found = super()._has_asset_key_col_on_connection(conn, column_name)
        if found:
            self._present.add(("asset_keys", column_name))
        return found

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.Connection]:
        held = getattr(self._batch, "connections", None)
        if held is None:
            with self._db_lock, self._engine(shard).connect() as conn, conn.begin():
                yield conn
            return
        if shard not in held:
            stack: ExitStack = self._batch.stack
            conn = stack.enter_context(self._engine(shard).connect())
            stack.enter_context(conn.begin())  # committed when the stack closes without an error
            held[shard] = conn
        yield held[shard]

    def store_event(self, event) -> None:
        if getattr(self._batch, "connections", None) is not None:  # inside a batch: written with it
            super().store_event(event)
            return
        if _held_back(event):
            with self._pending_lock:
                self._pending.append(event)
                if len(self._pending) < int(BATCH_SIZE):
                    return
            self.flush()
            return
        self.flush()  # what waits goes first: the events keep their order
        super().store_event(event)

    def flush(self) -> None:
        """Write the check evaluations held back, in one batch (one by one if the batch fails, as Dagster does)."""
        with self._pending_lock:
            events, self._pending = self._pending, []
        if not events:
            return
        try:
            self._write_batch(events)
        except Exception:  # noqa: BLE001  (any failure: the events are still written, one at a time)
            for event in events:
                super().store_event(event)

    def store_event_batch(self, events: Sequence) -> None:
        self.flush()
        if len(events) <= 1:
            super().store_event_batch(events)
            return
        self._write_batch(events)

    def _write_batch(self, events: Sequence) -> None:
        # Other threads of this process wait on the lock (not on SQLite's busy timeout) while the batch writes.
        with self._db_lock, ExitStack() as stack:
            self._batch.connections, self._batch.stack = {}, stack
            try:
                self._store_together(events)
            finally:
                self._batch.connections = None

    def _store_together(self, events: Sequence) -> None:
        """The rows Dagster's `SqliteEventLogStorage.store_event` writes for each event, written for the batch at
        once: each event serialized once, its event-log rows inserted in one statement per file (executemany, the
        index file's ids read back in order, `_inserted_ids`), the asset tags in one statement, an asset's row in `asset_keys` set
        once to what its last events leave there, and the check evaluations' rows updated in one statement.
        Dagster's per-event code compiles three to six statements an event and serializes a materialization or
        a check evaluation two or three times: about 1.3 ms an event, half a minute for a year of one model."""
        rows = [self._event_to_row(event) for event in events]
        by_run: dict[str, list[dict]] = {}
        for event, row in zip(events, rows, strict=True):
            by_run.setdefault(event.run_id, []).append(row)
        for run_id, run_rows in by_run.items():
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), run_rows)

        mirrored = [i for i, event in enumerate(events) if _mirrored(event)]
        if not mirrored:
            return
        with self.index_connection() as conn:
            ids = dict(zip(mirrored, _inserted_ids(conn, [rows[i] for i in mirrored]), strict=True))
            assets = [i for i in mirrored if events[i].dagster_event_type in ASSET_EVENTS
                      and events[i].dagster_event.asset_key]
            self._store_asset_event_tags(conn, [events[i] for i in assets], [ids[i] for i in assets])
            self._store_asset_rows(conn, [(events[i], ids[i]) for i in assets])
        checks = [i for i in mirrored if events[i].dagster_event_type in ASSET_CHECK_EVENTS]
        self._store_check_events([(events[i], ids[i], rows[i]) for i in checks])

    def _store_asset_rows(self, conn: db.Connection, events: Sequence[tuple]) -> None:
        """Each asset's `asset_keys` row, set once: every column to the value of the last event that sets it
        (Dagster sets the row event by event, each event overwriting the columns it sets). A materialization
        sets every column its kind of event sets, so an earlier one is skipped once a later one is found
        (its serialized record, `last_materialization`, is the costly value)."""
        has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
        merged: dict[str, dict] = {}
        for event, event_id in reversed(events):
            values = merged.setdefault(event.dagster_event.asset_key.to_string(), {})
            if event.dagster_event.is_step_materialization and "last_materialization" in values:
                continue
            for column, value in self._get_asset_entry_values(event, event_id, has_index_cols).items():
                values.setdefault(column, value)
        for asset_key, values in merged.items():
            if not values:
                continue
            try:
                conn.execute(AssetKeyTable.insert().values(asset_key=asset_key, **values))
            except db_exc.IntegrityError:
                conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == asset_key))

    def _store_check_events(self, checks: Sequence[tuple]) -> None:
        """A batch of planned checks inserts their rows, and a batch of a run's check evaluations updates the rows
        their planned events made, in one statement per partition kind. Anything else goes through Dagster's own
        per-event code, in order: an old schema, a batch mixing planned checks and evaluations, an evaluation
        outside a run or without its planned row."""
        if not checks:
            return
        kinds = {event.dagster_event_type for event, _, _ in checks}
        if not self.has_table(AssetCheckExecutionsTable.name) or len(kinds) > 1:  # Dagster's code, event by event
            for event, event_id, _ in checks:
                self.store_asset_check_event(event, event_id)
            return
        if kinds == {DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}:
            self._store_planned_checks(checks)
            return
        in_run = [item for item in checks if item[0].run_id]
        planned = set(self._planned_checks(in_run))
        fast = [item for item in in_run if _check_row_key(item[0]) in planned]
        chosen = {id(event) for event, _, _ in fast}
        for event, event_id, _ in checks:
            if id(event) not in chosen:
                self.store_asset_check_event(event, event_id)
        table = AssetCheckExecutionsTable
        for with_partition in (True, False):
            params = [_check_update_params(event, event_id, row) for event, event_id, row in fast
                      if (event.dagster_event.event_specific_data.partition is not None) == with_partition]
            if not params:
                continue
            partition = (table.c.partition == db.bindparam("b_partition") if with_partition
                         else table.c.partition.is_(None))
            statement = table.update().where(
                table.c.asset_key == db.bindparam("b_asset_key"), table.c.check_name == db.bindparam("b_check_name"),
                table.c.run_id == db.bindparam("b_run_id"), partition,
            ).values(execution_status=db.bindparam("b_status"), evaluation_event=db.bindparam("b_event"),
                     evaluation_event_timestamp=db.bindparam("b_timestamp"),
                     evaluation_event_storage_id=db.bindparam("b_storage_id"),
                     materialization_event_storage_id=db.bindparam("b_materialization_id"))
            with self.index_connection() as conn:
                conn.execute(statement, params)

    def _store_planned_checks(self, checks: Sequence[tuple]) -> None:
        """The rows Dagster's `_store_asset_check_evaluation_planned` inserts (one per check and planned partition,
        status PLANNED), in one statement for the batch: Dagster compiles one statement with every partition's
        values written in (a year of 16 checks: 1.7 s)."""
        params = []
        for event, event_id, row in checks:
            planned = event.dagster_event.event_specific_data
            partitions = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
            params += [{"asset_key": planned.asset_key.to_string(), "check_name": planned.check_name,
                        "partition": partition, "run_id": event.run_id,
                        "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                        "evaluation_event": row["event"], "evaluation_event_timestamp": row["timestamp"],
                        "evaluation_event_storage_id": event_id} for partition in partitions]
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), params)

    def _planned_checks(self, evaluations: Sequence[tuple]) -> list[tuple]:
        """The (asset, check, run, partition) rows already in the check-executions table for these evaluations' runs
        and checks: an evaluation whose planned row is there is an update."""
        if not evaluations:
            return []
        table = AssetCheckExecutionsTable
        runs = sorted({event.run_id for event, _, _ in evaluations})
        names = sorted({event.dagster_event.event_specific_data.check_name for event, _, _ in evaluations})
        with self.index_connection() as conn:
            return [tuple(row) for row in conn.execute(
                db.select(table.c.asset_key, table.c.check_name, table.c.run_id, table.c.partition)
                .where(table.c.run_id.in_(runs), table.c.check_name.in_(names)))]

    def dispose(self) -> None:
        self.flush()
        super().dispose()


def _inserted_ids(conn: db.Connection, rows: list[dict]) -> range:
    """Insert event rows in one statement and give their ids, in order. The first insert takes the file's write
    lock until the transaction ends, so no other writer gets between the rows: SQLite numbers them one after the
    other, the last being `last_insert_rowid()`. (SQLAlchemy's ordered RETURNING falls back to one statement a
    row on SQLite.) Checked (the count in the range, the first row's event): a mismatch raises, and the batch is
    then stored event by event."""
    conn.execute(SqlEventLogStorageTable.insert(), rows)
    last = conn.execute(db.text("SELECT last_insert_rowid()")).scalar_one()
    ids = range(last - len(rows) + 1, last + 1)
    table = SqlEventLogStorageTable
    found = conn.execute(db.select(db.func.count()).where(table.c.id.between(ids.start, last))).scalar_one()
    first = conn.execute(db.select(table.c.event).where(table.c.id == ids.start)).scalar_one_or_none()
    if found != len(rows) or first != rows[0]["event"]:
        raise RuntimeError(f"event ids {ids.start}..{last} are not the {len(rows)} rows just inserted")
    return ids


def _mirrored(event) -> bool:
    """Whether Dagster's SQLite storage also writes the event into the index file (assets, checks, run status)."""
    if not event.is_dagster_event:
        return False
    kind = event.dagster_event_type
    return kind in ASSET_EVENTS or kind in ASSET_CHECK_EVENTS or kind in EVENT_TYPE_TO_PIPELINE_RUN_STATUS


def _check_row_key(event) -> tuple:
    evaluation = event.dagster_event.event_specific_data
    return (evaluation.asset_key.to_string(), evaluation.check_name, event.run_id, evaluation.partition)


def _check_update_params(event, event_id: int, row: dict) -> dict:
    """The values Dagster's `_update_asset_check_evaluation` writes, the event's serialized text reused from its row."""
    evaluation = event.dagster_event.event_specific_data
    status = (AssetCheckExecutionRecordStatus.SUCCEEDED if evaluation.passed
              else AssetCheckExecutionRecordStatus.FAILED)
    target = evaluation.target_materialization_data
    return {"b_asset_key": evaluation.asset_key.to_string(), "b_check_name": evaluation.check_name,
            "b_run_id": event.run_id, "b_partition": evaluation.partition, "b_status": status.value,
            "b_event": row["event"], "b_timestamp": row["timestamp"], "b_storage_id": event_id,
            "b_materialization_id": target.storage_id if target else None}


def _held_back(event) -> bool:
    """A run's check evaluation: Dagster writes each alone (no batch), a year of one model's daily checks is 5,000
    of them. Held until the run's next other event (the check's output follows its evaluations at once) or a
    full batch, then written together in order; nothing reads them in between but the step writing them."""
    dagster_event = getattr(event, "dagster_event", None)
    return (bool(event.run_id) and dagster_event is not None
            and dagster_event.event_type_value == "ASSET_CHECK_EVALUATION")


class BatchedSqliteStorage(DagsterSqliteStorage):
    """`storage: custom:` for the local instance: Dagster's SQLite run, schedule and event storage, the
    event log batched (`BatchedSqliteEventLogStorage`)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data=inst_data)
        self._event_log_storage = BatchedSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> BatchedSqliteStorage:  # noqa: D102
        return cls.from_local(inst_data=inst_data, **config_value)

    @property
    def event_storage_data(self) -> ConfigurableClassData | None:
        import yaml

        return ConfigurableClassData(__name__, BatchedSqliteEventLogStorage.__name__,
                                     yaml.dump({"base_dir": _event_logs_directory(self.base_dir)},
                                               default_flow_style=False))
