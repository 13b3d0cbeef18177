"""Estimated performance per segment of a multiclass model (issue 23): a 3-class categoriser with `segments: [market]`
on messy logs (probabilities as JSON arrays or objects, rows with unusable probabilities, a label naming an unknown
class, a logged class that is not the most probable, a third of the labels never landing, a market of 40 rows).
On the second day DE's probabilities flatten (the model is unsure there, its labels drawn from those
probabilities), so its expected accuracy falls from 0.67 to 0.46: the segment estimate check names DE on
that day only, the small market gets no row, each market's estimate is `estimate_day` on its rows alone, and the
realized accuracy of each segment is scikit-learn's on its labelled rows."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from monitor_assets.config import load_config
from monitor_assets.constants import SEGMENT_ESTIMATED_PERFORMANCE_CHECK
from monitor_assets.estimation.logic import estimate_day, segmented
from monitor_assets.segments.logic import ALPHA as SEGMENT_ALPHA
from monitor_assets.stats import estimation as E
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import run_job, write

CLASSES = ["books", "electronics", "home"]
MARKETS, SHARE = ["DE", "FR", "UK"], [0.25, 0.375, 0.375]
DAYS = [dt.date(2025, 6, 1), dt.date(2025, 6, 2)]
ROWS, SMALL = 1200, 40  # a day's rows in the three markets, and in LU (under segments.min_rows = 100)
SHARP, FLAT = 1.6, 0.45  # the logits' scale: DE's on the second day is FLAT

CONFIG = """
partitions: {{start_date: 2025-06-01, end_date: 2025-06-02}}
label_delay_days: 0
warehouse: {tmp}/wh.duckdb
reports_dir: {tmp}/reports
sources:
  predictions:
    path: export/{{date}}/{{model}}.csv
    fields: {{prediction_id: request_id, timestamp: ts, score: proba, decision: category, probabilities: probs}}
  labels:
    path: truth/{{date}}.csv
    fields: {{prediction_id: request_id, label: y}}
models:
  - id: categoriser
    task: multiclass_classification
    classes: [books, electronics, home]
    reference: ref.parquet
    reference_fields: {{label: y, decision: category, probabilities: probs}}
    features: {{x: numeric}}
    segments: [market]
"""


def _rows(rng, n: int, prefix: str, markets: list[str], share: list[float], flat_market: str | None = None):
    """Calibrated rows: probabilities a softmax of normal logits (scaled down in `flat_market`), the label drawn
    from them, the logged class the most probable but for 3% of rows (the second most probable)."""
    market = rng.choice(markets, n, p=share)
    logits = rng.normal(0, 1, (n, len(CLASSES))) * np.where(market == flat_market, FLAT, SHARP)[:, None]
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 6)
    p[:, -1] = np.round(1 - p[:, :-1].sum(axis=1), 6)
    order = np.argsort(-p, axis=1)
    code = np.where(rng.random(n) < 0.03, order[:, 1], order[:, 0])
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(0, len(CLASSES) - 1)
    # every third row's probabilities as an object {class: p}, the others as an array in class order
    probs = [json.dumps(dict(zip(CLASSES, map(float, r), strict=True)) if i % 3 == 0 else [float(v) for v in r])
             for i, r in enumerate(p)]
    return pd.DataFrame({"request_id": [f"{prefix}-{k}" for k in range(n)], "category": [CLASSES[c] for c in code],
                         "probs": probs, "x": rng.normal(0, 1, n), "market": market,
                         "p": list(p), "code": code, "y": y})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiclass_segment_estimates")
    rng = np.random.default_rng(23)
    ref = _rows(rng, 4000, "ref", MARKETS, SHARE)
    ref.assign(y=[CLASSES[i] for i in ref.y]).drop(columns=["request_id", "p", "code"]).to_parquet(tmp / "ref.parquet")
    days = {}
    for i, day in enumerate(DAYS):
        frame = pd.concat([_rows(rng, ROWS, f"{day:%d}", MARKETS, SHARE, flat_market="DE" if i else None),
                           _rows(rng, SMALL, f"{day:%d}-lu", ["LU"], [1.0])], ignore_index=True)
        frame["ts"] = f"{day} 10:00:00"
        frame["labelled"] = rng.random(len(frame)) < 2 / 3  # the rest never land
        bad = frame.iloc[:3].assign(request_id=[f"{day:%d}-bad{k}" for k in range(3)],
                                    probs=["[0.5, 0.5]", "[0.9, 0.9, 0.2]", '{"books": 1.0}'])  # quarantined
        logged = pd.concat([frame, bad], ignore_index=True)
        logged.drop(columns=["p", "code", "y", "labelled"]).to_csv(
            write(tmp / "export" / f"{day}" / "categoriser.csv", ""), index=False)
        labels = frame[frame.labelled].assign(y=lambda f: [CLASSES[k] for k in f.y])[["request_id", "y"]]
        labels.loc[labels.index[0], "y"] = "garden"  # an unknown class: quarantined, the row stays unlabelled
        frame.loc[labels.index[0], "labelled"] = False
        labels.to_csv(write(tmp / "truth" / f"{day}.csv", ""), index=False)
        days[day] = frame
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    assert run_job(config, str(DAYS[0]), str(DAYS[-1])).success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        found = con.execute("SELECT * FROM monitoring.segment_estimated_performance ORDER BY ALL").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts WHERE check_name = ?",
                             [SEGMENT_ESTIMATED_PERFORMANCE_CHECK]).df()
        history = con.execute("""SELECT * FROM monitoring.history
                                 WHERE metric LIKE 'segment_estimated.%' AND model_id = 'categoriser'""").df()
        estimator = E.from_text(con.execute("SELECT estimator FROM monitoring.estimators").fetchall()[0][0])
    found = found.assign(day=found.partition_date.map(lambda v: pd.Timestamp(v).date()))
    return {"config": config, "days": days, "found": found, "alerts": alerts, "history": history,
            "estimator": estimator}


def _segment_frame(frame: pd.DataFrame, market: str) -> pd.DataFrame:
    """A market's served rows as `estimate_day` reads them: probabilities, logged class code, label code."""
    rows = frame[frame.market == market]
    return pd.DataFrame({"proba": [list(map(float, p)) for p in rows.p], "code": rows.code.to_numpy(),
                         "label": np.where(rows.labelled, rows.y, np.nan), "model_version": None})


def test_a_multiclass_model_with_segments_is_estimated_per_segment(world):
    model, found = world["config"].models[0], world["found"]
    assert segmented(model) and isinstance(world["estimator"], E.MulticlassEstimator)
    # the small market (40 rows < min_rows) has no row; the three others one per metric and day
    assert set(found.segment) == {f"market={m}" for m in MARKETS} and set(found.segment_by) == {"market"}
    assert set(found.metric) == set(model.estimated_metrics) == {"accuracy", "f1_macro", "f1_weighted", "roc_auc"}
    assert len(found) == len(DAYS) * len(MARKETS) * len(model.estimated_metrics)


def test_each_segment_is_estimate_day_on_its_rows_alone(world):
    model, found = world["config"].models[0], world["found"]
    for day, frame in world["days"].items():
        for market in MARKETS:
            rows = _segment_frame(frame, market)
            expected = {r["metric"]: r for r in estimate_day(model, world["estimator"], rows, day)}
            got = found[(found.day == day) & (found.segment == f"market={market}")].set_index("metric")
            for metric, e in expected.items():
                g = got.loc[metric]
                assert (g.estimate, g.n_rows, g.n_labelled) == (pytest.approx(e["estimate"], abs=1e-12), len(rows),
                                                               e["n_labelled"])
                if metric == "accuracy":  # its sampling sd is analytic
                    assert (g.lower, g.upper) == (pytest.approx(e["lower"], abs=1e-12),
                                                  pytest.approx(e["upper"], abs=1e-12))
                else:  # seeded label draws, row by row: the table's row order is not the file's (a join), so the
                    # band is the same within the draws' noise (200 draws: a few % of its width)
                    assert g.upper - g.lower == pytest.approx(e["upper"] - e["lower"], rel=0.25)
                    assert (g.lower + g.upper) / 2 == pytest.approx(e["estimate"], abs=1e-9)


def test_the_realized_accuracy_of_each_segment_is_scikit_learns_on_its_labelled_rows(world):
    found = world["found"]
    accuracy = found[found.metric == "accuracy"]
    for r in accuracy.itertuples():
        frame = world["days"][r.day]
        rows = frame[(frame.market == r.segment.removeprefix("market=")) & frame.labelled]
        assert r.n_labelled == len(rows) < r.n_rows
        assert r.realized == pytest.approx(skm.accuracy_score(rows.y, rows.code), abs=1e-12)
        assert r.within_band == (r.lower <= r.realized <= r.upper)
    f1 = found[found.metric == "f1_weighted"].iloc[0]
    frame = world["days"][f1.day]
    rows = frame[(frame.market == f1.segment.removeprefix("market=")) & frame.labelled]
    assert f1.realized == pytest.approx(skm.f1_score(rows.y, rows.code, average="weighted"), abs=1e-12)


def test_the_flattened_market_is_flagged_on_its_day_only_by_benjamini_hochberg(world):
    found, model = world["found"], world["config"].models[0]
    main = found[found.metric == model.main_metric]
    flagged = main[main.below_floor.astype(bool)]
    assert list(zip(flagged.segment, flagged.day, strict=True)) == [("market=DE", DAYS[1])]
    de = main[main.segment == "market=DE"].set_index("day").estimate
    assert de[DAYS[1]] < de[DAYS[0]] - 0.12
    # the floor: min_metric_ratio x the segment's accuracy in the reference (of the logged class)
    ref = pd.read_parquet(model.reference_path)
    ref_de = ref[ref.market == "DE"]
    floor = model.thresholds.min_metric_ratio * skm.accuracy_score(ref_de.y, ref_de.category)
    assert (main.reference_source == "segment").all()
    assert main[main.segment == "market=DE"].floor.to_numpy() == pytest.approx(floor, abs=1e-12)
    for _, day in main.groupby("day"):
        se = (day.upper - day.lower).to_numpy() / (2 * stats.norm.ppf(0.975))
        p = stats.norm.sf((day.floor - day.estimate).to_numpy() / se)
        assert day.p_value.to_numpy() == pytest.approx(p, rel=1e-9)
        adjusted = stats.false_discovery_control(p, method="bh")
        assert day.p_adjusted.to_numpy() == pytest.approx(adjusted, rel=1e-9)
        assert list(day.below_floor.astype(bool)) == list(adjusted < SEGMENT_ALPHA)
    others = found[found.metric != model.main_metric]
    assert others.p_value.isna().all() and others.floor.isna().all()


def test_the_segment_estimate_alert_and_history_name_the_market(world):
    alerts, history = world["alerts"], world["history"]
    failing = alerts.assign(day=alerts.partition_date.map(lambda v: pd.Timestamp(v).date()))
    assert list(failing.day) == [DAYS[1]]
    message = failing.message.iloc[0]
    assert message.startswith("1 segment of 3 below 95% of their reference beyond the band: market=DE: estimated "
                              "accuracy") and "market=FR" not in message and "market=UK" not in message
    found = world["found"]
    de = found[(found.segment == "market=DE") & (found.metric == "accuracy") & (found.day == DAYS[1])].iloc[0]
    shown = history[(history.segment == "market=DE") & (history.metric == "segment_estimated.accuracy")]
    shown = shown[shown.partition_date.map(lambda v: pd.Timestamp(v).date()) == DAYS[1]]
    assert shown.value.to_numpy() == pytest.approx([de.estimate])
    assert set(history.segment) == {f"market={m}" for m in MARKETS}
