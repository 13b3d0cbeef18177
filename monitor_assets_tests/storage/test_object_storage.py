"""The lake on object storage: a real S3 API server (moto in server mode, its own process on 127.0.0.1 and a
free port, started and stopped here), the lake at `s3://<bucket>/lake`, credentials from the environment.

Tables written to and read from the bucket under their documented names, a partition replaced, a writer
killed mid-write leaves the previous version readable, two writers at once, maintenance, and the ingestion
plus `python -m monitor_assets.query` with `MONITOR_LAKE=s3://...`."""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import duckdb
import pytest

from monitor_assets.config import load_config
from monitor_assets.ingestion.readers import ingest_day
from monitor_assets.storage.lake import Lake, s3_storage_options
from monitor_assets.storage.warehouse import connect
from monitor_assets_tests.conftest import TWO_MODELS_CONFIG as CONFIG
from monitor_assets_tests.conftest import write

ROOT = Path(__file__).resolve().parents[2]
DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
SECRET = "moto-secret-key-not-for-logs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server in its own process; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("moto_server exited at start")
                time.sleep(0.05)
        else:
            pytest.fail("moto_server did not answer within 10 s")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket; the AWS variables set for this process. Returns (lake URI, bucket, s3 client, env)."""
    values = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "moto-key", "AWS_SECRET_ACCESS_KEY": SECRET,
              "AWS_REGION": "us-east-1"}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)  # derived from the http:// endpoint
    bucket = "lake-" + uuid.uuid4().hex[:12]
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="moto-key",
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake", bucket, client, {**os.environ, **values}


def predictions(model: str, day: dt.date, n: int, version: str = "1", offset: int = 0):
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(f"""
            SELECT DATE '{day}' AS partition_date, '{model}' AS model_id, '{model}-{day}-' || i AS prediction_id,
                   TIMESTAMPTZ '{day} 10:00:00+00' + i * INTERVAL 1 SECOND AS ts, '{version}' AS model_version,
                   10.0 + i AS latency_ms, 'ok' AS status, true AS is_ok, ((i + {offset}) % 100) / 100 AS score,
                   'logs.jsonl' AS source_file, i::BIGINT AS line_no, 'yes' AS decision,
                   (i * 1.5)::DOUBLE AS amount
            FROM range({n}) t(i)""").to_arrow_table()


def labels(model: str, day: dt.date, n: int):
    with duckdb.connect() as con:
        return con.sql(f"""SELECT DATE '{day}' AS partition_date, '{model}' AS model_id,
                                  '{model}-{day}-' || i AS prediction_id, DATE '{day}' AS prediction_date,
                                  (i % 2)::DOUBLE AS label, 'labels.csv' AS source_file, i::BIGINT AS line_no
                           FROM range({n}) t(i)""").to_arrow_table()


ROWS = {("fraud", DAY1): 300, ("fraud", DAY2): 200, ("reco", DAY1): 400, ("reco", DAY2): 100}


def _fill(lake: Lake) -> None:
    for (model, day), n in ROWS.items():
        lake.replace_model_day(model, predictions(model, day, n), day)
    for model in ("fraud", "reco"):
        lake.replace("raw.labels", labels(model, DAY1, 50), [DAY1], models=[model])


def _objects(client, bucket: str, prefix: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _counts(con) -> dict:
    return {(m, str(d)): n for m, d, n in con.execute(
        "SELECT model_id, partition_date, count(*) FROM raw.predictions GROUP BY ALL").fetchall()}


def test_tables_are_written_to_the_bucket_and_read_by_their_documented_names(s3, tmp_path):
    uri, bucket, client, _ = s3
    lake = Lake(uri)
    assert lake.remote and lake.models() == []
    _fill(lake)
    assert lake.models() == ["fraud", "reco"]
    keys = _objects(client, bucket)
    assert any(k.startswith("lake/raw/predictions/model_id=fraud/_delta_log/") for k in keys)
    assert any(k.startswith("lake/raw/labels/partition_date=2026-03-01/") and k.endswith(".parquet") for k in keys)

    with connect(str(tmp_path / "wh.duckdb"), uri, models=None) as con:
        assert _counts(con) == {(m, str(d)): n for (m, d), n in ROWS.items()}
        # Values, not only counts: one model-day's rows equal what was written, features included.
        got = con.sql("""SELECT prediction_id, score, amount, ts FROM raw."predictions__fraud"
                         WHERE partition_date = DATE '2026-03-02' ORDER BY line_no""").to_arrow_table()
        want = predictions("fraud", DAY2, 200).select(["prediction_id", "score", "amount", "ts"])
        assert got.to_pylist() == want.to_pylist()
        assert con.execute("SELECT count(*), sum(label) FROM raw.labels").fetchone() == (100, 50.0)
        assert con.execute("SELECT count(*) FROM monitoring.performance_daily").fetchone() == (0,)
        # A read-only connection (another process's view) sees the same.
    with connect(str(tmp_path / "wh.duckdb"), uri, models=None, read_only=True) as con:
        assert _counts(con) == {(m, str(d)): n for (m, d), n in ROWS.items()}
    assert list(tmp_path.iterdir()) == []  # nothing on local disk: every table is in the bucket, no DuckDB file


def test_a_partition_is_replaced_and_the_others_stay(s3, tmp_path):
    uri, _, _, _ = s3
    lake = Lake(uri)
    _fill(lake)
    wh = str(tmp_path / "wh.duckdb")
    with connect(wh, uri, models=None) as con:
        before = {d: con.execute("SELECT * FROM raw.predictions WHERE model_id = 'fraud' AND partition_date = ? "
                                 "ORDER BY prediction_id", [d]).fetchall() for d in (DAY1, DAY2)}
        reco_before = con.execute("SELECT * FROM raw.predictions WHERE model_id = 'reco' ORDER BY ALL").fetchall()

    new = predictions("fraud", DAY1, 120, version="2", offset=7)
    lake.replace_model_day("fraud", new, DAY1)
    lake.replace_model_day("fraud", new, DAY1)  # a re-run: the same rows, no duplicates
    with connect(wh, uri, models=None) as con:
        assert _counts(con)[("fraud", str(DAY1))] == 120
        assert con.execute("""SELECT count(*), count(DISTINCT prediction_id), min(model_version), max(model_version)
                              FROM raw.predictions WHERE model_id = 'fraud' AND partition_date = ?""",
                           [DAY1]).fetchone() == (120, 120, "2", "2")
        got = con.execute("""SELECT prediction_id, score FROM raw."predictions__fraud"
                             WHERE partition_date = ? ORDER BY line_no""", [DAY1]).fetchall()
        assert got == [(r["prediction_id"], r["score"]) for r in new.to_pylist()]
        # The other day of the model and the other model are untouched.
        assert con.execute("SELECT * FROM raw.predictions WHERE model_id = 'fraud' AND partition_date = ? "
                           "ORDER BY prediction_id", [DAY2]).fetchall() == before[DAY2]
        assert con.execute("SELECT * FROM raw.predictions WHERE model_id = 'reco' ORDER BY ALL").fetchall() == reco_before

        # The shared tables through the warehouse's one way of replacing a partition: one model's labels.
        from monitor_assets.storage.warehouse import replace_partitions

        replace_partitions(con, "raw.labels", [DAY1], "SELECT * FROM raw.labels WHERE model_id = 'fraud' LIMIT 10",
                           models=["fraud"])
        assert dict(con.execute("SELECT model_id, count(*) FROM raw.labels GROUP BY 1").fetchall()) == {
            "fraud": 10, "reco": 50}
        # An empty replacement deletes the model-day.
        lake.replace_model_day("reco", predictions("reco", DAY2, 0), DAY2)
    with connect(wh, uri, models=None, read_only=True) as con:
        assert ("reco", str(DAY2)) not in _counts(con) and _counts(con)[("reco", str(DAY1))] == 400


WRITER = textwrap.dedent("""
    import datetime as dt, sys
    import duckdb
    from monitor_assets.storage.lake import Lake
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(int(sys.argv[2]))]
    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")
        data = con.sql(f'''SELECT DATE '2026-01-01' + (i % {len(days)})::INTEGER AS partition_date,
                                  'fraud' AS model_id, 'p' || i AS prediction_id, DATE '2026-01-01' AS prediction_date,
                                  random() AS label, repeat('x', 40) || i AS source_file, i AS line_no
                           FROM range({int(sys.argv[3])}) t(i)''').to_arrow_table()
    print("ready", flush=True)
    Lake(sys.argv[1]).replace("raw.labels", data, days, models=["fraud"])
    print("done", flush=True)
""")


def test_a_killed_writer_leaves_the_previous_version_readable(s3, tmp_path):
    uri, bucket, client, env = s3
    lake = Lake(uri)
    lake.replace("raw.labels", labels("fraud", DAY1, 40), [DAY1], models=["fraud"])
    wh = str(tmp_path / "wh.duckdb")
    with connect(wh, uri, models=None) as con:
        before = con.execute("SELECT * FROM raw.labels ORDER BY ALL").fetchall()
    version = lake.table(lake.path("raw.labels")).version()
    prefix = "lake/raw/labels/"
    log_before = _objects(client, bucket, prefix + "_delta_log/")
    data_before = _objects(client, bucket, prefix) - log_before

    # A writer of 60 days (60 partitions, 60 files) is killed once some of its files are in the bucket,
    # before its commit.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, uri, "60", "3000000"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", (proc.wait(), proc.stderr.read())
    deadline = time.monotonic() + 120
    new_files: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        new_files = _objects(client, bucket, prefix) - data_before - _objects(client, bucket, prefix + "_delta_log/")
        if new_files:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, f"the writer finished before it could be killed: {proc.returncode}"
    assert new_files, "no file of the killed write reached the bucket"
    # Its files are in the bucket, its commit is not: the table is at the previous version with its rows.
    assert _objects(client, bucket, prefix + "_delta_log/") == log_before
    assert lake.table(lake.path("raw.labels")).version() == version
    with connect(wh, uri, models=None) as con:
        assert con.execute("SELECT * FROM raw.labels ORDER BY ALL").fetchall() == before
    files_in_version = {u.split(f"s3://{bucket}/", 1)[1] for u in lake.table(lake.path("raw.labels")).file_uris()}
    assert not files_in_version & new_files

    # Maintenance on the bucket: the orphans of the killed write go, the rows stay.
    report = lake.maintain(retention_hours=0)
    assert [r["table"] for r in report] == ["raw/labels"] and report[0]["files_vacuumed"] >= len(new_files)
    left = _objects(client, bucket, prefix) - _objects(client, bucket, prefix + "_delta_log/")
    assert left == {u.split(f"s3://{bucket}/", 1)[1] for u in lake.table(lake.path("raw.labels")).file_uris()}
    with connect(wh, uri, models=None, read_only=True) as con:
        assert con.execute("SELECT * FROM raw.labels ORDER BY ALL").fetchall() == before


CONCURRENT = textwrap.dedent("""
    import datetime as dt, sys
    import duckdb
    from monitor_assets.storage.lake import Lake
    lake, model = Lake(sys.argv[1]), sys.argv[2]
    for i in range(4):
        day = dt.date(2026, 3, 1) + dt.timedelta(days=i)
        with duckdb.connect() as con:
            rows = con.sql(f'''SELECT DATE '{day}' AS partition_date, '{model}' AS model_id, '{model}-' || i AS prediction_id,
                                      DATE '{day}' AS prediction_date, 1.0 AS label FROM range(1000) t(i)''').to_arrow_table()
        lake.replace("raw.labels", rows, [day], models=[model])
        lake.replace("monitoring.history", duckdb.sql(f'''SELECT DATE '{day}' AS partition_date, '{model}' AS model_id,
                     'volume' AS metric, '' AS segment, 1000.0 AS value''').to_arrow_table(), [day], models=[model])
""")


def test_two_writers_on_distinct_partitions_at_once(s3, tmp_path):
    """Two processes commit to the same tables at the same time (conditional puts, no lock table)."""
    uri, _, _, env = s3
    Lake(uri).replace("raw.labels", labels("seed", DAY1, 1), [DAY1], models=["seed"])  # the table exists
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, uri, m], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    with connect(str(tmp_path / "wh.duckdb"), uri, models=None, read_only=False) as con:
        assert dict(con.execute("SELECT model_id, count(*) FROM raw.labels GROUP BY 1").fetchall()) == {
            "a": 4000, "b": 4000, "seed": 1}
        assert con.execute("""SELECT count(*), count(DISTINCT (model_id, partition_date)) FROM monitoring.history
                           """).fetchone() == (8, 8)
    lake = Lake(uri)
    # 1 + 4 + 4 commits on labels, none lost.
    assert lake.table(lake.path("raw.labels")).version() == 8




def test_ingestion_onto_the_bucket_and_the_query_command(s3, tmp_path, monkeypatch):
    uri, _, _, env = s3
    for model, n in (("fraud", 30), ("reco", 20)):
        lines = [json.dumps({"prediction_id": f"{model}-{i}", "model_id": model, "timestamp": "2026-03-01T10:00:00Z",
                             "score": i / n, "features": {"amount": i * 2.0} if model == "fraud"
                             else {"clicks": i, "device": "mobile"}}) for i in range(n)]
        lines.append("{not json")
        write(tmp_path / "logs" / "2026-03-01" / f"{model}.jsonl", "\n".join(lines) + "\n")
    config_path = write(tmp_path / "monitor.yaml", CONFIG)
    wh = tmp_path / "wh" / "monitor.duckdb"
    values = {"MONITOR_CONFIG": str(config_path), "MONITOR_WAREHOUSE": str(wh), "MONITOR_LAKE": uri}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    config = load_config(config_path)
    assert config.lake_path == uri
    with connect(str(wh), config.lake_path) as con:
        result = ingest_day(con, config, "predictions", DAY1)
        assert (result.read, result.loaded, result.quarantined) == (52, 50, 2)
    assert Lake(uri).models() == ["fraud", "reco"]

    done = subprocess.run([sys.executable, "-m", "monitor_assets.query",
                           "SELECT model_id, count(*) AS n FROM raw.predictions GROUP BY 1 ORDER BY 1"],
                          env={**env, **values}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["model_id,n", "fraud,30", "reco,20"]
    done = subprocess.run([sys.executable, "-m", "monitor_assets.query",
                           "SELECT count(*) AS n FROM raw.quarantine"],
                          env={**env, **values}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines() == ["n", "2"], done.stderr
    assert SECRET not in done.stdout + done.stderr


def test_settings_come_from_the_environment_and_secrets_stay_out_of_messages(s3, tmp_path):
    uri, bucket, _, _ = s3
    options = s3_storage_options()
    assert options["AWS_SECRET_ACCESS_KEY"] == SECRET and options["AWS_ALLOW_HTTP"] == "true"
    assert options["aws_conditional_put"] == "etag"
    assert "aws_conditional_put" not in s3_storage_options({"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    assert s3_storage_options({"AWS_DEFAULT_REGION": "eu-west-1"})["AWS_REGION"] == "eu-west-1"
    lake = Lake(uri)
    assert SECRET not in repr(lake)
    with pytest.raises(ValueError) as err:
        Lake(f"s3://moto-key:{SECRET}@{bucket}/lake")
    assert SECRET not in str(err.value)
    # A lake in a bucket that does not exist: the error names no secret.
    with pytest.raises(Exception) as err:
        Lake("s3://no-such-bucket-here/lake").replace_model_day("fraud", predictions("fraud", DAY1, 3), DAY1)
    assert SECRET not in str(err.value)
    # The local lake is unchanged: a Path, no storage options.
    local = Lake(tmp_path / "lake")
    assert not local.remote and local.storage_options is None and isinstance(local.path("raw.labels"), Path)
    with connect(str(tmp_path / "wh.duckdb"), str(tmp_path / "lake")) as con:
        assert "s3" not in con.list_filesystems()
