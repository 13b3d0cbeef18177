"""Helpers every asset module uses: the partitions, the dates of a run, markdown tables, retries."""


import datetime as dt
import math
import warnings
from collections.abc import Sequence

import dagster as dg

from monitor_assets.config import MonitorConfig
from monitor_assets.warehouse import date_range

# backfill_policy is marked beta (single-run backfills keep 30 days to one run) and partitioned check
# specs preview; both are what we want, so their warnings are noise at every load.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

# Files and the database can fail transiently (a lock, a slow disk): back off and retry.
IO_RETRY = dg.RetryPolicy(max_retries=3, delay=1.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def daily_partitions(config: MonitorConfig) -> dg.DailyPartitionsDefinition:
    end = (config.end_date + dt.timedelta(days=1)).isoformat() if config.end_date else None
    return dg.DailyPartitionsDefinition(start_date=config.start_date.isoformat(), end_date=end)


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
