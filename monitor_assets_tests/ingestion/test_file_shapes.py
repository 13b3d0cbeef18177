"""The same prediction records in the file shapes users have give the same tables: one file per model named by
it (`{model}` in the path), the same files under names without the model (a glob over the folder), and files
that mix several models' records. Shared files are split by model before they are checked (`readers._route`),
a block at a time."""

import datetime as dt
import json
import random

import pytest

from monitor_assets.config import load_config
from monitor_assets.ingestion import readers
from monitor_assets.ingestion.readers import ingest_days
from monitor_assets.storage.warehouse import connect, lake_of
from monitor_assets_tests.conftest import write

DAYS = [dt.date(2026, 3, 1), dt.date(2026, 3, 2)]
MODELS = [f"m{i}" for i in range(6)]
ROWS = 300
PATHS = {"named": "logs/{date}/{model}.jsonl", "unnamed": "logs/{date}/*.jsonl", "mixed": "logs/{date}/*.jsonl"}


def _features(model: str) -> dict[str, str]:
    """Each model its own feature names: two numeric, one categorical."""
    return {f"{model}_a": "numeric", f"{model}_b": "numeric", f"{model}_c": "categorical"}


def _config(layout: str) -> str:
    models = "\n".join(f"  - id: {m}\n    task: binary_classification\n    reference: ref.parquet\n"
                       f"    features: {json.dumps(_features(m))}" for m in MODELS)
    return (f"partitions: {{start_date: {DAYS[0]}}}\nsources:\n  predictions: {{path: \"{PATHS[layout]}\"}}\n"
            f"  labels: {{path: \"labels/{{date}}.csv\"}}\nmodels:\n{models}\n")


def _records(day: dt.date, d: int, model: str, rng: random.Random) -> list[str]:
    """A model's lines of a day, some of them bad in the ways a record fails: out of range, missing id, a
    feature of the wrong type, not JSON, an id loaded the day before."""
    lines = []
    for i in range(ROWS):
        rec = {"prediction_id": f"{model}-{d}-{i}", "model_id": model, "timestamp": f"{day}T{i % 24:02d}:00:00Z",
               "score": round(rng.random(), 4),
               "features": {f"{model}_a": round(rng.gauss(0, 1), 4), f"{model}_b": rng.randint(0, 9),
                            f"{model}_c": rng.choice(["x", "y"])}}
        if i == 7:
            rec["score"] = 1.5
        elif i == 8:
            del rec["prediction_id"]
        elif i == 9:
            rec["features"][f"{model}_a"] = "many"
        elif i == 10 and d == 1:
            rec["prediction_id"] = f"{model}-0-11"  # loaded on the first day
        lines.append(json.dumps(rec))
    lines[12] = '{"prediction_id": "broken'
    return lines


def _write(tmp_path, layout: str) -> None:
    rng, shuffler = random.Random(5), random.Random(6)  # the records do not depend on the shuffling
    write(tmp_path / "monitor.yaml", _config(layout))
    for d, day in enumerate(DAYS):
        folder = tmp_path / "logs" / str(day)
        by_model = {m: _records(day, d, m, rng) for m in MODELS}
        if layout == "named":
            for m, lines in by_model.items():
                write(folder / f"{m}.jsonl", "\n".join(lines) + "\n")
        elif layout == "unnamed":
            for k, m in enumerate(reversed(MODELS)):
                write(folder / f"part-{k:04d}.jsonl", "\n".join(by_model[m]) + "\n")
        else:  # three files of two models each, their lines shuffled, and a model the config does not know
            stranger = json.dumps({"prediction_id": f"ghost-{d}", "model_id": "ghost", "timestamp": f"{day}T01:00:00Z",
                                   "score": 0.5, "features": {}})
            for k in range(3):
                lines = by_model[MODELS[k]] + by_model[MODELS[k + 3]] + ([stranger] if k == 1 else [])
                shuffler.shuffle(lines)
                write(folder / f"part-{k:04d}.jsonl", "\n".join(lines) + "\n")


def _tables(con) -> dict:
    """What ingestion wrote, without what names a file or line (they differ between the shapes)."""
    lake_of(con).attach(con, None)
    out = {}
    for m in MODELS:
        out[m] = con.execute(f"""SELECT * EXCLUDE (source_file, line_no) FROM raw.predictions__{m}
                                 ORDER BY ALL""").fetchall()
    # A duplicate's record is its loaded row as JSON, which names its file and line.
    out["quarantine"] = con.execute("""SELECT partition_date, source, reason, detail,
                                              regexp_replace(raw_record, '"(source_file|line_no)":("[^"]*"|[0-9]+),', '', 'g') FROM raw.quarantine
                                       WHERE line_no IS NOT NULL ORDER BY ALL""").fetchall()
    out["log"] = con.execute("""SELECT partition_date, source, records_read, records_loaded, records_quarantined
                                FROM raw.ingestion_log ORDER BY ALL""").fetchall()
    return out


def _ingest(tmp_path, layout: str) -> dict:
    folder = tmp_path / layout
    _write(folder, layout)
    config = load_config(folder / "monitor.yaml")
    with connect(str(folder / "w.duckdb")) as con:
        results = ingest_days(con, config, "predictions", DAYS)
        tables = _tables(con)
    tables["results"] = [(d, r.read, r.loaded, r.quarantined, r.reasons) for d, r in results]
    return tables


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, monkeypatch_module):
    # Blocks of a few lines: the split goes through many blocks per file, as a big file would.
    monkeypatch_module.setattr(readers, "ROUTE_BLOCK_BYTES", 4096)
    tmp = tmp_path_factory.mktemp("shapes")
    return {layout: _ingest(tmp, layout) for layout in PATHS}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_same_records_give_the_same_tables_in_every_shape(shapes):
    named = shapes["named"]
    assert [len(named[m]) for m in MODELS] == [2 * (ROWS - 4) - 1] * len(MODELS)  # 4 bad a day, 1 repeat
    per_day = len(MODELS) * ROWS
    assert [r[1:4] for r in named["results"]] == [(per_day, per_day - 24, 24), (per_day, per_day - 30, 30)]
    assert named["results"][1][4] == {"malformed_json": 6, "duplicate": 6, "missing_field": 6, "out_of_range": 6,
                                      "bad_type": 6}
    for layout in ("unnamed", "mixed"):
        got = shapes[layout]
        for m in MODELS:
            assert got[m] == named[m], (layout, m)
        if layout == "unnamed":
            assert got["quarantine"] == named["quarantine"]
            assert got["log"] == named["log"] and got["results"] == named["results"]


def test_mixed_files_quarantine_an_unknown_model_and_nothing_else_differs(shapes):
    named, mixed = shapes["named"], shapes["mixed"]
    ghosts = [q for q in mixed["quarantine"] if q not in named["quarantine"]]
    assert [(q[0], q[2], q[3]) for q in ghosts] == [(d, "unknown_model", "unknown model_id: ghost") for d in DAYS]
    assert sorted(named["quarantine"] + ghosts) == mixed["quarantine"]
    assert [(d, s, r + 1, lo, q + 1) for d, s, r, lo, q in named["log"]] == mixed["log"]


def test_a_model_day_is_read_from_its_own_split_file(tmp_path, monkeypatch):
    """The split writes each model's lines to a file of its own and keeps the rest (a line of no model) for the
    shared group: no group reads every model's records."""
    seen = []
    load = readers.load_split_lines
    monkeypatch.setattr(readers, "load_split_lines", lambda con, plan, path: (seen.append(
        (sorted(plan.feature_aliases), con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0])),
        load(con, plan, path))[1])
    _write(tmp_path, "mixed")
    config = load_config(tmp_path / "monitor.yaml")
    with connect(str(tmp_path / "w.duckdb")) as con:
        ingest_days(con, config, "predictions", DAYS)
    # The shared group (every model's rules) gets the lines not JSON and the unknown model's; each model its own.
    assert [(len(features), n) for features, n in seen if len(features) > 3] == [(3 * len(MODELS), 2 + 2 * len(MODELS))]
    assert sorted(n for features, n in seen if len(features) == 3) == [2 * (ROWS - 1)] * len(MODELS)


def test_shards_of_mixed_files_write_what_one_run_writes(tmp_path):
    """Two shards read the same mixed files: each checks and keeps its own models' records (the quarantined
    ones too) and shard 0 the records of no model; together they write what one run writes, and their
    counts add up to its counts."""
    _write(tmp_path, "mixed")
    config = load_config(tmp_path / "monitor.yaml")

    def run(configs, folder):
        with connect(str(tmp_path / folder / "w.duckdb")) as con:
            results = [ingest_days(con, c, "predictions", DAYS) for c in configs]
            lake_of(con).attach(con, None)
            rows = {m: con.execute(f"SELECT * FROM raw.predictions__{m} ORDER BY ALL").fetchall() for m in MODELS}
            quarantine = con.execute("SELECT * FROM raw.quarantine ORDER BY ALL").fetchall()
        counts = [tuple(sum(getattr(r[i][1], k) for r in results) for k in ("read", "loaded", "quarantined"))
                  for i in range(len(DAYS))]
        return rows, quarantine, counts

    whole = run([config], "whole")
    shards = run([config.for_shard(0, 2), config.for_shard(1, 2)], "shards")
    assert shards[0] == whole[0]
    assert shards[1] == whole[1] and len(whole[1]) == 2 * (4 * len(MODELS) + 1) + len(MODELS)
    assert shards[2] == whole[2]
