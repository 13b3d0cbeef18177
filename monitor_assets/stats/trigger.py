"""The retraining trigger: are the losses of the current window larger than the reference batch's?

Each day and model: a one-sided two-sample test of the per-prediction losses of the last
`window_days` days against the model version's reference loss batch (its own first labelled
production predictions, so the reference has the model's own noise level). The p-values of all models
on a day are one family, adjusted with Benjamini-Hochberg (with every model stable, that controls the
chance of any false flag on the day at `alpha`; hundreds of models at 5% each would flag every day).
A request opens when a model was flagged on at least `persistence_k` of the last `persistence_n`
evaluated days.

Which test. The default is Welch's one-sided t-test on the mean loss. The mean loss is what training
minimises and what retraining should bring down; at the sizes the trigger needs (hundreds of rows a
side) it is the normal limit of the permutation test of the mean loss, at a fraction of its cost, and
it needs only each side's count, mean and variance, which DuckDB aggregates where the rows are.
Mann-Whitney U (`loss_shift_test(..., method="mann_whitney")`) is robust to a few extreme losses, but
it tests ranks: when a model gets 3% more rows wrong, only those rows move, while each moves a long
way in loss. In simulation (benchmarks/retraining_trigger.py: 200 labelled rows a day, a 7-day window
against a 14-day reference) the t-test detected a 3-point accuracy drop in 79% of windows at p < 0.01,
Mann-Whitney in 39%; the
t-test's size stayed at the nominal level for log losses (measured 0.0100 at 0.01, 0.0012 at 0.001;
clipped probabilities bound a log loss by -log(2.2e-16) = 36).

No Dagster, no I/O: arrays in, small dataclasses and frames out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

METHODS = ("welch", "mann_whitney")
CORRECTIONS = ("benjamini_hochberg", "bonferroni")


@dataclass(frozen=True)
class TriggerSettings:
    """How the trigger decides. Defaults: see README ("The closed loop")."""

    window_days: int = 5  # the current window: losses of the last this many days
    alpha: float = 0.005  # level across all models on a day (false-discovery rate; family-wise when all are stable)
    persistence_k: int = 2  # flagged on at least k ...
    persistence_n: int = 3  # ... of the last n evaluated days opens a request
    min_rows: int = 100  # fewer labelled losses in the window or the reference: no test that day
    correction: str = "benjamini_hochberg"

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction: expected one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        if not 1 <= self.persistence_k <= self.persistence_n:
            raise ValueError(f"persistence: expected 1 <= k <= n, got k={self.persistence_k}, n={self.persistence_n}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: expected a level in (0, 1), got {self.alpha}")
        if self.window_days < 1 or self.min_rows < 2:
            raise ValueError("window_days must be at least 1 and min_rows at least 2")


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


def adjust_p_values(p_values, correction: str = "benjamini_hochberg") -> np.ndarray:
    """p-values adjusted for the family (NaN stays NaN and is not counted): Benjamini-Hochberg step-up
    (as scipy.stats.false_discovery_control) or Bonferroni, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    if correction == "bonferroni":
        out[ok] = np.minimum(p[ok] * m, 1.0)
        return out
    if correction != "benjamini_hochberg":
        raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
    values = p[ok]
    order = np.argsort(values)
    ranked = values[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(ranked, 1.0)
    out[ok] = adjusted
    return out


def persistence_met(flags: Sequence[bool], k: int, n: int) -> bool:
    """At least `k` of the last `n` evaluated days flagged (oldest first in `flags`)."""
    return sum(bool(f) for f in list(flags)[-n:]) >= k


def reference_band(reference, n: int, z: float = 2.0) -> tuple[float, float]:
    """Where a day's mean loss over `n` rows falls if the model is as good as its reference batch:
    the reference mean ± z standard errors (sd of the reference losses / sqrt(n))."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if len(ref) < 2 or n < 1:
        return (math.nan, math.nan)
    half = z * float(ref.std(ddof=1)) / math.sqrt(n)
    return (float(ref.mean()) - half, float(ref.mean()) + half)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sample variance of a set of losses: all Welch's test needs, so DuckDB can
    aggregate millions of rows and Python gets three numbers per model."""

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


DAY_COLUMNS = ["model_id", "statistic", "p_value", "n_current", "n_reference", "mean_current", "mean_reference",
               "p_adjusted", "flagged"]


def evaluate_day(windows: Mapping[str, Moments], references: Mapping[str, Moments],
             settings: TriggerSettings) -> pd.DataFrame:
    """One day for every model: Welch's test of its window against its reference batch where both have
    `min_rows` losses, the p-values adjusted across the models tested that day, and `flagged`
    (adjusted p below alpha). A model without enough rows gets NaN p-values and is never flagged."""
    models = list(windows)
    missing = Moments(0, math.nan, math.nan)
    cur = [windows[m] for m in models]
    ref = [references.get(m, missing) for m in models]
    t, p = welch_greater(cur, ref) if models else (np.array([]), np.array([]))
    enough = np.array([c.n >= settings.min_rows and r.n >= settings.min_rows for c, r in zip(cur, ref, strict=True)],
                      dtype=bool)
    t, p = np.where(enough, t, np.nan), np.where(enough, p, np.nan)
    frame = pd.DataFrame({"model_id": models, "statistic": t, "p_value": p,
                          "n_current": [c.n for c in cur], "n_reference": [r.n for r in ref],
                          "mean_current": [c.mean for c in cur], "mean_reference": [r.mean for r in ref]})
    frame["p_adjusted"] = adjust_p_values(frame.p_value.to_numpy(dtype=float), settings.correction)
    frame["flagged"] = (frame.p_adjusted < settings.alpha).fillna(False).astype(bool)
    return frame


def daily_sums(losses: Sequence[np.ndarray]) -> np.ndarray:
    """(days, 3): count, sum and sum of squares of each day's losses."""
    return np.array([(len(v), float(np.sum(v)), float(np.sum(np.square(v)))) for v in losses], dtype=float)


def simulate_trigger(daily_losses: Mapping[str, Sequence[np.ndarray]], reference_days: int,
                     settings: TriggerSettings, test_from: int | None = None) -> dict[str, list[int]]:
    """The trigger run day by day over synthetic streams (what the pipeline does, without tables).

    `daily_losses[model][d]` are day d's losses; each model's reference batch is its first
    `reference_days` days. Testing starts on day `test_from` (default: the first day whose window lies
    after the reference). A model with a request opens the next one only once a whole window of new
    days has passed. Returns the days on which each model opened a request."""
    first = reference_days + settings.window_days - 1 if test_from is None else test_from
    sums = {m: daily_sums(v) for m, v in daily_losses.items()}
    n_days = min(len(v) for v in sums.values())
    references = {m: Moments.from_sums(*v[:reference_days].sum(axis=0)) for m, v in sums.items()}
    flags: dict[str, list[bool]] = {m: [] for m in sums}
    opened: dict[str, list[int]] = {m: [] for m in sums}
    for d in range(first, n_days):
        start = max(d - settings.window_days + 1, reference_days)
        windows = {m: Moments.from_sums(*v[start:d + 1].sum(axis=0)) for m, v in sums.items()}
        day = evaluate_day(windows, references, settings)
        for model_id, flagged in zip(day.model_id, day.flagged, strict=True):
            flags[model_id].append(bool(flagged))
            recent = opened[model_id] and d - opened[model_id][-1] < settings.window_days
            if not recent and persistence_met(flags[model_id], settings.persistence_k, settings.persistence_n):
                opened[model_id].append(d)
    return opened
