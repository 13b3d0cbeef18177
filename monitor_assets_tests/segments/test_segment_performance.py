"""Segment performance beyond binary accuracy: a multiclass model's segments (figures equal scikit-learn's on the
segment's rows; a market whose accuracy drops 15 points fails the segment check by name, a stable one does not),
and `segments.min_class_rows` (a segment with too few positives is reported, not judged, whatever its AUC)."""

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets.config import ModelConfig, SegmentsConfig, load_config
from monitor_assets.constants import SEGMENT_PERFORMANCE_CHECK
from monitor_assets.segments.logic import judge, not_judged_reason
from monitor_assets.stats.performance import performance_sql
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import run_job, write

CLASSES = ["books", "electronics", "fashion", "home"]
MARKETS = ["DE", "FR", "UK"]
DAYS = pd.date_range("2025-06-01", periods=2, freq="D")
RIGHT, BROKEN = 0.8, 0.65  # share of rows whose label is the predicted class; DE on the second day: 15 points less

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
    classes: [books, electronics, fashion, home]
    reference: ref.parquet
    reference_fields: {{label: y, decision: category, probabilities: probs}}
    features: {{x: numeric}}
    segments: [market]
"""


def _rows(rng, n, day, broken_market=None):
    """A categoriser's rows: probabilities from a softmax, the predicted class their argmax, the label the
    predicted class with probability RIGHT (BROKEN in `broken_market`), else one of the other classes."""
    logits = rng.normal(0, 1.5, (n, len(CLASSES)))
    p = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 6)
    p[:, -1] = np.round(1 - p[:, :-1].sum(axis=1), 6)
    pred = p.argmax(axis=1)
    market = rng.choice(MARKETS, n)
    right = rng.random(n) < np.where(market == broken_market, BROKEN, RIGHT)
    other = (pred + rng.integers(1, len(CLASSES), n)) % len(CLASSES)
    y = np.where(right, pred, other)
    return pd.DataFrame({
        "request_id": [f"c{day:%m%d}-{k}" for k in range(n)], "ts": f"{day:%Y-%m-%d} 10:00:00",
        "category": [CLASSES[i] for i in pred], "probs": [json.dumps([float(v) for v in row]) for row in p],
        "x": rng.normal(0, 1, n), "market": market, "y": y}), p


@pytest.fixture(scope="module")
def multiclass_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiclass_segments")
    rng = np.random.default_rng(5)
    ref, _ = _rows(rng, 3000, DAYS[0])
    ref.assign(y=[CLASSES[i] for i in ref.y]).drop(columns=["request_id", "ts"]).to_parquet(tmp / "ref.parquet")
    days = {}
    for i, day in enumerate(DAYS):
        frame, p = _rows(rng, 1800, day, broken_market="DE" if i == 1 else None)
        frame.drop(columns="y").to_csv(write(tmp / "export" / f"{day:%Y-%m-%d}" / "categoriser.csv", ""), index=False)
        frame.assign(y=[CLASSES[k] for k in frame.y])[["request_id", "y"]].to_csv(
            write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", ""), index=False)
        days[day.date()] = (frame, p)
    config = load_config(write(tmp / "monitor.yaml", CONFIG.format(tmp=tmp)))
    assert run_job(config, "2025-06-01", "2025-06-02").success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        segments = con.execute("SELECT * FROM monitoring.segment_performance ORDER BY ALL").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts WHERE check_name = ?", [SEGMENT_PERFORMANCE_CHECK]).df()
    return {"days": days, "segments": segments, "alerts": alerts, "config": config}


def test_multiclass_segments_equal_scikit_learn_on_their_rows(multiclass_world):
    seg = multiclass_world["segments"]
    assert set(seg.segment) == {f"market={m}" for m in MARKETS} and (seg.metric == "accuracy").all()
    for day, (frame, p) in multiclass_world["days"].items():
        for market in MARKETS:
            rows = frame.market == market
            y, pred = frame.y[rows].to_numpy(), p[rows.to_numpy()].argmax(axis=1)
            r = seg[(pd.to_datetime(seg.partition_date).dt.date == day) & (seg.segment == f"market={market}")].iloc[0]
            assert r.n_labelled == rows.sum() and r.volume == rows.sum()
            assert r.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
            assert r.f1 == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
            assert r.roc_auc == pytest.approx(skm.roc_auc_score(y, p[rows.to_numpy()], multi_class="ovr"), abs=1e-12)
            assert r.log_loss == pytest.approx(skm.log_loss(y, p[rows.to_numpy()], labels=range(4)), rel=1e-9)
            assert r.value == r.accuracy and r.reference_source == "segment"
            # accuracy's standard error is the binomial one at the segment's labelled rows
            assert r.standard_error == pytest.approx(np.sqrt(r.accuracy * (1 - r.accuracy) / r.n_labelled))


def test_a_market_fifteen_points_down_fails_the_segment_check_by_name(multiclass_world):
    seg, alerts = multiclass_world["segments"], multiclass_world["alerts"]
    flagged = seg[seg.below_floor.astype(bool)]
    assert list(flagged.segment) == ["market=DE"]
    assert pd.Timestamp(flagged.partition_date.iloc[0]).date() == DAYS[1].date()
    # every market-day was judged (enough rows of every class), the stable ones not flagged
    assert seg.p_value.notna().all()
    failed = alerts[alerts.partition_date.astype(str).str.startswith(str(DAYS[1].date()))]
    assert len(failed) == 1 and "market=DE" in failed.message.iloc[0]
    assert "market=FR" not in failed.message.iloc[0] and "market=UK" not in failed.message.iloc[0]
    first = alerts[alerts.partition_date.astype(str).str.startswith(str(DAYS[0].date()))]
    assert first.empty or not first.message.str.contains("below").any()


def test_macro_f1_as_the_main_metric_is_judged_with_its_own_standard_error(multiclass_world):
    """The same day judged on macro F1: `value` is the segment's macro F1, its standard error the delta method's
    (stats.multiclass.standard_error, checked there against scikit-learn's spread), and DE is flagged again."""
    from dataclasses import replace

    from monitor_assets.segments.logic import write_segments
    from monitor_assets.storage.warehouse import connect

    config = multiclass_world["config"]
    on_f1 = replace(config, models=(replace(config.models[0], main_metric="f1_macro"),))
    with connect(None, config.lake_path, None) as con:
        baselines = {(m, k): v for m, k, v in con.execute(
            "SELECT model_id, metric, value FROM monitoring.reference_baselines").fetchall()}
        frame, failed = write_segments(con, on_f1, [DAYS[1].date()], baselines)
        write_segments(con, config, [DAYS[1].date()], baselines)  # as it was, for the other tests
    assert not failed and (frame.metric == "f1_macro").all() and (frame.value == frame.f1).all()
    assert frame.standard_error.between(0.01, 0.05).all() and frame.p_value.notna().all()
    assert list(frame[frame.below_floor].segment) == ["market=DE"]


# -- min_class_rows: a binary segment with a handful of positives is reported, not judged ------------------------

def _model(min_class_rows: int = 10) -> ModelConfig:
    return ModelConfig(id="churn", task="binary_classification", version="1", features=(), sensitive_attributes=(),
                       reference_path="", reference_fields={}, score_field="score", main_metric="roc_auc",
                       segments=SegmentsConfig(by=(("market",),), min_rows=100, min_class_rows=min_class_rows))


def _segment_rows(rng, market: str, n: int, positives: int) -> pd.DataFrame:
    """`n` labelled rows with `positives` positives scored below most negatives: an AUC far under 0.85 x 0.9."""
    label = np.r_[np.ones(positives), np.zeros(n - positives)]
    score = np.where(label == 1, rng.uniform(0.0, 0.5, n), rng.uniform(0.2, 1.0, n))
    return pd.DataFrame({"partition_date": "2025-06-01", "model_id": "churn", "segment_by": "market",
                         "segment": f"market={market}", "is_ok": True, "latency_ms": 1.0, "score": score,
                         "label": label, "threshold": 0.5, "task": "binary_classification"})


@pytest.fixture(scope="module")
def few_positives():
    rng = np.random.default_rng(3)
    rows = pd.concat([_segment_rows(rng, "DE", 300, 4), _segment_rows(rng, "FR", 300, 40)], ignore_index=True)
    day = duckdb.sql(performance_sql("SELECT * FROM rows", ["partition_date", "model_id", "segment_by", "segment"])
                     ).df().sort_values("segment", ignore_index=True)
    reference = pd.DataFrame({"segment_by": "market", "segment": ["market=DE", "market=FR"], "n": 2000,
                              "value": 0.9})
    return rows, day, reference


def test_a_segment_with_four_positives_is_not_judged_however_low_its_auc(few_positives):
    rows, day, reference = few_positives
    judged = judge(_model(), day, reference, None)
    out = judged.set_index("segment")
    for market in ("DE", "FR"):
        mine = rows[rows.segment == f"market={market}"]
        assert out.loc[f"market={market}", "roc_auc"] == pytest.approx(skm.roc_auc_score(mine.label, mine.score))
    de, fr = out.loc["market=DE"], out.loc["market=FR"]
    assert de.value < 0.5 * de.floor  # far below its floor, and still not judged: 4 positives < 10
    assert np.isnan(de.p_value) and np.isnan(de.standard_error) and not de.below_floor
    assert "min_class_rows (10)" in not_judged_reason(next(judged[judged.segment == "market=DE"].itertuples()),
                                                      _model())
    assert fr.value < fr.floor and fr.p_value < 0.001 and fr.below_floor  # 40 positives: judged, and flagged


def test_min_class_rows_is_the_knob(few_positives):
    _, day, reference = few_positives
    out = judge(_model(min_class_rows=4), day, reference, None).set_index("segment")
    assert out.loc["market=DE", "below_floor"] and out.loc["market=DE", "standard_error"] > 0
    out = judge(_model(min_class_rows=41), day, reference, None).set_index("segment")
    assert out.p_value.isna().all() and not out.below_floor.any()
