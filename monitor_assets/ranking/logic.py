"""The ranking task (`task: ranking`): ranked lists in, ranking quality per model, day and version out.

Ingestion. A ranker's log (its own `source:` glob with {date}) comes in one of two shapes (`ranking.shape`):
* lists: one record per request, `items: [{item_id, score}, ...]` or `items: [id, ...]` with `scores: [...]`;
  the position in the list is the rank;
* impressions: one row per shown item (request_id, item_id, rank and/or score; without a rank, the order is by
  score within the request).
Files are read by the ingestion stage's readers (`ingestion.formats.LOADERS`: JSON lines, CSV, Parquet, gzip caps,
the folder check), each record checked in the same pass; then whole-request checks run on the staged rows. A bad
record goes to `raw.quarantine` (source `ranking`) with its reason: no request id, an empty or missing list, a
score that is not a number, an item twice in one request, a rank below 1. Read = loaded + quarantined, per file
group, or the day fails. Rows land in `raw.ranking_impressions`.

Labels are interactions (request_id, item_id, event or a numeric grade) from the ranker's `labels:` glob, graded
by `ranking.relevance`, into `raw.ranking_interactions` by the day of their file (source `ranking_labels` in the
quarantine). A day's impressions are matched by (request_id, item_id) to the interactions of that day and the
`label_delay_days` after it; one on an item that was not shown is counted (`unmatched_interactions`).

Figures (`monitoring.ranking_performance`, long: one row per model, day, version and metric; version `*` is the
whole model-day): every metric of `stats.ranking` at every cut-off, catalogue coverage, popularity concentration,
novelty and the drift of scores and recommended items against the reference, and the mean per-request loss
1 - NDCG@k of the main metric's k. The main metric's row carries the reference value and the one-sided test
against `thresholds.min_metric_ratio` x it.

Segments (`segments:`, as a model's): each request's segment values ride with its impressions (one JSON column,
`segments`), and `monitoring.ranking_segment_performance` holds the whole day's figures per segment: the per-request
metrics and the popularity concentration, the main metric judged against the segment's own reference value (or the
ranker's), one-sided, adjusted across the ranker-day's segments (Benjamini-Hochberg at `segments.logic.ALPHA`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from monitor_assets.config import (
    RANKING_AT_K,
    RANKING_LOWER_IS_BETTER,
    MonitorConfig,
    RankerConfig,
    SourceConfig,
    _format_of,
)
from monitor_assets.formatting import fmt_num, fmt_p, plural
from monitor_assets.ingestion.fields import (
    NUMBER,
    QUARANTINE_STAGE,
    TEXT,
    Field,
    StagingPlan,
    json_path,
    move_to_quarantine,
    note_file,
    quarantine_duplicates,
    reason_category_sql,
)
from monitor_assets.ingestion.formats import LOADERS, PENDING, check_pending, load_json_files
from monitor_assets.ingestion.log import StageResult, log_ingestion
from monitor_assets.ingestion.readers import (
    FileGroup,
    _refuse_outside,
    _staging_database,
    files_for,
    unreadable,
)
from monitor_assets.ranking import drift as D
from monitor_assets.segments.logic import ALPHA as SEGMENT_ALPHA
from monitor_assets.stats import ranking as R
from monitor_assets.stats.multiple_testing import benjamini_hochberg
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.reads import DAY_COLUMN, ROWS_PER_READ, capped_batches, split_by_day
from monitor_assets.storage.sql import SEGMENT_COLUMN, quote_ident, segment_key, segment_picks, sql_str
from monitor_assets.storage.warehouse import lake_of

IMPRESSIONS = "raw.ranking_impressions"
INTERACTIONS = "raw.ranking_interactions"
PERFORMANCE = "monitoring.ranking_performance"
ITEM_COUNTS = "monitoring.ranking_item_counts"  # a day's impressions per item and version, for the windows
SEGMENT_PERFORMANCE = "monitoring.ranking_segment_performance"  # rankers with `segments:`
LOG_SOURCE, LABEL_SOURCE = "ranking", "ranking_labels"  # raw.quarantine.source, raw.ingestion_log.source
ALL_VERSIONS = "*"  # model_version of the whole model-day's rows
RELEVANT = "relevant_requests"  # a day's requests with a relevant item: a row of its own
ALPHA = 0.05  # the baseline test's one-sided level
RANKING_TABLES = {name: TABLES[name] for name in (IMPRESSIONS, INTERACTIONS, PERFORMANCE, ITEM_COUNTS,
                                                   SEGMENT_PERFORMANCE)}

# Staging column aliases (short: `rank` is also a SQL function); SEGS: a record's segment values as a JSON object.
REQ, VER, ITEMS, SCORES, ITEM, RANK, SCORE, EVENT, GRADE = "req", "ver", "lst", "scs", "itm", "rnk", "scr", "evt", "grd"
SEGS = "sgs"


# ---- reading a ranker's files ------------------------------------------------------------------------------

def log_plan(ranker: RankerConfig, shape: str, graded: bool = False, own_format: bool = True) -> StagingPlan:
    """How a ranker's log records are read and checked, per record (the list's items are checked after).
    `own_format` False: a reference in another format than the log's, whose segment columns are read by name."""
    rc = ranker.ranking
    fields = [Field(REQ, rc.request_id, TEXT, True), Field(VER, rc.model_version, TEXT, optional=True)]
    if shape == "lists":
        fields += [Field(ITEMS, rc.items, TEXT, True), Field(SCORES, rc.scores, TEXT, optional=True)]
        array = "CASE WHEN json_valid({0}) THEN json_type({0}) END = 'ARRAY'"
        rules = [(f"NOT coalesce({array.format(ITEMS)}, false)",
                  f"'wrong type: ' || {sql_str(rc.items)} || ' is not a list'"),
                 (f"json_array_length({ITEMS}) = 0", f"'missing required field: ' || {sql_str(rc.items)} || ' is empty'"),
                 (f"{SCORES} IS NOT NULL AND NOT coalesce({array.format(SCORES)}, false)",
                  f"'wrong type: ' || {sql_str(rc.scores)} || ' is not a list'")]
        columns = [ITEMS, SCORES]
    else:
        fields += [Field(ITEM, rc.item_id, TEXT, True), Field(RANK, rc.rank, NUMBER, optional=True),
                   Field(SCORE, rc.score, NUMBER, optional=True)]
        rules = [(f"{RANK} < 1", f"'out of range: ' || {sql_str(rc.rank)} || '=' || {RANK} || ' is below 1'"),
                 (f"{RANK} <> floor({RANK})", f"'out of range: ' || {sql_str(rc.rank)} || '=' || {RANK} "
                                              "|| ' is not a whole number'"),
                 (f"{RANK} IS NULL AND {SCORE} IS NULL",
                  f"'missing required field: ' || {sql_str(rc.rank)} || ' or ' || {sql_str(rc.score)}")]
        columns = [ITEM, RANK, SCORE]
        if graded:  # a reference's impressions may carry their grade or event
            fields += [Field(EVENT, rc.event, TEXT, optional=True), Field(GRADE, rc.grade, NUMBER, optional=True)]
            columns += [EVENT, GRADE]
    # The segment columns (`segments:`), each optional text (a missing one is NULL, its segment `(missing)`),
    # kept as one JSON object {name: value}: the impressions' columns do not depend on the config.
    named = ranker.segments.columns
    fields += [Field(f"{SEGS}{i}", c.source if own_format else c.name, TEXT, optional=True)
               for i, c in enumerate(named)]
    segments = ("json_object(" + ", ".join(f"{sql_str(c.name)}, {SEGS}{i}" for i, c in enumerate(named)) + ")"
                if named else "NULL::VARCHAR")
    outputs = [REQ, VER, *columns, "source_file", "line_no"]
    return StagingPlan(LOG_SOURCE, fields, rules, key=REQ if shape == "lists" else None,
                       outputs=[*outputs, segments], targets=["partition_date", *outputs, SEGS])


def label_field(ranker: RankerConfig, name: str) -> str | None:
    """The interactions' field `name` (request_id, item_id, event, grade): mapped in `labels.fields`, else as in
    the `ranking:` section."""
    mapped = ranker.labels.fields.get(name) if ranker.labels is not None else None
    return mapped or getattr(ranker.ranking, name)


def grade_sql(ranker: RankerConfig, interactions: bool = True) -> str:
    """SQL: an interaction's relevance grade (a reference impression's: `interactions` False), the numeric `grade`
    field if configured, else its event's grade."""
    if label_field(ranker, "grade") if interactions else ranker.ranking.grade:
        return GRADE
    cases = " ".join(f"WHEN {sql_str(e)} THEN {g!r}" for e, g in ranker.ranking.relevance)
    return f"CAST(CASE {EVENT} {cases} END AS DOUBLE)"


def labels_plan(ranker: RankerConfig) -> StagingPlan:
    """How a ranker's interactions are read: request and item ids, and an event of `ranking.relevance` (or a grade)."""
    rc = ranker.ranking
    name = {f: label_field(ranker, f) for f in ("request_id", "item_id", "event", "grade")}
    fields = [Field(REQ, name["request_id"], TEXT, True), Field(ITEM, name["item_id"], TEXT, True)]
    if name["grade"]:
        fields += [Field(GRADE, name["grade"], NUMBER, True), Field(EVENT, name["event"], TEXT, optional=True)]
        rules = [(f"{GRADE} < 0", f"'out of range: ' || {sql_str(name['grade'])} || '=' || {GRADE} || ' is negative'")]
    else:
        fields += [Field(EVENT, name["event"], TEXT, True)]
        known = ", ".join(e for e, _ in rc.relevance)
        rules = [(f"{grade_sql(ranker)} IS NULL",
                  f"'unknown category: ' || {sql_str(name['event'])} || '=' || left({EVENT}, 80) || ' is not in "
                  f"ranking.relevance (' || {sql_str(known[:200])} || ')'")]
    return StagingPlan(LABEL_SOURCE, fields, rules, outputs=[REQ, ITEM, EVENT, grade_sql(ranker), "source_file", "line_no"],
                       targets=["partition_date", REQ, ITEM, EVENT, GRADE, "source_file", "line_no"])


def _reset(stage: duckdb.DuckDBPyConnection, plan: StagingPlan) -> None:
    """The staging database's `raw.<source>` (the plan's targets as columns) and `raw.quarantine`, empty."""
    types = {"partition_date": "DATE", RANK: "DOUBLE", SCORE: "DOUBLE", GRADE: "DOUBLE", "line_no": "BIGINT"}
    stage.execute("DROP SCHEMA IF EXISTS raw CASCADE; CREATE SCHEMA raw")
    cols = ", ".join(f"{quote_ident(c)} {types.get(c, 'VARCHAR')}" for c in plan.targets)
    stage.execute(f"CREATE TABLE raw.{plan.source} ({cols})")
    stage.execute("CREATE TABLE raw.quarantine (" + ", ".join(f"{c} {t}" for c, t in QUARANTINE_STAGE.items()) + ")")


def _read_group(stage: duckdb.DuckDBPyConnection, src: SourceConfig, plan: StagingPlan, group: FileGroup,
                day: dt.date) -> int:
    """Each file of the group through its format's reader into the staging tables; a file the reader cannot open
    is noted (not read) and its half-staged rows removed. Returns the records read."""
    read = 0
    for path, detail in group.refused:
        note_file(stage, plan, day, path, detail)
    for path in group.files:
        try:
            read += LOADERS[src.format](stage, plan, path, day)
        except duckdb.Error as exc:
            for table in (f"raw.{plan.source}", "raw.quarantine"):
                stage.execute(f"DELETE FROM {table} WHERE source_file = ?", [path])
            note_file(stage, plan, day, path, unreadable(src.format, exc))
    if not group.files and not group.refused:
        note_file(stage, plan, day, group.expected, f"no input file: nothing matched {group.expected}")
    return read


def _read_groups(stage: duckdb.DuckDBPyConnection, src: SourceConfig, plan: StagingPlan,
                 groups: dict[dt.date, FileGroup]) -> dict[dt.date, int]:
    """`_read_group` of several days into the staging tables at once: the records of many files checked in one
    statement (JSON lines by `load_json_files`, CSV and Parquet pending until every file is read), as the
    ingestion stage reads a batch of days. Returns each day's records read."""
    read = dict.fromkeys(groups, 0)
    for day, group in groups.items():
        for path, detail in group.refused:
            note_file(stage, plan, day, path, detail)
    if src.format == "jsonl":
        files = [(path, day) for day, group in groups.items() for path in group.files]
        for (_, day), n in zip(files, load_json_files(stage, plan, files), strict=True):
            read[day] += n
    else:
        try:
            for day, group in groups.items():
                for path in group.files:
                    read[day] += LOADERS[src.format](stage, plan, path, day, later=True)
            check_pending(stage, plan)
        finally:
            stage.execute(f"DROP TABLE IF EXISTS {PENDING}")  # a reader's error: nothing left for the next batch
    for day, group in groups.items():
        if not group.files and not group.refused:
            note_file(stage, plan, day, group.expected, f"no input file: nothing matched {group.expected}")
    return read


def _check_lists(stage: duckdb.DuckDBPyConnection, ranker: RankerConfig, plan: StagingPlan) -> None:
    """Whole-request checks of list records of every staged day: a request id seen before that day, then each
    item (an id, a numeric score, as many scores as items, no item twice); a record with a bad item is
    quarantined whole, naming it. Leaves `_impressions` (one row per item of the good records)."""
    rc = ranker.ranking
    quarantine_duplicates(stage, plan, None)
    item, score = sql_str(json_path(rc.item_id)), sql_str(json_path(rc.score))
    stage.execute(f"""
        CREATE OR REPLACE TEMP TABLE _items AS
        SELECT partition_date, source_file, line_no, {REQ}, {VER}, {SEGS}, pos, kind, n_items, n_scores,
               CASE WHEN kind = 'OBJECT' THEN json_extract_string(e, {item}) ELSE json_extract_string(e, '$') END AS item,
               CASE WHEN kind = 'OBJECT' THEN json_extract_string(e, {score})
                    ELSE json_extract_string(sl[pos], '$') END AS score_text
        FROM (SELECT *, json_type(e) AS kind FROM (
              SELECT *, unnest(l) AS e, generate_subscripts(l, 1) AS pos, len(l) AS n_items, len(sl) AS n_scores
              FROM (SELECT *, json_extract({ITEMS}, '$[*]') AS l,
                           CASE WHEN {SCORES} IS NOT NULL THEN json_extract({SCORES}, '$[*]') END AS sl
                    FROM raw.{plan.source})))""")
    stage.execute(f"""
        CREATE OR REPLACE TEMP TABLE _bad AS
        SELECT partition_date, source_file, line_no, arg_min(problem, pos) AS reason FROM (
            SELECT *, CASE
                WHEN item IS NULL OR trim(item) = ''
                    THEN 'missing required field: ' || {sql_str(rc.item_id)} || ' (item ' || pos || ')'
                WHEN kind = 'ARRAY' THEN 'wrong type: item ' || pos || ' is a list, expected an id'
                WHEN score_text IS NOT NULL AND TRY_CAST(score_text AS DOUBLE) IS NULL
                    THEN 'wrong type: ' || {sql_str(rc.score)} || '=' || left(score_text, 40) || ' is not a number (item '
                         || pos || ')'
                WHEN NOT isfinite(TRY_CAST(score_text AS DOUBLE))
                    THEN 'non-finite number: ' || {sql_str(rc.score)} || '=' || score_text || ' (item ' || pos || ')'
                WHEN n_scores IS NOT NULL AND n_scores <> n_items
                    THEN 'out of range: ' || {sql_str(rc.scores)} || ' has ' || n_scores || ' values for ' || n_items
                         || ' items'
                WHEN count(*) OVER (PARTITION BY partition_date, source_file, line_no, item) > 1
                    THEN 'duplicate ' || {sql_str(rc.item_id)} || ': ' || left(item, 80) || ' twice in the list of request '
                         || left({REQ}, 80)
                END AS problem
            FROM _items)
        WHERE problem IS NOT NULL GROUP BY ALL""")
    if stage.execute("SELECT count(*) FROM _bad").fetchall()[0][0]:
        move_to_quarantine(stage, plan, None, "(t.partition_date, t.source_file, t.line_no) IN "
                                              "(SELECT (partition_date, source_file, line_no) FROM _bad)",
                           "(SELECT b.reason FROM _bad b WHERE b.partition_date = t.partition_date "
                           "AND b.source_file = t.source_file AND b.line_no = t.line_no)")
    stage.execute(f"""
        CREATE OR REPLACE TEMP TABLE _impressions AS
        SELECT partition_date, {VER} AS model_version, {REQ} AS request_id, item AS item_id, pos::BIGINT AS rank,
               TRY_CAST(score_text AS DOUBLE) AS score, NULL::DOUBLE AS grade, source_file, line_no,
               {SEGS} AS segments
        FROM _items WHERE (partition_date, source_file, line_no) IN
                          (SELECT (partition_date, source_file, line_no) FROM raw.{plan.source})""")


def _check_impressions(stage: duckdb.DuckDBPyConnection, ranker: RankerConfig, plan: StagingPlan,
                       graded: bool) -> None:
    """Of every staged day: an item shown twice in one request keeps its first row (by file, line); later ones
    are quarantined. Leaves `_impressions`, ranked: the logged rank, or (a request with a row without one) the
    order by score; a request's segment values are those of its first row."""
    rc = ranker.ranking
    stage.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dupes AS
        SELECT partition_date, source_file, line_no, first_file, first_line FROM (
            SELECT partition_date, source_file, line_no, first_value(source_file) OVER w AS first_file,
                   first_value(line_no) OVER w AS first_line, row_number() OVER w AS nth
            FROM raw.{plan.source}
            WINDOW w AS (PARTITION BY partition_date, {REQ}, {ITEM} ORDER BY source_file, line_no))
        WHERE nth > 1""")
    if stage.execute("SELECT count(*) FROM _dupes").fetchall()[0][0]:
        move_to_quarantine(
            stage, plan, None, "(t.partition_date, t.source_file, t.line_no) IN "
                               "(SELECT (partition_date, source_file, line_no) FROM _dupes)",
            f"(SELECT 'duplicate ' || {sql_str(rc.item_id)} || ': ' || left(t.{ITEM}, 80) || ' twice in request ' "
            f"|| left(t.{REQ}, 80) || ', first in ' || d.first_file || ' line ' || d.first_line FROM _dupes d "
            "WHERE d.partition_date = t.partition_date AND d.source_file = t.source_file AND d.line_no = t.line_no)")
    grade = grade_sql(ranker, interactions=False) if graded else "NULL::DOUBLE"
    segments = (f"first_value({SEGS}) OVER (PARTITION BY partition_date, {REQ} ORDER BY source_file, line_no)"
                if ranker.segments.by else SEGS)  # NULL without segments: no window to compute
    stage.execute(f"""
        CREATE OR REPLACE TEMP TABLE _impressions AS
        SELECT partition_date, {VER} AS model_version, {REQ} AS request_id, {ITEM} AS item_id,
               CASE WHEN bool_and({RANK} IS NOT NULL) OVER (PARTITION BY partition_date, {REQ}) THEN {RANK}::BIGINT
                    ELSE row_number() OVER (PARTITION BY partition_date, {REQ}
                                            ORDER BY {SCORE} DESC NULLS LAST, source_file, line_no)
               END AS rank, {SCORE} AS score, {grade} AS grade, source_file, line_no,
               {segments} AS segments
        FROM raw.{plan.source}""")


def _counted(stage: duckdb.DuckDBPyConnection, plan: StagingPlan, read: dict[dt.date, int],
             what: str) -> dict[dt.date, int]:
    """Each staged day's loaded records; a day's read must equal its loaded and quarantined, or nothing is written."""
    loaded = dict(stage.execute(f"SELECT partition_date, count(*) FROM raw.{plan.source} GROUP BY ALL").fetchall())
    quarantined = dict(stage.execute("SELECT partition_date, count(*) FROM raw.quarantine WHERE line_no IS NOT NULL "
                                     "GROUP BY ALL").fetchall())
    for day, n in read.items():
        if n != loaded.get(day, 0) + quarantined.get(day, 0):
            raise RuntimeError(f"{what} {day}: read {n} records but loaded {loaded.get(day, 0)} and quarantined "
                               f"{quarantined.get(day, 0)}")
    return {day: loaded.get(day, 0) for day in read}


def _quarantine_rows(stage: duckdb.DuckDBPyConnection, model_id: str) -> pa.Table:
    """The staged quarantine as `raw.quarantine` rows: the reason's category, the text as `detail`."""
    return stage.sql(f"SELECT * REPLACE ({reason_category_sql('reason')} AS reason), reason AS detail, "
                     "$1::VARCHAR AS model_id FROM raw.quarantine", params=[model_id]).to_arrow_table()


@dataclass
class Staged:
    """One ranker's file group of one day, read and checked: counts, rows to write, quarantine rows."""

    result: StageResult
    rows: pa.Table | None  # None: no file matched (rows loaded before stay)
    quarantine: pa.Table


def _read(stage: duckdb.DuckDBPyConnection, src: SourceConfig, plan: StagingPlan,
          groups: dict[dt.date, FileGroup]) -> dict[dt.date, int]:
    """One day's files as `_read_group` reads them (an unreadable file noted, the day's others read), several
    days' at once (`_read_groups`)."""
    if len(groups) == 1:
        return {day: _read_group(stage, src, plan, group, day) for day, group in groups.items()}
    return _read_groups(stage, src, plan, groups)


def _by_day(table: pa.Table, days) -> dict[dt.date, pa.Table]:
    """The rows of `table` (sorted by partition_date) of each day, as slices."""
    epoch_days = table["partition_date"].cast(pa.int32()).to_numpy()
    out = {}
    for day in days:
        first, end = np.searchsorted(epoch_days, (day - _EPOCH).days, "left"), np.searchsorted(
            epoch_days, (day - _EPOCH).days, "right")
        out[day] = table.slice(int(first), int(end - first))
    return out


_EPOCH = dt.date(1970, 1, 1)


def _staged(stage: duckdb.DuckDBPyConnection, ranker: RankerConfig, src: SourceConfig,
            groups: dict[dt.date, FileGroup], read: dict[dt.date, int], loaded: dict[dt.date, int],
            rows: pa.Table) -> dict[dt.date, Staged]:
    """Each day's `Staged`: its rows (`rows` sorted by day), its quarantine and counts."""
    q = _quarantine_rows(stage, ranker.id)
    q = q.take(pc.sort_indices(q, [("partition_date", "ascending")]))  # stable: a day's rows keep their order
    rows_of, q_of = _by_day(rows, groups), _by_day(q, groups)
    return {day: Staged(_result(group.files, read[day], loaded[day], q_of[day]),
                        rows_of[day] if group.files or src.allow_empty else None, q_of[day])
            for day, group in groups.items()}


def stage_log_days(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, src: SourceConfig,
                   files: dict[dt.date, tuple[list[str], str]], shape: str, graded: bool = False,
                   own_format: bool = True) -> dict[dt.date, Staged]:
    """Read and check a ranker's log files (or its reference) of each day (day -> its files and their glob) in one
    pass: impressions with their request, rank and score; every check is each day's own."""
    plan = log_plan(ranker, shape, graded, own_format)
    _reset(stage, plan)
    groups = {day: _refuse_outside(config, FileGroup([], paths, expected, ranker.id))
              for day, (paths, expected) in files.items()}
    read = _read(stage, src, plan, groups)
    if shape == "lists":
        _check_lists(stage, ranker, plan)
    else:
        _check_impressions(stage, ranker, plan, graded)
    loaded = _counted(stage, plan, read, f"{ranker.id} {LOG_SOURCE}")
    version = sql_str(ranker.version)
    rows = stage.sql(f"""SELECT partition_date, ? AS model_id,
                                coalesce(nullif(trim(model_version), ''), {version}) AS model_version,
                                request_id, item_id, rank, score, grade, source_file, line_no, segments
                         FROM _impressions ORDER BY partition_date, source_file, line_no, rank""",
                     params=[ranker.id]).to_arrow_table()
    return _staged(stage, ranker, src, groups, read, loaded, rows)


def stage_log(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, src: SourceConfig,
              files: list[str], expected: str, day: dt.date, shape: str, graded: bool = False,
              own_format: bool = True) -> Staged:
    """`stage_log_days` of one day."""
    return stage_log_days(stage, config, ranker, src, {day: (files, expected)}, shape, graded, own_format)[day]


def stage_labels_days(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig,
                      days: list[dt.date]) -> dict[dt.date, Staged]:
    """Read and check a ranker's interactions of each day's files, in one pass."""
    plan = labels_plan(ranker)
    _reset(stage, plan)
    src = ranker.labels
    groups = {day: _refuse_outside(config, FileGroup([], files_for(src, day), src.paths_for(day), ranker.id))
              for day in days}
    read = _read(stage, src, plan, groups)
    loaded = _counted(stage, plan, read, f"{ranker.id} {LABEL_SOURCE}")
    rows = stage.sql(f"""SELECT partition_date, ? AS model_id, {REQ} AS request_id, {ITEM} AS item_id,
                                {EVENT} AS event, {GRADE} AS grade, source_file, line_no FROM raw.{plan.source}
                         ORDER BY partition_date, source_file, line_no""", params=[ranker.id]).to_arrow_table()
    return _staged(stage, ranker, src, groups, read, loaded, rows)


def stage_labels(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig,
                 day: dt.date) -> Staged:
    """`stage_labels_days` of one day."""
    return stage_labels_days(stage, config, ranker, [day])[day]


def _result(files: list[str], read: int, loaded: int, quarantine: pa.Table) -> StageResult:
    records = quarantine.filter(pc.is_valid(quarantine["line_no"]))
    reasons = {v["values"]: v["counts"] for v in pc.value_counts(records["reason"]).to_pylist()} if records.num_rows else {}
    notes = quarantine.filter(pc.is_null(quarantine["line_no"]))
    return StageResult(files, read, loaded, records.num_rows, reasons, 0,
                       [f"{r}: {d}" for r, d in zip(notes["reason"].to_pylist(), notes["detail"].to_pylist(), strict=True)])


def _merge(results: list[StageResult]) -> StageResult:
    reasons: dict[str, int] = {}
    for r in results:
        for k, v in r.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
    return StageResult([f for r in results for f in r.files], sum(r.read for r in results),
                       sum(r.loaded for r in results), sum(r.quarantined for r in results), reasons, 0,
                       [n for r in results for n in r.notes])


FLUSH_ROWS = 2_000_000  # a ranker's staged rows kept before they are written (memory bound of a long backfill)
# A ranker's days read and checked together (a statement costs milliseconds whatever its rows: a day at a time
# made about fifteen a day): at most this many days, and of at most this many bytes of files unless one day is more.
BATCH_DAYS, BATCH_BYTES = 31, 64 * 2**20


def _day_batches(ranker: RankerConfig, days: list[dt.date]) -> list[dict[dt.date, tuple[list[str], str]]]:
    """The days in batches read together, each day with its log files and their glob."""
    paths = {day: files_for(ranker.source, day) for day in days}
    labels = {day: files_for(ranker.labels, day) if ranker.labels is not None else [] for day in days}
    size = {day: sum(map(_size, [*paths[day], *labels[day]])) for day in days}  # bytes of a day's files
    return [{day: (paths[day], ranker.source.paths_for(day)) for day in batch}
            for batch in capped_batches(days, size, BATCH_BYTES, BATCH_DAYS)]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:  # gone since the glob: its reader says so
        return 0


def _stage_batch(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig,
                 batch: dict[dt.date, tuple[list[str], str]]
                 ) -> tuple[dict[dt.date, Staged], dict[dt.date, Staged] | None]:
    """A batch of days' log and interactions staged together; a batch that fails (a file its readers cannot
    take together, say) is staged a day at a time, where the day's own error, if any, is raised."""
    days = list(batch)
    shape = ranker.ranking.shape
    try:
        logged = stage_log_days(stage, config, ranker, ranker.source, batch, shape)
        interactions = stage_labels_days(stage, config, ranker, days) if ranker.labels is not None else None
        return logged, interactions
    except (duckdb.Error, RuntimeError, OSError, ValueError):
        if len(days) == 1:
            raise
    logged = {day: stage_log(stage, config, ranker, ranker.source, paths, expected, day, shape)
              for day, (paths, expected) in batch.items()}
    interactions = ({day: stage_labels(stage, config, ranker, day) for day in days}
                    if ranker.labels is not None else None)
    return logged, interactions


def ingest_rankers(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]
                   ) -> dict[dt.date, dict[str, dict]]:
    """The days of every ranker's log and interactions into `raw.ranking_impressions`, `raw.ranking_interactions`
    and `raw.quarantine`, counted in `raw.ingestion_log` (sources `ranking`, `ranking_labels`). A ranker's days are
    read and checked in batches (`_day_batches`), each day's checks its own; the rows are written a ranker at a
    time for many days in one commit (flushed at FLUSH_ROWS), the quarantine and the log once for all days: a long
    backfill costs its rows, not a commit per day. A ranker-day whose glob matched nothing keeps the rows loaded
    before (unless its source allows empty days). Returns per day and ranker the counts."""
    lake = lake_of(con)
    out: dict[dt.date, dict[str, dict]] = {day: {} for day in days}
    logs: dict[dt.date, list[StageResult]] = {day: [] for day in days}
    labels: dict[dt.date, list[StageResult]] = {day: [] for day in days}
    q_log, q_labels = [], []

    def flush(table: str, ranker_id: str, pending: list[tuple[dt.date, pa.Table]]) -> None:
        if pending:
            lake.replace(table, pa.concat_tables([t for _, t in pending]), [d for d, _ in pending], models=[ranker_id])
            pending.clear()

    stage = _staging_database()
    try:
        for ranker in config.rankers:
            shown: list[tuple[dt.date, pa.Table]] = []
            acted: list[tuple[dt.date, pa.Table]] = []
            for batch in _day_batches(ranker, days):
                logged, interactions = _stage_batch(stage, config, ranker, batch)
                for day in batch:
                    staged = logged[day]
                    if staged.rows is not None:
                        shown.append((day, staged.rows.drop_columns(["grade"])))
                        if sum(t.num_rows for _, t in shown) >= FLUSH_ROWS:
                            flush(IMPRESSIONS, ranker.id, shown)
                    logs[day].append(staged.result)
                    q_log.append(staged.quarantine)
                    counts = {"records_read": staged.result.read, "records_loaded": staged.result.loaded,
                              "records_quarantined": staged.result.quarantined,
                              "impressions": staged.rows.num_rows if staged.rows is not None else 0,
                              "reasons": staged.result.reasons, "notes": staged.result.notes}
                    if interactions is not None:
                        inter = interactions[day]
                        if inter.rows is not None:
                            acted.append((day, inter.rows))
                            if sum(t.num_rows for _, t in acted) >= FLUSH_ROWS:
                                flush(INTERACTIONS, ranker.id, acted)
                        labels[day].append(inter.result)
                        q_labels.append(inter.quarantine)
                        counts.update({"interactions_read": inter.result.read,
                                       "interactions_loaded": inter.result.loaded,
                                       "interactions_quarantined": inter.result.quarantined,
                                       "interaction_reasons": inter.result.reasons})
                    out[day][ranker.id] = counts
            flush(IMPRESSIONS, ranker.id, shown)
            flush(INTERACTIONS, ranker.id, acted)
    finally:
        stage.close()
    mine = "model_id IN (" + ", ".join(sql_str(r.id) for r in config.rankers) + ")"
    for source, tables, results in ((LOG_SOURCE, q_log, logs), (LABEL_SOURCE, q_labels, labels)):
        judged = [(day, _merge(r)) for day, r in results.items() if r]
        if not judged:
            continue
        lake.replace("raw.quarantine", pa.concat_tables(tables), [d for d, _ in judged], source=source, where=mine)
        log_ingestion(con, config, source, judged)
    for table in (IMPRESSIONS, INTERACTIONS, "raw.quarantine"):
        lake.refresh(con, table)
    return out


# ---- the reference -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """What a ranker's reference file gives: impressions per item, scores, and (graded) the metrics' values; each
    impression's request (0.. in file order) and item, for the item drift's calibration (`drift.calibrate`)."""

    items: R.ItemCounts
    scores: np.ndarray  # the finite ones, sorted (`stats.ranking.finite_sorted`): the score drift reads them sorted
    values: dict[str, float]
    n_requests: int
    n_quarantined: int
    request_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    item_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    thresholds: dict = field(default_factory=dict, compare=False)  # day size -> drift thresholds, filled on use
    # graded references: per request (file order) its version and loss 1 - NDCG@main_k (`frame_losses`)
    losses: pd.DataFrame | None = field(default=None, compare=False)
    # rankers with `segments:`: the main metric per segment of the reference (segment_by, segment, n, value), for
    # the segmentations whose columns the reference has (`reference_segments`)
    segments: pd.DataFrame | None = field(default=None, compare=False)

    def drift_thresholds(self, n_requests: int) -> dict[str, D.Threshold]:
        """The item drift's thresholds for a day of `n_requests` requests (calibrated once per size)."""
        if n_requests not in self.thresholds:
            self.thresholds[n_requests] = D.calibrate(self.request_index, self.item_ids, n_requests)
        return self.thresholds[n_requests]


_REFERENCES: dict[tuple, Reference] = {}


def reference_of(config: MonitorConfig, ranker: RankerConfig) -> Reference | None:
    """The ranker's reference (None without one), read by the same readers as its log: impressions in the log's
    shape when the file has the log's format, else lists for JSON lines and impressions otherwise; grades from
    its `event` or `grade` column when an impressions file has one; segment columns as the log's when the file
    has the log's format, else by their names (`market`). Read once per file version per process."""
    if not ranker.reference_path:
        return None
    path = ranker.reference_path
    stat = os.stat(path)
    key = (ranker.id, path, ranker.ranking, ranker.main_metric, ranker.segments, stat.st_mtime_ns, stat.st_size)
    if key in _REFERENCES:
        return _REFERENCES[key]
    fmt = _format_of(path) or ranker.source.format
    shape = ranker.ranking.shape if fmt == ranker.source.format else ("lists" if fmt == "jsonl" else "impressions")
    src = SourceConfig("reference", path, fmt, {})
    stage = _staging_database()
    try:
        staged = stage_log(stage, config, ranker, src, [path], path, config.start_date, shape, graded=True,
                           own_format=fmt == ranker.source.format)
        frame, present = _with_segments(stage, staged.rows, ranker) if staged.rows is not None else (pd.DataFrame(),
                                                                                                   set())
    finally:
        stage.close()
    values: dict[str, float] = {}
    items = R.ItemCounts.of(frame.item_id.to_numpy()) if len(frame) else R.ItemCounts(np.array([], object),
                                                                                         np.array([], np.int64))
    if len(frame) and frame.grade.notna().any():
        values = {m: v for m, (v, _) in request_figures(frame.assign(grade=frame.grade.fillna(0.0)), ranker).items()}
    values.update(_catalogue(items, items, frame.score.to_numpy() if len(frame) else np.array([]), None))
    ref = Reference(items, R.finite_sorted(frame.score) if len(frame) else np.array([]), values,  # sorted once
                    int(frame.request_id.nunique()) if len(frame) else 0, staged.result.quarantined,
                    pd.factorize(frame.request_id)[0] if len(frame) else np.zeros(0, np.int64),
                    frame.item_id.to_numpy() if len(frame) else np.zeros(0, object),
                    losses=frame_losses(frame, ranker) if len(frame) and frame.grade.notna().any() else None,
                    segments=reference_segments(frame, ranker, items, present) if ranker.segments.by and len(frame)
                    else None)
    _REFERENCES[key] = ref
    return ref


def _with_segments(stage: duckdb.DuckDBPyConnection, rows: pa.Table, ranker: RankerConfig
                   ) -> tuple[pd.DataFrame, set[str]]:
    """A reference's staged impressions with their segment per segmentation (`segment_columns_sql`), and the
    segment columns it has (a value somewhere: a reference without the column reads NULL throughout)."""
    names = sorted({n for cross in ranker.segments.by for n in cross})
    stage.register("_reference_rows", rows)
    try:
        frame = stage.execute("SELECT *" + "".join(f", {p}" for p in segment_columns_sql(ranker, "segments"))
                              + " FROM _reference_rows").df()
        counts = stage.execute("SELECT " + ", ".join(f"count({_segment_value('segments', n)})" for n in names)
                               + " FROM _reference_rows").fetchall()[0] if names else ()
    finally:
        stage.unregister("_reference_rows")
    return frame, {n for n, c in zip(names, counts, strict=True) if c}


def reference_segments(frame: pd.DataFrame, ranker: RankerConfig, items: R.ItemCounts, present: set[str]
                       ) -> pd.DataFrame:
    """The main metric of each segment of a reference's impressions (`frame`, with its segment columns), for the
    segmentations whose columns are all `present`: segment_by, segment, n (requests), value."""
    crosses = [c for c in ranker.segments.by if set(c) <= present]
    graded = frame.grade.notna().any()
    found = segment_figures(frame.assign(grade=frame.grade.fillna(0.0)), ranker, items, crosses, labelled=graded)
    return pd.DataFrame([{"segment_by": f["segment_by"], "segment": f["segment"], "n": f["n_requests"],
                          "value": f["figures"].get(ranker.main_metric, (math.nan, math.nan))[0]} for f in found],
                        columns=["segment_by", "segment", "n", "value"])


# ---- figures -----------------------------------------------------------------------------------------------

def request_figures(frame: pd.DataFrame, ranker: RankerConfig) -> dict[str, tuple[float, float]]:
    """(mean, standard error) of every per-request metric, named as in config (`ndcg_at_10`, `mrr`), and of the
    per-request loss 1 - NDCG@k (`mean_loss`), over the requests of `frame` (request_id, rank, grade); and the
    count of requests with a relevant item (`relevant_requests`, no standard error)."""
    rc = ranker.ranking
    sums = R.ranking_sums(frame.request_id.to_numpy(), frame.grade.to_numpy(dtype=float),
                          rank=frame["rank"].to_numpy(dtype=float), ks=rc.ks, gain=rc.gain)
    out = {}
    for k in rc.ks:
        for m in RANKING_AT_K:
            out[f"{m}_at_{k}"] = (sums.mean(f"{m}@{k}", rc.no_relevant), sums.standard_error(f"{m}@{k}", rc.no_relevant))
    out["mrr"] = (sums.mean("mrr", rc.no_relevant), sums.standard_error("mrr", rc.no_relevant))
    loss = sums.loss_moments(ranker.main_k, rc.no_relevant)
    out["mean_loss"] = (loss.mean, math.sqrt(loss.var / loss.n) if loss.n > 1 else math.nan)
    # the weight of the day's means in a window's (`ranking.windows`) when requests without one are excluded
    out[RELEVANT] = (float(sums.n_with_relevant), math.nan)
    return out


def _catalogue(items: R.ItemCounts, reference: R.ItemCounts | None, scores: np.ndarray,
               ref: Reference | None) -> dict[str, float]:
    """Coverage, concentration and novelty against the reference's items, and the drift of items and scores.
    Without a reference only the concentration (over the day's own items) is known."""
    if reference is None or reference.total == 0:
        figures = R.catalogue_metrics(items, items)
        return {"catalogue_coverage": math.nan, "popularity_concentration": figures["concentration"],
                "novelty": math.nan, "item_drift_js": math.nan, "score_drift_ks": math.nan}
    figures = R.catalogue_metrics(items, reference)
    return {"catalogue_coverage": figures["coverage"], "popularity_concentration": figures["concentration"],
            "novelty": figures["novelty"], "item_drift_js": R.item_distribution_drift(items, reference),
            "score_drift_ks": R.score_drift(scores, ref.scores) if ref is not None else math.nan}


def day_frame(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, day: dt.date,
              delay: int) -> tuple[pd.DataFrame, int]:
    """A ranker's impressions of `day` with their grades (0 without an interaction), whether their request had
    any interaction, and how many interactions of those requests were on items not shown; the interactions are
    those of the day's files and the `delay` days after."""
    return day_frames(con, ranker, [day], delay)[day]


# A day's interactions: those of its files and the `delay` days after, best grade per request and item.
_WINDOWS_SQL = f"""days AS (SELECT unnest($days::DATE[]) AS day),
    inter AS (SELECT days.day, i.request_id, i.item_id, max(i.grade) AS grade
              FROM {INTERACTIONS} AS i JOIN days ON i.partition_date BETWEEN days.day AND days.day + $delay::INTEGER
              WHERE i.model_id = $model GROUP BY ALL)"""


def day_frames(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, days: list[dt.date],
               delay: int) -> dict[dt.date, tuple[pd.DataFrame, int]]:
    """`day_frame` of each of `days`, in two queries for them all."""
    frames = days_impressions(con, ranker, days, delay)
    unmatched = dict(con.execute(f"""
        WITH {_WINDOWS_SQL}
        SELECT inter.day, count(*) FROM inter
        WHERE (inter.day, inter.request_id) IN (SELECT (partition_date, request_id) FROM {IMPRESSIONS}
                                                WHERE model_id = $model AND partition_date IN (SELECT day FROM days))
          AND NOT EXISTS (SELECT 1 FROM {IMPRESSIONS} i WHERE i.model_id = $model AND i.partition_date = inter.day
                          AND i.request_id = inter.request_id AND i.item_id = inter.item_id)
        GROUP BY ALL""", {"model": ranker.id, "days": days, "delay": delay}).fetchall())
    return {day: (frames[day], int(unmatched.get(day, 0))) for day in days}


def day_impressions(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, day: dt.date, delay: int) -> pd.DataFrame:
    """`day_frame`'s impressions (model_version, request_id, item_id, rank, score, grade, labelled; a segmented
    ranker's segment per segmentation, `segment_columns_sql`), without the count of unmatched interactions."""
    return days_impressions(con, ranker, [day], delay)[day]


def days_impressions(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, days: list[dt.date],
                     delay: int) -> dict[dt.date, pd.DataFrame]:
    """`day_impressions` of each of `days`, in one query."""
    picks = "".join(f"{p}, " for p in segment_columns_sql(ranker, "imp.segments"))
    frame = con.execute(f"""
        WITH {_WINDOWS_SQL},
             imp AS (SELECT * FROM {IMPRESSIONS} WHERE model_id = $model AND partition_date IN (SELECT day FROM days))
        SELECT imp.partition_date AS {DAY_COLUMN}, imp.model_version, imp.request_id, imp.item_id, imp.rank, imp.score,
               {picks}coalesce(inter.grade, 0.0) AS grade,
               (imp.partition_date, imp.request_id) IN (SELECT (day, request_id) FROM inter) AS labelled
        FROM imp LEFT JOIN inter ON inter.day = imp.partition_date AND inter.request_id = imp.request_id
                                AND inter.item_id = imp.item_id
        ORDER BY imp.partition_date, imp.source_file, imp.line_no, imp.rank""",
                        {"model": ranker.id, "days": days, "delay": delay}).df()
    return split_by_day(frame, days)


def _segment_value(column: str, name: str) -> str:
    """SQL: a segment column's value in an impression's `segments` JSON (NULL when not logged, or stored before)."""
    return f"json_extract_string({column}, {sql_str(json_path(name))})"


def segment_columns_sql(ranker: RankerConfig, column: str) -> list[str]:
    """SELECT items naming each impression's segment per segmentation of the ranker, as columns SEGMENT_COLUMN +
    its key, from the JSON of `column`: spelt as models' segments (`storage.sql.segment_picks`, NULL reads
    `(missing)`). None for a ranker without `segments:`."""
    names = {n for cross in ranker.segments.by for n in cross}
    return segment_picks(ranker.segments.by, {n: _segment_value(column, n) for n in names})


def labels_complete(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, day: dt.date, delay: int) -> bool:
    """Whether the interactions of `day` and the `delay` days after it have all been read."""
    return labels_complete_days(con, ranker, [day], delay)[day]


def labels_complete_days(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, days: list[dt.date],
                         delay: int) -> dict[dt.date, bool]:
    """`labels_complete` of each of `days`, in one query."""
    if ranker.labels is None or not days:
        return dict.fromkeys(days, False)
    read = {d for (d,) in con.execute(f"""SELECT DISTINCT partition_date FROM raw.ingestion_log
                                          WHERE source = {sql_str(LABEL_SOURCE)} AND partition_date BETWEEN ? AND ?""",
                                      [min(days), max(days) + dt.timedelta(days=delay)]).fetchall()}
    return {day: all(day + dt.timedelta(days=k) in read for k in range(delay + 1)) for day in days}


def per_request_metric(ranker: RankerConfig) -> str | None:
    """The `stats.ranking` name of the ranker's main metric when it has a value per request ('ndcg@10', 'mrr');
    None for the catalogue metrics (coverage, novelty, concentration: one value a day)."""
    metric, _, k = ranker.main_metric.rpartition("_at_")
    if k.isdigit():
        return f"{metric}@{k}"
    return ranker.main_metric if ranker.main_metric in R.WHOLE_LIST else None


def frame_losses(frame: pd.DataFrame, ranker: RankerConfig) -> pd.DataFrame:
    """The per-request loss 1 - NDCG@main_k (`stats.ranking.request_loss`, under `ranking.no_relevant`: 'exclude'
    leaves a request without a relevant item out) of the requests of `frame` (model_version, request_id, rank,
    grade): one row per request, in order of first appearance, with its version and its value of the main metric
    (`main`; NaN when the main metric has no value per request)."""
    rc = ranker.ranking
    if not len(frame):
        return pd.DataFrame({"model_version": pd.Series(dtype=object), "request_id": pd.Series(dtype=object),
                             "loss": pd.Series(dtype=float), "main": pd.Series(dtype=float)})
    main = per_request_metric(ranker)
    ks = {ranker.main_k} | ({int(main.rpartition("@")[2])} if main and "@" in main else set())
    metrics = R.request_metrics(frame.request_id.to_numpy(), frame.grade.fillna(0.0).to_numpy(dtype=float),
                                rank=frame["rank"].to_numpy(dtype=float), ks=sorted(ks), gain=rc.gain)
    requests, loss = metrics.requests, R.request_loss(metrics, ranker.main_k, rc.no_relevant)
    version = frame.drop_duplicates("request_id").set_index("request_id").model_version
    out = pd.DataFrame({"model_version": version.reindex(requests).fillna("").astype(str).to_numpy(),
                        "request_id": requests, "loss": loss,
                        "main": metrics.values[main] if main else np.full(len(requests), np.nan)})
    return out[out.loss.notna()].reset_index(drop=True)


def request_losses(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig,
                   day: dt.date) -> pd.DataFrame | None:
    """The retraining trigger's losses of a ranker-day (`frame_losses`), once its interactions are all read
    (`labels_complete`): a day whose interactions may still come would count late clicks as misses. None before."""
    if not labels_complete(con, ranker, day, config.label_delay_days):
        return None
    return frame_losses(day_impressions(con, ranker, day, config.label_delay_days), ranker)


def item_count_frame(frame: pd.DataFrame, ranker: RankerConfig, day: dt.date) -> pd.DataFrame:
    """A ranker-day's rows of `monitoring.ranking_item_counts`: per version and item, its impressions (as
    `stats.ranking.ItemCounts` counts them) and `first_seen`, the position of its first impression in the day's
    impressions, so a window's items come in the order of their first impression, as ItemCounts.of the window's
    impressions has them (the item drift's ties at its top items follow that order). The whole day (`*`) is the
    sum over the versions: not stored."""
    position = pd.Series(np.arange(len(frame), dtype=np.int64), index=frame.index)
    keys = [frame.model_version.fillna("").astype(str), frame.item_id]
    grouped = position.groupby(keys, sort=False)
    out = pd.DataFrame({"impressions": grouped.size(), "first_seen": grouped.min()}).reset_index()
    out.columns = ["model_version", "item_id", "impressions", "first_seen"]
    return out.assign(partition_date=day, model_id=ranker.id)


def ranker_day_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, day: dt.date,
                    ref: Reference | None, counts: list[pd.DataFrame] | None = None,
                    segments: list[dict] | None = None,
                    read: tuple[pd.DataFrame, int, bool] | None = None) -> list[dict]:
    """The rows of one ranker-day in `monitoring.ranking_performance`: per version and for all (`*`); `counts`
    (if given) gets the day's `item_count_frame`, and `segments` (if given) its rows of
    `monitoring.ranking_segment_performance` (`segment_day_rows`), from the same read. `read`: the day's
    `day_frame` and `labels_complete`, when already read with other days'."""
    if read is None:
        read = (*day_frame(con, ranker, day, config.label_delay_days),
                labels_complete(con, ranker, day, config.label_delay_days))
    frame, unmatched, complete = read
    if not len(frame):
        return []
    if counts is not None:
        counts.append(item_count_frame(frame, ranker, day))
    if segments is not None and ranker.segments.by:
        segments += segment_day_rows(frame, ranker, day, ref, complete)
    rows = []
    groups = [(ALL_VERSIONS, frame), *frame.groupby("model_version", sort=True)]
    for version, part in groups:
        n_requests = int(part.request_id.nunique())
        n_labelled = int(part.loc[part.labelled, "request_id"].nunique())
        figures: dict[str, tuple[float, float]] = {}
        if ranker.labels is not None:
            figures.update(request_figures(part, ranker))
        items = R.ItemCounts.of(part.item_id.to_numpy())
        figures.update({m: (v, math.nan) for m, v in _catalogue(items, ref.items if ref else None,
                                                                 part.score.to_numpy(dtype=float), ref).items()})
        common = {"partition_date": day, "model_id": ranker.id, "model_version": str(version),
                  "n_requests": n_requests, "n_labelled_requests": n_labelled,
                  "label_coverage": n_labelled / n_requests if n_requests else math.nan,
                  "unmatched_interactions": unmatched if version == ALL_VERSIONS else None,
                  "labels_complete": complete}
        for metric, (value, se) in figures.items():
            row = {**common, "metric": metric, "value": value, "standard_error": se}
            if metric == ranker.main_metric and version == ALL_VERSIONS:
                row.update(judge(ranker, value, se, ref, complete))
            rows.append(row)
    return rows


def metric_floor(ranker: RankerConfig, reference: float) -> float:
    """The floor of the main metric: `min_metric_ratio` x its reference value (the reference over the ratio, a
    ceiling, for a lower-is-better metric)."""
    ratio = ranker.thresholds.min_metric_ratio
    return reference / ratio if ranker.main_metric in RANKING_LOWER_IS_BETTER and ratio else reference * ratio


def judge(ranker: RankerConfig, value: float, se: float, ref: Reference | None, complete: bool) -> dict:
    """The main metric against `min_metric_ratio` x its reference value: a one-sided test where the metric has a
    standard error (per request), a plain comparison otherwise; label-based metrics only once the labels are in."""
    reference = ref.values.get(ranker.main_metric, math.nan) if ref is not None else math.nan
    lower_better = ranker.main_metric in RANKING_LOWER_IS_BETTER
    floor = metric_floor(ranker, reference)
    labelled = ranker.main_metric not in ("catalogue_coverage", "novelty", "popularity_concentration")
    if not math.isfinite(reference) or not math.isfinite(value) or (labelled and not complete):
        return {"reference_value": reference, "floor": floor, "p_value": math.nan, "below_baseline": None}
    if math.isfinite(se):
        p = R.below_floor_p_value(value, se, floor, higher_is_better=not lower_better)
        below = p < ALPHA
    else:
        p = math.nan
        below = value > floor if lower_better else value < floor
    return {"reference_value": reference, "floor": floor, "p_value": p, "below_baseline": bool(below)}


def segment_figures(frame: pd.DataFrame, ranker: RankerConfig, catalogue: R.ItemCounts,
                    crosses: list[tuple[str, ...]] | tuple[tuple[str, ...], ...], labelled: bool,
                    ref: Reference | None = None) -> list[dict]:
    """Per segmentation of `crosses` and segment of `frame` (impressions with request_id, item_id, rank, grade,
    `labelled` if known, and `segment_columns_sql`'s columns): segment_by, segment, n_requests,
    n_labelled_requests and `figures` (metric -> (value, standard error)): the per-request metrics of
    `request_figures` on the segment's own requests (if `labelled`) and its popularity concentration (the top 1%
    of `catalogue`'s items' share of its impressions); with a reference (`ref`), the whole ranker's catalogue
    figures too (`_catalogue`: coverage, novelty, the drift of its items and scores against the reference),
    reported, not judged (their thresholds are calibrated for one test a ranker-day, not one per segment)."""
    out = []
    for cross in crosses:
        key = segment_key(cross)
        for segment, part in frame.groupby(SEGMENT_COLUMN + key, sort=True):
            figures = ({m: v for m, v in request_figures(part, ranker).items() if m != RELEVANT} if labelled else {})
            items = R.ItemCounts.of(part.item_id.to_numpy())
            if ref is not None and ref.items.total:
                figures.update({m: (v, math.nan) for m, v in _catalogue(items, ref.items, part.score.to_numpy(float),
                                                                        ref).items()})
            else:
                figures["popularity_concentration"] = (R.catalogue_metrics(items, catalogue)["concentration"], math.nan)
            n = int(part.request_id.nunique())
            out.append({"segment_by": key, "segment": str(segment), "n_requests": n, "figures": figures,
                        "n_labelled_requests": int(part.loc[part.labelled, "request_id"].nunique())
                        if "labelled" in part else n})
    return out


def segment_day_rows(frame: pd.DataFrame, ranker: RankerConfig, day: dt.date, ref: Reference | None,
                     complete: bool) -> list[dict]:
    """A ranker-day's rows of `monitoring.ranking_segment_performance` (whole day, all versions): every segment's
    figures (`segment_figures`), the main metric's row judged as `judge` judges the whole ranker's, against the
    floor of the segment's own reference value when the reference has at least `segments.min_rows` of its
    requests (`reference_source` 'segment'), else of the ranker's whole reference value ('model'); tested (one-
    sided) once the labels are complete, on segments with at least `segments.min_rows` labelled requests, and
    adjusted across the ranker-day's segments (Benjamini-Hochberg): `below_floor` when the adjusted p-value is
    under `segments.logic.ALPHA`. A catalogue main metric (no standard error) is reported, not tested."""
    catalogue = ref.items if ref is not None and ref.items.total else R.ItemCounts.of(frame.item_id.to_numpy())
    found = segment_figures(frame, ranker, catalogue, ranker.segments.by, ranker.labels is not None, ref)
    whole = ref.values.get(ranker.main_metric, math.nan) if ref is not None else math.nan
    own = {(r.segment_by, r.segment): r for r in ref.segments.itertuples()} if ref is not None and \
        ref.segments is not None else {}
    higher = ranker.main_metric not in RANKING_LOWER_IS_BETTER
    ready = complete or per_request_metric(ranker) is None
    verdicts = []
    for f in found:
        value, se = f["figures"].get(ranker.main_metric, (math.nan, math.nan))
        mine = own.get((f["segment_by"], f["segment"]))
        if mine is not None and mine.n >= ranker.segments.min_rows and math.isfinite(mine.value):
            reference, source = float(mine.value), "segment"
        else:
            reference, source = whole, "model"
        floor = metric_floor(ranker, reference)
        tested = (ready and f["n_labelled_requests"] >= ranker.segments.min_rows
                  and all(math.isfinite(x) for x in (value, se, floor)) and se > 0)
        p = R.below_floor_p_value(value, se, floor, higher_is_better=higher) if tested else math.nan
        verdicts.append({"reference_value": reference, "reference_source": source, "floor": floor, "p_value": p})
    adjusted = benjamini_hochberg([v["p_value"] for v in verdicts])
    rows = []
    for f, verdict, p_adjusted in zip(found, verdicts, adjusted, strict=True):
        common = {"partition_date": day, "model_id": ranker.id, "segment_by": f["segment_by"],
                  "segment": f["segment"], "n_requests": f["n_requests"],
                  "n_labelled_requests": f["n_labelled_requests"]}
        for metric, (value, se) in f["figures"].items():
            row = {**common, "metric": metric, "value": value, "standard_error": se}
            if metric == ranker.main_metric:
                row.update(verdict, p_adjusted=p_adjusted,
                           below_floor=bool(np.nan_to_num(p_adjusted, nan=1.0) < SEGMENT_ALPHA))
            rows.append(row)
    return rows


def _frame_of(table: str, rows: list[dict] | list[pd.DataFrame]) -> pd.DataFrame:
    """Rows (dicts, or frames to concatenate) as an Arrow table of `table`'s columns, computed now."""
    columns = [c for c in RANKING_TABLES[table][0] if c != "computed_at"]
    if rows and isinstance(rows[0], pd.DataFrame):
        frame = pd.concat(rows, ignore_index=True)[columns]
    else:
        frame = pd.DataFrame(rows, columns=columns)
    frame["computed_at"] = pd.Timestamp.now(tz="UTC")
    frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    return frame


def write_performance(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]
                      ) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """Every ranker's rows of `days`, replacing theirs in one commit per table (ranking_performance,
    ranking_item_counts, ranking_segment_performance). Returns the rows, per ranker that failed (an unreadable
    reference, say) why (the other rankers are written), and the segment rows."""
    rows, failed, counts, segments = [], {}, [], []
    for ranker in config.rankers:
        mine: list[pd.DataFrame] = []
        parts: list[dict] = []
        try:
            ref = reference_of(config, ranker)
            delay = config.label_delay_days
            for batch in _read_batches(con, ranker, days):
                frames, complete = day_frames(con, ranker, batch, delay), labels_complete_days(con, ranker, batch, delay)
                for day in batch:
                    rows += ranker_day_rows(con, config, ranker, day, ref, mine, parts,
                                            read=(*frames[day], complete[day]))
        except (ValueError, OSError, duckdb.Error) as exc:
            failed[ranker.id] = " ".join(str(exc).split())[:300] or type(exc).__name__
            continue
        counts += mine
        segments += parts
    written = [r.id for r in config.rankers if r.id not in failed]
    lake = lake_of(con)
    frames = {PERFORMANCE: _frame_of(PERFORMANCE, rows), ITEM_COUNTS: _frame_of(ITEM_COUNTS, counts),
              SEGMENT_PERFORMANCE: _frame_of(SEGMENT_PERFORMANCE, segments)}
    for table, frame in frames.items():
        lake.replace(table, pa.Table.from_pandas(frame, preserve_index=False), days, models=written)
        lake.refresh(con, table)
    return frames[PERFORMANCE], failed, frames[SEGMENT_PERFORMANCE]


def _read_batches(con: duckdb.DuckDBPyConnection, ranker: RankerConfig, days: list[dt.date]) -> list[list[dt.date]]:
    """The days whose impressions are read together (`day_frames`): consecutive days, at most BATCH_DAYS of them,
    while their impressions stay within ROWS_PER_READ (a busy ranker's day is read alone)."""
    counts = dict(con.execute(f"""SELECT partition_date, count(*) FROM {IMPRESSIONS}
                                  WHERE model_id = ? AND partition_date IN (SELECT unnest(?::DATE[])) GROUP BY 1""",
                              [ranker.id, days]).fetchall())
    return capped_batches(sorted(days), counts, ROWS_PER_READ, BATCH_DAYS)


def baseline_failures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date], check: str,
                      judged_days: list | None = None) -> tuple[list[dict], dict[dt.date, int]]:
    """The check's failures (main metric below its floor) and how many ranker-days it judged, per day;
    `judged_days` (if given) gets each judged (day, ranker id)."""
    rankers = {r.id: r for r in config.rankers}
    frame = con.execute(f"""SELECT * FROM {PERFORMANCE} WHERE model_version = ? AND partition_date IN
                            (SELECT unnest(?::DATE[]))""", [ALL_VERSIONS, days]).df()
    # a boolean mask, not a list: an empty list would select no columns of an empty frame
    frame = frame[np.array([rankers.get(m) is not None and rankers[m].main_metric == k
                            for m, k in zip(frame.model_id, frame.metric, strict=True)], dtype=bool)]
    judged = frame[frame.below_baseline.notna()]
    evaluated = {pd.Timestamp(d).date(): n for d, n in judged.groupby("partition_date").size().items()}
    if judged_days is not None:
        judged_days += [(pd.Timestamp(d).date(), m) for d, m in zip(judged.partition_date, judged.model_id, strict=True)]
    failures = []
    for r in judged[judged.below_baseline.astype(bool)].itertuples():
        ranker = rankers[r.model_id]
        test = f"one-sided p = {r.p_value:.2g}, " if np.isfinite(r.p_value) else ""
        failures.append({
            "partition_date": pd.Timestamp(r.partition_date).date(), "model_id": r.model_id, "check_name": check,
            "severity": ranker.severity(check), "value": float(r.value), "threshold": float(r.floor),
            "message": f"{r.metric} {r.value:.4g} below {ranker.thresholds.min_metric_ratio:g} x reference "
                       f"{r.reference_value:.4g} = {r.floor:.4g} ({test}{r.n_requests:,} requests)"})
    return failures, evaluated


def drift_failures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date], check: str,
                   judged_days: list | None = None) -> tuple[list[dict], dict[dt.date, int]]:
    """The item drift check (`drift`): a ranker-day fails when its recommended items' drift or popularity
    concentration (the whole day's, version `*`) is above the threshold calibrated on its reference's day-sized
    chunks. Needs no label, so a collapse alerts on its day. Rankers without a reference are not judged. Returns
    the failures (one per ranker-day, naming each statistic above its threshold) and the ranker-days judged
    (`judged_days`, if given, gets each judged (day, ranker id))."""
    frame = con.execute(f"""SELECT partition_date, model_id, metric, value, n_requests FROM {PERFORMANCE}
                            WHERE model_version = ? AND metric IN (SELECT unnest(?::VARCHAR[]))
                              AND partition_date IN (SELECT unnest(?::DATE[]))
                            ORDER BY partition_date, model_id, metric""",
                        [ALL_VERSIONS, list(D.STATISTICS), days]).df()
    failures, evaluated = [], {}
    for ranker in config.rankers:
        ref = reference_of(config, ranker)
        mine = frame[frame.model_id == ranker.id]
        if ref is None or ref.n_requests == 0 or not len(mine):
            continue
        for day, rows in mine.groupby("partition_date", sort=True):
            day = pd.Timestamp(day).date()
            n = int(rows.n_requests.iloc[0])
            thresholds = ref.drift_thresholds(n)
            above = [(r.metric, float(r.value), thresholds[r.metric]) for r in rows.itertuples()
                     if np.isfinite(r.value)]
            if not above:
                continue
            evaluated[day] = evaluated.get(day, 0) + 1
            if judged_days is not None:
                judged_days.append((day, ranker.id))
            above = [(m, v, t) for m, v, t in above if v > t.value]
            if not above:
                continue
            # the statistic furthest beyond its threshold, in the chunks' standard deviations, leads
            above.sort(key=lambda a: -(a[1] - a[2].value) / a[2].sd if a[2].sd > 0 else -math.inf)
            metric, value, t = above[0]
            failures.append({
                "partition_date": day, "model_id": ranker.id, "check_name": check,
                "severity": ranker.thresholds.severity.get(check, "WARN"), "value": value, "threshold": t.value,
                "message": "; ".join(f"{m} {v:.3g} above {t.value:.3g} (reference chunks of {t.chunk_requests:,} "
                                     f"requests: {t.mean:.3g} +- {t.sd:.2g})" for m, v, t in above)
                           + f" on {n:,} requests",
                "details": {m: {"value": v, "threshold": t.value, "chunk_mean": t.mean, "chunk_sd": t.sd,
                                "chunks": len(t.values), "chunk_requests": t.chunk_requests} for m, v, t in above}})
    return failures, evaluated


def segment_failures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date], check: str,
                     judged_days: list | None = None) -> tuple[list[dict], dict[dt.date, int]]:
    """The segment check: a ranker-day with a tested segment (`monitoring.ranking_segment_performance`) is judged,
    and fails (WARN unless `thresholds.severity` says otherwise) when any segment's main metric is below its floor
    beyond chance (`below_floor`, adjusted across the ranker-day's segments), the message naming the segments,
    the most significant first. Returns the failures and the ranker-days judged per day (`judged_days`, if
    given, gets each judged (day, ranker id))."""
    rankers = {r.id: r for r in config.rankers if r.segments.by}
    frame = con.execute(f"""SELECT * FROM {SEGMENT_PERFORMANCE} WHERE p_adjusted IS NOT NULL
                            AND partition_date IN (SELECT unnest(?::DATE[]))
                            ORDER BY partition_date, model_id, p_adjusted, p_value, segment""", [days]).df()
    failures, evaluated = [], {}
    for (day, model_id), tested in frame.groupby(["partition_date", "model_id"], sort=True):
        ranker = rankers.get(model_id)
        tested = tested[tested.metric == ranker.main_metric] if ranker is not None else tested.iloc[0:0]
        if not len(tested):
            continue
        day = pd.Timestamp(day).date()
        evaluated[day] = evaluated.get(day, 0) + 1
        if judged_days is not None:
            judged_days.append((day, model_id))
        below = tested[tested.below_floor.astype(bool)]
        if not len(below):
            continue
        named = "; ".join(
            f"{r.segment}: {r.metric} {fmt_num(r.value)} on {int(r.n_labelled_requests):,} labelled requests vs "
            f"{fmt_num(r.reference_value)} in the {'segment' if r.reference_source == 'segment' else 'whole'} "
            f"reference (floor {fmt_num(r.floor)}, adjusted {fmt_p(r.p_adjusted)})" for r in below.head(3).itertuples())
        more = f"; and {plural(len(below) - 3, 'more segment')}" if len(below) > 3 else ""
        worst = below.iloc[0]
        failures.append({
            "partition_date": day, "model_id": model_id, "check_name": check,
            "severity": ranker.thresholds.severity.get(check, "WARN"), "value": float(worst.value),
            "threshold": float(worst.floor),
            "message": f"{plural(len(below), 'segment')} of {len(tested)} tested below "
                       f"{ranker.thresholds.min_metric_ratio:g} x their reference beyond chance: {named}{more}",
            "details": {"segments_tested": len(tested), "segments_below_floor": len(below),
                        "segments": [{"segment": r.segment, "value": float(r.value),
                                      "reference_value": float(r.reference_value), "floor": float(r.floor),
                                      "n_labelled_requests": int(r.n_labelled_requests),
                                      "p_adjusted": float(r.p_adjusted)} for r in below.head(5).itertuples()]}})
    return failures, evaluated
