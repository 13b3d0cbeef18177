"""The model evaluation store (issue 24): daily mergeable profiles, and windows computed from them alone.

* `monitoring.evaluation_references`: per model and reference version, the profile layout (`ProfileBins`: bins at
  the reference's quantiles, tracked categories, score edges) and the reference's own profile on it, as JSON.
  Fitted once, like the multivariate references (`storage.fits.stored_or_fitted`).
* `monitoring.daily_profiles`: per model, day and model version, one profile (`stats.profiles.Profile`, compact
  JSON) of that day's served rows with the labels known so far. A run rebuilds the `label_delay_days` before its
  days too, as performance_daily does, so late labels reach the profiles. A model whose reference cannot be
  profiled, or whose day cannot be read, gets one row with `error` and no profile; the other models go on.
* `monitoring.evaluation_store`: per model, version (and '*', every version together), window and metric: the
  value on the window, the reference's value, the previous window's value. Read from the daily profiles and the
  stored reference only: never from the prediction files.

Metric names: the performance metrics as `stats.profiles` names them (`accuracy`, `roc_auc`, `roc_auc_bound`,
`mae`, ...); `drift.<feature>.<statistic>` with psi, jensenshannon, ks, ks_bound, wasserstein (/ reference std),
wasserstein_bound for numeric features and psi, jensenshannon, jensenshannon_bound, chisquare_p_value for
categorical ones, and `drift.<feature>.missing_share`; per feature the window's drift verdict, decided as the daily
drift decides (`stats.profiles.window_drift`: method by sample size or the feature's own, threshold raised to the
noise floor, p-value tests corrected together): `drift.<feature>.threshold`, `.evidence` (1 = at the threshold, the
heatmap's scale) and `.drifted` (1 or 0); `fairness.<attribute>.<disparity>` with demographic_parity_ratio and
demographic_parity_difference (selection rates among groups of at least `min_group_size` rows),
equalized_odds_difference and the p-values of both tests (classifiers), mae_ratio (regressors).

`monitoring.window_distributions`: per window, model and feature whose window drift is over its threshold (every
version together), the reference's and the window's distributions from the two profiles (`distributions.Comparison`
JSON, as `monitoring.drift_distributions` holds the daily ones). The check `evaluation_window_within_baseline`
(`window_failures`) judges each window on the day it closes; the reports say what it found.

Segments (a model's `segments:`, issue 23): the daily profiles are also kept per model, day, version and segment
of each segmentation (`segment` 'market=DE' or 'market=DE, device=mobile', spelt as monitoring.segment_performance
spells them; '' is the whole model, and rows written before the column read NULL, taken as ''). Per segmentation
the SEGMENT_CAP segments largest in the reference are kept apart, the rest pooled as 'market=(other)' (a reference
without the columns: the day's largest). The store holds, per window and segment (every version together), a row
`n_rows` (the reference's rows of it beside), and unless the window has fewer than `segments.min_rows` rows of it,
every metric above from the segment's own daily profiles, judged against its own reference rows when the reference
holds `min_rows` of them (`reference_source` 'segment', else 'model'); a segment's drift verdict is adjusted across
the window's segments and features (`segment_window_rows`). The whole model's rows are those it had without
segments. The check judges each segment too (`segment_verdicts`: the main metric's shortfall beyond sampling error,
Benjamini-Hochberg across the window's segments, and the drift verdict), and the reports list the failing first.

Multivariate drift per closed window (`multivariate_windows`), every version together, whole model: the window's rows
drawn from the days' stored samples (`monitoring.multivariate_samples`, kept by the multivariate step) in proportion
to the days' rows (`window_quotas`, at most stats.multivariate.MAX_ROWS), compared with the model's fitted reference
(`monitoring.multivariate_references`) as a day is. Rows: `multivariate.<method>` (domain_classifier_auc,
pca_reconstruction_error; value the statistic, reference_value its calibrated threshold at the sample's size, n_rows
the window's rows), `multivariate.<method>.drifted` (1 or 0; NULL without a verdict: a sample of fewer than
MIN_ROWS rows), `multivariate.<method>.feature.<feature>` (a drifted window's top features, their importance) and
`multivariate.sample_rows` (the rows compared). A window recomputed only because late labels touched it keeps its
stored rows (its samples did not change).

Multiclass models: performance as stats.multiclass names it (accuracy, precision, recall, f1, f1_macro,
f1_weighted, log_loss over the rows with logged probabilities, roc_auc with roc_auc_bound), the predicted class as
a categorical over the class names (`drift.prediction.<statistic>`, as analysis names a model's output), no
fairness (the daily multiclass fairness of analysis is per class; it is not profiled here).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from monitor_assets.config import (
    CLASS_CODE_COLUMN,
    CLASS_PROBABILITIES_COLUMN,
    ModelConfig,
    MonitorConfig,
    RankerConfig,
)
from monitor_assets.constants import EVALUATION_WINDOW_CHECK, FAIRNESS_MAX_P, MIN_LABELLED
from monitor_assets.evaluation.settings import DEFAULT, EvaluationConfig, Window, previous, windows_touching
from monitor_assets.formatting import fmt_num, fmt_p, fmt_pct, plural
from monitor_assets.multivariate import logic as MVL
from monitor_assets.stats import drift as D
from monitor_assets.stats import multivariate as MV
from monitor_assets.stats import profiles as P
from monitor_assets.stats.categories import category_sql
from monitor_assets.stats.distributions import Comparison
from monitor_assets.stats.drift import FeatureSpec
from monitor_assets.stats.metrics_spec import HIGHER, METRIC_DIRECTION
from monitor_assets.stats.multiple_testing import benjamini_hochberg
from monitor_assets.stats.performance import (
    metric_floor,
    metric_standard_error,
    predicted_class_sql,
    share_of_baseline,
)
from monitor_assets.stats.ranking import below_floor_p_value
from monitor_assets.storage.fits import NO_REFERENCE, stored_or_fitted
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.per_model import (
    TRANSIENT_ERRORS,
    error_message,
    map_models,
    map_processes,
    model_chunks,
    or_why,
)
from monitor_assets.storage.reads import (
    DAY_COLUMN,
    feature_columns,
    held_models,
    latest_labels_sql,
    model_day_batches,
    multiclass_reference_sql,
    reference_reader_sql,
    split_by_day,
)
from monitor_assets.storage.reads import load_profiles as load_reference_profiles
from monitor_assets.storage.sql import (
    SEGMENT_COLUMN,
    quote_ident,
    segment_key,
    segment_picks,
    sql_str,
)
from monitor_assets.storage.warehouse import lake_of, replace_partitions_from_frame

log = logging.getLogger(__name__)

PROFILES = "monitoring.daily_profiles"
REFERENCES = "monitoring.evaluation_references"
STORE = "monitoring.evaluation_store"
PROFILE_COLUMNS = [c for c in TABLES[PROFILES][0] if c != "computed_at"]
STORE_COLUMNS = [c for c in TABLES[STORE][0] if c != "computed_at"]
# Pictures of the windows' drifted features (issue 24 item 4).
WINDOW_PICTURES = "monitoring.window_distributions"
WINDOW_PICTURE_COLUMNS = [c for c in TABLES[WINDOW_PICTURES][0] if c != "computed_at"]
TASKS = ("binary_classification", "regression", "multiclass_classification")  # what stats.profiles profiles
ALL_VERSIONS = "*"
FIT_FORMAT = 1  # part of the fit key: a change of the stored layout refits every model once
NUMERIC_DRIFT = ("psi", "jensenshannon", "ks", "ks_bound", "wasserstein", "wasserstein_bound")
CATEGORICAL_DRIFT = ("psi", "jensenshannon", "jensenshannon_bound", "chisquare_p_value")
PREDICTION = "prediction"  # a multiclass model's predicted class, as analysis.logic names the output's drift
WHOLE = ""  # the `segment` of the whole model's rows (NULL in rows written before segments: read as this)
# Segments kept apart per segmentation: the reference's largest; the rest pool into '<column>=(other)' (bounds the
# profiles per model-day at 1 + SEGMENT_CAP per segmentation and version).
SEGMENT_CAP = 50
OTHER_SEGMENT = "(other)"


def settings(config: MonitorConfig) -> EvaluationConfig:
    """The config's `evaluation:` section (week and month until config.py carries one)."""
    return getattr(config, "evaluation", None) or DEFAULT


def profiled(config: MonitorConfig) -> tuple[list[ModelConfig], dict[str, str]]:
    """(the models profiles are kept for, model id -> why not) : tasks stats.profiles supports."""
    kept = [m for m in config.models if m.task in TASKS]
    return kept, {m.id: f"task {m.task} has no evaluation profile yet" for m in config.models if m.task not in TASKS}


# ---------------------------------------------------------------------------------------------------------------
# The reference: layout and profile, once per reference version


@dataclass
class Reference:
    bins: P.ProfileBins
    profile: P.Profile
    # Segmented models: per segmentation key ('market,device') the segments kept apart (the reference's largest,
    # at most SEGMENT_CAP; absent when the reference lacks a column of it), and each segment's reference profile
    # on the model's layout (the capped rest as '<column>=(other)').
    kept: dict[str, list[str]] = field(default_factory=dict)
    segments: dict[str, P.Profile] = field(default_factory=dict)

    def to_text(self) -> str:
        d = {"bins": self.bins.to_dict(), "profile": self.profile.to_dict()}
        if self.kept:  # only then: unsegmented models keep the text they were stored with
            d.update(kept=self.kept, segments={k: p.to_dict() for k, p in self.segments.items()})
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> Reference:
        d = json.loads(text)
        return cls(P.ProfileBins.from_dict(d["bins"]), P.Profile.from_dict(d["profile"]), d.get("kept", {}),
                   {k: P.Profile.from_dict(p) for k, p in d.get("segments", {}).items()})



def other_segment(cross: tuple[str, ...]) -> str:
    """Where a segmentation's segments beyond the cap pool: 'market=(other)', 'market=(other), device=(other)'."""
    return ", ".join(f"{name}={OTHER_SEGMENT}" for name in cross)


def cap_segments(names: pd.Series, cross: tuple[str, ...], kept: list[str] | None) -> pd.Series:
    """Each row's segment with those beyond the cap pooled as `other_segment`: the reference's kept segments, and
    (while fewer than SEGMENT_CAP are kept) the day's largest segments the reference never had; without a
    reference for this segmentation (`kept` None) the day's SEGMENT_CAP largest."""
    counts = names.value_counts()
    keep = set(kept or ())
    room = SEGMENT_CAP - len(keep)
    if room > 0:
        new = sorted(((-int(n), s) for s, n in counts.items() if s not in keep))
        keep.update(s for _, s in new[:room])
    return names.where(names.isin(keep), other_segment(cross))


def feature_specs(model: ModelConfig) -> list[FeatureSpec]:
    return [FeatureSpec(f.name, f.type) for f in model.features if f.type in ("numeric", "categorical")]


def _values(specs: list[FeatureSpec], column_of: dict[str, str], attributes: dict[str, str | None]) -> list[str]:
    """SELECT items: numbers as DOUBLE, categories (features and attributes) normalised as drift counts them."""
    picks = [(category_sql(column_of[f.name]) if f.kind == "categorical" else f"TRY_CAST({column_of[f.name]} AS DOUBLE)")
             + f" AS {quote_ident(f.name)}" for f in specs]
    picks += [f"{category_sql(c) if c else 'NULL::VARCHAR'} AS {quote_ident(a)}" for a, c in attributes.items()]
    return picks


def fit_key(model: ModelConfig, version: str) -> str:
    """What a stored layout was made from: the reference version, the decision threshold and the sizes (and the
    segmentations with the cap, for segmented models only: the others keep their key)."""
    return (f"{version}:{model.task}:{model.decision_threshold!r}:{P.BINS}:{P.TOP_K}:{P.SCORE_BINS}:"
            f"{P.PROFILE_FORMAT}:{FIT_FORMAT}" + (f":{list(model.classes)!r}" if model.is_multiclass else "")
            + (f":segments={[segment_key(c) for c in model.segments.by]!r}:{SEGMENT_CAP}"
               if model.segments.by else ""))


def reference_frame(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> pd.DataFrame:
    """The reference's usable rows (a finite score and label; classifiers: a 0/1 label): features, score, label,
    the predicted class, the sensitive attributes it has (NULL for those it lacks). Multiclass: `multiclass_frame`."""
    if model.is_multiclass:
        return multiclass_frame(con, model)
    reader = reference_reader_sql(model.reference_path)
    names = {c.lower() for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {reader})").fetchall()}
    specs = feature_specs(model)
    lacking = [f.name for f in specs if f.name.lower() not in names]
    if lacking:
        raise ValueError(f"model {model.id}: reference {model.reference_path} lacks feature column(s) "
                         f"{', '.join(lacking)}")
    score = f"TRY_CAST({quote_ident(model.reference_fields['score'])} AS DOUBLE)"
    label = f"TRY_CAST({quote_ident(model.reference_fields['label'])} AS DOUBLE)"
    decision = model.reference_fields.get("decision")
    predicted = (predicted_class_sql(f"{quote_ident(decision)}::VARCHAR" if decision else None, score,
                                     repr(model.decision_threshold)) if model.is_classifier else "NULL::INT")
    attributes = {a.name: quote_ident(a.name) if a.name.lower() in names else None for a in model.sensitive_attributes}
    usable = f"isfinite({score}) AND isfinite({label})" + (f" AND {label} IN (0, 1)" if model.is_classifier else "")
    select = _values(specs, {f.name: quote_ident(f.name) for f in specs}, attributes)
    select += segment_picks(model.segments.by, {n: quote_ident(n) for c in model.segments.by for n in c if n.lower() in names})
    frame = con.execute(f"SELECT {', '.join(select)}, {score} AS score, {label} AS label, "
                        f"{predicted}::DOUBLE AS predicted FROM {reader} WHERE {usable}").df()
    if not len(frame):
        raise ValueError(f"model {model.id}: reference {model.reference_path} has no row with a usable score and label")
    return frame


def multiclass_frame(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> pd.DataFrame:
    """A multiclass reference's rows with a known label and predicted class: features, `label` and `predicted`
    as codes (the `decision` column's class, else the most probable), `proba` (DOUBLE[], NULL where the logged
    probabilities are missing or unusable), no score."""
    reader = reference_reader_sql(model.reference_path)
    names = {c.lower() for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {reader})").fetchall()}
    specs = feature_specs(model)
    lacking = [f.name for f in specs if f.name.lower() not in names]
    if lacking:
        raise ValueError(f"model {model.id}: reference {model.reference_path} lacks feature column(s) "
                         f"{', '.join(lacking)}")
    select = _values(specs, {s.name: quote_ident(s.name) for s in specs}, {})
    select += segment_picks(model.segments.by, {n: quote_ident(n) for c in model.segments.by for n in c if n.lower() in names})
    frame = con.execute(f"""
        SELECT * FROM (
            SELECT {', '.join(select)}, NULL::DOUBLE AS score, __label AS label, __predicted AS predicted,
                   __proba AS proba
            FROM ({multiclass_reference_sql(model)})) WHERE label IS NOT NULL AND predicted IS NOT NULL""").df()
    if not len(frame):
        raise ValueError(f"model {model.id}: reference {model.reference_path} has no row with a label among the "
                         "classes and a predicted class")
    return frame


def fit_reference(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> tuple[Reference, int]:
    frame = reference_frame(con, model)
    bins = P.ProfileBins.from_reference(frame, feature_specs(model), model.task, threshold=model.decision_threshold,
                                        attributes=tuple(a.name for a in model.sensitive_attributes),
                                        classes=tuple(model.classes or ()))
    keys = {"model_id": model.id, "model_version": "reference"}
    profile = P.build_profile(frame, bins, keys, "reference", predicted=_predicted(model))
    kept, segments = {}, {}
    for cross in model.segments.by:
        column = SEGMENT_COLUMN + segment_key(cross)
        if column not in frame:  # the reference lacks a column of it: segments judged on the model's reference
            continue
        counts = frame[column].value_counts()
        ranked = sorted((-int(n), s) for s, n in counts.items())
        kept[segment_key(cross)] = [s for _, s in ranked[:SEGMENT_CAP]]
        names = cap_segments(frame[column], cross, kept[segment_key(cross)])
        for name, rows in frame.groupby(names.to_numpy(), sort=True):
            segments[str(name)] = P.build_profile(rows, bins, {**keys, "segment": str(name)}, "reference",
                                                  predicted=_predicted(model))
    return Reference(bins, profile, kept, segments), len(frame)


def references(con: duckdb.DuckDBPyConnection, models: list[ModelConfig], fit: bool = True
               ) -> tuple[dict[str, Reference], dict[str, str]]:
    """Each model's layout and reference profile: the stored one while its fit key holds, else (with `fit`)
    made now and stored. Returns (model id -> reference, model id -> why it has none); one model's failure
    leaves the others."""
    def guarded(work):
        try:
            return work()
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model, the others are profiled
            return f"reference could not be profiled: {error_message(exc)}"

    def make(model: ModelConfig):
        if not fit:
            return "no stored evaluation reference (the daily profiles have not run)"

        def work():
            ref, rows = fit_reference(con, model)
            return ref, ref.to_text(), {"reference_rows": rows, "layout": ref.bins.fingerprint}
        return guarded(work)

    found, missing = stored_or_fitted(con, REFERENCES, "reference", models, fit_key,
                                      lambda _, text: guarded(lambda: Reference.from_text(text)),
                                      lambda todo: map(make, todo))
    if any(why == NO_REFERENCE for why in missing.values()):
        unprofiled = reference_errors(con)
        missing = {m: f"{why}: {unprofiled[m]}" if why == NO_REFERENCE and m in unprofiled else why
                   for m, why in missing.items()}
    return found, missing


def reference_errors(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Why a model's reference could not be profiled (the reference profiles' error rows)."""
    rows = con.execute("SELECT model_id, profile FROM monitoring.reference_profiles WHERE kind = 'error'").fetchall()
    return {m: json.loads(p).get("error", "") for m, p in rows}


# ---------------------------------------------------------------------------------------------------------------
# Daily profiles


def day_rows_sql(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig) -> str:
    """Several model-days' served rows (params: days, model), each with its day (DAY_COLUMN) and the latest label
    known: the features as the reference side reads them, score, label, the predicted class, the sensitive
    attributes, the model version. Labels from the first day on, as performance and estimation read them."""
    stored = feature_columns(config)
    specs = feature_specs(model)
    column_of = {f.name: "p." + quote_ident(stored[(f.source, f.type)]) for f in model.features}
    # multiclass profiles keep no fairness counts (stats.profiles), so their attributes are not read
    attributes = ({} if model.is_multiclass else
                  {a.name: "p." + quote_ident(stored[(a.source, a.type)]) for a in model.sensitive_attributes})
    decision = "p.decision" if config.predictions.fields.get("decision") else None
    predicted = (predicted_class_sql(decision, "p.score", repr(model.decision_threshold)) if model.is_classifier
                 else f"p.{CLASS_CODE_COLUMN}" if model.is_multiclass else "NULL::INT")
    # multiclass: the stored code and probabilities (ingestion has checked them); labels are codes already
    proba = f", p.{CLASS_PROBABILITIES_COLUMN} AS proba" if model.is_multiclass else ""
    segments = segment_picks(model.segments.by, {c.name: "p." + quote_ident(stored[(c.source, c.type)])
                                      for c in model.logged_columns})
    return f"""
        SELECT p.partition_date AS {DAY_COLUMN}, {', '.join(_values(specs, column_of, attributes) + segments)},
               p.score AS score, l.label AS label, {predicted}::DOUBLE AS predicted{proba},
               coalesce(p.model_version, '') AS model_version
        FROM {lake_of(con).model_relation(con, model.id)} AS p
        LEFT JOIN ({latest_labels_sql([model.id], since="list_min($days::DATE[])")}) AS l USING (prediction_id)
        WHERE p.partition_date IN (SELECT unnest($days::DATE[])) AND p.model_id = $model AND p.is_ok
        ORDER BY p.partition_date, p.prediction_id"""  # a profile's float sums then do not depend on the read


def _predicted(model: ModelConfig) -> str | None:
    """The frame column holding the predicted class (classifiers' 0/1, multiclass codes), None for regressors."""
    return "predicted" if model.is_classifier or model.is_multiclass else None


def row_groups(codes: np.ndarray, names, rows: np.ndarray | None = None) -> list[tuple[object, np.ndarray]]:
    """(name, positions) of each group among `rows` (None: all rows), `codes` and `names` from
    `pd.factorize(..., sort=True)`: what `groupby(sort=True)` yields, names sorted, missing ones (code -1) left out,
    each group's positions ascending (the rows' own order: float sums then add as the sub-frame's would)."""
    rows = np.arange(len(codes)) if rows is None else rows
    part = codes[rows]
    order = np.argsort(part, kind="stable")
    ends = np.cumsum(np.bincount(part + 1, minlength=len(names) + 1))  # ends[0]: the missing ones, first
    return [(names[k], rows[order[ends[k]:ends[k + 1]]]) for k in range(len(names)) if ends[k + 1] > ends[k]]


def profile_rows(model: ModelConfig, ref: Reference, frame: pd.DataFrame, day: dt.date) -> list[dict]:
    """One row per model version of the day's rows (segment ''), and for a segmented model one per version and
    segment of each segmentation (capped: `cap_segments`): the profile as JSON and its sizes."""
    return _profile_rows(model, ref, frame, {day: None})[day] if len(frame) else []


def profile_rows_of_days(model: ModelConfig, ref: Reference, frame: pd.DataFrame, days: list[dt.date]
                         ) -> dict[dt.date, list[dict]]:
    """`profile_rows` of each of `days` from a many-day read (`frame` with DAY_COLUMN), the columns made and the
    categories factorized once for all days (a backfill's small days paid it once a day)."""
    if not len(frame):
        return {day: [] for day in days}
    codes, names = pd.factorize(frame[DAY_COLUMN], sort=True)
    found = {pd.Timestamp(name).date(): rows for name, rows in row_groups(codes, np.asarray(names, dtype=object))}
    return {day: [] for day in days} | _profile_rows(model, ref, frame, {d: found[d] for d in days if d in found})


def _profile_rows(model: ModelConfig, ref: Reference, frame: pd.DataFrame,
                  days: dict[dt.date, np.ndarray | None]) -> dict[dt.date, list[dict]]:
    """`profile_rows` of each day's rows of `frame` (positions, ascending; None: all rows)."""
    out: dict[dt.date, list[dict]] = {day: [] for day in days}
    groups = [(WHOLE, None)]
    segments = {}  # column -> its capped names factorized (`frame` is left as it is)
    for cross in model.segments.by:
        column = SEGMENT_COLUMN + segment_key(cross)
        if column in frame:
            kept, capped = ref.kept.get(segment_key(cross)), frame[column].to_numpy(dtype=object, copy=True)
            for rows in days.values():  # a day's cap counts that day's segments
                at = slice(None) if rows is None else rows
                capped[at] = cap_segments(frame[column].iloc[at], cross, kept).to_numpy(object)
            segments[column] = pd.factorize(pd.Series(capped, dtype=object), sort=True)
            groups.append((segment_key(cross), column))
    # the columns as arrays once, categories factorized once: a part's profile costs numpy on its rows
    columns = P.ProfileColumns.of(frame, ref.bins, predicted=_predicted(model))
    versions = pd.factorize(frame["model_version"], sort=True)
    for day, day_rows in days.items():
        for version, rows in row_groups(*versions, day_rows):
            keys = {"model_id": model.id, "model_version": str(version)}
            for _, column in groups:
                parts = [(WHOLE, rows)] if column is None else row_groups(*segments[column], rows)
                for segment, part in parts:
                    profile = P.profile_of(columns, part, {**keys, "segment": str(segment)} if column else keys,
                                           day.isoformat())
                    text = json.dumps(profile.to_dict(), separators=(",", ":"))
                    out[day].append({"partition_date": day, "model_id": model.id, "model_version": str(version),
                                     "layout": profile.layout, "n_rows": profile.n_rows,
                                     "n_labelled": profile.n_labelled, "bytes": len(text.encode()),
                                     "profile": text, "error": None, "segment": str(segment)})
    return out


def error_row(model: ModelConfig, day: dt.date, error: str) -> dict:
    return {"partition_date": day, "model_id": model.id, "model_version": None, "layout": None, "n_rows": None,
            "n_labelled": None, "bytes": None, "profile": None, "error": error, "segment": WHOLE}


def isolated_profiles(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, ref: Reference,
                      days: list[dt.date]) -> list[dict]:
    """`profile_rows` of several days of one model, their rows read in one query (a backfill costs its rows, not a
    query a day); if that read fails, day by day, so a bad day stays that day's error row, as does an error (not a
    transient one) in a day's profile."""
    lake = lake_of(con)
    if not lake.has_table(lake.model_path(model.id)):
        return []
    try:
        frame = con.execute(day_rows_sql(con, config, model), {"days": days, "model": model.id}).df()
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - each day read alone below, its own error recorded
        if len(days) > 1:
            return [row for day in days for row in isolated_profiles(con, config, model, ref, [day])]
        return [error_row(model, days[0], f"profile could not be built: {error_message(exc)}")]
    try:
        together = profile_rows_of_days(model, ref, frame, days)
        return [row for day in days for row in together[day]]
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - each day profiled alone below, its own error recorded
        pass
    frames = split_by_day(frame, days)
    rows = []
    for day in days:
        try:
            rows += profile_rows(model, ref, frames[day], day)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model-day, the others are profiled
            rows.append(error_row(model, day, f"profile could not be built: {error_message(exc)}"))
    return rows


@dataclass
class ProfileRun:
    frame: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)  # model id -> why it has no profiles
    seconds: float = 0.0


def write_profiles(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                   workers: int | None = None) -> ProfileRun:
    """Replace `days` of monitoring.daily_profiles for the config's models; returns the rows written and the
    models left out with the reason (a task without profiles, a reference that cannot be profiled)."""
    started = time.perf_counter()
    models, notes = profiled(config)
    fitted, missing = references(con, models)
    notes.update(missing)
    held = held_models(con, days)
    rows = [error_row(m, day, missing[m.id]) for m in models if m.id in missing for day in days]
    work = [(m, batch) for m in models if m.id in fitted
            for batch in model_day_batches(con, m.id, [day for day in days if m.id not in held.get(day, set())])]
    for found in map_models(con, lambda c, item: isolated_profiles(c, config, item[0], fitted[item[0].id], item[1]),
                           work, workers):
        rows += found
    for model_id, why in notes.items():
        log.warning("daily profiles: model %s skipped: %s", model_id, why)
    frame = pd.DataFrame(rows, columns=PROFILE_COLUMNS)
    replace_partitions_from_frame(con, PROFILES, days, frame, models=config.written_models)
    return ProfileRun(frame, notes, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------------------
# Windows


def stored_references(con: duckdb.DuckDBPyConnection, models: list[ModelConfig]) -> dict[str, Reference]:
    """The stored layouts and reference profiles (current fit key only), without fitting any."""
    found, _ = references(con, models, fit=False)
    return found


def load_profiles(con: duckdb.DuckDBPyConnection, model_ids: list[str], days: list[dt.date],
                  segments: bool = True) -> dict[str, dict[str, dict[dt.date, list[P.Profile]]]]:
    """The stored daily profiles of these models and days: model id -> segment ('' the whole model; rows written
    before segments have none and are the whole model's) -> day -> one per version. `segments=False`: the
    whole model's only."""
    rows = con.execute(f"""SELECT model_id, coalesce(segment, '') AS segment, partition_date, profile FROM {PROFILES}
                           WHERE partition_date IN (SELECT unnest(?::DATE[])) AND model_id IN (SELECT unnest(?::VARCHAR[]))
                           AND error IS NULL AND profile IS NOT NULL {'' if segments else "AND coalesce(segment, '') = ''"}""",
                       [days, model_ids]).fetchall()
    out: dict[str, dict[str, dict[dt.date, list[P.Profile]]]] = {}
    for model_id, segment, day, text in rows:
        out.setdefault(model_id, {}).setdefault(segment, {}).setdefault(day, []).append(
            P.Profile.from_dict(json.loads(text)))
    return out


def window_metrics(profile: P.Profile, ref: Reference, min_group_size: int,
                   verdicts: dict[str, P.WindowVerdict] | None = None) -> dict[str, float]:
    """Every metric of a merged profile (see the module docstring), drift against the reference's profile;
    with `verdicts` (`P.window_drift` of it) each judged feature's threshold, evidence and drifted (1 or 0)."""
    out = {k: v for k, v in profile.metrics().items() if k != "n_labelled"}
    for name, col in profile.numeric.items():
        d = P.numeric_distances(ref.profile.numeric[name], col, ref.bins.numeric[name], p_values=False)
        out.update({f"drift.{name}.{k}": d[k] for k in NUMERIC_DRIFT})
        out[f"drift.{name}.missing_share"] = P._div(col.n_missing, col.n)
    for name, col in profile.categorical.items():
        d = P.categorical_distances(ref.profile.categorical[name], col, ref.bins.categorical[name])
        out.update({f"drift.{name}.{k}": d[k] for k in CATEGORICAL_DRIFT})
        out[f"drift.{name}.missing_share"] = P._div(col.n_missing, col.n)
    if profile.prediction is not None:  # multiclass: the predicted class, named as analysis names the output
        d = P.categorical_distances(ref.profile.prediction, profile.prediction, ref.bins.prediction)
        out.update({f"drift.{PREDICTION}.{k}": d[k] for k in CATEGORICAL_DRIFT})
        out[f"drift.{PREDICTION}.missing_share"] = P._div(profile.prediction.n_missing, profile.prediction.n)
    for name, v in (verdicts or {}).items():
        out.update({f"drift.{name}.threshold": v.threshold, f"drift.{name}.evidence": v.evidence,
                    f"drift.{name}.drifted": float(v.drifted)})
    out.update(fairness_metrics(profile, ref.bins.task == "binary_classification", min_group_size))
    return {k: float(v) for k, v in out.items()}


def fairness_metrics(profile: P.Profile, classifier: bool, min_group_size: int) -> dict[str, float]:
    """Per attribute: disparities among groups of at least `min_group_size` rows (stats.fairness' definitions,
    `P.fairness_summary`)."""
    summary = P.fairness_summary(profile.fairness, classifier, min_group_size)
    return {f"fairness.{attribute}.{metric}": value for attribute in sorted(summary)
            for metric, value in summary[attribute].items()}


def _finite(x) -> float | None:
    return float(x) if x is not None and isinstance(x, int | float) and math.isfinite(x) else None


def _merged(by_day: dict[dt.date, list[P.Profile]], window: Window, layout: str, version: str | None
            ) -> P.Profile | None:
    """The merge of the window's daily profiles on `layout` (of one version; None: every version)."""
    parts = [p for day in window.days() for p in by_day.get(day, ())
             if p.layout == layout and (version is None or p.keys.get("model_version") == version)]
    return P.merge(parts) if parts else None


def judged_specs(model: ModelConfig) -> list[FeatureSpec]:
    """The features whose window drift is judged, with their own method and threshold as the daily drift has them."""
    return [FeatureSpec(f.name, f.type, f.drift_method, f.drift_threshold) for f in model.features
            if f.type in ("numeric", "categorical")]


def reference_scales(con: duckdb.DuckDBPyConnection, model: ModelConfig, ref: Reference) -> dict[str, float | None]:
    """The daily drift's Wasserstein noise scale of each numeric feature (`drift.wasserstein_scale` of the stored
    reference profile on its fine grid), where that profile is on the same grid as the evaluation layout."""
    try:
        stored = load_reference_profiles(con, model.id)
    except duckdb.CatalogException:  # no reference profiles table yet: the profile bins' approximation
        return {}
    out = {}
    for name, b in ref.bins.numeric.items():
        fine = stored.get(name)
        if isinstance(fine, D.NumericProfile) and (fine.lo, fine.hi, fine.bins) == (b.lo, b.hi, b.fine):
            out[name] = D.wasserstein_scale(fine)
    return out


def model_window_rows(model: ModelConfig, ref: Reference, by_day: dict[dt.date, list[P.Profile]], window: Window,
                      last_day: dt.date, min_group_size: int, reference: dict[str, float] | None = None,
                      scales: dict[str, float | None] | None = None) -> tuple[list[dict], list[dict]]:
    """One model's rows of one window: per version seen in it and '*' (every version), per metric; and the
    pictures of its drifted features ('*' only: `window_picture_rows`). `reference`: the reference profile's own
    metrics (`window_metrics` of it), computed here if not given; `scales`: `reference_scales`."""
    layout = ref.bins.fingerprint
    before = previous(window)
    versions = sorted({p.keys.get("model_version", "") for day in window.days() for p in by_day.get(day, ())
                       if p.layout == layout})
    if reference is None:
        reference = window_metrics(ref.profile, ref, min_group_size)
    rows, figures, pictures = [], {}, []
    specs = judged_specs(model)
    for version in [*versions, ALL_VERSIONS] if versions else []:
        pick = None if version == ALL_VERSIONS else version
        if pick is None and len(versions) == 1:  # one version served: '*' is the same merge
            figures[version] = figures[versions[0]]
        else:
            current = _merged(by_day, window, layout, pick)
            if current is None:
                continue
            prior = _merged(by_day, before, layout, pick)
            verdicts = P.window_drift(specs, ref.profile, current, ref.bins, scales=scales)
            figures[version] = (current, window_metrics(current, ref, min_group_size, verdicts),
                                window_metrics(prior, ref, min_group_size,
                                               P.window_drift(specs, ref.profile, prior, ref.bins, scales=scales))
                                if prior is not None else {}, verdicts)
        current, values, earlier, verdicts = figures[version]
        if version == ALL_VERSIONS:
            pictures = window_picture_rows(model, ref, current, window, verdicts)
        rows += metric_rows(_common(model, window, version, current, last_day), values, reference, earlier)
    return rows, pictures


def _common(model: ModelConfig, window: Window, version: str, current: P.Profile, last_day: dt.date,
            segment: str = WHOLE, reference_source: str = "model") -> dict:
    return {"window_id": window.key, "window_name": window.spec.name, "window_kind": window.spec.kind,
            "window_start": window.start, "window_end": window.end, "model_id": model.id, "model_version": version,
            "n_rows": current.n_rows, "n_labelled": current.n_labelled, "days_profiled": current.days,
            "complete": window.end <= last_day, "segment": segment, "reference_source": reference_source}


def metric_rows(common: dict, values: dict[str, float], reference: dict[str, float], earlier: dict[str, float]
                 ) -> list[dict]:
    """One store row per metric: the window's value beside the reference's (none for drift distances) and the
    previous window's."""
    return [{**common, "metric": metric, "value": _finite(value),
             "reference_value": None if metric.startswith("drift.") and not metric.endswith(".missing_share")
             else _finite(reference.get(metric)), "previous_value": _finite(earlier.get(metric))}
            for metric, value in values.items()]


def segment_window_rows(model: ModelConfig, ref: Reference, by_segment: dict[str, dict[dt.date, list[P.Profile]]],
                        window: Window, last_day: dt.date, min_group_size: int,
                        references: dict[str, dict[str, float]], scales: dict[str, float | None] | None = None,
                        own_scales: dict[str, dict[str, float | None]] | None = None) -> list[dict]:
    """A segmented model's rows of one window per segment (every version together; `by_segment`: segment ->
    day -> profiles, from that segment's daily profiles only). Each segment has a row `n_rows` (the reference's
    rows of it as `reference_value`); one with fewer than `segments.min_rows` rows in the window has no other.
    The others get every metric of `window_metrics`, drift and reference values against the segment's own
    reference profile when the reference holds at least `min_rows` of its rows (`reference_source` 'segment'),
    else against the model's ('model'). Each feature's drift verdict (`drift.<f>.threshold`, `.evidence`,
    `.drifted`, `.p_adjusted`) is the one segment drift decides for a day (`segment_drift.judge_drift`, on the
    window's merged profile): adjusted across the window's segments and features, so forty segments do not warn
    forty times as often; a segment's own columns are not judged within it. The previous window's figures are
    without the verdict: it doubles the cost of the segments' windows. `references`: by segment ('' the model's)
    the reference's metrics, filled in as needed (once per run, not per window);
    `scales`: the model's (`reference_scales`); `own_scales`: a cache of the segments' own (`segment_scales`)."""
    from monitor_assets.evaluation.segment_drift import judge_drift  # built on this module: imported on use

    layout, before, min_rows = ref.bins.fingerprint, previous(window), model.segments.min_rows
    merged = {s: m for s in by_segment if s != WHOLE and (m := _merged(by_segment[s], window, layout, None)) is not None}
    # the window as one "day" of merged profiles: judge_drift's family is then the window's segments x features
    found = judge_drift(model, ref, {s: {window.end: [m]} for s, m in merged.items()}, window.end, scales,
                        {} if own_scales is None else own_scales)
    judged = found[found.judged.fillna(False).astype(bool)] if len(found) else found
    verdicts: dict[str, dict[str, float]] = {}
    for r in judged.itertuples():
        verdicts.setdefault(r.segment, {}).update({
            f"drift.{r.feature}.threshold": r.threshold, f"drift.{r.feature}.evidence": r.evidence,
            f"drift.{r.feature}.drifted": float(bool(r.drifted)), f"drift.{r.feature}.p_adjusted": r.p_adjusted})
    rows = []
    for segment in sorted(merged):
        current, prior = merged[segment], _merged(by_segment[segment], before, layout, None)
        own = ref.segments.get(segment)
        source = segment_source(ref, segment, min_rows)
        common = _common(model, window, ALL_VERSIONS, current, last_day, segment, source)
        rows.append({**common, "metric": "n_rows", "value": float(current.n_rows),
                     "reference_value": float(own.n_rows) if own is not None else None,
                     "previous_value": float(prior.n_rows) if prior is not None else None})
        if current.n_rows < min_rows:  # reported, not measured: too few rows for its figures to mean much
            continue
        against = Reference(ref.bins, own) if source == "segment" else ref
        key = segment if source == "segment" else WHOLE
        if key not in references:
            references[key] = window_metrics(against.profile, against, min_group_size)
        reference = references[key]
        values = {**window_metrics(current, against, min_group_size), **verdicts.get(segment, {})}
        earlier = (window_metrics(prior, against, min_group_size)
                   if prior is not None and prior.n_rows >= min_rows else {})
        rows += metric_rows(common, values, reference, earlier)
    return rows


def segment_source(ref: Reference, segment: str, min_rows: int) -> str:
    """What a segment is judged against: 'segment', its own reference profile, when the reference holds `min_rows`
    of its rows; else 'model', the whole model's."""
    own = ref.segments.get(segment)
    return "segment" if own is not None and own.n_rows >= min_rows else "model"


def segment_scales(ref: Reference, segment: str) -> dict[str, float | None]:
    """A segment's own Wasserstein noise scales, from its reference profile on the model's bins (the model's come
    from its fine-grid reference: `reference_scales`)."""
    return {n: P.wasserstein_scale(c, ref.bins.numeric[n]) for n, c in ref.segments[segment].numeric.items()}


def window_picture_rows(model: ModelConfig, ref: Reference, current: P.Profile, window: Window,
                        verdicts: dict[str, P.WindowVerdict]) -> list[dict]:
    """`monitoring.window_distributions` rows: for each feature whose window drift is over its threshold, the
    reference's and the window's distributions from the two profiles (no rows read), the strongest first."""
    out = []
    for v in sorted((v for v in verdicts.values() if v.drifted), key=lambda v: (-v.evidence, v.feature)):
        cols = (ref.profile.numeric, current.numeric, ref.bins.numeric) if v.kind == "numeric" else (
            ref.profile.categorical, current.categorical, ref.bins.categorical)
        found = P.window_comparison(v.kind, cols[0][v.feature], cols[1][v.feature], cols[2][v.feature])
        out.append({"window_id": window.key, "window_name": window.spec.name, "window_start": window.start,
                    "window_end": window.end, "model_id": model.id, "feature": v.feature, "kind": v.kind,
                    "method": v.method, "statistic": _finite(v.statistic),
                    "p_value": _finite(v.p_value_adjusted if v.p_value_adjusted is not None else v.p_value),
                    "threshold": _finite(v.threshold), "evidence": _finite(v.evidence), "bins": found.to_json(),
                    "n_current": found.n_current, "n_reference": found.n_reference})
    return out


@dataclass
class StoreRun:
    frame: pd.DataFrame
    windows: list[Window]
    closed: list[Window]
    notes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    pictures: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WINDOW_PICTURE_COLUMNS))


def compute_windows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, windows: list[Window], last_day: dt.date
                    ) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """The store's rows of these windows for the config's models, from the stored daily profiles and reference,
    and the pictures of the windows' drifted features."""
    models, notes = profiled(config)
    needed = sorted({d for w in windows for d in (*w.days(), *previous(w).days())})
    rows, pictures = [], []
    for chunk in model_chunks(models):  # the profiles of a slice of the fleet in memory, not the fleet's
        found, drawn = _chunk_windows(con, config, chunk, windows, needed, last_day, notes)
        rows += found
        pictures += drawn
    return (pd.DataFrame(rows, columns=STORE_COLUMNS), notes,
            pd.DataFrame(pictures, columns=WINDOW_PICTURE_COLUMNS))


def _chunk_windows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, models: list[ModelConfig],
                   windows: list[Window], needed: list[dt.date], last_day: dt.date, notes: dict[str, str]
                   ) -> tuple[list[dict], list[dict]]:
    """`compute_windows` of some models: (store rows, picture rows); why a model has none goes in `notes`."""
    refs = stored_references(con, models)
    notes.update({m.id: "no stored evaluation reference" for m in models if m.id not in refs})
    by_model = load_profiles(con, [m.id for m in models if m.id in refs], needed,
                             segments=any(m.segments.by for m in models))
    rows, pictures = [], []
    for model in models:
        if model.id not in refs:
            continue
        reference = window_metrics(refs[model.id].profile, refs[model.id], config.min_group_size)
        scales = reference_scales(con, model, refs[model.id])
        by_segment = by_model.get(model.id, {})
        segment_references, own_scales = {WHOLE: reference}, {}
        for window in windows:
            try:
                found, drawn = model_window_rows(model, refs[model.id], by_segment.get(WHOLE, {}), window, last_day,
                                                 config.min_group_size, reference, scales)
                if model.segments.by:
                    found += segment_window_rows(model, refs[model.id], by_segment, window, last_day,
                                                 config.min_group_size, segment_references, scales, own_scales)
                rows += found
                pictures += drawn
            except Exception as exc:  # noqa: BLE001 - one model's window; the others are computed
                notes[model.id] = f"window {window.key} could not be computed: {error_message(exc)}"
                log.warning("evaluation store: model %s: %s", model.id, notes[model.id])
    return rows, pictures


def write_store(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                refreshed: list[dt.date] | None = None) -> StoreRun:
    """Recompute every window holding one of `refreshed` (default `days`) and replace its rows."""
    started = time.perf_counter()
    touched = windows_touching(settings(config).windows, sorted(set(refreshed or days)))
    last_day = max(days)
    frame, notes, pictures = compute_windows(con, config, touched, last_day)
    joint, joint_notes = multivariate_windows(con, config, touched, days, frame)
    if len(joint):
        frame = pd.concat([frame, joint], ignore_index=True) if len(frame) else joint
    for model_id, why in joint_notes.items():
        notes[model_id] = f"{notes[model_id]}; {why}" if model_id in notes else why
    # the models' rows only: the rankers' windows of the same store are the ranking stage's (`ranking.windows`)
    replace_windows(con, frame, [w.key for w in touched], config.model_ids)
    replace_windows(con, pictures, [w.key for w in touched], config.model_ids, WINDOW_PICTURES)
    closed = [w for w in touched if w.end in set(days)]
    return StoreRun(frame, touched, closed, notes, time.perf_counter() - started, pictures)


def replace_windows(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, window_ids: list[str],
                    models: list[str] | None, table: str = STORE) -> None:
    """One commit replacing these windows' rows of `table` (of `models`; None: every model's)."""
    if not window_ids:
        return
    lake = lake_of(con)
    if len(frame):
        con.register("_store_frame", frame)
        try:
            data = con.sql("SELECT *, now() AS computed_at FROM _store_frame").to_arrow_table()
        finally:
            con.unregister("_store_frame")
    else:  # no rows: the windows' old rows go (`replace` fills the table's columns in)
        data = pa.table({"window_id": pa.array([], pa.string())})
    where = "window_id IN (" + ", ".join(sql_str(k) for k in sorted(set(window_ids))) + ")"
    lake.replace(table, data, None, models=models, where=where)
    lake.refresh(con, table)


# ---------------------------------------------------------------------------------------------------------------
# Multivariate drift per window, from the days' stored samples

SAMPLES = MVL.SAMPLES
MULTIVARIATE_METHODS = (MV.DOMAIN_CLASSIFIER, MV.RECONSTRUCTION)
MULTIVARIATE_PREFIX = "multivariate."
SAMPLE_ROWS_METRIC = MULTIVARIATE_PREFIX + "sample_rows"


def window_quotas(n_day_rows: dict[dt.date, int], stored: dict[dt.date, int], max_rows: int = MV.MAX_ROWS
                  ) -> dict[dt.date, int]:
    """Rows to take from each day's stored sample so that each day holds the window's sample in proportion to its
    rows. The size is at most `max_rows` and at most what the samples allow in proportion (min over days of
    stored x window rows / day rows: a busy day whose sample is a small share of its rows bounds the size, never
    its share); it is split by largest remainder (ties: the earlier day). No day gets more than it stored."""
    days = sorted(d for d, n in n_day_rows.items() if n > 0)
    total = sum(n_day_rows[d] for d in days)
    if not total:
        return {}
    size = min(max_rows, min(stored.get(d, 0) * total // n_day_rows[d] for d in days))
    quotas = {d: size * n_day_rows[d] // total for d in days}
    for d in sorted(days, key=lambda d: (-(size * n_day_rows[d] % total), d))[:size - sum(quotas.values())]:
        quotas[d] += 1
    return quotas


def sample_counts(con: duckdb.DuckDBPyConnection, model_ids: list[str], days: list[dt.date]
                  ) -> dict[str, tuple[dict[dt.date, int], dict[dt.date, int]]]:
    """Per model, each day's rows and stored sample size (rows of `monitoring.multivariate_samples`)."""
    out: dict[str, tuple[dict[dt.date, int], dict[dt.date, int]]] = {}
    if not model_ids or not days:
        return out
    for model_id, day, n, stored in con.execute(
            f"""SELECT model_id, partition_date, max(n_day_rows), max(sample_rank) + 1 FROM {SAMPLES}
                WHERE partition_date IN (SELECT unnest(?::DATE[])) AND model_id IN (SELECT unnest(?::VARCHAR[]))
                GROUP BY ALL""", [days, model_ids]).fetchall():
        rows, kept = out.setdefault(model_id, ({}, {}))
        rows[day], kept[day] = int(n), int(stored)
    return out


def read_window_samples(con: duckdb.DuckDBPyConnection, quotas: dict[str, dict[dt.date, int]]) -> pd.DataFrame:
    """The first `quota` sampled rows of each model-day (model id -> day -> quota), long: model_id,
    partition_date, sample_rank, feature, number, category. A prefix of a day's shuffled sample is a uniform
    sample of the day."""
    picks = pd.DataFrame([(m, d, q) for m, by_day in quotas.items() for d, q in by_day.items() if q > 0],
                         columns=["model_id", "partition_date", "quota"])
    if not len(picks):
        return pd.DataFrame(columns=["model_id", "partition_date", "sample_rank", "feature", "number", "category"])
    con.register("_window_quotas", picks)
    try:
        # the constant bounds let the scan skip partitions and the row groups past the largest quota
        return con.execute(f"""SELECT s.model_id, s.partition_date, s.sample_rank, s.feature, s.number, s.category
                               FROM {SAMPLES} AS s JOIN _window_quotas AS q
                                 ON s.model_id = q.model_id AND s.partition_date = q.partition_date
                               WHERE s.partition_date IN (SELECT unnest(?::DATE[])) AND s.sample_rank < ?
                                 AND s.sample_rank < q.quota
                               ORDER BY s.model_id, s.partition_date, s.sample_rank, s.feature""",
                           [sorted({d for by_day in quotas.values() for d in by_day}), int(picks.quota.max())]).df()
    finally:
        con.unregister("_window_quotas")


def sample_frame(long: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    """One model's long sample rows as the core reads a day: a row per sampled row (day, rank order), a column
    per feature (numbers as float, categories as text; missing where a feature was not stored). `long` in
    `read_window_samples`' order."""
    wide = _reshaped(long, specs)
    return wide if wide is not None else _reindexed(long, specs)


def _reshaped(long: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame | None:
    """`sample_frame` as a reshape, when every sampled row has one row per stored feature, in the same order (a
    sample as `multivariate.logic.day_sample` writes it); None otherwise. A reshape, not an index per feature: the
    window's inputs are prepared here while the workers judge (the index was most of the step's own time)."""
    features = long.feature.to_numpy(object)
    k = len(pd.unique(features))
    if not k or len(features) % k:
        return None
    grid = features.reshape(-1, k)
    days = long.partition_date.to_numpy().reshape(-1, k)
    ranks = long.sample_rank.to_numpy().reshape(-1, k)
    if not ((grid == grid[0]).all() and (days == days[:, :1]).all() and (ranks == ranks[:, :1]).all()):
        return None
    day, rank = days[:, 0], ranks[:, 0]
    if not ((day[1:] > day[:-1]) | ((day[1:] == day[:-1]) & (rank[1:] > rank[:-1]))).all():
        return None  # a sampled row twice, or out of order: the index says so
    at = {name: j for j, name in enumerate(grid[0])}
    numbers = pd.to_numeric(long.number, errors="coerce").to_numpy(float).reshape(-1, k)
    categories = long.category.astype(object).to_numpy().reshape(-1, k)
    n, columns = len(grid), {}
    for f in specs:
        j = at.get(f.name)
        if f.kind == "categorical":
            columns[f.name] = categories[:, j] if j is not None else np.full(n, None, dtype=object)
        else:
            columns[f.name] = numbers[:, j] if j is not None else np.full(n, np.nan)
    return pd.DataFrame(columns, index=range(n))


def _reindexed(long: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    """`sample_frame` of any long rows (a feature missing on some sampled rows): each feature reindexed."""
    index = pd.MultiIndex.from_frame(long[["partition_date", "sample_rank"]].drop_duplicates()
                                     .sort_values(["partition_date", "sample_rank"]))
    by_feature = dict(tuple(long.groupby("feature", sort=False)))  # one pass, not a comparison per feature
    columns = {}
    for f in specs:
        part = by_feature.get(f.name, long.iloc[:0]).set_index(["partition_date", "sample_rank"])
        if f.kind == "categorical":
            columns[f.name] = part["category"].reindex(index).astype(object).to_numpy()
        else:
            columns[f.name] = pd.to_numeric(part["number"].reindex(index), errors="coerce").to_numpy(float)
    return pd.DataFrame(columns, index=range(len(index)))


def window_seed(model_id: str, window: Window) -> int:
    return zlib.crc32(f"{model_id}:{window.key}".encode())


def multivariate_metrics(found: list[MV.MultivariateDrift], n_sampled: int) -> dict[str, float | None]:
    """A window's multivariate store metrics -> (value, reference_value) as the module docstring names them."""
    out: dict[str, float | None] = {SAMPLE_ROWS_METRIC: (float(n_sampled), None)}
    for r in found:
        name = MULTIVARIATE_PREFIX + r.method
        verdict = math.isfinite(r.statistic)
        out[name] = (_finite(r.statistic), _finite(r.threshold))
        out[f"{name}.drifted"] = (float(r.drifted) if verdict else None, None)
        if r.drifted:
            out.update({f"{name}.feature.{feature}": (_finite(v), None) for feature, v in r.top_features})
    return out


def multivariate_windows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, touched: list[Window],
                         days: list[dt.date], frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The store's multivariate rows of the touched windows that are closed (end on or before the run's last day),
    for the config's models with multivariate drift (`multivariate.logic.monitored`). A window holding one of the
    run's `days` is computed from the stored samples; one touched only by the late-label refresh keeps its stored
    rows (computed when missing). `frame`: the windows' other rows, whose `n_labelled` and `days_profiled` the
    multivariate rows repeat. Returns (rows, model id -> why a window has none)."""
    last_day, run = max(days), set(days)
    closed = [w for w in touched if w.end <= last_day]
    models = MVL.monitored(config)
    if not closed or not models:
        return pd.DataFrame(columns=STORE_COLUMNS), {}
    ids = [m.id for m in models]
    fresh = {w.key for w in closed if any(d in run for d in w.days())}
    stored = con.execute(f"""SELECT {', '.join(quote_ident(c) for c in STORE_COLUMNS)} FROM {STORE}
                             WHERE window_id IN (SELECT unnest(?::VARCHAR[])) AND model_version = ?
                               AND model_id IN (SELECT unnest(?::VARCHAR[])) AND coalesce(segment, '') = ''
                               AND starts_with(metric, ?)""",
                         [sorted({w.key for w in closed} | {previous(w).key for w in closed}), ALL_VERSIONS, ids,
                          MULTIVARIATE_PREFIX]).df()
    for c in ("window_start", "window_end"):  # dates, as the computed rows have them
        stored[c] = pd.to_datetime(stored[c]).dt.date
    have = set(zip(stored.model_id, stored.window_id, strict=True))
    todo = [(w, m) for w in sorted(closed, key=lambda w: (w.start, w.spec.name)) for m in models
            if w.key in fresh or (m.id, w.key) not in have]
    redone = {(m.id, w.key) for w, m in todo}
    keep = {w.key for w in closed} - fresh
    kept = stored[[k in keep and (m, k) not in redone
                   for m, k in zip(stored.model_id, stored.window_id, strict=True)]]
    values = {(r.model_id, r.window_id, r.metric): _finite(r.value) for r in stored.itertuples()}
    notes: dict[str, str] = {}
    rows: list[dict] = []
    if todo:
        profiled_rows = whole_model(frame)
        profiled_rows = profiled_rows[profiled_rows.model_version == ALL_VERSIONS] if len(profiled_rows) else frame
        figures = {(r.model_id, r.window_id): (r.n_labelled, r.days_profiled)
                   for r in profiled_rows.drop_duplicates(["model_id", "window_id"]).itertuples()}
        windows = {w.key: w for w, _ in todo}
        order = sorted(windows, key=lambda k: (windows[k].start, k))
        by_window: dict[str, list[dict]] = {key: [] for key in order}
        # MODELS_AT_ONCE models at a time: their fitted references and window samples (a model-window's sample
        # is up to 5,000 rows x its features, long) are what the step holds, never the fleet's
        for chunk in model_chunks(list({m.id: m for _, m in todo}.values())):  # the config's order
            fitted, missing = MVL.references(con, chunk)
            notes.update({m: f"no window multivariate drift: {why}" for m, why in missing.items()})
            mine = {m.id for m in chunk if m.id in fitted}
            chunk_todo = [(w, m) for w, m in todo if m.id in mine]
            counts = sample_counts(con, sorted(mine), sorted({d for w, _ in chunk_todo for d in w.days()}))
            for key in order:
                window_models = [m for w, m in chunk_todo if w.key == key]
                if window_models:
                    by_window[key] += window_rows(con, windows[key], window_models, fitted, counts, figures,
                                                  values, notes, last_day)
            del fitted
        rows = [row for key in order for row in by_window[key]]
    out = pd.DataFrame(rows, columns=STORE_COLUMNS)
    if len(kept):
        out = pd.concat([out, kept[STORE_COLUMNS]], ignore_index=True) if len(out) else kept[STORE_COLUMNS]
    return out, notes


def window_rows(con: duckdb.DuckDBPyConnection, window: Window, models: list[ModelConfig],
                fitted: dict[str, MV.MultivariateReference], counts: dict, figures: dict, values: dict,
                notes: dict[str, str], last_day: dt.date) -> list[dict]:
    """One window's multivariate store rows for these models (their samples read in one query). `values`
    (model, window, metric) -> value gives each row its previous window's value and takes this one's; a model
    whose window fails gets its note in `notes` and no rows."""
    quotas, n_rows = {}, {}
    for m in models:
        day_rows, kept_rows = counts.get(m.id, ({}, {}))
        mine = {d: day_rows[d] for d in window.days() if d in day_rows}
        quotas[m.id] = window_quotas(mine, kept_rows)
        n_rows[m.id] = sum(mine.values())
    long = read_window_samples(con, quotas)
    parts = dict(tuple(long.groupby("model_id", sort=False))) if len(long) else {}
    del long
    sampled = [m for m in models if m.id in parts]  # no sampled day in the window: no figures, like a day without rows

    def inputs(m: ModelConfig):
        return fitted[m.id], or_why(lambda: sample_frame(parts.pop(m.id), MVL.feature_specs(m))), \
            window_seed(m.id, window)

    rows: list[dict] = []
    # the domain classifier's trees hold the GIL: several models' windows at once in worker processes
    for m, (found, n_sampled) in zip(sampled, map_processes(judged_window, inputs, sampled,
                                                            preload=(__name__, "sklearn.ensemble"),
                                                            on_death=lambda m, why: (why, 0)), strict=True):
        if isinstance(found, str):
            notes[m.id] = f"window {window.key} multivariate drift could not be computed: {found}"
            continue
        labelled, profiled = figures.get((m.id, window.key), (0, len(quotas[m.id])))
        common = {**_common_multivariate(m, window, n_rows[m.id], last_day), "n_labelled": labelled,
                  "days_profiled": profiled}
        before = previous(window).key
        for metric, (value, reference) in multivariate_metrics(found, n_sampled).items():
            values[(m.id, window.key, metric)] = value
            rows.append({**common, "metric": metric, "value": value, "reference_value": reference,
                         "previous_value": values.get((m.id, before, metric))})
    return rows


def judged_window(ref: MV.MultivariateReference, sample: pd.DataFrame | str, seed: int
                  ) -> tuple[list[MV.MultivariateDrift] | str, int]:
    """`multivariate.logic.judged` of one model-window's sample, or why not (a one-line error; a transient one is
    raised), and the sample's rows. Pure: runs in a worker process for a fleet (`map_processes`)."""
    if isinstance(sample, str):
        return sample, 0
    return or_why(lambda: MVL.judged(ref, sample, seed)), len(sample)


def multivariate_drifted(frame: pd.DataFrame) -> int:
    """How many (model, window) pairs of the store rows have a multivariate statistic over its threshold."""
    if not len(frame):
        return 0
    flagged = frame[frame.metric.str.startswith(MULTIVARIATE_PREFIX) & frame.metric.str.endswith(".drifted")
                    & (frame.value == 1.0)]
    return int(flagged[["model_id", "window_id"]].drop_duplicates().shape[0])


def _common_multivariate(model: ModelConfig, window: Window, n_rows: int, last_day: dt.date) -> dict:
    return {"window_id": window.key, "window_name": window.spec.name, "window_kind": window.spec.kind,
            "window_start": window.start, "window_end": window.end, "model_id": model.id,
            "model_version": ALL_VERSIONS, "n_rows": n_rows, "complete": window.end <= last_day, "segment": WHOLE,
            "reference_source": "model"}


# ---------------------------------------------------------------------------------------------------------------
# What the asset shows and the reports per closed window


def whole_model(frame: pd.DataFrame) -> pd.DataFrame:
    """The whole model's store rows (segment '' or, written before segments, NULL)."""
    if "segment" not in frame or not len(frame):
        return frame
    return frame[frame.segment.fillna(WHOLE) == WHOLE]


def latest_windows(frame: pd.DataFrame, config: MonitorConfig) -> pd.DataFrame:
    """Per model and window name, the latest window (every version together): its main metric against the
    reference and the previous window, and the feature that drifted most (Jensen-Shannon)."""
    frame = whole_model(frame)
    if not len(frame):
        return pd.DataFrame()
    main = {m.id: m.main_metric for m in config.models}
    f = frame[frame.model_version == ALL_VERSIONS]
    out = []
    for (model_id, name), part in f.groupby(["model_id", "window_name"], sort=True):
        last = part[part.window_start == part.window_start.max()]
        metric = main.get(model_id, "")
        row = last[last.metric == metric]
        js = last[last.metric.str.endswith(".jensenshannon")].sort_values("value", ascending=False)
        first = last.iloc[0]
        out.append({"model_id": model_id, "window": name, "start": str(first.window_start),
                    "end": str(first.window_end), "complete": bool(first.complete), "n_rows": int(first.n_rows),
                    "n_labelled": int(first.n_labelled), "metric": metric,
                    "value": row.value.iloc[0] if len(row) else None,
                    "reference": row.reference_value.iloc[0] if len(row) else None,
                    "previous": row.previous_value.iloc[0] if len(row) else None,
                    "most_drifted": (f"{js.metric.iloc[0].split('.')[1]} ({js.value.iloc[0]:.3g})"
                                     if len(js) and pd.notna(js.value.iloc[0]) else None)})
    return pd.DataFrame(out)


REPORT_FOLDER = "evaluation"
WINDOW_CHECK = EVALUATION_WINDOW_CHECK  # the check on evaluation_store (severity WARN)
WINDOW_CHECK_SEVERITY = "WARN"


def window_label(window: Window) -> str:
    """How a message names a window: 'week 2026-10-19..10-25' (the year once when both days share it)."""
    end = window.end.strftime("%m-%d") if window.end.year == window.start.year else window.end.isoformat()
    return f"{window.spec.name} {window.start.isoformat()}..{end}"


def report_path(config: MonitorConfig, model_id: str, window: Window, ext: str = "html") -> Path:
    """Where the window's report for this model is written."""
    return Path(config.reports_dir) / REPORT_FOLDER / model_id / f"{window.spec.name}_{window.start.isoformat()}.{ext}"


@dataclass(frozen=True)
class Warned:
    """One thing that warned on a window: which check family, what it saw, its value against its threshold."""

    kind: str  # performance | drift | fairness | multivariate | segment
    text: str
    value: float | None
    threshold: float | None


def window_warnings(part: pd.DataFrame, model: ModelConfig, config: MonitorConfig) -> list[Warned]:
    """What warns on one model's window, from its store rows (every version together): the main metric below
    `min_metric_ratio` of the reference's (judged from MIN_LABELLED labelled rows, as the daily check), features
    whose window drift is over their threshold (`drift.<f>.drifted`, decided as the daily drift decides),
    disparities beyond the configured bounds that are unlikely to be chance (judged against the reference as the
    daily fairness checks are, with the config's tolerance, floor and ceiling), and multivariate drift over its
    calibrated threshold (`multivariate.<method>.drifted`)."""
    values = dict(zip(part.metric, part.value, strict=False))
    refs = dict(zip(part.metric, part.reference_value, strict=False))
    n_labelled = int(part.n_labelled.iloc[0]) if len(part) else 0
    t = model.thresholds
    out = []
    metric = model.main_metric
    share = share_of_baseline(metric, _finite(refs.get(metric)), _finite(values.get(metric)))
    if share is not None and n_labelled >= MIN_LABELLED and share < t.min_metric_ratio:
        out.append(Warned("performance", f"{metric} {fmt_num(values[metric])} is {fmt_pct(share)} of the "
                                          f"reference's {fmt_num(refs[metric])} (alert below "
                                          f"{fmt_pct(t.min_metric_ratio)}; {n_labelled:,} labelled rows)",
                           share, t.min_metric_ratio))
    drifted = sorted(((m.split(".")[1], values.get(f"drift.{m.split('.')[1]}.evidence")) for m, v in values.items()
                      if m.startswith("drift.") and m.endswith(".drifted") and v == 1.0),
                     key=lambda fv: (-(_finite(fv[1]) or 0.0), fv[0]))
    if drifted:
        names = ", ".join(f"{f} ({fmt_num(e)}x its threshold)" for f, e in drifted[:5])
        more = f" and {plural(len(drifted) - 5, 'more')}" if len(drifted) > 5 else ""
        out.append(Warned("drift", f"{plural(len(drifted), 'feature')} drifted past the threshold: {names}{more}",
                           _finite(drifted[0][1]), 1.0))
    out += _fairness_warnings(values, refs, model, config)
    out += _multivariate_warnings(values, refs, part)
    return out


def _multivariate_warnings(values: dict, refs: dict, part: pd.DataFrame) -> list[Warned]:
    """A window whose multivariate statistic reached its threshold (`multivariate.<method>.drifted` 1), as the
    daily `multivariate_drift_within_threshold` judges a day: the method, statistic against threshold, the rows
    compared and the features that carried it."""
    out = []
    for method in MULTIVARIATE_METHODS:
        name = MULTIVARIATE_PREFIX + method
        if values.get(f"{name}.drifted") != 1.0:
            continue
        value, threshold = _finite(values.get(name)), _finite(refs.get(name))
        prefix = f"{name}.feature."
        features = sorted(((m[len(prefix):], _finite(v) or 0.0) for m, v in values.items() if m.startswith(prefix)),
                          key=lambda fv: (-fv[1], fv[0]))
        rows = part[part.metric == name].n_rows
        sampled = _finite(values.get(SAMPLE_ROWS_METRIC))
        named = f"; features: {', '.join(f'{f} ({v:.3g})' for f, v in features)}" if features else ""
        out.append(Warned("multivariate", f"the features go together unlike the reference: {method} "
                                           f"{fmt_num(value)} >= threshold {fmt_num(threshold)} on "
                                           f"{int(sampled or 0):,} of the window's {int(rows.iloc[0]) if len(rows) else 0:,} "
                                           f"rows{named}", value, threshold))
    return out


def _fairness_warnings(values: dict, refs: dict, model: ModelConfig, config: MonitorConfig) -> list[Warned]:
    t, out = model.thresholds, []
    against = config.fairness_baseline == "reference"
    for metric in sorted(values):
        if not metric.startswith("fairness."):
            continue
        attribute, name = metric.split(".")[1], metric.split(".")[2]
        value, ref = _finite(values[metric]), _finite(refs.get(metric))
        if name == "demographic_parity_ratio":
            p, bound, worse = _finite(values.get(f"fairness.{attribute}.demographic_parity_p_value")), \
                t.demographic_parity_ratio, "below"
            beyond = value is not None and (value < config.fairness_floor_ratio or value < bound and not (
                against and ref is not None and value >= ref - config.fairness_tolerance))
        elif name == "equalized_odds_difference":
            p, bound, worse = _finite(values.get(f"fairness.{attribute}.equalized_odds_p_value")), \
                t.equalized_odds_difference, "above"
            beyond = value is not None and (value > config.fairness_ceiling_odds or value > bound and not (
                against and ref is not None and value <= ref + config.fairness_tolerance))
        else:
            continue
        if beyond and p is not None and p < FAIRNESS_MAX_P:
            out.append(Warned("fairness", f"{attribute}: {name.replace('_', ' ')} {fmt_num(value)} {worse} "
                                           f"{fmt_num(bound)} ({fmt_p(p)}; reference {fmt_num(ref)})", value, bound))
    return out


SEGMENT_ALPHA = 0.01  # a window's segments' shortfall p-values after Benjamini-Hochberg (as segments.logic.ALPHA)


@dataclass(frozen=True)
class SegmentVerdict:
    """One segment of a window (every version together): its main metric against the floor (`min_metric_ratio` x
    the segment's reference value; lower-is-better: (2 - ratio) x) with the one-sided p-value of a shortfall
    beyond sampling error and that p adjusted across the window's tested segments, and its drifted features
    (feature, evidence) as the store's family-adjusted verdict has them."""

    segment: str
    n_rows: int
    n_labelled: int
    value: float | None
    reference: float | None
    floor: float | None
    p_value: float | None
    p_adjusted: float | None
    drifted: tuple[tuple[str, float], ...]

    @property
    def below_floor(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < SEGMENT_ALPHA

    @property
    def failed(self) -> bool:
        return self.below_floor or bool(self.drifted)


def segment_verdicts(part: pd.DataFrame, model: ModelConfig) -> list[SegmentVerdict]:
    """A window's segments judged from their store rows (one model, one window, every version together), as the
    daily segment performance judges a day (segments.logic.judge): a segment with at least `segments.min_rows`
    labelled rows is tested, z = (floor - value) / se with the metric's standard error at its labelled rows
    (`stats.performance.metric_standard_error`), the p-values adjusted together (Benjamini-Hochberg); its drift is
    the store's `drift.<f>.drifted` (already adjusted across the window's segments and features)."""
    if "segment" not in part or not len(part):
        return []
    part = part[part.segment.fillna(WHOLE) != WHOLE]
    metric, ratio, min_rows = model.main_metric, model.thresholds.min_metric_ratio, model.segments.min_rows
    higher = METRIC_DIRECTION.get(metric, HIGHER) == HIGHER
    found, ps = [], []
    for segment, rows in part.groupby("segment", sort=True):
        values = dict(zip(rows.metric, rows.value, strict=False))
        refs = dict(zip(rows.metric, rows.reference_value, strict=False))
        value, reference = _finite(values.get(metric)), _finite(refs.get(metric))
        n_labelled = int(rows.n_labelled.iloc[0])
        floor = None if reference is None else metric_floor(metric, reference, ratio)
        p = None
        if value is not None and floor is not None and n_labelled >= min_rows:
            se = metric_standard_error(metric, value, n_labelled, _finite(values.get("positive_rate")),
                                       _finite(values.get("predicted_positive_rate")))
            if se > 0:
                p = float(stats.norm.sf(((floor - value) if higher else (value - floor)) / se))
        drifted = sorted(((m.split(".")[1], _finite(values.get(m.replace(".drifted", ".evidence"))) or 0.0)
                          for m, v in values.items() if m.startswith("drift.") and m.endswith(".drifted")
                          and v == 1.0), key=lambda fe: (-fe[1], fe[0]))
        found.append((str(segment), int(rows.n_rows.iloc[0]), n_labelled, value, reference, floor, p,
                      tuple(drifted)))
        ps.append(math.nan if p is None else p)
    adjusted = benjamini_hochberg(ps) if ps else []
    return [SegmentVerdict(s, n, nl, v, r, f, p, _finite(q), d)
            for (s, n, nl, v, r, f, p, d), q in zip(found, adjusted, strict=True)]


def segment_warnings(part: pd.DataFrame, model: ModelConfig) -> list[Warned]:
    """One Warned per failing segment of a window (`segment_verdicts`), the most significant shortfall first, then
    drift: the segment as the store spells it and what failed."""
    out = []
    verdicts = [v for v in segment_verdicts(part, model) if v.failed]
    for v in sorted(verdicts, key=lambda v: (not v.below_floor, v.p_adjusted if v.below_floor else 0.0,
                                             -(v.drifted[0][1] if v.drifted else 0.0), v.segment)):
        what = []
        if v.below_floor:
            what.append(f"{model.main_metric} {fmt_num(v.value)} below its floor {fmt_num(v.floor)} "
                        f"({fmt_pct(model.thresholds.min_metric_ratio)} of its reference {fmt_num(v.reference)}; "
                        f"adjusted {fmt_p(v.p_adjusted)}; {v.n_labelled:,} labelled rows)")
        if v.drifted:
            names = ", ".join(f"{f} ({fmt_num(e)}x its threshold)" for f, e in v.drifted[:5])
            more = f" and {plural(len(v.drifted) - 5, 'more')}" if len(v.drifted) > 5 else ""
            what.append(f"{plural(len(v.drifted), 'feature')} drifted: {names}{more}")
        out.append(Warned("segment", f"segment {v.segment}: " + "; ".join(what),
                          v.value if v.below_floor else v.drifted[0][1], v.floor if v.below_floor else 1.0))
    return out


RANKER_ALPHA = 0.05  # a ranker window's main metric below its floor, one-sided (as ranking.logic.ALPHA)
CONCENTRATION = "popularity_concentration"
RANKER_SE = ".standard_error"  # suffix of the main metric's window standard error (ranking.windows.STANDARD_ERROR)


def ranker_floor(ranker: RankerConfig, reference: float | None) -> float | None:
    """A ranker's main metric floor: `min_metric_ratio` x the reference's value (the concentration, lower is
    better: reference / ratio); None without a reference or a ratio."""
    ratio = ranker.thresholds.min_metric_ratio
    if reference is None or not ratio:
        return None
    return reference / ratio if ranker.main_metric == CONCENTRATION else reference * ratio


def ranker_window_warnings(part: pd.DataFrame, ranker: RankerConfig, concentration_ratio: float) -> list[Warned]:
    """What warns on a ranker's window (its store rows, every version together): the main metric below
    `min_metric_ratio` x its reference value (lower-is-better: reference / ratio) beyond sampling error, one-sided
    at RANKER_ALPHA with the window's standard error over its requests (`<metric>.standard_error`, merged exactly
    from the days: ranking.windows); and the popularity concentration above `concentration_ratio` x the reference's
    (`evaluation.concentration_ratio`)."""
    values = dict(zip(part.metric, part.value, strict=False))
    refs = dict(zip(part.metric, part.reference_value, strict=False))
    metric, ratio, out = ranker.main_metric, ranker.thresholds.min_metric_ratio, []
    value, reference = _finite(values.get(metric)), _finite(refs.get(metric))
    se = _finite(values.get(metric + RANKER_SE))
    floor = ranker_floor(ranker, reference)
    if value is not None and floor is not None and se is not None:
        p = below_floor_p_value(value, se, floor, higher_is_better=metric != CONCENTRATION)
        if p < RANKER_ALPHA:
            out.append(Warned("performance", f"{metric} {fmt_num(value)} ± {fmt_num(2 * se)} beyond its floor "
                                              f"{fmt_num(floor)} ({fmt_pct(ratio)} of the reference's "
                                              f"{fmt_num(reference)}; one-sided {fmt_p(p)}; "
                                              f"{int(part.n_rows.iloc[0]):,} requests)", value, floor))
    value, reference = _finite(values.get(CONCENTRATION)), _finite(refs.get(CONCENTRATION))
    if value is not None and reference and value > concentration_ratio * reference:
        out.append(Warned("popularity", f"{CONCENTRATION} {fmt_num(value)} is {value / reference:.2f}x the "
                                         f"reference's {fmt_num(reference)} (alert above {concentration_ratio:g}x)",
                          value, concentration_ratio * reference))
    return out


def window_failures(frame: pd.DataFrame, config: MonitorConfig, windows: list[Window]) -> list[dict]:
    """The check's failures for these (closed) windows: one per model and closing day, in the shape the alert
    sensor reads (partition_date, model_id, check_name, severity, value, threshold, message, details). The
    message names each window and what warned (the whole model's checks, then each failing segment:
    `segment_warnings`; a ranker's: `ranker_window_warnings`), and points to its report; `details.windows`
    lists them."""
    if not settings(config).alerts or not len(frame):
        return []
    frame = frame[frame.model_version == ALL_VERSIONS]
    segments = frame[frame.segment.fillna(WHOLE) != WHOLE] if "segment" in frame else frame.iloc[:0]
    by_key = {key: part for key, part in whole_model(frame).groupby(["model_id", "window_id"], sort=False)}
    by_segments = {key: part for key, part in segments.groupby(["model_id", "window_id"], sort=False)}
    found: dict[tuple[str, dt.date], list] = {}
    for window in sorted(windows, key=lambda w: (w.end, w.spec.name)):
        for model in config.models:
            part = by_key.get((model.id, window.key))
            warned = window_warnings(part, model, config) if part is not None else []
            if (model.id, window.key) in by_segments:
                warned += segment_warnings(by_segments[(model.id, window.key)], model)
            if warned:
                found.setdefault((model.id, window.end), []).append((window, warned))
        for ranker in config.rankers:
            part = by_key.get((ranker.id, window.key))
            warned = (ranker_window_warnings(part, ranker, settings(config).concentration_ratio)
                      if part is not None else [])
            if warned:
                found.setdefault((ranker.id, window.end), []).append((window, warned))
    out = []
    for (model_id, day), items in sorted(found.items()):
        first = items[0][1][0]
        text = " | ".join(f"{window_label(w)}: " + "; ".join(x.text for x in warned)
                          + f"; report: {report_path(config, model_id, w)}" for w, warned in items)
        out.append({"partition_date": day, "model_id": model_id, "check_name": WINDOW_CHECK,
                    "severity": WINDOW_CHECK_SEVERITY, "value": first.value, "threshold": first.threshold,
                    "message": text, "details": {"windows": [
                        {"window_id": w.key, "window": window_label(w), "report": str(report_path(config, model_id, w)),
                         "warned": [vars(x) for x in warned]} for w, warned in items]}})
    return out


def judged_counts(frame: pd.DataFrame, windows: list[Window], days: list[dt.date]) -> dict[dt.date, int]:
    """Per day, how many (model, window) pairs closing on it were judged."""
    frame = whole_model(frame)
    if not len(frame):
        return {}
    f = frame[frame.model_version == ALL_VERSIONS]
    pairs = set(zip(f.model_id, f.window_id, strict=True))
    return {day: sum(1 for w in windows if w.end == day for (_, k) in pairs if k == w.key) for day in days}


def closed_windows(config: MonitorConfig, days: list[dt.date]) -> list[Window]:
    """The configured windows that close on one of `days` (end on it)."""
    return [w for w in windows_touching(settings(config).windows, sorted(set(days))) if w.end in set(days)]


def read_windows(con: duckdb.DuckDBPyConnection, windows: list[Window], model_ids: list[str]) -> pd.DataFrame:
    """The store's rows of these windows (every version together) for these models, their segments' included."""
    if not windows:
        return pd.DataFrame(columns=STORE_COLUMNS)
    return con.execute(f"""SELECT {', '.join(quote_ident(c) for c in STORE_COLUMNS)} FROM {STORE}
                           WHERE window_id IN (SELECT unnest(?::VARCHAR[])) AND model_version = ?
                           AND model_id IN (SELECT unnest(?::VARCHAR[]))""",
                       [[w.key for w in windows], ALL_VERSIONS, model_ids]).df()


def report_context(frame: pd.DataFrame, model: ModelConfig, window: Window, top: int = 5,
                   config: MonitorConfig | None = None, pictures: pd.DataFrame | None = None) -> dict | None:
    """What a window's report says for one model (every version together), or None without rows: the figures,
    what warned (with `config`: `window_warnings`, then the failing segments'), the pictures of its drifted features and its segments'
    main metric (`segment_summary`)."""
    segments = segment_summary(frame, model, window, top)
    mine = frame[(frame.model_id == model.id) & (frame.window_id == window.key) & (frame.model_version == ALL_VERSIONS)]
    part = whole_model(mine)
    if not len(part):
        return None
    frame = whole_model(frame)
    warned = (window_warnings(part, model, config) + segment_warnings(mine, model)
              if config is not None and settings(config).alerts else [])
    drawn = []
    if pictures is not None and len(pictures):
        mine = pictures[(pictures.model_id == model.id) & (pictures.window_id == window.key)]
        for r in mine.sort_values("evidence", ascending=False).itertuples():
            buckets = Comparison.buckets_from_json(r.bins)
            largest = max([b.reference_share for b in buckets] + [b.current_share for b in buckets] + [1e-12])
            drawn.append({"feature": r.feature, "method": r.method, "statistic": _fmt(r.statistic),
                          "threshold": _fmt(r.threshold), "evidence": _fmt(r.evidence),
                          "n_current": int(r.n_current), "n_reference": int(r.n_reference),
                          # bar widths relative to the largest share, so a 5% bin is not a sliver
                          "buckets": [{"label": b.label, "reference_width": round(100 * b.reference_share / largest, 1),
                                       "current_width": round(100 * b.current_share / largest, 1),
                                       "reference_pct": fmt_pct(b.reference_share),
                                       "current_pct": fmt_pct(b.current_share)} for b in buckets]})
    perf = part[~part.metric.str.contains(".", regex=False)]
    drift = part[part.metric.str.endswith(".jensenshannon")].sort_values("value", ascending=False).head(top)
    fair = part[part.metric.str.startswith("fairness.")]

    def rows(p, name=lambda m: m):
        return [{"metric": name(r.metric), "value": _fmt(r.value), "reference": _fmt(r.reference_value),
                 "previous": _fmt(r.previous_value)} for r in p.itertuples()]

    first = part.iloc[0]
    return {"model": model.id, "task": model.task, "main_metric": model.main_metric, "window": window.spec.name,
            "start": window.start.isoformat(), "end": window.end.isoformat(), "n_rows": int(first.n_rows),
            "n_labelled": int(first.n_labelled), "days_profiled": int(first.days_profiled),
            "versions": sorted(v for v in frame[(frame.model_id == model.id) & (frame.window_id == window.key)]
                               .model_version.unique() if v and v != ALL_VERSIONS),
            "performance": rows(perf), "drift": rows(drift, lambda m: m.split(".")[1]),
            "fairness": rows(fair[~fair.metric.str.endswith("_p_value")]),
            "warned": [vars(w) for w in warned], "warned_kinds": sorted({w.kind for w in warned}),
            "check": WINDOW_CHECK, "pictures": drawn, "segments": segments}


def segment_summary(frame: pd.DataFrame, model: ModelConfig, window: Window, top: int = 5) -> list[dict]:
    """A window's segments for its report: the main metric beside the segment's reference value and the
    segment's verdict (`segment_verdicts`); the failing segments first, then the furthest below the reference
    (up to 4 x `top` in all), then those with too few rows to measure."""
    if "segment" not in frame or not len(frame):
        return []
    part = frame[(frame.model_id == model.id) & (frame.window_id == window.key) & (frame.model_version == ALL_VERSIONS)
                 & (frame.segment.fillna(WHOLE) != WHOLE)]
    verdicts = {v.segment: v for v in segment_verdicts(part, model)}
    out = []
    for segment, rows in part.groupby("segment", sort=True):
        v = verdicts.get(str(segment))
        said = ([f"below its floor {_fmt(v.floor)} (adjusted {fmt_p(v.p_adjusted)})"] if v and v.below_floor else []) \
            + ([f"drifted: {', '.join(f for f, _ in v.drifted)}"] if v and v.drifted else [])
        main = rows[rows.metric == model.main_metric]
        first = rows.iloc[0]
        value = _finite(main.value.iloc[0]) if len(main) else None
        ref = _finite(main.reference_value.iloc[0]) if len(main) else None
        out.append({"segment": segment, "n_rows": int(first.n_rows), "n_labelled": int(first.n_labelled),
                    "value": _fmt(value), "reference": _fmt(ref), "source": first.reference_source or "",
                    "previous": _fmt(_finite(main.previous_value.iloc[0])) if len(main) else "",
                    "share": share_of_baseline(model.main_metric, ref, value), "failed": bool(said),
                    "verdict": "; ".join(said)})
    failed = sorted((r for r in out if r["failed"]), key=lambda r: (r["share"] is None, r["share"] or 0.0,
                                                                    r["segment"]))
    measured = sorted((r for r in out if r["share"] is not None and not r["failed"]),
                      key=lambda r: (r["share"], r["segment"]))
    return (failed + measured + [r for r in out if r["share"] is None and not r["failed"]])[:4 * top]


RANKER_PER_REQUEST = ("mrr", "mean_loss")  # a ranker's per-request metrics besides those at each k


def ranker_report_context(frame: pd.DataFrame, ranker: RankerConfig, window: Window, config: MonitorConfig
                          ) -> dict | None:
    """What a ranker's window report says (its store rows, every version together), or None without rows: the
    main metric against its floor with the window's standard error (as `ranker_window_warnings` judges it), every
    per-request metric at each k, the catalogue figures with the popularity concentration's alert line
    (`evaluation.concentration_ratio` x the reference's), and what warned."""
    part = whole_model(frame[(frame.model_id == ranker.id) & (frame.window_id == window.key)
                             & (frame.model_version == ALL_VERSIONS)])
    if not len(part):
        return None
    by = part.set_index("metric")
    ratio = settings(config).concentration_ratio

    def figures(metric: str) -> dict:
        value, ref, before = (_finite(by[c].get(metric)) for c in ("value", "reference_value", "previous_value"))
        alert = ratio * ref if metric == CONCENTRATION and ref is not None else None
        return {"metric": metric, "value": _fmt(value), "reference": _fmt(ref), "previous": _fmt(before),
                "alert": _fmt(alert)}

    main = ranker.main_metric
    value, reference = _finite(by.value.get(main)), _finite(by.reference_value.get(main))
    se = _finite(by.value.get(main + RANKER_SE))
    floor = ranker_floor(ranker, reference)
    p = (below_floor_p_value(value, se, floor, higher_is_better=main != CONCENTRATION)
         if None not in (value, se, floor) else None)
    per_request = [m for m in (*(m for m in ranker.ranking.metrics if "_at_" in m), *RANKER_PER_REQUEST)
                   if m in by.index]
    catalogue = [m for m in by.index if m not in per_request and m != main + RANKER_SE and m != "label_coverage"]
    warned = ranker_window_warnings(part, ranker, ratio) if settings(config).alerts else []
    first = part.iloc[0]
    return {"model": ranker.id, "task": ranker.task, "main_metric": main, "window": window.spec.name,
            "start": window.start.isoformat(), "end": window.end.isoformat(), "n_requests": int(first.n_rows),
            "n_labelled": int(first.n_labelled), "days_profiled": int(first.days_profiled),
            "label_coverage": fmt_pct(_finite(by.value.get("label_coverage"))),
            "main": {**figures(main), "standard_error": _fmt(se), "floor": _fmt(floor),
                     "p_value": _fmt(p)},
            "min_metric_ratio": fmt_pct(ranker.thresholds.min_metric_ratio), "alpha": RANKER_ALPHA,
            "concentration_ratio": f"{ratio:g}", "per_request": [figures(m) for m in per_request],
            "catalogue": [figures(m) for m in sorted(catalogue)],
            "warned": [vars(w) for w in warned], "warned_kinds": sorted({w.kind for w in warned}),
            "check": WINDOW_CHECK}


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def write_reports(frame: pd.DataFrame, config: MonitorConfig, closed: list[Window],
                  pictures: pd.DataFrame | None = None, rankers: pd.DataFrame | None = None) -> list[Path]:
    """For each closed window, one markdown and one HTML report per model under `<reports>/evaluation/<model>/`,
    saying which checks warned and showing the drifted features' distributions; and per ranker with rows in
    `rankers` (its store rows of those windows: `read_windows`), its own (`ranker_report_context`)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             autoescape=lambda name: bool(name) and name.endswith(".html.j2"))
    written = []
    # each model-window's rows found once: filtering the fleet's frame per model cost O(models²) (a third of the
    # step at 200 models)
    rows_of = _by_model_window(frame)
    pictures_of = _by_model_window(pictures) if pictures is not None else {}
    for window in closed:
        contexts = [("window_report", report_context(rows_of.get((model.id, window.key), frame.iloc[:0]), model,
                                                     window, config=config,
                                                     pictures=pictures_of.get((model.id, window.key))))
                    for model in config.models]
        if rankers is not None and len(rankers):
            contexts += [("ranker_report", ranker_report_context(rankers, ranker, window, config))
                         for ranker in config.rankers]
        for template, context in contexts:
            if context is None:
                continue
            for ext in ("md", "html"):
                path = report_path(config, context["model"], window, ext)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(env.get_template(f"{template}.{ext}.j2").render(**context))
                written.append(path)
    return written


def _by_model_window(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """(model id, window id) -> that model-window's rows of a store (or pictures) frame."""
    if not len(frame):
        return {}
    return {key: part for key, part in frame.groupby(["model_id", "window_id"], sort=False)}


def day_figures(run: ProfileRun, day: dt.date) -> dict:
    """A day's profile figures for the UI: models profiled, rows, bytes per model-day, errors."""
    today = run.frame[pd.to_datetime(run.frame.partition_date).dt.date == day] if len(run.frame) else run.frame
    ok = today[today.error.isna()] if len(today) else today
    per_model = ok.groupby("model_id").bytes.sum() if len(ok) else pd.Series(dtype=float)  # segments included
    whole = ok[ok.segment.fillna(WHOLE) == WHOLE] if len(ok) else ok
    return {"models_profiled": int(ok.model_id.nunique()) if len(ok) else 0,
            "rows_profiled": int(whole.n_rows.sum()) if len(whole) else 0,
            "segment_profiles": int(len(ok) - len(whole)),
            "bytes_per_model_day": float(np.median(per_model)) if len(per_model) else None,
            "models_in_error": int(today.error.notna().sum()) if len(today) else 0}
