"""Anomalies, threshold evaluation into `monitoring.alerts`, and the asset checks users see in the UI."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd

from monitor_assets import keys
from monitor_assets.alerting import rules as A
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import (
    DUCKDB_POOL,
    GROUP_ALERTING,
    OWNERS,
)
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    fail_fast,
    frame_markdown,
    latest_materializations,
    partition_check_results,
    run_days,
    table_schema,
)

# Which asset each threshold check is about (its result shows on that asset in the UI).
CHECK_TARGETS = {
    A.PERFORMANCE: keys.PERFORMANCE_DAILY, A.LATENCY: keys.PERFORMANCE_DAILY, A.ERROR_RATE: keys.PERFORMANCE_DAILY,
    A.VOLUME: keys.PERFORMANCE_DAILY, A.DRIFT: keys.FEATURE_DRIFT, A.FAIRNESS: keys.FAIRNESS,
    A.ANOMALIES: keys.ANOMALY_REPORT, A.FEATURE_VALUES: keys.FEATURE_DRIFT, A.EQUALIZED_ODDS: keys.FAIRNESS,
    A.PREDICTION_DRIFT: keys.FEATURE_DRIFT, A.KEY_FEATURE_DRIFT: keys.FEATURE_DRIFT,
    A.ESTIMATED_PERFORMANCE: keys.ESTIMATED_PERFORMANCE, A.SEGMENT_PERFORMANCE: keys.SEGMENT_PERFORMANCE,
    A.MULTIVARIATE_DRIFT: keys.MULTIVARIATE_DRIFT, A.SEGMENT_DRIFT: keys.SEGMENT_DRIFT,
    A.SEGMENT_ESTIMATED_PERFORMANCE: keys.ESTIMATED_PERFORMANCE,
}
ALERT_COLUMNS = {"partition_date": "DATE", "model_id": "VARCHAR", "check_name": "VARCHAR", "severity": "VARCHAR",
                 "value": "DOUBLE", "threshold": "DOUBLE", "message": "VARCHAR", "status": "VARCHAR (open, resolved)",
                 "first_seen": "TIMESTAMP", "last_seen": "TIMESTAMP"}


def build_alerting_definitions(config: MonitorConfig) -> dg.Definitions:
    """Anomalies, the alerts table and the threshold checks, after history and the daily figures."""
    partitions = daily_partitions(config)
    return dg.Definitions(assets=[_anomaly_report_asset(config, partitions), _alerts_asset(config, partitions)],
                          asset_checks=[_threshold_checks(config, partitions)])


def _anomaly_report_asset(config: MonitorConfig, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.ANOMALY_REPORT,
        description="Unusual days in the metric history: a robust z-score (median and MAD of the trailing "
                    "window, weekend-aware) per model and metric; rows in `monitoring.anomalies` and a markdown "
                    "report `anomaly_report.md` in the reports folder.",
        group_name=GROUP_ALERTING, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, pool=DUCKDB_POOL,
        deps=[keys.HISTORY],
        metadata={"dagster/table_name": "monitoring.anomalies", "dagster/column_schema": table_schema({
            "partition_date": "DATE", "model_id": "VARCHAR", "metric": "VARCHAR", "segment": "VARCHAR",
            "value": "DOUBLE", "expected": "DOUBLE", "robust_z": "DOUBLE", "direction": "VARCHAR (up, down)",
            "computed_at": "TIMESTAMP"})},
    )
    def anomaly_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        with fail_fast(), warehouse.connect() as con:
            found, report = A.store_anomalies(con, config, days)
        path = Path(config.reports_dir) / "anomaly_report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = ["# Anomaly report", "",
                f"Robust z-score against the trailing {config.anomaly_window_days} days, threshold "
                f"{config.anomaly_threshold}.", "",
                frame_markdown(report, limit=500) if len(report) else "No anomalies."]
        path.write_text("\n".join(text) + "\n")
        found_days = pd.to_datetime(found.partition_date).dt.date if len(found) else pd.Series(dtype=object)
        add_partition_metadata(context, {day: {
            "anomalies": int((found_days == day).sum()),
            "unusual_metrics": dg.MetadataValue.md(frame_markdown(
                found[found_days == day].drop(columns=["partition_date"], errors="ignore"), limit=10)
                if (found_days == day).any() else "none")} for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "anomalies_in_run": len(found), "dagster/row_count": len(report),
            "report_path": dg.MetadataValue.path(str(path)),
            "anomalies": dg.MetadataValue.md(frame_markdown(found) if len(found) else "none"),
        })

    return anomaly_report


def _alerts_asset(config: MonitorConfig, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=keys.ALERTS,
        description="One row per day, model and failed check (main metric vs baseline, latency and error-rate "
                    "SLAs, logging volume, drift share, missing or unseen feature values, demographic parity, "
                    "equalized odds, anomalies, rankers' baseline and item drift) with value, threshold, "
                    "message, status (open/resolved), first_seen and last_seen. Re-runs update rows; a check "
                    "that passes again resolves its alert.",
        group_name=GROUP_ALERTING, kinds={"duckdb"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, pool=DUCKDB_POOL,
        deps=[keys.PERFORMANCE_DAILY, keys.FEATURE_DRIFT, keys.FAIRNESS, keys.ANOMALY_REPORT, keys.ESTIMATED_PERFORMANCE,
              keys.SEGMENT_PERFORMANCE, keys.SEGMENT_DRIFT, keys.MULTIVARIATE_DRIFT,
              *([keys.RANKING_PERFORMANCE] if config.rankers else [])],
        metadata={"dagster/table_name": "monitoring.alerts", "dagster/column_schema": table_schema(ALERT_COLUMNS)},
    )
    def alerts(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with fail_fast(), warehouse.connect() as con:
            evaluated = A.evaluate(con, config, days)
            counts = A.upsert_alerts(con, evaluated, now)
            open_alerts = A.open_alerts(con)
        failing = evaluated[~evaluated.passed].assign(day=lambda e: pd.to_datetime(e.partition_date).dt.date)
        add_partition_metadata(context, {day: {
            "failed_checks": int((failing.day == day).sum()),
            "failed_errors": int(((failing.day == day) & (failing.severity == "ERROR")).sum()),
            "failures": dg.MetadataValue.md(frame_markdown(
                failing[failing.day == day][["model_id", "check_name", "severity", "message"]], limit=10)
                if (failing.day == day).any() else "none")} for day in days})
        return dg.MaterializeResult(metadata={
            "days": day_label(days), **{f"alerts_{k}": v for k, v in counts.items()},
            "open_alerts": len(open_alerts), "dagster/row_count": len(open_alerts),
            "open_alerts_preview": dg.MetadataValue.md(frame_markdown(open_alerts) if len(open_alerts) else "none"),
        })

    return alerts


def _threshold_checks(config: MonitorConfig, partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    specs = {name: dg.AssetCheckSpec(name, asset=target, additional_deps=[keys.ALERTS],
                                     partitions_def=partitions,
                                     description=f"`{name}` for every model and day of the run (thresholds from "
                                                 "the config); fails with the breaches, values and thresholds in "
                                                 "metadata.")
             for name, target in CHECK_TARGETS.items()}

    # Subsettable: a run may hold only some of the checks' assets (an asset-graph backfill runs the assets that
    # do not wait for the unpartitioned reference profiles first); it then evaluates the checks it selected.
    @dg.multi_asset_check(name="threshold_checks", specs=list(specs.values()), retry_policy=IO_RETRY,
                          pool=DUCKDB_POOL, can_subset=True)
    def threshold_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        selected = {name: spec for name, spec in specs.items() if spec.key in context.selected_asset_check_keys}
        days = days_with_label_refresh(run_days(context), config)
        with fail_fast(), warehouse.connect() as con:
            evaluated = A.evaluate(con, config, days)
        evaluated["day"] = pd.to_datetime(evaluated.partition_date).dt.date
        # Four checks judge performance_daily: look its materializations up once, not once per check.
        targets = {key: latest_materializations(context.instance, key, days)
                   for key in {spec.asset_key for spec in selected.values()}}
        for name, spec in selected.items():
            part = evaluated[evaluated.check_name == name]
            failed = part[~part.passed].drop(columns=["passed", "day"]).to_dict("records")
            yield from partition_check_results(context, spec, days, failed, part.groupby("day").size().to_dict(),
                                               targets[spec.asset_key])

    return threshold_checks
