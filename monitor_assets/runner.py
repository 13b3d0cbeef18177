"""Running a job in process, as the command-line runners do: the instance in $DAGSTER_HOME (made from the
template of $MONITOR_ENV), Dagster's full event log in a file per run, one-line errors for the terminal.

Used by `run_pipeline` (the daily pipeline) and `retraining` (the approval job); no stage wiring here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from monitor_assets.config import REPO_ROOT

if TYPE_CHECKING:
    import dagster as dg

# The Dagster instance per $MONITOR_ENV: local (default) SQLite in DAGSTER_HOME; prod PostgreSQL and the
# daemon's run queue (settings from DAGSTER_PG_* environment variables; README, "From development to production").
INSTANCE_TEMPLATES = {env: REPO_ROOT / "deploy" / env / "dagster.yaml" for env in ("local", "prod")}
INSTANCE_TEMPLATE = INSTANCE_TEMPLATES["local"]
# Dagster's console logger would print every event at DEBUG; the event listener below reports instead.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def instance_template(env: str | None = None) -> Path:
    """The instance template of `env` (default $MONITOR_ENV, else local)."""
    env = env or os.environ.get("MONITOR_ENV") or "local"
    if env not in INSTANCE_TEMPLATES:
        raise ValueError(f"MONITOR_ENV={env!r}: expected one of {', '.join(INSTANCE_TEMPLATES)}")
    return INSTANCE_TEMPLATES[env]


HOME_PLACEHOLDER = "{env: DAGSTER_HOME}"


def instance_yaml(template: Path, home: Path) -> str:
    """The template's text for `home`: the local storage's folder written out, so the instance also loads
    where $DAGSTER_HOME is not set (`DagsterInstance.from_config(home)`)."""
    return template.read_text().replace(HOME_PLACEHOLDER, json.dumps(str(home)))


def prepare_dagster_home() -> Path:
    """$DAGSTER_HOME (default .dagster_home), given the instance template of $MONITOR_ENV when it has no
    dagster.yaml. An existing one is left alone (it may point at Postgres); `make run` refreshes it from the
    template."""
    template = instance_template()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(instance_yaml(template, home))
    return home


def run_log_path(home: Path, run_id: str) -> Path:
    """$DAGSTER_HOME/run_logs/<run id>.log, its folder made."""
    path = home / "run_logs" / f"{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def library_logs_to(log: TextIO) -> Iterator[None]:
    """Library log records and warnings go to the run's log file too, not to the terminal."""
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.captureWarnings(True)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        logging.captureWarnings(False)


def execute_logged(job: dg.JobDefinition, instance: dg.DagsterInstance, run_id: str,
                   listener: Callable[[Any], None], run_config: Mapping | None = None,
                   tags: Mapping[str, str] | None = None) -> dg.ExecuteInProcessResult:
    """Run `job` in process on `instance`, every stored event to `listener`, Dagster's console quiet;
    a failed step does not raise (the result says)."""
    instance.add_event_listener(run_id, listener)
    # Dagster leaves SIGTERM mapped to SIGINT's handler after a run; SIGINT is ignored in a process started
    # with `&` (nohup, a script), and an ignored SIGTERM is inherited by every child: put it back.
    term = signal.getsignal(signal.SIGTERM)
    try:
        return job.execute_in_process(instance=instance, run_id=run_id, tags=tags,
                                      run_config={**QUIET_CONSOLE, **(run_config or {})}, raise_on_error=False)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term)


# --- what the terminal and the log file get ---------------------------------------------------------------

def one_line(error) -> str:
    """The innermost cause of a Dagster error (its `SerializableErrorInfo`), first line only
    (`ValueError: ...`)."""
    if error is None:
        return "no error recorded"
    while error.cause is not None:  # Dagster wraps the user's exception ("Error occurred while executing")
        error = error.cause
    first = next((line.strip() for line in error.message.splitlines() if line.strip()), "")
    if error.cls_name and error.cls_name not in first:
        first = f"{error.cls_name}: {first}"
    name, sep, rest = first.partition(": ")
    if " " not in name and "." in name:  # a dotted path: keep DagsterExecutionInterruptedError only
        first = name.rsplit(".", 1)[-1] + sep + rest
    return first


def format_event(entry: Any) -> str:
    """An event as Dagster's console logger writes it, with the traceback of any error after it."""
    when = dt.datetime.fromtimestamp(entry.timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S %z")
    event = entry.dagster_event
    fields = [when, "dagster", logging.getLevelName(entry.level), entry.job_name or "-", entry.run_id]
    fields += [entry.step_key] if entry.step_key else []
    fields += [event.event_type.name] if event else []  # RUN_SUCCESS, as Dagster prints it
    text = " - ".join([*fields, entry.message])
    error = entry.error_info or (getattr(event.event_specific_data, "error", None) if event else None)
    return f"{text}\n{error.to_string().rstrip()}" if error else text
