"""How unlikely a model's estimated shortfall is, and the level it must pass when many models are judged on one day.

The `estimated_performance_within_baseline` check runs two one-sided tests per model-day on the standardized
shortfalls z_t = (floor - estimate_t) / se_t (`stats.estimation.shortfall_test`): the day's own z (level) and a
CUSUM S_t = max(0, S_{t-1} + z_t - k) over the last CUSUM_DAYS days. Under the null hypothesis that the model
sits exactly at its floor, z_t are independent standard normals, so

- the level test's p-value is 1 - Phi(z_last);
- the CUSUM's is P(S_m >= s) after m tested days, computed exactly on a grid (the CUSUM is a Markov chain with an
  atom at 0; `cusum_survival`);
- the day's p-value is twice the smaller one (Bonferroni over the two tests).

Across models the day's p-values are judged like the retraining trigger's (`TriggerSettings.family_size`): each
model keeps ALPHA while the fleet is small; beyond FLEET_ALPHA / ALPHA models the fleet shares FLEET_ALPHA, so
at most FLEET_ALPHA false alerts a day are expected even if every model sat exactly at its floor (a model at its
baseline, above the floor, raises far fewer). One model alone fails at ALPHA = 0.05, i.e. each test at 0.025:
the level rule "band wholly below the floor" and, for the CUSUM, S_7 > 4.0 (P = 0.0245).

No Dagster, no I/O.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from monitor_assets.stats.estimation import Z95

CUSUM_DAYS = 7  # the window the sequential sum looks back over
CUSUM_K = 0.25  # allowance per day, in standard errors
ALPHA = 0.05  # one model alone: its chance of a false alert on a day when it sits at its floor
FLEET_ALPHA = 0.25  # many models: expected false alerts a day across the fleet, all at their floors
_STEPS_CACHED = 7  # one grid computation serves every window up to the check's 7 days
_STEP = 0.02  # grid of the CUSUM's distribution, in standard errors
_TOP = 20.0  # S beyond 20 standard errors: survival below 1e-12 for any window we use


@functools.lru_cache(maxsize=16)
def _cusum_cdfs(k: float, steps: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The grid and P(S_t <= x) on it for t = 1..steps, S_0 = 0, increments N(0, 1) - k."""
    grid = np.arange(0.0, _TOP + _STEP, _STEP)
    # The mass of S_{t-1} sits on grid points (an atom at 0 and cells rounded to their upper end, which
    # overstates S slightly: the p-values are conservative by at most one grid step).
    mass = np.zeros(len(grid))
    mass[0] = 1.0
    kernel_x = grid[:, None] + k - grid[None, :]  # x_j + k - s_i
    kernel = stats.norm.cdf(kernel_x)  # P(s_i + Z - k <= x_j)
    cdfs = []
    for _ in range(steps):
        cdf = kernel @ mass
        cdf[-1] = 1.0
        cdfs.append(cdf)
        mass = np.diff(cdf, prepend=0.0)
    return grid, tuple(cdfs)


def cusum_survival(statistic: float, steps: int, k: float) -> float:
    """P(S_steps >= statistic) when every z_t is a standard normal (the model at its floor)."""
    if steps < 1 or not np.isfinite(statistic):
        return float("nan")
    if statistic <= 0:
        return 1.0
    grid, cdfs = _cusum_cdfs(float(k), max(int(steps), _STEPS_CACHED))
    # Above 0 the distribution has no atom: P(S >= s) = 1 - P(S <= s).
    cdf = float(np.interp(statistic, grid, cdfs[steps - 1], right=1.0))
    return float(min(1.0, max(0.0, 1.0 - cdf)))


def level_p_value(z_last: float) -> float:
    """The day's own one-sided p-value: 1 - Phi(z)."""
    return float(stats.norm.sf(z_last)) if np.isfinite(z_last) else float("nan")


def day_p_value(z_last: float, statistic: float, steps: int, k: float) -> float:
    """Twice the smaller of the level and CUSUM p-values (NaN when the day has no usable estimate)."""
    level, sequential = level_p_value(z_last), cusum_survival(statistic, steps, k)
    if np.isnan(level):
        return float("nan")
    return float(min(1.0, 2 * min(level, sequential if np.isfinite(sequential) else 1.0)))


def family_size(models: int, alpha: float = ALPHA, fleet_alpha: float = FLEET_ALPHA) -> float:
    """How many models the day's Bonferroni-type correction counts (as the retraining trigger's)."""
    return max(1.0, models * alpha / fleet_alpha)


def adjusted_fails(p_values, alpha: float = ALPHA, fleet_alpha: float = FLEET_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The day's p-values adjusted across the models judged (NaN: not judged, not counted) and which fail."""
    p = np.asarray(p_values, dtype=float)
    size = family_size(int((~np.isnan(p)).sum()), alpha, fleet_alpha)
    adjusted = np.minimum(p * size, 1.0)
    return adjusted, np.nan_to_num(adjusted, nan=1.0) < alpha


@dataclass(frozen=True)
class Shortfall:
    """One model-day's evidence: the day's standardized shortfall, the CUSUM over the window, how many days it
    summed, and the day's p-value (before the cross-model correction)."""

    z_last: float
    cusum: float
    steps: int
    p_value: float

    @property
    def level_fails(self) -> bool:
        """The day's estimate and its whole 95% band on the wrong side of the floor."""
        return bool(np.isfinite(self.z_last) and self.z_last > Z95)

    @property
    def cusum_fails(self) -> bool:
        """The CUSUM alone past its half of ALPHA (S_7 above about 4)."""
        return bool(self.steps and cusum_survival(self.cusum, self.steps, CUSUM_K) < ALPHA / 2)

    @property
    def fails(self) -> bool:
        """The verdict for one model judged alone (a fleet is judged with `adjusted_fails`)."""
        return bool(np.isfinite(self.p_value) and self.p_value < ALPHA)


def shortfall_test(estimates: list[float], standard_errors: list[float], floor: float, higher_is_better: bool = True,
                   k: float = CUSUM_K) -> Shortfall:
    """The evidence of a model's last day (oldest first, at most CUSUM_DAYS, NaN for a day without an estimate)
    against `floor`: z_t = (floor - estimate_t) / se_t (sign flipped for lower-is-better metrics),
    S_t = max(0, S_{t-1} + z_t - k) over the days with an estimate, and `day_p_value`. The band's se includes the
    estimator's own error, which makes the p-values conservative; days count as independent."""
    s, steps = 0.0, 0
    for e, se in zip(estimates[-CUSUM_DAYS:], standard_errors[-CUSUM_DAYS:], strict=True):
        if not (np.isfinite(e) and np.isfinite(se)) or se <= 0:
            continue
        s = max(0.0, s + ((floor - e) if higher_is_better else (e - floor)) / se - k)
        steps += 1
    last_e, last_se = estimates[-1], standard_errors[-1]
    if not (np.isfinite(last_e) and np.isfinite(last_se)) or last_se <= 0:
        return Shortfall(math.nan, s, steps, math.nan)
    z = ((floor - last_e) if higher_is_better else (last_e - floor)) / last_se
    return Shortfall(z, s, steps, day_p_value(z, s, steps, k))
