"""The warehouse: one DuckDB connection that sees every table by its documented name, and the ways we
write them.

Every table lives in the Delta lake (storage/lake.py TABLES; a folder, or a bucket every machine reaches) and
appears on an in-memory DuckDB connection as a view: no run needs a DuckDB file, so runs on several machines
share nothing but the lake (and the alert outbox's database, storage/alert_state.py). A daily table is written by
`replace_partitions` (one Delta commit per write); the small mutable state (alerts, retraining requests, model
versions, reference batches) by `edit`, a read-modify-write that runs our DML on a copy and commits it only if
no other writer committed meanwhile. The DuckDB file of earlier releases (`MONITOR_WAREHOUSE`) is read once, to
move its tables into the lake (`migrate_file`). Plain Python; scripts and benchmarks use the same code as the
assets.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from monitor_assets.config import lake_beside
from monitor_assets.storage.lake import PREDICTIONS, TABLES, Lake, forget_views, registered
from monitor_assets.storage.sql import quote_ident

T = TypeVar("T")

# The schemas of the documented names (the SQL shell's database makes them too); no table is in a DuckDB file now.
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS monitoring;
"""


# Tables that moved from the DuckDB file to the lake (README, "Migration"; docs/migration.md): their rows are
# copied over once, with the columns the lake table gained filled in. The first four came with shards, the
# others when no run was to need the file (issue 25).
MOVED_TO_LAKE = {"raw.ingestion_log": "*, '0/1' AS shard", "monitoring.quality_verdicts": "*",
                 "monitoring.reference_profiles": "* REPLACE (profile::VARCHAR AS profile)",
                 "monitoring.reference_baselines": "*",
                 **dict.fromkeys(["raw.interactions", "raw.sales", "monitoring.business_kpis_daily",
                                  "monitoring.anomalies", "monitoring.version_daily", "monitoring.version_comparison",
                                  "monitoring.retraining_trigger", "monitoring.alerts",
                                  "monitoring.retraining_requests", "monitoring.model_versions",
                                  "monitoring.reference_anchors", "monitoring.reference_losses"], "*")}


def _legacy_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables of an earlier release's file whose documented name is a lake table's now."""
    found = con.execute("""SELECT table_schema || '.' || table_name FROM information_schema.tables
                           WHERE table_type = 'BASE TABLE' AND table_schema IN ('raw', 'monitoring')""").fetchall()
    return [name for (name,) in found if name in TABLES or name == PREDICTIONS]


_MIGRATED: set[tuple[str, str]] = set()  # (file, lake root) moved by this process


def migrate_file(path: str | os.PathLike, lake: Lake, retries: int = 8, base_delay: float = 0.25) -> list[str]:
    """Move the tables an earlier release's DuckDB file holds into the lake, once (docs/migration.md): each is
    copied (unless the lake has that table already) and then kept in the file as `<name>_before_lake`, so a
    crash between the two copies nothing twice. The file is opened read-only to look and written only while it
    still holds such a table; no file, nothing opened. Returns the tables moved."""
    key = (str(Path(path).resolve()), str(lake.root))
    if key in _MIGRATED or not Path(path).is_file():
        return []
    with closing(waiting_out_locks(lambda: duckdb.connect(str(path), read_only=True), retries, base_delay)) as con:
        pending = _legacy_tables(con)
    moved = []
    if pending:
        with closing(waiting_out_locks(lambda: duckdb.connect(str(path)), retries, base_delay)) as con:
            con.execute("SET TimeZone = 'UTC'")
            for name in _legacy_tables(con):  # again under the write lock: another process may have moved them
                schema, table = name.split(".", 1)
                if name in MOVED_TO_LAKE and not lake.has_table(lake.path(name)):
                    lake.replace(name, con.sql(f"SELECT {MOVED_TO_LAKE[name]} FROM {name}").to_arrow_table(), None)
                con.execute(f"ALTER TABLE {name} RENAME TO {quote_ident(table + '_before_lake')}")
                moved.append(name)
    _MIGRATED.add(key)
    return moved


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing on the connection (an `edit`'s DML: what it commits to the lake is all of it or none)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def lake_of(con: duckdb.DuckDBPyConnection) -> Lake:
    lake = _LAKES.get(id(con))
    if lake is None:
        raise RuntimeError("this connection was not opened by storage.warehouse.connect (no lake attached)")
    return lake


_LAKES: dict[int, Lake] = {}


def _replace_in_lake(con: duckdb.DuckDBPyConnection, table: str, data, dates: list[dt.date],
                     models: Iterable[str] | None) -> int:
    """One Delta commit, then the connection's view shows the new version."""
    lake = lake_of(con)
    lake.replace(table, data, dates, models)
    lake.refresh(con, table)
    return data.num_rows


def replace_partitions(con: duckdb.DuckDBPyConnection, table: str, dates: Iterable[dt.date],
                       select_sql: str | None, params: list | None = None,
                       models: Iterable[str] | None = None) -> int:
    """Replace the rows of `dates` (and of `models`, if given) in `table` with the rows of `select_sql`
    (columns in the table's order), in one commit. Returns the rows written."""
    columns = TABLES[table][0]
    data = con.sql(f"SELECT * FROM ({select_sql})", params=params or None).to_arrow_table() if select_sql else None
    if data is not None:  # positional, like INSERT: name the columns after the table's
        data = data.rename_columns(list(columns)[:data.num_columns])
    else:
        data = con.sql(f"SELECT * FROM {table} WHERE false").to_arrow_table()
    return _replace_in_lake(con, table, data, list(dates), models)


def replace_partitions_from_frame(con: duckdb.DuckDBPyConnection, table: str, dates: Iterable[dt.date],
                                  frame, models: Iterable[str] | None = None) -> int:
    """`replace_partitions` with the rows of a DataFrame, matched to the table's columns by name and
    stamped with `computed_at`."""
    if not len(frame):
        return replace_partitions(con, table, dates, None, models=models)
    con.register("_frame", frame)
    try:
        data = con.sql("SELECT *, now() AS computed_at FROM _frame").to_arrow_table()
    finally:
        con.unregister("_frame")
    return _replace_in_lake(con, table, data, list(dates), models)


def edit(con: duckdb.DuckDBPyConnection, table: str, apply: Callable[[duckdb.DuckDBPyConnection], T],
         where: str | None = None) -> T:
    """Run `apply(con)`, DML on `table`'s rows matching `where` (None: all), and commit the result to the
    lake unless another writer committed to the table meanwhile, else read and apply again (`Lake.edit`)."""
    return lake_of(con).edit(con, table, apply, where)


def waiting_out_locks(open_it: Callable[[], T], retries: int = 8, base_delay: float = 0.25) -> T:
    """`open_it()`, retried with exponential backoff and jitter while another process holds the DuckDB
    file's lock (one writer per file); any other error at once."""
    attempt = 0
    while True:
        try:
            return open_it()
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt >= retries:
                raise
            time.sleep(base_delay * 2 ** attempt * (0.5 + random.random()))
            attempt += 1


def open_warehouse(path: str | None, lake_path: str | None = None, models: Iterable[str] | None = None,
                   read_only: bool = False, retries: int = 8, base_delay: float = 0.25) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database with the lake's tables under their documented names (`lake_path`: a
    folder or a bucket URI, default `<file>_lake` beside `path`; `models`: whose predictions tables to
    register; None for every model). Writes go to the lake (`replace_partitions`, `edit`), so any number of
    processes, on any machines, hold one at once. Close it with `close`: it is kept for this process's next
    connection to the same lake (`_IDLE`), which then makes only the views of tables written since.

    `path`: the DuckDB file of an earlier release (`MONITOR_WAREHOUSE`), which need not exist: its tables move
    to the lake the first time a writer connects (`migrate_file`; another process holding the file's lock is
    waited out with backoff and jitter). `read_only`: nothing is moved."""
    if path is None and lake_path is None:
        raise ValueError("open_warehouse: a connection needs lake_path (or the warehouse path it sits beside)")
    lake = Lake(lake_path or lake_beside(path))
    if path is not None and not read_only:
        migrate_file(path, lake, retries, base_delay)
    con = _idle(lake)
    if con is None:
        con = duckdb.connect(":memory:")
        _POOLED[con] = os.getpid()
    _LAKES[id(con)] = lake
    try:
        con.execute("SET TimeZone = 'UTC'")  # naive timestamps in inputs are read as UTC
        # Big joins and aggregates (a day of hundreds of models) spill to disk past this, instead of taking
        # most of the machine's memory (DuckDB's default is 80% of it); to the system's temporary folder,
        # not `.tmp` in the working directory.
        con.execute("SET memory_limit = ?", [os.environ.get("MONITOR_MEMORY_LIMIT", "1500MB")])
        con.execute("SET temp_directory = ?", [os.path.join(tempfile.gettempdir(), "monitor_assets_spill")])
        lake.attach(con, models)
    except BaseException:
        _POOLED.pop(con, None)
        close(con)
        raise
    return con


# Connections `open_warehouse` made (-> the process that made them), and those closed and kept for the next
# `open_warehouse` of the same lake in this process: a run's steps follow each other in one process (the
# in-process executor), and setting a connection up made a view per table (about 45 statements, 100-180 ms;
# 42 connections a demo run, a fifth of a one-day run). A kept connection is cleaned when closed (its
# transaction rolled back, its temporary tables and registered frames dropped) and its views are made again
# only for the tables written since (`Lake._create_view`). At most IDLE_KEPT are kept, the newest.
_POOLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_IDLE: list[tuple[str, duckdb.DuckDBPyConnection]] = []
_IDLE_LOCK = threading.Lock()
IDLE_KEPT = 2


def _idle(lake: Lake) -> duckdb.DuckDBPyConnection | None:
    with _IDLE_LOCK:
        for i in range(len(_IDLE) - 1, -1, -1):
            root, con = _IDLE[i]
            if root == str(lake.root) and _POOLED.get(con) == os.getpid():
                del _IDLE[i]
                return con
    return None


def _clean(con: duckdb.DuckDBPyConnection) -> bool:
    """Leave `con` as a fresh one would be but for the lake's views; False: it could not be (then close it)."""
    try:
        if hasattr(con, "abort"):
            con.abort()  # a result its user did not fetch to the end (this DuckDB refuses other work until then)
        try:
            con.execute("ROLLBACK")  # a transaction its user left open
        except duckdb.Error:
            pass  # none was
        ours = registered("")
        for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal").fetchall():
            if not name.startswith(ours):
                con.execute(f"DROP VIEW {quote_ident(name)}")  # a registered frame, a view of its user's
        for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall():
            con.execute(f"DROP TABLE {quote_ident(name)}")
            forget_views(con, [name])
    except duckdb.Error:
        return False
    return True


def _keep(con: duckdb.DuckDBPyConnection, lake: Lake) -> bool:
    """Clean `con` and keep it for the next connection to `lake`; False: it could not be (then close it)."""
    if _POOLED.get(con) != os.getpid() or not _clean(con):
        return False
    with _IDLE_LOCK:
        _IDLE.append((str(lake.root), con))
        evicted = _IDLE[:-IDLE_KEPT]
        del _IDLE[:-IDLE_KEPT]
    for _, old in evicted:
        _close_for_good(old)
    return True


# Thread cursors (`thread_cursor`) closed are kept with their connection for its next threads, as connections are
# for the next step: a cursor's views cost what a connection's do (temporary views are per cursor).
# cursor -> (a weak reference to its connection, so an idle cursor never keeps it alive; process id)
_CURSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_IDLE_CURSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> its cursors not in use
CURSORS_KEPT = 4


def _close_for_good(con: duckdb.DuckDBPyConnection) -> None:
    with _IDLE_LOCK:
        idle = _IDLE_CURSORS.pop(con, [])
    for cursor in idle:
        cursor.close()
    _POOLED.pop(con, None)
    con.close()


def thread_cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of `con` for another thread, with the lake's tables registered on it (temporary views are
    per cursor). Close it with `close`."""
    lake = lake_of(con)
    with _IDLE_LOCK:
        idle = _IDLE_CURSORS.get(con)
        cursor = idle.pop() if idle else None
    if cursor is None:
        cursor = con.cursor()
        _CURSORS[cursor] = (weakref.ref(con), os.getpid())
        cursor.execute("SET TimeZone = 'UTC'")
    _LAKES[id(cursor)] = lake
    lake.attach(cursor, (), create_views=False)  # a kept cursor's views replaced, or kept when current
    return cursor


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection: one `open_warehouse` made is kept for the next (`_keep`), a thread cursor for its
    connection's next thread (at most CURSORS_KEPT)."""
    lake = _LAKES.pop(id(con), None)
    if lake is not None and con in _POOLED and _keep(con, lake):
        return
    parent, pid = _CURSORS.get(con, (lambda: None, None))
    parent = parent()
    if lake is not None and parent is not None and pid == os.getpid() and _clean(con):
        with _IDLE_LOCK:
            idle = _IDLE_CURSORS.setdefault(parent, [])
            if len(idle) < CURSORS_KEPT:
                idle.append(con)
                return
    _close_for_good(con)


@contextmanager
def connect(path: str | None, lake_path: str | None = None, models: Iterable[str] | None = None,
            read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """`open_warehouse` for the length of a `with` block."""
    con = open_warehouse(path, lake_path, models, read_only)
    try:
        yield con
    finally:
        close(con)
        release_memory()


def _trim() -> Callable[[], object] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_MALLOC_TRIM = _trim()


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim). A run's steps share one process
    (the in-process executor): without this, what one step freed (a fleet's frames, say) stays in the process
    and the next step's peak sits on top of it."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
