"""Per-model performance and business KPIs per day: the SQL behind `monitoring.performance_daily` and
`monitoring.business_kpis_daily`, and the reads their assets report."""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from monitor_assets.config import CLASS_CODE_COLUMN, CLASS_PROBABILITIES_COLUMN, ModelConfig, MonitorConfig
from monitor_assets.stats.metrics_spec import METRIC_DIRECTION
from monitor_assets.stats.multiclass import MULTICLASS_COLUMNS, labelled_metrics, multiclass_metrics
from monitor_assets.stats.performance import performance_sql
from monitor_assets.storage.lake import MODELS_PER_QUERY, TABLES
from monitor_assets.storage.per_model import model_chunks
from monitor_assets.storage.reads import latest_labels_sql, performance_models_sql
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of, replace_partitions


def write_performance(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> int:
    """Replace `days` of monitoring.performance_daily for the config's models, a chunk of models per query (each
    chunk registers its own models' tables). Returns the rows written."""
    con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::DATE[]) AS d", [days])
    parts = []
    for chunk in model_chunks(config.models, MODELS_PER_QUERY):
        sql, params = performance_statement(con, config, chunk)
        part = con.sql(sql, params=params).to_arrow_table()
        if any(m.is_multiclass for m in chunk):
            part = with_multiclass_metrics(con, config, [m for m in chunk if m.is_multiclass], part)
        parts.append(part)
    con.register("_performance", pa.concat_tables(parts) if parts else _empty_performance(con))
    inserted = replace_partitions(con, "monitoring.performance_daily", days,
                                  "SELECT * FROM _performance", models=config.written_models)
    con.unregister("_performance")
    return inserted


def performance_by_day(con: duckdb.DuckDBPyConnection, days: list[dt.date], model_ids: list[str]) -> pd.DataFrame:
    """The stored figures of these models and days the UI shows, the worst models of a day first."""
    return con.execute(
        """SELECT partition_date, model_id, volume, error_rate, latency_p95_ms, label_coverage,
                  main_metric_value AS main_metric, n_labelled
           FROM monitoring.performance_daily WHERE partition_date IN (SELECT unnest(?::DATE[]))
           AND model_id IN (SELECT unnest(?::VARCHAR[]))
           ORDER BY partition_date, error_rate DESC NULLS LAST, latency_p95_ms DESC NULLS LAST""",
        [days, model_ids]).df()


def _empty_performance(con) -> pa.Table:
    """No rows, in the table's columns (a shard without models)."""
    return con.sql("SELECT * FROM monitoring.performance_daily WHERE false").to_arrow_table()


def performance_statement(con, config: MonitorConfig, chunk: list[ModelConfig] | None = None) -> tuple[str, list]:
    """The performance rows of `chunk` (default every model) over the dates in temp table `_days`; params
    are the model rows, twice. The predictions come from the chunk's own tables, the labels from its own row
    groups (they are stored sorted by model) and those not matched to a prediction yet."""
    chunk = list(config.models if chunk is None else chunk)
    models, params = performance_models_sql(chunk)
    predictions = f"({lake_of(con).predictions_union(con, [m.id for m in chunk])})"
    # The logged decision (when the source maps one) replaces score >= threshold for the class metrics.
    decision = "decision" if config.predictions.fields.get("decision") else None
    source = f"""
        SELECT p.partition_date, p.model_id, p.is_ok, p.latency_ms, p.score, l.label, m.threshold, m.task,
               p.decision
        FROM {predictions} AS p
        JOIN {models} AS m USING (model_id)
        LEFT JOIN ({latest_labels_sql([m.id for m in chunk], since="(SELECT min(d) FROM _days)")}) AS l
            USING (prediction_id)
        WHERE p.partition_date IN (SELECT d FROM _days)"""
    metrics = performance_sql(source, ["partition_date", "model_id"], decision=decision)
    main_value = "CASE m.main_metric " + " ".join(
        f"WHEN {sql_str(k)} THEN r.{quote_ident(k)}" for k in sorted(METRIC_DIRECTION)
        if k not in ("f1_macro", "f1_weighted")) + " END"  # multiclass only: filled in by with_multiclass_metrics
    sql = f"""
        SELECT d AS partition_date, m.model_id, m.task, v.versions AS model_versions,
               coalesce(r.volume, 0), coalesce(r.n_ok, 0), coalesce(r.n_errors, 0), r.error_rate,
               r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms, coalesce(r.n_labelled, 0), r.label_coverage,
               r.accuracy, r."precision", r.recall, r.f1, r.roc_auc, r.log_loss, r.brier_score, r.positive_rate,
               r.predicted_positive_rate, r.mae, r.rmse, r.mape, r.r2, r.mean_error, r.mean_score,
               now(), r.mape_zero_labels, r.n_decision_missing, {main_value}, NULL::DOUBLE AS f1_macro,
               NULL::DOUBLE AS f1_weighted
        FROM ({metrics}) AS r
        RIGHT JOIN (SELECT d, model_id, task, main_metric FROM _days CROSS JOIN {models} AS c
                    -- a model-day that failed the data-quality suite is held: no figures from it
                    WHERE NOT EXISTS (SELECT 1 FROM monitoring.quality_verdicts AS q WHERE q.partition_date = d
                                      AND q.model_id = c.model_id AND NOT q.passed)) AS m
            ON r.partition_date = m.d AND r.model_id = m.model_id
        LEFT JOIN (SELECT partition_date, model_id, string_agg(DISTINCT model_version, ',') AS versions
                   FROM {predictions} WHERE partition_date IN (SELECT d FROM _days)
                   GROUP BY ALL) AS v ON v.partition_date = m.d AND v.model_id = m.model_id"""
    return sql, params + params


def multiclass_rows(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> pd.DataFrame:
    """A multiclass model's served rows of the days in `_days`: day, predicted code, probabilities (a list,
    or None) and the latest label (code, NaN until it arrives)."""
    lake = lake_of(con)
    if not lake.has_table(lake.model_path(model.id)):  # nothing logged yet
        return pd.DataFrame(columns=["partition_date", "code", "proba", "label"])
    table = lake.model_relation(con, model.id)
    return con.execute(f"""
        SELECT p.partition_date, p.{CLASS_CODE_COLUMN} AS code, p.{CLASS_PROBABILITIES_COLUMN} AS proba,
               l.label
        FROM {table} AS p
        LEFT JOIN ({latest_labels_sql([model.id], since="(SELECT min(d) FROM _days)")}) AS l USING (prediction_id)
        WHERE p.partition_date IN (SELECT d FROM _days) AND p.is_ok AND p.{CLASS_CODE_COLUMN} IS NOT NULL""").df()


def multiclass_day(model: ModelConfig, rows: pd.DataFrame) -> dict[str, float]:
    """One model-day's multiclass figures (`stats.multiclass.labelled_metrics`) on its labelled rows, with
    `n_labelled` and `label_coverage`."""
    return labelled_metrics(rows, len(model.classes))[0]


def class_metrics_by_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Per multiclass model, day and class: support (labelled), predicted, precision, recall, F1 (and one-vs-rest
    ROC AUC where probabilities were logged), on the labelled rows; for the UI."""
    con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::DATE[]) AS d", [days])
    parts = []
    for model in (m for m in config.models if m.is_multiclass):
        rows = multiclass_rows(con, model)
        for day, group in rows[rows.label.notna()].groupby("partition_date"):
            proba = np.array(group.proba.tolist(), dtype=float) if group.proba.notna().all() else None
            per = multiclass_metrics(group.label.to_numpy(np.int64), group.code.to_numpy(np.int64),
                                     len(model.classes), proba).per_class
            per.insert(0, "class", per.pop("class").map(dict(enumerate(model.classes))))
            parts.append(per.assign(partition_date=pd.Timestamp(day), model_id=model.id))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def with_multiclass_metrics(con: duckdb.DuckDBPyConnection, config: MonitorConfig, models: list[ModelConfig],
                            part: pa.Table) -> pa.Table:
    """The performance rows with the multiclass models' figures filled in (the shared SQL computes volume,
    errors and latency for every task; the class metrics of a multiclass model come from its codes)."""
    frame = part.to_pandas()
    names = [f.name for f in part.schema]
    for model in models:
        rows = multiclass_rows(con, model)
        for day, group in rows.groupby("partition_date"):
            at = (frame.iloc[:, 1] == model.id) & (pd.to_datetime(frame.iloc[:, 0]) == pd.Timestamp(day))
            figures = multiclass_day(model, group)
            for column in ("n_labelled", "label_coverage", *MULTICLASS_COLUMNS):
                frame.loc[at, names[list(TABLES["monitoring.performance_daily"][0]).index(column)]] = figures[column]
            main = names[list(TABLES["monitoring.performance_daily"][0]).index("main_metric_value")]
            frame.loc[at, main] = figures.get(model.main_metric, math.nan)
    return pa.Table.from_pandas(frame, schema=part.schema, preserve_index=False)


def write_business_kpis(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> int:
    """Replace `days` of monitoring.business_kpis_daily from raw.interactions and raw.sales. Returns the rows."""
    return replace_partitions(con, "monitoring.business_kpis_daily", days, """
        SELECT d, i.sessions, i.buyers, i.buyers / nullif(i.sessions, 0), i.rec_views,
               i.rec_clicks / nullif(i.rec_views, 0), s.orders, s.units, s.revenue,
               s.revenue / nullif(s.orders, 0), now()::TIMESTAMP
        FROM unnest(?::DATE[]) AS t(d)
        LEFT JOIN (SELECT partition_date, count(DISTINCT session_id) AS sessions,
                          count(DISTINCT session_id) FILTER (WHERE event = 'purchase') AS buyers,
                          count(*) FILTER (WHERE from_recommendation AND event = 'view') AS rec_views,
                          count(*) FILTER (WHERE from_recommendation AND event = 'click') AS rec_clicks
                   FROM raw.interactions GROUP BY 1) AS i ON i.partition_date = d
        LEFT JOIN (SELECT partition_date, count(DISTINCT order_id) AS orders, sum(quantity) AS units,
                          sum(revenue) AS revenue FROM raw.sales GROUP BY 1) AS s ON s.partition_date = d
        """, [days])


def business_kpis(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> pd.DataFrame:
    """The stored business KPIs of `days`."""
    return con.execute("""SELECT * EXCLUDE (computed_at) FROM monitoring.business_kpis_daily
                          WHERE partition_date IN (SELECT unnest(?::DATE[]))""", [days]).df()
