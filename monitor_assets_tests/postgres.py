"""A throwaway PostgreSQL server for tests that run Dagster on real Postgres storage.

`running_postgres()` starts one (initdb + pg_ctl on a fresh temporary folder, 127.0.0.1 on a free
port, unix sockets inside that folder), yields a `PostgresServer`, and stops it afterwards
(`pg_ctl stop -m immediate`, then the folder is removed). It creates a login role with a password
and a database it owns; clients connect by TCP with that password (scram-sha-256).

`initdb` refuses to run as root: when the tests run as root (CI), every server command runs as the
`postgres` OS user (`runuser -u postgres -- ...`), which owns the temporary folder.

`postgres_server` is a session-scoped pytest fixture built on it. It skips (with the reason) only
when no PostgreSQL binaries exist at all; any other failure raises with the tail of the server log.
Test modules use it by importing it: `from monitor_assets_tests.postgres import postgres_server`.

`write_postgres_instance(dagster_home, server)` writes `dagster_home/dagster.yaml` with dagster-postgres
storage. The password is not in the file: Dagster reads it from the environment variable named by
`PASSWORD_ENV_VAR` (`server.env` maps that name to the password).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

# The environment variable the written dagster.yaml reads the database password from.
PASSWORD_ENV_VAR = "DAGSTER_PG_PASSWORD"
# The SQLAlchemy URL scheme Dagster must use: dagster-postgres installs psycopg2, and SQLAlchemy 2.1
# made psycopg (v3) the driver of a bare `postgresql://` ("No module named 'psycopg'").
PG_SCHEME = "postgresql+psycopg2"

# Instance templates of this repo, first match wins (the file is being moved to deploy/local).
REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_TEMPLATE = REPO_ROOT / "deploy" / "local" / "dagster.yaml"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_START_ATTEMPTS = 3  # a new free port each time, in case another process took the one we picked


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries on this machine (the only reason the fixture skips)."""


class PostgresStartError(RuntimeError):
    """PostgreSQL is installed but the throwaway server did not come up."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    db_name: str
    data_dir: Path
    log_file: Path
    bin_dir: Path
    startup_seconds: float

    @property
    def url(self) -> str:
        return f"postgresql://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{quote(self.db_name)}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs for an instance written by `write_postgres_instance`."""
        return {PASSWORD_ENV_VAR: self.password}

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_file, lines)


def find_postgres_bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: from PATH (symlinks resolved, since
    pg_ctl looks for `postgres` next to its real self), else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            candidates.append(Path(found).resolve().parent)

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for bin_dir in candidates:
        if all(os.access(bin_dir / name, os.X_OK) for name in _SERVER_BINARIES):
            return bin_dir
    if candidates:
        raise PostgresStartError(
            f"PostgreSQL binaries are incomplete: none of {[str(c) for c in candidates]} holds all of "
            f"{', '.join(_SERVER_BINARIES)}"
        )
    raise PostgresNotInstalled(
        "PostgreSQL server binaries not found (no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin); "
        "install Debian's `postgresql` package (`apt-get install -y postgresql`)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no server log: {exc})"


def _runuser_prefix() -> list[str]:
    """Run server commands as the `postgres` OS user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser") if os.access(p, os.X_OK)), None
    )
    if runuser is None:
        raise PostgresStartError(
            "running as root, but `runuser` (util-linux) is missing to switch to `postgres`"
        )
    return [runuser, "-u", "postgres", "--"]


def _server_account() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresStartError(
            "running as root, but there is no `postgres` OS user to run the server as "
            "(Debian's postgresql package creates it)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _run(cmd: list[str], cwd: Path, what: str, log_file: Path, timeout: float = 60) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PostgresStartError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- output ---\n{(proc.stdout + proc.stderr).strip()[-3000:]}\n"
            f"--- server log tail ({log_file}) ---\n{_tail(log_file, 40)}"
        )


@contextmanager
def running_postgres(
    user: str = "dagster", db_name: str = "dagster", start_timeout: float = 30
) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server; yield its `PostgresServer`; stop and delete it."""
    bin_dir = find_postgres_bin_dir()
    prefix = _runuser_prefix()
    account = _server_account()
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    data_dir, log_file, pwfile = root / "data", root / "server.log", root / "superuser.pw"
    started = False
    try:
        superuser_password = secrets.token_urlsafe(16)
        pwfile.write_text(superuser_password + "\n")
        if account is not None:
            for path in (root, pwfile):
                os.chown(path, *account)
            probe = subprocess.run([*prefix, "test", "-w", str(root)], capture_output=True)
            if probe.returncode != 0:
                raise PostgresStartError(
                    f"the `postgres` OS user cannot write {root} (is TMPDIR={tempfile.gettempdir()} "
                    "inside a folder only root can enter?)"
                )
        # Local (unix socket) connections: trust, the socket lives in our 0700 folder.
        # TCP connections: scram-sha-256 with a password, as Dagster will connect.
        _run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            root,
            "initdb",
            log_file,
        )
        pwfile.unlink()
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            with open(data_dir / "postgresql.auto.conf", "a") as conf:
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 16MB\nmax_connections = 100\n"
                    "password_encryption = 'scram-sha-256'\nlog_min_messages = warning\n"
                )
            try:
                started = True  # from here a stop is due, even if start reports failure
                _run(
                    [
                        *prefix,
                        str(bin_dir / "pg_ctl"),
                        "start",
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log_file),
                        "-w",
                        "-t",
                        str(int(start_timeout)),
                    ],
                    root,
                    "pg_ctl start",
                    log_file,
                    timeout=start_timeout + 10,
                )
                break
            except PostgresStartError:
                if attempt == _START_ATTEMPTS or "could not bind" not in _tail(log_file, 20):
                    raise
        password = secrets.token_urlsafe(16)
        _create_role_and_db(root, port, user, password, db_name, log_file)
        server = PostgresServer(
            host="127.0.0.1",
            port=port,
            user=user,
            password=password,
            db_name=db_name,
            data_dir=data_dir,
            log_file=log_file,
            bin_dir=bin_dir,
            startup_seconds=time.monotonic() - t0,
        )
        _check_password_login(server)
        yield server
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w"],
                cwd=root,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _create_role_and_db(socket_dir: Path, port: int, user: str, password: str, db_name: str, log_file: Path):
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(host=str(socket_dir), port=port, user="postgres", dbname="postgres")
    except psycopg2.Error as exc:
        raise PostgresStartError(
            f"superuser connection over the unix socket failed: {exc}\n{_tail(log_file, 40)}"
        ) from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), [password])
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db_name), sql.Identifier(user))
            )
    finally:
        conn.close()


def _check_password_login(server: PostgresServer) -> None:
    import psycopg2

    try:
        psycopg2.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            dbname=server.db_name,
        ).close()
    except psycopg2.Error as exc:
        raise PostgresStartError(f"password login over TCP failed: {exc}\n{server.log_tail()}") from exc


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the test session (skips only if PostgreSQL is not installed)."""
    try:
        find_postgres_bin_dir()
    except PostgresNotInstalled as exc:
        pytest.skip(str(exc))
    with running_postgres() as server:
        yield server


def _instance_template() -> dict:
    return yaml.safe_load(INSTANCE_TEMPLATE.read_text()) or {}


def write_postgres_instance(dagster_home: Path, server: PostgresServer) -> Path:
    """Write `dagster_home/dagster.yaml`: the repo's instance template (deploy/local/dagster.yaml) with
    its storage replaced by `server`, telemetry off. Returns the path.

    The password is read by Dagster from the environment variable `PASSWORD_ENV_VAR`; set it (e.g.
    `monkeypatch.setenv(PASSWORD_ENV_VAR, server.password)` or `os.environ.update(server.env)`) in
    every process that opens the instance.
    """
    config = {
        key: value
        for key, value in _instance_template().items()
        # Any storage block of the template is replaced (the legacy per-storage keys too).
        if key not in ("storage", "run_storage", "event_log_storage", "schedule_storage")
    }
    config["storage"] = {
        "postgres": {
            "postgres_db": {
                "username": server.user,
                "password": {"env": PASSWORD_ENV_VAR},
                "hostname": server.host,
                "db_name": server.db_name,
                "port": server.port,
                # SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg (v3), which is not installed:
                # dagster-postgres 0.29 depends on psycopg2-binary only. Name the driver.
                "scheme": PG_SCHEME,
            }
        }
    }
    config["telemetry"] = {"enabled": False}
    dagster_home = Path(dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
