"""Pictures of drift (README, issue 24): for each feature-day `monitoring.feature_drift` flags, the reference's and
the day's distributions side by side (`stats.distributions`), kept in `monitoring.drift_distributions`.

The values are read as the drift read them: the reference's usable rows through `analysis.logic.reference_relation`
(its features, `prediction` and `label`), the day's served rows with their latest labels through the same
relation the drift used, numbers as DOUBLE, categories normalised by `category_sql` with the reference profile's
boolean spelling, a label only on labelled rows. Whether a row is drawn as numeric bins or category bars follows
the drift row's `kind` (a multiclass model's predicted class is categorical there).

At most `MAX_PER_MODEL_DAY` pictures per model-day, the strongest first (`drift_evidence`, 1 = at the threshold):
a day on which every feature moved should not cost a reference read per feature. A model whose reference or
table cannot be read gets no pictures (and keeps its earlier rows); the other models go on.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from monitor_assets.analysis.logic import (
    LABEL,
    _day_rows,
    _label_expr,
    load_profiles,
    reference_relation,
    validate_model_reference,
)
from monitor_assets.config import ModelConfig, MonitorConfig
from monitor_assets.formatting import fmt_num, fmt_p, fmt_pct
from monitor_assets.stats.categories import category_sql
from monitor_assets.stats.distributions import Comparison, compare, drift_evidence
from monitor_assets.stats.drift import P_VALUE_METHODS
from monitor_assets.storage.lake import TABLES
from monitor_assets.storage.per_model import TRANSIENT_ERRORS, error_message, map_models
from monitor_assets.storage.sql import quote_ident
from monitor_assets.storage.warehouse import replace_partitions_from_frame

DISTRIBUTIONS = "monitoring.drift_distributions"
COLUMNS = [c for c in TABLES[DISTRIBUTIONS][0] if c != "computed_at"]
MAX_PER_MODEL_DAY = 10  # pictures per model-day, the strongest drift first
FLAGGED_COLUMNS = ["partition_date", "model_id", "feature", "role", "kind", "method", "statistic", "p_value",
                   "p_value_adjusted", "threshold", "drifted"]


def flagged(con: duckdb.DuckDBPyConnection, days: list[dt.date], model_ids: list[str],
            cap: int = MAX_PER_MODEL_DAY) -> pd.DataFrame:
    """The drifted rows of monitoring.feature_drift on these days and models, with their `evidence`: at most
    `cap` per model-day, the strongest first."""
    frame = con.execute(f"""SELECT {', '.join(FLAGGED_COLUMNS)} FROM monitoring.feature_drift
                            WHERE drifted AND partition_date IN (SELECT unnest(?::DATE[]))
                              AND model_id IN (SELECT unnest(?::VARCHAR[]))""", [days, model_ids]).df()
    if not len(frame):
        return frame.assign(evidence=pd.Series(dtype=float))
    frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    frame["evidence"] = drift_evidence(frame)
    frame = frame.sort_values(["partition_date", "model_id", "evidence", "feature"],
                              ascending=[True, True, False, True], na_position="last")
    return frame.groupby(["partition_date", "model_id"], sort=False).head(cap).reset_index(drop=True)


def _value_sql(column: str, kind: str, booleans: tuple[str, str] | None) -> str:
    """A column's values as the drift compared them: numbers as DOUBLE, categories normalised."""
    return category_sql(column, booleans) if kind == "categorical" else f"TRY_CAST({column} AS DOUBLE)"


def _columns(con: duckdb.DuckDBPyConnection, sql: str, picks: list[tuple[str, str]], params=None) -> dict[str, list]:
    """Each (alias, expression) of `picks` over the rows of `sql`, as a list per alias."""
    if not picks:
        return {}
    select = ", ".join(f"{expr} AS {quote_ident(alias)}" for alias, expr in picks)
    frame = con.execute(f"SELECT {select} FROM ({sql})", params or {}).df()
    return {alias: frame[alias].tolist() for alias, _ in picks}


def model_pictures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                   rows: pd.DataFrame) -> list[dict]:
    """The pictures of one model's flagged rows (`flagged`, this model's): the reference is read once."""
    profiles = load_profiles(con, model.id)
    wanted = rows[["feature", "role", "kind"]].drop_duplicates()
    picks = {(r.feature, r.kind): (f"v{i}", r) for i, r in enumerate(wanted.itertuples(index=False))}

    def expr(feature: str, kind: str, column: str) -> str:
        return _value_sql(column, kind, getattr(profiles.get(feature), "booleans", None))

    check = validate_model_reference(con, model)
    reference = _columns(con, reference_relation(model, check.where),
                         [(alias, expr(f, k, quote_ident(f))) for (f, k), (alias, _) in picks.items()])
    day_rows = _day_rows(con, config, model)  # parameterised by day; its view is made once
    out = []
    for day, today in rows.groupby("partition_date", sort=True):
        params = {"day": day, "model": model.id}
        on_day = {(r.feature, r.kind) for r in today.itertuples(index=False)}
        served = [(alias, expr(f, k, quote_ident(f))) for (f, k), (alias, r) in picks.items()
                  if (f, k) in on_day and r.role != LABEL]
        labelled = [(alias, expr(f, k, _label_expr(model, "label_value"))) for (f, k), (alias, r) in picks.items()
                    if (f, k) in on_day and r.role == LABEL]
        current = _columns(con, day_rows, served, params)
        current |= _columns(con, f"SELECT * FROM ({day_rows}) WHERE label_value IS NOT NULL",
                            labelled, params)
        for r in today.itertuples(index=False):
            alias = picks[(r.feature, r.kind)][0]
            found = compare(reference[alias], current[alias], r.kind)
            out.append(picture_row(r, found))
    return out


def picture_row(r, found: Comparison) -> dict:
    """A table row: the flagged drift row's figures and the comparison as JSON."""
    return {"partition_date": r.partition_date, "model_id": r.model_id, "feature": r.feature, "role": r.role,
            "kind": r.kind, "method": r.method, "statistic": _finite(r.statistic),
            "p_value": _finite(r.p_value_adjusted if pd.notna(r.p_value_adjusted) else r.p_value),
            "threshold": _finite(r.threshold), "evidence": _finite(r.evidence), "bins": found.to_json(),
            "n_current": found.n_current, "n_reference": found.n_reference}


def _finite(x) -> float | None:
    return None if x is None or pd.isna(x) or x in (float("inf"), float("-inf")) else float(x)


def write_pictures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                   cap: int = MAX_PER_MODEL_DAY, workers: int | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Replace `days` of monitoring.drift_distributions for the config's models. Returns (the rows, model id ->
    why its pictures could not be drawn): a failed model keeps its earlier rows, the others are written."""
    rows = flagged(con, days, config.model_ids, cap)
    by_model = {m: part for m, part in rows.groupby("model_id", sort=False)} if len(rows) else {}
    models = [m for m in config.models if m.id in by_model]

    def one(c, model):
        try:
            return model_pictures(c, config, model, by_model[model.id])
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded for this model, the others are drawn
            return error_message(exc)

    parts, failed = [], {}
    for model, found in zip(models, map_models(con, one, models, workers), strict=True):
        if isinstance(found, str):
            failed[model.id] = found
        else:
            parts += found
    frame = pd.DataFrame(parts, columns=COLUMNS)
    written = config.written_models if not failed else [m.id for m in config.models if m.id not in failed]
    replace_partitions_from_frame(con, DISTRIBUTIONS, days, frame, models=written)
    return frame, failed


def picture_markdown(row) -> str:
    """One picture as markdown for the asset's metadata: the drift figures, then bin, reference and current share."""
    p = f", {fmt_p(row.p_value)}" if row.method in P_VALUE_METHODS else ""
    head = (f"**{row.model_id} / {row.feature}** ({row.role}, {row.kind}): {row.method} {fmt_num(row.statistic)}"
            f"{p}, threshold {fmt_num(row.threshold)}; {row.n_reference:,} reference rows, {row.n_current:,} today")
    lines = [head, "", "| bin | reference share | current share |", "|---|---|---|"]
    lines += [f"| {b.label.replace('|', '/')} | {fmt_pct(b.reference_share)} | {fmt_pct(b.current_share)} |"
              for b in Comparison.buckets_from_json(row.bins)]
    return "\n".join(lines)
