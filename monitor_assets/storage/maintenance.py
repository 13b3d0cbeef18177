"""Check and repair the lake's files by hand: `python -m monitor_assets.storage.maintenance check|repair|compact`.

`check` reads every lake table's Delta log and verifies that each data file it lists exists, has the size the log
says and has a readable Parquet footer; it prints one line per problem (table, partition, path, what is wrong)
and exits 1, or a summary line and exits 0 when all is readable. `repair` takes the damaged and missing files out
of their tables (one commit a table; damaged files are kept under the table's `_damaged/` folder) and names the
days to re-run, which write the rows again. `compact` is the weekly maintenance (`lake_maintenance_job`) by hand.
The lake is found as the pipeline finds it ($MONITOR_CONFIG, $MONITOR_WAREHOUSE, $MONITOR_LAKE) or `--lake`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from monitor_assets.config import ConfigError, load_config
from monitor_assets.storage.lake import FileProblem, Lake

RETENTION_HOURS = 168.0


def _days(problems: list[FileProblem]) -> list[str]:
    """The partition days whose rows were taken out (re-running them writes the rows again)."""
    return sorted({v for p in problems for k, v in p.values if k == "partition_date"})


def check(lake: Lake, out: TextIO) -> int:
    tables, files, problems = lake.check()
    for problem in problems:
        out.write(f"damaged: {problem.line()}\n")
    if problems:
        damaged = len({p.table for p in problems})
        out.write(f"{len(problems)} damaged of {files} files in {damaged} of {tables} tables under {lake.root}; "
                  f"`repair` takes them out, then re-run: {', '.join(_days(problems)) or 'the tables without days'}\n")
        return 1
    out.write(f"{files} files in {tables} tables under {lake.root}: all readable\n")
    return 0


def repair(lake: Lake, out: TextIO) -> int:
    taken: list[FileProblem] = []
    for location in lake.all_tables():
        for problem in lake.heal(location):
            out.write(f"taken out: {problem.line()}\n")
            taken.append(problem)
    if not taken:
        out.write(f"nothing to repair under {lake.root}\n")
        return 0
    days = _days(taken)
    undated = sorted({p.table for p in taken if not p.values})
    out.write(f"{len(taken)} files taken out; re-run to restore their rows: "
              f"{', '.join(days) if days else ''}{'; ' if days and undated else ''}"
              f"{'rebuild ' + ', '.join(undated) if undated else ''}\n")
    return 0


def compact(lake: Lake, out: TextIO, retention_hours: float) -> int:
    report = lake.maintain(retention_hours)
    status = 0
    for row in report:
        for line in row.get("problems", []):
            out.write(f"not compacted, damaged: {line}\n")
            status = 1
    out.write(f"{len(report)} tables: {sum(r['files_before'] for r in report)} files before, "
              f"{sum(r['files_after'] for r in report)} after, {sum(r['files_vacuumed'] for r in report)} vacuumed\n")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor_assets.storage.maintenance",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "repair", "compact"])
    parser.add_argument("--lake", help="the lake's folder or bucket URI (default: as the pipeline finds it)")
    parser.add_argument("--retention-hours", type=float, default=RETENTION_HOURS,
                        help="compact: keep files versions of this many hours use")
    args = parser.parse_args(argv)
    try:
        root = args.lake or load_config().lake_path
        lake = Lake(root)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"maintenance: {' '.join(str(exc).split())}\n")
        return 2
    if args.command == "check":
        return check(lake, sys.stdout)
    if args.command == "repair":
        return repair(lake, sys.stdout)
    return compact(lake, sys.stdout, args.retention_hours)


if __name__ == "__main__":
    sys.exit(main())
