import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets.stats.metrics_spec import MAIN_METRICS, METRIC_DIRECTION
from monitor_assets.stats.performance import (
    compute_performance,
    degradation,
    predicted_class_sql,
)


@pytest.fixture
def con():
    return duckdb.connect()


def frame(rng, n, task):
    df = pd.DataFrame({
        "g": rng.choice(["a", "b", "c"], n),
        "is_ok": rng.random(n) > 0.05,
        "latency_ms": rng.gamma(2.0, 30.0, n),
        "threshold": 0.4,
        "task": task,
    })
    if task == "binary_classification":
        df["score"] = np.round(rng.random(n), 2)  # rounded: ties exercise average ranks
        df["label"] = (rng.random(n) < df.score * 0.8).astype(float)
    else:
        df["label"] = rng.gamma(3.0, 5.0, n).round()
        df["score"] = df.label + rng.normal(0, 3, n)
    df.loc[rng.random(n) < 0.25, "label"] = np.nan  # not yet known
    return df


def test_classification_metrics_equal_scikit_learn(con):
    df = frame(np.random.default_rng(1), 3000, "binary_classification")
    con.register("df", df)
    out = compute_performance(con, "SELECT * FROM df", ["g"]).set_index("g")
    for g, row in out.iterrows():
        part = df[df.g == g]
        lab = part[part.is_ok & part.label.notna()]
        y, p = lab.label.astype(int), lab.score
        yhat = (p >= 0.4).astype(int)
        assert row.n_labelled == len(lab)
        assert row.label_coverage == pytest.approx(len(lab) / part.is_ok.sum())
        assert row.accuracy == pytest.approx(skm.accuracy_score(y, yhat))
        assert row.precision == pytest.approx(skm.precision_score(y, yhat))
        assert row.recall == pytest.approx(skm.recall_score(y, yhat))
        assert row.f1 == pytest.approx(skm.f1_score(y, yhat))
        assert row.roc_auc == pytest.approx(skm.roc_auc_score(y, p))
        assert row.log_loss == pytest.approx(skm.log_loss(y, p))
        assert row.brier_score == pytest.approx(skm.brier_score_loss(y, p))
        assert row.error_rate == pytest.approx(1 - part.is_ok.mean())
        for q in (50, 95, 99):
            assert row[f"latency_p{q}_ms"] == pytest.approx(np.percentile(part.latency_ms, q))
        assert np.isnan(row.mae)  # regression metrics do not apply


def test_regression_metrics_equal_scikit_learn(con):
    df = frame(np.random.default_rng(2), 2000, "regression")
    df.loc[df.index[:40], ["label", "is_ok"]] = [0.0, True]  # zero labels: MAPE skips them and says so
    con.register("df", df)
    out = compute_performance(con, "SELECT * FROM df", ["g"]).set_index("g")
    assert out.mape_zero_labels.sum() == 40 and out.n_decision_missing.isna().all()
    for g, row in out.iterrows():
        lab = df[(df.g == g) & df.is_ok & df.label.notna()]
        assert row.mae == pytest.approx(skm.mean_absolute_error(lab.label, lab.score))
        assert row.rmse == pytest.approx(np.sqrt(skm.mean_squared_error(lab.label, lab.score)))
        nonzero = lab[lab.label != 0]
        assert row.mape == pytest.approx(skm.mean_absolute_percentage_error(nonzero.label, nonzero.score))
        assert row.mape_zero_labels == (lab.label == 0).sum()
        assert skm.mean_absolute_percentage_error(lab.label, lab.score) > 1e12  # what the guarded form gives
        assert row.r2 == pytest.approx(skm.r2_score(lab.label, lab.score))
        assert row.mean_error == pytest.approx((lab.score - lab.label).mean())
        assert np.isnan(row.roc_auc)


def test_no_labels_yet_means_unknown_not_zero(con):
    df = pd.DataFrame({"g": "a", "is_ok": True, "latency_ms": [1.0, 2.0], "threshold": 0.5,
                       "task": "binary_classification", "score": [0.2, 0.9], "label": [np.nan, np.nan]})
    con.register("df", df)
    row = compute_performance(con, "SELECT * FROM df", ["g"]).iloc[0]
    assert row.n_labelled == 0 and row.label_coverage == 0
    for metric in ("accuracy", "precision", "roc_auc", "log_loss", "brier_score"):
        assert pd.isna(row[metric]), metric
    assert row.volume == 2


def test_a_logged_decision_replaces_the_threshold_for_class_metrics(con):
    """The decision is logged in several spellings; where it is missing or unreadable the class is
    score >= threshold, and those rows are counted."""
    rng = np.random.default_rng(3)
    n = 1500
    df = frame(rng, n, "binary_classification")
    rule = (df.score >= 0.4).astype(int)
    flip = rng.random(n) < 0.03  # the serving system disagrees with the threshold on 3% of rows
    logged = np.where(flip, 1 - rule, rule)
    spelled = np.array([["False", "True"], ["0", "1.0"], ["false", "TRUE"]])[rng.integers(0, 3, n), logged]
    df["decision"] = pd.Series(spelled, dtype=object)
    unknown = rng.random(n) < 0.02
    df.loc[unknown, "decision"] = rng.choice([None, "maybe"], unknown.sum())
    con.register("df", df)
    out = compute_performance(con, "SELECT * FROM df", ["g"], decision='"decision"').set_index("g")
    y_class = np.where(unknown, rule, logged)
    for g, row in out.iterrows():
        part = df.g == g
        lab = part & df.is_ok & df.label.notna()
        y, yhat = df.label[lab].astype(int), y_class[lab]
        assert row.accuracy == pytest.approx(skm.accuracy_score(y, yhat))
        assert row.precision == pytest.approx(skm.precision_score(y, yhat))
        assert row.recall == pytest.approx(skm.recall_score(y, yhat))
        assert row.f1 == pytest.approx(skm.f1_score(y, yhat))
        assert row.roc_auc == pytest.approx(skm.roc_auc_score(y, df.score[lab]))  # scores, not the decision
        assert row.predicted_positive_rate == pytest.approx(y_class[part & df.is_ok].mean())
        assert row.n_decision_missing == (part & df.is_ok & unknown).sum()
    assert predicted_class_sql() == "(score >= threshold)::INT"


def test_every_main_metric_has_a_direction_that_matches_scikit_learn(con):
    """For each selectable metric, a worse model (noisier scores) moves it in the worse direction."""
    assert set(METRIC_DIRECTION) == {m for ms in MAIN_METRICS.values() for m in ms}
    rng = np.random.default_rng(9)
    n = 2000
    y = (rng.random(n) < 0.4).astype(float)
    good = np.clip(y * 0.7 + 0.15 + rng.normal(0, 0.1, n), 0.01, 0.99)
    bad = np.clip(y * 0.3 + 0.35 + rng.normal(0, 0.25, n), 0.01, 0.99)
    value = rng.gamma(3.0, 5.0, n) + 1
    rows = []
    for name, score, reg in (("good", good, value + rng.normal(0, 1, n)), ("bad", bad, value + rng.normal(0, 5, n))):
        rows.append(pd.DataFrame({"g": name, "is_ok": True, "latency_ms": 1.0, "threshold": 0.5,
                                  "task": "binary_classification", "score": score, "label": y}))
        rows.append(pd.DataFrame({"g": name + "_reg", "is_ok": True, "latency_ms": 1.0, "threshold": 0.5,
                                  "task": "regression", "score": reg, "label": value}))
    df = pd.concat(rows, ignore_index=True)
    con.register("df", df)
    out = compute_performance(con, "SELECT * FROM df", ["g"]).set_index("g")
    for task, metrics in MAIN_METRICS.items():
        if task == "multiclass_classification":  # not from the binary SQL: test_multiclass_task.py checks them
            continue
        suffix = "_reg" if task == "regression" else ""
        for m in metrics:
            assert degradation(m, out.loc["good" + suffix, m], out.loc["bad" + suffix, m]) > 0, m
    assert out.loc["good", "log_loss"] == pytest.approx(skm.log_loss(y, good))
    assert out.loc["bad_reg", "r2"] == pytest.approx(skm.r2_score(value, df[df.g == "bad_reg"].score))
    assert degradation("accuracy", 0.947, 0.916) == pytest.approx(0.031) and degradation("mae", 2.0, None) is None
