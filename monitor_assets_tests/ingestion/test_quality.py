"""The data-quality suite per model-day, run in bounded batches of models: a model's verdict is the same
whatever batch it shares, and a failure holds only the model whose rows failed."""

import datetime as dt
import json

import pytest

from monitor_assets.config import load_config
from monitor_assets.ingestion.quality import (
    stored_verdicts,
    validate_day,
    validate_days,
    validation_batches,
)
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.reads import held_models
from monitor_assets.storage.warehouse import connect, lake_of
from monitor_assets_tests.conftest import write

DAY = dt.date(2026, 3, 1)
# Three models share the field `features.tier` with different allowed values.
CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}/{model}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
  - id: gold
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric, tier: {type: categorical, allowed_values: [a, b]}}
  - id: silver
    task: binary_classification
    reference: ref.parquet
    features: {amount: numeric, tier: {type: categorical, allowed_values: [x, y]}}
  - id: bronze
    task: regression
    reference: ref.parquet
    features: {amount: numeric, tier: {type: categorical, allowed_values: [a, x]}}
"""


def lines(model: str, n: int, tiers: list[str], hour: int = 10, score: float = 0.5) -> str:
    return "\n".join(json.dumps({
        "timestamp": f"2026-03-01T{hour:02d}:00:{i % 60:02d}Z", "prediction_id": f"p{i}", "model_id": model,
        "model_version": "1", "latency_ms": 5.0, "status": "ok", "score": score,
        "features": {"amount": float(i), "tier": tiers[i % len(tiers)]}}) for i in range(n)) + "\n"


@pytest.fixture
def con(tmp_path):
    with connect(str(tmp_path / "w.duckdb")) as c:
        yield c


def test_each_model_is_validated_against_its_own_allowed_values_in_any_batch(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    # The same prediction ids in every model: ids are unique per model, not across models.
    write(tmp_path / "logs" / "2026-03-01" / "gold.jsonl", lines("gold", 40, ["a", "b"]))
    write(tmp_path / "logs" / "2026-03-01" / "silver.jsonl", lines("silver", 30, ["x", "y"]))
    write(tmp_path / "logs" / "2026-03-01" / "bronze.jsonl", lines("bronze", 20, ["a", "x"], score=7.0))
    ingest_day(con, config, "predictions", DAY)
    # Ingestion quarantines unknown categories; the suite guards what is stored (here: a bad write
    # upstream of us put 10 of gold's rows in silver's category 'x', which gold does not allow).
    lake = lake_of(con)
    gold = con.sql(f"SELECT * REPLACE (CASE WHEN prediction_id IN ({', '.join(repr(f'p{i}') for i in range(10))}) "
                   f"THEN 'x' ELSE \"features.tier\" END AS \"features.tier\") "
                   f"FROM {lake.model_relation(con, 'gold')}").to_arrow_table()
    lake.replace_model_day("gold", gold, DAY)
    one_batch = {v.model_id: v for v in validate_day(con, config, DAY)}
    one_each = {v.model_id: v for v in validate_day(con, config, DAY, batch_rows=1)}
    for verdicts in (one_batch, one_each):
        assert {m: (v.rows, v.passed, v.unexpected) for m, v in verdicts.items()} == {
            "gold": (40, False, 10), "silver": (30, True, 0), "bronze": (20, True, 0)}
        assert verdicts["gold"].message == ("expect_column_values_to_be_in_set on features.tier: "
                                            "10 unexpected value(s), e.g. x, x, x, x, x")
    assert held_models(con, [DAY]) == {DAY: {"gold"}}
    assert [v.model_id for v in stored_verdicts(con, config, DAY)] == ["bronze", "gold", "silver"]


def test_a_stray_timestamp_holds_its_model_only(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    write(tmp_path / "logs" / "2026-03-01" / "gold.jsonl", lines("gold", 10, ["a"]) + lines("gold", 1, ["a"], hour=10)
          .replace('"p0"', '"late"').replace("2026-03-01T10", "2026-02-20T10"))
    write(tmp_path / "logs" / "2026-03-01" / "silver.jsonl", lines("silver", 10, ["x"]))
    ingest_day(con, config, "predictions", DAY)
    verdicts = {v.model_id: (v.passed, v.unexpected) for v in validate_day(con, config, DAY)}
    assert verdicts == {"gold": (False, 1), "silver": (True, 0)}  # bronze logged nothing: no verdict
    assert held_models(con, [DAY, DAY + dt.timedelta(days=1)]) == {DAY: {"gold"}, DAY + dt.timedelta(days=1): set()}


def test_batches_stay_under_the_row_limit_and_keep_their_order(tmp_path):
    units = ["gold", "silver", "bronze", "tin"]
    batches = validation_batches(units, [60, 50, 200, 0], limit=120)
    assert batches == [["gold", "silver"], ["bronze"]]  # a big unit goes alone, an empty one nowhere
    assert validation_batches(units, [5, 5, 5, 5]) == [units]


def test_several_days_in_one_batch_give_each_model_day_its_own_verdict(tmp_path, con):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    days = [DAY, DAY + dt.timedelta(days=1)]
    write(tmp_path / "logs" / "2026-03-01" / "gold.jsonl", lines("gold", 20, ["a"]))
    # The second day's gold file holds the first day's records: a misfiled batch on 03-02 only.
    write(tmp_path / "logs" / "2026-03-02" / "gold.jsonl", lines("gold", 15, ["b"]).replace('"prediction_id": "p', '"prediction_id": "q'))
    write(tmp_path / "logs" / "2026-03-02" / "silver.jsonl",
          lines("silver", 10, ["x"]).replace("2026-03-01T", "2026-03-02T"))
    for day in days:
        ingest_day(con, config, "predictions", day)
    together = {(v.partition_date, v.model_id): (v.rows, v.passed, v.unexpected) for v in
                validate_days(con, config, days)}
    apart = {(v.partition_date, v.model_id): (v.rows, v.passed, v.unexpected) for d in days for v in
             validate_day(con, config, d, batch_rows=1)}
    assert together == apart == {(DAY, "gold"): (20, True, 0), (days[1], "gold"): (15, False, 15),
                                 (days[1], "silver"): (10, True, 0)}
    message = [v for v in stored_verdicts(con, config, days[1]) if v.model_id == "gold"][0].message
    assert message.startswith("expect_column_values_to_be_between on ts (hours after its day's midnight, UTC): "
                              "15 unexpected value(s), e.g. -14.0")
