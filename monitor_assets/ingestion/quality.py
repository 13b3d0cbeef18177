"""Data-quality suites for the loaded predictions, built from the config and run with Great Expectations 1.x.

Quarantine already keeps malformed records out; these suites guard what did load (a bug or a
schema change upstream shows here first): completeness of required fields, validity of scores,
latencies, model ids and categories, uniqueness of prediction ids, and timestamps inside the day.
GX is imported here only, when a check runs (its import takes seconds); it runs ephemeral, offline,
without progress bars.
"""

from __future__ import annotations

import datetime as dt
import functools
import queue
import threading
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.storage.reads import feature_columns
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import close, lake_of, thread_cursor


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str
    success: bool
    unexpected_count: int
    sample: list
    units: dict[tuple[dt.date, str | None], int]  # unexpected rows per (day, model id); None: no known model


# A validation batch holds several model-days (GX costs about 0.1 to 0.4 s a call, whatever its size), up
# to about this many rows, so memory holds a bounded slice however many models and days there are.
BATCH_ROWS = 250_000
# Logs of a day may straddle midnight by a little; anything further is a misfiled batch.
HOURS_INTO_DAY = (-2.0, 26.0)
TS_HOURS = "ts_hours_into_day"  # the suite's view of ts: hours after its day's midnight (UTC)


def _category_column(model_id: str, column: str) -> str:
    """Models may share a field name with different allowed values: each model's column is its own."""
    return f"{model_id} / {column}"


def _suite(config: MonitorConfig, models: list[ModelConfig]):
    """One suite for any days: the timestamp window is checked on hours into each row's own day."""
    import great_expectations as gx

    E = gx.expectations
    expectations = [
        E.ExpectColumnValuesToNotBeNull(column="prediction_id"),
        # Ids are unique within a model and day (two models may score the same request; a repeat on a
        # later day is quarantined at ingestion).
        E.ExpectCompoundColumnsToBeUnique(column_list=["model_id", "partition_date", "prediction_id"]),
        E.ExpectColumnValuesToNotBeNull(column="model_id"),
        E.ExpectColumnValuesToBeInSet(column="model_id", value_set=config.model_ids),
        E.ExpectColumnValuesToNotBeNull(column="ts"),
        E.ExpectColumnValuesToBeBetween(column=TS_HOURS, min_value=HOURS_INTO_DAY[0], max_value=HOURS_INTO_DAY[1]),
        E.ExpectColumnValuesToBeBetween(column="latency_ms", min_value=0, mostly=1.0),
    ]
    if any(m.is_classifier for m in models):
        expectations.append(E.ExpectColumnValuesToBeBetween(column="classifier_score", min_value=0, max_value=1))
    for model in models:
        for column, allowed in _allowed_categories(config, model).items():
            expectations.append(E.ExpectColumnValuesToBeInSet(column=_category_column(model.id, column),
                                                              value_set=allowed))
    return gx.ExpectationSuite(name="predictions", expectations=expectations)


def _allowed_categories(config: MonitorConfig, model: ModelConfig) -> dict[str, list[str]]:
    columns = feature_columns(config)
    return {columns[(f.source, f.type)]: list(f.allowed_values) for f in model.features if f.allowed_values}


def predictions_frame(con, config: MonitorConfig, units: list[tuple[dt.date, ModelConfig]]) -> pd.DataFrame:
    """The loaded predictions of these (day, model) units: classifier scores in a column of their own, each
    model's categorical columns under its own name (`<model> / <column>`), and ts as hours into its day."""
    days: dict[str, list[dt.date]] = {}
    models = {}
    for day, model in units:
        days.setdefault(model.id, []).append(day)
        models[model.id] = model
    parts = []
    for model_id, model in models.items():
        table = lake_of(con).model_relation(con, model_id)
        extra = "".join(f", {quote_ident(c)} AS {quote_ident(_category_column(model_id, c))}"
                        for c in _allowed_categories(config, model))
        score = "score" if model.is_classifier else "NULL::DOUBLE"
        listed = ", ".join(f"DATE '{d.isoformat()}'" for d in days[model_id])
        parts.append(f"""
            SELECT partition_date, prediction_id, model_id, ts, latency_ms, score, {score} AS classifier_score,
                   epoch(ts - partition_date::TIMESTAMPTZ) / 3600 AS {TS_HOURS}{extra}
            FROM {table} WHERE partition_date IN ({listed})""")
    frame = con.execute(" UNION ALL BY NAME ".join(parts)).df()
    # A few distinct ids: as categories, GX's null, set and uniqueness tests on them cost a third less.
    frame["model_id"] = frame["model_id"].astype("category")
    return frame


def validation_batches(units: list, sizes: list[int], limit: int = BATCH_ROWS) -> list[list]:
    """Units (model-days) in order, grouped so a batch holds at most `limit` rows (a bigger one goes alone);
    units without rows are left out."""
    batches, current, size = [], [], 0
    for unit, n in zip(units, sizes, strict=True):
        if not n:
            continue
        if current and size + n > limit:
            batches.append(current)
            current, size = [], 0
        current.append(unit)
        size += n
    return batches + ([current] if current else [])


_GX_LOCK = threading.Lock()


def _batch_definition():
    """One ephemeral GX context for the process: building it costs more than validating a batch. Threads
    that ask at once wait for the first to build it."""
    with _GX_LOCK:
        return _build_batch_definition()


@functools.cache
def _build_batch_definition():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (context.data_sources.add_pandas("warehouse").add_dataframe_asset("predictions")
            .add_batch_definition_whole_dataframe("batch"))


def validate_predictions(config: MonitorConfig, frame: pd.DataFrame,
                         models: list[ModelConfig] | None = None) -> list[ExpectationOutcome]:
    """Run the suite of `models` (default: every model) on `frame`; each outcome counts its unexpected rows
    per (day, model), so a failure holds only the model-days whose rows failed."""
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": frame})
    suite = _suite(config, list(models or config.models))
    # Most batches pass: a pass/fail answer costs about half of a full one. A failed batch is validated
    # again with COMPLETE, which lists the unexpected rows, so a failure is routed to the model-days whose
    # rows failed.
    result = batch.validate(suite, result_format={"result_format": "BOOLEAN_ONLY"})
    if result.success:
        return [ExpectationOutcome(r.expectation_config.type, "", True, 0, [], {}) for r in result.results]
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    known = set(config.model_ids)
    days = pd.to_datetime(frame.partition_date).dt.date
    outcomes = []
    for r in result.results:
        index = r.result.get("unexpected_index_list") or []
        hit = pd.DataFrame({"d": days.reindex(index), "m": frame.model_id.reindex(index).where(
            lambda m: m.isin(known))})
        units = hit.groupby(["d", "m"], dropna=False, observed=True).size()
        kwargs = r.expectation_config.kwargs
        column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or [])
        outcomes.append(ExpectationOutcome(
            r.expectation_config.type, str(column), bool(r.success),
            int(r.result.get("unexpected_count") or 0),
            [str(v) for v in (r.result.get("partial_unexpected_list") or [])[:5]],
            {(d, None if pd.isna(m) else str(m)): int(n) for (d, m), n in units.items()}))
    return outcomes


@dataclass
class Verdict:
    """One model-day's data-quality verdict: failed model-days are held out of the downstream work."""
    partition_date: dt.date
    model_id: str
    rows: int
    passed: bool
    unexpected: int  # unexpected values over the failed expectations
    message: str  # what failed, one line per expectation; empty when passed


def _described(column: str, model_id: str) -> str:
    column = column.removeprefix(f"{model_id} / ")
    return "ts (hours after its day's midnight, UTC)" if column == TS_HOURS else column


class _Findings:
    """Unexpected values per model-day, gathered batch by batch."""

    def __init__(self):
        self.problems: dict[tuple, list[str]] = {}
        self.unexpected: dict[tuple, int] = {}

    def add(self, outcomes: list[ExpectationOutcome]) -> None:
        for outcome in outcomes:
            if outcome.success:
                continue
            for (day, model_id), n in outcome.units.items():
                if model_id is None:  # rows of no known model: nothing of a model's to hold
                    continue
                sample = outcome.sample if len(outcome.units) == 1 else []  # else maybe another's
                self.unexpected[(day, model_id)] = self.unexpected.get((day, model_id), 0) + n
                self.problems.setdefault((day, model_id), []).append(
                    f"{outcome.expectation} on {_described(outcome.column, model_id)}: {n} unexpected value(s)"
                    + (f", e.g. {', '.join(sample)}" if sample else ""))

    def store(self, con, days: list[dt.date], counts: dict[tuple, int], models: list[str] | None = None) -> list[Verdict]:
        """One verdict per model-day with rows, written to `monitoring.quality_verdicts` (those days' verdicts
        of `models` replaced; None: every model's)."""
        verdicts = [Verdict(d, m, n, (d, m) not in self.problems, self.unexpected.get((d, m), 0),
                            "; ".join(self.problems.get((d, m), [])))
                    for (d, m), n in sorted(counts.items()) if n]
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        rows = pa.table({"partition_date": pa.array([v.partition_date for v in verdicts], pa.date32()),
                         "model_id": pa.array([v.model_id for v in verdicts], pa.string()),
                         "rows": pa.array([v.rows for v in verdicts], pa.int64()),
                         "passed": pa.array([v.passed for v in verdicts], pa.bool_()),
                         "unexpected": pa.array([v.unexpected for v in verdicts], pa.int64()),
                         "message": pa.array([v.message for v in verdicts], pa.string()),
                         "validated_at": pa.array([now] * len(verdicts), pa.timestamp("us"))})
        lake = lake_of(con)
        lake.replace("monitoring.quality_verdicts", rows, days, models=models)
        lake.refresh(con, "monitoring.quality_verdicts")
        return verdicts


def _validate_batch(con, config: MonitorConfig, batch: list[tuple[dt.date, ModelConfig]]) -> list[ExpectationOutcome]:
    frame = predictions_frame(con, config, batch)
    return validate_predictions(config, frame, list({m.id: m for _, m in batch}.values()))


def validate_days(con, config: MonitorConfig, days: list[dt.date], batch_rows: int = BATCH_ROWS) -> list[Verdict]:
    """Validate every model's loaded predictions of `days`, a bounded batch of model-days at a time, and store
    one verdict per model-day with rows in `monitoring.quality_verdicts` (those days' verdicts replaced)."""
    counts = {(d, m): n for d, m, n in con.execute(
        f"SELECT partition_date, model_id, count(*) FROM ({lake_of(con).predictions_union(con, config.model_ids)}) "
        "WHERE partition_date IN (SELECT unnest(?::DATE[])) GROUP BY 1, 2", [list(days)]).fetchall()}
    units = [(d, m) for d in days for m in config.models]
    findings = _Findings()
    sizes = [counts.get((d, m.id), 0) for d, m in units]
    for batch in validation_batches(units, sizes, batch_rows):
        findings.add(_validate_batch(con, config, batch))
    known = set(config.model_ids)
    return findings.store(con, days, {k: n for k, n in counts.items() if k[1] in known}, config.written_models)


class StreamingValidator:
    """`validate_days` while the predictions load: each model-day is queued as it lands (`add`, from any
    thread) and validated on a thread of its own, a batch of about `batch_rows` rows at a time, so the
    suite's pandas work overlaps the readers' DuckDB work instead of following it. `finish` waits for the
    last batch and stores the verdicts of `days`; the verdicts equal `validate_days`'s (the batches'
    makeup does not change them)."""

    def __init__(self, con, config: MonitorConfig, batch_rows: int = BATCH_ROWS):
        self.con, self.config, self.batch_rows = con, config, batch_rows
        self.models = {m.id: m for m in config.models}
        self.counts: dict[tuple, int] = {}
        self.findings = _Findings()
        self.error: BaseException | None = None
        self.cursor = thread_cursor(con)  # made here: the thread only uses it
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="gx-validate", daemon=True)
        self.thread.start()

    def add(self, day: dt.date, model_id: str, rows: int) -> None:
        self.queue.put((day, model_id, rows))

    def _run(self) -> None:
        pending, size, done = [], 0, False
        try:
            _batch_definition()  # GX's import and context, while the first files are read
            while (item := self.queue.get()) is not None:
                day, model_id, rows = item
                if not rows or model_id not in self.models:
                    continue
                self.counts[(day, model_id)] = rows
                pending.append((day, self.models[model_id]))
                size += rows
                if size >= self.batch_rows:
                    self.findings.add(_validate_batch(self.cursor, self.config, pending))
                    pending, size = [], 0
            done = True
            if pending:
                self.findings.add(_validate_batch(self.cursor, self.config, pending))
        except BaseException as exc:  # raised again by finish, in the step's thread
            self.error = exc
            while not done and self.queue.get() is not None:  # up to finish's sentinel, unless it came
                pass

    def finish(self, days: list[dt.date]) -> list[Verdict]:
        self.abandon()
        if self.error is not None:
            raise self.error
        return self.findings.store(self.con, days, self.counts, self.config.written_models)

    def abandon(self) -> None:
        """Validate what is queued, stop the thread and close its cursor; nothing is stored (after a failed
        load, or through `finish`)."""
        self.queue.put(None)  # the thread reads up to this sentinel, whatever happened before it
        self.thread.join()
        close(self.cursor)


def validate_day(con, config: MonitorConfig, day: dt.date, batch_rows: int = BATCH_ROWS) -> list[Verdict]:
    return validate_days(con, config, [day], batch_rows)


def stored_verdicts(con, config: MonitorConfig, day: dt.date) -> list[Verdict] | None:
    """The verdicts kept for `day` (of the config's models), or None when the day has predictions but no
    verdicts yet."""
    return stored_verdicts_of(con, config, [day])[day]


def stored_verdicts_of(con, config: MonitorConfig, days: list[dt.date]) -> dict[dt.date, list[Verdict] | None]:
    """`stored_verdicts` of each day, in two queries whatever the number of days (a query a day took a
    fifth of a second over a year's tables)."""
    by_day: dict[dt.date, list[Verdict] | None] = {}
    for r in con.execute("SELECT partition_date, model_id, rows, passed, unexpected, message "
                         "FROM monitoring.quality_verdicts WHERE partition_date IN (SELECT unnest(?::DATE[])) "
                         "AND model_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY partition_date, model_id",
                         [days, config.model_ids]).fetchall():
        by_day.setdefault(r[0], []).append(Verdict(*r))
    missing = [d for d in days if d not in by_day]
    loaded = dict(con.execute("""SELECT partition_date, coalesce(sum(records_loaded), 0) FROM raw.ingestion_log
                                 WHERE source = 'predictions' AND partition_date IN (SELECT unnest(?::DATE[]))
                                 AND (shard = ? OR NOT ?) GROUP BY 1""",
                              [missing, config.shard_label, config.sharded]).fetchall()) if missing else {}
    return {d: by_day[d] if d in by_day else (None if loaded.get(d) else []) for d in days}
