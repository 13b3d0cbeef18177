"""Fairness numbers equal fairlearn's."""

import duckdb
import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from scipy.stats import chi2_contingency, fisher_exact
from sklearn.metrics import accuracy_score

from monitor_assets.analysis.queries import group_counts
from monitor_assets.stats.fairness import MIN_GROUP_SIZE, fairness_table


def frame(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]),
                       "age": rng.choice(["young", "old"], n)})
    df["y_true"] = (rng.random(n) < 0.3).astype(int)
    df["y_pred"] = (rng.random(n) < np.where(df.region == "east", 0.45, 0.3)).astype(int)
    return df


def compute(df, min_size=30, classifier=True):
    con = duckdb.connect()
    con.register("df", df)
    return fairness_table(group_counts(con, "SELECT * FROM df", ["region", "age"]), classifier, min_size)


def test_rates_and_disparities_equal_fairlearn():
    df = frame()
    out = compute(df)
    for attr in ("region", "age"):
        mf = MetricFrame(metrics={"sel": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                                  "acc": accuracy_score},
                         y_true=df.y_true, y_pred=df.y_pred, sensitive_features=df[attr])
        part = out[out.attribute == attr].set_index("grp")
        for grp, row in mf.by_group.iterrows():
            assert part.loc[grp, "selection_rate"] == pytest.approx(row.sel)
            assert part.loc[grp, "true_positive_rate"] == pytest.approx(row.tpr)
            assert part.loc[grp, "false_positive_rate"] == pytest.approx(row.fpr)
            assert part.loc[grp, "accuracy"] == pytest.approx(row.acc)
        first = part.iloc[0]
        kw = {"y_true": df.y_true, "y_pred": df.y_pred, "sensitive_features": df[attr]}
        assert first.demographic_parity_difference == pytest.approx(demographic_parity_difference(**kw))
        assert first.demographic_parity_ratio == pytest.approx(demographic_parity_ratio(**kw))
        assert first.equalized_odds_difference == pytest.approx(equalized_odds_difference(**kw))
    region = out[out.attribute == "region"].iloc[0]
    assert region.passes_four_fifths == (region.demographic_parity_ratio >= 0.8)
    assert region.disparity_p_value < 1e-6  # east is selected far more often: not noise


def test_small_groups_are_reported_but_left_out_of_disparities():
    df = frame()
    tiny = pd.DataFrame({"region": ["island"] * 10, "age": "old", "y_true": 0, "y_pred": 1})
    out = compute(pd.concat([df, tiny], ignore_index=True), min_size=30)
    part = out[out.attribute == "region"].set_index("grp")
    assert part.loc["island", "below_min_size"] and part.loc["island", "selection_rate"] == 1.0
    big = df  # without the tiny group, fairlearn's number is ours
    assert part.iloc[0].demographic_parity_ratio == pytest.approx(
        demographic_parity_ratio(big.y_true, big.y_pred, sensitive_features=big.region))


def test_regressors_get_mae_by_group():
    df = pd.DataFrame({"region": ["a", "a", "b", "b"], "age": "x", "y_pred": [1.0, 3.0, 2.0, 2.0],
                       "y_true": [2.0, 2.0, 5.0, np.nan]})
    part = compute(df, min_size=1, classifier=False)
    mae = part[part.attribute == "region"].set_index("grp").mae
    assert mae["a"] == pytest.approx(1.0) and mae["b"] == pytest.approx(3.0)  # unlabelled row left out


def test_named_groups_and_disparities_come_from_eligible_groups_only():
    """A one-person group with selection rate 1.0 is neither the most favoured group of the message
    nor part of the figures; on the eligible rows everything equals fairlearn."""
    df = frame(seed=4)
    tiny = pd.DataFrame({"region": ["island"], "age": "old", "y_true": 0, "y_pred": 1})
    out = compute(pd.concat([df, tiny], ignore_index=True))
    region = out[out.attribute == "region"].iloc[0]
    rates = df.groupby("region").y_pred.mean()
    assert region.n_eligible_groups == 3
    assert region.most_favoured_group == "east" and region.most_favoured_n == (df.region == "east").sum()
    assert region.most_favoured_selection_rate == pytest.approx(rates["east"])
    assert region.least_favoured_group == rates.idxmin() and region.least_favoured_n == (df.region == rates.idxmin()).sum()
    kw = {"y_true": df.y_true, "y_pred": df.y_pred, "sensitive_features": df.region}
    assert region.demographic_parity_difference == pytest.approx(demographic_parity_difference(**kw))
    assert region.equalized_odds_difference == pytest.approx(equalized_odds_difference(**kw))
    table = pd.crosstab(df.region, df.y_pred)
    assert region.demographic_parity_p_value == pytest.approx(chi2_contingency(table).pvalue)
    assert region.disparity_p_value == region.demographic_parity_p_value


def test_equalized_odds_names_the_larger_gap_with_its_own_significance_guard():
    """A false-positive-rate gap (0.43 against 0.22) with equal selection of positives: the equalized
    odds difference is the FPR gap, its p-value is the test among negatives."""
    rng = np.random.default_rng(10)
    rows = []
    for grp, n, fpr in (("a", 900, 0.22), ("b", 400, 0.43), ("c", 20, 0.9)):
        y = (rng.random(n) < 0.4).astype(int)
        pred = np.where(y == 1, rng.random(n) < 0.7, rng.random(n) < fpr).astype(int)
        rows.append(pd.DataFrame({"region": grp, "age": "x", "y_true": y, "y_pred": pred}))
    df = pd.concat(rows, ignore_index=True)
    out = compute(df)
    r = out[out.attribute == "region"].iloc[0]
    eligible = df[df.region != "c"]
    kw = {"y_true": eligible.y_true, "y_pred": eligible.y_pred, "sensitive_features": eligible.region}
    assert r.equalized_odds_difference == pytest.approx(equalized_odds_difference(**kw))
    assert r.equalized_odds_difference == pytest.approx(r.false_positive_rate_difference)
    assert r.equalized_odds_rate == "false_positive_rate"
    assert (r.equalized_odds_max_group, r.equalized_odds_min_group) == ("b", "a")
    negatives = eligible[eligible.y_true == 0]
    assert r.equalized_odds_max_n == (negatives.region == "b").sum()
    assert r.equalized_odds_p_value == pytest.approx(
        chi2_contingency(pd.crosstab(negatives.region, negatives.y_pred)).pvalue)
    assert r.equalized_odds_p_value == r.false_positive_rate_p_value < 1e-6
    positives = eligible[eligible.y_true == 1]
    assert r.true_positive_rate_p_value == pytest.approx(
        chi2_contingency(pd.crosstab(positives.region, positives.y_pred)).pvalue)
    assert r.true_positive_rate_p_value > 0.01  # no TPR gap beyond noise


def test_small_two_group_tables_use_fishers_exact_test():
    df = pd.DataFrame({"region": ["a"] * 40 + ["b"] * 40, "age": "x", "y_true": 0,
                       "y_pred": [1] * 1 + [0] * 39 + [1] * 7 + [0] * 33})
    r = compute(df).query("attribute == 'region'").iloc[0]
    assert r.demographic_parity_p_value == pytest.approx(fisher_exact([[1, 39], [7, 33]]).pvalue)
    assert MIN_GROUP_SIZE == 30 and r.n_eligible_groups == 2


def test_interleaved_attributes_each_get_their_own_disparities_on_their_own_rows():
    """Counts whose attributes come interleaved (and one row without an attribute): each attribute's rows
    come out together, in the order the attributes first appear, each with fairlearn's disparities of that
    attribute alone; the first group of tied selection rates is the one named, as pandas' idxmax names it."""
    df = frame(seed=3)
    rng = np.random.default_rng(3)
    df["channel"] = rng.choice(["app", "web", "store"], len(df))
    df.loc[df.channel == "store", "y_pred"] = (rng.random((df.channel == "store").sum()) < 0.6).astype(int)
    con = duckdb.connect()
    con.register("df", df)
    counts = group_counts(con, "SELECT * FROM df", ["region", "age", "channel"])
    shuffled = counts.sample(frac=1, random_state=1).reset_index(drop=True)
    shuffled = pd.concat([shuffled, shuffled.head(1).assign(attribute=None)], ignore_index=True)
    out = fairness_table(shuffled, True, 30)
    firsts = list(dict.fromkeys(shuffled.attribute.dropna()))
    assert list(dict.fromkeys(out.attribute)) == firsts and len(out) == len(counts)
    assert (out.attribute != out.attribute.shift()).sum() == len(firsts)  # each attribute's rows together
    for attr in firsts:
        part = out[out.attribute == attr]
        kw = {"y_true": df.y_true, "y_pred": df.y_pred, "sensitive_features": df[attr]}
        assert part.demographic_parity_difference.tolist() == pytest.approx(
            [demographic_parity_difference(**kw)] * len(part))
        assert part.equalized_odds_difference.tolist() == pytest.approx([equalized_odds_difference(**kw)] * len(part))
        rates = df.groupby(attr).y_pred.mean()
        assert set(part.most_favoured_group) == {rates.idxmax()} and set(part.least_favoured_group) == {rates.idxmin()}
    assert out.n_eligible_groups.dtype == np.int64 and out.most_favoured_n.dtype == float
    # Ties: two groups with the same selection rate; the first listed is named, as idxmax / idxmin name it.
    tie = pd.DataFrame({"attribute": "a", "grp": ["x", "y", "z"], "n": [100, 100, 100], "selected": [50, 50, 20],
                        "n_labelled": 0, "tp": 0, "fp": 0, "fn": 0, "tn": 0, "abs_error": 0.0})
    named = fairness_table(tie, True, 30).iloc[0]
    assert (named.most_favoured_group, named.least_favoured_group) == ("x", "z")
    assert not named.passes_four_fifths and named.demographic_parity_ratio == pytest.approx(0.4)
