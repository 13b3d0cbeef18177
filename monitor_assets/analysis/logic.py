"""Drift and fairness per model and day over the warehouse: the SQL that feeds the pure core.

Reference profiles are computed once per reference version (the file's content hash plus the
feature spec) and stored; daily drift reads only the day's rows and the stored profiles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.ingestion.readers import latest_labels_sql, model_feature_select
from monitor_assets.stats import drift as D
from monitor_assets.stats.fairness import fairness_table, group_counts
from monitor_assets.stats.performance import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    performance_sql,
    predicted_class_sql,
)
from monitor_assets.stats.reference import (
    MIN_REFERENCE_ROWS,
    ReferenceCheck,
    ReferenceTooSmall,
    validate_reference,
)
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import close, lake_of, thread_cursor

# Models analysed at once (threads); MONITOR_ANALYSIS_WORKERS overrides (1: one after the other).
ANALYSIS_WORKERS = int(os.environ.get("MONITOR_ANALYSIS_WORKERS") or min(4, os.cpu_count() or 1))
PREDICTION = "prediction"
LABEL = "label"
DECISION = "_logged_decision"  # the logged decision (predicted class), in reference and daily rows


def _reader(path: str) -> str:
    low = path.lower().removesuffix(".gz")
    if low.endswith(".parquet"):
        return f"read_parquet({sql_str(path)})"
    if low.endswith(".csv"):
        return f"read_csv({sql_str(path)}, header=true)"
    return f"read_json({sql_str(path)}, format='newline_delimited')"


def drift_specs(model: ModelConfig) -> list[tuple[str, D.FeatureSpec]]:
    """(role, spec) for every input feature, the model output and the label."""
    specs = [("feature", D.FeatureSpec(f.name, f.type, f.drift_method, f.drift_threshold)) for f in model.features]
    specs.append((PREDICTION, D.FeatureSpec(PREDICTION, "numeric")))
    specs.append((LABEL, D.FeatureSpec(LABEL, "categorical" if model.is_classifier else "numeric")))
    return specs


def _label_expr(model: ModelConfig, column: str) -> str:
    # Classes compare as text ('0', '1') whatever numeric type the file used.
    return f"CAST(CAST({column} AS DOUBLE) AS BIGINT)::VARCHAR" if model.is_classifier else f"CAST({column} AS DOUBLE)"


class ReferenceError(ValueError):
    """A reference set that cannot be a baseline (missing file or column, too few usable rows): fixing
    the file or the config is the only cure, so it is not retried."""


def reference_file(model: ModelConfig) -> str:
    """The reference file's rows as they are (for validation)."""
    if not Path(model.reference_path).exists():
        raise ReferenceError(f"model {model.id}: reference file {model.reference_path} does not exist")
    return f"SELECT * FROM {_reader(model.reference_path)}"


def reference_relation(model: ModelConfig, where: str = "true") -> str:
    """The reference's drift columns (features, prediction, label) and `label_value`, on the rows
    matching `where` (the usable rows, see `validate_model_reference`)."""
    features = ", ".join(f"{quote_ident(f.name)}" for f in model.features)
    score, label = quote_ident(model.reference_fields["score"]), quote_ident(model.reference_fields["label"])
    decision = model.reference_fields.get("decision")
    logged = f", {quote_ident(decision)}::VARCHAR AS {DECISION}" if decision else ""
    return (f"SELECT {features}, CAST({score} AS DOUBLE) AS {PREDICTION}, {_label_expr(model, label)} AS {LABEL}, "
            f"CAST({label} AS DOUBLE) AS label_value{logged} FROM ({reference_file(model)} WHERE {where})")


def validate_model_reference(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> ReferenceCheck:
    """Count and leave out the reference rows whose label or score is NULL, NaN or not a number; a
    reference with fewer than MIN_REFERENCE_ROWS usable rows is refused, naming model and file."""
    where = f"model {model.id}: reference {model.reference_path}"
    try:
        return validate_reference(con, reference_file(model), model.reference_fields["label"],
                                  model.reference_fields["score"], classifier=model.is_classifier)
    except ReferenceTooSmall as exc:
        raise ReferenceError(f"{where}: {exc}") from None
    except duckdb.BinderException as exc:
        raise ReferenceError(f"{where}: lacks the configured score or label column "
                             f"({model.reference_fields['score']}, {model.reference_fields['label']}): "
                             f"{' '.join(str(exc).split())}") from None


def reference_version(model: ModelConfig) -> str:
    """The file's content hash, the drift spec and the profile format: a change of any re-profiles."""
    digest = hashlib.sha256(Path(model.reference_path).read_bytes())
    digest.update(json.dumps([(r, s.name, s.kind, s.method, s.threshold) for r, s in drift_specs(model)]).encode())
    digest.update(json.dumps({"profile_version": D.PROFILE_VERSION, "fields": model.reference_fields,
                              "min_rows": MIN_REFERENCE_ROWS}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def stored_versions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Per model, the reference version its stored profiles were made from (none where they disagree)."""
    return dict(con.execute("""SELECT model_id, any_value(reference_version) FROM monitoring.reference_profiles
                               GROUP BY model_id HAVING count(DISTINCT reference_version) = 1""").fetchall())


def profile_model(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> tuple[dict, dict[str, float], ReferenceCheck]:
    """Profiles of every drift column of a model's reference set, its baseline metrics, and the
    validation (rows left out and why), all on the usable rows only."""
    check = validate_model_reference(con, model)
    relation = reference_relation(model, check.where)
    try:
        profiles = D.profile_reference(con, relation, [s for _, s in drift_specs(model)])
    except duckdb.BinderException as exc:
        raise ReferenceError(f"model {model.id}: reference {model.reference_path} lacks a configured column: "
                             f"{' '.join(str(exc).split())}") from None
    decision = DECISION if model.reference_fields.get("decision") else None
    perf = con.execute(performance_sql(
        f"""SELECT 'reference' AS g, true AS is_ok, NULL::DOUBLE AS latency_ms, {PREDICTION} AS score,
                   label_value AS label, {model.decision_threshold} AS threshold, {sql_str(model.task)} AS task
                   {', ' + DECISION if decision else ''}
            FROM ({relation})""", ["g"], decision=decision)).df()
    row = perf.iloc[0]
    baselines = {m: float(row[m]) for m in CLASSIFICATION_METRICS + REGRESSION_METRICS
                 if m in row and not pd.isna(row[m])}
    return profiles, baselines, check


def map_models(con: duckdb.DuckDBPyConnection, work: Callable, items: list, workers: int | None = None) -> Iterator:
    """`work(cursor, item)` for each item (a model, or a (model, day)), a few at once, each thread on its own
    cursor (DuckDB, numpy and scipy's kernels work outside the GIL); results in the items' order."""
    workers = min(workers or ANALYSIS_WORKERS, len(items))
    if workers <= 1:
        yield from (work(con, item) for item in items)
        return
    local, cursors = threading.local(), []

    def one(item):
        if not hasattr(local, "cursor"):
            local.cursor = thread_cursor(con)
            cursors.append(local.cursor)
        return work(local.cursor, item)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="per-model") as pool:
            yield from pool.map(one, items)
    finally:
        for cursor in cursors:
            close(cursor)


def profile_models(con: duckdb.DuckDBPyConnection, models: list[ModelConfig], workers: int | None = None):
    """`profile_model` for each model, a few at once, yielded in the models' order as (model, result)."""
    yield from zip(models, map_models(con, profile_model, models, workers), strict=True)


def save_profiles(con: duckdb.DuckDBPyConnection, saved: list[tuple[ModelConfig, str, dict, dict[str, float]]]) -> None:
    """Replace the stored profiles and baselines of these models, each (model, version, profiles, baselines):
    one commit per table (a row at a time, 500 models' took 20 s). Baselines first: a crash between the two
    leaves the old profiles' version, so the models are profiled again."""
    profile_rows, baseline_rows = [], []
    for model, version, profiles, baselines in saved:
        roles = {s.name: r for r, s in drift_specs(model)}
        for name, profile in profiles.items():
            kind = "numeric" if isinstance(profile, D.NumericProfile) else "categorical"
            n = profile.counts.n if kind == "numeric" else profile.n
            profile_rows.append((model.id, name, roles[name], kind, version, int(n), json.dumps(profile.to_json())))
        baseline_rows += [(model.id, version, metric, float(value)) for metric, value in baselines.items()]
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    profile_frame = pd.DataFrame(profile_rows, columns=["model_id", "feature", "role", "kind", "reference_version",
                                                        "n", "profile"]).assign(computed_at=now)
    baseline_frame = pd.DataFrame(baseline_rows, columns=["model_id", "reference_version", "metric", "value"])
    ids = [model.id for model, *_ in saved]
    lake = lake_of(con)
    for table, frame in (("monitoring.reference_baselines", baseline_frame),
                         ("monitoring.reference_profiles", profile_frame)):
        lake.replace(table, pa.Table.from_pandas(frame, preserve_index=False), None, models=ids)
        lake.refresh(con, table)


def load_profiles(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, D.Profile]:
    rows = con.execute("SELECT feature, kind, profile FROM monitoring.reference_profiles WHERE model_id = ?",
                       [model_id]).fetchall()
    return {name: (D.NumericProfile.from_json(json.loads(p)) if kind == "numeric"
                   else D.CategoricalProfile.from_json(json.loads(p))) for name, kind, p in rows}


def _day_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig) -> str:
    """The served predictions of one model and day (params: day, model id), with the latest label: from the
    model's own table, so a pass reads that model's rows only. Labels are matched on the prediction id,
    also those logged before their prediction arrived (up to EARLY_LABEL_DAYS)."""
    table = lake_of(con).model_relation(con, model.id)
    return f"""
        SELECT {model_feature_select(config, model.id, 'p.')}, p.score AS {PREDICTION}, l.label AS label_value,
               p.decision AS {quote_ident(DECISION)}
        FROM {table} AS p
        LEFT JOIN ({latest_labels_sql("$day", [model.id])}) AS l USING (prediction_id)
        WHERE p.partition_date = $day AND p.model_id = $model AND p.is_ok"""


def drift_for_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                  profiles: dict[str, D.Profile]) -> tuple[list[dict], dict]:
    """Drift rows for every feature, the prediction and the label; and the model's summary row."""
    # The model-day's rows, joined with their labels once: the counts, both scans and the label's drift
    # read them from memory rather than each reading the files and joining again.
    held = f"_drift_rows_{threading.get_ident()}"
    con.register(held, con.sql(_day_rows(con, config, model), params={"day": day, "model": model.id}).to_arrow_table())
    try:
        return _drift_of_rows(con, config, model, day, profiles, f"SELECT * FROM {held}")
    finally:
        con.unregister(held)


def _drift_of_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                   profiles: dict[str, D.Profile], rows_sql: str) -> tuple[list[dict], dict]:
    n = con.execute(f"SELECT count(*) FROM ({rows_sql})").fetchall()[0][0]
    summary = {"partition_date": day, "model_id": model.id, "n_features": len(model.features), "n_drifted": None,
               "drift_share": None, "dataset_drift": None, "prediction_drift": None, "label_drift": None,
               "n_missing_drift": None, "n_unseen_drift": None, "n_all_missing": None, "n_all_unseen": None}
    if n == 0:
        return [], summary
    specs = drift_specs(model)
    input_specs = [s for r, s in specs if r != LABEL]
    results = D.compute_drift(con, rows_sql, input_specs, profiles)
    labelled = f"SELECT {_label_expr(model, 'label_value')} AS {LABEL} FROM ({rows_sql}) WHERE label_value IS NOT NULL"
    label_spec = next(s for r, s in specs if r == LABEL)
    if con.execute(f"SELECT count(*) FROM ({labelled})").fetchall()[0][0] and LABEL in profiles:
        results += D.compute_drift(con, labelled, [label_spec], profiles)
    roles = {s.name: r for r, s in specs}
    out = []
    for r in results:
        out.append({
            "partition_date": day, "model_id": model.id, "feature": r.feature, "role": roles[r.feature],
            "kind": r.kind, "method": r.method, "statistic": _finite(r.statistic), "p_value": _finite(r.p_value),
            "threshold": r.threshold, "drifted": r.drifted, "n_current": r.n_current, "n_reference": r.n_reference,
            "current_summary": r.current_summary, "reference_summary": r.reference_summary,
            "current_mean": _finite(r.current_mean), "reference_mean": _finite(r.reference_mean),
            "missing_share": r.missing_share, "unseen_share": r.unseen_share,
            "p_value_adjusted": _finite(r.p_value_adjusted), "reference_missing_share": r.reference_missing_share,
            "missing_p_value": _finite(r.missing_p_value), "missing_drift": r.missing_drift,
            "expected_unseen_share": r.expected_unseen_share, "unseen_p_value": _finite(r.unseen_p_value),
            "unseen_drift": r.unseen_drift, "all_unseen": r.all_unseen, "all_missing": r.all_missing,
            "unseen_summary": r.unseen_summary, "message": r.message,
        })
    features = [o for o in out if o["role"] == "feature"]
    drifted = sum(o["drifted"] for o in features)
    share = drifted / len(features) if features else None
    summary.update(n_missing_drift=sum(o["missing_drift"] for o in features),
                   n_unseen_drift=sum(o["unseen_drift"] for o in features),
                   n_all_missing=sum(o["all_missing"] for o in features),
                   n_all_unseen=sum(o["all_unseen"] for o in features))
    summary.update(n_drifted=drifted, drift_share=share,
                   dataset_drift=share is not None and share >= config.dataset_drift_share,
                   prediction_drift=any(o["drifted"] for o in out if o["role"] == PREDICTION),
                   label_drift=any(o["drifted"] for o in out if o["role"] == LABEL))
    return out, summary


def fairness_for_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                     day: dt.date) -> pd.DataFrame:
    attributes = [a.name for a in model.sensitive_attributes]
    if not attributes:
        return pd.DataFrame()
    # The predicted class as the performance metrics take it: the logged decision, else the threshold.
    y_pred = (predicted_class_sql(quote_ident(DECISION), PREDICTION, repr(model.decision_threshold))
              if model.is_classifier else PREDICTION)
    relation = f"SELECT {y_pred} AS y_pred, label_value AS y_true, * FROM ({_day_rows(con, config, model)})"
    counts = group_counts(con, relation, attributes, {"day": day, "model": model.id})
    table = fairness_table(counts, model.is_classifier, config.min_group_size)
    if not table.empty:
        table.insert(0, "model_id", model.id)
        table.insert(0, "partition_date", day)
    return table


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
