"""One loader per input format (JSON lines, CSV, Parquet): records read, checked in one pass, and written
to the staging table or, with the first reason they fail, to the quarantine.

A bad record never aborts the day: a line that is not UTF-8 or longer than MAX_LINE_BYTES, a CSV row
with the wrong number of fields, a JSON array where one object per line was expected, all are
quarantined on their line. A damaged gzip file loads what precedes the damage and leaves a row without
line number in the quarantine naming the file.

JSON lines have two readers that give the same rows and reasons (tests push every case through both):
* careful: the lines come from `LineIndex`, which also finds their byte-level problems, and are
  checked with `json_valid`, then `json_extract_string` over all wanted paths at once, in one pass.
  Used for small files, and for any file the fast reader cannot map row for row onto lines (blank
  lines, a JSON array, a damaged gzip).
* fast (`_load_json_fast`): DuckDB's parallel JSON reader for big files; every row it may have read
  differently from the careful reader is re-read the careful way from its line.
CSV is read by DuckDB's CSV reader keeping the rows it rejects; Parquet as it is.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor_assets.ingestion.fields import (
    NUMBER,
    TEXT,
    TIME,
    StagingPlan,
    field_rules,
    json_path,
    note_file,
    typed_sql,
)
from monitor_assets.ingestion.lines import (
    JSON_ARRAY,
    KEEP_BYTES,
    MAX_LINE_BYTES,
    DamagedGzip,
    LineIndex,
    TooLarge,
    file_chunks,
)
from monitor_assets.storage.sql import quote_ident, sql_str

NOT_AN_OBJECT = "not a JSON object, expected one JSON object per line"
FAST_PATH_MIN_BYTES = 16 << 20  # on disk (compressed, for .gz)


def _reason_case(plan: StagingPlan, pretyped: frozenset[str] = frozenset()) -> str:
    """The first failing rule's reason, NULL for a good record.

    A plain OR of every condition is cheap to evaluate on all rows; the CASE that names the reason
    (with its string building) then runs on the few bad rows only."""
    rules = [("problem IS NOT NULL", "problem"),
             ("parse_ok IS NULL", "'blank line'"),
             ("NOT parse_ok AND regexp_matches(raw, '(?i)(:|\\[|,)\\s*-?(nan|infinity)\\b')",
              "'non-finite number: NaN or Infinity is not valid JSON'"),
             ("NOT parse_ok", "'malformed JSON'"),
             ("NOT regexp_matches(raw, '^\\s*\\{')",
              f"CASE WHEN regexp_matches(raw, '^\\s*\\[') THEN {sql_str(JSON_ARRAY)} ELSE {sql_str(NOT_AN_OBJECT)} END")]
    rules += field_rules(plan.fields, pretyped) + plan.rules
    any_bad = " OR ".join(f"coalesce({cond}, false)" for cond, _ in rules)
    named = "CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in rules) + " END"
    return f"CASE WHEN {any_bad} THEN {named} END"


def _check(plan: StagingPlan, relation: str, path: str | None, pretyped: set[str] = frozenset()) -> str:
    """Typed aliases and the first failing reason (NULL when good) for each row of `relation`, which
    yields (line_no, raw, problem, parse_ok, r_<alias>...); `problem` is a reason found before parsing.
    `path` None: the relation's rows come from several files and days (its `source_file`, `partition_date`)."""
    typed_cols = ", ".join(f"{typed_sql(f, f.alias in pretyped)} AS {f.alias}" for f in plan.fields)
    aliases = ", ".join(f.alias for f in plan.fields)
    origin = f"{sql_str(path)} AS source_file" if path is not None else "source_file, partition_date"
    return f"""
        SELECT {origin}, line_no, reason, raw, {aliases}
        FROM (SELECT *, {_reason_case(plan, frozenset(pretyped))} AS reason
              FROM (SELECT *, {typed_cols} FROM ({relation})))"""


def _target_columns(plan: StagingPlan) -> str:
    """Explicit target columns where the table has config-dependent ones (raw.predictions)."""
    return f"({', '.join(quote_ident(c) for c in plan.targets)})" if plan.targets else ""


def _load_checked(con: duckdb.DuckDBPyConnection, plan: StagingPlan, relation: str, params: list, path: str | None,
                  day: dt.date | None) -> None:
    """The records of `relation` checked in one pass, then good ones to the raw table, bad ones to quarantine.
    Only bad records keep their raw text, so the checked rows stay about the size of the loaded ones.
    `path` and `day` None: the relation's rows carry their `source_file` and `partition_date`."""
    # JSON lines keep their line end until here (JSON ignores it, and trimming every line costs more than
    # parsing it): only a bad record's text is kept, trimmed.
    con.execute("CREATE OR REPLACE TEMP TABLE _checked AS SELECT * REPLACE (CASE WHEN reason IS NOT NULL THEN "
                f"rtrim(raw, chr(13) || chr(10)) END AS raw) FROM ({_check(plan, relation, path)})", params)
    on_day, days = ("?::DATE", [day]) if path is not None else ("partition_date", [])
    con.execute(f"INSERT INTO raw.{plan.source} {_target_columns(plan)} SELECT {on_day}, {', '.join(plan.outputs)} "
                "FROM _checked WHERE reason IS NULL", days)
    con.execute(f"INSERT INTO raw.quarantine SELECT {on_day}, ?, source_file, line_no, reason, raw "
                "FROM _checked WHERE reason IS NOT NULL", [*days, plan.source])
    con.execute("DROP TABLE _checked")


PENDING = "_pending_records"


def _check_later(con: duckdb.DuckDBPyConnection, relation: str, params: list, path: str, day: dt.date) -> None:
    """Keep the rows of `relation` with their file and day, to be checked with other files' (`check_pending`)."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?",
                         [PENDING]).fetchall()[0][0]
    head = f"INSERT INTO {PENDING} BY NAME" if exists else f"CREATE TEMP TABLE {PENDING} AS"
    con.execute(f"{head} SELECT ? AS source_file, ?::DATE AS partition_date, * FROM ({relation})", [path, day, *params])


def check_pending(con: duckdb.DuckDBPyConnection, plan: StagingPlan) -> None:
    """Check the rows kept by the loaders' `later` calls in one pass (a file's check costs tens of milliseconds
    whatever its size: the statement's planning), then forget them."""
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?", [PENDING]).fetchall()[0][0]:
        try:
            _load_checked(con, plan, f"SELECT * FROM {PENDING}", [], None, None)
        finally:
            con.execute(f"DROP TABLE {PENDING}")


def _report_damage(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date, path: str, damage: str) -> None:
    note_file(con, plan, day, path, f"{damage}; records after the damage are lost")


# trim() scans the whole string, so only short lines are trimmed.
BLANK = "(raw IS NULL OR (length(raw) < 256 AND trim(rtrim(raw, chr(13) || chr(10))) = ''))"


def _lines_relation(plan: StagingPlan, lines: str, tagged: bool = False) -> tuple[str, list]:
    """SQL yielding (line_no, raw, problem, parse_ok, r_<alias>...) for the JSON lines of table `lines`
    (line_no, text, problem; `tagged`: and source_file, partition_date), and its parameters."""
    paths, picks = [], []
    for f in plan.fields:
        if f.source is None:
            picks.append(f"NULL::VARCHAR AS {f.raw}")
        elif f.object:
            picks.append(f"CASE WHEN parse_ok THEN json_type(raw, {sql_str(json_path(f.source))}) END AS {f.raw}")
        else:
            paths.append(json_path(f.source))
            picks.append(f"v[{len(paths)}] AS {f.raw}")
    sql = f"""
        SELECT {'source_file, partition_date, ' if tagged else ''}line_no, raw, problem, parse_ok, {', '.join(picks)} FROM (
            SELECT *, CASE WHEN parse_ok THEN json_extract_string(raw, ?::VARCHAR[]) END AS v
            FROM (SELECT *, CASE WHEN problem IS NULL AND NOT {BLANK} THEN json_valid(raw) END AS parse_ok
                  FROM (SELECT {'source_file, partition_date, ' if tagged else ''}line_no, problem, text AS raw
                        FROM {lines})))"""
    return sql, [paths]


def _load_lines(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date, index: LineIndex,
                rows: np.ndarray | None = None) -> None:
    """The careful JSON reader over the given lines of the index (0-based; every line by default)."""
    con.register("_lines", index.lines(rows))
    try:
        _load_checked(con, plan, *_lines_relation(plan, "_lines"), path, day)
    finally:
        con.unregister("_lines")


FAST_TYPES = {NUMBER: "DOUBLE", TIME: "TIMESTAMPTZ", TEXT: "VARCHAR"}


def _json_columns(plan: StagingPlan) -> tuple[str, dict[str, str], set[str]] | None:
    """For DuckDB's JSON reader: its `columns` (nested STRUCTs for dotted paths), each field's
    accessor, and the aliases the reader types itself (a path wanted as two types stays text).
    None when a path is both a value and an object."""
    read = [f for f in plan.fields if f.source is not None and not f.object]
    tree: dict = {}
    access = {}
    for f in read:
        parts = f.source.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                return None
        leaf = node.get(parts[-1])
        if isinstance(leaf, dict):
            return None
        want = FAST_TYPES[f.type]
        node[parts[-1]] = want if leaf in (None, want) else "VARCHAR"
        access[f.alias] = "j." + ".".join(quote_ident(p) for p in parts)
    for f in plan.fields:
        if f.object:  # the struct the reader makes of the object (NULL when null, absent, or not an object)
            node = tree
            for part in f.source.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                return None
            access[f.alias] = "j." + ".".join(quote_ident(p) for p in f.source.split("."))
    pretyped = set()
    for f in read:
        node = tree
        for part in f.source.split("."):
            node = node[part]
        if node == FAST_TYPES[f.type] and f.type != TEXT:
            pretyped.add(f.alias)

    def render(node) -> str:
        if isinstance(node, str):
            return node
        return "STRUCT(" + ", ".join(f"{quote_ident(k)} {render(v)}" for k, v in node.items()) + ")"

    columns = "{" + ", ".join(f"{sql_str(k)}: {sql_str(render(v))}" for k, v in tree.items()) + "}"
    return columns, access, pretyped


@contextmanager
def in_file_order(con: duckdb.DuckDBPyConnection):
    """A scan's rows in the file's order while inside, for a plain SELECT from one reader and for
    `row_number() OVER ()` (DuckDB's documented guarantees, which hold only with `preserve_insertion_order`;
    the staging database turns it off, for memory). A JSON file above about 20 MB came back shuffled
    without it. The setting is the database's: restored on leaving."""
    before = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    con.execute("SET preserve_insertion_order = true")
    try:
        yield
    finally:
        con.execute(f"SET preserve_insertion_order = {'true' if before else 'false'}")


def _load_json_fast(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date,
                    index: LineIndex) -> bool:
    """One parallel pass with DuckDB's JSON reader. Returns False, having written nothing, when the
    careful reader must take the whole file.

    The reader keeps one row per non-blank line, so when the row count equals the line count, row i of
    its result, read alone in file order, is line i; the rules run after, on rows that carry their line
    (their known-models join returns a big file's rows in any order). It types numbers and timestamps
    itself, and differs from the careful reader in silent ways: a line it cannot parse (malformed, not
    UTF-8, the first after a BOM) becomes an all-NULL row, a value it cannot type becomes NULL, a boolean
    becomes 1 or 0, a line of any length is read. Those rows, and every row a rule rejects (for its reason
    and raw text), are re-read the careful way from their lines; the good rows, nearly all, are written
    straight from the reader."""
    layout = _json_columns(plan)
    if layout is None:
        return False
    columns, access, pretyped = layout
    picks = ", ".join((f"CASE WHEN {access[f.alias]} IS NOT NULL THEN 'OBJECT' END" if f.object
                       else f"{access[f.alias]}{'' if f.alias in pretyped else '::VARCHAR'}" if f.source is not None
                       else "NULL::VARCHAR") + f" AS {f.raw}" for f in plan.fields)
    read = f"SELECT {picks} FROM read_json(?, format='newline_delimited', columns={columns}, ignore_errors=true) AS j"
    fast = ("SELECT line_no, NULL::VARCHAR AS raw, NULL::VARCHAR AS problem, true AS parse_ok, * EXCLUDE (line_no) "
            "FROM _json_read")
    # A NULL typed value may be one the reader could not type; an all-NULL row, a line it could not parse.
    # An object the reader gives as NULL may have been null, or not an object: the careful reader tells.
    unsure = [f"{a} IS NULL" for a in sorted(pretyped) + [f.alias for f in plan.fields if f.object]] + [
        "(" + " AND ".join(f"{f.alias} IS NULL" for f in plan.fields if f.constant is None) + ")"]
    sql = f"""SELECT * EXCLUDE (source_file, raw), reason IS NOT NULL OR {' OR '.join(unsure)} AS recheck
              FROM ({_check(plan, fast, path, pretyped)})"""
    reader = con.cursor()  # a file DuckDB cannot read (a damaged gzip) must not abort the caller's transaction
    try:
        with in_file_order(reader):
            picked = reader.sql(read, params=[path]).to_arrow_table()
        index.wait()
        n = picked.num_rows
        if n != index.count or index.damage or index.array or index.too_large:  # blank lines shift the rows, or not JSON lines
            return False
        reader.register("_json_read", picked.append_column("line_no", pa.array(np.arange(1, n + 1, dtype=np.int64))))
        del picked
        rows = reader.sql(sql).to_arrow_table()
        reader.unregister("_json_read")  # the rows as read are let go before the checked ones are written
    except duckdb.Error:
        return False
    finally:
        reader.close()
    at = rows["line_no"].to_numpy() - 1  # each row's line (0-based)
    recheck = rows["recheck"].to_numpy() | (index.lengths()[at] > MAX_LINE_BYTES)
    # A 1 or 0 may have been a boolean (the wrong type): only if its line says true or false.
    bool_like = np.zeros(n, dtype=bool)
    for f in plan.fields:
        if f.alias in pretyped and f.type == NUMBER:
            values = rows[f.alias]
            bool_like |= pc.fill_null(pc.or_(pc.equal(values, 0), pc.equal(values, 1)), False).to_numpy()
    maybe = np.flatnonzero(bool_like & ~recheck)
    if len(maybe):
        says_bool = pc.match_substring_regex(index.raw_lines(at[maybe]), "true|false").to_numpy(zero_copy_only=False)
        recheck[maybe[says_bool]] = True
    rows = rows.drop_columns(["recheck"]).append_column("recheck", pa.array(recheck))
    con.register("_json_rows", rows)
    try:
        con.execute(f"""INSERT INTO raw.{plan.source} {_target_columns(plan)}
                        SELECT ?::DATE, {', '.join(plan.outputs)}
                        FROM (SELECT {sql_str(path)} AS source_file, * FROM _json_rows) WHERE NOT recheck""", [day])
    finally:
        con.unregister("_json_rows")
    _load_lines(con, plan, path, day, index, np.sort(at[recheck]))
    return True


def _load_json(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date) -> int:
    index = LineIndex(path)
    if path.endswith(".gz"):
        index.wait()  # a gzip bomb must be stopped by the capped index before DuckDB's reader expands it
    if index.too_large is None:
        # The parallel reader pays off on big files; small ones are quicker line by line.
        big = Path(path).stat().st_size >= FAST_PATH_MIN_BYTES
        if not (big and _load_json_fast(con, plan, path, day, index)) and index.wait().too_large is None:
            _load_lines(con, plan, path, day, index)
    if index.too_large:
        note_file(con, plan, day, path, index.too_large)
        return 0
    if index.damage:
        _report_damage(con, plan, day, path, index.damage)
    return index.count


# Small JSON files are checked together, up to about this many bytes of lines a statement: a file's check
# costs tens of milliseconds whatever its size (the statement's planning), a day's file of a few hundred lines
# about nothing more.
BATCH_LINE_BYTES = 64 << 20


def load_json_files(con: duckdb.DuckDBPyConnection, plan: StagingPlan, files: list[tuple[str, dt.date]]) -> list[int]:
    """`_load_json` of each (path, day), the small files checked together by the careful reader (one statement
    for many files: the same SQL over their lines, each line with its file and day). Returns each file's
    records read."""
    read = [0] * len(files)
    pending: list[tuple[int, LineIndex]] = []

    def flush() -> None:
        if not pending:
            return
        tables = []
        for i, index in pending:
            lines = index.lines()
            path, day = files[i]
            tables.append(lines.append_column("source_file", pa.repeat(pa.scalar(path), lines.num_rows))
                          .append_column("partition_date", pa.repeat(pa.scalar(day, pa.date32()), lines.num_rows)))
        con.register("_lines", pa.concat_tables(tables))
        try:
            _load_checked(con, plan, *_lines_relation(plan, "_lines", tagged=True), None, None)
        finally:
            con.unregister("_lines")
        for i, index in pending:  # after the records, as `_load_json` notes them
            if index.damage:
                _report_damage(con, plan, files[i][1], files[i][0], index.damage)
        pending.clear()

    size = 0
    small = [Path(path).stat().st_size < FAST_PATH_MIN_BYTES for path, _ in files]
    indexes: dict[int, LineIndex] = {}
    for i, (path, day) in enumerate(files):
        if not small[i]:  # a big file: the parallel reader, alone
            read[i] = _load_json(con, plan, path, day)
            continue
        for j in range(i, min(i + 8, len(files))):  # the next files' lines are found while this one waits
            if small[j] and j not in indexes:
                indexes[j] = LineIndex(files[j][0])
        index = indexes.pop(i).wait()
        if index.too_large:
            note_file(con, plan, day, path, index.too_large)
            continue
        read[i] = index.count
        pending.append((i, index))
        size += index.size
        if size >= BATCH_LINE_BYTES:
            flush()
            size = 0
    flush()
    return read


def load_split_lines(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str) -> None:
    """The careful reader over a Parquet file of lines split out of their files (`readers._route`): each row
    (source_file, partition_date, line_no, text, problem) a line as `LineIndex.lines` gives it."""
    _load_checked(con, plan, *_lines_relation(plan, f"read_parquet({sql_str(path)})", tagged=True), None, None)


def _column_picks(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date, columns: list[str],
                  prefix: str) -> str:
    """SELECT list with each field's column as text. A column the file lacks is NULL, as a JSON key it
    lacks is: its records load (or are quarantined for a missing required field) and the file gets a
    `missing_column` note, so one model's file without a feature does not stop the others."""
    by_name = {c.lower(): c for c in columns}  # as DuckDB binds them, case-insensitively
    picks, missing = [], []
    for f in plan.fields:
        column = by_name.get(f.source.lower()) if f.source is not None else None
        if column is None and f.source is not None and not f.optional:
            missing.append(f.source)
        picks.append(f"CAST({prefix}{quote_ident(column)} AS VARCHAR) AS {f.raw}" if column
                     else f"NULL::VARCHAR AS {f.raw}")
    if missing:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        note_file(con, plan, day, path, f"missing column: no {', '.join(dict.fromkeys(missing))} among {shown}; "
                                        "loaded as NULL")
    return ", ".join(picks)


# The alias of a whole row, so that a column named like it (`t`) does not shadow it.
ROW = "__row__"
CSV_READER = ("read_csv(?, all_varchar=true, header=true, ignore_errors=true, store_rejects=true, "
              f"rejects_table='_csv_rejects', rejects_scan='_csv_scans', max_line_size={MAX_LINE_BYTES})")
CSV_REJECTED = f"""CASE
    WHEN e.t = 'INVALID ENCODING' THEN 'invalid UTF-8'
    WHEN e.t = 'LINE SIZE OVER MAXIMUM' THEN 'line too long: ' || coalesce(format('{{:,}}',
        TRY_CAST(regexp_extract(e.m, 'Actual Size:\\s*(\\d+)', 1) AS BIGINT)), '?') || ' bytes, the limit is {MAX_LINE_BYTES:,}'
    WHEN e.t IN ('TOO MANY COLUMNS', 'MISSING COLUMNS') THEN 'wrong number of fields: '
        || regexp_replace(e.m, '.*Columns: (\\d+) Found: (\\d+).*', 'expected \\1, found \\2')
    ELSE 'malformed CSV: ' || e.m END"""


def _load_csv_file(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, label: str, day: dt.date,
                   later: bool = False) -> int:
    """Reads a CSV file (its records named after `label`); the rows the reader rejects (wrong number of
    fields, not UTF-8, too long) are records with a problem on their own line. Returns the records read.

    Record i is taken to be on line i + 1 (after the header) with the rejected lines left out."""
    con.execute("DROP TABLE IF EXISTS _csv_rejects")
    con.execute("DROP TABLE IF EXISTS _csv_scans")
    with in_file_order(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _csv AS SELECT row_number() OVER () AS rec, {ROW} AS r "
                    f"FROM {CSV_READER} AS {ROW}", [path])
    good, rejected = con.execute("SELECT (SELECT count(*) FROM _csv), "
                                 "(SELECT count(DISTINCT line) FROM _csv_rejects)").fetchall()[0]
    if not good + rejected:  # an empty file, or a header alone: nothing to check its columns against
        return 0
    picks = _column_picks(con, plan, label, day, [d[0] for d in con.execute("SELECT r.* FROM _csv LIMIT 0").description],
                          "r.")
    nulls = ", ".join(f"NULL AS {f.raw}" for f in plan.fields)
    relation = f"""
        SELECT l.line_no, CAST(to_json(c.r) AS VARCHAR) AS raw, NULL::VARCHAR AS problem, true AS parse_ok, {picks}
        FROM _csv AS c
        JOIN (SELECT n AS line_no, row_number() OVER (ORDER BY n) AS rec FROM range(2, {good + rejected + 2}) AS t(n)
              WHERE n NOT IN (SELECT line FROM _csv_rejects)) AS l USING (rec)
        UNION ALL
        SELECT line, csv_line, {CSV_REJECTED}, NULL, {nulls}
        FROM (SELECT line, any_value(csv_line) AS csv_line,
                     arg_min({{'t': error_type, 'm': error_message}}, coalesce(column_idx, 0)) AS e
              FROM _csv_rejects GROUP BY line)"""
    if later:
        _check_later(con, relation, [], label, day)
    else:
        _load_checked(con, plan, relation, [], label, day)
    return good + rejected


def _load_csv(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date, later: bool = False) -> int:
    """A CSV file, or of a damaged gzip one the lines before the damage. Returns the records read. `later`: its
    records are checked with other files' (`check_pending`)."""
    damage = None
    if path.endswith(".gz"):  # DuckDB fails on a damaged gzip file as a whole: check it first
        try:
            for _ in file_chunks(path):
                pass
        except DamagedGzip as exc:
            damage = str(exc)
        except TooLarge as exc:  # a gzip bomb is not handed to DuckDB's reader
            note_file(con, plan, day, path, str(exc))
            return 0
    if damage is None:
        return _load_csv_file(con, plan, path, path, day, later)
    # Read the complete lines before the damage from a temporary copy; the line cut off is a record.
    newlines, tail = 0, b""
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as copy:
        try:
            for chunk in file_chunks(path):
                tail += chunk
                cut = tail.rfind(b"\n") + 1
                copy.write(tail[:cut])
                newlines += tail.count(b"\n", 0, cut)
                tail = tail[cut:]
        except DamagedGzip:
            pass
    try:
        read = _load_csv_file(con, plan, copy.name, path, day, later)
    finally:
        os.unlink(copy.name)
    if tail:
        con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, ?, ?, ?)",
                    [day, plan.source, path, newlines + 1, f"{damage}; the file ends inside this line",
                     tail[:KEEP_BYTES].decode("utf-8", "replace")])
        read += 1
    _report_damage(con, plan, day, path, damage)
    return read


def _load_parquet(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date, later: bool = False) -> int:
    columns = [d[0] for d in con.execute("SELECT * FROM read_parquet(?) LIMIT 0", [path]).description]
    relation = f"""
        SELECT row_number() OVER () AS line_no, CAST(to_json({ROW}) AS VARCHAR) AS raw, NULL::VARCHAR AS problem,
               true AS parse_ok, {_column_picks(con, plan, path, day, columns, ROW + ".")}
        FROM read_parquet(?) AS {ROW}"""
    with in_file_order(con):  # line_no is the row's place in the file
        if later:
            _check_later(con, relation, [path], path, day)
        else:
            _load_checked(con, plan, relation, [path], path, day)
    return con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchall()[0][0]


LOADERS = {"jsonl": _load_json, "csv": _load_csv, "parquet": _load_parquet}
