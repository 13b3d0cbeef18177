"""Retraining requests from the command line: the same decisions as the jobs in the UI, recorded in
the same tables. Approving runs `approve_retraining_job` in this process on the Dagster instance of
$DAGSTER_HOME, so the run, its logs and the training outcome show in the UI like a launched run.

    python -m monitor_assets.retraining list [requests|versions|comparison|trigger] [--csv]
    python -m monitor_assets.retraining approve ID --by NAME [--note TEXT]
    python -m monitor_assets.retraining reject ID --by NAME [--note TEXT]
    python -m monitor_assets.retraining open --model M --by NAME --reason TEXT [--version V]
    python -m monitor_assets.retraining reanchor --model M --version V --day YYYY-MM-DD --by NAME --reason TEXT

The config comes from $MONITOR_CONFIG and the warehouse from $MONITOR_WAREHOUSE, as for the pipeline.
Output is for people: sentences and aligned tables (ISO dates, '-' where a value is missing); `list --csv`
prints every column as CSV for scripts. Dagster's event log of `approve` goes to
$DAGSTER_HOME/run_logs/<run id>.log. Exit status: 0 done, 1 the approved training failed, 2 a wrong id, model,
state or argument.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid

from monitor_assets.config import ConfigError, load_config
from monitor_assets.formatting import fmt_cell
from monitor_assets.retraining import logic as L
from monitor_assets.storage.warehouse import connect

TABLES = {"requests": "monitoring.retraining_requests", "versions": "monitoring.model_versions",
          "comparison": "monitoring.version_comparison", "trigger": "monitoring.retraining_trigger"}
# What `list` shows of each table (all columns with --csv), in this order, under these headings.
SHOWN = {
    "requests": [("request_id", "#"), ("model_id", "model"), ("model_version", "version"), ("opened_on", "opened"),
                 ("status", "status"), ("p_value", "p"), ("decided_by", "decided by"), ("decided_at", "decided at"),
                 ("reason", "reason"), ("note", "note"), ("outcome", "outcome")],
    "versions": [("model_id", "model"), ("model_version", "version"), ("role", "role"),
                 ("traffic_share", "traffic"), ("first_seen", "first seen"), ("last_seen", "last seen"),
                 ("champion_since", "champion since")],
    "comparison": [("partition_date", "day"), ("model_id", "model"), ("champion_version", "champion"),
                   ("challenger_version", "challenger"), ("metric", "metric"), ("champion_value", "champion"),
                   ("challenger_value", "challenger"), ("difference", "difference"), ("p_value", "p"),
                   ("gate", "gate"), ("verdict", "verdict")],
    "trigger": [("partition_date", "day"), ("model_id", "model"), ("model_version", "version"), ("n_day", "n"),
                ("mean_current", "mean loss"), ("mean_reference", "reference"), ("statistic", "statistic"),
                ("p_value", "p"), ("flagged", "flagged"), ("note", "note")],
}
ORDER = {"requests": "request_id", "versions": "model_id, first_seen", "comparison": "partition_date, model_id, metric",
         "trigger": "partition_date, model_id, model_version"}
WIDEST = 60  # longer text is cut (with "…"): --csv has it whole


def aligned(headings: list[str], rows: list[list[str]], right: list[bool]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return "\n".join([line(headings), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def show(con, table: str, csv: bool) -> None:
    relation = con.sql(f"SELECT * FROM {TABLES[table]} ORDER BY {ORDER[table]}")
    if csv:  # every column, as scripts read it
        relation.df().to_csv(sys.stdout, index=False)
        return
    names = relation.columns
    records = [dict(zip(names, r, strict=True)) for r in relation.fetchall()]
    if not records:
        print(f"{TABLES[table]} is empty")
        return
    shown = [(c, h) for c, h in SHOWN[table] if c in names]
    rows = [[fmt_cell(rec[c], c, WIDEST) for c, _ in shown] for rec in records]
    right = [all(isinstance(rec[c], int | float) and not isinstance(rec[c], bool) or rec[c] is None
                 for rec in records) and any(rec[c] is not None for rec in records) for c, _ in shown]
    print(aligned([h for _, h in shown], rows, right))
    print(f"{len(records)} row{'s' * (len(records) != 1)} of {TABLES[table]}")


class EventLog:
    """Receives every event of the in-process run and writes it to the run's log file, as run_pipeline
    does; keeps the first step failure to say in one line."""

    def __init__(self, log) -> None:
        self.log, self.failure = log, None

    def __call__(self, entry) -> None:
        from dagster import DagsterEventType

        from monitor_assets.runner import format_event, one_line

        self.log.write(format_event(entry) + "\n")
        self.log.flush()
        event = entry.dagster_event
        if event is not None and event.event_type == DagsterEventType.STEP_FAILURE and self.failure is None:
            self.failure = one_line(event.event_specific_data.error).removeprefix("Failure: ")  # dg.Failure: ours


def approve(config, request_id: int, by: str, note: str) -> int:
    """Run the approval job in process, recorded in the instance of $DAGSTER_HOME; Dagster's event log
    goes to $DAGSTER_HOME/run_logs/<run id>.log and the terminal gets what happened."""
    import dagster as dg

    from monitor_assets.retraining.defs import APPROVE_JOB, build_retraining_definitions
    from monitor_assets.runner import execute_logged, library_logs_to, prepare_dagster_home, run_log_path
    from monitor_assets.storage.resource import WarehouseResource

    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        before = L.get_request(con, request_id)  # a wrong id: one line and exit 2, no run recorded
    home = prepare_dagster_home()
    # The stage's own definitions with the warehouse resource the entry point gives every stage.
    stage = dg.Definitions.merge(build_retraining_definitions(config), dg.Definitions(
        resources={"warehouse": WarehouseResource(path=config.warehouse_path, lake_path=config.lake_path)}))
    job = stage.resolve_job_def(APPROVE_JOB)
    run_id = str(uuid.uuid4())
    log_path = run_log_path(home, run_id)
    run_config = {"ops": {"approve_retraining_request": {"config": {"request_id": request_id, "by": by,
                                                                     "note": note}}}}
    version = f" {before['model_version']}" if before["model_version"] else ""
    opened = before["opened_on"].date() if isinstance(before["opened_on"], dt.datetime) else before["opened_on"]
    print(f"request #{request_id}: approving retraining of {before['model_id']}{version}, opened on "
          f"{fmt_cell(opened)} (run {run_id})", flush=True)
    with open(log_path, "a", encoding="utf-8") as log, dg.DagsterInstance.get() as instance, library_logs_to(log):
        events = EventLog(log)
        result = execute_logged(job, instance, run_id, events, run_config=run_config)
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        request = L.get_request(con, request_id)
    if request["status"] == "done":
        print(f"request #{request_id}: done; {request['outcome']}")
    elif request["status"] == "approved":  # approved, the training failed: approve again to retry
        print(f"request #{request_id}: approved by {request['decided_by']}, but {request['outcome'] or 'not trained'}"
              " (approve again to retry)")
    else:
        print(f"request #{request_id}: {request['status']}, not approved: {events.failure or 'see the log'}",
              file=sys.stderr)
    print(f"full log {log_path}")
    return 0 if result.success else (1 if request["status"] == "approved" else 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.retraining", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print a table (aligned; --csv: every column as CSV)")
    listing.add_argument("table", nargs="?", default="requests", choices=list(TABLES))
    listing.add_argument("--csv", action="store_true", help="every column as CSV, for scripts")
    for name in ("approve", "reject"):
        p = sub.add_parser(name, help=f"{name} a proposed request" + (" and run its retraining" if name == "approve" else ""))
        p.add_argument("request_id", type=int)
        p.add_argument("--by", required=True, help="who decides (recorded)")
        p.add_argument("--note", default="", help="why (recorded)")
    opened = sub.add_parser("open", help="open a request by hand")
    opened.add_argument("--model", required=True)
    opened.add_argument("--version")
    anchor = sub.add_parser("reanchor", help="start a version's reference loss batch on another day")
    anchor.add_argument("--model", required=True)
    anchor.add_argument("--version", required=True)
    anchor.add_argument("--day", required=True)
    for p in (opened, anchor):
        p.add_argument("--by", required=True, help="who decides (recorded)")
        p.add_argument("--reason", required=True, help="why (recorded)")
    args = parser.parse_args(argv)
    try:
        config = load_config()
        if args.command == "approve":
            return approve(config, args.request_id, args.by, args.note)
        with connect(config.warehouse_path, config.lake_path, models=[]) as con:
            if args.command == "list":
                show(con, args.table, args.csv)
            elif args.command == "reject":
                request = L.decide(con, args.request_id, "rejected", args.by, args.note)
                print(f"request #{args.request_id}: rejected by {request['decided_by']}")
            elif args.command == "open":
                request = L.open_by_hand(con, config, args.model, args.by, args.reason, args.version)
                print(f"request #{request['request_id']}: proposed for {request['model_id']} "
                      f"{request['model_version'] or '(no version)'}, opened on {fmt_cell(request['opened_on'])}")
            else:
                print(L.reanchor(con, config, args.model, args.version, args.day, args.by, args.reason))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
