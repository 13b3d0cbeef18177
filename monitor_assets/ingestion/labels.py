"""Labels against their predictions: matched to the logged prediction, range-checked, and counted when they
correct an earlier label."""

from __future__ import annotations

import datetime as dt

import duckdb

from monitor_assets.config import MonitorConfig
from monitor_assets.ingestion.fields import StagingPlan, move_to_quarantine
from monitor_assets.storage.reads import latest_labels_sql


def check_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan, day: dt.date) -> None:
    """Labels are matched to their logged prediction (model and day, from `lake.predictions`); a label whose
    prediction has not arrived yet is kept, unmatched, and is joined when it does (metrics join on the id).
    A classifier's label must be 0 or 1."""
    # A join into a new table: an UPDATE of millions of rows through a join took three times as long.
    con.execute("""
        CREATE TABLE raw.labels_matched AS
        SELECT l.* REPLACE (coalesce(p.model_id, l.model_id) AS model_id,
                            coalesce(p.partition_date, l.prediction_date) AS prediction_date)
        FROM raw.labels AS l
        LEFT JOIN (SELECT prediction_id, any_value(model_id) AS model_id, min(partition_date) AS partition_date
                   FROM lake.predictions WHERE prediction_id IN (SELECT prediction_id FROM raw.labels)
                   GROUP BY 1) AS p
            ON p.prediction_id = l.prediction_id AND l.partition_date = ?""", [day])
    con.execute("DROP TABLE raw.labels")
    con.execute("ALTER TABLE raw.labels_matched RENAME TO labels")
    classifiers = [m.id for m in config.models if m.is_classifier] or [""]
    move_to_quarantine(con, plan, day, "t.model_id IN (SELECT unnest(?::VARCHAR[])) AND t.label NOT IN (0, 1)",
                       "'out of range: label=' || t.label || ' for classifier ' || t.model_id || ', expected 0 or 1'",
                       [classifiers])


def count_corrected_labels(con: duckdb.DuckDBPyConnection, day: dt.date) -> int:
    """Labels of the day that change their prediction's newest earlier label. They replace it: metrics
    take each prediction's label from the newest partition (arg_max by partition_date)."""
    earlier = latest_labels_sql(before="?", ids="SELECT prediction_id FROM raw.labels", labels="lake.labels")
    return con.execute(f"""
        SELECT count(*) FROM raw.labels AS l
        JOIN ({earlier}) AS earlier USING (prediction_id)
        WHERE l.label IS DISTINCT FROM earlier.label""", [day]).fetchall()[0][0]
