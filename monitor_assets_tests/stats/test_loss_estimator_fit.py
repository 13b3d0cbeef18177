"""The DLE fit (`stats.estimation.LossEstimator`) on large references: the loss models learn from a bounded sample,
the bias is the held rows' mean residual, and the band carries that mean's own uncertainty.

(Core tests of `stats.estimation`; they sit here because this change was scoped to this folder. They belong
beside monitor_assets_tests/stats/test_estimation.py, whose `simulate_regression` they use.)"""

import math
from dataclasses import replace

import numpy as np
import pytest

from monitor_assets.stats import estimation as E
from monitor_assets_tests.stats.test_estimation import simulate_regression


def test_a_large_reference_fits_on_a_bounded_sample(monkeypatch):
    """50,000 reference rows: each loss model learns from FIT_ROWS rows, HELD_ROWS other rows give the bias, which
    is their mean residual against scikit-learn's own predictions, and its variance is theirs over their count."""
    seen = []
    fit = E._loss_model
    monkeypatch.setattr(E, "_loss_model", lambda x, target, *a: seen.append(x) or fit(x, target, *a))
    x, prediction, y = simulate_regression(np.random.default_rng(7), 50_000)
    features = np.column_stack([x, np.arange(50_000.0)])  # a row number among the features tells the rows apart
    estimator = E.LossEstimator.fit(features, prediction, y, reweight=True)
    assert [len(rows) for rows in seen] == [E.FIT_ROWS, E.FIT_ROWS]  # one model per loss, the same rows
    assert np.array_equal(seen[0][:, 2], seen[1][:, 2]) and [len(m) for m in estimator.models.values()] == [1, 1]
    held = estimator.sample.x[:, 2].astype(int)  # the reweighting sample keeps every held row (HELD_ROWS of them)
    assert len(held) == E.HELD_ROWS and not set(seen[0][:, 2].astype(int)) & set(held)
    design, error = np.column_stack([features, prediction])[held], (y - prediction)[held]
    for loss, target in (("abs", np.abs(error)), ("sq", error ** 2)):
        residual = target - np.maximum(estimator.models[loss][0].predict(design), 0.0)
        assert estimator.bias[loss] == pytest.approx(float(np.mean(residual)), rel=1e-9)
        assert estimator.bias_spread[loss] == pytest.approx(float(np.var(residual, ddof=1)) / len(held), rel=1e-9)


def test_the_band_covers_the_bias_uncertainty_on_large_days():
    """Over 30 references (20,000 rows) and one 50,000-row stable day each, the standardized errors (estimate -
    realized) / se spread as a standard normal's would (sd 0.75 to 1.06 on four such sets of references) and the
    MAE band covers at least 85% of days (90% to 100% on those sets). Without the bias's own variance the bands are
    far too narrow there (sd 1.5 to 2.3; MAE coverage about 0.75): the day's sampling error is small, and the bias
    correction, a mean over 10,000 held rows, is what is uncertain."""
    z = {"mae": [], "rmse": []}
    narrow = {"mae": [], "rmse": []}
    inside = []
    for seed in range(30):
        rng = np.random.default_rng([seed, 11])
        estimator = E.LossEstimator.fit(*simulate_regression(rng, 20_000))
        x, prediction, y = simulate_regression(rng, 50_000)
        realized = {"mae": float(np.mean(np.abs(y - prediction))),
                    "rmse": math.sqrt(float(np.mean((y - prediction) ** 2)))}
        for e in estimator.estimate(x, prediction, seed=seed):
            z[e.metric].append((e.estimate - realized[e.metric]) / e.standard_error)
            if e.metric == "mae":
                inside.append(e.lower <= realized["mae"] <= e.upper)
        for e in replace(estimator, bias_spread=None).estimate(x, prediction, seed=seed):
            narrow[e.metric].append((e.estimate - realized[e.metric]) / e.standard_error)
    for metric in z:
        assert 0.6 < np.std(z[metric]) < 1.35, (metric, np.std(z[metric]))
        assert np.std(narrow[metric]) > 1.35, (metric, np.std(narrow[metric]))  # what the term is for
    assert np.mean(inside) >= 0.85


def test_one_thread_limits_scikit_learns_openmp_even_when_first_called_before_its_import():
    """In a fresh process, `one_thread()` called before scikit-learn's gradient boosting is imported still holds
    its OpenMP pool to one thread (the controller made first knew no OpenMP library and limited nothing)."""
    import subprocess
    import sys

    script = ("from monitor_assets.stats.density_ratio import one_thread\n"
              "from threadpoolctl import threadpool_info\n"
              "with one_thread():\n"
              "    from sklearn.ensemble import HistGradientBoostingRegressor\n"
              "    print([i['num_threads'] for i in threadpool_info() if i['user_api'] == 'openmp'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"})
    assert done.returncode == 0, done.stderr[-2000:]
    threads = __import__("ast").literal_eval(done.stdout.strip())
    assert threads and set(threads) == {1}
