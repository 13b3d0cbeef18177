"""The retraining trigger: have a model's losses risen above its reference batch, and for good?

Each day and model: a one-sided CUSUM of the champion's daily losses against its reference loss batch
(its own first labelled production days, so the reference has the model's own noise level), started
the day after the reference ends. The CUSUM adds up the log-likelihood ratio "the mean loss is
`delta` reference standard deviations higher" against "it is the reference's" (normal losses), and
forgets what it has added when the evidence falls back to zero:

    C_d = max(0, C_{d-1} + delta * (sum of day d's losses - n_d * reference mean) / reference sd - n_d * delta^2 / 2)

`delta` is set per model from `window_days`: the shift that moves the mean loss of a `window_days`
window by `shift_se` (5) standard errors, at the reference's rows a day (0.16 sd at 200 rows a day and
5 days). The day's sequential p-value is the chance that a stable model's CUSUM reaches today's value
within `horizon_days` (90) of testing: Siegmund's approximation of the CUSUM's run length, integrated
over the reference batch's own error (the reference is a sample; its error is shared by every day the
CUSUM adds up). A model is flagged when that p-value, Bonferroni-adjusted across the day's models
beyond fleet_alpha / alpha = 40 of them, is below `alpha` (0.005): each model of a fleet of up to 40
keeps a 0.5% chance of a false request in 90 days; a larger fleet shares 0.2 expected false requests in
90 days. Flagged on `persistence_k` (2) of the last `persistence_n` (3) tested days opens a request.

Why, measured (benchmarks/retraining_trigger.py and its simulations: a calibrated classifier, AUC 0.8,
200 labelled rows a day, a 14-day reference batch of 2,800 rows):

* The previous rule (Welch's t-test of the last 5 days against the reference, Benjamini-Hochberg at
  0.005 across the day's models, 2 of the last 3 days) opened a false request for 6.8% of lone stable
  models over 90 days (16,000 runs; 9 of 100 in the last benchmark). Its cause is the level: 0.005 a
  day, over 90 days of tests. Each test kept its size (0.41% of days flagged at a nominal 0.5%), so the
  log losses' skew (2.2) is not it: normal losses with the same mean and variance gave 8.1%. Nor is the
  reference's error: against an exact reference the same daily tests gave 10.6% (the shared error makes
  days alike, and false flags gather in fewer runs). Persistence only halves it (13.5% without):
  consecutive windows share 4 of their 5 days (correlation 0.85) and a flagged day's next day is
  flagged 43% of the time. The simulation's streams are stationary, so drift of the reference is not
  it either; on real data it would add to it. At that false rate it found the 3-point drop alone within
  7 days in 62% of runs (2,000), but Benjamini-Hochberg across 100 models asks a drifting model for a
  p-value about 100 times smaller on two days of three: among 100 models the drop was mostly missed.
* The fix is a level per horizon, not per day. Three designs were calibrated to the same 1% of lone
  stable models crossing in 90 days (first crossings, no persistence; 4,000-16,000 stable runs) and
  compared on the 3-point drop (2,000 runs): a moving 7-day Welch test found it within 7 days in about
  41% of runs, a scan of 1- to 14-day windows in about 40%, the CUSUM in 42-45%.
  The CUSUM is kept because its false-request chance has a formula (so the threshold follows each
  model's rows a day, reference size and the fleet's size, with no simulation), it adds up a small
  persistent shift instead of asking each window to show it, and it sees a collapse on its first day.
  The reference's error must be in that formula: a CUSUM threshold set as if the reference were exact
  gives five times the false requests (5.2% instead of 1.0% at the same threshold).
* `shift_se` = 5: the CUSUM drifts up only for shifts above delta/2, less the reference's error. At 6
  standard errors (delta 0.19 sd) the 3-point drop (0.117 sd) is only 1.2 reference standard errors
  above delta/2, and an unlucky reference slows it down: 70% found within 14 days, 86% within 30; at 5
  (2 standard errors), 75% and 91%, with the same 34% within 7 days.
* The limit: with the two quiet floors kept, 200 labelled rows a day against a 2,800-row reference do
  not hold the evidence to find a 3-point drop within 7 days in 90% of runs. Even a CUSUM against the
  exact mean (an infinite reference), calibrated to 1% of lone stable models in 90 days, finds it within
  7 days in only 70% (4,000 stable and 2,000 drop runs). At 400 rows a day the defaults find it within
  7 days in 73% of runs, at 800 rows in 99% alone and 94% among 500 models.

The defaults, measured (200 rows a day; runs with another seed give figures within a few points):

    a stable model alone, 90 days               11 of 2,000 runs open a (false) request (0.55%)
    500 stable models x 30 days, 10 repetitions  0, 0, 0, 0, 0, 0, 1, 0, 0, 0 requests; never more than one
    3-point drop alone (400 runs)                 median 9 days; within 7 days 34%, 14 days 75%, 30 days 91%
    3-point drop among 100 models (400 runs)      median 11 days; within 7 days 22%, 14 days 64%, 30 days 88%
    3-point drop among 500 models (200 runs)      median 14 days; within 7 days 10%, 14 days 53%, 30 days 89%
    collapse, AUC 0.8 -> 0.3 (alone; among 500)   2 days in 100 of 100 runs; 20 of 20 (the CUSUM crosses
                                                  on day 1, persistence waits for day 2)

Trading quiet for speed is a setting: `alpha` 0.02 gives 2.1% of lone stable models a request in 90 days
and finds the drop alone within 7 days in 51% (median 7); persistence 1 of 1 gives 1.05% and 46%, and a
collapse on day 1.

Limits. The formula is exact for normal daily sums (tests check it against a simulation); skewed losses
cross more often than it says (log losses: 1.05% of lone stable models at a nominal 0.5% without
persistence; persistence 2 of 3 brings it back to 0.55%), and a regressor's squared errors can be more
skewed still. The p-value asks "within the horizon", so a CUSUM that got high quickly is judged as one
that took 90 days (conservative). The Welch t-test (from moments, checked against scipy) and
Mann-Whitney U stay for the request's description: at 200 rows a day, a 7-day window's t-test against
the reference finds the 3-point drop at p < 0.01 in 77% of windows, Mann-Whitney in 38% (ranks ignore
how far a wrong row's loss moves).

Heavy-tailed and seasonal losses (issue 22, item 7). On a real data set (165 labelled rows a day,
accuracy 0.944 -> 0.915 for five months) the rule above never opened a request: a confident classifier's
log loss is heavy-tailed (a handful of confident mistakes a day, each a loss of 10-30), which inflates the
reference's sd, so a drop made of uncertain rows near the boundary moves the mean loss by less than delta/2
sd and the CUSUM never drifts up; and against a fixed reference a slow season opened a request before the
real change. Three changes, each in `TriggerSettings`:

* `cap_quantile`: every loss (the reference's and the days') is capped at that quantile of the reference
  batch's own losses, so the loss is bounded by what the reference shows and its daily sums are near
  normal again (the formula holds). It follows the model's main metric (`cap_quantile_for`): a metric of
  the predicted class (accuracy, precision, recall, F1) gets 0.9, since it counts a confident mistake like
  any other; a metric of the scores (ROC AUC, log loss, Brier) keeps the whole loss (1), since a cap costs
  the power that confident mistakes give (a uniform 3-point label flip at base accuracy 0.78: 34% found
  within 7 days uncapped, 11% at a 0.95 cap).
* `baseline_lag_days` (21): day d's CUSUM step compares its losses with the `reference_days` days ending
  21 days before it (the reference batch itself until 21 days after its end). A slow season moves the
  baseline with it; an abrupt change has 21 days to be found before the baseline takes it in.
* `weekday_profile`: the baseline adds the reference batch's offset for the day's weekday.

The p-value keeps the formula above with the reference's size: the rolling baseline holds as many days
as the reference batch; its error changes every few weeks instead of being shared by all 90 days, which the
formula takes as shared. Measured (benchmarks/retraining_trigger.py, docs/retraining.md), the default
classifier's figures are unchanged (0.55% of lone stable models in 90 days, 34% of 3-point drops within
7 days) and the confident classifier's 3-point drop is found within 14 days in every run (9% before).
Limits: the lag lets a slow season through in part (the benchmark's annual cycle of 1.4 accuracy points
opens a request for 13% of stable confident models within 180 days, as under the rule before) and takes a
slow decay in; a change not found within 21 days is taken into the baseline and no longer found; a model
whose main metric keeps the whole log loss keeps its heavy tails (1.9% of lone stable confident models in
90 days, against the 0.5% aim).

No Dagster, no I/O: arrays in, small dataclasses and frames out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from monitor_assets.stats.metrics_spec import CLASS_METRICS
from monitor_assets.stats.multiple_testing import CORRECTIONS, adjust_p_values

METHODS = ("welch", "mann_whitney")
# Siegmund's correction for the overshoot of a Gaussian random walk over a barrier: 0.583 standard
# deviations of one step at each barrier (Siegmund 1985, "Sequential Analysis").
OVERSHOOT = 2 * 0.583
# The cap of a model whose main metric is one of the predicted class (cap_quantile_for).
CAPPED_QUANTILE = 0.9
_GRID = np.linspace(-8.0, 8.0, 321)  # the reference batch's error, in its standard errors
_WEIGHTS = np.exp(-_GRID ** 2 / 2) / np.exp(-_GRID ** 2 / 2).sum()


@dataclass(frozen=True)
class TriggerSettings:
    """How the trigger decides. Defaults: see README ("The closed loop") and the module docstring.

    Per model: `window_days`, `shift_se`, `persistence_k`/`persistence_n`, `min_rows`. For the day's
    whole family of models (one value, like one level for a multiple-testing correction): `alpha`,
    `fleet_alpha`, `horizon_days`, `correction`."""

    window_days: int = 5  # the time scale: the CUSUM is tuned for a shift worth `shift_se` standard errors
    #                       of a window's mean loss; also the least time between two requests of a version
    shift_se: float = 5.0
    alpha: float = 0.005  # chance that one stable model's CUSUM crosses its threshold within horizon_days
    fleet_alpha: float = 0.2  # across all models: expected number of stable models crossing within horizon_days
    horizon_days: int = 90
    persistence_k: int = 2  # over the threshold on at least k ...
    persistence_n: int = 3  # ... of the last n tested days opens a request
    min_rows: int = 100  # fewer labelled losses in the reference or the last window: no test that day
    correction: str = "bonferroni"
    # Each loss is capped at this quantile of the reference batch's losses (1: no cap): a bounded loss keeps
    # a handful of confident mistakes from inflating the reference's spread and the daily sums' tails.
    cap_quantile: float = 1.0
    # The baseline rolls forward: day d is compared with the reference_days days ending baseline_lag_days
    # before it (never before the reference batch), so a slow season is followed and an abrupt change has
    # baseline_lag_days to be found before the baseline takes it in (0: the fixed reference batch).
    baseline_lag_days: int = 21
    weekday_profile: bool = True  # the baseline follows the reference batch's day-of-week profile

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        if not 1 <= self.persistence_k <= self.persistence_n:
            raise ValueError(f"persistence: expected 1 <= k <= n, got k={self.persistence_k}, n={self.persistence_n}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a level in (0, 1), got {self.alpha}")
        if not self.fleet_alpha > 0:
            raise ValueError(f"fleet_alpha: expected a positive expected number of requests, got {self.fleet_alpha}")
        if self.window_days < 1 or self.min_rows < 2 or self.horizon_days < 1:
            raise ValueError("window_days and horizon_days must be at least 1 and min_rows at least 2")
        if not self.shift_se > 0:
            raise ValueError(f"shift_se: expected a positive number of standard errors, got {self.shift_se}")
        if self.baseline_lag_days < 0:
            raise ValueError(f"baseline_lag_days: expected 0 (fixed reference) or more, got {self.baseline_lag_days}")
        if not 0 < self.cap_quantile <= 1:
            raise ValueError(f"cap_quantile: expected a quantile in (0, 1], got {self.cap_quantile}")

    def family_size(self, models: int) -> float:
        """How many models the cross-model (Bonferroni-type) correction counts: 1 while the day's models fit
        in fleet_alpha / alpha (each keeps `alpha`), beyond that models * alpha / fleet_alpha (each gets
        fleet_alpha / models: the fleet shares `fleet_alpha`)."""
        return max(1.0, models * self.alpha / self.fleet_alpha)


# -- two-sample tests of one window (descriptive: the request's reason; the version comparison's kin) ----


@dataclass(frozen=True)
class LossTest:
    """One one-sided test of "current losses are larger than the reference's"."""

    method: str
    statistic: float  # Welch's t, or Mann-Whitney's U of the current sample
    p_value: float
    n_current: int
    n_reference: int
    mean_current: float
    mean_reference: float

    @property
    def difference(self) -> float:
        return self.mean_current - self.mean_reference


def loss_shift_test(current, reference, method: str = "welch") -> LossTest:
    """One-sided two-sample test that `current` losses are larger than `reference` losses.

    welch: Welch's t-test on the means (scipy.stats.ttest_ind, equal_var=False, alternative='greater');
    mann_whitney: scipy.stats.mannwhitneyu(current, reference, alternative='greater') (normal
    approximation with tie correction above 8 rows a side). A test on constant, equal samples gives p = 1."""
    cur = np.asarray(current, dtype=float)
    ref = np.asarray(reference, dtype=float)
    cur, ref = cur[np.isfinite(cur)], ref[np.isfinite(ref)]
    if len(cur) < 2 or len(ref) < 2:
        raise ValueError(f"need at least 2 losses a side, got {len(cur)} current and {len(ref)} reference")
    if method == "welch":
        if np.ptp(cur) == 0 and np.ptp(ref) == 0:  # no spread: the means say it all
            stat = math.copysign(math.inf, cur[0] - ref[0]) if cur[0] != ref[0] else 0.0
            p = 0.0 if cur[0] > ref[0] else 1.0
        else:
            res = stats.ttest_ind(cur, ref, equal_var=False, alternative="greater")
            stat, p = float(res.statistic), float(res.pvalue)
    elif method == "mann_whitney":
        res = stats.mannwhitneyu(cur, ref, alternative="greater",
                                 method="asymptotic" if min(len(cur), len(ref)) > 8 else "auto")
        stat, p = float(res.statistic), float(res.pvalue)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return LossTest(method, stat, 1.0 if math.isnan(p) else p, len(cur), len(ref), float(cur.mean()),
                    float(ref.mean()))


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance of a set of losses: all Welch's test and the CUSUM need, so DuckDB
    can aggregate millions of rows and Python gets three numbers per model."""

    n: int
    mean: float
    var: float

    @classmethod
    def of(cls, values) -> Moments:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        return cls(len(v), float(v.mean()) if len(v) else math.nan, float(v.var(ddof=1)) if len(v) > 1 else math.nan)

    @classmethod
    def from_sums(cls, n: float, total: float, total_sq: float) -> Moments:
        """From the count, sum and sum of squares (sums of daily sums make a window's moments)."""
        if n < 1:
            return cls(0, math.nan, math.nan)
        mean = total / n
        var = max(total_sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else math.nan
        return cls(int(n), mean, var)


def welch_greater(current: Sequence[Moments], reference: Sequence[Moments]) -> tuple[np.ndarray, np.ndarray]:
    """Welch's one-sided t-test "current mean > reference mean" for many pairs at once, from moments:
    t = (m1 - m2) / sqrt(v1/n1 + v2/n2), Welch-Satterthwaite degrees of freedom, p = t.sf(t, df).
    Equals scipy.stats.ttest_ind(equal_var=False, alternative='greater') on the raw values (tests
    check). Pairs with no spread get t = ±inf (p 0 or 1) or 0 (p 1) when the means are equal."""
    n1, m1, v1 = (np.array([getattr(c, f) for c in current], dtype=float) for f in ("n", "mean", "var"))
    n2, m2, v2 = (np.array([getattr(r, f) for r in reference], dtype=float) for f in ("n", "mean", "var"))
    a, b = v1 / n1, v2 / n2
    se = np.sqrt(a + b)
    diff = m1 - m2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / se, np.where(diff > 0, np.inf, np.where(diff < 0, -np.inf, 0.0)))
        df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    p = np.where(se > 0, stats.t.sf(t, np.where(np.isfinite(df), df, 1.0)),
                 np.where(diff > 0, 0.0, 1.0))
    p = np.where(np.isnan(diff), np.nan, p)
    return t, p


def reference_band(reference, n: int, z: float = 2.0) -> tuple[float, float]:
    """Where a day's mean loss over `n` rows falls if the model is as good as its reference batch:
    the reference mean ± z standard errors (sd of the reference losses / sqrt(n))."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if len(ref) < 2 or n < 1:
        return (math.nan, math.nan)
    half = z * float(ref.std(ddof=1)) / math.sqrt(n)
    return (float(ref.mean()) - half, float(ref.mean()) + half)


# -- the bounded loss -------------------------------------------------------------------------------------


def loss_cap(reference, quantile: float) -> float:
    """The largest loss the trigger counts: the `quantile` of the reference batch's losses (numpy's linear
    interpolation, DuckDB's quantile_cont); inf when `quantile` is 1 or the reference is empty."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if quantile >= 1 or not len(ref):
        return math.inf
    return float(np.quantile(ref, quantile))


def capped(losses, cap: float) -> np.ndarray:
    """Losses capped at `cap` (the trigger's bounded loss)."""
    return np.minimum(np.asarray(losses, dtype=float), cap)


# -- the sequential test ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What a model version's CUSUM needs besides its daily losses: its reference batch's mean, standard
    deviation and size, its rows a day and the shift it is tuned for (`delta`, in reference standard
    deviations of one loss)."""

    reference_mean: float
    reference_sd: float
    n_reference: int
    rows_per_day: float
    delta: float

    @property
    def usable(self) -> bool:
        return (self.n_reference >= 2 and self.rows_per_day > 0 and self.reference_sd > 0
                and all(math.isfinite(v) for v in (self.reference_mean, self.reference_sd, self.delta)))


def calibrate(reference: Moments, reference_day_count: int, settings: TriggerSettings) -> Calibration:
    """A version's calibration from its reference batch (`reference_day_count` days of it): rows a day
    as in the reference, and delta = shift_se / sqrt(rows a day x window_days), the shift that moves a
    window's mean loss by `shift_se` standard errors."""
    rows_per_day = reference.n / max(reference_day_count, 1)
    sd = math.sqrt(reference.var) if reference.var > 0 else math.nan
    delta = settings.shift_se / math.sqrt(rows_per_day * settings.window_days) if rows_per_day > 0 else math.nan
    return Calibration(reference.mean, sd, reference.n, rows_per_day, delta)


def cusum(counts, sums, calibration: Calibration, baseline=None) -> tuple[np.ndarray, np.ndarray]:
    """The one-sided CUSUM of log-likelihood ratios "mean loss = reference + delta sd" against "= reference"
    (normal losses, the reference's sd), day by day:

        C_d = max(0, C_{d-1} + delta * (sum_d - n_d * mean_ref) / sd_ref - n_d * delta^2 / 2),  C_{-1} = 0.

    `counts`, `sums`: each day's number and sum of losses (a day without rows adds nothing); `baseline`: each
    day's mean_ref (default the calibration's reference mean; see `rolling_baseline`). Returns C and,
    per day, the index of the first day of the current run (the day after C was last 0; the day itself
    when C is 0), where the CUSUM puts the change."""
    n = np.asarray(counts, dtype=float)
    s = np.asarray(sums, dtype=float)
    c = calibration
    mean_ref = c.reference_mean if baseline is None else np.asarray(baseline, dtype=float)
    steps = c.delta * (s - n * mean_ref) / c.reference_sd - n * c.delta ** 2 / 2
    out = np.empty(len(n))
    start = np.empty(len(n), dtype=int)
    value, begin = 0.0, 0
    for d, step in enumerate(np.where(n > 0, steps, 0.0)):
        if value <= 0:
            begin = d
        value = max(0.0, value + step)
        out[d], start[d] = value, begin
    return out, start


def rolling_baseline(counts, sums, reference_days: int, length: int, lag: int) -> np.ndarray:
    """Each tested day's baseline mean loss: the mean over the `length` days ending `lag` days before it, or
    ending on the reference batch's last day when that is later (lag 0: always the reference batch).

    `counts`, `sums`: the days' loss counts and sums from the reference batch's first day on (its
    `reference_days` days, then the tested days). Returns one value per tested day (days reference_days..)."""
    n = np.concatenate([[0.0], np.cumsum(np.asarray(counts, dtype=float))])
    s = np.concatenate([[0.0], np.cumsum(np.asarray(sums, dtype=float))])
    days = np.arange(reference_days, len(counts))
    end = days - lag if lag > 0 else np.full(len(days), reference_days - 1)
    end = np.maximum(end, reference_days - 1)
    begin = np.maximum(end - length + 1, 0) if lag > 0 else np.zeros(len(days), dtype=int)
    rows = n[end + 1] - n[begin]
    reference = s[reference_days] / n[reference_days] if n[reference_days] > 0 else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):  # a window without rows: the reference batch's mean
        return np.where(rows > 0, (s[end + 1] - s[begin]) / rows, reference)


def weekday_profile(counts, sums, weekdays) -> np.ndarray:
    """The reference batch's day-of-week profile: for each weekday (0 Monday .. 6 Sunday) its mean loss minus
    the batch's mean (0 for a weekday the batch does not hold). `weekdays`: each day's weekday."""
    n, s, w = (np.asarray(a, dtype=float) for a in (counts, sums, weekdays))
    total = n.sum()
    out = np.zeros(7)
    if total <= 0:
        return out
    for day in range(7):
        rows = n[w == day].sum()
        if rows > 0:
            out[day] = s[w == day].sum() / rows - s.sum() / total
    return out


def baseline_means(counts, sums, weekdays, reference_days: int, settings: TriggerSettings) -> np.ndarray:
    """Each tested day's baseline mean loss, the mean_ref of its CUSUM step: the rolling baseline (the
    reference_days days ending baseline_lag_days before the day, never before the reference batch's end)
    plus, with `weekday_profile`, the reference batch's offset for the day's weekday.

    `counts`, `sums`, `weekdays`: per day from the reference batch's first day on (its `reference_days` days,
    then the tested days). Returns one value per tested day."""
    base = rolling_baseline(counts, sums, reference_days, reference_days, settings.baseline_lag_days)
    if settings.weekday_profile:
        w = np.asarray(weekdays, dtype=int)
        base = base + weekday_profile(np.asarray(counts)[:reference_days], np.asarray(sums)[:reference_days],
                                      w[:reference_days])[w[reference_days:]]
    return base


def cap_quantile_for(main_metric: str) -> float:
    """The cap that follows the model's main metric: a metric of the predicted class (accuracy, precision,
    recall, F1) counts a row as right or wrong, not how confident a mistake was, so losses are capped at the
    reference's 0.9 quantile; a metric of the scores (ROC AUC, log loss, Brier) keeps the whole loss (1)."""
    return CAPPED_QUANTILE if main_metric in CLASS_METRICS else 1.0


def sequential_p_value(statistic, calibration: Calibration | Sequence[Calibration], horizon_days: int) -> np.ndarray:
    """The chance that a stable model's CUSUM reaches `statistic` within `horizon_days` of testing.

    Daily steps are normal with mean n*delta*(e - delta/2) and variance n*delta^2, where e is the reference
    batch's error (true mean minus reference mean, in sds): the reference is a sample too, and its error is
    shared by every day, so it is integrated over (normal, standard error 1/sqrt(n_reference)). Given e,
    the run length to the barrier b = statistic + 1.166 step sds (Siegmund's overshoot correction) is
    ARL = (exp(theta*b) - theta*b - 1) / (theta * (-mean)), theta = -2 mean / variance, and the chance of a
    crossing within H days 1 - exp(-H / ARL). Exact for normal losses up to Siegmund's approximation
    (tests check against a simulation); skewed losses such as log losses cross more often (measured in
    benchmarks/retraining_trigger.py)."""
    cals = [calibration] if isinstance(calibration, Calibration) else list(calibration)
    h = np.atleast_1d(np.asarray(statistic, dtype=float))
    if len(cals) == 1 and len(h) > 1:
        cals = cals * len(h)
    n = np.array([c.rows_per_day for c in cals], dtype=float)[:, None]
    delta = np.array([c.delta for c in cals], dtype=float)[:, None]
    error = _GRID[None, :] / np.sqrt(np.array([c.n_reference for c in cals], dtype=float))[:, None]
    mean = n * delta * (error - delta / 2)
    var = n * delta ** 2
    theta = -2 * mean / var
    barrier = h[:, None] + OVERSHOOT * np.sqrt(var)
    x = np.clip(theta * barrier, -700.0, 700.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # (e^x - x - 1) / x^2, continuous at 0 (1/2)
        ratio = np.where(np.abs(x) < 1e-6, 0.5 + x / 6, (np.expm1(x) - x) / (x * x))
        arl = np.maximum(2 * barrier ** 2 * ratio / var, 1.0)
    p = (_WEIGHTS[None, :] * -np.expm1(-horizon_days / arl)).sum(axis=1)
    return np.where(np.isnan(h), np.nan, np.clip(p, 0.0, 1.0))


def cusum_threshold(calibration: Calibration, level: float, horizon_days: int) -> float:
    """The CUSUM value whose sequential p-value is `level`: the threshold a model crosses when flagged
    (inf when no value is that unlikely: the reference batch's own error leaves a floor)."""
    def gap(h: float) -> float:
        return math.log(max(float(sequential_p_value(h, calibration, horizon_days)[0]), 1e-300)) - math.log(level)
    if gap(0.0) <= 0:
        return 0.0
    high = 10.0
    while gap(high) > 0:
        if high > 1e6:
            return math.inf  # the reference batch is too small for this level: no value gets there
        high *= 2
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-6))


def persistence_met(flags: Sequence[bool], k: int, n: int) -> bool:
    """At least `k` of the last `n` evaluated days flagged (oldest first in `flags`)."""
    return sum(bool(f) for f in list(flags)[-n:]) >= k


DAY_COLUMNS = ["model_id", "statistic", "p_value", "p_adjusted", "flagged"]


def evaluate_day(statistics: Mapping[str, float], calibrations: Mapping[str, Calibration],
                 settings: TriggerSettings, models_in_family: int | None = None) -> pd.DataFrame:
    """One day for every model: the sequential p-value of its CUSUM (NaN: not tested today), the p-values
    adjusted across the models tested today (or `models_in_family`), and `flagged` (adjusted p below alpha).
    The family-level settings (alpha, fleet_alpha, horizon_days, correction) come from `settings`."""
    models = list(statistics)
    values = np.array([statistics[m] for m in models], dtype=float)
    p = np.full(len(models), np.nan)
    usable = [i for i, m in enumerate(models) if not math.isnan(values[i]) and calibrations[m].usable]
    if usable:
        p[usable] = sequential_p_value(values[usable], [calibrations[models[i]] for i in usable],
                                       settings.horizon_days)
    tested = int((~np.isnan(p)).sum())
    size = settings.family_size(models_in_family if models_in_family is not None else tested)
    adjusted = adjust_p_values(p, settings.correction, size)
    return pd.DataFrame({"model_id": models, "statistic": values, "p_value": p, "p_adjusted": adjusted,
                         "flagged": np.nan_to_num(adjusted, nan=1.0) < settings.alpha})


# -- simulation ---------------------------------------------------------------------------------------


def daily_sums(losses: Sequence[np.ndarray]) -> np.ndarray:
    """(days, 3): count, sum and sum of squares of each day's losses."""
    return np.array([(len(v), float(np.sum(v)), float(np.sum(np.square(v)))) for v in losses], dtype=float)


def simulate_trigger(daily_losses: Mapping[str, Sequence[np.ndarray]], reference_days: int,
                     settings: TriggerSettings, models_in_family: int | None = None) -> dict[str, list[int]]:
    """The trigger run day by day over synthetic streams (what the pipeline does, without tables).

    `daily_losses[model][d]` are day d's losses; each model's reference batch is its first
    `reference_days` days and its CUSUM starts the day after. A model is tested on a day when its last
    `window_days` days hold `min_rows` losses; the day's family is the models tested (or
    `models_in_family`: 1 judges every stream as if it were alone). A stream opens at most one request:
    in the pipeline a version with a proposed or approved request gets no second one, and nobody decides
    in a simulation. Returns the day on which each model opened its request (an empty list: none)."""
    models = list(daily_losses)
    caps = [loss_cap(np.concatenate(list(daily_losses[m][:reference_days])), settings.cap_quantile) for m in models]
    sums = np.stack([daily_sums([capped(v, cap) for v in daily_losses[m]])
                     for m, cap in zip(models, caps, strict=True)])  # (models, days, 3)
    n_days = sums.shape[1]
    refs = [Moments.from_sums(*sums[i, :reference_days].sum(axis=0)) for i in range(len(models))]
    cals = [calibrate(r, reference_days, settings) for r in refs]
    paths = np.zeros((len(models), n_days))
    for i, c in enumerate(cals):
        if c.usable:
            base = baseline_means(sums[i, :, 0], sums[i, :, 1], np.arange(n_days) % 7, reference_days, settings)
            paths[i, reference_days:] = cusum(sums[i, reference_days:, 0], sums[i, reference_days:, 1], c, base)[0]
    counts = np.concatenate([np.zeros((len(models), 1)), np.cumsum(sums[:, :, 0], axis=1)], axis=1)
    flags: list[list[bool]] = [[] for _ in models]
    opened: dict[str, list[int]] = {m: [] for m in models}
    calibrations = dict(zip(models, cals, strict=True))
    for d in range(reference_days, n_days):
        start = max(d - settings.window_days + 1, reference_days)
        rows = counts[:, d + 1] - counts[:, start]
        enough = (rows >= settings.min_rows) & np.array([r.n >= settings.min_rows for r in refs])
        day = evaluate_day(dict(zip(models, np.where(enough, paths[:, d], np.nan), strict=True)), calibrations,
                           settings, models_in_family)
        for i, (model_id, tested, flagged) in enumerate(zip(models, enough, day.flagged, strict=True)):
            if not tested:
                continue
            flags[i].append(bool(flagged))
            if flagged and not opened[model_id] and persistence_met(flags[i], settings.persistence_k,
                                                                    settings.persistence_n):
                opened[model_id].append(d)
    return opened
