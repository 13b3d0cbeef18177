"""A few models with their own feature names, a few thousand rows, through ingestion into the lake: each
model's table has its own columns only, read = loaded + quarantined per file, and re-running a day
changes nothing."""

import datetime as dt
import json

import numpy as np

from monitor_assets.config import load_config
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.lake import PREDICTION_COLUMNS
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import write

DAYS = [dt.date(2026, 3, 1), dt.date(2026, 3, 2)]
MODELS = {"fraud": ["amount", "hour"], "reco": ["basket", "clicks", "device"], "demand-eu": ["stock"]}
CONFIG = """
partitions: {start_date: 2026-03-01}
sources:
  predictions: {path: "logs/{date}/{model}.jsonl"}
  labels: {path: "labels/{date}.csv"}
models:
""" + "".join(f"""  - id: {m}
    task: binary_classification
    reference: ref.parquet
    features: {{{', '.join(f'{f}: ' + ('categorical' if f == 'device' else 'numeric') for f in feats)}}}
""" for m, feats in MODELS.items())


def _write_logs(tmp_path, rng):
    """Per model and day, 700-1,200 good lines and a few bad ones; returns the line count per file."""
    lines_per_file = {}
    for day in DAYS:
        for model, feats in MODELS.items():
            n = int(rng.integers(700, 1200))
            lines = []
            for i in range(n):
                features = {f: ("mobile" if f == "device" else float(rng.normal())) for f in feats}
                lines.append(json.dumps({"prediction_id": f"{model}-{day}-{i}", "model_id": model,
                                         "timestamp": f"{day}T10:00:00Z", "score": float(rng.uniform()),
                                         "features": features}))
            lines[3] = "{not json"
            lines[5] = lines[4]  # a duplicate id
            lines[7] = lines[7].replace(f'"model_id": "{model}"', '"model_id": "someone_else"')
            path = write(tmp_path / "logs" / str(day) / f"{model}.jsonl", "\n".join(lines) + "\n")
            lines_per_file[str(path)] = n
    return lines_per_file


def test_models_keep_their_own_columns_counts_add_up_and_a_rerun_changes_nothing(tmp_path):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    lines_per_file = _write_logs(tmp_path, np.random.default_rng(3))
    with connect(str(tmp_path / "wh" / "w.duckdb")) as con:
        for day in DAYS:
            result = ingest_day(con, config, "predictions", day)
            assert result.read == result.loaded + result.quarantined == sum(
                n for f, n in lines_per_file.items() if f"/{day}/" in f)
        # Each model's table: the shared columns, then its own features only.
        for model, feats in MODELS.items():
            columns = [d[0] for d in con.execute(f'SELECT * FROM raw."predictions__{model}" LIMIT 0').description]
            assert columns == [*PREDICTION_COLUMNS, *(f"features.{f}" for f in feats)]
        assert [d[0] for d in con.execute("SELECT * FROM raw.predictions LIMIT 0").description] == list(PREDICTION_COLUMNS)
        # Per file: loaded + quarantined = its lines; the three bad lines each have their reason.
        per_file = dict(con.execute("""
            SELECT f, sum(n) FROM (SELECT source_file AS f, count(*) AS n FROM raw.predictions GROUP BY 1
                                   UNION ALL
                                   SELECT source_file, count(*) FROM raw.quarantine
                                   WHERE source = 'predictions' AND line_no IS NOT NULL GROUP BY 1) GROUP BY 1""").fetchall())
        assert per_file == lines_per_file
        reasons = sorted(r for (r,) in con.execute(
            "SELECT reason FROM raw.quarantine WHERE source_file LIKE '%/2026-03-01/fraud.jsonl'").fetchall())
        assert reasons == ["duplicate", "malformed_json", "unknown_model"]
        assert con.execute("SELECT DISTINCT model_id FROM raw.quarantine WHERE source_file LIKE '%reco.jsonl'"
                           ).fetchall() == [("reco",)]

        def snapshot():
            return (con.execute("SELECT * FROM raw.predictions ORDER BY ALL").fetchall(),
                    con.execute('SELECT * FROM raw."predictions__reco" ORDER BY ALL').fetchall(),
                    con.execute("SELECT * FROM raw.quarantine ORDER BY ALL").fetchall())

        before = snapshot()
        again = ingest_day(con, config, "predictions", DAYS[1])
        assert snapshot() == before and again.loaded == result.loaded


def test_views_read_files_of_one_schema_and_of_several(tmp_path):
    """A view over files of one column list skips DuckDB's union by name (which reads every footer whenever a
    view is made); files whose columns differ, in set or in order, still read each column by its name."""
    import duckdb
    import pyarrow as pa

    from monitor_assets.storage import lake as L

    def day(d: int, columns: dict) -> pa.Table:
        base = {"partition_date": [dt.date(2026, 1, d)] * 2, "model_id": ["m"] * 2,
                "prediction_id": [f"{d}-0", f"{d}-1"], "score": [0.1 * d, 0.2 * d]}
        return pa.table({**base, **columns})

    lake = L.Lake(tmp_path / "lake")
    lake.replace_model_day("m", day(1, {"amount": [1.0, 2.0]}), dt.date(2026, 1, 1))
    lake.replace_model_day("m", day(2, {"amount": [3.0, 4.0]}), dt.date(2026, 1, 2))
    files = lake._current_files(lake.model_path("m"))[0]
    assert len(files) == 2 and L._one_schema(files)
    assert "union_by_name" not in lake.scan(lake.model_path("m"), L.PREDICTION_COLUMNS, ["partition_date"], True)
    # A feature added on day 3, and a day written with its columns in another order: read by name.
    lake.replace_model_day("m", day(3, {"amount": [5.0, 6.0], "channel": ["web", "app"]}), dt.date(2026, 1, 3))
    swapped = day(4, {"amount": [7.0, 8.0]})
    lake.replace_model_day("m", swapped.select(["score", *[c for c in swapped.column_names if c != "score"]]),
                           dt.date(2026, 1, 4))
    files = lake._current_files(lake.model_path("m"))[0]
    assert not L._one_schema(files)
    con = duckdb.connect()
    lake.attach(con, ["m"])
    rows = con.execute('SELECT prediction_id, score, amount, channel FROM raw."predictions__m" ORDER BY 1').fetchall()
    assert rows == [("1-0", 0.1, 1.0, None), ("1-1", 0.2, 2.0, None), ("2-0", 0.2, 3.0, None), ("2-1", 0.4, 4.0, None),
                    ("3-0", 0.30000000000000004, 5.0, "web"), ("3-1", 0.6000000000000001, 6.0, "app"),
                    ("4-0", 0.4, 7.0, None), ("4-1", 0.8, 8.0, None)]
