"""Cost of multivariate drift and of mergeable profiles per model-day, and of a 90-day window for 100 models.

    python benchmarks/multivariate_bench.py [--rows 50000] [--runs 3] [--models 10]

Data (fixed seed): 12 features (10 numeric, two of them correlated 0.8, and 2 categorical), a binary score and
label with 10% of labels not known yet, one sensitive attribute. Each figure is measured in a fresh subprocess
(peak memory = its max RSS, and the rise over the RSS once the imports are done); medians over `--runs`. Wall and
CPU time both: on a shared machine the CPU time (one thread: the classifier is held to one) is the steadier figure.

* `fit`: `multivariate.fit_reference` on a 50,000-row reference (25 chunks of 2,000 rows): once per reference version.
* `drift`: `multivariate.multivariate_drift` on one model-day of `--rows` rows (sampled to 5,000 a side), a quiet day
  (the classifier explains nothing) and a drifted one (the correlation flips: permutation importance runs too).
* `drift_models`: `--models` models one after another (each its reference read from text), measured; 100 models
  extrapolated.
* `profile`: `profiles.build_profile` of one model-day of `--rows` rows; the profile's JSON size.
* `merge`: JSON-decoding and merging 90 daily profiles, for 100 models.
The last line is one JSON object.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np, pandas as pd
import sklearn.ensemble, threadpoolctl  # imported lazily by the code: here, so the memory rise is the work's own
from monitor_assets.stats import multivariate as M, profiles as P
from monitor_assets.stats.drift import FeatureSpec

part, rows, models, seed, saved = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
NUMERIC = [f"x{i}" for i in range(10)]
FEATURES = [FeatureSpec(n, "numeric") for n in NUMERIC] + [FeatureSpec("shop", "categorical"),
                                                           FeatureSpec("device", "categorical")]

def frame(rng, n, rho=0.8):
    x = rng.normal(size=(n, 10))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho * rho) * rng.normal(size=n)
    df = pd.DataFrame(x, columns=NUMERIC)
    df["shop"] = rng.choice([f"s{i}" for i in range(30)], n)
    df["device"] = rng.choice(["ios", "android", "web"], n)
    df["score"] = 1 / (1 + np.exp(-(x[:, 0] + rng.normal(size=n))))
    df["label"] = np.where(rng.random(n) < 0.1, np.nan, (rng.random(n) < df["score"]).astype(float))
    df["region"] = rng.choice(["north", "south", "east"], n)
    return df

rng = np.random.default_rng(seed)
maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {}
if part == "fit":
    reference = frame(rng, 50_000)
    base = maxrss(); t = time.perf_counter(); cpu = time.process_time()
    ref = M.fit_reference(reference, FEATURES)
    out = {"seconds": time.perf_counter() - t, "text_bytes": len(ref.to_text())}
    open(saved, "w").write(ref.to_text())  # the drift parts load it, so their peak memory is their own
elif part in ("drift_quiet", "drift_flip"):
    ref = M.MultivariateReference.from_text(open(saved).read())
    day = frame(rng, rows, rho=0.8 if part == "drift_quiet" else -0.8)
    base = maxrss(); t = time.perf_counter(); cpu = time.process_time()
    res = M.multivariate_drift(ref, day)
    out = {"seconds": time.perf_counter() - t, "flagged": [r.drifted for r in res]}
elif part == "drift_models":
    text = open(saved).read()  # one reference per model, as read from the table (the same one here)
    refs = [M.MultivariateReference.from_text(text) for _ in range(models)]
    days = [frame(rng, rows) for _ in range(models)]
    base = maxrss(); t = time.perf_counter(); cpu = time.process_time()
    flagged = sum(any(r.drifted for r in M.multivariate_drift(ref, day)) for ref, day in zip(refs, days))
    out = {"seconds": time.perf_counter() - t, "flagged": flagged}
elif part == "profile":
    reference, day = frame(rng, 50_000), frame(rng, rows)
    bins = P.ProfileBins.from_reference(reference, FEATURES, task="binary_classification", attributes=("region",))
    base = maxrss(); t = time.perf_counter(); cpu = time.process_time()
    profile = P.build_profile(day, bins, {"model_id": "m", "segment": "all"}, "2026-10-01")
    out = {"seconds": time.perf_counter() - t, "bytes": P.profile_size(profile)}
elif part == "merge":
    reference = frame(rng, 50_000)
    bins = P.ProfileBins.from_reference(reference, FEATURES, task="binary_classification", attributes=("region",))
    daily = [json.dumps(P.build_profile(frame(rng, 2000), bins, {"model_id": "m"}, f"d{i:02d}").to_dict())
             for i in range(90)]  # what a table holds; merge time does not depend on the rows behind a profile
    base = maxrss(); t = time.perf_counter(); cpu = time.process_time()
    for _ in range(100):
        window = P.merge([P.Profile.from_dict(json.loads(text)) for text in daily])
        window.metrics()
    out = {"seconds": time.perf_counter() - t}
out.update(peak_mb=maxrss(), rise_mb=maxrss() - base, cpu_seconds=time.process_time() - cpu)
print(json.dumps(out))
"""


def run(part: str, rows: int, models: int, seed: int, saved: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, part, str(rows), str(models), str(seed), saved], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", type=int, default=10)
    args = parser.parse_args()
    summary = {}
    saved = str(Path(tempfile.mkdtemp()) / "reference.txt")
    for part in ("fit", "drift_quiet", "drift_flip", "drift_models", "profile", "merge"):
        results = [run(part, args.rows, args.models, seed, saved) for seed in range(args.runs)]
        med = {k: statistics.median(r[k] for r in results) for k in ("seconds", "cpu_seconds", "peak_mb", "rise_mb")}
        extra = {k: v for k, v in results[0].items() if k not in med}
        summary[part] = {**med, **extra}
        print(f"{part:13s} median {med['seconds']:.3f} s wall, {med['cpu_seconds']:.3f} s CPU  peak RSS {med['peak_mb']:.0f} MB "
              f"(+{med['rise_mb']:.0f} MB over the imports)  {extra}", flush=True)
    per_model = summary["drift_models"]["seconds"] / args.models
    per_model_cpu = summary["drift_models"]["cpu_seconds"] / args.models
    summary["drift_100_models_extrapolated_seconds"] = per_model * 100
    summary["drift_100_models_extrapolated_cpu_seconds"] = per_model_cpu * 100
    print(f"multivariate drift, 100 models x 1 day: {per_model * 100:.1f} s wall ({per_model_cpu * 100:.1f} s CPU) "
          f"extrapolated from {args.models} measured ({summary['drift_models']['seconds']:.1f} s)")
    print(f"profile per model-day at {args.rows:,} rows: {summary['profile']['seconds'] * 1000:.0f} ms, "
          f"{summary['profile']['bytes']:,} bytes as JSON")
    print(f"90-day window, 100 models (decode + merge + metrics): {summary['merge']['seconds']:.2f} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
