"""Alerts that need no tuning: prediction drift and strong drift of key features alert with the default
config where the drift share stays under its threshold; fairness is judged against the reference's own
disparity by default."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_ratio

from monitor_assets.alerting import rules as A
from monitor_assets.config import load_config
from monitor_assets.stats.fairness import fairness_table
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, run_job, write

N = 500
FEATURES = [f"f{i}" for i in range(1, 7)]
CONFIG = """
partitions: {{start_date: 2025-06-01, end_date: 2025-06-01}}
label_delay_days: 0
""" + CSV_WORLD + """models:
  - id: moved
    task: binary_classification
    reference: ref.parquet
    reference_fields: {{score: proba}}
    features: {{f1: numeric, f2: numeric, f3: numeric, f4: numeric, f5: numeric, f6: numeric}}
  - id: stable
    task: binary_classification
    reference: ref.parquet
    reference_fields: {{score: proba}}
    features: {{f1: numeric, f2: numeric, f3: numeric, f4: numeric, f5: numeric, f6: numeric}}
"""


def _rows(rng, n: int, shift: float = 0.0) -> pd.DataFrame:
    x = {f: rng.normal(0, 1, n) for f in FEATURES}
    x["f1"] += shift
    x["f2"] += shift
    score = 1 / (1 + np.exp(-(1.5 * x["f1"] + 1.0 * x["f2"] + 0.3 * x["f3"])))  # f1, f2, f3 matter, in order
    return pd.DataFrame({**x, "proba": score, "label": (rng.random(n) < score).astype(int)})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default_alerts")
    rng = np.random.default_rng(20)
    _rows(rng, 4000).to_parquet(write(tmp / "ref.parquet", ""))
    truth = []
    for model, shift in (("moved", 0.5), ("stable", 0.0)):  # moved: f1 and f2 by half a standard deviation
        day = _rows(rng, N, shift).assign(request_id=lambda d, m=model: [f"{m}-{i}" for i in range(len(d))],
                                          ts="2025-06-01 12:00:00")
        write(tmp / "export" / "2025-06-01" / f"{model}.csv", day.drop(columns=["label"]).to_csv(index=False))
        truth.append(day[["request_id", "label"]].rename(columns={"label": "y"}))
    pd.concat(truth).to_csv(write(tmp / "truth" / "2025-06-01.csv", ""), index=False)
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    assert run_job(config, "2025-06-01", instance=dg.DagsterInstance.ephemeral()).success
    con = open_warehouse(config.warehouse_path, read_only=True)
    try:
        frame = A.evaluate(con, config, [pd.Timestamp("2025-06-01").date()])
        keys = con.execute("SELECT model_id, feature, importance, key_feature FROM monitoring.feature_drift "
                           "WHERE role = 'feature' ORDER BY 1, 2").df()
    finally:
        con.close()
    return frame.set_index(["model_id", "check_name"]), keys


def test_prediction_and_key_feature_drift_alert_where_the_drift_share_does_not(evaluated):
    frame, keys = evaluated
    drift = frame.loc[("moved", A.DRIFT)]
    assert drift.passed and drift.value == pytest.approx(2 / 6)  # 0.33 is under the default 0.45
    prediction = frame.loc[("moved", A.PREDICTION_DRIFT)]
    assert not prediction.passed and prediction.severity == "WARN"
    assert prediction.message.startswith("prediction (score) drifted: ks ")
    key = frame.loc[("moved", A.KEY_FEATURE_DRIFT)]
    assert not key.passed and key.value == 2.0
    assert key.message.startswith("2 key features drifted strongly: f1: ks ") and "f2: ks" in key.message
    # Key features measured on the reference: the three most associated with the score, in that order.
    moved = keys[keys.model_id == "moved"].set_index("feature")
    assert set(moved.index[moved.key_feature]) == {"f1", "f2", "f3"}
    assert moved.importance.idxmax() == "f1" and (moved.importance[["f4", "f5", "f6"]] < 0.1).all()


def test_a_stable_model_raises_none_of_them(evaluated):
    frame, _ = evaluated
    for check in (A.DRIFT, A.PREDICTION_DRIFT, A.KEY_FEATURE_DRIFT, A.FEATURE_VALUES):
        assert frame.loc[("stable", check)].passed, check
    assert not (~frame.loc["stable"].passed).any()


# --- fairness against the reference ---------------------------------------------------------------


def _attribute_rows(selected: dict[str, tuple[int, int]], reference: float | None, baseline: str):
    """One fairness row per attribute as the alert rules read it, from per-group (selected, n) counts."""
    counts = pd.DataFrame([{"attribute": "grp", "grp": g, "n": n, "selected": s, "n_labelled": 0, "tp": 0, "fp": 0,
                            "fn": 0, "tn": 0, "abs_error": 0} for g, (s, n) in selected.items()])
    t = fairness_table(counts, True).iloc[0]
    row = dict(ratio=t.demographic_parity_ratio, p=t.demographic_parity_p_value, top_group=t.most_favoured_group,
               top_n=t.most_favoured_n, top_rate=t.most_favoured_selection_rate, low_group=t.least_favoured_group,
               low_n=t.least_favoured_n, low_rate=t.least_favoured_selection_rate, odds=np.nan, n_eligible=2,
               n_groups=2, attribute="grp", baseline=baseline if reference is not None else "absolute",
               baseline_note="" if reference is not None else "the reference has no disparity for this attribute",
               ref_ratio=reference if reference is not None else np.nan, ref_odds=np.nan)
    return [pd.Series(row)], t


def _model_and_config(tmp_path, baseline: str):
    text = CONFIG.format(tmp=tmp_path) + f"fairness: {{baseline: {baseline}}}\n"
    write(tmp_path / "ref.parquet", "")
    config = load_config(write(tmp_path / "monitor.yaml", text))
    return config.models[0], config


@pytest.mark.parametrize("baseline", ["reference", "absolute"])
def test_a_disparity_the_reference_already_had_alerts_only_in_absolute_terms(tmp_path, baseline):
    model, config = _model_and_config(tmp_path, baseline)
    # Group B is selected at 0.35 against A's 0.6: ratio 0.583 (under 0.8, over the 0.5 floor), as in the reference.
    rows, t = _attribute_rows({"A": (300, 500), "B": (175, 500)}, 0.5833, baseline)
    y_true = np.zeros(1000)
    y_pred = np.r_[np.ones(300), np.zeros(200), np.ones(175), np.zeros(325)]
    assert t.demographic_parity_ratio == pytest.approx(
        demographic_parity_ratio(y_true, y_pred, sensitive_features=np.repeat(["A", "B"], 500)))
    (check, value, threshold, passed, message), = [j for j in A.fairness_judgements(model, rows, config)
                                                   if j[0] == A.FAIRNESS]
    assert value == pytest.approx(0.35 / 0.6) and threshold == 0.8
    assert passed == (baseline == "reference")
    if baseline == "reference":
        assert "reference 0.5833, alert when lower by more than 0.05" in message


def test_a_disparity_worse_than_the_references_alerts_and_the_floor_always_does(tmp_path):
    model, config = _model_and_config(tmp_path, "reference")
    worse, _ = _attribute_rows({"A": (300, 500), "B": (150, 500)}, 0.5833, "reference")  # ratio 0.5
    assert not A.fairness_judgements(model, worse, config)[0][3]
    within, _ = _attribute_rows({"A": (300, 500), "B": (165, 500)}, 0.5833, "reference")  # 0.55: within 0.05
    assert A.fairness_judgements(model, within, config)[0][3]
    floor, _ = _attribute_rows({"A": (300, 500), "B": (120, 500)}, 0.42, "reference")  # 0.4: under the 0.5 floor
    assert not A.fairness_judgements(model, floor, config)[0][3]
    unknown, _ = _attribute_rows({"A": (300, 500), "B": (175, 500)}, None, "reference")  # no reference disparity
    check = A.fairness_judgements(model, unknown, config)[0]
    assert not check[3] and "the reference has no disparity for this attribute" in check[4]
