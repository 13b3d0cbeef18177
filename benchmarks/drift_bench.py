"""Drift detection speed and accuracy against Evidently, on identical data.

    python benchmarks/drift_bench.py --rows N [--runs 3] [--no-evidently]

Builds (fixed seed) reference and current frames of N rows with 20 features: 14 numeric (normal,
lognormal, uniform) and 6 categorical strings with 5 to 50 levels. In the current frame, 5 numeric
features shift their mean by 0.3 standard deviations and 2 categorical features are reweighted.
Both are written to Parquet; the timed work reads them, profiles the reference, counts the current
data and computes every feature's drift (our defaults: Wasserstein/std >= 0.1 for numeric,
Jensen-Shannon >= 0.1 for categorical at this size). Each measurement runs in a fresh subprocess
(peak memory = its max RSS); medians over the runs. The last line is one JSON object.
Evidently is the optional `bench` extra; EVIDENTLY_PYTHON may name another interpreter that has it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = [f"num_{i:02d}" for i in range(14)]
CATEGORICAL = [f"cat_{i}" for i in range(6)]
LEVELS = [5, 8, 12, 20, 30, 50]
SHIFTED_NUMERIC = NUMERIC[:5]
REWEIGHTED = CATEGORICAL[:2]


def make_frame(rows: int, rng: np.random.Generator, drifted: bool) -> pd.DataFrame:
    data = {}
    for i, name in enumerate(NUMERIC):
        kind = i % 3
        if kind == 0:
            x, sd = rng.normal(10, 2, rows), 2.0
        elif kind == 1:
            x = rng.lognormal(1, 0.5, rows)
            sd = float(np.sqrt((np.exp(0.25) - 1) * np.exp(2 + 0.25)))
        else:
            x, sd = rng.uniform(0, 100, rows), 100 / np.sqrt(12)
        if drifted and name in SHIFTED_NUMERIC:
            x = x + 0.3 * sd
        data[name] = x
    for name, levels in zip(CATEGORICAL, LEVELS, strict=True):
        weights = np.linspace(2, 1, levels)
        if drifted and name in REWEIGHTED:  # the commonest levels lose half their share
            weights = weights.copy()
            weights[: max(1, levels // 4)] *= 0.5
        data[name] = rng.choice([f"{name}_v{j}" for j in range(levels)], rows, p=weights / weights.sum())
    return pd.DataFrame(data)


OURS = """
import json, resource, sys, time
import duckdb
from monitor_assets.analysis.queries import compute_drift, profile_reference
from monitor_assets.stats.drift import FeatureSpec
ref_path, cur_path, numeric, categorical = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
specs = [FeatureSpec(n, "numeric") for n in numeric] + [FeatureSpec(c, "categorical") for c in categorical]
t0 = time.perf_counter()
con = duckdb.connect()
profiles = profile_reference(con, "SELECT * FROM read_parquet(?)", specs, [ref_path])
t1 = time.perf_counter()
results = compute_drift(con, "SELECT * FROM read_parquet(?)", specs, profiles, [cur_path])
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "profile_seconds": t1 - t0, "daily_seconds": t2 - t1,
                  "drifted": [r.feature for r in results if r.drifted],
                  "statistics": {r.feature: [r.method, round(r.statistic, 4)] for r in results},
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

EVIDENTLY = """
import json, resource, sys, time
import pandas as pd
t0 = time.perf_counter()
ref, cur = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
from evidently import Report
from evidently.presets import DataDriftPreset
report = Report([DataDriftPreset()])
snapshot = report.run(reference_data=ref, current_data=cur)
result = snapshot.dict()
seconds = time.perf_counter() - t0
drifted = []
for metric in result["metrics"]:
    config = metric.get("config", {})
    if not str(config.get("type", "")).endswith("ValueDrift"):
        continue
    method, threshold, value = str(config.get("method", "")), float(config.get("threshold", 0.1)), metric["value"]
    p_value_test = "p_value" in method.lower() or "test" in method.lower()
    if (value < threshold) if p_value_test else (value >= threshold):
        drifted.append(config["column"])
print(json.dumps({"seconds": seconds, "drifted": drifted,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str, timeout: int = 3600, python: str | None = None) -> dict:
    out = subprocess.run([python or sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true")
    parser.add_argument("--write-to", help=argparse.SUPPRESS)  # internal: make the data set in a child
    args = parser.parse_args()
    if args.write_to:
        rng = np.random.default_rng(42)
        make_frame(args.rows, rng, drifted=False).to_parquet(Path(args.write_to) / "reference.parquet", index=False)
        make_frame(args.rows, rng, drifted=True).to_parquet(Path(args.write_to) / "current.parquet", index=False)
        return
    shifted = set(SHIFTED_NUMERIC) | set(REWEIGHTED)
    with tempfile.TemporaryDirectory() as tmp:
        ref_path, cur_path = Path(tmp) / "reference.parquet", Path(tmp) / "current.parquet"
        # Made in a child: Linux keeps a process's peak RSS across fork and exec, so a parent that
        # held the frames would inflate every measured child's peak.
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--write-to", tmp], check=True)
        runs = [child(OURS, str(ref_path), str(cur_path), ",".join(NUMERIC), ",".join(CATEGORICAL))
                for _ in range(args.runs)]
        seconds = statistics.median(r["seconds"] for r in runs)
        flagged = set(runs[0]["drifted"])
        tp, fp = len(flagged & shifted), len(flagged - shifted)
        print(f"rows {args.rows:,}: ours {seconds:.2f} s median of {args.runs} "
              f"(profile {statistics.median(r['profile_seconds'] for r in runs):.2f} s, "
              f"daily {statistics.median(r['daily_seconds'] for r in runs):.2f} s), "
              f"peak {max(r['peak_mb'] for r in runs):.0f} MB, flagged {tp}/{len(shifted)} shifted, {fp} false")
        for name, (method, value) in runs[0]["statistics"].items():
            print(f"  {name:8s} {method:14s} {value:8.4f} {'DRIFT' if name in flagged else ''}"
                  f"{'  (shifted)' if name in shifted else ''}")
        result = {"rows": args.rows, "seconds": round(seconds, 3),
                  "daily_seconds": round(statistics.median(r["daily_seconds"] for r in runs), 3),
                  "peak_mb": round(max(r["peak_mb"] for r in runs)), "true_positives": tp,
                  "false_positives": fp, "evidently_seconds": None, "evidently_peak_mb": None,
                  "evidently_true_positives": None, "evidently_false_positives": None, "speedup": None}
        if not args.no_evidently:
            try:
                # Evidently may live in its own environment (it pins other pandas/numpy versions).
                ev = child(EVIDENTLY, str(ref_path), str(cur_path), python=os.environ.get("EVIDENTLY_PYTHON"))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"evidently skipped: {str(exc)[-300:]}")
            else:
                ev_flagged = set(ev["drifted"])
                result.update(evidently_seconds=round(ev["seconds"], 2), evidently_peak_mb=round(ev["peak_mb"]),
                              evidently_true_positives=len(ev_flagged & shifted),
                              evidently_false_positives=len(ev_flagged - shifted),
                              speedup=round(ev["seconds"] / seconds, 1))
                print(f"evidently {ev['seconds']:.1f} s, peak {ev['peak_mb']:.0f} MB, flagged "
                      f"{result['evidently_true_positives']} shifted, {result['evidently_false_positives']} false; "
                      f"ours is {result['speedup']}x faster")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
