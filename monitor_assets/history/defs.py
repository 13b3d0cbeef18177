"""The history asset: every figure in long format (SQL in `history.logic`)."""

from collections.abc import Collection

import dagster as dg

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_REPORTING, OWNERS
from monitor_assets.history.logic import write_history
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    run_days,
    table_schema,
)

# The figures history gathers, by the asset that computes them (a part is left out when its asset is).
HISTORY_SOURCES = {"performance_daily": keys.PERFORMANCE_DAILY, "business_kpis_daily": keys.BUSINESS_KPIS_DAILY,
                   "feature_drift": keys.FEATURE_DRIFT, "fairness": keys.FAIRNESS,
                   "estimated_performance": keys.ESTIMATED_PERFORMANCE,
                   "segment_estimated_performance": keys.ESTIMATED_PERFORMANCE,
                   "segment_performance": keys.SEGMENT_PERFORMANCE, "segment_drift": keys.SEGMENT_DRIFT,
                   "multivariate_drift": keys.MULTIVARIATE_DRIFT, "ranking_performance": keys.RANKING_PERFORMANCE,
                   "ranking_segment_performance": keys.RANKING_PERFORMANCE}


def build_history_definitions(config: MonitorConfig, upstream: Collection[dg.AssetKey]) -> dg.Definitions:
    """The history asset over whichever of its sources `upstream` holds; the rankers' figures whenever the config
    has a ranker (the ranking stage defines its asset exactly then)."""
    sources = {part: key for part, key in HISTORY_SOURCES.items()
               if key in upstream or (key == keys.RANKING_PERFORMANCE and config.rankers)}
    parts = list(sources)

    @dg.asset(
        key=keys.HISTORY,
        description="Every monitored figure in long format (partition_date, model_id, metric, segment, value, "
                    "computed_at). Re-materializing a day replaces its rows, so re-runs never duplicate.",
        group_name=GROUP_REPORTING, kinds={"duckdb"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, pool=DUCKDB_POOL, deps=list(sources.values()),
        metadata={"dagster/table_name": "monitoring.history",
                  "dagster/column_schema": table_schema(TABLES["monitoring.history"][0])},
    )
    def history(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        refreshed = days_with_label_refresh(days, config)
        with warehouse.connect() as con:
            written = write_history(con, refreshed, parts)
        add_partition_metadata(context, {day: {"rows_for_day": int(written["per_day"].get(day, 0))} for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "days_rewritten": len(refreshed), "dagster/row_count": written["total"],
            "rows_written": written["inserted"], "distinct_metrics": written["metrics"]})

    return dg.Definitions(assets=[history])
