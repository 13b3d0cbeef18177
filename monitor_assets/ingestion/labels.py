"""Labels against their predictions: matched to the logged prediction, range-checked, and counted when they
correct an earlier label."""

from __future__ import annotations

import datetime as dt
import math

import duckdb

from monitor_assets.config import MonitorConfig
from monitor_assets.ingestion.fields import StagingPlan, move_to_quarantine
from monitor_assets.ingestion.plans import LABEL_TEXT
from monitor_assets.storage.reads import latest_labels_sql
from monitor_assets.storage.sql import sql_str

# Matching labels to their predictions joins the staged label ids to every stored prediction, and DuckDB keeps
# that join's id table in memory (it does not spill): about 130 MB per million labels, so a day of 5 million labels
# failed under a 512MB staging memory (1 million: fails at 100 MB, passes at 150 MB). More labels than this are
# matched in parts, split by a hash of the id, so the staging memory bounds the match whatever the day's size
# (20 models x 50,000 labels, 100 MB of staging memory: failed whole, matched in two parts in 11.4 s).
MATCH_ROWS = 500_000


def check_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan,
                 day: dt.date | None = None) -> None:
    """Labels (of `day`; None: of every staged day) are matched to their logged prediction (model and day,
    from `lake.predictions`); a label whose prediction has not arrived yet is kept, unmatched, and is joined
    when it does (metrics join on the id). A classifier's label must be 0 or 1."""
    # A join into a new table: an UPDATE of millions of rows through a join took three times as long. A label
    # and its prediction share an id, so each part (the ids of one hash bucket) matches on its own.
    parts = max(1, math.ceil(con.execute("SELECT count(*) FROM raw.labels").fetchone()[0] / MATCH_ROWS))
    for part in range(parts):
        labels = ("raw.labels" if parts == 1 else
                  f"(SELECT * FROM raw.labels WHERE coalesce(hash(prediction_id) % {parts}, 0) = {part})")
        con.execute(("CREATE TABLE raw.labels_matched AS" if part == 0 else "INSERT INTO raw.labels_matched") + f"""
            SELECT l.* REPLACE (coalesce(p.model_id, l.model_id) AS model_id,
                                coalesce(p.partition_date, l.prediction_date) AS prediction_date)
            FROM {labels} AS l
            LEFT JOIN (SELECT prediction_id, any_value(model_id) AS model_id, min(partition_date) AS partition_date
                       FROM lake.predictions WHERE prediction_id IN (SELECT prediction_id FROM {labels})
                       GROUP BY 1) AS p
                ON p.prediction_id = l.prediction_id AND (l.partition_date = ? OR ?::DATE IS NULL)""", [day, day])
    con.execute("DROP TABLE raw.labels")
    con.execute("ALTER TABLE raw.labels_matched RENAME TO labels")
    if LABEL_TEXT in plan.targets:
        _type_labels(con, config, plan, day)
    classifiers = [m.id for m in config.models if m.is_classifier] or [""]
    move_to_quarantine(con, plan, day, "t.model_id IN (SELECT unnest(?::VARCHAR[])) AND t.label NOT IN (0, 1)",
                       "'out of range: label=' || t.label || ' for classifier ' || t.model_id || ', expected 0 or 1'",
                       [classifiers])


def _type_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan,
                 day: dt.date | None) -> None:
    """Labels read as text (a multiclass model is configured): a multiclass model's label is a class name,
    stored as its code (0..K-1 in `classes` order), an unknown name quarantined; every other label must be a
    finite number, as when labels are read as numbers (a label whose prediction has not arrived is one of
    those: a class name must come after its prediction)."""
    multiclass = [m for m in config.models if m.is_multiclass]
    con.execute("""CREATE OR REPLACE TEMP TABLE _classes AS SELECT unnest(?::VARCHAR[]) AS model_id,
                   unnest(?::VARCHAR[]) AS name, unnest(?::DOUBLE[]) AS code""",
                [[m.id for m in multiclass for _ in m.classes], [c for m in multiclass for c in m.classes],
                 [float(i) for m in multiclass for i in range(len(m.classes))]])
    mc = "coalesce(t.model_id IN (SELECT model_id FROM _classes), false)"
    # In a shard, another shard's labels are set aside after this (`readers._keep_shard`): its multiclass models'
    # classes are not in this shard's config, so their class names are not judged here.
    others = sorted(set(config.fleet_model_ids) - set(config.model_ids)) if config.sharded else []
    numeric = (f"NOT {mc} AND NOT coalesce(t.model_id IN ({', '.join(sql_str(m) for m in others)}), false)"
               if others else f"NOT {mc}")
    move_to_quarantine(con, plan, day, f"{mc} AND NOT EXISTS (SELECT 1 FROM _classes AS c "
                                       "WHERE c.model_id = t.model_id AND c.name = t.label_text)",
                       "'unknown category: label ' || left(t.label_text, 80) || ' is not a class of ' || t.model_id")
    number = "TRY_CAST(t.label_text AS DOUBLE)"
    move_to_quarantine(con, plan, day, f"{numeric} AND {number} IS NULL",
                       "'wrong type: label=' || left(t.label_text, 40) || ' is not a number'")
    move_to_quarantine(con, plan, day, f"{numeric} AND NOT isfinite({number})",
                       "'non-finite number: label=' || t.label_text")
    con.execute(f"""CREATE TABLE raw.labels_typed AS
                    SELECT t.* REPLACE (CASE WHEN {mc} THEN c.code ELSE {number} END AS label)
                    FROM raw.labels AS t LEFT JOIN _classes AS c ON c.model_id = t.model_id AND c.name = t.label_text""")
    con.execute("DROP TABLE raw.labels")
    con.execute("ALTER TABLE raw.labels_typed RENAME TO labels")


def count_corrected_labels(con: duckdb.DuckDBPyConnection, day: dt.date) -> int:
    """Labels of the day that change their prediction's newest earlier label. They replace it: metrics
    take each prediction's label from the newest partition (arg_max by partition_date)."""
    earlier = latest_labels_sql(before="?", ids="SELECT prediction_id FROM raw.labels", labels="lake.labels")
    return con.execute(f"""
        SELECT count(*) FROM raw.labels AS l
        JOIN ({earlier}) AS earlier USING (prediction_id)
        WHERE l.partition_date = ? AND l.label IS DISTINCT FROM earlier.label""", [day, day]).fetchall()[0][0]
