"""Alert state that changes between runs: the delivery outbox, acknowledgements and silences.

Locally it lives in a small SQLite file beside the warehouse (`<warehouse>_state.sqlite`), not in the
DuckDB warehouse: the sensor (in the code server), the command line and the pipeline's steps all write it
from different processes, and DuckDB admits one writer process per file while SQLite lets each take a
short write lock in turn. With MONITOR_ENV=prod, where those processes run on several machines, it lives
in the Dagster instance's PostgreSQL database, schema `monitor_state` (`AlertState.for_config` chooses;
state_sql.py holds the two stores and the few dialect differences). Times are UTC epoch seconds. No Dagster
here.

Tables (documented names; `python -m monitor_assets.notify list` shows them, with UTC dates):
  monitoring.alert_deliveries      one row per alert (model, check, day) and channel: the outbox; for
                                   e-mail, `delivered_to` lists the recipients the server took and
                                   `refused_to` the ones it refused on the last attempt (retried alone)
  monitoring.alert_acknowledgements who acknowledged which model's alerts, when and why
  monitoring.alert_silences        which model and/or check is silenced, until when, by whom and why
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from monitor_assets.formatting import iso, plain_number
from monitor_assets.storage.state_sql import (
    POSTGRES,
    PgLocation,
    PostgresStore,
    Session,
    SqliteStore,
    StateConfigError,
)

if TYPE_CHECKING:
    from monitor_assets.config import MonitorConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_deliveries (
    alert_key TEXT NOT NULL,             -- model_id|check_name|partition_date (or run|<run id>)
    channel TEXT NOT NULL,
    model_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    partition_date TEXT,
    severity TEXT NOT NULL,
    value REAL,
    threshold REAL,
    message TEXT NOT NULL,
    details TEXT,                        -- JSON: what the message lists (e.g. the drifted features)
    run_id TEXT,
    evaluated_at REAL NOT NULL,          -- time of the check evaluation this row reflects
    status TEXT NOT NULL,                -- pending, sent, gave_up, resolved, acknowledged, silenced
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    enqueued_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    claimed_until REAL,
    claim_token TEXT,
    sent_at REAL,
    resolved_at REAL,                    -- the check passed again for this model and day
    closed_reason TEXT,
    delivered_to TEXT,                   -- e-mail: JSON list of recipients the server took
    refused_to TEXT,                     -- e-mail: JSON {recipient: answer} refused on the last attempt
    PRIMARY KEY (alert_key, channel)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS alert_acknowledgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL,
    check_name TEXT,                     -- NULL: every check of the model
    partition_date TEXT,                 -- NULL: every day up to through_date
    through_date TEXT NOT NULL,
    acknowledged_by TEXT NOT NULL,
    acknowledged_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT,                       -- NULL: every model
    check_name TEXT,                     -- NULL: every check
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    reason TEXT NOT NULL,
    lifted_by TEXT,
    lifted_at REAL
);
"""

# Columns added after the first release: (name, type), added to an older state file when it is opened.
_ADDED_COLUMNS = {"alert_deliveries": [("delivered_to", "TEXT"), ("refused_to", "TEXT")]}

# The newest acknowledgement of an alert: same model (and check, and day when given), made after the
# alert was first queued (`{seen}`): an acknowledgement never covers an alert that came later (that
# takes a silence, which ends). One definition serves the outbox (close pending rows) and the dashboard
# (show the alert as acknowledged).
_ACK_MATCH = """(SELECT max(k.id) FROM alert_acknowledgements k WHERE k.model_id = {t}.model_id
                 AND (k.check_name IS NULL OR k.check_name = {t}.check_name)
                 AND (CASE WHEN k.partition_date IS NULL THEN {t}.partition_date <= k.through_date
                           ELSE {t}.partition_date = k.partition_date END)
                 AND {seen} <= k.acknowledged_at)"""
# When the dashboard's alert was first queued; one the outbox never saw counts as known before.
_FIRST_QUEUED = """COALESCE((SELECT min(d.enqueued_at) FROM alert_deliveries d WHERE d.model_id = {t}.model_id
                   AND d.check_name = {t}.check_name AND d.partition_date = {t}.partition_date), 0)"""
# Epoch-second columns, printed as UTC dates by `list`.
TIME_COLUMNS = {"evaluated_at", "enqueued_at", "next_attempt_at", "claimed_until", "sent_at", "resolved_at",
                "acknowledged_at", "starts_at", "ends_at", "created_at", "lifted_at"}
_SILENCE_MATCH = """(SELECT min(s.id) FROM alert_silences s WHERE s.lifted_at IS NULL
                     AND s.starts_at <= :now AND s.ends_at > :now
                     AND (s.model_id IS NULL OR s.model_id = {t}.model_id)
                     AND (s.check_name IS NULL OR s.check_name = {t}.check_name))"""

STATE_TABLES = {"monitoring.alert_deliveries": "alert_deliveries",
                "monitoring.alert_acknowledgements": "alert_acknowledgements",
                "monitoring.alert_silences": "alert_silences"}
# Row order of `table()` and the SQL shell's copy, the same on both stores (PostgreSQL keeps no insertion order).
_ORDER = {"alert_deliveries": "enqueued_at, alert_key, channel", "alert_acknowledgements": "id",
          "alert_silences": "id"}


def alert_key(model_id: str, check_name: str, partition_date) -> str:
    return f"{model_id}|{check_name}|{partition_date}"


class AlertState:
    """The alert state; every method opens a short connection, so any process may call it any time.
    `AlertState(path)`: a SQLite file; `AlertState.for_config(config)`: the deployment's store."""

    def __init__(self, where: str | Path | SqliteStore | PostgresStore):
        self.store = where if isinstance(where, SqliteStore | PostgresStore) else SqliteStore(where)

    @classmethod
    def for_config(cls, config: MonitorConfig, environ: Mapping[str, str] | None = None) -> AlertState:
        """The state of `config`'s deployment, picked by $MONITOR_ENV: prod, the instance's PostgreSQL
        database (the DAGSTER_PG_* variables; a missing one fails here, before anything is written), into
        which a local state file of that deployment is copied once while PostgreSQL's tables are empty;
        local (default), the SQLite file `config.state_path`."""
        environ = os.environ if environ is None else environ
        env = environ.get("MONITOR_ENV") or "local"
        if env == "prod":
            return cls(PostgresStore(PgLocation.from_env(environ), legacy_file=config.state_path))
        if env != "local":
            raise StateConfigError(f"MONITOR_ENV={env!r}: expected one of local, prod")
        return cls(config.state_path)

    def __repr__(self) -> str:
        return f"AlertState({self.store!r})"

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[Session]:
        """A session; `write`: one transaction, writers one at a time (claims cannot interleave)."""
        with self.store.connect(SCHEMA, _add_columns, write=write) as session:
            yield session

    def snapshot(self) -> list[tuple[str, list[tuple[str, str]], list[tuple]]]:
        """Every state table under its documented name, read in one transaction without writing anything:
        (name, [(column, declared SQLite type)], rows); a table not made yet is empty (the read-only SQL
        shell shows these)."""
        declared = sqlite3.connect(":memory:")
        try:
            declared.executescript(SCHEMA)
            types = {t: {c[1]: c[2] for c in declared.execute(f"PRAGMA table_info({t})")}  # noqa: S608
                     for t in STATE_TABLES.values()}
        finally:
            declared.close()
        found = self.store.snapshot(_ORDER)
        out = []
        for name, table in STATE_TABLES.items():
            columns, rows = found.get(table, (list(types[table]), []))
            out.append((name, [(c, types[table].get(c, "TEXT")) for c in columns], rows))
        return out

    # -- the outbox --------------------------------------------------------------------------------

    def enqueue(self, failures: list[dict], channels: dict[str, list[str]], run_id: str | None,
                evaluated_at: float, now: float | None = None) -> int:
        """Record failed (model, check, day) alerts once per channel of their model. Idempotent: a row
        that exists is refreshed with newer figures; one that had resolved becomes pending again."""
        now = time.time() if now is None else now
        rows = [(f.get("alert_key") or alert_key(f["model_id"], f["check_name"], f["partition_date"]), ch, f["model_id"], f["check_name"],
                 str(f["partition_date"]), f["severity"], _float(f.get("value")), _float(f.get("threshold")),
                 str(f["message"]), json.dumps(f.get("details") or {}, default=str), run_id, evaluated_at,
                 now, now)
                for f in failures for ch in channels.get(f["model_id"], channels.get("*", ["file"]))]
        if not rows:
            return 0
        with self.connect(write=True) as con:
            return con.executemany("""
                INSERT INTO alert_deliveries AS d (alert_key, channel, model_id, check_name, partition_date, severity,
                    value, threshold, message, details, run_id, evaluated_at, status, enqueued_at, next_attempt_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
                ON CONFLICT (alert_key, channel) DO UPDATE SET
                    severity = excluded.severity, value = excluded.value, threshold = excluded.threshold,
                    message = excluded.message, details = excluded.details, run_id = excluded.run_id,
                    evaluated_at = excluded.evaluated_at, resolved_at = NULL,
                    status = CASE WHEN d.status = 'resolved' THEN 'pending' ELSE d.status END,
                    enqueued_at = CASE WHEN d.status = 'resolved' THEN excluded.enqueued_at ELSE d.enqueued_at END,
                    next_attempt_at = CASE WHEN d.status = 'resolved' THEN excluded.next_attempt_at
                                           ELSE d.next_attempt_at END
                WHERE excluded.evaluated_at > d.evaluated_at""", rows)

    def resolve(self, check_name: str, partition_date: str, failing_models: set[str], evaluated_at: float) -> int:
        """A newer evaluation of (check, day) in which these models no longer fail: pending rows are
        dropped as resolved, sent ones remember that their alert is over."""
        failing = sorted(failing_models) or [""]
        marks = ",".join("?" * len(failing))
        with self.connect(write=True) as con:
            cur = con.execute(f"""
                UPDATE alert_deliveries
                SET resolved_at = ?, evaluated_at = ?,
                    status = CASE WHEN status = 'pending' THEN 'resolved' ELSE status END,
                    closed_reason = CASE WHEN status = 'pending' THEN 'passed again before it was sent'
                                         ELSE closed_reason END
                WHERE check_name = ? AND partition_date = ? AND model_id NOT IN ({marks})
                  AND evaluated_at < ? AND resolved_at IS NULL""",
                              [evaluated_at, evaluated_at, check_name, partition_date, *failing, evaluated_at])
            return cur.rowcount

    def close_muted(self, now: float) -> dict[str, int]:
        """Pending rows of acknowledged alerts or under an active silence are closed, not sent."""
        with self.connect(write=True) as con:
            acked = con.execute(f"""UPDATE alert_deliveries SET status = 'acknowledged',
                                    closed_reason = 'acknowledged before it was sent'
                                    WHERE status = 'pending'
                                    AND {_ACK_MATCH.format(t='alert_deliveries', seen='alert_deliveries.enqueued_at')}
                                        IS NOT NULL""").rowcount
            silenced = con.execute(f"""
                UPDATE alert_deliveries SET status = 'silenced',
                       closed_reason = 'silence #' || {_SILENCE_MATCH.format(t='alert_deliveries')}
                WHERE status = 'pending' AND {_SILENCE_MATCH.format(t='alert_deliveries')} IS NOT NULL""",
                                   {"now": now}).rowcount
        return {"acknowledged": acked, "silenced": silenced}

    def give_up(self, now: float, after_s: float) -> list[dict]:
        """Pending rows older than `after_s`: closed as gave_up and returned, so someone is told."""
        with self.connect(write=True) as con:
            rows = con.dicts("""SELECT * FROM alert_deliveries WHERE status = 'pending' AND enqueued_at < ?
                                AND (claimed_until IS NULL OR claimed_until < ?)""", [now - after_s, now])
            con.executemany("""UPDATE alert_deliveries SET status = 'gave_up', closed_reason = ?
                               WHERE alert_key = ? AND channel = ?""",
                            [(f"gave up after {r['attempts']} attempt(s); last error: {r['last_error']}",
                              r["alert_key"], r["channel"]) for r in rows])
        return rows

    def due(self, now: float) -> list[dict]:
        with self.connect() as con:
            return con.dicts("""SELECT * FROM alert_deliveries WHERE status = 'pending' AND next_attempt_at <= ?
                                AND (claimed_until IS NULL OR claimed_until < ?)
                                ORDER BY channel, model_id, check_name, delivered_to, partition_date""", [now, now])

    def last_sent(self, channel: str, model_id: str, check_name: str) -> float | None:
        with self.connect() as con:
            row = con.execute("""SELECT max(sent_at) FROM alert_deliveries WHERE status = 'sent'
                                 AND channel = ? AND model_id = ? AND check_name = ?""",
                              [channel, model_id, check_name]).fetchone()
        return row[0]

    def defer(self, keys: list[str], channel: str, until: float) -> None:
        with self.connect(write=True) as con:
            con.executemany("""UPDATE alert_deliveries SET next_attempt_at = ? WHERE alert_key = ? AND channel = ?
                               AND status = 'pending'""", [(until, k, channel) for k in keys])

    def claim(self, keys: list[str], channel: str, token: str, now: float, ttl_s: float) -> list[dict]:
        """Take rows for sending; a row another tick holds (or that is no longer pending) is not taken."""
        with self.connect(write=True) as con:
            con.executemany("""UPDATE alert_deliveries SET claim_token = ?, claimed_until = ?
                               WHERE alert_key = ? AND channel = ? AND status = 'pending'
                               AND (claimed_until IS NULL OR claimed_until < ?)""",
                            [(token, now + ttl_s, k, channel, now) for k in keys])
            return con.dicts(
                "SELECT * FROM alert_deliveries WHERE claim_token = ? AND claimed_until > ? ORDER BY partition_date",
                [token, now])

    def mark_sent(self, token: str, now: float, delivered: list[str] | None = None) -> int:
        """The claimed rows went out; `delivered`: the e-mail recipients the server took this time."""
        with self.connect(write=True) as con:
            if delivered is not None:
                _add_delivered(con, token, delivered, None)
            return con.execute("""UPDATE alert_deliveries SET status = 'sent', sent_at = ?, attempts = attempts + 1,
                                  last_error = NULL, refused_to = NULL, claim_token = NULL, claimed_until = NULL
                                  WHERE claim_token = ?""", [now, token]).rowcount

    def mark_partial(self, token: str, delivered: list[str], refused: dict[str, str], error: str, now: float,
                     base_backoff_s: float, max_backoff_s: float) -> int:
        """Some recipients took it: they are recorded (never sent to again), the rest is retried."""
        with self.connect(write=True) as con:
            _add_delivered(con, token, delivered, refused)
        return self.mark_failed(token, error, now, base_backoff_s, max_backoff_s)

    def mark_failed(self, token: str, error: str, now: float, base_backoff_s: float, max_backoff_s: float) -> int:
        """Another attempt later: backoff doubles with each failed attempt, up to `max_backoff_s`."""
        with self.connect(write=True) as con:
            least = con.dialect.least  # SQLite's scalar min(a, b) is PostgreSQL's LEAST(a, b)
            return con.execute(
                f"""UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?,
                       next_attempt_at = ? + {least}(?, ? * (1 << {least}(attempts, 20))),
                       claim_token = NULL, claimed_until = NULL
                   WHERE claim_token = ?""", [error[:500], now, max_backoff_s, base_backoff_s, token]).rowcount

    def open_for_model(self, model_id: str, exclude_check: str) -> list[tuple[str, int]]:
        """Other checks with alerts of this model that are not over: (check, number of days)."""
        with self.connect() as con:
            return [(r[0], r[1]) for r in con.execute(
                """SELECT check_name, count(DISTINCT partition_date) FROM alert_deliveries
                   WHERE model_id = ? AND check_name <> ? AND resolved_at IS NULL AND status <> 'resolved'
                   GROUP BY check_name ORDER BY check_name""", [model_id, exclude_check])]

    # -- acknowledgements and silences ---------------------------------------------------------------

    def acknowledge(self, model_id: str, check_name: str | None, partition_date: str | None, by: str,
                    reason: str, now: float | None = None) -> int:
        """Acknowledge a model's alerts (one check, one day, or all up to today): they stay open, their
        notifications stop. Returns the acknowledgement's id."""
        now = time.time() if now is None else now
        through = partition_date or dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
        with self.connect(write=True) as con:
            found = con.execute("""SELECT count(DISTINCT alert_key) FROM alert_deliveries WHERE model_id = ?
                                   AND (? IS NULL OR check_name = ?)
                                   AND (CASE WHEN ? IS NULL THEN partition_date <= ? ELSE partition_date = ? END)
                                   AND resolved_at IS NULL AND status <> 'resolved'""",
                                [model_id, check_name, check_name, partition_date, through,
                                 partition_date]).fetchone()[0]
            if not found:  # an acknowledgement of nothing would silently swallow a later alert
                raise ValueError(
                    f"no open alert to acknowledge for model {model_id}, check {check_name or 'any'}, day "
                    f"{partition_date or 'up to ' + through}; for alerts still to come use a silence, which "
                    f"ends: silence --model {model_id} --hours H")
            return int(con.execute("""INSERT INTO alert_acknowledgements (model_id, check_name, partition_date,
                                      through_date, acknowledged_by, acknowledged_at, reason)
                                      VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                                   [model_id, check_name, partition_date, through, by, now, reason]).fetchone()[0])

    def silence(self, model_id: str | None, check_name: str | None, hours: float, by: str, reason: str,
                now: float | None = None) -> int:
        """Silence a model, a check, or a model's check for `hours`. Returns the silence's id."""
        if not model_id and not check_name:
            raise ValueError("a silence needs a model, a check, or both")
        now = time.time() if now is None else now
        with self.connect(write=True) as con:
            return int(con.execute("""INSERT INTO alert_silences (model_id, check_name, starts_at, ends_at,
                                      created_by, created_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id""",
                                   [model_id or None, check_name or None, now, now + hours * 3600, by, now,
                                    reason]).fetchone()[0])

    def lift_silence(self, silence_id: int, by: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self.connect(write=True) as con:
            return con.execute("UPDATE alert_silences SET lifted_by = ?, lifted_at = ? WHERE id = ? AND lifted_at IS NULL",
                               [by, now, silence_id]).rowcount == 1

    def table(self, name: str) -> pd.DataFrame:
        with self.connect() as con:
            table = STATE_TABLES.get(name, name)
            return con.frame(f"SELECT * FROM {table} ORDER BY {_ORDER[table]}")  # noqa: S608 - fixed names

    def listing(self, name: str) -> pd.DataFrame:
        """A state table for people: times as ISO UTC dates to the second, numbers without float noise."""
        out = self.table(name).astype(object)
        for column in out.columns:
            if column in TIME_COLUMNS:
                out[column] = out[column].map(lambda ts: iso(ts, seconds=True))
            elif column in ("value", "threshold", "attempts", "id"):
                out[column] = out[column].map(plain_number)
        return out

    def annotate(self, alerts: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
        """`alerts` (partition_date, model_id, check_name, status, ...) with `state`: open, acknowledged,
        silenced or resolved, and `state_note` (who, until when, why)."""
        now = time.time() if now is None else now
        out = alerts.copy()
        out["state"], out["state_note"] = out.get("status", pd.Series(dtype=str)), ""
        if out.empty or not self.store.exists():
            return out
        rows = [(i, m, c, str(pd.Timestamp(d).date())) for i, (m, c, d, status) in enumerate(
            zip(out.model_id, out.check_name, out.partition_date, out.status, strict=True)) if status == "open"]
        with self.connect() as con:
            con.execute("CREATE TEMP TABLE _alerts (i INTEGER, model_id TEXT, check_name TEXT, partition_date TEXT)")
            con.executemany("INSERT INTO _alerts VALUES (?, ?, ?, ?)", rows)
            found = con.execute(f"""
                SELECT a.i, k.acknowledged_by, k.acknowledged_at, k.reason, s.created_by, s.ends_at, s.reason
                FROM _alerts a
                LEFT JOIN alert_acknowledgements k ON k.id = {_ACK_MATCH.format(t='a', seen=_FIRST_QUEUED.format(t='a'))}
                LEFT JOIN alert_silences s ON s.id = {_SILENCE_MATCH.format(t='a')}""", {"now": now}).fetchall()
        states, notes = list(out.state), list(out.state_note)
        for i, ack_by, ack_at, ack_reason, sil_by, sil_ends, sil_reason in found:
            if ack_by is not None:  # an acknowledgement outranks a silence, as in the outbox
                states[i], notes[i] = "acknowledged", f"by {ack_by} {iso(ack_at)}: {ack_reason}"
            elif sil_by is not None:
                states[i], notes[i] = "silenced", f"until {iso(sil_ends)} by {sil_by}: {sil_reason}"
        out["state"], out["state_note"] = states, notes
        return out


_migrated: set[Path] = set()


def _add_columns(con: Session) -> None:
    """Bring a state file from an older release up to the current columns (once per file and process; on
    PostgreSQL once per process, under the writers' lock)."""
    if con.dialect is POSTGRES:
        for table, columns in _ADDED_COLUMNS.items():
            for name, kind in columns:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {POSTGRES.ddl(kind)}")
        return
    path = Path(con.execute("PRAGMA database_list").fetchone()[2])
    if path in _migrated:
        return
    for table, columns in _ADDED_COLUMNS.items():
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                try:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another process added it meanwhile
                        raise
    _migrated.add(path)


def _add_delivered(con: Session, token: str, delivered: list[str], refused: dict | None) -> None:
    """Add recipients to each claimed row's `delivered_to` (a set: nobody is listed twice)."""
    rows = con.execute("SELECT alert_key, channel, delivered_to FROM alert_deliveries WHERE claim_token = ?",
                       [token]).fetchall()
    con.executemany("UPDATE alert_deliveries SET delivered_to = ?, refused_to = ? WHERE alert_key = ? AND channel = ?",
                    [(json.dumps(sorted(set(json.loads(r[2] or "[]")) | set(delivered))),
                      json.dumps(refused) if refused else None, r[0], r[1]) for r in rows])


def _float(x) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(value) else value
