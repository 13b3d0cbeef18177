"""A window's drift verdict, picture and warnings, from merged profiles (issue 24 items 4 and 5), against the
daily drift on the same raw rows (stats.drift), numpy and scipy, and hand-computed values."""

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from monitor_assets.config import Thresholds, load_config
from monitor_assets.evaluation import logic as E
from monitor_assets.evaluation.settings import Window, WindowSpec
from monitor_assets.stats import drift as D
from monitor_assets.stats import profiles as P
from monitor_assets.stats.categories import MISSING


def _fine(values: np.ndarray) -> tuple[D.NumericProfile, D.NumericCounts]:
    """The daily drift's reference profile of raw values (as NumericBins.from_values builds it)."""
    v = values[np.isfinite(values)]
    lo, hi, fine = D.grid_bounds(list(np.quantile(v, [0.001, 0.999])), float(v.min()), float(v.max()), D.FINE_BINS)
    counter = D.NumericCounter(lo, hi, fine)
    counter.add(values)
    counts = counter.result()
    return D.NumericProfile(lo, hi, fine, counts, D._quantile_cuts(counts.counts, D.PSI_BINS)), counts


def _current_counts(profile: D.NumericProfile, values: np.ndarray) -> D.NumericCounts:
    counter = D.NumericCounter(profile.lo, profile.hi, profile.bins)
    counter.add(values)
    return counter.result()


def _profiles(ref: pd.DataFrame, cur: pd.DataFrame, specs: list[D.FeatureSpec]):
    bins = P.ProfileBins.from_reference(ref, specs)
    return (bins, P.build_profile(ref, bins, {"model_id": "m"}, "reference"),
            P.build_profile(cur, bins, {"model_id": "m"}, "2026-10-01"))


@pytest.mark.parametrize("draw", ["normal", "exponential", "lognormal", "uniform", "poisson"])
def test_wasserstein_scale_from_profile_bins_is_near_the_fine_grids(draw):
    rng = np.random.default_rng(1)
    x = {"normal": lambda: rng.normal(0, 1, 20000), "exponential": lambda: rng.exponential(2.0, 20000),
         "lognormal": lambda: rng.lognormal(0, 1, 20000), "uniform": lambda: rng.uniform(0, 1, 20000),
         "poisson": lambda: rng.poisson(3, 20000).astype(float)}[draw]()
    fine, _ = _fine(x)
    bins = P.NumericBins.from_values(x)
    approx = P.wasserstein_scale(P.NumericColumn.build(x, bins), bins)
    # the fallback when the fine counts are not stored: the coarse bins overstate it a little (a heavy right
    # tail most), which only raises the noise floor a little
    most = 1.2 if draw == "lognormal" else 1.06
    assert 0.99 * D.wasserstein_scale(fine) <= approx <= most * D.wasserstein_scale(fine)
    assert P.wasserstein_scale(P.NumericColumn.build(np.full(50, 3.0), bins), bins) is None


@pytest.mark.parametrize(("n_ref", "n_cur", "shift"), [(5000, 3000, 0.0), (5000, 3000, 0.3), (2000, 600, 0.0),
                                                         (2000, 600, 0.5)])
def test_numeric_window_verdict_is_the_daily_drifts_decision(n_ref, n_cur, shift):
    rng = np.random.default_rng(n_ref + n_cur + int(10 * shift))
    ref, cur = rng.normal(0, 1, n_ref), rng.normal(shift, 1, n_cur)
    spec = D.FeatureSpec("x", "numeric")
    fine, _ = _fine(ref)
    daily = D.numeric_drift(spec, fine, _current_counts(fine, cur))
    bins, rp, cp = _profiles(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}), [spec])
    v = P.window_drift([spec], rp, cp, bins, scales={"x": D.wasserstein_scale(fine)})["x"]
    assert (v.method, v.drifted) == (daily.method, daily.drifted) == ("wasserstein", shift > 0)
    # the threshold, raised to the noise floor at 2,000 x 600 rows, is the daily one given the stored scale ...
    assert v.threshold == pytest.approx(daily.threshold, rel=1e-12)
    assert (v.threshold > D.DEFAULT_THRESHOLDS["wasserstein"]) == (n_cur == 600)
    # ... and within 10% above it from the profile bins alone
    coarse = P.window_drift([spec], rp, cp, bins)["x"]
    assert daily.threshold <= coarse.threshold <= 1.1 * daily.threshold and coarse.drifted == daily.drifted
    d = P.numeric_distances(rp.numeric["x"], cp.numeric["x"], bins.numeric["x"], p_values=False)
    exact = stats.wasserstein_distance(ref, cur) / np.std(ref, ddof=1)
    assert abs(v.statistic - exact) <= d["wasserstein_bound"] + 1e-12
    assert v.evidence == pytest.approx(v.statistic / v.threshold)


def test_a_user_threshold_and_method_are_kept():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.05, 1, 3000)
    spec = D.FeatureSpec("x", "numeric", "psi", 0.001)
    bins, rp, cp = _profiles(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}), [spec])
    v = P.window_drift([spec], rp, cp, bins)["x"]
    fine, _ = _fine(ref)
    daily = D.numeric_drift(spec, fine, _current_counts(fine, cur))
    assert (v.method, v.threshold) == ("psi", 0.001)
    assert v.statistic == pytest.approx(daily.statistic, rel=1e-12)  # PSI is exact on profile bins
    assert v.drifted == daily.drifted


def test_categorical_window_verdict_equals_the_daily_one_when_every_category_is_tracked():
    rng = np.random.default_rng(4)
    ref = rng.choice(["web", "app", "store"], 4000, p=[0.5, 0.3, 0.2]).astype(object)
    cur = rng.choice(["web", "app", "store"], 3000, p=[0.3, 0.3, 0.4]).astype(object)
    ref[:40] = None
    spec = D.FeatureSpec("c", "categorical")
    profile = D.CategoricalProfile(pd.Series(ref).fillna(MISSING).value_counts().to_dict())
    daily = D.categorical_drift(spec, profile, pd.Series(cur).fillna(MISSING).value_counts().to_dict())
    bins, rp, cp = _profiles(pd.DataFrame({"c": ref}), pd.DataFrame({"c": cur}), [spec])
    v = P.window_drift([spec], rp, cp, bins)["c"]
    assert (v.method, v.drifted) == (daily.method, daily.drifted) == ("jensenshannon", True)
    assert v.statistic == pytest.approx(daily.statistic, rel=1e-12)
    assert v.threshold == pytest.approx(daily.threshold, rel=1e-12)


def test_small_windows_use_tests_corrected_together_as_the_daily_drift():
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"x": rng.normal(0, 1, 3000), "c": rng.choice(["a", "b", "c"], 3000)})
    cur = pd.DataFrame({"x": rng.normal(0.1, 1, 300), "c": rng.choice(["a", "b", "c"], 300, p=[0.4, 0.3, 0.3])})
    specs = [D.FeatureSpec("x", "numeric"), D.FeatureSpec("c", "categorical")]
    bins, rp, cp = _profiles(ref, cur, specs)
    found = P.window_drift(specs, rp, cp, bins)
    assert (found["x"].method, found["c"].method) == ("ks", "chisquare")
    raw = [found["x"].p_value, found["c"].p_value]
    adjusted = stats.false_discovery_control(raw, method="bh")
    assert [found["x"].p_value_adjusted, found["c"].p_value_adjusted] == pytest.approx(list(adjusted), rel=1e-12)
    for v, q in zip(found.values(), adjusted, strict=True):
        assert v.drifted == (q < D.P_VALUE_ALPHA)
    # chi-square on every tracked category is scipy's on the raw counts
    table = pd.crosstab(pd.concat([ref.c, cur.c]), np.r_[np.zeros(3000), np.ones(300)])
    assert found["c"].p_value == pytest.approx(stats.chi2_contingency(table.to_numpy())[1], rel=1e-9)


def test_window_comparison_counts_are_numpys_on_the_profile_bins():
    rng = np.random.default_rng(6)
    ref, cur = rng.normal(0, 1, 4000), rng.normal(0.5, 1.2, 2500)
    cur[:25] = np.nan
    bins = P.NumericBins.from_values(ref)
    found = P.window_comparison("numeric", P.NumericColumn.build(ref, bins), P.NumericColumn.build(cur, bins), bins)
    inner = [b for b in found.buckets if b.lo is not None and b.hi is not None]
    edges = np.r_[[b.lo for b in inner], inner[-1].hi]
    assert np.allclose(edges, bins.edges)
    counts, _ = np.histogram(cur[np.isfinite(cur)], bins=edges)
    assert [b.current_count for b in inner] == counts.tolist()
    by_label = {b.label: b for b in found.buckets}
    assert by_label["missing"].current_count == 25 and "missing" in by_label
    assert by_label["above range"].current_count == int((cur > bins.hi).sum())
    assert sum(b.current_share for b in found.buckets) == pytest.approx(1.0)
    assert sum(b.reference_share for b in found.buckets) == pytest.approx(1.0)

    cats = P.CategoricalBins.from_values(pd.Series(["a"] * 5 + ["b"] * 3 + ["c"]), top_k=2)
    side = P.window_comparison("categorical", P.CategoricalColumn.build(["a", "b", "c", None], cats),
                               P.CategoricalColumn.build(["a", "a", "z", "c"], cats), cats)
    assert [(b.label, b.reference_count, b.current_count) for b in side.buckets] == [
        ("a", 1, 2), ("b", 1, 0), ("other", 1, 1), ("never in the reference", 0, 1), ("missing", 1, 0)]


def _part(rows: dict[str, tuple[float | None, float | None]], n_labelled: int = 500) -> pd.DataFrame:
    return pd.DataFrame([{"metric": m, "value": v, "reference_value": r, "n_labelled": n_labelled}
                         for m, (v, r) in rows.items()])


def _model(task="binary_classification", metric="accuracy"):
    config = load_config()
    model = next(m for m in config.models if m.task == task)
    from dataclasses import replace

    return config, replace(model, main_metric=metric, thresholds=Thresholds())


def test_window_warnings_by_hand():
    config, model = _model()
    warned = E.window_warnings(_part({"accuracy": (0.70, 0.80)}), model, config)
    assert [(w.kind, w.value, w.threshold) for w in warned] == [("performance", pytest.approx(0.875), 0.95)]
    assert E.window_warnings(_part({"accuracy": (0.70, 0.80)}, n_labelled=99), model, config) == []
    assert E.window_warnings(_part({"accuracy": (0.77, 0.80)}), model, config) == []  # 96% of it
    config_r, reg = _model("regression", "mae")
    warned = E.window_warnings(_part({"mae": (1.2, 1.0)}), reg, config_r)  # lower is better: 1 - 0.2 / 1
    assert [(w.kind, w.value) for w in warned] == [("performance", pytest.approx(0.8))]
    drift = _part({"drift.x.drifted": (1.0, None), "drift.x.evidence": (2.5, None), "drift.y.drifted": (0.0, None),
                   "drift.z.drifted": (1.0, None), "drift.z.evidence": (4.0, None)})
    (w,) = E.window_warnings(drift, model, config)
    assert w.kind == "drift" and w.value == 4.0 and w.text.index("z (4x") < w.text.index("x (2.5x")
    assert "y" not in w.text.split(":")[1]


@pytest.mark.parametrize(("ratio", "p", "ref", "warns"), [
    (0.6, 1e-5, 0.9, True),  # worse than the bound and than the reference, beyond chance
    (0.6, 1e-5, 0.62, False),  # the reference already had it (within the tolerance)
    (0.45, 1e-5, 0.45, True),  # below the hard floor whatever the reference
    (0.6, 0.01, 0.9, False),  # could be chance
    (0.85, 1e-9, 0.95, False),  # above the four-fifths bound
])
def test_fairness_warnings_follow_the_daily_rule(ratio, p, ref, warns):
    config, model = _model()
    part = _part({"fairness.region.demographic_parity_ratio": (ratio, ref),
                  "fairness.region.demographic_parity_p_value": (p, None)})
    assert bool(E.window_warnings(part, model, config)) == warns


def test_failures_have_the_sensors_shape_one_per_model_and_closing_day(tmp_path):
    config, model = _model()
    from dataclasses import replace

    config = replace(config, models=(model,), reports_dir=str(tmp_path))
    week = Window(WindowSpec("week", "week"), dt.date(2026, 10, 26), dt.date(2026, 11, 1))
    month = Window(WindowSpec("month", "month"), dt.date(2026, 10, 1), dt.date(2026, 10, 31))
    month_end = Window(WindowSpec("month", "month"), dt.date(2026, 9, 1), dt.date(2026, 9, 30))
    rows = []
    for w, acc in ((week, 0.5), (month, 0.6), (month_end, 0.79)):
        rows += [{"window_id": w.key, "model_id": model.id, "model_version": E.ALL_VERSIONS, "metric": "accuracy",
                  "value": acc, "reference_value": 0.8, "n_labelled": 1000}]
    frame = pd.DataFrame(rows)
    failures = E.window_failures(frame, config, [week, month, month_end])
    assert [(f["partition_date"], f["model_id"]) for f in failures] == [(dt.date(2026, 10, 31), model.id),
                                                                         (dt.date(2026, 11, 1), model.id)]
    for f in failures:
        assert set(f) == {"partition_date", "model_id", "check_name", "severity", "value", "threshold", "message",
                          "details"}
        assert f["check_name"] == E.WINDOW_CHECK and f["severity"] == "WARN" and f["threshold"] == 0.95
    assert failures[1]["message"].startswith("week 2026-10-26..11-01: accuracy 0.5 is 62% of the reference's 0.8")
    assert str(tmp_path / "evaluation" / model.id / "week_2026-10-26.html") in failures[1]["message"]
    assert failures[0]["value"] == pytest.approx(0.75) and math.isclose(failures[1]["value"], 0.625)
    assert E.judged_counts(frame, [week, month, month_end], [dt.date(2026, 11, 1), dt.date(2026, 10, 31)]) == {
        dt.date(2026, 11, 1): 1, dt.date(2026, 10, 31): 1}
    quiet = replace(config, evaluation=replace(E.settings(config), alerts=False))
    assert E.window_failures(frame, quiet, [week, month]) == []
