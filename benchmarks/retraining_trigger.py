"""False-request rate and delay to detection of the retraining trigger, measured on synthetic streams.

A stream is a calibrated binary classifier (ROC AUC about 0.80, accuracy about 0.78) with `rows`
labelled predictions a day; per-prediction log losses go through the trigger exactly as the pipeline
runs it (`stats.trigger.simulate_trigger`: reference batch of the first `reference_days` days, CUSUM of
the days after it, sequential p-value, correction across the day's models, persistence). Scenarios:

* stable: nothing changes (every request is a false one): one model alone over 90 days (many runs,
  each its own family of one), and 500 models together over 30 days (several repetitions);
* drop: from the change day a share of labels flips so that accuracy falls by 3 points;
* collapse: from the change day the relation between score and label turns round (AUC 0.8 -> 0.3).

Delay = days from the first changed day to the request, counting the changed day as day 1; the change
comes after a week of stable testing. "Among m models": the changed models share the day's family
with stable ones, m models in all (with the Bonferroni correction a model's flag depends only on its own
p-value and the family's size, so several changed models in one family of m are several runs at once).
Last, single tests of one 7-day window after the drop: Welch's t-test against Mann-Whitney U.

    .venv/bin/python benchmarks/retraining_trigger.py [--runs 2000] [--fleet-reps 10] [--rows 200]
        [--reference-days 14] [--alpha 0.005] [--shift-se 5] [--k 2] [--n 3]

Prints a table and, last, one JSON line (about 40 s on this 2-core machine with the defaults). The
figures of the defaults are quoted in monitor_assets/stats/trigger.py and the README ("The closed loop").
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from monitor_assets.stats.loss import loss_values
from monitor_assets.stats.trigger import TriggerSettings, loss_shift_test, simulate_trigger

SCORE_MEAN, SCORE_SD = -1.2, 1.45  # logits of the scores: AUC ~0.80 when labels follow the scores
REFERENCE_DAYS = 14  # the config default (retraining.reference_days)
STABLE_TESTING_DAYS = 7  # a week of testing before the change
# Share of rows whose label follows 1 - score so that ROC AUC goes from 0.8 to about 0.3.
COLLAPSE_REVERSE = 0.84


def flip_share_for_drop(points: float = 0.03, rng: np.random.Generator | None = None) -> float:
    """The share of labels to flip so that accuracy (at 0.5) falls by `points`: flipping r of the rows
    turns accuracy a into a - r(2a - 1)."""
    rng = rng or np.random.default_rng(0)
    p = 1 / (1 + np.exp(-rng.normal(SCORE_MEAN, SCORE_SD, 400_000)))
    acc = float(np.mean(np.where(p >= 0.5, p, 1 - p)))  # expected accuracy of a calibrated model
    return points / (2 * acc - 1)


def day_losses(rng: np.random.Generator, rows: int, flip: float = 0.0, reverse: float = 0.0,
               models: int | None = None) -> np.ndarray:
    """One day's log losses, (rows,) or (models, rows). `flip`: share of labels flipped; `reverse`:
    share of rows whose label follows 1 - score instead of the score."""
    shape = rows if models is None else (models, rows)
    p = 1 / (1 + np.exp(-rng.normal(SCORE_MEAN, SCORE_SD, shape)))
    truth = np.where(rng.random(shape) < reverse, 1 - p, p) if reverse else p
    y = (rng.random(shape) < truth).astype(float)
    if flip:
        flipped = rng.random(shape) < flip
        y[flipped] = 1 - y[flipped]
    return loss_values("log_loss", y, p)


def streams(rng: np.random.Generator, models: int, days: int, rows: int, change_day: int | None = None,
            changed: int = 0, flip: float = 0.0, reverse: float = 0.0) -> dict[str, list[np.ndarray]]:
    """`models` streams of `days` days; the first `changed` of them (named c0000, ...) change on
    `change_day`, the others (s0000, ...) stay stable."""
    names = [f"c{i:04d}" for i in range(changed)] + [f"s{i:04d}" for i in range(models - changed)]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for d in range(days):
        after = change_day is not None and d >= change_day
        block = day_losses(rng, rows, models=models)
        if after and changed:
            block[:changed] = day_losses(rng, rows, flip, reverse, models=changed)
        for name, losses in zip(names, block, strict=True):
            out[name].append(losses)
    return out


def false_triggers(seed: int, models: int, test_days: int, rows: int, settings: TriggerSettings,
                   alone: bool = False, reference_days: int = REFERENCE_DAYS) -> list[int]:
    """Requests opened by each of `models` stable models over `test_days` days of testing (all false).
    `alone`: each model is its own family of one (a lone model, `models` runs at once)."""
    rng = np.random.default_rng(seed)
    data = streams(rng, models, reference_days + test_days, rows)
    opened = simulate_trigger(data, reference_days, settings, models_in_family=1 if alone else None)
    return [len(v) for v in opened.values()]


def detection_delays(seed: int, rows: int, settings: TriggerSettings, flip: float = 0.0, reverse: float = 0.0,
                     changed: int = 1, family: int | None = None, horizon: int = 30,
                     reference_days: int = REFERENCE_DAYS) -> list[int | None]:
    """Days from the change to each changed model's first request (the changed day is day 1), None if
    not within `horizon`. `family`: None, each changed model alone; m, the changed models share the
    day's family with stable ones, m models in all."""
    rng = np.random.default_rng(seed)
    change = reference_days + STABLE_TESTING_DAYS
    models = changed if family is None else family
    data = streams(rng, models, change + horizon, rows, change, changed, flip, reverse)
    opened = simulate_trigger(data, reference_days, settings, models_in_family=1 if family is None else None)
    out = []
    for name in [f"c{i:04d}" for i in range(changed)]:
        after = [d for d in opened[name] if d >= change]
        out.append(after[0] - change + 1 if after else None)
    return out


def window_power(method: str, runs: int, rows: int, alpha: float = 0.01, window_days: int = 7,
                 reference_days: int = REFERENCE_DAYS) -> float:
    """Share of single tests of a whole window after a 3-point drop against the reference batch with
    p < alpha: why a test of the mean loss (Welch) rather than of ranks (Mann-Whitney)."""
    rng = np.random.default_rng(7)
    flip = flip_share_for_drop()
    hits = 0
    for _ in range(runs):
        reference = day_losses(rng, rows * reference_days)
        window = day_losses(rng, rows * window_days, flip=flip)
        hits += loss_shift_test(window, reference, method).p_value < alpha
    return hits / runs


def median_delay(delays: list[int | None]) -> float | None:
    found = [d for d in delays if d is not None]
    if len(found) < len(delays) / 2:
        return None  # most runs never detected it
    return float(np.median([d if d is not None else np.inf for d in delays]))


def summary(delays: list[int | None], within: tuple[int, ...] = (2, 7, 14, 30)) -> dict:
    found = [d for d in delays if d is not None]
    out = {"runs": len(delays), "median_days": median_delay(delays)}
    for w in within:
        out[f"within_{w}_days"] = round(sum(1 for d in found if d <= w) / len(delays), 3)
    out["quartiles_days"] = ([float(q) for q in np.percentile([d if d is not None else 999 for d in delays],
                                                              [25, 75])] if delays else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000, help="lone stable models over 90 days")
    parser.add_argument("--fleet-reps", type=int, default=10, help="repetitions of 500 stable models x 30 days")
    parser.add_argument("--drop-runs", type=int, default=400, help="runs of the drop alone (and among 100)")
    parser.add_argument("--rows", type=int, default=200, help="labelled rows a day")
    parser.add_argument("--reference-days", type=int, default=REFERENCE_DAYS)
    parser.add_argument("--alpha", type=float, default=TriggerSettings.alpha)
    parser.add_argument("--fleet-alpha", type=float, default=TriggerSettings.fleet_alpha)
    parser.add_argument("--shift-se", type=float, default=TriggerSettings.shift_se)
    parser.add_argument("--window", type=int, default=TriggerSettings.window_days)
    parser.add_argument("--k", type=int, default=TriggerSettings.persistence_k)
    parser.add_argument("--n", type=int, default=TriggerSettings.persistence_n)
    parser.add_argument("--correction", default=TriggerSettings.correction)
    args = parser.parse_args()
    settings = TriggerSettings(alpha=args.alpha, fleet_alpha=args.fleet_alpha, shift_se=args.shift_se,
                               window_days=args.window, persistence_k=args.k, persistence_n=args.n,
                               correction=args.correction)
    ref = args.reference_days
    flip = flip_share_for_drop()
    began = time.perf_counter()
    chunk = 500
    lone = [n for s in range(0, args.runs, chunk)
            for n in false_triggers(2000 + s, min(chunk, args.runs - s), 90, args.rows, settings, True, ref)]
    fleet = [sum(false_triggers(1000 + s, 500, 30, args.rows, settings, reference_days=ref))
             for s in range(args.fleet_reps)]
    drop = [d for s in range(0, args.drop_runs, chunk)
            for d in detection_delays(3000 + s, args.rows, settings, flip=flip,
                                      changed=min(chunk, args.drop_runs - s), reference_days=ref)]
    drop_100 = [d for s in range(max(args.drop_runs // 10, 1))
                for d in detection_delays(4000 + s, args.rows, settings, flip=flip, changed=10, family=100,
                                          reference_days=ref)]
    drop_500 = [d for s in range(max(args.drop_runs // 40, 1))
                for d in detection_delays(5000 + s, args.rows, settings, flip=flip, changed=20, family=500,
                                          reference_days=ref)]
    collapse = detection_delays(6000, args.rows, settings, reverse=COLLAPSE_REVERSE, changed=100,
                                reference_days=ref)
    collapse_500 = detection_delays(6100, args.rows, settings, reverse=COLLAPSE_REVERSE, changed=20, family=500,
                                    reference_days=ref)
    power = {m: window_power(m, 400, args.rows, reference_days=ref) for m in ("welch", "mann_whitney")}
    took = time.perf_counter() - began
    result = {
        "settings": {k: getattr(settings, k) for k in ("alpha", "fleet_alpha", "horizon_days", "shift_se",
                                                       "window_days", "persistence_k", "persistence_n",
                                                       "correction")},
        "rows_per_day": args.rows, "reference_days": ref,
        "lone_stable_model_90_days_with_a_false_request": f"{sum(1 for n in lone if n)}/{len(lone)}",
        "lone_stable_model_false_rate_90_days": round(sum(1 for n in lone if n) / len(lone), 4),
        "fleet_500x30_false_requests_per_repetition": fleet,
        "fleet_500x30_repetitions_with_more_than_one": sum(1 for n in fleet if n > 1),
        "drop_3_points_alone": summary(drop),
        "drop_3_points_among_100_models": summary(drop_100),
        "drop_3_points_among_500_models": summary(drop_500),
        "collapse_alone": summary(collapse),
        "collapse_among_500_models": summary(collapse_500),
        "one_7_day_window_drop_3_points_p_below_0.01": power,
        "seconds": round(took, 1),
    }
    print(f"{'scenario':<50} result")
    for key, value in result.items():
        if key != "settings":
            print(f"{key:<50} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
