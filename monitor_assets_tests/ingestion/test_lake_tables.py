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
