"""Ask the warehouse a question in SQL: `python -m monitor_assets.query "SELECT ..."` (or `make sql`).

The tables are found as the pipeline finds them ($MONITOR_CONFIG, $MONITOR_WAREHOUSE, $MONITOR_LAKE) and
seen by their documented names (`raw.predictions`, `raw."predictions__<model>"`, `monitoring.performance_daily`,
...). The DuckDB file is opened read-only, so a query never creates or changes anything and can run beside
the pipeline. Output: CSV (header, then rows; NULL as empty) or, with `--json`, one JSON object a line.
With no SQL and a terminal (or `-i`): an interactive shell, statements ended by `;`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import duckdb

from monitor_assets.config import ConfigError, load_config
from monitor_assets.storage.lake import registered
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import close, open_warehouse

PROMPT = "monitor> "
CONTINUE = "    ...> "
HISTORY_FILE = Path.home() / ".monitor_query_history"
# Relations the lake registers on each connection (its views point there), not for people.
INTERNAL = registered("")
MODEL_VIEW = "predictions__"


class QueryError(Exception):
    """A problem to report in one line (no traceback)."""


@contextmanager
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    """The configured warehouse, read-only, with every model's predictions table registered."""
    try:
        config = load_config()
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    path = Path(config.warehouse_path)
    if not path.is_file():
        raise QueryError(f"no warehouse at {path} (run the pipeline first, or set MONITOR_WAREHOUSE)")
    try:
        con = open_warehouse(str(path), config.lake_path, models=None, read_only=True)
    except (duckdb.Error, OSError) as exc:
        raise QueryError(_one_line(exc)) from None
    try:
        yield con
    finally:
        close(con)


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
    try:
        cursor = con.execute(sql)
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
    try:
        rel = con.sql(sql)
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
