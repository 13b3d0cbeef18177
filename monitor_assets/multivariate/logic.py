"""Multivariate drift per model and day (README, issue 24): the reads and writes around `stats.multivariate`.

Every model with at least two input features gets both statistics each day (a domain classifier's AUC and a PCA
reconstruction error; the latter only with numeric features), each against a threshold calibrated on the model's
reference. The calibration is the costly part: it runs once per reference version and is kept in
`monitoring.multivariate_references`, like the fitted estimators in `monitoring.estimators`. Each side is sampled
to MAX_ROWS rows, so a day's cost does not grow with its traffic.

Each model-day's rows also leave a seeded, uniform sample of at most SAMPLE_ROWS feature rows in
`monitoring.multivariate_samples` (long: one row per sampled row and feature, `number` or `category` as the core
reads it, `sample_rank` the row's place in a seeded shuffle, so any prefix of a day's sample is itself uniform),
with the day's row count `n_day_rows`: the evaluation store draws each window's rows from them (`evaluation.logic`),
never from the prediction files.

Categories are read through `category_sql` with the reference profile's boolean spelling, on both sides, so they
are the categories the per-feature drift counts. A model-day that fails (a reference that cannot be fitted, a
column that will not read) is one row with `analysis_error` and no method; the other models go on.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import zlib
from collections.abc import Callable
from typing import TypeVar

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.stats import multivariate as MV
from monitor_assets.stats.categories import category_sql
from monitor_assets.stats.drift import FeatureSpec
from monitor_assets.storage.fits import NO_REFERENCE, stored_or_fitted
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.per_model import (
    TRANSIENT_ERRORS,
    error_message,
    map_processes,
    model_chunks,
    or_why,
)
from monitor_assets.storage.reads import (
    DAY_COLUMN,
    day_batches,
    feature_columns,
    held_models,
    load_profiles,
    profile_errors,
    reference_reader_sql,
    split_by_day,
)
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import lake_of, replace_partitions_from_frame

MULTIVARIATE = "monitoring.multivariate_drift"
REFERENCES = "monitoring.multivariate_references"
SAMPLES = "monitoring.multivariate_samples"
COLUMNS = [c for c in TABLES[MULTIVARIATE][0] if c != "computed_at"]
SAMPLE_COLUMNS = [c for c in TABLES[SAMPLES][0] if c != "computed_at"]
SAMPLE_SCHEMA = pa.schema([("partition_date", pa.date32()), ("model_id", pa.string()), ("model_version", pa.string()),
                           ("n_day_rows", pa.int64()), ("sample_rank", pa.int64()), ("feature", pa.string()),
                           ("number", pa.float64()), ("category", pa.string())])
# Rows of each model-day kept for the windows: a 7-day window then has 7,000 rows to draw its MAX_ROWS = 5,000
# from (the size the thresholds are calibrated at), and a window whose busiest day holds at most a fifth of its rows
# draws the full 5,000 in proportion to the days' volumes. About 10 bytes per value on disk (measured: 12 features,
# 1,000 rows: 115 kB per model-day, Parquet via Delta).
SAMPLE_ROWS = 1000
VERSION_COLUMN = "__model_version"  # the day frames' model version (kept with the sample; not a feature)
# Rows of each side a comparison sees (config has no `multivariate:` section yet): 5,000 + 5,000 rows take about
# 0.1 s per model-day with one thread; the threshold is calibrated at this size.
MAX_ROWS = 5000
MIN_FEATURES = 2  # one feature's drift is the per-feature tests' job
NOT_FITTED = "reference could not be fitted"
NOT_COMPUTED = "multivariate drift could not be computed"  # a model-day's analysis_error, then why
# Model-days from which a day's statistics are computed in worker processes: starting them costs about two
# seconds, a model-day's trees about 0.1 s.
PROCESS_MIN_MODEL_DAYS = 40
T = TypeVar("T")
FIT_FORMAT = 1  # part of the fit key: a change of the stored reference's layout refits every model once


def feature_specs(model: ModelConfig) -> list[FeatureSpec]:
    """The model's input features as the multivariate core sees them (numeric or categorical)."""
    return [FeatureSpec(f.name, f.type) for f in model.features if f.type in ("numeric", "categorical")]


def monitored(config: MonitorConfig) -> list[ModelConfig]:
    """The models multivariate drift runs for: those with at least MIN_FEATURES features."""
    return [m for m in config.models if len(feature_specs(m)) >= MIN_FEATURES]


def fit_key(version: str) -> str:
    """What a stored reference was fitted from: the reference version (file, features, profile format), the
    sample size and scikit-learn's version (its trees calibrate the threshold)."""
    import sklearn

    return f"{version}:{MAX_ROWS}:{sklearn.__version__}:{FIT_FORMAT}"


def _booleans(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> dict[str, tuple[str, str] | None]:
    """Each categorical feature's boolean spelling, as its reference profile records it (None: not boolean)."""
    profiles = load_profiles(con, model.id)
    return {f.name: getattr(profiles.get(f.name), "booleans", None) for f in feature_specs(model)}


def _select(model: ModelConfig, column_of: dict[str, str], booleans: dict[str, tuple[str, str] | None]) -> str:
    """SELECT list of the model's features under their names: numbers as DOUBLE, categories normalised."""
    picks = []
    for f in feature_specs(model):
        column = column_of[f.name]
        value = (category_sql(column, booleans.get(f.name)) if f.kind == "categorical"
                 else f"TRY_CAST({column} AS DOUBLE)")
        picks.append(f"{value} AS {quote_ident(f.name)}")
    return ", ".join(picks)


def reference_frame(con: duckdb.DuckDBPyConnection, model: ModelConfig,
                    booleans: dict[str, tuple[str, str] | None]) -> pd.DataFrame:
    """The reference's feature columns, every row in file order (the calibration's chunks follow it)."""
    column_of = {f.name: quote_ident(f.name) for f in feature_specs(model)}
    return con.execute(f"SELECT {_select(model, column_of, booleans)} "
                       f"FROM {reference_reader_sql(model.reference_path)}").df()


def day_frames(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, days: list[dt.date],
               booleans: dict[str, tuple[str, str] | None]) -> dict[dt.date, pd.DataFrame]:
    """Each of `days` with its served rows, the feature columns and the model version (VERSION_COLUMN), in one query (a backfill costs its rows,
    not a query and a view a day)."""
    lake = lake_of(con)
    if not lake.has_table(lake.model_path(model.id)):
        return {day: pd.DataFrame() for day in days}
    stored = feature_columns(config)
    column_of = {f.name: "p." + quote_ident(stored[(f.source, f.type)]) for f in model.features}
    frame = con.execute(f"""SELECT p.partition_date AS {DAY_COLUMN}, {_select(model, column_of, booleans)},
                                   coalesce(p.model_version, '') AS {quote_ident(VERSION_COLUMN)}
                            FROM {lake.model_relation(con, model.id)} AS p
                            WHERE p.partition_date IN (SELECT unnest($days::DATE[])) AND p.model_id = $model
                                  AND p.is_ok""", {"days": days, "model": model.id}).df()
    return split_by_day(frame, days)


def day_frame(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, day: dt.date,
              booleans: dict[str, tuple[str, str] | None]) -> pd.DataFrame:
    """One model-day's served rows, the feature columns and the model version (VERSION_COLUMN)."""
    return day_frames(con, config, model, [day], booleans)[day]


def _or_why(work: Callable[[], T]) -> T | str:
    """`work()`, or why a model has no fitted reference (a transient error is raised: the step's retry takes it)."""
    return or_why(work, NOT_FITTED)


def fitted_reference(frame: pd.DataFrame | str, specs: list[FeatureSpec]) -> tuple[str, dict] | str:
    """A model's reference fitted (`MV.fit_reference`) as (its text, its row's other columns), or why not (`frame`
    is why when its rows could not be read). Runs in a worker process (`map_processes`) when many models are
    fitted at once: the calibration's tree fits hold the GIL."""
    if isinstance(frame, str):
        return frame
    started = time.perf_counter()
    fitted = _or_why(lambda: MV.fit_reference(frame, specs, max_rows=MAX_ROWS))
    if isinstance(fitted, str):
        return fitted
    return fitted.to_text(), {"reference_rows": len(frame), "n_features": len(specs),
                              "fit_seconds": time.perf_counter() - started}


def references(con: duckdb.DuckDBPyConnection, models: list[ModelConfig]
               ) -> tuple[dict[str, MV.MultivariateReference], dict[str, str]]:
    """Each model's fitted reference: the stored one while its fit key holds, else fitted now (several models at
    once in worker processes, `map_processes`) and stored. Returns (model id -> reference, model id -> why it has
    none); one model's failure leaves the others."""
    def read(model: ModelConfig) -> tuple[pd.DataFrame | str, list[FeatureSpec]]:
        return _or_why(lambda: reference_frame(con, model, _booleans(con, model))), feature_specs(model)

    def fit(todo: list[ModelConfig]):
        for done in map_processes(fitted_reference, read, todo, preload=(__name__, "sklearn.ensemble"),
                                  on_death=lambda model, why: f"{NOT_FITTED}: {why}"):
            if isinstance(done, str):
                yield done
            else:
                text, extra = done
                yield MV.MultivariateReference.from_text(text), text, extra

    def load(model: ModelConfig, text: str):
        return _or_why(lambda: MV.MultivariateReference.from_text(text))

    found, missing = stored_or_fitted(con, REFERENCES, "reference", models, lambda _, version: fit_key(version),
                                      load, fit)
    why_unprofiled = profile_errors(con)
    return found, {m: (f"{NO_REFERENCE}: {why_unprofiled.get(m) or 'none stored'}" if why == NO_REFERENCE else why)
                   for m, why in missing.items()}


def top_text(top: list[tuple[str, float]]) -> str | None:
    """The features that carried a statistic as text: `x0 (0.21), x1 (0.18)`, largest first."""
    return ", ".join(f"{name} ({value:.3g})" for name, value in top) or None


def error_row(model: ModelConfig, day: dt.date, error: str) -> dict:
    """A model-day that could not be computed: no method, the reason."""
    return {"partition_date": day, "model_id": model.id, "method": None, "statistic": None, "threshold": None,
            "drifted": None, "n_current": None, "n_reference": None, "top_features": None, "analysis_error": error}


def keeps_every_component(ref: MV.MultivariateReference) -> bool:
    """Whether the reference's PCA kept as many components as numeric features: then every row is reconstructed
    exactly, the error is rounding noise (about 1e-16) against a threshold of rounding noise, and says nothing."""
    return ref.pca is not None and len(ref.pca.components) >= int(ref.numeric.sum())


def judged(ref: MV.MultivariateReference, frame: pd.DataFrame, seed: int) -> list[MV.MultivariateDrift]:
    """Both statistics of some rows (a day's, a window's sample); no reconstruction error when the PCA keeps
    every component. The features are named when a statistic is flagged."""
    found = MV.multivariate_drift(ref, frame, seed=seed)
    if keeps_every_component(ref):
        found = [r for r in found if r.method != MV.RECONSTRUCTION]
    return found


def drift_rows(model: ModelConfig, ref: MV.MultivariateReference, frame: pd.DataFrame, day: dt.date) -> list[dict]:
    """Both statistics of one model-day (none for a day without rows; no reconstruction error when the PCA
    keeps every component). The features are named on flagged rows only: on a quiet day they are noise."""
    if not len(frame):
        return []
    return [{"partition_date": day, "model_id": model.id, "method": r.method,
             "statistic": r.statistic if math.isfinite(r.statistic) else None, "threshold": r.threshold,
             "drifted": r.drifted, "n_current": r.n_current, "n_reference": r.n_reference,
             "top_features": top_text(r.top_features) if r.drifted else None, "analysis_error": None}
            for r in judged(ref, frame, day.toordinal())]


def sample_seed(model_id: str, day: dt.date) -> int:
    """The seed of a model-day's sample: fixed by model and day, so a re-run keeps the same rows."""
    return zlib.crc32(f"{model_id}:{day.isoformat()}".encode())


def day_sample(model: ModelConfig, frame: pd.DataFrame, day: dt.date) -> pa.Table:
    """`monitoring.multivariate_samples` rows of one model-day (SAMPLE_SCHEMA): at most SAMPLE_ROWS of its rows, a
    seeded uniform sample in shuffled order (`sample_rank`: a prefix of any length is a uniform sample too), one row
    per sampled row and feature (feature by feature), numbers in `number`, categories in `category`, as the core
    reads them; `n_day_rows` the day's rows. No rows for a day without rows. Built as Arrow columns: a frame per
    feature and their concat cost about 20 ms a model-day."""
    n = len(frame)
    if not n:
        return SAMPLE_SCHEMA.empty_table()
    rows = frame.iloc[np.random.default_rng(sample_seed(model.id, day)).permutation(n)[:SAMPLE_ROWS]]
    k = len(rows)
    specs = feature_specs(model)
    versions = (rows[VERSION_COLUMN].astype(str).to_numpy(object) if VERSION_COLUMN in rows
                else np.full(k, "", dtype=object))
    numbers, categories = [], []
    for f in specs:
        values = rows[f.name]
        if f.kind != "categorical":
            numbers.append(pd.to_numeric(values, errors="coerce").to_numpy(float))
            categories.append(np.full(k, None, dtype=object))
        else:
            numbers.append(np.full(k, np.nan))
            categories.append(values.astype(object).where(values.notna(), None).to_numpy(object))
    m = k * len(specs)
    columns = [pa.array(np.full(m, day), pa.date32()), pa.array(np.full(m, model.id, dtype=object), pa.string()),
               pa.array(np.tile(versions, len(specs)), pa.string()), pa.array(np.full(m, n), pa.int64()),
               pa.array(np.tile(np.arange(k), len(specs)), pa.int64()),
               pa.array(np.repeat(np.array([f.name for f in specs], dtype=object), k), pa.string()),
               pa.array(np.concatenate(numbers) if specs else np.zeros(0), pa.float64(), from_pandas=True),
               pa.array(np.concatenate(categories) if specs else np.zeros(0, object), pa.string(), from_pandas=True)]
    return pa.Table.from_arrays(columns, schema=SAMPLE_SCHEMA)


def _day(model: ModelConfig, ref: MV.MultivariateReference, frame: pd.DataFrame, day: dt.date
         ) -> tuple[list[dict], pa.Table | None]:
    """One model-day's drift rows and sample; an error (not a transient one) is its `analysis_error` row."""
    try:
        return drift_rows(model, ref, frame, day), day_sample(model, frame, day)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded for this model-day, the others are computed
        return [error_row(model, day, f"{NOT_COMPUTED}: {error_message(exc)}")], None


def day_inputs(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig, days: list[dt.date],
               booleans: dict) -> tuple[dict[dt.date, pd.DataFrame], dict[dt.date, str]]:
    """Several days of one model's rows, read in one query; if that read fails, day by day, so a bad day stays
    that day's error. Returns (day -> rows, day -> why it could not be read)."""
    try:
        return day_frames(con, config, model, days, booleans), {}
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - each day read alone below, its own error recorded
        pass
    frames, errors = {}, {}
    for day in days:
        try:
            frames[day] = day_frame(con, config, model, day, booleans)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model-day, the others are computed
            errors[day] = f"{NOT_COMPUTED}: {error_message(exc)}"
    return frames, errors


def computed_days(model: ModelConfig, ref: MV.MultivariateReference, days: list[dt.date],
                  frames: dict[dt.date, pd.DataFrame], errors: dict[dt.date, str]
                  ) -> tuple[list[dict], list[pd.DataFrame]]:
    """`drift_rows` and `day_sample` of each day; a day that could not be read, or failed, is its
    `analysis_error` row and keeps no sample. Pure (runs in a worker process for a fleet, `map_processes`).
    Returns (drift rows, the days' samples)."""
    rows, samples = [], []
    for day in days:
        if day in errors:
            rows.append(error_row(model, day, errors[day]))
            continue
        found, sample = _day(model, ref, frames[day], day)
        rows += found
        if sample is not None and sample.num_rows:
            # Arrow, not pandas: a fleet's samples (12,000 rows a model-day) wait in memory until the write, and
            # pandas keeps a Python object per text value (about 5 MB a model-day with the concat and the sort)
            samples.append(sample)
    return rows, samples


def _died(item: tuple[ModelConfig, list[dt.date]], why: str) -> tuple[list[dict], list]:
    """A batch of model-days whose worker died (`map_processes`): an error row each, no sample."""
    model, batch = item
    return [error_row(model, day, f"{NOT_COMPUTED}: {why}") for day in batch], []


def write_multivariate(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                       workers: int | None = None) -> pd.DataFrame:
    """Replace `days` of monitoring.multivariate_drift and monitoring.multivariate_samples for the config's models
    (a shard: its models' rows only); returns the drift rows written. The models go MODELS_AT_ONCE at a time
    (their references fitted or loaded, their days computed, their samples written), so memory holds one slice
    of the fleet. The rows are read here, model by model; the statistics of many model-days are computed in
    worker processes (`map_processes`: the trees hold the GIL, one core each). Models without a fitted
    reference, and held model-days, keep no sample."""
    models = monitored(config)
    held = held_models(con, days)
    mine = {m.id: [day for day in days if m.id not in held.get(day, set())] for m in models}
    many = sum(map(len, mine.values())) >= PROCESS_MIN_MODEL_DAYS  # else one worker: here, in order
    rows: list[dict] = []
    for n, chunk in enumerate(model_chunks(models)):
        fitted, missing = references(con, chunk)
        rows += [error_row(m, day, missing[m.id]) for m in chunk if m.id in missing for day in days]
        booleans = {m.id: _booleans(con, m) for m in chunk if m.id in fitted}
        # DAYS_PER_READ days an item, not a small model's year in one (`model_day_batches`): the items share the
        # worker processes, and a day's trees, not its read, are the cost
        work = [(m, batch) for m in chunk if m.id in fitted for batch in day_batches(mine[m.id])]

        def inputs(item, fitted=fitted, booleans=booleans):
            model, batch = item
            return (model, fitted[model.id], batch, *day_inputs(con, config, model, batch, booleans[model.id]))

        samples = []
        for found, sampled in map_processes(computed_days, inputs, work, workers if many else 1, min_items=1,
                                            preload=(__name__, "sklearn.ensemble"), on_death=_died):
            rows += found
            samples += sampled
        # rank-major order: a window reading a short prefix of each day's sample skips the row groups past it
        sample = (pa.concat_tables(samples).sort_by([("sample_rank", "ascending"), ("model_id", "ascending"),
                                                     ("feature", "ascending")])  # stable, as pandas' sort was
                  if samples else pd.DataFrame(columns=SAMPLE_COLUMNS))
        del samples, fitted
        # the first slice's write clears the days (of a shard: its models' rows), the others' add theirs
        replace_partitions_from_frame(con, SAMPLES, days, sample,
                                      models=[m.id for m in chunk] if n else config.written_models)
    if not models:
        replace_partitions_from_frame(con, SAMPLES, days, pd.DataFrame(columns=SAMPLE_COLUMNS),
                                      models=config.written_models)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    replace_partitions_from_frame(con, MULTIVARIATE, days, frame, models=config.written_models)
    return frame


def day_summary(today: pd.DataFrame) -> dict:
    """A day's figures for the UI from its rows (`wiring.by_day`): models computed, models flagged (by either
    method), models in error."""
    ok = today[today.analysis_error.isna()] if len(today) else today
    flagged = ok[ok.drifted.fillna(False).astype(bool)] if len(ok) else ok
    return {"models_computed": int(ok.model_id.nunique()) if len(ok) else 0,
            "models_drifted": int(flagged.model_id.nunique()) if len(flagged) else 0,
            "models_in_error": int(today.analysis_error.notna().sum()) if len(today) else 0}


def flagged(frame: pd.DataFrame, limit: int = 15) -> pd.DataFrame:
    """The drifted model-days and the errors, largest margin over the threshold first."""
    if not len(frame):
        return frame
    bad = frame[frame.drifted.fillna(False).astype(bool) | frame.analysis_error.notna()]
    margin = bad.statistic - bad.threshold
    return bad.assign(_m=margin).sort_values("_m", ascending=False, na_position="first").drop(columns="_m").head(limit)
