"""Run the whole monitoring pipeline headless over a range of days, recorded in the Dagster instance.

    python -m monitor_assets.run_pipeline [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--shards N [--workers W]]

Defaults to every partition the config declares. All days go in one run (each asset processes the
range in a single step), which on two cores is far faster than a run per day. The run is stored in
$DAGSTER_HOME, so `make dev` shows it, its assets and their metadata in the UI.

With --shards N the models are split into N shards: each shard's per-model steps run in a process of
their own (W at once), in two rounds (predictions and reference profiles; then labels, performance, drift
and fairness, since labels are matched to every shard's predictions), and then one run does the
cross-model steps for every model.

The terminal gets one line per step as it finishes (what it did, how long it took) and the outcome;
Dagster's full event log, DEBUG and tracebacks included, goes to $DAGSTER_HOME/run_logs/<run id>.log.
Before it starts, the runner marks its own earlier runs whose process is gone (SIGKILL, reboot) as
failed and frees the concurrency-pool slots of runs that are over: a dead run's slot would otherwise
block this run forever. Exit status: 0 success, 1 run failed, 2 bad config or arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from monitor_assets.config import ConfigError, load_config, parse_shard
from monitor_assets.constants import SHARD_TAG
from monitor_assets.preflight import PREFLIGHT_TAG, preflight, report, run_days
from monitor_assets.runner import (
    execute_logged,
    format_event,
    library_logs_to,
    one_line,
    prepare_dagster_home,
    run_log_path,
)

if TYPE_CHECKING:
    import dagster as dg

# Tags on every run this runner launches: which process on which machine runs it.
PID_TAG = "monitor_assets/pid"
HOST_TAG = "monitor_assets/host"
PROCESS_TAG = "monitor_assets/process"  # boot id + start time: a reused pid is not the run's process
MAX_RETRIES_TAG = "dagster/max_retries"  # Dagster's documented run-retry tag (`dagster.yaml` run_retries)
# Materialization metadata shown in a step's line, in this order, with the words after the number.
SUMMARY_KEYS = (
    ("records_loaded", "records loaded"),
    ("records_quarantined", "quarantined"),
    ("profiles_computed", "reference profiles computed"),
    ("alerts_opened", "alerts opened"),
    ("alerts_resolved", "resolved"),
    ("open_alerts", "open alerts"),
    ("anomalies_in_run", "anomalies"),
    ("models_needing_retraining", "model(s) to retrain"),
    ("dagster/row_count", "rows"),
)
OPTIONAL_KEYS = {"records_quarantined", "alerts_resolved"}  # shown only when not zero
# Imported by a step well into the run (Great Expectations, about 2.4 s): loaded in the background from the
# start, while the first steps mostly wait on DuckDB and the lake, outside the GIL.
WARM_MODULES = ("great_expectations",)


# --- processes ---------------------------------------------------------------------------------------

def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> str | None:
    """Boot id and start time (clock ticks) of a process on Linux; None elsewhere."""
    fields = _proc_stat(pid)
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}/{fields[19]}" if fields and len(fields) > 19 else None


def process_alive(pid: int, started: str | None) -> bool:
    """Whether the process that had `pid` (and started at `started`, if known) still runs."""
    if pid <= 0:  # os.kill would address a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] == "Z":  # killed, not yet reaped by its parent
        return False
    current = process_start(pid)
    return not (started and current and current != started)  # else the pid was reused


# --- recovery ----------------------------------------------------------------------------------------

@dataclass
class PoolUse:
    """What one run holds in the concurrency pools."""

    slots: set[tuple[str, str]] = field(default_factory=set)  # (pool, step) holding a slot
    queued: int = 0  # steps waiting in a pool's queue

    def describe(self) -> str:
        pools = sorted({pool for pool, _ in self.slots})
        text = (f"{len(self.slots)} slot{'s' * (len(self.slots) != 1)} of pool {', '.join(pools)}"
                if self.slots else "no slot")
        return text + (f" and {self.queued} queued step{'s' * (self.queued != 1)}" if self.queued else "")


def pool_holders(storage: Any) -> dict[str, PoolUse]:
    """Every run that holds a pool slot or waits in a pool's queue.

    A step holds a slot from the moment its queue entry is assigned, before it claims the slot row: a
    process killed in between blocks the pool too, with no claimed slot to show for it. A dead run's
    queued steps must go as well, or a freed slot is assigned to them."""
    use: dict[str, PoolUse] = {}
    if not storage.supports_global_concurrency_limits:
        return use
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        for slot in info.claimed_slots:
            use.setdefault(slot.run_id, PoolUse()).slots.add((pool, slot.step_key))
        for step in info.pending_steps:
            if step.assigned_timestamp is not None:
                use.setdefault(step.run_id, PoolUse()).slots.add((pool, step.step_key))
            else:
                use.setdefault(step.run_id, PoolUse()).queued += 1
    return use


def recover_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark this host's headless runs whose process is gone as failed, then free the pool slots held by
    runs that are over (dead, finished or deleted). Returns one line per run it changed, and one per run
    that still holds a slot this run will wait for."""
    import dagster as dg

    host = socket.gethostname()
    dead: dict[str, str] = {}  # run id -> why
    finished = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    unfinished = [s for s in dg.DagsterRunStatus if s not in finished]
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: host})):
        try:
            pid = int(run.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if process_alive(pid, run.tags.get(PROCESS_TAG)):
            continue  # a run in progress in another terminal: its slots are in use
        why = f"process {pid} on {host} is gone"
        # This runner reruns the range now: the daemon's run retries should not launch it a second time.
        instance.add_run_tags(run.run_id, {MAX_RETRIES_TAG: "0"})
        instance.report_run_failed(run, f"Marked failed by monitor_assets.run_pipeline: {why} (killed?).")
        dead[run.run_id] = why

    lines: list[str] = []
    storage = instance.event_log_storage
    for run_id, use in pool_holders(storage).items():
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            if use.slots:
                owner = (f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG)}" if PID_TAG in run.tags
                         else "launched by Dagster")
                lines.append(f"run {run_id} ({run.status.value}, {owner}) holds {use.describe()}: steps wait for it")
            continue
        storage.free_concurrency_slots_for_run(run_id)  # its slots and its queue entries
        if run_id in dead:
            lines.append(f"recovered run {run_id}: {dead.pop(run_id)}; marked FAILURE, freed {use.describe()}")
        else:
            lines.append(f"freed {use.describe()} of run {run_id} ({run.status.value if run else 'deleted'})")
    lines += [f"recovered run {run_id}: {why}; marked FAILURE (it held no pool slot)" for run_id, why in dead.items()]
    return lines


# --- reporting ---------------------------------------------------------------------------------------

def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3g}"


@dataclass
class StepRecord:
    started: float | None = None
    materializations: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # name, passed, severity
    waited: bool = False
    retries: int = 0

    def total(self, key: str) -> float | None:
        """A metadata number over the step's partitions: summed where each partition reports its own
        day, else (the same whole-range figure on every partition) taken once."""
        found = [(partition, md) for _, partition, md in self.materializations
                 if isinstance(md.get(key), int | float) and not isinstance(md.get(key), bool)]
        if not found:
            return None
        values = [md[key] for _, md in found]
        if any("days" in md for _, md in found):
            per_day = all(md.get("days") == partition for partition, md in found)
        else:
            per_day = len(set(values)) > 1
        return sum(values) if per_day else values[-1]

    def describe(self, step_key: str) -> str:
        parts: list[str] = []
        days = {p for _, p, _ in self.materializations if p}
        if days:
            parts.append(f"{len(days)} day{'s' * (len(days) != 1)}")
        shown: set[str] = set()
        for key, words in SUMMARY_KEYS:
            value = self.total(key)
            if value is None or (key in OPTIONAL_KEYS and not value):
                continue
            if key == "dagster/row_count" and shown & {"records_loaded", "open_alerts", "anomalies_in_run"}:
                continue  # the same count under another name
            parts.append(f"{_number(value)} {words}")
            shown.add(key)
        paths = {Path(str(md["path"])).name for _, _, md in self.materializations if md.get("path")}
        if paths:
            parts.append("wrote " + ", ".join(sorted(paths)))
        if self.checks:
            failed = [(name, severity) for name, passed, severity in self.checks if not passed]
            text = f"{len(self.checks)} check evaluation{'s' * (len(self.checks) != 1)}"
            if failed:
                names = sorted({name for name, _ in failed} - {step_key})  # a one-check step is named already
                errors = sum(severity == "ERROR" for _, severity in failed)
                text += f", {len(failed)} failed" + (f" ({errors} ERROR)" if errors else "")
                text += (": " + ", ".join(names[:3]) + (" …" if len(names) > 3 else "")) if names else ""
            else:
                text += ", all passed"
            parts.append(text)
        if not parts and self.materializations:
            parts.append("materialized " + ", ".join(sorted({k for k, _, _ in self.materializations})))
        return ", ".join(parts)


class RunReporter:
    """Receives every event of the run as Dagster stores it: writes each to the log file and prints one
    line per step when it finishes, fails, retries, is skipped or waits for a pool."""

    def __init__(self, instance: dg.DagsterInstance, log: TextIO, out: TextIO = sys.stdout):
        self.instance, self.log, self.out = instance, log, out
        self.steps: dict[str, StepRecord] = {}
        self.failed: list[str] = []
        self.not_run: list[str] = []  # steps whose upstream failed: listed once at the end
        self.run_error = None  # the run's SerializableErrorInfo when it failed

    def say(self, line: str) -> None:
        try:
            print(line, file=self.out, flush=True)
        except BrokenPipeError:  # the reader went away (`| head`): keep running, keep logging
            self.out = open(os.devnull, "w")
        self.log.write(f"# {line}\n")

    def say_failures(self) -> None:
        """After a failed run: the failed steps, the ones that did not run, or the run's own error."""
        if self.failed:
            self.say(f"failed: {', '.join(k.replace('__', '/') for k in self.failed)}")
        if self.not_run:
            self.say(f"not run (upstream failed): {', '.join(k.replace('__', '/') for k in self.not_run)}")
        if not self.failed and self.run_error is not None:
            self.say(f"failed: {one_line(self.run_error)}")

    def __call__(self, entry: Any) -> None:
        try:
            self.log.write(format_event(entry) + "\n")
            self.log.flush()
            self._report(entry)
        except Exception:  # a broken summary must not break the run
            self.log.write("run_pipeline: could not report this event:\n" + traceback.format_exc())

    def _line(self, status: str, step_key: str, seconds: float | None, text: str) -> None:
        took = f"{seconds:6.1f}s" if seconds is not None else " " * 7
        name = step_key.replace("__", "/")  # op name of an asset step -> its asset key
        self.say(f"  {status:<7} {took}  {name:<40} {text}".rstrip())

    def _report(self, entry: Any) -> None:
        from dagster import DagsterEventType as T

        event, key = entry.dagster_event, entry.step_key
        if event is None:  # a log message: only "not executing" (upstream failed) makes a line
            if key and entry.level >= logging.ERROR and entry.user_message.startswith("Dependencies for step"):
                self.not_run.append(key)
            return
        kind = event.event_type
        if kind == T.RUN_FAILURE:
            self.run_error = getattr(event.event_specific_data, "error", None)
        if key is None:
            return
        step = self.steps.setdefault(key, StepRecord())
        data = event.event_specific_data
        if kind == T.STEP_START and step.started is None:
            step.started = entry.timestamp
        elif kind == T.ASSET_MATERIALIZATION:
            mat = data.materialization
            step.materializations.append((mat.asset_key.to_user_string(), mat.partition,
                                          {k: v.value for k, v in mat.metadata.items()}))
        elif kind == T.ASSET_CHECK_EVALUATION:
            step.checks.append((data.check_name, data.passed, data.severity.value))
        elif kind == T.ENGINE_EVENT and event.message and event.message.startswith("Step blocked by limit"):
            if not step.waited:
                step.waited = True
                self._line("waiting", key, None, self._holders(event.message.rsplit(" ", 1)[-1]))
        elif kind == T.STEP_UP_FOR_RETRY:
            step.retries += 1
            wait = f" in {data.seconds_to_wait:.0f} s" if data.seconds_to_wait else ""
            self._line("retry", key, None, f"attempt {step.retries} failed, retrying{wait}: {one_line(data.error)}")
        elif kind == T.STEP_SKIPPED:
            self._line("skipped", key, None, "an upstream output was not produced (blocking check failed?)")
        elif kind == T.STEP_SUCCESS:
            seconds = data.duration_ms / 1000 if data.duration_ms is not None else self._took(step, entry)
            self._line("ok", key, seconds, step.describe(key))
        elif kind == T.STEP_FAILURE:
            self.failed.append(key)
            self._line("FAILED", key, self._took(step, entry), one_line(data.error))

    @staticmethod
    def _took(step: StepRecord, entry: Any) -> float | None:
        return entry.timestamp - step.started if step.started is not None else None

    def _holders(self, pool: str) -> str:
        runs = sorted(run_id for run_id, use in pool_holders(self.instance.event_log_storage).items()
                      if any(p == pool for p, _ in use.slots))
        return f"pool {pool} is full, held by run {', '.join(runs)}" if runs else f"pool {pool} is full"


# --- main --------------------------------------------------------------------------------------------

def _fail(message: str) -> int:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the message's layout
    return 2


def run_preflight(config: Any, start: str, end: str) -> int | None:
    """The preflight over start..end: warnings printed, and on errors every one on stderr, then 2."""
    began = time.perf_counter()
    problems = preflight(config, run_days(config, dt.date.fromisoformat(start), dt.date.fromisoformat(end)))
    errors = [p for p in problems if not p.warning]
    report([p for p in problems if p.warning], out=sys.stdout)
    if errors:
        report(errors)
        print(f"preflight: {len(errors)} problem{'s' * (len(errors) != 1)} in {config.file}; nothing was run "
              "or written", file=sys.stderr)
        return 2
    print(f"preflight ok: inputs of {start}..{end} checked in {time.perf_counter() - began:.2f} s", flush=True)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", help="first day (default: the config's first partition)")
    parser.add_argument("--end", help="last day (default: the config's last partition)")
    parser.add_argument("--shards", type=int, default=1,
                        help="split the models into N shards, each run in its own process (default 1: one run)")
    parser.add_argument("--workers", type=int, default=None,
                        help="shard processes at once (default: --shards)")
    parser.add_argument("--shard", help=argparse.SUPPRESS)  # i/N: one shard's run of --job (what --shards starts)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


@dataclass
class Plan:
    """What this invocation runs: the job, its extra tags, the line that says so."""

    job_name: str
    tags: dict[str, str]
    what: str


class Stop(Exception):
    """Ends `main` early with this exit status (the message is already printed)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _days(args: argparse.Namespace, config: Any, partition_keys: list[str]) -> tuple[str, str, str]:
    """The run's first and last day (default: every partition) and how they read: `a..b (n days`."""
    start, end = args.start or partition_keys[0], args.end or partition_keys[-1]
    for flag, day in (("--start", start), ("--end", end)):
        if day not in partition_keys:
            raise Stop(_fail(f"{flag} {day}: not a day of {config.file} "
                             f"(its days are {partition_keys[0]}..{partition_keys[-1]})"))
    if start > end:
        raise Stop(_fail(f"--start {start} is after --end {end}"))
    days = partition_keys.index(end) - partition_keys.index(start) + 1
    return start, end, f"{start}..{end} ({days} day{'s' * (days != 1)}"


def _run_all_shards(args: argparse.Namespace, config: Any, home: Path, start: str, end: str, span: str) -> Plan:
    """--shards N: every shard's per-model runs in processes of their own, then the fleet job here."""
    import dagster as dg

    from monitor_assets.definitions import FLEET_JOB, SHARD_JOBS

    workers = min(args.workers or args.shards, args.shards)
    print(f"{args.shards} shards of {len(config.models)} models over {span}), {workers} at once, "
          f"then {FLEET_JOB}", flush=True)
    try:  # made here, once: shard processes creating a new home's storage at once collide ("table runs already exists")
        with dg.DagsterInstance.get() as instance:
            for line in recover_dead_runs(instance):
                print(line, flush=True)
    except dg.DagsterInvalidConfigError as exc:
        raise Stop(_fail(f"instance config error: {home / 'dagster.yaml'}: {exc}")) from None
    began = time.perf_counter()
    for job_name in SHARD_JOBS:
        failed = run_shards(job_name, args.shards, workers, start, end)
        if failed:
            print(f"{job_name}: shard(s) {', '.join(failed)} failed; {FLEET_JOB} not started", flush=True)
            raise Stop(1)
    print(f"shards done in {time.perf_counter() - began:.1f} s", flush=True)
    return Plan(FLEET_JOB, {}, f"{FLEET_JOB} over {span}, {len(config.models)} models)")


def _plan(args: argparse.Namespace, config: Any, home: Path, start: str, end: str, span: str) -> Plan:
    """The job this process runs: the fleet job after the shards, one shard's job, or the whole pipeline."""
    from monitor_assets.definitions import MONITORING_JOB, SHARD_JOBS

    if args.shards > 1:
        return _run_all_shards(args, config, home, start, end, span)
    if args.shard:
        try:
            index, count = parse_shard(args.shard)
        except ValueError as exc:
            raise Stop(_fail(f"--shard: {exc}")) from None
        if args.job not in SHARD_JOBS:
            raise Stop(_fail(f"--shard needs --job, one of {', '.join(SHARD_JOBS)}"))
        shard = config.for_shard(index, count)
        return Plan(args.job, {SHARD_TAG: args.shard},
                    f"{args.job} over {span}, shard {args.shard}: {len(shard.models)} of {len(config.models)} models)")
    return Plan(MONITORING_JOB, {}, f"{MONITORING_JOB} over {span}, {len(config.models)} models)")


def _run_tags(plan: Plan, start: str, end: str) -> dict[str, str]:
    """The run's tags: its range, this process (for recovery after a kill), the preflight that passed."""
    tags = {**plan.tags, "dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end,
            PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), PREFLIGHT_TAG: "passed"}
    if started := process_start(os.getpid()):
        tags[PROCESS_TAG] = started
    return tags


def _execute(job: dg.JobDefinition, plan: Plan, config: Any, home: Path, start: str, end: str) -> int:
    """Run the job in this process: a line per step on the terminal, the full event log in its file."""
    import dagster as dg

    from monitor_assets.definitions import SHARD_JOBS

    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterInvalidConfigError as exc:
        return _fail(f"instance config error: {home / 'dagster.yaml'}: {exc}")
    run_id = str(uuid.uuid4())
    log_path = run_log_path(home, run_id)
    with instance, open(log_path, "a", encoding="utf-8") as log, library_logs_to(log):
        reporter = RunReporter(instance, log)
        for line in recover_dead_runs(instance):
            reporter.say(line)
        reporter.say(f"{plan.what} with {config.file}")
        reporter.say(f"lake {config.lake_path}, reports {config.reports_dir}, Dagster home {home}")
        reporter.say(f"run {run_id}, full log in {log_path}")
        began, wall_start = time.perf_counter(), time.time()
        warming = _warm_imports()
        try:
            success = execute_logged(job, instance, run_id, reporter, tags=_run_tags(plan, start, end)).success
        except Exception as exc:  # outside any step (e.g. the plan could not be built)
            log.write(traceback.format_exc())
            first = next(iter(str(exc).strip().splitlines()), "")
            success, reporter.run_error = False, None
            reporter.say(f"  error: {type(exc).__name__}: {first}")
        reporter.say(f"run {run_id}: {'SUCCESS' if success else 'FAILURE'} in {time.perf_counter() - began:.1f} s")
        if not success:
            reporter.say_failures()
        if plan.job_name not in SHARD_JOBS:
            dashboard = Path(config.reports_dir) / "dashboard.html"
            fresh = dashboard.exists() and dashboard.stat().st_mtime >= wall_start
            reporter.say(f"dashboard {dashboard}" + ("" if fresh else " (not updated by this run)"))
        reporter.say(f"full log  {log_path}")
    warming.join()  # an import still running when the interpreter shuts down can crash it
    return 0 if success else 1


def _warm_imports() -> threading.Thread:
    """Import `WARM_MODULES` in a background thread; a failure is left to the step's own import to report."""
    def load() -> None:
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001,S112  (the step that needs it imports it again and says why)
                continue

    thread = threading.Thread(target=load, name="warm-imports", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shards < 1 or (args.workers is not None and args.workers < 1):
        return _fail("--shards and --workers must be at least 1")
    try:
        config = load_config()
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    try:
        home = prepare_dagster_home()
    except ValueError as exc:  # an unknown MONITOR_ENV
        return _fail(str(exc))
    try:  # importing the definitions module loads the config again
        from monitor_assets.definitions import MONITORING_JOB, build_definitions

        definitions = build_definitions(config)
        partition_keys = definitions.resolve_job_def(MONITORING_JOB).partitions_def.get_partition_keys()
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    try:
        start, end, span = _days(args, config, partition_keys)
        # Every input checked before anything is written; a shard's process was started by a runner that did it.
        if not args.shard and (status := run_preflight(config, start, end)) is not None:
            return status
        plan = _plan(args, config, home, start, end, span)
    except Stop as stop:
        return stop.status
    return _execute(definitions.resolve_job_def(plan.job_name), plan, config, home, start, end)


def run_shards(job_name: str, shards: int, workers: int, start: str, end: str) -> list[str]:
    """Run `job_name` for every shard, each in a process of its own (this module with --shard), `workers`
    at a time; their lines are printed as they come, after the shard's name. Returns the shards that failed."""
    pending = [f"{i}/{shards}" for i in range(shards)]
    running: dict[str, subprocess.Popen] = {}
    printers: list[threading.Thread] = []
    failed: list[str] = []

    def relay(shard: str, stream) -> None:
        for line in stream:
            print(f"[{shard}] {line.rstrip()}", flush=True)

    while pending or running:
        while pending and len(running) < workers:
            shard = pending.pop(0)
            proc = subprocess.Popen([sys.executable, "-m", "monitor_assets.run_pipeline", "--start", start,
                                     "--end", end, "--shard", shard, "--job", job_name],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            running[shard] = proc
            printers.append(threading.Thread(target=relay, args=(shard, proc.stdout), daemon=True))
            printers[-1].start()
        for shard, proc in list(running.items()):
            if proc.poll() is not None:
                del running[shard]
                if proc.returncode:
                    failed.append(shard)
        time.sleep(0.2)
    for printer in printers:
        printer.join()
    return failed


if __name__ == "__main__":
    sys.exit(main())
