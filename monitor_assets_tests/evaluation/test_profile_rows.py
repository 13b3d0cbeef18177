"""Daily profiles built from the model-day's arrays (`profile_rows`, `stats.profiles.ProfileColumns`) against the
pandas path they replaced, kept here as the oracle: one groupby per version and segmentation, one `build_profile`
per sub-frame, `value_counts` for the category counts, `pd.factorize` for the fairness groups, the logged
probabilities checked row by row per part.

Every row must be the same, the profile's JSON text byte for byte: float sums added in the same row order, category
counts in the same key order (count descending, ties as pandas' unstable sort leaves them), on messy days of a
binary classifier, a regressor and a multiclass model: NaN and +-inf, 1e300 in one segment (the counter rescales),
categories the reference never had, missing ones, tied counts, a one-row segment, two versions in a day,
unlabelled rows, segments pooled beyond the cap.
"""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from monitor_assets.config import FeatureConfig, ModelConfig, SegmentsConfig
from monitor_assets.evaluation import logic as E
from monitor_assets.stats import profiles as P
from monitor_assets.stats.multiclass import MulticlassSums
from monitor_assets.storage.sql import SEGMENT_COLUMN

DAY = dt.date(2026, 10, 5)
CLASSES = ("toys", "books", "garden", "food")
BY = (("market",), ("device",), ("market", "device"))
MARKETS = ["DE", "FR", "UK", "NL", "IT", "ES"]
SHOPS = [f"s{i:02d}" for i in range(26)]  # more than TOP_K: some are the reference's 'other'
TIES = [f"t{i:02d}" for i in range(40)]  # each as common as the next: the order of tied counts matters
CAP = E.SEGMENT_CAP


# ---------------------------------------------------------------------------------------------------------------
# The oracle: profile_rows and build_profile as they were, through pandas per part


def _oracle_categorical(values, bins: P.CategoricalBins, ready: bool = False) -> P.CategoricalColumn:
    return P.CategoricalColumn.from_counts(
        (pd.Series(values) if ready else P.category_text(values)).value_counts().to_dict(), bins)


def _oracle_fairness(groups, predicted, labels, predictions=None, ready=False):
    d = np.asarray(predicted, float) == 1
    y = np.asarray(labels, float)
    lab = np.isfinite(y)
    err = np.abs(np.asarray(predictions, float) - y) if predictions is not None else np.zeros(len(y))
    cells = {"n": np.ones(len(y), bool), "selected": d, "n_labelled": lab, "tp": lab & d & (y == 1),
             "fp": lab & d & (y == 0), "fn": lab & ~d & (y == 1), "tn": lab & ~d & (y == 0)}
    out = {}
    for attribute, values in groups.items():
        codes, names = pd.factorize(pd.Series(values) if ready else P.category_text(values))
        k = len(names)
        sums = [np.bincount(codes, weights=cells[f], minlength=k) for f in P.FAIRNESS_FIELDS[:-1]]
        errors = np.bincount(codes, weights=np.where(lab, err, 0.0), minlength=k)
        out[attribute] = {str(name): [int(v[i]) for v in sums] + [float(errors[i])] for i, name in enumerate(names)}
    return out


def _oracle_multiclass(labels, predicted, probabilities, n_classes):
    y, d = np.asarray(labels, float), np.asarray(predicted, float)
    lab = np.isfinite(y) & np.isfinite(d)
    yl = np.where(y[lab] == np.floor(y[lab]), y[lab], -1).astype(np.int64)
    dl = np.where(d[lab] == np.floor(d[lab]), d[lab], -1).astype(np.int64)
    everything = MulticlassSums.of(yl, dl, n_classes)
    rows = [probabilities[i] for i in np.flatnonzero(lab)] if probabilities is not None else [None] * len(yl)
    usable = np.array([P._usable(r, n_classes) for r in rows], bool)
    if not usable.any():
        return P.MulticlassStats(everything)
    proba = np.array([np.asarray(rows[i], float) for i in np.flatnonzero(usable)])
    part = MulticlassSums.of(yl[usable], dl[usable], n_classes, proba)
    return P.MulticlassStats(MulticlassSums(everything.confusion, part.loss_n, part.loss_sum, part.loss_sq, part.pos,
                                            part.neg))


def _oracle_profile(rows, bins, keys, day, score="score", label="label", predicted=None, probabilities="proba",
                    categories_ready=False):
    numeric = {k: P.NumericColumn.build(rows[k].to_numpy(float), b) for k, b in bins.numeric.items()}
    categorical = {k: _oracle_categorical(rows[k], b, categories_ready) for k, b in bins.categorical.items()}
    binary = regression = multiclass = prediction = None
    fairness = {}
    if bins.task == P.MULTICLASS:
        y = pd.to_numeric(rows[label], errors="coerce").to_numpy(float) if label in rows else np.full(len(rows), np.nan)
        d = pd.to_numeric(rows[predicted], errors="coerce").to_numpy(float)
        names = np.asarray(bins.classes, dtype=object)
        known = np.isfinite(d) & (d >= 0) & (d < len(names)) & (d == np.floor(d))
        shown = np.where(known, names[np.where(known, d, 0).astype(np.int64)],
                         np.where(np.isfinite(d), "code " + pd.Series(d).astype(str).to_numpy(object), None))
        prediction = _oracle_categorical(shown, bins.prediction)
        multiclass = _oracle_multiclass(y, d, rows[probabilities].tolist() if probabilities in rows else None,
                                        len(bins.classes))
    if bins.task in ("binary_classification", "regression"):
        s = rows[score].to_numpy(float)
        y = pd.to_numeric(rows[label], errors="coerce").to_numpy(float) if label in rows else np.full(len(rows), np.nan)
        d = rows[predicted].to_numpy(float) if predicted else None
        if bins.task == "binary_classification":
            binary = P.BinaryStats.build(s, y, bins, d)
            cls = (s >= bins.threshold).astype(float) if d is None else (d == 1).astype(float)
            fairness = _oracle_fairness({a: rows[a] for a in bins.attributes}, cls, y, ready=categories_ready)
        else:
            regression = P.RegressionStats.build(s, y, bins)
            fairness = _oracle_fairness({a: rows[a] for a in bins.attributes}, np.zeros(len(rows)), y, s,
                                        ready=categories_ready)
    return P.Profile(bins.fingerprint, {k: str(v) for k, v in keys.items()}, day, day, 1, len(rows), numeric,
                     categorical, binary, regression, fairness, multiclass, prediction)


def _categories_as_text(frame, bins):
    """The pandas path's conversion, once a day: categorical features and attributes through `category_text`."""
    columns = [c for c in (*bins.categorical, *bins.attributes) if c in frame]
    return frame.assign(**{c: P.category_text(frame[c]).to_numpy(object) for c in columns}) if columns else frame


def _oracle_rows(model, ref, frame, day):
    out = []
    if not len(frame):
        return out
    groups = [(E.WHOLE, None)]
    for cross in model.segments.by:
        column = SEGMENT_COLUMN + E.segment_key(cross)
        if column in frame:
            frame[column] = E.cap_segments(frame[column], cross, ref.kept.get(E.segment_key(cross)))
            groups.append((E.segment_key(cross), column))
    frame = _categories_as_text(frame, ref.bins)
    for version, rows in frame.groupby("model_version", sort=True):
        keys = {"model_id": model.id, "model_version": str(version)}
        for _, column in groups:
            parts = [(E.WHOLE, rows)] if column is None else rows.groupby(column, sort=True)
            for segment, part in parts:
                profile = _oracle_profile(part, ref.bins, {**keys, "segment": str(segment)} if column else keys,
                                          day.isoformat(), predicted=E._predicted(model), categories_ready=True)
                text = json.dumps(profile.to_dict(), separators=(",", ":"))
                out.append({"partition_date": day, "model_id": model.id, "model_version": str(version),
                            "layout": profile.layout, "n_rows": profile.n_rows,
                            "n_labelled": profile.n_labelled, "bytes": len(text.encode()),
                            "profile": text, "error": None, "segment": str(segment)})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Messy model-days


def _model(task: str) -> ModelConfig:
    features = (FeatureConfig("x", "numeric", "features.x"), FeatureConfig("spend", "numeric", "features.spend"),
                FeatureConfig("count", "numeric", "features.count"), FeatureConfig("shop", "categorical", "features.shop"),
                FeatureConfig("tie", "categorical", "features.tie"))
    attributes = () if task == P.MULTICLASS else (FeatureConfig("region", "categorical", "features.region"),)
    return ModelConfig(id=f"m_{task}", task=task, version="1", features=features, sensitive_attributes=attributes,
                       reference_path="", reference_fields={}, score_field="score",
                       segments=SegmentsConfig(by=BY), classes=CLASSES if task == P.MULTICLASS else ())


def _rows(rng: np.random.Generator, n: int, task: str, day: bool) -> pd.DataFrame:
    """Rows as day_rows_sql returns them (numbers as float, categories as text or NULL, segment names)."""
    market = rng.choice(MARKETS + (["PL", "SE", "AT"] if day else []), n)
    if day:
        market[n // 2] = "LU"  # a one-row segment (kept apart while the cap leaves room for the day's new ones)
    device = rng.choice(["mobile", "desktop", "tablet"], n, p=[0.5, 0.4, 0.1])
    x = rng.normal(0, 1, n)
    spend = rng.lognormal(3, 1, n)
    count = rng.integers(0, 6, n).astype(float)
    if day:
        x[rng.random(n) < 0.05] = np.nan
        x[rng.random(n) < 0.01] = np.inf
        x[rng.random(n) < 0.01] = -np.inf
        spend[np.flatnonzero(market == "FR")[:2]] = [1e300, -3e299]  # huge: that part's sums are rescaled
        spend[rng.random(n) < 0.03] = np.nan
    shop = rng.choice(SHOPS + (["never", "seen"] if day else []), n).astype(object)
    if day:
        shop[rng.random(n) < 0.03] = None
        shop[rng.random(n) < 0.02] = np.nan
        shop[rng.random(n) < 0.02] = ""
    tie = np.array(TIES, dtype=object)[rng.permutation(np.arange(n) % len(TIES))]  # equal counts over the day
    region = rng.choice(["north", "south", "east"], n).astype(object)
    if day:
        region[rng.random(n) < 0.05] = None
    logit = 1.5 * np.nan_to_num(x, posinf=3, neginf=-3) - 0.3
    score = 1 / (1 + np.exp(-logit))
    label = (rng.random(n) < score).astype(float)
    predicted = (score >= 0.5).astype(float)
    frame = pd.DataFrame({"x": x, "spend": spend, "count": count, "shop": shop, "tie": tie, "region": region,
                          SEGMENT_COLUMN + "market": "market=" + market, SEGMENT_COLUMN + "device": "device=" + device,
                          SEGMENT_COLUMN + "market,device": "market=" + market + ", device=" + device})
    if task == "regression":
        score = 10 * logit + rng.normal(0, 2, n)
        label = 10 * logit + rng.normal(0, 3, n)
        predicted = np.full(n, np.nan)
    if task == P.MULTICLASS:
        k = len(CLASSES)
        proba = rng.dirichlet(np.ones(k), n)
        label = rng.integers(0, k, n).astype(float)
        predicted = proba.argmax(axis=1).astype(float)
        score = np.full(n, np.nan)
        rows = list(proba)
        if day:
            predicted[rng.random(n) < 0.02] = np.nan
            predicted[rng.random(n) < 0.01] = 7.0  # a code naming no class
            label[rng.random(n) < 0.01] = 2.5
            for i in np.flatnonzero(rng.random(n) < 0.05):
                rows[i] = [None, [0.5, 0.5], np.r_[proba[i][:-1], -0.1], np.r_[np.nan, proba[i][1:]]][i % 4]
        frame = frame.assign(proba=rows)
    if day:
        label[rng.random(n) < 0.2] = np.nan  # not known yet
        if task == "binary_classification":
            score[rng.random(n) < 0.01] = np.nan
    return frame.assign(score=score, label=label, predicted=predicted)


def _reference(model: ModelConfig, frame: pd.DataFrame) -> E.Reference:
    """The evaluation reference as fit_reference makes it (no segment reference for `device`)."""
    bins = P.ProfileBins.from_reference(frame, E.feature_specs(model), model.task,
                                        attributes=tuple(a.name for a in model.sensitive_attributes),
                                        classes=tuple(model.classes), top_k=20)
    kept = {}
    for cross in (("market",), ("market", "device")):
        counts = frame[SEGMENT_COLUMN + E.segment_key(cross)].value_counts()
        kept[E.segment_key(cross)] = [s for _, s in sorted((-int(n), s) for s, n in counts.items())[:E.SEGMENT_CAP]]
    return E.Reference(bins, P.build_profile(frame, bins, {"model_id": model.id}, "reference",
                                             predicted=E._predicted(model)), kept, {})


@pytest.fixture(scope="module", params=["binary_classification", "regression", P.MULTICLASS])
def day(request):
    task = request.param
    rng = np.random.default_rng(len(task))
    model = _model(task)
    reference = _rows(rng, 4000, task, day=False)
    frame = _rows(rng, 3000, task, day=True)
    frame["model_version"] = np.where(rng.random(len(frame)) < 0.7, "2.0", "1.9")  # two versions, interleaved
    return model, _reference(model, reference), frame


def _assert_same(found: list[dict], expected: list[dict]):
    assert len(found) == len(expected)
    for a, b in zip(found, expected, strict=True):
        assert a.keys() == b.keys()
        assert a["profile"] == b["profile"], (a["model_version"], a["segment"])
        assert a == b


@pytest.mark.parametrize("cap", [CAP, 4])
def test_profile_rows_equal_the_pandas_path_byte_for_byte(day, cap, monkeypatch):
    monkeypatch.setattr(E, "SEGMENT_CAP", cap)
    model, ref, frame = day
    ref = E.Reference(ref.bins, ref.profile, {k: v[:cap] for k, v in ref.kept.items()}, {})
    found = E.profile_rows(model, ref, frame.copy(), DAY)
    expected = _oracle_rows(model, ref, frame.copy(), DAY)
    _assert_same(found, expected)
    segments = {r["segment"] for r in found}
    assert {r["model_version"] for r in found} == {"1.9", "2.0"}
    if cap == CAP:
        assert "market=LU" in segments and min(r["n_rows"] for r in found) == 1
    else:  # beyond the cap, pooled
        assert {"market=(other)", "market=(other), device=(other)"} <= segments
    # what the data was meant to hold, so the comparison means something
    whole = [json.loads(r["profile"]) for r in found if r["segment"] == ""]
    assert any(p["numeric"]["spend"]["scale"] > 1 for p in whole)  # a rescaled counter
    assert any(p["categorical"]["shop"]["unseen"] and p["categorical"]["shop"]["n_missing"] for p in whole)
    assert sum(r["n_labelled"] for r in found if r["segment"] == "") < len(frame)


def test_profile_rows_of_an_empty_day_and_of_one_row(day):
    model, ref, frame = day
    assert E.profile_rows(model, ref, frame.iloc[:0].copy(), DAY) == []
    one = frame.iloc[[5]].reset_index(drop=True)
    _assert_same(E.profile_rows(model, ref, one.copy(), DAY), _oracle_rows(model, ref, one.copy(), DAY))


def test_days_profiled_together_equal_each_day_profiled_alone(day, monkeypatch):
    """`profile_rows_of_days` (a backfill's batch of days, columns made once): each day's rows equal the pandas
    path on that day's rows alone, byte for byte, with the days' rows interleaved, a day of one row, a day without
    rows, and a cap of 4 segments with room for 2 the reference never had: each day keeps its own largest."""
    monkeypatch.setattr(E, "SEGMENT_CAP", 4)
    model, ref, frame = day
    ref = E.Reference(ref.bins, ref.profile, {k: v[:2] for k, v in ref.kept.items()}, {})  # room for 2 new
    days = [DAY + dt.timedelta(days=k) for k in range(4)]
    rng = np.random.default_rng(11)
    which = rng.choice([0, 1], len(frame), p=[0.6, 0.4])
    which[len(frame) // 3] = 3  # day 3: one row; day 2: none
    market = frame[SEGMENT_COLUMN + "market"].to_numpy()
    first = E.cap_segments(pd.Series(market[which == 0]), ("market",), ref.kept["market"])
    taken = sorted(set(first) - set(ref.kept["market"]) - {"market=(other)"})[0]
    which[(which == 1) & (market == taken)] = 0  # day 1 lacks a segment day 0 keeps: it keeps another
    batch = frame.assign(**{E.DAY_COLUMN: pd.to_datetime([days[k] for k in which])})
    together = E.profile_rows_of_days(model, ref, batch.copy(), days)
    assert list(together) == days and together[days[2]] == [] and len(together[days[3]]) > 0
    pooled = []
    for k, d in enumerate(days):
        alone = frame[which == k].reset_index(drop=True)
        _assert_same(together[d], _oracle_rows(model, ref, alone.copy(), d))
        pooled.append({r["segment"] for r in together[d]})
    assert pooled[0] != pooled[1] and f"{taken}" in pooled[0]  # each day's own cap


def test_build_profile_on_a_frame_equals_the_pandas_path(day):
    """The DataFrame API (reference profiles, tests) on raw values; also on a frame made from a 2-d array, whose
    columns are strided views: their float sums must stay those of the same (strided) values."""
    model, ref, frame = day
    predicted = E._predicted(model)
    for rows in (frame, frame[frame.model_version == "1.9"]):
        a = P.build_profile(rows, ref.bins, {"model_id": "m"}, "d", predicted=predicted)
        b = _oracle_profile(rows, ref.bins, {"model_id": "m"}, "d", predicted=predicted)
        assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    numbers = ["x", "spend", "count", "score", "label", "predicted"]
    strided = pd.DataFrame(np.ascontiguousarray(frame[numbers].to_numpy()), columns=numbers)
    for column in frame.columns.difference(numbers):
        strided[column] = frame[column].to_numpy()
    assert not strided.x.to_numpy(float).flags.c_contiguous
    a = P.build_profile(strided, ref.bins, {}, "d", predicted=predicted)
    b = _oracle_profile(strided, ref.bins, {}, "d", predicted=predicted)
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())


@pytest.mark.parametrize("seed", range(20))
def test_category_counts_keep_pandas_order_under_ties(seed):
    """`counts` key order: pandas' value_counts order, ties included (an unstable sort past 16 categories)."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(int(rng.integers(1, 60)))]
    values = np.array(names, dtype=object)[rng.integers(0, len(names), int(rng.integers(1, 400)))]
    values[rng.random(len(values)) < 0.05] = None
    bins = P.CategoricalBins(tuple(names[: len(names) // 2 + 1]), frozenset(names[:-3]))
    a, b = P.CategoricalColumn.build(values, bins), _oracle_categorical(values, bins)
    assert list(a.to_dict()["counts"].items()) == list(b.to_dict()["counts"].items())
    assert a.to_dict() == b.to_dict()
    groups = {"g": values, "h": np.array(names, dtype=object)[rng.integers(0, len(names), len(values))]}
    y = np.where(rng.random(len(values)) < 0.2, np.nan, rng.integers(0, 2, len(values)))
    d, s = rng.integers(0, 2, len(values)), rng.normal(size=len(values))
    assert json.dumps(P.fairness_counts(groups, d, y, s)) == json.dumps(_oracle_fairness(groups, d, y, s))
