"""False-alarm and detection rates of the drift defaults, measured by simulation.

Two 12-feature models are observed for many days at each daily size (150, 500, 2,000 and 50,000
rows) against a reference of realistic size (10,000 rows, drawn afresh for each block of days so the
reference's own sampling noise is in the figures):

* a stable model: 3 normal, 3 lognormal (2% missing), 2 categorical with 8 levels, 2 long-tailed
  categorical with 60 Zipf-distributed levels, 2 boolean-like (the reference a boolean, the logs
  the text 'True'/'False'). Nothing changes: every flag is a false alarm.
* a shifted model: the same features, but the normal and the lognormal features' mean moves by 0.3
  of their standard deviation and an 8-level categorical's two commonest levels lose half their share
  ("reweighted"). The other 9 features are stable and share the model's Benjamini-Hochberg family.

Both go through the real path: `profile_reference`, then `compute_drift` on the day's rows in DuckDB
(Benjamini-Hochberg across the model's features included). Prints a table and, last, one JSON line.

    .venv/bin/python benchmarks/drift_false_alarms.py [--days 210] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import time

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.analysis import queries as Q
from monitor_assets.stats import drift as D

SIZES = (150, 500, 2_000, 50_000)
REFERENCE_ROWS = 10_000
DAYS_PER_REFERENCE = 30
LEVELS8 = [f"v{i}" for i in range(8)]
W8 = np.linspace(2, 1, 8) / np.linspace(2, 1, 8).sum()
W8_SHIFT = W8 * np.r_[0.5, 0.5, np.ones(6)] / (W8 * np.r_[0.5, 0.5, np.ones(6)]).sum()
LONG = [f"city{i:02d}" for i in range(60)]
W_LONG = 1 / np.arange(1, 61) ** 1.1 / (1 / np.arange(1, 61) ** 1.1).sum()
LOGNORMAL_SD = float(np.sqrt((np.exp(0.25) - 1) * np.exp(2 + 0.25)))  # lognormal(1, 0.5)
KINDS = {"normal": "numeric", "lognormal": "numeric", "cat8": "categorical", "longtail": "categorical",
         "boolean": "categorical"}
FEATURES = [f"{k}_{i}" for k, n in (("normal", 3), ("lognormal", 3), ("cat8", 2), ("longtail", 2), ("boolean", 2))
            for i in range(n)]
SHIFTED = {"normal_0": "normal 0.3 SD", "lognormal_0": "lognormal 0.3 SD", "cat8_0": "reweighted category"}


def kind_of(name: str) -> str:
    return name.split("_")[0]


def frame(rng: np.random.Generator, rows: int, shifted: bool, reference: bool) -> pd.DataFrame:
    data = {}
    for name in FEATURES:
        k, move = kind_of(name), shifted and name in SHIFTED
        if k == "normal":
            data[name] = rng.normal(10, 2, rows) + (0.6 if move else 0.0)
        elif k == "lognormal":
            x = rng.lognormal(1, 0.5, rows) + (0.3 * LOGNORMAL_SD if move else 0.0)
            x[rng.random(rows) < 0.02] = np.nan
            data[name] = x
        elif k == "cat8":
            data[name] = rng.choice(LEVELS8, rows, p=W8_SHIFT if move else W8)
        elif k == "longtail":
            data[name] = rng.choice(LONG, rows, p=W_LONG)
        else:
            b = rng.random(rows) < 0.3
            data[name] = b if reference else np.where(b, "True", "False")  # Parquet boolean vs CSV text
    return pd.DataFrame(data)


def simulate(days: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    specs = [D.FeatureSpec(n, KINDS[kind_of(n)]) for n in FEATURES]
    con = duckdb.connect()
    out = {}
    for size in SIZES:
        n_days = days if size < 50_000 else max(days // 4, DAYS_PER_REFERENCE)
        flags = {m: [] for m in ("stable", "shifted")}
        for block in range(0, n_days, DAYS_PER_REFERENCE):
            con.register("ref", frame(rng, REFERENCE_ROWS, False, True))
            profiles = Q.profile_reference(con, "SELECT * FROM ref", specs)
            for _ in range(min(DAYS_PER_REFERENCE, n_days - block)):
                for model in flags:
                    con.register("cur", frame(rng, size, model == "shifted", False))
                    flags[model].append({r.feature: r for r in Q.compute_drift(con, "SELECT * FROM cur", specs, profiles)})
        stable, shifted = flags["stable"], flags["shifted"]

        def rate(days_, names, attr="drifted"):
            return float(np.mean([getattr(d[n], attr) for d in days_ for n in names]))

        row = {"days": len(stable)}
        for k in KINDS:
            row[f"false_{k}"] = rate(stable, [n for n in FEATURES if kind_of(n) == k])
        raw = [d[n].p_value < 0.05 for d in stable for n in FEATURES if d[n].p_value is not None]
        row["false_raw_p05"] = float(np.mean(raw)) if raw else None  # the old rule, for comparison
        row["false_missing"] = rate(stable, FEATURES, "missing_drift")
        row["false_unseen"] = rate(stable, FEATURES, "unseen_drift")
        row["model_any_flag"] = float(np.mean([any(r.drifted for r in d.values()) for d in stable]))
        row["model_dataset_drift"] = float(np.mean([np.mean([r.drifted for r in d.values()]) >= 0.5 for d in stable]))
        for n, label in SHIFTED.items():
            row[f"detect_{label}"] = rate(shifted, [n])
        row["shifted_model_false_others"] = rate(shifted, [n for n in FEATURES if n not in SHIFTED])
        row["methods"] = sorted({r.method for d in stable[:1] for r in d.values()})
        out[size] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=210, help="days per size (a quarter of them at 50,000 rows)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = simulate(args.days, args.seed)
    columns = [c for c in next(iter(result.values())) if c not in ("methods",)]
    print(f"reference {REFERENCE_ROWS} rows; per-feature rates (share of feature-days flagged); "
          f"p-value alpha {D.P_VALUE_ALPHA} with Benjamini-Hochberg across 12 features\n")
    print("| measure | " + " | ".join(f"{s:,} rows" for s in result) + " |")
    print("|---|" + "---|" * len(result))
    for c in columns:
        cells = [result[s][c] for s in result]
        print(f"| {c} | " + " | ".join("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in cells) + " |")
    print("| methods | " + " | ".join(", ".join(result[s]["methods"]) for s in result) + " |")
    seconds = time.perf_counter() - t0
    print(f"\n{seconds:.0f} s")
    print(json.dumps({"seed": args.seed, "reference_rows": REFERENCE_ROWS, "seconds": round(seconds, 1),
                      "by_rows": {str(k): v for k, v in result.items()}}))


if __name__ == "__main__":
    main()
