"""Ask the warehouse a question in SQL: `python -m monitor_assets.query "SELECT ..."` (or `make sql`).

The tables are found as the pipeline finds them ($MONITOR_CONFIG, $MONITOR_WAREHOUSE, $MONITOR_LAKE) and
seen by their documented names (`raw.predictions`, `raw."predictions__<model>"`, `monitoring.performance_daily`,
`monitoring.alert_deliveries`, ...), and only by those. Queries run on an in-memory database that holds views
over the lake's current Parquet files (every table but the alert state's), a copy of the alert state (SQLite, or
PostgreSQL in prod) and, while an earlier release's DuckDB file has not been moved to the lake yet, a copy of its
tables (read once, then the file is let go). Before the first query,
DuckDB is locked: no file outside those Parquet files can be read or written, no extension installed or loaded,
no setting changed, and only read-only statements run (SELECT, WITH, FROM, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, a
few PRAGMAs); anything else is refused before it runs. Output: CSV (header, then rows; NULL as empty) or, with
`--json`, one JSON object a line. With no SQL and a terminal (or `-i`): an interactive shell, statements ended by `;`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import os
import re
import sqlite3
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import duckdb

from monitor_assets.config import ConfigError, load_config
from monitor_assets.storage.alert_state import AlertState
from monitor_assets.storage.lake import PREDICTION_COLUMNS, PREDICTIONS, TABLES, Lake, model_table, registered
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import SCHEMA_SQL, waiting_out_locks

PROMPT = "monitor> "
CONTINUE = "    ...> "
HISTORY_FILE = Path.home() / ".monitor_query_history"
# Relations the lake registers on each connection (its views point there), not for people.
INTERNAL = registered("")
MODEL_VIEW = "predictions__"


class QueryError(Exception):
    """A problem to report in one line (no traceback)."""


# Statement kinds (DuckDB's own parse) that only read. SHOW, DESCRIBE, SUMMARIZE, FROM and WITH parse as SELECT;
# EXPLAIN is allowed when what it explains is a SELECT (EXPLAIN ANALYZE runs it); PRAGMA only by name (DuckDB
# parses IMPORT DATABASE as a PRAGMA too).
READ_ONLY_PRAGMAS = frozenset({"show_tables", "show_tables_expanded", "table_info", "show", "version", "platform",
                               "database_size", "functions"})
ALLOWED = "SELECT, WITH, FROM, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN and PRAGMA " + "/".join(sorted(READ_ONLY_PRAGMAS))
# The DuckDB file is attached under this name only while its tables are copied, then detached.
_FILE_ALIAS = "__warehouse_file"
# Tables a first-release warehouse kept ("Migration" in README): not copied (the old predictions table may hold
# every row ever loaded); the duckdb CLI on the file still reads them.
LEGACY_SUFFIX = "_before_lake"
_SQLITE_TYPES = {"TEXT": "VARCHAR", "REAL": "DOUBLE", "INTEGER": "BIGINT"}


@contextmanager
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    """The configured warehouse, every documented table under its name and nothing else, locked read-only."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    path = Path(config.warehouse_path)
    if not path.is_file() and not Lake(config.lake_path).all_tables():
        raise QueryError(f"no tables in the lake at {config.lake_path} (run the pipeline first, or set MONITOR_LAKE)")
    try:
        con = open_read_only(path, config.lake_path, AlertState.for_config(config))
    except (duckdb.Error, OSError, sqlite3.Error, ValueError, RuntimeError) as exc:
        raise QueryError(_one_line(exc)) from None
    try:
        yield con
    finally:
        con.close()


def open_read_only(path: str | os.PathLike, lake_path: str, state: AlertState | str | os.PathLike | None = None,
                   retries: int = 8, base_delay: float = 0.25) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB database holding exactly the documented tables, then locked: no file access but
    the lake's current data files, no extensions, no settings changed. The caller still checks statements
    (`check_read_only`): a locked DuckDB refuses writes to files, not every statement kind."""
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET memory_limit = ?", [os.environ.get("MONITOR_MEMORY_LIMIT", "1500MB")])
        con.execute("SET temp_directory = ?", [os.path.join(tempfile.gettempdir(), "monitor_assets_spill")])
        con.execute("SET enable_progress_bar = false")
        con.execute(SCHEMA_SQL)
        if Path(path).is_file():  # an earlier release's file (its tables move to the lake when the pipeline runs)
            _copy_file_tables(con, Path(path), retries, base_delay)
        if state is not None:  # a path: a local state file
            _copy_state_tables(con, state if isinstance(state, AlertState) else AlertState(state))
        files = _lake_views(con, Lake(lake_path))
        con.execute("SET search_path = 'raw,monitoring'")  # SHOW TABLES lists the documented tables
        # Exactly the files the views read (DuckDB may name a remote one either way); everything else is closed.
        allowed = sorted({*files, *(_fsspec_form(f) for f in files)})
        con.execute(f"SET allowed_paths = [{', '.join(sql_str(f) for f in allowed)}]")
        con.execute("SET allowed_directories = []")
        # A query naming an https:// or s3:// file would otherwise fetch an extension from the network.
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET allow_community_extensions = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def _fsspec_form(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    return f"{parts.scheme}:///{parts.netloc}{parts.path}" if parts.scheme and parts.netloc else uri


def _copy_file_tables(con: duckdb.DuckDBPyConnection, path: Path, retries: int, base_delay: float) -> None:
    """Copy the DuckDB file's tables (not its views: those point at relations of the writer's connection) into
    `con`, then let the file go. A writer holding the file's lock is waited out with backoff and jitter."""
    waiting_out_locks(lambda: con.execute(f"ATTACH {sql_str(str(path))} AS {_FILE_ALIAS} (READ_ONLY)"),
                      retries, base_delay)
    try:
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
                             "AND schema_name <> 'main'", [_FILE_ALIAS]).fetchall()
        for schema, table in tables:
            # A file no writer opened since a table moved to the lake still holds it: the lake's view is the table.
            if table.endswith(LEGACY_SUFFIX) or f"{schema}.{table}" in TABLES:
                continue
            name = f"{quote_ident(schema)}.{quote_ident(table)}"
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {_FILE_ALIAS}.{name}")
    finally:
        con.execute(f"DETACH {_FILE_ALIAS}")


def _copy_state_tables(con: duckdb.DuckDBPyConnection, state: AlertState) -> None:
    """The alert state (`monitoring.alert_deliveries`, `...acknowledgements`, `...silences`), read in one
    transaction without writing (`AlertState.snapshot`: the SQLite file or, in prod, PostgreSQL); the tables
    are empty when there is no state yet."""
    for name, columns, rows in state.snapshot():
        schema_name, view = name.split(".", 1)
        con.execute(f"CREATE TABLE {schema_name}.{quote_ident(view)} ("
                    + ", ".join(f"{quote_ident(c)} {_SQLITE_TYPES.get(t.upper(), 'VARCHAR')}" for c, t in columns)
                    + ")")
        if rows:
            con.executemany(f"INSERT INTO {schema_name}.{quote_ident(view)} VALUES "
                            f"({', '.join('?' * len(columns))})", rows)


def _lake_views(con: duckdb.DuckDBPyConnection, lake: Lake) -> list[str]:
    """The lake's tables as views over their current Parquet files (the pipeline's own scan SQL); returns
    the files they read."""
    lake.register(con)
    files: list[str] = []
    locations = {table: lake.path(table) for table in TABLES}
    models = lake.models()
    locations.update({f"raw.predictions__{m}": lake.model_path(m) for m in models})
    for name, location in locations.items():
        found = lake._current_files(location)
        files.extend(found[0] if found else [])
        schema, table = name.split(".", 1)
        if table.startswith("predictions__"):
            scan = lake.scan(location, PREDICTION_COLUMNS, ["partition_date"], extra=True)
        else:
            columns, partition_by = TABLES[name]
            scan = lake.scan(location, columns, partition_by)
        con.execute(f"CREATE OR REPLACE VIEW {schema}.{quote_ident(table)} AS {scan}")
    shared = ", ".join(quote_ident(c) for c in PREDICTION_COLUMNS)
    union = " UNION ALL ".join(f"SELECT {shared} FROM {model_table(m)}" for m in models)
    empty = "SELECT " + ", ".join(f"NULL::{t} AS {quote_ident(c)}" for c, t in PREDICTION_COLUMNS.items()) + " WHERE false"
    con.execute(f"CREATE OR REPLACE VIEW {PREDICTIONS} AS {union or empty}")
    return files


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list:
    """DuckDB's parse of `sql`, each statement checked to only read; the first that does not is refused with a
    one-line error naming its kind. A text match would be fooled by comments and strings; this is not."""
    try:
        statements = con.extract_statements(sql)
    except (duckdb.Error, ValueError) as exc:  # ValueError: a statement kind the Python client cannot name
        raise QueryError(_one_line(exc)) from None
    for number, statement in enumerate(statements, 1):
        kind = _refused(con, statement)
        if kind:
            where = f" (statement {number} of {len(statements)})" if len(statements) > 1 else ""
            raise QueryError(f"{kind} refused{where}: queries here only read; allowed: {ALLOWED}")
    return statements


def _keywords(text: str) -> list[tuple[int, str]]:
    """(offset, word) of the statement's tokens, comments left out."""
    tokens = [(o, t) for o, t in duckdb.tokenize(text)]
    ends = [o for o, _ in tokens[1:]] + [len(text)]
    return [(o, text[o:end].strip()) for (o, t), end in zip(tokens, ends, strict=True) if t != duckdb.token_type.comment]


def _refused(con: duckdb.DuckDBPyConnection, statement) -> str:
    """'' when the statement only reads, else its kind for the error ('COPY', 'INSTALL', 'EXPLAIN ANALYZE COPY')."""
    words = _keywords(statement.query)
    first = words[0][1].upper() if words else str(statement.type.name)
    kind = statement.type.name
    if kind == "SELECT":
        return ""
    if kind == "PRAGMA" and first == "PRAGMA" and len(words) > 1 and words[1][1].lower() in READ_ONLY_PRAGMAS:
        return ""
    if kind == "EXPLAIN":
        # Only a SELECT may be explained: EXPLAIN ANALYZE runs the statement it explains.
        skip = 2 if len(words) > 1 and words[1][1].upper() == "ANALYZE" else 1
        prefix = " ".join(w.upper() for _, w in words[:skip])
        try:
            inner = con.extract_statements(statement.query[words[skip][0]:]) if len(words) > skip else []
        except duckdb.Error:
            inner = []
        if len(inner) == 1 and inner[0].type.name == "SELECT":
            return ""
        return f"{prefix} {_refused(con, inner[0])}" if len(inner) == 1 else prefix
    if first == "PRAGMA" and len(words) > 1:
        return f"PRAGMA {words[1][1]}"
    return first


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _plain(value):
    """A cell for JSON: dates and times as ISO text, decimals as floats, anything else odd as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | bytes):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def run(con: duckdb.DuckDBPyConnection, sql: str, out: TextIO, as_json: bool = False) -> int:
    """Run `sql` (its last statement's result is printed) and write the rows to `out`. Returns the rows."""
    statements = check_read_only(con, sql)  # every statement, before any runs
    columns, rows = [], []
    try:
        for statement in statements:
            cursor = con.execute(statement)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            rows = cursor.fetchall() if columns else []
    except duckdb.Error as exc:
        raise QueryError(_one_line(exc)) from None
    if not columns:
        return 0
    if as_json:
        for row in rows:
            out.write(json.dumps({c: _plain(v) for c, v in zip(columns, row, strict=True)}) + "\n")
    else:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return len(rows)


def table_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The documented names a query can use: the views and tables of schemas raw and monitoring (the lake's
    tables, the per-model predictions views and the DuckDB-resident tables), without internal relations."""
    rows = con.execute("""
        SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND schema_name IN ('raw', 'monitoring')
        UNION
        SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name IN ('raw', 'monitoring')
        ORDER BY 1, 2""").fetchall()
    return [f"{schema}.{name}" if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and not name.startswith(MODEL_VIEW)
            else f"{schema}.{quote_ident(name)}" for schema, name in rows if not name.startswith(INTERNAL)]


def _show(con: duckdb.DuckDBPyConnection, sql: str, out: TextIO) -> None:
    """Print the result of `sql` as an aligned text table (DuckDB's own rendering)."""
    statements = check_read_only(con, sql)
    try:
        rel = None
        for statement in statements:
            rel = con.sql(statement)
        if rel is None:  # a statement without a result (SET, ...)
            return
        out.write(str(rel) + "\n")
    except duckdb.Error as exc:
        raise QueryError(_one_line(exc)) from None


def _statements(buffer: str) -> tuple[list[str], str]:
    """Complete statements (ended by `;` outside quotes and comments) and the unfinished rest."""
    done, start, quote, i = [], 0, "", 0
    while i < len(buffer):
        ch = buffer[i]
        if quote:
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
        elif buffer.startswith("--", i):
            end = buffer.find("\n", i)
            i = len(buffer) if end < 0 else end
            continue
        elif ch == ";":
            statement = buffer[start:i].strip()
            if statement:
                done.append(statement)
            start = i + 1
        i += 1
    return done, buffer[start:]


def shell(con: duckdb.DuckDBPyConnection, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """An interactive SQL prompt over the warehouse; `.tables`, `.help`, `.quit` (or end of input)."""
    readline = None
    if sys.stdin.isatty():  # history for a person at a terminal, not for piped input
        try:
            import readline
        except ImportError:  # not on every platform
            pass
    if readline is not None:
        try:
            readline.read_history_file(HISTORY_FILE)
        except OSError:
            pass
    out.write("Tables by their documented names; statements end with ';'. .tables lists them, .quit leaves.\n")
    buffer = ""
    try:
        while True:
            try:
                line = input(CONTINUE if buffer.strip() else PROMPT)
            except EOFError:
                out.write("\n")
                break
            except KeyboardInterrupt:
                out.write("\n")
                buffer = ""
                continue
            command = line.strip()
            if not buffer.strip() and command.startswith("."):
                if command in (".quit", ".exit", ".q"):
                    break
                if command == ".tables":
                    out.write("\n".join(table_names(con)) + "\n")
                else:
                    out.write(".tables  list the tables\n.quit    leave\n")
                continue
            buffer += line + "\n"
            statements, buffer = _statements(buffer)
            for statement in statements:
                try:
                    _show(con, statement, out)
                except QueryError as exc:
                    err.write(f"query: {exc}\n")
    finally:
        if readline is not None:
            try:
                readline.set_history_length(1000)
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.query", description=__doc__.splitlines()[0])
    parser.add_argument("sql", nargs="?", help="the SQL to run (none: read stdin, or a shell on a terminal)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    parser.add_argument("-i", "--interactive", action="store_true", help="an interactive shell")
    args = parser.parse_args(argv)
    try:
        interactive = args.interactive or (args.sql is None and sys.stdin.isatty())
        sql = args.sql
        if sql is None and not interactive:
            sql = sys.stdin.read()
        if not interactive and not (sql or "").strip():
            raise QueryError("no SQL given (pass it as an argument, on stdin, or use -i)")
        with warehouse() as con:
            if interactive:
                return shell(con)
            run(con, sql, sys.stdout, as_json=args.json)
    except QueryError as exc:
        sys.stderr.write(f"query: {exc}\n")
        return 2
    except BrokenPipeError:  # `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
