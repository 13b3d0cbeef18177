"""The warehouse: one DuckDB connection that sees every table by its documented name, and the one way we
replace a partition.

Small mutable tables (alert state, reference profiles, ingestion log, business KPIs) live in the DuckDB
file; the heavy partitioned ones live in the Delta lake beside it (storage/lake.py) and appear on the
connection as views. `replace_partitions` does the right thing for either: a delete and insert in one
DuckDB transaction, or one Delta commit. Plain Python; scripts and benchmarks use the same code as the
assets.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from monitor_assets.storage.lake import TABLES, Lake

T = TypeVar("T")

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE TABLE IF NOT EXISTS raw.interactions (
    partition_date DATE NOT NULL, session_id VARCHAR, user_id VARCHAR, ts TIMESTAMPTZ, event VARCHAR,
    product_id VARCHAR, from_recommendation BOOLEAN
);
CREATE TABLE IF NOT EXISTS raw.sales (
    partition_date DATE NOT NULL, order_id VARCHAR, ts TIMESTAMPTZ, user_id VARCHAR, product_id VARCHAR,
    quantity DOUBLE, unit_price DOUBLE, revenue DOUBLE
);
CREATE TABLE IF NOT EXISTS monitoring.business_kpis_daily (
    partition_date DATE NOT NULL, sessions BIGINT, sessions_with_purchase BIGINT, conversion_rate DOUBLE,
    recommendation_impressions BIGINT, recommendation_ctr DOUBLE, orders BIGINT, units_sold DOUBLE,
    revenue DOUBLE, average_order_value DOUBLE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.anomalies (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, segment VARCHAR,
    value DOUBLE, expected DOUBLE, robust_z DOUBLE, direction VARCHAR, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.reference_losses (
    model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, anchor_day DATE NOT NULL, prediction_id VARCHAR,
    partition_date DATE, loss DOUBLE, complete BOOLEAN, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.reference_anchors (
    model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, anchor_day DATE NOT NULL, set_by VARCHAR,
    set_at TIMESTAMP, reason VARCHAR
);
CREATE TABLE IF NOT EXISTS monitoring.retraining_trigger (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR, loss VARCHAR,
    n_day BIGINT, mean_loss_day DOUBLE, band_low DOUBLE, band_high DOUBLE, window_start DATE,
    n_current BIGINT, mean_current DOUBLE, reference_anchor DATE, n_reference BIGINT, mean_reference DOUBLE,
    statistic DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, flagged BOOLEAN, note VARCHAR, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.retraining_requests (
    request_id BIGINT NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR, opened_on DATE NOT NULL,
    reason VARCHAR, statistic DOUBLE, p_value DOUBLE, "window" VARCHAR, status VARCHAR NOT NULL,
    opened_by VARCHAR, decided_by VARCHAR, decided_at TIMESTAMP, note VARCHAR, outcome VARCHAR, run_id VARCHAR,
    finished_at TIMESTAMP, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.version_daily (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, volume BIGINT,
    n_errors BIGINT, latency_p95_ms DOUBLE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.model_versions (
    model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, first_seen DATE, last_seen DATE,
    traffic_share DOUBLE, role VARCHAR, champion_since DATE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.version_comparison (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, champion_version VARCHAR, challenger_version VARCHAR,
    metric VARCHAR, champion_value DOUBLE, challenger_value DOUBLE, difference DOUBLE, p_value DOUBLE,
    gate VARCHAR, verdict VARCHAR, reason VARCHAR, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.alerts (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, check_name VARCHAR NOT NULL,
    severity VARCHAR, value DOUBLE, threshold DOUBLE, message VARCHAR, status VARCHAR,
    first_seen TIMESTAMP, last_seen TIMESTAMP
);
"""


# Tables that moved from the DuckDB file to the lake when shards came (README, "Migration"): their rows are
# copied over once, with the columns the lake table gained filled in.
MOVED_TO_LAKE = {"raw.ingestion_log": "*, '0/1' AS shard", "monitoring.quality_verdicts": "*",
                 "monitoring.reference_profiles": "* REPLACE (profile::VARCHAR AS profile)",
                 "monitoring.reference_baselines": "*"}


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)
    # A warehouse from before the lake kept these tables in the file: keep them under a legacy name
    # (README, "Migration"), so the lake's views can take the documented names.
    legacy = con.execute("""SELECT table_schema || '.' || table_name FROM information_schema.tables
                            WHERE table_type = 'BASE TABLE' AND table_schema IN ('raw', 'monitoring')""").fetchall()
    for (name,) in legacy:
        if name in TABLES or name == "raw.predictions":
            kept = f"{name.split('.')[1]}_before_lake"
            con.execute(f"ALTER TABLE {name} RENAME TO {kept}")
            lake = _LAKES.get(id(con))
            if name in MOVED_TO_LAKE and lake is not None and not lake.has_table(lake.path(name)):
                rows = con.sql(f"SELECT {MOVED_TO_LAKE[name]} FROM {name.split('.')[0]}.{kept}").to_arrow_table()
                lake.replace(name, rows, None)


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: a crash mid-write leaves the previous rows of the partition in place."""
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
                       select_sql: str | None, params: list | None = None, date_column: str = "partition_date",
                       models: Iterable[str] | None = None) -> int:
    """Replace the rows of `dates` (and of `models`, if given) in `table` with the rows of `select_sql`
    (columns in the table's order), atomically. Returns the rows written."""
    dates = list(dates)
    if table in TABLES:
        columns = TABLES[table][0]
        data = con.sql(f"SELECT * FROM ({select_sql})", params=params or None).to_arrow_table() if select_sql else None
        if data is not None:  # positional, like INSERT: name the columns after the table's
            data = data.rename_columns(list(columns)[:data.num_columns])
        else:
            data = con.sql(f"SELECT * FROM {table} WHERE false").to_arrow_table()
        return _replace_in_lake(con, table, data, dates, models)
    model_filter = ""
    if models is not None:
        model_filter = " AND model_id IN (SELECT unnest(?::VARCHAR[]))"
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE {date_column} IN (SELECT unnest(?::DATE[])){model_filter}",
                    [dates] + ([list(models)] if models is not None else []))
        before = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        if select_sql:
            con.execute(f"INSERT INTO {table} {select_sql}", params or [])
        after = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return after - before


def replace_partitions_from_frame(con: duckdb.DuckDBPyConnection, table: str, dates: Iterable[dt.date],
                                  frame, models: Iterable[str] | None = None) -> int:
    """`replace_partitions` with the rows of a DataFrame, matched to the table's columns by name and
    stamped with `computed_at`."""
    if not len(frame):
        return replace_partitions(con, table, dates, None, models=models)
    con.register("_frame", frame)
    try:
        if table in TABLES:
            data = con.sql("SELECT *, now() AS computed_at FROM _frame").to_arrow_table()
            return _replace_in_lake(con, table, data, list(dates), models)
        return replace_partitions(con, table, dates, "BY NAME SELECT *, now()::TIMESTAMP AS computed_at FROM _frame",
                                  models=models)
    finally:
        con.unregister("_frame")


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
    """The warehouse with the lake attached (`lake_path`: a folder or a bucket URI, default `<file>_lake`
    beside the file; `models`: whose predictions tables to register; None for every model). Another process
    holding the DuckDB file's lock is waited out with backoff and jitter. Read-only connections use the views
    a writer created.

    `path` None: no DuckDB file, only the lake's tables, on an in-memory database. Per-model steps work
    this way, so that shards (processes on their own models) run them at once: only the file has a lock."""
    if path is None and lake_path is None:
        raise ValueError("open_warehouse: a lake-only connection needs lake_path")
    lake_path = lake_path or str(Path(path).with_name(f"{Path(path).stem}_lake"))
    if path is not None and not read_only:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path is not None and read_only and not Path(path).exists():
        path = None  # only per-model steps ran yet (they write the lake alone): read the lake's tables
    con = waiting_out_locks(lambda: duckdb.connect(path or ":memory:", read_only=read_only and path is not None),
                            retries, base_delay)
    lake = Lake(lake_path)
    _LAKES[id(con)] = lake
    try:
        con.execute("SET TimeZone = 'UTC'")  # naive timestamps in inputs are read as UTC
        # Big joins and aggregates (a day of hundreds of models) spill to disk past this, instead of taking
        # most of the machine's memory (DuckDB's default is 80% of it).
        con.execute("SET memory_limit = ?", [os.environ.get("MONITOR_MEMORY_LIMIT", "1500MB")])
        if path is None:  # spills go to the system's temporary folder, not `.tmp` in the working directory
            con.execute("SET temp_directory = ?", [os.path.join(tempfile.gettempdir(), "monitor_assets_spill")])
        if path is not None and not read_only:
            ensure_schema(con)
        if path is not None and not read_only:
            lake.ensure_model_views(con)
        lake.attach(con, models, create_views=not read_only or path is None)
    except BaseException:
        close(con)
        raise
    return con


def thread_cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of `con` for another thread, with the lake's tables registered on it (temporary views are
    per cursor). Close it with `close`."""
    lake = lake_of(con)
    cursor = con.cursor()
    _LAKES[id(cursor)] = lake
    cursor.execute("SET TimeZone = 'UTC'")
    lake.attach(cursor, (), create_views=False)
    return cursor


def close(con: duckdb.DuckDBPyConnection) -> None:
    _LAKES.pop(id(con), None)
    con.close()


@contextmanager
def connect(path: str | None, lake_path: str | None = None, models: Iterable[str] | None = None,
            read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """`open_warehouse` for the length of a `with` block."""
    con = open_warehouse(path, lake_path, models, read_only)
    try:
        yield con
    finally:
        close(con)
