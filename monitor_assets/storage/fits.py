"""Objects fitted once per model and reference version and kept in a lake table (the performance estimators,
the multivariate drift references): reused while their fit key holds, fitted again and stored when it changes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import duckdb
import pandas as pd
import pyarrow as pa

from monitor_assets.config import ModelConfig
from monitor_assets.storage.warehouse import lake_of

NO_REFERENCE = "no profiled reference"
# Fits stored this many models at a time (a commit each): a fleet's first run holds a few of their texts in
# memory, not all (a multivariate reference is about 0.65 MB of text).
STORE_EVERY = 50


def profiled_reference_versions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Each model's profiled reference version (from monitoring.reference_profiles; none while it errs)."""
    return dict(con.execute("""SELECT model_id, any_value(reference_version) FROM monitoring.reference_profiles
                               WHERE kind <> 'error' GROUP BY model_id
                               HAVING count(DISTINCT reference_version) = 1""").fetchall())


def stored_or_fitted(con: duckdb.DuckDBPyConnection, table: str, column: str, models: list[ModelConfig],
                     key_of: Callable[[ModelConfig, str], str], load: Callable[[ModelConfig, str], object | str],
                     fit: Callable[[list[ModelConfig]], Iterable[tuple[object, str, dict] | str]]
                     ) -> tuple[dict, dict[str, str]]:
    """Each model's fitted object: the one stored in `table` (its text in `column`) while its fit key
    (`key_of(model, reference version)`) holds, else fitted and stored (STORE_EVERY at a time): `fit(models)`
    yields each model's (object, its text, more columns of the row), in order (`fit_seconds` among them, or the
    time until it came is taken). `load` and `fit` give a string instead to say why a model has none.
    Returns (model id -> object, model id -> why it has none), in the models' order."""
    versions = profiled_reference_versions(con)
    # these models' rows only: a fleet's fits are hundreds of MB of text, and steps ask for a few models at a time
    stored = {m: (k, text) for m, k, text in con.execute(
        f"SELECT model_id, fit_key, {column} FROM {table} WHERE model_id IN (SELECT unnest(?::VARCHAR[]))",
        [[m.id for m in models]]).fetchall()}
    results, to_fit = {}, []
    for model in models:
        if model.id not in versions:
            results[model.id] = NO_REFERENCE
            continue
        key = key_of(model, versions[model.id])
        if model.id in stored and stored[model.id][0] == key:
            results[model.id] = load(model, stored[model.id][1])
        else:
            to_fit.append((model, key))
    fitted_rows: list[dict] = []

    def store() -> None:
        if fitted_rows:
            lake = lake_of(con)
            lake.replace(table, pa.Table.from_pandas(pd.DataFrame(fitted_rows), preserve_index=False), None,
                         models=[r["model_id"] for r in fitted_rows])
            lake.refresh(con, table)
            fitted_rows.clear()

    started = time.perf_counter()
    for (model, key), result in zip(to_fit, fit([m for m, _ in to_fit]), strict=True):
        if not isinstance(result, str):
            result, text, extra = result
            seconds = extra.pop("fit_seconds", time.perf_counter() - started)
            fitted_rows.append({"model_id": model.id, "fit_key": key, column: text, **extra, "fit_seconds": seconds,
                                "computed_at": pd.Timestamp.now(tz="UTC").tz_localize(None)})
            if len(fitted_rows) >= STORE_EVERY:
                store()
        results[model.id] = result
        started = time.perf_counter()
    store()
    return ({m.id: results[m.id] for m in models if not isinstance(results[m.id], str)},
            {m.id: results[m.id] for m in models if isinstance(results[m.id], str)})


def stored_estimators(con, model_ids: list[str]) -> dict[str, str]:
    """The stored estimator (text, `stats.estimation.from_text`) of each of these models that has one: what
    the estimation stage last fitted (it refits a stale one before any step that depends on it runs)."""
    return dict(con.execute("""SELECT model_id, estimator FROM monitoring.estimators
                               WHERE model_id IN (SELECT unnest(?::VARCHAR[]))""", [list(model_ids)]).fetchall())
