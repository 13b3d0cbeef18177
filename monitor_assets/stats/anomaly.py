"""Robust anomaly scores for daily metric series, aware of the weekly cycle.

For each day, the expected value is the median of the trailing `window` days plus the typical offset
of its kind of day (weekend or weekday, when the window holds at least two of each); the scale is the
MAD of the trailing residuals (times 1.4826, so it estimates a standard deviation for normal noise), floored
so a perfectly flat history does not turn a rounding difference into an alarm. A day is anomalous
when |value - expected| / scale >= threshold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAD_TO_SD = 1.4826


# How to read each monitored metric: which direction is bad (+1 up, -1 down, 0 both), the smallest
# scale that counts as noise (relative to the level, and absolute), and whether it needs labels.
METRICS = {
    "volume": (0, 0.05, 1.0, False),
    "error_rate": (+1, 0.0, 0.01, False),
    "latency_p95_ms": (+1, 0.05, 1.0, False),
    "roc_auc": (-1, 0.0, 0.03, True),  # a few dozen positives a day move AUC by a few points
    "mae": (+1, 0.03, 0.0, True),
    "mean_score": (0, 0.03, 0.001, False),
    "conversion_rate": (0, 0.0, 0.008, False),
    "revenue": (0, 0.05, 0.0, False),
    "average_order_value": (0, 0.05, 0.0, False),
}


def _days(index) -> np.ndarray:
    return pd.DatetimeIndex(index).to_numpy().astype("datetime64[D]")


def _score(dates: np.ndarray, values: np.ndarray, i: int, window: int, min_history: int, weekly: bool,
           relative_floor: float, absolute_floor: float) -> tuple[float, float, float] | None:
    """(expected, scale, robust_z) of point `i` of a date-sorted series against its trailing `window` days."""
    day = dates[i]
    earlier = (dates < day) & (dates >= day - np.timedelta64(window, "D"))
    history = values[earlier]
    if len(history) < min_history:
        return None
    centre = float(np.median(history))
    residuals = history - centre
    offset = 0.0
    if weekly:
        # Retail's weekly cycle is mostly weekend vs weekday: two levels, each from several points,
        # so one odd day (an outage) cannot set the expectation for its weekday.
        weekend = _weekday(dates[earlier]) >= 5
        if weekend.sum() >= 2 and (~weekend).sum() >= 2:
            levels = {True: float(np.median(residuals[weekend])), False: float(np.median(residuals[~weekend]))}
            offset = levels[bool(_weekday(day) >= 5)]
            residuals = residuals - np.where(weekend, levels[True], levels[False])
    expected = centre + offset
    mad = float(np.median(np.abs(residuals - np.median(residuals))))
    scale = max(MAD_TO_SD * mad, relative_floor * abs(centre), absolute_floor, 1e-9)
    return expected, scale, (float(values[i]) - expected) / scale


def _weekday(days) -> np.ndarray:
    """Monday 0 .. Sunday 6 of datetime64[D] values (1970-01-01 was a Thursday)."""
    return (np.asarray(days).astype("datetime64[D]").astype(np.int64) + 3) % 7


def find_anomalies(history: pd.DataFrame, days: list, window: int, threshold: float,
                   min_label_coverage: float = 0.8, min_history: int = 7) -> pd.DataFrame:
    """Anomalies on `days` in a long history frame (partition_date, model_id, metric, segment, value).

    Label-based metrics only count on days whose label coverage is at least `min_label_coverage`:
    a day still waiting for its labels is not an anomaly. Only `days` are scored: hundreds of models'
    series are read as arrays, not one small frame each."""
    h = history[(history.segment == "") & history.metric.isin([*METRICS, "label_coverage"])]
    h = h[h.value.notna()]
    h = h.assign(day=_days(h.partition_date)).sort_values(["model_id", "metric", "day"])
    wanted = np.array(sorted({np.datetime64(pd.Timestamp(d).date(), "D") for d in days}), dtype="datetime64[D]")
    cov = h[h.metric == "label_coverage"]
    coverage = dict(zip(zip(cov.model_id, cov.day, strict=True), cov.value, strict=True))
    dates_all, values_all = h.day.to_numpy(), h.value.to_numpy(dtype=float)
    rows = []
    for (model_id, metric), where in h.groupby(["model_id", "metric"], sort=False).indices.items():
        if metric not in METRICS:
            continue
        direction, rel, absolute, needs_labels = METRICS[metric]
        dates, values = dates_all[where], values_all[where]
        if needs_labels:
            kept = np.array([coverage.get((model_id, d), np.nan) >= min_label_coverage for d in dates], dtype=bool)
            dates, values = dates[kept], values[kept]
        if len(dates) <= min_history:
            continue
        for i in np.flatnonzero(np.isin(dates, wanted)):
            scored = _score(dates, values, i, window, min_history, True, rel, absolute)
            if scored is None:
                continue
            expected, _, z = scored
            if abs(z) >= threshold and (direction == 0 or np.sign(z) == direction):
                rows.append((pd.Timestamp(dates[i]).date(), model_id, metric, "", float(values[i]), expected, z,
                             "up" if z > 0 else "down"))
    return pd.DataFrame(rows, columns=["partition_date", "model_id", "metric", "segment", "value", "expected",
                                       "robust_z", "direction"])
