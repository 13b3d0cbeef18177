"""Anomalies, threshold evaluation into `monitoring.alerts`, and the asset checks users see in the UI."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from monitor_assets import alerting as A
from monitor_assets.assets.common import (
    IO_RETRY,
    daily_partitions,
    day_label,
    days_with_label_refresh,
    frame_markdown,
    markdown_table,
    run_days,
    table_schema,
)
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_ALERTING, OWNERS
from monitor_assets.resources.warehouse import WarehouseResource
from monitor_assets.stats.anomaly import find_anomalies
from monitor_assets.warehouse import replace_partitions_from_frame

# Which asset each threshold check is about (its result shows on that asset in the UI).
CHECK_TARGETS = {
    A.PERFORMANCE: "performance_daily", A.LATENCY: "performance_daily", A.ERROR_RATE: "performance_daily",
    A.VOLUME: "performance_daily", A.DRIFT: "feature_drift", A.FAIRNESS: "fairness", A.ANOMALIES: "anomaly_report",
}
ALERT_COLUMNS = {"partition_date": "DATE", "model_id": "VARCHAR", "check_name": "VARCHAR", "severity": "VARCHAR",
                 "value": "DOUBLE", "threshold": "DOUBLE", "message": "VARCHAR", "status": "VARCHAR (open, resolved)",
                 "first_seen": "TIMESTAMP", "last_seen": "TIMESTAMP"}


def check_result(failures: list[dict], severity: dg.AssetCheckSeverity, evaluated: int,
                 asset_key: dg.AssetKey | None = None, check_name: str | None = None,
                 **extra) -> dg.AssetCheckResult:
    """One check result with the breaches in the shape the alert sensor reads: a `failures` list of
    {partition_date, model_id, check_name, severity, value, threshold, message}, a markdown table, and
    the first breach's observed value, threshold and reason."""
    failures = [{k: (str(pd.Timestamp(v).date()) if k == "partition_date" else v) for k, v in f.items()
                 if k != "passed"} for f in failures]
    worst = failures[0] if failures else None
    return dg.AssetCheckResult(
        asset_key=asset_key, check_name=check_name, passed=not failures, severity=severity,
        metadata={
            "evaluated": evaluated, "failed": len(failures),
            "observed_value": float(worst["value"]) if worst is not None else None,
            "threshold": float(worst["threshold"]) if worst is not None else None,
            "reason": worst["message"] if worst is not None else "all within threshold",
            "breaches": dg.MetadataValue.md(markdown_table(
                ["day", "model", "severity", "value", "threshold", "message"],
                [(f["partition_date"], f["model_id"], f["severity"], f["value"], f["threshold"], f["message"])
                 for f in failures]) if failures else "none"),
            "failures": dg.MetadataValue.json(json.loads(json.dumps(failures, default=str))),
            **extra,
        })


def build_alerting_assets(config: MonitorConfig, upstream: dict[str, dg.AssetKey]) -> list:
    partitions = daily_partitions(config)

    @dg.asset(
        key=dg.AssetKey(["monitoring", "anomaly_report"]),
        description="Unusual days in the metric history: a robust z-score (median and MAD of the trailing "
                    "window, weekend-aware) per model and metric; rows in `monitoring.anomalies` and a markdown "
                    "report `anomaly_report.md` in the reports folder.",
        group_name=GROUP_ALERTING, kinds={"duckdb", "python"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, pool=DUCKDB_POOL,
        deps=[upstream["history"]],
        metadata={"dagster/table_name": "monitoring.anomalies", "dagster/column_schema": table_schema({
            "partition_date": "DATE", "model_id": "VARCHAR", "metric": "VARCHAR", "segment": "VARCHAR",
            "value": "DOUBLE", "expected": "DOUBLE", "robust_z": "DOUBLE", "direction": "VARCHAR (up, down)",
            "computed_at": "TIMESTAMP"})},
    )
    def anomaly_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        first = min(days) - dt.timedelta(days=config.anomaly_window_days)
        with warehouse.connect() as con:
            history = con.execute("""SELECT partition_date, model_id, metric, segment, value FROM monitoring.history
                                     WHERE partition_date BETWEEN ? AND ? AND segment = ''""",
                                  [first, max(days)]).df()
            found = find_anomalies(history, days, config.anomaly_window_days, config.anomaly_threshold)
            replace_partitions_from_frame(con, "monitoring.anomalies", days, found)
            report = con.execute("""SELECT partition_date, model_id, metric, value, expected, robust_z, direction
                                    FROM monitoring.anomalies ORDER BY partition_date, model_id, metric""").df()
        path = Path(config.reports_dir) / "anomaly_report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = ["# Anomaly report", "",
                f"Robust z-score against the trailing {config.anomaly_window_days} days, threshold "
                f"{config.anomaly_threshold}.", "",
                frame_markdown(report, limit=500) if len(report) else "No anomalies."]
        path.write_text("\n".join(text) + "\n")
        return dg.MaterializeResult(metadata={
            "days": day_label(days), "anomalies_in_run": len(found), "dagster/row_count": len(report),
            "report_path": dg.MetadataValue.path(str(path)),
            "anomalies": dg.MetadataValue.md(frame_markdown(found) if len(found) else "none"),
        })

    @dg.asset(
        key=dg.AssetKey(["monitoring", "alerts"]),
        description="One row per day, model and failed check (performance vs baseline, latency and error-rate "
                    "SLAs, logging volume, drift share, demographic parity, anomalies) with value, threshold, "
                    "message, status (open/resolved), first_seen and last_seen. Re-runs update rows; a check "
                    "that passes again resolves its alert.",
        group_name=GROUP_ALERTING, kinds={"duckdb"}, owners=OWNERS, partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(), retry_policy=IO_RETRY, pool=DUCKDB_POOL,
        deps=[upstream[k] for k in ("performance_daily", "feature_drift", "fairness")] + [anomaly_report.key],
        metadata={"dagster/table_name": "monitoring.alerts", "dagster/column_schema": table_schema(ALERT_COLUMNS)},
    )
    def alerts(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = days_with_label_refresh(run_days(context), config)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        with warehouse.connect() as con:
            evaluated = A.evaluate(con, config, days)
            counts = A.upsert_alerts(con, evaluated, now)
            open_alerts = con.execute("""SELECT partition_date, model_id, check_name, severity, value, threshold,
                                                message FROM monitoring.alerts WHERE status = 'open'
                                         ORDER BY partition_date DESC, severity, model_id""").df()
        return dg.MaterializeResult(metadata={
            "days": day_label(days), **{f"alerts_{k}": v for k, v in counts.items()},
            "open_alerts": len(open_alerts), "dagster/row_count": len(open_alerts),
            "open_alerts_preview": dg.MetadataValue.md(frame_markdown(open_alerts) if len(open_alerts) else "none"),
        })

    @dg.multi_asset_check(
        name="threshold_checks",
        specs=[dg.AssetCheckSpec(name, asset=dg.AssetKey(["monitoring", target]), additional_deps=[alerts.key],
                                 partitions_def=partitions,
                                 description=f"`{name}` for every model and day of the run (thresholds from the "
                                             "config); fails with the breaches, values and thresholds in metadata.")
                   for name, target in CHECK_TARGETS.items()],
        retry_policy=IO_RETRY, pool=DUCKDB_POOL,
    )
    def threshold_checks(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource):
        days = days_with_label_refresh(run_days(context), config)
        with warehouse.connect() as con:
            evaluated = A.evaluate(con, config, days)
        for name, target in CHECK_TARGETS.items():
            part = evaluated[evaluated.check_name == name]
            failed = part[~part.passed]
            level = dg.AssetCheckSeverity.ERROR if (failed.severity == "ERROR").any() else dg.AssetCheckSeverity.WARN
            yield check_result(failed.to_dict("records"), level, len(part),
                               asset_key=dg.AssetKey(["monitoring", target]), check_name=name)

    return [anomaly_report, alerts], [threshold_checks]


def build_quality_checks(config: MonitorConfig, predictions: dg.AssetKey) -> list:
    partitions = daily_partitions(config)

    @dg.asset_check(asset=predictions, name="predictions_are_complete_and_valid", blocking=True,
                    partitions_def=partitions,
                    description="Great Expectations on the loaded predictions of each day: required fields "
                                "present, prediction ids unique, model ids known, classifier scores in [0, 1], "
                                "latency non-negative, timestamps inside the day, known categories. Blocks "
                                "downstream assets when it fails.")
    def predictions_are_complete_and_valid(context, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from monitor_assets.quality import predictions_frame, validate_predictions

        days = run_days(context)
        failures, checked, rows = [], 0, 0
        with warehouse.connect() as con:
            for day in days:
                frame = predictions_frame(con, config, day)
                rows += len(frame)
                if frame.empty:
                    continue
                for outcome in validate_predictions(config, day, frame):
                    checked += 1
                    if not outcome.success:
                        failures.append({
                            "partition_date": day, "model_id": "all models",
                            "check_name": "predictions_are_complete_and_valid", "severity": "ERROR",
                            "value": outcome.unexpected_count, "threshold": 0,
                            "message": f"{outcome.expectation} on {outcome.column}: {outcome.unexpected_count} "
                                       f"unexpected values, e.g. {', '.join(outcome.sample) or 'n/a'}"})
        return check_result(failures, dg.AssetCheckSeverity.ERROR, checked, days=len(days), rows_validated=rows)

    @dg.asset_check(asset=predictions, name="prediction_volume_within_expected_range", partitions_def=partitions,
                    description="Each model's daily volume within 50%..200% of its trailing 7-day average, and "
                                "the share of quarantined records under 5%. Warns; does not block.")
    def prediction_volume_within_expected_range(context, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        days = run_days(context)
        with warehouse.connect() as con:
            table = con.execute("""
                WITH vol AS (SELECT d, m, (SELECT count(*) FROM raw.predictions p
                                           WHERE p.partition_date = d AND p.model_id = m) AS n
                             FROM unnest(range(?::DATE - INTERVAL 7 DAY, ?::DATE + INTERVAL 1 DAY, INTERVAL 1 DAY)) t(d),
                                  unnest(?::VARCHAR[]) u(m))
                SELECT d::DATE AS day, m AS model_id, n,
                       (SELECT avg(n) FROM vol v2 WHERE v2.m = v.m AND v2.d < v.d AND v2.d >= v.d - INTERVAL 7 DAY
                        AND v2.n > 0) AS trailing
                FROM vol v WHERE d::DATE IN (SELECT unnest(?::DATE[]))""",
                                [min(days), max(days), config.model_ids, days]).df()
            quarantine = con.execute("""SELECT partition_date, sum(records_quarantined) / nullif(sum(records_read), 0)
                                        FROM raw.ingestion_log WHERE source = 'predictions'
                                        AND partition_date IN (SELECT unnest(?::DATE[])) GROUP BY 1""",
                                     [days]).fetchall()
        table["ratio"] = table.n / table.trailing
        odd = table[table.trailing.notna() & ((table.ratio < 0.5) | (table.ratio > 2.0))]
        failures = [{"partition_date": r.day, "model_id": r.model_id,
                     "check_name": "prediction_volume_within_expected_range", "severity": "WARN",
                     "value": float(r.ratio), "threshold": 0.5 if r.ratio < 0.5 else 2.0,
                     "message": f"{r.n} predictions, {r.ratio:.0%} of the trailing 7-day mean {r.trailing:.0f}"}
                    for r in odd.itertuples()]
        failures += [{"partition_date": d, "model_id": "all models",
                      "check_name": "prediction_volume_within_expected_range", "severity": "WARN",
                      "value": float(share), "threshold": 0.05,
                      "message": f"{share:.1%} of the day's prediction records were quarantined"}
                     for d, share in quarantine if share is not None and share > 0.05]
        return check_result(failures, dg.AssetCheckSeverity.WARN, len(table) + len(quarantine),
                            min_ratio=float(table.ratio.min()) if table.ratio.notna().any() else None)

    return [predictions_are_complete_and_valid, prediction_volume_within_expected_range]
