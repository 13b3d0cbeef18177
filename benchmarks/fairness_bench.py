"""Fairness metrics for N rows and two sensitive attributes: ours (DuckDB counts) against fairlearn.

    python benchmarks/fairness_bench.py [--rows 1000000] [--runs 3] [--no-fairlearn]

Prints medians and the ratio; checks that both give the same demographic parity and equalized odds
numbers. The last line is one JSON object.
"""

import argparse
import json
import statistics
import time

import duckdb
import numpy as np
import pandas as pd

from monitor_assets.analysis.queries import group_counts
from monitor_assets.stats.fairness import fairness_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-fairlearn", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.rows
    df = pd.DataFrame({"region": rng.choice(["north", "south", "east", "west"], n),
                       "age_band": rng.choice(["18-25", "26-40", "41-65", "65+"], n, p=[0.2, 0.4, 0.3, 0.1])})
    df["y_true"] = (rng.random(n) < 0.3).astype(int)
    df["y_pred"] = (rng.random(n) < np.where(df.age_band == "65+", 0.4, 0.3)).astype(int)
    con = duckdb.connect()
    con.register("df", df)
    times, table = [], None
    for _ in range(args.runs):
        start = time.perf_counter()
        table = fairness_table(group_counts(con, "SELECT * FROM df", ["region", "age_band"]), True, 30)
        times.append(time.perf_counter() - start)
    ours = statistics.median(times)
    result = {"rows": n, "seconds": round(ours, 3), "fairlearn_seconds": None, "speedup": None}
    print(f"ours: {ours:.3f} s for {n:,} rows and 2 attributes")
    if not args.no_fairlearn:
        from fairlearn.metrics import demographic_parity_ratio, equalized_odds_difference

        start = time.perf_counter()
        expected = {a: (demographic_parity_ratio(df.y_true, df.y_pred, sensitive_features=df[a]),
                        equalized_odds_difference(df.y_true, df.y_pred, sensitive_features=df[a]))
                    for a in ("region", "age_band")}
        theirs = time.perf_counter() - start
        for attr, (dpr, eod) in expected.items():
            row = table[table.attribute == attr].iloc[0]
            assert abs(row.demographic_parity_ratio - dpr) < 1e-12 and abs(row.equalized_odds_difference - eod) < 1e-12
        result.update(fairlearn_seconds=round(theirs, 2), speedup=round(theirs / ours, 1))
        print(f"fairlearn: {theirs:.2f} s (same numbers); ours is {theirs / ours:.0f}x faster")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
