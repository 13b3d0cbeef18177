"""Rankers in the evaluation store (`monitoring.evaluation_store`): each configured window of a ranker, merged
from its stored daily figures, never from its impressions.

A per-request metric of a day (NDCG@k, precision@k, recall@k, MAP@k, hit rate@k, MRR, the mean loss) is a mean
over the day's requests (with `no_relevant: exclude`, over those with a relevant item, counted each day in the
`relevant_requests` row): the window's value is the mean of the days' values weighted by those counts, which is
exactly the mean over the window's requests. Label coverage adds its counts the same way. Only days whose
interactions are all read count for the label-based figures (as for the daily check).

Catalogue coverage, popularity concentration (share of impressions to the top 1% of the catalogue's items),
novelty and the item drift (Jensen-Shannon) are those of the window's impressions per item: the days' counts
(`monitoring.ranking_item_counts`) added in DuckDB, in the order of each item's first impression, against the
reference as a day is (`ranking.logic._catalogue`). The score drift needs the window's scores, which the days do
not keep: it is not in the store.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.config import MonitorConfig, RankerConfig
from monitor_assets.evaluation.logic import (
    RANKER_SE,
    STORE_COLUMNS,
    WHOLE,
    metric_rows,
    replace_windows,
    settings,
)
from monitor_assets.evaluation.settings import Window, previous, windows_touching
from monitor_assets.ranking.logic import (
    ALL_VERSIONS,
    ITEM_COUNTS,
    PERFORMANCE,
    RELEVANT,
    Reference,
    _catalogue,
)
from monitor_assets.stats import ranking as R
from monitor_assets.stats.trigger import Moments

STANDARD_ERROR = RANKER_SE  # the main metric's window standard error: a store row of its own (the check's)
NOT_MERGED = ("score_drift_ks",)  # needs the window's scores, which the days do not keep
CATALOGUE = ("catalogue_coverage", "popularity_concentration", "novelty", "item_drift_js")  # from the item counts


def _per_request(metric: str) -> bool:
    return metric not in (*NOT_MERGED, *CATALOGUE, RELEVANT, "label_coverage")


def window_standard_error(means: pd.Series, errors: pd.Series, n: pd.Series) -> float:
    """The standard error of a window's mean over its requests from its days' (mean, standard error, requests):
    each day's sum of squares is (n - 1) se^2 n + n mean^2 (se = sd / sqrt(n), sd with n - 1), so the window's
    variance is exact (`Moments.from_sums`). NaN when a day has no standard error (a single request)."""
    if not len(means) or not np.isfinite(errors.to_numpy(float)).all():
        return math.nan
    n, m, se = n.to_numpy(float), means.to_numpy(float), errors.to_numpy(float)
    moments = Moments.from_sums(float(n.sum()), float((n * m).sum()), float(((n - 1) * se * se * n + n * m * m).sum()))
    return math.sqrt(moments.var / moments.n) if moments.n > 1 else math.nan


def merge(days: pd.DataFrame, ranker: RankerConfig) -> tuple[dict[str, float], int, int, int]:
    """(metric -> window value, requests, labelled requests, days) over one version's rows of the window's days
    (`days`: partition_date, metric, value, n_requests, n_labelled_requests, labels_complete)."""
    if not len(days):
        return {}, 0, 0, 0
    per_day = days.drop_duplicates("partition_date").set_index("partition_date")
    requests, labelled = int(per_day.n_requests.sum()), int(per_day.n_labelled_requests.sum())
    complete = per_day[per_day.labels_complete.fillna(False).astype(bool)]
    relevant = days[days.metric == RELEVANT].set_index("partition_date").value
    values: dict[str, float] = {}
    if len(complete) and complete.n_requests.sum():
        values["label_coverage"] = float(complete.n_labelled_requests.sum() / complete.n_requests.sum())
    exclude = ranker.ranking.no_relevant == "exclude"
    for metric, rows in days[days.metric.map(_per_request)].groupby("metric"):
        rows = rows[rows.partition_date.isin(complete.index)].set_index("partition_date")
        weight = relevant.reindex(rows.index).fillna(0.0) if exclude else rows.n_requests.astype(float)
        finite = rows.value.notna() & (weight > 0)
        total = float(weight[finite].sum())
        values[metric] = float((rows.value[finite] * weight[finite]).sum() / total) if total else math.nan
        if metric == ranker.main_metric and "standard_error" in rows:
            values[metric + STANDARD_ERROR] = window_standard_error(rows.value[finite], rows.standard_error[finite],
                                                                    weight[finite])
    return values, requests, labelled, int(per_day.index.nunique())


def window_items(con: duckdb.DuckDBPyConnection, window: Window
                 ) -> dict[tuple[str, str], tuple[R.ItemCounts, int]]:
    """(ranker id, version; `*` every version) -> (the window's impressions per item, the days counted), summed in
    DuckDB from the days' item counts, each item in the order of its first impression (day, then position)."""
    rows = con.execute(f"""
        WITH v AS (SELECT model_id, model_version, item_id, sum(impressions) AS n,
                          min({{'d': partition_date, 'p': first_seen}}) AS o
                   FROM {ITEM_COUNTS} WHERE partition_date BETWEEN $start AND $end GROUP BY ALL),
             d AS (SELECT model_id, model_version, count(DISTINCT partition_date) AS days FROM {ITEM_COUNTS}
                   WHERE partition_date BETWEEN $start AND $end GROUP BY ALL
                   UNION ALL
                   SELECT model_id, $all, count(DISTINCT partition_date) FROM {ITEM_COUNTS}
                   WHERE partition_date BETWEEN $start AND $end GROUP BY ALL)
        SELECT * FROM (SELECT model_id, model_version, item_id, n, o FROM v
                       UNION ALL
                       SELECT model_id, $all, item_id, sum(n), min(o) FROM v GROUP BY ALL) JOIN d USING (model_id, model_version)
        ORDER BY model_id, model_version, o""", {"start": window.start, "end": window.end, "all": ALL_VERSIONS}).df()
    return {(str(m), str(v)): (R.ItemCounts(part.item_id.to_numpy(object), part.n.to_numpy("int64")),
                               int(part.days.iloc[0]))
            for (m, v), part in rows.groupby(["model_id", "model_version"], sort=False)}


def catalogue(items: tuple[R.ItemCounts, int] | None, days: int, ref: Reference | None) -> dict[str, float]:
    """A window's catalogue figures from its impressions per item (`window_items`), as a day's
    (`ranking.logic._catalogue`); none unless every day of the window's figures (`days`) kept its item counts
    (days written before the counts were kept would be left out)."""
    if items is None or items[1] != days or not items[0].total:
        return {}
    items = items[0]
    found = _catalogue(items, ref.items if ref is not None else None, np.array([]), ref)
    return {m: found[m] for m in CATALOGUE}


def window_rows(frame: pd.DataFrame, ranker: RankerConfig, window: Window, last_day: dt.date,
                reference: Reference | None, items: dict | None = None, items_before: dict | None = None
                ) -> list[dict]:
    """The store's rows of one ranker and window, per version and for all (`*`), beside the reference's values
    and the previous window's of the same length; `items`, `items_before`: `window_items` of the window and the
    one before it (None: no catalogue figures)."""
    mine = frame[frame.model_id == ranker.id]
    before = previous(window)
    values_of_reference = reference.values if reference is not None else {}
    rows = []
    for version, part in [(ALL_VERSIONS, mine[mine.model_version == ALL_VERSIONS]),
                          *((v, p) for v, p in mine[mine.model_version != ALL_VERSIONS].groupby("model_version"))]:
        current = part[(part.partition_date >= window.start) & (part.partition_date <= window.end)]
        if not len(current):
            continue
        values, requests, labelled, n_days = merge(current, ranker)
        earlier, *_, days_before = merge(part[(part.partition_date >= before.start)
                                              & (part.partition_date <= before.end)], ranker)
        values.update(catalogue((items or {}).get((ranker.id, str(version))), n_days, reference))
        earlier.update(catalogue((items_before or {}).get((ranker.id, str(version))), days_before, reference))
        common = {"window_id": window.key, "window_name": window.spec.name, "window_kind": window.spec.kind,
                  "window_start": window.start, "window_end": window.end, "model_id": ranker.id,
                  "model_version": str(version), "n_rows": requests, "n_labelled": labelled, "days_profiled": n_days,
                  "complete": window.end <= last_day, "segment": WHOLE, "reference_source": "model"}
        rows += metric_rows(common, dict(sorted(values.items())), values_of_reference, earlier)
    return rows


def write_windows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                  references: dict[str, Reference]) -> pd.DataFrame:
    """Recompute every window holding one of `days` for every ranker (from `monitoring.ranking_performance`,
    read once for those windows and the ones before them, and the item counts summed per window) and replace
    their rows in the store. `references`: the rankers' (`ranking.logic.reference_of`)."""
    windows = windows_touching(settings(config).windows, sorted(set(days)))
    if not windows or not config.rankers:
        return pd.DataFrame(columns=STORE_COLUMNS)
    first = min(previous(w).start for w in windows)
    last = max(w.end for w in windows)
    frame = con.execute(f"""SELECT partition_date, model_id, model_version, metric, value, standard_error, n_requests,
                                   n_labelled_requests, labels_complete
                            FROM {PERFORMANCE} WHERE partition_date BETWEEN ? AND ?""", [first, last]).df()
    frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    last_day = max(days)
    items = {w.key: window_items(con, w) for w in {w.key: w for x in windows for w in (x, previous(x))}.values()}
    rows = [row for ranker in config.rankers for window in windows
            for row in window_rows(frame, ranker, window, last_day, references.get(ranker.id), items[window.key],
                                   items[previous(window).key])]
    out = pd.DataFrame(rows, columns=STORE_COLUMNS)
    replace_windows(con, out, [w.key for w in windows], [r.id for r in config.rankers])
    return out
