"""Drift and fairness per model and day over the warehouse: the SQL that feeds the pure core.

Reference profiles are computed once per reference version (the file's content hash plus the
feature spec) and stored; daily drift reads only the day's rows and the stored profiles.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from monitor_assets.analysis.queries import (
    compute_drift,
    count_histograms_by,
    group_counts,
    profile_reference,
    score_association,
    validate_reference,
)
from monitor_assets.config import CLASS_CODE_COLUMN, ModelConfig, MonitorConfig
from monitor_assets.stats import drift as D
from monitor_assets.stats.fairness import MIN_GROUP_SIZE, fairness_table
from monitor_assets.stats.metrics_spec import CLASSIFICATION_METRICS, REGRESSION_METRICS
from monitor_assets.stats.multiclass import (
    classes_sql,
    selection_rates,
)
from monitor_assets.stats.multiclass import (
    daily_metrics as multiclass_daily_metrics,
)
from monitor_assets.stats.performance import performance_sql, predicted_class_sql
from monitor_assets.stats.reference import (
    MIN_REFERENCE_ROWS,
    ReferenceCheck,
    ReferenceTooSmall,
    reference_check,
)
from monitor_assets.storage.per_model import TRANSIENT_ERRORS, error_message, map_models
from monitor_assets.storage.reads import (
    DAY_COLUMN,
    ERROR_KIND,
    latest_labels_sql,
    load_importance,
    load_profiles,
    model_feature_select,
    multiclass_reference_sql,
    profile_errors,
    split_by_day,
)
from monitor_assets.storage.reads import reference_reader_sql as _reader
from monitor_assets.storage.sql import quote_ident, sql_str
from monitor_assets.storage.warehouse import lake_of

PREDICTION = "prediction"
LABEL = "label"
DECISION = "_logged_decision"  # the logged decision (predicted class), in reference and daily rows
# What a profile holds beside the histograms (part of the reference version: a change re-profiles once).
# 1: each feature's association with the score (key features) and the reference's fairness disparities.
REFERENCE_EXTRAS = 1
FAIRNESS_BASELINE = "fairness.{metric}:{attribute}"  # reference_baselines metric name of a reference disparity
FAIRNESS_METRICS = ("demographic_parity_ratio", "equalized_odds_difference")




def drift_specs(model: ModelConfig) -> list[tuple[str, D.FeatureSpec]]:
    """(role, spec) for every input feature, the model output and the label."""
    specs = [("feature", D.FeatureSpec(f.name, f.type, f.drift_method, f.drift_threshold)) for f in model.features]
    # A multiclass model's output is its predicted class: its drift is that of the class distribution.
    specs.append((PREDICTION, D.FeatureSpec(PREDICTION, "categorical" if model.is_multiclass else "numeric")))
    specs.append((LABEL, D.FeatureSpec(LABEL, "categorical" if model.is_classifier or model.is_multiclass
                                       else "numeric")))
    return specs


def _label_expr(model: ModelConfig, column: str) -> str:
    # Classes compare as text ('0', '1') whatever numeric type the file used; a multiclass code as its name.
    if model.is_multiclass:
        return f"{classes_sql(model.classes)}[CAST({column} AS BIGINT) + 1]"
    return f"CAST(CAST({column} AS DOUBLE) AS BIGINT)::VARCHAR" if model.is_classifier else f"CAST({column} AS DOUBLE)"


class ReferenceError(ValueError):
    """A reference set that cannot be a baseline (missing file or column, too few usable rows): fixing
    the file or the config is the only cure, so it is not retried."""


def reference_file(model: ModelConfig) -> str:
    """The reference file's rows as they are (for validation)."""
    if not Path(model.reference_path).exists():
        raise ReferenceError(f"model {model.id}: reference file {model.reference_path} does not exist")
    return f"SELECT * FROM {_reader(model.reference_path)}"


# The columns `storage.reads.multiclass_reference_sql` adds, and the predicted class's probability.
MC_LABEL, MC_CODE, MC_PROBA, MC_SCORE = "__label", "__predicted", "__proba", "__class_score"


def multiclass_reference(model: ModelConfig) -> str:
    """A multiclass reference's rows with its classes as codes: the label (`MC_LABEL`, NULL for a name not in
    `classes`), the predicted class (`MC_CODE`: the `decision` column's name, else the most probable), the
    probabilities (`MC_PROBA`, DOUBLE[]; the column is JSON text or a list). A missing file is a ReferenceError."""
    reference_file(model)
    return multiclass_reference_sql(model)


def reference_relation(model: ModelConfig, where: str = "true") -> str:
    """The reference's drift columns (features, prediction, label) and `label_value`, on the rows
    matching `where` (the usable rows, see `validate_model_reference`)."""
    if model.is_multiclass:
        features = ", ".join(f"{quote_ident(f.name)}" for f in model.features)
        return (f"SELECT {features}, {classes_sql(model.classes)}[{MC_CODE}::BIGINT + 1] AS {PREDICTION}, "
                f"{_label_expr(model, MC_LABEL)} AS {LABEL}, {MC_LABEL} AS label_value, {MC_CODE} AS class_code, "
                f"{MC_PROBA} AS class_probabilities, {MC_PROBA}[{MC_CODE}::BIGINT + 1] AS {MC_SCORE} "
                f"FROM ({multiclass_reference(model)}) WHERE {where}")
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
    if model.is_multiclass:
        try:
            n, bad_label, bad_pred = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {MC_LABEL} IS NULL), count(*) FILTER (WHERE {MC_CODE} IS NULL) "
                f"FROM ({multiclass_reference(model)})").fetchall()[0]
            usable = con.execute(f"SELECT count(*) FROM ({multiclass_reference(model)}) WHERE {MC_LABEL} IS NOT NULL "
                                 f"AND {MC_CODE} IS NOT NULL").fetchall()[0][0]
            return reference_check(n, bad_label, bad_pred, usable,
                                   f"{MC_LABEL} IS NOT NULL AND {MC_CODE} IS NOT NULL")
        except ReferenceTooSmall as exc:
            raise ReferenceError(f"{where}: {exc} (a multiclass reference needs a label among the classes and a "
                                 "predicted class or valid probabilities)") from None
        except duckdb.BinderException as exc:
            raise ReferenceError(f"{where}: lacks the configured label column ({model.reference_fields['label']}): "
                                 f"{' '.join(str(exc).split())}") from None
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
    # A missing or unreadable file is the config's to fix: a ReferenceError, not retried (an OSError would be).
    try:
        content = Path(model.reference_path).read_bytes()
    except FileNotFoundError:
        raise ReferenceError(f"model {model.id}: reference file {model.reference_path} does not exist") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ReferenceError(f"model {model.id}: reference file {model.reference_path} cannot be read: "
                             f"{exc.strerror}") from None
    digest = hashlib.sha256(content)
    digest.update(json.dumps([(r, s.name, s.kind, s.method, s.threshold) for r, s in drift_specs(model)]).encode())
    digest.update(json.dumps({"profile_version": D.PROFILE_VERSION, "fields": model.reference_fields,
                              "min_rows": MIN_REFERENCE_ROWS, "extras": REFERENCE_EXTRAS,
                              "attributes": [a.name for a in model.sensitive_attributes]}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def stored_versions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Per model, the reference version its stored profiles were made from (none where they disagree)."""
    return dict(con.execute("""SELECT model_id, any_value(reference_version) FROM monitoring.reference_profiles
                               GROUP BY model_id HAVING count(DISTINCT reference_version) = 1""").fetchall())


def profile_model(con: duckdb.DuckDBPyConnection, model: ModelConfig, min_group_size: int = MIN_GROUP_SIZE
                  ) -> tuple[dict, dict[str, float], ReferenceCheck, dict[str, float]]:
    """Profiles of every drift column of a model's reference set, its baseline metrics (with the
    reference's own fairness disparities), the validation (rows left out and why) and each feature's
    association with the score (`score_association`), all on the usable rows only."""
    check = validate_model_reference(con, model)
    relation = reference_relation(model, check.where)
    try:
        profiles = profile_reference(con, relation, [s for _, s in drift_specs(model)])
    except duckdb.BinderException as exc:
        raise ReferenceError(f"model {model.id}: reference {model.reference_path} lacks a configured column: "
                             f"{' '.join(str(exc).split())}") from None
    if model.is_multiclass:
        baselines = multiclass_baselines(con, model, relation)
        features = [s for r, s in drift_specs(model) if r == "feature"]
        importance = score_association(con, relation, features, MC_SCORE)
        return profiles, baselines, check, importance
    decision = DECISION if model.reference_fields.get("decision") else None
    perf = con.execute(performance_sql(
        f"""SELECT 'reference' AS g, true AS is_ok, NULL::DOUBLE AS latency_ms, {PREDICTION} AS score,
                   label_value AS label, {model.decision_threshold} AS threshold, {sql_str(model.task)} AS task
                   {', ' + DECISION if decision else ''}
            FROM ({relation})""", ["g"], decision=decision)).df()
    row = perf.iloc[0]
    baselines = {m: float(row[m]) for m in CLASSIFICATION_METRICS + REGRESSION_METRICS
                 if m in row and not pd.isna(row[m])}
    baselines.update(reference_fairness(con, model, check, min_group_size))
    features = [s for r, s in drift_specs(model) if r == "feature"]
    importance = score_association(con, relation, features, PREDICTION)
    return profiles, baselines, check, importance


def multiclass_baselines(con: duckdb.DuckDBPyConnection, model: ModelConfig, relation: str) -> dict[str, float]:
    """The reference's multiclass metrics (`stats.multiclass`), named as in performance_daily; log loss and
    ROC AUC only when every usable row has probabilities."""
    rows = con.execute(f"SELECT label_value, class_code, class_probabilities FROM ({relation})").fetchall()
    y, pred = np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.int64)
    proba = (np.array([r[2] for r in rows], dtype=float) if rows and all(r[2] is not None for r in rows) else None)
    return {k: v for k, v in multiclass_daily_metrics(y, pred, len(model.classes), proba).items() if math.isfinite(v)}


def reference_fairness(con: duckdb.DuckDBPyConnection, model: ModelConfig, check: ReferenceCheck,
                       min_group_size: int = MIN_GROUP_SIZE) -> dict[str, float]:
    """The reference's own demographic parity ratio and equalized odds difference per sensitive attribute
    (classifiers), as `FAIRNESS_BASELINE` metrics; an attribute the reference lacks has none."""
    if not model.is_classifier or not model.sensitive_attributes:
        return {}
    names = {c.lower() for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {reference_file(model)})").fetchall()}
    present = [a.name for a in model.sensitive_attributes if a.name.lower() in names]
    if not present:
        return {}
    score, label = quote_ident(model.reference_fields["score"]), quote_ident(model.reference_fields["label"])
    decision = model.reference_fields.get("decision")
    y_pred = predicted_class_sql(f"{quote_ident(decision)}::VARCHAR" if decision else None,
                                 f"CAST({score} AS DOUBLE)", repr(model.decision_threshold))
    relation = (f"SELECT {y_pred} AS y_pred, CAST(CAST({label} AS DOUBLE) AS BIGINT) AS y_true, "
                f"{', '.join(quote_ident(a) for a in present)} FROM ({reference_file(model)} WHERE {check.where})")
    try:
        table = fairness_table(group_counts(con, relation, present), True, min_group_size)
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - no reference disparity: the day is judged in absolute terms, and says so
        return {}
    out = {}
    for attribute, part in table.groupby("attribute") if len(table) else ():
        for metric in FAIRNESS_METRICS:
            value = part[metric].iloc[0]
            if not pd.isna(value):
                out[FAIRNESS_BASELINE.format(metric=metric, attribute=attribute)] = float(value)
    return out


def profile_models(con: duckdb.DuckDBPyConnection, models: list[ModelConfig], workers: int | None = None,
                   min_group_size: int = MIN_GROUP_SIZE):
    """`profile_model` for each model, a few at once, yielded in the models' order as (model, result); a
    model whose reference cannot be profiled yields (model, the exception) and the others go on (a
    transient error, see `TRANSIENT_ERRORS`, is raised)."""
    def one(c, model):
        try:
            return profile_model(c, model, min_group_size)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model, the others are profiled
            return exc
    yield from zip(models, map_models(con, one, models, workers), strict=True)


def save_profiles(con: duckdb.DuckDBPyConnection, saved: list[tuple], errors: dict[str, str] | None = None) -> None:
    """Replace the stored profiles and baselines of these models, each (model, version, profiles, baselines):
    one commit per table (a row at a time, 500 models' took 20 s). Baselines first: a crash between the two
    leaves the old profiles' version, so the models are profiled again."""
    profile_rows, baseline_rows = [], []
    for model, version, profiles, baselines, *rest in saved:
        importance = rest[0] if rest else {}
        roles = {s.name: r for r, s in drift_specs(model)}
        for name, profile in profiles.items():
            kind = "numeric" if isinstance(profile, D.NumericProfile) else "categorical"
            n = profile.counts.n if kind == "numeric" else profile.n
            profile_rows.append((model.id, name, roles[name], kind, version, int(n), json.dumps(profile.to_json()),
                                 _finite(importance.get(name))))
        baseline_rows += [(model.id, version, metric, float(value)) for metric, value in baselines.items()]
    # A model that failed: one row saying why (version ERROR_KIND never matches, so the next run tries again).
    for model_id, message in (errors or {}).items():
        profile_rows.append((model_id, None, ERROR_KIND, ERROR_KIND, ERROR_KIND, 0, json.dumps({"error": message}),
                             None))
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    profile_frame = pd.DataFrame(profile_rows, columns=["model_id", "feature", "role", "kind", "reference_version",
                                                        "n", "profile", "importance"]).assign(computed_at=now)
    baseline_frame = pd.DataFrame(baseline_rows, columns=["model_id", "reference_version", "metric", "value"])
    ids = [model.id for model, *_ in saved]
    lake = lake_of(con)
    # A failed model keeps its last baselines (the performance check still has one); its profiles say why.
    for table, frame, models in (("monitoring.reference_baselines", baseline_frame, ids),
                                 ("monitoring.reference_profiles", profile_frame, ids + list(errors or {}))):
        if models:
            lake.replace(table, pa.Table.from_pandas(frame, preserve_index=False), None, models=models)
            lake.refresh(con, table)


def reference_disparities(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[str, float]:
    """The stored `FAIRNESS_BASELINE` metrics of a model's reference."""
    return dict(con.execute("SELECT metric, value FROM monitoring.reference_baselines WHERE model_id = ? "
                            "AND metric LIKE 'fairness.%'", [model_id]).fetchall())


def _day_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, many: bool = False) -> str:
    """The served predictions of one model and day (params: day, model id), with the latest label: from the
    model's own table, so a pass reads that model's rows only. Labels are matched on the prediction id,
    also those logged before their prediction arrived (up to EARLY_LABEL_DAYS). `many`: of several days
    (params: days, first, model id), each row with its DAY_COLUMN."""
    table = lake_of(con).model_relation(con, model.id)
    # A multiclass model's prediction is its class name (`decision`); its code and probabilities come along.
    output = (f"p.decision AS {PREDICTION}, p.{CLASS_CODE_COLUMN} AS class_code" if model.is_multiclass
              else f"p.score AS {PREDICTION}")
    day, where = (("$first", "p.partition_date IN (SELECT unnest($days::DATE[]))") if many
                  else ("$day", "p.partition_date = $day"))
    return f"""
        SELECT {f'p.partition_date AS {DAY_COLUMN}, ' if many else ''}{model_feature_select(config, model.id, 'p.')},
               {output}, l.label AS label_value, p.decision AS {quote_ident(DECISION)}
        FROM {table} AS p
        LEFT JOIN ({latest_labels_sql([model.id], since=day)}) AS l USING (prediction_id)
        WHERE {where} AND p.model_id = $model AND p.is_ok"""


def empty_summary(model: ModelConfig, day: dt.date, error: str | None = None) -> dict:
    """A model-day's drift summary with nothing computed (no rows, or `error`: why not)."""
    return {"partition_date": day, "model_id": model.id, "n_features": len(model.features), "n_drifted": None,
            "drift_share": None, "dataset_drift": None, "prediction_drift": None, "label_drift": None,
            "n_missing_drift": None, "n_unseen_drift": None, "n_all_missing": None, "n_all_unseen": None,
            "analysis_error": error}


def isolated_drift(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                   profiles: dict[str, D.Profile], importance: dict[str, float] | None = None,
                   reference_error: str | None = None) -> tuple[list[dict], dict]:
    """`drift_for_day`, but an error analysing this model-day (not a transient one) is caught and returned
    as the summary's `analysis_error`, so that every other model is analysed; no profiles: why not."""
    if not profiles:
        return [], empty_summary(model, day, f"no reference profile: {reference_error or 'none stored'}")
    try:
        return drift_for_day(con, config, model, day, profiles, importance)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded for this model-day
        return [], empty_summary(model, day, f"drift could not be computed: {error_message(exc)}")


def isolated_drift_days(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                        days: list[dt.date], profiles: dict[str, D.Profile], importance: dict[str, float] | None = None,
                        reference_error: str | None = None) -> list[tuple[list[dict], dict]]:
    """`isolated_drift` of several days of one model, their rows read once (a backfill costs its rows, not a
    view and a read a day); each day's error stays that day's. If the read fails, day by day."""
    if not profiles or not days:
        return [isolated_drift(con, config, model, day, profiles, importance, reference_error) for day in days]
    try:
        rows = con.sql(_day_rows(con, config, model, many=True),
                       params={"days": days, "first": min(days), "model": model.id}).to_arrow_table()
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - each day read alone, its own error recorded
        return [isolated_drift(con, config, model, day, profiles, importance, reference_error) for day in days]
    try:
        return _drift_of_days(con, config, model, days, rows, profiles, importance)
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - a value one day cannot count: each day counted alone, its own error kept
        pass
    held, out = f"_drift_rows_{threading.get_ident()}", []
    for day in days:
        con.register(held, rows.filter(pc.equal(rows[DAY_COLUMN], pa.scalar(day, pa.date32())))
                     .drop_columns([DAY_COLUMN]))
        try:
            out.append(_drift_of_rows(con, config, model, day, profiles, f"SELECT * FROM {held}", importance))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model-day
            out.append(([], empty_summary(model, day, f"drift could not be computed: {error_message(exc)}")))
        finally:
            con.unregister(held)
    return out


def drift_for_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                  profiles: dict[str, D.Profile], importance: dict[str, float] | None = None
                  ) -> tuple[list[dict], dict]:
    """Drift rows for every feature, the prediction and the label; and the model's summary row."""
    # The model-day's rows, joined with their labels once: the counts, both scans and the label's drift
    # read them from memory rather than each reading the files and joining again.
    held = f"_drift_rows_{threading.get_ident()}"
    con.register(held, con.sql(_day_rows(con, config, model), params={"day": day, "model": model.id}).to_arrow_table())
    try:
        return _drift_of_rows(con, config, model, day, profiles, f"SELECT * FROM {held}", importance)
    finally:
        con.unregister(held)


def _drift_of_days(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, days: list[dt.date],
                   rows: pa.Table, profiles: dict[str, D.Profile], importance: dict[str, float] | None = None
                   ) -> list[tuple[list[dict], dict]]:
    """`_drift_of_rows` of each of `days` from their rows (`rows`, with DAY_COLUMN), counted for all days at once
    (a few statements in all, not about eight a day: a year's backfill of a small model paid a fixed price a
    day). A value that cannot be counted raises for all: the caller then counts day by day. A day's statistics
    that fail are that day's error."""
    specs = drift_specs(model)
    input_specs = [s for r, s in specs if r != LABEL]
    label_spec = next(s for r, s in specs if r == LABEL)
    held = f"_drift_days_{threading.get_ident()}"
    con.register(held, rows)
    try:
        numeric, categorical, normalize = D.counting_plan(input_specs, profiles)
        counted = count_histograms_by(con, f"SELECT * FROM {held}", DAY_COLUMN, numeric, categorical,
                                      normalize=normalize)
        labelled = {}
        if LABEL in profiles:
            numeric, categorical, normalize = D.counting_plan([label_spec], profiles)
            labelled = count_histograms_by(
                con, f"SELECT {DAY_COLUMN}, {_label_expr(model, 'label_value')} AS {LABEL} FROM {held} "
                     "WHERE label_value IS NOT NULL", DAY_COLUMN, numeric, categorical, normalize=normalize)
    finally:
        con.unregister(held)
    out = []
    for day in days:
        if day not in counted:
            out.append(([], empty_summary(model, day)))
            continue
        try:
            results = D.drift_from_counts(input_specs, profiles, counted[day])
            if day in labelled:
                results += D.drift_from_counts([label_spec], profiles, labelled[day])
            out.append(_drift_rows(config, model, day, specs, results, importance))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model-day
            out.append(([], empty_summary(model, day, f"drift could not be computed: {error_message(exc)}")))
    return out


def _drift_of_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
                   profiles: dict[str, D.Profile], rows_sql: str, importance: dict[str, float] | None = None
                   ) -> tuple[list[dict], dict]:
    n = con.execute(f"SELECT count(*) FROM ({rows_sql})").fetchall()[0][0]
    if n == 0:
        return [], empty_summary(model, day)
    specs = drift_specs(model)
    input_specs = [s for r, s in specs if r != LABEL]
    results = compute_drift(con, rows_sql, input_specs, profiles)
    labelled = f"SELECT {_label_expr(model, 'label_value')} AS {LABEL} FROM ({rows_sql}) WHERE label_value IS NOT NULL"
    label_spec = next(s for r, s in specs if r == LABEL)
    if con.execute(f"SELECT count(*) FROM ({labelled})").fetchall()[0][0] and LABEL in profiles:
        results += compute_drift(con, labelled, [label_spec], profiles)
    return _drift_rows(config, model, day, specs, results, importance)


def _drift_rows(config: MonitorConfig, model: ModelConfig, day: dt.date, specs: list[tuple[str, D.FeatureSpec]],
                results: list[D.DriftResult], importance: dict[str, float] | None) -> tuple[list[dict], dict]:
    """A model-day's drift rows and summary from its statistics."""
    summary = empty_summary(model, day)
    roles = {s.name: r for r, s in specs}
    importance = importance or {}
    keys = set(D.key_features(model.key_features, importance, config.key_features_top_k))
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
            "importance": _finite(importance.get(r.feature)) if roles[r.feature] == "feature" else None,
            "key_feature": r.feature in keys and roles[r.feature] == "feature",
            "strong_drift": D.strong_drift(r.method, r.statistic, r.p_value_adjusted, r.p_value, r.threshold,
                                           r.drifted),
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


def isolated_fairness(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                      days: list[dt.date], reference: dict[str, float] | None = None) -> list[pd.DataFrame]:
    """`fairness_for_day` of several days of one model, their rows read in one query; an error (not a transient one) becomes one row with
    attribute NULL and `analysis_error` for its day (a failed read: each day read alone), so that every other
    model-day is analysed and this one's check fails with the reason."""
    def failed(day: dt.date, exc: Exception) -> pd.DataFrame:
        return pd.DataFrame([{"partition_date": day, "model_id": model.id, "attribute": None, "grp": None,
                              "analysis_error": f"fairness could not be computed: {error_message(exc)}"}])

    try:
        per_day = _fairness_inputs(con, config, model, days)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - each day read alone, its own error recorded
        if len(days) > 1:
            return [t for day in days for t in isolated_fairness(con, config, model, [day], reference)]
        return [failed(days[0], exc)]
    tables = []
    for day in days:
        try:
            tables.append(fairness_for_day(config, model, day, per_day[day], reference))
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model-day
            tables.append(failed(day, exc))
    return tables


def _fairness_inputs(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                     days: list[dt.date]) -> dict[dt.date, pd.DataFrame]:
    """Per day, what `fairness_for_day` judges: the group counts (`group_counts`), or for a multiclass model the
    day's rows; one query for all `days`."""
    attributes = [a.name for a in model.sensitive_attributes]
    if not attributes:
        return {day: pd.DataFrame() for day in days}
    params = {"days": days, "first": min(days), "model": model.id}
    if model.is_multiclass:
        return split_by_day(con.sql(_day_rows(con, config, model, many=True), params=params).df(), days)
    # The predicted class as the performance metrics take it: the logged decision, else the threshold.
    y_pred = (predicted_class_sql(quote_ident(DECISION), PREDICTION, repr(model.decision_threshold))
              if model.is_classifier else PREDICTION)
    relation = f"SELECT {y_pred} AS y_pred, label_value AS y_true, * FROM ({_day_rows(con, config, model, many=True)})"
    return split_by_day(group_counts(con, relation, attributes, params, by=DAY_COLUMN), days)


def fairness_for_day(config: MonitorConfig, model: ModelConfig, day: dt.date, counts: pd.DataFrame,
                     reference: dict[str, float] | None = None) -> pd.DataFrame:
    """Per attribute and group, rates and disparities (`fairness_table` of the day's group `counts`), with the
    reference's own disparities beside them (`reference`: the `FAIRNESS_BASELINE` metrics) and the baseline they
    are judged against: `fairness_baseline` is the config's, or 'absolute' with a `baseline_note` when the
    reference has no disparity for the attribute (it lacks the column, or has fewer than two eligible groups).
    A multiclass model's `counts` are the day's rows (`multiclass_fairness`)."""
    if not model.sensitive_attributes:
        return pd.DataFrame()
    if model.is_multiclass:
        return multiclass_fairness(config, model, day, counts)
    table = fairness_table(counts, model.is_classifier, config.min_group_size)
    if not table.empty:
        table.insert(0, "model_id", model.id)
        table.insert(0, "partition_date", day)
        reference = reference or {}
        for metric in FAIRNESS_METRICS:
            table[f"reference_{metric}"] = [reference.get(FAIRNESS_BASELINE.format(metric=metric, attribute=a), math.nan)
                                            for a in table.attribute]
        known = table.reference_demographic_parity_ratio.notna() | table.reference_equalized_odds_difference.notna()
        wanted = config.fairness_baseline == "reference"
        table["fairness_baseline"] = np.where(wanted & known, "reference", "absolute")
        table["baseline_note"] = np.where(wanted & ~known, "the reference has no disparity for this attribute (the "
                                          "column is missing or it has fewer than two eligible groups): judged in "
                                          "absolute terms", "")
    return table


def multiclass_fairness(config: MonitorConfig, model: ModelConfig, day: dt.date, frame: pd.DataFrame) -> pd.DataFrame:
    """Fairness of a multiclass model on a day's rows `frame`: per class, its selection rate (share predicted that
    class) and one-vs-rest rates by group, judged as a binary classifier's; the class is named in `attribute`
    (`segment (class books)`). The reference has no multiclass disparity: judged in absolute terms."""
    attributes = [a.name for a in model.sensitive_attributes]
    if frame.empty:
        return pd.DataFrame()
    labelled = frame.label_value.notna().to_numpy()
    y_true = np.where(labelled, frame.label_value.fillna(-1), -1).astype(np.int64)
    y_pred = frame.class_code.to_numpy(dtype=float)
    y_pred = np.where(np.isfinite(y_pred), y_pred, -1).astype(np.int64)
    parts = []
    for attribute in attributes:
        groups = frame[attribute].astype(object).where(frame[attribute].notna(), "(missing)").astype(str)
        rates = selection_rates(y_pred, len(model.classes), groups, y_true, labelled)
        names = np.asarray(model.classes, dtype=object)[rates["class"].to_numpy()]
        parts.append(rates.drop(columns=["selection_rate"]).assign(
            attribute=[f"{attribute} (class {n})" for n in names], abs_error=np.nan))
    # one table: fairness_table judges each attribute (here: attribute and class) on its own
    counts = (pd.concat(parts, ignore_index=True).sort_values(["class", "attribute", "grp"]).drop(columns="class")
              .reset_index(drop=True) if parts else pd.DataFrame())
    table = fairness_table(counts, True, config.min_group_size) if len(counts) else pd.DataFrame()
    if table.empty:
        return table
    table.insert(0, "model_id", model.id)
    table.insert(0, "partition_date", day)
    for metric in FAIRNESS_METRICS:
        table[f"reference_{metric}"] = math.nan
    table["fairness_baseline"] = "absolute"
    table["baseline_note"] = "multiclass: the reference's per-class disparities are not profiled; judged in absolute terms"
    return table


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


# ---------------------------------------------------------------------------------------------
# What the assets need beside the analysis: versions to profile, stored inputs, per-day summaries.
# Tables in the returned dicts are frames; the wiring shows them as markdown.


def reference_versions(models: list[ModelConfig]) -> tuple[dict[str, str], dict[str, str]]:
    """Each model's reference version (`reference_version`); a model whose reference file cannot be read:
    its error instead (that model's problem, not the step's)."""
    versions, errors = {}, {}
    for m in models:
        try:
            versions[m.id] = reference_version(m)
        except ValueError as exc:
            errors[m.id] = error_message(exc)
    return versions, errors


def stored_baselines(con: duckdb.DuckDBPyConnection, model_ids: list[str]) -> pd.DataFrame:
    """The stored reference baselines (model_id, metric, value) of these models."""
    return con.execute("SELECT model_id, metric, value FROM monitoring.reference_baselines "
                       "WHERE model_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY model_id, metric",
                       [model_ids]).df()


def drift_inputs(con: duckdb.DuckDBPyConnection, models: list[ModelConfig]
                 ) -> tuple[dict[str, dict[str, D.Profile]], dict[str, dict[str, float]], dict[str, str]]:
    """Per model, its stored profiles and key-feature importance; and why a model has no profile."""
    return ({m.id: load_profiles(con, m.id) for m in models}, {m.id: load_importance(con, m.id) for m in models},
            profile_errors(con))


def drift_day_summary(d_rows: pd.DataFrame, d_summary: pd.DataFrame) -> dict:
    """One day's drift at a glance from its drift rows and summary rows (`wiring.by_day`): models not analysed,
    all-missing / all-unseen features, drift shares and the most drifted features (frames, for markdown)."""
    shares = d_summary.drift_share.dropna() if len(d_summary) else pd.Series(dtype=float)
    worst = (d_rows[d_rows.role == "feature"].sort_values(["drifted", "statistic"], ascending=False)
             [["model_id", "feature", "method", "statistic", "threshold", "drifted", "current_summary",
               "reference_summary"]] if len(d_rows) else d_rows)
    loud = (d_rows[(d_rows.role == "feature") & (d_rows.message.fillna("") != "")]
            [["model_id", "feature", "message"]] if len(d_rows) else d_rows)
    failed = (d_summary[d_summary.analysis_error.notna()][["model_id", "analysis_error"]]
              if len(d_summary) else d_summary)
    return {
        "models_not_analysed": len(failed),
        "analysis_errors": failed,
        "features_all_missing": int(d_rows.all_missing.fillna(False).sum()) if len(d_rows) else 0,
        "features_all_unseen": int(d_rows.all_unseen.fillna(False).sum()) if len(d_rows) else 0,
        "missing_or_unseen": loud,
        "max_drift_share": float(shares.max()) if len(shares) else None,
        "mean_drift_share": float(shares.mean()) if len(shares) else None,
        "models_with_dataset_drift": int(d_summary.dataset_drift.fillna(False).sum()) if len(d_summary) else 0,
        "drifted_features": int(d_rows[d_rows.role == "feature"].drifted.sum()) if len(d_rows) else 0,
        "most_drifted": worst,
    }


def fairness_frame(parts: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model-days' fairness tables as one frame (without the raw confusion counts), and its error rows."""
    parts = [p for p in parts if len(p)]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(frame):
        frame = frame.drop(columns=["selected", "tp", "fp", "fn", "tn", "abs_error"], errors="ignore")
    errors = frame[frame.analysis_error.notna()] if "analysis_error" in frame else frame.iloc[0:0]
    return frame, errors


def fairness_day_summary(d_rows: pd.DataFrame, d_errors: pd.DataFrame) -> dict:
    """One day's fairness at a glance from its rows and error rows (`wiring.by_day`): models not analysed, the
    lowest demographic parity ratio, the largest equalized odds difference and the worst disparities (frames, for
    markdown)."""
    d_rows = d_rows[d_rows.attribute.notna()] if len(d_rows) else d_rows
    per_attr = (d_rows.drop_duplicates(["model_id", "attribute"])
                [["model_id", "attribute", "demographic_parity_ratio", "demographic_parity_p_value",
                  "most_favoured_group", "most_favoured_n", "least_favoured_group", "least_favoured_n",
                  "equalized_odds_difference", "equalized_odds_p_value", "passes_four_fifths"]]
                .sort_values("demographic_parity_ratio") if len(d_rows) else d_rows)
    ratios = per_attr.demographic_parity_ratio.dropna() if len(per_attr) else pd.Series(dtype=float)
    odds = per_attr.equalized_odds_difference.dropna() if len(per_attr) else pd.Series(dtype=float)
    return {
        "models_not_analysed": len(d_errors),
        "analysis_errors": d_errors[["model_id", "analysis_error"]] if len(d_errors) else d_errors,
        "lowest_demographic_parity_ratio": float(ratios.min()) if len(ratios) else None,
        "largest_equalized_odds_difference": float(odds.max()) if len(odds) else None,
        "attributes_below_four_fifths": int((ratios < 0.8).sum()),
        "worst_disparities": per_attr,
    }
