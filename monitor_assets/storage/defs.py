"""Dagster wiring of the storage layer: weekly maintenance of the Delta lake (compaction and vacuum).

Every daily run rewrites partitions, so each table gathers small files and unreferenced old versions; the
`lake_maintenance` asset compacts the former and deletes the latter once no version younger than the
retention uses them (time travel within the retention keeps working)."""

from __future__ import annotations

import dagster as dg

from monitor_assets import keys
from monitor_assets.config import MonitorConfig
from monitor_assets.constants import DUCKDB_POOL, OWNERS
from monitor_assets.storage.lake import Lake
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.wiring import IO_RETRY, markdown_table

GROUP_STORAGE = "storage"
LAKE_MAINTENANCE_JOB = "lake_maintenance_job"
LAKE_MAINTENANCE_SCHEDULE = "lake_maintenance_schedule"
LAKE_MAINTENANCE_CRON = "0 3 * * 0"  # Sundays 03:00, between two daily runs (06:00)
# Files no version of the last week uses are deleted; a reader older than that would miss them.
RETENTION_HOURS = 168.0


def maintenance_metadata(report: list[dict], retention_hours: float) -> dict:
    """What a person wants to see after a maintenance: per-table files before/after, and the totals."""
    columns = ["table", "files_before", "files_after", "files_compacted", "files_vacuumed", "seconds"]
    rows = sorted(([r[c] for c in columns] for r in report), key=lambda r: (-r[4], -r[3], r[0]))
    return {
        "tables": len(report),
        "retention_hours": retention_hours,
        "files_before": sum(r["files_before"] for r in report),
        "files_after": sum(r["files_after"] for r in report),
        "files_compacted": sum(r["files_compacted"] for r in report),
        "files_vacuumed": sum(r["files_vacuumed"] for r in report),
        "seconds": round(sum(r["seconds"] for r in report), 3),
        "per_table": dg.MetadataValue.md(markdown_table(columns, rows, limit=50)),
    }


def build_storage_definitions(config: MonitorConfig) -> tuple[list[dg.AssetsDefinition], list, list]:
    """The maintenance asset, its job (that asset only) and its weekly schedule."""

    @dg.asset(
        key=keys.LAKE_MAINTENANCE,
        description=f"Weekly upkeep of the Delta lake: compacts each table's small files and deletes the files "
                    f"no version of the last {RETENTION_HOURS:g} hours uses. Rows are unchanged.",
        group_name=GROUP_STORAGE, kinds={"deltalake"}, owners=OWNERS,
        retry_policy=IO_RETRY, pool=DUCKDB_POOL,
    )
    def lake_maintenance(warehouse: WarehouseResource) -> dg.MaterializeResult:
        report = Lake(warehouse.lake_path).maintain(RETENTION_HOURS)
        metadata = maintenance_metadata(report, RETENTION_HOURS)
        damaged = [line for row in report for line in row.get("problems", [])]
        if damaged:
            # The other tables were compacted; a damaged one is not silently skipped.
            raise dg.Failure(
                description=f"{len(damaged)} damaged lake files, their tables not compacted (re-run their days, or "
                            f"python -m monitor_assets.storage.maintenance repair); first: {damaged[0]}",
                metadata={**metadata, "damaged_files": dg.MetadataValue.md("\n".join(f"* {d}" for d in damaged))},
                allow_retries=False)
        return dg.MaterializeResult(metadata=metadata)

    job = dg.define_asset_job(LAKE_MAINTENANCE_JOB, selection=dg.AssetSelection.assets(lake_maintenance),
                              description="Compacts and vacuums the Delta lake's tables.")
    schedule = dg.ScheduleDefinition(name=LAKE_MAINTENANCE_SCHEDULE, job=job, cron_schedule=LAKE_MAINTENANCE_CRON,
                                     execution_timezone="UTC")
    return [lake_maintenance], [job], [schedule]
