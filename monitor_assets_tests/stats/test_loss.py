"""Per-prediction losses: by hand, against scikit-learn, and the SQL twin against the arrays."""

import duckdb
import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_absolute_error, mean_squared_error

from monitor_assets.stats.loss import EPS, check_loss, default_loss, loss_sql, loss_values


def test_log_loss_by_hand_and_clipped():
    values = loss_values("log_loss", [1, 0, 1, 0], [0.8, 0.8, 0.0, 1.0])
    assert values[0] == pytest.approx(-np.log(0.8))
    assert values[1] == pytest.approx(-np.log(0.2))
    # p = 0 for a positive and p = 1 for a negative are clipped, not infinite
    assert values[2] == pytest.approx(-np.log(EPS)) and values[3] == pytest.approx(-np.log(EPS), rel=1e-6)
    assert np.isfinite(values).all()


def test_mean_losses_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(int)
    p = rng.random(500)
    assert loss_values("log_loss", y, p).mean() == pytest.approx(log_loss(y, p))
    t, s = rng.normal(10, 3, 300), rng.normal(10, 3, 300)
    assert loss_values("squared_error", t, s).mean() == pytest.approx(mean_squared_error(t, s))
    assert loss_values("absolute_error", t, s).mean() == pytest.approx(mean_absolute_error(t, s))


@pytest.mark.parametrize("loss", ["log_loss", "squared_error", "absolute_error"])
def test_sql_equals_arrays(loss):
    rng = np.random.default_rng(5)
    if loss == "log_loss":
        y, s = (rng.random(200) < 0.4).astype(float), np.r_[rng.random(198), 0.0, 1.0]
    else:
        y, s = rng.normal(5, 2, 200), rng.normal(5, 2, 200)
    con = duckdb.connect()
    con.register("t", {"label": y, "score": s})
    got = con.sql(f"SELECT {loss_sql(loss)} AS l FROM t").fetchnumpy()["l"]
    np.testing.assert_allclose(got, loss_values(loss, y, s), rtol=1e-9, atol=1e-12)


def test_defaults_and_validation():
    assert default_loss("binary_classification") == "log_loss"
    assert default_loss("regression") == "squared_error"
    with pytest.raises(ValueError, match="binary_classification"):
        check_loss("log_loss", "regression")
    with pytest.raises(ValueError, match="unknown loss"):
        check_loss("hinge", "binary_classification")
