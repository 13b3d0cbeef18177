"""Multiclass metrics against scikit-learn, with classes absent from a day and codes the model does not know."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from monitor_assets.stats.fairness import fairness_table
from monitor_assets.stats.multiclass import (
    EPS,
    MulticlassSums,
    confusion,
    multiclass_metrics,
    row_loss,
    selection_rates,
)


def sample(rng, n, k, classes=None):
    """Labels from `classes` (default all k), probabilities that lean towards the label, and the argmax
    prediction with some noise."""
    classes = np.arange(k) if classes is None else np.asarray(classes)
    y = rng.choice(classes, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    flip = rng.random(n) < 0.1
    pred[flip] = rng.integers(0, k, flip.sum())
    return y, pred, proba


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 7), (2, 20)])
def test_equals_sklearn_when_every_class_is_present(seed, k):
    rng = np.random.default_rng(seed)
    y, pred, proba = sample(rng, 3000, k)
    m = multiclass_metrics(y, pred, k, proba)
    assert m.accuracy == pytest.approx(accuracy_score(y, pred))
    assert m.macro_f1 == pytest.approx(f1_score(y, pred, average="macro"))
    assert m.weighted_f1 == pytest.approx(f1_score(y, pred, average="weighted"))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=np.arange(k))
    np.testing.assert_allclose(m.per_class.precision, precision)
    np.testing.assert_allclose(m.per_class.recall, recall)
    np.testing.assert_allclose(m.per_class.f1, f1)
    np.testing.assert_array_equal(m.per_class.support, support)
    assert m.log_loss == pytest.approx(log_loss(y, y_proba=proba, labels=np.arange(k)), rel=1e-12)
    assert m.roc_auc == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"), rel=1e-12)
    assert m.n_auc_classes == k
    assert row_loss(y, pred, k, proba).mean() == pytest.approx(m.log_loss)


def test_classes_absent_from_a_day():
    rng = np.random.default_rng(4)
    k = 5
    y, _, proba = sample(rng, 600, k, classes=[0, 1, 2])  # classes 3 and 4 have no labels today
    pred = rng.choice([0, 1, 3], 600)  # class 3 is predicted, never right; class 4 is nowhere
    m = multiclass_metrics(y, pred, k, proba)
    present = [0, 1, 2, 3]
    assert m.macro_f1 == pytest.approx(f1_score(y, pred, labels=present, average="macro"))
    assert m.weighted_f1 == pytest.approx(f1_score(y, pred, labels=present, average="weighted"))
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=np.arange(k), zero_division=np.nan)
    np.testing.assert_allclose(m.per_class.precision, precision)  # class 2 never predicted: NaN
    np.testing.assert_allclose(m.per_class.recall, recall)  # class 3 and 4 never labelled: NaN
    assert m.per_class.f1[3] == 0 and math.isnan(m.per_class.f1[4])
    per_class_auc = [roc_auc_score(y == c, proba[:, c]) for c in (0, 1, 2)]
    np.testing.assert_allclose(m.per_class.roc_auc[:3], per_class_auc, rtol=1e-12)
    assert m.per_class.roc_auc[3:].isna().all() and m.n_auc_classes == 3
    assert m.roc_auc == pytest.approx(np.mean(per_class_auc))
    assert m.log_loss == pytest.approx(log_loss(y, y_proba=proba, labels=np.arange(k)), rel=1e-12)


def test_unknown_codes_are_errors_and_left_out_of_log_loss():
    rng = np.random.default_rng(6)
    k = 4
    y, pred, proba = sample(rng, 1000, k)
    y[:50] = -1  # a class the model does not know
    y[50:60] = 9
    pred[:25] = -1  # both unknown: still an error
    pred[100:130] = -1  # unreadable predictions
    m = multiclass_metrics(y, pred, k, proba)
    assert (m.n_unknown_label, m.n_unknown_prediction) == (60, 55)
    # scikit-learn with distinct sentinels for unknown labels and predictions, scored on the known classes
    ys, ps = np.where((y >= 0) & (y < k), y, 100), np.where(pred >= 0, pred, 101)
    assert m.accuracy == pytest.approx(accuracy_score(ys, ps))
    labels = np.arange(k)
    assert m.macro_f1 == pytest.approx(f1_score(ys, ps, labels=labels, average="macro"))
    assert m.weighted_f1 == pytest.approx(f1_score(ys, ps, labels=labels, average="weighted"))
    precision, recall, _, _ = precision_recall_fscore_support(ys, ps, labels=labels)
    np.testing.assert_allclose(m.per_class.precision, precision)
    np.testing.assert_allclose(m.per_class.recall, recall)
    known = ys < 100
    assert m.log_loss == pytest.approx(log_loss(y[known], y_proba=proba[known], labels=labels), rel=1e-12)
    # an unknown label is a negative for every class
    aucs = [roc_auc_score(ys == c, proba[:, c]) for c in range(k)]
    assert m.roc_auc == pytest.approx(np.mean(aucs), rel=1e-12)
    assert m.scalars()["unknown_label_share"] == pytest.approx(60 / 1000)
    loss = row_loss(y, pred, k, proba)
    assert np.isnan(loss[:60]).all() and np.isfinite(loss[60:]).all()


def test_row_loss_by_hand():
    y = np.array([0, 1, 2, 2, -1])
    pred = np.array([0, 2, 2, -1, -1])
    np.testing.assert_array_equal(row_loss(y, pred, 3), [0, 1, 0, 1, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    got = row_loss(y, pred, 3, proba)
    np.testing.assert_allclose(got[:4], [-math.log(0.7), -math.log(0.3), -math.log(1 - EPS), -math.log(EPS)])
    assert math.isnan(got[4])


def test_without_probabilities():
    m = multiclass_metrics([0, 1, 2, 2], [0, 2, 2, 1], 3)
    assert m.accuracy == 0.5 and math.isnan(m.log_loss) and math.isnan(m.roc_auc) and m.n_auc_classes == 0
    assert m.macro_f1 == pytest.approx(f1_score([0, 1, 2, 2], [0, 2, 2, 1], average="macro"))


def test_sums_add_across_days():
    rng = np.random.default_rng(8)
    k = 6
    y, pred, proba = sample(rng, 4000, k)
    proba = np.round(proba, 2)  # values on a 0.01 grid: each value its own bin, so the binned AUC is exact
    proba[:, 0] = 1 - proba[:, 1:].sum(axis=1)
    proba = np.clip(proba, 0, 1)
    proba[:, 0] = np.round(proba[:, 0], 2)
    days = np.array_split(np.arange(len(y)), 3)
    total = MulticlassSums.of(y[days[0]], pred[days[0]], k, proba[days[0]])
    for d in days[1:]:
        total = total + MulticlassSums.of(y[d], pred[d], k, proba[d])
    exact = multiclass_metrics(y, pred, k, proba)
    got = total.metrics()
    np.testing.assert_array_equal(total.confusion, confusion(y, pred, k))
    for name in ("accuracy", "macro_f1", "weighted_f1", "log_loss", "roc_auc"):
        assert getattr(got, name) == pytest.approx(getattr(exact, name), rel=1e-12), name
    # On continuous probabilities the binned AUC stays within the share of pairs sharing a bin.
    y2, pred2, proba2 = sample(rng, 4000, k)
    sums = MulticlassSums.of(y2, pred2, k, proba2)
    gap = np.abs(sums.metrics().per_class.roc_auc - multiclass_metrics(y2, pred2, k, proba2).per_class.roc_auc)
    assert (gap <= sums.auc_tie_share() + 1e-12).all() and gap.max() < 1e-3
    # a day without probabilities adds its confusion, not its loss
    more = total + MulticlassSums.of(y[:10], pred[:10], k)
    assert more.loss_n == total.loss_n and more.confusion.sum() == total.confusion.sum() + 10
    with pytest.raises(ValueError, match="numbers of classes"):
        total + MulticlassSums.of([0], [0], 3)


def test_selection_rates_by_group_feed_fairness_table():
    pred = np.array([0, 0, 1, 2, 0, 1, 1, 1, -1, 2])
    y = np.array([0, 1, 1, 2, 0, 1, 0, 1, 1, 2])
    group = np.array(["a"] * 4 + ["b"] * 6)
    out = selection_rates(pred, 3, group, y_true=y)
    a0 = out[(out.grp == "a") & (out["class"] == 0)].iloc[0]
    assert (a0.n, a0.selected, a0.selection_rate) == (4, 2, 0.5)
    assert (a0.tp, a0.fp, a0.fn, a0.tn) == (1, 1, 0, 2)
    b1 = out[(out.grp == "b") & (out["class"] == 1)].iloc[0]
    assert (b1.selected, b1.tp, b1.fp, b1.fn, b1.tn) == (3, 2, 1, 1, 2)  # row 8: unknown prediction, a miss
    np.testing.assert_allclose(out.groupby("grp").selection_rate.sum(), [1.0, 5 / 6])
    no_groups = selection_rates(pred, 3)
    np.testing.assert_allclose(no_groups.selection_rate, [3 / 10, 4 / 10, 2 / 10])
    counts = out[out["class"] == 1].assign(attribute="segment", abs_error=0.0)
    table = fairness_table(counts, classifier=True, min_group_size=1)
    assert table.demographic_parity_difference.iloc[0] == pytest.approx(3 / 6 - 1 / 4)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="integer class codes"):
        multiclass_metrics([0.5, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="integer class codes"):
        multiclass_metrics(np.array(["a", "b"]), [0, 1], 2)
    with pytest.raises(ValueError, match="shape"):
        multiclass_metrics([0, 1], [0, 1], 3, np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="at least 2"):
        multiclass_metrics([0], [0], 1)
    with pytest.raises(ValueError, match="differ in length"):
        multiclass_metrics([0, 1], [0], 2)


def test_frame_types():
    m = multiclass_metrics([0, 1], [0, 1], 2, [[0.9, 0.1], [0.2, 0.8]])
    assert isinstance(m.per_class, pd.DataFrame) and m.per_class.support.tolist() == [1, 1]
    assert m.roc_auc == 1.0 and m.accuracy == 1.0
