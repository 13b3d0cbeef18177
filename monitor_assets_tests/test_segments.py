"""Segments end to end: one market's mobile traffic degrades while the whole model stays within its threshold;
the segment check fails on those days only and names the market and device; figures equal scikit-learn's on the
segment's rows; history keeps them; config mistakes get one line."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from monitor_assets.config import ConfigError, load_config
from monitor_assets.constants import PERFORMANCE_CHECK, SEGMENT_PERFORMANCE_CHECK
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.conftest import CSV_WORLD, run_job, write

DAYS = pd.date_range("2025-03-01", periods=6, freq="D")
INCIDENT = 4  # from the fifth day DE mobile traffic gets the wrong answer half the time
MARKETS, MARKET_P = ["DE", "FR", "UK"], [0.2, 0.4, 0.4]
DEVICES, DEVICE_P = ["mobile", "desktop"], [0.4, 0.6]

CONFIG = """
partitions: {{start_date: 2025-03-01, end_date: 2025-03-06}}
label_delay_days: 1
""" + CSV_WORLD + """models:
  - id: checkout
    task: binary_classification
    main_metric: accuracy
    reference: ref.parquet
    reference_fields: {{score: proba}}
    features: {{x: numeric}}
    segments: {segments}
"""


def _rows(rng, n, broken=False):
    x = rng.normal(0, 2.0, n)
    p = 1 / (1 + np.exp(-(2.0 * x + 0.3)))
    market = rng.choice(MARKETS, n, p=MARKET_P)
    device = rng.choice(DEVICES, n, p=DEVICE_P)
    y = (rng.random(n) < p).astype(int)
    if broken:
        hit = (market == "DE") & (device == "mobile") & (rng.random(n) < 0.5)
        p = np.where(hit, 1 - p, p)  # half of DE mobile scored upside down
    return pd.DataFrame({"x": x, "proba": p, "market": market, "device": device}), y


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segments")
    rng = np.random.default_rng(21)
    ref, y = _rows(rng, 6000)
    ref.assign(label=y).to_parquet(tmp / "ref.parquet")
    days = {}
    for i, day in enumerate(DAYS):
        frame, y = _rows(rng, 3000, broken=i >= INCIDENT)
        frame = frame.assign(request_id=[f"r{i}-{k}" for k in range(len(frame))], ts=f"{day:%Y-%m-%d} 10:00", y=y)
        frame.drop(columns="y").to_csv(write(tmp / "export" / f"{day:%Y-%m-%d}" / "checkout.csv", ""), index=False)
        frame[["request_id", "y"]].to_csv(write(tmp / "truth" / f"{day:%Y-%m-%d}.csv", ""), index=False)
        days[day.date()] = frame
    config = load_config(write(tmp / "monitor.yaml",
                               CONFIG.format(tmp=tmp, segments="[market, device, [market, device]]")))
    assert run_job(config, "2025-03-01", "2025-03-06").success
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        segments = con.execute("SELECT * FROM monitoring.segment_performance ORDER BY ALL").df()
        alerts = con.execute("SELECT * FROM monitoring.alerts").df()
        history = con.execute("""SELECT * FROM monitoring.history WHERE metric LIKE 'segment.%'""").df()
    return {"tmp": tmp, "days": days, "segments": segments, "alerts": alerts, "history": history}


def test_each_segment_equals_scikit_learn_on_its_rows(world):
    seg = world["segments"]
    assert set(seg.segment_by) == {"market", "device", "market,device"}
    for day, frame in world["days"].items():
        for segment, rows in [("market=FR", frame[frame.market == "FR"]),
                              ("market=DE, device=mobile", frame[(frame.market == "DE") & (frame.device == "mobile")])]:
            r = seg[(pd.to_datetime(seg.partition_date).dt.date == day) & (seg.segment == segment)].iloc[0]
            predicted = (rows.proba >= 0.5).astype(int)
            assert r.n_labelled == len(rows)
            assert r.accuracy == pytest.approx(skm.accuracy_score(rows.y, predicted))
            assert r.roc_auc == pytest.approx(skm.roc_auc_score(rows.y, rows.proba))
            assert r.value == r.accuracy and r.metric == "accuracy"


def test_the_broken_segment_alone_fails_on_its_days_and_is_named(world):
    alerts = world["alerts"]
    segment_alerts = alerts[alerts.check_name == SEGMENT_PERFORMANCE_CHECK]
    assert {pd.Timestamp(d).date() for d in segment_alerts.partition_date} == {d.date() for d in DAYS[INCIDENT:]}
    assert segment_alerts.message.str.contains("market=DE, device=mobile").all()
    # the whole model stays within its threshold: no performance alert hides or reveals it
    assert not (alerts.check_name == PERFORMANCE_CHECK).any()
    seg = world["segments"]
    flagged = seg[seg.below_floor.fillna(False).astype(bool)]
    assert set(flagged.segment) <= {"market=DE, device=mobile", "market=DE", "device=mobile"}
    assert (pd.to_datetime(flagged.partition_date).dt.date >= DAYS[INCIDENT].date()).all()
    assert (seg.reference_source == "segment").all()


def test_history_keeps_the_segments(world):
    history = world["history"]
    de_mobile = history[(history.segment == "market=DE, device=mobile") & (history.metric == "segment.accuracy")]
    assert len(de_mobile) == len(DAYS)
    seg = world["segments"]
    mine = seg[seg.segment == "market=DE, device=mobile"]
    expected = mine.set_index(pd.to_datetime(mine.partition_date).dt.date)
    for r in de_mobile.itertuples():
        assert r.value == pytest.approx(expected.loc[pd.Timestamp(r.partition_date).date(), "accuracy"])


@pytest.mark.parametrize("segments, message", [
    ("[market, [market, market]]", "distinct names"),
    ("[x]", "x is a numeric feature"),
    ("{by: [market], min_rows: 0}", "min_rows"),
    ("{by: [market], min_class_rows: 0}", "min_class_rows"),
    ("{by: [market], min_class_rows: true}", "min_class_rows"),
    ("{by: [market], colour: 1}", "colour"),
    ("{by: [market], columns: {device: {}}}", "declared but not used"),
])
def test_config_mistakes_get_one_line(world, segments, message):
    path = write(world["tmp"] / "bad.yaml", CONFIG.format(tmp=world["tmp"], segments=segments))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value) and "segments" in str(info.value)


def test_min_class_rows_defaults_to_ten_and_is_read(world):
    config = load_config(world["tmp"] / "monitor.yaml")
    assert config.models[0].segments.min_class_rows == 10
    path = write(world["tmp"] / "classes.yaml", CONFIG.format(tmp=world["tmp"],
                                                              segments="{by: [market], min_class_rows: 25}"))
    assert load_config(path).models[0].segments.min_class_rows == 25


def test_one_models_unreadable_reference_stops_only_its_segments(world, tmp_path):
    """A model whose reference is not a Parquet file: its segments are skipped with why, and nothing of it is
    replaced; with its reference readable again the same day is computed (11 segments)."""
    from dataclasses import replace

    from monitor_assets.segments.logic import write_segments
    from monitor_assets.storage.warehouse import connect

    config = load_config(world["tmp"] / "monitor.yaml")
    (tmp_path / "broken.parquet").write_text("not parquet")
    broken = replace(config, models=(replace(config.models[0], reference_path=str(tmp_path / "broken.parquet")),))
    with connect(None, config.lake_path, None) as con:
        frame, failed = write_segments(con, broken, [DAYS[0].date()], {})
        assert list(failed) == ["checkout"] and "parquet" in failed["checkout"].lower() and frame.empty
        frame, failed = write_segments(con, config, [DAYS[0].date()], {})
    assert not failed and set(frame.model_id) == {"checkout"} and len(frame) == 11
