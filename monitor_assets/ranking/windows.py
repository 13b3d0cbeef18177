"""Rankers in the evaluation store (`monitoring.evaluation_store`): each configured window of a ranker, merged
from its stored daily figures, never from its impressions.

A per-request metric of a day (NDCG@k, precision@k, recall@k, MAP@k, hit rate@k, MRR, the mean loss) is a mean
over the day's requests (with `no_relevant: exclude`, over those with a relevant item, counted each day in the
`relevant_requests` row): the window's value is the mean of the days' values weighted by those counts, which is
exactly the mean over the window's requests. Label coverage adds its counts the same way. Only days whose
interactions are all read count for the label-based figures (as for the daily check). Catalogue coverage,
popularity concentration, novelty and the drift figures need the window's item counts, which the days do not
keep: they are not in the store.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import pandas as pd

from monitor_assets.config import MonitorConfig, RankerConfig
from monitor_assets.evaluation.logic import STORE_COLUMNS, WHOLE, metric_rows, replace_windows, settings
from monitor_assets.evaluation.settings import Window, previous, windows_touching
from monitor_assets.ranking.logic import ALL_VERSIONS, PERFORMANCE, RELEVANT

NOT_MERGED = ("catalogue_coverage", "popularity_concentration", "novelty", "item_drift_js", "score_drift_ks")


def _per_request(metric: str) -> bool:
    return metric not in (*NOT_MERGED, RELEVANT, "label_coverage")


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
    return values, requests, labelled, int(per_day.index.nunique())


def window_rows(frame: pd.DataFrame, ranker: RankerConfig, window: Window, last_day: dt.date,
                reference: dict[str, float]) -> list[dict]:
    """The store's rows of one ranker and window, per version and for all (`*`), beside the reference's values
    and the previous window's of the same length."""
    mine = frame[frame.model_id == ranker.id]
    before = previous(window)
    rows = []
    for version, part in [(ALL_VERSIONS, mine[mine.model_version == ALL_VERSIONS]),
                          *((v, p) for v, p in mine[mine.model_version != ALL_VERSIONS].groupby("model_version"))]:
        current = part[(part.partition_date >= window.start) & (part.partition_date <= window.end)]
        if not len(current):
            continue
        values, requests, labelled, n_days = merge(current, ranker)
        earlier, *_ = merge(part[(part.partition_date >= before.start) & (part.partition_date <= before.end)], ranker)
        common = {"window_id": window.key, "window_name": window.spec.name, "window_kind": window.spec.kind,
                  "window_start": window.start, "window_end": window.end, "model_id": ranker.id,
                  "model_version": str(version), "n_rows": requests, "n_labelled": labelled, "days_profiled": n_days,
                  "complete": window.end <= last_day, "segment": WHOLE, "reference_source": "model"}
        rows += metric_rows(common, dict(sorted(values.items())), reference, earlier)
    return rows


def write_windows(con: duckdb.DuckDBPyConnection, config: MonitorConfig, days: list[dt.date],
                  references: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Recompute every window holding one of `days` for every ranker (from `monitoring.ranking_performance`,
    read once for those windows and the ones before them) and replace their rows in the store."""
    windows = windows_touching(settings(config).windows, sorted(set(days)))
    if not windows or not config.rankers:
        return pd.DataFrame(columns=STORE_COLUMNS)
    first = min(previous(w).start for w in windows)
    last = max(w.end for w in windows)
    frame = con.execute(f"""SELECT partition_date, model_id, model_version, metric, value, n_requests,
                                   n_labelled_requests, labels_complete
                            FROM {PERFORMANCE} WHERE partition_date BETWEEN ? AND ?""", [first, last]).df()
    frame["partition_date"] = pd.to_datetime(frame.partition_date).dt.date
    last_day = max(days)
    rows = [row for ranker in config.rankers for window in windows
            for row in window_rows(frame, ranker, window, last_day, references.get(ranker.id, {}))]
    out = pd.DataFrame(rows, columns=STORE_COLUMNS)
    replace_windows(con, out, [w.key for w in windows], [r.id for r in config.rankers])
    return out
