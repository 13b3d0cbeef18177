"""Cost of the evaluation store at N models x R rows (not collected by pytest).

    .venv/bin/python benchmarks/evaluation_bench.py [--models 100] [--rows 50000] [--runs 3]

Data: benchmarks/scale_bench.py's (12 features a model, 8 numeric and 4 categorical), one day, in a temporary
folder. The predictions, labels and reference profiles are materialized once (a Dagster run). Then, each in a fresh
process so that its peak memory (ru_maxrss) is its own:

* `profiles`: `write_profiles` (what the daily_profiles asset runs) for the day, `--runs` times: the first with
  every evaluation reference made (cold), the others reading them back (warm);
* `window`: the day's profiles copied to 90 days (a stored profile per model-day), then `write_store` for a 90-day
  rolling window at every model, `--runs` times (the prediction tables are deleted first: it reads none).

Storage: the profile's JSON bytes per model-day (median) and the Delta table's bytes on disk per model-day.
Medians; the last line is one JSON object.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW_DAYS = 90


def _config(folder: Path):
    from monitor_assets.config import load_config
    from monitor_assets.evaluation.settings import parse_evaluation

    config = load_config(folder / "monitor.yaml")
    # config.py may not read `evaluation:` yet: the window under test
    object.__setattr__(config, "evaluation", parse_evaluation({"windows": [{"rolling_days": WINDOW_DAYS}]}))
    return config


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not carry the parent's peak over
    fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def step_profiles(folder: Path, day: dt.date, runs: int) -> dict:
    from monitor_assets.evaluation import logic as L
    from monitor_assets.storage.warehouse import connect

    config = _config(folder)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with connect(None, config.lake_path) as con:
            run = L.write_profiles(con, config, [day])
        times.append(time.perf_counter() - t)
    ok = run.frame[run.frame.error.isna()]
    return {"profile_times": [round(x, 2) for x in times], "profiles": len(ok), "errors": int(run.frame.error.notna().sum()),
            "json_bytes_median": float(ok.bytes.median()), "json_bytes_max": int(ok.bytes.max()),
            "peak_rss_mb": peak_mb()}


def step_window(folder: Path, day: dt.date, runs: int) -> dict:
    import pyarrow as pa

    from monitor_assets.evaluation import logic as L
    from monitor_assets.storage.warehouse import connect, lake_of

    config = _config(folder)
    days = [day + dt.timedelta(days=i) for i in range(WINDOW_DAYS)]
    with connect(None, config.lake_path) as con:
        one = con.execute(f"SELECT * FROM {L.PROFILES} WHERE partition_date = ? AND error IS NULL", [day]).to_arrow_table()
        copies = []
        for d in days:
            dates = pa.array([d] * one.num_rows, pa.date32())
            copies.append(one.set_column(one.schema.get_field_index("partition_date"), "partition_date", dates))
        lake = lake_of(con)
        lake.replace(L.PROFILES, pa.concat_tables(copies), days)
        lake.refresh(con, L.PROFILES)
    shutil.rmtree(Path(config.lake_path) / "raw" / "predictions")  # the window must not need them
    disk = sum(f.stat().st_size for f in (Path(config.lake_path) / "monitoring" / "daily_profiles").rglob("*.parquet"))
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        with connect(None, config.lake_path) as con:
            run = L.write_store(con, config, [days[-1]])
        times.append(time.perf_counter() - t)
    full = run.frame[run.frame.days_profiled == WINDOW_DAYS]
    return {"window_times": [round(x, 2) for x in times], "window_rows": len(run.frame),
            "models_with_full_window": int(full.model_id.nunique()),
            "parquet_bytes_per_model_day": round(disk / (one.num_rows * WINDOW_DAYS)),
            "peak_rss_mb_window": peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step", choices=["profiles", "window"])
    parser.add_argument("--folder")
    parser.add_argument("--day")
    args = parser.parse_args()
    if args.step:
        step = step_profiles if args.step == "profiles" else step_window
        print(json.dumps(step(Path(args.folder), dt.date.fromisoformat(args.day), args.runs)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dagster as dg
    import scale_bench as S

    from monitor_assets import keys
    from monitor_assets.definitions import build_definitions

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        p = S.Params(models=args.models, rows=args.rows, days=1, drifted_share=0.1)
        t = time.perf_counter()
        S.generate(p, folder)
        generated = time.perf_counter() - t
        config = _config(folder)
        day = p.dates[0]
        upstream = dg.define_asset_job("evaluation_bench", selection=dg.AssetSelection.assets(
            keys.PREDICTIONS, keys.LABELS, keys.REFERENCE_PROFILES))
        defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[upstream]))
        t = time.perf_counter()
        assert defs.resolve_job_def("evaluation_bench").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), partition_key=str(day)).success
        ingested = time.perf_counter() - t
        out = {"models": args.models, "rows": args.rows, "generate_s": round(generated, 1),
               "ingest_s": round(ingested, 1)}
        for step in ("profiles", "window"):
            done = subprocess.run([sys.executable, __file__, "--step", step, "--folder", str(folder), "--day", str(day),
                                   "--runs", str(args.runs)], capture_output=True, text=True, env=os.environ.copy())
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    times = out["profile_times"]
    out["profiles_cold_s"] = times[0]
    out["profiles_warm_median_s"] = round(statistics.median(times[1:] or times), 2)
    out["window_median_s"] = round(statistics.median(out["window_times"]), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
