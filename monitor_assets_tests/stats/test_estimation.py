"""The estimation core: expected confusion matrices by hand (binary and multiclass), bands that cover the
realized value, estimates that follow a covariate shift (plain and reweighted by a density ratio), direct loss
estimation, and the check's sequential test."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from monitor_assets.stats.density_ratio import density_ratio, logistic_fit, rank_auc
from monitor_assets.stats.estimation import (
    CLASSIFIER_METRICS,
    CONFIDENCE_REWEIGHTED,
    Z95,
    AdditiveSurrogate,
    Calibration,
    ConfidenceEstimator,
    LossEstimator,
    classifier_point_estimates,
    classifier_sampling_sd,
    confusion_metrics,
    estimate_multiclass,
    expected_auc,
    expected_confusion,
    expected_multiclass_confusion,
    fit_isotonic,
    fit_multiclass_calibration,
    from_text,
    multiclass_confusion_metrics,
    multiclass_point_estimates,
    multiclass_predicted,
    multiclass_sampling_sd,
    predicted_class,
    realized_classifier_metrics,
    realized_multiclass_metrics,
    to_text,
)
from monitor_assets.stats.shortfall import shortfall_test

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


@pytest.mark.parametrize("decimals", [None, 2])  # distinct scores (the fast path without ties), and ties
def test_expected_auc_with_probabilities_as_labels_matches_scikit_learn(decimals):
    """With soft labels p the expected AUC is scikit-learn's AUC of the two-row expansion (each row once as a
    positive of weight p, once as a negative of weight 1 - p), less the pairs of a row with itself."""
    rng = np.random.default_rng(4)
    s = rng.random(3000)
    s = s if decimals is None else np.round(s, decimals)
    p = rng.beta(2, 2, 3000)
    labels, weights = np.r_[np.ones(3000), np.zeros(3000)], np.r_[p, 1 - p]
    auc = skm.roc_auc_score(labels, np.r_[s, s], sample_weight=weights)
    pairs = p.sum() * (1 - p).sum()
    self_pairs = np.sum(p * (1 - p))  # each counted one half (a tie with itself) in scikit-learn's AUC
    assert expected_auc(p, s) == pytest.approx((auc * pairs - 0.5 * self_pairs) / (pairs - self_pairs), abs=1e-12)
    order = np.argsort(s)  # already sorted input reads the same
    assert expected_auc(p[order], s[order]) == pytest.approx(expected_auc(p, s), abs=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_isotonic_calibration_matches_scikit_learn(weighted):
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(6)
    s = np.round(rng.random(4000) * 1.2 - 0.1, 3)  # ties, and scores outside [0, 1] that are clipped
    y = (rng.random(4000) < np.clip(s, 0, 1) ** 0.7).astype(float)
    w = rng.exponential(size=4000) if weighted else None
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.clip(s, 0, 1), y, sample_weight=w)
    at = np.linspace(-0.2, 1.2, 1001)
    assert np.allclose(fit_isotonic(s, y, w)(at), iso.predict(np.clip(at, 0, 1)), atol=1e-12)


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

def simulate(rng, n, shifted=False, with_x=False):
    """A model whose true probability is known: p = sigmoid(2x + 0.3); its score is p**0.8 (a monotone
    miscalibration the isotonic step can undo). The shift moves a third of the rows near the boundary,
    where the model is less accurate. `with_x`: the feature comes first."""
    x = rng.normal(0, 2.0, n)
    if shifted:
        x = np.where(rng.random(n) < 0.33, rng.normal(0, 0.6, n), x)
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    out = (p ** 0.8, (rng.random(n) < p).astype(float))
    return (x[:, None], *out) if with_x else out


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    return ConfidenceEstimator.fit(*simulate(rng, 20_000))


@pytest.fixture(scope="module")
def reweighted():
    x, s, y = simulate(np.random.default_rng(7), 20_000, with_x=True)
    return ConfidenceEstimator.fit(s, y, features=x, reweight=True)


def estimates_of(estimator, x, s, **kw):
    """{metric: Estimate} of one day, with the features when the estimator reweights."""
    extra = {"features": x} if estimator.sample is not None else {}
    return {e.metric: e for e in estimator.estimate(s, **kw, **extra)}


def test_calibration_is_chosen_by_cross_validation(fitted):
    assert not fitted.calibration.identity  # isotonic lowers the Brier score of p**0.8
    assert fitted.brier_isotonic < fitted.brier_identity
    rng = np.random.default_rng(8)
    p = rng.random(5000)
    calibrated = ConfidenceEstimator.fit(p, (rng.random(5000) < p).astype(float))
    assert calibrated.calibration.identity  # already calibrated: isotonic does not help out of fold


@pytest.mark.parametrize("logged", [False, True])
@pytest.mark.parametrize("decimals", [None, 2])
def test_estimate_equals_the_metrics_of_the_unsorted_rows(fitted, logged, decimals):
    """The day's rows are sorted once inside `estimate` (by np.sort where the decisions follow the threshold, else
    by argsort); the result is what the pure functions give on the rows as they came."""
    rng = np.random.default_rng(12)
    s, _ = simulate(rng, 3000)
    s = s if decimals is None else np.round(s, decimals)
    decisions = np.where(rng.random(3000) < 0.1, 1 - (s >= 0.5), s >= 0.5).astype(float) if logged else None
    d = predicted_class(s, decisions, 0.5)
    p = fitted.calibration(s)
    point, sd = classifier_point_estimates(p, d, s), classifier_sampling_sd(p, d, s)
    for e in fitted.estimate(s, decisions):
        assert e.estimate == pytest.approx(point[e.metric], abs=1e-12), e.metric
        half = Z95 * math.sqrt(sd[e.metric] ** 2 + fitted.bias_var[e.metric])
        assert e.upper == pytest.approx(min(point[e.metric] + half, 1.0), abs=1e-12), e.metric


@pytest.mark.parametrize("kind", ["fitted", "reweighted"])
@pytest.mark.parametrize("shifted,rows,days", [(False, 1000, 200), (True, 5000, 100)])
def test_bands_cover_the_realized_value(request, kind, shifted, rows, days):
    estimator = request.getfixturevalue(kind)
    rng = np.random.default_rng(11 + shifted)
    covered = {m: 0 for m in ("accuracy", "f1", "roc_auc")}
    for day in range(days):
        x, s, y = simulate(rng, rows, shifted, with_x=True)
        estimates = estimates_of(estimator, x, s, seed=day)
        real = realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)
        for m in covered:
            covered[m] += estimates[m].lower <= real[m] <= estimates[m].upper
    assert all(c >= 0.9 * days for c in covered.values()), covered  # >= 90% of the days


@pytest.mark.parametrize("kind", ["fitted", "reweighted"])
def test_estimate_follows_a_covariate_shift(request, kind):
    estimator = request.getfixturevalue(kind)
    rng = np.random.default_rng(21)
    stable = [realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)["accuracy"]
              for s, y in (simulate(rng, 5000) for _ in range(20))]
    errors, drops, applied = [], [], []
    for day in range(30):
        x, s, y = simulate(rng, 5000, shifted=True, with_x=True)
        real = realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)["accuracy"]
        estimate = estimates_of(estimator, x, s, metrics=("accuracy",), seed=day)["accuracy"]
        errors.append(estimate.estimate - real)
        drops.append(np.mean(stable) - real)
        applied.append(estimate.reweighted)
    assert 0.04 <= np.mean(drops) <= 0.07  # the shift costs about 5 points of accuracy
    assert max(abs(e) for e in errors) <= 0.015  # followed within 1.5 points on every day
    assert all(applied) == (kind == "reweighted")  # the domain classifier saw the shift every day


# -- a shift the score does not see: reweighting by a density ratio -------------------------------------------

SD1 = 1.5


def underused_score(index):
    """P(y = 1 | 1.5 x1 + 0.3 x2 = index) on the reference (x1 ~ N(0, SD1), x2 ~ N(0, 1)), by Gauss-Hermite
    quadrature over x2 given the index: the model's score is calibrated on the reference."""
    var = 2.25 * SD1 ** 2 + 0.09
    mean = index + 0.9 * 0.3 * index / var
    sd = math.sqrt(0.81 * (1 - 0.09 / var))
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    return (1 / (1 + np.exp(-(mean[:, None] + sd * nodes[None, :])))) @ weights / weights.sum()


def simulate_underused(rng, n, shift=0.0):
    """True P(y = 1 | x) = sigmoid(1.5 x1 + 1.2 x2); the model's index 1.5 x1 + 0.3 x2 under-uses x2. A shift
    of x2 is a covariate shift (P(y | x) holds) that moves P(y | score): plain CBPE's assumption breaks."""
    x1, x2 = rng.normal(0, SD1, n), rng.normal(shift, 1.0, n)
    p = 1 / (1 + np.exp(-(1.5 * x1 + 1.2 * x2)))
    return np.column_stack([x1, x2]), underused_score(1.5 * x1 + 0.3 * x2), (rng.random(n) < p).astype(float)


def test_score_calibrated_on_the_reference():
    """The quadrature is right: on reference rows, binned mean labels match the score."""
    _, s, y = simulate_underused(np.random.default_rng(0), 200_000)
    bins = np.digitize(s, np.linspace(0, 1, 11))
    gaps = [abs(y[bins == b].mean() - s[bins == b].mean()) for b in np.unique(bins) if (bins == b).sum() > 2000]
    assert max(gaps) < 0.01


@pytest.fixture(scope="module")
def underused():
    x, s, y = simulate_underused(np.random.default_rng(3), 20_000)
    return ConfidenceEstimator.fit(s, y), ConfidenceEstimator.fit(s, y, features=x, reweight=True)


def test_reweighting_costs_nothing_on_a_stable_day(underused):
    plain, reweighted = underused
    x, s, _ = simulate_underused(np.random.default_rng(4), 5000)
    got = reweighted.estimate(s, seed=1, features=x)
    assert not any(e.reweighted for e in got) and got[0].shift_auc < 0.55
    assert [(e.estimate, e.lower, e.upper) for e in got] == [(e.estimate, e.lower, e.upper)
                                                            for e in plain.estimate(s, seed=1)]
    assert reweighted.method == CONFIDENCE_REWEIGHTED and len(reweighted.sample.x) == 20_000


def test_reweighting_follows_a_shift_the_score_does_not_see(underused):
    plain, reweighted = underused
    rng = np.random.default_rng(5)
    errors = {"plain": [], "reweighted": []}
    covered = {"plain": 0, "reweighted": 0}
    days = 20
    for day in range(days):
        x, s, y = simulate_underused(rng, 5000, shift=1.0)
        real = realized_classifier_metrics(y, predicted_class(s, None, 0.5), s)
        for name, got in (("plain", estimates_of(plain, x, s, seed=day)),
                          ("reweighted", estimates_of(reweighted, x, s, seed=day))):
            errors[name].append([got[m].estimate - real[m] for m in ("accuracy", "f1")])
            covered[name] += got["f1"].lower <= real["f1"] <= got["f1"].upper
    plain_err, reweighted_err = np.array(errors["plain"]), np.array(errors["reweighted"])
    # plain CBPE: off by about a point, always the same way, on accuracy and F1
    assert abs(plain_err.mean(axis=0)).min() >= 0.007
    # reweighted: unbiased within a third of a point, every day within 1.5 points, and its band holds
    assert abs(reweighted_err.mean(axis=0)).max() <= 0.004
    assert abs(reweighted_err).max() <= 0.015
    assert covered["reweighted"] >= 0.9 * days > covered["plain"]


def test_density_ratio_skips_a_stable_day_and_recovers_a_shift():
    rng = np.random.default_rng(9)
    ref = np.column_stack([rng.normal(0, 1, 20_000), rng.choice([0.0, 1.0, 2.0], 20_000, p=[0.5, 0.3, 0.2])])
    same = np.column_stack([rng.normal(0, 1, 5000), rng.choice([0.0, 1.0, 2.0], 5000, p=[0.5, 0.3, 0.2])])
    stable = density_ratio(ref, same, [False, True])
    assert not stable.applied and stable.auc < 0.55 and (stable.weights == 1).all()
    cur = np.column_stack([rng.normal(0.5, 1, 5000), rng.choice([0.0, 1.0, 2.0], 5000, p=[0.2, 0.3, 0.5])])
    shifted = density_ratio(ref, cur, [False, True])
    w = shifted.weights
    assert shifted.applied and shifted.auc > 0.6 and w.mean() == pytest.approx(1.0)
    # the weighted reference looks like the current rows: mean 0.5, categories 0.2 / 0.3 / 0.5
    assert np.average(ref[:, 0], weights=w) == pytest.approx(0.5, abs=0.04)
    for code, share in ((0.0, 0.2), (1.0, 0.3), (2.0, 0.5)):
        assert np.average(ref[:, 1] == code, weights=w) == pytest.approx(share, abs=0.03)
    # and the weights follow the true ratio exp(0.5 x - 0.125) x (category ratio)
    true = 0.5 * ref[:, 0] + np.log(np.select([ref[:, 1] == 0, ref[:, 1] == 1], [0.4, 1.0], 2.5))
    assert np.corrcoef(np.log(w), true)[0, 1] > 0.95


@pytest.mark.parametrize("c", [1.0, 0.01])
def test_domain_classifier_is_scikit_learns_logistic_regression(c):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(10)
    x = np.column_stack([rng.normal(0, 1, 4000), rng.normal(0, 1, 4000) ** 2, rng.random(4000) < 0.3])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.8 * x[:, 0] - 0.5 * x[:, 1] + x[:, 2])))).astype(float)
    w, b = logistic_fit(x, y, c)
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=1000).fit(x, y)
    assert np.allclose(w, reference.coef_[0], atol=1e-6) and b == pytest.approx(reference.intercept_[0], abs=1e-6)
    # the AUC it is judged by is scikit-learn's too, ties included
    q = np.round(x @ w + b, 1)
    assert rank_auc(y, q) == pytest.approx(skm.roc_auc_score(y, q), abs=1e-12)


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


def test_reweighted_loss_model_is_plain_on_stable_days_and_widens_under_shift():
    rng = np.random.default_rng(31)
    x, prediction, y = simulate_regression(rng, 20_000)
    plain, reweighted = LossEstimator.fit(x, prediction, y), LossEstimator.fit(x, prediction, y, reweight=True)
    x, prediction, y = simulate_regression(rng, 5000)
    assert reweighted.estimate(x, prediction) == [
        e.__class__(**{**e.__dict__, "method": reweighted.method, "shift_auc": e2.shift_auc})
        for e, e2 in zip(plain.estimate(x, prediction), reweighted.estimate(x, prediction), strict=True)]
    x, prediction, y = simulate_regression(rng, 5000, shifted=True)
    p, r = ({e.metric: e for e in est.estimate(x, prediction)} for est in (plain, reweighted))
    mae = skm.mean_absolute_error(y, prediction)
    assert r["mae"].reweighted and r["mae"].upper - r["mae"].lower > p["mae"].upper - p["mae"].lower
    assert r["mae"].estimate == pytest.approx(mae, rel=0.08)


def test_large_days_are_estimated_by_difference_without_bias(monkeypatch):
    """Above EXACT_ROWS the loss models run on a sample and the additive surrogate on every row: across sample
    seeds the estimate scatters around the every-row estimate by no more than the band's added spread, the
    added spread is small beside the band, and the band still covers the realized value."""
    import monitor_assets.stats.estimation as estimation

    rng = np.random.default_rng(41)
    estimator = LossEstimator.fit(*simulate_regression(rng, 20_000), reweight=True)
    for shifted in (False, True):
        x, prediction, y = simulate_regression(rng, 50_000, shifted)
        realized = {"mae": skm.mean_absolute_error(y, prediction),
                    "rmse": math.sqrt(skm.mean_squared_error(y, prediction))}
        z = {"mae": [], "rmse": []}
        for seed in range(5):  # the same seed on both sides: the same density ratio, only the sample differs
            with monkeypatch.context() as m:
                m.setattr(estimation, "EXACT_ROWS", 10 ** 9)
                exact = {e.metric: e for e in estimator.estimate(x, prediction, seed=seed)}
            for e in estimator.estimate(x, prediction, seed=seed):
                added = e.standard_error ** 2 - exact[e.metric].standard_error ** 2
                assert 0 < added < 0.5 * exact[e.metric].standard_error ** 2  # the band widens by < 23%
                z[e.metric].append((e.estimate - exact[e.metric].estimate) / math.sqrt(added))
                assert e.lower <= realized[e.metric] <= e.upper or shifted
        for metric, values in z.items():
            # the sample's own error is what the added variance says: mean near 0, spread at most about 1
            assert abs(np.mean(values)) < 1.5 and np.std(values) < 1.8, (shifted, metric, values)
        # the surrogate's mean over every row, from column means and bin counts, is the mean of its predictions
        design = np.column_stack([x, prediction])  # the surrogate reads the features and the prediction
        means, at = estimator.surrogate.mean_and_rows(design, np.arange(0, len(x), 7))
        every = estimator.surrogate.predict(design)
        for loss in means:
            assert means[loss] == pytest.approx(float(np.mean(every[loss])), rel=1e-9)
            assert np.allclose(at[loss], every[loss][::7])


def test_surrogate_mean_over_a_day_equals_the_mean_of_its_predictions():
    """The day's mean of the additive surrogate comes from column means and bin counts (a sort per numeric
    column); with missing values, a category the reference never had and values beyond its bins, it is the
    mean of the surrogate's row-by-row predictions."""
    rng = np.random.default_rng(43)
    x = np.column_stack([rng.normal(0, 1, 5000), rng.choice([0.0, 1.0, 2.0], 5000), rng.exponential(1, 5000)])
    targets = {"abs": np.abs(x[:, 0]) + x[:, 1], "sq": x[:, 2] ** 2}
    surrogate = AdditiveSurrogate.fit(x, [False, True, False], targets)
    day = np.column_stack([rng.normal(0.5, 2, 3000), rng.choice([0.0, 2.0, 3.0, np.nan], 3000),
                           np.where(rng.random(3000) < 0.1, np.nan, rng.exponential(2, 3000))])
    means, at = surrogate.mean_and_rows(day, np.array([0, 5, 2999]))
    every = {loss: surrogate.means[loss] + surrogate.columns.transform(day[:, [0, 2]]) @ surrogate.quadratic[loss]
             + sum(t[b] for t, b in zip(surrogate.tables[loss], surrogate._bins(day), strict=True))
             for loss in targets}
    for loss in targets:
        assert means[loss] == pytest.approx(float(np.mean(every[loss])), rel=1e-10)
        assert np.allclose(at[loss], every[loss][[0, 5, 2999]])


# -- multiclass CBPE ---------------------------------------------------------------------------------------------

def test_multiclass_confusion_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    predicted = multiclass_predicted(probs)
    assert list(predicted) == [0, 1, 2, 0]
    assert list(multiclass_predicted(probs, np.array([np.nan, 2, -1, 1]))) == [0, 2, 2, 1]  # logged where given
    m = expected_multiclass_confusion(probs, predicted)
    # rows: true class; columns: predicted. Column 0 holds rows 1 and 4: (0.7 + 0.5, 0.2 + 0.4, 0.1 + 0.1)
    assert m == pytest.approx(np.array([[1.2, 0.1, 0.2], [0.6, 0.6, 0.2], [0.2, 0.3, 0.6]]))
    got = multiclass_confusion_metrics(m)
    assert got["accuracy"] == pytest.approx((1.2 + 0.6 + 0.6) / 4)
    assert got["precision_0"] == pytest.approx(1.2 / 2.0) and got["recall_0"] == pytest.approx(1.2 / 1.5)
    assert got["precision_1"] == pytest.approx(0.6 / 1.0) and got["recall_1"] == pytest.approx(0.6 / 1.4)
    assert got["precision_2"] == pytest.approx(0.6 / 1.0) and got["recall_2"] == pytest.approx(0.6 / 1.1)
    f1 = [2 * 1.2 / (1.5 + 2.0), 2 * 0.6 / (1.4 + 1.0), 2 * 0.6 / (1.1 + 1.0)]
    assert got["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert got["f1_weighted"] == pytest.approx((1.5 * f1[0] + 1.4 * f1[1] + 1.1 * f1[2]) / 4)


def test_multiclass_realized_metrics_match_scikit_learn():
    rng = np.random.default_rng(12)
    scores = rng.dirichlet([1.0, 2.0, 3.0, 1.5], 3000)
    y = np.array([rng.choice(4, p=p) for p in scores])
    predicted = multiclass_predicted(scores)
    got = realized_multiclass_metrics(y, predicted, scores)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(y, predicted, average="weighted"))
    precision = skm.precision_score(y, predicted, average=None)
    recall = skm.recall_score(y, predicted, average=None)
    for c in range(4):
        assert got[f"precision_{c}"] == pytest.approx(precision[c]) and got[f"recall_{c}"] == pytest.approx(recall[c])
        assert got[f"roc_auc_{c}"] == pytest.approx(skm.roc_auc_score(y == c, scores[:, c]))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, scores, multi_class="ovr", average="macro"))


def test_multiclass_expectations_and_spread_match_simulated_labels():
    """Labels drawn from known calibrated probabilities: the mean of scikit-learn's realized metrics over the
    draws is the expected value; their spread is the sampling sd."""
    rng = np.random.default_rng(13)
    probs = rng.dirichlet([2.0, 1.0, 1.0], 2000)
    scores = probs + rng.normal(0, 0.02, probs.shape)  # the AUC ranks by raw scores, not by the probabilities
    predicted = multiclass_predicted(scores)
    expected = multiclass_point_estimates(probs, predicted, scores)
    sd = multiclass_sampling_sd(probs, predicted, scores, seed=1)
    cumulative = np.cumsum(probs, axis=1)
    draws = {"accuracy": [], "f1_macro": [], "f1_weighted": [], "roc_auc": [], "recall_1": []}
    for _ in range(400):
        y = (rng.random(2000)[:, None] > cumulative).sum(axis=1)
        draws["accuracy"].append(skm.accuracy_score(y, predicted))
        draws["f1_macro"].append(skm.f1_score(y, predicted, average="macro"))
        draws["f1_weighted"].append(skm.f1_score(y, predicted, average="weighted"))
        draws["roc_auc"].append(skm.roc_auc_score(y, scores / scores.sum(axis=1, keepdims=True), multi_class="ovr"))
        draws["recall_1"].append(skm.recall_score(y, predicted, average=None)[1])
    for m, values in draws.items():
        assert expected[m] == pytest.approx(np.mean(values), abs=0.003), m
        assert sd[m] == pytest.approx(np.std(values), rel=0.2), m


def test_multiclass_calibration_renormalises_and_estimates_a_day():
    rng = np.random.default_rng(14)

    def day(n):
        probs = rng.dirichlet([1.0, 1.0, 1.0], n)
        raw = probs ** 2  # overconfident scores; each class's calibration undoes its part
        return raw / raw.sum(axis=1, keepdims=True), (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)

    scores, y = day(20_000)
    calibration = fit_multiclass_calibration(scores, y)
    calibrated = calibration(scores)
    assert calibrated.sum(axis=1) == pytest.approx(np.ones(len(y)))
    onehot = np.eye(3)[y]
    assert np.mean((calibrated - onehot) ** 2) < np.mean((scores - onehot) ** 2)
    scores, y = day(5000)
    got = {e.metric: e for e in estimate_multiclass(calibration, scores, seed=2)}
    real = realized_multiclass_metrics(y, multiclass_predicted(scores), scores)
    for m in ("accuracy", "f1_macro", "f1_weighted", "roc_auc"):
        assert got[m].estimate == pytest.approx(real[m], abs=0.015), m
        assert got[m].lower <= real[m] <= got[m].upper, m


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
