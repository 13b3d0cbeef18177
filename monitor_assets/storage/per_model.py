"""Work done model by model (or model-day by model-day) on one DuckDB connection, a few at once, and the one-line
error a model gets when its own work fails: shared by every stage that isolates models (drift, fairness,
multivariate drift, pictures of drift, daily profiles). No Dagster here."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import duckdb

from monitor_assets.storage.warehouse import close, thread_cursor

T = TypeVar("T")

# Models worked on at once (threads); MONITOR_ANALYSIS_WORKERS overrides (1: one after the other).
ANALYSIS_WORKERS = int(os.environ.get("MONITOR_ANALYSIS_WORKERS") or min(4, os.cpu_count() or 1))
# Errors a retry can heal (a lock, the disk): they fail the step, whose retry policy takes them. Any other
# error working on one model is recorded for that model and the others go on.
TRANSIENT_ERRORS = (duckdb.IOException, OSError, MemoryError)
# Fewer items than this run here, one after the other: starting worker processes costs a second or two.
PROCESS_MIN_ITEMS = 8
# Models whose fitted references and samples a fleet-wide step holds at once (about 2 MB each: a reference's
# 5,000 rows and a day's 1,000-row sample); the step goes through the fleet this many at a time, so its memory
# does not grow with the number of models.
MODELS_AT_ONCE = 50


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


def model_chunks(items: list[T], size: int | None = None) -> Iterator[list[T]]:
    """`items` in consecutive slices of at most `size` (MODELS_AT_ONCE), in order."""
    size = size or MODELS_AT_ONCE
    for start in range(0, len(items), size):
        yield items[start:start + size]


@contextmanager
def _without_main() -> Iterator[None]:
    """Worker processes started inside do not import this process's `__main__`: multiprocessing does by default
    (its `if __name__ == "__main__"` block aside), so a script without that guard ran again in every worker,
    and `python -m monitor_assets.run_pipeline` imported Dagster and the definitions in each (seconds, and
    memory, for nothing the work needs)."""
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation(name):
        data = original(name)
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
        return data

    spawn.get_preparation_data = preparation
    try:
        yield
    finally:
        spawn.get_preparation_data = original


def map_processes(work: Callable, args_of: Callable, items: list, workers: int | None = None,
                  min_items: int | None = None, preload: tuple[str, ...] = (),
                  on_death: Callable[[object, str], object] | None = None) -> Iterator:
    """`work(*args_of(item))` for each item in worker processes; results in the items' order. For CPU work that
    holds the GIL (scikit-learn's small tree fits, which threads run one at a time). `args_of` runs here, in
    order (it may read DuckDB), at most two items a worker ahead, so memory holds a few items' arguments, never
    all. The workers start from a fresh interpreter (forkserver), never a copy of this process's threads and
    locks; `work` must be a module's top-level function, and the modules in `preload` (its own, say) are
    imported once by the server the workers fork from (this process's forkserver: the first call's list holds
    for its life). This process's `__main__` is not imported there (`_without_main`). An exception is raised
    here as it would be without workers. A worker that dies (the OOM killer, a crash in native code) breaks the
    pool and the items in flight: with `on_death`, each of those it took (not one that had finished) is run again
    alone in a fresh worker, and one that kills that worker too gets `on_death(item, why)` as its result (its own failure, recorded as
    the caller records one), while the others and the items after them go on in a new pool; without it, the
    step fails with BrokenProcessPool. One worker, or fewer than `min_items` (PROCESS_MIN_ITEMS) items: here,
    one after the other."""
    workers = min(workers or ANALYSIS_WORKERS, len(items))
    if workers <= 1 or len(items) < (PROCESS_MIN_ITEMS if min_items is None else min_items):
        yield from (work(*args_of(item)) for item in items)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    with _without_main(), ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
        pending: deque = deque()  # (item, its arguments, its future)

        def again(entry):
            """An item in flight when the pool broke: its result if it had one, else run alone."""
            item, args, future = entry
            if future.done() and not future.cancelled() and not isinstance(future.exception(), BrokenProcessPool):
                return entry  # finished (or failed on its own) before the break: kept as it is
            return item, args, _done(_alone(work, context, on_death, item, args))

        def result(entry):
            nonlocal pool
            try:
                return entry[2].result()
            except BrokenProcessPool:
                if on_death is None:
                    raise
            # The pool is gone with the items in flight: those it took run alone, then a new pool takes the rest.
            pool.shutdown(wait=False)
            first, *rest = [again(e) for e in (entry, *pending)]
            pending.clear()
            pending.extend(rest)
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=context))
            return first[2].result()

        for item in items:
            args = args_of(item)
            pending.append((item, args, pool.submit(work, *args)))
            if len(pending) >= 2 * workers:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())


def _alone(work: Callable, context, on_death: Callable, item, args: tuple):
    """`work(*args)` in a worker of its own: its result, or `on_death(item, why)` if that worker dies too."""
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(work, *args).result()
        except BrokenProcessPool:
            return on_death(item, "its worker process died (killed by the system, out of memory, or a crash in "
                                  "native code); the other items went on")


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def or_why(work: Callable[[], T], prefix: str = "") -> T | str:
    """`work()` for one model, or why it failed as one line (`error_message`, after `prefix: `), so the others go
    on; a transient error (TRANSIENT_ERRORS) is raised: the step's retry takes it."""
    try:
        return work()
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded for this model, the others are computed
        return f"{prefix}: {error_message(exc)}" if prefix else error_message(exc)


def error_message(exc: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type and message, whitespace folded, at most `limit` characters."""
    text = " ".join(str(exc).split()) or "no message"
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 1] + "…"
