"""The loss models of one DLE fit share their binned rows, and the domain classifier encodes its category codes
itself: the trees and predictions must be the ones scikit-learn's own fit gives, and a stored fit must not carry
the rows."""

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from monitor_assets.stats import boosting
from monitor_assets.stats.boosting import CodedClassifier, LossBooster

PARAMS = {"max_iter": 8, "learning_rate": 0.6, "max_leaf_nodes": 15, "random_state": 3, "early_stopping": False}


def _rows(seed: int = 0, n: int = 4000):
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=n), rng.exponential(size=n), rng.integers(0, 4, n).astype(float)])
    x[rng.random(n) < 0.05, 1] = np.nan  # missing values have their own bin
    error = rng.normal(scale=0.5 + np.abs(x[:, 0]))
    return x, np.abs(error), error ** 2


def test_a_fit_on_handed_bins_equals_a_fit_that_bins_its_own_rows():
    x, abs_error, sq_error = _rows()
    cats = np.array([False, False, True])
    first = LossBooster(**PARAMS, categorical_features=cats).fit(x, abs_error)
    bins = first.take_bins()
    assert bins is not None and first.made_bins is None
    second = LossBooster(**PARAMS, categorical_features=cats)
    second.given_bins = bins
    second.fit(x, sq_error)
    assert second._bin_mapper is first._bin_mapper  # the hand-over happened (else this proves nothing)
    alone = HistGradientBoostingRegressor(**PARAMS, categorical_features=cats).fit(x, sq_error)
    new, _, _ = _rows(seed=1)
    np.testing.assert_array_equal(second.predict(new), alone.predict(new))
    np.testing.assert_array_equal(first.predict(new),
                                  HistGradientBoostingRegressor(**PARAMS, categorical_features=cats)
                                  .fit(x, abs_error).predict(new))


def test_bins_of_other_rows_are_not_taken():
    x, abs_error, sq_error = _rows()
    first = LossBooster(**PARAMS).fit(x, abs_error)
    other = x.copy()
    other[0, 0] += 1.0
    second = LossBooster(**PARAMS)
    second.given_bins = first.take_bins()
    second.fit(other, sq_error)
    assert second._bin_mapper is not first._bin_mapper
    new, _, _ = _rows(seed=2)
    np.testing.assert_array_equal(second.predict(new),
                                  HistGradientBoostingRegressor(**PARAMS).fit(other, sq_error).predict(new))


def test_a_stored_loss_estimator_carries_no_rows():
    from monitor_assets.stats.estimation import LossEstimator, from_text, to_text

    x, _, _ = _rows(n=30_000)
    rng = np.random.default_rng(5)
    predictions = 3 * x[:, 0]
    labels = predictions + rng.normal(scale=0.5 + np.abs(x[:, 0]))
    fitted = LossEstimator.fit(x[:, :2], predictions, labels)
    for models in fitted.models.values():
        for model in models:
            assert model.made_bins is None and model.given_bins is None
    stored = from_text(to_text(fitted))
    day = x[:6000, :2]
    assert stored.estimate(day, 3 * day[:, 0]) == fitted.estimate(day, 3 * day[:, 0])
    assert len(stored.to_bytes()) < x[:, :2].nbytes / 2  # the 30,000 rows are not inside


def _coded_rows(seed: int, n: int):
    """Numeric columns and category codes as `multivariate.Encoder` writes them: a few codes, many codes (up to
    250), missing codes, a column of one code and one of missing values only."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 5, n), rng.exponential(size=n),
                         rng.integers(0, 250, n), np.full(n, 3.0), np.full(n, np.nan)]).astype(float)
    x[rng.random(n) < 0.1, 1] = np.nan
    x[rng.random(n) < 0.02, 3] = np.nan
    y = (rng.random(n) < 0.3 + 0.1 * (x[:, 1] == 2) + 0.1 * (x[:, 0] > 1)).astype(float)
    return x, y, np.array([False, True, False, True, True, True])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_coded_classifier_predicts_what_scikit_learns_own_encoding_gives(seed):
    x, y, cats = _coded_rows(seed, 3000)
    probe, _, _ = _coded_rows(seed + 10, 1000)
    probe[:50, 1], probe[50:100, 3], probe[100:150, 4] = 7.0, 999.0, 0.0  # codes the fit never saw
    params = {"max_iter": 20, "max_leaf_nodes": 8, "learning_rate": 0.2, "early_stopping": False,
              "random_state": 0, "categorical_features": cats}
    ours = CodedClassifier(**params).fit(x, y)
    theirs = HistGradientBoostingClassifier(**params).fit(x, y)
    assert len(ours._codes) == 4 and theirs._preprocessor is not None  # ours encoded (else this proves nothing)
    assert np.array_equal(ours.predict_proba(probe), theirs.predict_proba(probe))
    assert ours.predict_proba(probe)[:, 1].std() > 0.01  # the trees split on something


def test_too_many_category_codes_fail_as_in_scikit_learn():
    x = np.arange(600, dtype=float).reshape(-1, 1)
    with pytest.raises(ValueError, match="cardinality <= 255"):
        CodedClassifier(categorical_features=np.array([True])).fit(x, np.arange(600) % 2)


def test_the_domain_classifier_is_the_coded_one_when_the_encodings_agree():
    assert boosting._CODED_OK in ([], [True])
    model = boosting.coded_classifier(max_iter=5)
    assert boosting._CODED_OK == [True] and type(model) is CodedClassifier
