"""Multivariate drift: one daily asset (its check is a threshold check, evaluated with the others)."""

import dagster as dg
import pandas as pd

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_DRIFT, OWNERS
from monitor_assets.multivariate.logic import (
    MAX_ROWS,
    MULTIVARIATE,
    day_summary,
    flagged,
    monitored,
    write_multivariate,
)
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    by_day,
    daily_partitions,
    day_label,
    fail_fast,
    frame_markdown,
    in_shard,
    run_days,
    table_schema,
)

SHOWN = ["partition_date", "model_id", "method", "statistic", "threshold", "top_features", "analysis_error"]


def build_multivariate_definitions(config: MonitorConfig) -> dg.Definitions:
    """The multivariate_drift asset."""

    @dg.asset(
        key=keys.MULTIVARIATE_DRIFT,
        description="Per model and day, drift in how the features go together, which per-feature tests miss (a "
                    "correlation that flips leaves every marginal as it was): a domain classifier's cross-validated "
                    "ROC AUC at telling the day's rows from the reference's, and the PCA reconstruction error of "
                    "the day's rows (numeric features), each against a threshold calibrated on the reference's own "
                    f"chunks; the features that carried a flagged day. At most {MAX_ROWS:,} rows of each side. "
                    "Models with at least two features; references fitted once per reference version "
                    "(`monitoring.multivariate_references`).",
        group_name=GROUP_DRIFT, kinds={"python", "scikit-learn"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.PREDICTIONS, keys.REFERENCE_PROFILES],  # lake only
        metadata={"dagster/table_name": MULTIVARIATE,
                  "dagster/column_schema": table_schema(TABLES[MULTIVARIATE][0])},
    )
    def multivariate_drift(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        with fail_fast(), warehouse.connect_lake() as con:
            frame = write_multivariate(con, cfg, days)
        of_day = by_day(frame, days)
        add_partition_metadata(context, {day: {**day_summary(of_day[day]), "flagged": _flagged_md(of_day[day])}
                                         for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame), "monitored_models": len(monitored(cfg)),
            "flagged": _flagged_md(frame),
        })

    return dg.Definitions(assets=[multivariate_drift])


def _flagged_md(frame: pd.DataFrame) -> dg.MetadataValue:
    """The drifted model-days and the errors as a markdown table, largest margin first."""
    worst = flagged(frame)
    return dg.MetadataValue.md(frame_markdown(worst[SHOWN]) if len(worst) else "none")
