"""Pictures of drift: one daily asset after feature drift."""

import dagster as dg
import pandas as pd

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_DRIFT, OWNERS
from monitor_assets.pictures.logic import (
    DISTRIBUTIONS,
    MAX_PER_MODEL_DAY,
    picture_markdown,
    write_pictures,
)
from monitor_assets.stats.distributions import MAX_BINS, TOP_K
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

METADATA_PICTURES = 12  # markdown tables per partition in the UI, the strongest first; the table holds them all
SHOWN = ["model_id", "feature", "role", "method", "statistic", "threshold", "evidence", "n_current"]


def build_pictures_definitions(config: MonitorConfig) -> dg.Definitions:
    """The drift_distributions asset."""

    @dg.asset(
        key=keys.DRIFT_DISTRIBUTIONS,
        description="What changed in each drifted feature-day (`monitoring.feature_drift` rows flagged drifted, "
                    f"at most {MAX_PER_MODEL_DAY} per model and day, the strongest first): the reference's and the "
                    f"day's distributions side by side, numerics on the reference's quantile bins (at most "
                    f"{MAX_BINS}, with below-range, above-range and missing buckets), categories as the {TOP_K} "
                    "largest of either side plus 'other' and 'missing', as counts and shares. Drawn on each "
                    "model's dashboard page; per partition, a table per drifted feature here.",
        group_name=GROUP_DRIFT, kinds={"duckdb", "python"}, owners=OWNERS,
        partitions_def=daily_partitions(config), backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.FEATURE_DRIFT],  # the day's rows are read from the lake as drift did
        metadata={"dagster/table_name": DISTRIBUTIONS,
                  "dagster/column_schema": table_schema(TABLES[DISTRIBUTIONS][0])},
    )
    def drift_distributions(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        with fail_fast(), warehouse.connect_lake() as con:
            frame, failed = write_pictures(con, cfg, days)
        for model_id, why in failed.items():
            context.log.warning(f"model {model_id}: drift pictures not drawn ({why})")
        of_day = by_day(frame, days)
        add_partition_metadata(context, {day: _day_metadata(of_day[day]) for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "models_not_drawn": dg.MetadataValue.md("\n".join(f"- {m}: {why}" for m, why in failed.items())
                                                    or "none"),
        })

    return dg.Definitions(assets=[drift_distributions])


def _day_metadata(day: pd.DataFrame) -> dict:
    """A day's pictures for the UI: how many, which, and a markdown table per picture (strongest first)."""
    strongest = day.sort_values("evidence", ascending=False, na_position="last") if len(day) else day
    out = {"pictures": len(day),
           "drifted_features": dg.MetadataValue.md(frame_markdown(strongest[SHOWN], limit=50) if len(day) else "none")}
    for r in strongest.head(METADATA_PICTURES).itertuples(index=False):
        out[f"{r.model_id} / {r.feature}"] = dg.MetadataValue.md(picture_markdown(r))
    return out
