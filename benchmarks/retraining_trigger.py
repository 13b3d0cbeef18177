"""False-request rate and delay to detection of the retraining trigger, measured on synthetic streams.

A stream is a calibrated binary classifier (score logits Normal(-1.2, 1.45): ROC AUC about 0.81, accuracy
about 0.78, 30% positives; `Scores`) with `rows` labelled predictions a day; per-prediction log losses go
through the trigger exactly as the pipeline runs it (`stats.trigger.simulate_trigger`: reference batch of
the first `reference_days` days, CUSUM of the days after it, sequential p-value, correction across the
day's models, persistence). Scenarios:

* stable: nothing changes (every request is a false one): one model alone over 90 days (many runs,
  each its own family of one), and 500 models together over 30 days (several repetitions);
* drop: from the change day a share of labels flips so that accuracy falls by 3 points;
* collapse: from the change day the relation between score and label turns round (AUC 0.8 -> 0.3).

Delay = days from the first changed day to the request, counting the changed day as day 1; the change
comes after a week of stable testing. "Among m models": the changed models share the day's family
with stable ones, m models in all (with the Bonferroni correction a model's flag depends only on its own
p-value and the family's size, so several changed models in one family of m are several runs at once).
Last, single tests of one 7-day window after the drop: Welch's t-test against Mann-Whitney U.

The classifier's base quality is an option, since what a 3-point drop costs in log loss depends on it (a
confident model needs fewer flipped labels for the same drop, and each flip costs more):
`--base-accuracy A` picks the logits' normal so that the calibrated model's expected accuracy at 0.5 is
A, either by widening the spread with the mean kept (`--solve-for sd`, the default: AUC rises with it,
0.92 at A = 0.85, 0.99 at 0.95) or by moving the mean down with the spread kept (`--solve-for mean`: rarer
positives at about the same AUC, 0.82-0.83, e.g. 11% positives at 0.90 and 5% at 0.95, the imbalanced
fraud or conversion classifier). `--score-mean`/`--score-sd` set the logits directly (or the one kept).
The collapse keeps its share of reversed rows, so away from the default its AUC after is not 0.3 (the
JSON line reports it with the classifier's accuracy, positive rate and AUC).

Measured with the default trigger at 200 rows a day (`--fleet-reps 5 --fleet-drop-runs 400`, about 50 s
each): the drop alone and among 500 models 400 runs each; false requests of a lone stable model over 90
days, 2,000 runs (8,000 where given), and of 500 stable models x 30 days in 5 repetitions:

    accuracy  solve  positives  AUC   within 7 days: alone  among 500  median: alone; 500  lone false     500x30
    0.776     -      30%        0.81                  34%         9%     9; 15       0.55% (0.70%)  1,0,0,0,0
    0.85      mean   17%        0.82                  59%        20%     7; 11       0.70%          0,0,0,0,0
    0.85      sd     37%        0.92                  85%        57%     5; 7        0.40%          1,0,1,0,0
    0.90      mean   11%        0.82                  77%        42%     5; 8        0.80% (0.84%)  0,0,0,0,0
    0.90      sd     41%        0.97                99.8%        97%     3; 4        1.00%          0,0,0,0,0
    0.95      mean    5%        0.83                  95%        80%     4; 6        1.45% (1.36%)  0,0,0,0,0
    0.95      sd     46%        0.99                 100%       100%     2; 2        1.45% (1.63%)  1,0,0,0,0

A more accurate classifier shows the drop sooner, but its log losses are more skewed (rare confident
errors, each a large loss) and the CUSUM's formula assumes normal daily sums: at 0.95 a lone stable model
opens a false request in about 1.4-1.6% of 90-day runs, above the 1% aim.

Heavy-tailed and seasonal cases (issue 22, item 7; `heavy_tailed`, `--only heavy`, about 70 s): a confident,
over-confident classifier (accuracy 0.94, ROC AUC 0.97, 165 labelled rows a day, main metric accuracy so
its losses are capped at the reference's 0.9 quantile), a 3-point drop from harder inputs alone and among
500 models, the same drop 120 days into a weekly and annual season, and false requests of stable models
(lone over 90 days, seasonal over 180 days, 500 x 30 days). `--rule before` runs the rule before item 7
(no cap, fixed reference, no weekday profile). Figures in docs/retraining.md.

    .venv/bin/python benchmarks/retraining_trigger.py [--runs 2000] [--fleet-reps 10] [--drop-runs 400]
        [--fleet-drop-runs 200] [--rows 200] [--reference-days 14] [--alpha 0.005] [--shift-se 5] [--k 2]
        [--n 3] [--base-accuracy 0.9 [--solve-for sd|mean]] [--score-mean -1.2] [--score-sd 1.45]
        [--main-metric roc_auc] [--rule current|before] [--only all|default|heavy] [--heavy-runs 400]
        [--heavy-lone-runs 2000] [--heavy-fleet-reps 5]

Prints a table and, last, one JSON line (about 40 s on this 2-core machine with the defaults). The
figures of the defaults are quoted in monitor_assets/stats/trigger.py and the README ("The closed loop").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

from monitor_assets.stats.loss import loss_values
from monitor_assets.stats.trigger import (
    CAPPED_QUANTILE,
    TriggerSettings,
    cap_quantile_for,
    loss_shift_test,
    simulate_trigger,
)

SCORE_MEAN, SCORE_SD = -1.2, 1.45  # logits of the scores: AUC ~0.80 when labels follow the scores
REFERENCE_DAYS = 14  # the config default (retraining.reference_days)
STABLE_TESTING_DAYS = 7  # a week of testing before the change
# Share of rows whose label follows 1 - score so that ROC AUC goes from 0.8 to about 0.3.
COLLAPSE_REVERSE = 0.84


@dataclass(frozen=True)
class Scores:
    """The classifier: its score logits are Normal(mean, sd) and labels follow the scores (calibrated).
    The default is the benchmark's classifier (AUC about 0.81, accuracy about 0.78, 29% positives)."""

    mean: float = SCORE_MEAN
    sd: float = SCORE_SD

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        return 1 / (1 + np.exp(-rng.normal(self.mean, self.sd, shape)))

    def _expect(self, f) -> float:
        """E[f(logit)] over the logits' normal (within 12 sds), split where the logit is 0 (|logit|'s kink)."""
        kink = min(max(-self.mean / self.sd, -12.0), 12.0)
        return float(integrate.quad(lambda u: stats.norm.pdf(u) * f(self.mean + self.sd * u), -12.0, 12.0,
                                    points=[kink], epsabs=1e-12, epsrel=1e-12, limit=200)[0])

    def accuracy(self) -> float:
        """Expected accuracy at threshold 0.5 of a calibrated model, E[max(p, 1 - p)]."""
        return self._expect(lambda z: 1 / (1 + math.exp(-abs(z))))

    def positive_rate(self) -> float:
        return self._expect(lambda z: 1 / (1 + math.exp(-z)))

    def auc(self, reverse: float = 0.0, n: int = 400_000, seed: int = 0) -> float:
        """ROC AUC of the scores against labels drawn from them (a share `reverse` of rows drawn from
        1 - score, as in the collapse), on `n` simulated rows."""
        rng = np.random.default_rng(seed)
        p = self.draw(rng, n)
        truth = np.where(rng.random(n) < reverse, 1 - p, p) if reverse else p
        y = rng.random(n) < truth
        ranks, positives = stats.rankdata(p), int(y.sum())
        return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * (n - positives)))

    @classmethod
    def for_accuracy(cls, accuracy: float, solve_for: str = "sd", mean: float = SCORE_MEAN,
                     sd: float = SCORE_SD) -> Scores:
        """The calibrated classifier whose expected accuracy at 0.5 is `accuracy`: solve_for "sd" keeps the
        logits' mean and widens their spread (a more confident, more discriminating model: AUC rises with
        it); "mean" keeps the spread and moves the mean down (rarer positives, AUC about the same: the
        imbalanced fraud or conversion classifier whose accuracy comes mostly from the base rate)."""
        if solve_for == "sd":
            if not cls(mean, 1e-6).accuracy() < accuracy < 1:
                raise ValueError(f"base accuracy {accuracy} is not reachable by widening the scores "
                                 f"(mean {mean}: above {cls(mean, 1e-6).accuracy():.3f}, below 1)")
            return cls(mean, float(optimize.brentq(lambda s: cls(mean, s).accuracy() - accuracy, 1e-6, 200.0,
                                                   xtol=1e-10)))
        if solve_for == "mean":
            if not cls(0.0, sd).accuracy() <= accuracy < 1:
                raise ValueError(f"base accuracy {accuracy} is not reachable by moving the mean "
                                 f"(sd {sd}: at least {cls(0.0, sd).accuracy():.3f}, below 1)")
            mean = optimize.brentq(lambda m: cls(m, sd).accuracy() - accuracy, -60.0, 0.0, xtol=1e-10)
            return cls(float(mean), sd)
        raise ValueError(f"solve_for: expected 'sd' or 'mean', got {solve_for!r}")


DEFAULT_SCORES = Scores()


def flip_share_for_drop(points: float = 0.03, rng: np.random.Generator | None = None,
                        scores: Scores = DEFAULT_SCORES) -> float:
    """The share of labels to flip so that accuracy (at 0.5) falls by `points`: flipping r of the rows
    turns accuracy a into a - r(2a - 1)."""
    rng = rng or np.random.default_rng(0)
    p = scores.draw(rng, 400_000)
    acc = float(np.mean(np.where(p >= 0.5, p, 1 - p)))  # expected accuracy of a calibrated model
    return points / (2 * acc - 1)


def day_losses(rng: np.random.Generator, rows: int, flip: float = 0.0, reverse: float = 0.0,
               models: int | None = None, scores: Scores = DEFAULT_SCORES) -> np.ndarray:
    """One day's log losses, (rows,) or (models, rows). `flip`: share of labels flipped; `reverse`:
    share of rows whose label follows 1 - score instead of the score."""
    shape = rows if models is None else (models, rows)
    p = scores.draw(rng, shape)
    truth = np.where(rng.random(shape) < reverse, 1 - p, p) if reverse else p
    y = (rng.random(shape) < truth).astype(float)
    if flip:
        flipped = rng.random(shape) < flip
        y[flipped] = 1 - y[flipped]
    return loss_values("log_loss", y, p)


def streams(rng: np.random.Generator, models: int, days: int, rows: int, change_day: int | None = None,
            changed: int = 0, flip: float = 0.0, reverse: float = 0.0,
            scores: Scores = DEFAULT_SCORES) -> dict[str, list[np.ndarray]]:
    """`models` streams of `days` days; the first `changed` of them (named c0000, ...) change on
    `change_day`, the others (s0000, ...) stay stable."""
    names = [f"c{i:04d}" for i in range(changed)] + [f"s{i:04d}" for i in range(models - changed)]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for d in range(days):
        after = change_day is not None and d >= change_day
        block = day_losses(rng, rows, models=models, scores=scores)
        if after and changed:
            block[:changed] = day_losses(rng, rows, flip, reverse, models=changed, scores=scores)
        for name, losses in zip(names, block, strict=True):
            out[name].append(losses)
    return out


def false_triggers(seed: int, models: int, test_days: int, rows: int, settings: TriggerSettings,
                   alone: bool = False, reference_days: int = REFERENCE_DAYS,
                   scores: Scores = DEFAULT_SCORES) -> list[int]:
    """Requests opened by each of `models` stable models over `test_days` days of testing (all false).
    `alone`: each model is its own family of one (a lone model, `models` runs at once)."""
    rng = np.random.default_rng(seed)
    data = streams(rng, models, reference_days + test_days, rows, scores=scores)
    opened = simulate_trigger(data, reference_days, settings, models_in_family=1 if alone else None)
    return [len(v) for v in opened.values()]


def detection_delays(seed: int, rows: int, settings: TriggerSettings, flip: float = 0.0, reverse: float = 0.0,
                     changed: int = 1, family: int | None = None, horizon: int = 30,
                     reference_days: int = REFERENCE_DAYS,
                     scores: Scores = DEFAULT_SCORES) -> list[int | None]:
    """Days from the change to each changed model's first request (the changed day is day 1), None if
    not within `horizon`. `family`: None, each changed model alone; m, the changed models share the
    day's family with stable ones, m models in all."""
    rng = np.random.default_rng(seed)
    change = reference_days + STABLE_TESTING_DAYS
    models = changed if family is None else family
    data = streams(rng, models, change + horizon, rows, change, changed, flip, reverse, scores)
    opened = simulate_trigger(data, reference_days, settings, models_in_family=1 if family is None else None)
    out = []
    for name in [f"c{i:04d}" for i in range(changed)]:
        after = [d for d in opened[name] if d >= change]
        out.append(after[0] - change + 1 if after else None)
    return out


def window_power(method: str, runs: int, rows: int, alpha: float = 0.01, window_days: int = 7,
                 reference_days: int = REFERENCE_DAYS, scores: Scores = DEFAULT_SCORES) -> float:
    """Share of single tests of a whole window after a 3-point drop against the reference batch with
    p < alpha: why a test of the mean loss (Welch) rather than of ranks (Mann-Whitney)."""
    rng = np.random.default_rng(7)
    flip = flip_share_for_drop(scores=scores)
    hits = 0
    for _ in range(runs):
        reference = day_losses(rng, rows * reference_days, scores=scores)
        window = day_losses(rng, rows * window_days, flip=flip, scores=scores)
        hits += loss_shift_test(window, reference, method).p_value < alpha
    return hits / runs


# -- heavy-tailed and seasonal losses (issue 22, item 7) ---------------------------------------------------
# A confident classifier: base accuracy 0.94 and ROC AUC 0.97 (13% positives; logits Normal(-5.49, 4.61),
# labels drawn from sigmoid(logit)), whose scores are over-confident: sigmoid(OVERCONFIDENCE x logit), the
# usual state of a boosted model. Its daily mean log loss at 165 rows has single days at 2.5-3.5 times the
# median (a handful of confident mistakes, each a loss of 10-30), its reference's sd is inflated by them.
# The drop comes from harder inputs: a share of rows moves to the decision boundary (logits Normal(0, 1),
# accuracy about 0.70 there), so accuracy falls 3 points while the log loss rises little, as on the real
# data set of issue 22. Seasonal: the share of hard rows also follows a weekly cycle (weekends) and a slow
# annual one, starting at its trough when the reference batch is taken.

CONFIDENT = Scores(-5.4938, 4.6116)
OVERCONFIDENCE = 3.0
CONFIDENT_ROWS = 165
HARD_SD = 1.0
WEEKEND_HARD = 0.05  # weekends: 5% more hard rows (accuracy about 1.2 points lower)
ANNUAL_HARD = 0.06  # the annual cycle: up to 6% more hard rows at its peak (1.4 points), trough at day 0
SEASONAL_CHANGE_DAY = 120  # days after the reference's end: the real change on top of the seasons


def hard_share_for_drop(points: float = 0.03, scores: Scores = CONFIDENT, hard_sd: float = HARD_SD) -> float:
    """The share of rows moved to the boundary (logits Normal(0, hard_sd)) that lowers accuracy by `points`."""
    return points / (scores.accuracy() - Scores(0.0, hard_sd).accuracy())


def confident_losses(rng: np.random.Generator, models: int, rows: int, hard: np.ndarray | float,
                     scores: Scores = CONFIDENT, overconfidence: float = OVERCONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """One day's log losses (models, rows) of the over-confident classifier, a share `hard` (per model) of
    rows at the boundary; also each row's 0-1 loss."""
    z = rng.normal(scores.mean, scores.sd, (models, rows))
    moved = rng.random((models, rows)) < np.broadcast_to(np.asarray(hard, dtype=float).reshape(-1, 1), (models, 1))
    z = np.where(moved, rng.normal(0.0, HARD_SD, (models, rows)), z)
    y = (rng.random((models, rows)) < 1 / (1 + np.exp(-z))).astype(float)
    return loss_values("log_loss", y, 1 / (1 + np.exp(-overconfidence * z))), ((z >= 0) != (y == 1)).astype(float)


def seasonal_hard(day: int, reference_days: int = REFERENCE_DAYS) -> float:
    """The stable share of hard rows on `day` of a seasonal stream: weekends and the annual cycle."""
    weekend = WEEKEND_HARD if day % 7 in (5, 6) else 0.0
    return weekend + ANNUAL_HARD * (1 - math.cos(2 * math.pi * day / 365)) / 2


def confident_streams(seed: int, models: int, days: int, changed: int = 0, change_day: int | None = None,
                      drop: float = 0.0, seasonal: bool = False, rows: int = CONFIDENT_ROWS,
                      loss: str = "log_loss") -> dict[str, list[np.ndarray]]:
    """Streams of the confident classifier; the first `changed` (c0000, ...) get `drop` more hard rows from
    `change_day` on."""
    rng = np.random.default_rng(seed)
    names = [f"c{i:04d}" for i in range(changed)] + [f"s{i:04d}" for i in range(models - changed)]
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for d in range(days):
        hard = np.full(models, seasonal_hard(d) if seasonal else 0.0)
        if change_day is not None and d >= change_day:
            hard[:changed] += drop
        log, zero_one = confident_losses(rng, models, rows, hard)
        block = zero_one if loss == "zero_one" else log
        for name, losses in zip(names, block, strict=True):
            out[name].append(losses)
    return out


def confident_runs(seed: int, settings: TriggerSettings, runs: int, days: int, change_day: int | None = None,
                   drop: float = 0.0, seasonal: bool = False, family: int | None = None,
                   loss: str = "log_loss") -> tuple[list[int | None], list[bool]]:
    """`runs` changed streams (each alone, or sharing a family of `family` with stable ones): per stream the
    days from the change to its request (the changed day is day 1; None: none after it) and whether it
    opened one before the change."""
    models = runs if family is None else family
    data = confident_streams(seed, models, REFERENCE_DAYS + days, runs, change_day, drop, seasonal, loss=loss)
    opened = simulate_trigger(data, REFERENCE_DAYS, settings, models_in_family=1 if family is None else None)
    delays, early = [], []
    for name in [f"c{i:04d}" for i in range(runs)]:
        change = change_day if change_day is not None else math.inf
        early.append(any(d < change for d in opened[name]))
        after = [d for d in opened[name] if d >= change]
        delays.append(after[0] - change + 1 if after else None)
    return delays, early


def heavy_tailed(settings: TriggerSettings, runs: int, fleet_reps: int, lone_runs: int) -> dict:
    """The heavy-tailed and seasonal cases; a few hundred runs each. `settings` as for a model whose main
    metric is accuracy (its cap_quantile); the last figure keeps the whole log loss (main metric ROC AUC)."""
    hard = hard_share_for_drop()
    whole = dataclasses.replace(settings, cap_quantile=1.0)
    change = REFERENCE_DAYS + STABLE_TESTING_DAYS
    chunk = 200
    drop = [d for s in range(0, runs, chunk)
            for d in confident_runs(7000 + s, settings, min(chunk, runs - s), STABLE_TESTING_DAYS + 30, change,
                                    hard)[0]]
    drop_500 = [d for s in range(max(runs // 40, 1))
                for d in confident_runs(7500 + s, settings, 20, STABLE_TESTING_DAYS + 30, change, hard,
                                        family=500)[0]]
    season_change = REFERENCE_DAYS + SEASONAL_CHANGE_DAY
    seasonal, early = [], []
    for s in range(0, runs, chunk):
        d, e = confident_runs(8000 + s, settings, min(chunk, runs - s), SEASONAL_CHANGE_DAY + 30, season_change,
                              hard, seasonal=True)
        seasonal += d
        early += e
    lone = [e for s in range(0, lone_runs, 500)
            for e in confident_runs(9000 + s, settings, min(500, lone_runs - s), 90)[1]]
    lone_seasonal = [e for s in range(0, lone_runs, 500)
                     for e in confident_runs(9500 + s, settings, min(500, lone_runs - s), 180, seasonal=True)[1]]
    fleet = [sum(confident_runs(9900 + s, settings, 500, 30, family=500)[1]) for s in range(fleet_reps)]
    lone_whole = [e for s in range(0, lone_runs, 500)
                  for e in confident_runs(9000 + s, whole, min(500, lone_runs - s), 90)[1]]
    rng = np.random.default_rng(1)
    daily = np.array([confident_losses(rng, 1, CONFIDENT_ROWS, 0.0)[0].mean() for _ in range(365)])
    return {
        "classifier": {"accuracy": round(CONFIDENT.accuracy(), 4), "roc_auc": round(CONFIDENT.auc(), 4),
                       "positive_rate": round(CONFIDENT.positive_rate(), 4), "overconfidence": OVERCONFIDENCE,
                       "rows_per_day": CONFIDENT_ROWS, "hard_share_for_3_points": round(hard, 4),
                       "daily_mean_log_loss_max_over_median_365_days": round(float(daily.max() / np.median(daily)), 2)},
        "heavy_drop_3_points_alone": summary(drop),
        "heavy_drop_3_points_among_500_models": summary(drop_500),
        "seasonal_drop_3_points_alone": summary(seasonal),
        "seasonal_request_before_the_change": round(float(np.mean(early)), 4),
        "heavy_lone_stable_false_rate_90_days": round(float(np.mean(lone)), 4),
        "seasonal_lone_stable_false_rate_180_days": round(float(np.mean(lone_seasonal)), 4),
        "heavy_fleet_500x30_false_requests_per_repetition": fleet,
        "heavy_lone_stable_false_rate_90_days_whole_log_loss": round(float(np.mean(lone_whole)), 4),
    }


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
    parser.add_argument("--fleet-drop-runs", type=int, default=None,
                        help="runs of the drop among 500 models (default: half of --drop-runs)")
    parser.add_argument("--rows", type=int, default=200, help="labelled rows a day")
    parser.add_argument("--reference-days", type=int, default=REFERENCE_DAYS)
    parser.add_argument("--alpha", type=float, default=TriggerSettings.alpha)
    parser.add_argument("--fleet-alpha", type=float, default=TriggerSettings.fleet_alpha)
    parser.add_argument("--shift-se", type=float, default=TriggerSettings.shift_se)
    parser.add_argument("--window", type=int, default=TriggerSettings.window_days)
    parser.add_argument("--k", type=int, default=TriggerSettings.persistence_k)
    parser.add_argument("--n", type=int, default=TriggerSettings.persistence_n)
    parser.add_argument("--correction", default=TriggerSettings.correction)
    parser.add_argument("--base-accuracy", type=float, default=None,
                        help="the calibrated classifier's expected accuracy at 0.5 (default: the logits "
                             f"Normal({SCORE_MEAN}, {SCORE_SD}), accuracy 0.776)")
    parser.add_argument("--solve-for", choices=("sd", "mean"), default="sd",
                        help="with --base-accuracy: widen the logits' sd (mean kept; AUC rises) or move their "
                             "mean down (sd kept; rarer positives, AUC about the same)")
    parser.add_argument("--score-mean", type=float, default=None, help=f"the logits' mean (default {SCORE_MEAN})")
    parser.add_argument("--score-sd", type=float, default=None, help=f"the logits' sd (default {SCORE_SD})")
    parser.add_argument("--main-metric", default="roc_auc",
                        help="the default classifier's main metric: its cap (stats.trigger.cap_quantile_for)")
    parser.add_argument("--rule", choices=("current", "before"), default="current",
                        help="before: the rule before issue 22 item 7 (no cap, fixed reference, no weekday profile)")
    parser.add_argument("--heavy-runs", type=int, default=400, help="runs of the heavy-tailed and seasonal drops")
    parser.add_argument("--heavy-lone-runs", type=int, default=2000, help="lone stable confident models")
    parser.add_argument("--heavy-fleet-reps", type=int, default=5, help="repetitions of 500 stable confident models")
    parser.add_argument("--only", choices=("all", "default", "heavy"), default="all")
    args = parser.parse_args()
    score_mean = SCORE_MEAN if args.score_mean is None else args.score_mean
    score_sd = SCORE_SD if args.score_sd is None else args.score_sd
    if args.base_accuracy is None:
        scores = Scores(score_mean, score_sd)
    elif (args.score_sd if args.solve_for == "sd" else args.score_mean) is not None:
        parser.error(f"--base-accuracy with --solve-for {args.solve_for} sets --score-{args.solve_for} itself")
    else:
        scores = Scores.for_accuracy(args.base_accuracy, args.solve_for, score_mean, score_sd)
    settings = TriggerSettings(alpha=args.alpha, fleet_alpha=args.fleet_alpha, shift_se=args.shift_se,
                               window_days=args.window, persistence_k=args.k, persistence_n=args.n,
                               correction=args.correction, cap_quantile=cap_quantile_for(args.main_metric))
    heavy_settings = dataclasses.replace(settings, cap_quantile=CAPPED_QUANTILE)  # main metric accuracy
    if args.rule == "before":
        settings = dataclasses.replace(settings, cap_quantile=1.0, baseline_lag_days=0, weekday_profile=False)
        heavy_settings = dataclasses.replace(settings, cap_quantile=1.0)
    if args.only == "heavy":
        began = time.perf_counter()
        result = {"rule": args.rule, **heavy_tailed(heavy_settings, args.heavy_runs, args.heavy_fleet_reps,
                                                    args.heavy_lone_runs),
                  "seconds": round(time.perf_counter() - began, 1)}
        for key, value in result.items():
            print(f"{key:<50} {value}")
        print(json.dumps(result))
        return
    ref = args.reference_days
    flip = flip_share_for_drop(scores=scores)
    fleet_drop_runs = args.drop_runs // 2 if args.fleet_drop_runs is None else args.fleet_drop_runs
    classifier = {"score_mean": round(scores.mean, 4), "score_sd": round(scores.sd, 4),
                  "accuracy": round(scores.accuracy(), 4), "positive_rate": round(scores.positive_rate(), 4),
                  "roc_auc": round(scores.auc(), 4),
                  "roc_auc_after_collapse": round(scores.auc(COLLAPSE_REVERSE), 4),
                  "flip_share_for_3_points": round(flip, 4)}
    began = time.perf_counter()
    chunk = 500
    lone = [n for s in range(0, args.runs, chunk)
            for n in false_triggers(2000 + s, min(chunk, args.runs - s), 90, args.rows, settings, True, ref,
                                    scores)]
    fleet = [sum(false_triggers(1000 + s, 500, 30, args.rows, settings, reference_days=ref, scores=scores))
             for s in range(args.fleet_reps)]
    drop = [d for s in range(0, args.drop_runs, chunk)
            for d in detection_delays(3000 + s, args.rows, settings, flip=flip,
                                      changed=min(chunk, args.drop_runs - s), reference_days=ref, scores=scores)]
    drop_100 = [d for s in range(max(args.drop_runs // 10, 1))
                for d in detection_delays(4000 + s, args.rows, settings, flip=flip, changed=10, family=100,
                                          reference_days=ref, scores=scores)]
    drop_500 = [d for s in range(max(fleet_drop_runs // 20, 1))
                for d in detection_delays(5000 + s, args.rows, settings, flip=flip, changed=20, family=500,
                                          reference_days=ref, scores=scores)]
    collapse = detection_delays(6000, args.rows, settings, reverse=COLLAPSE_REVERSE, changed=100,
                                reference_days=ref, scores=scores)
    collapse_500 = detection_delays(6100, args.rows, settings, reverse=COLLAPSE_REVERSE, changed=20, family=500,
                                    reference_days=ref, scores=scores)
    power = {m: window_power(m, 400, args.rows, reference_days=ref, scores=scores)
             for m in ("welch", "mann_whitney")}
    heavy = ({} if args.only == "default" else
             heavy_tailed(heavy_settings, args.heavy_runs, args.heavy_fleet_reps, args.heavy_lone_runs))
    took = time.perf_counter() - began
    result = {
        "rule": args.rule,
        "settings": {k: getattr(settings, k) for k in ("alpha", "fleet_alpha", "horizon_days", "shift_se",
                                                       "window_days", "persistence_k", "persistence_n",
                                                       "correction", "cap_quantile", "baseline_lag_days",
                                                       "weekday_profile")},
        "classifier": classifier,
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
        **heavy,
        "seconds": round(took, 1),
    }
    print(f"{'classifier':<50} {classifier}")
    print(f"{'scenario':<50} result")
    for key, value in result.items():
        if key not in ("settings", "classifier"):
            print(f"{key:<50} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
