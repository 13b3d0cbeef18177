"""Dashboard build time and size: the demo's 30 days x 3 models, and 365 days x 50 models.

    python benchmarks/dashboard_bench.py [--runs 3] [--warehouse warehouse/monitor.duckdb]

The large case is generated in memory in the shape `load_report_data` returns (20 features and two
groups per model, a few alerts), so it measures the dashboard code, not the warehouse. Medians of
--runs builds; the last line is one JSON object.
"""

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from monitor_assets.reporting import ReportData, build_dashboard


def synthetic(days: int, models: int, features: int = 20, seed: int = 0) -> ReportData:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2025-01-01", periods=days, freq="D")
    ids = [f"model_{i:03d}" for i in range(models)]
    grid = pd.MultiIndex.from_product([dates, ids], names=["partition_date", "model_id"]).to_frame(index=False)
    n = len(grid)
    perf = grid.assign(main_metric=rng.normal(0.8, 0.02, n), latency_p95_ms=rng.gamma(20, 6, n),
                       error_rate=rng.beta(1, 400, n), volume=rng.poisson(5000, n), label_coverage=1.0)
    feat = pd.MultiIndex.from_product([dates, ids, [f"f{j:02d}" for j in range(features)]],
                                      names=["partition_date", "model_id", "feature"]).to_frame(index=False)
    drift = feat.assign(statistic=rng.gamma(2, 0.02, len(feat)), threshold=0.1)
    drift["drifted"] = drift.statistic >= drift.threshold
    fair = pd.concat([grid.assign(attribute="segment", grp=g, selection_rate=rng.normal(0.3, 0.02, n),
                                  below_min_size=False) for g in ("a", "b")], ignore_index=True)
    alerts = perf.sample(frac=0.02, random_state=seed)[["partition_date", "model_id"]].assign(
        check_name="latency_p95_within_sla", severity="WARN", value=600.0, threshold=500.0,
        message="latency p95 600 ms (SLA 500 ms)", status="open")
    model_table = pd.DataFrame({"model_id": ids, "task": "binary_classification", "main_metric": "roc_auc",
                                "baseline": 0.8, "latency_sla": 500.0, "error_sla": 0.01})
    quality = pd.DataFrame({"partition_date": dates, "source": "predictions", "records_read": 5000 * models,
                            "records_loaded": 5000 * models, "records_quarantined": 0})
    return ReportData(model_table, perf, drift, perf[["partition_date", "model_id"]].assign(drift_share=0.1), fair,
                      alerts, quality, pd.DataFrame({"source": [], "reason": [], "n": []}))


def measure(data: ReportData, runs: int) -> tuple[float, float]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        page = build_dashboard(data, generated=dt.datetime(2026, 1, 1))
        times.append(time.perf_counter() - start)
        size = len(page.encode())
    return statistics.median(times), size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warehouse", default=str(Path(__file__).parents[1] / "warehouse" / "monitor.duckdb"))
    args = parser.parse_args()
    result = {}
    if Path(args.warehouse).exists():
        import duckdb

        from monitor_assets.config import load_config
        from monitor_assets.reporting import load_report_data

        config = load_config()
        with duckdb.connect(args.warehouse, read_only=True) as con:
            start = time.perf_counter()
            demo = load_report_data(con, config, config.end_date or dt.date.today())
            load = time.perf_counter() - start
        seconds, mb = measure(demo, args.runs)
        print(f"demo 30 days x {len(config.models)} models: load {load:.2f} s + build {seconds:.2f} s, {mb:.1f} MB")
        result.update(demo_seconds=round(load + seconds, 3), demo_mb=round(mb, 2))
    else:
        print(f"no warehouse at {args.warehouse}: run `make run` for the demo case")
    seconds, mb = measure(synthetic(365, 50), args.runs)
    print(f"365 days x 50 models: build {seconds:.2f} s, {mb:.1f} MB")
    result.update(large_seconds=round(seconds, 3), large_mb=round(mb, 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
