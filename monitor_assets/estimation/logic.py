"""Performance estimated before the labels arrive, per model and day: the reads and writes around
`stats.estimation`.

Each model's estimator is fitted once per reference version (and method, and scikit-learn version) and kept in
`monitoring.estimators`; each day's rows are then estimated from their scores (and features, for regressors).
Where labels have landed, the realized metric of the same rows and whether it fell inside the band are written
beside the estimate; the asset refreshes the `label_delay_days` before its days, as performance does.

A model with `segments:` is estimated per segment too (`monitoring.segment_estimated_performance`): each segment of
at least `segments.min_rows` rows of the day (rows, not labels) is the same estimator applied to those rows alone,
from the frame the day was read into (a reweighted estimator weighs the segment's rows against the whole
reference, as any day's). Its main metric is tested against the floor the segment performance check uses
(`segments.logic.judge`): one-sided, z = (floor - estimate) / the band's standard error, the p-values of a
model-day's segments adjusted together (Benjamini-Hochberg at `segments.logic.ALPHA`). A multiclass model's segments
are estimated and judged the same way (its main metric accuracy, f1_macro, f1_weighted or roc_auc, the reference
value from `segments.logic.reference_segments`' class codes); its band, hence the standard error it is tested with,
is the sampling error of the segment's labels alone (`stats.estimation.estimate_multiclass`: the calibration's own
error on the segment is not in it).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from monitor_assets.config import (
    CLASS_CODE_COLUMN,
    CLASS_PROBABILITIES_COLUMN,
    ModelConfig,
    MonitorConfig,
)
from monitor_assets.segments.logic import ALPHA as SEGMENT_ALPHA
from monitor_assets.segments.logic import reference_segments, segment_floors
from monitor_assets.stats import estimation as E
from monitor_assets.stats.metrics_spec import HIGHER, METRIC_DIRECTION
from monitor_assets.stats.multiple_testing import benjamini_hochberg
from monitor_assets.stats.performance import decision_class_sql, share_of_baseline
from monitor_assets.stats.reference import MIN_REFERENCE_ROWS
from monitor_assets.storage.fits import stored_or_fitted
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.reads import (
    DAY_COLUMN,
    feature_columns,
    held_models,
    latest_labels_sql,
    model_day_batches,
    model_feature_select,
    multiclass_reference_sql,
    reference_reader_sql,
    split_by_day,
)
from monitor_assets.storage.sql import SEGMENT_COLUMN, quote_ident, segment_key, segment_picks
from monitor_assets.storage.warehouse import lake_of, replace_partitions_from_frame

ESTIMATES = "monitoring.estimated_performance"
ESTIMATORS = "monitoring.estimators"
SEGMENT_ESTIMATES = "monitoring.segment_estimated_performance"
COLUMNS = [c for c in TABLES[ESTIMATES][0] if c != "computed_at"]
SEGMENT_COLUMNS = [c for c in TABLES[SEGMENT_ESTIMATES][0] if c != "computed_at"]
FIT_FORMAT = 5  # part of the fit key: a change of the estimator's layout refits every model once


def method_of(model: ModelConfig) -> str:
    """The estimator the model runs ('none' when off); `auto` resolves to the one that measured best."""
    return model.estimation.resolved(model.task)


def needs_features(method: str) -> bool:
    """The loss model reads the features; a reweighted method compares them with the reference's."""
    return method in (E.LOSS_MODEL, *E.REWEIGHTED)


def fit_key(model: ModelConfig, reference_version: str) -> str:
    """What a stored estimator was fitted from: a change of any refits it."""
    import sklearn

    return (f"{reference_version}:{method_of(model)}:{model.decision_threshold}:"
            f"{sklearn.__version__}:{FIT_FORMAT}")


def _feature_arrays(frame: pd.DataFrame, model: ModelConfig,
                    categories: dict[int, list[str]] | None) -> tuple[np.ndarray, list[bool], dict[int, list[str]]]:
    """The model's features as a float matrix: numeric as they are, categories as codes into the reference's."""
    if not model.features:
        return np.empty((len(frame), 0)), [], {}
    columns, flags, cats = [], [], dict(categories or {})
    for i, f in enumerate(model.features):
        values = frame[f.name]
        if f.type == "categorical":
            if categories is None:
                cats[i] = sorted({str(v) for v in values.dropna()})[:250]
            columns.append(E.encode_categories(values.where(values.notna(), None), cats[i]))
            flags.append(True)
        else:
            columns.append(pd.to_numeric(values, errors="coerce").to_numpy(float))
            flags.append(False)
    return np.column_stack(columns), flags, cats


def reference_frame(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> pd.DataFrame:
    """The reference rows an estimator is fitted on: score, label, logged decision (1/0/NULL), features; rows
    whose score or label is not a finite number are left out (as the reference profile does)."""
    fields = model.reference_fields
    score, label = quote_ident(fields["score"]), quote_ident(fields["label"])
    decision = (decision_class_sql(f"{quote_ident(fields['decision'])}::VARCHAR") if fields.get("decision")
                else "NULL::INT")
    features = "".join(f", {quote_ident(f.name)}" for f in model.features) if needs_features(method_of(model)) else ""
    return con.execute(f"""
        SELECT * FROM (SELECT TRY_CAST({score} AS DOUBLE) AS score, TRY_CAST({label} AS DOUBLE) AS label,
                              {decision} AS decision{features}
                       FROM {reference_reader_sql(model.reference_path)})
        WHERE isfinite(score) AND isfinite(label)""").df()


def fit_estimator(model: ModelConfig, reference: pd.DataFrame) -> E.ConfidenceEstimator | E.LossEstimator:
    """The model's estimator fitted on its reference rows."""
    method = method_of(model)
    reweight = method in E.REWEIGHTED
    x, flags, cats = (_feature_arrays(reference, model, None) if needs_features(method)
                      else (None, None, {}))
    if method in (E.CONFIDENCE, E.CONFIDENCE_REWEIGHTED):
        fitted = E.ConfidenceEstimator.fit(reference.score.to_numpy(), reference.label.to_numpy(),
                                           reference.decision.to_numpy(float), threshold=model.decision_threshold,
                                           features=x, categorical=flags, reweight=reweight)
    else:
        fitted = E.LossEstimator.fit(x, reference.score.to_numpy(), reference.label.to_numpy(), categorical=flags,
                                     reweight=reweight)
    fitted.categories = cats
    return fitted


def multiclass_reference_frame(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> pd.DataFrame:
    """A multiclass reference's rows with a known label and valid logged probabilities: label code, predicted
    code, probabilities (`storage.reads.multiclass_reference_sql`'s reading)."""
    return con.execute(f"""
        SELECT __label AS label, __predicted AS code, __proba AS proba FROM ({multiclass_reference_sql(model)})
        WHERE __proba IS NOT NULL""").df().dropna(subset=["label", "code"])


def fit_multiclass(con: duckdb.DuckDBPyConnection, model: ModelConfig):
    reference = multiclass_reference_frame(con, model)
    if len(reference) < MIN_REFERENCE_ROWS:
        return (f"the reference has {len(reference)} rows with a known label and valid probabilities, "
                f"at least {MIN_REFERENCE_ROWS} are needed")
    calibration = E.fit_multiclass_calibration(np.array(reference.proba.tolist(), dtype=float),
                                               reference.label.to_numpy(np.int64))
    fitted = E.MulticlassEstimator(calibration)
    return fitted, E.to_text(fitted), {"method": method_of(model), "reference_rows": len(reference)}


def estimators(con: duckdb.DuckDBPyConnection, models: list[ModelConfig]) -> tuple[dict, dict[str, str]]:
    """Each model's fitted estimator: the stored one when its fit key still holds, else fitted now and stored.
    Returns (model id -> estimator, model id -> why it has none)."""
    def fit(model: ModelConfig):
        if model.is_multiclass:
            return fit_multiclass(con, model)
        reference = reference_frame(con, model)
        if model.is_classifier and reference.label.nunique() < 2:
            return "the reference has one class only"
        fitted = fit_estimator(model, reference)
        return fitted, E.to_text(fitted), {"method": method_of(model), "reference_rows": len(reference)}

    def load(model: ModelConfig, text: str):
        return E.from_text(text)

    return stored_or_fitted(con, ESTIMATORS, "estimator", models, fit_key, load, lambda todo: map(fit, todo))


def day_frames(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
               days: list[dt.date]) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    """Each of `days` with its served, scored rows (score, logged decision 1/0/NULL, version, latest label,
    features, each row's segment per segmentation (`segment_key`); a multiclass model's rows with logged
    probabilities), DAYS_PER_READ days a query."""
    lake = lake_of(con)
    if not days or not lake.has_table(lake.model_path(model.id)):
        for day in days:
            yield day, pd.DataFrame()
        return
    table = lake.model_relation(con, model.id)
    if model.is_multiclass:
        picks = (f"p.{CLASS_PROBABILITIES_COLUMN} AS proba, p.{CLASS_CODE_COLUMN} AS code, p.model_version, "
                 f"l.label{_segment_picks(config, model)}", f"p.{CLASS_PROBABILITIES_COLUMN} IS NOT NULL")
    else:
        logged = config.predictions.fields.get("decision")
        decision = decision_class_sql("p.decision") if logged else "NULL::INT"
        features = (f", {model_feature_select(config, model.id, 'p.')}"
                    if needs_features(method_of(model)) and model.features else "")
        picks = (f"p.score, {decision} AS decision, p.model_version, l.label{features}{_segment_picks(config, model)}",
                 "isfinite(p.score)")
    for chunk in model_day_batches(con, model.id, days):
        frame = con.execute(f"""
            SELECT p.partition_date AS {DAY_COLUMN}, {picks[0]}
            FROM {table} AS p
            LEFT JOIN ({latest_labels_sql([model.id], since="$first")}) AS l USING (prediction_id)
            WHERE p.partition_date IN (SELECT unnest($days::DATE[])) AND p.model_id = $model AND p.is_ok
                  AND {picks[1]}
            -- in the order the log was written: the seeded samples and fits below draw rows by position, and a
            -- join's order varies (a re-run of the demo moved segment estimates by up to 0.07 before)
            ORDER BY p.partition_date, p.source_file, p.line_no, p.prediction_id""",
                           {"first": chunk[0], "days": chunk, "model": model.id}).df()
        yield from split_by_day(frame, chunk).items()



def segmented(model: ModelConfig) -> bool:
    """Estimated per segment as well: any model with `segments:` (binary, multiclass, regression)."""
    return bool(model.segments.by)


def _segment_picks(config: MonitorConfig, model: ModelConfig) -> str:
    """SELECT items naming each row's segment per segmentation, spelt as segment_performance spells them."""
    if not segmented(model):
        return ""
    stored = feature_columns(config)
    column_of = {c.name: f"p.{quote_ident(stored[(c.source, c.type)])}" for c in model.logged_columns}
    return "".join(f", {pick}" for pick in segment_picks(model.segments.by, column_of))


@dataclass
class DayRows:
    """A model-day's columns as arrays, taken from its frame once: its segments' estimates are these arrays'
    subsets (`take`), not frames filtered per segment (pandas' price per segment was most of the step)."""

    label: np.ndarray  # float, NaN where no label has landed
    versions: np.ndarray  # model_version, object
    score: np.ndarray | None = None  # binary and regression
    decision: np.ndarray | None = None  # binary: the logged decision, 1/0/NaN
    proba: np.ndarray | None = None  # multiclass: rows x classes
    code: np.ndarray | None = None  # multiclass: the predicted class's code
    features: np.ndarray | None = None  # the estimator's feature matrix, when it reads features

    @classmethod
    def of(cls, model: ModelConfig, estimator, frame: pd.DataFrame) -> DayRows:
        rows = cls(frame.label.to_numpy(float, na_value=np.nan), frame.model_version.to_numpy(object))
        if model.is_multiclass:
            rows.proba = np.array(frame.proba.tolist(), dtype=float)
            rows.code = frame.code.to_numpy(np.int64)
        else:
            rows.score = frame.score.to_numpy(float)
            if model.is_classifier:
                rows.decision = frame.decision.to_numpy(float, na_value=np.nan)
        if isinstance(estimator, E.LossEstimator) or getattr(estimator, "sample", None) is not None:
            rows.features = _feature_arrays(frame, model, estimator.categories)[0]
        return rows

    def __len__(self) -> int:
        return len(self.label)

    def take(self, at: np.ndarray) -> DayRows:
        pick = lambda a: a[at] if a is not None else None  # noqa: E731
        return DayRows(self.label[at], self.versions[at], pick(self.score), pick(self.decision), pick(self.proba),
                       pick(self.code), pick(self.features))


def _realized(model: ModelConfig, rows: DayRows) -> dict[str, float]:
    """The metrics of the labelled rows (NaN where there are none or the metric is undefined)."""
    labelled = ~np.isnan(rows.label)
    if not labelled.any():
        return {}
    y = rows.label[labelled]
    if model.is_multiclass:
        return E.realized_multiclass_metrics(y.astype(np.int64), rows.code[labelled], rows.proba[labelled])
    s = rows.score[labelled]
    if model.is_classifier:
        d = E.predicted_class(s, rows.decision[labelled], model.decision_threshold)
        return E.realized_classifier_metrics(y, d, s)
    error = y - s
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2)))}


def estimate_day(model: ModelConfig, estimator, frame: pd.DataFrame | DayRows, day: dt.date,
                 losses: dict[str, np.ndarray] | None = None) -> list[dict]:
    """The estimated metrics of one model-day (its frame, or its `DayRows`), with the realized ones where labels
    have landed. `losses`: the rows' predicted losses when already known (`LossEstimator.model_losses`)."""
    if not len(frame):
        return []
    rows = frame if isinstance(frame, DayRows) else DayRows.of(model, estimator, frame)
    metrics = model.estimated_metrics
    if isinstance(estimator, E.MulticlassEstimator):
        # sampling error only: the estimator's own error from reference chunks is not measured for multiclass yet
        found = E.estimate_multiclass(estimator.calibration, rows.proba, rows.code, metrics, seed=day.toordinal())
    elif isinstance(estimator, E.ConfidenceEstimator):
        found = estimator.estimate(rows.score, rows.decision, metrics, seed=day.toordinal(), features=rows.features)
    else:
        found = estimator.estimate(rows.features, rows.score, metrics, seed=day.toordinal(), losses=losses)
    realized = _realized(model, rows)
    n_labelled = int((~np.isnan(rows.label)).sum())
    versions = ",".join(sorted({str(v) for v in rows.versions[pd.notna(rows.versions)]}))
    out = []
    for e in found:
        r = realized.get(e.metric, math.nan)
        known = math.isfinite(r) and math.isfinite(e.lower)
        out.append({"partition_date": day, "model_id": model.id, "model_version": versions, "metric": e.metric,
                    "estimate": e.estimate, "lower": e.lower, "upper": e.upper, "n_rows": e.n_rows,
                    "method": e.method, "realized": r if math.isfinite(r) else None, "n_labelled": n_labelled,
                    "within_band": bool(e.lower <= r <= e.upper) if known else None})
    return out


def estimate_segments(model: ModelConfig, estimator, frame: pd.DataFrame, day: dt.date,
                      reference: pd.DataFrame, baseline: float | None, rows: DayRows | None = None) -> pd.DataFrame:
    """One model-day's estimates per segment of at least `segments.min_rows` rows: `estimate_day` on the
    segment's rows alone, judged by `judge_segment_estimates` (a multiclass band is sampling error only).
    `rows`: the day's `DayRows`, when already taken."""
    parts = []
    crosses = model.segments.by if segmented(model) and len(frame) else ()
    if crosses and rows is None:
        rows = DayRows.of(model, estimator, frame)
    # A regressor's loss models predict each row once a day, not once a segment: a segment's are its rows'.
    losses = (estimator.model_losses(rows.features, rows.score)
              if crosses and isinstance(estimator, E.LossEstimator) else None)
    for cross in crosses:
        key = segment_key(cross)
        for segment, at in sorted(frame.groupby(SEGMENT_COLUMN + key).indices.items()):
            if len(at) >= model.segments.min_rows:
                own = {loss: values[at] for loss, values in losses.items()} if losses is not None else None
                parts += [{**r, "segment_by": key, "segment": segment}
                          for r in estimate_day(model, estimator, rows.take(at), day, own)]
    if not parts:
        return pd.DataFrame(columns=SEGMENT_COLUMNS)
    return judge_segment_estimates(model, pd.DataFrame(parts), reference, baseline)


def judge_segment_estimates(model: ModelConfig, found: pd.DataFrame, reference: pd.DataFrame,
                            baseline: float | None) -> pd.DataFrame:
    """One model-day's segment estimates with, on the main metric's rows, the floor, the one-sided p-value of
    the estimate being below it (above, for a lower-is-better metric) with the band's standard error, the
    p-values adjusted across the model-day's segments (Benjamini-Hochberg) and `below_floor` (adjusted p < ALPHA)."""
    out = found.reindex(columns=SEGMENT_COLUMNS).reset_index(drop=True)
    main = np.flatnonzero(out.metric.to_numpy() == model.main_metric)
    source, below = np.full(len(out), None, dtype=object), np.full(len(out), None, dtype=object)
    reference_value, floor, p, adjusted = (np.full(len(out), math.nan) for _ in range(4))
    if len(main):
        m = out.iloc[main]
        floors = segment_floors(model, m, reference, baseline)
        reference_value[main] = [f[0] for f in floors]
        source[main] = [f[1] for f in floors]
        floor[main] = [f[2] for f in floors]
        se = E.band_standard_error(m.lower.to_numpy(float), m.upper.to_numpy(float))
        gap = floor[main] - m.estimate.to_numpy(float)
        z = gap if METRIC_DIRECTION[model.main_metric] == HIGHER else -gap
        with np.errstate(divide="ignore", invalid="ignore"):
            p[main] = np.where(np.isfinite(z) & (se > 0), stats.norm.sf(z / se), math.nan)
        adjusted[main] = benjamini_hochberg(p[main])
        below[main] = np.nan_to_num(adjusted[main], nan=1.0) < SEGMENT_ALPHA
    return out.assign(reference_value=reference_value, reference_source=source, floor=floor, p_value=p,
                      p_adjusted=adjusted, below_floor=below)


def _reference_segments(model: ModelConfig) -> pd.DataFrame:
    """The reference's main metric per segment; an unreadable reference leaves every segment judged against the
    model's whole baseline (`reference_source` 'model'), as one too small in it."""
    try:
        return reference_segments(model)
    except (duckdb.Error, OSError, ValueError):
        return pd.DataFrame(columns=["segment_by", "segment", "n", "value"])


def write_estimates(con: duckdb.DuckDBPyConnection, config: MonitorConfig,
                    days: list[dt.date]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Replace `days` of monitoring.estimated_performance and monitoring.segment_estimated_performance for the
    config's models. Returns (the rows written, the segments' rows written, model id -> why it was not
    estimated)."""
    models = [m for m in config.models if method_of(m) != "none"]
    fitted, missing = estimators(con, models)
    held = held_models(con, days)
    base = {(m, k): v for m, k, v in con.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
    rows, segments = [], []
    for model in models:
        if model.id not in fitted:
            continue
        mine = [day for day in days if model.id not in held.get(day, set())]
        reference = _reference_segments(model) if segmented(model) and mine else None
        for day, frame in day_frames(con, config, model, mine):
            day_rows = DayRows.of(model, fitted[model.id], frame) if len(frame) else None
            rows += estimate_day(model, fitted[model.id], day_rows, day) if day_rows is not None else []
            if reference is not None:
                segments += estimate_segments(model, fitted[model.id], frame, day, reference,
                                              base.get((model.id, model.main_metric)), day_rows).to_dict("records")
    frame = pd.DataFrame(rows, columns=COLUMNS)
    by_segment = pd.DataFrame(segments, columns=SEGMENT_COLUMNS)
    replace_partitions_from_frame(con, ESTIMATES, days, frame, models=config.written_models)
    replace_partitions_from_frame(con, SEGMENT_ESTIMATES, days, by_segment, models=config.written_models)
    return frame, by_segment, missing


def day_summaries(con: duckdb.DuckDBPyConnection, config: MonitorConfig, frame: pd.DataFrame,
                  days: list[dt.date]) -> dict[dt.date, dict]:
    """Each day's figures for the UI: models estimated, the worst estimated main metric as a share of its baseline,
    and how often the band has held on the labelled days up to that one. One pass over the run's rows and one
    query for all days (asked day by day, a year's backfill spent 12 s here)."""
    base = {(m, k): v for m, k, v in con.execute(
        "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
    dates = pd.to_datetime(frame.partition_date).dt.date
    by_day = {day: rows for day, rows in frame.groupby(dates, sort=False)} if len(frame) else {}
    main_metric = {model.id: model.main_metric for model in config.models}
    # labelled estimates per day; "up to the day" is their running total
    counted = dict.fromkeys(sorted(days), (0, 0))
    if days:
        per_day = con.execute(f"""SELECT partition_date, count(*) FILTER (WHERE within_band), count(within_band)
                                  FROM {ESTIMATES} WHERE partition_date <= ?
                                  AND model_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY partition_date""",
                              [max(days), config.model_ids]).fetchall()
        held_total = labelled_total = 0
        pending = sorted(per_day)
        for day in counted:
            while pending and pending[0][0] <= day:
                _, held, labelled = pending.pop(0)
                held_total, labelled_total = held_total + held, labelled_total + labelled
            counted[day] = (held_total, labelled_total)
    out = {}
    for day in days:
        today = by_day.get(day, frame.iloc[:0])
        ratios = []
        for r in today.itertuples():
            if main_metric.get(r.model_id) != r.metric:
                continue
            ratio = share_of_baseline(r.metric, base.get((r.model_id, r.metric)), r.estimate)
            if ratio is not None:
                ratios.append((ratio, r.model_id, r.estimate, r.lower, r.upper))
        held, labelled = counted[day]
        worst = min(ratios) if ratios else None
        out[day] = {"models_estimated": int(today.model_id.nunique()), "estimates": len(today),
                    "worst_main_metric_ratio": worst[0] if worst else None,
                    "worst_model": worst[1] if worst else "none",
                    "band_coverage_so_far": held / labelled if labelled else None,
                    "labelled_estimates_so_far": int(labelled)}
    return out
