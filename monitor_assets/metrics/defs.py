"""Per-model performance and business KPIs per day, recomputed when late labels arrive."""


import dagster as dg
import pandas as pd

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_METRICS, OWNERS
from monitor_assets.metrics.logic import (
    business_kpis,
    class_metrics_by_day,
    performance_by_day,
    write_business_kpis,
    write_performance,
)
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
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
            inserted = write_performance(con, cfg, refreshed)
            per_day = performance_by_day(con, days, cfg.model_ids)
            per_class = class_metrics_by_day(con, cfg, days)
        metadata = {day.date(): _performance_day_metadata(g) for day, g in per_day.groupby("partition_date")}
        for (day, model_id), g in (per_class.groupby(["partition_date", "model_id"]) if len(per_class) else ()):
            # a multiclass model's per-class precision and recall, where its day's figures are read
            metadata.setdefault(day.date(), {})[f"per_class_{model_id}"] = dg.MetadataValue.md(
                frame_markdown(g.drop(columns=["partition_date", "model_id"]), limit=50))
        add_partition_metadata(context, metadata)
        return dg.MaterializeResult(metadata={
            "days": day_label(days),
            "days_refreshed_for_late_labels": dg.MetadataValue.json([str(d) for d in refreshed if d not in days]),
            "dagster/row_count": inserted,
        })

    assets = [performance_daily]
    if interactions is not None and sales is not None:
        assets.append(_business_kpis_asset(config, partitions, interactions, sales))
    return assets


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
            inserted = write_business_kpis(con, days)
            kpis = business_kpis(con, days)
        add_partition_metadata(context, {
            r.partition_date.date(): {name: (None if pd.isna(getattr(r, name)) else float(getattr(r, name)))
                                      for name in ("sessions", "conversion_rate", "orders", "revenue",
                                                   "average_order_value")}
            for r in kpis.itertuples()})
        return dg.MaterializeResult(metadata={"days": day_label(days), "dagster/row_count": inserted})

    return business_kpis_daily
