import datetime as dt
import json

import duckdb
import pandas as pd
import pytest

from monitor_assets import ingest
from monitor_assets.config import load_config
from monitor_assets.ingest import SourceError, ingest_day, model_feature_select
from monitor_assets.warehouse import ensure_schema

from .conftest import write

DAY = dt.date(2026, 3, 1)
CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
  - id: fraud
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric, "odd \\"name\\"; --": categorical}
"""


def good(i, **over):
    rec = {"timestamp": f"2026-03-01T10:00:{i:02d}Z", "prediction_id": f"p{i}", "model_id": "fraud",
           "model_version": "1", "latency_ms": 10.0 + i, "status": "ok", "score": 0.5,
           "features": {"amount": 12.5, "odd \"name\"; --": "x"}}
    rec.update(over)
    return json.dumps(rec)


@pytest.fixture
def con():
    c = duckdb.connect()
    ensure_schema(c)
    yield c
    c.close()


@pytest.mark.parametrize("blank_line, fast_min_bytes", [(True, 0), (False, 0), (False, 1 << 40)],
                         ids=["blank-line-falls-back", "fast-path", "careful-path"])
def test_every_line_is_loaded_or_quarantined_with_its_line_and_reason(tmp_path, con, blank_line, fast_min_bytes,
                                                                      monkeypatch):
    """The fast reader (DuckDB's JSON reader) and the careful one (line by line) give the same lines and
    reasons; a blank line shifts the fast reader's rows, so it falls back to the careful one."""
    monkeypatch.setattr(ingest, "FAST_PATH_MIN_BYTES", fast_min_bytes)
    lines = [
        good(1),                                         # 1 ok
        '{"prediction_id": "p2", "model_id": "fraud"',   # 2 malformed
        good(3, prediction_id=None),                     # 3 missing id
        good(4, score=1.5),                              # 4 out of range
        good(5, latency_ms="slow"),                      # 5 wrong type
        good(6).replace('"latency_ms": 16.0', '"latency_ms": NaN'),  # 6 NaN
        good(7, model_id="ghost"),                       # 7 unknown model
        good(1),                                         # 8 duplicate of line 1
        "" if blank_line else good(9, status=None),      # 9 blank, or ok with status missing
        good(10, status="error", score=None),            # 10 ok: an error is a valid outcome
        good(11, latency_ms=-3),                         # 11 negative latency
        good(12, score=None),                            # 12 served but no score
        good(13, features={"amount": "lots", "odd \"name\"; --": "y"}),  # 13 feature wrong type
        good(14).replace('"score": 0.5', '"score": -Infinity'),  # 14 infinity
    ]
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01.jsonl", "\n".join(lines) + "\n")
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (14, 2 + (not blank_line), 12 - (not blank_line))
    q = dict(con.execute("SELECT line_no, reason FROM raw.quarantine").fetchall())
    assert q[2] == "malformed JSON"
    assert q[3] == "missing required field: prediction_id"
    assert q[4].startswith("out of range: score=1.5")
    assert q[5] == "wrong type: latency_ms=slow is not a number"
    assert q[6].startswith("non-finite number")
    assert q[7] == "unknown model_id: ghost"
    assert q[8].startswith("duplicate prediction_id: first seen in") and q[8].endswith("line 1")
    assert q.get(9) == ("blank line" if blank_line else None)
    assert q[11].startswith("out of range: latency_ms=-3")
    assert q[12].startswith("missing required field: score")
    assert q[13] == "wrong type: features.amount=lots is not a number"
    assert q[14].startswith("non-finite number")
    raw2 = con.execute("SELECT raw_record FROM raw.quarantine WHERE line_no = 2").fetchone()[0]
    assert raw2 == lines[1]  # the raw text is kept as it was
    loaded = con.execute(f"""SELECT prediction_id, is_ok, score, {model_feature_select(config, 'fraud')}
                             FROM raw.predictions ORDER BY 1""").fetchall()
    expected = [("p1", True, 0.5, 12.5, "x"), ("p10", False, None, 12.5, "x")] + (
        [] if blank_line else [("p9", True, 0.5, 12.5, "x")])
    assert loaded == expected  # the quoted, semicolon name survives


def test_rerun_replaces_the_day_and_missing_file_is_recorded(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n" + good(2, score=7) + "\n")
    for _ in range(3):
        ingest_day(con, config, "predictions", DAY)
    assert con.execute("SELECT count(*) FROM raw.predictions").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM raw.quarantine").fetchone()[0] == 1
    empty = ingest_day(con, config, "predictions", DAY + dt.timedelta(days=1))
    assert (empty.read, empty.files) == (0, [])
    reason = con.execute("SELECT reason FROM raw.quarantine WHERE partition_date = ?",
                         [DAY + dt.timedelta(days=1)]).fetchone()[0]
    assert reason.startswith("no input file: nothing matched") and reason.endswith("2026-03-02.jsonl")


def test_labels_for_unknown_predictions_and_bad_classes_are_quarantined(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n" + good(2) + "\n")
    ingest_day(con, config, "predictions", DAY)
    write(tmp_path / "labels" / "2026-03-01.csv",
          "prediction_id,label\np1,1\np2,3\nzz,0\np1,0\n,1\np2,yes\n")
    result = ingest_day(con, config, "labels", DAY)
    assert (result.read, result.loaded, result.quarantined) == (6, 1, 5)
    q = dict(con.execute("SELECT line_no, reason FROM raw.quarantine WHERE source = 'labels'").fetchall())
    assert q[3].startswith("out of range: label=3.0 for classifier fraud")
    assert q[4] == "label for unknown prediction: zz"
    assert q[5].startswith("duplicate prediction_id: first seen in") and q[5].endswith("line 2")
    assert q[6] == "missing required field: prediction_id"
    assert q[7] == "wrong type: label=yes is not a number"


def test_parquet_source_with_mapped_columns(tmp_path, con):
    text = CONFIG.replace('path: "logs/{date}.jsonl"',
                          'path: "logs/{date:%Y%m%d}.parquet", fields: {prediction_id: id, score: p, timestamp: t}')
    config = load_config(write(tmp_path / "m.yaml", text))
    frame = pd.DataFrame({"id": ["a", "b", "c"], "t": pd.to_datetime(["2026-03-01 01:00"] * 3),
                          "model_id": "fraud", "model_version": "1", "latency_ms": [1.0, 2.0, 3.0],
                          "status": "ok", "p": [0.1, 0.2, 2.0], "amount": [1.0, 2.0, 3.0],
                          'odd "name"; --': ["u", "v", "w"]})
    (tmp_path / "logs").mkdir()
    frame.to_parquet(tmp_path / "logs" / "20260301.parquet")
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (3, 2, 1)
    assert con.execute("SELECT line_no FROM raw.quarantine").fetchone()[0] == 3


def test_missing_mapped_column_names_the_file(tmp_path, con):
    text = CONFIG.replace('path: "logs/{date}.jsonl"', 'path: "logs/{date}.csv", fields: {score: nope}')
    config = load_config(write(tmp_path / "m.yaml", text))
    write(tmp_path / "logs" / "2026-03-01.csv", "prediction_id,score\np1,0.3\n")
    with pytest.raises(SourceError, match="2026-03-01.csv.*cannot read the configured columns"):
        ingest_day(con, config, "predictions", DAY)


def test_reference_missing_a_configured_feature_is_a_clear_error(tmp_path):
    from monitor_assets.analysis import profile_model

    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    pd.DataFrame({"amount": [1.0, 2.0], "score": [0.1, 0.9], "label": [0, 1]}).to_parquet(tmp_path / "ref.parquet")
    with pytest.raises(ValueError, match="model fraud: reference file .*ref.parquet lacks a configured column"):
        profile_model(duckdb.connect(), config.models[0])


def test_quality_frame_quotes_feature_columns_from_config(tmp_path, con):
    from monitor_assets.quality import predictions_frame

    text = CONFIG.replace('"odd \\"name\\"; --": categorical',
                          '"odd \\"name\\"; --": {type: categorical, allowed_values: [x, y]}')
    config = load_config(write(tmp_path / "m.yaml", text))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n")
    ingest_day(con, config, "predictions", DAY)
    frame = predictions_frame(con, config, DAY)
    assert frame['features.odd "name"; --'].tolist() == ["x"]
