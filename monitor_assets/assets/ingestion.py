"""Ingestion: each day's prediction logs, labels, interactions and sales into `raw.*` tables.

Every record is loaded or quarantined with a reason; metadata shows read = loaded + quarantined.
"""


import datetime as dt
import time

import dagster as dg

from monitor_assets.assets.common import (
    IO_RETRY,
    add_partition_metadata,
    daily_partitions,
    day_label,
    markdown_table,
    run_days,
    should_log_progress,
    table_schema,
)
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, GROUP_INGESTION, OWNERS
from monitor_assets.ingest import ingest_day, quarantine_preview
from monitor_assets.resources.warehouse import WarehouseResource

DESCRIPTIONS = {
    "predictions": "Prediction logs (structured JSON lines, CSV or Parquet), one row per served request, with "
                   "one typed column per configured feature (named after its field, e.g. `features.amount`). "
                   "Bad records go to raw.quarantine with file, line and reason.",
    "labels": "Ground-truth labels, partitioned by the day they arrived (usually 1-3 days after the "
              "prediction). Labels for unknown predictions are quarantined.",
    "interactions": "User interactions (views, clicks, add-to-cart, purchases) per day.",
    "sales": "Order lines per day: quantity, unit price and revenue.",
}
SCHEMAS = {
    "predictions": {"partition_date": "DATE", "model_id": "VARCHAR", "prediction_id": "VARCHAR", "ts": "TIMESTAMPTZ",
                    "model_version": "VARCHAR", "latency_ms": "DOUBLE", "status": "VARCHAR", "is_ok": "BOOLEAN",
                    "score": "DOUBLE", "source_file": "VARCHAR", "line_no": "BIGINT"},
    "labels": {"partition_date": "DATE", "model_id": "VARCHAR", "prediction_id": "VARCHAR",
               "prediction_date": "DATE", "label": "DOUBLE", "source_file": "VARCHAR", "line_no": "BIGINT"},
    "interactions": {"partition_date": "DATE", "session_id": "VARCHAR", "user_id": "VARCHAR", "ts": "TIMESTAMPTZ",
                     "event": "VARCHAR", "product_id": "VARCHAR", "from_recommendation": "BOOLEAN"},
    "sales": {"partition_date": "DATE", "order_id": "VARCHAR", "ts": "TIMESTAMPTZ", "user_id": "VARCHAR",
              "product_id": "VARCHAR", "quantity": "DOUBLE", "unit_price": "DOUBLE", "revenue": "DOUBLE"},
}


def _ingestion_asset(config: MonitorConfig, source: str, deps: list) -> dg.AssetsDefinition:
    @dg.asset(
        name=source,
        key_prefix=["raw"],
        description=DESCRIPTIONS[source],
        group_name=GROUP_INGESTION,
        kinds={"duckdb", "python"},
        owners=OWNERS,
        partitions_def=daily_partitions(config),
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=IO_RETRY,
        pool=DUCKDB_POOL,
        deps=deps,
        metadata={"dagster/table_name": f"raw.{source}",
                  "dagster/column_schema": table_schema(SCHEMAS[source])},
    )
    def _asset(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        days = run_days(context)
        totals = {"files": 0, "read": 0, "loaded": 0, "quarantined": 0, "corrected": 0}
        reasons: dict[str, int] = {}
        missing_days, per_day = [], []
        started = time.perf_counter()
        with warehouse.connect() as con:
            for i, day in enumerate(days, 1):
                result = ingest_day(con, config, source, day)
                if not result.files:
                    missing_days.append(str(day))
                for k, v in (("files", len(result.files)), ("read", result.read), ("loaded", result.loaded),
                             ("quarantined", result.quarantined), ("corrected", result.labels_corrected)):
                    totals[k] += v
                for reason, n in result.reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + n
                per_day.append((str(day), len(result.files), result.read, result.loaded, result.quarantined,
                                result.labels_corrected))
                if should_log_progress(i, len(days)):
                    rate = totals["read"] / max(time.perf_counter() - started, 1e-9)
                    context.log.info(f"{source}: {i}/{len(days)} days done ({day}), {rate:,.0f} records/s")
            preview = quarantine_preview(con, source, days)
            silent: list[str] = []
            if source == "predictions":
                # A configured model that logged nothing on a day is an incident, not a zero.
                silent = [f"{d}: {m}" for d, m in con.execute(
                    """SELECT d, m FROM unnest(?::DATE[]) AS t(d), unnest(?::VARCHAR[]) AS u(m)
                       WHERE NOT EXISTS (SELECT 1 FROM raw.predictions p
                                         WHERE p.partition_date = d AND p.model_id = m)
                       ORDER BY d, m""", [days, config.model_ids]).fetchall()]
        assert totals["read"] == totals["loaded"] + totals["quarantined"]  # nothing is lost
        metadata = {
            "days": day_label(days),
            "files": totals["files"],
            "records_read": totals["read"],
            "records_loaded": totals["loaded"],
            "records_quarantined": totals["quarantined"],
            "dagster/row_count": totals["loaded"],
            "quarantine_share": totals["quarantined"] / totals["read"] if totals["read"] else 0.0,
            "quarantine_reasons": dg.MetadataValue.json(reasons),
            "days_without_files": dg.MetadataValue.json(missing_days),
            "per_day": dg.MetadataValue.md(markdown_table(
                ["day", "files", "read", "loaded", "quarantined", "labels corrected"], per_day, limit=40)),
        }
        if preview:
            metadata["quarantine_preview"] = dg.MetadataValue.md(markdown_table(
                ["day", "file", "line", "reason", "raw record"], preview))
        if source == "labels":
            metadata["labels_corrected"] = totals["corrected"]  # a later file changed an earlier label
        if source == "predictions":
            metadata["models_without_records"] = dg.MetadataValue.json(silent)
            for item in silent:
                context.log.warning(f"no prediction records for model {item}")
        if missing_days:
            context.log.warning(f"{source}: no input file for {', '.join(missing_days)}")
        # Each day's own counts on its partition (the totals above stay on the run's other keys).
        add_partition_metadata(context, {dt.date.fromisoformat(d): {
            "files": files, "records_read": read, "records_loaded": loaded, "records_quarantined": quarantined,
            "dagster/row_count": loaded, "quarantine_share": quarantined / read if read else 0.0,
            "days": d, **({"labels_corrected": corrected} if source == "labels" else {})}
            for d, files, read, loaded, quarantined, corrected in per_day})
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def build_ingestion_assets(config: MonitorConfig) -> list[dg.AssetsDefinition]:
    predictions = _ingestion_asset(config, "predictions", [])
    # Labels are matched to logged predictions, so they load after them.
    labels = _ingestion_asset(config, "labels", [predictions.key])
    assets = [predictions, labels]
    if config.interactions:
        assets.append(_ingestion_asset(config, "interactions", []))
    if config.sales:
        assets.append(_ingestion_asset(config, "sales", []))
    return assets
