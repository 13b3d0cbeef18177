"""Reading input files into the warehouse with every record accounted for.

Each record of a day's files ends up loaded or in `raw.quarantine` with its file, line number, the
first reason it failed, and its raw text. Every rule is one CASE over typed values that names the
first failing rule; checks that need the whole day (duplicate keys, labels for unknown predictions)
run afterwards on the loaded rows and move offenders to quarantine. The day is replaced in one
transaction, and read = loaded + quarantined is verified before commit.

Two readers give the same rows and reasons (tests check both):
* careful: every line as plain text, `json_valid` then `json_extract_string` over all wanted paths
  at once; two streaming passes (good rows to the table, bad ones to quarantine). Used for CSV,
  Parquet, small JSON files and any file with blank lines.
* fast (`_load_json_fast`): DuckDB's parallel JSON reader for big files, with the careful reader
  re-reading only the rows it could not type.
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import mmap
import threading
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from monitor_assets.config import MonitorConfig, SourceConfig
from monitor_assets.sql import quote_ident, sql_str
from monitor_assets.warehouse import transaction

NUMBER = "DOUBLE"
TEXT = "VARCHAR"
TIME = "TIMESTAMPTZ"


@dataclass
class Field:
    """One value read from a record: where it comes from, its type, and when it must be present."""

    alias: str
    source: str
    type: str = TEXT
    required: bool = False
    label: str = ""  # how the reason names it

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


@dataclass
class StageResult:
    files: list[str]
    read: int
    loaded: int
    quarantined: int
    reasons: dict[str, int]


def json_path(source: str) -> str:
    """`features.amount` -> `$."features"."amount"`; keys are quoted so any character is safe."""
    parts = source.split(".")
    return "$." + ".".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


def _typed(f: Field, pretyped: bool = False) -> str:
    """SQL typing the raw text of a field (or passing through a value the reader already typed)."""
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
        if f.type in (NUMBER, TIME) and f.alias not in pretyped:
            kind = "a number" if f.type == NUMBER else "a timestamp"
            rules.append((f"{f.raw} IS NOT NULL AND {f.alias} IS NULL",
                          f"'wrong type: ' || {name} || '=' || left(CAST({f.raw} AS VARCHAR), 40) || ' is not {kind}'"))
        if f.type == NUMBER:
            rules.append((f"{f.alias} IS NOT NULL AND NOT isfinite({f.alias})",
                          f"'non-finite number: ' || {name} || '=' || CAST({f.raw} AS VARCHAR)"))
    return rules


def _reason_case(plan: StagingPlan, parse_ok: str, pretyped: frozenset[str] = frozenset()) -> str:
    """The first failing rule's reason, NULL for a good record.

    A plain OR of every condition is cheap to evaluate on all rows; the CASE that names the reason
    (with its string building) then runs on the few bad rows only."""
    rules = [(f"{parse_ok} IS NULL", "'blank line'"),
             (f"NOT {parse_ok} AND regexp_matches(raw, '(?i)(:|\\[|,)\\s*-?(nan|infinity)\\b')",
              "'non-finite number: NaN or Infinity is not valid JSON'"),
             (f"NOT {parse_ok}", "'malformed JSON'")]
    rules += _field_rules(plan.fields, pretyped) + plan.rules
    any_bad = " OR ".join(f"coalesce({cond}, false)" for cond, _ in rules)
    named = "CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in rules) + " END"
    return f"CASE WHEN {any_bad} THEN {named} END"


LINES_READER = ("read_csv(?, columns={'line': 'VARCHAR'}, delim='\\0', quote='', escape='', header=false, "
                "auto_detect=false, strict_mode=false)")
# trim() scans the whole string, so only short lines are trimmed.
BLANK = "(raw IS NULL OR (length(raw) < 256 AND trim(raw) = ''))"


FAST_PATH_MIN_BYTES = 16 << 20  # on disk (compressed, for .gz)


class SourceError(ValueError):
    """A file that cannot be read as configured (for example a mapped column it does not have)."""


def _record_relation(plan: StagingPlan, path: str, fmt: str, lines_sql: str | None = None) -> tuple[str, list]:
    """SQL yielding (line_no, raw, parse_ok, r_<alias>...) for one file, and its parameters.

    For JSON lines, `lines_sql` (yielding line_no, line) replaces the scan of the whole file."""
    if fmt == "jsonl":
        picks = ", ".join(f"v[{i + 1}] AS {f.raw}" for i, f in enumerate(plan.fields))
        lines = lines_sql or f"SELECT ordinality AS line_no, line FROM {LINES_READER} WITH ORDINALITY"
        sql = f"""
            SELECT line_no, raw, parse_ok, {picks} FROM (
                SELECT line_no, raw, parse_ok,
                       CASE WHEN parse_ok THEN json_extract_string(raw, ?::VARCHAR[]) END AS v
                FROM (SELECT line_no, line AS raw,
                             CASE WHEN NOT {BLANK.replace("raw", "line")} THEN json_valid(line) END AS parse_ok
                      FROM ({lines})))"""
        return sql, [[json_path(f.source) for f in plan.fields]] + ([] if lines_sql else [path])
    reader = "read_csv(?, all_varchar=true, header=true)" if fmt == "csv" else "read_parquet(?)"
    offset = 1 if fmt == "csv" else 0  # CSV: line 1 is the header; Parquet: the row number
    picks = ", ".join(f"CAST({quote_ident(f.source)} AS VARCHAR) AS {f.raw}" for f in plan.fields)
    sql = f"""
        SELECT row_number() OVER () + {offset} AS line_no, CAST(to_json(t) AS VARCHAR) AS raw,
               true AS parse_ok, {picks}
        FROM {reader} AS t"""
    return sql, [path]


FAST_TYPES = {NUMBER: "DOUBLE", TIME: "TIMESTAMPTZ", TEXT: "VARCHAR"}


def _json_columns(plan: StagingPlan) -> tuple[str, dict[str, str], set[str]] | None:
    """For DuckDB's JSON reader: its `columns` (nested STRUCTs for dotted paths), each field's
    accessor, and the aliases the reader types itself (a path wanted as two types stays text).
    None when a path is both a value and an object."""
    tree: dict = {}
    access = {}
    for f in plan.fields:
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
    pretyped = set()
    for f in plan.fields:
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


def _check(plan: StagingPlan, relation: str, path: str, pretyped: set[str] = frozenset()) -> str:
    """Typed aliases and the first failing reason (NULL when good) for each row of `relation`."""
    typed_cols = ", ".join(f"{_typed(f, f.alias in pretyped)} AS {f.alias}" for f in plan.fields)
    aliases = ", ".join(f.alias for f in plan.fields)
    return f"""
        SELECT {sql_str(path)} AS source_file, line_no, reason, raw, {aliases}
        FROM (SELECT *, {_reason_case(plan, "parse_ok", frozenset(pretyped))} AS reason
              FROM (SELECT *, {typed_cols} FROM ({relation})))"""


def checked_sql(plan: StagingPlan, path: str, fmt: str, lines_sql: str | None = None) -> tuple[str, list]:
    """Every record of one file with typed aliases and its first failing reason (NULL when good)."""
    relation, params = _record_relation(plan, path, fmt, lines_sql)
    return _check(plan, relation, path), params


def _target_columns(plan: StagingPlan) -> str:
    """Explicit target columns where the table has config-dependent ones (raw.predictions)."""
    return f"({', '.join(quote_ident(c) for c in plan.targets)})" if plan.targets else ""


def _load_file_careful(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, fmt: str,
                       day: dt.date) -> None:
    """Two streaming passes over the file: good records to the raw table, bad ones to quarantine."""
    sql, params = checked_sql(plan, path, fmt)
    con.execute(f"INSERT INTO raw.{plan.source} {_target_columns(plan)} SELECT ?::DATE, {', '.join(plan.outputs)} "
                f"FROM ({sql}) WHERE reason IS NULL", [day, *params])
    con.execute("INSERT INTO raw.quarantine SELECT ?::DATE, ?, source_file, line_no, reason, raw "
                f"FROM ({sql}) WHERE reason IS NOT NULL", [day, plan.source, *params])


class LineIndex:
    """Where every line of a text file ends, built in a background thread (file reading and newline
    search release the GIL, so it overlaps DuckDB's parse). Gzip files are decompressed in the thread."""

    def __init__(self, path: str, chunk_size: int = 1 << 24):
        self.path, self.chunk_size = path, chunk_size
        self._thread = threading.Thread(target=self._build, daemon=True)
        self._error: BaseException | None = None
        self._thread.start()

    def _build(self) -> None:
        try:
            opener = gzip.open if self.path.endswith(".gz") else open
            ends, pieces, offset = [], [], 0
            with opener(self.path, "rb") as f:
                while chunk := f.read(self.chunk_size):
                    ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + offset)
                    if self.path.endswith(".gz"):
                        pieces.append(chunk)
                    offset += len(chunk)
            self.size = offset
            self.ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
            self.text = b"".join(pieces) if pieces else None
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def wait(self) -> LineIndex:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self

    @property
    def count(self) -> int:
        last_open = bool(self.size) and (not len(self.ends) or self.ends[-1] != self.size - 1)
        return len(self.ends) + int(last_open)

    def lines(self, numbers: list[int]) -> dict[int, str]:
        """The text of the given 1-based line numbers."""
        out: dict[int, str] = {}
        if not numbers:
            return out
        with open(self.path, "rb") as f:
            buf = self.text if self.text is not None else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            for n in numbers:
                start = int(self.ends[n - 2]) + 1 if n > 1 else 0
                end = int(self.ends[n - 1]) if n - 1 < len(self.ends) else self.size
                out[n] = bytes(buf[start:end]).decode("utf-8", "replace")
        return out


def _load_json_fast(con: duckdb.DuckDBPyConnection, plan: StagingPlan, path: str, day: dt.date) -> int | None:
    """One parallel pass with DuckDB's JSON reader, fanned out to the raw table and quarantine.

    The reader keeps one row per non-blank line, so when the row count equals the line count, row i
    is line i. It types numbers and timestamps itself, but turns a malformed line into an all-NULL
    row and a wrongly typed value into NULL, silently: so every row with a NULL where a number or
    timestamp was wanted is re-read the careful way, from its line, and only those rows pay for it.
    The raw text of bad rows is fetched by line number. Writes nothing and returns None when the
    counts differ (blank lines), and the caller reads the file the careful way. Returns the records read."""
    layout = _json_columns(plan)
    if layout is None:
        return None
    columns, access, pretyped = layout
    index = LineIndex(path)
    picks = ", ".join(f"{access[f.alias]}{'' if f.alias in pretyped else '::VARCHAR'} AS {f.raw}"
                      for f in plan.fields)
    fast = f"""SELECT NULL::BIGINT AS line_no, NULL::VARCHAR AS raw, true AS parse_ok, {picks}
               FROM read_json(?, format='newline_delimited', columns={columns}, ignore_errors=true) AS j"""
    suspect = " OR ".join(f"{f.alias} IS NULL" for f in plan.fields if f.alias in pretyped) or "false"
    all_null = " AND ".join(f"{f.alias} IS NULL" for f in plan.fields)
    rows = con.sql(f"""SELECT * EXCLUDE (line_no, source_file, raw), ({suspect}) OR ({all_null}) AS suspect
                       FROM ({_check(plan, fast, path, pretyped)})""", params=[path]).to_arrow_table()
    n = rows.num_rows
    bad_index = pc.indices_nonzero(pc.or_(pc.is_valid(rows["reason"]), rows["suspect"])).to_numpy()
    index.wait()
    if index.count != n:  # the reader skipped blank lines: row i is no longer line i
        return None
    bad_text = index.lines((bad_index + 1).tolist())
    rows = rows.append_column("line_no", pa.array(np.arange(1, n + 1, dtype=np.int64)))
    con.register("_json_rows", rows)
    try:
        con.execute(f"""INSERT INTO raw.{plan.source} {_target_columns(plan)}
                        SELECT ?::DATE, {', '.join(plan.outputs)}
                        FROM (SELECT {sql_str(path)} AS source_file, * FROM _json_rows)
                        WHERE reason IS NULL AND NOT suspect""", [day])
        con.execute("CREATE OR REPLACE TEMP TABLE _bad AS SELECT line_no, reason, suspect "
                    "FROM _json_rows WHERE reason IS NOT NULL OR suspect")
    finally:
        con.unregister("_json_rows")
    if not con.execute("SELECT count(*) FROM _bad").fetchall()[0][0]:
        return n
    bad_lines = pd.DataFrame({"line_no": list(bad_text), "line": list(bad_text.values())})
    con.register("_bad_frame", bad_lines)
    con.execute("CREATE OR REPLACE TEMP TABLE _bad_lines AS SELECT line_no::BIGINT AS line_no, line FROM _bad_frame")
    con.unregister("_bad_frame")
    recheck, params = checked_sql(plan, path, "jsonl", lines_sql=(
        "SELECT line_no, line FROM _bad_lines WHERE line_no IN (SELECT line_no FROM _bad WHERE suspect)"))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _recheck AS {recheck}", params)
    con.execute(f"""INSERT INTO raw.{plan.source} {_target_columns(plan)}
                    SELECT ?::DATE, {', '.join(plan.outputs)} FROM _recheck WHERE reason IS NULL""", [day])
    con.execute("""
        INSERT INTO raw.quarantine
        SELECT ?::DATE, ?, ?, b.line_no, coalesce(r.reason, b.reason), l.line
        FROM _bad AS b JOIN _bad_lines AS l USING (line_no) LEFT JOIN _recheck AS r USING (line_no)
        WHERE (b.suspect AND r.reason IS NOT NULL) OR NOT b.suspect""", [day, plan.source, path])
    return n


def _count_records(con: duckdb.DuckDBPyConnection, path: str, fmt: str) -> int:
    """Records in a file, counted independently of the checks (lines for JSON, rows otherwise)."""
    reader = {"jsonl": LINES_READER, "csv": "read_csv(?, all_varchar=true, header=true)",
              "parquet": "read_parquet(?)"}[fmt]
    return con.execute(f"SELECT count(*) FROM {reader}", [path]).fetchall()[0][0]


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


def _check_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig, plan: StagingPlan, day: dt.date) -> None:
    """Labels must name a logged prediction, and a classifier's label must be 0 or 1."""
    con.execute("""
        UPDATE raw.labels AS l SET model_id = p.model_id, prediction_date = p.partition_date
        FROM raw.predictions AS p WHERE l.partition_date = ? AND p.prediction_id = l.prediction_id""", [day])
    _move_to_quarantine(con, plan, day, "t.model_id IS NULL",
                        "'label for unknown prediction: ' || t.prediction_id")
    classifiers = [m.id for m in config.models if m.is_classifier] or [""]
    _move_to_quarantine(con, plan, day, "t.model_id IN (SELECT unnest(?::VARCHAR[])) AND t.label NOT IN (0, 1)",
                        "'out of range: label=' || t.label || ' for classifier ' || t.model_id || ', expected 0 or 1'",
                        [classifiers])


def files_for(source: SourceConfig, day: dt.date) -> list[str]:
    return sorted(glob.glob(source.paths_for(day)))


# --------------------------------------------------------------------------------------------
# Plans for each kind of source, built from the config.


def predictions_plan(config: MonitorConfig) -> StagingPlan:
    src = config.predictions.fields
    fields = [
        Field("prediction_id", src["prediction_id"], TEXT, True),
        Field("model_id", src["model_id"], TEXT, True),
        Field("ts", src["timestamp"], TIME, True),
        Field("model_version", src["model_version"]),
        Field("latency_ms", src["latency_ms"], NUMBER),
        Field("status", src["status"]),
    ]
    ok_list = ", ".join(sql_str(s) for s in config.predictions.ok_status)
    is_ok = f"(coalesce(status, {sql_str(config.predictions.ok_status[0])}) IN ({ok_list}))"
    # Each model may log its output under its own field; read each distinct one once.
    score_aliases: dict[str, str] = {}
    for m in config.models:
        if m.score_field not in score_aliases:
            alias = f"score_{len(score_aliases)}"
            score_aliases[m.score_field] = alias
            fields.append(Field(alias, m.score_field, NUMBER, False, label=m.score_field))
    feature_aliases: dict[tuple[str, str], str] = {}
    for m in config.models:
        for f in m.features + m.sensitive_attributes:
            key = (f.source, f.type)
            if key not in feature_aliases:
                alias = f"feat_{len(feature_aliases)}"
                feature_aliases[key] = alias
                # Categorical values are kept as text whatever JSON type they came as.
                fields.append(Field(alias, f.source, NUMBER if f.type == "numeric" else TEXT, label=f.source))
    known = ", ".join(sql_str(m.id) for m in config.models)
    rules = [("latency_ms < 0", "'out of range: latency_ms=' || latency_ms || ' is negative'"),
             (f"model_id NOT IN ({known})", "'unknown model_id: ' || model_id")]
    for m in config.models:
        score = score_aliases[m.score_field]
        in_model = f"model_id = {sql_str(m.id)}"
        rules.append((f"{in_model} AND {is_ok} AND {score} IS NULL",
                      f"'missing required field: ' || {sql_str(m.score_field)} || ' (status is ok)'"))
        if m.is_classifier:
            rules.append((f"{in_model} AND {score} NOT BETWEEN 0 AND 1",
                          f"'out of range: ' || {sql_str(m.score_field)} || '=' || {score} || ' is outside [0, 1]'"))
        for f in m.features:
            if f.allowed_values:
                allowed = ", ".join(sql_str(v) for v in f.allowed_values)
                alias = feature_aliases[(f.source, f.type)]
                rules.append((f"{in_model} AND {alias} IS NOT NULL AND {alias} NOT IN ({allowed})",
                              f"'unknown category: ' || {sql_str(f.name)} || '=' || {alias}"))
    score_case = " ".join(f"WHEN {sql_str(m.id)} THEN {score_aliases[m.score_field]}" for m in config.models)
    # Features land in typed columns named after where they come from (see feature_columns).
    columns = feature_columns(config)
    feature_outputs = [feature_aliases[key] for key in columns]
    outputs = ["model_id", "prediction_id", "ts", "model_version", "latency_ms", "status", is_ok,
               f"CASE model_id {score_case} END", "source_file", "line_no", *feature_outputs]
    targets = ["partition_date", "model_id", "prediction_id", "ts", "model_version", "latency_ms", "status", "is_ok",
               "score", "source_file", "line_no", *columns.values()]
    return StagingPlan("predictions", fields, rules, key="prediction_id", outputs=outputs, targets=targets)


def feature_columns(config: MonitorConfig) -> dict[tuple[str, str], str]:
    """(source, type) of every feature and attribute -> its column in raw.predictions.

    Models share a column when they read the same field with the same type; the column is named
    after the field (`features.amount`), with `#num` added when the same field is also categorical."""
    pairs = list(dict.fromkeys((f.source, f.type) for m in config.models for f in m.features + m.sensitive_attributes))
    kinds: dict[str, set] = {}
    for source, ftype in pairs:
        kinds.setdefault(source, set()).add(ftype)
    return {(source, ftype): source + ("#num" if ftype == "numeric" and len(kinds[source]) > 1 else "")
            for source, ftype in pairs}


def ensure_feature_columns(con: duckdb.DuckDBPyConnection, config: MonitorConfig) -> None:
    existing = {r[0] for r in con.execute("""SELECT column_name FROM information_schema.columns
                                             WHERE table_schema = 'raw' AND table_name = 'predictions'""").fetchall()}
    for (_, ftype), column in feature_columns(config).items():
        if column in existing:
            continue
        sql_type = "DOUBLE" if ftype == "numeric" else "VARCHAR"
        con.execute(f"ALTER TABLE raw.predictions ADD COLUMN IF NOT EXISTS {quote_ident(column)} {sql_type}")


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


def log_ingestion(con: duckdb.DuckDBPyConnection, source: str, day: dt.date, result: StageResult) -> None:
    con.execute("DELETE FROM raw.ingestion_log WHERE source = ? AND partition_date = ?", [source, day])
    con.execute("INSERT INTO raw.ingestion_log VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [day, source, len(result.files), result.read, result.loaded, result.quarantined])


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


def ingest_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, day: dt.date) -> StageResult:
    """Replace one day of one source, loaded and quarantined rows together, in one transaction."""
    src, plan = plan_for(config, source)
    files = files_for(src, day)
    table = f"raw.{source}"
    read = 0
    if source == "predictions":
        ensure_feature_columns(con, config)
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE partition_date = ?", [day])
        con.execute("DELETE FROM raw.quarantine WHERE source = ? AND partition_date = ?", [source, day])
        for path in files:
            try:
                # The parallel reader pays off on big files; small ones are quicker line by line.
                big = Path(path).stat().st_size >= FAST_PATH_MIN_BYTES
                fast = _load_json_fast(con, plan, path, day) if src.format == "jsonl" and big else None
                if fast is not None:
                    read += fast
                else:
                    _load_file_careful(con, plan, path, src.format, day)
                    read += _count_records(con, path, src.format)
            except duckdb.BinderException as exc:
                raise SourceError(f"{path}: cannot read the configured columns: {exc}") from None
            except duckdb.Error as exc:
                raise SourceError(f"{path}: cannot be read as {src.format}: {exc}") from None
        if plan.key and files:
            _quarantine_duplicates(con, plan, day)
        if source == "labels" and files:
            _check_labels(con, config, plan, day)
        if not files:
            expected = src.paths_for(day)
            con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, NULL, ?, NULL)",
                        [day, source, expected, f"no input file: nothing matched {expected}"])
        loaded = con.execute(f"SELECT count(*) FROM {table} WHERE partition_date = ?", [day]).fetchall()[0][0]
        reasons = dict(con.execute("""
            SELECT split_part(reason, ':', 1) AS kind, count(*) FROM raw.quarantine
            WHERE source = ? AND partition_date = ? AND line_no IS NOT NULL GROUP BY kind ORDER BY 2 DESC, 1""",
                                   [source, day]).fetchall())
        quarantined = sum(reasons.values())
        if read != loaded + quarantined:  # nothing may be lost: abort the day rather than commit a gap
            raise RuntimeError(f"{source} {day}: read {read} records but loaded {loaded} and "
                               f"quarantined {quarantined}")
        result = StageResult(files, read, loaded, quarantined, reasons)
        log_ingestion(con, source, day, result)
    return result


def quarantine_preview(con: duckdb.DuckDBPyConnection, source: str, days: list[dt.date], limit: int = 8) -> list:
    return con.execute("""
        SELECT partition_date, regexp_replace(source_file, '^.*/', ''), line_no, reason, left(raw_record, 80)
        FROM raw.quarantine WHERE source = ? AND partition_date IN (SELECT unnest(?::DATE[]))
        ORDER BY partition_date, source_file, line_no LIMIT ?""", [source, days, limit]).fetchall()


