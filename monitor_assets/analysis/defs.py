"""Drift and bias: reference profiles (once per reference version), daily feature drift, fairness."""

import dagster as dg
import pandas as pd

from monitor_assets.analysis.logic import (
    error_message,
    isolated_drift,
    isolated_fairness,
    load_importance,
    load_profiles,
    map_models,
    profile_errors,
    profile_models,
    reference_disparities,
    reference_version,
    save_profiles,
    stored_versions,
)
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import GROUP_BIAS, GROUP_DRIFT, OWNERS
from monitor_assets.ingestion.quality import held_models
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import replace_partitions_from_frame
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
    should_log_progress,
    table_schema,
)

PROFILES_PER_SAVE = 50  # reference profiles stored per transaction
DRIFT_COLUMNS = {**TABLES["monitoring.feature_drift"][0], "role": "VARCHAR (feature, prediction, label)"}
FAIRNESS_COLUMNS = TABLES["monitoring.fairness"][0]


def build_analysis_assets(config: MonitorConfig, predictions: dg.AssetKey, labels: dg.AssetKey) -> list:
    partitions = daily_partitions(config)

    @dg.asset(
        key=dg.AssetKey(["monitoring", "reference_profiles"]),
        description="Per model, the training reference set validated (rows whose label or score is missing, "
                    "NaN or not a number are counted and left out, with a warning; under 100 usable rows it is "
                    "refused) and profiled once per reference version (file hash + feature spec + profile format): "
                    "fine histograms and quantile bins for numeric features, category "
                    "frequencies, moments, and baseline metric values. Daily drift never rescans the reference.",
        group_name=GROUP_DRIFT, kinds={"duckdb", "python"}, owners=OWNERS, retry_policy=IO_RETRY,
        metadata={"dagster/table_name": "monitoring.reference_profiles",
                  "dagster/column_schema": table_schema({
                      "model_id": "VARCHAR", "feature": "VARCHAR", "role": "VARCHAR", "kind": "VARCHAR",
                      "reference_version": "VARCHAR", "n": "BIGINT", "profile": "JSON", "computed_at": "TIMESTAMP"})},
    )
    def reference_profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        rows, warnings, errors = [], [], {}
        with fail_fast(), warehouse.connect_lake() as con:
            versions = {}
            for m in cfg.models:  # a missing reference file is that model's error, not the step's
                try:
                    versions[m.id] = reference_version(m)
                except ValueError as exc:
                    errors[m.id] = error_message(exc)
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
            base = con.execute("SELECT model_id, metric, value FROM monitoring.reference_baselines "
                               "WHERE model_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY model_id, metric",
                               [cfg.model_ids]).df()
        table = pd.DataFrame(rows, columns=["model_id", "reference_version", "profile", "rows_used", "rows_left_out"])
        return dg.MaterializeResult(metadata={
            "models": dg.MetadataValue.md(frame_markdown(table)),
            "baselines": dg.MetadataValue.md(frame_markdown(base, limit=60)),
            "profiles_computed": int((table.profile == "computed").sum()),
            "reference_rows_left_out": int(table.rows_left_out.fillna(0).sum()),
            "reference_warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in warnings) if warnings else "none"),
            "reference_errors": len(errors),
            "reference_error_details": dg.MetadataValue.md("\n".join(f"- {m}: {e}" for m, e in errors.items())
                                                           if errors else "none"),
        })

    @dg.asset(
        key=dg.AssetKey(["monitoring", "feature_drift"]),
        description="Per day, model and feature (plus the model output and, once labelled, the label): drift "
                    "method, statistic, p-value where the method has one (and Benjamini-Hochberg adjusted across "
                    "the model's features), threshold, drifted flag, current vs reference summary, and the "
                    "missing and unseen-category shares as signals of their own (all missing / all unseen said "
                    "in `message`). `monitoring.drift_summary` holds the drift share and dataset-drift flag.",
        group_name=GROUP_DRIFT, kinds={"duckdb", "scipy"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY,
        deps=[predictions, labels, reference_profiles.key],
        metadata={"dagster/table_name": "monitoring.feature_drift",
                  "dagster/column_schema": table_schema(DRIFT_COLUMNS)},
    )
    def feature_drift(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)  # label drift changes as labels arrive
        rows, summaries = [], []
        with fail_fast(), warehouse.connect_lake() as con:
            profiles = {m.id: load_profiles(con, m.id) for m in cfg.models}
            importance = {m.id: load_importance(con, m.id) for m in cfg.models}
            reference_errors = profile_errors(con)
            held = held_models(con, refreshed)  # failed the data-quality suite
            for i, day in enumerate(refreshed, 1):
                todo = [m for m in cfg.models if m.id not in held[day]]
                # One model-day's error is recorded on its summary row; the other models are analysed.
                work = lambda c, m, day=day: isolated_drift(c, cfg, m, day, profiles[m.id], importance[m.id],  # noqa: E731
                                                            reference_errors.get(m.id))
                for out, summary in map_models(con, work, todo):
                    rows += out
                    summaries.append(summary)
                    if summary["analysis_error"]:
                        context.log.warning(f"model {summary['model_id']} on {day}: {summary['analysis_error']}")
                if should_log_progress(i, len(refreshed)):
                    context.log.info(f"drift: {i}/{len(refreshed)} days done ({day})")
            frame, summary = pd.DataFrame(rows), pd.DataFrame(summaries)
            replace_partitions_from_frame(con, "monitoring.feature_drift", refreshed, frame, cfg.written_models)
            replace_partitions_from_frame(con, "monitoring.drift_summary", refreshed, summary, cfg.written_models)
        by_day = {}
        for day in days:
            d_summary = summary[summary.partition_date == day] if len(summary) else summary
            d_rows = frame[frame.partition_date == day] if len(frame) else frame
            shares = d_summary.drift_share.dropna() if len(d_summary) else pd.Series(dtype=float)
            worst = (d_rows[d_rows.role == "feature"].sort_values(["drifted", "statistic"], ascending=False)
                     [["model_id", "feature", "method", "statistic", "threshold", "drifted", "current_summary",
                       "reference_summary"]] if len(d_rows) else d_rows)
            loud = (d_rows[(d_rows.role == "feature") & (d_rows.message.fillna("") != "")]
                    [["model_id", "feature", "message"]] if len(d_rows) else d_rows)
            failed = (d_summary[d_summary.analysis_error.notna()][["model_id", "analysis_error"]]
                      if len(d_summary) else d_summary)
            by_day[day] = {
                "models_not_analysed": len(failed),
                "analysis_errors": dg.MetadataValue.md(frame_markdown(failed, limit=10) if len(failed) else "none"),
                "features_all_missing": int(d_rows.all_missing.fillna(False).sum()) if len(d_rows) else 0,
                "features_all_unseen": int(d_rows.all_unseen.fillna(False).sum()) if len(d_rows) else 0,
                "missing_or_unseen": dg.MetadataValue.md(frame_markdown(loud, limit=10) if len(loud) else "none"),
                "max_drift_share": float(shares.max()) if len(shares) else None,
                "mean_drift_share": float(shares.mean()) if len(shares) else None,
                "models_with_dataset_drift": int(d_summary.dataset_drift.fillna(False).sum()) if len(d_summary) else 0,
                "drifted_features": int(d_rows[d_rows.role == "feature"].drifted.sum()) if len(d_rows) else 0,
                "most_drifted": dg.MetadataValue.md(frame_markdown(worst, limit=10) if len(worst) else "none"),
            }
        add_partition_metadata(context, by_day)
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "dagster/row_count": len(frame),
            "drifted_rows": int(frame.drifted.sum()) if len(frame) else 0})

    @dg.asset(
        key=dg.AssetKey(["monitoring", "fairness"]),
        description="Per day, model, sensitive attribute and group: count, selection rate, true and false "
                    "positive rate, accuracy (MAE for regressors); per attribute: demographic parity difference "
                    "and ratio, equalized odds difference, the four-fifths rule, their significance tests and "
                    "the most and least favoured groups with their sizes. Groups under the minimum size (30 by "
                    "default) are reported but left out of the disparities. Definitions are fairlearn's.",
        group_name=GROUP_BIAS, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY,
        deps=[predictions, labels],
        metadata={"dagster/table_name": "monitoring.fairness",
                  "dagster/column_schema": table_schema(FAIRNESS_COLUMNS)},
    )
    def fairness(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        cfg = in_shard(context, config)
        days = run_days(context)
        refreshed = days_with_label_refresh(days, cfg)
        with fail_fast(), warehouse.connect_lake() as con:
            held = held_models(con, refreshed)  # failed the data-quality suite
            todo = [(m, d) for d in refreshed for m in cfg.models if m.id not in held[d]]
            reference = {m.id: reference_disparities(con, m.id) for m in cfg.models}
            # One model-day's error becomes a row with its reason; the other models are analysed.
            parts = list(map_models(con, lambda c, item: isolated_fairness(c, cfg, *item, reference[item[0].id]),
                                    todo))
            parts = [p for p in parts if len(p)]
            frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            if len(frame):
                frame = frame.drop(columns=["selected", "tp", "fp", "fn", "tn", "abs_error"], errors="ignore")
            errors = (frame[frame.analysis_error.notna()] if "analysis_error" in frame
                      else frame.iloc[0:0])
            for r in errors.itertuples():
                context.log.warning(f"model {r.model_id} on {r.partition_date}: {r.analysis_error}")
            replace_partitions_from_frame(con, "monitoring.fairness", refreshed, frame, cfg.written_models)
        by_day = {}
        for day in days:
            d_rows = frame[frame.partition_date == day] if len(frame) else frame
            d_errors = errors[errors.partition_date == day] if len(errors) else errors
            d_rows = d_rows[d_rows.attribute.notna()] if len(d_rows) else d_rows
            per_attr = (d_rows.drop_duplicates(["model_id", "attribute"])
                        [["model_id", "attribute", "demographic_parity_ratio", "demographic_parity_p_value",
                          "most_favoured_group", "most_favoured_n", "least_favoured_group", "least_favoured_n",
                          "equalized_odds_difference", "equalized_odds_p_value", "passes_four_fifths"]]
                        .sort_values("demographic_parity_ratio") if len(d_rows) else d_rows)
            ratios = per_attr.demographic_parity_ratio.dropna() if len(per_attr) else pd.Series(dtype=float)
            odds = per_attr.equalized_odds_difference.dropna() if len(per_attr) else pd.Series(dtype=float)
            by_day[day] = {
                "models_not_analysed": len(d_errors),
                "analysis_errors": dg.MetadataValue.md(frame_markdown(d_errors[["model_id", "analysis_error"]],
                                                                      limit=10) if len(d_errors) else "none"),
                "lowest_demographic_parity_ratio": float(ratios.min()) if len(ratios) else None,
                "largest_equalized_odds_difference": float(odds.max()) if len(odds) else None,
                "attributes_below_four_fifths": int((ratios < 0.8).sum()),
                "worst_disparities": dg.MetadataValue.md(frame_markdown(per_attr, limit=10) if len(per_attr) else "none"),
            }
        add_partition_metadata(context, by_day)
        return dg.MaterializeResult(metadata={"days": day_label(days), "dagster/row_count": len(frame)})

    return [reference_profiles, feature_drift, fairness]
