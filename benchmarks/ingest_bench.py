"""Ingestion speed: 1 million prediction-log lines (about 500 MB, 14 features, 1% corrupted).

    python benchmarks/ingest_bench.py [--lines 1000000] [--days 1] [--runs 3] [--no-pandas]

Measures the pipeline's own path (`ingest_days`: read, validate, quarantine, write to the lake) and
`pandas.read_json(lines=True)` on the same lines, each in a fresh subprocess so peak memory (max RSS) is
its own. With --days D the lines are spread over D daily files (a backfill of small days: the shape where
a fixed price per day showed) and read in one call over the D days. Prints medians over the runs, the
ratio, and a JSON line at the end.
"""

import argparse
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FEATURES = [f"f{i:02d}" for i in range(14)]


def write_log(paths: list[Path], lines: int, seed: int = 1) -> int:
    """`lines` lines spread evenly over the files; returns how many are corrupted."""
    rng = random.Random(seed)
    bad = 0
    per_file = -(-lines // len(paths))
    files = [open(p, "w") for p in paths]
    try:
        for i in range(lines):
            f = files[i // per_file]
            rec = {"timestamp": f"2026-03-01T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}Z",
                   "level": "INFO", "logger": "serving.bench_model", "message": "prediction served",
                   "prediction_id": f"bench-{i:09d}", "model_id": "bench_model", "model_version": "1.4.2",
                   "latency_ms": round(rng.gammavariate(4, 10), 2), "status": "ok",
                   "features": {n: round(rng.gauss(0, 1), 6) for n in FEATURES[:10]}
                   | {n: rng.choice(["alpha", "beta", "gamma", "delta"]) for n in FEATURES[10:]},
                   "context": {"segment": rng.choice(["a", "b"])},
                   "score": round(rng.random(), 6)}
            line = json.dumps(rec)
            if i % 100 == 37:  # 1% corrupted, in four ways
                bad += 1
                kind = (i // 100) % 4
                line = (line[: len(line) // 2] if kind == 0 else
                        line.replace('"score": ', '"score": 1') if kind == 1 else
                        line.replace('"prediction_id": ', '"pid": ') if kind == 2 else
                        line.replace('"latency_ms": ', '"latency_ms": "x'))
            f.write(line + "\n")
    finally:
        for f in files:
            f.close()
    return bad


CONFIG = """
partitions: {{start_date: 2026-03-01}}
sources:
  predictions: {{path: "{log}"}}
  labels: {{path: "labels/{{date}}.csv"}}
models:
  - id: bench_model
    task: binary_classification
    reference: ref.parquet
    features: {{{features}}}
    sensitive_attributes: [segment]
"""

CHILD_PIPELINE = """
import datetime as dt, json, resource, sys, time
from monitor_assets.config import load_config
from monitor_assets.ingestion.readers import ingest_days
from monitor_assets.storage.warehouse import connect
config = load_config(sys.argv[1])
days = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(int(sys.argv[3]))]
t = time.perf_counter()
with connect(sys.argv[2]) as con:
    results = [r for _, r in ingest_days(con, config, "predictions", days)]
s = time.perf_counter() - t
per_file = int(sys.argv[4])
with connect(sys.argv[2]) as con:  # every loaded record at its own line (prediction i is line i % per_file + 1)
    misplaced = con.execute("SELECT count(*) FROM raw.predictions WHERE line_no <> "
                            "CAST(split_part(prediction_id, '-', 2) AS BIGINT) % ? + 1", [per_file]).fetchone()[0]
    duplicates = con.execute("SELECT count(*) FROM raw.quarantine WHERE reason = 'duplicate'").fetchone()[0]
print(json.dumps({"seconds": s, "read": sum(r.read for r in results), "loaded": sum(r.loaded for r in results),
                  "quarantined": sum(r.quarantined for r in results), "misplaced": misplaced, "duplicates": duplicates,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_PANDAS = """
import json, resource, sys, time
import pandas as pd
t = time.perf_counter()
try:
    df = pd.read_json(sys.argv[1], lines=True); n = len(df); err = None
except ValueError as e:  # pandas stops at the first malformed line: it cannot quarantine
    n, err = 0, str(e)[:80]
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "rows": n, "error": err,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=1, help="daily files the lines are spread over")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-pandas", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        days = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(args.days)]
        logs = [tmp / f"{d}.jsonl" for d in days]
        bad = write_log(logs, args.lines)
        size_mb = sum(p.stat().st_size for p in logs) / 1e6
        feats = ", ".join(f"{n}: {'numeric' if i < 10 else 'categorical'}" for i, n in enumerate(FEATURES))
        cfg = tmp / "bench.yaml"
        cfg.write_text(CONFIG.format(log=str(tmp / "{date}.jsonl"), features=feats))
        print(f"{args.days} file(s): {args.lines:,} lines, {size_mb:.0f} MB, {bad:,} corrupted")
        ours = []
        for run in range(args.runs):
            r = child(CHILD_PIPELINE, str(cfg), str(tmp / f"wh{run}" / "w.duckdb"), str(args.days),
                      str(-(-args.lines // len(logs))))
            assert r["read"] == r["loaded"] + r["quarantined"] == args.lines and r["quarantined"] == bad, r
            assert r["misplaced"] == r["duplicates"] == 0, r  # each record at its own line, each bad line for itself
            ours.append(r)
            print(f"  pipeline run {run + 1}: {r['seconds']:.2f} s, {r['read'] / r['seconds']:,.0f} lines/s, "
                  f"peak {r['peak_mb']:.0f} MB, quarantined {r['quarantined']:,}")
        sec = statistics.median(r["seconds"] for r in ours)
        peak = max(r["peak_mb"] for r in ours)
        result = {"lines": args.lines, "days": args.days, "mb": round(size_mb), "seconds": round(sec, 3),
                  "lines_per_second": round(args.lines / sec), "peak_mb": round(peak),
                  "pandas_seconds": None, "pandas_peak_mb": None, "speedup": None}
        if not args.no_pandas:
            clean = tmp / "clean.jsonl"  # pandas cannot read the corrupted file at all: give it the clean lines
            with open(clean, "w") as dst:
                for log in logs:
                    with open(log) as src:
                        for line in src:
                            try:
                                json.loads(line)
                                dst.write(line)
                            except ValueError:
                                pass
            p = child(CHILD_PANDAS, str(logs[0]))
            print(f"  pandas.read_json on the corrupted file: {p['error'] or 'read'}")
            p = child(CHILD_PANDAS, str(clean))
            print(f"  pandas.read_json on the clean lines only: {p['seconds']:.2f} s, "
                  f"{p['rows'] / p['seconds']:,.0f} lines/s, peak {p['peak_mb']:.0f} MB")
            result.update(pandas_seconds=round(p["seconds"], 3), pandas_peak_mb=round(p["peak_mb"]),
                          speedup=round(p["seconds"] / sec, 1))
        print(f"median pipeline: {sec:.2f} s = {args.lines / sec:,.0f} lines/s, peak {peak:.0f} MB"
              + (f"; pandas {result['pandas_seconds']:.2f} s, {result['pandas_peak_mb']} MB; "
                 f"ratio {result['speedup']}x" if result["speedup"] else ""))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
