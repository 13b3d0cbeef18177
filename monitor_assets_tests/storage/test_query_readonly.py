"""`python -m monitor_assets.query` only reads, for real: nothing written, no file outside the lake's current
data read, no extension fetched, no setting changed, only the documented tables visible, and every table README
names answers. Run as users run it (a subprocess on a warehouse, lake and alert-state file in a tmp dir)."""

import re
import socket
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from monitor_assets.query import QueryError, check_read_only, open_read_only
from monitor_assets.storage.alert_state import STATE_TABLES, AlertState
from monitor_assets.storage.lake import TABLES, Lake
from monitor_assets.storage.warehouse import SCHEMA_SQL
from monitor_assets_tests.storage.test_query_and_maintenance import DAY1, predictions, query, rows
from monitor_assets_tests.storage.test_query_and_maintenance import env as lake_env  # noqa: F401 - the `env` fixture

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("fraud", "churn_v2")
FILE_TABLES = re.findall(r"CREATE TABLE IF NOT EXISTS (\S+) \(", SCHEMA_SQL)
DOCUMENTED = {*TABLES, "raw.predictions", *(f"raw.predictions__{m}" for m in MODELS), *FILE_TABLES, *STATE_TABLES}


@pytest.fixture
def env(lake_env):  # noqa: F811 - the fixture imported above
    """The small warehouse and lake of the query tests (two models, two days), and their variables."""
    return lake_env


def refused(done, kind: str) -> bool:
    """Exit 2, nothing on stdout, one line on stderr naming the statement kind."""
    return (done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
            and done.stderr.startswith(f"query: {kind} refused") and "Traceback" not in done.stderr)


def count(env: dict, sql: str) -> int:
    done = query(env, sql)
    assert done.returncode == 0, done.stderr
    return int(rows(done.stdout)[1][0])


@pytest.fixture
def state(env):
    """Two undelivered alerts and one acknowledgement in the alert-state file beside the warehouse."""
    path = Path(env["MONITOR_WAREHOUSE"]).with_name("monitor_state.sqlite")
    alerts = AlertState(path)
    failures = [{"model_id": "fraud", "check_name": "drift_share_below_threshold", "partition_date": DAY1,
                 "severity": "ERROR", "value": 0.5, "threshold": 0.3, "message": "5 of 10 features drifted"},
                {"model_id": "churn_v2", "check_name": "error_rate_below_threshold", "partition_date": DAY1,
                 "severity": "WARN", "value": 0.2, "threshold": 0.1, "message": "error rate 20%"}]
    assert alerts.enqueue(failures, {"*": ["file"]}, "run-1", evaluated_at=1.0) == 2
    alerts.acknowledge("fraud", None, str(DAY1), by="ana", reason="known")
    return path


def _day_file(env: dict) -> Path:
    table = DeltaTable(str(Lake(env["MONITOR_LAKE"]).model_path("fraud")))
    [uri] = [u for u in table.file_uris() if f"partition_date={DAY1}" in u]
    return Path(uri.removeprefix("file://"))


def test_copy_over_a_lake_file_is_refused_and_the_day_keeps_its_rows(env):
    target = _day_file(env)
    before = target.read_bytes()
    day = f"SELECT count(*) FROM raw.predictions__fraud WHERE partition_date = DATE '{DAY1}'"
    assert count(env, day) == 3 and count(env, "SELECT count(*) FROM raw.predictions") == 9

    done = query(env, f"COPY (SELECT * FROM raw.predictions__fraud LIMIT 1) TO '{target}' (FORMAT parquet)")
    assert refused(done, "COPY"), done.stderr
    # Hidden behind a harmless statement and a comment: refused before the first one runs (stdout empty).
    done = query(env, f"SELECT 1; /* just a comment */ COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet)")
    assert refused(done, "COPY"), done.stderr
    assert "(statement 2 of 2)" in done.stderr
    # In a string or a comment the word is not a statement: these run.
    done = query(env, "SELECT 'COPY t TO ''/tmp/x''' AS s -- ; COPY t TO '/tmp/y'")
    assert done.returncode == 0 and rows(done.stdout) == [["s"], ["COPY t TO '/tmp/x'"]]

    assert target.read_bytes() == before
    assert count(env, day) == 3 and count(env, "SELECT count(*) FROM raw.predictions") == 9


def test_writes_anywhere_are_refused_and_create_nothing(env, tmp_path):
    out = tmp_path / "out.csv"
    db = tmp_path / "other.duckdb"
    cases = [(f"COPY (SELECT 1) TO '{out}'", "COPY"), (f"EXPORT DATABASE '{tmp_path / 'export'}'", "EXPORT"),
             (f"ATTACH '{db}' AS other (READ_WRITE)", "ATTACH"), ("DETACH memory", "DETACH"),
             (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}'", "EXPLAIN ANALYZE COPY"),
             ("CREATE TABLE raw.oops AS SELECT 1", "CREATE"), ("INSERT INTO monitoring.alerts DEFAULT VALUES", "INSERT"),
             ("DELETE FROM raw.interactions", "DELETE"), ("SET enable_external_access = true", "SET"),
             ("RESET lock_configuration", "RESET"), ("PRAGMA enable_profiling", "PRAGMA enable_profiling")]
    done = query(env, cases[0][0])
    assert refused(done, "COPY"), done.stderr
    # The rest in one shell session (one process): one line each on stderr, the session goes on.
    done = query(env, "-i", stdin="".join(f"{sql};\n" for sql, _ in cases) + "SELECT 'still here' AS s;\n")
    assert done.returncode == 0 and "still here" in done.stdout
    assert [line.split(" refused")[0] for line in done.stderr.splitlines()] == [f"query: {k}" for _, k in cases]
    assert not out.exists() and not db.exists() and not (tmp_path / "export").exists()


def test_files_outside_the_lake_cannot_be_read(env, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("user,password\nroot:x,hunter2\n")
    for sql in ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/passwd')",
                f"SELECT * FROM '{secret}'", "SELECT * FROM glob('/etc/*')"]:
        done = query(env, sql)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (sql, done.stderr)
        assert "root:" not in done.stdout + done.stderr and "hunter2" not in done.stdout + done.stderr
        assert "disabled by configuration" in done.stderr, done.stderr
    # A lake file the views do not read (an older version of the day) is outside too.
    old = _day_file(env)
    Lake(env["MONITOR_LAKE"]).replace_model_day("fraud", predictions("fraud", DAY1, 3), DAY1)
    assert old.exists()
    done = query(env, f"SELECT count(*) FROM read_parquet('{old}')")
    assert done.returncode == 2 and "disabled by configuration" in done.stderr


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 counting the connections it gets."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                seen.append(conn)
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def test_extensions_are_neither_installed_nor_loaded_nor_fetched(env, listener):
    port, seen = listener
    url = f"http://127.0.0.1:{port}"
    statements = [(f"INSTALL httpfs FROM '{url}'", "INSTALL"), ("INSTALL httpfs", "INSTALL"),
                  ("FORCE INSTALL httpfs", "FORCE"), ("LOAD httpfs", "LOAD"),
                  (f"LOAD '{url}/httpfs.duckdb_extension'", "LOAD"),
                  (f"SET custom_extension_repository = '{url}'", "SET")]
    start = time.perf_counter()
    done = query(env, statements[1][0])
    assert refused(done, "INSTALL"), done.stderr
    assert time.perf_counter() - start < 30  # mostly the process's start; a download attempt would hang here
    done = query(env, "-i", stdin="".join(f"{sql};\n" for sql, _ in statements))
    assert [line.split(" refused")[0] for line in done.stderr.splitlines()] == [f"query: {k}" for _, k in statements]
    # A SELECT naming a URL is refused by the locked configuration (no httpfs autoload, no request).
    done = query(env, f"SELECT * FROM read_parquet('{url}/x.parquet')")
    assert done.returncode == 2 and "disabled by configuration" in done.stderr
    time.sleep(0.3)
    assert seen == []


def test_refusal_happens_before_anything_runs_and_is_quick(env):
    con = open_read_only(env["MONITOR_WAREHOUSE"], env["MONITOR_LAKE"])
    try:
        start = time.perf_counter()
        for sql in ["INSTALL httpfs", "LOAD httpfs", "ATTACH 'x.duckdb'", "CALL checkpoint()", "CHECKPOINT",
                    "IMPORT DATABASE '/tmp'", "PREPARE p AS SELECT 1", "BEGIN", "VACUUM", "DROP TABLE raw.sales",
                    "UPDATE raw.sales SET quantity = 0", "CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')",
                    "SET VARIABLE v = 1", "USE system", "COMMENT ON TABLE raw.sales IS 'x'"]:
            with pytest.raises(QueryError, match=r"refused: queries here only read"):
                check_read_only(con, sql)
        assert time.perf_counter() - start < 0.5
        for sql in ["SELECT 1", "FROM raw.labels", "WITH t AS (SELECT 1) SELECT * FROM t", "SHOW TABLES",
                    "SHOW ALL TABLES", "DESCRIBE raw.labels", "SUMMARIZE raw.labels", "EXPLAIN SELECT 1",
                    "EXPLAIN ANALYZE SELECT count(*) FROM raw.predictions", "PRAGMA show_tables",
                    "PRAGMA table_info('raw.labels')", "SELECT 1 UNION ALL SELECT 2"]:
            [statement] = check_read_only(con, sql)
            con.execute(statement).fetchall()
        # The configuration is locked: a SET that slipped past would fail anyway.
        with pytest.raises(Exception, match="lock"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()


def test_show_tables_and_information_schema_list_exactly_the_documented_names(env, state):
    done = query(env, "SHOW ALL TABLES")
    assert done.returncode == 0, done.stderr
    listed = {f"{r[1]}.{r[2]}" for r in rows(done.stdout)[1:]}
    assert {r[0] for r in rows(done.stdout)[1:]} == {"memory"}  # no temp relations, no other database
    assert listed == DOCUMENTED, (listed ^ DOCUMENTED)
    assert len(listed) == 47

    done = query(env, "SELECT table_schema || '.' || table_name FROM information_schema.tables")
    assert {r[0] for r in rows(done.stdout)[1:]} == DOCUMENTED
    done = query(env, "SHOW TABLES")
    assert {r[0] for r in rows(done.stdout)[1:]} == {n.split(".", 1)[1] for n in DOCUMENTED}
    done = query(env, "SELECT count(*) FROM duckdb_views() WHERE NOT internal AND view_name LIKE '%lake%'")
    assert rows(done.stdout)[1] == ["0"]


def test_every_table_readme_names_answers(env, state):
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    named = set(re.findall(r'\b((?:raw|monitoring|reporting|history)\.(?:"[^"]+"|[a-z_]+))', readme))
    names = {n for n in named if "<model>" not in n} | {f'raw."predictions__{m}"' for m in MODELS}
    assert {"monitoring.alert_deliveries", "monitoring.alert_silences", "raw.ingestion_log"} <= names
    sql = " UNION ALL ".join(f"SELECT '{n.replace(chr(39), '')}' AS t, count(*) AS n FROM {n}" for n in sorted(names))
    done = query(env, sql)
    assert done.returncode == 0, done.stderr
    counts = dict(rows(done.stdout)[1:])
    assert set(counts) == {n.replace("'", "") for n in names}
    assert counts["monitoring.alert_deliveries"] == "2" and counts["monitoring.alert_acknowledgements"] == "1"
    assert counts["monitoring.alert_silences"] == "0" and counts['raw."predictions__churn_v2"'] == "4"
    assert counts["raw.predictions"] == "9" and counts["raw.ingestion_log"] == "0"

    # The outbox's own columns and values, as `notify list deliveries` shows them.
    done = query(env, "SELECT model_id, check_name, channel, status, attempts FROM monitoring.alert_deliveries "
                      "ORDER BY model_id")
    assert rows(done.stdout) == [["model_id", "check_name", "channel", "status", "attempts"],
                                 ["churn_v2", "error_rate_below_threshold", "file", "pending", "0"],
                                 ["fraud", "drift_share_below_threshold", "file", "pending", "0"]]


def test_alert_tables_exist_before_any_alert_and_an_earlier_file_is_let_go(env):
    state_file = Path(env["MONITOR_WAREHOUSE"]).with_name("monitor_state.sqlite")
    assert not state_file.exists()
    assert count(env, "SELECT count(*) FROM monitoring.alert_deliveries") == 0
    assert not state_file.exists()  # read-only: no state file created
    assert not Path(env["MONITOR_WAREHOUSE"]).exists()  # every table is in the lake: no DuckDB file either
    import duckdb

    # An earlier release's file, not moved to the lake yet: its lock is held only while its tables are copied,
    # so a writer opens it during a session; a table the lake took over shows the lake's rows.
    Path(env["MONITOR_WAREHOUSE"]).parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(env["MONITOR_WAREHOUSE"]) as old:
        old.execute("CREATE SCHEMA monitoring; CREATE TABLE monitoring.alerts (partition_date DATE, model_id VARCHAR)")
    con = open_read_only(env["MONITOR_WAREHOUSE"], env["MONITOR_LAKE"])
    try:
        with duckdb.connect(env["MONITOR_WAREHOUSE"]) as writer:
            writer.execute("INSERT INTO monitoring.alerts VALUES (DATE '2026-03-01', 'fraud')")
        assert con.execute("SELECT count(*) FROM monitoring.alerts").fetchone()[0] == 0
    finally:
        con.close()


def test_ordinary_queries_and_the_shell_still_work(env, tmp_path):
    done = query(env, "SELECT model_id, count(*) AS n FROM raw.predictions GROUP BY 1 ORDER BY 1")
    assert done.returncode == 0 and rows(done.stdout) == [["model_id", "n"], ["churn_v2", "4"], ["fraud", "5"]]
    never = tmp_path / "never.csv"
    done = query(env, "-i", stdin=f"SELECT count(*) AS n FROM raw.labels;\nCOPY (SELECT 1) TO '{never}';\n"
                                  "SELECT 40 + 2 AS answer;\n.quit\n")
    assert done.returncode == 0, done.stderr
    assert "│     4 │" in done.stdout and "│     42 │" in done.stdout  # the shell went on after the refusal
    assert done.stderr.startswith("query: COPY refused") and len(done.stderr.splitlines()) == 1
    assert not never.exists()
