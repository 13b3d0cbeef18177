"""Retraining requests from the command line: the same decisions as the jobs in the UI, recorded in
the same tables. Approving runs `approve_retraining_job` in this process on the Dagster instance of
$DAGSTER_HOME, so the run, its logs and the training outcome show in the UI like a launched run.

    python -m monitor_assets.retraining list [requests|versions|comparison|trigger]
    python -m monitor_assets.retraining approve ID --by NAME [--note TEXT]
    python -m monitor_assets.retraining reject ID --by NAME [--note TEXT]
    python -m monitor_assets.retraining open --model M --by NAME --reason TEXT [--version V]
    python -m monitor_assets.retraining reanchor --model M --version V --day YYYY-MM-DD --by NAME --reason TEXT

The config comes from $MONITOR_CONFIG and the warehouse from $MONITOR_WAREHOUSE, as for the pipeline.
Exit status: 0 done, 1 the approved training failed, 2 a wrong id, model, state or argument.
"""

from __future__ import annotations

import argparse
import sys

from monitor_assets.config import ConfigError, load_config
from monitor_assets.retraining import logic as L
from monitor_assets.storage.warehouse import connect

TABLES = {"requests": "monitoring.retraining_requests", "versions": "monitoring.model_versions",
          "comparison": "monitoring.version_comparison", "trigger": "monitoring.retraining_trigger"}


def approve(config, request_id: int, by: str, note: str) -> int:
    """Run the approval job in process, recorded in the instance of $DAGSTER_HOME."""
    import dagster as dg

    from monitor_assets.definitions import build_definitions
    from monitor_assets.retraining.defs import APPROVE_JOB
    from monitor_assets.run_pipeline import prepare_dagster_home

    prepare_dagster_home()
    job = build_definitions(config).resolve_job_def(APPROVE_JOB)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": {
            "approve_retraining_request": {"config": {"request_id": request_id, "by": by, "note": note}}}})
    with connect(config.warehouse_path, config.lake_path, models=[]) as con:
        request = L.get_request(con, request_id)
    print(f"request #{request_id}: {request['status']}; {request.get('outcome') or 'not run'} (run {result.run_id})")
    return 0 if result.success else (1 if request["status"] == "approved" else 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.retraining", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="print a table as CSV")
    show.add_argument("table", nargs="?", default="requests", choices=list(TABLES))
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
                con.sql(f"SELECT * FROM {TABLES[args.table]}").df().to_csv(sys.stdout, index=False)
            elif args.command == "reject":
                request = L.decide(con, args.request_id, "rejected", args.by, args.note)
                print(f"request #{args.request_id}: rejected by {request['decided_by']}")
            elif args.command == "open":
                request = L.open_by_hand(con, config, args.model, args.by, args.reason, args.version)
                print(f"request #{request['request_id']}: proposed for {request['model_id']} "
                      f"{request['model_version'] or ''}".rstrip())
            else:
                print(L.reanchor(con, config, args.model, args.version, args.day, args.by, args.reason))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
