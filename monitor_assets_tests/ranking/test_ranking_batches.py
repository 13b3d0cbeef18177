"""A ranker's days are read and checked together (`ranking.logic._stage_batch`): every day's rows, quarantine
and counts equal what that day read alone gives, on messy logs of both shapes; a day's checks stay that day's (a
request logged on two days is no duplicate); a file the batch cannot take sends the batch back to one day at a time."""

import datetime as dt
import gzip
import json

import pandas as pd

from monitor_assets.ingestion.readers import _staging_database, files_for
from monitor_assets.ranking import logic as L
from monitor_assets.storage.warehouse import close, open_warehouse

from ..conftest import write
from ..test_ranking_task import _config

DAYS = [dt.date(2025, 6, 1) + dt.timedelta(days=i) for i in range(4)]


def _lists(tmp_path, delay: int = 0):
    """JSON lines, a list per request; day 3 has no file; day 2 repeats a request id of day 1; each day's
    interactions include late ones on the day before's requests (one of them on an item not shown)."""
    for i, day in enumerate(DAYS):
        if i == 2:
            continue
        lines = [{"rid": f"r{k}" if i == 1 and k < 3 else f"{day:%d}-r{k}", "version": "v1",
                  "recs": [{"sku": f"s{(k + j) % 40}", "p": round(1 - j / 5, 2)} for j in range(5)]} for k in range(30)]
        if i == 0:
            lines[:3] = [{"rid": f"r{k}", "version": "v1", "recs": [f"s{k}", f"s{k + 1}"], "recs_scores": [0.9, 0.1]}
                         for k in range(3)]
            lines += [{"version": "v1", "recs": ["a"]}, {"rid": "empty", "recs": []},
                      {"rid": "bad", "recs": [{"sku": "a", "p": "high"}]}, {"rid": "twice", "recs": ["a", "b", "a"]},
                      {"rid": "r1", "recs": ["z"]}]  # the request again, the same day: a duplicate
        text = "\n".join(json.dumps(x) for x in lines) + "\n"
        write(tmp_path / "lists" / f"{day}.jsonl", text + ("{not json\n" if i == 3 else ""))
        acts = [{"request_id": f"{day:%d}-r{k}", "item": f"s{k % 40}", "kind": "click" if k % 3 else "hover"}
                for k in range(20)]
        before = day - dt.timedelta(days=1)
        acts += [{"request_id": f"{before:%d}-r{k}", "item": f"s{(k + 1) % 40}" if k != 5 else "unseen", "kind": "click"}
                 for k in range(5, 10)]
        write(tmp_path / "acts" / f"{day}.jsonl", "\n".join(json.dumps(x) for x in acts) + "\n")
    return _config(tmp_path, delay=delay, rankers="""
  - id: search
    task: ranking
    source: lists/{date}.jsonl
    labels: {path: "acts/{date}.jsonl", fields: {request_id: request_id, item_id: item}}
    ranking: {request_id: rid, model_version: version, items: recs, item_id: sku, score: p, scores: recs_scores,
              event: kind, relevance: {click: 1}}""")


def _impressions(tmp_path, broken_day: int | None = None):
    """CSV rows per impression; the same request and item twice on day 1, the same request on day 2 too; ranks
    missing on day 4 (ordered by score); `broken_day`'s file is a gzip file cut short."""
    for i, day in enumerate(DAYS):
        rows = [{"request": f"q{k}", "product": f"p{(k * 7 + j) % 50}", "position": None if i == 3 else j + 1,
                 "score": round(1 - j / 10, 2) if j != 2 else 0.95} for k in range(25) for j in range(6)]
        if i == 0:
            rows += [{"request": "q0", "product": rows[0]["product"], "position": 9, "score": 0.1},
                     {"request": "", "product": "x", "position": 1, "score": 0.5},
                     {"request": "q1", "product": "y", "position": 0, "score": 0.5}]
        path = tmp_path / "recs" / f"{day}.csv"
        write(path, pd.DataFrame(rows).to_csv(index=False))
        if i == broken_day:
            path.write_bytes(gzip.compress(path.read_bytes())[:900])
        write(tmp_path / "events" / f"{day}.csv", pd.DataFrame(
            {"request": [f"q{k}" for k in range(10)], "product": [f"p{k * 7 % 50}" for k in range(10)],
             "action": ["click", "purchase", "hover", "click", "click"] * 2}).to_csv(index=False))
    return _config(tmp_path, """
  - id: recs
    task: ranking
    source: recs/{date}.csv
    labels: events/{date}.csv
    ranking: {request_id: request, item_id: product, rank: position, score: score, event: action,
              relevance: {click: 1, purchase: 3}}""")


def _as_set(table):
    return sorted(map(repr, table.to_pylist())) if table is not None else None


def _assert_batch_equals_days(config):
    ranker = config.rankers[0]
    batch = {day: (files_for(ranker.source, day), ranker.source.paths_for(day)) for day in DAYS}
    stage = _staging_database()
    try:
        logged, interactions = L._stage_batch(stage, config, ranker, batch)
        for day in DAYS:
            alone = L.stage_log(stage, config, ranker, ranker.source, *batch[day], day, ranker.ranking.shape)
            got = logged[day]
            assert (got.rows is None) == (alone.rows is None), day
            if got.rows is not None:  # the rows in the same order: written as read
                assert got.rows.to_pylist() == alone.rows.to_pylist(), day
            assert _as_set(got.quarantine) == _as_set(alone.quarantine), day
            assert got.result == alone.result, day
            inter = L.stage_labels(stage, config, ranker, day)
            assert _as_set(interactions[day].rows) == _as_set(inter.rows), day
            assert _as_set(interactions[day].quarantine) == _as_set(inter.quarantine), day
            assert interactions[day].result == inter.result, day
    finally:
        stage.close()
    return logged, interactions


def test_lists_of_several_days_equal_each_day_read_alone(tmp_path):
    logged, interactions = _assert_batch_equals_days(_lists(tmp_path))
    first = logged[DAYS[0]].result
    assert first.read == first.loaded + first.quarantined and first.quarantined == 5
    assert first.reasons == {"missing_field": 2, "bad_type": 1, "duplicate": 2}
    assert logged[DAYS[1]].result.quarantined == 0  # r0..r2 again, but on their own day
    assert logged[DAYS[2]].rows is None and "no input file" in logged[DAYS[2]].result.notes[0]
    assert logged[DAYS[3]].result.reasons == {"malformed_json": 1}
    assert interactions[DAYS[0]].result.reasons == {"unknown_category": 7}


def test_performance_read_for_many_days_equals_each_day_read_alone(tmp_path, monkeypatch):
    """The performance step reads a batch of days' impressions with their grades in one query: each day's grades
    come from its own interactions and the `delay` days after (late clicks land in the next day's files), its
    unmatched interactions and whether its labels are complete are its own; as read one day at a time, and with
    batches cut by rows."""
    config = _lists(tmp_path, delay=1)
    ranker = config.rankers[0]
    con = open_warehouse(None, str(tmp_path / "lake"))
    try:
        L.ingest_rankers(con, config, DAYS)
        alone = {day: (*L.day_frames(con, ranker, [day], 1)[day], L.labels_complete(con, ranker, day, 1))
                 for day in DAYS}
        frames, complete = L.day_frames(con, ranker, DAYS, 1), L.labels_complete_days(con, ranker, DAYS, 1)
        for day in DAYS:
            pd.testing.assert_frame_equal(frames[day][0], alone[day][0])
            assert frames[day][1] == alone[day][1] and complete[day] == alone[day][2]
        first = frames[DAYS[0]][0]
        assert first.grade.gt(0).sum() > 0 and frames[DAYS[0]][1] == 1  # a late click on an item not shown
        late = first[first.request_id == "01-r6"]  # clicked on day 2's files, within day 1's window
        assert late.grade.max() == 1.0 and late.labelled.all()
        assert complete == {DAYS[0]: True, DAYS[1]: True, DAYS[2]: True, DAYS[3]: False}  # day 4's window ends later
        rows_batched = L.write_performance(con, config, DAYS)[0]
        monkeypatch.setattr(L, "ROWS_PER_READ", 1)  # every day read alone
        rows_alone = L.write_performance(con, config, DAYS)[0]
        pd.testing.assert_frame_equal(rows_batched.drop(columns="computed_at"), rows_alone.drop(columns="computed_at"))
    finally:
        close(con)


def test_impressions_of_several_days_equal_each_day_read_alone(tmp_path):
    logged, _ = _assert_batch_equals_days(_impressions(tmp_path))
    assert logged[DAYS[0]].result.reasons == {"duplicate": 1, "missing_field": 1, "out_of_range": 1}
    assert sum(s.result.quarantined for s in logged.values()) == 3  # q0 on every day: no duplicate across days
    ranks = logged[DAYS[3]].rows.to_pandas()  # no logged rank: by score, the third item (0.95) second
    assert ranks[ranks.request_id == "q0"].sort_values("rank").score.tolist()[:3] == [1.0, 0.95, 0.9]


def test_a_file_the_batch_cannot_read_falls_back_to_one_day_at_a_time(tmp_path):
    logged, _ = _assert_batch_equals_days(_impressions(tmp_path, broken_day=2))
    broken = logged[DAYS[2]].result
    assert broken.loaded == 0 and broken.notes, broken  # noted, not read
    assert logged[DAYS[1]].result.loaded == 150 and logged[DAYS[3]].result.loaded == 150  # the others read


def test_capped_batches_keep_the_order_and_both_bounds():
    """The ranker's batches (`storage.reads.capped_batches`): consecutive days, at most `max_days` of them and at most
    `max_size` in all; a day larger than the budget alone."""
    from monitor_assets.storage.reads import capped_batches

    days = [dt.date(2026, 1, 1) + dt.timedelta(days=k) for k in range(10)]
    assert capped_batches(days, {}, 5, 3) == [days[:3], days[3:6], days[6:9], days[9:]]
    assert capped_batches(days, {days[1]: 100}, 5, 31) == [days[:1], days[1:2], days[2:]]
    assert capped_batches(days, dict.fromkeys(days, 2), 5, 31) == [days[i:i + 2] for i in range(0, 10, 2)]
    assert capped_batches(days[::-1], {}, 5, 4) == [days[::-1][:4], days[::-1][4:8], days[::-1][8:]]  # given order
