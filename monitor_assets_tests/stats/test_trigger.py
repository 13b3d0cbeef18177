"""The retraining trigger: its statistics against scipy, and its behaviour on synthetic streams
(the issue's "done when": quiet on stable models, a 3-point accuracy drop within 7 days, a collapse
within 2 days)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monitor_assets.stats.trigger import (
    Moments,
    TriggerSettings,
    adjust_p_values,
    evaluate_day,
    loss_shift_test,
    persistence_met,
    reference_band,
    simulate_trigger,
    welch_greater,
)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "retraining_trigger.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("retraining_trigger_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_welch_from_moments_equals_scipy_on_raw_values():
    rng = np.random.default_rng(1)
    pairs = [(rng.exponential(1.1, 300), rng.exponential(1.0, 500)), (rng.normal(0, 1, 40), rng.normal(0.5, 3, 25))]
    t, p = welch_greater([Moments.of(a) for a, _ in pairs], [Moments.of(b) for _, b in pairs])
    for i, (a, b) in enumerate(pairs):
        ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
        assert t[i] == pytest.approx(ref.statistic, rel=1e-10)
        assert p[i] == pytest.approx(ref.pvalue, rel=1e-8)
        single = loss_shift_test(a, b)
        assert single.statistic == pytest.approx(ref.statistic) and single.p_value == pytest.approx(ref.pvalue)


def test_welch_by_hand():
    # current: n=4 mean 2.5 var 5/3; reference: n=3 mean 1 var 1 -> t = 1.5 / sqrt(5/12 + 1/3)
    t, p = welch_greater([Moments.of([1, 2, 3, 4])], [Moments.of([0, 1, 2])])
    assert t[0] == pytest.approx(1.5 / np.sqrt(5 / 12 + 1 / 3))
    a, b = 5 / 12, 1 / 3
    df = (a + b) ** 2 / (a * a / 3 + b * b / 2)
    assert p[0] == pytest.approx(stats.t.sf(t[0], df))


def test_moments_from_daily_sums_equal_moments_of_the_values():
    rng = np.random.default_rng(2)
    days = [rng.gamma(2, 1, n) for n in (50, 80, 30)]
    sums = np.array([(len(v), v.sum(), (v * v).sum()) for v in days]).sum(axis=0)
    joined = Moments.of(np.concatenate(days))
    got = Moments.from_sums(*sums)
    assert got.n == joined.n and got.mean == pytest.approx(joined.mean) and got.var == pytest.approx(joined.var)


def test_mann_whitney_equals_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.exponential(1.2, 200), rng.exponential(1.0, 300)
    got = loss_shift_test(a, b, "mann_whitney")
    ref = stats.mannwhitneyu(a, b, alternative="greater", method="asymptotic")
    assert got.statistic == ref.statistic and got.p_value == pytest.approx(ref.pvalue)


def test_benjamini_hochberg_equals_scipy_and_bonferroni_by_hand():
    p = np.array([0.001, 0.04, 0.03, 0.2, np.nan, 0.0005])
    got = adjust_p_values(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(got[ok], stats.false_discovery_control(p[ok]))
    assert np.isnan(got[4])
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni")[ok], np.minimum(p[ok] * 5, 1))


def test_persistence_counts_the_last_n_days():
    assert persistence_met([True, False, True], 2, 3)
    assert not persistence_met([True, True, False, False, True], 2, 3)
    assert persistence_met([False, True, True], 2, 3)


def test_reference_band_is_the_mean_plus_minus_two_standard_errors():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    lo, hi = reference_band(ref, 16)
    se = ref.std(ddof=1) / 4
    assert (lo, hi) == pytest.approx((2.5 - 2 * se, 2.5 + 2 * se))


def test_day_flags_only_after_adjustment_and_never_without_rows():
    settings = TriggerSettings(alpha=0.01, min_rows=100)
    rng = np.random.default_rng(9)
    ref = Moments.of(rng.exponential(1.0, 2000))
    windows = {"worse": Moments.of(rng.exponential(1.3, 1000)), "same": Moments.of(rng.exponential(1.0, 1000)),
               "few": Moments.of(rng.exponential(5.0, 50))}
    day = evaluate_day(windows, {m: ref for m in windows}, settings).set_index("model_id")
    assert day.loc["worse", "flagged"] and not day.loc["same", "flagged"]
    assert not day.loc["few", "flagged"] and np.isnan(day.loc["few", "p_value"])  # 50 rows: no test
    # BH over the two tested models: the adjusted p of the smaller is twice its raw p
    assert day.loc["worse", "p_adjusted"] == pytest.approx(min(2 * day.loc["worse", "p_value"],
                                                               day.loc["same", "p_value"]))


def test_stable_model_over_90_days_opens_no_request(bench):
    settings = TriggerSettings()
    assert bench.false_triggers(seed=11, models=1, test_days=90, rows=200, settings=settings) == 0


def test_500_stable_models_over_30_days_open_at_most_one_request(bench):
    settings = TriggerSettings()
    assert bench.false_triggers(seed=12, models=500, test_days=30, rows=200, settings=settings) <= 1


def test_three_point_accuracy_drop_at_200_rows_a_day_opens_a_request_within_7_days(bench):
    rng = np.random.default_rng(0)
    flip = bench.flip_share_for_drop(0.03, rng)
    # the drop is what it says: accuracy of a calibrated model falls by 3 points
    p = 1 / (1 + np.exp(-rng.normal(bench.SCORE_MEAN, bench.SCORE_SD, 400_000)))
    y = (rng.random(p.size) < p).astype(float)
    flipped = np.where(rng.random(p.size) < flip, 1 - y, y)
    assert ((p >= 0.5) == y).mean() - ((p >= 0.5) == flipped).mean() == pytest.approx(0.03, abs=0.004)
    # Half the time or more within 7 days: the reference batch's own noise sometimes hides the drop
    # for longer (benchmarks/retraining_trigger.py measures how often).
    delays = [bench.detection_delay(seed=seed, rows=200, settings=TriggerSettings(), flip=flip)
              for seed in range(100, 115)]
    assert bench.median_delay(delays) is not None and bench.median_delay(delays) <= 7


def test_collapse_of_auc_opens_a_request_within_2_days(bench):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    p = 1 / (1 + np.exp(-rng.normal(bench.SCORE_MEAN, bench.SCORE_SD, 100_000)))
    before = (rng.random(p.size) < p).astype(int)
    truth = np.where(rng.random(p.size) < bench.COLLAPSE_REVERSE, 1 - p, p)
    after = (rng.random(p.size) < truth).astype(int)
    assert roc_auc_score(before, p) == pytest.approx(0.8, abs=0.02)
    assert roc_auc_score(after, p) == pytest.approx(0.3, abs=0.02)
    for seed in (21, 22, 23):
        delay = bench.detection_delay(seed=seed, rows=200, settings=TriggerSettings(), reverse=bench.COLLAPSE_REVERSE)
        assert delay is not None and delay <= 2


def test_simulation_starts_after_the_reference_and_waits_a_window_between_requests():
    rng = np.random.default_rng(3)
    worse = [rng.exponential(1.0 if d < 7 else 3.0, 300) for d in range(40)]
    opened = simulate_trigger({"m": worse}, 7, TriggerSettings(window_days=5))["m"]
    assert opened[0] == 7 + 5 - 1 + 1  # first test day flags; the second flag (persistence 2 of 3) opens
    assert all(b - a >= 5 for a, b in zip(opened, opened[1:], strict=False))
