"""The evaluation store: the daily profiles asset and the evaluation windows asset."""

import dagster as dg
import pandas as pd

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_METRICS, OWNERS
from monitor_assets.evaluation.logic import (
    PROFILES,
    SAMPLES,
    STORE,
    WINDOW_CHECK,
    WINDOW_PICTURES,
    closed_windows,
    day_figures,
    judged_counts,
    latest_windows,
    multivariate_drifted,
    profiled,
    read_windows,
    settings,
    window_failures,
    write_profiles,
    write_reports,
    write_store,
)
from monitor_assets.evaluation.segment_drift import (
    ALPHA_DRIFT,
    SEGMENT_DRIFT,
    worst_drift,
    write_segment_drift,
)
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
    in_shard,
    markdown_table,
    partition_check_results,
    run_days,
    table_schema,
)

PICTURES_SHOWN = ["window_id", "model_id", "feature", "method", "statistic", "threshold", "evidence", "n_current"]
DRIFT_SHOWN = ["model_id", "segment", "feature", "method", "statistic", "threshold", "evidence", "p_adjusted", "drifted",
               "n_rows", "reference_source"]


def build_evaluation_definitions(config: MonitorConfig) -> dg.Definitions:
    """The daily_profiles and evaluation_store assets."""
    partitions = daily_partitions(config)
    window_names = ", ".join(s.name for s in settings(config).windows)

    @dg.asset(
        key=keys.DAILY_PROFILES,
        description="Per model, day and model version, a mergeable profile of the day's served rows with the "
                    "labels known so far (JSON): per feature counts on bins fixed by the reference (quantile bins, "
                    "tracked categories), the performance metrics' sufficient statistics (confusion counts, score "
                    "histograms per label, loss sums; regression error sums) and fairness counts per group; for a model "
                    "with `segments:`, also one per segment of each segmentation (`segment` 'market=DE, "
                    "device=mobile'; '' is the whole model). Windows of any length are computed by adding them. Each run also rebuilds the `label_delay_days` "
                    "before it, so late labels reach the profiles. Layouts are made once per reference version "
                    "(`monitoring.evaluation_references`).",
        group_name=GROUP_METRICS, kinds={"python", "duckdb"}, owners=OWNERS,
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.PREDICTIONS, keys.LABELS, keys.REFERENCE_PROFILES],  # lake only
        metadata={"dagster/table_name": PROFILES, "dagster/column_schema": table_schema(TABLES[PROFILES][0])},
    )
    def daily_profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)
        with fail_fast(), warehouse.connect_lake() as con:
            run = write_profiles(con, cfg, refreshed)
        for model_id, why in run.notes.items():
            context.log.warning(f"daily profiles: model {model_id} skipped: {why}")
        add_partition_metadata(context, {day: day_figures(run, day) for day in days})
        errors = run.frame[run.frame.error.notna()] if len(run.frame) else run.frame
        return dg.MaterializeResult(metadata={
            "days": day_label(days),
            "days_refreshed_for_late_labels": dg.MetadataValue.json([str(d) for d in refreshed if d not in days]),
            "dagster/row_count": len(run.frame), "profiled_models": len(profiled(cfg)[0]),
            "seconds": round(run.seconds, 2),
            "skipped": dg.MetadataValue.md(markdown_table(["model", "why"], sorted(run.notes.items()))
                                           if run.notes else "none"),
            "errors": dg.MetadataValue.md(frame_markdown(errors[["partition_date", "model_id", "error"]])
                                          if len(errors) else "none"),
        })

    @dg.asset(
        key=keys.EVALUATION_STORE,
        description=f"Per model, version ('*': every version together), evaluation window ({window_names}) and "
                    "metric: the value on the window beside the reference's and the previous window's of the same "
                    "kind; performance, drift per feature (`drift.<feature>.<statistic>`) and fairness disparities "
                    "(`fairness.<attribute>.<disparity>`); for a segmented model the same per segment (every version "
                    "together; `n_rows` alone below `segments.min_rows`), against the segment's own reference rows "
                    "where it has `min_rows` of them (`reference_source`). Computed from the merged daily profiles "
                    "only, never "
                    "from the prediction files; each run recomputes the windows holding its days and the "
                    "late-label days before them, and writes a report (markdown and HTML) for each window that "
                    "closed in its days, saying which checks warned, per model and per ranker (a ranker's from its "
                    "windows of the store, which `ranking_performance` writes). Each judged feature's window drift "
                    "verdict (`drift.<feature>.threshold`, `.evidence`, `.drifted`) is decided as the daily drift decides; "
                    f"the drifted features' reference-vs-window distributions go to `{WINDOW_PICTURES}`. For each "
                    "closed window, multivariate drift (`multivariate.<method>`: the statistic against its "
                    "calibrated threshold, `.drifted`) on up to 5,000 rows drawn from the days' stored samples "
                    f"(`{SAMPLES}`) in proportion to the days' rows, against the model's fitted reference.",
        group_name=GROUP_METRICS, kinds={"python"}, owners=OWNERS,
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        # lake only (the samples; the rankers' windows, which the ranking stage writes, for their reports)
        retry_policy=IO_RETRY, deps=[keys.DAILY_PROFILES, keys.MULTIVARIATE_DRIFT,
                                     *([keys.RANKING_PERFORMANCE] if config.rankers else [])],
        metadata={"dagster/table_name": STORE, "dagster/column_schema": table_schema(TABLES[STORE][0])},
    )
    def evaluation_store(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        with fail_fast(), warehouse.connect_lake() as con:
            run = write_store(con, cfg, days, days_with_label_refresh(days, cfg))
            # the rankers are in every shard: the first reports them
            rankers = (read_windows(con, run.closed, [r.id for r in cfg.rankers])
                       if cfg.rankers and cfg.owns_shared else None)
        reports = write_reports(run.frame, cfg, run.closed, run.pictures, rankers)
        for model_id, why in run.notes.items():
            context.log.warning(f"evaluation store: model {model_id}: {why}")
        add_partition_metadata(context, {day: {"windows_closed": sum(w.end == day for w in run.closed)}
                                         for day in days})
        latest = latest_windows(run.frame, cfg)
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(run.frame), "windows": len(run.windows),
            "windows_closed": dg.MetadataValue.json([w.key for w in run.closed]), "reports_written": len(reports),
            "seconds": round(run.seconds, 2),
            "latest_windows": dg.MetadataValue.md(frame_markdown(latest, limit=40) if len(latest) else "none"),
            "window_pictures": len(run.pictures),
            "multivariate_windows_drifted": multivariate_drifted(run.frame),
            "drifted_window_features": dg.MetadataValue.md(
                frame_markdown(run.pictures.sort_values("evidence", ascending=False)[PICTURES_SHOWN], limit=40)
                if len(run.pictures) else "none"),
            "notes": dg.MetadataValue.md(markdown_table(["model", "note"], sorted(run.notes.items()))
                                         if run.notes else "none"),
        })

    return dg.Definitions(assets=[daily_profiles, evaluation_store, _segment_drift(config, partitions)],
                          asset_checks=[_window_check(config, partitions)])


def _segment_drift(config: MonitorConfig, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """monitoring.segment_drift, from the daily profiles (evaluation/segment_drift.py)."""

    @dg.asset(
        key=keys.SEGMENT_DRIFT,
        description="Per model, day, segment and feature: the segment's drift verdict from that day's stored segment "
                    "profile (every version merged; no rescan) against the segment's own reference profile, or the "
                    "whole model's when the reference holds fewer than `segments.min_rows` of its rows "
                    "(`reference_source`), decided as the window drift decides, with the false-alarm rate "
                    f"controlled across the model-day's segments and features (Benjamini-Hochberg at {ALPHA_DRIFT}; "
                    "a distance over its threshold must also pass its test on the same counts). Segments under "
                    "`segments.min_rows` rows that day are listed (`judged` false), not judged.",
        group_name=GROUP_METRICS, kinds={"python", "duckdb"}, owners=OWNERS,
        partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY, deps=[keys.DAILY_PROFILES],  # lake only
        metadata={"dagster/table_name": SEGMENT_DRIFT,
                  "dagster/column_schema": table_schema(TABLES[SEGMENT_DRIFT][0])},
    )
    def segment_drift(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        with fail_fast(), warehouse.connect_lake() as con:
            frame, notes = write_segment_drift(con, cfg, days)
        for model_id, why in notes.items():
            context.log.warning(f"model {model_id}: segment drift not computed ({why})")
        of_day = by_day(frame, days)
        add_partition_metadata(context, {day: _drift_day_metadata(of_day[day]) for day in days})
        shown = worst_drift(frame)
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "segmented_models": sum(1 for m in cfg.models if m.segments.by),
            "models_not_judged": dg.MetadataValue.md("\n".join(f"- {m}: {why}" for m, why in notes.items())
                                                     or "none"),
            "worst_segments": dg.MetadataValue.md(frame_markdown(shown[DRIFT_SHOWN]) if len(shown) else "none"),
        })

    return segment_drift


def _drift_day_metadata(day: pd.DataFrame) -> dict:
    """A day's segment drift for the UI: segments (of every model) judged and too small, segments with drifted
    features, drifted segment-features, the worst first."""
    judged = day[day.judged.fillna(False).astype(bool)] if len(day) else day
    drifted = judged[judged.drifted.fillna(False).astype(bool)] if len(judged) else judged

    def segments(rows: pd.DataFrame) -> int:  # models share segment names (market=DE): count model-segments
        return len(rows[["model_id", "segment"]].drop_duplicates()) if len(rows) else 0

    shown = worst_drift(day)
    return {"segments_judged": segments(judged),
            "segments_too_small": int(len(day) - len(judged)),
            "segments_drifted": segments(drifted),
            "features_drifted": int(len(drifted)),
            "worst_segments": dg.MetadataValue.md(frame_markdown(shown[DRIFT_SHOWN]) if len(shown) else "none")}


def _window_check(config: MonitorConfig, partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    spec = dg.AssetCheckSpec(
        WINDOW_CHECK, asset=keys.EVALUATION_STORE, partitions_def=partitions,
        description="For each evaluation window that closed on the day, per model (every version together): warns "
                    "when the main metric is below `min_metric_ratio` of the reference's (from 100 labelled rows), "
                    "a feature's window drift is over its threshold, a fairness disparity is beyond its bound "
                    "beyond chance, or the window's multivariate drift reaches its calibrated threshold (as "
                    "multivariate_drift_within_threshold judges a day); per segment (from `segments.min_rows` "
                    "labelled rows), when its main metric is below `min_metric_ratio` of its reference's beyond "
                    "sampling error (Benjamini-Hochberg at 0.05 across the window's segments) or a feature drifted "
                    "(adjusted across the window's segments and features, as segment drift decides); per ranker, "
                    "when its main metric is below its floor beyond sampling error (one-sided p < 0.05) or its "
                    "popularity concentration is above 1.25 x the reference's. The message names the window, the "
                    "failing segments, and points to the report.")

    @dg.multi_asset_check(name="evaluation_window_checks", specs=[spec], retry_policy=IO_RETRY)
    def evaluation_window_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        days = run_days(context)
        windows = closed_windows(config, days)
        with fail_fast(), warehouse.connect_lake() as con:
            frame = read_windows(con, windows, [*config.model_ids, *(r.id for r in config.rankers)])
        failures = window_failures(frame, config, windows)
        yield from partition_check_results(context, spec, days, failures, judged_counts(frame, windows, days))

    return evaluation_window_checks

