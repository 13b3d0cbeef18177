"""Drift alarms that hold on real data: false-alarm control, blind spots, category normalisation."""

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitor_assets.analysis import queries as Q
from monitor_assets.stats import categories as C
from monitor_assets.stats import drift as D


def run(ref, cur, specs, con=None, cur_sql="SELECT * FROM cur", **kw):
    con = con or duckdb.connect()
    con.register("ref", ref)
    if cur is not None:
        con.register("cur", cur)
    profiles = Q.profile_reference(con, "SELECT * FROM ref", specs)
    return {r.feature: r for r in Q.compute_drift(con, cur_sql, specs, profiles, **kw)}, profiles


# --- false alarms -------------------------------------------------------------------------------


def test_stable_features_at_a_few_hundred_rows_flag_at_most_one_day_in_30():
    """300 stable days of 300 rows (below SMALL_SAMPLE: KS and chi-square) for a 6-feature model
    whose reference is 5,000 rows: p < 0.05 flagged about 5% of feature-days; now at most 1 in 30
    per feature and per model (any feature flagged), and the missing/unseen signals stay quiet."""
    rng = np.random.default_rng(20261123)
    levels = [f"v{i}" for i in range(8)]
    w = np.linspace(2, 1, 8) / np.linspace(2, 1, 8).sum()
    cities = [f"c{i}" for i in range(40)]
    zipf = 1 / np.arange(1, 41) / (1 / np.arange(1, 41)).sum()

    def frame(n):
        x = rng.lognormal(1, 0.5, n)
        x[rng.random(n) < 0.03] = np.nan
        return pd.DataFrame({"age": rng.normal(40, 12, n).round(), "income": x, "amount": rng.gamma(2, 50, n),
                             "plan": rng.choice(levels, n, p=w), "city": rng.choice(cities, n, p=zipf),
                             "member": rng.random(n) < 0.3})
    specs = [D.FeatureSpec(n, "numeric") for n in ("age", "income", "amount")] + [
        D.FeatureSpec(n, "categorical") for n in ("plan", "city", "member")]
    con = duckdb.connect()
    con.register("ref", frame(5000))
    profiles = Q.profile_reference(con, "SELECT * FROM ref", specs)
    days = []
    for _ in range(300):
        con.register("cur", frame(300))
        days.append(Q.compute_drift(con, "SELECT * FROM cur", specs, profiles))
    assert {r.method for d in days for r in d} == {"ks", "chisquare"}
    raw = np.mean([r.p_value < 0.05 for d in days for r in d])
    per_feature = np.mean([r.drifted for d in days for r in d])
    per_model = np.mean([any(r.drifted for r in d) for d in days])
    assert raw > 0.03  # the old rule: about 1 day in 20 per feature
    assert per_feature <= 1 / 30 and per_model <= 1 / 30
    assert not any(r.missing_drift or r.unseen_drift for d in days for r in d)


def test_benjamini_hochberg_across_features_equals_scipy_and_is_idempotent():
    ps = [0.001, 0.008, 0.039, 0.041, 0.2, 0.6]
    results = [D.DriftResult(f"f{i}", "numeric", "ks", 0.1, p, D.P_VALUE_ALPHA, p < D.P_VALUE_ALPHA, 300, 5000)
               for i, p in enumerate(ps)]
    D.control_false_alarms(results)
    expected = stats.false_discovery_control(ps, method="bh")
    assert [r.p_value_adjusted for r in results] == pytest.approx(list(expected))
    # 0.008 alone would flag; among six features its adjusted p-value is 0.024
    assert [r.drifted for r in results] == [True, False, False, False, False, False]
    D.control_false_alarms(results)
    assert [r.drifted for r in results] == [True, False, False, False, False, False]


def test_distance_thresholds_sit_on_the_noise_floor_and_never_above_the_maximum():
    n_eff = 10_000 * 700 / 10_700
    assert D.noise_floor("jensenshannon", 10_000, 700, categories=8) == pytest.approx(
        math.sqrt(stats.chi2.isf(1e-3, 7) / (8 * math.log(2) * n_eff)))
    assert D.noise_floor("psi", 10_000, 700, categories=11) == pytest.approx(stats.chi2.isf(1e-3, 10) / n_eff)
    assert D.noise_floor("wasserstein", 10_000, 700) == pytest.approx(2.5 * 1.6147 / math.sqrt(n_eff))
    # 100% unseen categories in 3 rows, Jensen-Shannon asked for: the floor (1.05) is capped at the maximum
    ref = pd.DataFrame({"c": ["a", "b"] * 500})
    cur = pd.DataFrame({"c": ["x", "y", "z"]})
    out, _ = run(ref, cur, [D.FeatureSpec("c", "categorical", method="jensenshannon")])
    r = out["c"]
    assert D.noise_floor("jensenshannon", 1000, 3, 5) > 1
    assert r.threshold == 1.0 and r.statistic == pytest.approx(1.0) and r.drifted


def test_wasserstein_scale_of_a_normal_reference_is_the_normal_constant():
    rng = np.random.default_rng(4)
    _, profiles = run(pd.DataFrame({"x": rng.normal(3, 2, 50_000)}), None, [D.FeatureSpec("x", "numeric")],
                      cur_sql="SELECT * FROM ref")
    # integral of sqrt(Phi (1 - Phi)) over the line, for unit standard deviation
    assert D.wasserstein_scale(profiles["x"]) == pytest.approx(D.NORMAL_WASSERSTEIN_SCALE, rel=0.02)


# --- blind spots --------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [150, 3000])
def test_a_constant_reference_feature_falls_back_to_the_share_of_values_that_differ(rows):
    ref = pd.DataFrame({"version": np.full(5000, 5.0)})
    moved, _ = run(ref, pd.DataFrame({"version": np.full(rows, 5000.0)}), [D.FeatureSpec("version", "numeric")])
    r = moved["version"]
    assert r.method == "constant" and r.statistic == 1.0 and r.drifted
    assert r.p_value == pytest.approx(stats.binom.sf(rows - 1, rows, 1 / 5001))
    assert r.all_statistics["mean_absolute_change"] == pytest.approx(4995.0)
    assert "constant at 5; 100.0% of values differ (mean 5000)" in r.message
    same, _ = run(ref, pd.DataFrame({"version": np.full(rows, 5.0)}), [D.FeatureSpec("version", "numeric")])
    assert same["version"].statistic == 0 and not same["version"].drifted and same["version"].message == ""
    # one odd value in the day is not drift: at least 1% of values must differ
    one = np.full(rows, 5.0)
    one[0] = 6.0
    odd, _ = run(ref, pd.DataFrame({"version": one}), [D.FeatureSpec("version", "numeric")])
    assert odd["version"].statistic == pytest.approx(1 / rows) and odd["version"].drifted is (rows < 100)


def test_missing_share_is_its_own_signal_with_fishers_test():
    rng = np.random.default_rng(8)
    x = rng.normal(size=4000)
    x[:80] = np.nan  # 2% missing in the reference
    ref = pd.DataFrame({"x": x, "c": np.where(np.arange(4000) < 40, None, rng.choice(["a", "b"], 4000))})
    cur = pd.DataFrame({"x": np.full(250, np.nan), "c": rng.choice(["a", "b"], 250)})
    out, _ = run(ref, cur, [D.FeatureSpec("x", "numeric"), D.FeatureSpec("c", "categorical")])
    r = out["x"]
    assert r.missing_share == 1.0 and r.reference_missing_share == pytest.approx(0.02)
    assert r.missing_p_value == pytest.approx(stats.fisher_exact([[250, 0], [80, 3920]]).pvalue)
    assert r.missing_drift and r.all_missing and not r.drifted  # no values: the distribution test cannot say
    assert r.message == "all 250 values are missing (reference: 2.0% missing)"
    # a categorical with a few more missing values than its reference is not flagged
    assert out["c"].reference_missing_share == pytest.approx(0.01) and not out["c"].missing_drift
    more = pd.DataFrame({"x": np.where(np.arange(400) < 120, np.nan, rng.normal(size=400)), "c": "a"})
    out, _ = run(ref, more, [D.FeatureSpec("x", "numeric")])
    assert out["x"].missing_drift and out["x"].message == "missing share 30.0% against 2.0% in the reference"


def test_unseen_share_is_its_own_signal_and_all_unseen_is_loud():
    ref = pd.DataFrame({"plan": ["basic"] * 600 + ["pro"] * 390 + ["team"] * 9 + ["edu"]})  # 'edu' seen once
    cur = pd.DataFrame({"plan": ["basic"] * 150 + ["pro"] * 100 + ["gold"] * 50})
    out, _ = run(ref, cur, [D.FeatureSpec("plan", "categorical")])
    r = out["plan"]
    assert r.expected_unseen_share == pytest.approx(2 / 1001)  # Good-Turing: (singletons + 1) / (n + 1)
    assert r.unseen_share == pytest.approx(50 / 300)
    assert r.unseen_p_value == pytest.approx(stats.binom.sf(49, 300, 2 / 1001))
    assert r.unseen_drift and not r.all_unseen
    assert "16.7% of values are categories the reference never saw (gold 17%" in r.message
    allnew = pd.DataFrame({"plan": ["Basic Plan"] * 200 + ["Pro Plan"] * 100})
    out, _ = run(ref, allnew, [D.FeatureSpec("plan", "categorical")])
    r = out["plan"]
    assert r.all_unseen and r.unseen_drift and r.drifted
    assert r.message == ("all 300 values are categories the reference never saw (Basic Plan 67%, Pro Plan 33%; "
                         "reference: basic 60%, pro 39%, team 1%)")


def test_a_rare_unseen_value_in_a_small_day_is_not_drift():
    """Chi-square on the raw table would give p < 1e-10 for one value the reference never saw."""
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"c": rng.choice(["a", "b", "c"], 10_000)})
    cur = pd.DataFrame({"c": list(rng.choice(["a", "b", "c"], 149)) + ["zz"]})
    out, _ = run(ref, cur, [D.FeatureSpec("c", "categorical")])
    assert not out["c"].drifted and not out["c"].unseen_drift and out["c"].p_value > 0.01
    raw = D.chisquare_counts(np.array([sum(ref.c == k) for k in "abc"] + [0]),
                             np.array([sum(cur.c == k) for k in "abc"] + [1]))
    assert raw[1] < 1e-10


# --- normalisation of categories ---------------------------------------------------------------


def test_category_sql_gives_one_spelling_per_value():
    values = ["True", "TRUE", " false ", "1", "1.0", "1e0", "0.50", "007", "-0.0", "", "NaN", None, "Paris", "2"]
    con = duckdb.connect()
    plain = [r[0] for r in con.execute(f"SELECT {C.category_sql('v')} FROM unnest(?::VARCHAR[]) AS t(v)",
                                       [values]).fetchall()]
    assert plain == ["true", "true", "false", "1", "1", "1", "0.5", "007", "0", None, None, None, "Paris", "2"]
    as_bool = [r[0] for r in con.execute(f"SELECT {C.category_sql('v', C.TRUE_FALSE)} FROM unnest(?::VARCHAR[]) "
                                         "AS t(v)", [values]).fetchall()]
    assert as_bool[:9] == ["true", "true", "false", "true", "true", "true", "0.5", "007", "false"]
    typed = con.execute(f"SELECT {C.category_sql('true')}, {C.category_sql('1.0::DOUBLE')}, "
                        f"{C.category_sql('3::BIGINT')}, {C.category_sql(chr(39) + 'nan' + chr(39) + '::DOUBLE')}").fetchall()
    assert typed == [("true", "1", "3", None)]


def test_parquet_boolean_reference_against_csv_text_booleans_is_not_drift(tmp_path):
    rng = np.random.default_rng(6)
    member = rng.random(2000) < 0.3
    ref = pd.DataFrame({"member": member, "segment": rng.choice([1, 2, 3], 2000)})  # bool and int columns
    ref.to_parquet(tmp_path / "reference.parquet")
    n = 400
    day = pd.DataFrame({"member": np.where(rng.random(n) < 0.3, "True", "False"),
                        "segment": rng.choice(["1.0", "2.0", "3.0"], n)})  # numbers logged as text
    day.to_csv(tmp_path / "day.csv", index=False)
    con = duckdb.connect()
    specs = [D.FeatureSpec("member", "categorical"), D.FeatureSpec("segment", "categorical")]
    profiles = Q.profile_reference(con, f"SELECT * FROM read_parquet('{tmp_path / 'reference.parquet'}')", specs)
    assert profiles["member"].booleans == C.TRUE_FALSE and set(profiles["member"].counts) == {"true", "false"}
    out = {r.feature: r for r in Q.compute_drift(
        con, f"SELECT * FROM read_csv('{tmp_path / 'day.csv'}', header=true, all_varchar=true)", specs, profiles)}
    for name in ("member", "segment"):
        assert out[name].unseen_share == 0 and not out[name].drifted and out[name].message == ""
    ones = pd.DataFrame({"member": np.where(rng.random(n) < 0.3, 1, 0), "segment": 2})  # 1/0 for a boolean
    con.register("ones", ones)
    r = Q.compute_drift(con, "SELECT * FROM ones", specs[:1], profiles)[0]
    assert r.unseen_share == 0 and not r.drifted


def test_a_zero_one_reference_keeps_its_spelling_and_old_profiles_are_counted_raw():
    con = duckdb.connect()
    con.register("ref", pd.DataFrame({"label": ["0"] * 70 + ["1"] * 30}))
    profile = Q.profile_reference(con, "SELECT * FROM ref", [D.FeatureSpec("label", "categorical")])["label"]
    assert profile.booleans == C.ONE_ZERO and profile.counts == {"0": 70, "1": 30}
    again = D.CategoricalProfile.from_json(profile.to_json())
    assert again == profile
    old = D.CategoricalProfile.from_json({"counts": {"True": 70, "False": 30}})  # stored before PROFILE_VERSION 2
    assert not old.normalized
    con.register("cur", pd.DataFrame({"label": ["True"] * 7 + ["False"] * 3}))
    r = Q.compute_drift(con, "SELECT * FROM cur", [D.FeatureSpec("label", "categorical")], {"label": old})[0]
    assert r.unseen_share == 0  # counted as raw text, like the profile it is compared with
