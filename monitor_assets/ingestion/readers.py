"""Reading input files into the warehouse with every record accounted for.

Each record of a day's files ends up loaded or in `raw.quarantine` with its file, line number, the
first reason it failed, and its raw text. Every rule is one CASE over typed values that names the
first failing rule; checks that need the whole day (duplicate keys, also against earlier days, labels
for unknown predictions) run afterwards on the loaded rows and move offenders to quarantine. The day
is replaced in one transaction, and read = loaded + quarantined is verified before commit.

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
import glob
import mmap
import os
import queue
import re
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor_assets.config import ModelConfig, MonitorConfig, SourceConfig
from monitor_assets.storage.lake import PREDICTION_COLUMNS, TABLES, Lake, registered
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of, transaction

NUMBER = "DOUBLE"
TEXT = "VARCHAR"
TIME = "TIMESTAMPTZ"


@dataclass
class Field:
    """One value read from a record: where it comes from, its type, and when it must be present."""

    alias: str
    source: str | None  # None: the user does not log it; always NULL
    type: str = TEXT
    required: bool = False
    label: str = ""  # how the reason names it
    optional: bool = False  # a CSV or Parquet file may lack the column (it then loads as NULL)
    constant: str | None = None  # the value of every record (model_id of a per-model file); not read
    object: bool = False  # JSON only: read as the JSON type of the value at `source` (OBJECT, NULL, VARCHAR...)

    @property
    def raw(self) -> str:
        return f"r_{self.alias}"


@dataclass
class StagingPlan:
    """How one kind of source is read, checked and written to its raw table."""

    source: str
    fields: list[Field]
    rules: list[tuple[str, str]] = field(default_factory=list)  # (SQL condition, SQL reason), in order
    key: str | None = None  # alias that must be unique within the day
    outputs: list[str] = field(default_factory=list)  # target columns after partition_date, as SQL
    targets: list[str] = field(default_factory=list)  # target column names, when not the table's order
    unique_across_days: bool = False  # the key must also not have been loaded on an earlier day
    feature_aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # (source, type) -> staged column
    known_models: tuple[str, ...] = ()  # the staging table `known_models` the rules look model ids up in


@dataclass
class StageResult:
    files: list[str]
    read: int
    loaded: int
    quarantined: int
    reasons: dict[str, int]
    labels_corrected: int = 0  # labels that change the newest earlier label of their prediction
    notes: list[str] = field(default_factory=list)  # "<reason>: <detail>" of the notes about whole files


def _env_size(name: str, default: int) -> int:
    """A positive whole number from the environment (a size in KiB or MiB), else `default`."""
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


# A line over this is quarantined on its own line (`too_large`); 2 MiB is DuckDB's own limit for a CSV line.
MAX_LINE_BYTES = _env_size("MONITOR_MAX_LINE_KB", 2048) << 10
# A gzip file is decompressed in memory (the line index keeps it): a file whose decompressed bytes, plus 8
# bytes a line for its index, pass this is refused whole (`too_large`) before memory does. Plain files are
# mapped, not held; their line index counts against the same cap.
MAX_DECOMPRESSED_BYTES = _env_size("MONITOR_MAX_DECOMPRESSED_MB", 1024) << 20
KEEP_BYTES = 4096  # of a line too long to keep whole in the quarantine
BOM = b"\xef\xbb\xbf"
JSON_ARRAY = "JSON array, expected one JSON object per line"
NOT_AN_OBJECT = "not a JSON object, expected one JSON object per line"
FAST_PATH_MIN_BYTES = 16 << 20  # on disk (compressed, for .gz)


class SourceError(ValueError):
    """A file that cannot be read as configured."""


class MissingInput(SourceError):
    """A source-day whose glob matched no file (and the source does not allow empty days): nothing of the
    day was replaced, so rows loaded before stay."""


class TooLarge(Exception):
    """Raised by `file_chunks` when a file's decompressed bytes pass the cap."""


# `raw.quarantine.reason` is one of these categories (stable: alerts, dashboards and README list them);
# `detail` says what exactly, for the record or file. A row with a line number is a record; one without
# (no_file, outside_folder, missing_column, unreadable_file, and the file rows of too_large and
# damaged_file) is a note about a whole file and is not counted as a record.
REASONS = {
    "malformed_json": "not valid JSON, a JSON array, or a line that is not a JSON object",
    "malformed_csv": "a CSV row the reader rejects (wrong number of fields, bad quoting)",
    "bad_encoding": "a line that is not UTF-8",
    "blank_line": "an empty line in a JSON lines file",
    "too_large": "a line over MONITOR_MAX_LINE_KB; a file over MONITOR_MAX_DECOMPRESSED_MB decompressed",
    "damaged_file": "a gzip file cut short or corrupt: the line it ends in, and a note for the file",
    "missing_field": "a required field absent, null or empty",
    "bad_type": "a value of the wrong type",
    "bad_timestamp": "a timestamp that cannot be read",
    "non_finite": "NaN or Infinity",
    "out_of_range": "a score, label, latency, quantity or price out of its range",
    "unknown_model": "a model_id that is not configured",
    "model_mismatch": "a model_id that does not belong in the file it is in",
    "unknown_category": "a categorical value outside the feature's allowed_values",
    "bad_features": "the object holding a model's features is missing, null or not an object",
    "duplicate": "a key seen earlier that day or on an earlier day",
    "no_file": "note: the day's glob matched no file",
    "outside_folder": "note: a matched file resolves outside the config's folder (a symlink); not read",
    "missing_column": "note: a CSV or Parquet file lacks a mapped column; it loaded as NULL",
    "unreadable_file": "note: a file the reader cannot open as its format; not read",
}
# The category of a detail (the first that matches), in SQL: one place maps the text to its category.
_CATEGORY_PATTERNS = [
    ("^blank line", "blank_line"), ("^invalid UTF-8", "bad_encoding"), ("^(line|file) too large", "too_large"),
    ("^line too long", "too_large"), ("^(corrupt|truncated) gzip", "damaged_file"),
    ("^non-finite number", "non_finite"), ("^(malformed JSON|JSON array|not a JSON object)", "malformed_json"),
    ("^(wrong number of fields|malformed CSV)", "malformed_csv"), ("^missing required field", "missing_field"),
    ("(?s)^wrong type: .* is not a timestamp$", "bad_timestamp"), ("^wrong type", "bad_type"),
    ("^out of range", "out_of_range"), ("^unknown model_id", "unknown_model"), ("^model_id ", "model_mismatch"),
    ("^unknown category", "unknown_category"), ("^bad features", "bad_features"), ("^duplicate", "duplicate"),
    ("^no input file", "no_file"), ("^outside the config folder", "outside_folder"),
    ("^missing column", "missing_column"), ("^unreadable file", "unreadable_file"),
]


def reason_category_sql(detail: str) -> str:
    """SQL: the category (a key of REASONS) of the detail text in column `detail`."""
    cases = " ".join(f"WHEN regexp_matches({detail}, {sql_str(p)}) THEN {sql_str(c)}" for p, c in _CATEGORY_PATTERNS)
    return f"CASE {cases} ELSE 'other' END"


def json_path(source: str) -> str:
    """`features.amount` -> `$."features"."amount"`; keys are quoted so any character is safe."""
    parts = source.split(".")
    return "$." + ".".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def _typed(f: Field, pretyped: bool = False) -> str:
    """SQL typing the raw text of a field (or passing through a value the reader already typed)."""
    if f.constant is not None:
        return sql_str(f.constant)
    if pretyped:
        return f.raw
    if f.type == NUMBER:
        return f"TRY_CAST({f.raw} AS DOUBLE)"
    if f.type == TIME:
        # Offsets are honoured; naive timestamps are taken as UTC (the warehouse's session time zone).
        return f"TRY_CAST({f.raw} AS TIMESTAMPTZ)"
    return f.raw


def _field_rules(fields: list[Field], pretyped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Presence, type and finiteness rules; a value the reader already typed cannot be of the wrong type."""
    rules = []
    for f in fields:
        name = sql_str(f.label or f.source)
        if f.required is True:
            rules.append((f"{f.raw} IS NULL", f"'missing required field: ' || {name}"))
            if f.type == TEXT:  # an empty id is no id
                rules.append((f"trim({f.raw}) = ''", f"'missing required field: ' || {name} || ' is empty'"))
        if f.type in (NUMBER, TIME) and f.alias not in pretyped:
            kind = "a number" if f.type == NUMBER else "a timestamp"
            rules.append((f"{f.raw} IS NOT NULL AND {f.alias} IS NULL",
                          f"'wrong type: ' || {name} || '=' || left(CAST({f.raw} AS VARCHAR), 40) || ' is not {kind}'"))
        if f.type == NUMBER:
            rules.append((f"{f.alias} IS NOT NULL AND NOT isfinite({f.alias})",
                          f"'non-finite number: ' || {name} || '=' || CAST({f.raw} AS VARCHAR)"))
    return rules


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
    rules += _field_rules(plan.fields, pretyped) + plan.rules
    any_bad = " OR ".join(f"coalesce({cond}, false)" for cond, _ in rules)
    named = "CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in rules) + " END"
    return f"CASE WHEN {any_bad} THEN {named} END"


def _check(plan: StagingPlan, relation: str, path: str, pretyped: set[str] = frozenset()) -> str:
    """Typed aliases and the first failing reason (NULL when good) for each row of `relation`, which
    yields (line_no, raw, problem, parse_ok, r_<alias>...); `problem` is a reason found before parsing."""
    typed_cols = ", ".join(f"{_typed(f, f.alias in pretyped)} AS {f.alias}" for f in plan.fields)
    aliases = ", ".join(f.alias for f in plan.fields)
    return f"""
        SELECT {sql_str(path)} AS source_file, line_no, reason, raw, {aliases}
        FROM (SELECT *, {_reason_case(plan, frozenset(pretyped))} AS reason
              FROM (SELECT *, {typed_cols} FROM ({relation})))"""


def _target_columns(plan: StagingPlan) -> str:
    """Explicit target columns where the table has config-dependent ones (raw.predictions)."""
    return f"({', '.join(quote_ident(c) for c in plan.targets)})" if plan.targets else ""


def _load_checked(con: duckdb.DuckDBPyConnection, plan: StagingPlan, relation: str, params: list, path: str,
                  day: dt.date) -> None:
    """The records of `relation` checked in one pass, then good ones to the raw table, bad ones to quarantine.
    Only bad records keep their raw text, so the checked rows stay about the size of the loaded ones."""
    # JSON lines keep their line end until here (JSON ignores it, and trimming every line costs more than
    # parsing it): only a bad record's text is kept, trimmed.
    con.execute("CREATE OR REPLACE TEMP TABLE _checked AS SELECT * REPLACE (CASE WHEN reason IS NOT NULL THEN "
                f"rtrim(raw, chr(13) || chr(10)) END AS raw) FROM ({_check(plan, relation, path)})", params)
    con.execute(f"INSERT INTO raw.{plan.source} {_target_columns(plan)} SELECT ?::DATE, {', '.join(plan.outputs)} "
                "FROM _checked WHERE reason IS NULL", [day])
    con.execute("INSERT INTO raw.quarantine SELECT ?::DATE, ?, source_file, line_no, reason, raw "
                "FROM _checked WHERE reason IS NOT NULL", [day, plan.source])
    con.execute("DROP TABLE _checked")


def _note(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date, path: str, detail: str) -> None:
    """A quarantine row for a file itself (no line number: it is not a record, and counts as none)."""
    con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, NULL, ?, NULL)", [day, plan.source, path, detail])


def _report_damage(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date, path: str, damage: str) -> None:
    _note(con, plan, day, path, f"{damage}; records after the damage are lost")


# --------------------------------------------------------------------------------------------
# JSON lines: the line index (shared by both readers), the careful reader, the fast reader.


class DamagedGzip(Exception):
    """Raised by `file_chunks` after the last bytes that could be decompressed."""


def too_large(cap: int) -> str:
    return (f"file too large: more than {cap >> 20:,} MiB decompressed (with its line index), the limit "
            "MONITOR_MAX_DECOMPRESSED_MB; not read")


def file_chunks(path: str, size: int = 1 << 24, cap: int | None = None) -> Iterator[bytes]:
    """The bytes of a file, decompressed when it ends in .gz. A damaged gzip file (cut short or corrupt)
    yields what precedes the damage, then raises DamagedGzip; one that expands past `cap` bytes (default
    MAX_DECOMPRESSED_BYTES) raises TooLarge once it has, so a gzip bomb never expands further."""
    cap = MAX_DECOMPRESSED_BYTES if cap is None else cap
    with open(path, "rb") as f:
        if not path.endswith(".gz"):
            while chunk := f.read(size):
                yield chunk
            return
        member, in_member, total = zlib.decompressobj(31), False, 0
        while data := f.read(1 << 16):  # small reads: a corrupt block loses only the output of its own read
            while data or in_member:
                in_member = True
                try:
                    # At most a chunk at a time: 64 KiB of a bomb would otherwise expand to 64 MiB at once.
                    out = member.decompress(data, size)
                except zlib.error as exc:
                    raise DamagedGzip(f"corrupt gzip: {exc}") from None
                data = member.unconsumed_tail
                total += len(out)
                if total > cap:
                    raise TooLarge(too_large(cap))
                if out:
                    yield out
                if member.eof:
                    # What follows a member is the next one (concatenated gzip files are valid).
                    data, member, in_member = member.unused_data, zlib.decompressobj(31), False
                elif not data and len(out) < size:
                    break  # this input is used up and no output is pending: read on
        if in_member:
            raise DamagedGzip("truncated gzip: the file ends before its end-of-stream marker")


def _invalid_utf8(lines: pa.Array, start: int = 0) -> list[int]:
    """Positions of the lines that are not UTF-8, found by halving (each cast checks a slice in C++)."""
    try:
        lines.cast(pa.large_string())
        return []
    except pa.ArrowInvalid:
        if len(lines) == 1:
            return [start]
        half = len(lines) // 2
        return _invalid_utf8(lines.slice(0, half), start) + _invalid_utf8(lines.slice(half), start + half)


def _readable(line: pa.Scalar) -> str:
    """A line as text for the quarantine: bytes that are not UTF-8 replaced, a very long line cut."""
    data = memoryview(line.as_buffer())
    text = data[:KEEP_BYTES].tobytes().decode("utf-8", "replace").rstrip("\r\n")
    return text + " …" if len(data) > KEEP_BYTES else text


class LineIndex:
    """Where every line of a JSON lines file starts and ends, built in a background thread (file reading
    and newline search release the GIL, so it overlaps DuckDB's parse); gzip is decompressed in the
    thread and kept. Both JSON readers take their lines from here, so they see the same lines (a UTF-8
    BOM is not part of the first) and the same byte-level problems."""

    def __init__(self, path: str, chunk_size: int = 1 << 24):
        self.path, self.chunk_size = path, chunk_size
        self.damage: str | None = None  # why a gzip file ends early
        self.too_large: str | None = None  # why the file is not read at all
        self._data = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            gz = self.path.endswith(".gz")
            ends, pieces, head, offset, n_lines = [], [], b"", 0, 0
            cap = MAX_DECOMPRESSED_BYTES
            try:
                for chunk in file_chunks(self.path, self.chunk_size, cap):
                    ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + offset)
                    n_lines += len(ends[-1])
                    if gz:
                        pieces.append(chunk)
                    if len(head) < 4096:
                        head += chunk[:4096 - len(head)]
                    offset += len(chunk)
                    # What this index holds: the decompressed bytes, and 8 bytes a line for where it ends.
                    if (offset if gz else 0) + 8 * n_lines > cap:
                        raise TooLarge(too_large(cap))
            except DamagedGzip as exc:
                self.damage = str(exc)
            except TooLarge as exc:
                self.too_large = str(exc)
                ends, pieces, offset = [], [], 0  # nothing of it is read
            self.size = offset
            self.ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
            self._data = b"".join(pieces) if gz else None
            self.start = len(BOM) if head.startswith(BOM) else 0
            # A file that opens with '[' is one JSON document, an array, not JSON lines.
            self.array = re.match(rb"\s*\[", head[self.start:]) is not None
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def wait(self) -> LineIndex:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self

    @property
    def _open_end(self) -> bool:
        """The last line has no newline."""
        return self.size > self.start and (not len(self.ends) or int(self.ends[-1]) != self.size - 1)

    @property
    def count(self) -> int:
        return len(self.ends) + int(self._open_end)

    def _offsets(self) -> np.ndarray:
        """Line i spans offsets[i]:offsets[i + 1], its newline included."""
        return np.concatenate(([self.start], self.ends + 1, [self.size] * self._open_end)).astype(np.int64)

    def lengths(self) -> np.ndarray:
        """The bytes of every line, without its newline."""
        lengths = np.diff(self._offsets())
        lengths[:len(self.ends)] -= 1
        return lengths

    def raw_lines(self, rows: np.ndarray | None = None) -> pa.Array:
        """The bytes of the given lines (0-based; every line by default), newlines included. Every line
        is a view of the file (memory-mapped, or the decompressed gzip); only a selection is copied."""
        offsets = self._offsets()
        if rows is not None and self._data is None:
            # A few lines of a plain file are read as they are: touching a mapping all over a big file
            # would page all of it into this process.
            rows = np.asarray(rows, dtype=np.int64)
            starts, ends = offsets[rows].tolist(), offsets[rows + 1].tolist()
            with open(self.path, "rb") as f:
                return pa.array([os.pread(f.fileno(), end - start, start) for start, end in zip(starts, ends, strict=True)],
                                pa.large_binary())
        if self._data is None:
            with open(self.path, "rb") as f:
                self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        lines = pa.Array.from_buffers(pa.large_binary(), self.count,
                                      [None, pa.py_buffer(offsets), pa.py_buffer(self._data)])
        return lines if rows is None else lines.take(pa.array(rows, pa.int64()))

    def lines(self, rows: np.ndarray | None = None) -> pa.Table:
        """(line_no, text, problem) of the given lines (0-based; every line by default) for the careful
        reader. A line it must not parse has a problem (in a JSON array file, cut off by a damaged gzip,
        too long, not UTF-8), and a readable rendering as its text, for the quarantine."""
        binary = self.raw_lines(rows)
        rows = np.arange(self.count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        problems: dict[int, str] = {}  # position in rows -> reason
        if self.damage and self._open_end:
            for i in np.flatnonzero(rows == self.count - 1):
                problems[int(i)] = f"{self.damage}; the file ends inside this line"
        lengths = self.lengths()[rows]
        for i in np.flatnonzero(lengths > MAX_LINE_BYTES):
            problems.setdefault(int(i), f"line too long: {lengths[i]:,} bytes, the limit is {MAX_LINE_BYTES:,}")
        try:
            text = binary.cast(pa.large_string())
        except pa.ArrowInvalid:
            for i in _invalid_utf8(binary):
                problems.setdefault(i, "invalid UTF-8")
        problem = pa.nulls(len(rows), pa.string())
        if problems:
            at = list(problems)
            readable, reasons = np.full(len(rows), None, dtype=object), np.full(len(rows), None, dtype=object)
            readable[at], reasons[at] = [_readable(binary[i]) for i in at], list(problems.values())
            mask = np.zeros(len(rows), dtype=bool)
            mask[at] = True
            mask = pa.array(mask)
            clean = pc.if_else(mask, pa.scalar(b"", pa.large_binary()), binary).cast(pa.large_string())
            text, problem = pc.if_else(mask, pa.array(readable, pa.large_string()), clean), pa.array(reasons, pa.string())
        if self.array:
            problem = pa.repeat(JSON_ARRAY, len(rows))
        return pa.table({"line_no": pa.array(rows + 1), "text": text, "problem": problem})


# trim() scans the whole string, so only short lines are trimmed.
BLANK = "(raw IS NULL OR (length(raw) < 256 AND trim(rtrim(raw, chr(13) || chr(10))) = ''))"


def _lines_relation(plan: StagingPlan, lines: str) -> tuple[str, list]:
    """SQL yielding (line_no, raw, problem, parse_ok, r_<alias>...) for the JSON lines of table `lines`
    (line_no, text, problem), and its parameters."""
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
        SELECT line_no, raw, problem, parse_ok, {', '.join(picks)} FROM (
            SELECT *, CASE WHEN parse_ok THEN json_extract_string(raw, ?::VARCHAR[]) END AS v
            FROM (SELECT *, CASE WHEN problem IS NULL AND NOT {BLANK} THEN json_valid(raw) END AS parse_ok
                  FROM (SELECT line_no, problem, text AS raw FROM {lines})))"""
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


def _load_json_fast(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date,
                    index: LineIndex) -> bool:
    """One parallel pass with DuckDB's JSON reader. Returns False, having written nothing, when the
    careful reader must take the whole file.

    The reader keeps one row per non-blank line, so when the row count equals the line count, row i
    is line i. It types numbers and timestamps itself, and differs from the careful reader in silent
    ways: a line it cannot parse (malformed, not UTF-8, the first after a BOM) becomes an all-NULL row,
    a value it cannot type becomes NULL, a boolean becomes 1 or 0, a line of any length is read. Those
    rows, and every row a rule rejects (for its reason and raw text), are re-read the careful way from
    their lines; the good rows, nearly all, are written straight from the reader."""
    layout = _json_columns(plan)
    if layout is None:
        return False
    columns, access, pretyped = layout
    picks = ", ".join((f"CASE WHEN {access[f.alias]} IS NOT NULL THEN 'OBJECT' END" if f.object
                       else f"{access[f.alias]}{'' if f.alias in pretyped else '::VARCHAR'}" if f.source is not None
                       else "NULL::VARCHAR") + f" AS {f.raw}" for f in plan.fields)
    fast = f"""SELECT NULL::BIGINT AS line_no, NULL::VARCHAR AS raw, NULL::VARCHAR AS problem, true AS parse_ok,
                      {picks}
               FROM read_json(?, format='newline_delimited', columns={columns}, ignore_errors=true) AS j"""
    # A NULL typed value may be one the reader could not type; an all-NULL row, a line it could not parse.
    # An object the reader gives as NULL may have been null, or not an object: the careful reader tells.
    unsure = [f"{a} IS NULL" for a in sorted(pretyped) + [f.alias for f in plan.fields if f.object]] + [
        "(" + " AND ".join(f"{f.alias} IS NULL" for f in plan.fields if f.constant is None) + ")"]
    sql = f"""SELECT * EXCLUDE (line_no, source_file, raw), reason IS NOT NULL OR {' OR '.join(unsure)} AS recheck
              FROM ({_check(plan, fast, path, pretyped)})"""
    reader = con.cursor()  # a file DuckDB cannot read (a damaged gzip) must not abort the caller's transaction
    try:
        rows = reader.sql(sql, params=[path]).to_arrow_table()
    except duckdb.Error:
        return False
    finally:
        reader.close()
    index.wait()
    n = rows.num_rows
    if n != index.count or index.damage or index.array or index.too_large:  # blank lines shift the rows, or not JSON lines
        return False
    recheck = rows["recheck"].to_numpy() | (index.lengths() > MAX_LINE_BYTES)
    # A 1 or 0 may have been a boolean (the wrong type): only if its line says true or false.
    bool_like = np.zeros(n, dtype=bool)
    for f in plan.fields:
        if f.alias in pretyped and f.type == NUMBER:
            values = rows[f.alias]
            bool_like |= pc.fill_null(pc.or_(pc.equal(values, 0), pc.equal(values, 1)), False).to_numpy()
    maybe = np.flatnonzero(bool_like & ~recheck)
    if len(maybe):
        says_bool = pc.match_substring_regex(index.raw_lines(maybe), "true|false").to_numpy(zero_copy_only=False)
        recheck[maybe[says_bool]] = True
    rows = (rows.drop_columns(["recheck"]).append_column("recheck", pa.array(recheck))
            .append_column("line_no", pa.array(np.arange(1, n + 1, dtype=np.int64))))
    con.register("_json_rows", rows)
    try:
        con.execute(f"""INSERT INTO raw.{plan.source} {_target_columns(plan)}
                        SELECT ?::DATE, {', '.join(plan.outputs)}
                        FROM (SELECT {sql_str(path)} AS source_file, * FROM _json_rows) WHERE NOT recheck""", [day])
    finally:
        con.unregister("_json_rows")
    _load_lines(con, plan, path, day, index, np.flatnonzero(recheck))
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
        _note(con, plan, day, path, index.too_large)
        return 0
    if index.damage:
        _report_damage(con, plan, day, path, index.damage)
    return index.count


# --------------------------------------------------------------------------------------------
# CSV and Parquet.


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
        _note(con, plan, day, path, f"missing column: no {', '.join(dict.fromkeys(missing))} among {shown}; "
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


def _load_csv_file(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, label: str, day: dt.date) -> int:
    """Reads a CSV file (its records named after `label`); the rows the reader rejects (wrong number of
    fields, not UTF-8, too long) are records with a problem on their own line. Returns the records read.

    Record i is taken to be on line i + 1 (after the header) with the rejected lines left out."""
    con.execute("DROP TABLE IF EXISTS _csv_rejects")
    con.execute("DROP TABLE IF EXISTS _csv_scans")
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
    _load_checked(con, plan, relation, [], label, day)
    return good + rejected


def _load_csv(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date) -> int:
    """A CSV file, or of a damaged gzip one the lines before the damage. Returns the records read."""
    damage = None
    if path.endswith(".gz"):  # DuckDB fails on a damaged gzip file as a whole: check it first
        try:
            for _ in file_chunks(path):
                pass
        except DamagedGzip as exc:
            damage = str(exc)
        except TooLarge as exc:  # a gzip bomb is not handed to DuckDB's reader
            _note(con, plan, day, path, str(exc))
            return 0
    if damage is None:
        return _load_csv_file(con, plan, path, path, day)
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
        read = _load_csv_file(con, plan, copy.name, path, day)
    finally:
        os.unlink(copy.name)
    if tail:
        con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, ?, ?, ?)",
                    [day, plan.source, path, newlines + 1, f"{damage}; the file ends inside this line",
                     tail[:KEEP_BYTES].decode("utf-8", "replace")])
        read += 1
    _report_damage(con, plan, day, path, damage)
    return read


def _load_parquet(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date) -> int:
    columns = [d[0] for d in con.execute("SELECT * FROM read_parquet(?) LIMIT 0", [path]).description]
    relation = f"""
        SELECT row_number() OVER () AS line_no, CAST(to_json({ROW}) AS VARCHAR) AS raw, NULL::VARCHAR AS problem,
               true AS parse_ok, {_column_picks(con, plan, path, day, columns, ROW + ".")}
        FROM read_parquet(?) AS {ROW}"""
    _load_checked(con, plan, relation, [path], path, day)
    return con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchall()[0][0]


LOADERS = {"jsonl": _load_json, "csv": _load_csv, "parquet": _load_parquet}


# --------------------------------------------------------------------------------------------
# Checks over the whole day's loaded rows.


def _move_to_quarantine(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date,
                        where: str, reason: str, params: list | None = None) -> None:
    """Move loaded rows matching `where` to quarantine with `reason` (SQL), keeping them as JSON."""
    table = f"raw.{plan.source}"
    con.execute(f"""
        INSERT INTO raw.quarantine
        SELECT partition_date, ?, source_file, line_no, {reason}, CAST(to_json(t) AS VARCHAR)
        FROM {table} AS t WHERE partition_date = ? AND ({where})""", [plan.source, day, *(params or [])])
    con.execute(f"DELETE FROM {table} AS t WHERE partition_date = ? AND ({where})", [day, *(params or [])])


def _quarantine_duplicates(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date) -> None:
    """A repeated key keeps its first occurrence (by file, line); later ones are quarantined, citing it."""
    key, table = plan.key, f"raw.{plan.source}"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dupes AS
        SELECT source_file, line_no, first_file, first_line FROM (
            SELECT source_file, line_no, first_value(source_file) OVER w AS first_file,
                   first_value(line_no) OVER w AS first_line, row_number() OVER w AS nth
            FROM {table}
            WHERE partition_date = ? AND {key} IN (SELECT {key} FROM {table} WHERE partition_date = ?
                                                  GROUP BY {key} HAVING count(*) > 1)
            WINDOW w AS (PARTITION BY {key} ORDER BY source_file, line_no))
        WHERE nth > 1""", [day, day])
    if con.execute("SELECT count(*) FROM _dupes").fetchall()[0][0]:
        match = "(t.source_file, t.line_no) IN (SELECT (source_file, line_no) FROM _dupes)"
        reason = (f"(SELECT 'duplicate {key}: first seen in ' || d.first_file || ' line ' || d.first_line "
                  "FROM _dupes d WHERE d.source_file = t.source_file AND d.line_no = t.line_no)")
        _move_to_quarantine(con, plan, day, match, reason)


EARLY_LABEL_DAYS = 7  # a label may be logged this many days before its prediction (clocks, time zones)


def latest_labels_sql(since: str, model_ids: Sequence[str]) -> str:
    """SQL (prediction_id, label): each prediction's newest label (a corrected one replaces the old), among
    the labels logged from `since` (an SQL date expression) less EARLY_LABEL_DAYS, of these models'
    predictions and of those no prediction matched yet. Labels are stored sorted by model, so the scan
    skips the other models' row groups."""
    listed = ", ".join(sql_str(m) for m in model_ids)
    return f"""SELECT prediction_id, arg_max(label, partition_date) AS label FROM raw.labels
               WHERE partition_date >= {since} - INTERVAL {EARLY_LABEL_DAYS} DAY
                     AND (model_id IN ({listed}) OR model_id IS NULL)
               GROUP BY prediction_id"""


def _check_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan, day: dt.date) -> None:
    """Labels are matched to their logged prediction (model and day, from `lake.predictions`); a label whose
    prediction has not arrived yet is kept, unmatched, and is joined when it does (metrics join on the id).
    A classifier's label must be 0 or 1."""
    # A join into a new table: an UPDATE of millions of rows through a join took three times as long.
    con.execute("""
        CREATE TABLE raw.labels_matched AS
        SELECT l.* REPLACE (coalesce(p.model_id, l.model_id) AS model_id,
                            coalesce(p.partition_date, l.prediction_date) AS prediction_date)
        FROM raw.labels AS l
        LEFT JOIN (SELECT prediction_id, any_value(model_id) AS model_id, min(partition_date) AS partition_date
                   FROM lake.predictions WHERE prediction_id IN (SELECT prediction_id FROM raw.labels)
                   GROUP BY 1) AS p
            ON p.prediction_id = l.prediction_id AND l.partition_date = ?""", [day])
    con.execute("DROP TABLE raw.labels")
    con.execute("ALTER TABLE raw.labels_matched RENAME TO labels")
    classifiers = [m.id for m in config.models if m.is_classifier] or [""]
    _move_to_quarantine(con, plan, day, "t.model_id IN (SELECT unnest(?::VARCHAR[])) AND t.label NOT IN (0, 1)",
                        "'out of range: label=' || t.label || ' for classifier ' || t.model_id || ', expected 0 or 1'",
                        [classifiers])


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


def _quarantine_earlier_keys(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date) -> None:
    """A key already loaded on an earlier day (`lake.<source>`, the stored table) is a duplicate here, citing
    that day; the first day keeps its row. A re-run replaces its own day, so it does not see itself."""
    key, table = plan.key, f"raw.{plan.source}"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _seen AS
        SELECT {key}, min(partition_date) AS first_day FROM lake.{plan.source}
        WHERE partition_date < ? AND {key} IN (SELECT {key} FROM {table})
        GROUP BY 1""", [day])
    if con.execute("SELECT count(*) FROM _seen").fetchall()[0][0]:
        _move_to_quarantine(con, plan, day, f"t.{key} IN (SELECT {key} FROM _seen)",
                            f"(SELECT 'duplicate {key}: first seen on ' || s.first_day FROM _seen AS s "
                            f"WHERE s.{key} = t.{key})")


def _count_corrected_labels(con: duckdb.DuckDBPyConnection, day: dt.date) -> int:
    """Labels of the day that change their prediction's newest earlier label. They replace it: metrics
    take each prediction's label from the newest partition (arg_max by partition_date)."""
    return con.execute("""
        SELECT count(*) FROM raw.labels AS l
        JOIN (SELECT prediction_id, arg_max(label, partition_date) AS label FROM lake.labels
              WHERE partition_date < ? AND prediction_id IN (SELECT prediction_id FROM raw.labels)
              GROUP BY 1) AS earlier USING (prediction_id)
        WHERE l.label IS DISTINCT FROM earlier.label""", [day]).fetchall()[0][0]


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


# --------------------------------------------------------------------------------------------
# Plans for each kind of source, built from the config.


def predictions_plan(config: MonitorConfig, models: list[ModelConfig] | None = None,
                     constant_model: str | None = None) -> StagingPlan:
    """How prediction files are read: for the given models only (a file is parsed for the fields of the
    models it can hold), with model_id taken from the path when the file belongs to one model."""
    src = config.predictions.fields
    models = list(config.models) if models is None else models
    model_id = (Field("model_id", None, TEXT, constant=constant_model) if constant_model is not None
                else Field("model_id", src["model_id"], TEXT, True))
    fields = [
        Field("prediction_id", src["prediction_id"], TEXT, True),
        model_id,
        Field("ts", src["timestamp"], TIME, True),
        # Not every service logs these: when unmapped or absent they load as NULL (and every row is ok).
        Field("model_version", src["model_version"], optional=True),
        Field("latency_ms", src["latency_ms"], NUMBER, optional=True),
        Field("status", src["status"], optional=True),
        Field("decision", src["decision"], optional=True),  # the logged predicted class, any spelling
    ]
    ok_list = ", ".join(sql_str(s) for s in config.predictions.ok_status)
    is_ok = f"(coalesce(status, {sql_str(config.predictions.ok_status[0])}) IN ({ok_list}))"
    # Each model may log its output under its own field; read each distinct one once.
    score_aliases: dict[str, str] = {}
    for m in models:
        if m.score_field not in score_aliases:
            alias = f"score_{len(score_aliases)}"
            score_aliases[m.score_field] = alias
            fields.append(Field(alias, m.score_field, NUMBER, False, label=m.score_field))
    feature_aliases: dict[tuple[str, str], str] = {}
    for m in models:
        for f in m.features + m.sensitive_attributes:
            key = (f.source, f.type)
            if key not in feature_aliases:
                alias = f"feat_{len(feature_aliases)}"
                feature_aliases[key] = alias
                # Categorical values are kept as text whatever JSON type they came as.
                fields.append(Field(alias, f.source, NUMBER if f.type == "numeric" else TEXT, label=f.source))
    # JSON: the object a model's features sit in ("features" of "features.amount") must be an object when
    # present; null or a string would load every feature as NULL. Absent, they load as NULL (like a column a
    # CSV or Parquet file lacks).
    parents: dict[str, str] = {}
    if config.predictions.format == "jsonl":
        for m in models:
            for f in m.features + m.sensitive_attributes:
                parent = f.source.rpartition(".")[0]
                if parent and parent not in parents:
                    parents[parent] = f"obj_{len(parents)}"
                    fields.append(Field(parents[parent], parent, TEXT, label=parent, object=True))
    # Model ids are looked up in a staging table, not a literal list: with hundreds of models a literal list
    # made each file's query slow to plan.
    known = "(SELECT model_id FROM known_models)"
    rules = [("latency_ms < 0", "'out of range: latency_ms=' || latency_ms || ' is negative'")]
    if constant_model is None:  # else model_id is the file's model
        rules.append((f"model_id NOT IN {known}", "'unknown model_id: ' || model_id"))
    if constant_model is not None and src["model_id"]:
        # A per-model file may still log model_id (optional): it must be that model.
        fields.append(Field("logged_model_id", src["model_id"], TEXT, optional=True, label=src["model_id"]))
        rules += [(f"logged_model_id NOT IN {known}", "'unknown model_id: ' || logged_model_id"),
                  (f"logged_model_id <> {sql_str(constant_model)}",
                   f"'model_id mismatch: ' || logged_model_id || ' logged in a file of ' || {sql_str(constant_model)}")]
    if len(models) < len(config.models):  # a model with files of its own is not read from the shared ones
        mine = ", ".join(sql_str(m.id) for m in models) or "NULL"
        rules.append((f"model_id NOT IN ({mine})",
                      "'model_id ' || model_id || ' is read from its own files (sources.predictions.path {model})'"))
    for m in models:
        score = score_aliases[m.score_field]
        in_model = f"model_id = {sql_str(m.id)}"
        rules.append((f"{in_model} AND {is_ok} AND {score} IS NULL",
                      f"'missing required field: ' || {sql_str(m.score_field)} || ' (status is ok)'"))
        if m.is_classifier:
            rules.append((f"{in_model} AND {score} NOT BETWEEN 0 AND 1",
                          f"'out of range: ' || {sql_str(m.score_field)} || '=' || {score} || ' is outside [0, 1]'"))
        for parent in dict.fromkeys(f.source.rpartition(".")[0] for f in m.features + m.sensitive_attributes):
            if parent in parents:
                obj = parents[parent]
                rules.append((f"{in_model} AND {obj} IS NOT NULL AND {obj} <> 'OBJECT'",
                              f"'bad features: ' || {sql_str(parent)} || ' is ' || CASE {obj} WHEN 'NULL' THEN 'null' "
                              f"WHEN 'VARCHAR' THEN 'a string' WHEN 'ARRAY' THEN 'an array' ELSE lower({obj}) END "
                              "|| ', expected an object'"))
        for f in m.features:
            if f.allowed_values:
                allowed = ", ".join(sql_str(v) for v in f.allowed_values)
                alias = feature_aliases[(f.source, f.type)]
                rules.append((f"{in_model} AND {alias} IS NOT NULL AND {alias} NOT IN ({allowed})",
                              f"'unknown category: ' || {sql_str(f.name)} || '=' || {alias}"))
    score_case = " ".join(f"WHEN {sql_str(m.id)} THEN {score_aliases[m.score_field]}" for m in models)
    # The staging table keeps each distinct (field, type) once, as feat_<i>; every model's table gets its
    # own features from them, in columns named after the field (see feature_columns).
    outputs = ["model_id", "prediction_id", "ts", "model_version", "latency_ms", "status", is_ok,
               f"CASE model_id {score_case or 'WHEN NULL THEN NULL'} END", "source_file", "line_no", "decision",
               *feature_aliases.values()]
    targets = [*PREDICTION_COLUMNS, *feature_aliases.values()]
    return StagingPlan("predictions", fields, rules, key="prediction_id", outputs=outputs, targets=targets,
                       unique_across_days=True, feature_aliases=feature_aliases,
                       known_models=tuple(config.known_model_ids))


def feature_columns(config: MonitorConfig) -> dict[tuple[str, str], str]:
    """(source, type) of every feature and attribute -> its column in the models' predictions tables.
    Kept per config: with hundreds of models it is asked for once per model-day."""
    cached = _FEATURE_COLUMNS.get(id(config))
    if cached is None or cached[0] is not config:
        cached = _FEATURE_COLUMNS[id(config)] = (config, feature_columns_of(config.models))
    return cached[1]


_FEATURE_COLUMNS: dict[int, tuple[MonitorConfig, dict]] = {}


def feature_columns_of(models) -> dict[tuple[str, str], str]:
    """(source, type) of these models' features and attributes -> their column name: the field they come
    from (`features.amount`), with `#num` added when the same field is also read as a category."""
    pairs = list(dict.fromkeys((f.source, f.type) for m in models for f in m.features + m.sensitive_attributes))
    kinds: dict[str, set] = {}
    for source, ftype in pairs:
        kinds.setdefault(source, set()).add(ftype)
    return {(source, ftype): source + ("#num" if ftype == "numeric" and len(kinds[source]) > 1 else "")
            for source, ftype in pairs}


def model_feature_select(config: MonitorConfig, model_id: str, prefix: str = "") -> str:
    """SELECT list exposing a model's features and attributes from raw.predictions under their names."""
    columns = feature_columns(config)
    m = config.model(model_id)
    return ", ".join(f"{prefix}{quote_ident(columns[(f.source, f.type)])} AS {quote_ident(f.name)}"
                     for f in m.features + m.sensitive_attributes)


def labels_plan(config: MonitorConfig) -> StagingPlan:
    src = config.labels.fields
    fields = [Field("prediction_id", src["prediction_id"], TEXT, True),
              Field("label", src["label"], NUMBER, True)]
    # model_id and prediction_date are filled from the matching prediction after loading.
    return StagingPlan("labels", fields, [], key="prediction_id",
                       outputs=["NULL", "prediction_id", "NULL", "label", "source_file", "line_no"])


def interactions_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("interactions", [
        Field("session_id", s["session_id"], TEXT, True), Field("user_id", s["user_id"]),
        Field("ts", s["timestamp"], TIME, True), Field("event", s["event"], TEXT, True),
        Field("product_id", s["product_id"]), Field("from_recommendation", s["from_recommendation"]),
    ], outputs=["session_id", "user_id", "ts", "event", "product_id", "TRY_CAST(from_recommendation AS BOOLEAN)"])


def sales_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("sales", [
        Field("order_id", s["order_id"], TEXT, True), Field("ts", s["timestamp"], TIME, True),
        Field("user_id", s["user_id"]), Field("product_id", s["product_id"]),
        Field("quantity", s["quantity"], NUMBER, True), Field("unit_price", s["unit_price"], NUMBER, True),
    ], [("quantity < 0", "'out of range: quantity=' || quantity || ' is negative'"),
        ("unit_price < 0", "'out of range: unit_price=' || unit_price || ' is negative'")],
        outputs=["order_id", "ts", "user_id", "product_id", "quantity", "unit_price", "quantity * unit_price"])


def log_ingestion(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str,
                  results: Sequence[tuple[dt.date, StageResult]]) -> None:
    """The days' counts of this source, as this shard read them ("0/1" without shards), in one commit. Rows
    of another shard count (`.../N` with another N: the shards were re-cut) are replaced too."""
    if not results:
        return
    label, count = config.shard_label, config.shard[1]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = pa.table({"partition_date": pa.array([d for d, _ in results], pa.date32()),
                     "source": [source] * len(results), "files": [len(r.files) for _, r in results],
                     "records_read": [r.read for _, r in results], "records_loaded": [r.loaded for _, r in results],
                     "records_quarantined": [r.quarantined for _, r in results],
                     "loaded_at": [now] * len(results), "shard": [label] * len(results)})
    lake = lake_of(con)
    lake.replace("raw.ingestion_log", rows, [d for d, _ in results], source=source,
                 where=f"shard = {sql_str(label)} OR shard IS NULL OR shard NOT LIKE {sql_str(f'%/{count}')}")
    lake.refresh(con, "raw.ingestion_log")


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


def plan_for(config: MonitorConfig, source: str) -> tuple[SourceConfig, StagingPlan]:
    if source == "predictions":
        return config.predictions, predictions_plan(config)
    if source == "labels":
        return config.labels, labels_plan(config)
    if source == "interactions" and config.interactions:
        return config.interactions, interactions_plan(config.interactions)
    if source == "sales" and config.sales:
        return config.sales, sales_plan(config.sales)
    raise ValueError(f"unknown or unconfigured source {source!r}")


QUARANTINE_STAGE = {"partition_date": "DATE", "source": "VARCHAR", "source_file": "VARCHAR", "line_no": "BIGINT",
                    "reason": "VARCHAR", "raw_record": "VARCHAR"}


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
        shared = ", ".join(quote_ident(c) for c in PREDICTION_COLUMNS)
        union = " UNION ALL ".join(f"SELECT {shared} FROM {lake.model_relation(con, m)}" for m in models)
        con.execute(f"CREATE VIEW lake.predictions AS {union or 'SELECT * FROM raw.predictions WHERE false'}")
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
        return {**PREDICTION_COLUMNS, **types}
    if f"raw.{plan.source}" in TABLES:
        return TABLES[f"raw.{plan.source}"][0]
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
        _note(stage, plan, day, path, detail)
    for path in group.files:
        try:
            read += LOADERS[src.format](stage, plan, path, day)
        except duckdb.Error as exc:
            # One file DuckDB cannot open (not Parquet, say) is noted and skipped: the group's other files
            # and the other models load. The note keeps the error's first line only, cut: never the file.
            _forget_file(stage, plan, path, exc)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            _note(stage, plan, day, path, f"unreadable file: cannot be read as {src.format} "
                                          f"({type(exc).__name__}: {first}); not read")
    if group.files and src.split_by_time:
        read -= _keep_day(stage, src, plan, day)
    if group.files:
        if plan.unique_across_days:
            _quarantine_earlier_keys(stage, plan, day)
        if plan.key:
            _quarantine_duplicates(stage, plan, day)
        if plan.source == "labels":
            _check_labels(stage, config, plan, day)
        if config.sharded:
            read -= _keep_shard(stage, config, plan, group)
        if plan.source == "labels":
            corrected = _count_corrected_labels(stage, day)
    elif not group.refused and (config.owns_shared or group.constant_model is not None):
        # A shared file's absence is shard 0's to say.
        _note(stage, plan, day, group.expected, f"no input file: nothing matched {group.expected}")
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
                                        for f in m.features + m.sensitive_attributes])
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


def quarantine_preview(con: duckdb.DuckDBPyConnection, source: str, days: list[dt.date], limit: int = 8) -> list:
    return con.execute("""
        SELECT partition_date, regexp_replace(source_file, '^.*/', ''), line_no, reason, left(raw_record, 80)
        FROM raw.quarantine WHERE source = ? AND partition_date IN (SELECT unnest(?::DATE[]))
        ORDER BY partition_date, source_file, line_no LIMIT ?""", [source, days, limit]).fetchall()
