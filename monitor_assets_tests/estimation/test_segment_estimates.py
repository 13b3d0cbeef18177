"""Estimated performance per segment, before the labels land: a classifier with `segments: [market]` (reweighted
estimator) whose labels are withheld. Each market's estimate is the model's one estimator applied to that market's
rows alone; from the fourth day the DE market's inputs move to where the model is unsure (its accuracy falls
from about 0.87 to 0.70), and `segment_estimated_performance_within_baseline` fails on exactly those days naming
DE, while the whole model's estimate stays within its baseline and the stable days give no failure. When the
labels land, each segment's realized accuracy is scikit-learn's on its rows."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets import keys
from monitor_assets.alerting.rules import evaluate
from monitor_assets.config import load_config
from monitor_assets.constants import ESTIMATED_PERFORMANCE_CHECK, SEGMENT_ESTIMATED_PERFORMANCE_CHECK
from monitor_assets.definitions import build_definitions
from monitor_assets.segments.logic import ALPHA as SEGMENT_ALPHA
from monitor_assets.stats import estimation as E
from monitor_assets.storage.warehouse import connect, open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, run_job, write

FIRST = dt.date(2025, 4, 1)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(6)]
INCIDENT = 3  # from the fourth day DE's inputs narrow toward the decision boundary
LANDED = FIRST + dt.timedelta(days=6)  # every withheld label lands on the day after the last one
ROWS = 3000
MARKETS, MARKET_P = ["DE", "FR", "UK"], [0.1, 0.45, 0.45]

CONFIG = """
partitions: {{start_date: {first}, end_date: {landed}}}
label_delay_days: 7
""" + CSV_WORLD + """models:
  - id: checkout
    task: binary_classification
    main_metric: accuracy
    reference: ref.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric}}
    estimation: {{method: confidence_reweighted}}
    segments: [market]
"""


def _rows(rng, n, broken=False):
    """A calibrated classifier; broken: DE's x narrows (sd 2.0 -> 0.6) while P(y | x) stays the same, so its
    accuracy falls to about 0.70 (a covariate shift the estimate can see)."""
    market = rng.choice(MARKETS, n, p=MARKET_P)
    x = rng.normal(0, np.where(broken & (market == "DE"), 0.6, 2.0))
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    return pd.DataFrame({"x": x, "proba": p, "market": market}), (rng.random(n) < p).astype(int)


def _day(value) -> dt.date:
    return pd.Timestamp(value).date()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segment_estimates")
    rng = np.random.default_rng(23)
    ref, y = _rows(rng, 6000)
    ref.assign(label=y).to_parquet(tmp / "ref.parquet")
    frames, truth = {}, []
    for i, day in enumerate([*DAYS, LANDED]):
        frame, y = _rows(rng, ROWS, broken=i >= INCIDENT)
        frame = frame.assign(request_id=[f"r{i}-{k}" for k in range(ROWS)], ts=f"{day} 12:00")
        write(tmp / "export" / f"{day}" / "checkout.csv", frame.to_csv(index=False))
        frames[day] = frame.assign(y=y)
        if day != LANDED:  # each day's label file is there, empty: its labels are withheld
            truth.append(frames[day][["request_id", "y"]])
            write(tmp / "truth" / f"{day}.csv", "request_id,y\n")
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(first=FIRST, landed=LANDED, tmp=tmp)))
    assert run_job(config, str(DAYS[0]), str(DAYS[-1])).success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        before = con.execute("SELECT * FROM monitoring.segment_estimated_performance ORDER BY ALL").df()
        whole = con.execute("SELECT * FROM monitoring.estimated_performance ORDER BY ALL").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts").df()
        estimator = E.from_text(con.execute("SELECT estimator FROM monitoring.estimators WHERE model_id = 'checkout'")
                                .fetchall()[0][0])
        labelled = con.execute("SELECT count(*) FROM raw.labels").fetchall()[0][0]

    pd.concat(truth).to_csv(write(tmp / "truth" / f"{LANDED}.csv", ""), index=False)
    assert run_job(config, str(LANDED)).success  # its run refreshes the 7 days before it
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        after = con.execute("SELECT * FROM monitoring.segment_estimated_performance ORDER BY ALL").df()
    return {"config": config, "frames": frames, "before": before, "whole": whole, "alerts": alerts,
            "estimator": estimator, "labelled": labelled, "after": after}


def test_each_segment_is_the_model_estimator_on_its_rows_alone(world):
    before, model = world["before"], world["config"].models[0]
    assert world["labelled"] == 0 and (before.n_labelled == 0).all() and before.realized.isna().all()
    assert set(before.segment_by) == {"market"} and set(before.segment) == {f"market={m}" for m in MARKETS}
    assert set(before.metric) == set(model.estimated_metrics)
    estimator = world["estimator"]
    assert estimator.method == E.CONFIDENCE_REWEIGHTED
    for day in DAYS:
        frame = world["frames"][day]
        for market in MARKETS:
            rows = frame[frame.market == market]
            expected = {e.metric: e for e in estimator.estimate(
                rows.proba.to_numpy(), None, model.estimated_metrics, seed=day.toordinal(),
                features=rows[["x"]].to_numpy(float))}
            got = before[(before.partition_date.map(_day) == day) & (before.segment == f"market={market}")]
            assert len(got) == len(expected)
            for r in got.itertuples():
                e = expected[r.metric]
                assert (r.estimate, r.lower, r.upper, r.n_rows) == pytest.approx((e.estimate, e.lower, e.upper,
                                                                                   len(rows)))


def test_the_realized_value_of_each_segment_is_scikit_learns_once_the_labels_land(world):
    after = world["after"]
    after = after[after.partition_date.map(_day).isin(DAYS)]  # LANDED has predictions of its own, no labels
    accuracy = after[after.metric == "accuracy"]
    assert len(accuracy) == len(DAYS) * len(MARKETS)
    for r in accuracy.itertuples():
        frame = world["frames"][_day(r.partition_date)]
        rows = frame[frame.market == r.segment.removeprefix("market=")]
        assert r.n_labelled == len(rows)
        assert r.realized == pytest.approx(skm.accuracy_score(rows.y, rows.proba >= 0.5))
        assert r.within_band == (r.lower <= r.realized <= r.upper)
    auc = after[after.metric == "roc_auc"].iloc[0]
    frame = world["frames"][_day(auc.partition_date)]
    rows = frame[frame.market == auc.segment.removeprefix("market=")]
    assert auc.realized == pytest.approx(skm.roc_auc_score(rows.y, rows.proba))
    # the bands hold: the realized accuracy of most segment-days is inside them
    assert accuracy.within_band.astype(bool).mean() >= 0.8


def test_the_shifted_market_fails_on_its_days_only_and_is_named(world):
    before, alerts = world["before"], world["alerts"]
    main = before[before.metric == "accuracy"].assign(day=lambda f: f.partition_date.map(_day))
    # its estimate fell by more than 10 points against the stable days'; the others stayed
    de = main[main.segment == "market=DE"].set_index("day").estimate
    assert de[DAYS[INCIDENT:]].max() < de[DAYS[:INCIDENT]].min() - 0.10
    flagged = main[main.below_floor.astype(bool)]
    assert set(flagged.segment) == {"market=DE"} and set(flagged.day) == set(DAYS[INCIDENT:])
    assert (main.reference_source == "segment").all()
    # the floor is min_metric_ratio x the segment's accuracy in the reference (the segment check's rule)
    ref = pd.read_parquet(world["config"].models[0].reference_path)
    ref_de = ref[ref.market == "DE"]
    floor = 0.95 * skm.accuracy_score(ref_de.label, ref_de.proba >= 0.5)
    assert main[main.segment == "market=DE"].floor.to_numpy() == pytest.approx(floor)
    failing = alerts[alerts.check_name == SEGMENT_ESTIMATED_PERFORMANCE_CHECK]
    assert set(failing.partition_date.map(_day)) == set(DAYS[INCIDENT:])
    assert failing.message.str.startswith("1 segment of 3 below 95% of their reference beyond the band: market=DE:"
                                          " estimated accuracy").all()
    assert not failing.message.str.contains("market=FR|market=UK").any()
    assert (failing.severity == "WARN").all()
    # the whole model's estimate stays within its baseline: only the segment check sees it
    assert not (alerts.check_name == ESTIMATED_PERFORMANCE_CHECK).any()
    whole = world["whole"]
    assert len(whole[whole.metric == "accuracy"]) == len(DAYS)


def test_the_check_passes_on_the_stable_days_and_shows_on_the_estimate_asset(world):
    defs = build_definitions(world["config"])
    specs = {key.name: key.asset_key for key in defs.resolve_asset_graph().asset_check_keys}
    assert specs[SEGMENT_ESTIMATED_PERFORMANCE_CHECK] == keys.ESTIMATED_PERFORMANCE
    config = world["config"]
    with connect(config.warehouse_path, config.lake_path, None, read_only=True) as con:
        evaluated = evaluate(con, config, DAYS)
    mine = evaluated[evaluated.check_name == SEGMENT_ESTIMATED_PERFORMANCE_CHECK]
    verdicts = {_day(r.partition_date): r.passed for r in mine.itertuples()}
    assert verdicts == {d: i < INCIDENT for i, d in enumerate(DAYS)}
    passed = mine[mine.passed]
    assert passed.message.str.startswith("3 segments estimated, none below its floor beyond the band").all()


def test_a_lower_is_better_metric_is_judged_above_its_ceiling_with_the_bands_error():
    """MAE: the ceiling is (2 - ratio) x the segment's reference value (the model's baseline for a segment the
    reference lacks); p is scipy's one-sided normal tail of (estimate - ceiling) / se, se = the band's half-width
    / 1.96; the adjusted p-values are scipy's Benjamini-Hochberg over the model-day's segments."""
    from dataclasses import replace

    from scipy import stats

    from monitor_assets.config import ModelConfig, SegmentsConfig
    from monitor_assets.estimation.logic import judge_segment_estimates

    model = ModelConfig(id="demand", task="regression", version="1", features=(), sensitive_attributes=(),
                        reference_path="", reference_fields={}, score_field="score",
                        segments=SegmentsConfig(by=(("market",),), min_rows=100))
    model = replace(model, thresholds=replace(model.thresholds, min_metric_ratio=0.9))
    found = pd.DataFrame({"partition_date": DAYS[0], "model_id": "demand", "segment_by": "market",
                          "segment": ["market=DE", "market=FR", "market=UK", "market=DE"],
                          "metric": ["mae", "mae", "mae", "rmse"], "estimate": [1.5, 1.08, 1.3, 2.0],
                          "lower": [1.3, 0.96, 1.0, 1.0], "upper": [1.7, 1.2, 1.6, 3.0], "n_rows": 500})
    reference = pd.DataFrame({"segment_by": "market", "segment": ["market=DE", "market=FR", "market=UK"],
                              "n": [400, 400, 50], "value": [1.0, 0.8, 9.9]})
    out = judge_segment_estimates(model, found, reference, baseline=1.1)
    mae = out[out.metric == "mae"]
    ceiling = np.array([1.1 * 1.0, 1.1 * 0.8, 1.1 * 1.1])  # UK: too few reference rows, the model's baseline
    assert mae.floor.to_numpy() == pytest.approx(ceiling)
    assert list(mae.reference_source) == ["segment", "segment", "model"]
    se = (mae.upper - mae.lower).to_numpy() / (2 * 1.959963984540054)
    p = stats.norm.sf((mae.estimate.to_numpy() - ceiling) / se)
    assert mae.p_value.to_numpy() == pytest.approx(p)
    assert mae.p_adjusted.to_numpy() == pytest.approx(stats.false_discovery_control(p, method="bh"))
    assert list(mae.below_floor) == list(stats.false_discovery_control(p, method="bh") < SEGMENT_ALPHA)
    assert list(mae.below_floor) == [True, True, False]  # DE and FR above their ceilings beyond their bands
    rmse = out[out.metric == "rmse"].iloc[0]  # not the main metric: reported, not judged
    assert pd.isna(rmse.p_value) and pd.isna(rmse.floor) and rmse.below_floor is None


@pytest.mark.parametrize("reweight", [False, True])
def test_a_regressors_segments_reuse_the_days_predicted_losses_and_equal_each_segment_alone(reweight):
    """`estimate_segments` predicts a regressor's losses once a day (`LossEstimator.model_losses`) and gives each
    segment its rows' share: every segment's estimate equals `estimate_day` on the segment's rows alone, bit for
    bit, with and without the density-ratio reweighting; a segment under min_rows gets no row."""
    from monitor_assets.config import FeatureConfig, ModelConfig, SegmentsConfig
    from monitor_assets.estimation.logic import estimate_day, estimate_segments
    from monitor_assets.storage.sql import SEGMENT_COLUMN, segment_key

    rng = np.random.default_rng(5)

    def rows(n, shift=0.0):
        x = rng.normal(shift, 1, (n, 2))
        y = 3 * x[:, 0] + rng.normal(0, 1 + np.abs(x[:, 1]), n)
        return x, y + rng.normal(0, 0.5, n), y  # features, prediction, label

    x, pred, y = rows(4000)
    estimator = E.LossEstimator.fit(x, pred, y, reweight=reweight)
    model = ModelConfig(id="demand", task="regression", version="1", sensitive_attributes=(), reference_path="",
                        features=(FeatureConfig("a", "numeric", "a"), FeatureConfig("b", "numeric", "b")),
                        reference_fields={}, score_field="score",
                        segments=SegmentsConfig(by=(("market",),), min_rows=100))
    x, pred, y = rows(1500, shift=0.4)
    market = rng.choice(["DE", "FR", "LU"], 1500, p=[0.5, 0.45, 0.05])
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "score": pred, "label": np.where(rng.random(1500) < 0.5, y, np.nan),
                          "model_version": "1", SEGMENT_COLUMN + segment_key(("market",)): "market=" + market})
    got = estimate_segments(model, estimator, frame, DAYS[0], pd.DataFrame(columns=["segment_by", "segment", "n",
                                                                                       "value"]), baseline=2.0)
    assert set(got.segment) == {"market=DE", "market=FR"}  # LU: under min_rows
    for segment in ("DE", "FR"):
        alone = {r["metric"]: r for r in estimate_day(model, estimator, frame[market == segment], DAYS[0])}
        for r in got[got.segment == f"market={segment}"].itertuples():
            assert (r.estimate, r.lower, r.upper, r.n_rows) == (alone[r.metric]["estimate"], alone[r.metric]["lower"],
                                                                alone[r.metric]["upper"], alone[r.metric]["n_rows"])
