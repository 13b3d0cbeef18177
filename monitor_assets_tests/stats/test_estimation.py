"""The estimation core: expected confusion matrices by hand, bands that cover the realized value, estimates
that follow a covariate shift, direct loss estimation, and the check's sequential test."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from monitor_assets.stats.estimation import (
    CLASSIFIER_METRICS,
    Calibration,
    ConfidenceEstimator,
    LossEstimator,
    classifier_sampling_sd,
    confusion_metrics,
    expected_auc,
    expected_confusion,
    from_text,
    predicted_class,
    realized_classifier_metrics,
    shortfall_test,
    to_text,
)

# -- hand-computed ------------------------------------------------------------------------------------------

def test_expected_confusion_by_hand():
    p = np.array([0.9, 0.6, 0.2, 0.1])
    d = np.array([1, 1, 0, 0])
    c = expected_confusion(p, d)
    assert c == pytest.approx({"tp": 1.5, "fp": 0.5, "fn": 0.3, "tn": 1.7})
    m = confusion_metrics(c)
    assert m["accuracy"] == pytest.approx(3.2 / 4)
    assert m["precision"] == pytest.approx(1.5 / 2)
    assert m["recall"] == pytest.approx(1.5 / 1.8)
    assert m["f1"] == pytest.approx(3.0 / (3.0 + 0.5 + 0.3))
    assert m["specificity"] == pytest.approx(1.7 / 2.2)


def test_expected_auc_by_hand_and_brute_force():
    p = np.array([0.8, 0.5, 0.5, 0.1])
    s = np.array([0.9, 0.4, 0.4, 0.2])  # a tie in the middle
    # pairs (i, j), i != j: p_i (1 - p_j) weights; [s_i > s_j] plus one half for ties
    num = den = 0.0
    for i in range(4):
        for j in range(4):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    assert expected_auc(p, s) == pytest.approx(num / den)
    rng = np.random.default_rng(3)
    p, s = rng.random(300), np.round(rng.random(300), 1)
    w = p[:, None] * (1 - p[None, :])
    np.fill_diagonal(w, 0)
    cmp = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])
    assert expected_auc(p, s) == pytest.approx((w * cmp).sum() / w.sum())


def test_realized_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(2000), 2)
    y = (rng.random(2000) < s).astype(int)
    d = predicted_class(s, None, 0.4)
    got = realized_classifier_metrics(y, d, s)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, d))
    assert got["precision"] == pytest.approx(skm.precision_score(y, d))
    assert got["recall"] == pytest.approx(skm.recall_score(y, d))
    assert got["f1"] == pytest.approx(skm.f1_score(y, d))
    assert got["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - d))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s))


def test_logged_decisions_replace_the_threshold_where_present():
    s = np.array([0.9, 0.9, 0.1])
    assert list(predicted_class(s, np.array([0.0, np.nan, 1.0]), 0.5)) == [0.0, 1.0, 1.0]


def test_sampling_sd_matches_simulation():
    rng = np.random.default_rng(1)
    p = rng.beta(2, 2, 400)
    s, d = p, (p >= 0.5).astype(float)
    sd = classifier_sampling_sd(p, d, s)
    draws = [realized_classifier_metrics((rng.random(400) < p).astype(float), d, s) for _ in range(2000)]
    for m in CLASSIFIER_METRICS:
        assert sd[m] == pytest.approx(np.std([x[m] for x in draws]), rel=0.15), m


# -- simulated classifiers ------------------------------------------------------------------------------------

def simulate(rng, n, shifted=False):
    """A model whose true probability is known: p = sigmoid(2x + 0.3); its score is p**0.8 (a monotone
    miscalibration the isotonic step can undo). The shift moves a third of the rows near the boundary,
    where the model is less accurate."""
    x = rng.normal(0, 2.0, n)
    if shifted:
        x = np.where(rng.random(n) < 0.33, rng.normal(0, 0.6, n), x)
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    return p ** 0.8, (rng.random(n) < p).astype(float)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    return ConfidenceEstimator.fit(*simulate(rng, 20_000))


def test_calibration_is_chosen_by_cross_validation(fitted):
    assert not fitted.calibration.identity  # isotonic lowers the Brier score of p**0.8
    assert fitted.brier_isotonic < fitted.brier_identity
    rng = np.random.default_rng(8)
    p = rng.random(5000)
    calibrated = ConfidenceEstimator.fit(p, (rng.random(5000) < p).astype(float))
    assert calibrated.calibration.identity  # already calibrated: isotonic does not help out of fold


@pytest.mark.parametrize("shifted,rows", [(False, 1000), (True, 5000)])
def test_bands_cover_the_realized_value(fitted, shifted, rows):
    rng = np.random.default_rng(11 + shifted)
    covered = {m: 0 for m in ("accuracy", "f1", "roc_auc")}
    for day in range(200):
        s, y = simulate(rng, rows, shifted)
        estimates = {e.metric: e for e in fitted.estimate(s, seed=day)}
        real = realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)
        for m in covered:
            covered[m] += estimates[m].lower <= real[m] <= estimates[m].upper
    assert all(c >= 180 for c in covered.values()), covered  # >= 90% of 200 days


def test_estimate_follows_a_covariate_shift(fitted):
    rng = np.random.default_rng(21)
    stable = [realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)["accuracy"]
              for s, y in (simulate(rng, 5000) for _ in range(20))]
    errors, drops = [], []
    for _ in range(30):
        s, y = simulate(rng, 5000, shifted=True)
        real = realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)["accuracy"]
        estimate = next(e for e in fitted.estimate(s, metrics=("accuracy",)))
        errors.append(estimate.estimate - real)
        drops.append(np.mean(stable) - real)
    assert 0.04 <= np.mean(drops) <= 0.07  # the shift costs about 5 points of accuracy
    assert max(abs(e) for e in errors) <= 0.015  # followed within 1.5 points on every day


def test_estimator_survives_text_round_trip(fitted):
    again = from_text(to_text(fitted))
    s, _ = simulate(np.random.default_rng(5), 500)
    assert again.estimate(s) == fitted.estimate(s)
    with pytest.raises(ValueError):
        from_text(to_text.__globals__["base64"].b64encode(__import__("pickle").dumps({"a": 1})).decode())


def test_identity_calibration_clips_scores():
    assert list(Calibration()(np.array([-0.5, 0.3, 1.5]))) == [0.0, 0.3, 1.0]


# -- simulated regressors -----------------------------------------------------------------------------------

def simulate_regression(rng, n, shifted=False):
    """y = 3 x1 + x2 + noise whose spread grows with |x1|; the model predicts the mean exactly. The shift
    moves x1 outward, where errors are larger."""
    x1 = rng.normal(1.0 if shifted else 0.0, 1.0, n)
    x2 = rng.normal(0, 1, n)
    prediction = 3 * x1 + x2
    y = prediction + rng.normal(0, 0.5 + np.abs(x1), n)
    return np.column_stack([x1, x2]), prediction, y


def test_direct_loss_estimation_tracks_mae_and_rmse():
    rng = np.random.default_rng(31)
    estimator = LossEstimator.fit(*simulate_regression(rng, 20_000))
    for shifted in (False, True):
        x, prediction, y = simulate_regression(rng, 5000, shifted)
        got = {e.metric: e for e in estimator.estimate(x, prediction)}
        mae, rmse = skm.mean_absolute_error(y, prediction), math.sqrt(skm.mean_squared_error(y, prediction))
        assert got["mae"].estimate == pytest.approx(mae, rel=0.04), shifted  # within 4%
        assert got["rmse"].estimate == pytest.approx(rmse, rel=0.06), shifted
        assert got["mae"].lower <= mae <= got["mae"].upper
    assert from_text(to_text(estimator)).estimate(x, prediction) == estimator.estimate(x, prediction)


# -- the check's sequential test ------------------------------------------------------------------------------

def daily_accuracy(rng, days, rows, base=0.90, drop_from=None, drop=0.03):
    """Estimated accuracy per day with its standard error: the truth plus the day's sampling noise."""
    out = []
    for t in range(days):
        acc = base - (drop if drop_from is not None and t >= drop_from else 0.0)
        se = math.sqrt(acc * (1 - acc) / rows)
        out.append((acc + rng.normal(0, se), se))
    return out


def first_alarm(series, floor, rule="fails"):
    """The first day (index) the check fails on a series of (estimate, se), judged on a sliding 7-day window."""
    for t in range(len(series)):
        window = series[max(0, t - 6):t + 1]
        if getattr(shortfall_test([e for e, _ in window], [s for _, s in window], floor), rule):
            return t
    return None


def test_stable_models_do_not_alarm_at_the_default_ratio():
    quiet = sum(first_alarm(daily_accuracy(np.random.default_rng(seed), 60, 300), 0.95 * 0.90) is None
                for seed in range(100))
    assert quiet >= 98  # 0 alarms over 60 days


def test_stable_models_near_a_tight_floor():
    """Half a standard error above the floor (ratio 0.99 at 300 rows a day): the CUSUM stays quiet; the day's
    level test is a one-sided 2.5% test, so over 60 days it alone speaks in about a quarter of the runs."""
    series = [daily_accuracy(np.random.default_rng(seed), 60, 300) for seed in range(100)]
    floor = 0.99 * 0.90
    assert sum(first_alarm(s, floor, "cusum_fails") is None for s in series) >= 97
    assert sum(first_alarm(s, floor) is None for s in series) >= 60  # most seeds: no alarm at all


def test_a_three_point_drop_at_300_rows_is_found_within_a_week():
    found = 0
    for seed in range(100):
        day = first_alarm(daily_accuracy(np.random.default_rng(seed), 60, 300, drop_from=53)[53 - 30:], 0.99 * 0.90,
                          "cusum_fails")
        found += day is not None and 30 <= day < 37
    assert found >= 80


def test_level_rule_and_direction():
    assert shortfall_test([0.80], [0.01], 0.85).level_fails
    assert not shortfall_test([0.84], [0.01], 0.85).level_fails  # the band reaches the floor
    assert shortfall_test([12.0], [0.5], 10.0, higher_is_better=False).level_fails  # MAE above its ceiling
    assert not shortfall_test([math.nan], [math.nan], 0.85).fails
