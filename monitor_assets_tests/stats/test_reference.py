"""Reference validation: unusable labels and scores are counted and left out, small references refused."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets.analysis import queries as Q
from monitor_assets.analysis.queries import validate_reference
from monitor_assets.stats import drift as D
from monitor_assets.stats.performance import compute_performance
from monitor_assets.stats.reference import ReferenceTooSmall


@pytest.fixture
def messy(tmp_path):
    """A real-world-shaped reference: NaN and NULL labels, NaN and text scores, a label of 2."""
    rng = np.random.default_rng(12)
    n = 400
    score = np.round(rng.random(n), 3)
    df = pd.DataFrame({"age": rng.normal(40, 10, n), "plan": rng.choice(["a", "b"], n),
                       "score": score.astype(object), "label": (rng.random(n) < score).astype(float)})
    df.loc[:4, "label"] = np.nan  # 5 NaN labels (a Parquet double column)
    df.loc[5:7, "label"] = None  # NULL too: pandas stores NaN
    df.loc[8, "label"] = 2.0
    df.loc[9:13, "score"] = np.nan
    df.loc[14, "score"] = "n/a"
    df.loc[0, "score"] = np.nan  # both bad: one row
    df["score"] = df.score.astype(str).replace("nan", None)
    path = tmp_path / "reference.parquet"
    df.to_parquet(path)
    return df, f"SELECT * FROM read_parquet('{path}')"


def test_unusable_rows_are_counted_and_left_out(messy):
    df, relation = messy
    con = duckdb.connect()
    check = validate_reference(con, relation, "label", "score", classifier=True)
    assert (check.n_rows, check.n_label_unusable, check.n_score_unusable, check.n_usable) == (400, 9, 7, 385)
    assert check.n_left_out == 15
    assert check.warning == ("15 of 400 reference rows left out: 9 with a label that is missing, NaN or not 0 or 1, "
                             "7 with a score that is missing, NaN or not a finite number")
    kept = con.execute(f"SELECT count(*) FROM ({relation}) WHERE {check.where}").fetchall()[0][0]
    assert kept == 385
    regression = validate_reference(con, relation, "label", "score")
    assert regression.n_label_unusable == 8  # a label of 2 is fine for a regressor


def test_nan_labels_no_longer_crash_profiling_and_the_baseline_is_right(messy):
    df, relation = messy
    con = duckdb.connect()
    # the caller's reference relation casts the label to a class
    caller = ("SELECT age, plan, CAST(score AS DOUBLE) AS prediction, "
              "CAST(CAST(label AS DOUBLE) AS BIGINT)::VARCHAR AS label, CAST(label AS DOUBLE) AS label_value FROM ({})")
    specs = [D.FeatureSpec("age", "numeric"), D.FeatureSpec("plan", "categorical"),
             D.FeatureSpec("prediction", "numeric"), D.FeatureSpec("label", "categorical")]
    with pytest.raises(duckdb.ConversionException):
        Q.profile_reference(con, caller.format(relation), specs)
    check = validate_reference(con, relation, "label", "score", classifier=True)
    clean = caller.format(f"SELECT * FROM ({relation}) WHERE {check.where}")
    profiles = Q.profile_reference(con, clean, specs)
    good = df[pd.to_numeric(df.score, errors="coerce").notna() & df.label.isin([0, 1])]
    assert profiles["label"].counts == {"0": (good.label == 0).sum(), "1": (good.label == 1).sum()}
    perf = compute_performance(con, f"""SELECT 'ref' AS g, true AS is_ok, NULL::DOUBLE AS latency_ms,
        prediction AS score, label_value AS label, 0.5 AS threshold, 'binary_classification' AS task
        FROM ({clean})""", ["g"]).iloc[0]
    assert len(good) == 385
    assert perf.roc_auc == pytest.approx(skm.roc_auc_score(good.label, good.score.astype(float)))


def test_a_too_small_reference_is_refused_with_a_clear_message():
    con = duckdb.connect()
    con.register("one", pd.DataFrame({"label": [1.0, np.nan], "score": [0.7, 0.2]}))
    with pytest.raises(ReferenceTooSmall) as info:
        validate_reference(con, "SELECT * FROM one", "label", "score", classifier=True)
    assert str(info.value) == ("only 1 usable row of 2, at least 100 are needed to be a baseline; 1 of 2 reference "
                               "rows left out: 1 with a label that is missing, NaN or not 0 or 1")
    assert info.value.check.n_usable == 1 and info.value.min_rows == 100
    assert isinstance(info.value, ValueError)  # callers that catch ValueError still do
    assert f"model churn: reference data/ref.csv: {info.value}".startswith("model churn: reference data/ref.csv: only 1")
    check = validate_reference(con, "SELECT * FROM one", "label", "score", min_rows=1)
    assert check.warning.startswith("1 of 2 reference rows left out")


def test_score_association_is_pearson_r_and_the_correlation_ratio_computed_by_hand():
    """Key features: |r| for numbers (scipy), eta for categories (by hand, missing its own category), on messy
    rows: NaN scores left out of eta, NaN feature values, a constant column, a huge one, in one statement."""
    from scipy import stats

    rng = np.random.default_rng(4)
    n = 300
    score = rng.random(n)
    df = pd.DataFrame({"score": score, "x": score * 2 + rng.normal(size=n), "flat": np.full(n, 3.0),
                       "huge": rng.normal(size=n) * 1e300,
                       "tier": np.where(score > 0.7, "gold", rng.choice(["silver", "bronze", None], n))})
    df.loc[:9, "score"] = np.nan
    df.loc[10:19, "x"] = np.nan
    con = duckdb.connect()
    con.register("ref", df)
    specs = [D.FeatureSpec("x", "numeric"), D.FeatureSpec("tier", "categorical"), D.FeatureSpec("flat", "numeric"),
             D.FeatureSpec("huge", "numeric")]
    got = Q.score_association(con, "SELECT * FROM ref", specs, "score")

    ok = df.score.notna() & df.x.notna()
    assert got["x"] == pytest.approx(abs(stats.pearsonr(df.x[ok], df.score[ok]).statistic), abs=1e-12)
    labelled = df[df.score.notna()]
    groups = labelled.tier.fillna("(missing)").to_numpy()
    y = labelled.score.to_numpy()
    between = sum((groups == g).sum() * (y[groups == g].mean() - y.mean()) ** 2 for g in set(groups))
    assert got["tier"] == pytest.approx(np.sqrt(between / ((y - y.mean()) ** 2).sum()), abs=1e-12)
    assert got["tier"] > 0.5  # gold carries the high scores
    assert np.isnan(got["flat"])  # a constant feature: undefined
    assert np.isnan(got["huge"]) or 0 <= got["huge"] <= 1  # overflow: a number in range or NaN, never an error
    assert list(got) == ["x", "flat", "huge", "tier"]
