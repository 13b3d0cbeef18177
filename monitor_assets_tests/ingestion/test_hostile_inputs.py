"""Hostile or broken inputs: one model's bad file, value or schema stays that model-day's; nothing is lost,
nothing is silent, and `raw.quarantine.reason` is one of the documented categories."""

import datetime as dt
import gzip
import json
import os
import subprocess
import sys

import dagster as dg
import pandas as pd
import pytest

from monitor_assets.config import load_config
from monitor_assets.constants import QUALITY_CHECK
from monitor_assets.ingestion import fields
from monitor_assets.ingestion import formats as ingest
from monitor_assets.ingestion.defs import build_ingestion_assets, build_quality_checks
from monitor_assets.ingestion.fields import REASONS
from monitor_assets.ingestion.readers import MissingInput, ingest_day
from monitor_assets.preflight import PREFLIGHT_TAG
from monitor_assets.storage.resource import WarehouseResource
from monitor_assets.storage.warehouse import connect, open_warehouse
from monitor_assets_tests.conftest import write

DAY = dt.date(2026, 3, 1)
CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}/{model}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
  - {id: fraud, task: binary_classification, reference: ref.parquet, features: {amount: numeric}}
  - {id: churn, task: binary_classification, reference: ref.parquet, features: {amount: numeric}}
"""


def rec(model: str, i: int, **over) -> dict:
    r = {"timestamp": f"2026-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "prediction_id": f"{model}-{i}",
         "model_id": model, "status": "ok", "score": 0.5, "features": {"amount": float(i)}}
    return {**r, **over}


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def setup(tmp_path, n: int = 50, config: str = CONFIG, fmt: str = "jsonl"):
    folder = tmp_path / "cfg"
    config = load_config(write(folder / "m.yaml", config))
    if fmt == "jsonl":  # churn's file is good in every test: it must load whole
        write(folder / "logs" / "2026-03-01" / "churn.jsonl", lines(*(rec("churn", i) for i in range(n))))
    return folder, config


@pytest.fixture
def con(tmp_path):
    with connect(str(tmp_path / "warehouse" / "w.duckdb")) as c:
        yield c


def quarantine(con) -> list[tuple]:
    return con.execute("SELECT model_id, line_no, reason, detail, raw_record FROM raw.quarantine "
                       "ORDER BY model_id, line_no NULLS FIRST").fetchall()


def assert_churn_whole(con, n: int = 50) -> None:
    assert con.execute("SELECT count(*), count(DISTINCT prediction_id) FROM raw.predictions WHERE model_id = 'churn'"
                       ).fetchone() == (n, n)


@pytest.mark.parametrize("fast_min_bytes", [0, 1 << 40], ids=["fast-path", "careful-path"])
def test_empty_ids_and_features_that_are_not_an_object_are_quarantined(tmp_path, con, monkeypatch, fast_min_bytes):
    monkeypatch.setattr(ingest, "FAST_PATH_MIN_BYTES", fast_min_bytes)
    folder, config = setup(tmp_path)
    bad = [rec("fraud", 1, prediction_id=""), rec("fraud", 2, prediction_id="  "), rec("fraud", 3, features=None),
           rec("fraud", 4, features="amount=3"), rec("fraud", 5, features=[1]), '{"prediction_id": "x"',
           rec("fraud", 7, timestamp="yesterday"), rec("fraud", 8, score="high")]
    absent = {k: v for k, v in rec("fraud", 9).items() if k != "features"}  # absent: NULL, like a missing column
    write(folder / "logs" / "2026-03-01" / "fraud.jsonl", lines(*bad, absent, rec("fraud", 10)))
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (60, 52, 8)
    q = {line: (reason, detail) for model, line, reason, detail, _ in quarantine(con) if model == "fraud"}
    assert q == {
        1: ("missing_field", "missing required field: prediction_id is empty"),
        2: ("missing_field", "missing required field: prediction_id is empty"),
        3: ("bad_features", "bad features: features is null, expected an object"),
        4: ("bad_features", "bad features: features is a string, expected an object"),
        5: ("bad_features", "bad features: features is an array, expected an object"),
        6: ("malformed_json", "malformed JSON"),
        7: ("bad_timestamp", "wrong type: timestamp=yesterday is not a timestamp"),
        8: ("bad_type", "wrong type: score=high is not a number"),
    }
    assert result.reasons == {"bad_features": 3, "missing_field": 2, "bad_timestamp": 1, "bad_type": 1,
                              "malformed_json": 1}
    assert set(result.reasons) <= set(REASONS)
    assert con.execute("SELECT prediction_id, \"features.amount\" FROM raw.predictions__fraud ORDER BY 1"
                       ).fetchall() == [("fraud-10", 10.0), ("fraud-9", None)]
    assert_churn_whole(con)


def test_one_models_parquet_without_a_feature_or_unreadable_loads_the_others(tmp_path, con):
    folder, config = setup(tmp_path, config=CONFIG.replace(".jsonl", ".parquet"), fmt="parquet")
    day = folder / "logs" / "2026-03-01"
    day.mkdir(parents=True)
    frame = pd.DataFrame([{**rec("churn", i), "amount": float(i)} for i in range(50)]).drop(columns=["features"])
    frame.to_parquet(day / "churn.parquet")
    frame.assign(model_id="fraud", prediction_id=frame.prediction_id + "f").drop(columns=["amount"]).head(30).to_parquet(
        day / "fraud.parquet")
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (80, 80, 0)
    assert con.execute('SELECT count(*), count(amount) FROM raw.predictions__fraud').fetchone() == (30, 0)
    assert result.notes == ["missing_column: missing column: no amount among timestamp, prediction_id, model_id, "
                            "status, score; loaded as NULL"]
    assert [(m, r) for m, _, r, _, _ in quarantine(con)] == [("fraud", "missing_column")]
    assert str(day / "fraud.parquet") in con.execute("SELECT source_file FROM raw.quarantine").fetchone()[0]
    assert_churn_whole(con)
    # A file that is not Parquet at all: noted and skipped, the other model loads whole.
    (day / "fraud.parquet").write_bytes(b"not parquet at all\n" * 10)
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (50, 50, 0)
    [(model, line, reason, detail, raw)] = quarantine(con)
    assert (model, line, reason, raw) == ("fraud", None, "unreadable_file", None)
    assert detail.startswith("unreadable file: cannot be read as parquet (") and detail.endswith("); not read")
    assert "\n" not in detail and "not parquet at all" not in detail
    assert_churn_whole(con)


def test_a_symlink_out_of_the_config_folder_is_refused_without_reading_it(tmp_path, con):
    folder, config = setup(tmp_path)
    secret = write(tmp_path / "elsewhere" / "passwd", "root:x:0:0:SECRET-LINE\n" + lines(rec("fraud", 1)))
    link = folder / "logs" / "2026-03-01" / "fraud.jsonl"
    link.symlink_to(secret)
    result = ingest_day(con, config, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (50, 50, 0)
    [(model, line, reason, detail, raw)] = quarantine(con)
    assert (model, line, reason, raw) == ("fraud", None, "outside_folder", None)
    assert detail == (f"outside the config folder: {link} resolves outside {folder}; not read (set "
                      "allow_outside_paths: true to read it)")
    assert "SECRET" not in str(quarantine(con)) and "elsewhere" not in detail  # neither its contents nor its target
    assert_churn_whole(con)
    # A config that says so may read outside its folder: the link's one valid record loads, its first line
    # (not JSON) is quarantined with its reason.
    allowed = load_config(write(folder / "allowed.yaml", "allow_outside_paths: true\n" + CONFIG))
    result = ingest_day(con, allowed, "predictions", DAY)
    assert (result.read, result.loaded, result.quarantined) == (52, 51, 1)
    assert [(m, r) for m, _, r, _, _ in quarantine(con)] == [("fraud", "malformed_json")]


def test_a_path_typo_never_replaces_a_loaded_day_with_nothing(tmp_path, con):
    folder, config = setup(tmp_path)
    write(folder / "logs" / "2026-03-01" / "fraud.jsonl", lines(*(rec("fraud", i) for i in range(40)), "{bad"))
    first = ingest_day(con, config, "predictions", DAY)
    assert (first.read, first.loaded, first.quarantined) == (91, 90, 1)

    def snapshot():
        return (con.execute("SELECT model_id, count(*) FROM raw.predictions GROUP BY 1 ORDER BY 1").fetchall(),
                con.execute("SELECT * FROM raw.quarantine ORDER BY ALL").fetchall())

    before = snapshot()
    typo = load_config(write(folder / "typo.yaml", CONFIG.replace('"logs/', '"log/')))
    with pytest.raises(MissingInput) as raised:
        ingest_day(con, typo, "predictions", DAY)
    assert str(raised.value) == (
        f"predictions 2026-03-01: no file matches {folder}/log/2026-03-01/*.jsonl; nothing of the day was replaced "
        "(rows loaded before stay): check sources.predictions.path, or set allow_empty: true on "
        "sources.predictions if days without files are expected")
    assert snapshot() == before == ([("churn", 50), ("fraud", 40)], before[1]) and len(before[1]) == 1
    # One model's file gone on a re-run (its logger was down): its loaded rows stay, the others reload.
    (folder / "logs" / "2026-03-01" / "fraud.jsonl").unlink()
    again = ingest_day(con, config, "predictions", DAY)
    assert (again.read, again.loaded) == (50, 50) and again.notes[0].startswith("no_file: no input file")
    assert snapshot()[0] == before[0]
    assert [(m, r) for m, _, r, _, _ in quarantine(con)] == [("fraud", "no_file"), ("fraud", "malformed_json")]


BOMB_RUN = """
import datetime as dt, json, resource, sys
from monitor_assets.config import load_config
from monitor_assets.constants import QUALITY_CHECK
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.warehouse import connect
config = load_config(sys.argv[1])
with connect(sys.argv[2]) as con:
    r = ingest_day(con, config, "predictions", dt.date(2026, 3, 1))
    per_model = dict(con.execute("SELECT model_id, count(*) FROM raw.predictions GROUP BY 1").fetchall())
    q = con.execute("SELECT model_id, line_no, reason, detail FROM raw.quarantine ORDER BY 1, 2 NULLS FIRST").fetchall()
print(json.dumps({"read": r.read, "loaded": r.loaded, "quarantined": r.quarantined, "per_model": per_model,
                  "quarantine": q, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_bounded(folder, tmp_path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", BOMB_RUN, str(folder / "m.yaml"), str(tmp_path / "w" / "w.duckdb")],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_gzip_bomb_and_a_huge_line_are_refused_and_memory_stays_bounded(tmp_path):
    config = CONFIG.replace('{model}.jsonl"', '{model}.jsonl.gz"')
    folder = tmp_path / "cfg"
    write(folder / "m.yaml", config)
    day = folder / "logs" / "2026-03-01"
    day.mkdir(parents=True)
    huge = json.dumps(rec("churn", 49, pad="x" * (100 << 10)))  # over a 64 KiB line cap
    (day / "churn.gz").write_bytes(b"")  # not matched (*.jsonl.gz): no effect
    (day / "churn.jsonl.gz").write_bytes(gzip.compress(lines(*(rec("churn", i) for i in range(49)), huge).encode()))
    # 2 GiB of valid JSON lines in about 2 MB (32 gzip members of 64 MiB each: still one valid gzip file).
    member = gzip.compress(lines(rec("fraud", 1)).encode() * ((64 << 20) // len(lines(rec("fraud", 1)))))
    (day / "fraud.jsonl.gz").write_bytes(member * 32)
    assert (day / "fraud.jsonl.gz").stat().st_size < 8 << 20
    got = run_bounded(folder, tmp_path, {"MONITOR_MAX_DECOMPRESSED_MB": "64", "MONITOR_MAX_LINE_KB": "64"})
    assert (got["read"], got["loaded"], got["quarantined"]) == (50, 49, 1)
    assert got["per_model"] == {"churn": 49}
    [line, bomb] = got["quarantine"]  # by model: churn's line, then fraud's file
    assert bomb == ["fraud", None, "too_large", "file too large: more than 64 MiB decompressed (with its line index), "
                    "the limit MONITOR_MAX_DECOMPRESSED_MB; not read"]
    assert line[:3] == ["churn", 50, "too_large"]
    assert line[3] == f"line too long: {len(huge):,} bytes, the limit is {64 << 10:,}"
    # Against the same run with a small file in the bomb's place (Python, DuckDB, pyarrow and numpy alone take
    # 250-400 MB, more in some environments): the bomb adds at most about the cap.
    (day / "fraud.jsonl.gz").write_bytes(gzip.compress(lines(rec("fraud", 1)).encode()))
    base = run_bounded(folder, tmp_path / "base", {"MONITOR_MAX_DECOMPRESSED_MB": "64", "MONITOR_MAX_LINE_KB": "64"})
    print(f"peak RSS with a 2 GiB gzip bomb, cap 64 MiB: {got['peak_mb']:.0f} MB (without it: {base['peak_mb']:.0f} MB)")
    assert got["peak_mb"] < base["peak_mb"] + 64 + 200


def test_every_category_has_a_pattern_and_every_pattern_a_documented_category():
    assert {c for _, c in fields._CATEGORY_PATTERNS} == set(REASONS)


def materialize(config, tags=None):
    predictions = build_ingestion_assets(config)[0]
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize([predictions, *build_quality_checks(config, predictions.key)], partition_key="2026-03-01",
                              instance=instance, raise_on_error=False, tags={PREFLIGHT_TAG: "passed", **(tags or {})},
                              resources={"warehouse": WarehouseResource(path=config.warehouse_path,
                                                                        lake_path=config.lake_path)})


def test_through_the_asset_a_model_without_rows_warns_and_a_typo_fails_the_step_keeping_the_day(tmp_path):
    text = CONFIG.replace("partitions:", f"warehouse: {tmp_path}/wh/w.duckdb\npartitions:")
    folder, config = setup(tmp_path, config=text)
    result = materialize(config)  # fraud logged nothing: the check warns, it does not say "passed"
    assert result.success
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == QUALITY_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert [(f["model_id"], f["message"][:9]) for f in check.metadata["failures"].value] == [("fraud", "no rows: ")]
    write(folder / "logs" / "2026-03-01" / "fraud.jsonl", lines(*(rec("fraud", i) for i in range(40))))
    result = materialize(config)
    assert result.success
    assert [e.passed for e in result.get_asset_check_evaluations() if e.check_name == QUALITY_CHECK] == [True]
    typo = load_config(write(folder / "typo.yaml", text.replace('"logs/', '"log/')))
    result = materialize(typo)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert failure.startswith(f"predictions 2026-03-01: no file matches {folder}/log/2026-03-01/*.jsonl;")
    assert "\n" not in failure
    with open_warehouse(config.warehouse_path, read_only=True) as con:
        assert con.execute("SELECT model_id, count(*) FROM raw.predictions GROUP BY 1 ORDER BY 1").fetchall() == [
            ("churn", 50), ("fraud", 40)]
        assert con.execute("SELECT records_read, records_loaded FROM raw.ingestion_log").fetchall() == [(90, 90)]
