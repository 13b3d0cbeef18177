"""What a record must satisfy, and where one that fails goes.

A source's `StagingPlan` lists its `Field`s and rules; every rule is one CASE over typed values that names
the first failing rule. `raw.quarantine.reason` is one of the categories in REASONS (the detail text keeps
what exactly). Checks that need the whole day (duplicate keys, also against earlier days) run afterwards
on the loaded rows and move offenders to the quarantine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb

from monitor_assets.storage.sql import sql_str

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
    "unknown_category": "a categorical value outside the feature's allowed_values; a class name outside a multiclass "
                        "model's classes (predicted class or label)",
    "bad_probabilities": "multiclass class probabilities that are not numbers in [0, 1], of the wrong length or "
                         "classes, or do not sum to 1 (within 0.01)",
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
    ("^unknown category", "unknown_category"), ("^bad probabilities", "bad_probabilities"), ("^bad features", "bad_features"), ("^duplicate", "duplicate"),
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


def typed_sql(f: Field, pretyped: bool = False) -> str:
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


def field_rules(fields: list[Field], pretyped: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
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


QUARANTINE_STAGE = {"partition_date": "DATE", "source": "VARCHAR", "source_file": "VARCHAR", "line_no": "BIGINT",
                    "reason": "VARCHAR", "raw_record": "VARCHAR"}


def note_file(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date, path: str, detail: str) -> None:
    """A quarantine row for a file itself (no line number: it is not a record, and counts as none)."""
    con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, NULL, ?, NULL)", [day, plan.source, path, detail])


def move_to_quarantine(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date | None,
                       where: str, reason: str, params: list | None = None) -> None:
    """Move loaded rows (of `day`; None: of every staged day) matching `where` to quarantine with `reason`
    (SQL), keeping them as JSON."""
    table = f"raw.{plan.source}"
    on_day, days = ("partition_date = ?", [day]) if day is not None else ("true", [])
    con.execute(f"""
        INSERT INTO raw.quarantine
        SELECT partition_date, ?, source_file, line_no, {reason}, CAST(to_json(t) AS VARCHAR)
        FROM {table} AS t WHERE {on_day} AND ({where})""", [plan.source, *days, *(params or [])])
    con.execute(f"DELETE FROM {table} AS t WHERE {on_day} AND ({where})", [*days, *(params or [])])


def quarantine_duplicates(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date | None) -> None:
    """A repeated key keeps its first occurrence (by file, line); later ones are quarantined, citing it. `day`
    None: every staged day, each day's keys on their own."""
    key, table = plan.key, f"raw.{plan.source}"
    if day is not None:
        repeated, days = (f"partition_date = ? AND {key} IN (SELECT {key} FROM {table} WHERE partition_date = ? "
                          f"GROUP BY {key} HAVING count(*) > 1)"), [day, day]
    else:
        repeated, days = (f"(partition_date, {key}) IN (SELECT (partition_date, {key}) FROM {table} "
                          "GROUP BY ALL HAVING count(*) > 1)"), []
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dupes AS
        SELECT partition_date, source_file, line_no, first_file, first_line FROM (
            SELECT partition_date, source_file, line_no, first_value(source_file) OVER w AS first_file,
                   first_value(line_no) OVER w AS first_line, row_number() OVER w AS nth
            FROM {table} WHERE {repeated}
            WINDOW w AS (PARTITION BY partition_date, {key} ORDER BY source_file, line_no))
        WHERE nth > 1""", days)
    if con.execute("SELECT count(*) FROM _dupes").fetchall()[0][0]:
        match = "(t.partition_date, t.source_file, t.line_no) IN (SELECT (partition_date, source_file, line_no) FROM _dupes)"
        reason = (f"(SELECT 'duplicate {key}: first seen in ' || d.first_file || ' line ' || d.first_line "
                  "FROM _dupes d WHERE d.partition_date = t.partition_date AND d.source_file = t.source_file "
                  "AND d.line_no = t.line_no)")
        move_to_quarantine(con, plan, day, match, reason)


def quarantine_earlier_keys(con: duckdb.DuckDBPyConnection, plan: StagingPlan, day: dt.date) -> None:
    """A key already loaded on an earlier day (`lake.<source>`, the stored table) is a duplicate here, citing
    that day; the first day keeps its row. A re-run replaces its own day, so it does not see itself."""
    key, table = plan.key, f"raw.{plan.source}"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _seen AS
        SELECT {key}, min(partition_date) AS first_day FROM lake.{plan.source}
        WHERE partition_date < ? AND {key} IN (SELECT {key} FROM {table})
        GROUP BY 1""", [day])
    if con.execute("SELECT count(*) FROM _seen").fetchall()[0][0]:
        move_to_quarantine(con, plan, day, f"t.{key} IN (SELECT {key} FROM _seen)",
                           f"(SELECT 'duplicate {key}: first seen on ' || s.first_day FROM _seen AS s "
                           f"WHERE s.{key} = t.{key})")
