"""Robust anomaly scores against values worked out by hand, on short, gappy series of several models."""

import datetime as dt
import statistics

import pandas as pd
import pytest

from monitor_assets.stats.anomaly import MAD_TO_SD, find_anomalies

MONDAY = dt.date(2026, 3, 2)


def frame(rows):
    return pd.DataFrame([(pd.Timestamp(d), m, k, "", v) for d, m, k, v in rows],
                        columns=["partition_date", "model_id", "metric", "segment", "value"])


def test_a_spike_is_scored_against_the_median_and_mad_of_the_trailing_days():
    # Ten weekdays of volume (weekends missing: no weekly split, as fewer than two weekend points), a NULL
    # day, then a spike. Only the last day is asked for.
    days = [MONDAY + dt.timedelta(days=i) for i in range(14) if (MONDAY + dt.timedelta(days=i)).weekday() < 5]
    values = [1000, 1010, 990, 1005, 995, 1020, 980, 1000, None, 1003]
    spike_day = MONDAY + dt.timedelta(days=14)
    rows = [(d, "m1", "volume", v) for d, v in zip(days, values, strict=True)] + [(spike_day, "m1", "volume", 1300.0)]
    # A second model with too little history is never scored.
    rows += [(spike_day - dt.timedelta(days=i), "m2", "volume", 5.0 if i else 500.0) for i in range(4)]
    found = find_anomalies(frame(rows), [spike_day], window=14, threshold=3.0)

    history = [v for v in values if v is not None]
    centre = statistics.median(history)
    mad = statistics.median(abs(v - centre) for v in history)
    scale = max(MAD_TO_SD * mad, 0.05 * centre, 1.0)  # volume: 5% of the level is noise
    assert list(found.model_id) == ["m1"]
    row = found.iloc[0]
    assert row.partition_date == spike_day and row.direction == "up"
    assert row.expected == pytest.approx(centre)
    assert row.robust_z == pytest.approx((1300 - centre) / scale)


def test_the_weekend_level_sets_the_expectation_of_a_weekend_day():
    # Three weeks: weekdays about 100, weekends about 200. A Saturday of 200 is normal, a Saturday of 100 is
    # not (had the weekly split been ignored, 100 would be the expected value).
    rows, start = [], MONDAY
    for i in range(19):
        d = start + dt.timedelta(days=i)
        rows.append((d, "m1", "volume", (200.0 if d.weekday() >= 5 else 100.0) + (i % 3)))
    saturday = start + dt.timedelta(days=19)
    assert saturday.weekday() == 5
    normal = find_anomalies(frame(rows + [(saturday, "m1", "volume", 201.0)]), [saturday], 14, 3.0)
    assert normal.empty
    low = find_anomalies(frame(rows + [(saturday, "m1", "volume", 100.0)]), [saturday], 14, 3.0)
    assert list(low.direction) == ["down"]
    window = [(d, v) for d, _, _, v in rows if saturday - dt.timedelta(days=14) <= d < saturday]
    centre = statistics.median(v for _, v in window)
    weekend_offset = statistics.median(v - centre for d, v in window if d.weekday() >= 5)
    assert low.iloc[0].expected == pytest.approx(centre + weekend_offset)


def test_a_label_metric_waits_for_label_coverage():
    # roc_auc drops on the last day, but only 40% of that day's labels arrived: not judged yet.
    rows = []
    for i in range(10):
        d = MONDAY + dt.timedelta(days=i)
        rows += [(d, "m1", "roc_auc", 0.80 + 0.001 * (i % 2)), (d, "m1", "label_coverage", 1.0)]
    last = MONDAY + dt.timedelta(days=10)
    waiting = rows + [(last, "m1", "roc_auc", 0.60), (last, "m1", "label_coverage", 0.4)]
    assert find_anomalies(frame(waiting), [last], 14, 3.0).empty
    complete = rows + [(last, "m1", "roc_auc", 0.60), (last, "m1", "label_coverage", 0.95)]
    found = find_anomalies(frame(complete), [last], 14, 3.0)
    assert list(found.metric) == ["roc_auc"] and found.iloc[0].direction == "down"
    # roc_auc only alerts downwards: a jump up is not an anomaly.
    better = rows + [(last, "m1", "roc_auc", 0.99), (last, "m1", "label_coverage", 1.0)]
    assert find_anomalies(frame(better), [last], 14, 3.0).empty
