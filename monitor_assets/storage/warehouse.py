"""Warehouse schema and the one way we write a partition: delete its rows and insert, in one transaction.

Plain DuckDB; no Dagster here, so scripts and benchmarks use the same code as the assets.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import duckdb

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE TABLE IF NOT EXISTS raw.predictions (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, prediction_id VARCHAR NOT NULL,
    ts TIMESTAMPTZ, model_version VARCHAR, latency_ms DOUBLE, status VARCHAR, is_ok BOOLEAN,
    score DOUBLE, source_file VARCHAR, line_no BIGINT
    -- plus one typed column per configured feature, added at ingestion (ingest.feature_columns)
);
CREATE TABLE IF NOT EXISTS raw.labels (
    partition_date DATE NOT NULL, model_id VARCHAR, prediction_id VARCHAR NOT NULL,
    prediction_date DATE, label DOUBLE, source_file VARCHAR, line_no BIGINT
);
CREATE TABLE IF NOT EXISTS raw.interactions (
    partition_date DATE NOT NULL, session_id VARCHAR, user_id VARCHAR, ts TIMESTAMPTZ, event VARCHAR,
    product_id VARCHAR, from_recommendation BOOLEAN
);
CREATE TABLE IF NOT EXISTS raw.sales (
    partition_date DATE NOT NULL, order_id VARCHAR, ts TIMESTAMPTZ, user_id VARCHAR, product_id VARCHAR,
    quantity DOUBLE, unit_price DOUBLE, revenue DOUBLE
);
CREATE TABLE IF NOT EXISTS raw.quarantine (
    partition_date DATE NOT NULL, source VARCHAR NOT NULL, source_file VARCHAR, line_no BIGINT,
    reason VARCHAR NOT NULL, raw_record VARCHAR
);
CREATE TABLE IF NOT EXISTS raw.ingestion_log (
    partition_date DATE NOT NULL, source VARCHAR NOT NULL, files BIGINT, records_read BIGINT,
    records_loaded BIGINT, records_quarantined BIGINT, loaded_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.performance_daily (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, task VARCHAR, model_versions VARCHAR,
    volume BIGINT, n_ok BIGINT, n_errors BIGINT, error_rate DOUBLE,
    latency_p50_ms DOUBLE, latency_p95_ms DOUBLE, latency_p99_ms DOUBLE,
    n_labelled BIGINT, label_coverage DOUBLE,
    accuracy DOUBLE, "precision" DOUBLE, recall DOUBLE, f1 DOUBLE, roc_auc DOUBLE, log_loss DOUBLE,
    brier_score DOUBLE, positive_rate DOUBLE, predicted_positive_rate DOUBLE,
    mae DOUBLE, rmse DOUBLE, mape DOUBLE, r2 DOUBLE, mean_error DOUBLE,
    mean_score DOUBLE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.business_kpis_daily (
    partition_date DATE NOT NULL, sessions BIGINT, sessions_with_purchase BIGINT, conversion_rate DOUBLE,
    recommendation_impressions BIGINT, recommendation_ctr DOUBLE, orders BIGINT, units_sold DOUBLE,
    revenue DOUBLE, average_order_value DOUBLE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.reference_profiles (
    model_id VARCHAR NOT NULL, feature VARCHAR NOT NULL, role VARCHAR, kind VARCHAR,
    reference_version VARCHAR, n BIGINT, profile JSON, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.reference_baselines (
    model_id VARCHAR NOT NULL, reference_version VARCHAR, metric VARCHAR, value DOUBLE
);
CREATE TABLE IF NOT EXISTS monitoring.feature_drift (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, feature VARCHAR NOT NULL, role VARCHAR,
    kind VARCHAR, method VARCHAR, statistic DOUBLE, p_value DOUBLE, threshold DOUBLE, drifted BOOLEAN,
    n_current BIGINT, n_reference BIGINT, current_summary VARCHAR, reference_summary VARCHAR,
    current_mean DOUBLE, reference_mean DOUBLE, missing_share DOUBLE, unseen_share DOUBLE,
    computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.drift_summary (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, n_features BIGINT, n_drifted BIGINT,
    drift_share DOUBLE, dataset_drift BOOLEAN, prediction_drift BOOLEAN, label_drift BOOLEAN,
    computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.fairness (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, attribute VARCHAR NOT NULL, grp VARCHAR,
    n BIGINT, n_labelled BIGINT, selection_rate DOUBLE, true_positive_rate DOUBLE,
    false_positive_rate DOUBLE, accuracy DOUBLE, mae DOUBLE, below_min_size BOOLEAN,
    demographic_parity_difference DOUBLE, demographic_parity_ratio DOUBLE,
    equalized_odds_difference DOUBLE, passes_four_fifths BOOLEAN, disparity_p_value DOUBLE,
    computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.history (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, metric VARCHAR NOT NULL,
    segment VARCHAR NOT NULL, value DOUBLE, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.anomalies (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, segment VARCHAR,
    value DOUBLE, expected DOUBLE, robust_z DOUBLE, direction VARCHAR, computed_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS monitoring.alerts (
    partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, check_name VARCHAR NOT NULL,
    severity VARCHAR, value DOUBLE, threshold DOUBLE, message VARCHAR, status VARCHAR,
    first_seen TIMESTAMP, last_seen TIMESTAMP
);
"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA_SQL)


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


def replace_partitions(con: duckdb.DuckDBPyConnection, table: str, dates: Iterable[dt.date],
                       insert_sql: str | None, params: list | None = None, date_column: str = "partition_date") -> int:
    """Delete the rows of `dates` from `table` and run `insert_sql` (if any), atomically. Returns rows inserted."""
    dates = list(dates)
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE {date_column} IN (SELECT unnest(?::DATE[]))", [dates])
        before = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        if insert_sql:
            con.execute(insert_sql, params or [])
        after = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return after - before


def replace_partitions_from_frame(con: duckdb.DuckDBPyConnection, table: str, dates: Iterable[dt.date],
                                  frame) -> int:
    """`replace_partitions` with the rows of a DataFrame, matched to the table's columns by name and
    stamped with `computed_at`."""
    if not len(frame):
        return replace_partitions(con, table, dates, None)
    con.register("_frame", frame)
    try:
        return replace_partitions(con, table, dates,
                                  f"INSERT INTO {table} BY NAME SELECT *, now()::TIMESTAMP AS computed_at FROM _frame")
    finally:
        con.unregister("_frame")


@contextmanager
def connect(path: str, retries: int = 8, base_delay: float = 0.25) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse; another process holding the lock is waited out with backoff and jitter."""
    attempt = 0
    while True:
        try:
            con = duckdb.connect(path)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt >= retries:
                raise
            time.sleep(base_delay * 2 ** attempt * (0.5 + random.random()))
            attempt += 1
    try:
        con.execute("SET TimeZone = 'UTC'")  # naive timestamps in inputs are read as UTC
        ensure_schema(con)
        yield con
    finally:
        con.close()
