import numpy as np
import pytest
from scipy import stats

from monitor_assets.stats import drift as D
from monitor_assets.stats.multiple_testing import benjamini_hochberg
from monitor_assets.stats.trigger import adjust_p_values


@pytest.mark.parametrize("seed", range(20))
def test_benjamini_hochberg_is_scipys_false_discovery_control(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, int(rng.integers(2, 40))) ** 3
    p[: len(p) // 4] = p[-1]  # ties
    np.testing.assert_array_equal(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"))


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.06, 0.0533, 0.2 -> step-up minimum 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2], rtol=1e-12)
    # NaN is kept and not counted; a larger family scales every rank; capped at 1
    np.testing.assert_allclose(benjamini_hochberg([0.01, np.nan, 0.5]), [0.02, np.nan, 0.5], rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.5], family_size=10), [0.1, 1.0], rtol=1e-12)
    assert benjamini_hochberg([]).shape == (0,)


def test_the_drift_tests_and_the_retraining_trigger_adjust_alike():
    """Both callers use the one function: drift across a model-day's features, the trigger across models."""
    ps = [0.001, 0.008, 0.039, 0.041, 0.2, 0.6, np.nan]
    results = [D.DriftResult(f"f{i}", "numeric", "ks", 0.1, p, D.P_VALUE_ALPHA, False, 300, 5000)
               for i, p in enumerate(ps[:-1])]
    D.control_false_alarms(results)
    drift = [r.p_value_adjusted for r in results]
    trigger = adjust_p_values(ps)
    np.testing.assert_allclose(drift, trigger[:-1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(drift, stats.false_discovery_control(ps[:-1], method="bh"), rtol=1e-12, atol=0)
    assert np.isnan(trigger[-1])
