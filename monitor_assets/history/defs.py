"""The history table: every figure in long format, one row per date x model x metric x segment."""


import dagster as dg

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_REPORTING, OWNERS
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import replace_partitions
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    run_days,
    table_schema,
)

BUSINESS_MODEL_ID = "_business"

# Each part yields (partition_date, model_id, metric, segment, value) for the dates in temp table _days.
HISTORY_PARTS = {
    "performance_daily": """
        SELECT partition_date, model_id, metric, '' AS segment, value FROM (
            UNPIVOT (SELECT partition_date, model_id, COLUMNS(* EXCLUDE (partition_date, model_id, task,
                            model_versions, computed_at))::DOUBLE
                     FROM monitoring.performance_daily WHERE partition_date IN (SELECT d FROM _days))
            ON COLUMNS(* EXCLUDE (partition_date, model_id)) INTO NAME metric VALUE value)""",
    "business_kpis_daily": f"""
        SELECT partition_date, '{BUSINESS_MODEL_ID}', metric, '', value FROM (
            UNPIVOT (SELECT partition_date, COLUMNS(* EXCLUDE (partition_date, computed_at))::DOUBLE
                     FROM monitoring.business_kpis_daily WHERE partition_date IN (SELECT d FROM _days))
            ON COLUMNS(* EXCLUDE (partition_date)) INTO NAME metric VALUE value)""",
    "feature_drift": """
        SELECT partition_date, model_id, 'drift.' || method, role || ':' || feature, statistic
        FROM monitoring.feature_drift WHERE partition_date IN (SELECT d FROM _days) AND statistic IS NOT NULL
        UNION ALL
        SELECT partition_date, model_id, 'drift_share', '', drift_share
        FROM monitoring.drift_summary WHERE partition_date IN (SELECT d FROM _days)
        UNION ALL
        SELECT partition_date, model_id, 'drifted_features', '', n_drifted
        FROM monitoring.drift_summary WHERE partition_date IN (SELECT d FROM _days)""",
    "fairness": """
        SELECT partition_date, model_id, metric, attribute || '=' || grp, value FROM (
            UNPIVOT (SELECT partition_date, model_id, attribute, grp, selection_rate, true_positive_rate,
                            false_positive_rate, accuracy, mae, n::DOUBLE AS n
                     FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days))
            ON selection_rate, true_positive_rate, false_positive_rate, accuracy, mae, n
            INTO NAME metric VALUE value)
        UNION ALL
        SELECT DISTINCT partition_date, model_id, 'demographic_parity_ratio', attribute, demographic_parity_ratio
        FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days)
              AND demographic_parity_ratio IS NOT NULL
        UNION ALL
        SELECT DISTINCT partition_date, model_id, 'equalized_odds_difference', attribute, equalized_odds_difference
        FROM monitoring.fairness WHERE partition_date IN (SELECT d FROM _days)
              AND equalized_odds_difference IS NOT NULL""",
}


def history_select_sql(parts: list[str]) -> str:
    union = "\nUNION ALL\n".join(HISTORY_PARTS[p] for p in parts)
    return f"""SELECT *, now() FROM ({union}) AS h(partition_date, model_id, metric, segment, value)"""


def build_history_asset(config: MonitorConfig, upstream: dict[str, dg.AssetKey]) -> dg.AssetsDefinition:
    parts = [name for name in HISTORY_PARTS if name in upstream]

    @dg.asset(
        key=dg.AssetKey(["monitoring", "history"]),
        description="Every monitored figure in long format (partition_date, model_id, metric, segment, value, "
                    "computed_at). Re-materializing a day replaces its rows, so re-runs never duplicate.",
        group_name=GROUP_REPORTING, kinds={"duckdb"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, pool=DUCKDB_POOL, deps=list(upstream.values()),
        metadata={"dagster/table_name": "monitoring.history",
                  "dagster/column_schema": table_schema(TABLES["monitoring.history"][0])},
    )
    def history(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        refreshed = days_with_label_refresh(days, config)
        with warehouse.connect() as con:
            con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT unnest(?::DATE[]) AS d", [refreshed])
            inserted = replace_partitions(con, "monitoring.history", refreshed, history_select_sql(parts))
            per_day = dict(con.execute("""SELECT partition_date, count(*) FROM monitoring.history
                                          WHERE partition_date IN (SELECT d FROM _days) GROUP BY 1""").fetchall())
            total = con.execute("SELECT count(*) FROM monitoring.history").fetchall()[0][0]
            metrics = con.execute("SELECT count(DISTINCT metric) FROM monitoring.history").fetchall()[0][0]
        add_partition_metadata(context, {day: {"rows_for_day": int(per_day.get(day, 0))} for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "days_rewritten": len(refreshed), "dagster/row_count": total,
            "rows_written": inserted, "distinct_metrics": metrics})

    return history
