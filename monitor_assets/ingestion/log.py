"""What ingestion counted: a day's `StageResult`, `raw.ingestion_log`, and the reads of the quarantine and
the loaded predictions that the ingestion step and its checks report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import pandas as pd
import pyarrow as pa

from monitor_assets.config import MonitorConfig
from monitor_assets.storage.sql import sql_str
from monitor_assets.storage.warehouse import lake_of


@dataclass
class StageResult:
    """What one day of one source came to: read = loaded + quarantined (records; notes about files aside)."""

    files: list[str]
    read: int
    loaded: int
    quarantined: int
    reasons: dict[str, int]
    labels_corrected: int = 0  # labels that change the newest earlier label of their prediction
    notes: list[str] = field(default_factory=list)  # "<reason>: <detail>" of the notes about whole files


def log_ingestion(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str,
                  results: Sequence[tuple[dt.date, StageResult]]) -> None:
    """The days' counts of this source, as this shard read them ("0/1" without shards), in one commit. Rows
    of another shard count (`.../N` with another N: the shards were re-cut) are replaced too."""
    if not results:
        return
    label, count = config.shard_label, config.shard[1]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = pa.table({"partition_date": pa.array([d for d, _ in results], pa.date32()),
                     "source": [source] * len(results), "files": [len(r.files) for _, r in results],
                     "records_read": [r.read for _, r in results], "records_loaded": [r.loaded for _, r in results],
                     "records_quarantined": [r.quarantined for _, r in results],
                     "loaded_at": [now] * len(results), "shard": [label] * len(results)})
    lake = lake_of(con)
    lake.replace("raw.ingestion_log", rows, [d for d, _ in results], source=source,
                 where=f"shard = {sql_str(label)} OR shard IS NULL OR shard NOT LIKE {sql_str(f'%/{count}')}")
    lake.refresh(con, "raw.ingestion_log")


def quarantine_preview(con: duckdb.DuckDBPyConnection, source: str, days: list[dt.date], limit: int = 8) -> list:
    """The first quarantined records of these days of a source, for the step's metadata."""
    return con.execute("""
        SELECT partition_date, regexp_replace(source_file, '^.*/', ''), line_no, reason, left(raw_record, 80)
        FROM raw.quarantine WHERE source = ? AND partition_date IN (SELECT unnest(?::DATE[]))
        ORDER BY partition_date, source_file, line_no LIMIT ?""", [source, days, limit]).fetchall()


def models_without_records(con: duckdb.DuckDBPyConnection, days: list[dt.date], model_ids: list[str]) -> list[str]:
    """Each configured model that logged no prediction on a day (an incident, not a zero), as "<day>: <model>"."""
    return [f"{d}: {m}" for d, m in con.execute(
        """SELECT d, m FROM unnest(?::DATE[]) AS t(d), unnest(?::VARCHAR[]) AS u(m)
           WHERE NOT EXISTS (SELECT 1 FROM raw.predictions p
                             WHERE p.partition_date = d AND p.model_id = m)
           ORDER BY d, m""", [days, model_ids]).fetchall()]


def volumes_with_trailing_mean(con: duckdb.DuckDBPyConnection, days: list[dt.date],
                               model_ids: list[str]) -> pd.DataFrame:
    """(day, model_id, n, trailing) of each model and day: its predictions, and the mean of its days with
    predictions among the 7 before."""
    return con.execute("""
        WITH vol AS (SELECT d, m, (SELECT count(*) FROM raw.predictions p
                                   WHERE p.partition_date = d AND p.model_id = m) AS n
                     FROM unnest(range(?::DATE - INTERVAL 7 DAY, ?::DATE + INTERVAL 1 DAY, INTERVAL 1 DAY)) t(d),
                          unnest(?::VARCHAR[]) u(m))
        SELECT d::DATE AS day, m AS model_id, n,
               (SELECT avg(n) FROM vol v2 WHERE v2.m = v.m AND v2.d < v.d AND v2.d >= v.d - INTERVAL 7 DAY
                AND v2.n > 0) AS trailing
        FROM vol v WHERE d::DATE IN (SELECT unnest(?::DATE[]))""",
                       [min(days), max(days), model_ids, days]).df()


def quarantined_shares(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> list[tuple[dt.date, float | None]]:
    """(day, share of the day's prediction records quarantined) from `raw.ingestion_log`, every shard's rows."""
    return con.execute(
        """SELECT partition_date, sum(records_quarantined) / nullif(sum(records_read), 0)
           FROM raw.ingestion_log WHERE source = 'predictions'
           AND partition_date IN (SELECT unnest(?::DATE[])) GROUP BY 1""", [days]).fetchall()
