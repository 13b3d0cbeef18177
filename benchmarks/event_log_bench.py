"""The local instance's event log: what a year's backfill costs in Dagster's own bookkeeping.

    python benchmarks/event_log_bench.py [--days 365] [--assets 20] [--checks 16] [--runs 3]
        [--modes batched,per-event,dagster]

One run of a job over --days daily partitions (one run for the range, as `make run` and a backfill from the job
page launch it): --assets assets that do nothing but report each day (a planned and a materialized event per
asset and day, with a few metadata entries, as ours have) and a check step with --checks checks per day (a planned
row per check and day, then an evaluation each). That is the event traffic of a year of one model through our
pipeline without its work, so the time is the instance's alone. Modes, each in a fresh process and a fresh
DAGSTER_HOME:
- `batched`: our storage (`monitor_assets.event_log`), a batch written with one statement per table;
- `per-event`: our storage as it was before (one transaction per batch, Dagster's statements event by event);
- `dagster`: Dagster's own SQLite storage (a transaction, and several statements, per event).
Reported: seconds per run (median of --runs), events stored, and the ratios. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("batched", "per-event", "dagster")

CHILD = r"""
import datetime as dt, json, os, sys, time
import dagster as dg
from pathlib import Path

mode, days, n_assets, n_checks, home = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
if mode == "dagster":
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "1000"  # Dagster's own batching on: the fairest comparison
else:
    from monitor_assets.runner import INSTANCE_TEMPLATES, instance_yaml
    (home / "dagster.yaml").write_text(instance_yaml(INSTANCE_TEMPLATES["local"], home))
    if mode == "per-event":
        from dagster._core.storage.event_log import SqliteEventLogStorage
        from monitor_assets.event_log import BatchedSqliteEventLogStorage

        def one_by_one(self, events):
            for event in events:
                SqliteEventLogStorage.store_event(self, event)

        BatchedSqliteEventLogStorage._store_together = one_by_one

start = dt.date(2025, 1, 1)
partitions = dg.DailyPartitionsDefinition(start_date=str(start), end_date=str(start + dt.timedelta(days=days)))


def make_asset(i):
    @dg.asset(name=f"a{i:02d}", partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run())
    def _asset(context) -> dg.MaterializeResult:  # Dagster records a materialization per day of the run
        return dg.MaterializeResult(metadata={"rows": 200, "models": 1, "days": len(context.partition_keys),
                                              "share": 0.25})
    return _asset


assets = [make_asset(i) for i in range(n_assets)]
specs = [dg.AssetCheckSpec(f"check_{j:02d}", asset="a00", partitions_def=partitions) for j in range(n_checks)]


@dg.multi_asset_check(specs=specs)
def checks(context: dg.AssetCheckExecutionContext):
    for spec in specs:
        for key in context.partition_keys:
            yield dg.AssetCheckEvaluation(asset_key=spec.asset_key, check_name=spec.name, partition=key,
                                          passed=True, metadata={"value": 0.1, "threshold": 0.2})
        yield dg.Output(None, output_name=spec.get_python_identifier())


job = dg.define_asset_job("year", assets, partitions_def=partitions)
defs = dg.Definitions(assets=assets, asset_checks=[checks], jobs=[job])
instance = dg.DagsterInstance.from_config(str(home))
t0 = time.perf_counter()
result = defs.resolve_job_def("year").execute_in_process(instance=instance, tags={
    "dagster/asset_partition_range_start": str(start),
    "dagster/asset_partition_range_end": str(start + dt.timedelta(days=days - 1))})
seconds = time.perf_counter() - t0
assert result.success
logs = instance.all_logs(result.run_id)
evaluated = len([e for e in logs if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"])
print(json.dumps({"seconds": seconds, "events": len(logs), "check_evaluations": evaluated}))
"""


def run(mode: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.days), str(args.assets), str(args.checks),
                               home], capture_output=True, text=True, cwd=REPO, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--assets", type=int, default=20)
    parser.add_argument("--checks", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)} (choose from {', '.join(MODES)})")
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    events = {}
    started = time.perf_counter()
    for _ in range(args.runs):  # interleaved: a noisy minute slows every mode alike
        for mode in modes:
            got = run(mode, args)
            seconds[mode].append(got["seconds"])
            events[mode] = got
    print(f"{args.days} days x {args.assets} assets, {args.checks} checks a day; {args.runs} run(s) a mode, "
          f"{time.perf_counter() - started:.0f} s in all")
    median = {m: statistics.median(v) for m, v in seconds.items()}
    for mode in modes:
        print(f"  {mode:10s} {median[mode]:7.2f} s  (runs: {', '.join(f'{s:.2f}' for s in seconds[mode])}; "
              f"{events[mode]['events']:,} events, {events[mode]['check_evaluations']:,} check evaluations)")
    ratios = {f"{m}/batched": round(median[m] / median["batched"], 2) for m in modes
              if m != "batched" and "batched" in median}
    for name, ratio in ratios.items():
        print(f"  {name}: {ratio}x")
    print(json.dumps({"days": args.days, "assets": args.assets, "checks": args.checks, "runs": args.runs,
                      "median_seconds": median, "seconds": seconds, "ratios": ratios,
                      "events": {m: e["events"] for m, e in events.items()}}))


if __name__ == "__main__":
    main()
