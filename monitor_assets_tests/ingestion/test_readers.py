import datetime as dt
import gzip
import json

import duckdb
import pandas as pd
import pytest

from monitor_assets.config import load_config
from monitor_assets.ingestion import formats as ingest
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.reads import model_feature_select
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import write

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
    rec = {"timestamp": f"2026-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "prediction_id": f"p{i}", "model_id": "fraud",
           "model_version": "1", "latency_ms": 10.0 + i, "status": "ok", "score": 0.5,
           "features": {"amount": 12.5, "odd \"name\"; --": "x"}}
    rec.update(over)
    return json.dumps(rec)


@pytest.fixture
def con(tmp_path):
    with connect(str(tmp_path / "warehouse" / "w.duckdb")) as c:
        yield c


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
    q = dict(con.execute("SELECT line_no, detail FROM raw.quarantine").fetchall())
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
                             FROM raw.predictions__fraud ORDER BY 1""").fetchall()
    expected = [("p1", True, 0.5, 12.5, "x"), ("p10", False, None, 12.5, "x")] + (
        [] if blank_line else [("p9", True, 0.5, 12.5, "x")])
    assert loaded == expected  # the quoted, semicolon name survives


def test_rerun_replaces_the_day_and_missing_file_is_recorded(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG.replace('.jsonl"}', '.jsonl", allow_empty: true}')))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n" + good(2, score=7) + "\n")
    for _ in range(3):
        ingest_day(con, config, "predictions", DAY)
    assert con.execute("SELECT count(*) FROM raw.predictions").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM raw.quarantine").fetchone()[0] == 1
    # allow_empty: a day without a file is an empty day, noted (without it, see test_hostile_inputs).
    empty = ingest_day(con, config, "predictions", DAY + dt.timedelta(days=1))
    assert (empty.read, empty.files) == (0, [])
    reason, detail = con.execute("SELECT reason, detail FROM raw.quarantine WHERE partition_date = ?",
                                 [DAY + dt.timedelta(days=1)]).fetchone()
    assert reason == "no_file"
    assert detail.startswith("no input file: nothing matched") and detail.endswith("2026-03-02.jsonl")


def test_bad_labels_are_quarantined_and_a_label_before_its_prediction_is_kept(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n" + good(2) + "\n")
    ingest_day(con, config, "predictions", DAY)
    write(tmp_path / "labels" / "2026-03-01.csv",
          "prediction_id,label\np1,1\np2,3\np9,0\np1,0\n,1\np2,yes\n")
    result = ingest_day(con, config, "labels", DAY)
    assert (result.read, result.loaded, result.quarantined) == (6, 2, 4)
    q = dict(con.execute("SELECT line_no, detail FROM raw.quarantine WHERE source = 'labels'").fetchall())
    assert q[3].startswith("out of range: label=3.0 for classifier fraud")
    assert 4 not in q  # p9's prediction has not arrived yet: kept, unmatched
    assert con.execute("SELECT model_id, prediction_date FROM raw.labels WHERE prediction_id = 'p9'").fetchall() == [
        (None, None)]
    # p9 arrives the next day and its early label is matched: the day's metrics see it as labelled.
    write(tmp_path / "logs" / "2026-03-02.jsonl", good(9).replace("2026-03-01T", "2026-03-02T") + "\n")
    assert ingest_day(con, config, "predictions", DAY + dt.timedelta(days=1)).loaded == 1
    assert con.execute("""SELECT l.label FROM raw.predictions p JOIN raw.labels l USING (prediction_id)
                          WHERE p.partition_date = ?""", [DAY + dt.timedelta(days=1)]).fetchall() == [(0.0,)]
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


def test_missing_mapped_column_loads_null_and_notes_the_file(tmp_path, con):
    """As a JSON key a record lacks: the column is NULL (a required one quarantines the record), and the
    file gets a note naming it and the columns it lacks."""
    text = CONFIG.replace('path: "logs/{date}.jsonl"', 'path: "logs/{date}.csv", fields: {score: nope}')
    config = load_config(write(tmp_path / "m.yaml", text))
    write(tmp_path / "logs" / "2026-03-01.csv", "prediction_id,score,model_id,timestamp\np1,0.3,fraud,2026-03-01T01:00Z\n")
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (1, 0, 1)
    rows = con.execute("SELECT line_no, reason, detail FROM raw.quarantine ORDER BY line_no NULLS FIRST").fetchall()
    assert rows[0][:2] == (None, "missing_column")
    assert rows[0][2] == ('missing column: no nope, amount, odd "name"; -- among prediction_id, score, model_id, '
                          "timestamp; loaded as NULL")
    assert rows[1] == (2, "missing_field", "missing required field: nope (status is ok)")
    assert result.notes == [f"missing_column: {rows[0][2]}"]


def test_reference_missing_a_configured_feature_is_a_clear_error(tmp_path):
    from monitor_assets.analysis.logic import profile_model

    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    pd.DataFrame({"amount": [1.0, 2.0] * 100, "score": [0.1, 0.9] * 100, "label": [0, 1] * 100}).to_parquet(
        tmp_path / "ref.parquet")  # big enough to be a baseline, without the categorical feature
    with pytest.raises(ValueError, match=r"model fraud: reference .*ref.parquet lacks a configured column.*odd"):
        profile_model(duckdb.connect(), config.models[0])


def test_quality_frame_quotes_feature_columns_from_config(tmp_path, con):
    from monitor_assets.ingestion.quality import predictions_frame

    text = CONFIG.replace('"odd \\"name\\"; --": categorical',
                          '"odd \\"name\\"; --": {type: categorical, allowed_values: [x, y]}')
    config = load_config(write(tmp_path / "m.yaml", text))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n")
    ingest_day(con, config, "predictions", DAY)
    frame = predictions_frame(con, config, [(DAY, config.models[0])])
    assert frame['fraud / features.odd "name"; --'].tolist() == ["x"]


# --------------------------------------------------------------------------------------------
# One reader, one truth: every bad input goes through both JSON readers with the same outcome.

ANY_LOG = CONFIG.replace('path: "logs/{date}.jsonl"', 'path: "logs/{date}*", format: jsonl')


def ingest_both(tmp_path, monkeypatch, name: str, data: bytes, config_text: str = ANY_LOG,
                source: str = "predictions", fast: bool = True, time_zone: str = "UTC"):
    """Ingest one file of DAY with the fast reader forced (every file counts as big) and with the
    careful one (no file does); both must load the same rows and quarantine the same (line, reason)
    pairs, with read = loaded + quarantined. `fast` says whether the fast reader keeps the file or
    hands it to the careful one. Returns the result, the loaded rows and the quarantine of one run."""
    config = load_config(write(tmp_path / "m.yaml", config_text))
    path = tmp_path / ("logs" if source == "predictions" else "labels") / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    kept_by_fast = []
    fast_reader = ingest._load_json_fast

    def spy(*args):
        kept_by_fast.append(fast_reader(*args))
        return kept_by_fast[-1]

    monkeypatch.setattr(ingest, "_load_json_fast", spy)
    runs = []
    for min_bytes in (0, 1 << 40):
        monkeypatch.setattr(ingest, "FAST_PATH_MIN_BYTES", min_bytes)
        with connect(str(tmp_path / f"w{min_bytes}" / "w.duckdb")) as c:
            c.execute(f"SET TimeZone = '{time_zone}'")
            if source == "labels":  # labels must name logged predictions
                ingest_day(c, config, "predictions", DAY)
            result = ingest_day(c, config, source, DAY)
            assert result.read == result.loaded + result.quarantined
            rows = sorted(c.execute(f"SELECT * EXCLUDE (source_file) FROM raw.{source}").fetchall(), key=str)
            quarantine = sorted(c.execute("SELECT line_no, detail, raw_record FROM raw.quarantine "
                                          "WHERE source = ?", [source]).fetchall(), key=str)
            runs.append((result, rows, quarantine))
    (fast_result, *fast_run), (careful_result, *careful_run) = runs
    assert fast_run == careful_run
    assert (fast_result.read, fast_result.loaded, fast_result.reasons) == (
        careful_result.read, careful_result.loaded, careful_result.reasons)
    if source == "predictions":
        assert kept_by_fast == [fast], "the fast reader should have " + ("kept the file" if fast else "handed it over")
    return runs[1]


def lines_of(*lines: str | bytes) -> bytes:
    return b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)


def reasons_by_line(quarantine) -> dict:
    return {line: reason for line, reason, _ in quarantine}


def test_bom_before_the_first_line_is_not_part_of_it(tmp_path, monkeypatch):
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           b"\xef\xbb\xbf" + lines_of(good(1), good(2)))
    assert (result.loaded, quarantine) == (2, [])


def test_naive_timestamps_are_utc_whatever_the_session_time_zone(tmp_path, monkeypatch):
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           lines_of(good(1, timestamp="2026-03-01T10:00:00")), time_zone="Asia/Tokyo")
    assert rows[0][3] == dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


def test_invalid_utf8_is_quarantined_on_its_line(tmp_path, monkeypatch):
    bad = good(2, message="caf\u00e9").encode().replace(b"\\u00e9", b"\xe9")  # latin-1, not UTF-8
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           lines_of(good(1), bad, good(3, message="caf\u00e9")))
    assert result.loaded == 2 and reasons_by_line(quarantine) == {2: "invalid UTF-8"}
    assert quarantine[0][2] == bad.decode("utf-8", "replace")  # readable, the bad byte shown as U+FFFD


def test_booleans_where_numbers_go_are_the_wrong_type(tmp_path, monkeypatch):
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl", lines_of(
        good(1, latency_ms=True),
        good(2, score=False),
        good(3, latency_ms=1, cached=True),  # a real 1 beside a boolean elsewhere: loaded
        good(4, latency_ms=0.0, score=1.0),  # real 0 and 1: loaded
        good(5, features={"amount": True, 'odd "name"; --': True}),  # a category may be a boolean
    ))
    assert reasons_by_line(quarantine) == {1: "wrong type: latency_ms=true is not a number",
                                           2: "wrong type: score=false is not a number",
                                           5: "wrong type: features.amount=true is not a number"}
    assert sorted((r[2], r[5]) for r in rows) == [("p3", 1.0), ("p4", 0.0)]


def test_a_line_over_2_mb_is_quarantined_and_the_day_loads(tmp_path, monkeypatch):
    long_line = good(1, message="x" * ingest.MAX_LINE_BYTES)
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           lines_of(long_line, good(2)))
    assert result.loaded == 1 and quarantine[0][:2] == (
        1, f"line too long: {len(long_line):,} bytes, the limit is {ingest.MAX_LINE_BYTES:,}")
    assert len(quarantine[0][2]) < 5000  # only the start of it is kept


@pytest.mark.parametrize("shape", ["one line", "indented"])
def test_a_json_array_file_gets_one_clear_reason(tmp_path, monkeypatch, shape):
    records = [json.loads(good(i)) for i in (1, 2)]
    text = json.dumps(records, indent=2 if shape == "indented" else None) + "\n"
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl", text.encode(), fast=False)
    assert result.loaded == 0 and result.read == text.count("\n")
    assert set(reasons_by_line(quarantine).values()) == {ingest.JSON_ARRAY}


def test_a_lone_array_or_scalar_line_is_not_a_record(tmp_path, monkeypatch):
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           lines_of(good(1), f"[{good(2)}]", '"p3"', good(4)))
    assert reasons_by_line(quarantine) == {2: ingest.JSON_ARRAY, 3: ingest.NOT_AN_OBJECT}


def test_a_truncated_gzip_loads_what_precedes_the_damage(tmp_path, monkeypatch):
    whole = gzip.compress(lines_of(*(good(i, prediction_id=f"p{i}") for i in range(3000))))
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl.gz",
                                           whole[: len(whole) // 2], fast=False)
    assert 0 < result.loaded < 3000 and result.read == result.loaded + 1
    file_rows = [r for r in quarantine if r[0] is None]
    assert len(file_rows) == 1 and file_rows[0][1].startswith("truncated gzip")
    cut = [r for r in quarantine if r[0] is not None]
    assert cut[0][0] == result.read and cut[0][1].endswith("the file ends inside this line")
    assert sorted(r[2] for r in rows) == sorted(f"p{i}" for i in range(result.loaded))  # every line before the cut


def test_ragged_and_undecodable_csv_rows_are_quarantined_on_their_line(tmp_path, monkeypatch):
    preds = tmp_path / "logs" / "2026-03-01.jsonl"
    write(preds, "\n".join(good(i) for i in range(1, 6)) + "\n")
    labels = b"prediction_id,label\np1,1\np2,0,9\np3\np4,1\np\xe95,1\np5,0\n"
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.csv", labels,
                                           config_text=CONFIG, source="labels")
    assert (result.read, result.loaded) == (6, 3)
    assert reasons_by_line(quarantine) == {3: "wrong number of fields: expected 2, found 3",
                                           4: "wrong number of fields: expected 2, found 1",
                                           6: "invalid UTF-8"}
    assert sorted((r[2], r[5]) for r in rows) == [("p1", 2), ("p4", 5), ("p5", 7)]  # the lines they are on


def test_a_csv_line_over_2_mb_is_quarantined(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    rows = [f"p{i},1" for i in range(25_000)]
    rows[24_000] = "p24000," + "1" * (3 << 20)  # past the rows DuckDB samples to sniff the dialect
    write(tmp_path / "labels" / "2026-03-01.csv", "prediction_id,label\n" + "\n".join(rows) + "\n")
    result = ingest_day(con, config, "labels", DAY)
    assert result.read == result.loaded + result.quarantined == 25_000
    reason = con.execute("SELECT detail FROM raw.quarantine WHERE line_no = 24002").fetchone()[0]
    assert reason == f"line too long: {len(rows[24_000]):,} bytes, the limit is {ingest.MAX_LINE_BYTES:,}"


def test_a_truncated_csv_gzip_loads_the_lines_before_the_damage(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG.replace("labels/{date}.csv", "labels/{date}.csv.gz")))
    write(tmp_path / "logs" / "2026-03-01.jsonl", "\n".join(good(i) for i in range(400)) + "\n")
    ingest_day(con, config, "predictions", DAY)
    whole = gzip.compress(("prediction_id,label\n" + "".join(f"p{i},{i % 2}\n" for i in range(400))).encode())
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "2026-03-01.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    result = ingest_day(con, config, "labels", DAY)
    assert 0 < result.loaded < 400 and result.read == result.loaded + result.quarantined
    reasons = [r for (r,) in con.execute("SELECT detail FROM raw.quarantine WHERE source = 'labels'").fetchall()]
    assert all(r.startswith("truncated gzip") for r in reasons) and len(reasons) in (1, 2)


# --------------------------------------------------------------------------------------------
# Inputs as users have them.


def test_optional_fields_load_as_null_when_unmapped_or_absent(tmp_path, monkeypatch):
    unmapped = ANY_LOG.replace("format: jsonl", "format: jsonl, fields: {model_version: null, latency_ms: null, "
                                                "status: null}")
    bare = [{k: v for k, v in json.loads(good(i, status="error")).items()
             if k not in ("model_version", "latency_ms")} for i in (1, 2)]
    result, rows, quarantine = ingest_both(tmp_path, monkeypatch, "2026-03-01.jsonl",
                                           lines_of(*map(json.dumps, bare)), config_text=unmapped)
    assert result.loaded == 2 and all(r[4:8] == (None, None, None, True) for r in rows)
    # A CSV without the columns at all, not mapped either.
    csv = CONFIG.replace('path: "logs/{date}.jsonl"', 'path: "logs/{date}.csv"')
    config = load_config(write(tmp_path / "csv.yaml", csv))
    write(tmp_path / "logs" / "2026-03-01.csv", "prediction_id,model_id,timestamp,score,amount,\"odd \"\"name\"\"; --\"\n"
                                                "p1,fraud,2026-03-01T10:00:00Z,0.4,3.5,x\n")
    with connect(str(tmp_path / "csv" / "w.duckdb")) as c:
        assert ingest_day(c, config, "predictions", DAY).loaded == 1
        assert c.execute("SELECT model_version, latency_ms, status, is_ok FROM raw.predictions").fetchall() == [
            (None, None, None, True)]


def test_only_optional_fields_may_be_mapped_to_null(tmp_path):
    from monitor_assets.config import ConfigError

    text = ANY_LOG.replace("format: jsonl", "format: jsonl, fields: {score: null}")
    with pytest.raises(ConfigError, match="fields.score: expected a column or field name"):
        load_config(write(tmp_path / "m.yaml", text))


def test_a_prediction_id_seen_on_an_earlier_day_is_a_duplicate(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    day2 = DAY + dt.timedelta(days=1)
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1) + "\n" + good(2) + "\n")
    write(tmp_path / "logs" / "2026-03-02.jsonl", good(2) + "\n" + good(3) + "\n" + good(3) + "\n")
    ingest_day(con, config, "predictions", DAY)
    for _ in range(2):  # a re-run does not take the day's own rows for earlier ones
        result = ingest_day(con, config, "predictions", day2)
        assert (result.read, result.loaded, result.quarantined) == (3, 1, 2)
        q = dict(con.execute("SELECT line_no, detail FROM raw.quarantine WHERE partition_date = ?", [day2]).fetchall())
        assert q[1] == "duplicate prediction_id: first seen on 2026-03-01"
        assert q[3].startswith("duplicate prediction_id: first seen in")
    assert ingest_day(con, config, "predictions", DAY).loaded == 2  # the first day keeps its rows


def test_a_corrected_label_replaces_the_old_one_and_is_counted(tmp_path, con):
    from monitor_assets.metrics.logic import performance_statement as _performance_statement

    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01.jsonl", good(1, score=0.9) + "\n" + good(2, score=0.9) + "\n")
    ingest_day(con, config, "predictions", DAY)
    corrections = []
    for offset, text in ((1, "p1,0\np2,1\n"), (2, "p1,1\np2,1\n"), (3, "p1,1\n")):
        write(tmp_path / "labels" / f"{DAY + dt.timedelta(days=offset)}.csv", "prediction_id,label\n" + text)
        corrections.append(ingest_day(con, config, "labels", DAY + dt.timedelta(days=offset)).labels_corrected)
    assert corrections == [0, 1, 0]  # p1 changed once; a label sent again unchanged is no correction
    con.execute("CREATE OR REPLACE TEMP TABLE _days AS SELECT DATE '2026-03-01' AS d")
    sql, params = _performance_statement(con, config)
    cursor = con.execute(sql, params)
    row = dict(zip([d[0] for d in cursor.description], cursor.fetchone(), strict=True))
    assert row["positive_rate"] == 1.0  # both labels are 1 now: the newest label counts


@pytest.mark.parametrize("fast_min_bytes", [0, 1 << 40], ids=["fast-path", "careful-path"])
def test_a_file_spanning_days_is_split_by_timestamp_in_the_configured_time_zone(tmp_path, monkeypatch, fast_min_bytes):
    monkeypatch.setattr(ingest, "FAST_PATH_MIN_BYTES", fast_min_bytes)
    text = CONFIG.replace('predictions: {path: "logs/{date}.jsonl"}',
                          'predictions: {path: "logs/all.jsonl", timezone: Europe/Berlin}')
    config = load_config(write(tmp_path / "m.yaml", text))
    stamps = ["2026-03-01T08:00:00Z", "2026-03-01T22:59:00Z",  # Berlin: 09:00 and 23:59 on 03-01
              "2026-03-01T23:30:00Z", "2026-03-02T12:00:00+01:00",  # Berlin: 00:30 and 12:00 on 03-02
              "2026-03-03T05:00:00Z"]
    lines = [good(i, timestamp=ts) for i, ts in enumerate(stamps)]
    lines += ["{not json",  # no readable timestamp: the first day the file covers
              good(9, timestamp="2026-03-02T10:00:00Z", score=7.5),  # bad on its own day
              good(10, timestamp="yesterday")]  # unreadable timestamp: the first day
    write(tmp_path / "logs" / "all.jsonl", "\n".join(lines) + "\n")
    days = [DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2), DAY + dt.timedelta(days=3)]
    with connect(str(tmp_path / "w.duckdb")) as con:
        results = [ingest_day(con, config, "predictions", d) for d in days]
        assert [(r.read, r.loaded, r.quarantined) for r in results] == [(4, 2, 2), (3, 2, 1), (1, 1, 0), (0, 0, 0)]
        assert sum(r.read for r in results) == len(lines)  # every line counted once, on one day
        loaded = con.execute("SELECT partition_date::VARCHAR, prediction_id FROM raw.predictions "
                             "ORDER BY 1, 2").fetchall()
        assert loaded == [("2026-03-01", "p0"), ("2026-03-01", "p1"), ("2026-03-02", "p2"), ("2026-03-02", "p3"),
                          ("2026-03-03", "p4")]
        quarantined = con.execute("SELECT partition_date::VARCHAR, line_no FROM raw.quarantine "
                                  "WHERE line_no IS NOT NULL ORDER BY 2").fetchall()
        assert quarantined == [("2026-03-01", 6), ("2026-03-02", 7), ("2026-03-01", 8)]
        # A re-run of a day replaces it alone.
        again = ingest_day(con, config, "predictions", days[1])
        assert (again.read, again.loaded, again.quarantined) == (3, 2, 1)
        assert con.execute("SELECT count(*) FROM raw.predictions").fetchall()[0][0] == 5


def test_a_bad_time_zone_and_a_label_file_without_date_are_refused_at_load(tmp_path):
    from monitor_assets.config import ConfigError

    text = CONFIG.replace('predictions: {path: "logs/{date}.jsonl"}', 'predictions: {path: "logs/all.jsonl", timezone: Mars/Olympus}')
    with pytest.raises(ConfigError, match=r"sources.predictions.timezone: unknown time zone 'Mars/Olympus'"):
        load_config(write(tmp_path / "m.yaml", text))
    text = CONFIG.replace('labels: {path: "labels/{date}.csv"}', 'labels: {path: "labels/all.csv"}')
    with pytest.raises(ConfigError, match=r"sources.labels.path: .*labels have no timestamp"):
        load_config(write(tmp_path / "m.yaml", text))


def test_a_big_file_read_in_parallel_keeps_every_line_number_and_reason(tmp_path, con, monkeypatch):
    """DuckDB reads a big file in parallel and its result comes back reordered: every row must still
    carry its own line, and each bad line be quarantined at that line for its own reason (a file of
    about 45 MB came back shuffled when rows were numbered by their place in the result)."""
    kept_by_fast = []
    fast_reader = ingest._load_json_fast
    monkeypatch.setattr(ingest, "_load_json_fast", lambda *a: kept_by_fast.append(fast_reader(*a)) or kept_by_fast[-1])
    pad = "x" * 1800  # fewer, longer lines: the size makes the reader go parallel, not the count
    bad = {}
    with open(tmp_path / "big.jsonl", "w") as f:
        for i in range(1, 25_001):
            line = good(i, message=pad)
            if i % 97 == 0:
                kind = (i // 97) % 4
                line, bad[i] = [(line[:40], "malformed JSON"),
                                (good(i, message=pad, score=1.5), "out of range: score=1.5"),
                                (good(i, message=pad, prediction_id=None), "missing required field: prediction_id"),
                                (good(i, message=pad, latency_ms=True), "wrong type: latency_ms=true is not a number"),
                                ][kind]
            f.write(line + "\n")
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    (tmp_path / "logs").mkdir()
    (tmp_path / "big.jsonl").rename(tmp_path / "logs" / "2026-03-01.jsonl")
    assert (tmp_path / "logs" / "2026-03-01.jsonl").stat().st_size > 40e6
    result = ingest_day(con, config, "predictions", DAY)
    assert kept_by_fast == [True]  # the parallel reader kept the file
    assert (result.read, result.quarantined) == (25_000, len(bad))
    wrong = con.execute("SELECT count(*) FROM raw.predictions WHERE prediction_id <> 'p' || line_no").fetchone()[0]
    assert wrong == 0 and con.execute("SELECT count(*) FROM raw.predictions").fetchone()[0] == 25_000 - len(bad)
    quarantined = dict(con.execute("SELECT line_no, detail FROM raw.quarantine").fetchall())
    assert sorted(quarantined) == sorted(bad)
    assert all(quarantined[i].startswith(reason) for i, reason in bad.items()), \
        [(i, quarantined[i], reason) for i, reason in bad.items() if not quarantined[i].startswith(reason)][:3]
