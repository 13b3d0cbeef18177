"""The small mutable state in the lake (issue 25): read-modify-write edits from several processes at once lose
nothing and duplicate nothing; an earlier release's DuckDB file is moved once; a run needs no DuckDB file."""

import datetime as dt
import multiprocessing as mp
from dataclasses import replace
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from monitor_assets.alerting.rules import upsert_alerts
from monitor_assets.retraining import logic as L
from monitor_assets.storage.lake import TABLES, Lake
from monitor_assets.storage.warehouse import MOVED_TO_LAKE, connect, edit, open_warehouse

SPAWN = mp.get_context("spawn")
DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(20)]
NOW = dt.datetime(2026, 3, 25, 12, 0)


def _evaluated(model_id: str, passed: bool, day: dt.date) -> pd.DataFrame:
    """One day's check of a model, as `alerting.rules.evaluate` hands it to `upsert_alerts`."""
    return pd.DataFrame({"partition_date": [day], "model_id": model_id, "check_name": "drift", "severity": "WARN",
                         "value": 0.5, "threshold": 0.3, "message": f"{model_id} drifted", "passed": passed})


def _two_at_once(lake: str, me: str, other: str, barrier) -> None:
    """Each of two processes: 20 requests and 20 alerts of its own model, one edit each; then, once both are
    done, decides every request of the other's model and resolves the other's alerts, a day at a time."""
    with connect(None, lake) as con:
        barrier.wait()
        for day in DAYS:
            L.insert_request(con, me, "v1", day, "test", 1.0, 0.01, None, "trigger")
            upsert_alerts(con, _evaluated(me, False, day), NOW)
        barrier.wait()
        # A connection's views show the versions of its own last write: the other's rows on a new one.
        with connect(None, lake) as fresh:
            ids = [r for (r,) in fresh.execute("SELECT request_id FROM monitoring.retraining_requests "
                                               "WHERE model_id = ?", [other]).fetchall()]
        assert len(ids) == len(DAYS)
        for request_id, day in zip(ids, DAYS, strict=True):
            L.decide(con, request_id, "approved" if me == "a" else "rejected", me, "by the other process")
            upsert_alerts(con, _evaluated(other, True, day), NOW)


def test_two_processes_editing_requests_and_alerts_at_once_lose_and_duplicate_nothing(tmp_path):
    lake = str(tmp_path / "lake")
    barrier = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_two_at_once, args=(lake, me, other, barrier))
               for me, other in (("a", "b"), ("b", "a"))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert [w.exitcode for w in workers] == [0, 0]
    with connect(None, lake) as con:
        requests = con.execute("SELECT request_id, model_id, status, decided_by FROM monitoring.retraining_requests "
                               "ORDER BY request_id").fetchall()
        alerts = con.execute("SELECT model_id, partition_date, status FROM monitoring.alerts").fetchall()
    # Numbered 1..40 with no gap and no repeat, whichever process committed first each time.
    assert [r[0] for r in requests] == list(range(1, 41))
    assert sorted((m, s, by) for _, m, s, by in requests) == (
        [("a", "rejected", "b")] * 20 + [("b", "approved", "a")] * 20)
    assert len(alerts) == 40 and len(set(alerts)) == 40
    assert {(m, s) for m, _, s in alerts} == {("a", "resolved"), ("b", "resolved")}
    # One commit per edit: 40 requests opened and 40 decided.
    location = Lake(lake).path("monitoring.retraining_requests")
    assert len(Lake(lake).table(location).history()) == 80


def _edit_after_both_read(lake: str, tag: str, barrier, tries) -> None:
    """An edit whose `apply` waits (the first time) until the other process has read too: both read the same
    version, so one commit must lose to the other's."""
    with connect(None, lake) as con:
        def add(con):
            tries.put(tag)
            if not getattr(add, "waited", False):
                add.waited = True
                barrier.wait()
            con.execute("INSERT INTO monitoring.reference_anchors VALUES (?, 'v', DATE '2026-03-01', ?, now(), 'r')",
                        [tag, tag])
        edit(con, "monitoring.reference_anchors", add)


@pytest.mark.parametrize("seeded", [False, True])
def test_an_edit_that_lost_to_a_commit_made_after_its_read_is_applied_again(tmp_path, seeded):
    """delta-rs alone lets two overwrites of an empty table both land, each without the other's rows (measured
    on 1.6: `final=['A', 'B']` from two overwrites that each saw none): `Lake.edit` allows no commit between
    its read and its own, empty table (`seeded` False: not even created yet) or not."""
    lake = str(tmp_path / "lake")
    if seeded:
        with connect(None, lake) as con:
            edit(con, "monitoring.reference_anchors", lambda c: c.execute(
                "INSERT INTO monitoring.reference_anchors VALUES ('seed', 'v', DATE '2026-03-01', 's', now(), 'r')"))
    barrier, tries = SPAWN.Barrier(2), SPAWN.Queue()
    workers = [SPAWN.Process(target=_edit_after_both_read, args=(lake, tag, barrier, tries)) for tag in "AB"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    applied = [tries.get(timeout=5) for _ in range(3)]
    assert sorted(applied) in (["A", "A", "B"], ["A", "B", "B"])  # the loser applied its DML again
    with connect(None, lake) as con:
        models = sorted(m for (m,) in con.execute("SELECT model_id FROM monitoring.reference_anchors").fetchall())
    assert models == (["A", "B", "seed"] if seeded else ["A", "B"])


def test_an_edit_that_fails_writes_nothing_and_leaves_the_table_readable(tmp_path):
    with connect(None, str(tmp_path / "lake")) as con:
        L.insert_request(con, "m", "v1", DAYS[0], "test", None, None, None, "me")
        L.decide(con, 1, "approved", "ana", "")
        with pytest.raises(ValueError, match="only a proposed request can be rejected"):
            L.decide(con, 1, "rejected", "bo", "")  # approved already: refused, inside the edit
        assert con.execute("SELECT status, decided_by FROM monitoring.retraining_requests").fetchall() == [
            ("approved", "ana")]
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'monitoring'").fetchone()[0] == 0


# What an earlier release created in its DuckDB file, one row each (its DDL as it was).
OLD_FILE = {
    "raw.interactions": "partition_date DATE NOT NULL, session_id VARCHAR, user_id VARCHAR, ts TIMESTAMPTZ, "
                        "event VARCHAR, product_id VARCHAR, from_recommendation BOOLEAN",
    "raw.sales": "partition_date DATE NOT NULL, order_id VARCHAR, ts TIMESTAMPTZ, user_id VARCHAR, "
                 "product_id VARCHAR, quantity DOUBLE, unit_price DOUBLE, revenue DOUBLE",
    "monitoring.business_kpis_daily": "partition_date DATE NOT NULL, sessions BIGINT, sessions_with_purchase BIGINT, "
                                      "conversion_rate DOUBLE, recommendation_impressions BIGINT, "
                                      "recommendation_ctr DOUBLE, orders BIGINT, units_sold DOUBLE, revenue DOUBLE, "
                                      "average_order_value DOUBLE, computed_at TIMESTAMP",
    "monitoring.anomalies": "partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, "
                            "segment VARCHAR, value DOUBLE, expected DOUBLE, robust_z DOUBLE, direction VARCHAR, "
                            "computed_at TIMESTAMP",
    "monitoring.reference_losses": "model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, anchor_day DATE NOT "
                                   "NULL, prediction_id VARCHAR, partition_date DATE, loss DOUBLE, complete BOOLEAN, "
                                   "computed_at TIMESTAMP",
    "monitoring.reference_anchors": "model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, anchor_day DATE NOT "
                                    "NULL, set_by VARCHAR, set_at TIMESTAMP, reason VARCHAR",
    "monitoring.retraining_trigger": "partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR, "
                                     "loss VARCHAR, n_day BIGINT, mean_loss_day DOUBLE, band_low DOUBLE, "
                                     "band_high DOUBLE, window_start DATE, n_current BIGINT, mean_current DOUBLE, "
                                     "reference_anchor DATE, n_reference BIGINT, mean_reference DOUBLE, "
                                     "statistic DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, flagged BOOLEAN, "
                                     "note VARCHAR, computed_at TIMESTAMP",
    "monitoring.retraining_requests": "request_id BIGINT NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR, "
                                      "opened_on DATE NOT NULL, reason VARCHAR, statistic DOUBLE, p_value DOUBLE, "
                                      "\"window\" VARCHAR, status VARCHAR NOT NULL, opened_by VARCHAR, "
                                      "decided_by VARCHAR, decided_at TIMESTAMP, note VARCHAR, outcome VARCHAR, "
                                      "run_id VARCHAR, finished_at TIMESTAMP, created_at TIMESTAMP",
    "monitoring.version_daily": "partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, model_version VARCHAR NOT "
                                "NULL, volume BIGINT, n_errors BIGINT, latency_p95_ms DOUBLE, computed_at TIMESTAMP",
    "monitoring.model_versions": "model_id VARCHAR NOT NULL, model_version VARCHAR NOT NULL, first_seen DATE, "
                                 "last_seen DATE, traffic_share DOUBLE, role VARCHAR, champion_since DATE, "
                                 "computed_at TIMESTAMP",
    "monitoring.version_comparison": "partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, "
                                     "champion_version VARCHAR, challenger_version VARCHAR, metric VARCHAR, "
                                     "champion_value DOUBLE, challenger_value DOUBLE, difference DOUBLE, "
                                     "p_value DOUBLE, gate VARCHAR, verdict VARCHAR, reason VARCHAR, "
                                     "computed_at TIMESTAMP",
    "monitoring.alerts": "partition_date DATE NOT NULL, model_id VARCHAR NOT NULL, check_name VARCHAR NOT NULL, "
                         "severity VARCHAR, value DOUBLE, threshold DOUBLE, message VARCHAR, status VARCHAR, "
                         "first_seen TIMESTAMP, last_seen TIMESTAMP",
}


def _old_file(path: Path) -> dict[str, tuple]:
    """An earlier release's warehouse file, one row in each table; returns the rows."""
    rows = {}
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'UTC'; CREATE SCHEMA raw; CREATE SCHEMA monitoring")
        for i, (table, ddl) in enumerate(OLD_FILE.items()):
            con.execute(f"CREATE TABLE {table} ({ddl})")
            types = [t for (t,) in con.execute(f"SELECT data_type FROM information_schema.columns WHERE "
                                               f"table_schema || '.' || table_name = '{table}' "
                                               "ORDER BY ordinal_position").fetchall()]
            values = ", ".join({"DATE": f"DATE '2026-02-{i + 1:02d}'", "BIGINT": str(i + 1), "DOUBLE": f"{i}.5",
                                "BOOLEAN": "true", "VARCHAR": f"'{table}'"}.get(t, "TIMESTAMP '2026-02-01 08:00'")
                               for t in types)
            con.execute(f"INSERT INTO {table} VALUES ({values})")
            rows[table] = con.execute(f"SELECT * FROM {table}").fetchone()
    return rows


def test_an_earlier_file_moves_to_the_lake_once_and_keeps_every_row(tmp_path):
    path = tmp_path / "monitor.duckdb"
    rows = _old_file(path)
    assert set(OLD_FILE) <= set(MOVED_TO_LAKE) and set(OLD_FILE) <= set(TABLES)
    with connect(str(path)) as con:
        for table, row in rows.items():
            assert con.execute(f"SELECT * FROM {table}").fetchall() == [row], table
        # The lake holds them now: an edit works on the moved rows.
        L.insert_request(con, "m", None, dt.date(2026, 3, 1), "after the move", None, None, None, "me")
    with duckdb.connect(str(path), read_only=True) as old:  # kept under a legacy name, not deleted
        kept = {n for (n,) in old.execute("SELECT schema_name || '.' || table_name FROM duckdb_tables()").fetchall()}
    assert kept == {f"{t}_before_lake" for t in OLD_FILE}
    before = path.stat().st_mtime_ns
    from monitor_assets.storage import warehouse

    warehouse._MIGRATED.clear()  # a new process: looks at the file again, read-only, and moves nothing twice
    with connect(str(path)) as con:
        for table in rows:
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == (
                2 if table == "monitoring.retraining_requests" else 1), table
        assert con.execute("SELECT request_id FROM monitoring.retraining_requests ORDER BY 1").fetchall() == [
            (rows["monitoring.retraining_requests"][0],), (rows["monitoring.retraining_requests"][0] + 1,)]
    assert path.stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    """Three demo days with incidents (drift, an error spike) in a tmp folder."""
    from monitor_assets.config import load_config
    from monitor_assets_tests.conftest import run_job

    out = tmp_path_factory.mktemp("no_file")
    config = replace(load_config(), warehouse_path=str(out / "wh" / "monitor.duckdb"),
                     reports_dir=str(out / "reports"), lake_dir="")
    result = run_job(config, "2026-10-12", "2026-10-14")
    assert result.success
    return config


def test_a_run_makes_no_duckdb_file_and_every_documented_table_reads(short_demo, monkeypatch):
    from monitor_assets import query

    config = short_demo
    assert not Path(config.warehouse_path).exists()
    assert not list(Path(config.warehouse_path).parent.glob("*.duckdb*"))
    documented = sorted(TABLES)
    with open_warehouse(config.warehouse_path, config.lake_path, read_only=True) as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in documented}
    # The daily facts of three days, and the cross-model steps' state, all written.
    for table in ("raw.interactions", "raw.sales", "monitoring.business_kpis_daily", "monitoring.version_daily",
                  "monitoring.model_versions", "monitoring.alerts", "monitoring.retraining_trigger"):
        assert counts[table] > 0, table
    monkeypatch.setenv("MONITOR_CONFIG", str(config.file))
    monkeypatch.setenv("MONITOR_WAREHOUSE", config.warehouse_path)
    monkeypatch.setenv("MONITOR_LAKE", config.lake_path)
    with query.warehouse() as shell:
        assert {t: shell.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in documented} == counts
    assert not Path(config.warehouse_path).exists()
    assert Lake(config.lake_path).has_table(Lake(config.lake_path).path("monitoring.alerts"))


def test_every_documented_view_reads_its_tables_columns_never_a_stand_in(short_demo, tmp_path):
    """A new connection makes the documented views over empty stand-ins first (binding them over the real scans
    read every footer twice), then the scans: none may be left reading the stand-in, on a lake with tables, on
    one with none yet, or on a thread's cursor."""
    from monitor_assets.storage.lake import PREDICTION_COLUMNS
    from monitor_assets.storage.warehouse import close, thread_cursor

    def columns(con, name):
        return [c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {name})").fetchall()]

    config = short_demo
    for lake in (config.lake_path, str(tmp_path / "empty_lake")):
        with connect(None, lake, models=None) as con:
            for table, (declared, _) in TABLES.items():
                assert columns(con, table)[:len(declared)] == list(declared), (lake, table)
            cursor = thread_cursor(con)
            try:
                assert columns(cursor, "monitoring.feature_drift") \
                    == list(TABLES["monitoring.feature_drift"][0])
            finally:
                close(cursor)
    with connect(None, config.lake_path, models=None) as con:
        models = [m.id for m in config.models if Lake(config.lake_path).has_table(Lake(config.lake_path).model_path(m.id))]
        assert models
        for model in models:
            got = columns(con, f"raw.predictions__{model}")
            assert got[:len(PREDICTION_COLUMNS)] == list(PREDICTION_COLUMNS) and len(got) > len(PREDICTION_COLUMNS)
        assert columns(con, "raw.predictions") == list(PREDICTION_COLUMNS)
        assert con.execute("SELECT count(DISTINCT model_id) FROM raw.predictions").fetchone()[0] == len(models)
        assert not con.execute("SELECT view_name FROM duckdb_views() WHERE sql LIKE '%stand_in%'").fetchall()


def _leave_a_users_state(con) -> None:
    """What a step may leave on its connection: a registered frame, a temporary table, an open transaction with
    an unfetched result."""
    con.register("users_frame", pd.DataFrame({"a": [1]}))
    con.execute("CREATE TEMP TABLE users_table AS SELECT 1 AS a")
    con.execute("BEGIN TRANSACTION")
    con.execute("INSERT INTO users_table VALUES (2)")
    con.execute("SELECT * FROM users_table")  # unfetched, in the open transaction


def _assert_nothing_of_the_last_user(con) -> None:
    names = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal "
                                       "UNION ALL SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}
    assert not names & {"users_frame", "users_table"}
    con.execute("BEGIN TRANSACTION")  # none left open
    con.execute("COMMIT")


def test_a_closed_connection_serves_the_next_one_clean_and_current(short_demo):
    """The next step's connection is the last one's, kept: it holds none of its user's temporary tables,
    registered frames or open transaction, reads a table written since by anyone (here the lake's own API, as
    another process writes), and two connections open at once are never the same."""
    from monitor_assets.storage import warehouse as W

    config = short_demo
    lake = Lake(config.lake_path)
    with connect(None, config.lake_path, models=None) as first:
        before = first.execute("SELECT count(*) FROM monitoring.fairness").fetchone()[0]
        first.execute("SELECT 1")  # a result left unfetched
        day = first.execute("SELECT max(partition_date) FROM monitoring.fairness").fetchall()[0][0]
        on_day = first.execute("SELECT count(*) FROM monitoring.fairness WHERE partition_date = ?",
                               [day]).fetchall()[0][0]
        _leave_a_users_state(first)
        kept = first
    assert before > on_day > 0
    lake.delete("monitoring.fairness", f"partition_date = CAST('{day.isoformat()}' AS DATE)")
    with connect(None, config.lake_path, models=None) as again:
        assert again is kept
        assert again.execute("SELECT count(*) FROM monitoring.fairness").fetchone()[0] == before - on_day
        _assert_nothing_of_the_last_user(again)
        with connect(None, config.lake_path, models=None) as other:
            assert other is not again
            assert other.execute("SELECT count(*) FROM monitoring.fairness").fetchone()[0] == before - on_day
    assert len(W._IDLE) <= W.IDLE_KEPT


def test_a_models_days_are_read_in_batches_sized_by_their_rows(short_demo, monkeypatch):
    """`model_day_batches`: up to DAYS_PER_READ days one batch as before; more days are counted first, and a batch
    grows past DAYS_PER_READ days while its rows stay within ROWS_PER_READ (a small model's year in one read, a
    busy model's month a month); every day once, in order."""
    from monitor_assets.storage import reads

    days = [dt.date(2026, 9, 20) + dt.timedelta(days=k) for k in range(40)]  # three of them have rows
    with open_warehouse(short_demo.warehouse_path, short_demo.lake_path, read_only=True) as con:
        model = short_demo.models[0].id
        rows = dict(con.execute("SELECT partition_date, count(*) FROM raw.predictions WHERE model_id = ? "
                                "GROUP BY 1", [model]).fetchall())
        assert len(rows) == 3 and min(rows.values()) > 100
        assert reads.model_day_batches(con, model, days[:31]) == [days[:31]]
        assert reads.model_day_batches(con, model, days[::-1]) == [days]  # a few thousand rows: one read
        monkeypatch.setattr(reads, "ROWS_PER_READ", max(rows.values()))
        monkeypatch.setattr(reads, "DAYS_PER_READ", 10)
        # days 0-21 empty, 22-24 with rows: the batch takes day 22, day 23 would pass the budget (a new batch, at
        # least 10 days whatever its rows), the rest from day 33
        assert reads.model_day_batches(con, model, days) == [days[:23], days[23:33], days[33:]]
    assert reads.day_batches(days[:5], {days[1]: 10 ** 9}) == [days[:5]]  # never fewer than DAYS_PER_READ days


def test_a_closed_thread_cursor_serves_the_next_thread_clean_and_current(short_demo):
    """A thread's cursor (`thread_cursor`) closed is its connection's next thread's: it holds none of its user's
    temporary tables, registered frames or open transaction, reads a table written since, and two cursors in use
    at once are never the same; at most CURSORS_KEPT wait."""
    from monitor_assets.storage import warehouse as W

    config = short_demo
    lake = Lake(config.lake_path)
    with connect(None, config.lake_path, models=None) as con:
        first = W.thread_cursor(con)
        model_rows = first.execute(f"SELECT count(*) FROM {lake.model_relation(first, config.models[0].id)}"
                                   ).fetchall()[0][0]
        day, before = first.execute("SELECT max(partition_date), count(*) FROM monitoring.fairness").fetchall()[0]
        on_day = first.execute("SELECT count(*) FROM monitoring.fairness WHERE partition_date = ?",
                               [day]).fetchall()[0][0]
        _leave_a_users_state(first)
        W.close(first)
        lake.delete("monitoring.fairness", f"partition_date = CAST('{day.isoformat()}' AS DATE)")
        again = W.thread_cursor(con)
        assert again is first and before > on_day > 0
        assert again.execute("SELECT count(*) FROM monitoring.fairness").fetchone()[0] == before - on_day
        assert again.execute(f"SELECT count(*) FROM {lake.model_relation(again, config.models[0].id)}"
                             ).fetchone()[0] == model_rows > 0
        _assert_nothing_of_the_last_user(again)
        others = [W.thread_cursor(con) for _ in range(W.CURSORS_KEPT + 2)]
        assert again not in others and len({id(c) for c in others}) == len(others)
        for c in [again, *others]:
            W.close(c)
        assert len(W._IDLE_CURSORS[con]) == W.CURSORS_KEPT
    # an idle cursor does not keep its connection alive (closed by DuckDB's own close, not ours)
    import gc
    import weakref

    kept = W.open_warehouse(None, config.lake_path)  # the connection above, kept
    parent = W.open_warehouse(None, config.lake_path)  # a new one
    assert parent is not kept
    W.close(W.thread_cursor(parent))
    assert len(W._IDLE_CURSORS[parent]) == 1
    gone = weakref.ref(parent)
    parent.close()
    del parent
    gc.collect()
    assert gone() is None
    W.close(kept)
