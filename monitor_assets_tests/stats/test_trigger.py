"""The retraining trigger: its statistics against scipy (and its p-value against a simulation), and its
behaviour on synthetic streams over many runs (the issue's "done when": quiet on stable models alone and
in a fleet of 500, a 3-point accuracy drop found, a collapse within 2 days)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monitor_assets.stats.multiple_testing import adjust_p_values
from monitor_assets.stats.trigger import (
    CAPPED_QUANTILE,
    Calibration,
    Moments,
    TriggerSettings,
    baseline_means,
    calibrate,
    cap_quantile_for,
    capped,
    cusum,
    cusum_threshold,
    evaluate_day,
    loss_cap,
    loss_shift_test,
    persistence_met,
    reference_band,
    rolling_baseline,
    sequential_p_value,
    simulate_trigger,
    weekday_profile,
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


# -- statistics --------------------------------------------------------------------------------------------


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
    # a family counted as 2 models (the trigger's family size): Bonferroni times 2, BH's step-up with m = 2
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni", 2)[ok], np.minimum(p[ok] * 2, 1))
    np.testing.assert_allclose(adjust_p_values(p, family_size=2)[ok], stats.false_discovery_control(p[ok]) * 2 / 5)


def test_persistence_counts_the_last_n_days():
    assert persistence_met([True, False, True], 2, 3)
    assert not persistence_met([True, True, False, False, True], 2, 3)
    assert persistence_met([False, True, True], 2, 3)


def test_reference_band_is_the_mean_plus_minus_two_standard_errors():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    lo, hi = reference_band(ref, 16)
    se = ref.std(ddof=1) / 4
    assert (lo, hi) == pytest.approx((2.5 - 2 * se, 2.5 + 2 * se))


def test_calibration_tunes_the_shift_to_a_window_of_the_reference_volume():
    settings = TriggerSettings(window_days=5, shift_se=6.0)
    cal = calibrate(Moments(2800, 0.47, 0.25), 14, settings)
    assert cal.rows_per_day == 200 and cal.reference_sd == pytest.approx(0.5)
    assert cal.delta == pytest.approx(6 / math.sqrt(200 * 5))  # 6 standard errors of a 5-day window's mean
    assert not calibrate(Moments(50, 1.0, 0.0), 5, settings).usable  # no spread: nothing to standardise by


def test_cusum_by_hand():
    cal = Calibration(reference_mean=1.0, reference_sd=2.0, n_reference=1000, rows_per_day=10, delta=0.5)
    # step = 0.5 * (sum - 10 * 1) / 2 - 10 * 0.25 / 2 = (sum - 10) / 4 - 1.25
    counts, sums = [10, 10, 0, 10, 10], [10.0, 30.0, 0.0, 5.0, 40.0]
    values, starts = cusum(counts, sums, cal)
    expected = [0.0, 3.75, 3.75, max(0, 3.75 - 1.25 - 1.25), 1.25 + 7.5 - 1.25]
    np.testing.assert_allclose(values, expected)
    # a run starts the day after the CUSUM was last 0; a day without rows changes nothing
    assert list(starts) == [0, 1, 1, 1, 1]


def test_cusum_steps_are_the_log_likelihood_ratios_of_normal_losses():
    rng = np.random.default_rng(5)
    ref = rng.gamma(2.0, 0.25, 2000)
    cal = calibrate(Moments.of(ref), 10, TriggerSettings())
    day = rng.gamma(2.0, 0.3, 200)
    mu, sd = cal.reference_mean, cal.reference_sd
    llr = (stats.norm.logpdf(day, mu + cal.delta * sd, sd) - stats.norm.logpdf(day, mu, sd)).sum()
    values, _ = cusum([len(day)], [day.sum()], cal)
    assert values[0] == pytest.approx(max(llr, 0.0))


def test_sequential_p_value_matches_a_simulation_of_normal_losses():
    """Normal daily means, a reference batch that is itself a sample (its error is shared by every day):
    the share of simulated stable models whose CUSUM reaches h within 90 days."""
    rng = np.random.default_rng(6)
    runs, rows, n_ref, horizon = 40_000, 200, 2800, 90
    cal = Calibration(0.0, 1.0, n_ref, rows, 6 / math.sqrt(rows * 5))
    error = rng.normal(0, 1 / math.sqrt(n_ref), runs)  # the reference mean's error, in sds
    value, top = np.zeros(runs), np.zeros(runs)
    for _ in range(horizon):
        day_sum = rng.normal(0, math.sqrt(rows), runs) + rows * error
        value = np.maximum(0, value + cal.delta * day_sum - rows * cal.delta ** 2 / 2)
        top = np.maximum(top, value)
    for h in (3.0, 6.0, 9.0):  # chances of about 0.5, 0.07 and 0.009
        simulated = (top >= h).mean()
        assert sequential_p_value(h, cal, horizon)[0] == pytest.approx(simulated, rel=0.15), h
    # the reference's own noise matters: a reference 100 times larger leaves far fewer false alarms
    exact = Calibration(0.0, 1.0, n_ref * 100, rows, cal.delta)
    assert sequential_p_value(9.0, exact, horizon)[0] < sequential_p_value(9.0, cal, horizon)[0] / 2


def test_threshold_inverts_the_sequential_p_value():
    cal = Calibration(0.0, 1.0, 2800, 200, 0.19)
    h = cusum_threshold(cal, 0.001, 90)
    assert sequential_p_value(h, cal, 90)[0] == pytest.approx(0.001, rel=1e-4)
    assert sequential_p_value([0.0, h / 2, h, 2 * h], cal, 90).tolist() == sorted(
        sequential_p_value([0.0, h / 2, h, 2 * h], cal, 90).tolist(), reverse=True)


def test_family_counts_models_beyond_what_fleet_alpha_allows():
    settings = TriggerSettings(alpha=0.005, fleet_alpha=0.2)
    assert settings.family_size(1) == 1 and settings.family_size(40) == 1  # each model keeps alpha
    assert settings.family_size(500) == pytest.approx(12.5)  # 500 models share 0.2 expected false requests


def test_day_flags_only_after_adjustment_and_never_without_a_test():
    settings = TriggerSettings(alpha=0.005, fleet_alpha=0.005)  # from 2 models on, Bonferroni
    cal = Calibration(0.0, 1.0, 2800, 200, 0.19)
    h = cusum_threshold(cal, 0.004, settings.horizon_days)  # p = 0.004 < alpha alone, 0.008 for two
    day = evaluate_day({"up": h, "same": 0.0, "untested": math.nan}, {m: cal for m in ("up", "same", "untested")},
                       settings).set_index("model_id")
    assert day.loc["up", "p_value"] == pytest.approx(0.004, rel=1e-3)
    assert day.loc["up", "p_adjusted"] == pytest.approx(0.008, rel=1e-3) and not day.loc["up", "flagged"]
    assert np.isnan(day.loc["untested", "p_value"]) and not day.loc["untested", "flagged"]
    alone = evaluate_day({"up": h}, {"up": cal}, settings)
    assert alone.flagged.iloc[0] and alone.p_adjusted.iloc[0] == pytest.approx(0.004, rel=1e-3)


def test_simulation_tests_after_the_reference_and_opens_one_request_a_stream():
    rng = np.random.default_rng(3)
    worse = [rng.exponential(1.0 if d < 7 else 3.0, 300) for d in range(40)]
    opened = simulate_trigger({"m": worse}, 7, TriggerSettings(window_days=5))["m"]
    assert opened == [7 + 1]  # flagged on the first day after the reference; persistence 2 of 3 opens on the next


# -- the floors, on synthetic streams over many runs ---------------------------------------------


def test_a_stable_model_alone_over_90_days_rarely_opens_a_request(bench):
    # 600 runs, each a stable model alone (a family of one) tested for 90 days after its 14-day reference.
    # The aim is at most 1% of runs; 600 runs cannot tell 1% from 0.6%, so the test allows 1.5% (9 runs).
    # benchmarks/retraining_trigger.py measures the rate on 2,000 runs (0.55%; 0.65% over 8,000).
    opened = bench.false_triggers(seed=11, models=600, test_days=90, rows=200, settings=TriggerSettings(),
                                  alone=True)
    assert sum(1 for n in opened if n) <= 9


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_500_stable_models_over_30_days_open_at_most_one_request(bench, seed):
    opened = bench.false_triggers(seed=seed, models=500, test_days=30, rows=200, settings=TriggerSettings())
    assert sum(opened) <= 1


def test_three_point_accuracy_drop_at_200_rows_a_day(bench):
    rng = np.random.default_rng(0)
    flip = bench.flip_share_for_drop(0.03, rng)
    # the drop is what it says: accuracy of a calibrated model falls by 3 points
    p = 1 / (1 + np.exp(-rng.normal(bench.SCORE_MEAN, bench.SCORE_SD, 400_000)))
    y = (rng.random(p.size) < p).astype(float)
    flipped = np.where(rng.random(p.size) < flip, 1 - y, y)
    assert ((p >= 0.5) == y).mean() - ((p >= 0.5) == flipped).mean() == pytest.approx(0.03, abs=0.004)
    # 200 runs of the drop, each model alone, followed for 30 days. Within 7 days in only about a third of
    # them (the benchmark: 34% of 400): with the two floors above kept, 200 labelled rows a day against a
    # 2,800-row reference batch do not hold the evidence for more (module docstring); at 800 rows a day
    # the next test finds it within 7 days.
    delays = np.array([d if d is not None else 99 for d in
                       bench.detection_delays(seed=100, rows=200, settings=TriggerSettings(), flip=flip, changed=200)])
    assert (delays <= 7).mean() >= 0.2
    assert np.median(delays) <= 11
    assert (delays <= 30).mean() >= 0.85


def test_three_point_accuracy_drop_at_200_rows_a_day_within_7_days_at_base_accuracy_0_95(bench):
    from sklearn.metrics import roc_auc_score

    # The imbalanced classifier of base accuracy 0.95: the logits' sd kept (1.45), their mean moved down,
    # so 5% positives at about the same ROC AUC (0.83). A 3-point drop flips 3.3% of its labels (5.4% at
    # 0.78), mostly confident negatives, each a large log loss: far more evidence a row than at 0.78.
    scores = bench.Scores.for_accuracy(0.95, "mean")
    rng = np.random.default_rng(0)
    flip = bench.flip_share_for_drop(0.03, rng, scores)
    p = scores.draw(rng, 400_000)
    y = (rng.random(p.size) < p).astype(float)
    flipped = np.where(rng.random(p.size) < flip, 1 - y, y)
    assert ((p >= 0.5) == y).mean() == pytest.approx(0.95, abs=0.003) and y.mean() == pytest.approx(0.05, abs=0.005)
    assert roc_auc_score(y, p) == pytest.approx(0.83, abs=0.01)
    assert ((p >= 0.5) == y).mean() - ((p >= 0.5) == flipped).mean() == pytest.approx(0.03, abs=0.004)
    # 400 runs of the drop, each model alone: the benchmark (--base-accuracy 0.95 --solve-for mean) finds it
    # within 7 days in 95% of 400 runs, median 4 days (among 500 models 80%, median 6).
    delays = np.array([d if d is not None else 99 for d in
                       bench.detection_delays(seed=300, rows=200, settings=TriggerSettings(), flip=flip, changed=400,
                                              scores=scores)])
    assert (delays <= 7).mean() >= 0.88
    assert np.median(delays) <= 5
    # The price: this classifier's log losses are more skewed (rare positives, each a large loss), and the
    # CUSUM's formula assumes normal daily sums, so a lone stable model opens a false request over 90 days
    # in 1.36% of runs (the benchmark, 109 of 8,000), above the 1% aim and too near the 1.5% tolerance of
    # the 0.78 classifier's test above to assert it here without flakiness: this pins at most 2.5%.
    opened = bench.false_triggers(seed=301, models=800, test_days=90, rows=200, settings=TriggerSettings(),
                                  alone=True, scores=scores)
    assert sum(1 for n in opened if n) <= 20


def test_three_point_accuracy_drop_at_800_rows_a_day_within_7_days_even_among_500_models(bench):
    flip = bench.flip_share_for_drop(0.03)
    alone = bench.detection_delays(seed=200, rows=800, settings=TriggerSettings(), flip=flip, changed=100)
    assert sum(1 for d in alone if d is not None and d <= 7) >= 90
    fleet = bench.detection_delays(seed=201, rows=800, settings=TriggerSettings(), flip=flip, changed=20, family=500,
                                   horizon=10)
    assert sum(1 for d in fleet if d is not None and d <= 7) >= 16


def test_collapse_of_auc_opens_a_request_within_2_days_alone_and_among_500_models(bench):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    p = 1 / (1 + np.exp(-rng.normal(bench.SCORE_MEAN, bench.SCORE_SD, 100_000)))
    before = (rng.random(p.size) < p).astype(int)
    truth = np.where(rng.random(p.size) < bench.COLLAPSE_REVERSE, 1 - p, p)
    after = (rng.random(p.size) < truth).astype(int)
    assert roc_auc_score(before, p) == pytest.approx(0.8, abs=0.02)
    assert roc_auc_score(after, p) == pytest.approx(0.3, abs=0.02)
    alone = bench.detection_delays(seed=21, rows=200, settings=TriggerSettings(), reverse=bench.COLLAPSE_REVERSE,
                                   changed=30, horizon=5)
    fleet = bench.detection_delays(seed=22, rows=200, settings=TriggerSettings(), reverse=bench.COLLAPSE_REVERSE,
                                   changed=5, family=500, horizon=5)
    assert all(d is not None and d <= 2 for d in alone + fleet)


def test_shift_se_from_the_config_tunes_the_cusum_and_keeps_the_false_request_level(bench, tmp_path):
    from monitor_assets.config import load_config
    from monitor_assets.retraining.logic import settings_for
    from monitor_assets_tests.conftest import write
    from monitor_assets_tests.test_config import BASE

    config = load_config(write(tmp_path / "m.yaml", BASE.replace(
        "sensitive_attributes: [region]", "sensitive_attributes: [region]\n    retraining: {shift_se: 12}")))
    assert settings_for(config.models[0]).shift_se == 12.0
    assert settings_for(load_config(write(tmp_path / "d.yaml", BASE)).models[0]).shift_se == 5.0  # the default
    # Tuned for a shift far larger than a 3-point accuracy drop at 200 rows a day, the CUSUM finds that drop
    # later (seeded simulation, 200 runs each) and still opens no more false requests among 500 stable models.
    flip = bench.flip_share_for_drop(0.03)
    found = {}
    for shift_se in (5.0, 12.0):
        delays = bench.detection_delays(seed=100, rows=200, settings=TriggerSettings(shift_se=shift_se), flip=flip,
                                        changed=200)
        found[shift_se] = np.mean([d is not None and d <= 30 for d in delays])
    assert found[5.0] >= 0.8 and found[12.0] <= 0.6
    assert sum(bench.false_triggers(seed=12, models=500, test_days=30, rows=200,
                                    settings=TriggerSettings(shift_se=12.0))) <= 1


# -- heavy-tailed and seasonal losses (issue 22, item 7) --------------------------------------------------


def test_cap_is_a_quantile_of_the_reference_and_follows_the_main_metric():
    ref = np.arange(10.0)  # numpy's linear quantile at 0.9: 8.1
    assert loss_cap(ref, 0.9) == pytest.approx(8.1) and loss_cap(ref, 1.0) == math.inf
    np.testing.assert_allclose(capped([1.0, 9.0, 36.0], 8.1), [1.0, 8.1, 8.1])
    assert cap_quantile_for("accuracy") == CAPPED_QUANTILE == 0.9 and cap_quantile_for("f1") == 0.9
    assert cap_quantile_for("roc_auc") == 1.0 and cap_quantile_for("log_loss") == 1.0
    with pytest.raises(ValueError, match="cap_quantile"):
        TriggerSettings(cap_quantile=0.0)
    with pytest.raises(ValueError, match="baseline_lag_days"):
        TriggerSettings(baseline_lag_days=-1)


def test_rolling_baseline_and_weekday_profile_by_hand():
    # 4 reference days of 10 rows (means 1, 1, 2, 2), then tested days with means 3, 3, 5, 5, 5
    counts = [10] * 9
    sums = [10, 10, 20, 20, 30, 30, 50, 50, 50]
    fixed = rolling_baseline(counts, sums, reference_days=4, length=4, lag=0)
    np.testing.assert_allclose(fixed, [1.5] * 5)  # lag 0: always the reference batch
    # lag 2, 4 days: day 4 and 5 still the reference (its end is later), day 6: days 1..4 (1, 2, 2, 3),
    # day 7: days 2..5 (2, 2, 3, 3), day 8: days 3..6 (2, 3, 3, 5)
    np.testing.assert_allclose(rolling_baseline(counts, sums, 4, 4, 2), [1.5, 1.5, 2.0, 2.5, 3.25])
    # a window without rows falls back on the reference batch's mean
    np.testing.assert_allclose(rolling_baseline([10, 10, 0, 0, 0, 0], [10, 30, 0, 0, 0, 0], 2, 2, 2)[-1], 2.0)
    # profile: weekdays 0, 1, 0, 1 -> weekday 0 mean (1 + 2) / 2 = 1.5, weekday 1 the same; all offsets 0
    np.testing.assert_allclose(weekday_profile(counts[:4], sums[:4], [0, 1, 0, 1]), np.zeros(7))
    profile = weekday_profile([10, 10, 10, 10], [10, 30, 10, 30], [5, 6, 5, 6])  # weekend pair: Sat 1, Sun 3
    assert profile[5] == pytest.approx(-1.0) and profile[6] == pytest.approx(1.0) and not profile[:5].any()
    settings = TriggerSettings(baseline_lag_days=0)
    got = baseline_means([10, 10, 10, 10, 10, 10], [10, 30, 10, 30, 20, 20], [5, 6, 5, 6, 5, 6], 4, settings)
    np.testing.assert_allclose(got, [1.0, 3.0])  # reference mean 2, Saturday -1, Sunday +1
    plain = baseline_means([10, 10, 10, 10, 10, 10], [10, 30, 10, 30, 20, 20], [5, 6, 5, 6, 5, 6], 4,
                           TriggerSettings(baseline_lag_days=0, weekday_profile=False))
    np.testing.assert_allclose(plain, [2.0, 2.0])


def test_cusum_against_a_baseline_per_day_by_hand():
    cal = Calibration(reference_mean=1.0, reference_sd=2.0, n_reference=1000, rows_per_day=10, delta=0.5)
    # step = 0.5 * (sum - 10 * baseline) / 2 - 1.25; with the baseline at the day's mean, only the -1.25
    values, _ = cusum([10, 10], [30.0, 30.0], cal, baseline=[3.0, 1.0])
    np.testing.assert_allclose(values, [0.0, 5 - 1.25])
    # a constant baseline equal to the reference mean is the plain CUSUM
    np.testing.assert_allclose(cusum([10, 10], [30.0, 5.0], cal, [1.0, 1.0])[0], cusum([10, 10], [30.0, 5.0], cal)[0])


def test_heavy_tailed_confident_classifier_drop_found_with_the_cap_missed_without(bench):
    """The confident, over-confident classifier of the benchmark (accuracy 0.94, AUC 0.97, 165 rows a day): a
    3-point drop from harder inputs. Its whole log loss barely moves against a spread inflated by confident
    mistakes (the benchmark: found within 14 days in 9% of 400 runs); capped at the reference's 0.9 quantile
    (main metric accuracy) it is found within 14 days in nearly every run (the benchmark: 100% of 400)."""
    hard = bench.hard_share_for_drop()
    change = bench.REFERENCE_DAYS + bench.STABLE_TESTING_DAYS
    delays = {}
    for q in (1.0, CAPPED_QUANTILE):
        found, _ = bench.confident_runs(70, TriggerSettings(cap_quantile=q), 100, bench.STABLE_TESTING_DAYS + 14,
                                        change, hard)
        delays[q] = np.array([d if d is not None else 99 for d in found])
    assert (delays[CAPPED_QUANTILE] <= 14).mean() >= 0.9 and np.median(delays[CAPPED_QUANTILE]) <= 6
    assert (delays[1.0] <= 14).mean() <= 0.3


def test_heavy_tailed_stable_models_keep_the_false_request_level(bench):
    # 600 lone stable confident models over 90 days with the cap: at most 1.5% (the benchmark: 0.2% of 2,000;
    # without the cap 2.2%, the heavy tail the normal formula does not see)
    _, early = bench.confident_runs(71, TriggerSettings(cap_quantile=CAPPED_QUANTILE), 600, 90)
    assert sum(early) <= 9


def test_seasonal_losses_rolling_baseline_waits_for_the_change(bench):
    """Weekly and annual cycle of hard rows, a 3-point change 120 days after the reference: against the fixed
    reference batch with the cap, the slow season opens a request before the change in most runs; the
    rolling baseline with the weekday profile waits for the change and finds it."""
    hard = bench.hard_share_for_drop()
    change = bench.REFERENCE_DAYS + bench.SEASONAL_CHANGE_DAY
    out = {}
    for lag, profile in ((0, False), (21, True)):
        settings = TriggerSettings(cap_quantile=CAPPED_QUANTILE, baseline_lag_days=lag, weekday_profile=profile)
        found, early = bench.confident_runs(80, settings, 100, bench.SEASONAL_CHANGE_DAY + 14, change, hard,
                                            seasonal=True)
        out[lag] = (np.mean(early), np.mean([d is not None and d <= 14 for d in found]))
    assert out[0][0] >= 0.4  # the fixed reference: early requests
    assert out[21][0] <= 0.15 and out[21][1] >= 0.8
