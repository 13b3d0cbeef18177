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
from sklearn.metrics import accuracy_score

from monitor_assets.stats.fairness import fairness_table, group_counts


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
