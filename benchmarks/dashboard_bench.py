"""Dashboard build time and sizes: the demo (30 days x 3 models), 365 days x 50 and x 100 models.

    python benchmarks/dashboard_bench.py [--runs 3] [--warehouse warehouse/monitor.duckdb]

The dashboard is an index page (dashboard.html), a page per model (models/*.html) and plotly.js once
(assets/plotly.min.js). For each case this prints the median build time of --runs builds (rendering and
writing every file into a fresh folder), the index size, the largest model page and the total, against
the budgets (index < 5 MB, each model page < 1 MB). The large cases are generated in memory in the shape
`load_report_data` returns (20 features and two groups per model, 2% of model-days with an alert, in all
three states), so they measure the dashboard code, not the warehouse. The last line is one JSON object.
"""

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from monitor_assets.reporting.dashboard import ReportData, build_dashboard

INDEX_BUDGET, MODEL_PAGE_BUDGET = 5e6, 1e6


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
    alerts["state"] = rng.choice(["open", "acknowledged", "silenced"], len(alerts), p=[0.6, 0.3, 0.1])
    alerts["state_note"] = np.where(alerts.state == "open", "", "by ana 2025-06-01T10:00Z: known load test")
    model_table = pd.DataFrame({"model_id": ids, "task": "binary_classification", "main_metric": "roc_auc",
                                "baseline": 0.8, "latency_sla": 500.0, "error_sla": 0.01})
    quality = pd.DataFrame({"partition_date": dates, "source": "predictions", "records_read": 5000 * models,
                            "records_loaded": 5000 * models, "records_quarantined": 0})
    return ReportData(model_table, perf, drift, perf[["partition_date", "model_id"]].assign(drift_share=0.1), fair,
                      alerts, quality, pd.DataFrame({"source": [], "reason": [], "n": []}))


def measure(data: ReportData, runs: int) -> dict:
    """Median build time over `runs` builds, each into a fresh folder, and the sizes of the last one (MB)."""
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            dashboard = build_dashboard(data, folder, generated=dt.datetime(2026, 1, 1))
            times.append(time.perf_counter() - start)
            total = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
            sizes = {"index_mb": dashboard.index.stat().st_size / 1e6,
                     "largest_model_page_mb": dashboard.largest_model_page_bytes / 1e6,
                     "plotly_js_mb": dashboard.plotly_js.stat().st_size / 1e6, "total_mb": total / 1e6}
    return {"seconds": round(statistics.median(times), 3), "runs": [round(t, 2) for t in times],
            **{k: round(v, 3) for k, v in sizes.items()}}


def report(name: str, m: dict) -> None:
    ok = m["index_mb"] * 1e6 < INDEX_BUDGET and m["largest_model_page_mb"] * 1e6 < MODEL_PAGE_BUDGET
    print(f"{name}: build {m['seconds']:.2f} s (median of {m['runs']}), index {m['index_mb']:.2f} MB, "
          f"largest model page {m['largest_model_page_mb']:.3f} MB, plotly.js {m['plotly_js_mb']:.1f} MB once, "
          f"all files {m['total_mb']:.1f} MB, {'within' if ok else 'OVER'} budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warehouse", default=str(Path(__file__).parents[1] / "warehouse" / "monitor.duckdb"))
    args = parser.parse_args()
    result = {}
    from monitor_assets.config import lake_beside

    if Path(lake_beside(args.warehouse)).exists():  # where every table is now
        from monitor_assets.config import load_config
        from monitor_assets.reporting.dashboard import load_report_data
        from monitor_assets.storage.warehouse import connect

        config = load_config()
        with connect(args.warehouse, read_only=True) as con:
            start = time.perf_counter()
            demo = load_report_data(con, config, config.end_date or dt.date.today())
            load = time.perf_counter() - start
        m = measure(demo, args.runs)
        days = demo.performance.partition_date.nunique()
        report(f"demo {days} days x {len(config.models)} models (load {load:.2f} s)", m)
        result["demo"] = {"load_seconds": round(load, 3), **m}
    else:
        print(f"no warehouse at {args.warehouse}: run `make run` for the demo case")
    for models in (50, 100):
        m = measure(synthetic(365, models), args.runs)
        report(f"365 days x {models} models", m)
        result[f"365x{models}"] = m
    print(json.dumps(result))


if __name__ == "__main__":
    main()
