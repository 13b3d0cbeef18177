"""Drift and bias: reference profiles (once per reference version), daily feature drift, fairness."""

import dagster as dg
import pandas as pd

from monitor_assets.analysis.logic import (
    drift_day_summary,
    drift_inputs,
    error_message,
    fairness_day_summary,
    fairness_frame,
    isolated_drift_days,
    isolated_fairness,
    map_models,
    profile_models,
    reference_disparities,
    reference_versions,
    save_profiles,
    stored_baselines,
    stored_versions,
)
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_BIAS, GROUP_DRIFT, OWNERS
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.reads import held_models, model_day_batches
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import replace_partitions_from_frame
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
    run_days,
    should_log_progress,
    table_schema,
)

PROFILES_PER_SAVE = 50  # reference profiles stored per transaction
DRIFT_COLUMNS = {**TABLES["monitoring.feature_drift"][0], "role": "VARCHAR (feature, prediction, label)"}
FAIRNESS_COLUMNS = TABLES["monitoring.fairness"][0]
PROFILE_COLUMNS = {"model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR", "kind": "VARCHAR",
                   "reference_version": "VARCHAR", "n": "BIGINT", "profile": "JSON", "computed_at": "TIMESTAMP"}


def _metadata(values: dict, limit: int = 10) -> dict:
    """A day's summary as UI metadata: frames become markdown tables ('none' when empty)."""
    return {k: dg.MetadataValue.md(frame_markdown(v, limit=limit) if len(v) else "none")
            if isinstance(v, pd.DataFrame) else v for k, v in values.items()}


def _bullets(lines: list[str]) -> dg.MetadataValue:
    return dg.MetadataValue.md("\n".join(f"- {line}" for line in lines) if lines else "none")


def build_reference_profiles(config: MonitorConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["monitoring", "reference_profiles"]),
        description="Per model, the training reference set validated (rows whose label or score is missing, "
                    "NaN or not a number are counted and left out, with a warning; under 100 usable rows it is "
                    "refused) and profiled once per reference version (file hash + feature spec + profile format): "
                    "fine histograms and quantile bins for numeric features, category "
                    "frequencies, moments, and baseline metric values. Daily drift never rescans the reference.",
        group_name=GROUP_DRIFT, kinds={"duckdb", "python"}, owners=OWNERS, retry_policy=IO_RETRY,
        metadata={"dagster/table_name": "monitoring.reference_profiles",
                  "dagster/column_schema": table_schema(PROFILE_COLUMNS)},
    )
    def reference_profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        rows, warnings = [], []
        with fail_fast(), warehouse.connect_lake() as con:
            versions, errors = reference_versions(cfg.models)  # a missing reference file is that model's error
            stored = stored_versions(con)
            todo = [m for m in cfg.models if m.id in versions and stored.get(m.id) != versions[m.id]]
            rows += [(m.id, versions[m.id], "reused", None, None) for m in cfg.models
                     if m.id in versions and m not in todo]
            done = []  # saved a few dozen models at a time: a failure later keeps what was profiled
            for i, (model, result) in enumerate(profile_models(con, todo, min_group_size=cfg.min_group_size), 1):
                if isinstance(result, Exception):
                    errors[model.id] = error_message(result)
                else:
                    profiles, baselines, check, importance = result
                    done.append((model, versions[model.id], profiles, baselines, importance))
                if len(done) == PROFILES_PER_SAVE or (i == len(todo) and done):
                    save_profiles(con, done)
                    done = []
                if isinstance(result, Exception):
                    continue
                rows.append((model.id, versions[model.id], "computed", check.n_usable, check.n_left_out))
                if should_log_progress(i, len(todo)):
                    context.log.info(f"profiled {i}/{len(todo)} references ({model.id})")
                if check.warning:
                    warnings.append(f"{model.id} ({model.reference_path}): {check.warning}")
                    context.log.warning(f"model {model.id}: reference {model.reference_path}: {check.warning}")
            if errors:  # recorded where the drift step reads it; every other model was profiled
                save_profiles(con, [], errors)
            for model_id, message in errors.items():
                rows.append((model_id, versions.get(model_id), "failed", None, None))
                context.log.warning(f"model {model_id}: reference not profiled: {message}")
            base = stored_baselines(con, cfg.model_ids)
        table = pd.DataFrame(rows, columns=["model_id", "reference_version", "profile", "rows_used", "rows_left_out"])
        return dg.MaterializeResult(metadata={
            "models": dg.MetadataValue.md(frame_markdown(table)),
            "baselines": dg.MetadataValue.md(frame_markdown(base, limit=60)),
            "profiles_computed": int((table.profile == "computed").sum()),
            "reference_rows_left_out": int(table.rows_left_out.fillna(0).sum()),
            "reference_warnings": _bullets(warnings),
            "reference_errors": len(errors),
            "reference_error_details": _bullets([f"{m}: {e}" for m, e in errors.items()]),
        })

    return reference_profiles


def build_feature_drift(config: MonitorConfig, partitions: dg.PartitionsDefinition,
                        deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["monitoring", "feature_drift"]),
        description="Per day, model and feature (plus the model output and, once labelled, the label): drift "
                    "method, statistic, p-value where the method has one (and Benjamini-Hochberg adjusted across "
                    "the model's features), threshold, drifted flag, current vs reference summary, and the "
                    "missing and unseen-category shares as signals of their own (all missing / all unseen said "
                    "in `message`). `monitoring.drift_summary` holds the drift share and dataset-drift flag.",
        group_name=GROUP_DRIFT, kinds={"duckdb", "scipy"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, deps=deps,
        metadata={"dagster/table_name": "monitoring.feature_drift",
                  "dagster/column_schema": table_schema(DRIFT_COLUMNS)},
    )
    def feature_drift(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)  # label drift changes as labels arrive
        rows, summaries = [], []
        with fail_fast(), warehouse.connect_lake() as con:
            profiles, importance, reference_errors = drift_inputs(con, cfg.models)
            held = held_models(con, refreshed)  # failed the data-quality suite
            # Per model, its days (those that passed the data-quality suite) in batches: one read each.
            work_items = []
            for m in cfg.models:
                mine = [day for day in refreshed if m.id not in held[day]]
                work_items += [(m, batch) for batch in model_day_batches(con, m.id, mine)]
            # One model-day's error is recorded on its summary row; the other models and days are analysed.
            work = lambda c, item: isolated_drift_days(c, cfg, item[0], item[1], profiles[item[0].id],  # noqa: E731
                                                       importance[item[0].id], reference_errors.get(item[0].id))
            for i, found in enumerate(map_models(con, work, work_items), 1):
                for out, summary in found:
                    rows += out
                    summaries.append(summary)
                    if summary["analysis_error"]:
                        context.log.warning(f"model {summary['model_id']} on {summary['partition_date']}: "
                                            f"{summary['analysis_error']}")
                if should_log_progress(i, len(work_items)):
                    context.log.info(f"drift: {i}/{len(work_items)} model-day batches done")
            frame, summary = pd.DataFrame(rows), pd.DataFrame(summaries)
            replace_partitions_from_frame(con, "monitoring.feature_drift", refreshed, frame, cfg.written_models)
            replace_partitions_from_frame(con, "monitoring.drift_summary", refreshed, summary, cfg.written_models)
        rows_of, summary_of = by_day(frame, days), by_day(summary, days)
        add_partition_metadata(context, {day: _metadata(drift_day_summary(rows_of[day], summary_of[day]))
                                         for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "drifted_rows": int(frame.drifted.sum()) if len(frame) else 0})

    return feature_drift


def build_fairness(config: MonitorConfig, partitions: dg.PartitionsDefinition,
                   deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=dg.AssetKey(["monitoring", "fairness"]),
        description="Per day, model, sensitive attribute and group: count, selection rate, true and false "
                    "positive rate, accuracy (MAE for regressors); per attribute: demographic parity difference "
                    "and ratio, equalized odds difference, the four-fifths rule, their significance tests and "
                    "the most and least favoured groups with their sizes. Groups under the minimum size (30 by "
                    "default) are reported but left out of the disparities. Definitions are fairlearn's.",
        group_name=GROUP_BIAS, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, deps=deps,
        metadata={"dagster/table_name": "monitoring.fairness",
                  "dagster/column_schema": table_schema(FAIRNESS_COLUMNS)},
    )
    def fairness(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)
        with fail_fast(), warehouse.connect_lake() as con:
            held = held_models(con, refreshed)  # failed the data-quality suite
            # a model's days read together (`model_day_batches`), the models a few at once
            todo = [(m, batch) for m in cfg.models
                    for batch in model_day_batches(con, m.id, [d for d in refreshed if m.id not in held[d]])]
            reference = {m.id: reference_disparities(con, m.id) for m in cfg.models}
            # One model-day's error becomes a row with its reason; the other models are analysed.
            frame, errors = fairness_frame([t for tables in map_models(
                con, lambda c, item: isolated_fairness(c, cfg, *item, reference[item[0].id]), todo) for t in tables])
            for r in errors.itertuples():
                context.log.warning(f"model {r.model_id} on {r.partition_date}: {r.analysis_error}")
            replace_partitions_from_frame(con, "monitoring.fairness", refreshed, frame, cfg.written_models)
        rows_of, errors_of = by_day(frame, days), by_day(errors, days)
        add_partition_metadata(context, {day: _metadata(fairness_day_summary(rows_of[day], errors_of[day]))
                                         for day in days})
        return dg.MaterializeResult(metadata={"days": day_label(days), "dagster/row_count": len(frame)})

    return fairness


def build_analysis_assets(config: MonitorConfig, predictions: dg.AssetKey, labels: dg.AssetKey) -> list:
    partitions = daily_partitions(config)
    reference_profiles = build_reference_profiles(config)
    return [reference_profiles, build_feature_drift(config, partitions, [predictions, labels, reference_profiles.key]),
            build_fairness(config, partitions, [predictions, labels])]
