"""Reading days of one source into the warehouse with every record accounted for.

Each record of a day's files ends up loaded or in `raw.quarantine` with its file, line number, the
first reason it failed, and its raw text. Files are read in groups (one model's, or the shared ones),
each group's files of several days (a chunk, up to CHUNK_BYTES) into one in-memory staging database by
the loader of its format (`formats`), checked there (`fields`, `labels`) day by day as if the days came
one after the other, and then written; read = loaded + quarantined is verified for each day before the
group is written. A range of small days costs what its records cost: one staging database per group, one
Delta commit per model and one quarantine commit per chunk, not one of each per day.

Prediction files shared by several models (no `{model}` in the path: files named otherwise, or mixing models)
are first split by the model each record names, a block at a time, into a temporary file per model
(`_route`); each model's records are then a group of their own, checked for its fields only as if they came
from a file of its own. Memory is then what one model's group takes (its staging database spills past
STAGING_MEMORY), whatever the number of models or files.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import queue
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from monitor_assets.config import (
    CLASS_CODE_COLUMN,
    CLASS_PROBABILITIES_COLUMN,
    ModelConfig,
    MonitorConfig,
    SourceConfig,
)
from monitor_assets.ingestion.fields import (
    QUARANTINE_STAGE,
    StagingPlan,
    json_path,
    note_file,
    quarantine_duplicates,
    quarantine_earlier_keys,
    reason_category_sql,
)
from monitor_assets.ingestion.formats import (
    LOADERS,
    check_pending,
    load_json_files,
    load_split_lines,
)
from monitor_assets.ingestion.labels import check_labels, count_corrected_labels
from monitor_assets.ingestion.lines import LineIndex
from monitor_assets.ingestion.log import StageResult, log_ingestion
from monitor_assets.ingestion.plans import (
    CLASS_CODE,
    CLASS_PROBABILITIES,
    LABEL_TEXT,
    MULTICLASS_STAGE,
    plan_for,
    predictions_plan,
)
from monitor_assets.storage.lake import PREDICTION_COLUMNS, TABLES, Lake, registered
from monitor_assets.storage.reads import feature_columns
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of


class SourceError(ValueError):
    """A file that cannot be read as configured."""


class MissingInput(SourceError):
    """A source-day whose glob matched no file (and the source does not allow empty days): nothing of the
    day was replaced, so rows loaded before stay."""


def files_for(source: SourceConfig, day: dt.date, model: str | None = None) -> list[str]:
    return sorted(glob.glob(source.paths_for(day, model)))


@dataclass
class FileGroup:
    """Files read together: those of one model (a `{model}` path), or the shared ones of the rest."""

    models: list[ModelConfig]
    files: list[str]
    expected: str  # the glob, for the "no input file" reason
    constant_model: str | None = None
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): matched but not read
    # A model whose records are picked out of the shared files (`_route`): the group has no files of its own
    # and reads its records from `spill`, `spilled` of them this day. The shared group keeps the rest.
    route_to: str | None = None
    spill: str | None = None
    spilled: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, note): a split file's damage or size


def allowed_folder(config: MonitorConfig) -> Path | None:
    """The folder every input file must resolve inside: the config's, unless the config says
    `allow_outside_paths: true` (None: anywhere)."""
    return None if config.allow_outside_paths else Path(config.file).resolve().parent


def _refuse_outside(config: MonitorConfig, group: FileGroup) -> FileGroup:
    """Set aside the matched files that resolve outside the allowed folder (a symbolic link to /etc/passwd):
    glob follows links. The note names the link, never what it points to or holds."""
    folder = allowed_folder(config)
    if folder is None:
        return group
    inside = [p for p in group.files if Path(p).resolve().is_relative_to(folder)]
    if len(inside) == len(group.files):
        return group
    refused = [(p, f"outside the config folder: {p} resolves outside {folder}; not read (set "
                   "allow_outside_paths: true to read it)") for p in group.files if p not in inside]
    return replace(group, files=inside, refused=group.refused + refused)


def prediction_groups(config: MonitorConfig, day: dt.date) -> list[FileGroup]:
    src = config.predictions
    if src.per_model:
        return [FileGroup([m], files_for(src, day, m.id), src.paths_for(day, m.id), m.id) for m in config.models]
    shared = FileGroup(list(config.models), files_for(src, day), src.paths_for(day))
    if not routed(src) or len(config.models) < 2:
        return [shared]
    # Each model's records are checked on their own (its fields only), as in a file of its own: checked
    # together, every record would be read for every model's features (100 models of 12 features: 1,200
    # columns a row) and a day's files would be held at once.
    return [shared] + [FileGroup([m], [], shared.expected, route_to=m.id) for m in config.models]


def routed(src: SourceConfig) -> bool:
    """Shared prediction files whose records are split by model before they are checked (`_route`) when
    they may hold several models: JSON lines with a {date} in the path (files that span days are read whole
    for each day, as before)."""
    return not src.per_model and src.format == "jsonl" and not src.split_by_time


def shard_rows(config: MonitorConfig) -> str | None:
    """SQL predicate on `model_id`: the rows of a per-model table a shard owns (its models', and for shard 0
    those of no model); None without shards (every row)."""
    if not config.sharded:
        return None
    mine = "model_id IN (" + (", ".join(sql_str(m) for m in config.model_ids) or "NULL") + ")"
    return f"{mine} OR model_id IS NULL" if config.owns_shared else mine


def _keep_shard(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan,
                constant_model: str | None, day: dt.date | None = None) -> dict[dt.date, int]:
    """In a shard, set aside what another shard reads from shared files: other shards' models' rows and,
    outside shard 0, records of no model (quarantined ones, unmatched labels), of one day (None: every day).
    Returns how many records, per day."""
    if constant_model is not None:
        return {}  # the file of one of this shard's models
    on_day, params = ("", []) if day is None else (" AND partition_date = ?", [day])
    owned = f"coalesce({shard_rows(config)}, false)"
    wheres = [(f"raw.{plan.source}", f"NOT {owned}{on_day}")]
    if not config.owns_shared:
        wheres.append(("raw.quarantine", f"line_no IS NOT NULL{on_day}"))
    gone: dict[dt.date, int] = {}
    for table, where in wheres:
        for d, n in stage.execute(f"SELECT partition_date, count(*) FROM {table} WHERE {where} GROUP BY 1",
                                  params).fetchall():
            gone[d] = gone.get(d, 0) + n
        stage.execute(f"DELETE FROM {table} WHERE {where}", params)
    return gone


def _keep_day(con: duckdb.DuckDBPyConnection, src: SourceConfig, plan: StagingPlan, day: dt.date) -> int:
    """Files that span many days (no {date} in the path) give `day` the records whose timestamp falls on it
    in the source's time zone; a record without a readable timestamp goes to the first day the files cover.
    Returns how many records were set aside for other days (they are not read on this one)."""
    local = f"timezone({sql_str(src.timezone)}, {{}})::DATE"
    stamp = (f"CASE WHEN json_valid(raw_record) THEN TRY_CAST(json_extract_string(raw_record, "
             f"{sql_str(json_path(src.fields['timestamp']))}) AS TIMESTAMPTZ) END")
    first = con.execute(f"""SELECT least((SELECT min({local.format('ts')}) FROM raw.{plan.source}),
                                         (SELECT min({local.format(stamp)}) FROM raw.quarantine))""").fetchall()[0][0]
    # A DELETE returns how many rows it removed: no counting before and after.
    elsewhere = con.execute(f"DELETE FROM raw.{plan.source} WHERE {local.format('ts')} IS DISTINCT FROM ?",
                            [day]).fetchall()[0][0]
    return elsewhere + con.execute(f"DELETE FROM raw.quarantine WHERE line_no IS NOT NULL AND "
                                   f"coalesce({local.format(stamp)}, ?) <> ?", [first, day]).fetchall()[0][0]


def _create(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str]) -> None:
    con.execute(f"CREATE TABLE {table} ({', '.join(f'{quote_ident(c)} {t}' for c, t in columns.items())})")


def ingest_workers() -> int:
    """How many groups of files are read at once: $MONITOR_INGEST_WORKERS, else the CPU count (at most 4)."""
    value = os.environ.get("MONITOR_INGEST_WORKERS", "")
    return max(1, int(value)) if value.isdigit() else min(4, os.cpu_count() or 1)


# A staging database holds one group of files; past this much memory DuckDB spills to a temporary folder
# (a day's labels of hundreds of models, joined to their predictions, would otherwise take gigabytes).
STAGING_MEMORY = os.environ.get("MONITOR_STAGING_MEMORY", "768MB")
STAGING_TEMP = os.path.join(tempfile.gettempdir(), "monitor_assets_staging")


# While a staged table streams into a Delta commit, delta-rs holds what DuckDB hands it outside DuckDB's limit
# (measured: 0.6 GB more for 5 million labels fed at full speed): the staging database then keeps this share of
# STAGING_MEMORY and spills the rest, so the two together stay near it (labels of 100 models x 50,000 rows:
# the step alone peaked at 1.80 GB in the write, now 1.21 GB in the label check, in the same 24 s).
WRITE_SHARE = 1 / 3
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30,
          "tib": 2 ** 40}


def memory_bytes(text: str) -> int | None:
    """DuckDB's size syntax ('768MB', '1.5 GiB') in bytes; None for anything else (a percentage, a typo)."""
    number = text.strip().lower().rstrip("bikmgt ")
    unit = text.strip().lower()[len(number):].replace(" ", "") or "b"
    try:
        return int(float(number) * _UNITS[unit])
    except (ValueError, KeyError):
        return None


@contextmanager
def _writing_share(stage: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The staging database at WRITE_SHARE of its memory for the length of a streamed write."""
    total = memory_bytes(STAGING_MEMORY)
    if total is None:
        yield
        return
    stage.execute(f"SET memory_limit = '{int(total * WRITE_SHARE)}B'")
    try:
        yield
    finally:
        stage.execute(f"SET memory_limit = '{total}B'")


def _staging_database(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB where groups of files are read and checked, one group at a time."""
    con = duckdb.connect(config={"preserve_insertion_order": False, "memory_limit": STAGING_MEMORY,
                                 "temp_directory": STAGING_TEMP,
                                 **({"threads": threads} if threads else {})})
    # Naive timestamps are UTC for both readers: DuckDB's JSON reader ignores the session's time zone.
    con.execute("SET TimeZone = 'UTC'")
    return con


def _staging(con: duckdb.DuckDBPyConnection, plan: StagingPlan, columns: dict[str, str], lake: Lake,
             models: list[str]) -> duckdb.DuckDBPyConnection:
    """Reset the staging database for one group of files: `raw.<source>` and `raw.quarantine` hold what is
    read (of several days: every row has its `partition_date`). The stored earlier days (`lake.<source>`)
    are made after the files are read (`_lake_views`): they are the stored rows of the days this group
    does not replace, and the staged ones of the days it does."""
    con.execute("DROP SCHEMA IF EXISTS raw CASCADE; DROP SCHEMA IF EXISTS lake CASCADE; CREATE SCHEMA raw; "
                "CREATE SCHEMA lake")
    if plan.known_models:  # the same for every group of a day: made once per staging database
        con.execute("CREATE TABLE IF NOT EXISTS known_models AS SELECT unnest(?::VARCHAR[]) AS model_id",
                    [list(plan.known_models)])
    _create(con, f"raw.{plan.source}", columns)
    _create(con, "raw.quarantine", QUARANTINE_STAGE)
    if plan.source == "labels":
        lake.attach_models(con, models or lake.models())
        con.execute("CREATE VIEW lake.predictions AS SELECT * FROM raw.predictions")
        lake.refresh(con, "raw.labels")
    return con


def _dates_sql(days: list[dt.date]) -> str:
    """SQL: `partition_date` is one of these days (typed literals, for a view: it takes no parameters)."""
    return "partition_date IN (" + ", ".join(f"DATE {sql_str(d.isoformat())}" for d in days) + ")"


def _stored_and_staged(con: duckdb.DuckDBPyConnection, plan: StagingPlan, stored: str, columns: str,
                       writes: list[dt.date], owned: str | None = None) -> None:
    """`lake.<source>`: what the table holds once the earlier days of this group are written: the stored rows,
    less those the group replaces (its days, the rows it owns), and the staged ones. Reading days in order
    against it is reading them one at a time against the table as each landed."""
    replaced = _dates_sql(writes) + (f" AND ({owned})" if owned else "")
    con.execute(f"""CREATE VIEW lake.{plan.source} AS
                    SELECT {columns} FROM {stored} WHERE NOT coalesce({replaced}, false)
                    UNION ALL SELECT {columns} FROM raw.{plan.source}""")


def _days_to_recheck(stage: duckdb.DuckDBPyConnection, plan: StagingPlan) -> set[dt.date]:
    """The days with a key seen more than once (that day, on another staged day, or stored): only those can
    have a duplicate, so only those run the duplicate checks. Most runs have none."""
    key, table = plan.key, f"raw.{plan.source}"
    # The stored predictions' keys are those of the staged ones already (`lake.stored_keys`); labels' are not.
    among = f" WHERE {key} IN (SELECT {key} FROM {table})" if plan.source == "labels" else ""
    seen = f"SELECT {key} FROM lake.{plan.source}{among}"
    repeated = (f"SELECT {key} FROM ({seen}) GROUP BY {key} HAVING count(*) > 1" if plan.unique_across_days else
                f"SELECT {key} FROM {table} GROUP BY partition_date, {key} HAVING count(*) > 1")
    return {d for (d,) in stage.execute(f"SELECT DISTINCT partition_date FROM {table} "
                                        f"WHERE {key} IN ({repeated})").fetchall()}


def _stage_columns(wh: duckdb.DuckDBPyConnection, plan: StagingPlan) -> dict[str, str]:
    if plan.source == "predictions":
        types = {alias: ("DOUBLE" if ftype == "numeric" else "VARCHAR")
                 for (_, ftype), alias in plan.feature_aliases.items()}
        extra = MULTICLASS_STAGE if CLASS_CODE in plan.targets else {}
        return {**PREDICTION_COLUMNS, **types, **extra}
    if f"raw.{plan.source}" in TABLES:
        return {**TABLES[f"raw.{plan.source}"][0], **({LABEL_TEXT: "VARCHAR"} if LABEL_TEXT in plan.targets else {})}
    return {name: ctype for name, ctype in wh.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'raw' "
        "AND table_name = ? ORDER BY ordinal_position", [plan.source]).fetchall()}


def _env_mb(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return (int(value) if value.isdigit() and int(value) > 0 else default) << 20


# Days are read together, up to about this many bytes of input files a chunk (a gzip file counts 8 times its
# size): a backfill of small days costs what its rows cost (one staging database per group, one Delta commit
# per model and one quarantine commit for the chunk), and a long range of big days is split into chunks that
# memory holds. A day is never split: a day bigger than this is a chunk of its own (its staging database
# spills past STAGING_MEMORY).
CHUNK_BYTES = _env_mb("MONITOR_INGEST_CHUNK_MB", 256)
# and at most this many days: memory grows with the partitions (days) a commit writes (a year of one model of
# 200 rows a day: 790 MB peak in one chunk, 430 MB in chunks of 62 days, about as fast).
_days = os.environ.get("MONITOR_INGEST_CHUNK_DAYS", "").strip()
CHUNK_DAYS = int(_days) if _days.isdigit() and int(_days) > 0 else 62


def _input_bytes(groups: list[FileGroup]) -> int:
    total = 0
    for path in (p for g in groups for p in g.files):
        try:
            total += os.path.getsize(path) * (8 if path.endswith(".gz") else 1)
        except OSError:
            pass  # gone since the glob: the reader notes it
    return total


def day_chunks(days: list[dt.date], sizes: list[int], budget: int, one_day: bool = False,
               max_days: int | None = None) -> list[list[dt.date]]:
    """Consecutive runs of at most `max_days` of `days` whose `sizes` add up to at most `budget` (a day over it
    alone); `one_day`: each day alone (files that span days are read whole for each day)."""
    chunks: list[list[dt.date]] = []
    used = 0
    for day, size in zip(days, sizes, strict=True):
        if not chunks or one_day or used + size > budget or (max_days and len(chunks[-1]) >= max_days):
            chunks.append([])
            used = 0
        chunks[-1].append(day)
        used += size
    return chunks


def _groups_of(config: MonitorConfig, source: str, src: SourceConfig, day: dt.date) -> list[FileGroup]:
    if source == "predictions":
        groups = prediction_groups(config, day)
    else:
        # Labels are matched to every model's predictions; outside shard 0 only to the shard's own (a label of
        # another shard's prediction is that shard's, whether matched or not), which halves that shard's join.
        matched_to = list(config.models) if source == "labels" and not config.owns_shared else []
        groups = [FileGroup(matched_to, files_for(src, day), src.paths_for(day))]
    return [_refuse_outside(config, g) for g in groups]


Outcome = StageResult | MissingInput


def ingest_days(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, days: list[dt.date],
                committed: Callable[[dt.date, str, int], None] | None = None, log: bool = True,
                done: Callable[[dt.date, Outcome], None] | None = None) -> list[tuple[dt.date, Outcome]]:
    """Replace these days of one source: every record loaded or quarantined, read = loaded + quarantined on
    each day. Returns each day's `StageResult`, or the `MissingInput` of a day whose glob matched nothing
    (nothing of that day is written; the other days load).

    Days are read in chunks (`CHUNK_BYTES`). In a chunk each group of files (one model's, or the shared ones)
    is read for all its days into one in-memory DuckDB, checked there day by day as if the days came one
    after the other, then written: predictions one Delta commit per model, labels and the quarantine one
    commit each, interactions and sales too. `committed(day, model id, rows)` is called for
    each model-day of predictions as it lands (from the ingesting thread); `done(day, outcome)` for each day
    in order as its chunk is stored. `log` False: the caller writes `raw.ingestion_log`."""
    src = config.predictions if source == "predictions" else plan_for(config, source)[0]
    allow_empty = bool(getattr(src, "allow_empty", False))
    by_day = {day: _groups_of(config, source, src, day) for day in days}
    outcomes: dict[dt.date, Outcome] = {}
    for day in days:
        if not allow_empty and not any(g.files or g.refused for g in by_day[day]):
            # A wrong path (a typo) matches nothing on every day: replacing the days' rows with nothing would
            # hide it behind "0 rows, all checks passed". Nothing is written; the rows loaded before stay.
            outcomes[day] = MissingInput(
                f"{source} {day}: no file matches {src.paths_for(day)}; nothing of the day was replaced (rows "
                f"loaded before stay): check sources.{source}.path, or set allow_empty: true on "
                f"sources.{source} if days without files are expected")
    ready = [d for d in days if d not in outcomes]
    if ready:  # the groups are the same every day (the models' files, or the shared ones)
        first = by_day[ready[0]]
        plans = ([predictions_plan(config, g.models, g.constant_model) for g in first] if source == "predictions"
                 else [plan_for(config, source)[1]])
    reported = 0

    def report() -> None:  # each day in order, once its chunk is stored
        nonlocal reported
        while reported < len(days) and days[reported] in outcomes:
            if done is not None:
                done(days[reported], outcomes[days[reported]])
            reported += 1

    report()
    sizes = [_input_bytes(by_day[d]) for d in ready]
    for chunk in day_chunks(ready, sizes, CHUNK_BYTES, src.split_by_time, CHUNK_DAYS):
        outcomes.update(_ingest_chunk(con, config, source, src, plans, {d: by_day[d] for d in chunk}, committed))
        report()
    results = [(d, outcomes[d]) for d in days]
    if log:
        log_ingestion(con, config, source, [(d, r) for d, r in results if isinstance(r, StageResult)])
    return results


def ingest_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, day: dt.date,
               committed: Callable[[dt.date, str, int], None] | None = None, log: bool = True) -> StageResult:
    """Replace one day of one source (`ingest_days` of one day); raises its `MissingInput`."""
    [(_, outcome)] = ingest_days(con, config, source, [day], committed, log)
    if isinstance(outcome, MissingInput):
        raise outcome
    return outcome


# The shared files are split by model a block of about this many bytes at a time (`_route`).
ROUTE_BLOCK_BYTES = _env_mb("MONITOR_ROUTE_BLOCK_MB", 64)
_ROUTE_COLUMNS = pa.schema([("source_file", pa.string()), ("partition_date", pa.date32()), ("line_no", pa.int64()),
                            ("text", pa.large_string()), ("problem", pa.string())])


def _route(config: MonitorConfig, src: SourceConfig, by_day: dict[dt.date, list[FileGroup]],
           folder: str) -> dict[dt.date, list[FileGroup]]:
    """Split the shared files' lines by the model their record names, a block at a time, into one Parquet file
    per model in `folder` (on disk: a day of every model is not held in memory); the lines of no configured
    model (unreadable, not JSON, no or an unknown model_id) go to the shared group's file, checked there
    against every model's rules as before; another shard's models' lines are left to it. Returns the groups
    with their spill files and counts set."""
    path = json_path(src.fields["model_id"]) if src.fields.get("model_id") else None
    groups0 = next(iter(by_day.values()))
    slots = pa.array([g.route_to for g in groups0[1:]], pa.string())  # group i + 1 reads model i's records
    # Another shard's models' records are that shard's to check and count (it reads the same files).
    others = pa.array(sorted(set(config.known_model_ids) - {g.route_to for g in groups0}), pa.string())
    spills = [os.path.join(folder, f"group_{i}.parquet") for i in range(len(groups0))]
    writers: dict[int, pq.ParquetWriter] = {}
    counts = {d: [0] * len(groups0) for d in by_day}
    notes: dict[dt.date, list[tuple[str, str]]] = {d: [] for d in by_day}
    # The model a line names, as the careful reader reads it; a line it cannot read (not JSON, a problem found
    # before parsing) names none, and a line read differently would still get the same reason in any group.
    # Insertion order is kept: row i is line i of the block.
    router = duckdb.connect(config={"memory_limit": STAGING_MEMORY, "temp_directory": STAGING_TEMP})
    pick = (f"SELECT CASE WHEN problem IS NULL THEN TRY(json_extract_string(text, {sql_str(path)})) END FROM _block"
            if path else "SELECT NULL::VARCHAR FROM _block")
    try:
        for day, groups in by_day.items():
            for file in groups[0].files:
                index = LineIndex(file).wait()
                if index.too_large:  # noted in the shared group, as `_load_json` does; none of it is read
                    notes[day].append((file, index.too_large))
                    continue
                if index.damage:
                    notes[day].append((file, f"{index.damage}; records after the damage are lost"))
                start = 0
                for stop in index.block_ends(ROUTE_BLOCK_BYTES):
                    lines = index.block(start, stop)
                    start = stop
                    router.register("_block", lines)
                    try:
                        names = router.sql(pick).to_arrow_table().column(0)
                    finally:
                        router.unregister("_block")
                    slot = pc.fill_null(pc.index_in(names, value_set=slots), -1).to_numpy() + 1
                    if len(others):
                        slot[pc.fill_null(pc.is_in(names, value_set=others), False).to_numpy(zero_copy_only=False)] = -1
                    lines = (lines.add_column(0, "source_file", pa.repeat(pa.scalar(file), lines.num_rows))
                             .add_column(1, "partition_date", pa.repeat(pa.scalar(day, pa.date32()), lines.num_rows)))
                    for k in (k for k in np.unique(slot).tolist() if k >= 0):
                        rows = lines.take(pa.array(np.flatnonzero(slot == k))).cast(_ROUTE_COLUMNS)
                        if k not in writers:
                            writers[k] = pq.ParquetWriter(spills[k], _ROUTE_COLUMNS, compression="none")
                        writers[k].write_table(rows)
                        counts[day][k] += rows.num_rows
    finally:
        router.close()
        for w in writers.values():
            w.close()
    return {d: [replace(g, spill=spills[i] if i in writers else None, spilled=counts[d][i],
                        notes=notes[d] if i == 0 else [])
                for i, g in enumerate(groups)] for d, groups in by_day.items()}


def _ingest_chunk(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, src: SourceConfig,
                  plans: list[StagingPlan], by_day: dict[dt.date, list[FileGroup]],
                  committed: Callable[[dt.date, str, int], None] | None,
                  spilled: bool = False) -> dict[dt.date, StageResult]:
    """One chunk of days: each group read, checked and written (see `ingest_days`). Shared prediction files
    are first split by model (`_route`; `spilled`: done)."""
    if source == "predictions" and not spilled and any(g.route_to for g in next(iter(by_day.values()))):
        os.makedirs(STAGING_TEMP, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="route_", dir=STAGING_TEMP)
        try:
            return _ingest_chunk(con, config, source, src, plans, _route(config, src, by_day, folder), committed,
                                 spilled=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    lake = lake_of(con)
    days = list(by_day)
    allow_empty = bool(getattr(src, "allow_empty", False))
    # A group whose glob matched nothing on a day among groups that did (one model's file missing): its rows
    # loaded before are kept, not replaced with nothing; its `no_file` note replaces its earlier notes.
    kept = {d: [g.constant_model for g in groups if not g.files and not allow_empty and g.constant_model]
            for d, groups in by_day.items()}
    # Groups are independent (their own files, their own model's table): a few are read at once, each in
    # its own staging database (DuckDB, numpy and the Delta writer work outside the GIL). Results keep the
    # groups' order, so the outcome is the same with one worker or several.
    workers = min(ingest_workers(), len(plans)) if source == "predictions" else 1
    stages: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        stages.put(_staging_database(threads=1 if workers > 1 else None))

    def one(i: int) -> tuple[dict[dt.date, tuple[int, int, int]], pa.Table]:
        plan, groups = plans[i], {d: by_day[d][i] for d in days}
        models = groups[days[0]].models
        writes = [d for d, g in groups.items() if g.files or allow_empty or g.constant_model is None]
        route_to = groups[days[0]].route_to
        stage = stages.get()
        try:
            _staging(stage, plan, _stage_columns(con, plan), lake, [m.id for m in models])
            counts = _stage_days(stage, config, src, plan, groups, writes, lake, [m.id for m in models], spilled)
            if spilled:  # a record loaded in another model's group would be counted but never written
                stray = stage.execute("SELECT count(*) FROM raw.predictions WHERE model_id IS DISTINCT FROM ?",
                                      [route_to]).fetchall()[0][0]
                if stray:
                    raise RuntimeError(f"predictions: {stray} records split to the group of "
                                       f"{route_to or 'no model'} loaded for another model")
            if writes:
                # The shared group of split files writes no model's rows: each model's group writes its own.
                _commit_group(con, config, lake, stage, plan, [] if spilled and route_to is None else models,
                              writes, committed)
            # `reason` becomes the category; the text the checks wrote is kept as `detail`.
            return counts, stage.sql(
                f"SELECT * REPLACE ({reason_category_sql('reason')} AS reason), reason AS detail, "
                "$1::VARCHAR AS model_id FROM raw.quarantine", params=[groups[days[0]].constant_model or route_to]
            ).to_arrow_table()
        finally:
            stages.put(stage)

    try:
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
                outcomes = list(pool.map(one, range(len(plans))))
        else:
            outcomes = [one(i) for i in range(len(plans))]
    finally:
        while not stages.empty():
            stages.get().close()
    rows = pa.concat_tables([o[1] for o in outcomes])
    owned = shard_rows(config) if source in ("predictions", "labels") else None
    replaced = owned
    keeping: dict[tuple[str, ...], list[dt.date]] = {}
    for d in days:
        if kept[d]:
            keeping.setdefault(tuple(kept[d]), []).append(d)
    if keeping:  # the kept model-days' record rows stay with their loaded rows
        which = " OR ".join(f"({_dates_sql(ds)} AND coalesce(model_id IN ({', '.join(sql_str(m) for m in ms)}), false))"
                            for ms, ds in keeping.items())
        keep = f"NOT (line_no IS NOT NULL AND ({which}))"
        replaced = f"({owned}) AND {keep}" if owned else keep
    lake.replace("raw.quarantine", rows, days, source=source, where=replaced)
    lake.refresh(con, "raw.quarantine")
    if source == "predictions":
        lake.attach_models(con, config.model_ids if config.sharded else lake.models())
    elif f"raw.{source}" in TABLES:
        lake.refresh(con, f"raw.{source}")
    return {d: _day_result(config, by_day[d], [o[0][d] for o in outcomes], rows, d) for d in days}


def _day_result(config: MonitorConfig, groups: list[FileGroup], counts: list[tuple[int, int, int]],
                quarantine: pa.Table, day: dt.date) -> StageResult:
    """A day's counts from its groups', and its reasons and notes from what was staged (a kept model-day's
    old rows are not this run's)."""
    # Shared files are read by every shard and counted by shard 0, so the shards' counts add up to the day's.
    files = [f for group in groups for f in group.files if config.owns_shared or group.constant_model is not None]
    read, loaded, corrected = (sum(c[i] for c in counts) for i in range(3))
    reasons: dict[str, int] = {}
    notes: list[str] = []
    rows = quarantine.filter(pc.equal(quarantine["partition_date"], pa.scalar(day, pa.date32())))
    if rows.num_rows:
        records = rows.filter(pc.is_valid(rows["line_no"]))
        counted = [(v["values"], v["counts"]) for v in pc.value_counts(records["reason"]).to_pylist()]
        reasons = dict(sorted(counted, key=lambda kv: (-kv[1], kv[0])))
        files_noted = rows.filter(pc.is_null(rows["line_no"]))
        notes = [f"{r}: {d}" for r, d in zip(files_noted["reason"].to_pylist(), files_noted["detail"].to_pylist(),
                                             strict=True)]
    return StageResult(files, read, loaded, sum(reasons.values()), reasons, corrected, notes)


def _stage_days(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, src: SourceConfig, plan: StagingPlan,
                groups: dict[dt.date, FileGroup], writes: list[dt.date], lake: Lake,
                models: list[str], split: bool = False) -> dict[dt.date, tuple[int, int, int]]:
    """Read and check one group's files of several days in the staging database, each day's checks as if
    the days were read one after the other (`split`: its records from its split file, `_route`). Returns
    each day's (read, loaded, labels corrected)."""
    read = dict.fromkeys(groups, 0)
    corrected = dict.fromkeys(groups, 0)
    for day, group in groups.items():
        for path, detail in group.refused:
            note_file(stage, plan, day, path, detail)
    spill = next((g.spill for g in groups.values() if g.spill), None)
    if split:  # records split out of shared files (`_route`)
        if spill is not None:
            load_split_lines(stage, plan, spill)
        for day, group in groups.items():
            read[day] += group.spilled
            for path, detail in group.notes:
                note_file(stage, plan, day, path, detail)
    elif src.format == "jsonl":  # small files checked together: a file costs its lines, not a statement
        files = [(path, day) for day, group in groups.items() for path in group.files]
        for (_, day), n in zip(files, load_json_files(stage, plan, files), strict=True):
            read[day] += n
    for day, group in groups.items():
        for path in group.files if src.format != "jsonl" else ():
            try:
                read[day] += LOADERS[src.format](stage, plan, path, day, later=True)
            except duckdb.Error as exc:
                # One file DuckDB cannot open (not Parquet, say) is noted and skipped: the group's other files
                # and the other models load. The note keeps the error's first line only, cut: never the file.
                _forget_file(stage, plan, path, day, exc)
                note_file(stage, plan, day, path, unreadable(src.format, exc))
    check_pending(stage, plan)
    for day, group in groups.items():
        if group.files and src.split_by_time:  # a chunk of one day (`day_chunks`)
            read[day] -= _keep_day(stage, src, plan, day)
        if (not group.files and not group.refused and group.route_to is None
                and (config.owns_shared or group.constant_model is not None)):
            # A shared file's absence is shard 0's to say.
            note_file(stage, plan, day, group.expected, f"no input file: nothing matched {group.expected}")
    # A model's records split out of shared files are its shard's, quarantined ones included.
    constant_model = next(iter(groups.values())).constant_model or next(iter(groups.values())).route_to
    with_files = [d for d, g in groups.items() if g.files or g.spilled]
    if with_files:
        # No record loaded (a split file's records of no model): no duplicate to look for, no stored keys to read.
        keys = not split or stage.execute(f"SELECT count(*) FROM raw.{plan.source}").fetchall()[0][0] > 0
        if keys and plan.unique_across_days:  # the stored keys of the staged ones, of the days this group keeps
            stage.execute(f"""CREATE TABLE lake.stored_keys AS SELECT partition_date, {plan.key}
                              FROM ({lake.predictions_union(stage, models)})
                              WHERE {plan.key} IN (SELECT {plan.key} FROM raw.{plan.source})""")
            _stored_and_staged(stage, plan, "lake.stored_keys", f"partition_date, {plan.key}", writes)
        recheck = _days_to_recheck(stage, plan) if plan.key and keys else set()
        for day in with_files:
            if day in recheck:
                if plan.unique_across_days:
                    quarantine_earlier_keys(stage, plan, day)
                quarantine_duplicates(stage, plan, day)
                if config.sharded and plan.source != "labels":  # before the next day looks back at this one
                    for d, n in _keep_shard(stage, config, plan, constant_model, day).items():
                        read[d] -= n
        if plan.source == "labels":
            check_labels(stage, config, plan)  # every day at once: each label to its prediction
        if config.sharded:
            for d, n in _keep_shard(stage, config, plan, constant_model).items():
                read[d] -= n
        if plan.source == "labels":
            _stored_and_staged(stage, plan, registered("raw.labels"), "partition_date, prediction_id, label",
                               writes, shard_rows(config))
            for day in _days_to_recheck(stage, replace(plan, unique_across_days=True)) & set(with_files):
                corrected[day] = count_corrected_labels(stage, day)
    loaded = dict(stage.execute(f"SELECT partition_date, count(*) FROM raw.{plan.source} GROUP BY 1").fetchall())
    quarantined = dict(stage.execute("SELECT partition_date, count(*) FROM raw.quarantine WHERE line_no IS NOT NULL "
                                     "GROUP BY 1").fetchall())
    counts = {}
    for day in groups:
        n_loaded, n_quarantined = loaded.get(day, 0), quarantined.get(day, 0)
        if read[day] != n_loaded + n_quarantined:  # nothing may be lost: abort rather than write a gap
            raise RuntimeError(f"{plan.source} {day}: read {read[day]} records but loaded {n_loaded} and "
                               f"quarantined {n_quarantined}")
        counts[day] = (read[day], n_loaded, corrected[day])
    return counts


def unreadable(fmt: str, exc: duckdb.Error) -> str:
    """The note of a file DuckDB could not open: the error's first line only, cut (never the file's content)."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"unreadable file: cannot be read as {fmt} ({type(exc).__name__}: {first}); not read"


def _forget_file(stage: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date,
                 exc: duckdb.Error) -> None:
    """Remove what a file that failed half-way staged (its rows name their file); a table that keeps no
    file name cannot be cleaned, and then the file fails the step as before."""
    stage.execute("DELETE FROM raw.quarantine WHERE source_file = ? AND partition_date = ?", [path, day])
    columns = [d[0] for d in stage.execute(f"SELECT * FROM raw.{plan.source} LIMIT 0").description]
    if "source_file" in columns:
        stage.execute(f"DELETE FROM raw.{plan.source} WHERE source_file = ? AND partition_date = ?", [path, day])
    elif stage.execute(f"SELECT count(*) FROM raw.{plan.source} WHERE partition_date = ?", [day]).fetchall()[0][0]:
        raise SourceError(f"{path}: cannot be read as {plan.source} data: {type(exc).__name__}") from None


def _staged_rows(stage: duckdb.DuckDBPyConnection, sql: str, params: list, empty: bool
                 ) -> Callable[[], pa.Table | pa.RecordBatchReader]:
    """What `Lake._write` takes for staged rows: a function giving them again if the commit loses a race (to
    another shard's on the same day), streamed, so millions of rows are not copied into one Arrow table; an
    empty result as a table (the write then deletes the days' rows)."""
    def rows():
        relation = stage.sql(sql, params=params or None)
        return relation.to_arrow_table() if empty else relation.fetch_record_batch(1 << 17)
    return rows


def _commit_group(con: duckdb.DuckDBPyConnection, config: MonitorConfig, lake: Lake, stage: duckdb.DuckDBPyConnection,
                  plan: StagingPlan, models: list[ModelConfig], days: list[dt.date],
                  committed: Callable[[dt.date, str, int], None] | None = None) -> None:
    """Write one group's loaded rows of these days where their table lives."""
    if plan.source == "predictions":
        shared = [quote_ident(c) for c in PREDICTION_COLUMNS]
        columns = feature_columns(config)
        for m in models:
            picks = ", ".join(shared + [f"{plan.feature_aliases[(f.source, f.type)]} AS {quote_ident(columns[(f.source, f.type)])}"
                                        for f in m.logged_columns]
                              + ([f"{CLASS_CODE} AS {CLASS_CODE_COLUMN}", f"{CLASS_PROBABILITIES} AS {CLASS_PROBABILITIES_COLUMN}"]
                                 if m.is_multiclass else []))
            per_day = dict(stage.execute("SELECT partition_date, count(*) FROM raw.predictions WHERE model_id = ? "
                                         "GROUP BY ALL", [m.id]).fetchall())
            staged = _staged_rows(stage, f"SELECT {picks} FROM raw.predictions WHERE model_id = $1", [m.id],
                                  empty=not per_day)
            with _writing_share(stage):
                lake.replace_model_days(m.id, staged, days)  # one commit for the model's days
            if committed is not None:
                for day in days:
                    committed(day, m.id, per_day.get(day, 0))
        return
    # Labels sorted by model: a model's drift and fairness read only its own row groups.
    order = " ORDER BY partition_date, model_id NULLS LAST" if plan.source == "labels" else ""
    empty = not stage.execute(f"SELECT count(*) FROM raw.{plan.source}").fetchall()[0][0]
    staged = _staged_rows(stage, f"SELECT * FROM raw.{plan.source}{order}", [], empty)
    # Interactions and sales belong to no model: every shard that reads them writes the same rows.
    owned = shard_rows(config) if "model_id" in TABLES[f"raw.{plan.source}"][0] else None
    with _writing_share(stage):
        lake.replace(f"raw.{plan.source}", staged, days, where=owned)
