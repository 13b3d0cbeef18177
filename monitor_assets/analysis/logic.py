"""Drift and fairness per model and day over the warehouse: the SQL that feeds the pure core.

Reference profiles are computed once per reference version (the file's content hash plus the
feature spec) and stored; daily drift reads only the day's rows and the stored profiles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from pathlib import Path

import duckdb
import pandas as pd

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.ingestion.readers import EARLY_LABEL_DAYS, model_feature_select
from monitor_assets.stats import drift as D
from monitor_assets.stats.fairness import fairness_table, group_counts
from monitor_assets.stats.performance import CLASSIFICATION_METRICS, REGRESSION_METRICS, performance_sql
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of

PREDICTION = "prediction"
LABEL = "label"


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


def reference_relation(model: ModelConfig) -> str:
    if not Path(model.reference_path).exists():
        raise FileNotFoundError(f"model {model.id}: reference file {model.reference_path} does not exist")
    features = ", ".join(f"{quote_ident(f.name)}" for f in model.features)
    score, label = quote_ident(model.reference_fields["score"]), quote_ident(model.reference_fields["label"])
    return (f"SELECT {features}, CAST({score} AS DOUBLE) AS {PREDICTION}, {_label_expr(model, label)} AS {LABEL}, "
            f"CAST({label} AS DOUBLE) AS label_value FROM {_reader(model.reference_path)}")


def reference_version(model: ModelConfig) -> str:
    digest = hashlib.sha256(Path(model.reference_path).read_bytes())
    digest.update(json.dumps([(r, s.name, s.kind, s.method, s.threshold) for r, s in drift_specs(model)]).encode())
    return digest.hexdigest()[:16]


def stored_version(con: duckdb.DuckDBPyConnection, model_id: str) -> str | None:
    rows = con.execute("SELECT DISTINCT reference_version FROM monitoring.reference_profiles WHERE model_id = ?",
                       [model_id]).fetchall()
    return rows[0][0] if len(rows) == 1 else None


def profile_model(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> tuple[dict, dict[str, float]]:
    """Profiles of every drift column of a model's reference set, and its baseline metrics."""
    relation = reference_relation(model)
    try:
        profiles = D.profile_reference(con, relation, [s for _, s in drift_specs(model)])
    except duckdb.BinderException as exc:
        raise ValueError(f"model {model.id}: reference file {model.reference_path} lacks a configured column: "
                         f"{exc}") from None
    perf = con.execute(performance_sql(
        f"""SELECT 'reference' AS g, true AS is_ok, NULL::DOUBLE AS latency_ms, {PREDICTION} AS score,
                   label_value AS label, {model.decision_threshold} AS threshold, {sql_str(model.task)} AS task
            FROM ({relation})""", ["g"])).df()
    row = perf.iloc[0]
    baselines = {m: float(row[m]) for m in CLASSIFICATION_METRICS + REGRESSION_METRICS
                 if m in row and not pd.isna(row[m])}
    return profiles, baselines


def save_profiles(con: duckdb.DuckDBPyConnection, model: ModelConfig, version: str, profiles: dict,
                  baselines: dict[str, float]) -> None:
    roles = {s.name: r for r, s in drift_specs(model)}
    con.execute("DELETE FROM monitoring.reference_profiles WHERE model_id = ?", [model.id])
    con.execute("DELETE FROM monitoring.reference_baselines WHERE model_id = ?", [model.id])
    for name, profile in profiles.items():
        kind = "numeric" if isinstance(profile, D.NumericProfile) else "categorical"
        n = profile.counts.n if kind == "numeric" else profile.n
        con.execute("INSERT INTO monitoring.reference_profiles VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                    [model.id, name, roles[name], kind, version, n, json.dumps(profile.to_json())])
    for metric, value in baselines.items():
        con.execute("INSERT INTO monitoring.reference_baselines VALUES (?, ?, ?, ?)", [model.id, version, metric, value])


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
        SELECT {model_feature_select(config, model.id, 'p.')}, p.score AS {PREDICTION}, l.label AS label_value
        FROM {table} AS p
        LEFT JOIN (SELECT prediction_id, arg_max(label, partition_date) AS label FROM raw.labels
                   WHERE partition_date >= $day - INTERVAL {EARLY_LABEL_DAYS} DAY GROUP BY prediction_id) AS l
            USING (prediction_id)
        WHERE p.partition_date = $day AND p.model_id = $model AND p.is_ok"""


def drift_for_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                  profiles: dict[str, D.Profile]) -> tuple[list[dict], dict]:
    """Drift rows for every feature, the prediction and the label; and the model's summary row."""
    params = {"day": day, "model": model.id}
    rows_sql = _day_rows(con, config, model)
    n = con.execute(f"SELECT count(*) FROM ({rows_sql})", params).fetchall()[0][0]
    summary = {"partition_date": day, "model_id": model.id, "n_features": len(model.features), "n_drifted": None,
               "drift_share": None, "dataset_drift": None, "prediction_drift": None, "label_drift": None}
    if n == 0:
        return [], summary
    specs = drift_specs(model)
    input_specs = [s for r, s in specs if r != LABEL]
    results = D.compute_drift(con, rows_sql, input_specs, profiles, params)
    labelled = f"SELECT {_label_expr(model, 'label_value')} AS {LABEL} FROM ({rows_sql}) WHERE label_value IS NOT NULL"
    label_spec = next(s for r, s in specs if r == LABEL)
    if con.execute(f"SELECT count(*) FROM ({labelled})", params).fetchall()[0][0] and LABEL in profiles:
        results += D.compute_drift(con, labelled, [label_spec], profiles, params)
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
        })
    features = [o for o in out if o["role"] == "feature"]
    drifted = sum(o["drifted"] for o in features)
    share = drifted / len(features) if features else None
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
    y_pred = (f"({PREDICTION} >= {model.decision_threshold!r})::INTEGER" if model.is_classifier else PREDICTION)
    relation = f"SELECT {y_pred} AS y_pred, label_value AS y_true, * FROM ({_day_rows(con, config, model)})"
    counts = group_counts(con, relation, attributes, {"day": day, "model": model.id})
    table = fairness_table(counts, model.is_classifier, config.min_group_size)
    if not table.empty:
        table.insert(0, "model_id", model.id)
        table.insert(0, "partition_date", day)
    return table


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
