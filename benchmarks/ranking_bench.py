"""Speed of the ranking and multiclass statistics core on one model-day.

    python benchmarks/ranking_bench.py [--requests 50000] [--items 10] [--rows 50000] [--classes 20] [--runs 5]

Ranking: `requests` x `items` rows (seeded; about 5% of shown items interacted with, grades 1-3, a Zipf
catalogue of 20,000 items), timed three ways: rows in log order (grouped by request, by rank), rows
shuffled, and ranked by score with tie averaging; each computes every metric at k = 1, 5, 10, the
per-request loss, the mergeable sums and the catalogue metrics. Multiclass: `rows` x `classes` probabilities, the exact
metrics (with one-vs-rest AUC) and the mergeable sums. Medians of `runs`, wall clock and CPU time (the
machine may be shared: CPU time is the steadier figure). The last line is one JSON object.
"""

import argparse
import json
import statistics
import time

import numpy as np

from monitor_assets.stats.multiclass import MulticlassSums, multiclass_metrics, row_loss
from monitor_assets.stats.ranking import (
    ItemCounts,
    RankingSums,
    catalogue_metrics,
    request_loss,
    request_metrics,
)

KS = (1, 5, 10)


def ranking_data(n_requests: int, n_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_requests * n_items
    return {"request": np.repeat(np.arange(n_requests), n_items), "rank": np.tile(np.arange(1, n_items + 1), n_requests),
            "item": rng.zipf(1.3, n) % 20_000, "score": np.round(rng.random(n), 2),
            "relevance": (rng.random(n) < 0.05) * rng.integers(1, 4, n)}


def ranking_day(d: dict[str, np.ndarray], reference: ItemCounts, by_score: bool) -> float:
    if by_score:
        m = request_metrics(d["request"], d["relevance"], score=d["score"], ks=KS, ties="average")
    else:
        m = request_metrics(d["request"], d["relevance"], rank=d["rank"], ks=KS)
    request_loss(m, 10)
    sums = RankingSums.of(m)
    out = catalogue_metrics(ItemCounts.of(d["item"], d["rank"], 10), reference)
    return out["coverage"] + sums.mean("ndcg@10")


def multiclass_day(y, pred, proba, k: int) -> float:
    m = multiclass_metrics(y, pred, k, proba)
    MulticlassSums.of(y, pred, k, proba)
    row_loss(y, pred, k, proba)
    return m.accuracy


def timed(fn, runs: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    data = ranking_data(args.requests, args.items)
    reference = ItemCounts.of(ranking_data(args.requests, args.items, seed=1)["item"])
    perm = np.random.default_rng(2).permutation(len(data["request"]))
    shuffled = {name: v[perm] for name, v in data.items()}
    results = {}
    for name, d, by_score in (("ranking_log_order", data, False), ("ranking_shuffled", shuffled, False),
                              ("ranking_by_score_ties_average", shuffled, True)):
        results[name] = timed(lambda d=d, s=by_score: ranking_day(d, reference, s), args.runs)

    rng = np.random.default_rng(3)
    k = args.classes
    y = rng.integers(0, k, args.rows)
    logits = rng.normal(0, 1, (args.rows, k))
    logits[np.arange(args.rows), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    results["multiclass"] = timed(lambda: multiclass_day(y, pred, proba, k), args.runs)

    print(f"ranking: {args.requests:,} requests x {args.items} items; multiclass: {args.rows:,} rows x {k} classes;"
          f" median of {args.runs}")
    for name, (wall, cpu) in results.items():
        print(f"  {name:32s} wall {wall:6.3f} s   cpu {cpu:6.3f} s")
    print(json.dumps({"requests": args.requests, "items": args.items, "rows": args.rows, "classes": k,
                      "runs": args.runs, **{f"{n}_wall_s": round(w, 4) for n, (w, _) in results.items()},
                      **{f"{n}_cpu_s": round(c, 4) for n, (_, c) in results.items()}}))


if __name__ == "__main__":
    main()
