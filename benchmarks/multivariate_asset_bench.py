"""Time of the multivariate_drift asset's work at N models x R rows x 1 day (not collected by pytest).

    .venv/bin/python benchmarks/multivariate_asset_bench.py [--models 20] [--rows 20000]

Data: benchmarks/scale_bench.py's (12 features a model, 8 numeric and 4 categorical; 10% of the models drift on the
day), in a temporary folder. The predictions and reference profiles are materialized once; then `write_multivariate`
(what the asset runs, on a lake connection) is timed `--runs` times cold (every reference fitted: the fit key is
changed each time) and `--runs` times warm (the stored fits read back), and the asset itself once more as a Dagster
step. Medians; the last line is one JSON object.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale_bench as S

    from monitor_assets import keys
    from monitor_assets.config import load_config
    from monitor_assets.definitions import build_definitions
    from monitor_assets.multivariate import logic as L
    from monitor_assets.storage.resource import WarehouseResource

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        p = S.Params(models=args.models, rows=args.rows, days=1, drifted_share=0.1)
        manifest = S.generate(p, folder)
        config = load_config(folder / "monitor.yaml")
        day = p.dates[0]
        upstream = dg.define_asset_job("mv_bench",
                                       selection=dg.AssetSelection.assets(keys.MULTIVARIATE_DRIFT).upstream())
        asset_only = dg.define_asset_job("mv_only", selection=dg.AssetSelection.assets(keys.MULTIVARIATE_DRIFT))
        defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[upstream, asset_only]))
        instance = dg.DagsterInstance.ephemeral()
        started = time.perf_counter()
        result = defs.resolve_job_def("mv_bench").execute_in_process(instance=instance, partition_key=str(day))
        assert result.success
        first_run = time.perf_counter() - started
        warehouse = WarehouseResource(path=config.warehouse_path, lake_path=config.lake_path)

        def timed() -> tuple[float, object]:
            t = time.perf_counter()
            with warehouse.connect_lake() as con:
                frame = L.write_multivariate(con, config, [day])
            return time.perf_counter() - t, frame

        cold, warm = [], []
        for i in range(args.runs):
            L.FIT_FORMAT = 100 + i  # a new fit key: every reference is fitted again
            seconds, frame = timed()
            cold.append(seconds)
        for _ in range(args.runs):
            seconds, frame = timed()
            warm.append(seconds)
        flagged = sorted(set(frame[frame.drifted.fillna(False).astype(bool)].model_id))
        steps = {}
        t = time.perf_counter()
        assert defs.resolve_job_def("mv_only").execute_in_process(instance=instance, partition_key=str(day)).success
        steps["asset_step_warm_wall"] = round(time.perf_counter() - t, 2)
    out = {"models": args.models, "rows": args.rows, "cold_median_s": round(statistics.median(cold), 2),
           "warm_median_s": round(statistics.median(warm), 2), "cold": [round(x, 2) for x in cold],
           "warm": [round(x, 2) for x in warm], "first_job_with_ingest_s": round(first_run, 1), **steps,
           "flagged": flagged, "drifted_in_data": manifest["drifted"], "rows_written": len(frame)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
