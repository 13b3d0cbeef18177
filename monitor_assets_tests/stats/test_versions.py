"""Champion vs challenger: the two-proportion z by hand, Mann-Whitney against scipy, and the canary
verdicts on made-up versions."""

import math

import numpy as np
import pytest
from scipy import stats

from monitor_assets.stats.versions import (
    HOLD,
    PROMOTE,
    ROLLBACK,
    Gates,
    VersionStats,
    compare_versions,
    two_proportion_ztest,
)


def test_two_proportion_z_by_hand():
    # 30/200 vs 45/200: pooled p = 75/400 = 0.1875; se = sqrt(0.1875 * 0.8125 * (2/200)) = 0.039031
    t = two_proportion_ztest(30, 200, 45, 200)
    se = math.sqrt(0.1875 * 0.8125 * 0.01)
    assert t.z == pytest.approx((0.225 - 0.15) / se)
    assert t.z == pytest.approx(1.92154, rel=1e-4)
    assert t.p_two_sided == pytest.approx(2 * stats.norm.sf(t.z))
    assert t.p_greater == pytest.approx(0.027335, rel=1e-3)


def test_two_proportion_without_spread():
    assert two_proportion_ztest(0, 100, 0, 50).z == 0
    assert math.isnan(two_proportion_ztest(0, 0, 1, 10).z)


def version(name, rng, n=5000, error_rate=0.002, latency=80.0, loss_scale=1.0, accuracy=0.8, labelled=None,
            slow_share=0.05):
    labelled = n if labelled is None else labelled
    return VersionStats(name, n=n, n_errors=int(round(n * error_rate)), latency_p95_ms=latency, n_labelled=labelled,
                        n_correct=int(round(labelled * accuracy)), losses=rng.exponential(loss_scale, labelled),
                        n_over_champion_p95=int(round(n * slow_share)))


GATES = Gates(latency_p95_ms=500, error_rate=0.01)


def test_loss_test_is_scipy_mann_whitney():
    rng = np.random.default_rng(1)
    champ, chall = version("v1", rng), version("v2", rng, loss_scale=1.05)
    _, rows = compare_versions(champ, chall, GATES)
    loss = next(r for r in rows if r["metric"] == "mean_loss")
    assert loss["p_value"] == pytest.approx(stats.mannwhitneyu(chall.losses, champ.losses,
                                                               alternative="greater").pvalue)
    assert loss["difference"] == pytest.approx(chall.losses.mean() - champ.losses.mean())


def test_a_better_challenger_with_enough_data_is_promoted():
    rng = np.random.default_rng(2)
    verdict, rows = compare_versions(version("v1", rng), version("v2", rng, loss_scale=0.8, accuracy=0.83), GATES)
    assert verdict == PROMOTE and {r["gate"] for r in rows} == {"pass"}


def test_a_good_challenger_with_few_labels_is_held():
    rng = np.random.default_rng(3)
    verdict, rows = compare_versions(version("v1", rng), version("v2", rng, n=300, labelled=120), GATES)
    assert verdict == HOLD
    assert next(r for r in rows if r["metric"] == "mean_loss")["gate"] == "wait"


@pytest.mark.parametrize("change,metric", [
    ({"loss_scale": 1.5}, "mean_loss"),
    ({"error_rate": 0.02}, "error_rate"),  # over the 1% SLA
    ({"error_rate": 0.008}, "error_rate"),  # within the SLA but four times the champion's
    ({"latency": 650.0}, "latency_p95_ms"),  # over the SLA
    ({"latency": 120.0, "slow_share": 0.3}, "latency_p95_ms"),  # 50% above the champion's, 30% over its p95
])
def test_a_worse_challenger_is_rolled_back(change, metric):
    rng = np.random.default_rng(4)
    verdict, rows = compare_versions(version("v1", rng), version("v2", rng, **change), GATES)
    assert verdict == ROLLBACK
    assert next(r for r in rows if r["metric"] == metric)["gate"] == "fail"


def test_a_noisy_canary_p95_above_the_tolerance_is_not_a_rollback():
    # 11% above the champion's p95 on 300 requests, 6% of them over the champion's p95: noise (binomial p ~0.26)
    rng = np.random.default_rng(5)
    verdict, rows = compare_versions(version("v1", rng), version("v2", rng, n=300, latency=89.0, slow_share=0.06),
                                     GATES)
    latency = next(r for r in rows if r["metric"] == "latency_p95_ms")
    assert latency["gate"] == "pass" and verdict != ROLLBACK
    assert latency["p_value"] == pytest.approx(stats.binomtest(18, 300, 0.05, alternative="greater").pvalue)
