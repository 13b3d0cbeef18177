"""Drift statistics against scipy and hand-computed values on small data."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from monitor_assets.analysis import queries as Q
from monitor_assets.stats import drift as D


def run(ref: pd.DataFrame, cur: pd.DataFrame, specs):
    con = duckdb.connect()
    con.register("ref", ref)
    con.register("cur", cur)
    profiles = Q.profile_reference(con, "SELECT * FROM ref", specs)
    return {r.feature: r for r in Q.compute_drift(con, "SELECT * FROM cur", specs, profiles)}, profiles


@pytest.fixture
def integer_data():
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"x": rng.integers(0, 60, 4000).astype(float)})
    cur = pd.DataFrame({"x": rng.integers(4, 64, 700).astype(float)})  # shifted, partly beyond the reference
    return ref, cur


def test_ks_equals_scipy_when_values_have_their_own_bins(integer_data):
    ref, cur = integer_data
    out, _ = run(ref, cur, [D.FeatureSpec("x", "numeric", method="ks")])
    expected = stats.ks_2samp(ref.x, cur.x, method="asymp")
    assert out["x"].statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert out["x"].p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert out["x"].drifted is True


def test_wasserstein_matches_scipy_within_half_a_bin(integer_data):
    ref, cur = integer_data
    out, profiles = run(ref, cur, [D.FeatureSpec("x", "numeric", method="wasserstein")])
    expected = stats.wasserstein_distance(ref.x, cur.x) / ref.x.std()
    width = profiles["x"].width / ref.x.std()
    assert abs(out["x"].statistic - expected) <= width / 2 + 1e-3  # overflow mass sits at its pooled mean


def test_psi_and_js_equal_hand_computation_on_the_profile_bins():
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    cur = pd.DataFrame({"x": rng.normal(0.5, 1, 3000)})
    ref.loc[:49, "x"] = np.nan  # missing values are a bin of their own
    out, profiles = run(ref, cur, [D.FeatureSpec("x", "numeric", method="psi")])
    prof = profiles["x"]
    edges = prof.lo + np.array(prof.psi_cuts[1:]) * prof.width - prof.width  # fine-bin index -> value
    def shares(x):
        x = x.to_numpy()
        counts = np.bincount(np.searchsorted(edges, x[~np.isnan(x)], side="right"), minlength=len(edges) + 1)
        return np.append(counts, np.isnan(x).sum()).astype(float)
    p, q = shares(ref.x), shares(cur.x)
    p_s, q_s = np.maximum(p / p.sum(), 1e-4), np.maximum(q / q.sum(), 1e-4)
    assert out["x"].statistic == pytest.approx(np.sum((q_s - p_s) * np.log(q_s / p_s)), rel=1e-9)
    assert out["x"].all_statistics["jensenshannon"] == pytest.approx(distance.jensenshannon(p, q, base=2), rel=1e-9)
    assert len(prof.psi_cuts) == 10  # deciles of the reference


def test_categorical_counts_unseen_and_missing_and_matches_scipy():
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 30 + ["c"] * 20})
    cur = pd.DataFrame({"c": ["a"] * 20 + ["b"] * 30 + ["c"] * 20 + ["new"] * 20 + [None] * 10})
    out, _ = run(ref, cur, [D.FeatureSpec("c", "categorical")])
    r = out["c"]
    # categories a, b, c, new, missing; the last two are expected 0 times, so the test pools them,
    # and the pool, still expected 0 times, joins the smallest category (c)
    ref_counts, cur_counts = [50, 30, 20, 0, 0], [20, 30, 20, 20, 10]
    chi = stats.chi2_contingency(np.array([[50, 30, 20], [20, 30, 50]]))
    assert r.method == "chisquare" and r.p_value == pytest.approx(chi.pvalue) and r.statistic == pytest.approx(chi.statistic)
    assert r.unseen_share == pytest.approx(0.2) and r.missing_share == pytest.approx(0.1)
    assert r.all_statistics["jensenshannon"] == pytest.approx(distance.jensenshannon(ref_counts, cur_counts, base=2))
    assert r.drifted and r.p_value_adjusted == pytest.approx(chi.pvalue)  # a family of one


@pytest.mark.parametrize("rows", [2_000, 200_000])
def test_defaults_find_small_shifts_and_leave_stable_features_alone(rows):
    rng = np.random.default_rng(11)
    levels = [f"v{i}" for i in range(8)]
    w = np.linspace(2, 1, 8)
    w_shift = w.copy()
    w_shift[:2] *= 0.5

    def frame(shift: bool):
        return pd.DataFrame({
            "normal": rng.normal(10, 2, rows) + (0.6 if shift else 0),  # 0.3 standard deviations
            "lognormal": rng.lognormal(1, 0.5, rows),
            "uniform": rng.uniform(0, 100, rows),
            "stable_cat": rng.choice(levels, rows, p=w / w.sum()),
            "moved_cat": rng.choice(levels, rows, p=(w_shift if shift else w) / (w_shift if shift else w).sum()),
        })
    specs = [D.FeatureSpec(n, "numeric") for n in ("normal", "lognormal", "uniform")] + [
        D.FeatureSpec(n, "categorical") for n in ("stable_cat", "moved_cat")]
    out, _ = run(frame(False), frame(True), specs)
    assert {n for n, r in out.items() if r.drifted} == {"normal", "moved_cat"}
    assert out["normal"].method == "wasserstein" and out["moved_cat"].method == "jensenshannon"


def test_small_samples_use_p_value_tests_and_user_overrides_win():
    assert D.choose_method("numeric", 300) == "ks" and D.choose_method("numeric", 5000) == "wasserstein"
    assert D.choose_method("categorical", 300) == "chisquare"
    assert D.choose_method("numeric", 5000, "psi") == "psi"
    rng = np.random.default_rng(1)
    ref, cur = pd.DataFrame({"x": rng.normal(0, 1, 5000)}), pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    out, _ = run(ref, cur, [D.FeatureSpec("x", "numeric", threshold=0.0001)])
    assert out["x"].threshold == 0.0001 and out["x"].drifted  # the user's threshold is used as given


def test_profile_round_trips_through_json():
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": rng.normal(size=1000), "c": rng.choice(["a", "b"], 1000)})
    _, profiles = run(ref, ref, [D.FeatureSpec("x", "numeric"), D.FeatureSpec("c", "categorical")])
    again = D.NumericProfile.from_json(profiles["x"].to_json())
    assert np.array_equal(again.counts.counts, profiles["x"].counts.counts) and again.psi_cuts == profiles["x"].psi_cuts
    assert D.CategoricalProfile.from_json(profiles["c"].to_json()).counts == profiles["c"].counts


def test_the_chi_square_test_of_counts_is_scipys_chi2_contingency_bit_for_bit():
    """`chisquare_counts` computes `chi2_contingency` itself (Yates' correction at one degree of freedom
    included): random 2 x k tables from near-empty to ten million rows, with zero columns and empty rows."""
    rng = np.random.default_rng(7)
    yates = 0
    for i in range(3000):
        k = int(rng.integers(1, 10))
        scale = (3, 40, 10_000, 10_000_000)[i % 4]
        ref, cur = rng.integers(0, scale, k), rng.integers(0, max(2, scale // 7), k)
        if i % 5 == 0:
            ref[rng.integers(0, k)] = 0
            cur[rng.integers(0, k)] = 0
        table = np.vstack([ref, cur])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
            expected = (0.0, 1.0)  # nothing to compare: no test
        else:
            result = stats.chi2_contingency(table)
            expected, yates = (float(result.statistic), float(result.pvalue)), yates + (table.shape[1] == 2)
        assert D.chisquare_counts(ref, cur) == expected, (ref, cur)
    assert yates > 300  # the corrected case was exercised


def _hand_counts(values, lo, hi, bins):
    """Fine-grid counts by hand, value by value: [under, bins..., over], missing, under and over sums."""
    counts, missing, under, over = [0] * (bins + 2), 0, 0.0, 0.0
    for v in values:
        if not np.isfinite(v):
            missing += 1
            continue
        i = min(max(int(np.floor((v - lo) * (bins / (hi - lo)))), -1), bins)
        counts[i + 1] += 1
        under += v if i < 0 else 0.0
        over += v if i == bins else 0.0
    return counts, missing, under, over


def test_counters_fed_in_turn_count_each_feature_as_by_hand(monkeypatch):
    # The counters share work arrays batch after batch; a batch above SCRATCH_MAX gets its own.
    monkeypatch.setattr(D, "SCRATCH_MAX", 700)
    rng = np.random.default_rng(11)
    a = rng.normal(5, 3, 2500)
    a[::97] = np.nan
    a[5], a[6], a[7] = np.inf, -np.inf, 1e300
    b = rng.uniform(-1, 1, 2500)
    grids = {"a": (0.0, 10.0, 40), "b": (-0.5, 0.5, 7)}
    counters = {k: D.NumericCounter(*g) for k, g in grids.items()}
    for start, size in [(0, 300), (300, 900), (1200, 1), (1201, 0), (1201, 1299)]:
        for k, x in (("a", a), ("b", b)):
            counters[k].add(x[start:start + size].copy())
    for k, x in (("a", a), ("b", b)):
        counts, missing, under, over = _hand_counts(x, *grids[k])
        got = counters[k].result()
        assert got.counts.tolist() == counts
        assert (got.n, got.n_missing) == (len(x), missing)
        scale = got.scale
        assert got.under_sum * scale == pytest.approx(under) and got.over_sum * scale == pytest.approx(over)
        finite = x[np.isfinite(x)]
        assert got.total * scale == pytest.approx(finite.sum()) and got.n - got.n_missing == len(finite)


def test_grid_bounds_come_from_every_row_of_a_small_set_and_a_seeded_sample_of_a_large_one(monkeypatch):
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.lognormal(0, 1, 20_000), "y": rng.normal(0, 1, 20_000)})
    con = duckdb.connect()
    con.register("ref", frame)
    exact = Q.reference_grids(con, "SELECT * FROM ref", ["x", "y"])
    for name in ("x", "y"):  # every row: DuckDB's quantile_cont is numpy's linear quantile
        lo, hi = np.quantile(frame[name], [0.001, 0.999])
        assert exact[name][0] == pytest.approx(lo, rel=1e-12) and exact[name][1] == pytest.approx(hi, rel=1e-6)
    monkeypatch.setattr(Q, "GRID_SAMPLE_ROWS", 2_000)
    sampled = Q.reference_grids(con, "SELECT * FROM ref", ["x", "y"])
    assert sampled != exact  # from about 2,000 rows, not all 20,000
    one_thread = duckdb.connect()
    one_thread.execute("SET threads = 1")
    one_thread.register("ref", frame)
    assert Q.reference_grids(one_thread, "SELECT * FROM ref", ["x", "y"]) == sampled  # seeded: the same sample
    for name in ("x", "y"):  # and close to the whole set's quantiles
        lo, hi = np.quantile(frame[name], [0.001, 0.999])
        spread = np.quantile(frame[name], 0.99) - np.quantile(frame[name], 0.01)
        assert abs(sampled[name][0] - lo) < 0.1 * spread and abs(sampled[name][1] - hi) < 0.5 * spread
