"""The closed loop's plain Python and SQL: model versions, reference loss batches, the daily retraining
trigger, retraining requests (opened, decided, run, done), and champion vs challenger. No Dagster here:
the assets, the jobs and the command line call these functions.

Tables (in the DuckDB file, schema in storage/warehouse.py):
  monitoring.version_daily       per day, model and version: volume, errors, latency p95 (from the logs)
  monitoring.model_versions      per model and version: first/last seen, traffic share on the last day,
                                 role (champion / challenger / retired), champion_since
  monitoring.reference_anchors   re-anchoring by hand: a version's reference batch starts on this day
  monitoring.reference_losses    the reference loss batch of each model version
  monitoring.retraining_trigger  per day and model: the day's mean loss against the reference band, the
                                 CUSUM (statistic) and the days it holds (window_start..), its sequential
                                 p-value, the p-value adjusted across the day's models and the flag
  monitoring.retraining_requests requests: proposed / approved / rejected / done / superseded
  monitoring.version_comparison  per day, model and challenger: metrics of both versions, tests, gates, verdict
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.config import ModelConfig, MonitorConfig, RankerConfig
from monitor_assets.formatting import fmt_num, fmt_p
from monitor_assets.ranking import logic as RL
from monitor_assets.stats.loss import default_loss, expected_losses, loss_sql, ranking_loss
from monitor_assets.stats.trigger import (
    Calibration,
    Moments,
    TriggerSettings,
    baseline_means,
    calibrate,
    cap_quantile_for,
    capped,
    cusum,
    cusum_threshold,
    evaluate_day,
    loss_cap,
    persistence_met,
    reference_band,
    welch_greater,
)
from monitor_assets.stats.versions import Gates, MetricSample, VersionStats, champions, compare_versions
from monitor_assets.storage.fits import stored_estimators
from monitor_assets.storage.lake import MODELS_PER_QUERY
from monitor_assets.storage.per_model import model_chunks
from monitor_assets.storage.reads import (
    latest_labels_sql,
    models_values_sql,
    version_daily,
)
from monitor_assets.storage.sql import sql_str
from monitor_assets.storage.warehouse import (
    edit,
    lake_of,
    replace_partitions,
    replace_partitions_from_frame,
    transaction,
)

STATUSES = ("proposed", "approved", "rejected", "done", "superseded")
ACTIVE = ("proposed", "approved")
# One family of models a day: its levels are the same for every model (TriggerSettings' defaults).
FAMILY = TriggerSettings()
TRIGGER_ALPHA = FAMILY.alpha


# What the loop judges: a model (one loss per labelled prediction) or a ranker (one loss per request whose
# interactions are all read: 1 - NDCG@main_k). Both have an id, versions and `retraining` settings.
Subject = ModelConfig | RankerConfig


def subjects(config: MonitorConfig) -> list[Subject]:
    """Every model and ranker of the config, models first: the trigger's one family."""
    return [*config.models, *config.rankers]


def settings_for(model: Subject) -> TriggerSettings:
    """The model's own trigger settings (retraining.*); the family's levels stay FAMILY's. A ranker's loss is
    bounded (in [0, 1]): never capped."""
    r = model.retraining
    classifier = isinstance(model, ModelConfig) and model.is_classifier
    return TriggerSettings(window_days=r.window_days, persistence_k=r.persistence_k, persistence_n=r.persistence_n,
                           min_rows=r.min_rows, shift_se=r.shift_se,
                           cap_quantile=cap_quantile_for(model.main_metric) if classifier else 1.0)


def loss_of(model: Subject) -> str:
    if isinstance(model, RankerConfig):
        return ranking_loss(model.main_k)
    return model.retraining.loss or default_loss(model.task)


def labelled_losses_sql(con: duckdb.DuckDBPyConnection, config: MonitorConfig, first: dt.date, last: dt.date,
                        models: Iterable[ModelConfig] | None = None) -> tuple[str, list]:
    """Labelled, served predictions of `models` (default all) on `first`..`last` with their loss (each model's
    own), as SQL and params: model_id, model_version, partition_date, ts, prediction_id, score, label,
    threshold, loss. Reads only those models' prediction files and label row groups."""
    models = list(models or config.models)
    multiclass = [m for m in models if m.is_multiclass]
    models = [m for m in models if not m.is_multiclass]
    values, params = models_values_sql(models, {"loss": loss_of, "threshold": lambda m: m.decision_threshold})
    losses = " ".join(f"WHEN '{name}' THEN {loss_sql(name, 'l.label', 'p.score')}"
                      for name in ("log_loss", "squared_error", "absolute_error"))
    if not models:  # multiclass models only
        sql, params = "SELECT NULL::VARCHAR AS model_id WHERE false", []
    else:
        sql = f"""
        SELECT p.model_id, coalesce(p.model_version, '') AS model_version, p.partition_date, p.ts, p.prediction_id,
               p.score, l.label, m.threshold, CASE m.loss {losses} END AS loss
        FROM ({lake_of(con).predictions_union(con, [m.id for m in models])}) AS p
        JOIN {values} AS m USING (model_id)
        JOIN ({latest_labels_sql([m.id for m in models], since="?::DATE")}) AS l USING (prediction_id)
        WHERE p.partition_date BETWEEN ? AND ? AND p.is_ok AND p.score IS NOT NULL AND l.label IS NOT NULL
              AND isfinite(p.score)"""
        params = [*params, first, first, last]
    parts = ([sql] if models else []) + [_multiclass_losses_sql(con, m) for m in multiclass]
    params = params + [first, first, last] * len(multiclass)
    return " UNION ALL ".join(f"SELECT * FROM ({part})" for part in parts) or sql, params


def _multiclass_losses_sql(con: duckdb.DuckDBPyConnection, model: ModelConfig) -> str:
    """`labelled_losses_sql`'s rows of one multiclass model (params: first, first, last): its loss is -ln p(true
    class) where probabilities were logged, else the 0/1 error (`stats.multiclass.row_loss`); `score` is the
    predicted class's probability, `threshold` NULL."""
    from monitor_assets.config import CLASS_CODE_COLUMN, CLASS_PROBABILITIES_COLUMN
    from monitor_assets.stats.loss import multiclass_loss_sql
    from monitor_assets.storage.sql import sql_str

    loss = multiclass_loss_sql("l.label", f"p.{CLASS_CODE_COLUMN}", f"p.{CLASS_PROBABILITIES_COLUMN}")
    return f"""
        SELECT p.model_id, coalesce(p.model_version, '') AS model_version, p.partition_date, p.ts, p.prediction_id,
               p.score, l.label, NULL::DOUBLE AS threshold, {loss} AS loss
        FROM {lake_of(con).model_relation(con, model.id)} AS p
        JOIN ({latest_labels_sql([model.id], since="?::DATE")}) AS l USING (prediction_id)
        WHERE p.partition_date BETWEEN ? AND ? AND p.model_id = {sql_str(model.id)} AND p.is_ok
              AND p.{CLASS_CODE_COLUMN} IS NOT NULL AND l.label IS NOT NULL AND {loss} IS NOT NULL"""


# -- versions ------------------------------------------------------------------------------------------


def refresh_versions(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """Per day, model and version of `days` from the logs into monitoring.version_daily, then the whole
    monitoring.model_versions rebuilt from it (a small table: one row per model and version)."""
    parts, params = [], []
    if config.models:
        parts.append(f"""
        SELECT partition_date, model_id, coalesce(model_version, ''), count(*), count(*) FILTER (WHERE NOT is_ok),
               quantile_cont(latency_ms, 0.95), now()::TIMESTAMP
        FROM ({lake_of(con).predictions_union(con, config.model_ids)})
        WHERE partition_date IN (SELECT unnest(?::DATE[])) GROUP BY ALL""")
        params.append(days)
    if config.rankers:  # a ranker's volume is its requests; its log has no status or latency
        parts.append(f"""
        SELECT partition_date, model_id, coalesce(model_version, ''), count(DISTINCT request_id), 0, NULL::DOUBLE,
               now()::TIMESTAMP
        FROM {RL.IMPRESSIONS}
        WHERE partition_date IN (SELECT unnest(?::DATE[])) AND model_id IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY ALL""")
        params += [days, [r.id for r in config.rankers]]
    replace_partitions(con, "monitoring.version_daily", days,
                       " UNION ALL ".join(parts) if parts else None, params)
    daily = version_daily(con)
    versions = model_versions(daily)

    def rebuild(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("DELETE FROM monitoring.model_versions")
        if len(versions):
            con.execute("""INSERT INTO monitoring.model_versions BY NAME
                           SELECT *, now()::TIMESTAMP AS computed_at FROM _versions""")

    con.register("_versions", versions)
    try:
        edit(con, "monitoring.model_versions", rebuild)
    finally:
        con.unregister("_versions")
    return versions


def model_versions(daily: pd.DataFrame) -> pd.DataFrame:
    """One row per model and version: first and last day seen, share of the model's traffic on the
    model's last day with traffic, role on that day (the champion serves most; other versions serving
    are challengers; versions not serving are retired) and the first day it was champion."""
    cols = ["model_id", "model_version", "first_seen", "last_seen", "traffic_share", "role", "champion_since"]
    if daily.empty:
        return pd.DataFrame(columns=cols)
    champ = champions(daily)
    out = daily.groupby(["model_id", "model_version"], as_index=False).agg(
        first_seen=("partition_date", "min"), last_seen=("partition_date", "max"))
    last_day = daily.groupby("model_id").partition_date.max()
    last = daily[daily.partition_date == daily.model_id.map(last_day)]
    share = (last.volume / last.groupby("model_id").volume.transform("sum")).groupby(
        [last.model_id, last.model_version]).sum()
    out["traffic_share"] = [float(share.get((m, v), 0.0)) for m, v in zip(out.model_id, out.model_version, strict=True)]
    current = champ[champ.partition_date == champ.model_id.map(last_day)].set_index("model_id").model_version
    out["role"] = ["champion" if current.get(m) == v else ("challenger" if s > 0 else "retired")
                   for m, v, s in zip(out.model_id, out.model_version, out.traffic_share, strict=True)]
    since = champ.groupby(["model_id", "model_version"]).partition_date.min()
    out["champion_since"] = [since.get((m, v)) for m, v in zip(out.model_id, out.model_version, strict=True)]
    return out[cols]


# -- reference batches -----------------------------------------------------------------------------------


def anchor_day(con: duckdb.DuckDBPyConnection, model_id: str, version: str, champion_since: dt.date) -> dt.date:
    """Where a version's reference batch starts: the first day it was champion, or a later day an
    engineer re-anchored it to (the latest such decision counts)."""
    row = con.execute("""SELECT anchor_day FROM monitoring.reference_anchors WHERE model_id = ? AND model_version = ?
                         ORDER BY set_at DESC LIMIT 1""", [model_id, version]).fetchone()
    return row[0] if row else champion_since


def reanchor(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model_id: str, version: str, day: str,
             by: str, reason: str) -> str:
    """Re-anchor a version's reference batch on `day` (by hand): its losses of that day and the next
    `reference_days` become the reference the trigger compares with."""
    _known_model(config, model_id)
    if not by.strip() or not reason.strip():
        raise ValueError("say who decides (by) and why (reason): both are recorded")
    anchor = dt.date.fromisoformat(day)
    known = con.execute("SELECT count(*) FROM monitoring.version_daily WHERE model_id = ? AND model_version = ?",
                        [model_id, version]).fetchone()[0]
    if not known:
        raise ValueError(f"{model_id} has no version {version!r} in the logs")
    # Two commits: the anchor first; stored losses of another anchor are never read for this one (`reference_batch`).
    edit(con, "monitoring.reference_anchors", lambda c: c.execute(
        "INSERT INTO monitoring.reference_anchors VALUES (?, ?, ?, ?, now()::TIMESTAMP, ?)",
        [model_id, version, anchor, by.strip(), reason.strip()]))
    edit(con, "monitoring.reference_losses", lambda c: c.execute("DELETE FROM monitoring.reference_losses"),
         _version_rows(model_id, version))
    days = _known_model(config, model_id).retraining.reference_days
    return (f"{model_id} {version}: reference batch re-anchored on {anchor} ({days} days); the next run of "
            "monitoring/retraining_trigger rebuilds it")


def reference_batch(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: Subject, version: str,
                    anchor: dt.date, as_of: dt.date, from_file: bool = False) -> np.ndarray | None:
    """The version's reference losses: its labelled predictions of `anchor` and the next
    `reference_days - 1` days, the earliest `reference_rows`. Stored once complete (the last reference
    day is `label_delay_days` behind `as_of`); recomputed while labels may still arrive. None while
    the reference days are not over. A ranker's (`from_file`: its reference file's requests) in
    `_ranker_reference`."""
    r = model.retraining
    end = anchor + dt.timedelta(days=r.reference_days - 1)
    if as_of <= end and not from_file:
        return None
    stored = con.execute("""SELECT loss, complete FROM monitoring.reference_losses
                            WHERE model_id = ? AND model_version = ? AND anchor_day = ?""",
                         [model.id, version, anchor]).df()
    if len(stored) and stored.complete.all() and not from_file:
        return stored.loss.to_numpy(dtype=float)
    if isinstance(model, RankerConfig):
        return _ranker_reference(con, config, model, version, anchor, end, from_file)
    sql, params = labelled_losses_sql(con, config, anchor, end, [model])
    complete = as_of >= end + dt.timedelta(days=config.label_delay_days)

    def store(con: duckdb.DuckDBPyConnection) -> None:
        with transaction(con):
            con.execute("DELETE FROM monitoring.reference_losses WHERE model_id = ? AND model_version = ?",
                        [model.id, version])
            con.execute(f"""INSERT INTO monitoring.reference_losses
                            SELECT model_id, model_version, ?::DATE, prediction_id, partition_date, loss, ?,
                                   now()::TIMESTAMP
                            FROM ({sql}) WHERE model_version = ?
                            QUALIFY row_number() OVER (ORDER BY ts, prediction_id) <= ?""",
                        [anchor, complete, *params, version, r.reference_rows])

    edit(con, "monitoring.reference_losses", store, _version_rows(model.id, version))
    return con.execute("""SELECT loss FROM monitoring.reference_losses WHERE model_id = ? AND model_version = ?""",
                       [model.id, version]).fetchnumpy()["loss"].astype(float)


def _file_losses(config: MonitorConfig, ranker: RankerConfig, version: str) -> pd.DataFrame | None:
    """A ranker's reference file's per-request losses of `version` (file order), None without a graded
    reference or without a request of that version in it."""
    ref = RL.reference_of(config, ranker)
    if ref is None or ref.losses is None:
        return None
    mine = ref.losses[ref.losses.model_version == version]
    return mine if len(mine) else None


def _ranker_reference(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, version: str,
                      anchor: dt.date, end: dt.date, from_file: bool) -> np.ndarray:
    """A ranker version's reference losses, stored in monitoring.reference_losses (prediction_id: the request):
    - `from_file`: the requests of its reference file (impressions with grades or events), the first
      `reference_rows` in file order, one loss 1 - NDCG@main_k each; no day (partition_date NULL); re-read on
      every run (a new reference file counts at once);
    - else its own requests of `anchor`..`end` whose interactions are all read, the earliest `reference_rows`;
      complete once every day's interactions are read."""
    r = ranker.retraining
    if from_file:
        losses = _file_losses(config, ranker, version)
        frame = (losses if losses is not None else pd.DataFrame(columns=["request_id", "loss"])).head(r.reference_rows)
        frame = frame.assign(partition_date=None, complete=True)
    else:
        frame, pending = _ranker_losses(con, config, ranker, anchor, end)
        frame = frame[frame.model_version == version].head(r.reference_rows).assign(complete=not pending)
    rows = pd.DataFrame({"model_id": ranker.id, "model_version": version, "anchor_day": anchor,
                         "prediction_id": frame.request_id.astype(str).to_numpy(),
                         "partition_date": pd.Series(frame.partition_date.to_numpy(), dtype=object),
                         "loss": frame.loss.to_numpy(dtype=float), "complete": frame.complete.to_numpy(dtype=bool)})
    def store(con: duckdb.DuckDBPyConnection) -> None:
        with transaction(con):
            con.execute("DELETE FROM monitoring.reference_losses WHERE model_id = ? AND model_version = ?",
                        [ranker.id, version])
            if len(rows):
                con.execute("""INSERT INTO monitoring.reference_losses BY NAME
                               SELECT *, now()::TIMESTAMP AS computed_at FROM _ref""")

    con.register("_ref", rows)
    try:
        edit(con, "monitoring.reference_losses", store, _version_rows(ranker.id, version))
    finally:
        con.unregister("_ref")
    return rows.loss.to_numpy(dtype=float)


def _version_rows(model_id: str, version: str) -> str:
    """The predicate of one model version's rows (an `edit` of its reference batch)."""
    return f"model_id = {sql_str(model_id)} AND model_version = {sql_str(version)}"


def _ranker_losses(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, first: dt.date,
                   last: dt.date) -> tuple[pd.DataFrame, list[dt.date]]:
    """Per request of the ranker's days `first`..`last` whose interactions are all read (`ranking.logic.
    request_losses`): model_version, request_id, loss, main (the main metric's value), partition_date; and the
    days still waiting for theirs."""
    frames, pending = [], []
    for i in range((last - first).days + 1):
        day = first + dt.timedelta(days=i)
        losses = RL.request_losses(con, config, ranker, day)
        if losses is None:
            pending.append(day)
        elif len(losses):
            frames.append(losses.assign(partition_date=day))
    columns = ["model_version", "request_id", "loss", "main", "partition_date"]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return frame, pending


def _ranker_reference_source(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig,
                             version: str, since: dt.date) -> tuple[dt.date, bool]:
    """Where a ranker version's reference batch comes from: an anchor set by hand (`reanchor`) wins, and its
    own days from there are the batch; else the reference file when it holds requests of that version (tested
    from the day it became champion); else its own first `reference_days` days, as a model's."""
    by_hand = con.execute("SELECT count(*) FROM monitoring.reference_anchors WHERE model_id = ? AND model_version = ?",
                          [ranker.id, version]).fetchone()[0]
    if not by_hand and _file_losses(config, ranker, version) is not None:
        return since, True
    return anchor_day(con, ranker.id, version, since), False


# -- the trigger -----------------------------------------------------------------------------------------


@dataclass
class TriggerRun:
    rows: pd.DataFrame  # monitoring.retraining_trigger rows of the run's days
    opened: list[dict]  # requests opened by this run
    superseded: int


@dataclass
class _Version:
    """One champion version's trigger inputs during a run: its reference and its daily losses since the
    reference ended (the stored days before the run, this run's fresh ones)."""

    model: Subject
    version: str
    anchor: dt.date
    from_file: bool = False  # a ranker's reference file: tested from `anchor` on (no reference days)
    reference: np.ndarray | None = None  # its losses, capped at `cap`
    cap: float = math.inf  # the largest loss the trigger counts (TriggerSettings.cap_quantile of the reference)
    reference_daily: tuple[list[float], list[float]] | None = None  # per reference day: count and capped sum
    calibration: Calibration | None = None
    path_days: list[dt.date] | None = None
    path: tuple[np.ndarray, np.ndarray] | None = None  # CUSUM values and run starts (indexes into path_days)
    daily: dict[dt.date, tuple[float, float]] | None = None  # day: (count, sum) of losses

    @property
    def first_test_day(self) -> dt.date:
        return self.anchor if self.from_file else self.anchor + dt.timedelta(days=self.model.retraining.reference_days)


def run_trigger(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> TriggerRun:
    """The trigger for every model on `days` (oldest first): each champion's CUSUM from its reference's
    end, the sequential p-values adjusted across the day's models, persistence, requests; write
    monitoring.retraining_trigger for those days. The CUSUM is recomputed from the daily counts and mean
    losses: the stored days before the run and this run's days (fresh, with the labels that arrived)."""
    days = sorted(days)
    daily = version_daily(con, max(days))
    champ = champions(daily)
    everyone = subjects(config)
    longest = max((m.retraining.window_days for m in everyone), default=1)
    first = min(days) - dt.timedelta(days=longest - 1)
    since = champ.groupby(["model_id", "model_version"]).partition_date.min()
    history, flags = _trigger_history(con, min(days))
    requests = con.execute("SELECT * FROM monitoring.retraining_requests").df()
    versions: dict[tuple[str, str], _Version] = {}
    for day in days:  # the champions of the run's days, their reference batches (and caps) first
        for model in everyone:
            served = champ[(champ.model_id == model.id) & (champ.partition_date <= day)]
            if len(served) and (model.id, served.model_version.iloc[-1]) not in versions:
                champion = served.model_version.iloc[-1]
                start = since[(model.id, champion)]
                if isinstance(model, RankerConfig):
                    anchor, from_file = _ranker_reference_source(con, config, model, champion, start)
                else:
                    anchor, from_file = anchor_day(con, model.id, champion, start), False
                v = versions[(model.id, champion)] = _Version(model, champion, anchor, from_file)
                _load_reference(con, config, v, max(days))
    sums, waiting = _loss_sums(con, config, first, max(days), {k: v.cap for k, v in versions.items()})
    sums, estimated = _with_expected_losses(con, config, days, versions, sums)
    for v in versions.values():
        _build_path(v, history, sums, days)
    out, opened = [], []
    for day in days:
        statistics, calibrations, meta = {}, {}, {}
        for model in everyone:
            r = model.retraining
            served = champ[(champ.model_id == model.id) & (champ.partition_date <= day)]
            if served.empty:
                continue
            version = served.model_version.iloc[-1]
            v = versions[(model.id, version)]
            ready = v.reference is not None and day >= v.first_test_day
            window_start = max(day - dt.timedelta(days=r.window_days - 1), v.first_test_day)
            window = _window_moments(sums, model.id, version, window_start, day)
            today = _window_moments(sums, model.id, version, day, day)
            band = reference_band(v.reference, today.n) if ready and today.n else (math.nan, math.nan)
            note, value, start = "", math.nan, window_start
            if not ready:
                note = f"reference batch builds until {v.first_test_day - dt.timedelta(days=1)}"
            elif len(v.reference) < r.min_rows or window.n < r.min_rows:
                note = f"fewer than {r.min_rows} labelled rows in the last {r.window_days} days or the reference"
            elif not v.calibration.usable:
                note = "the reference batch has no spread: nothing to standardise by"
            if ready and v.calibration.usable:
                i = v.path_days.index(day)
                value = float(v.path[0][i])
                if value > 0:
                    start = v.path_days[int(v.path[1][i])]
                if not note:
                    statistics[model.id], calibrations[model.id] = value, v.calibration
            current = _path_moments(v, start, day) if ready else (0, math.nan)
            if (model.id, day) in waiting:
                note = "; ".join(filter(None, [note, "the day's interactions are not all read yet: its requests "
                                                     "count once they are"]))
            unlabelled = estimated.get((model.id, version, day), 0)
            if unlabelled:
                note = "; ".join(filter(None, [note, f"{unlabelled} of the day's rows have no label yet: their "
                                                     f"expected losses (from the model's estimator) are counted"]))
            meta[model.id] = (v, ready, start, today, band, note, value, current, (window_start, window))
        # One family: every model and ranker tested today.
        tested = evaluate_day(statistics, calibrations, FAMILY) if statistics else None
        by_model = tested.set_index("model_id") if tested is not None else pd.DataFrame()
        for model in everyone:
            if model.id not in meta:
                continue
            v, ready, start, today, band, note, value, current, window = meta[model.id]
            t = by_model.loc[model.id] if model.id in by_model.index else None
            p = float(t.p_value) if t is not None else math.nan
            flagged = bool(t.flagged) if t is not None else False
            key = (model.id, v.version, v.anchor)
            if t is not None and not math.isnan(p):
                flags.setdefault(key, []).append(flagged)
            out.append({
                "partition_date": day, "model_id": model.id, "model_version": v.version, "loss": loss_of(model),
                "n_day": today.n, "mean_loss_day": today.mean, "band_low": band[0], "band_high": band[1],
                "window_start": start if start <= day else None,
                "n_current": current[0] if current[0] else None,
                "mean_current": current[1] if current[0] else None, "reference_anchor": v.anchor,
                "n_reference": len(v.reference) if ready else None,
                "mean_reference": v.calibration.reference_mean if ready else None,
                "statistic": value if not math.isnan(value) else None, "p_value": p,
                "p_adjusted": float(t.p_adjusted) if t is not None else None, "flagged": flagged, "note": note})
            settings = settings_for(model)
            if flagged and persistence_met(flags[key], settings.persistence_k, settings.persistence_n):
                expected = sum(n for (m, ver, d), n in estimated.items()
                               if m == model.id and ver == v.version and start <= d <= day)
                request = _maybe_open(con, requests, v, day, start, current, window, t, len(statistics), settings,
                                      expected)
                if request is not None:
                    opened.append(request)
                    requests = pd.concat([requests, pd.DataFrame([request])], ignore_index=True)
    rows = pd.DataFrame(out)
    _write_trigger_rows(con, days, rows)
    superseded = supersede(con, champ)
    return TriggerRun(rows, opened, superseded)


def _loss_sums(con: duckdb.DuckDBPyConnection, config: MonitorConfig, first: dt.date, last: dt.date,
               caps: dict[tuple[str, str], float]) -> tuple[pd.DataFrame, set[tuple[str, dt.date]]]:
    """Per model (and ranker), version and day: labelled rows (a ranker's requests whose interactions are all
    read), sum and sum of squares of their losses, each capped at its version's cap (`caps`; a version not there,
    or with an infinite cap, keeps its whole losses); and the (ranker, day)s still waiting for interactions."""
    rankers, waiting = _ranker_loss_sums(con, config, first, last)
    parts = [_model_loss_sums(con, config, first, last, caps), rankers]
    sums = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    sums["partition_date"] = pd.to_datetime(sums.partition_date).dt.date
    return sums.set_index(["model_id", "model_version", "partition_date"]).sort_index(), waiting


def _ranker_loss_sums(con: duckdb.DuckDBPyConnection, config: MonitorConfig, first: dt.date, last: dt.date
                      ) -> tuple[pd.DataFrame, set[tuple[str, dt.date]]]:
    """`_loss_sums` of the rankers, from the ranking stage's own figures (`monitoring.ranking_performance`, per
    version): the day's mean per-request loss 1 - NDCG@main_k and its standard error over its n requests (all of
    them, or those with a relevant item under `no_relevant: exclude`) give n, the sum and the sum of squares
    (sum x^2 = (n - 1) n se^2 + n mean^2), so the impressions are not read twice. Only days whose interactions
    are all read (`labels_complete`) count; the others are returned as waiting. A ranker's loss is never capped
    (`settings_for`), which sums could not do."""
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                          {"model_id": object, "model_version": object, "partition_date": object, "n": "int64",
                           "s": float, "ss": float}.items()})
    if not config.rankers:
        return empty, set()
    policy = pd.DataFrame({"model_id": [r.id for r in config.rankers],
                           "exclude": [r.ranking.no_relevant == "exclude" for r in config.rankers]})
    con.register("_policy", policy)
    try:
        rows = con.execute(f"""
            SELECT p.model_id, p.model_version, p.partition_date, p.value AS mean, p.standard_error AS se,
                   CASE WHEN x.exclude THEN r.value ELSE p.n_requests END AS n, p.labels_complete
            FROM {RL.PERFORMANCE} AS p JOIN _policy AS x USING (model_id)
            LEFT JOIN {RL.PERFORMANCE} AS r ON r.partition_date = p.partition_date AND r.model_id = p.model_id
                 AND r.model_version = p.model_version AND r.metric = ?
            WHERE p.metric = 'mean_loss' AND p.model_version <> ? AND p.partition_date BETWEEN ? AND ?""",
                           [RL.RELEVANT, RL.ALL_VERSIONS, first, last]).df()
    finally:
        con.unregister("_policy")
    waiting = {(m, pd.Timestamp(d).date()) for m, d, c in zip(rows.model_id, rows.partition_date,
                                                               rows.labels_complete, strict=True) if not c}
    rows = rows[rows.labels_complete.astype(bool) & (rows.n.fillna(0) > 0) & rows["mean"].notna()]
    if rows.empty:
        return empty, waiting
    n = rows.n.to_numpy(dtype=float)
    mean = rows["mean"].to_numpy(dtype=float)
    se = np.nan_to_num(rows.se.to_numpy(dtype=float))  # one request: no standard error, no spread
    return pd.DataFrame({"model_id": rows.model_id.to_numpy(), "model_version": rows.model_version.to_numpy(),
                         "partition_date": rows.partition_date.to_numpy(), "n": n.astype(np.int64), "s": n * mean,
                         "ss": (n - 1) * n * se ** 2 + n * mean ** 2}), waiting


def _model_loss_sums(con: duckdb.DuckDBPyConnection, config: MonitorConfig, first: dt.date, last: dt.date,
                     caps: dict[tuple[str, str], float]) -> pd.DataFrame:
    """`_loss_sums` of the models (not rankers), unindexed."""
    columns = {"model_id": object, "model_version": object, "partition_date": object, "n": "int64", "s": float,
               "ss": float}
    parts = [pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})]
    capped_versions = pd.DataFrame([(m, v, c) for (m, v), c in caps.items() if math.isfinite(c)],
                                   columns=["model_id", "model_version", "cap"]).astype({"cap": float})
    con.register("_caps", capped_versions)
    try:
        for chunk in model_chunks(config.models, MODELS_PER_QUERY):  # memory holds a few models' rows at a time
            sql, params = labelled_losses_sql(con, config, first, last, chunk)
            parts.append(con.execute(f"""
                SELECT model_id, model_version, partition_date, count(*) AS n, sum(c_loss) AS s,
                       sum(c_loss * c_loss) AS ss
                FROM (SELECT l.model_id, l.model_version, l.partition_date,
                             CASE WHEN c.cap IS NULL THEN l.loss ELSE least(l.loss, c.cap) END AS c_loss
                      FROM ({sql}) AS l LEFT JOIN _caps AS c USING (model_id, model_version))
                GROUP BY ALL""", params).df())
    finally:
        con.unregister("_caps")
    return pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)


def _with_expected_losses(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                          versions: dict[tuple[str, str], _Version], sums: pd.DataFrame
                          ) -> tuple[pd.DataFrame, dict[tuple[str, str, dt.date], int]]:
    """`sums` with, on the run's days whose labels may still come (the last `label_delay_days`), each unlabelled
    row's expected loss added, from the estimator of `monitoring.estimators`, capped like the realized losses:
    - a classifier's log loss: what its calibrated score says (exact for each outcome, given the calibration);
    - a regressor's squared or absolute error: the DLE loss models' predicted loss for the row (bias-corrected,
      by the density ratio where the inputs have shifted), its second moment and capping from the assumption
      that the loss is the prediction times a ratio of the reference's own realized / predicted losses at
      similar predicted loss (`stats.estimation.LossEstimator.expected_losses`).
    Only where the day's expected mean is above the reference's. So a shift that moves a model to where it does
    worse moves the trigger before the labels land; when they land, the refreshed days count the realized
    losses instead.
    Returns (the sums, (model, version, day) -> rows counted by expectation)."""
    recent = [d for d in days if d > max(days) - dt.timedelta(days=config.label_delay_days + 1)]
    models = {v.model.id: v.model for v in versions.values()
              if isinstance(v.model, ModelConfig) and v.model.estimation_method != "none"
              and loss_of(v.model) in _EXPECTABLE.get(v.model.task, ())}
    if not recent or not models:
        return sums, {}
    from monitor_assets.stats.estimation import ConfidenceEstimator, LossEstimator, feature_matrix, from_text

    fitted = {m: from_text(text) for m, text in stored_estimators(con, list(models)).items()}
    extra, counted = [], {}
    for model in models.values():
        estimator = fitted.get(model.id)
        if not isinstance(estimator, ConfidenceEstimator | LossEstimator) or (
                isinstance(estimator, LossEstimator) and not estimator.ratios):  # a fit from before the ratios
            continue
        rows = _unlabelled_rows(con, config, model, recent, isinstance(estimator, LossEstimator))
        for (version, day), part in rows.groupby(["model_version", "partition_date"]) if len(rows) else ():
            v = versions.get((model.id, version))
            if v is None or v.reference is None:
                continue
            score = part.score.to_numpy(float)
            if isinstance(estimator, ConfidenceEstimator):
                mean, square = expected_losses("log_loss", estimator.calibration(score), score, v.cap)
            else:
                x = feature_matrix(part, [(f.name, f.type == "categorical") for f in model.features],
                                   estimator.categories)
                mean, square = estimator.expected_losses(x, score, loss_of(model), v.cap, seed=day.toordinal())
            # Estimates only add evidence of harm: rows expected to do no worse than the reference wait for
            # their labels (counting them would pull the sum down and could hide a concept shift, which the
            # estimator cannot see, until the labels land).
            if not v.calibration.usable or mean.mean() <= v.calibration.reference_mean:
                continue
            extra.append({"model_id": model.id, "model_version": version, "partition_date": day,
                          "n": len(score), "s": float(mean.sum()), "ss": float(square.sum())})
            counted[(model.id, version, day)] = len(score)
    if not extra:
        return sums, {}
    both = pd.concat([sums.reset_index(), pd.DataFrame(extra)], ignore_index=True)
    merged = both.groupby(["model_id", "model_version", "partition_date"])[["n", "s", "ss"]].sum()
    return merged.sort_index(), counted


# The losses whose expectation an estimator gives, per task.
_EXPECTABLE = {"binary_classification": ("log_loss",), "regression": ("squared_error", "absolute_error")}


def _unlabelled_rows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model: ModelConfig,
                     recent: list[dt.date], with_features: bool) -> pd.DataFrame:
    """A model's served rows on `recent` days whose label has not landed: version, day, score (and features)."""
    from monitor_assets.storage.reads import model_feature_select

    lake = lake_of(con)
    if with_features:
        if not lake.has_table(lake.model_path(model.id)):
            return pd.DataFrame()
        source = lake.model_relation(con, model.id)
        features = f", {model_feature_select(config, model.id, 'p.')}" if model.features else ""
    else:
        source, features = f"({lake.predictions_union(con, [model.id])})", ""
    rows = con.execute(f"""
        SELECT coalesce(p.model_version, '') AS model_version, p.partition_date, p.score{features}
        FROM {source} AS p
        ANTI JOIN ({latest_labels_sql([model.id], since="?::DATE")}) AS l USING (prediction_id)
        WHERE p.partition_date IN (SELECT unnest(?::DATE[])) AND p.model_id = ? AND p.is_ok
              AND p.score IS NOT NULL AND isfinite(p.score)""", [min(recent), recent, model.id]).df()
    if len(rows):
        rows["partition_date"] = pd.to_datetime(rows.partition_date).dt.date
    return rows


def _trigger_history(con: duckdb.DuckDBPyConnection, before: dt.date
                     ) -> tuple[pd.DataFrame, dict[tuple[str, str, dt.date], list[bool]]]:
    """Earlier days: their losses feed the CUSUM, their flags (per model, version, anchor) persistence."""
    history = con.execute("""SELECT model_id, model_version, reference_anchor, partition_date, n_day, mean_loss_day,
                                    p_value, flagged
                             FROM monitoring.retraining_trigger WHERE partition_date < ? ORDER BY partition_date""",
                          [before]).df()
    history["partition_date"] = pd.to_datetime(history.partition_date).dt.date
    history["reference_anchor"] = pd.to_datetime(history.reference_anchor).dt.date
    flags: dict[tuple[str, str, dt.date], list[bool]] = {}
    for r in history[history.p_value.notna()].itertuples():
        flags.setdefault((r.model_id, r.model_version, r.reference_anchor), []).append(bool(r.flagged))
    return history, flags


def _write_trigger_rows(con: duckdb.DuckDBPyConnection, days: list[dt.date], rows: pd.DataFrame) -> None:
    """Replace the days' rows of monitoring.retraining_trigger, in one commit."""
    replace_partitions_from_frame(con, "monitoring.retraining_trigger", days, rows)


def _load_reference(con, config: MonitorConfig, v: _Version, as_of: dt.date) -> None:
    """The version's reference batch as of `as_of` (None while its days are not over), its cap, its capped
    losses per reference day (the rolling baseline's first days and the weekday profile) and its calibration."""
    reference = reference_batch(con, config, v.model, v.version, v.anchor, as_of, v.from_file)
    if reference is None:
        return
    settings = settings_for(v.model)
    v.cap = loss_cap(reference, settings.cap_quantile)
    v.reference = capped(reference, v.cap)
    days = v.model.retraining.reference_days
    if v.from_file:  # no days: calibrated again (`_build_path`) once the tested days' requests are known
        _calibrate_file(v, len(v.reference) / days)
        return
    per_day = dict(con.execute("""SELECT partition_date, [count(*), sum(least(loss, ?))]
                                  FROM monitoring.reference_losses WHERE model_id = ? AND model_version = ?
                                  GROUP BY 1""", [v.cap, v.model.id, v.version]).fetchall())
    ref_days = [v.anchor + dt.timedelta(days=i) for i in range(days)]
    v.reference_daily = ([float(per_day.get(d, [0, 0])[0]) for d in ref_days],
                         [float(per_day.get(d, [0, 0])[1] or 0.0) for d in ref_days])
    v.calibration = calibrate(Moments.of(v.reference), sum(1 for c in v.reference_daily[0] if c)
                              or v.model.retraining.reference_days, settings)


def _calibrate_file(v: _Version, rows_per_day: float) -> None:
    """A reference file has no days: it stands for `reference_days` alike days (no weekday profile) of
    `rows_per_day` requests, the tested days' own rate (the CUSUM's shift and its p-value are per day of
    traffic: a file of 2,000 requests tested against days of 250 is not 14 days of 143)."""
    days = v.model.retraining.reference_days
    mean = float(np.mean(v.reference)) if len(v.reference) else 0.0
    v.reference_daily = ([rows_per_day] * days, [rows_per_day * mean] * days)
    v.calibration = calibrate(Moments.of(v.reference), max(len(v.reference) / rows_per_day, 1e-9) if rows_per_day > 0
                              else days, settings_for(v.model))


def _build_path(v: _Version, history: pd.DataFrame, sums: pd.DataFrame, days: list[dt.date]) -> None:
    """The version's CUSUM over the days from the reference's end to the run's last day (stored days before
    the run, fresh capped sums for the run's days) against its baseline (TriggerSettings.baseline_lag_days)."""
    if v.reference is None:
        return
    stored = history[(history.model_id == v.model.id) & (history.model_version == v.version)
                     & (history.reference_anchor == v.anchor) & (history.partition_date >= v.first_test_day)
                     & (history.n_day.fillna(0) > 0)]
    v.daily = {r.partition_date: (float(r.n_day), float(r.n_day) * float(r.mean_loss_day)) for r in stored.itertuples()}
    try:
        fresh = sums.loc[(v.model.id, v.version)]
    except KeyError:
        fresh = sums.iloc[0:0]
    for d, r in fresh.iterrows():
        if d >= max(min(days), v.first_test_day):
            v.daily[d] = (float(r.n), float(r.s))
    first_day = v.first_test_day
    v.path_days = [first_day + dt.timedelta(days=i) for i in range(max((max(days) - first_day).days + 1, 0))]
    counts = [v.daily.get(d, (0.0, 0.0))[0] for d in v.path_days]
    if v.from_file and any(counts):  # the median day with requests sets the file's rows a day
        _calibrate_file(v, float(np.median([c for c in counts if c])))
    totals = [v.daily.get(d, (0.0, 0.0))[1] for d in v.path_days]
    if v.calibration.usable and v.path_days:
        ref_counts, ref_sums = v.reference_daily
        ref_start = v.first_test_day - dt.timedelta(days=len(ref_counts))
        weekdays = [(ref_start + dt.timedelta(days=i)).weekday() for i in range(len(ref_counts) + len(counts))]
        baseline = baseline_means(ref_counts + counts, ref_sums + totals, weekdays, len(ref_counts),
                                  settings_for(v.model))
        v.path = cusum(counts, totals, v.calibration, baseline)


def _path_moments(v: _Version, start: dt.date, end: dt.date) -> tuple[int, float]:
    """Labelled rows and mean loss of the version's days start..end (from the CUSUM's daily sums)."""
    if v.daily is None or start > end:
        return 0, math.nan
    n = sum(c for d, (c, _) in v.daily.items() if start <= d <= end)
    total = sum(s for d, (_, s) in v.daily.items() if start <= d <= end)
    return int(n), (total / n if n else math.nan)


def _window_moments(sums: pd.DataFrame, model_id: str, version: str, start: dt.date, end: dt.date) -> Moments:
    if start > end:
        return Moments(0, math.nan, math.nan)
    try:
        part = sums.loc[(model_id, version)]
    except KeyError:
        return Moments(0, math.nan, math.nan)
    part = part[(part.index >= start) & (part.index <= end)]
    return Moments.from_sums(float(part.n.sum()), float(part.s.sum()), float(part.ss.sum()))


def _maybe_open(con, requests: pd.DataFrame, v: _Version, day: dt.date, start: dt.date, current: tuple[int, float],
                window: tuple[dt.date, Moments], t, family: int, settings: TriggerSettings,
                expected_rows: int = 0) -> dict | None:
    """A request, unless this version has one proposed or approved, or one superseded (it is no longer
    champion: a rerun of its last days must not ask again), or one opened within the last window."""
    model, version = v.model, v.version
    mine = requests[(requests.model_id == model.id) & (requests.model_version == version)] if len(requests) else requests
    if len(mine):
        opened_on = pd.to_datetime(mine.opened_on).dt.date
        if (mine.status.isin([*ACTIVE, "superseded"]).any()
                or (opened_on > day - dt.timedelta(days=settings.window_days)).any()):
            return None
    cal = v.calibration
    threshold = cusum_threshold(cal, FAMILY.alpha / FAMILY.family_size(family), FAMILY.horizon_days)
    welch = ""
    unit = "requests" if isinstance(model, RankerConfig) else "rows"  # a ranker's loss is per request
    window_start, moments = window
    if moments.n >= 2:
        wt, wp = welch_greater([moments], [Moments.of(v.reference)])
        welch = (f"; {window_start}..{day}: mean {fmt_num(moments.mean)} ({moments.n} {unit}), "
                 f"Welch t {wt[0]:.2f}, {fmt_p(float(wp[0]))}")
    reason = (f"mean {loss_of(model)} {fmt_num(current[1])} since {start} ({current[0]} {unit}) vs reference "
              f"{fmt_num(cal.reference_mean)} ({cal.n_reference} {unit}): CUSUM {t.statistic:.1f} over its threshold "
              f"{threshold:.1f} (tuned for +{cal.delta:.3f} sd), sequential {fmt_p(t.p_value)} within "
              f"{FAMILY.horizon_days} days, {fmt_p(t.p_adjusted).replace('p', 'adjusted p', 1)} across the day's "
              f"{family} models{welch}; over the threshold on {settings.persistence_k}+ of the last "
              f"{settings.persistence_n} tested days"
              + (f"; losses capped at {fmt_num(v.cap)} (the reference's {settings.cap_quantile:g} quantile, as the "
                 f"main metric {model.main_metric} counts rows)" if math.isfinite(v.cap) else "")
              + (f"; {expected_rows} of these rows have no label yet and count with their expected loss from "
                 f"the model's estimator (calibrated scores, or a regressor's loss models; a request to confirm when the labels land)" if expected_rows else ""))
    return insert_request(con, model.id, version, day, reason, float(t.statistic), float(t.p_value),
                          f"{start}..{day}", "trigger")


def insert_request(con: duckdb.DuckDBPyConnection, model_id: str, version: str | None, day: dt.date, reason: str,
                   statistic: float | None, p_value: float | None, window: str | None, opened_by: str) -> dict:
    def add(con: duckdb.DuckDBPyConnection) -> int:
        with transaction(con):
            request_id = con.execute("SELECT coalesce(max(request_id), 0) + 1 FROM monitoring.retraining_requests"
                                     ).fetchone()[0]
            con.execute("""INSERT INTO monitoring.retraining_requests (request_id, model_id, model_version,
                               opened_on, reason, statistic, p_value, "window", status, opened_by, created_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'proposed', ?, now()::TIMESTAMP)""",
                        [request_id, model_id, version, day, reason, statistic, p_value, window, opened_by])
        return request_id

    # Numbered on the table as committed: a request another process added meanwhile makes this one apply again.
    request_id = edit(con, "monitoring.retraining_requests", add)
    return {"request_id": int(request_id), "model_id": model_id, "model_version": version, "opened_on": day,
            "reason": reason, "statistic": statistic, "p_value": p_value, "window": window, "status": "proposed",
            "opened_by": opened_by}


def supersede(con: duckdb.DuckDBPyConnection, champ: pd.DataFrame) -> int:
    """Proposed requests for a version that is no longer its model's champion are superseded."""
    if champ.empty:
        return 0
    latest = champ.sort_values("partition_date").groupby("model_id").tail(1)
    con.register("_champions", latest)
    try:
        return edit(con, "monitoring.retraining_requests", lambda con: con.execute("""
            UPDATE monitoring.retraining_requests AS r SET status = 'superseded', decided_by = 'pipeline',
                   decided_at = now()::TIMESTAMP,
                   note = 'version ' || c.model_version || ' is champion since ' || c.partition_date::VARCHAR
            FROM _champions AS c
            WHERE r.model_id = c.model_id AND r.status = 'proposed' AND r.model_version <> c.model_version
                  AND r.opened_on < c.partition_date""").fetchone()[0])
    finally:
        con.unregister("_champions")


def trigger_failures(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date], check_name: str
                     ) -> list[dict]:
    """Requests opened on `days`, in the alert sensor's failure format (one per model and day). A request
    superseded later still failed its day: a backfill that opens and supersedes it in one run notifies too."""
    rows = con.execute("""SELECT * FROM monitoring.retraining_requests WHERE opened_on IN (SELECT unnest(?::DATE[]))
                          ORDER BY opened_on, model_id""", [days]).df()
    return [{"partition_date": pd.Timestamp(r.opened_on).date(), "model_id": r.model_id, "check_name": check_name,
             "severity": "WARN", "value": r.p_value, "threshold": TRIGGER_ALPHA,
             "message": f"retraining request #{r.request_id} ({r.status}) for {r.model_id} {r.model_version or ''}: "
                        f"{r.reason}. Decide: python -m monitor_assets.retraining approve {r.request_id} --by <you> "
                        f"--note '<why>' (or reject)",
             "details": {"request_id": int(r.request_id), "window": r.window}} for r in rows.itertuples()]


# -- decisions -------------------------------------------------------------------------------------------


def _known_model(config: MonitorConfig, model_id: str) -> Subject:
    """The model or ranker `model_id`."""
    known = {m.id: m for m in subjects(config)}
    if model_id not in known:
        raise ValueError(f"unknown model {model_id!r}; configured: {', '.join(known)}")
    return known[model_id]


def get_request(con: duckdb.DuckDBPyConnection, request_id: int) -> dict:
    rows = con.execute("SELECT * FROM monitoring.retraining_requests WHERE request_id = ?", [request_id]).df()
    if rows.empty:
        raise ValueError(f"no retraining request #{request_id}")
    return rows.iloc[0].to_dict()


def decide(con: duckdb.DuckDBPyConnection, request_id: int, decision: str, by: str, note: str) -> dict:
    """Approve or reject a request (recorded with who, when and why). Approving an approved request
    again is allowed (to rerun a failed training); a decided request cannot change its mind."""
    if decision not in ("approved", "rejected"):
        raise ValueError(f"decision: expected approved or rejected, got {decision!r}")
    if not by.strip():
        raise ValueError("say who decides (by): it is recorded")
    allowed = ("proposed", "approved") if decision == "approved" else ("proposed",)

    def record(con: duckdb.DuckDBPyConnection) -> None:
        # Checked on the rows being edited: a decision committed meanwhile by another process counts.
        request = get_request(con, request_id)
        if request["status"] not in allowed:
            raise ValueError(f"request #{request_id} is {request['status']}; only a "
                             f"{' or '.join(allowed)} request can be {decision}")
        con.execute("""UPDATE monitoring.retraining_requests SET status = ?, decided_by = ?,
                       decided_at = now()::TIMESTAMP, note = ? WHERE request_id = ?""",
                    [decision, by.strip(), note.strip(), request_id])

    edit(con, "monitoring.retraining_requests", record)
    return get_request(con, request_id)


def open_by_hand(con: duckdb.DuckDBPyConnection, config: MonitorConfig, model_id: str, by: str, reason: str,
                 version: str | None = None, day: dt.date | None = None) -> dict:
    """A request the engineer opens (proposed, like the trigger's): for the model's current champion
    unless a version is named."""
    model = _known_model(config, model_id)
    if not by.strip() or not reason.strip():
        raise ValueError("say who opens it (by) and why (reason): both are recorded")
    if version is None:
        row = con.execute("""SELECT model_version FROM monitoring.model_versions WHERE model_id = ? AND role = 'champion'""",
                          [model_id]).fetchone()
        version = row[0] if row else (model.version or None)
    day = day or dt.datetime.now(dt.UTC).date()
    return insert_request(con, model_id, version, day, f"opened by hand by {by.strip()}: {reason.strip()}",
                          None, None, None, by.strip())


def record_outcome(con: duckdb.DuckDBPyConnection, request_id: int, ok: bool, outcome: str, run_id: str | None) -> None:
    """Training finished: done on success; on failure the request stays approved (approve again to retry)."""
    edit(con, "monitoring.retraining_requests", lambda con: con.execute(
        """UPDATE monitoring.retraining_requests SET status = CASE WHEN ? THEN 'done' ELSE status END,
           outcome = ?, run_id = ?, finished_at = now()::TIMESTAMP WHERE request_id = ?""",
        [ok, ("succeeded: " if ok else "failed: ") + outcome[:2000], run_id, request_id]))


# -- running a retraining entry point ---------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainingRequest:
    """What a retraining entry point gets: the request and where things are."""

    request_id: int
    model_id: str
    model_version: str | None
    opened_on: dt.date
    config_file: str
    warehouse_path: str
    lake_path: str
    output_dir: str  # an empty folder of its own for this request's artefacts


def output_dir(config: MonitorConfig, model_id: str, request_id: int) -> Path:
    return Path(config.warehouse_path).parent / "retraining" / model_id / f"request-{request_id}"


def run_entry_point(config: MonitorConfig, request: dict, log: Callable[[str], None]) -> dict:
    """Run the model's configured entry point for an approved request; returns what it reported
    (a callable's returned dict, or a command's exit status and output tail). Raises on failure."""
    model = _known_model(config, request["model_id"])
    r = model.retraining
    folder = output_dir(config, model.id, int(request["request_id"]))
    folder.mkdir(parents=True, exist_ok=True)
    job = RetrainingRequest(int(request["request_id"]), model.id, request.get("model_version") or None,
                            pd.Timestamp(request["opened_on"]).date(), str(config.file), config.warehouse_path,
                            config.lake_path, str(folder))
    if r.entry_point:
        module, _, name = r.entry_point.partition(":")
        fn = getattr(importlib.import_module(module), name)
        log(f"calling {r.entry_point} for request #{job.request_id} ({model.id})")
        result = fn(job)
        return dict(result or {})
    if r.command:
        fields = {"model_id": model.id, "request_id": str(job.request_id), "output_dir": str(folder),
                  "model_version": job.model_version or "", "opened_on": str(job.opened_on)}
        args = [a.format(**fields) for a in r.command]
        env = {**os.environ, "MONITOR_MODEL_ID": model.id, "MONITOR_REQUEST_ID": str(job.request_id),
               "MONITOR_OUTPUT_DIR": str(folder), "MONITOR_CONFIG": str(config.file),
               "MONITOR_WAREHOUSE": config.warehouse_path, "MONITOR_LAKE": config.lake_path}
        log(f"running {args!r} for request #{job.request_id} ({model.id})")
        done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=Path(config.file).parent)
        for line in (done.stdout + done.stderr).splitlines()[-200:]:
            log(line)
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        if done.returncode != 0:
            raise RuntimeError(f"command exited with {done.returncode}: " + " | ".join(tail))
        return {"exit_status": 0, "output": " | ".join(tail)}
    raise ValueError(f"{model.id} has no retraining entry_point or command in the config "
                     f"(models[].retraining.entry_point)")


# -- champion vs challenger --------------------------------------------------------------------------------


def compare_day(con: duckdb.DuckDBPyConnection, config: MonitorConfig, daily: pd.DataFrame, day: dt.date
                ) -> pd.DataFrame:
    """For each model serving two or more versions on `day`: champion vs each challenger over the days
    since the challenger first served, on which both served; one row per metric with the day's verdict."""
    rows = []
    today = daily[daily.partition_date == day]
    if not today.model_id.duplicated().any():  # one version a model: nothing to compare (a backfill's usual day)
        return pd.DataFrame(rows)
    champ = champions(daily[daily.partition_date <= day])
    known = {m.id: m for m in subjects(config)}
    for model_id, serving in today.groupby("model_id"):
        if len(serving) < 2 or model_id not in known:
            continue
        model = known[model_id]
        champion = champ[(champ.model_id == model_id) & (champ.partition_date == day)].model_version.iloc[0]
        for challenger in sorted(set(serving.model_version) - {champion}):
            mine = daily[(daily.model_id == model_id)]
            start = mine[mine.model_version == challenger].partition_date.min()
            both = sorted(set(mine[mine.model_version == challenger].partition_date)
                          & set(mine[mine.model_version == champion].partition_date))
            both = [d for d in both if start <= d <= day]
            gates = Gates(latency_p95_ms=model.thresholds.latency_p95_ms, error_rate=model.thresholds.error_rate,
                          alpha=model.retraining.canary_alpha,
                          latency_tolerance=model.retraining.canary_latency_tolerance,
                          min_labelled=model.retraining.canary_min_labelled)
            if isinstance(model, RankerConfig):
                verdict, metrics = _compare_ranker(con, config, model, mine, champion, challenger, both, gates)
            else:
                champ_stats = _version_stats(con, config, model, champion, both)
                stats = {champion: champ_stats,
                         challenger: _version_stats(con, config, model, challenger, both, champ_stats.latency_p95_ms)}
                verdict, metrics = compare_versions(stats[champion], stats[challenger], gates)
            for m in metrics:
                rows.append({"partition_date": day, "model_id": model_id, "champion_version": champion,
                             "challenger_version": challenger, **m, "verdict": verdict,
                             "reason": f"{m['reason']} (days {both[0]}..{both[-1]})" if both else m["reason"]})
    return pd.DataFrame(rows)


def _compare_ranker(con: duckdb.DuckDBPyConnection, config: MonitorConfig, ranker: RankerConfig, daily: pd.DataFrame,
                    champion: str, challenger: str, days: list[dt.date], gates: Gates) -> tuple[str, list[dict]]:
    """A ranker's champion vs challenger over `days`: their requests whose interactions are all read, the loss
    1 - NDCG@main_k per request (Mann-Whitney, as a model's) and the main metric's per-request values (Welch);
    no latency or error gate (the ranked lists carry neither)."""
    losses = _ranker_losses(con, config, ranker, min(days), max(days))[0] if days else pd.DataFrame(
        columns=["model_version", "request_id", "loss", "main", "partition_date"])
    losses = losses[losses.partition_date.isin(days)]
    per = {}
    for version in (champion, challenger):
        mine = losses[losses.model_version == version]
        served = int(daily[(daily.model_version == version) & daily.partition_date.isin(days)].volume.sum())
        per[version] = (VersionStats(version, n=served, n_errors=0, latency_p95_ms=None, n_labelled=len(mine),
                                     n_correct=None, losses=mine.loss.to_numpy(dtype=float)),
                        mine["main"].to_numpy(dtype=float))
    main = RL.per_request_metric(ranker)
    samples = (MetricSample(ranker.main_metric, per[champion][1], per[challenger][1],
                            ranker.main_metric not in RL.RANKING_LOWER_IS_BETTER),) if main else ()
    return compare_versions(per[champion][0], per[challenger][0], gates, samples, served=False)


def _version_stats(con, config: MonitorConfig, model: ModelConfig, version: str, days: list[dt.date],
                   champion_p95: float | None = None) -> VersionStats:
    served = con.execute(f"""SELECT count(*), count(*) FILTER (WHERE NOT is_ok), quantile_cont(latency_ms, 0.95),
                                    count(*) FILTER (WHERE latency_ms > ?)
                             FROM ({lake_of(con).predictions_union(con, [model.id])})
                             WHERE model_id = ? AND coalesce(model_version, '') = ?
                            AND partition_date IN (SELECT unnest(?::DATE[]))""",
                         [champion_p95, model.id, version, days]).fetchone()
    sql, params = labelled_losses_sql(con, config, min(days), max(days), [model])
    labelled = con.execute(f"""SELECT loss, ((score >= threshold)::INT = label::INT)::INT AS correct FROM ({sql})
                               WHERE model_version = ? AND partition_date IN (SELECT unnest(?::DATE[]))""",
                           [*params, version, days]).df()
    return VersionStats(version, n=int(served[0]), n_errors=int(served[1]),
                        latency_p95_ms=None if served[2] is None else float(served[2]), n_labelled=len(labelled),
                        n_correct=int(labelled.correct.sum()) if model.is_classifier else None,
                        losses=labelled.loss.to_numpy(dtype=float),
                        n_over_champion_p95=None if champion_p95 is None else int(served[3]))


def run_comparison(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date]) -> pd.DataFrame:
    """monitoring.version_comparison for `days`: replaced, one frame back."""
    daily = version_daily(con, max(days))
    frames = [compare_day(con, config, daily, day) for day in sorted(days)]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    replace_partitions_from_frame(con, "monitoring.version_comparison", days, frame)
    return frame


def rollback_failures(frame: pd.DataFrame, check_name: str) -> list[dict]:
    """Days on which a challenger failed its canary gates, in the alert sensor's failure format."""
    if frame.empty:
        return []
    failed = frame[(frame.verdict == "rollback") & (frame.gate == "fail")]
    out = []
    for (day, model_id, champion, challenger), g in failed.groupby(
            ["partition_date", "model_id", "champion_version", "challenger_version"]):
        reasons = "; ".join(f"{r.metric} {fmt_num(r.challenger_value)} vs {fmt_num(r.champion_value)}: {r.reason}"
                            for r in g.itertuples())
        out.append({"partition_date": pd.Timestamp(day).date(), "model_id": model_id, "check_name": check_name,
                    "severity": "ERROR", "value": None, "threshold": None,
                    "message": f"roll back challenger {challenger} (champion {champion}): {reasons}",
                    "details": {"champion": champion, "challenger": challenger}})
    return out



def open_requests(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The requests still waiting for a decision or a training run, newest first."""
    return con.execute("""SELECT request_id, model_id, model_version, opened_on, status, reason
                          FROM monitoring.retraining_requests WHERE status IN ('proposed', 'approved')
                          ORDER BY opened_on DESC""").df()


def models_tested(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> dict[dt.date, int]:
    """Per day, how many models the trigger tested (those with a p-value)."""
    rows = con.execute("""SELECT partition_date, count(*) FILTER (WHERE p_value IS NOT NULL)
                          FROM monitoring.retraining_trigger WHERE partition_date IN (SELECT unnest(?::DATE[]))
                          GROUP BY 1""", [days]).fetchall()
    return {pd.Timestamp(d).date(): int(n) for d, n in rows}


def comparisons(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> pd.DataFrame:
    """The stored champion/challenger comparisons of `days`."""
    return con.execute("""SELECT * FROM monitoring.version_comparison
                          WHERE partition_date IN (SELECT unnest(?::DATE[]))""", [days]).df()


def proposed_requests(con: duckdb.DuckDBPyConnection, model_ids: list[str]) -> list[int]:
    """The ids of the proposed requests of these models, oldest first."""
    rows = con.execute("""SELECT request_id FROM monitoring.retraining_requests WHERE status = 'proposed'
                          AND model_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY request_id""", [model_ids]).fetchall()
    return [rid for (rid,) in rows]
