"""Run the whole monitoring pipeline headless over a range of days, recorded in the Dagster instance.

    python -m monitor_assets.run_pipeline [--start YYYY-MM-DD] [--end YYYY-MM-DD]

Defaults to every partition the config declares. All days go in one run (each asset processes the
range in a single step), which on two cores is far faster than a run per day. The run is stored in
$DAGSTER_HOME, so `make dev` shows it, its assets and their metadata in the UI.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from monitor_assets.config import REPO_ROOT, load_config


def prepare_dagster_home() -> Path:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start")
    parser.add_argument("--end")
    args = parser.parse_args(argv)
    home = prepare_dagster_home()

    import dagster as dg

    from monitor_assets.definitions import MONITORING_JOB, build_definitions

    config = load_config()
    defs = build_definitions(config)
    job = defs.resolve_job_def(MONITORING_JOB)
    keys = job.partitions_def.get_partition_keys()
    start, end = args.start or keys[0], args.end or keys[-1]
    print(f"config     {config.file}\nwarehouse  {config.warehouse_path}\nreports    {config.reports_dir}\n"
          f"dagster    {home}\nrunning {MONITORING_JOB} for {start}..{end} ({len(config.models)} models)")
    began = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
            raise_on_error=False,
        )
    seconds = time.perf_counter() - began
    print(f"run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} in {seconds:.1f} s")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
