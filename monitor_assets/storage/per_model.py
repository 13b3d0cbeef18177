"""Work done model by model (or model-day by model-day) on one DuckDB connection, a few at once, and the one-line
error a model gets when its own work fails: shared by every stage that isolates models (drift, fairness,
multivariate drift, pictures of drift, daily profiles). No Dagster here."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import duckdb

from monitor_assets.storage.warehouse import close, thread_cursor

# Models worked on at once (threads); MONITOR_ANALYSIS_WORKERS overrides (1: one after the other).
ANALYSIS_WORKERS = int(os.environ.get("MONITOR_ANALYSIS_WORKERS") or min(4, os.cpu_count() or 1))
# Errors a retry can heal (a lock, the disk): they fail the step, whose retry policy takes them. Any other
# error working on one model is recorded for that model and the others go on.
TRANSIENT_ERRORS = (duckdb.IOException, OSError, MemoryError)


def map_models(con: duckdb.DuckDBPyConnection, work: Callable, items: list, workers: int | None = None) -> Iterator:
    """`work(cursor, item)` for each item (a model, or a (model, day)), a few at once, each thread on its own
    cursor (DuckDB, numpy and scipy's kernels work outside the GIL); results in the items' order."""
    workers = min(workers or ANALYSIS_WORKERS, len(items))
    if workers <= 1:
        yield from (work(con, item) for item in items)
        return
    local, cursors = threading.local(), []

    def one(item):
        if not hasattr(local, "cursor"):
            local.cursor = thread_cursor(con)
            cursors.append(local.cursor)
        return work(local.cursor, item)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="per-model") as pool:
            yield from pool.map(one, items)
    finally:
        for cursor in cursors:
            close(cursor)


def error_message(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type and message, whitespace folded, at most `limit` characters."""
    text = " ".join(str(exc).split()) or "no message"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 1] + "…"
