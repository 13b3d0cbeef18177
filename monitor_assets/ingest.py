"""Reading input files into the warehouse with every record accounted for.

Each record of a day's files ends up loaded or in `raw.quarantine` with its file, line number, the
first reason it failed, and its raw text. The work is one streaming DuckDB query per file: lines are
read as text (so a malformed line is kept, not dropped as DuckDB's JSON reader would), parsed with
`json_extract_string` over all wanted paths at once, typed with TRY_CAST and checked with a CASE
chain; only the quarantined lines keep their raw text.
"""

from __future__ import annotations

import datetime as dt
import glob
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from monitor_assets.config import MonitorConfig, SourceConfig
from monitor_assets.warehouse import quote_ident, transaction

NUMBER = "DOUBLE"
TEXT = "VARCHAR"
TIME = "TIMESTAMP"


def sql_str(value: str) -> str:
    """A string literal for SQL text (config values are quoted, never pasted raw)."""
    return "'" + str(value).replace("'", "''") + "'"


@dataclass
class Field:
    """One value read from a record: where it comes from, its type, and when it must be present."""

    alias: str
    source: str
    type: str = TEXT
    required: bool | str = False  # True, False, or an SQL condition on typed aliases
    label: str = ""  # how the reason names it

    @property
    def raw(self) -> str:
        return f"r_{self.alias}"


@dataclass
class StagingPlan:
    source: str
    fields: list[Field]
    rules: list[tuple[str, str]] = field(default_factory=list)  # (SQL condition, SQL reason), in order
    key: str | None = None  # alias that must be unique within the day


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


def _typed(f: Field) -> str:
    if f.type == NUMBER:
        return f"TRY_CAST({f.raw} AS DOUBLE)"
    if f.type == TIME:
        # Timestamps with an offset are converted to UTC; naive ones are taken as UTC.
        return (f"COALESCE(TRY_CAST(TRY_CAST({f.raw} AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS TIMESTAMP), "
                f"TRY_CAST({f.raw} AS TIMESTAMP))")
    return f.raw


def _field_rules(fields: list[Field]) -> list[tuple[str, str]]:
    rules = []
    for f in fields:
        name = sql_str(f.label or f.source)
        if f.required is True:
            rules.append((f"{f.raw} IS NULL", f"'missing required field: ' || {name}"))
        elif isinstance(f.required, str):
            rules.append((f"{f.raw} IS NULL AND ({f.required})", f"'missing required field: ' || {name}"))
        if f.type in (NUMBER, TIME):
            kind = "a number" if f.type == NUMBER else "a timestamp"
            rules.append((f"{f.raw} IS NOT NULL AND {f.alias} IS NULL",
                          f"'wrong type: ' || {name} || '=' || left({f.raw}, 40) || ' is not {kind}'"))
        if f.type == NUMBER:
            rules.append((f"{f.alias} IS NOT NULL AND NOT isfinite({f.alias})",
                          f"'non-finite number: ' || {name} || '=' || {f.raw}"))
    return rules


def _reason_case(plan: StagingPlan, parse_ok: str) -> str:
    whens = [f"WHEN {parse_ok} IS NULL THEN 'blank line'",
             f"WHEN NOT {parse_ok} AND regexp_matches(raw, '(?i)(:|\\[|,)\\s*-?(nan|infinity)\\b') "
             "THEN 'non-finite number: NaN or Infinity is not valid JSON'",
             f"WHEN NOT {parse_ok} THEN 'malformed JSON'"]
    whens += [f"WHEN {cond} THEN {reason}" for cond, reason in _field_rules(plan.fields) + plan.rules]
    return "CASE " + " ".join(whens) + " END"


def _file_relation(path: str, fmt: str, plan: StagingPlan) -> tuple[str, list, str]:
    """SQL yielding (line_no, raw, parse_ok, r_<alias>...) for one file, its params, and the parse flag."""
    if fmt == "jsonl":
        picks = ", ".join(f"v[{i + 1}] AS {f.raw}" for i, f in enumerate(plan.fields))
        sql = f"""
            SELECT line_no, raw, parse_ok, {picks} FROM (
                SELECT line_no, raw, parse_ok,
                       CASE WHEN parse_ok THEN json_extract_string(raw, ?::VARCHAR[]) END AS v
                FROM (SELECT row_number() OVER () AS line_no, line AS raw,
                             CASE WHEN trim(coalesce(line, '')) <> '' THEN json_valid(line) END AS parse_ok
                      FROM read_csv(?, columns={{'line': 'VARCHAR'}}, delim='\\0', quote='', escape='',
                                    header=false, auto_detect=false, strict_mode=false)))"""
        return sql, [[json_path(f.source) for f in plan.fields], path], "parse_ok"
    reader = ("read_csv(?, all_varchar=true, header=true)" if fmt == "csv" else "read_parquet(?)")
    first_line = 2 if fmt == "csv" else 1  # CSV: line 1 is the header; Parquet: the row number
    picks = ", ".join(f"CAST({quote_ident(f.source)} AS VARCHAR) AS {f.raw}" for f in plan.fields)
    sql = f"""
        SELECT row_number() OVER () + {first_line - 1} AS line_no, CAST(to_json(t) AS VARCHAR) AS raw,
               true AS parse_ok, {picks}
        FROM {reader} AS t"""
    return sql, [path], "parse_ok"


class SourceError(ValueError):
    """A file that cannot be read as configured (for example a mapped column it does not have)."""


def stage_day(con: duckdb.DuckDBPyConnection, plan: StagingPlan, files: list[str], fmt: str,
              table: str = "_staged") -> StageResult:
    """Read `files` into temp table `table`: one row per record with typed aliases and a reason."""
    typed_cols = ", ".join(f"{_typed(f)} AS {f.alias}" for f in plan.fields)
    aliases = ", ".join(f.alias for f in plan.fields)
    con.execute(f"DROP TABLE IF EXISTS {table}")
    created = False
    for path in files:
        rel_sql, params, parse_ok = _file_relation(path, fmt, plan)
        body = f"""
            SELECT {sql_str(path)} AS source_file, line_no, reason,
                   CASE WHEN reason IS NOT NULL THEN raw END AS raw, {aliases}
            FROM (SELECT *, {_reason_case(plan, parse_ok)} AS reason
                  FROM (SELECT *, {typed_cols} FROM ({rel_sql})))"""
        try:
            if created:
                con.execute(f"INSERT INTO {table} {body}", params)
            else:
                con.execute(f"CREATE TEMP TABLE {table} AS {body}", params)
                created = True
        except duckdb.BinderException as exc:
            raise SourceError(f"{path}: cannot read the configured columns: {exc}") from None
        except duckdb.Error as exc:
            raise SourceError(f"{path}: cannot be read as {fmt}: {exc}") from None
    if not created:
        return StageResult([], 0, 0, 0, {})
    if plan.key:
        # A repeated key keeps its first valid occurrence; later ones are quarantined, citing it.
        con.execute(f"""
            UPDATE {table} AS s SET reason = 'duplicate ' || {sql_str(plan.key)} || ': first seen in '
                   || d.first_file || ' line ' || d.first_line,
                   raw = coalesce(s.raw, d.record)
            FROM (SELECT source_file, line_no,
                         first_value(source_file) OVER w AS first_file, first_value(line_no) OVER w AS first_line,
                         row_number() OVER w AS nth,
                         CAST(to_json(struct_pack({", ".join(f"{quote_ident(f.label or f.source)} := {f.alias}" for f in plan.fields)})) AS VARCHAR) AS record
                  FROM {table} WHERE reason IS NULL
                  WINDOW w AS (PARTITION BY {plan.key} ORDER BY source_file, line_no)) AS d
            WHERE d.nth > 1 AND s.source_file = d.source_file AND s.line_no = d.line_no""")
    return count_staged(con, files, table)


def count_staged(con: duckdb.DuckDBPyConnection, files: list[str], table: str = "_staged") -> StageResult:
    """Records read, loaded and quarantined, with quarantine counts by kind (the reason before ':')."""
    total, loaded = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM {table}").fetchone()
    reasons = dict(con.execute(
        f"""SELECT split_part(reason, ':', 1) AS kind, count(*) FROM {table}
            WHERE reason IS NOT NULL GROUP BY kind ORDER BY 2 DESC, 1""").fetchall())
    return StageResult(files, total, loaded, total - loaded, reasons)


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
    plan = StagingPlan("predictions", fields, rules, key="prediction_id")
    plan.score_aliases = score_aliases  # type: ignore[attr-defined]
    plan.feature_aliases = feature_aliases  # type: ignore[attr-defined]
    plan.is_ok = is_ok  # type: ignore[attr-defined]
    return plan


def predictions_select(config: MonitorConfig, plan: StagingPlan, day: dt.date, table: str = "_staged") -> str:
    """The INSERT body for raw.predictions from a staged day: canonical columns, features as JSON."""
    score_case = " ".join(f"WHEN {sql_str(m.id)} THEN {plan.score_aliases[m.score_field]}"  # type: ignore
                          for m in config.models)
    feature_case = " ".join(
        f"WHEN {sql_str(m.id)} THEN to_json(struct_pack("
        + ", ".join(f"{quote_ident(f.name)} := {plan.feature_aliases[(f.source, f.type)]}"  # type: ignore
                    for f in m.features + m.sensitive_attributes)
        + "))"
        for m in config.models)
    return f"""
        SELECT DATE {sql_str(day.isoformat())}, model_id, prediction_id, ts, model_version, latency_ms, status,
               {plan.is_ok}, CASE model_id {score_case} END,  -- type: ignore
               CASE model_id {feature_case} END, source_file, line_no
        FROM {table} WHERE reason IS NULL"""


def labels_plan(config: MonitorConfig) -> StagingPlan:
    src = config.labels.fields
    fields = [Field("prediction_id", src["prediction_id"], TEXT, True),
              Field("label", src["label"], NUMBER, True)]
    return StagingPlan("labels", fields, [], key="prediction_id")


def interactions_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("interactions", [
        Field("session_id", s["session_id"], TEXT, True), Field("user_id", s["user_id"]),
        Field("ts", s["timestamp"], TIME, True), Field("event", s["event"], TEXT, True),
        Field("product_id", s["product_id"]), Field("from_recommendation", s["from_recommendation"]),
    ])


def sales_plan(source: SourceConfig) -> StagingPlan:
    s = source.fields
    return StagingPlan("sales", [
        Field("order_id", s["order_id"], TEXT, True), Field("ts", s["timestamp"], TIME, True),
        Field("user_id", s["user_id"]), Field("product_id", s["product_id"]),
        Field("quantity", s["quantity"], NUMBER, True), Field("unit_price", s["unit_price"], NUMBER, True),
    ], [("quantity < 0", "'out of range: quantity=' || quantity || ' is negative'"),
        ("unit_price < 0", "'out of range: unit_price=' || unit_price || ' is negative'")])


def write_quarantine(con: duckdb.DuckDBPyConnection, source: str, day: dt.date, table: str = "_staged") -> None:
    con.execute(f"""
        INSERT INTO raw.quarantine SELECT ?, ?, source_file, line_no, reason, raw
        FROM {table} WHERE reason IS NOT NULL""", [day, source])


def log_ingestion(con: duckdb.DuckDBPyConnection, source: str, day: dt.date, result: StageResult) -> None:
    con.execute("DELETE FROM raw.ingestion_log WHERE source = ? AND partition_date = ?", [source, day])
    con.execute("INSERT INTO raw.ingestion_log VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [day, source, len(result.files), result.read, result.loaded, result.quarantined])


def ingest_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, source: str, day: dt.date) -> StageResult:
    """Stage one day of one source and replace that day's rows (loaded and quarantined) atomically."""
    if source == "predictions":
        src, plan = config.predictions, predictions_plan(config)
    elif source == "labels":
        src, plan = config.labels, labels_plan(config)
    elif source == "interactions":
        src, plan = config.interactions, interactions_plan(config.interactions)
    elif source == "sales":
        src, plan = config.sales, sales_plan(config.sales)
    else:
        raise ValueError(f"unknown source {source!r}")
    files = files_for(src, day)
    result = stage_day(con, plan, files, src.format)
    if not files:
        con.execute("CREATE OR REPLACE TEMP TABLE _staged AS SELECT NULL::VARCHAR AS source_file, "
                    "NULL::BIGINT AS line_no, NULL::VARCHAR AS reason, NULL::VARCHAR AS raw WHERE false")
    if source == "labels" and files:
        _check_labels(con, config)
        result = count_staged(con, files)
    with transaction(con):
        con.execute("DELETE FROM raw.quarantine WHERE source = ? AND partition_date = ?", [source, day])
        if source == "predictions":
            con.execute("DELETE FROM raw.predictions WHERE partition_date = ?", [day])
            if files:
                con.execute(f"INSERT INTO raw.predictions {predictions_select(config, plan, day)}")
        elif source == "labels":
            con.execute("DELETE FROM raw.labels WHERE partition_date = ?", [day])
            if files:
                con.execute("""
                    INSERT INTO raw.labels SELECT ?, model_id, prediction_id, prediction_date, label,
                           source_file, line_no FROM _staged WHERE reason IS NULL""", [day])
        elif source == "interactions":
            con.execute("DELETE FROM raw.interactions WHERE partition_date = ?", [day])
            if files:
                con.execute("""INSERT INTO raw.interactions SELECT ?, session_id, user_id, ts, event, product_id,
                               TRY_CAST(from_recommendation AS BOOLEAN) FROM _staged WHERE reason IS NULL""", [day])
        else:
            con.execute("DELETE FROM raw.sales WHERE partition_date = ?", [day])
            if files:
                con.execute("""INSERT INTO raw.sales SELECT ?, order_id, ts, user_id, product_id, quantity,
                               unit_price, quantity * unit_price FROM _staged WHERE reason IS NULL""", [day])
        if not files:
            expected = src.paths_for(day)
            con.execute("INSERT INTO raw.quarantine VALUES (?, ?, ?, NULL, ?, NULL)",
                        [day, source, expected, f"no input file for {day}: nothing matched {expected}"])
        else:
            write_quarantine(con, source, day)
        log_ingestion(con, source, day, result)
    return result


def _check_labels(con: duckdb.DuckDBPyConnection, config: MonitorConfig) -> None:
    """Labels must name a logged prediction, and a classifier's label must be 0 or 1."""
    classifiers = [m.id for m in config.models if m.is_classifier] or [""]
    con.execute("ALTER TABLE _staged ADD COLUMN model_id VARCHAR")
    con.execute("ALTER TABLE _staged ADD COLUMN prediction_date DATE")
    con.execute("""
        UPDATE _staged AS s SET model_id = p.model_id, prediction_date = p.partition_date
        FROM raw.predictions AS p WHERE p.prediction_id = s.prediction_id AND s.reason IS NULL""")
    con.execute("""
        UPDATE _staged SET reason = 'label for unknown prediction: ' || prediction_id,
               raw = coalesce(raw, to_json(struct_pack(prediction_id := prediction_id, label := label)))
        WHERE reason IS NULL AND model_id IS NULL""")
    con.execute("""
        UPDATE _staged SET reason = 'out of range: label=' || label || ' for classifier ' || model_id
               || ', expected 0 or 1',
               raw = coalesce(raw, to_json(struct_pack(prediction_id := prediction_id, label := label)))
        WHERE reason IS NULL AND model_id IN (SELECT unnest(?::VARCHAR[])) AND label NOT IN (0, 1)""",
                [classifiers])


def quarantine_preview(con: duckdb.DuckDBPyConnection, source: str, days: list[dt.date], limit: int = 8) -> list:
    return con.execute("""
        SELECT partition_date, regexp_replace(source_file, '^.*/', ''), line_no, reason, left(raw_record, 80)
        FROM raw.quarantine WHERE source = ? AND partition_date IN (SELECT unnest(?::DATE[]))
        ORDER BY partition_date, source_file, line_no LIMIT ?""", [source, days, limit]).fetchall()


def data_dir_of(config: MonitorConfig) -> Path:
    return config.file.parent
