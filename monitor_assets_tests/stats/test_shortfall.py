"""The estimated-performance check's evidence: the CUSUM's exact null distribution against simulation and scipy,
the false-alert level of one model and of a fleet at their floors, and the power for a 3-point drop."""

import numpy as np
import pytest
from scipy import stats

from monitor_assets.stats.shortfall import (
    ALPHA,
    CUSUM_DAYS,
    CUSUM_K,
    FLEET_ALPHA,
    adjusted_fails,
    cusum_survival,
    family_size,
    shortfall_test,
)


def _cusum(z: np.ndarray) -> np.ndarray:
    s = np.zeros(len(z))
    for t in range(z.shape[1]):
        s = np.maximum(0.0, s + z[:, t] - CUSUM_K)
    return s


def test_one_day_survival_is_the_normal_tail():
    for h in (0.1, 0.5, 1.7, 3.0):
        assert cusum_survival(h, 1, CUSUM_K) == pytest.approx(stats.norm.sf(h + CUSUM_K), rel=1e-3)


@pytest.mark.parametrize("steps", [3, 7])
def test_survival_matches_simulation_and_errs_on_the_safe_side(steps):
    s = _cusum(np.random.default_rng(steps).standard_normal((1_000_000, steps)))
    for h in (0.5, 2.0, 4.0, 5.5):
        simulated = (s >= h).mean()
        exact = cusum_survival(h, steps, CUSUM_K)
        assert exact >= simulated - 3 * np.sqrt(simulated * (1 - simulated) / len(s))  # never optimistic
        assert exact == pytest.approx(simulated, rel=0.08, abs=2e-5)


def _days(rng, models, days, se, shortfall):
    """Daily estimates of `models` models against a floor at 0: each day's z is shortfall/se + noise."""
    return rng.normal(-shortfall, se, (models, days))  # floor - estimate = shortfall + noise, in metric units


def _p_values(estimates, se):
    out = np.full(estimates.shape, np.nan)
    for m in range(estimates.shape[0]):
        for d in range(estimates.shape[1]):
            window = estimates[m, max(0, d - CUSUM_DAYS + 1): d + 1]
            out[m, d] = shortfall_test(list(window), [se] * len(window), 0.0).p_value
    return out


def test_one_model_at_its_floor_alerts_at_about_alpha():
    rng = np.random.default_rng(7)
    p = _p_values(_days(rng, 40, 100, 0.02, 0.0), 0.02)[:, CUSUM_DAYS:]
    rate = (np.minimum(p * family_size(1), 1) < ALPHA).mean()
    assert 0.4 * ALPHA < rate <= ALPHA * 1.15  # conservative (two tests, Bonferroni), not silent


def test_a_fleet_at_its_floors_shares_the_fleet_level():
    rng = np.random.default_rng(8)
    p = _p_values(_days(rng, 200, 30, 0.02, 0.0), 0.02)[:, CUSUM_DAYS:]
    false_per_day = [adjusted_fails(p[:, d])[1].sum() for d in range(p.shape[1])]
    assert family_size(200) == 200 * ALPHA / FLEET_ALPHA
    assert np.mean(false_per_day) <= FLEET_ALPHA * 1.2


def _found_within_a_week(rng, rows: int, family: float, runs: int = 400) -> float:
    """Share of runs where accuracy 0.90 -> 0.87 against a floor of 0.99 x 0.90 fails the check within 7 days
    (se of a proportion at `rows`, plus 10% for the estimator's own error)."""
    se = float(np.sqrt(0.87 * 0.13 / rows) * 1.1)
    estimates = rng.normal(0.87, se, (runs, CUSUM_DAYS))
    found = 0
    for r in range(runs):
        p = [shortfall_test(list(estimates[r, : d + 1]), [se] * (d + 1), 0.99 * 0.90).p_value
             for d in range(CUSUM_DAYS)]
        found += min(p) * family < ALPHA
    return found / runs


def test_a_three_point_drop_is_found_within_a_week():
    """300 rows a day are enough for one model (about 85%); among 100 models, where each is held to
    ALPHA / 20, it takes about 600 (about 78%; 300 rows: about 40%)."""
    rng = np.random.default_rng(9)
    assert _found_within_a_week(rng, 300, family_size(1)) >= 0.8
    assert _found_within_a_week(rng, 600, family_size(100)) >= 0.7
