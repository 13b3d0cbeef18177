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


def robust_scores(series: pd.Series, window: int = 14, min_history: int = 7, weekly: bool = True,
                  relative_floor: float = 0.01, absolute_floor: float = 0.0) -> pd.DataFrame:
    """`series`: values indexed by date (daily, gaps allowed). Returns expected, scale and robust_z
    per date that has at least `min_history` earlier points within the window."""
    s = series.dropna().sort_index()
    out = []
    for day, value in s.items():
        history = s[(s.index < day) & (s.index >= day - pd.Timedelta(days=window))]
        if len(history) < min_history:
            continue
        centre = float(history.median())
        residuals = history - centre
        offset = 0.0
        if weekly:
            # Retail's weekly cycle is mostly weekend vs weekday: two levels, each from several points,
            # so one odd day (an outage) cannot set the expectation for its weekday.
            weekend = np.array([d.weekday() >= 5 for d in residuals.index])
            day_is_weekend = day.weekday() >= 5
            if weekend.sum() >= 2 and (~weekend).sum() >= 2:
                levels = {True: float(np.median(residuals[weekend])), False: float(np.median(residuals[~weekend]))}
                offset = levels[day_is_weekend]
                residuals = residuals - np.where(weekend, levels[True], levels[False])
        expected = centre + offset
        mad = float(np.median(np.abs(residuals - np.median(residuals))))
        scale = max(MAD_TO_SD * mad, relative_floor * abs(centre), absolute_floor, 1e-9)
        out.append((day, float(value), expected, scale, (float(value) - expected) / scale))
    return pd.DataFrame(out, columns=["date", "value", "expected", "scale", "robust_z"])


def find_anomalies(history: pd.DataFrame, days: list, window: int, threshold: float,
                   min_label_coverage: float = 0.8) -> pd.DataFrame:
    """Anomalies on `days` in a long history frame (partition_date, model_id, metric, segment, value).

    Label-based metrics only count on days whose label coverage is at least `min_label_coverage`:
    a day still waiting for its labels is not an anomaly."""
    h = history[history.segment == ""].copy()
    h["partition_date"] = pd.to_datetime(h.partition_date)
    coverage = h[h.metric == "label_coverage"].set_index(["model_id", "partition_date"]).value
    wanted = {pd.Timestamp(d) for d in days}
    rows = []
    for (model_id, metric), g in h[h.metric.isin(METRICS)].groupby(["model_id", "metric"]):
        direction, rel, absolute, needs_labels = METRICS[metric]
        series = g.set_index("partition_date").value
        if needs_labels:
            cov = coverage.reindex([(model_id, d) for d in series.index]).to_numpy()
            series = series[cov >= min_label_coverage]
        scores = robust_scores(series, window=window, relative_floor=rel, absolute_floor=absolute)
        for r in scores[scores.date.isin(wanted)].itertuples():
            z = r.robust_z
            if abs(z) >= threshold and (direction == 0 or np.sign(z) == direction):
                rows.append((r.date.date(), model_id, metric, "", r.value, r.expected, z,
                             "up" if z > 0 else "down"))
    return pd.DataFrame(rows, columns=["partition_date", "model_id", "metric", "segment", "value", "expected",
                                       "robust_z", "direction"])
