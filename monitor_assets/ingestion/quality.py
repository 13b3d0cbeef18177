"""Data-quality suites for the loaded predictions, built from the config and run with Great Expectations 1.x.

Quarantine already keeps malformed records out; these suites guard what did load (a bug or a
schema change upstream shows here first): completeness of required fields, validity of scores,
latencies, model ids and categories, uniqueness of prediction ids, and timestamps inside the day.
GX is imported here only, when a check runs (its import takes seconds); it runs ephemeral, offline,
without progress bars.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import pandas as pd

from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.ingestion.readers import feature_columns
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import lake_of


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str
    success: bool
    unexpected_count: int
    sample: list
    models: dict[str, int]  # unexpected rows per model id (None: rows without a known model)


def _suite(config: MonitorConfig, day: dt.date, frame: pd.DataFrame):
    import great_expectations as gx

    E = gx.expectations
    start = pd.Timestamp(day, tz="UTC")
    expectations = [
        E.ExpectColumnValuesToNotBeNull(column="prediction_id"),
        E.ExpectColumnValuesToBeUnique(column="prediction_id"),
        E.ExpectColumnValuesToNotBeNull(column="model_id"),
        E.ExpectColumnValuesToBeInSet(column="model_id", value_set=config.model_ids),
        E.ExpectColumnValuesToNotBeNull(column="ts"),
        # Logs of a day may straddle midnight by a little; anything further is a misfiled batch.
        E.ExpectColumnValuesToBeBetween(column="ts", min_value=start - pd.Timedelta(hours=2),
                                        max_value=start + pd.Timedelta(hours=26)),
        E.ExpectColumnValuesToBeBetween(column="latency_ms", min_value=0, mostly=1.0),
    ]
    if "classifier_score" in frame:
        expectations.append(E.ExpectColumnValuesToBeBetween(column="classifier_score", min_value=0, max_value=1))
    for column, allowed in _allowed_categories(config).items():
        if column in frame:
            expectations.append(E.ExpectColumnValuesToBeInSet(column=column, value_set=allowed))
    return gx.ExpectationSuite(name=f"predictions_{day}", expectations=expectations)


def _allowed_categories(config: MonitorConfig, model: ModelConfig | None = None) -> dict[str, list[str]]:
    columns = feature_columns(config)
    return {columns[(f.source, f.type)]: list(f.allowed_values)
            for m in ([model] if model else config.models) for f in m.features if f.allowed_values}


def predictions_frame(con, config: MonitorConfig, day: dt.date, model: ModelConfig) -> pd.DataFrame:
    """One model's loaded predictions of a day (a model-day is the unit of validation, so memory holds one),
    with classifier scores in a column of their own."""
    table = lake_of(con).model_relation(con, model.id)
    extra = "".join(f", {quote_ident(c)}" for c in _allowed_categories(config, model))
    score = "score" if model.is_classifier else "NULL::DOUBLE"
    return con.execute(f"""
        SELECT prediction_id, model_id, ts, latency_ms, score, {score} AS classifier_score{extra}
        FROM {table} WHERE partition_date = ?""", [day]).df()


@functools.cache
def _batch_definition():
    """One ephemeral GX context for the process: building it costs more than validating a model-day."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (context.data_sources.add_pandas("warehouse").add_dataframe_asset("predictions")
            .add_batch_definition_whole_dataframe("day"))


def validate_predictions(config: MonitorConfig, day: dt.date, frame: pd.DataFrame) -> list[ExpectationOutcome]:
    batch_definition = _batch_definition()
    # COMPLETE lists the unexpected rows, so a failure is routed to the models whose rows failed.
    result = batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
        _suite(config, day, frame), result_format={"result_format": "COMPLETE"})
    known = set(config.model_ids)
    outcomes = []
    for r in result.results:
        index = r.result.get("unexpected_index_list") or []
        models = frame.model_id.reindex(index).where(lambda m: m.isin(known)).value_counts(dropna=False)
        outcomes.append(ExpectationOutcome(
            r.expectation_config.type, str(r.expectation_config.kwargs.get("column", "")), bool(r.success),
            int(r.result.get("unexpected_count") or 0),
            [str(v) for v in (r.result.get("partial_unexpected_list") or [])[:5]],
            {(None if pd.isna(m) else str(m)): int(n) for m, n in models.items()}))
    return outcomes
