"""Helpers every asset module uses: the partitions, the dates of a run, markdown tables, retries."""


import contextlib
import datetime as dt
import json
import math
import typing
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import dagster as dg
import duckdb
import pandas as pd

from monitor_assets.config import MonitorConfig, parse_shard
from monitor_assets.constants import SHARD_TAG
from monitor_assets.formatting import fmt_day
from monitor_assets.storage.warehouse import date_range

# backfill_policy is marked beta (single-run backfills keep 30 days to one run) and partitioned check
# specs preview; both are what we want, so their warnings are noise at every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

# Files and the database can fail transiently (a lock, a slow disk): back off and retry. Errors no retry
# can heal are raised through `fail_fast`, which turns them into a Failure the policy does not retry.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Deterministic: a bad config or reference (ConfigError, the reference's ReferenceError and ReferenceTooSmall
# and the readers' SourceError are ValueErrors), a missing column or table, a value of the wrong type, and DuckDB
# out of its own memory limit (the same data under the same limit fails again: MONITOR_STAGING_MEMORY, or the
# warehouse's limit, must change). A lock or an I/O error (duckdb.IOException, OSError) stays transient.
DETERMINISTIC_ERRORS = (ValueError, duckdb.BinderException, duckdb.CatalogException, duckdb.ConversionException,
                        duckdb.ParserException, duckdb.TypeMismatchException, duckdb.OutOfMemoryException)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Inside a step: an error that cannot heal by retrying fails the step at once, with its one-line
    message and no retry (`dagster.Failure(allow_retries=False)`); any other error goes to the step's
    retry policy as before."""
    try:
        yield
    except dg.Failure:
        raise
    except DETERMINISTIC_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise dg.Failure(description=message, allow_retries=False,
                         metadata={"error": type(exc).__name__, "retried": "no: retrying cannot fix this"}) from exc


def daily_partitions(config: MonitorConfig) -> dg.DailyPartitionsDefinition:
    end = (config.end_date + dt.timedelta(days=1)).isoformat() if config.end_date else None
    return dg.DailyPartitionsDefinition(start_date=config.start_date.isoformat(), end_date=end)


def in_shard(context, config: MonitorConfig) -> MonitorConfig:
    """The config a per-model step works on: its run's shard's (run tag `monitor_assets/shard`), else
    every model's."""
    tag = context.run.tags.get(SHARD_TAG)
    if not tag:
        return config
    index, count = parse_shard(tag)
    return config.for_shard(index, count) if count > 1 else config


def run_days(context) -> list[dt.date]:
    """The days this run covers: one partition, or a whole range in a single-run backfill."""
    return [dt.date.fromisoformat(k) for k in context.partition_keys]


def days_with_label_refresh(days: list[dt.date], config: MonitorConfig) -> list[dt.date]:
    """Days whose label-based figures may change: the run's days and `label_delay_days` before them."""
    first = max(config.start_date, min(days) - dt.timedelta(days=config.label_delay_days))
    return date_range(first, max(days))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence], limit: int = 15) -> str:
    """A small markdown table for asset metadata (no extra dependency)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in list(rows)[:limit]]
    if len(rows) > limit:
        lines.append(f"\n… {len(rows) - limit} more rows")
    return "\n".join(lines)


def frame_markdown(df, limit: int = 15) -> str:
    return markdown_table(list(df.columns), list(df.itertuples(index=False, name=None)), limit)


def table_schema(columns: dict[str, str]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, type_) for name, type_ in columns.items()])


def day_label(days: list[dt.date]) -> str:
    return str(days[0]) if len(days) == 1 else f"{days[0]}..{days[-1]} ({len(days)} days)"


def should_log_progress(i: int, total: int) -> bool:
    """About ten progress lines per long backfill, not one per day."""
    return total > 1 and (i == total or i % max(1, total // 10) == 0)


def rounded(x, digits: int = 4):
    """A number for reading in the UI: `digits` significant digits; None for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(f"{float(x):.{digits}g}") if isinstance(x, float) else x


def by_day(frame: pd.DataFrame, days: list[dt.date], column: str = "partition_date") -> dict[dt.date, pd.DataFrame]:
    """`frame`'s rows of each of `days` (the frame's empty slice for a day without rows), split in one pass:
    filtering a backfill's frame once per day for its metadata cost a year's backfill seconds a step."""
    empty = frame.iloc[0:0]
    if not len(frame):
        return dict.fromkeys(days, empty)
    dates = pd.to_datetime(frame[column]).dt.date.to_numpy(object)
    found = {d: frame.iloc[rows] for d, rows in pd.Series(dates).groupby(dates, sort=False).indices.items()}
    return {day: found.get(day, empty) for day in days}


def add_partition_metadata(context: dg.AssetExecutionContext, by_day: Mapping[dt.date, dict]) -> None:
    """Each partition of the run gets its own figures (a single-run backfill would otherwise attach the
    run's one metadata dict to every day, and the UI's plots would go flat)."""
    run_keys = set(context.partition_keys)
    for day, metadata in by_day.items():
        if str(day) in run_keys:
            context.add_asset_metadata({k: rounded(v) if isinstance(v, float) else v for k, v in metadata.items()},
                                       partition_key=str(day))


def check_metadata(failures: list[dict], evaluated: int, **extra) -> dict:
    """A check's structured metadata: counts, the worst breach's value, threshold and reason, a table
    of breaches and the `failures` list the alert sensor reads (partition_date, model_id, check_name,
    severity, value, threshold, message, details)."""
    worst = failures[0] if failures else None
    return {
        "evaluated": evaluated, "failed": len(failures),
        "observed_value": rounded(float(worst["value"])) if worst is not None and worst["value"] is not None else None,
        "threshold": rounded(float(worst["threshold"])) if worst is not None and worst["threshold"] is not None else None,
        "reason": worst["message"] if worst is not None else "all within threshold",
        "breaches": dg.MetadataValue.md(markdown_table(
            ["day", "model", "severity", "value", "threshold", "message"],
            [(f["partition_date"], f["model_id"], f["severity"], f["value"], f["threshold"], f["message"])
             for f in failures]) if failures else "none"),
        "failures": dg.MetadataValue.json(json.loads(json.dumps(failures, default=str))),
        **extra,
    }


# The type of `AssetCheckEvaluation.target_materialization_data`: Dagster does not export it by name, so it
# is read from the public class's field annotation (`X | None`) rather than imported from a private module.
_TARGET_DATA = typing.get_args(typing.get_type_hints(dg.AssetCheckEvaluation)["target_materialization_data"])[0]


def latest_materializations(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                            days: Sequence[dt.date]) -> dict[dt.date, object]:
    """Each day's latest materialization of the asset, as the target an evaluation judged: the UI counts
    a check result for a partition only while it targets that partition's latest materialization."""
    by_name = {str(day): day for day in days}
    if not by_name:
        return {}
    # Two queries, not one a day (a query costs ~20 ms; 30 days times a dozen checks was 2 s of the demo).
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(by_name))
    if not latest:
        return {}
    partition_of = {storage_id: name for name, storage_id in latest.items()}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=sorted(partition_of)), limit=len(partition_of)).records
    return {by_name[partition_of[r.storage_id]]: _TARGET_DATA(run_id=r.event_log_entry.run_id, storage_id=r.storage_id,
                                                             timestamp=r.timestamp)
            for r in records if r.storage_id in partition_of}


def partition_check_results(context, spec: dg.AssetCheckSpec, days: Sequence[dt.date], failures: list[dict],
                            evaluated: Mapping[dt.date, int], targets: Mapping[dt.date, object] | None = None
                            ) -> Iterator:
    """One evaluation per day, recorded on that partition (so a check's Partitions tab shows which day
    passed and which failed), then the check's output so blocking and downstream steps see it ran.
    `targets` (from `latest_materializations`) may be shared by checks of the same asset."""
    if targets is None:
        targets = latest_materializations(context.instance, spec.asset_key, days)
    by_day: dict[str, list[dict]] = defaultdict(list)
    for f in failures:
        f = {**f, "partition_date": fmt_day(f["partition_date"])}
        if isinstance(f.get("details"), str):
            f["details"] = json.loads(f["details"] or "{}")
        by_day[f["partition_date"]].append(f)
    for day in days:
        items = by_day.get(str(day), [])
        level = (dg.AssetCheckSeverity.ERROR if any(f["severity"] == "ERROR" for f in items)
                 else dg.AssetCheckSeverity.WARN)
        yield dg.AssetCheckEvaluation(asset_key=spec.asset_key, check_name=spec.name, passed=not items,
                                      severity=level, partition=str(day), blocking=spec.blocking,
                                      metadata=check_metadata(items, evaluated.get(day, 0)),
                                      target_materialization_data=targets.get(day))
    yield dg.Output(None, output_name=spec.get_python_identifier())
