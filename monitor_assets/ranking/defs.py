"""The ranking stage's Dagster wiring: ranked lists loaded, their daily quality, and its baseline check.

Rankers (`task: ranking`) are `MonitorConfig.rankers`, not `models`: every other stage iterates `models` and never
sees them. Without a ranker in the config this stage defines nothing.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    GROUP_INGESTION,
    GROUP_METRICS,
    OWNERS,
    RANKING_DRIFT_CHECK,
    RANKING_PERFORMANCE_CHECK,
    RANKING_SEGMENT_CHECK,
)
from monitor_assets.keys import RANKING_IMPRESSIONS, RANKING_PERFORMANCE
from monitor_assets.ranking.logic import (
    ALL_VERSIONS,
    IMPRESSIONS,
    PERFORMANCE,
    RANKING_TABLES,
    baseline_failures,
    drift_failures,
    ingest_rankers,
    reference_of,
    segment_failures,
    write_performance,
)
from monitor_assets.ranking.windows import write_windows
from monitor_assets.segments.logic import worst
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    fail_fast,
    frame_markdown,
    partition_check_results,
    run_days,
    table_schema,
)

SHOWN = ["model_id", "metric", "value", "standard_error", "n_requests", "label_coverage", "reference_value", "p_value"]
SEGMENTS_SHOWN = ["model_id", "segment", "n_labelled_requests", "metric", "value", "reference_value", "p_adjusted",
                  "below_floor"]


def build_ranking_definitions(config: MonitorConfig) -> dg.Definitions:
    """The ranking assets and check; empty when the config has no ranker."""
    if not config.rankers:
        return dg.Definitions()
    partitions = daily_partitions(config)

    @dg.asset(
        key=RANKING_IMPRESSIONS,
        description="Each ranker's ranked lists of the day (its `source:` glob; one record per request with its "
                    "items, or one row per shown item), one row per impression (request_id, item_id, rank, score, "
                    "model_version), and its interactions (`labels:` glob, graded by `ranking.relevance`) in "
                    "`raw.ranking_interactions`. Bad records go to `raw.quarantine` (sources `ranking`, "
                    "`ranking_labels`) with their reason; read = loaded + quarantined.",
        group_name=GROUP_INGESTION, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY,
        metadata={"dagster/table_name": IMPRESSIONS,
                  "dagster/column_schema": table_schema(RANKING_TABLES[IMPRESSIONS][0])},
    )
    def ranking_impressions(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        counts: dict[dt.date, dict[str, dict]] = {}
        with fail_fast(), warehouse.connect_lake() as con:
            counts = ingest_rankers(con, config, days)
        totals = {k: sum(c.get(k, 0) for day in counts.values() for c in day.values())
                  for k in ("records_read", "records_loaded", "records_quarantined", "impressions",
                            "interactions_read", "interactions_loaded", "interactions_quarantined")}
        assert totals["records_read"] == totals["records_loaded"] + totals["records_quarantined"]
        add_partition_metadata(context, {day: {
            "days": str(day),  # the run's summary sums a day's own counts (run_pipeline.StepRecord.total)
            **{k: sum(c.get(k, 0) for c in by_ranker.values()) for k in totals},
            "per_ranker": dg.MetadataValue.md(frame_markdown(pd.DataFrame(
                [{"ranker": r, **{k: c.get(k) for k in ("records_read", "records_loaded", "records_quarantined",
                                                         "impressions", "interactions_loaded")},
                  "reasons": ", ".join(f"{k}: {v}" for k, v in {**c.get("reasons", {}),
                                                                  **c.get("interaction_reasons", {})}.items())}
                 for r, c in by_ranker.items()]))),
            "notes": dg.MetadataValue.md("\n".join(f"- {r}: {n}" for r, c in by_ranker.items()
                                                   for n in c.get("notes", [])) or "none"),
        } for day, by_ranker in counts.items()})
        return dg.MaterializeResult(metadata={"days": day_label(days), "rankers": len(config.rankers), **totals,
                                              "dagster/row_count": totals["impressions"]})

    check = dg.AssetCheckSpec(
        RANKING_PERFORMANCE_CHECK, asset=RANKING_PERFORMANCE, partitions_def=partitions,
        description="Each ranker's main metric (`main_metric`, default ndcg_at_10) against `thresholds."
                    "min_metric_ratio` x its value on the reference: fails when it is below with a one-sided "
                    "p-value under 0.05 (a standard error over requests, so a small day does not alarm). Judged once "
                    "the interactions of the day and the `label_delay_days` after it are read.")

    drift_check = dg.AssetCheckSpec(
        RANKING_DRIFT_CHECK, asset=RANKING_PERFORMANCE, partitions_def=partitions,
        description="Each ranker's recommended items against its reference, without labels (so a popularity "
                    "collapse alerts on its day, before the clicks land): fails (WARN unless `thresholds.severity` "
                    "says otherwise) when the item drift (Jensen-Shannon) or the popularity concentration (top 1% "
                    "of items' share of impressions) is above the upper prediction bound of its values on the "
                    "reference's own day-sized chunks (mean + about 3 sd; monitor_assets/ranking/drift.py).")

    segment_check = dg.AssetCheckSpec(
        RANKING_SEGMENT_CHECK, asset=RANKING_PERFORMANCE, partitions_def=partitions,
        description="Each segmented ranker's (`segments:`) main metric per segment (monitoring."
                    "ranking_segment_performance) against `thresholds.min_metric_ratio` x the segment's reference "
                    "value (the ranker's whole one when the reference has fewer than `segments.min_rows` of the "
                    "segment's requests or lacks its columns): one-sided, Benjamini-Hochberg across the ranker-day's "
                    "segments at 1%, on segments with at least `segments.min_rows` labelled requests, once the "
                    "interactions are all read. Fails (WARN unless `thresholds.severity` says otherwise) naming the "
                    "segments below their floor.")

    @dg.asset(
        key=RANKING_PERFORMANCE,
        description="Per ranker, day and version (`*`: all versions): requests, labelled requests and label "
                    "coverage; NDCG, precision, recall, MAP, hit rate and MRR at every cut-off in `ranking.k`, MRR "
                    "over the whole list; catalogue coverage, popularity concentration (share of impressions to the "
                    "top 1% of items), novelty, the drift of recommended items (Jensen-Shannon over the top items and "
                    "an other bucket) and of scores (Kolmogorov-Smirnov) against the reference; the mean per-request "
                    "loss 1 - NDCG@k. One row per metric. Rankers with `segments:` get the whole day's figures per "
                    "segment too, the main metric judged (monitoring.ranking_segment_performance). Refreshes the "
                    "`label_delay_days` before its days, and the rankers' windows in monitoring.evaluation_store (per-request metrics and label coverage merged "
                    "from the days: monitor_assets/ranking/windows.py).",
        group_name=GROUP_METRICS, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, deps=[RANKING_IMPRESSIONS],
        metadata={"dagster/table_name": PERFORMANCE,
                  "dagster/column_schema": table_schema(RANKING_TABLES[PERFORMANCE][0])},
    )
    def ranking_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        refreshed = days_with_label_refresh(days, config)
        with fail_fast(), warehouse.connect_lake() as con:
            frame, failed, segments = write_performance(con, config, refreshed)
            # the evaluation store's windows of the rankers, merged from the days just written
            references = {r.id: ref for r in config.rankers if r.id not in failed
                          and (ref := reference_of(config, r)) is not None}
            windows = write_windows(con, config, refreshed, references)
        for ranker_id, why in failed.items():
            context.log.warning(f"ranker {ranker_id}: ranking figures not computed ({why})")
        overall = frame[frame.model_version == ALL_VERSIONS]
        add_partition_metadata(context, {day: {**_day_metadata(config, overall[overall.partition_date == day]),
                                               **_segment_metadata(config, segments, day)} for day in days})
        main = overall[[m == _main(config, i) for i, m in zip(overall.model_id, overall.metric, strict=True)]]
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "evaluation_store_rows": len(windows),
            "rankers_failed": dg.MetadataValue.md("\n".join(f"- {m}: {why}" for m, why in failed.items()) or "none"),
            "main_metrics": dg.MetadataValue.md(frame_markdown(main[["partition_date", *SHOWN]], limit=20)
                                                if len(main) else "none"),
        })

    specs = {RANKING_PERFORMANCE_CHECK: check, RANKING_DRIFT_CHECK: drift_check, RANKING_SEGMENT_CHECK: segment_check}

    # The checks in one step (one process start and one warehouse connection fewer), subsettable like the
    # threshold checks: a run evaluates the checks it selected.
    @dg.multi_asset_check(specs=list(specs.values()), name="ranking_checks", retry_policy=IO_RETRY, can_subset=True)
    def ranking_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        selected = [name for name, spec in specs.items() if spec.key in context.selected_asset_check_keys]
        # The drift is label-free (a day's figures do not change when later interactions land); the baseline
        # and segment checks also re-judge the label_delay_days before the run's days.
        days = {RANKING_PERFORMANCE_CHECK: days_with_label_refresh(run_days(context), config),
                RANKING_DRIFT_CHECK: run_days(context),
                RANKING_SEGMENT_CHECK: days_with_label_refresh(run_days(context), config)}
        judge = {RANKING_PERFORMANCE_CHECK: baseline_failures, RANKING_DRIFT_CHECK: drift_failures,
                 RANKING_SEGMENT_CHECK: segment_failures}
        with fail_fast(), warehouse.connect_lake() as con:
            judged = {name: judge[name](con, config, days[name], name) for name in selected}
        for name, (failures, evaluated) in judged.items():
            yield from partition_check_results(context, specs[name], days[name], failures, evaluated)

    return dg.Definitions(assets=[ranking_impressions, ranking_performance], asset_checks=[ranking_checks])


def _main(config: MonitorConfig, model_id: str) -> str:
    return next((r.main_metric for r in config.rankers if r.id == model_id), "")


def _day_metadata(config: MonitorConfig, day: pd.DataFrame) -> dict:
    """A day's figures for the UI's plots: each ranker's main metric, coverage and concentration (the first
    ranker's under plain names, every ranker's in the table)."""
    if not len(day):
        return {"rankers_with_rows": 0}
    out: dict = {"rankers_with_rows": int(day.model_id.nunique())}
    for ranker in config.rankers:
        mine = day[day.model_id == ranker.id].set_index("metric")
        if not len(mine):
            continue
        prefix = "" if len(config.rankers) == 1 else f"{ranker.id}/"
        for metric in (ranker.main_metric, "mean_loss", "catalogue_coverage", "popularity_concentration", "novelty"):
            if metric in mine.index:
                out[f"{prefix}{metric}"] = float(mine.value[metric])
        out[f"{prefix}n_requests"] = int(mine.n_requests.iloc[0])
        out[f"{prefix}label_coverage"] = float(mine.label_coverage.iloc[0])
    main = day[[m == _main(config, i) for i, m in zip(day.model_id, day.metric, strict=True)]]
    out["main_metrics"] = dg.MetadataValue.md(frame_markdown(main[SHOWN]) if len(main) else "none")
    return out


def _segment_metadata(config: MonitorConfig, segments: pd.DataFrame, day) -> dict:
    """A day's ranker segments for the UI (segmented rankers only): how many, how many below their floor, the
    worst first (adjusted p-value, then the furthest below the reference), as segments/defs.py shows models'."""
    if not any(r.segments.by for r in config.rankers):
        return {}
    mains = {r.id: r.main_metric for r in config.rankers}
    main = segments[(segments.partition_date == day) & (segments.metric == segments.model_id.map(mains))]
    return {"ranker_segments": len(main), "ranker_segments_below_floor": int(main.below_floor.fillna(False).sum()),
            "worst_ranker_segments": dg.MetadataValue.md(frame_markdown(worst(main)[SEGMENTS_SHOWN])
                                                         if len(main) else "none")}
