"""Ranking quality of recommenders and search models, vectorised over flat arrays (pure: numpy and pandas).

The input is one row per shown item: the request it belongs to, its logged rank (1 = top), the item id,
and a relevance grade >= 0 from later interactions (0: no interaction; a click 1, a purchase 3, ...).
Every metric is computed for all requests at once with sorts and `bincount`s, never a loop per request.

Order of a request's list: the logged rank wins. Gaps in the ranks are closed (ranks 1, 2, 5 are the
positions 1, 2, 3) and duplicated ranks keep the rows' order. Without ranks, the order is by score,
descending, ties in row order (stable); missing scores go last. Per request, for each cut-off k:

* NDCG@k: DCG@k / ideal DCG@k, DCG@k = sum over positions i <= k of gain_i / log2(i + 1); gain is the
  grade (`gain="linear"`, scikit-learn's `ndcg_score`) or 2^grade - 1 (`"exponential"`). The ideal DCG
  sorts the request's own logged items by grade. With `ties="average"` (scores only) tied items share
  their positions' discounts, the expected DCG over orderings of the ties, exactly as `ndcg_score` does.
* precision@k: relevant (grade > 0) items in the top k, over k; a list shorter than k counts its
  missing slots as not relevant (the user was shown fewer items).
* recall@k: relevant items in the top k over the relevant items in the logged list (the only ones known).
* MAP@k: average precision at k, sum over relevant positions i <= k of precision@i, over min(k, R)
  with R the request's relevant items, so a perfect list scores 1 even when R > k.
* hit rate@k: 1 when any relevant item is in the top k.
* MRR@k: 1 / position of the first relevant item if it is in the top k, else 0; `mrr` (no k): the same
  over the whole list.

A request with no relevant item has no ideal ranking: its NDCG is 0/0. Every metric of such a request
is 0 (scikit-learn's `ndcg_score` gives NDCG 0), and `no_relevant="exclude"` averages over the
requests with at least one relevant item instead. Both averages come from the same sums.

Per-request loss for the retraining trigger: 1 - NDCG@k, in [0, 1]; a request with no relevant item
has loss 1 (`"zero"`) or none (NaN, `"exclude"`, left out by `trigger.Moments.of`).

`RankingSums` holds per metric the count, sum and sum of squares over requests: a week is the sum of
its days, with means, standard errors and the loss's `Moments` from it. `ItemCounts` (impressions per
item) also adds across days; catalogue coverage, popularity concentration and novelty come from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from monitor_assets.stats.trigger import Moments

GAINS = ("linear", "exponential")
TIES = ("first", "average")
NO_RELEVANT = ("zero", "exclude")
AT_K = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")  # each reported as f"{metric}@{k}"
WHOLE_LIST = ("mrr",)  # reported without a cut-off
TOP_SHARE = 0.01  # popularity concentration: impressions going to the top 1% of the catalogue's items
NOVELTY_ALPHA = 1.0  # add-one smoothing of the reference popularity


def metric_names(ks) -> list[str]:
    """The names `request_metrics` reports for the cut-offs `ks`, e.g. 'ndcg@10', and 'mrr'."""
    return [f"{m}@{k}" for k in ks for m in AT_K] + list(WHOLE_LIST)


def _check_ks(ks) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ([ks] if np.isscalar(ks) else ks))
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs k must be positive integers, got {ks}")
    return tuple(sorted(set(ks)))


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (in order of first appearance) and the distinct values; hashing, not sorting, so
    string ids cost about what integers do."""
    codes, uniques = pd.factorize(np.asarray(values), sort=False, use_na_sentinel=False)
    return codes.astype(np.int64), np.asarray(uniques)


def item_codes(items) -> tuple[np.ndarray, np.ndarray]:
    """Each impression's code into the distinct items (in order of first appearance), and those items: for
    counting many subsets of the same impressions (`ItemCounts.of_coded`)."""
    return _codes(items)


def ranks_from_scores(request, score) -> np.ndarray:
    """Rank 1..L of each row within its request by score, descending; ties keep the rows' order and
    missing scores go last. What `request_metrics` uses when no logged rank is given."""
    codes, _ = _codes(request)
    s = np.asarray(score, dtype=float)
    order = _list_order(codes, np.where(np.isnan(s), np.inf, -s), integral=False)
    g = codes[order]
    starts = np.concatenate([[0], np.cumsum(np.bincount(g))[:-1]])
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.arange(len(s)) - starts[g] + 1
    return rank


def _list_order(codes: np.ndarray, key: np.ndarray, integral: bool) -> np.ndarray | None:
    """Row order sorting by request, then `key` ascending, ties in row order; None when the rows are
    already in that order (logs usually are: one sort less)."""
    if integral and len(key) and (key == np.floor(key)).all():
        lo, span = key.min(), key.max() - key.min() + 1
        if span * (codes.max() + 1) < 2.0 ** 53:  # one integer key, exact in float64 and int64
            combined = codes * np.int64(span) + (key - lo).astype(np.int64)
            if (combined[1:] >= combined[:-1]).all():
                return None
            return np.argsort(combined, kind="stable")
    return np.lexsort((key, codes))


@dataclass(frozen=True)
class RequestMetrics:
    """Per-request values: `requests` (ids, in order of first appearance), the logged list's length
    and relevant items, and `values[name]` (see `metric_names`) aligned with `requests`."""

    ks: tuple[int, ...]
    requests: np.ndarray
    n_items: np.ndarray
    n_relevant: np.ndarray
    values: dict[str, np.ndarray]

    def mean(self, metric: str, no_relevant: str = "zero") -> float:
        _check_choice("no_relevant", no_relevant, NO_RELEVANT)
        v = self.values[metric] if no_relevant == "zero" else self.values[metric][self.n_relevant > 0]
        return float(v.mean()) if len(v) else math.nan


def request_metrics(request, relevance, rank=None, score=None, ks=(5, 10), gain: str = "linear",
                    ties: str = "first") -> RequestMetrics:
    """Every ranking metric of every request (module docstring), for all cut-offs `ks` at once.

    `request`: any ids (one per row); `relevance`: grades >= 0; `rank`: the logged rank (wins over
    `score`); `score`: used only without `rank`. `ties="average"` (scores only) shares tied items'
    discounts in NDCG as scikit-learn does; the other metrics use the stable order either way."""
    ks = _check_ks(ks)
    _check_choice("gain", gain, GAINS)
    _check_choice("ties", ties, TIES)
    codes, requests = _codes(request)
    rel = np.asarray(relevance, dtype=float)
    n = len(codes)
    if rel.shape != (n,):
        raise ValueError(f"relevance has shape {rel.shape}, expected ({n},)")
    if not np.isfinite(rel).all() or (rel < 0).any():
        raise ValueError("relevance grades must be finite and >= 0 (0: no interaction)")
    if rank is None and score is None:
        raise ValueError("give the logged rank or a score")
    if rank is not None:
        key = np.asarray(rank, dtype=float)
        tie_break = False
        if not np.isfinite(key).all():
            raise ValueError("logged ranks must be finite numbers")
    else:
        s = np.asarray(score, dtype=float)
        key = np.where(np.isnan(s), np.inf, -s)
        tie_break = ties == "average"
    if key.shape != (n,):
        raise ValueError(f"rank/score has shape {key.shape}, expected ({n},)")
    n_req = len(requests)
    order = _list_order(codes, key, integral=rank is not None)
    g = codes[order] if order is not None else codes
    r = rel[order] if order is not None else rel
    n_items = np.bincount(g, minlength=n_req)
    starts = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    pos = np.arange(n) - starts[g]  # 0-based position in the request's list
    # Items with grade 0 add nothing to any sum: work on the relevant rows only (few, in real logs).
    idx = np.flatnonzero(r > 0)
    gi, pi = g[idx], pos[idx].astype(float)
    gains = r[idx] if gain == "linear" else np.exp2(r[idx]) - 1.0
    lead = np.ones(len(idx), dtype=bool)  # the first relevant row of each request
    lead[1:] = gi[1:] != gi[:-1]
    j = np.arange(len(idx))
    seen = j - np.maximum.accumulate(np.where(lead, j, 0))  # relevant rows above, in the same request
    n_relevant = np.bincount(gi, minlength=n_req).astype(float)
    has_rel = n_relevant > 0
    precision_at_i = (seen + 1.0) / (pi + 1.0)
    # Ideal list: the request's grades sorted descending; the j-th relevant row sits at position `seen`.
    ideal_gains = gains[np.lexsort((-gains, gi))]
    ideal_discount = 1.0 / np.log2(seen + 2.0)
    first = np.full(n_req, np.inf)
    first[gi[lead]] = pi[lead]
    if tie_break:
        sorted_key = key[order] if order is not None else key
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = (g[1:] != g[:-1]) | (sorted_key[1:] != sorted_key[:-1])
        tie = np.cumsum(new_group) - 1
        tie_size = np.bincount(tie)
        discount_all = 1.0 / np.log2(pos + 2.0)
    values: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in ks:
            top = pi < k
            if tie_break:  # each tied item gets the mean discount of its tie group's positions
                disc_k = (np.bincount(tie, discount_all * (pos < k)) / tie_size)[tie[idx]]
            else:
                disc_k = top / np.log2(pi + 2.0)
            dcg = np.bincount(gi, gains * disc_k, n_req)
            idcg = np.bincount(gi, ideal_gains * ideal_discount * (seen < k), n_req)
            hits = np.bincount(gi, top, n_req)
            values[f"ndcg@{k}"] = np.where(idcg > 0, dcg / idcg, 0.0)
            values[f"precision@{k}"] = hits / k
            values[f"recall@{k}"] = np.where(has_rel, hits / n_relevant, 0.0)
            ap = np.bincount(gi, precision_at_i * top, n_req)
            values[f"map@{k}"] = np.where(has_rel, ap / np.minimum(k, n_relevant), 0.0)
            values[f"hit_rate@{k}"] = (hits > 0).astype(float)
            values[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        values["mrr"] = np.where(np.isfinite(first), 1.0 / (first + 1.0), 0.0)
    return RequestMetrics(ks, requests, n_items, n_relevant.astype(np.int64), values)


def request_loss(metrics: RequestMetrics, k: int, no_relevant: str = "zero") -> np.ndarray:
    """Per-request loss for the retraining trigger: 1 - NDCG@k. A request with no relevant item has
    loss 1 (`"zero"`) or NaN (`"exclude"`; `Moments.of` leaves NaN out)."""
    _check_choice("no_relevant", no_relevant, NO_RELEVANT)
    loss = 1.0 - metrics.values[f"ndcg@{k}"]
    return loss if no_relevant == "zero" else np.where(metrics.n_relevant > 0, loss, np.nan)


def request_losses(request, relevance, k: int, rank=None, score=None, gain: str = "linear", ties: str = "first",
                   no_relevant: str = "zero") -> tuple[np.ndarray, np.ndarray]:
    """The retraining trigger's per-request loss of a ranker: 1 - NDCG@k of each request, in [0, 1] (0: the
    request's relevant items are shown in the ideal order). A request with no relevant item has no ideal
    ranking: under `no_relevant="zero"` its NDCG is 0 and its loss 1 (as scikit-learn's `ndcg_score`); under
    `"exclude"` its loss is NaN (left out of the trigger, as its NDCG is left out of the means). A list shorter
    than k is discounted over its own positions; its ideal DCG is over its own items too. Returns the request ids
    (in order of first appearance) and their losses."""
    metrics = request_metrics(request, relevance, rank, score, ks=(k,), gain=gain, ties=ties)
    return metrics.requests, request_loss(metrics, k, no_relevant)


@dataclass(frozen=True)
class RankingSums:
    """Sufficient statistics of a set of requests: counts, and per metric the sum and sum of squares of
    the per-request values. Requests with no relevant item add 0 to every sum, so both `no_relevant`
    policies read the same sums (over `n_requests` or over `n_with_relevant`). Add days with `+`."""

    ks: tuple[int, ...]
    n_rows: int = 0
    n_requests: int = 0
    n_with_relevant: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    sums_sq: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: RequestMetrics) -> RankingSums:
        return cls(metrics.ks, int(metrics.n_items.sum()), len(metrics.requests), int((metrics.n_relevant > 0).sum()),
                   {m: float(v.sum()) for m, v in metrics.values.items()},
                   {m: float((v * v).sum()) for m, v in metrics.values.items()})

    def __add__(self, other: RankingSums) -> RankingSums:
        if self.ks != other.ks:
            raise ValueError(f"cannot add sums over different cut-offs: {self.ks} and {other.ks}")
        add = lambda a, b: {m: a.get(m, 0.0) + b.get(m, 0.0) for m in a.keys() | b.keys()}  # noqa: E731
        return RankingSums(self.ks, self.n_rows + other.n_rows, self.n_requests + other.n_requests,
                           self.n_with_relevant + other.n_with_relevant, add(self.sums, other.sums),
                           add(self.sums_sq, other.sums_sq))

    def _n(self, no_relevant: str) -> int:
        _check_choice("no_relevant", no_relevant, NO_RELEVANT)
        return self.n_requests if no_relevant == "zero" else self.n_with_relevant

    def moments(self, metric: str, no_relevant: str = "zero") -> Moments:
        """Count, mean and sample variance of the metric over requests."""
        return Moments.from_sums(self._n(no_relevant), self.sums.get(metric, 0.0), self.sums_sq.get(metric, 0.0))

    def mean(self, metric: str, no_relevant: str = "zero") -> float:
        return self.moments(metric, no_relevant).mean

    def standard_error(self, metric: str, no_relevant: str = "zero") -> float:
        m = self.moments(metric, no_relevant)
        return math.sqrt(m.var / m.n) if m.n > 1 else math.nan

    def means(self, no_relevant: str = "zero") -> dict[str, float]:
        """Every metric's mean (NaN without requests), for the history table."""
        return {m: self.mean(m, no_relevant) for m in metric_names(self.ks)}

    def loss_moments(self, k: int, no_relevant: str = "zero") -> Moments:
        """Moments of the per-request loss 1 - NDCG@k (`request_loss`), from the NDCG sums:
        sum(1 - x) = n - sum x and sum (1 - x)^2 = n - 2 sum x + sum x^2 over the requests counted."""
        n = self._n(no_relevant)
        s, sq = self.sums.get(f"ndcg@{k}", 0.0), self.sums_sq.get(f"ndcg@{k}", 0.0)
        return Moments.from_sums(n, n - s, n - 2 * s + sq)

    def to_dict(self) -> dict:
        return {"ks": list(self.ks), "n_rows": self.n_rows, "n_requests": self.n_requests,
                "n_with_relevant": self.n_with_relevant, "sums": dict(self.sums), "sums_sq": dict(self.sums_sq)}

    @classmethod
    def from_dict(cls, d: dict) -> RankingSums:
        return cls(tuple(d["ks"]), int(d["n_rows"]), int(d["n_requests"]), int(d["n_with_relevant"]),
                   {k: float(v) for k, v in d["sums"].items()}, {k: float(v) for k, v in d["sums_sq"].items()})


def ranking_sums(request, relevance, rank=None, score=None, ks=(5, 10), gain: str = "linear",
                 ties: str = "first") -> RankingSums:
    """`RankingSums` of one chunk of rows (a chunk must hold whole requests)."""
    return RankingSums.of(request_metrics(request, relevance, rank, score, ks, gain, ties))


@dataclass(frozen=True)
class ItemCounts:
    """Impressions per distinct item; adds across days (`+`)."""

    items: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, item, rank=None, k: int | None = None) -> ItemCounts:
        """Impressions of `item`, only those shown at rank <= k when both are given (ranks as logged)."""
        item = np.asarray(item)
        if k is not None and rank is not None:
            item = item[np.asarray(rank) <= k]
        codes, uniques = _codes(item)
        return cls(uniques, np.bincount(codes, minlength=len(uniques)).astype(np.int64))

    @classmethod
    def of_coded(cls, codes: np.ndarray, values: np.ndarray) -> ItemCounts:
        """`ItemCounts.of(values[codes])`, item for item and in the same order, from integer codes into the
        distinct `values` (`item_codes`): a subset of impressions counted without hashing its ids again."""
        sub, first = _codes(codes)
        return cls(values[first], np.bincount(sub, minlength=len(first)).astype(np.int64))

    def __add__(self, other: ItemCounts) -> ItemCounts:
        if not len(other.items) or not len(self.items):  # an empty day keeps the other's id type
            return self if len(self.items) else other
        codes, uniques = _codes(np.concatenate([self.items, other.items]))
        counts = np.bincount(codes, np.concatenate([self.counts, other.counts]).astype(float), len(uniques))
        return ItemCounts(uniques, counts.astype(np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    # A reference's items are looked up by every day and segment compared with it: hashed and ranked once.
    @cached_property
    def index(self) -> pd.Index:
        """The items as a pandas Index (for look-ups)."""
        return pd.Index(self.items)

    @cached_property
    def most_shown(self) -> np.ndarray:
        """Positions of the items, most shown first, ties in their order."""
        return np.lexsort((np.arange(len(self.counts)), -self.counts))


def catalogue_metrics(current: ItemCounts, reference: ItemCounts, catalogue=None, top_share: float = TOP_SHARE,
                      alpha: float = NOVELTY_ALPHA) -> dict[str, float]:
    """Beyond accuracy, from impressions per item:

    * coverage: distinct recommended catalogue items / catalogue size; the catalogue is `catalogue`
      when given, else the items the reference shows; `unknown_item_share`: the share of impressions
      of items outside it (new items, or ids the catalogue lacks);
    * concentration: the share of impressions going to the most shown items, as many as `top_share`
      of the catalogue size (at least one): 1% by default;
    * novelty: the mean over impressions of -log2 p(item), p the reference's share of impressions with
      add-`alpha` smoothing over the known universe U (catalogue and reference items) plus one bucket
      for everything else: p(i) = (c_i + alpha) / (N + alpha (|U| + 1)), any item outside U has
      alpha / (N + alpha (|U| + 1)). Higher: the model shows less popular items.
    NaN where there are no impressions (novelty: also when the reference has none)."""
    ref_index = reference.index
    cat = pd.Index(pd.unique(np.asarray(catalogue))) if catalogue is not None else ref_index
    n_cat = len(cat)
    total = current.total
    in_cat = cat.get_indexer(current.items) >= 0 if len(current.items) else np.zeros(0, bool)
    out = {"catalogue_size": float(n_cat), "n_recommended_items": float(len(current.items)),
           "impressions": float(total), "coverage": math.nan, "unknown_item_share": math.nan,
           "concentration": math.nan, "novelty": math.nan}
    if total == 0:
        return out
    if n_cat:
        out["coverage"] = float(in_cat.sum() / n_cat)
    out["unknown_item_share"] = float(current.counts[~in_cat].sum() / total)
    n_top = max(1, math.ceil(top_share * n_cat)) if n_cat else 1
    top = np.sort(current.counts)[::-1][:n_top]
    out["concentration"] = float(top.sum() / total)
    if reference.total == 0:  # no popularity to measure against
        return out
    universe = len(ref_index.union(cat)) if catalogue is not None else len(ref_index)
    denominator = reference.total + alpha * (universe + 1)
    pos = ref_index.get_indexer(current.items) if len(current.items) else np.zeros(0, np.int64)
    ref_count = np.where(pos >= 0, reference.counts[np.maximum(pos, 0)] if len(reference.counts) else 0, 0)
    p = (ref_count + alpha) / denominator
    out["novelty"] = float(np.dot(current.counts, -np.log2(p)) / total)
    return out


# Item-distribution drift keeps this many most shown items of each side as bins, the rest in one "other" bin: a
# catalogue of millions of items costs as much as a hundred, and a collapse onto a few items shows in full.
DRIFT_TOP_ITEMS = 100


def item_distribution_drift(current: ItemCounts, reference: ItemCounts, top: int = DRIFT_TOP_ITEMS) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the shares of impressions of the current and the
    reference over the bins: the `top` most shown items of either side, and one bucket for every other item.
    NaN when either side has no impressions."""
    if current.total == 0 or reference.total == 0:
        return math.nan

    bins = pd.Index(pd.unique(np.concatenate([reference.items[reference.most_shown[:top]],
                                                current.items[current.most_shown[:top]]])))

    def shares(counts: ItemCounts) -> np.ndarray:
        pos = bins.get_indexer(counts.items)
        binned = np.bincount(np.where(pos >= 0, pos, len(bins)), counts.counts.astype(float), len(bins) + 1)
        return binned / binned.sum()

    def reference_shares() -> np.ndarray:
        # `shares(reference)` without hashing every reference item: each bin's count looked up in the reference,
        # the rest in the other bin (whole counts: the same sums, exactly)
        pos = reference.index.get_indexer(bins)
        binned = np.zeros(len(bins) + 1)
        binned[:-1] = np.where(pos >= 0, reference.counts[np.maximum(pos, 0)], 0)
        binned[-1] = reference.total - int(binned[:-1].sum())
        return binned / binned.sum()

    p, q = shares(current), reference_shares()
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = lambda a: float(np.sum(np.where(a > 0, a * np.log2(a / m), 0.0)))  # noqa: E731
        js = 0.5 * kl(p) + 0.5 * kl(q)
    return math.sqrt(max(js, 0.0))


def score_drift(current, reference) -> float:
    """Kolmogorov-Smirnov statistic (largest gap between the two empirical CDFs) of the logged scores against
    the reference's; NaN when either side has no finite score."""
    a, b = finite_sorted(current), finite_sorted(reference)
    if not len(a) or not len(b):
        return math.nan
    # The gap is evaluated where it can be largest, not at every point of both samples: F_a is constant between
    # the day's distinct scores u_j and F_b only rises, so its extremes on [u_j, u_j+1) are at u_j and just
    # before u_j+1 (and just before u_0), each the gap at a point of the pooled samples. The same value as
    # at every pooled point (scipy's way), for a fraction of the look-ups into a large reference.
    u = np.unique(a)
    below_a = np.searchsorted(a, u, side="right") / len(a)  # F_a on [u_j, u_j+1)
    at = np.searchsorted(b, u, side="right") / len(b)  # F_b(u_j)
    before = np.searchsorted(b, u, side="left") / len(b)  # F_b just before u_j
    return float(max(np.abs(below_a - at).max(), np.abs(below_a[:-1] - before[1:]).max(initial=0.0),
                     abs(0.0 - before[0])))


def finite_sorted(values) -> np.ndarray:
    """The finite values, sorted (as given when they already are: a reference's scores are sorted once)."""
    x = np.asarray(values, dtype=float)
    if np.isfinite(x).all() and (len(x) < 2 or bool(np.all(x[1:] >= x[:-1]))):
        return x
    return np.sort(x[np.isfinite(x)])


def below_floor_p_value(mean: float, standard_error: float, floor: float, higher_is_better: bool = True) -> float:
    """One-sided p-value of "the metric is at least `floor`" (at most, when lower is better) for a mean of
    requests with its standard error (normal approximation, `RankingSums.standard_error`): small when the day is
    clearly below the floor, large on a small day whose mean is below it by chance. NaN without a standard error."""
    if not all(math.isfinite(x) for x in (mean, standard_error, floor)):
        return math.nan
    if standard_error == 0:
        return 0.0 if (mean < floor if higher_is_better else mean > floor) else 1.0
    z = (mean - floor) / standard_error if higher_is_better else (floor - mean) / standard_error
    return 0.5 * math.erfc(-z / math.sqrt(2))
