"""The reads every stage shares, spelled once: each prediction's latest label, and a VALUES relation of models.

Stages ask here rather than write their own copy, so "the label of a prediction" means the same thing in
performance, drift, fairness, retraining and the exports. (The predictions of several models, one after
the other, are `Lake.predictions_union`.)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Mapping, Sequence

import duckdb
import pandas as pd

from monitor_assets.config import MULTICLASS_REFERENCE_FIELDS, ModelConfig, MonitorConfig
from monitor_assets.stats import drift as D
from monitor_assets.stats import multiclass as MC
from monitor_assets.stats.versions import champions
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of

EARLY_LABEL_DAYS = 7  # a label may be logged this many days before its prediction (clocks, time zones)


def latest_labels_sql(model_ids: Sequence[str] | None = None, *, since: str | None = None, before: str | None = None,
                      prediction_dates: str | None = None, ids: str | None = None, labels: str = "raw.labels") -> str:
    """SQL (prediction_id, label): each prediction's newest label (the label of the newest partition, so a
    corrected one replaces the old), among the labels of table `labels` in a window. Every bound is an SQL
    expression, and each is optional:

    * `since`: labels logged from this date less EARLY_LABEL_DAYS (a label may arrive before its prediction);
    * `before`: labels logged before this date (the newest earlier label);
    * `prediction_dates`: labels matched to a prediction made on one of these dates (a DATE[] expression);
    * `ids`: labels of these prediction ids (a subquery);
    * `model_ids`: labels of these models' predictions and those no prediction matched yet. Labels are stored
      sorted by model, so the scan skips the other models' row groups.
    """
    where = []
    if since is not None:
        where.append(f"partition_date >= {since} - INTERVAL {EARLY_LABEL_DAYS} DAY")
    if before is not None:
        where.append(f"partition_date < {before}")
    if prediction_dates is not None:
        where.append(f"prediction_date IN (SELECT unnest({prediction_dates}))")
    if ids is not None:
        where.append(f"prediction_id IN ({ids})")
    if model_ids is not None:
        where.append(f"(model_id IN ({', '.join(sql_str(m) for m in model_ids)}) OR model_id IS NULL)")
    return f"""SELECT prediction_id, arg_max(label, partition_date) AS label FROM {labels}
               {'WHERE ' + ' AND '.join(where) if where else ''}
               GROUP BY prediction_id"""


# A model's days read in one query by the per-model-day steps (estimation, multivariate, drift, fairness,
# profiles): a backfill costs its rows, not a view and a query a day. DAYS_PER_READ days at a time, or, when the
# days' rows are known, more while they hold at most ROWS_PER_READ rows: a small model's year is one read (each
# read costs 0.1-0.2 s whatever its rows), a busy model's month stays a month.
DAYS_PER_READ = 31
ROWS_PER_READ = 1_000_000
DAY_COLUMN = "_day"  # the partition date of each row a many-day read returns


def day_batches(days: Sequence[dt.date], rows_of_day: Mapping[dt.date, int] | None = None) -> list[list[dt.date]]:
    """`days` in order, DAYS_PER_READ at a time; with `rows_of_day`, a batch grows past DAYS_PER_READ days while
    its rows stay within ROWS_PER_READ."""
    ordered = sorted(days)
    if rows_of_day is None:
        return [ordered[k:k + DAYS_PER_READ] for k in range(0, len(ordered), DAYS_PER_READ)]
    batches: list[list[dt.date]] = []
    held = 0
    for day in ordered:
        n = rows_of_day.get(day, 0)
        if not batches or (len(batches[-1]) >= DAYS_PER_READ and held + n > ROWS_PER_READ):
            batches.append([])
            held = 0
        batches[-1].append(day)
        held += n
    return batches


def capped_batches(days: Sequence[dt.date], size: Mapping[dt.date, int], max_size: int,
                   max_days: int = DAYS_PER_READ) -> list[list[dt.date]]:
    """`days` in their order, in runs of at most `max_days` days whose sizes (`size`, 0 if absent) sum to at most
    `max_size`; a day larger than that is a run of its own."""
    batches: list[list[dt.date]] = []
    held = 0
    for day in days:
        n = size.get(day, 0)
        if not batches or len(batches[-1]) >= max_days or held + n > max_size:
            batches.append([])
            held = 0
        batches[-1].append(day)
        held += n
    return batches


def model_day_batches(con: duckdb.DuckDBPyConnection, model_id: str, days: Sequence[dt.date]) -> list[list[dt.date]]:
    """`day_batches` of one model's days, its rows per day counted first when there are more days than one batch
    (a count reads the Parquet footers, not the rows)."""
    if len(days) <= DAYS_PER_READ:
        return day_batches(days)
    lake = lake_of(con)
    if not lake.has_table(lake.model_path(model_id)):
        return day_batches(days)
    counts = dict(con.execute(f"""SELECT partition_date, count(*) FROM {lake.model_relation(con, model_id)}
                                  WHERE partition_date IN (SELECT unnest(?::DATE[])) GROUP BY 1""",
                              [list(days)]).fetchall())
    return day_batches(days, counts)


def split_by_day(frame: pd.DataFrame, days: Sequence[dt.date]) -> dict[dt.date, pd.DataFrame]:
    """A many-day read's rows (with DAY_COLUMN) as one frame per day of `days`, without that column; a day
    without rows gets an empty frame of the same columns."""
    by_day = {pd.Timestamp(d).date(): g.drop(columns=DAY_COLUMN).reset_index(drop=True)
              for d, g in frame.groupby(DAY_COLUMN, sort=False)} if len(frame) else {}
    empty = frame.drop(columns=DAY_COLUMN).iloc[0:0]
    return {day: by_day.get(day, empty) for day in days}


def models_values_sql(models: Sequence[ModelConfig],
                      columns: Mapping[str, Callable[[ModelConfig], object]]) -> tuple[str, list]:
    """A VALUES relation (model_id, *columns) of these models, as SQL and params: `columns` maps each column's
    name to how a model's value is found."""
    row = "(" + ", ".join("?" for _ in range(len(columns) + 1)) + ")"
    params = [v for m in models for v in (m.id, *(value(m) for value in columns.values()))]
    names = ", ".join(["model_id", *columns])
    return f"(SELECT * FROM (VALUES {', '.join(row for _ in models)}) AS v({names}))", params


def version_daily(con: duckdb.DuckDBPyConnection, through: dt.date | None = None) -> pd.DataFrame:
    """monitoring.version_daily up to `through` (all days when None), as a frame with dates."""
    sql = "SELECT partition_date, model_id, model_version, volume, n_errors, latency_p95_ms FROM monitoring.version_daily"
    frame = con.execute(sql + (" WHERE partition_date <= ?" if through else "") + " ORDER BY 1, 2, 3",
                        [through] if through else []).df()
    frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    return frame


CHAMPION_COLUMNS = ["partition_date", "model_id", "model_version"]


def champion_days(con: duckdb.DuckDBPyConnection, through: dt.date) -> pd.DataFrame:
    """The champion of each model on each day with traffic up to `through` (the version serving most
    requests, `stats.versions.champions`), from monitoring.version_daily."""
    return champions(version_daily(con, through))[CHAMPION_COLUMNS]


def held_models(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> dict[dt.date, set[str]]:
    """The models whose predictions failed the data-quality suite, per day: downstream work skips them."""
    held: dict[dt.date, set[str]] = {d: set() for d in days}
    for day, model_id in con.execute("""SELECT partition_date, model_id FROM monitoring.quality_verdicts
                                        WHERE NOT passed AND partition_date IN (SELECT unnest(?::DATE[]))""",
                                     [days]).fetchall():
        held.setdefault(day, set()).add(model_id)
    return held


def reference_reader_sql(path: str) -> str:
    """The DuckDB table function reading a reference file (Parquet, CSV or JSON lines; .gz allowed)."""
    low = path.lower().removesuffix(".gz")
    if low.endswith(".parquet"):
        return f"read_parquet({sql_str(path)})"
    if low.endswith(".csv"):
        return f"read_csv({sql_str(path)}, header=true)"
    return f"read_json({sql_str(path)}, format='newline_delimited')"


def multiclass_reference_sql(model: ModelConfig) -> str:
    """A multiclass reference's rows, every column of the file, with `__label` (the label's class code, NULL for a
    name not in `classes`), `__predicted` (the `decision` column's class, else the most probable) and `__proba`
    (DOUBLE[] in class order, NULL where missing or unusable), as the pipeline reads the logged rows."""
    reader = reference_reader_sql(model.reference_path)
    with duckdb.connect() as con:
        names = {c.lower() for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {reader})").fetchall()}
    f = {**MULTICLASS_REFERENCE_FIELDS, **model.reference_fields}
    text = f"CAST({quote_ident(f['probabilities'])} AS VARCHAR)" if f["probabilities"].lower() in names else "NULL"
    decision = f"CAST({quote_ident(f['decision'])} AS VARCHAR)" if f["decision"].lower() in names else "NULL"
    parsed = MC.probabilities_sql(model.classes, text)
    proba = f"CASE WHEN ({MC.probabilities_problem_sql(model.classes, text, parsed)}) IS NULL THEN {parsed} END"
    label = (f"(list_position({MC.classes_sql(model.classes)}, CAST({quote_ident(f['label'])} AS VARCHAR)) - 1)"
             "::DOUBLE")
    return f"""SELECT *, {label} AS __label, {MC.class_code_sql(model.classes, decision, proba)} AS __predicted,
                      {proba} AS __proba FROM {reader}"""


# -- the models' predictions tables: one column per (field, type) of their features ---------------------

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
    pairs = list(dict.fromkeys((f.source, f.type) for m in models for f in m.logged_columns))
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
                     for f in m.logged_columns)


# The models' columns performance is computed with: (model_id, task, threshold, main_metric).
PERFORMANCE_MODEL_COLUMNS = {"task": lambda m: m.task, "threshold": lambda m: m.decision_threshold,
                             "main_metric": lambda m: m.main_metric}


def performance_models_sql(models: Sequence[ModelConfig]) -> tuple[str, list]:
    """A VALUES relation (model_id, task, threshold, main_metric) of these models, as SQL and params."""
    return models_values_sql(models, PERFORMANCE_MODEL_COLUMNS)


# -- the stored reference profiles (monitoring.reference_profiles, written by the analysis stage) ----------------

ERROR_KIND = "error"  # a reference_profiles row recording why a model's reference could not be profiled


def load_profiles(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, D.Profile]:
    rows = con.execute("SELECT feature, kind, profile FROM monitoring.reference_profiles WHERE model_id = ? "
                       "AND kind <> ?", [model_id, ERROR_KIND]).fetchall()
    return {name: (D.NumericProfile.from_json(json.loads(p)) if kind == "numeric"
                   else D.CategoricalProfile.from_json(json.loads(p))) for name, kind, p in rows}


def load_importance(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, float]:
    """Each feature's stored association with the score on the reference (NaN where unknown)."""
    rows = con.execute("SELECT feature, importance FROM monitoring.reference_profiles WHERE model_id = ? "
                       "AND role = 'feature'", [model_id]).fetchall()
    return {f: (math.nan if v is None else float(v)) for f, v in rows}


def profile_errors(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Per model whose reference could not be profiled, why (the last attempt's one-line message)."""
    rows = con.execute("SELECT model_id, profile FROM monitoring.reference_profiles WHERE kind = ?",
                       [ERROR_KIND]).fetchall()
    return {m: json.loads(p).get("error", "") for m, p in rows}
