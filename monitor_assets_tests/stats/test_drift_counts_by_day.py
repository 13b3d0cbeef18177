"""`count_histograms_by`: many days' drift counts in two scans equal each day's `count_histograms`."""

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from monitor_assets.analysis.queries import count_histograms, count_histograms_by


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


def _messy_days(rng: np.random.Generator) -> pd.DataFrame:
    """Five days of messy rows: NaN, +-inf, NULL, a 1e300, categories None / '' / numbers / booleans, a day of
    one row, a day with no numeric value at all, rows of the days interleaved (the sums then tell whether a day's
    values were added in their order)."""
    parts = []
    for k, n in enumerate([400, 1, 250, 37, 900]):
        x = rng.normal(k, 1 + k, n)
        x[rng.random(n) < 0.05] = np.nan
        if k == 0:
            x[:3] = [np.inf, -np.inf, 1e300]
        if k == 3:
            x[:] = np.nan
        shop = rng.choice(np.array(["a", "b", "c", None, "", "1", "1.0", "zz"], dtype=object), n)
        flag = rng.choice(np.array(["true", "false", "TRUE", "0", None], dtype=object), n)
        parts.append(pd.DataFrame({"day": dt.date(2026, 3, 1 + k), "x": x, "shop": shop, "flag": flag}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def test_every_days_counts_equal_that_day_counted_alone(con):
    rows = _messy_days(np.random.default_rng(3))
    con.register("rows_", rows)
    numeric = {"x": (-5.0, 12.0, 200)}
    normalize = {"flag": ("true", "false")}
    together = count_histograms_by(con, "SELECT * FROM rows_", "day", numeric, ["shop", "flag"], normalize=normalize)
    assert sorted(together) == sorted(rows.day.unique())
    for day in rows.day.unique():
        alone = count_histograms(con, "SELECT * FROM rows_ WHERE day = ?", numeric, ["shop", "flag"], [day],
                                 normalize=normalize)
        got = together[day]
        assert got.keys() == alone.keys()
        assert got["shop"] == alone["shop"] and got["flag"] == alone["flag"]
        a, b = got["x"], alone["x"]
        assert a.n == b.n == (rows.day == day).sum()
        assert a.n_missing == b.n_missing == (~np.isfinite(rows.x[rows.day == day])).sum()
        np.testing.assert_array_equal(a.counts, b.counts)
        assert a.total == b.total and a.total_sq == b.total_sq  # one batch a day: the same additions
    assert together[dt.date(2026, 3, 4)]["x"].n_missing == 37  # the day without a number is still counted
    assert sum(v for k, v in together[dt.date(2026, 3, 1)]["flag"].items()) == 400


def test_a_numeric_only_count_and_a_batch_split_keep_every_row(con):
    rows = _messy_days(np.random.default_rng(5))
    con.register("rows_", rows)
    numeric = {"x": (-5.0, 12.0, 50)}
    together = count_histograms_by(con, "SELECT * FROM rows_", "day", numeric, [], batch_rows=64)
    whole = count_histograms_by(con, "SELECT * FROM rows_", "day", numeric, [])
    for day, counts in together.items():
        assert list(counts) == ["x"]
        np.testing.assert_array_equal(counts["x"].counts, whole[day]["x"].counts)
        assert counts["x"].n == (rows.day == day).sum()
        assert counts["x"].total == pytest.approx(whole[day]["x"].total, rel=1e-12, abs=1e-9)
