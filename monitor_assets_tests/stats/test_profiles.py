"""Mergeable profiles: a merged window against scikit-learn / numpy / scipy / fairlearn on the window's raw rows."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from monitor_assets.stats import drift as D
from monitor_assets.stats import fairness as F
from monitor_assets.stats import profiles as P

FEATURES = [D.FeatureSpec("x", "numeric"), D.FeatureSpec("spend", "numeric"), D.FeatureSpec("shop", "categorical")]
SHOPS = [f"s{i:02d}" for i in range(30)]


def day_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    x = rng.normal(shift, 1, n)
    spend = rng.lognormal(3, 1, n)
    spend[rng.random(n) < 0.05] = np.nan
    weights = np.arange(30, 0, -1, dtype=float)
    shop = rng.choice(SHOPS + ["new"], n, p=np.r_[weights, 3 * shift + 1e-9] / (weights.sum() + 3 * shift + 1e-9))
    shop = np.where(rng.random(n) < 0.02, None, shop)
    logit = 1.2 * x - 0.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    score = 1 / (1 + np.exp(-(logit + rng.normal(0, 0.8, n))))
    label[rng.random(n) < 0.1] = np.nan  # not known yet
    target = 2 * x + 0.01 * np.nan_to_num(spend) + rng.normal(0, 1, n) + 50
    return pd.DataFrame({"x": x, "spend": spend, "shop": shop, "score": score, "label": label,
                         "prediction": target + rng.normal(0, 0.7, n), "target": target,
                         "region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])})


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(7)
    reference = day_rows(rng, 20_000)
    bins = P.ProfileBins.from_reference(reference, FEATURES, task="binary_classification", threshold=0.5,
                                        attributes=("region",), top_k=10)
    days = [day_rows(rng, int(rng.integers(200, 900)), shift=0.3 if i >= 20 else 0.0) for i in range(30)]
    profiles = [P.build_profile(d, bins, {"model_id": "fraud", "segment": "web"}, f"2026-10-{i + 1:02d}")
                for i, d in enumerate(days)]
    return reference, bins, days, profiles


def test_merged_counts_and_classifier_metrics_equal_the_raw_rows(window):
    _, bins, days, profiles = window
    merged = P.merge(profiles)
    raw = pd.concat(days, ignore_index=True)
    assert (merged.start, merged.end, merged.days, merged.n_rows) == ("2026-10-01", "2026-10-30", 30, len(raw))
    lab = raw.label.notna()
    y, s = raw.label[lab].to_numpy(), raw.score[lab].to_numpy()
    d = (s >= 0.5).astype(int)
    m = merged.metrics()
    assert m["n_labelled"] == lab.sum()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, d), rel=1e-15)
    assert m["precision"] == pytest.approx(skm.precision_score(y, d), rel=1e-15)
    assert m["recall"] == pytest.approx(skm.recall_score(y, d), rel=1e-15)
    assert m["f1"] == pytest.approx(skm.f1_score(y, d), rel=1e-15)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, s), rel=1e-12)
    assert m["brier_score"] == pytest.approx(skm.brier_score_loss(y, s), rel=1e-12)
    assert m["predicted_positive_rate"] == pytest.approx(np.mean(raw.score >= 0.5), rel=1e-15)
    auc = skm.roc_auc_score(y, s)
    assert abs(m["roc_auc"] - auc) <= m["roc_auc_bound"] and m["roc_auc_bound"] < 0.01
    # numeric and categorical counts
    spend = raw.spend.to_numpy()
    col = merged.numeric["spend"]
    assert (col.n, col.n_missing, col.minimum, col.maximum) == (len(raw), np.isnan(spend).sum(), np.nanmin(spend),
                                                                np.nanmax(spend))
    assert col.summary().mean == pytest.approx(np.nanmean(spend), rel=1e-12)
    assert col.summary().std == pytest.approx(np.nanstd(spend, ddof=1), rel=1e-9)
    assert col.counts.sum() == col.n_valid
    shop = merged.categorical["shop"]
    counts = raw.shop.value_counts()
    assert shop.counts == {c: counts[c] for c in bins.categorical["shop"].tracked if c in counts}
    assert shop.unseen == counts.get("new", 0) > 0 and shop.n_missing == raw.shop.isna().sum()
    assert shop.other == counts.drop(list(bins.categorical["shop"].tracked) + ["new"], errors="ignore").sum()


def test_merged_regression_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    reference = day_rows(rng, 5000)
    bins = P.ProfileBins.from_reference(reference, FEATURES, task="regression", label="target")
    days = [day_rows(rng, 300 + 50 * i) for i in range(12)]
    merged = P.merge([P.build_profile(d, bins, {"model_id": "demand"}, f"2026-11-{i + 1:02d}", score="prediction",
                                      label="target") for i, d in enumerate(days)])
    raw = pd.concat(days)
    m = merged.metrics()
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(raw.target, raw.prediction), rel=1e-12)
    assert m["rmse"] == pytest.approx(skm.root_mean_squared_error(raw.target, raw.prediction), rel=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(raw.target, raw.prediction), rel=1e-12)
    assert m["mean_error"] == pytest.approx(np.mean(raw.prediction - raw.target), rel=1e-9)
    assert merged.regression.shift == pytest.approx(reference.target.mean())  # labels summed around it


def test_quantiles_lie_within_their_stated_bounds(window):
    _, bins, days, profiles = window
    merged = P.merge(profiles)
    raw = pd.concat(days)
    for name in ("x", "spend"):
        values = raw[name].dropna().to_numpy()
        for q in (0.0, 0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0):
            estimate, lower, upper = P.quantile(merged.numeric[name], bins.numeric[name], q)
            true = np.quantile(values, q)
            assert lower <= true <= upper and lower <= estimate <= upper
        # the bound is the width of one reference bin in the middle: the median is known to about 0.15 sd
        _, lower, upper = P.quantile(merged.numeric["x"], bins.numeric["x"], 0.5)
        assert upper - lower < 0.2


def _drift_profile(reference: pd.Series, nb: P.NumericBins) -> D.NumericProfile:
    counter = D.NumericCounter(nb.lo, nb.hi, nb.fine)
    counter.add(reference.to_numpy(float))
    return D.NumericProfile(nb.lo, nb.hi, nb.fine, counter.result(), list(nb.psi_cuts))


def test_numeric_distances_from_profiles_equal_drift_or_lie_within_their_bounds(window):
    reference, bins, days, profiles = window
    ref_profile = P.build_profile(reference, bins, {"model_id": "fraud"}, "reference")
    for first, last in ((0, 7), (20, 30), (0, 30)):  # a stable week, the shifted days, the month
        merged = P.merge(profiles[first:last])
        raw = pd.concat(days[first:last])
        for name in ("x", "spend"):
            nb = bins.numeric[name]
            out = P.numeric_distances(ref_profile.numeric[name], merged.numeric[name], nb)
            counter = D.NumericCounter(nb.lo, nb.hi, nb.fine)
            counter.add(raw[name].to_numpy(float))
            expected = D.numeric_drift(D.FeatureSpec(name, "numeric"), _drift_profile(reference[name], nb),
                                       counter.result()).all_statistics
            assert out["psi"] == pytest.approx(expected["psi"], rel=1e-12)  # error 0
            assert out["jensenshannon"] == pytest.approx(expected["jensenshannon"], rel=1e-12)
            r, c = reference[name].dropna(), raw[name].dropna()
            ks = stats.ks_2samp(r, c).statistic
            assert out["ks"] <= ks + 1e-12 and ks - out["ks"] <= out["ks_bound"]
            w1 = stats.wasserstein_distance(r, c) / r.std()
            assert abs(out["wasserstein"] - w1) <= out["wasserstein_bound"]
            # without the KS p-value (the windows' fast path) every other figure is the same
            quick = P.numeric_distances(ref_profile.numeric[name], merged.numeric[name], nb, p_values=False)
            assert np.isnan(quick.pop("ks_p_value"))
            assert quick == {k: v for k, v in out.items() if k != "ks_p_value"}
        if first == 20:
            assert P.numeric_distances(ref_profile.numeric["x"], merged.numeric["x"], bins.numeric["x"])[
                "wasserstein"] > 0.2  # the shifted days are seen


def test_categorical_distances_equal_drift_when_all_categories_are_tracked_else_lie_within_the_bound(window):
    reference, bins, days, profiles = window
    raw = pd.concat(days[20:])
    drift_ref = D.CategoricalProfile(P.as_text(reference.shop).fillna(D.MISSING).value_counts().to_dict())
    expected = D.categorical_drift(D.FeatureSpec("shop", "categorical"), drift_ref,
                                   P.as_text(raw.shop).fillna(D.MISSING).value_counts().to_dict()).all_statistics
    # all 30 reference categories tracked: JS and chi-square equal drift.py's
    full = P.ProfileBins.from_reference(reference, FEATURES, top_k=50)
    cb = full.categorical["shop"]
    ref_col = P.CategoricalColumn.build(reference.shop, cb)
    cur_col = P.CategoricalColumn.merge([P.CategoricalColumn.build(d.shop, cb) for d in days[20:]])
    out = P.categorical_distances(ref_col, cur_col, cb)
    assert out["jensenshannon"] == pytest.approx(expected["jensenshannon"], rel=1e-12)
    assert out["jensenshannon_bound"] == 0.0
    assert out["chisquare"] == pytest.approx(expected["chisquare"], rel=1e-12)
    assert out["chisquare_p_value"] == pytest.approx(expected["chisquare_p_value"], rel=1e-9)
    # ten tracked: JS from the pooled counts is at most the bound below the exact value
    cb = bins.categorical["shop"]
    out = P.categorical_distances(P.CategoricalColumn.build(reference.shop, cb),
                                  P.merge(profiles[20:]).categorical["shop"], cb)
    assert out["jensenshannon"] <= expected["jensenshannon"] <= out["jensenshannon"] + out["jensenshannon_bound"]


def test_merge_is_order_independent_and_associative(window):
    _, _, _, profiles = window
    a, b, c = P.merge(profiles[:9]), P.merge(profiles[9:17]), P.merge(profiles[17:])
    assert P.merge([a, b, c]).to_dict() == P.merge([c, a, b]).to_dict() == P.merge([b, c, a]).to_dict()
    left, right = P.merge([P.merge([a, b]), c]).to_dict(), P.merge([a, P.merge([b, c])]).to_dict()

    def flat(d, path=""):
        if isinstance(d, dict):
            return {k: v for key, sub in d.items() for k, v in flat(sub, f"{path}/{key}").items()}
        if isinstance(d, list):
            return {k: v for i, sub in enumerate(d) for k, v in flat(sub, f"{path}[{i}]").items()}
        return {path: d}

    fl, fr = flat(left), flat(right)
    assert fl.keys() == fr.keys()
    for k in fl:  # counts exactly; float sums to the last bits
        assert fl[k] == fr[k] if not isinstance(fl[k], float) else fl[k] == pytest.approx(fr[k], rel=1e-14)


def test_profiles_round_trip_through_json_and_refuse_another_layout(window):
    reference, bins, _, profiles = window
    text = json.dumps(profiles[3].to_dict())
    again = P.Profile.from_dict(json.loads(text))
    assert again.to_dict() == profiles[3].to_dict()
    assert P.ProfileBins.from_dict(json.loads(json.dumps(bins.to_dict()))).fingerprint == bins.fingerprint
    other = P.ProfileBins.from_reference(reference.iloc[:5000], FEATURES, task="binary_classification")
    with pytest.raises(ValueError, match="different layouts"):
        P.merge([profiles[0], P.build_profile(reference.iloc[:100], other, {"model_id": "fraud"}, "2026-10-01")])
    seg = P.build_profile(reference.iloc[:100], bins, {"model_id": "fraud", "segment": "app"}, "2026-10-01")
    assert P.merge([profiles[0], seg]).keys == {"model_id": "fraud", "segment": "*"}


def test_merged_fairness_counts_give_fairlearns_disparities(window):
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    _, _, days, profiles = window
    merged = P.merge(profiles)
    raw = pd.concat(days, ignore_index=True)
    table = F.fairness_table(P.fairness_frame(merged.fairness), classifier=True)
    selected = (raw.score >= 0.5).astype(int)
    crosstab = raw.groupby("region").size()
    assert {g: v[0] for g, v in merged.fairness["region"].items()} == crosstab.to_dict()
    assert table.demographic_parity_difference.iloc[0] == pytest.approx(
        demographic_parity_difference(selected, selected, sensitive_features=raw.region), rel=1e-12)
    lab = raw.label.notna()
    assert table.equalized_odds_difference.iloc[0] == pytest.approx(
        equalized_odds_difference(raw.label[lab], selected[lab], sensitive_features=raw.region[lab]), rel=1e-12)


def test_columns_from_the_drift_sql_counts_equal_columns_from_the_rows(window):
    import duckdb

    from monitor_assets.analysis import queries as Q

    _, bins, days, profiles = window
    con = duckdb.connect()
    con.register("day", days[0])
    grids = {name: (b.lo, b.hi, b.fine) for name, b in bins.numeric.items()}
    counted = Q.count_histograms(con, "SELECT * FROM day", grids, ["shop"])
    for name, b in bins.numeric.items():
        values = days[0][name]
        column = P.NumericColumn.from_counts(counted[name], b, values.min(), values.max())
        assert column.to_dict() == profiles[0].numeric[name].to_dict()
    shop = P.CategoricalColumn.from_counts(counted["shop"], bins.categorical["shop"])
    assert shop.to_dict() == profiles[0].categorical["shop"].to_dict()


def test_segment_profiles_merge_into_the_whole_days_profile(window):
    _, bins, days, profiles = window
    day = days[4]
    parts = [P.build_profile(day[day.region == r], bins, {"model_id": "fraud", "segment": r}, "2026-10-05")
             for r in ("north", "south", "east")]
    total, whole = P.merge(parts), profiles[4]
    assert total.keys == {"model_id": "fraud", "segment": "*"}
    a, b = total.binary.to_dict(), whole.binary.to_dict()
    for key in a:
        assert a[key] == (pytest.approx(b[key], rel=1e-12) if isinstance(a[key], float) else b[key])
    for name in bins.numeric:
        a, b = total.numeric[name].to_dict(), whole.numeric[name].to_dict()
        assert a["counts"] == b["counts"] and (a["n"], a["min"], a["max"]) == (b["n"], b["min"], b["max"])
        assert a["sum"] == pytest.approx(b["sum"], rel=1e-12)
    assert total.categorical["shop"].to_dict() == whole.categorical["shop"].to_dict()


def test_huge_values_merge_to_finite_sums_and_the_right_spread():
    values = np.array([1.0, 2.0, 3.0, 4.0])
    nb = P.NumericBins.from_values(values)
    small = P.NumericColumn.build(values, nb)
    huge = P.NumericColumn.build(values * 1e200, nb)  # squares overflow a double: summed scaled by a power of 2
    merged = P.NumericColumn.merge([small, huge]).summary()
    both = np.r_[values, values * 1e200] / 1e200  # numpy on data scaled down by hand
    assert np.isfinite(merged.total * merged.scale)
    assert merged.mean == pytest.approx(np.mean(both) * 1e200, rel=1e-12)
    assert merged.std == pytest.approx(np.std(both, ddof=1) * 1e200, rel=1e-9)


def test_a_typical_profile_is_a_few_kilobytes():
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(10)})
    frame["c0"], frame["c1"] = rng.choice(SHOPS, n), rng.choice(["ios", "android", "web"], n)
    frame["score"], frame["label"] = rng.random(n), (rng.random(n) < 0.3).astype(float)
    frame["region"] = rng.choice(["north", "south"], n)
    features = [D.FeatureSpec(f"x{i}", "numeric") for i in range(10)] + [D.FeatureSpec("c0", "categorical"),
                                                                        D.FeatureSpec("c1", "categorical")]
    bins = P.ProfileBins.from_reference(frame, features, task="binary_classification", attributes=("region",))
    profile = P.build_profile(frame, bins, {"model_id": "m"}, "2026-10-01")
    assert all(len(c.counts) <= P.BINS + 2 + D.PSI_BINS for c in profile.numeric.values())
    assert P.profile_size(profile) < 12_000


CLASSES = ("books", "electronics", "fashion", "home")


def multiclass_rows(rng: np.random.Generator, n: int, tilt: float = 0.0) -> pd.DataFrame:
    """A categoriser's day: softmax probabilities (some rows without them), the argmax as predicted code (a few
    unknown codes), labels drawn from the probabilities (some not known yet, a few naming an unknown class)."""
    logits = rng.normal(0, 1.5, (n, len(CLASSES))) + np.array([tilt, 0, 0, -tilt])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(len(CLASSES), p=row) for row in p], float)
    pred = p.argmax(axis=1).astype(float)
    pred[rng.random(n) < 0.01] = 7  # a class the model does not know
    y[rng.random(n) < 0.01] = -1
    y[rng.random(n) < 0.1] = np.nan
    proba = [None if rng.random() < 0.1 else list(row) for row in p]
    return pd.DataFrame({"x": rng.normal(tilt, 1, n), "label": y, "predicted": pred, "proba": proba})


def test_merged_multiclass_profile_equals_scikit_learn_on_the_window_rows():
    rng = np.random.default_rng(5)
    features = [D.FeatureSpec("x", "numeric")]
    reference = multiclass_rows(rng, 3000)
    bins = P.ProfileBins.from_reference(reference, features, task=P.MULTICLASS, classes=CLASSES)
    days = [multiclass_rows(rng, 400 + 50 * i, tilt=0.2 * i) for i in range(5)]
    profiles = [P.Profile.from_dict(json.loads(json.dumps(
        P.build_profile(d, bins, {"model_id": "m"}, f"2025-01-0{i + 1}", predicted="predicted").to_dict())))
        for i, d in enumerate(days)]
    merged = P.merge(profiles[::-1])  # the order of the days does not matter
    got = merged.metrics()
    rows = pd.concat(days, ignore_index=True)
    lab = rows[rows.label.notna()]
    y, d = lab.label.to_numpy(int), lab.predicted.to_numpy(int)
    present = sorted(set(y) | set(d))  # as stats.multiclass: unknown codes are classes of their own for sklearn
    assert got["n_labelled"] == len(lab)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, d), abs=1e-12)
    known = [c for c in present if 0 <= c < len(CLASSES)]
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, d, labels=known, average="macro"), abs=1e-12)
    assert got["f1_weighted"] == pytest.approx(
        skm.f1_score(y, d, labels=known, average="weighted"), abs=1e-12)
    assert got["precision"] == pytest.approx(skm.precision_score(y, d, labels=known, average="macro",
                                                                 zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(skm.recall_score(y, d, labels=known, average="macro",
                                                           zero_division=0), abs=1e-12)
    # log loss and AUC over the rows that logged probabilities and name a known class
    with_p = lab[lab.proba.notna() & lab.label.between(0, len(CLASSES) - 1)]
    proba = np.array(with_p.proba.tolist())
    assert got["log_loss"] == pytest.approx(skm.log_loss(with_p.label.astype(int), proba, labels=range(4)), rel=1e-12)
    with_p_all = lab[lab.proba.notna()]  # an unknown label is a negative for every class's AUC
    pa = np.array(with_p_all.proba.tolist())
    exact = np.mean([skm.roc_auc_score(with_p_all.label.to_numpy() == k, pa[:, k]) for k in range(4)])
    assert abs(got["roc_auc"] - exact) <= got["roc_auc_bound"] + 1e-12
    assert 0 < got["roc_auc_bound"] < 0.01
    # the predicted class's distribution: names, the unknown code apart, drift exact against the raw counts
    assert merged.prediction.n == len(rows) and merged.prediction.unseen == int((rows.predicted == 7).sum())
    assert merged.prediction.counts == {c: int((rows.predicted == k).sum()) for k, c in enumerate(CLASSES)}
    ref = P.build_profile(reference, bins, {}, "reference", predicted="predicted")
    js = P.categorical_distances(ref.prediction, merged.prediction, bins.prediction)["jensenshannon"]
    names = lambda f: f.predicted.map(dict(enumerate(CLASSES))).fillna("other")  # noqa: E731
    a, b = names(reference).value_counts(), names(rows).value_counts()
    keys = sorted(set(a.index) | set(b.index))
    from scipy.spatial.distance import jensenshannon
    assert js == pytest.approx(jensenshannon(a.reindex(keys, fill_value=0), b.reindex(keys, fill_value=0), base=2),
                               abs=1e-9)
    assert merged.fairness == {} and bins.attributes == ()


def test_a_multiclass_layout_keeps_other_layouts_fingerprints():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=200), "score": rng.random(200), "label": rng.integers(0, 2, 200)})
    bins = P.ProfileBins.from_reference(frame, [D.FeatureSpec("x", "numeric")], task="binary_classification")
    assert "classes" not in bins.to_dict()  # a stored binary layout keeps its fingerprint
    mc = P.ProfileBins.from_reference(frame, [D.FeatureSpec("x", "numeric")], task=P.MULTICLASS, classes=("a", "b"))
    assert P.ProfileBins.from_dict(mc.to_dict()) == mc and mc.fingerprint != bins.fingerprint
    with pytest.raises(ValueError, match="at least 2 class names"):
        P.ProfileBins.from_reference(frame, [D.FeatureSpec("x", "numeric")], task=P.MULTICLASS, classes=("a",))


def test_a_days_columns_made_once_give_each_slice_the_profile_of_its_own_rows(window):
    """`ProfileColumns.of` once a day, then `profile_of` per part (what daily profiles do for all segments), gives
    every slice the profile `build_profile` makes from its rows alone: messy categories (None, NaN, '', numbers,
    '1' and 1.0) and sensitive-attribute groups included, categories numbered as the slice alone numbers them."""
    _, bins, days, _ = window
    day = days[7].copy()
    messy = np.array([None, np.nan, "", 3, 1.0, "1", "s00", "s01"], dtype=object)
    day["shop"] = np.where(np.arange(len(day)) % 5 == 0, messy[np.arange(len(day)) % len(messy)], day.shop)
    day.loc[day.index[::7], "region"] = None
    columns = P.ProfileColumns.of(day, bins)
    assert day.shop.isna().any()  # the day itself is left as it was
    for part in ("north", "south", "east", None):
        raw = day if part is None else day[(day.region == part).to_numpy()]
        rows = None if part is None else np.flatnonzero((day.region == part).to_numpy())
        a = P.build_profile(raw, bins, {"model_id": "m"}, "2026-10-08")
        b = P.profile_of(columns, rows, {"model_id": "m"}, "2026-10-08")
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())  # key order too
    shop = P.profile_of(columns, None, {}, "d").categorical["shop"].to_dict()
    assert shop["n_missing"] == day.shop.isin([None, ""]).sum() + day.shop.map(lambda v: v != v).sum() > 0
    assert shop["n"] == len(day)
