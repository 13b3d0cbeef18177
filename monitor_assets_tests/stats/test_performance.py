import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets.stats.performance import compute_performance


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
    df.loc[df.index[:5], "label"] = 0.0  # MAPE's guarded denominator
    con.register("df", df)
    out = compute_performance(con, "SELECT * FROM df", ["g"]).set_index("g")
    for g, row in out.iterrows():
        lab = df[(df.g == g) & df.is_ok & df.label.notna()]
        assert row.mae == pytest.approx(skm.mean_absolute_error(lab.label, lab.score))
        assert row.rmse == pytest.approx(np.sqrt(skm.mean_squared_error(lab.label, lab.score)))
        assert row.mape == pytest.approx(skm.mean_absolute_percentage_error(lab.label, lab.score))
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
