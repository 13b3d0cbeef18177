"""Per-model performance and business KPIs per day, recomputed when late labels arrive."""


from collections.abc import Sequence

import dagster as dg
import pandas as pd
import pyarrow as pa

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_METRICS, OWNERS
from monitor_assets.ingestion.readers import latest_labels_sql
from monitor_assets.stats.performance import METRIC_DIRECTION, performance_sql
from monitor_assets.storage.lake import MODELS_PER_QUERY, TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of, replace_partitions
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    fail_fast,
    frame_markdown,
    in_shard,
    run_days,
    table_schema,
)

PERFORMANCE_COLUMNS = TABLES["monitoring.performance_daily"][0]


def models_values_sql(models: Sequence[ModelConfig]) -> tuple[str, list]:
    """A VALUES relation (model_id, task, threshold, main_metric) of these models, as SQL and params."""
    rows = ", ".join("(?, ?, ?, ?)" for _ in models)
    params = [v for m in models for v in (m.id, m.task, m.decision_threshold, m.main_metric)]
    return f"(SELECT * FROM (VALUES {rows}) AS v(model_id, task, threshold, main_metric))", params


def build_metrics_assets(config: MonitorConfig, predictions: dg.AssetKey, labels: dg.AssetKey,
                         interactions: dg.AssetKey | None, sales: dg.AssetKey | None) -> list[dg.AssetsDefinition]:
    partitions = daily_partitions(config)

    @dg.asset(
        key=dg.AssetKey(["monitoring", "performance_daily"]),
        description="Per model and day: volume, error rate, latency p50/p95/p99 and, on labelled rows only, "
                    "classification (accuracy, precision, recall, F1, ROC AUC, log loss, Brier) or regression "
                    "(MAE, RMSE, MAPE without zero labels, R², mean error) metrics with label coverage, and "
                    "the model's configured main metric (`main_metric_value`). The predicted class is the "
                    "logged `decision` where there is one, else score >= decision_threshold. Each run also "
                    "refreshes the `label_delay_days` before it, so late labels update earlier days.",
        group_name=GROUP_METRICS, kinds={"duckdb", "python"}, owners=OWNERS,
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[predictions, labels],  # lake only: shards run it at once
        metadata={"dagster/table_name": "monitoring.performance_daily",
                  "dagster/column_schema": table_schema(PERFORMANCE_COLUMNS)},
    )
    def performance_daily(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)
        with fail_fast(), warehouse.connect_lake() as con:  # each chunk registers its own models
            con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::DATE[]) AS d", [refreshed])
            parts = []
            for i in range(0, len(cfg.models), MODELS_PER_QUERY):
                sql, params = _performance_statement(con, cfg, cfg.models[i:i + MODELS_PER_QUERY])
                parts.append(con.sql(sql, params=params).to_arrow_table())
            con.register("_performance", pa.concat_tables(parts) if parts else _empty_performance(con))
            inserted = replace_partitions(con, "monitoring.performance_daily", refreshed,
                                          "SELECT * FROM _performance", models=cfg.written_models)
            con.unregister("_performance")
            per_day = con.execute(
                """SELECT partition_date, model_id, volume, error_rate, latency_p95_ms, label_coverage,
                          main_metric_value AS main_metric, n_labelled
                   FROM monitoring.performance_daily WHERE partition_date IN (SELECT unnest(?::DATE[]))
                   AND model_id IN (SELECT unnest(?::VARCHAR[]))
                   ORDER BY partition_date, error_rate DESC NULLS LAST, latency_p95_ms DESC NULLS LAST""",
                [days, cfg.model_ids]).df()
        add_partition_metadata(context, {day.date(): _performance_day_metadata(g)
                                         for day, g in per_day.groupby("partition_date")})
        return dg.MaterializeResult(metadata={
            "days": day_label(days),
            "days_refreshed_for_late_labels": dg.MetadataValue.json([str(d) for d in refreshed if d not in days]),
            "dagster/row_count": inserted,
        })

    assets = [performance_daily]
    if interactions is not None and sales is not None:
        assets.append(_business_kpis_asset(config, partitions, interactions, sales))
    return assets


def _empty_performance(con) -> pa.Table:
    """No rows, in the table's columns (a shard without models)."""
    return con.sql("SELECT * FROM monitoring.performance_daily WHERE false").to_arrow_table()


def _performance_day_metadata(day: pd.DataFrame) -> dict:
    """A day's figures for the UI: a few aggregates (plottable across partitions, bounded however many
    models there are) and the worst models first."""
    served = day[day.volume > 0]
    return {
        "models": len(day), "models_without_predictions": int((day.volume == 0).sum()),
        "predictions": int(day.volume.sum()),
        "max_error_rate": float(served.error_rate.max()) if served.error_rate.notna().any() else None,
        "max_latency_p95_ms": float(served.latency_p95_ms.max()) if served.latency_p95_ms.notna().any() else None,
        "mean_label_coverage": float(served.label_coverage.mean()) if served.label_coverage.notna().any() else None,
        "worst_models": dg.MetadataValue.md(frame_markdown(day.drop(columns=["partition_date"]), limit=10)),
    }


def _performance_statement(con, config: MonitorConfig, chunk: list[ModelConfig] | None = None) -> tuple[str, list]:
    """The performance rows of `chunk` (default every model) over the dates in temp table `_days`; params
    are the model rows, twice. The predictions come from the chunk's own tables, the labels from its own row
    groups (they are stored sorted by model) and those not matched to a prediction yet."""
    chunk = list(config.models if chunk is None else chunk)
    models, params = models_values_sql(chunk)
    predictions = f"({lake_of(con).predictions_union(con, [m.id for m in chunk])})"
    # The logged decision (when the source maps one) replaces score >= threshold for the class metrics.
    decision = "decision" if config.predictions.fields.get("decision") else None
    source = f"""
        SELECT p.partition_date, p.model_id, p.is_ok, p.latency_ms, p.score, l.label, m.threshold, m.task,
               p.decision
        FROM {predictions} AS p
        JOIN {models} AS m USING (model_id)
        LEFT JOIN ({latest_labels_sql("(SELECT min(d) FROM _days)", [m.id for m in chunk])}) AS l
            USING (prediction_id)
        WHERE p.partition_date IN (SELECT d FROM _days)"""
    metrics = performance_sql(source, ["partition_date", "model_id"], decision=decision)
    main_value = "CASE m.main_metric " + " ".join(
        f"WHEN {sql_str(k)} THEN r.{quote_ident(k)}" for k in sorted(METRIC_DIRECTION)) + " END"
    sql = f"""
        SELECT d AS partition_date, m.model_id, m.task, v.versions AS model_versions,
               coalesce(r.volume, 0), coalesce(r.n_ok, 0), coalesce(r.n_errors, 0), r.error_rate,
               r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms, coalesce(r.n_labelled, 0), r.label_coverage,
               r.accuracy, r."precision", r.recall, r.f1, r.roc_auc, r.log_loss, r.brier_score, r.positive_rate,
               r.predicted_positive_rate, r.mae, r.rmse, r.mape, r.r2, r.mean_error, r.mean_score,
               now(), r.mape_zero_labels, r.n_decision_missing, {main_value}
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


def _business_kpis_asset(config, partitions, interactions, sales) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["monitoring", "business_kpis_daily"]),
        description="Business KPIs per day from interactions and sales: sessions, conversion rate, "
                    "recommendation click-through, orders, units, revenue, average order value.",
        group_name=GROUP_METRICS, kinds={"duckdb"}, owners=OWNERS,
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, pool=DUCKDB_POOL, deps=[interactions, sales],
        metadata={"dagster/table_name": "monitoring.business_kpis_daily",
                  "dagster/column_schema": table_schema({
                      "partition_date": "DATE", "sessions": "BIGINT", "sessions_with_purchase": "BIGINT",
                      "conversion_rate": "DOUBLE", "recommendation_impressions": "BIGINT",
                      "recommendation_ctr": "DOUBLE", "orders": "BIGINT", "units_sold": "DOUBLE", "revenue": "DOUBLE",
                      "average_order_value": "DOUBLE", "computed_at": "TIMESTAMP"})},
    )
    def business_kpis_daily(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        with fail_fast(), warehouse.connect() as con:
            inserted = replace_partitions(con, "monitoring.business_kpis_daily", days, """
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
            kpis = con.execute("""SELECT * EXCLUDE (computed_at) FROM monitoring.business_kpis_daily
                                  WHERE partition_date IN (SELECT unnest(?::DATE[]))""", [days]).df()
        add_partition_metadata(context, {
            r.partition_date.date(): {name: (None if pd.isna(getattr(r, name)) else float(getattr(r, name)))
                                      for name in ("sessions", "conversion_rate", "orders", "revenue",
                                                   "average_order_value")}
            for r in kpis.itertuples()})
        return dg.MaterializeResult(metadata={"days": day_label(days), "dagster/row_count": inserted})

    return business_kpis_daily
