"""`stats.multiclass.standard_error` against the spread of scikit-learn's own figures over repeated samples, and
`class_rows` (the fewest rows of a class a macro figure rests on) on hand-counted data."""

import numpy as np
import pytest
from sklearn import metrics as skm

from monitor_assets.stats import multiclass as MC
from monitor_assets.stats.performance import class_rows

K, N, DRAWS = 4, 600, 200

SCIKIT_LEARN = {
    "accuracy": lambda y, d, p: skm.accuracy_score(y, d),
    "f1_macro": lambda y, d, p: skm.f1_score(y, d, average="macro"),
    "f1_weighted": lambda y, d, p: skm.f1_score(y, d, average="weighted"),
    "precision": lambda y, d, p: skm.precision_score(y, d, average="macro", zero_division=0),
    "recall": lambda y, d, p: skm.recall_score(y, d, average="macro", zero_division=0),
    "roc_auc": lambda y, d, p: skm.roc_auc_score(y, p, multi_class="ovr"),
}


def _draw(rng):
    """N calibrated rows: probabilities from a softmax, the label drawn from them, the prediction their argmax."""
    p = np.exp(rng.normal(0, 1.5, (N, K)))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((N, 1))).argmax(axis=1)
    return y, p.argmax(axis=1), p


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    values, errors = {k: [] for k in SCIKIT_LEARN}, {k: [] for k in SCIKIT_LEARN}
    for _ in range(DRAWS):
        y, d, p = _draw(rng)
        m = MC.multiclass_metrics(y, d, K, p)
        for k, figure in SCIKIT_LEARN.items():
            values[k].append(figure(y, d, p))
            errors[k].append(MC.standard_error(m, k))
    return values, errors


@pytest.mark.parametrize("metric", list(SCIKIT_LEARN))
def test_standard_error_matches_the_spread_of_scikit_learns_figure(samples, metric):
    values, errors = samples
    # the Monte Carlo sd itself is known to about 1 / sqrt(2 DRAWS) = 5%
    assert np.mean(errors[metric]) == pytest.approx(np.std(values[metric]), rel=0.15)


def test_log_loss_has_no_standard_error():
    rng = np.random.default_rng(1)
    y, d, p = _draw(rng)
    assert np.isnan(MC.standard_error(MC.multiclass_metrics(y, d, K, p), "log_loss"))


def test_class_rows_count_the_scarcest_class():
    # labelled: 0 x5, 1 x3, 2 x2; predicted: 0 x6, 1 x4, 2 x0 (class 2 never predicted)
    y = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
    d = [0, 0, 0, 0, 1, 1, 1, 0, 0, 1]
    m = MC.multiclass_metrics(y, d, 3)
    assert MC.class_rows(m, "recall") == 2 and MC.class_rows(m, "precision") == 0
    assert MC.class_rows(m, "f1_macro") == 0 and MC.class_rows(m, "f1") == 0
    assert MC.class_rows(m, "accuracy") is None and MC.class_rows(m, "f1_weighted") is None
    p = np.full((10, 3), 1 / 3)
    # one-vs-rest AUC: class 2 has 2 positives and 8 negatives, the fewest of any class
    assert MC.class_rows(MC.multiclass_metrics(y, d, 3, p), "roc_auc") == 2
    # binary: 300 rows, 4 positives, 30 predicted positives
    assert class_rows("roc_auc", 300, 4 / 300, 30 / 300) == 4
    assert class_rows("recall", 300, 4 / 300, 30 / 300) == 4 and class_rows("precision", 300, 4 / 300, 30 / 300) == 30
    assert class_rows("f1", 300, 4 / 300, 30 / 300) == 4 and class_rows("accuracy", 300, 0.5, 0.5) is None
    assert class_rows("roc_auc", 300, 296 / 300) == 4  # negatives are a class too
