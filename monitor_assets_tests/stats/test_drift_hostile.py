"""Hostile values in drift: a finite but huge feature value (2e154 overflows when squared in Python) is
analysed like any other, in the core (against scipy on scaled data) and through the real asset path."""

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitor_assets.analysis import queries as Q
from monitor_assets.config import load_config
from monitor_assets.stats import drift as D
from monitor_assets.storage.warehouse import open_warehouse
from monitor_assets_tests.alerting.test_checks_on_small_files import (
    CONFIG,
    DAYS,
    _demand_day,
    _reference,
    _shop_day,
)
from monitor_assets_tests.conftest import run_job, write


def _drift(ref: pd.DataFrame, cur: pd.DataFrame, method: str = "auto") -> D.DriftResult:
    con = duckdb.connect()
    con.register("ref", ref)
    con.register("cur", cur)
    spec = [D.FeatureSpec("x", "numeric", method)]
    profiles = Q.profile_reference(con, "SELECT * FROM ref", spec)
    return Q.compute_drift(con, "SELECT * FROM cur", spec, profiles)[0]


@pytest.mark.parametrize("huge", [2e154, 1e300, -1.5e308])
def test_a_huge_value_gives_finite_moments_and_wasserstein_equal_to_scipy_on_scaled_data(huge):
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    cur = pd.DataFrame({"x": rng.normal(0, 1, 2000)})
    cur.loc[7, "x"] = huge
    r = _drift(ref, cur)  # 2,000 rows: Wasserstein / std
    assert r.method == "wasserstein" and r.drifted
    s = 2.0 ** 1000  # scipy on values scaled down exactly, then scaled back
    w1 = stats.wasserstein_distance(ref.x / s, cur.x / s) * s
    # Binned W1: each fine bin's mass at its centre, so within half a fine bin of the exact figure.
    assert r.all_statistics["wasserstein_absolute"] == pytest.approx(w1, rel=1e-6)
    assert r.statistic == pytest.approx(w1 / ref.x.std(), rel=1e-6)
    assert r.current_mean == pytest.approx(float(np.mean(cur.x / s)) * s, rel=1e-12)
    std = float(np.std(cur.x / s, ddof=1)) * s
    assert f"std {std:.4g}" in r.current_summary and np.isfinite(std)


def test_a_huge_value_in_a_small_day_moves_ks_by_one_row_only():
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 5000)})
    cur = pd.DataFrame({"x": rng.normal(0, 1, 400)})
    base = _drift(ref, cur)
    cur.loc[0, "x"] = 2e154
    r = _drift(ref, cur)
    assert r.method == "ks" and not r.drifted
    exact = stats.ks_2samp(ref.x, cur.x).statistic
    assert abs(r.statistic - exact) <= 1 / 400 + 1 / D.FINE_BINS  # binned KS: exact up to a fine bin
    assert abs(r.statistic - base.statistic) <= 1 / 400 + 1e-12


def test_a_huge_value_in_the_reference_profiles_and_round_trips():
    rng = np.random.default_rng(3)
    ref = pd.DataFrame({"x": np.r_[rng.normal(0, 1, 3000), 2e154]})
    con = duckdb.connect()
    con.register("ref", ref)
    profile = Q.profile_reference(con, "SELECT * FROM ref", [D.FeatureSpec("x", "numeric")])["x"]
    again = D.NumericProfile.from_json(profile.to_json())
    s = 2.0 ** 1000
    assert again.counts.scale > 1 and again.counts.std == pytest.approx(float(np.std(ref.x / s, ddof=1)) * s)
    assert again.counts.mean == pytest.approx(float(np.mean(ref.x / s)) * s)
    # Ordinary data keeps its profile form (no scale key): stored profiles stay valid.
    plain = Q.profile_reference(con, "SELECT x FROM ref WHERE abs(x) < 10", [D.FeatureSpec("x", "numeric")])["x"]
    assert "scale" not in plain.to_json() and plain.counts.scale == 1.0


def _write_days(tmp, rng, huge: bool, with_shop: bool = True):
    shop, y_shop = _shop_day(rng, 0, DAYS[0])
    demand, y_demand = _demand_day(rng, 0, DAYS[0])
    if huge:
        shop.loc[3, "amount"] = 2e154
    day = f"{DAYS[0]:%Y-%m-%d}"
    if with_shop:
        write(tmp / "export" / day / "shop.csv", shop.to_csv(index=False))
    write(tmp / "export" / day / "demand.csv", demand.to_csv(index=False))
    ids = (list(shop.request_id) if with_shop else []) + list(demand.request_id)
    ys = (list(y_shop) if with_shop else []) + list(y_demand)
    pd.DataFrame({"request_id": ids, "y": ys}).to_csv(write(tmp / "truth" / f"{day}.csv", ""), index=False)


def _run(tmp, huge: bool, with_shop: bool = True):
    rng = np.random.default_rng(11)
    shop_ref, demand_ref = _reference(np.random.default_rng(12))
    shop_ref.to_parquet(write(tmp / "shop.parquet", ""))
    demand_ref.to_parquet(tmp / "demand.parquet")
    _write_days(tmp, rng, huge, with_shop)
    text = CONFIG.format(tmp=tmp)
    config = load_config(write(tmp / "monitor.yaml", text))
    result = run_job(config, "2025-06-01", instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    con = open_warehouse(config.warehouse_path, read_only=True)
    try:
        rows = con.execute("SELECT model_id, feature, method, statistic, p_value, drifted FROM monitoring.feature_drift "
                           "ORDER BY model_id, feature").df()
        summary = con.execute("SELECT model_id, analysis_error FROM monitoring.drift_summary ORDER BY 1").df()
    finally:
        con.close()
    return result, rows, summary


def test_a_huge_value_in_one_models_log_through_the_asset_path(tmp_path):
    """One shop row with amount 2e154 (it was an OverflowError, retried 3 times, and no model was analysed
    that day): both models are analysed in one attempt; demand's rows equal a run without shop at all; shop's
    amount has its drift computed (KS at 300 rows: one row moves it by at most 1/300)."""
    result, rows, summary = _run(tmp_path / "huge", huge=True)
    assert result.success
    drift_steps = [e for e in result.all_events if e.step_key == "monitoring__feature_drift"]
    assert sum(e.event_type_value == "STEP_START" for e in drift_steps) == 1
    assert not [e for e in result.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]
    assert summary.analysis_error.isna().all() and list(summary.model_id) == ["demand", "shop"]
    amount = rows[(rows.model_id == "shop") & (rows.feature == "amount")].iloc[0]
    assert amount.method == "ks" and np.isfinite(amount.statistic) and amount.statistic < 0.2
    _, alone, _ = _run(tmp_path / "alone", huge=False, with_shop=False)
    demand = rows[rows.model_id == "demand"].reset_index(drop=True)
    assert len(demand) == 6 and len(alone) == 6
    pd.testing.assert_frame_equal(demand, alone.reset_index(drop=True))
