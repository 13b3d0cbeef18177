"""Multivariate drift: a joint shift every marginal hides, false alarms on stable days, the calibration, storage."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from monitor_assets.stats import drift as D
from monitor_assets.stats import multivariate as M
from monitor_assets.stats.density_ratio import one_thread

NUMERIC = [f"x{i}" for i in range(10)]
FEATURES = [D.FeatureSpec(n, "numeric") for n in NUMERIC] + [D.FeatureSpec("shop", "categorical"),
                                                             D.FeatureSpec("device", "categorical")]


def rows(rng: np.random.Generator, n: int, rho: float = 0.8) -> pd.DataFrame:
    """12 features: x0 and x1 standard normal with correlation `rho`, 8 more independent normals, 2 categories."""
    x = rng.normal(size=(n, 10))
    x[:, 1] = rho * x[:, 0] + math.sqrt(1 - rho * rho) * rng.normal(size=n)
    df = pd.DataFrame(x, columns=NUMERIC)
    df["shop"] = rng.choice(list("abcde"), n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    df["device"] = rng.choice(["ios", "android"], n)
    return df


def univariate(reference: pd.DataFrame, current: pd.DataFrame) -> list[D.DriftResult]:
    """drift.py's per-feature tests at their default thresholds, counted with its own counter."""
    bounds, numeric, categories = {}, {}, {}
    for f in FEATURES:
        if f.kind == "numeric":
            v = reference[f.name].to_numpy(float)
            bounds[f.name] = D.grid_bounds(list(np.quantile(v, [0.001, 0.999])), v.min(), v.max())
            numeric[f.name] = _count(v, bounds[f.name])
        else:
            categories[f.name] = reference[f.name].value_counts().to_dict()
    profiles = D.build_profiles(FEATURES, bounds, numeric, categories, {f.name: None for f in FEATURES})
    counted = {f.name: _count(current[f.name].to_numpy(float), bounds[f.name]) if f.kind == "numeric"
               else current[f.name].value_counts().to_dict() for f in FEATURES}
    return D.drift_from_counts(FEATURES, profiles, counted)


def _count(v: np.ndarray, bounds: tuple[float, float, int]) -> D.NumericCounts:
    counter = D.NumericCounter(*bounds)
    counter.add(v)
    return counter.result()


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(11)
    reference = rows(rng, 30_000)  # 15 chunks of a 2,000-row day
    return reference, M.fit_reference(reference, FEATURES), rng


def test_a_correlation_flip_is_found_by_both_methods_on_its_first_day_while_univariate_drift_stays_quiet(fitted):
    reference, ref, rng = fitted
    day = rows(rng, 2000, rho=-0.8)  # every marginal unchanged
    assert not any(r.drifted or r.missing_drift or r.unseen_drift for r in univariate(reference, day))
    auc, pca = M.multivariate_drift(ref, day)
    assert auc.method == M.DOMAIN_CLASSIFIER and auc.drifted and auc.statistic > 0.75
    assert pca.method == M.RECONSTRUCTION and pca.drifted
    # both lean on the two features whose joint distribution changed, far more than on any other
    for result in (auc, pca):
        assert {name for name, _ in result.top_features[:2]} == {"x0", "x1"}
        assert result.top_features[1][1] > 10 * max(result.top_features[2][1], 1e-3)


def test_a_stable_model_raises_at_most_one_false_alarm_in_90_days():
    # Smaller than the defaults to keep the test short (2 x 90 classifiers): 1,000-row days against a 1,000-row
    # reference sample, thresholds calibrated on 1,000-row chunks; the benchmark runs the defaults.
    # 12 chunks and 90 days: 204 classifier fits, about 10 s on an idle 2-core machine.
    rng = np.random.default_rng(5)
    ref = M.fit_reference(rows(rng, 12_000), FEATURES, chunk_rows=1000, max_rows=1000)
    assert ref.thresholds[M.DOMAIN_CLASSIFIER].n_chunks == 12
    alarms = [any(r.drifted for r in M.multivariate_drift(ref, rows(rng, 1000), seed=day)) for day in range(90)]
    assert sum(alarms) <= 1


def test_thresholds_are_the_upper_prediction_bound_of_the_reference_chunks(fitted):
    _, ref, _ = fitted
    for method, t in ref.thresholds.items():
        values = np.array(t.values)
        m = len(values)
        assert m == t.n_chunks == 15 and t.chunk_rows == 2000
        bound = values.mean() + stats.t.isf(M.ALPHA, m - 1) * math.sqrt(1 + 1 / m) * values.std(ddof=1)
        assert ref.threshold(method, 2000) == pytest.approx(max(bound, 0.5 + 3 * math.sqrt(7001 / 12e7))
                                                            if method == M.DOMAIN_CLASSIFIER else bound)
        # a smaller day gets a wider threshold, a larger one keeps the chunks'
        assert ref.threshold(method, 500) > ref.threshold(method, 2000) == ref.threshold(method, 50_000)
    aucs = np.array(ref.thresholds[M.DOMAIN_CLASSIFIER].values)
    assert abs(aucs.mean() - 0.5) < 0.01  # chunks of the same distribution are not told apart


def test_reconstruction_error_equals_scikit_learns_standard_scaler_and_pca():
    rng = np.random.default_rng(2)
    x = rows(rng, 4000)[NUMERIC].to_numpy()
    y = rows(rng, 500, rho=-0.8)[NUMERIC].to_numpy()
    ours = M.Pca.fit(x, 0.9)
    scaler = StandardScaler().fit(x)
    pca = PCA(n_components=0.9, svd_solver="full").fit(scaler.transform(x))
    assert len(ours.components) == pca.n_components_
    z = scaler.transform(y)
    expected = np.mean(np.linalg.norm(z - pca.inverse_transform(pca.transform(z)), axis=1))
    assert ours.error(y) == pytest.approx(expected, rel=1e-9)


def test_categories_are_coded_against_the_reference_with_other_unseen_and_missing_apart():
    reference = pd.DataFrame({"c": ["a"] * 5 + ["b"] * 3 + ["z"], "x": np.arange(9.0)})
    features = [D.FeatureSpec("c", "categorical"), D.FeatureSpec("x", "numeric")]
    enc = M.Encoder.fit(reference, features, max_codes=4)  # room for the two commonest, then other, unseen
    known = {"c": {"a", "b", "z"}}
    day = pd.DataFrame({"c": ["b", "a", "z", "new", None, "", np.nan], "x": [1, np.inf, np.nan, 2, 3, 4, 5]})
    out = enc.transform(day, known)
    np.testing.assert_array_equal(out[:, 0], [1, 0, 2, 3, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(out[:, 1], [1, np.nan, np.nan, 2, 3, 4, 5])


def test_a_new_category_tied_to_a_numeric_feature_is_found_and_named():
    rng = np.random.default_rng(4)
    reference = rows(rng, 12_000)
    ref = M.fit_reference(reference, FEATURES)
    day = rows(rng, 2000)
    day.loc[day.x3 > 1, "shop"] = "pop-up"  # a shop the reference never had, for large x3
    auc = M.domain_classifier_drift(ref, day)
    assert auc.drifted and auc.top_features[0][0] == "shop"
    quiet = M.domain_classifier_drift(ref, rows(rng, 2000), explain=True)  # asked for: named even when quiet
    assert not quiet.drifted and len(quiet.top_features) == M.TOP_FEATURES


def test_the_fitted_reference_round_trips_through_text_and_refuses_other_objects(fitted):
    _, ref, rng = fitted
    day = rows(rng, 1500, rho=0.5)
    again = M.MultivariateReference.from_text(ref.to_text())
    assert [(r.statistic, r.threshold, r.drifted) for r in M.multivariate_drift(again, day)] == \
           [(r.statistic, r.threshold, r.drifted) for r in M.multivariate_drift(ref, day)]
    import base64
    import pickle
    with pytest.raises(ValueError, match="not a fitted multivariate reference"):
        M.MultivariateReference.from_text(base64.b64encode(pickle.dumps({"a": 1})).decode())


def test_a_reference_too_small_to_cut_into_chunks_is_refused():
    with pytest.raises(ValueError, match="too small to calibrate"):
        M.fit_reference(rows(np.random.default_rng(0), 60), FEATURES)


def test_a_day_too_small_to_train_on_gets_no_verdict(fitted):
    _, ref, rng = fitted
    for result in M.multivariate_drift(ref, rows(rng, 5, rho=-0.8)):
        assert math.isnan(result.statistic) and not result.drifted and result.n_current == 5


def test_permutation_importance_is_the_auc_lost_when_each_column_alone_is_shuffled(monkeypatch):
    """Recomputed by hand with scikit-learn, one column and one prediction at a time: the same folds, fits and
    shuffles as `domain_auc` draws them (it predicts the shuffled copies in blocks; here 2 columns a call)."""
    rng = np.random.default_rng(5)
    ref, cur = rng.normal(size=(600, 5)), rng.normal(size=(300, 5))
    cur[:, 2] += 1.0
    monkeypatch.setattr(M, "PERMUTATION_ROWS", 700)  # blocks of 2, 2 and 1 columns of ~450 held-out rows
    auc, importance = M.domain_auc(ref, cur, np.zeros(5, bool), seed=3, explain_above=-math.inf)

    x, y = np.vstack([ref, cur]), np.r_[np.zeros(600), np.ones(300)]
    draws = np.random.default_rng(3)
    fold = np.r_[draws.permutation(600) % M.CV_FOLDS, draws.permutation(300) % M.CV_FOLDS]
    q, q_shuffled = np.empty(len(y)), np.empty((5, len(y)))
    with one_thread():
        models = [M._classifier().fit(x[fold != k], y[fold != k]) for k in range(M.CV_FOLDS)]
        for k, model in enumerate(models):
            q[fold == k] = model.predict_proba(x[fold == k])[:, 1]
            held = x[fold == k]
            for j in range(5):
                shuffled = held.copy()
                shuffled[:, j] = draws.permutation(held[:, j])
                q_shuffled[j, fold == k] = model.predict_proba(shuffled)[:, 1]
    assert auc == pytest.approx(roc_auc_score(y, q), abs=1e-12)
    assert importance == pytest.approx([auc - roc_auc_score(y, q_shuffled[j]) for j in range(5)], abs=1e-12)
    assert int(np.argmax(importance)) == 2 and importance[2] > 0.1
