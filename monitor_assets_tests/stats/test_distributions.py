"""Reference against current distributions (stats.distributions), checked against numpy.histogram and
pandas.value_counts computed here by hand."""

import json

import numpy as np
import pandas as pd
import pytest

from monitor_assets.stats.distributions import (
    ABOVE,
    BELOW,
    MAX_BINS,
    MISSING,
    OTHER,
    Comparison,
    compare,
    compare_categorical,
    compare_numeric,
)


def by_label(c: Comparison) -> dict:
    return {b.label: b for b in c.buckets}


def test_numeric_bins_are_reference_quantiles_and_count_as_numpy_histogram():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, 5000)
    cur = np.concatenate([rng.normal(0.8, 1.3, 3000), [np.nan] * 40, [np.inf, -np.inf]])
    c = compare_numeric(ref, cur)
    edges = np.quantile(ref, np.linspace(0, 1, MAX_BINS + 1))  # continuous: no repeated quantile
    bins = [b for b in c.buckets if b.label not in (BELOW, ABOVE, MISSING)]
    assert len(bins) == MAX_BINS
    assert [b.lo for b in bins] == pytest.approx(edges[:-1]) and [b.hi for b in bins] == pytest.approx(edges[1:])
    finite = cur[np.isfinite(cur)]
    assert [b.current_count for b in bins] == np.histogram(finite, edges)[0].tolist()
    assert [b.reference_count for b in bins] == np.histogram(ref, edges)[0].tolist()
    # equal-frequency on the reference: each bin about 1/30 of it
    assert max(abs(b.reference_share - 1 / MAX_BINS) for b in bins) < 1e-3
    extra = by_label(c)
    assert extra[BELOW].current_count == int((cur < ref.min()).sum()) > 1  # -inf included
    assert extra[ABOVE].current_count == int((cur > ref.max()).sum()) > 1  # +inf included
    assert extra[MISSING].current_count == 40 and extra[MISSING].reference_count == 0
    assert extra[BELOW].reference_count == extra[ABOVE].reference_count == 0
    assert sum(b.current_count for b in c.buckets) == len(cur) == c.n_current
    assert sum(b.current_share for b in c.buckets) == pytest.approx(1.0)
    assert extra[MISSING].current_share == pytest.approx(40 / len(cur))
    assert bins[-1].label.endswith("]") and bins[0].label.endswith(")")


def test_discrete_numeric_gets_fewer_bins_and_the_top_value_in_the_last_closed_bin():
    ref = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3] * 20, dtype=float)
    cur = np.array([3, 3, 3, 3, 3, 0, 4], dtype=float)
    c = compare_numeric(ref, cur)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, MAX_BINS + 1)))
    bins = [b for b in c.buckets if b.label not in (BELOW, ABOVE, MISSING)]
    assert len(bins) == len(edges) - 1 < MAX_BINS
    assert [b.current_count for b in bins] == np.histogram(cur[cur <= 3], edges)[0].tolist()
    assert bins[-1].current_count >= 5  # the 3s, in the closed last bin
    assert by_label(c)[ABOVE].current_count == 1 and BELOW not in by_label(c) and MISSING not in by_label(c)


def test_constant_reference_has_one_bin_holding_exactly_its_value():
    c = compare_numeric(np.full(100, 7.0), np.array([7.0, 7.0, 6.5, 9.0, np.nan]))
    got = by_label(c)
    assert got["7"].reference_count == 100 and got["7"].current_count == 2
    assert got[BELOW].current_count == 1 and got[ABOVE].current_count == 1 and got[MISSING].current_count == 1


def test_reference_without_finite_values_takes_the_days_edges_and_nothing_finite_is_only_missing():
    c = compare_numeric(np.full(10, np.nan), np.arange(100.0))
    assert by_label(c)[MISSING].reference_count == 10
    assert sum(b.current_count for b in c.buckets if b.lo is not None and b.hi is not None) == 100
    empty = compare_numeric([np.nan, np.nan], [np.nan, np.inf])
    assert {b.label: (b.reference_count, b.current_count) for b in empty.buckets} == {ABOVE: (0, 1), MISSING: (2, 1)}


def test_categories_are_the_top_k_of_either_side_plus_other_and_missing_as_value_counts():
    ref = pd.Series(["card"] * 500 + ["paypal"] * 300 + [f"rare{i}" for i in range(40)] + [None] * 20)
    cur = pd.Series(["card"] * 100 + ["crypto"] * 250 + ["paypal"] * 50 + ["rare1"] * 3 + [np.nan] * 7)
    c = compare_categorical(ref, cur, top_k=3)
    got = by_label(c)
    # crypto exists only today but is among the largest shares of either side
    assert list(got) == ["card", "paypal", "crypto", OTHER, MISSING]
    ref_counts, cur_counts = ref.value_counts(), cur.value_counts()
    for cat in ("card", "paypal", "crypto"):
        assert got[cat].reference_count == ref_counts.get(cat, 0)
        assert got[cat].current_count == cur_counts.get(cat, 0)
        assert got[cat].current_share == pytest.approx(cur_counts.get(cat, 0) / len(cur))
    assert got[OTHER].reference_count == 40 and got[OTHER].current_count == 3
    assert got[MISSING].reference_count == ref.isna().sum() and got[MISSING].current_count == cur.isna().sum()
    assert sum(b.reference_share for b in c.buckets) == pytest.approx(1.0)
    assert (c.n_reference, c.n_current) == (len(ref), len(cur))


def test_low_cardinality_has_no_other_bucket_and_json_round_trips():
    c = compare(["a", "b", "b"], ["b", "b", "c"], "categorical")
    assert [b.label for b in c.buckets] == ["b", "a", "c"]
    assert Comparison.buckets_from_json(c.to_json()) == c.buckets
    assert all("lo" not in d for d in json.loads(c.to_json()))
    with pytest.raises(ValueError, match="kind"):
        compare([1], [1], "text")
