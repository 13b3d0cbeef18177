"""Ranking metrics: hand-computed cases, scikit-learn's `ndcg_score` and `average_precision_score`, and a
plain per-request loop written from the definitions (not from the vectorised code)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, ndcg_score

from monitor_assets.stats.ranking import (
    ItemCounts,
    RankingSums,
    below_floor_p_value,
    catalogue_metrics,
    item_codes,
    item_distribution_drift,
    metric_names,
    ranking_sums,
    ranks_from_scores,
    request_loss,
    request_metrics,
    score_drift,
)
from monitor_assets.stats.trigger import Moments

L3 = math.log2(3)


def hand_case():
    """Request 'a': ranks 1-4, grades 0, 2, 0, 1. Request 'b': nothing relevant, ranks with a gap
    (1, 2, 5). Request 'c': one item, relevant. Rows shuffled."""
    rows = [("a", 1, 0), ("a", 2, 2), ("a", 3, 0), ("a", 4, 1), ("b", 1, 0), ("b", 2, 0), ("b", 5, 0), ("c", 1, 1)]
    order = [5, 0, 7, 3, 1, 6, 2, 4]
    rows = [rows[i] for i in order]
    req, rank, rel = (np.array(x) for x in zip(*rows, strict=True))
    return req, rank, rel


def by_request(m, name):
    return dict(zip(m.requests.tolist(), m.values[name].tolist(), strict=True))


def test_hand_computed_metrics():
    req, rank, rel = hand_case()
    m = request_metrics(req, rel, rank=rank, ks=(1, 3, 5))
    assert dict(zip(m.requests.tolist(), m.n_items.tolist(), strict=True)) == {"a": 4, "b": 3, "c": 1}
    expected = {
        "precision@1": (0, 0, 1), "precision@3": (1 / 3, 0, 1 / 3), "precision@5": (2 / 5, 0, 1 / 5),
        "recall@1": (0, 0, 1), "recall@3": (1 / 2, 0, 1), "recall@5": (1, 0, 1),
        # AP@k = sum of precision@i at relevant i <= k, over min(k, R)
        "map@1": (0, 0, 1), "map@3": ((1 / 2) / 2, 0, 1), "map@5": ((1 / 2 + 2 / 4) / 2, 0, 1),
        "hit_rate@1": (0, 0, 1), "hit_rate@3": (1, 0, 1), "hit_rate@5": (1, 0, 1),
        "mrr@1": (0, 0, 1), "mrr@3": (1 / 2, 0, 1), "mrr": (1 / 2, 0, 1),
        "ndcg@1": (0, 0, 1), "ndcg@3": ((2 / L3) / (2 + 1 / L3), 0, 1),
        "ndcg@5": ((2 / L3 + 1 / math.log2(5)) / (2 + 1 / L3), 0, 1),
    }
    for name, (a, b, c) in expected.items():
        assert by_request(m, name) == pytest.approx({"a": a, "b": b, "c": c}), name
    # No relevant item: counted as 0 by default (as ndcg_score), left out with "exclude".
    assert m.mean("map@5") == pytest.approx((0.5 + 0 + 1) / 3)
    assert m.mean("map@5", "exclude") == pytest.approx((0.5 + 1) / 2)
    exp = request_metrics(req, rel, rank=rank, ks=(3,), gain="exponential")
    assert by_request(exp, "ndcg@3")["a"] == pytest.approx((3 / L3) / (3 + 1 / L3))


def test_map_normalises_by_min_of_k_and_relevant():
    m = request_metrics([0, 0, 0], [1, 0, 1], rank=[1, 2, 3], ks=(1, 3))
    assert m.values["map@1"][0] == 1.0  # one slot, filled with a relevant item: perfect at k = 1
    assert m.values["map@3"][0] == pytest.approx((1 + 2 / 3) / 2)


def test_logged_rank_wins_over_score():
    req = np.array([1, 1, 1])
    rel = np.array([0, 0, 1])
    score = np.array([0.1, 0.2, 0.9])  # the score would put the relevant item first
    m = request_metrics(req, rel, rank=np.array([1, 2, 3]), score=score, ks=(1,))
    assert m.values["mrr"][0] == pytest.approx(1 / 3)
    assert request_metrics(req, rel, score=score, ks=(1,)).values["mrr"][0] == 1.0


def test_score_ties_stable_order_and_sklearn_average():
    req = np.zeros(3, int)
    rel = np.array([0, 0, 1])
    score = np.array([0.5, 0.9, 0.5])
    # Stable: the tie between rows 0 and 2 keeps the rows' order, so the relevant row 2 is third.
    np.testing.assert_array_equal(ranks_from_scores(req, score), [2, 1, 3])
    first = request_metrics(req, rel, score=score, ks=(3,), ties="first")
    assert first.values["mrr"][0] == pytest.approx(1 / 3)
    assert first.values["ndcg@3"][0] == pytest.approx(0.5)
    avg = request_metrics(req, rel, score=score, ks=(2, 3), ties="average")
    assert avg.values["ndcg@3"][0] == pytest.approx((1 / L3 + 1 / 2) / 2)
    assert avg.values["ndcg@3"][0] == pytest.approx(ndcg_score([rel], [score], k=3))
    assert avg.values["ndcg@2"][0] == pytest.approx(ndcg_score([rel], [score], k=2))
    assert avg.values["mrr"][0] == pytest.approx(1 / 3)  # other metrics keep the stable order


def test_missing_scores_rank_last():
    np.testing.assert_array_equal(ranks_from_scores([7, 7, 7], [np.nan, 0.2, 0.1]), [3, 1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_req, n_items = 300, 10
    rel = rng.integers(0, 4, (n_req, n_items)).astype(float)
    rel[rng.random(n_req) < 0.3] = 0  # requests with no relevant item
    score = rng.integers(0, 4, (n_req, n_items)).astype(float)  # many ties
    req = np.repeat(np.arange(n_req), n_items)
    perm = rng.permutation(req.size)
    ks = (1, 3, 5, 10, 20)
    m = request_metrics(req[perm], rel.ravel()[perm], score=score.ravel()[perm], ks=ks, ties="average")
    exp = request_metrics(req[perm], rel.ravel()[perm], score=score.ravel()[perm], ks=ks, ties="average",
                          gain="exponential")
    for k in ks:
        assert m.mean(f"ndcg@{k}") == pytest.approx(ndcg_score(rel, score, k=k), rel=1e-12)
        assert exp.mean(f"ndcg@{k}") == pytest.approx(ndcg_score(2 ** rel - 1, score, k=k), rel=1e-12)
    # With a logged rank (no ties), the order is the rank's.
    rank = rng.permuted(np.tile(np.arange(1, n_items + 1), (n_req, 1)), axis=1)
    by_rank = request_metrics(req, rel.ravel(), rank=rank.ravel(), ks=(5,))
    assert by_rank.mean("ndcg@5") == pytest.approx(ndcg_score(rel, -rank, k=5), rel=1e-12)


def test_lists_shorter_than_k_equal_sklearn_per_request():
    rng = np.random.default_rng(7)
    lengths = rng.integers(2, 13, 200)
    req = np.repeat(np.arange(len(lengths)), lengths)
    rel = rng.integers(0, 3, req.size).astype(float)
    score = rng.random(req.size)
    m = request_metrics(req, rel, score=score, ks=(5, 10))
    for k in (5, 10):
        want = [ndcg_score([rel[req == i]], [score[req == i]], k=k) for i in range(len(lengths))]
        np.testing.assert_allclose(m.values[f"ndcg@{k}"], want, rtol=1e-12)


def reference_loop(lists, ks):
    """Each request's metrics from the definitions, one list at a time (grades in shown order)."""
    out = {name: [] for name in metric_names(ks)}
    for grades in lists:
        hit = [g > 0 for g in grades]
        n_rel = sum(hit)
        first = next((i for i, h in enumerate(hit) if h), None)
        for k in ks:
            top = hit[:k]
            out[f"precision@{k}"].append(sum(top) / k)
            out[f"recall@{k}"].append(sum(top) / n_rel if n_rel else 0.0)
            ap = sum(sum(hit[:i + 1]) / (i + 1) for i in range(len(top)) if top[i])
            out[f"map@{k}"].append(ap / min(k, n_rel) if n_rel else 0.0)
            out[f"hit_rate@{k}"].append(float(any(top)))
            out[f"mrr@{k}"].append(1 / (first + 1) if first is not None and first < k else 0.0)
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(grades[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades, reverse=True)[:k]))
            out[f"ndcg@{k}"].append(dcg / idcg if idcg else 0.0)
        out["mrr"].append(1 / (first + 1) if first is not None else 0.0)
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_randomized_against_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 15, 400)
    lists = [list(rng.choice([0, 0, 0, 1, 2, 3], n).astype(float)) for n in lengths]
    ks = (1, 2, 5, 10)
    req, rank, rel = [], [], []
    for i, grades in enumerate(lists):
        shown = np.sort(rng.choice(100, len(grades), replace=False)) + 1  # logged ranks with gaps
        req += [f"r{i}"] * len(grades)
        rank += shown.tolist()
        rel += grades
    perm = rng.permutation(len(req))
    m = request_metrics(np.array(req)[perm], np.array(rel)[perm], rank=np.array(rank)[perm], ks=ks)
    order = [int(r[1:]) for r in m.requests]
    want = reference_loop([lists[i] for i in order], ks)
    for name in metric_names(ks):
        np.testing.assert_allclose(m.values[name], want[name], rtol=1e-12, atol=1e-15, err_msg=name)
    # MAP over the whole list is scikit-learn's average precision of each request with a relevant item.
    full = request_metrics(np.array(req), np.array(rel), rank=np.array(rank), ks=(20,))
    aps = [average_precision_score(np.array(g) > 0, -np.arange(len(g))) for g in lists if max(g) > 0 and min(g) == 0]
    got = [v for v, g in zip(full.values["map@20"], lists, strict=True) if max(g) > 0 and min(g) == 0]
    np.testing.assert_allclose(got, aps, rtol=1e-12)


def test_sums_merge_and_give_means_errors_and_loss_moments():
    rng = np.random.default_rng(11)
    n_req = 500
    req = np.repeat(np.arange(n_req), 8)
    rank = np.tile(np.arange(1, 9), n_req)
    rel = (rng.random(req.size) < 0.1) * rng.integers(1, 4, req.size)
    ks = (3, 8)
    whole = ranking_sums(req, rel, rank=rank, ks=ks)
    half = req.size // 2  # chunks hold whole requests
    merged = ranking_sums(req[:half], rel[:half], rank=rank[:half], ks=ks) + ranking_sums(
        req[half:], rel[half:], rank=rank[half:], ks=ks)
    assert (merged.n_requests, merged.n_with_relevant, merged.n_rows) == (whole.n_requests, whole.n_with_relevant,
                                                                          whole.n_rows)
    m = request_metrics(req, rel, rank=rank, ks=ks)
    for name in metric_names(ks):
        for policy in ("zero", "exclude"):
            assert merged.mean(name, policy) == pytest.approx(m.mean(name, policy), rel=1e-12)
        keep = m.n_relevant > 0
        assert merged.standard_error(name, "exclude") == pytest.approx(stats.sem(m.values[name][keep]), rel=1e-9)
    for policy in ("zero", "exclude"):
        want = Moments.of(request_loss(m, 8, policy))
        got = merged.loss_moments(8, policy)
        assert got.n == want.n and got.mean == pytest.approx(want.mean) and got.var == pytest.approx(want.var)
    assert np.isnan(request_loss(m, 3, "exclude")[m.n_relevant == 0]).all()
    assert (request_loss(m, 3, "zero")[m.n_relevant == 0] == 1).all()
    assert RankingSums.from_dict(merged.to_dict()) == merged
    with pytest.raises(ValueError, match="different cut-offs"):
        merged + ranking_sums(req, rel, rank=rank, ks=(5,))


def test_empty_sums_are_nan_not_zero():
    empty = RankingSums((5,))
    assert math.isnan(empty.mean("ndcg@5")) and math.isnan(empty.loss_moments(5).mean)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=">= 0"):
        request_metrics([1, 1], [0, -1], rank=[1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        request_metrics([1, 1], [0, np.nan], rank=[1, 2])
    with pytest.raises(ValueError, match="rank or a score"):
        request_metrics([1, 1], [0, 1])
    with pytest.raises(ValueError, match="positive"):
        request_metrics([1, 1], [0, 1], rank=[1, 2], ks=(0,))


def test_catalogue_metrics_by_hand():
    reference = ItemCounts.of(["A"] * 6 + ["B"] * 3 + ["C"])
    current = ItemCounts.of(["A", "D", "B", "A"])
    got = catalogue_metrics(current, reference)
    # catalogue = reference items {A, B, C}; D is new; smoothing: (c + 1) / (10 + 1 * (3 + 1))
    assert got["coverage"] == pytest.approx(2 / 3)
    assert got["unknown_item_share"] == pytest.approx(1 / 4)
    assert got["concentration"] == pytest.approx(2 / 4)  # top ceil(1% of 3) = 1 item: A
    assert got["novelty"] == pytest.approx((2 * math.log2(14 / 7) + math.log2(14 / 4) + math.log2(14 / 1)) / 4)
    with_cat = catalogue_metrics(current, reference, catalogue=["A", "B", "C", "D", "E", "E"])
    assert with_cat["catalogue_size"] == 5 and with_cat["coverage"] == pytest.approx(3 / 5)
    assert with_cat["unknown_item_share"] == 0
    assert with_cat["novelty"] == pytest.approx((2 * math.log2(16 / 7) + math.log2(16 / 4) + math.log2(16)) / 4)
    # concentration: the top 1% of a 1,000-item catalogue is 10 items
    many = ItemCounts.of(np.repeat(np.arange(20), np.arange(1, 21)))
    conc = catalogue_metrics(many, many, catalogue=np.arange(1000))["concentration"]
    assert conc == pytest.approx(sum(range(11, 21)) / sum(range(1, 21)))
    assert math.isnan(catalogue_metrics(ItemCounts.of([]), reference)["coverage"])
    assert math.isnan(catalogue_metrics(current, ItemCounts.of([]), catalogue=["A"])["novelty"])


def test_item_counts_add_across_days_and_respect_k():
    rng = np.random.default_rng(5)
    items = rng.zipf(1.5, 2000) % 300
    whole = ItemCounts.of(items)
    merged = ItemCounts.of(items[:700]) + ItemCounts.of(items[700:])
    assert dict(zip(merged.items.tolist(), merged.counts.tolist(), strict=True)) == dict(
        zip(whole.items.tolist(), whole.counts.tolist(), strict=True))
    top2 = ItemCounts.of(["x", "y", "z", "x"], rank=[1, 2, 3, 1], k=2)
    assert dict(zip(top2.items.tolist(), top2.counts.tolist(), strict=True)) == {"x": 2, "y": 1}


def test_a_coded_subset_counts_as_its_ids_would_item_for_item_and_in_order():
    """The ranking drift's calibration counts each reference chunk, and the rest, from codes hashed once: the same
    items, counts and order (ties among the top items keep the order of first appearance) as counting the ids."""
    rng = np.random.default_rng(11)
    ids = np.array([f"sku-{i}" for i in rng.zipf(1.3, 5000) % 400], dtype=object)
    codes, values = item_codes(ids)
    for mask in (rng.random(len(ids)) < 0.1, np.arange(len(ids)) >= 4000, np.zeros(len(ids), bool),
                 np.ones(len(ids), bool)):
        for part in (mask, ~mask):
            coded, direct = ItemCounts.of_coded(codes[part], values), ItemCounts.of(ids[part])
            assert coded.items.tolist() == direct.items.tolist()
            assert coded.counts.tolist() == direct.counts.tolist()
    numbers = rng.integers(0, 50, 300)  # integer ids keep their values and type
    codes, values = item_codes(numbers)
    assert ItemCounts.of_coded(codes[::3], values).items.tolist() == ItemCounts.of(numbers[::3]).items.tolist()


def test_item_distribution_drift_is_scipy_jensen_shannon_over_the_top_items_and_an_other_bucket():
    from scipy.spatial.distance import jensenshannon

    rng = np.random.default_rng(3)
    ref_items = rng.zipf(1.3, 5000) % 1000
    cur_items = rng.zipf(1.8, 3000) % 1000
    reference, current = ItemCounts.of(ref_items), ItemCounts.of(cur_items)
    top = 20
    # Bins written out from the definition: the 20 most shown items of each side (ties: first seen), the rest.
    def most_shown(values):
        counts = pd.Series(values).value_counts(sort=False)  # in order of first appearance
        return list(counts.sort_values(ascending=False, kind="stable").index[:top])
    bins = list(dict.fromkeys(most_shown(ref_items) + most_shown(cur_items)))
    def shares(values):
        s = pd.Series(values)
        binned = [float((s == b).sum()) for b in bins] + [float((~s.isin(bins)).sum())]
        return np.array(binned) / len(values)
    expected = jensenshannon(shares(cur_items), shares(ref_items), base=2)
    assert item_distribution_drift(current, reference, top=top) == pytest.approx(expected, abs=1e-12)
    # Items the reference never shows among the current's top ones (the reference's counts are looked up per bin).
    cur_items = cur_items + 900
    bins = list(dict.fromkeys(most_shown(ref_items) + most_shown(cur_items)))
    expected = jensenshannon(shares(cur_items), shares(ref_items), base=2)
    assert item_distribution_drift(ItemCounts.of(cur_items), reference, top=top) == pytest.approx(expected, abs=1e-12)
    assert item_distribution_drift(reference, reference) == pytest.approx(0.0, abs=1e-7)
    # A collapse onto items the reference never shows is as far as it gets.
    assert item_distribution_drift(ItemCounts.of(["new"] * 50), ItemCounts.of(["a", "b"] * 10)) == pytest.approx(1.0)
    assert math.isnan(item_distribution_drift(ItemCounts.of([]), reference))


def test_score_drift_is_scipy_ks_statistic():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 700), np.round(rng.normal(0.3, 1.2, 900), 1)  # ties on one side
    b[:5] = np.nan  # missing scores are left out
    assert score_drift(a, b) == pytest.approx(stats.ks_2samp(a, b[5:]).statistic, abs=1e-12)
    assert math.isnan(score_drift([], b))
    # It looks at the day's distinct scores only: ties on both sides, a side much larger than the other, a
    # presorted reference (as a ranker's is kept), a day entirely below or above the reference, one-value days.
    for case in range(400):
        n, m, levels = int(rng.integers(1, 40)), int(rng.integers(1, 3000)), (3, 20, 10**6)[case % 3]
        day = rng.integers(0, levels, n) / levels + (0.3 if case % 4 == 1 else 0.0) - (2 if case % 8 == 3 else 0)
        ref = rng.integers(0, levels, m) / levels
        if case % 2:
            ref = np.sort(ref)
        assert score_drift(day, ref) == pytest.approx(stats.ks_2samp(day, ref).statistic, abs=1e-12), case


def test_below_floor_p_value_is_the_one_sided_normal_tail():
    assert below_floor_p_value(0.40, 0.02, 0.45) == pytest.approx(stats.norm.cdf((0.40 - 0.45) / 0.02))
    assert below_floor_p_value(0.50, 0.02, 0.45) == pytest.approx(stats.norm.cdf(2.5))
    # lower is better (concentration): a value above its ceiling is what is tested
    assert below_floor_p_value(0.30, 0.05, 0.20, higher_is_better=False) == pytest.approx(stats.norm.cdf(-2.0))
    assert math.isnan(below_floor_p_value(0.4, math.nan, 0.45))
