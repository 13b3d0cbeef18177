"""Performance estimated before the labels arrive: one daily asset, reconciled when the labels land."""

import dagster as dg

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_METRICS, OWNERS
from monitor_assets.estimation.logic import ESTIMATES, day_summaries, write_estimates
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

SEGMENT_SHOWN = ["partition_date", "model_id", "segment", "metric", "estimate", "lower", "upper", "n_rows", "floor",
                 "p_adjusted"]


def build_estimation_definitions(config: MonitorConfig) -> dg.Definitions:
    """The estimated_performance asset (its check is a threshold check, evaluated with the others)."""

    @dg.asset(
        key=keys.ESTIMATED_PERFORMANCE,
        description="Per model and day, performance estimated from the logged scores alone, before the labels "
                    "arrive: confidence-based estimation (calibrated scores -> expected confusion matrix: accuracy, "
                    "precision, recall, F1, specificity, ROC AUC) for classifiers, by default with the reference "
                    "reweighted by a density ratio on days whose inputs have shifted; direct loss estimation (a "
                    "gradient-boosted model of |error| and error²: MAE, RMSE) for regressors; each with a 95% band "
                    "(`lower`, `upper`). Assumes no concept shift: P(label | inputs) as in the reference. When labels "
                    "land, `realized`, `n_labelled` and `within_band` fill in (each run refreshes the "
                    "`label_delay_days` before it). Estimators are fitted once per reference version "
                    "(`monitoring.estimators`). A model with `segments:` is estimated per segment of at least "
                    "`segments.min_rows` rows as well (`monitoring.segment_estimated_performance`), its main metric "
                    "tested against the segment's floor (Benjamini-Hochberg across the model-day's segments).",
        group_name=GROUP_METRICS, kinds={"python", "scikit-learn"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.PREDICTIONS, keys.LABELS, keys.REFERENCE_PROFILES],  # lake only
        metadata={"dagster/table_name": ESTIMATES, "dagster/column_schema": table_schema(TABLES[ESTIMATES][0])},
    )
    def estimated_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)
        with fail_fast(), warehouse.connect_lake() as con:
            frame, segments, missing = write_estimates(con, cfg, refreshed)
            add_partition_metadata(context, day_summaries(con, cfg, frame, days))
        for model_id, why in missing.items():
            context.log.warning(f"model {model_id}: performance not estimated ({why})")
        return dg.MaterializeResult(metadata={
            "days": day_label(days),
            "days_refreshed_for_late_labels": dg.MetadataValue.json([str(d) for d in refreshed if d not in days]),
            "models_not_estimated": dg.MetadataValue.md(
                "\n".join(f"- {m}: {why}" for m, why in missing.items()) or "none"),
            "preview": dg.MetadataValue.md(frame_markdown(frame, limit=12) if len(frame) else "none"),
            "segment_estimates": len(segments),
            "segments_below_floor": dg.MetadataValue.md(
                frame_markdown(below[SEGMENT_SHOWN], limit=12) if len(below := segments[segments.below_floor.eq(True)])
                else "none"),
            "dagster/row_count": len(frame),
        })

    return dg.Definitions(assets=[estimated_performance])
