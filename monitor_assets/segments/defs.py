"""Per-segment performance, after the daily performance figures; its check is a threshold check."""


import dagster as dg
import pandas as pd

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_METRICS, OWNERS
from monitor_assets.segments.logic import SEGMENTS, not_judged_reason, worst, write_segments
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    by_day,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    fail_fast,
    frame_markdown,
    run_days,
    table_schema,
)

SHOWN = ["model_id", "segment", "n_labelled", "metric", "value", "reference_value", "p_adjusted", "below_floor"]
NOT_JUDGED_SHOWN = ["model_id", "segment", "n_labelled", "metric", "value", "why"]


def build_segments_definitions(config: MonitorConfig) -> dg.Definitions:
    """The segment_performance asset (empty when no model configures `segments`)."""

    @dg.asset(
        key=keys.SEGMENT_PERFORMANCE,
        description="Per model, day and segment (`segments:` in a model's config: a column such as market, or a "
                    "cross such as [market, device]): volume, labelled rows and the performance metrics, with the "
                    "main metric tested against the segment's own reference value (one-sided, Benjamini-Hochberg "
                    "across the model-day's segments; segments under `segments.min_rows` labelled rows, or "
                    "under `segments.min_class_rows` rows of a class their metric rests on (ROC AUC, precision, "
                    "recall, F1), are reported, not judged: `segments_not_judged` says why). Binary, multiclass "
                    "and regression models. Refreshes the `label_delay_days` before its days.",
        group_name=GROUP_METRICS, kinds={"duckdb", "python"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.PREDICTIONS, keys.LABELS, keys.REFERENCE_PROFILES],  # lake only
        metadata={"dagster/table_name": SEGMENTS, "dagster/column_schema": table_schema(TABLES[SEGMENTS][0])},
    )
    def segment_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        refreshed = days_with_label_refresh(days, config)
        with fail_fast(), warehouse.connect_lake() as con:
            baselines = {(m, k): v for m, k, v in con.execute(
                "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
            frame, failed = write_segments(con, config, refreshed, baselines)
        for model_id, why in failed.items():
            context.log.warning(f"model {model_id}: segments not computed ({why})")
        of_day = by_day(frame, days)
        add_partition_metadata(context, {day: _day_metadata(of_day[day], config) for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "segmented_models": sum(1 for m in config.models if m.segments.by),
            "models_not_segmented": dg.MetadataValue.md("\n".join(f"- {m}: {why}" for m, why in failed.items())
                                                        or "none"),
            "worst_segments": dg.MetadataValue.md(frame_markdown(worst(frame)[SHOWN]) if len(frame) else "none"),
        })

    return dg.Definitions(assets=[segment_performance])


def _day_metadata(day: pd.DataFrame, config: MonitorConfig) -> dict:
    """A day's segments for the UI: how many, how many below their floor, the worst first, and those not judged
    with why (the largest first)."""
    models = {m.id: m for m in config.models}
    skipped = day[day.p_value.isna()] if len(day) else day
    why = [not_judged_reason(r, models[r.model_id]) for r in skipped.itertuples()]
    skipped = skipped.assign(why=why).sort_values("n_labelled", ascending=False).head(10)
    return {"segments": len(day), "segments_below_floor": int(day.below_floor.fillna(False).sum()) if len(day) else 0,
            "segments_not_judged": len(why),
            "worst_segments": dg.MetadataValue.md(frame_markdown(worst(day)[SHOWN]) if len(day) else "none"),
            "not_judged": dg.MetadataValue.md(frame_markdown(skipped[NOT_JUDGED_SHOWN]) if why else "none")}


