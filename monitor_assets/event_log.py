"""Dagster's SQLite instance storage with batched event writes (the local instance of `make run` / `make dev`).

Dagster stores each event in its own transactions, three or four of them for an asset event (the run's
database, then the index database: the event, its tags, the asset's row), and makes a new SQLAlchemy engine
for each (about 8 ms): 63 ms a check evaluation here, which Dagster never batches (a year of one model's
14 threshold checks: 5,100 evaluations, 5 minutes). This storage keeps one engine per file (each use still
opens and closes its own connection, as Dagster's does): 14 ms an event. A run
over 30 days of the demo records about 3,000 events: the planned materializations of every asset and day
when the run starts, then each step's materializations of its days. Dagster hands those over in batches
(when `DAGSTER_EVENT_BATCH_SIZE` is set), but its SQLite storage writes a batch one event at a time.
`BatchedSqliteEventLogStorage` writes a batch in one transaction per database file, with the same rows: it
holds one connection per file for the batch and gives it to Dagster's own per-event code. A failed batch is
rolled back whole, and Dagster then stores its events one by one.

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
from dagster._core.storage.event_log import SqliteEventLogStorage
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
                for event in events:
                    super().store_event(event)
            finally:
                self._batch.connections = None

    def dispose(self) -> None:
        self.flush()
        super().dispose()


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
