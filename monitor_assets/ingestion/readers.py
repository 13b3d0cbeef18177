"""Reading a day of one source into the warehouse with every record accounted for.

Each record of a day's files ends up loaded or in `raw.quarantine` with its file, line number, the
first reason it failed, and its raw text. Files are read in groups (one model's, or the shared ones),
each into its own in-memory staging database by the loader of its format (`formats`), checked there
(`fields`, `labels`), and then written; read = loaded + quarantined is verified before the group is
written.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import queue
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

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
from monitor_assets.ingestion.formats import LOADERS
from monitor_assets.ingestion.labels import check_labels, count_corrected_labels
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
from monitor_assets.storage.warehouse import lake_of, transaction


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
    return [FileGroup(list(config.models), files_for(src, day), src.paths_for(day))]


def shard_rows(config: MonitorConfig) -> str | None:
    """SQL predicate on `model_id`: the rows of a per-model table a shard owns (its models', and for shard 0
    those of no model); None without shards (every row)."""
    if not config.sharded:
        return None
    mine = "model_id IN (" + (", ".join(sql_str(m) for m in config.model_ids) or "NULL") + ")"
    return f"{mine} OR model_id IS NULL" if config.owns_shared else mine


def _keep_shard(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan,
                group: FileGroup) -> int:
    """In a shard, set aside what another shard reads from shared files: other shards' models' rows and,
    outside shard 0, records of no model (quarantined ones, unmatched labels). Returns how many records."""
    if group.constant_model is not None:
        return 0  # the file of one of this shard's models
    owned = f"coalesce({shard_rows(config)}, false)"
    gone = stage.execute(f"DELETE FROM raw.{plan.source} WHERE NOT {owned}").fetchall()[0][0]
    if not config.owns_shared:
        gone += stage.execute("DELETE FROM raw.quarantine WHERE line_no IS NOT NULL").fetchall()[0][0]
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


def _staging_database(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB where groups of files are read and checked, one group at a time."""
    con = duckdb.connect(config={"preserve_insertion_order": False, "memory_limit": STAGING_MEMORY,
                                 "temp_directory": os.path.join(tempfile.gettempdir(), "monitor_assets_staging"),
                                 **({"threads": threads} if threads else {})})
    # Naive timestamps are UTC for both readers: DuckDB's JSON reader ignores the session's time zone.
    con.execute("SET TimeZone = 'UTC'")
    return con


def _staging(con: duckdb.DuckDBPyConnection, plan: StagingPlan, columns: dict[str, str], lake: Lake,
             models: list[str]) -> duckdb.DuckDBPyConnection:
    """Reset the staging database for one group of files: `raw.<source>` and `raw.quarantine` hold what is
    read, `lake.<source>` (and `lake.predictions` for labels) the stored earlier days."""
    con.execute("DROP SCHEMA IF EXISTS raw CASCADE; DROP SCHEMA IF EXISTS lake CASCADE; CREATE SCHEMA raw; "
                "CREATE SCHEMA lake")
    if plan.known_models:  # the same for every group of a day: made once per staging database
        con.execute("CREATE TABLE IF NOT EXISTS known_models AS SELECT unnest(?::VARCHAR[]) AS model_id",
                    [list(plan.known_models)])
    _create(con, f"raw.{plan.source}", columns)
    _create(con, "raw.quarantine", QUARANTINE_STAGE)
    if plan.source == "predictions":
        con.execute(f"CREATE VIEW lake.predictions AS {lake.predictions_union(con, models)}")
    if plan.source == "labels":
        lake.attach_models(con, models or lake.models())
        con.execute("CREATE VIEW lake.predictions AS SELECT * FROM raw.predictions")
        lake.refresh(con, "raw.labels")
        con.execute(f"CREATE VIEW lake.labels AS SELECT * FROM {registered('raw.labels')}")
    return con


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


def ingest_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, day: dt.date,
               committed: Callable[[dt.date, str, int], None] | None = None, log: bool = True) -> StageResult:
    """Replace one day of one source: every record loaded or quarantined, read = loaded + quarantined.

    Each group of files (one model's, or the shared ones) is read into an in-memory DuckDB, checked there,
    then written: predictions one Delta commit per model-day, labels and the day's quarantine one commit
    each, interactions and sales one DuckDB transaction. Memory holds one group at a time. `committed(day,
    model id, rows)` is called as each model-day of predictions lands (from the ingesting thread). `log`
    False: the caller writes `raw.ingestion_log` (`log_ingestion`, one commit for many days)."""
    lake = lake_of(con)
    if source == "predictions":
        src = config.predictions
        groups = [(g, predictions_plan(config, g.models, g.constant_model)) for g in prediction_groups(config, day)]
    else:
        src, plan = plan_for(config, source)
        # Labels are matched to every model's predictions; outside shard 0 only to the shard's own (a label of
        # another shard's prediction is that shard's, whether matched or not), which halves that shard's join.
        matched_to = list(config.models) if source == "labels" and not config.owns_shared else []
        groups = [(FileGroup(matched_to, files_for(src, day), src.paths_for(day)), plan)]
    groups = [(_refuse_outside(config, g), plan) for g, plan in groups]
    allow_empty = bool(getattr(src, "allow_empty", False))
    if not allow_empty and not any(g.files or g.refused for g, _ in groups):
        # A wrong path (a typo) matches nothing on every day: replacing the days' rows with nothing would
        # hide it behind "0 rows, all checks passed". Nothing is written; the rows loaded before stay.
        raise MissingInput(f"{source} {day}: no file matches {src.paths_for(day)}; nothing of the day was "
                           f"replaced (rows loaded before stay): check sources.{source}.path, or set "
                           f"allow_empty: true on sources.{source} if days without files are expected")
    # A group whose glob matched nothing among groups that did (one model's file missing): its rows loaded
    # before are kept, not replaced with nothing; its `no_file` note replaces its earlier notes.
    kept = [g.constant_model for g, _ in groups if not g.files and not allow_empty and g.constant_model]
    # Groups are independent (their own files, their own model's table): a few are read at once, each in
    # its own staging database (DuckDB, numpy and the Delta writer work outside the GIL). Results keep the
    # groups' order, so the outcome is the same with one worker or several.
    workers = min(ingest_workers(), len(groups)) if source == "predictions" else 1
    stages: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        stages.put(_staging_database(threads=1 if workers > 1 else None))

    def one(group_plan: tuple[FileGroup, StagingPlan]) -> tuple[int, int, int, pa.Table]:
        group, plan = group_plan
        stage = stages.get()
        try:
            _staging(stage, plan, _stage_columns(con, plan), lake, [m.id for m in group.models])
            r, n_loaded, n_corrected = _stage_group(stage, config, src, plan, group, day)
            if group.files or allow_empty or group.constant_model is None:
                _commit_group(con, config, lake, stage, plan, group, day, committed)
            # `reason` becomes the category; the text the checks wrote is kept as `detail`.
            return r, n_loaded, n_corrected, stage.sql(
                f"SELECT * REPLACE ({reason_category_sql('reason')} AS reason), reason AS detail, "
                "$1::VARCHAR AS model_id FROM raw.quarantine", params=[group.constant_model]).to_arrow_table()
        finally:
            stages.put(stage)

    try:
        if workers > 1:
            with ThreadPoolExecutor(workers, thread_name_prefix="ingest") as pool:
                outcomes = list(pool.map(one, groups))
        else:
            outcomes = [one(g) for g in groups]
    finally:
        while not stages.empty():
            stages.get().close()
    # Shared files are read by every shard and counted by shard 0, so the shards' counts add up to the day's.
    files = [f for group, _ in groups for f in group.files
             if config.owns_shared or group.constant_model is not None]
    read, loaded, corrected = (sum(o[i] for o in outcomes) for i in range(3))
    quarantine = [o[3] for o in outcomes]
    rows = pa.concat_tables(quarantine) if quarantine else pa.table({})
    owned = shard_rows(config) if source in ("predictions", "labels") else None
    replaced = owned
    if kept:  # the kept model-days' record rows stay with their loaded rows
        keep = f"NOT (line_no IS NOT NULL AND coalesce(model_id IN ({', '.join(sql_str(m) for m in kept)}), false))"
        replaced = f"({owned}) AND {keep}" if owned else keep
    lake.replace("raw.quarantine", rows, [day], source=source, where=replaced)
    lake.refresh(con, "raw.quarantine")
    if source == "predictions":
        lake.attach_models(con, config.model_ids if config.sharded else lake.models())
    elif f"raw.{source}" in TABLES:
        lake.refresh(con, f"raw.{source}")
    # Counted from what this run staged (a kept model-day's old rows are not this run's).
    reasons: dict[str, int] = {}
    notes: list[str] = []
    if rows.num_rows:
        records = rows.filter(pc.is_valid(rows["line_no"]))
        counted = [(v["values"], v["counts"]) for v in pc.value_counts(records["reason"]).to_pylist()]
        reasons = dict(sorted(counted, key=lambda kv: (-kv[1], kv[0])))
        files_noted = rows.filter(pc.is_null(rows["line_no"]))
        notes = [f"{r}: {d}" for r, d in zip(files_noted["reason"].to_pylist(), files_noted["detail"].to_pylist(),
                                             strict=True)]
    result = StageResult(files, read, loaded, sum(reasons.values()), reasons, corrected, notes)
    if log:
        log_ingestion(con, config, source, [(day, result)])
    return result


def _stage_group(stage: duckdb.DuckDBPyConnection, config: MonitorConfig, src: SourceConfig, plan: StagingPlan,
                 group: FileGroup, day: dt.date) -> tuple[int, int, int]:
    """Read and check one group's files in the staging database. Returns (read, loaded, labels corrected)."""
    read = corrected = 0
    for path, detail in group.refused:
        note_file(stage, plan, day, path, detail)
    for path in group.files:
        try:
            read += LOADERS[src.format](stage, plan, path, day)
        except duckdb.Error as exc:
            # One file DuckDB cannot open (not Parquet, say) is noted and skipped: the group's other files
            # and the other models load. The note keeps the error's first line only, cut: never the file.
            _forget_file(stage, plan, path, exc)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            note_file(stage, plan, day, path, f"unreadable file: cannot be read as {src.format} "
                                              f"({type(exc).__name__}: {first}); not read")
    if group.files and src.split_by_time:
        read -= _keep_day(stage, src, plan, day)
    if group.files:
        if plan.unique_across_days:
            quarantine_earlier_keys(stage, plan, day)
        if plan.key:
            quarantine_duplicates(stage, plan, day)
        if plan.source == "labels":
            check_labels(stage, config, plan, day)
        if config.sharded:
            read -= _keep_shard(stage, config, plan, group)
        if plan.source == "labels":
            corrected = count_corrected_labels(stage, day)
    elif not group.refused and (config.owns_shared or group.constant_model is not None):
        # A shared file's absence is shard 0's to say.
        note_file(stage, plan, day, group.expected, f"no input file: nothing matched {group.expected}")
    loaded = stage.execute(f"SELECT count(*) FROM raw.{plan.source}").fetchall()[0][0]
    quarantined = stage.execute("SELECT count(*) FROM raw.quarantine WHERE line_no IS NOT NULL").fetchall()[0][0]
    if read != loaded + quarantined:  # nothing may be lost: abort the day rather than write a gap
        raise RuntimeError(f"{plan.source} {day}: read {read} records but loaded {loaded} and "
                           f"quarantined {quarantined}")
    return read, loaded, corrected


def _forget_file(stage: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, exc: duckdb.Error) -> None:
    """Remove what a file that failed half-way staged (its rows name their file); a table that keeps no
    file name cannot be cleaned, and then the file fails the step as before."""
    stage.execute("DELETE FROM raw.quarantine WHERE source_file = ?", [path])
    columns = [d[0] for d in stage.execute(f"SELECT * FROM raw.{plan.source} LIMIT 0").description]
    if "source_file" in columns:
        stage.execute(f"DELETE FROM raw.{plan.source} WHERE source_file = ?", [path])
    elif stage.execute(f"SELECT count(*) FROM raw.{plan.source}").fetchall()[0][0]:
        raise SourceError(f"{path}: cannot be read as {plan.source} data: {type(exc).__name__}") from None


def _commit_group(con: duckdb.DuckDBPyConnection, config: MonitorConfig, lake: Lake, stage: duckdb.DuckDBPyConnection,
                  plan: StagingPlan, group: FileGroup, day: dt.date,
                  committed: Callable[[dt.date, str, int], None] | None = None) -> None:
    """Write one group's loaded rows where their table lives."""
    if plan.source == "predictions":
        shared = [quote_ident(c) for c in PREDICTION_COLUMNS]
        columns = feature_columns(config)
        for m in group.models:
            picks = ", ".join(shared + [f"{plan.feature_aliases[(f.source, f.type)]} AS {quote_ident(columns[(f.source, f.type)])}"
                                        for f in m.logged_columns]
                              + ([f"{CLASS_CODE} AS {CLASS_CODE_COLUMN}", f"{CLASS_PROBABILITIES} AS {CLASS_PROBABILITIES_COLUMN}"]
                                 if m.is_multiclass else []))
            rows = stage.sql(f"SELECT {picks} FROM raw.predictions WHERE model_id = $1", params=[m.id]).to_arrow_table()
            lake.replace_model_day(m.id, rows, day)
            if committed is not None:
                committed(day, m.id, rows.num_rows)
        return
    # Labels sorted by model: a model's drift and fairness read only its own row groups.
    order = " ORDER BY model_id NULLS LAST" if plan.source == "labels" else ""
    if f"raw.{plan.source}" in TABLES:  # streamed: millions of labels are not copied into one Arrow table
        empty = not stage.execute(f"SELECT count(*) FROM raw.{plan.source}").fetchall()[0][0]

        def staged():  # again if the commit loses to another shard's on the same day
            rows = stage.sql(f"SELECT * FROM raw.{plan.source}{order}")
            return rows.to_arrow_table() if empty else rows.fetch_record_batch(1 << 17)

        lake.replace(f"raw.{plan.source}", staged, [day], where=shard_rows(config))
        return
    rows = stage.sql(f"SELECT * FROM raw.{plan.source}{order}").to_arrow_table()
    con.register("_staged", rows)
    try:
        with transaction(con):
            con.execute(f"DELETE FROM raw.{plan.source} WHERE partition_date = ?", [day])
            con.execute(f"INSERT INTO raw.{plan.source} BY NAME SELECT * FROM _staged")
    finally:
        con.unregister("_staged")
