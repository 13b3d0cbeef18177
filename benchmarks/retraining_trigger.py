"""False-trigger rate and delay to detection of the retraining trigger, measured on synthetic streams.

A stream is a calibrated binary classifier (ROC AUC about 0.80, accuracy about 0.78) with `rows`
labelled predictions a day; per-prediction log losses go through the trigger exactly as the pipeline
runs it (`stats.trigger.simulate_trigger`: reference batch of the first `reference_days` days, window
test, Benjamini-Hochberg across all models of the day, persistence). Scenarios:

* stable: nothing changes (every request is a false trigger), many models at once;
* drop: from day `change_day` a share of labels flips so that accuracy falls by 3 points;
* collapse: from `change_day` the relation between score and label turns round (AUC 0.8 -> 0.3).

Delay = days from the first changed day to the request, counting the changed day as day 1.
Prints a table and, last, one JSON line. Medians over seeds.

    .venv/bin/python benchmarks/retraining_trigger.py [--seeds 20] [--models 500] [--alpha 0.01] [--k 3] [--n 5]
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


def flip_share_for_drop(points: float = 0.03, rng: np.random.Generator | None = None) -> float:
    """The share of labels to flip so that accuracy (at 0.5) falls by `points`: flipping r of the rows
    turns accuracy a into a - r(2a - 1)."""
    rng = rng or np.random.default_rng(0)
    p = 1 / (1 + np.exp(-rng.normal(SCORE_MEAN, SCORE_SD, 400_000)))
    acc = float(np.mean(np.where(p >= 0.5, p, 1 - p)))  # expected accuracy of a calibrated model
    return points / (2 * acc - 1)


def day_losses(rng: np.random.Generator, rows: int, flip: float = 0.0, reverse: float = 0.0) -> np.ndarray:
    """One day's log losses. `flip`: share of labels flipped; `reverse`: share of rows whose label
    follows 1 - score instead of the score."""
    p = 1 / (1 + np.exp(-rng.normal(SCORE_MEAN, SCORE_SD, rows)))
    truth = np.where(rng.random(rows) < reverse, 1 - p, p)
    y = (rng.random(rows) < truth).astype(float)
    flipped = rng.random(rows) < flip
    y[flipped] = 1 - y[flipped]
    return loss_values("log_loss", y, p)


def stream(rng: np.random.Generator, days: int, rows: int, change_day: int | None = None, flip: float = 0.0,
           reverse: float = 0.0) -> list[np.ndarray]:
    out = []
    for d in range(days):
        changed = change_day is not None and d >= change_day
        out.append(day_losses(rng, rows, flip if changed else 0.0, reverse if changed else 0.0))
    return out


# Share of rows whose label follows 1 - score so that ROC AUC goes from 0.8 to about 0.3.
COLLAPSE_REVERSE = 0.84


def false_triggers(seed: int, models: int, test_days: int, rows: int, settings: TriggerSettings) -> int:
    """Requests opened by `models` stable models over `test_days` days of testing (all false)."""
    rng = np.random.default_rng(seed)
    days = REFERENCE_DAYS + settings.window_days - 1 + test_days
    streams = {f"m{i:04d}": stream(rng, days, rows) for i in range(models)}
    return sum(len(v) for v in simulate_trigger(streams, REFERENCE_DAYS, settings).values())


def detection_delay(seed: int, rows: int, settings: TriggerSettings, flip: float = 0.0, reverse: float = 0.0,
                    others: int = 0, horizon: int = 30) -> int | None:
    """Days from the change to the request (the changed day is day 1), None if not within `horizon`.
    `others` stable models share the day's Benjamini-Hochberg family."""
    rng = np.random.default_rng(seed)
    change = REFERENCE_DAYS + settings.window_days + 7  # a week of stable testing first
    days = change + horizon
    streams = {"changed": stream(rng, days, rows, change, flip, reverse)}
    streams.update({f"m{i:04d}": stream(rng, days, rows) for i in range(others)})
    opened = [d for d in simulate_trigger(streams, REFERENCE_DAYS, settings)["changed"] if d >= change]
    return opened[0] - change + 1 if opened else None


def window_power(method: str, seeds: int, rows: int, alpha: float = 0.01, window_days: int = 7) -> float:
    """Share of single tests (a full window after a 3-point drop against a 7-day reference) with p < alpha:
    why the trigger uses Welch's test of the mean loss rather than Mann-Whitney."""
    rng = np.random.default_rng(7)
    flip = flip_share_for_drop()
    hits = 0
    for _ in range(seeds):
        reference = np.concatenate(stream(rng, REFERENCE_DAYS, rows))
        window = np.concatenate(stream(rng, window_days, rows, 0, flip=flip))
        hits += loss_shift_test(window, reference, method).p_value < alpha
    return hits / seeds


def median_delay(delays: list[int | None]) -> float | None:
    found = [d for d in delays if d is not None]
    if len(found) < len(delays) / 2:
        return None  # most seeds never detected it
    return float(np.median([d if d is not None else np.inf for d in delays]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--rows", type=int, default=200, help="labelled rows a day")
    parser.add_argument("--alpha", type=float, default=TriggerSettings.alpha)
    parser.add_argument("--window", type=int, default=TriggerSettings.window_days)
    parser.add_argument("--k", type=int, default=TriggerSettings.persistence_k)
    parser.add_argument("--n", type=int, default=TriggerSettings.persistence_n)
    args = parser.parse_args()
    settings = TriggerSettings(alpha=args.alpha, window_days=args.window,
                               persistence_k=args.k, persistence_n=args.n)
    flip = flip_share_for_drop()
    began = time.perf_counter()
    fleet = [false_triggers(1000 + s, args.models, 30, args.rows, settings) for s in range(max(args.seeds // 4, 1))]
    single = [false_triggers(2000 + s, 1, 90, args.rows, settings) for s in range(args.seeds * 5)]
    drop = [detection_delay(3000 + s, args.rows, settings, flip=flip) for s in range(args.seeds)]
    drop_fleet = [detection_delay(4000 + s, args.rows, settings, flip=flip, others=99) for s in range(args.seeds)]
    collapse = [detection_delay(5000 + s, args.rows, settings, reverse=COLLAPSE_REVERSE) for s in range(args.seeds)]
    power = {m: window_power(m, args.seeds * 10, args.rows) for m in ("welch", "mann_whitney")}
    took = time.perf_counter() - began
    model_days = len(fleet) * args.models * 30
    result = {
        "settings": {k: getattr(settings, k) for k in ("alpha", "window_days", "persistence_k",
                                                       "persistence_n", "correction")},
        "rows_per_day": args.rows,
        "fleet_false_requests_per_run": fleet,  # each: `models` stable models x 30 days
        "false_requests_per_1000_model_days": round(1000 * sum(fleet) / model_days, 4),
        "single_model_90_days_with_a_false_request": f"{sum(1 for n in single if n)}/{len(single)}",
        "drop_3_points_median_delay_days": median_delay(drop),
        "drop_3_points_detected_within_7_days": f"{sum(1 for d in drop if d is not None and d <= 7)}/{len(drop)}",
        "drop_3_points_among_100_models_median_delay_days": median_delay(drop_fleet),
        "collapse_median_delay_days": median_delay(collapse),
        "collapse_detected_within_2_days": f"{sum(1 for d in collapse if d is not None and d <= 2)}/{len(collapse)}",
        "one_window_power_drop_3_points_p_below_0.01": power,
        "seconds": round(took, 1),
    }
    print(f"{'scenario':<52} result")
    for key, value in result.items():
        if key != "settings":
            print(f"{key:<52} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
