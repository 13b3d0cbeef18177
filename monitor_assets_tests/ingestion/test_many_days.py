"""Several days read in one pass (`ingest_days`) give what reading them one at a time (`ingest_day`) gives:
the same rows, quarantine, counts, corrected labels and validated model-days, whether the days come in one
chunk or a budget splits them; and they cost one Delta commit per model and chunk, not one per day."""

import datetime as dt
import json

import pytest

from monitor_assets.config import load_config
from monitor_assets.ingestion import formats, readers
from monitor_assets.ingestion import labels as labels_module
from monitor_assets.ingestion.readers import MissingInput, day_chunks, ingest_day, ingest_days
from monitor_assets.storage.warehouse import connect, lake_of
from monitor_assets_tests.conftest import TWO_MODELS_CONFIG as CONFIG
from monitor_assets_tests.conftest import write

DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(6)]


def _line(model, day, pid, **over):
    rec = {"prediction_id": pid, "model_id": model, "timestamp": f"{day}T10:00:00Z", "score": 0.4,
           "features": {"amount": 3.5, "clicks": 2, "device": "mobile"}}
    rec.update(over)
    return json.dumps(rec)


def _write_world(tmp_path, reco_day2: bool = True):
    """Six days of two models' logs and labels with duplicates within a day and across days (also across
    chunks), bad lines, a day without any file, and labels corrected later."""
    d = DAYS
    logs = {
        (d[0], "fraud"): [_line("fraud", d[0], f"f{i}") for i in range(5)] + [_line("fraud", d[0], "f1")],
        (d[0], "reco"): [_line("reco", d[0], f"r{i}") for i in range(4)] + ["{not json"],
        (d[1], "fraud"): [_line("fraud", d[1], "f3"), _line("fraud", d[1], "f10"), _line("fraud", d[1], "f11",
                                                                                          score=1.7)],
        (d[1], "reco"): [_line("reco", d[1], f"r1{i}") for i in range(3)],
        # d[2]: no file of any model
        (d[3], "fraud"): [_line("fraud", d[3], "f10"), _line("fraud", d[3], "f20"), ""],
        (d[3], "reco"): [_line("reco", d[3], "r0"), _line("reco", d[3], "r30"), _line("reco", d[3], "r31")],
        (d[4], "fraud"): [_line("fraud", d[4], "f20"), _line("fraud", d[4], "f40"), _line("fraud", d[4], "f40")],
        (d[5], "reco"): [_line("reco", d[5], "r50"), _line("reco", d[5], "r51", features={"clicks": "x"})],
    }
    for (day, model), lines in logs.items():
        if reco_day2 or (day, model) != (d[1], "reco"):
            write(tmp_path / "logs" / str(day) / f"{model}.jsonl", "\n".join(lines) + "\n")
    labels = {d[0]: "f1,1\nr2,0\n", d[1]: "f1,0\nf3,1\nzz,1\n", d[3]: "f1,1\nf3,1\nf10,7\nr0,1\n",
              d[4]: "f1,1\nf20,0\nr30,1\nr30,0\n", d[5]: "r50,1\nf40,1\n"}
    for day, text in labels.items():
        write(tmp_path / "labels" / f"{day}.csv", "prediction_id,label\n" + text)


def _tables(con):
    """Everything ingestion wrote, in a stable order."""
    lake_of(con).attach(con, None)
    out = {}
    for model in ("fraud", "reco"):
        out[model] = con.execute(f"""SELECT partition_date, prediction_id, score, model_id, source_file, line_no
                                     FROM raw.predictions__{model} ORDER BY ALL""").fetchall()
    out["labels"] = con.execute("SELECT partition_date, model_id, prediction_id, prediction_date, label, line_no "
                                "FROM raw.labels ORDER BY ALL").fetchall()
    out["quarantine"] = con.execute("SELECT partition_date, source, source_file, line_no, reason, detail, model_id, "
                                    "raw_record FROM raw.quarantine ORDER BY ALL").fetchall()
    return out


def _one_at_a_time(con, config, source, days, committed=None):
    results = []
    for day in days:
        try:
            results.append((day, ingest_day(con, config, source, day, committed)))
        except MissingInput as exc:
            results.append((day, str(exc)))
    return results


def _shown(results):
    return [(d, str(r) if isinstance(r, MissingInput) else r) for d, r in results]


@pytest.mark.parametrize("chunk_bytes, match_rows", [(1 << 30, None), (1_000, None), (1 << 30, 2)],
                         ids=["one-chunk", "chunks-of-a-day-or-two", "labels-matched-in-parts"])
def test_many_days_at_once_equal_one_day_at_a_time(tmp_path, monkeypatch, chunk_bytes, match_rows):
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    runs = {}
    for how in ("one_by_one", "together"):
        _write_world(tmp_path)
        calls = []
        with connect(str(tmp_path / how / "w.duckdb")) as con:
            # Twice: the second pass replaces days whose rows (and keys) are stored already; then again without
            # reco's file of the second day, which keeps its rows.
            for rerun in range(3):
                if rerun == 2:
                    (tmp_path / "logs" / str(DAYS[1]) / "reco.jsonl").unlink()
                for source in ("predictions", "labels"):
                    committed = (lambda d, m, n, calls=calls: calls.append((d, m, n))) if source == "predictions" else None
                    if how == "one_by_one":
                        results = _one_at_a_time(con, config, source, DAYS, committed)
                    else:
                        monkeypatch.setattr(readers, "CHUNK_BYTES", chunk_bytes)
                        if match_rows:  # labels matched to their predictions a few ids at a time
                            monkeypatch.setattr(labels_module, "MATCH_ROWS", match_rows)
                        seen = []
                        results = ingest_days(con, config, source, DAYS, committed,
                                              done=lambda d, r, seen=seen: seen.append(d))
                        assert seen == DAYS  # every day reported, in order
                        monkeypatch.undo()
                    runs.setdefault(how, []).append(_shown(results))
            runs[how].append(_tables(con))
            runs[how].append(sorted(calls))
    one_by_one, together = runs["one_by_one"], runs["together"]
    assert together == one_by_one
    # The world is what it claims to be: duplicates across days, a refused day, corrected labels, a kept model-day.
    first_predictions = dict(one_by_one[0])
    assert (first_predictions[DAYS[1]].quarantined, first_predictions[DAYS[4]].quarantined) == (2, 2)
    assert isinstance(first_predictions[DAYS[2]], str) and "no file matches" in first_predictions[DAYS[2]]
    assert [r.labels_corrected for d, r in one_by_one[1] if not isinstance(r, str)] == [0, 1, 1, 0, 0]
    tables = one_by_one[-2]
    assert [row[1] for row in tables["reco"] if row[0] == DAYS[1]] == ["r10", "r11", "r12"]  # kept


def test_a_range_costs_one_delta_commit_per_model_and_chunk(tmp_path, monkeypatch):
    _write_world(tmp_path)
    config = load_config(write(tmp_path / "m.yaml", CONFIG))
    with connect(str(tmp_path / "wh" / "w.duckdb")) as con:
        lake = lake_of(con)
        ingest_days(con, config, "predictions", DAYS)
        tables = {"fraud": lake.model_path("fraud"), "reco": lake.model_path("reco"),
                  "quarantine": lake.path("raw.quarantine")}
        versions = {name: lake.table(path).version() for name, path in tables.items()}
        assert versions == {"fraud": 0, "reco": 0, "quarantine": 0}  # one commit each for five days
        read = [d for d in DAYS if d != DAYS[2]]
        sizes = [readers._input_bytes(readers._groups_of(config, "predictions", config.predictions, d)) for d in read]
        # A budget of about the biggest day: several chunks, a commit each for a model with files in it.
        chunks = day_chunks(read, sizes, max(sizes))
        assert 3 <= len(chunks) < len(read)
        monkeypatch.setattr(readers, "CHUNK_BYTES", max(sizes))
        ingest_days(con, config, "predictions", DAYS)
        with_files = {m: sum(any((tmp_path / "logs" / str(d) / f"{m}.jsonl").exists() for d in c) for c in chunks)
                      for m in ("fraud", "reco")}
        assert {name: lake.table(path).version() for name, path in tables.items()} == {
            "fraud": with_files["fraud"], "reco": with_files["reco"], "quarantine": len(chunks)}


def test_day_chunks_keep_order_and_budget():
    days = DAYS[:5]
    assert day_chunks(days, [4, 4, 4, 4, 4], 8) == [days[:2], days[2:4], days[4:]]
    assert day_chunks(days, [1, 20, 1, 1, 1], 8) == [days[:1], days[1:2], days[2:]]  # a big day alone
    assert day_chunks(days, [1] * 5, 100, one_day=True) == [[d] for d in days]
    assert day_chunks(days, [1] * 5, 100, max_days=2) == [days[:2], days[2:4], days[4:]]
    assert day_chunks([], [], 8) == []


# --------------------------------------------------------------------------------------------
# The careful readers over many files in one statement give what they give one file at a time.

HOSTILE = [
    _line("fraud", DAYS[0], "h1"), '{"prediction_id": "h2", "model_id": "fraud"', _line("fraud", DAYS[0], None),
    _line("fraud", DAYS[0], "h4", score=1.5), _line("fraud", DAYS[0], "h5", latency_ms="slow"),
    _line("fraud", DAYS[0], "h6").replace('"score": 0.4', '"score": NaN'), _line("ghost", DAYS[0], "h7"),
    _line("fraud", DAYS[0], "h1"), "", _line("fraud", DAYS[0], "h10", status="error", score=None), "[1, 2]",
    _line("fraud", DAYS[0], "h12", features="flat"), _line("fraud", DAYS[0], "h13", features={"amount": "lots"}),
]


def _staged(config, plan, load):
    stage = readers._staging_database()
    readers._staging(stage, plan, readers._stage_columns(stage, plan), None, [m.id for m in config.models])
    read = load(stage)
    tables = [stage.execute(f"SELECT * FROM raw.{t} ORDER BY ALL").fetchall() for t in ("predictions", "quarantine")]
    stage.close()
    return read, tables


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_files_checked_together_equal_files_checked_alone(tmp_path, fmt):
    config = load_config(write(tmp_path / "m.yaml", CONFIG.replace('"logs/{date}/{model}.jsonl"',
                                                                   f'"logs/{{date}}/*.{fmt}", format: {fmt}')))
    files = []
    if fmt == "jsonl":
        contents = [
            "\n".join(HOSTILE) + "\n",
            b"\xef\xbb\xbf" + _line("reco", DAYS[0], "r1").encode() + b"\n\xff\xfe bad\n" + _line("reco", DAYS[0], "r2").encode(),
            "[" + _line("reco", DAYS[1], "r3") + ",\n" + _line("reco", DAYS[1], "r4") + "]\n",
            _line("reco", DAYS[1], "r5", pad="x" * (3 << 20)) + "\n" + _line("reco", DAYS[1], "r6") + "\n",
            "",
        ]
    else:
        head = "prediction_id,model_id,timestamp,score,latency_ms,features.amount,features.clicks,features.device\n"
        contents = [
            head + "c1,fraud,2026-03-01T10:00:00Z,0.4,3,1.5,,\nc2,fraud,2026-03-01T10:00:00Z,1.4,3,1.5,,\n"
                   "c3,reco,2026-03-01T10:00:00Z,0.2,x,,2,mobile\nc4,too,many,fields,here,1,2,3,4,5\n",
            head + 'c5,reco,2026-03-02T10:00:00Z,0.2,1,,2,"unterminated\n' + "c6,ghost,2026-03-02T10:00:00Z,0.1,1,,,\n",
            "prediction_id,model_id,timestamp\nc7,fraud,2026-03-02T10:00:00Z\n",  # lacks the score column
            head,
        ]
    for i, text in enumerate(contents):
        path = tmp_path / "logs" / f"f{i}.{fmt}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        files.append((str(path), DAYS[min(i // 2, 2)]))
    plan = readers.predictions_plan(config)

    def alone(stage):
        return [formats.LOADERS[fmt](stage, plan, path, day) for path, day in files]

    def together(stage):
        if fmt == "jsonl":
            return formats.load_json_files(stage, plan, files)
        read = [formats.LOADERS[fmt](stage, plan, path, day, later=True) for path, day in files]
        formats.check_pending(stage, plan)
        return read

    one, many = _staged(config, plan, alone), _staged(config, plan, together)
    assert many == one
    read, (loaded, quarantined) = one
    assert sum(read) == len(loaded) + sum(1 for row in quarantined if row[3] is not None)
    assert len(loaded) >= 2 and len(quarantined) >= 5  # the files hold good and bad records
