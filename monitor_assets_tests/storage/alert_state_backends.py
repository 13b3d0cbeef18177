"""Run alert-state tests on both stores: `state_backend` is "sqlite" (MONITOR_ENV=local, the file beside the
warehouse) or "postgres" (MONITOR_ENV=prod, the session's PostgreSQL server, state tables emptied first).

A test module uses it by importing it together with `postgres_server`:
`from monitor_assets_tests.storage.alert_state_backends import postgres_server, state_backend`.
Code under test then builds its state with `AlertState.for_config(config)`, as the callers do.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from monitor_assets.storage.state_sql import PG_ENV, PG_SCHEMA
from monitor_assets_tests.postgres import PostgresServer, postgres_server  # noqa: F401 - a fixture

STATE_TABLES = ("alert_deliveries", "alert_acknowledgements", "alert_silences")


def pg_env(server: PostgresServer) -> dict[str, str]:
    """The DAGSTER_PG_* variables of `server` (as the prod instance reads them) and MONITOR_ENV=prod."""
    values = {"host": server.host, "port": str(server.port), "db_name": server.db_name, "user": server.user,
              "password": server.password}
    return {"MONITOR_ENV": "prod", **{var: values[key] for key, var in PG_ENV.items()}}


def pg_connect(server: PostgresServer):
    return psycopg2.connect(host=server.host, port=server.port, dbname=server.db_name, user=server.user,
                            password=server.password, options=f"-c search_path={PG_SCHEMA}")


def empty_pg_state(server: PostgresServer) -> None:
    """Every state table emptied, ids from 1 again (the tables stay: this process has set them up)."""
    con = pg_connect(server)
    try:
        with con, con.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", [PG_SCHEMA])
            if cur.fetchone()[0]:
                cur.execute(f"TRUNCATE {', '.join(STATE_TABLES)} RESTART IDENTITY")
    finally:
        con.close()


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request, monkeypatch, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        monkeypatch.setenv("MONITOR_ENV", "local")
        yield "sqlite"
        return
    server = request.getfixturevalue("postgres_server")
    for name, value in pg_env(server).items():
        monkeypatch.setenv(name, value)
    empty_pg_state(server)
    yield "postgres"
    # The test really ran on PostgreSQL: no state file appeared beside its warehouse.
    assert not list(tmp_path.rglob("*_state.sqlite"))
