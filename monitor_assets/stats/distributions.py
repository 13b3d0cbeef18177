"""What changed in a drifted feature: the reference's and a day's distributions side by side (pure: numpy).

A drift row says *that* a feature moved; this says *how*, in a form a person reads at a glance and a chart draws:

* numeric: counts on shared bins, whose edges are the reference's quantiles (at most `MAX_BINS` bins, so each
  holds about the same share of the reference and a shift shows as bars leaving their level), half-open
  `[lo, hi)` with the last bin closed, as `numpy.histogram` counts; values below the reference's minimum, above
  its maximum (infinities included) and missing values (NaN) are buckets of their own. A constant reference has
  one bin holding exactly its value. A reference without any finite value takes its edges from the day's values.
* categorical: the `TOP_K` categories with the largest share on either side (so a category that appears only
  today is shown), the others pooled into "other", missing values (None or NaN) into "missing".

Shares are of all rows of a side, missing included, so each side's shares add up to 1. A bucket empty on both sides
is left out, except the numeric bins themselves. `drift_evidence` puts every drift row on one scale
(1 = at its threshold), so the dashboard's colours and the choice of the strongest pictures agree.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from monitor_assets.stats.drift import P_VALUE_METHODS

MAX_BINS = 30
TOP_K = 12
BELOW, ABOVE, MISSING, OTHER = "below range", "above range", "missing", "other"
P_FLOOR = 1e-300  # a p-value of 0 (underflow) reads as this: very strong, finite evidence


@dataclass(frozen=True)
class Bucket:
    """One bar pair: a bin or category with each side's count and share of that side's rows."""

    label: str
    reference_count: int
    current_count: int
    reference_share: float
    current_share: float
    lo: float | None = None  # numeric bins: the edges ([lo, hi), the last closed); None elsewhere
    hi: float | None = None


@dataclass(frozen=True)
class Comparison:
    kind: str  # numeric | categorical
    buckets: list[Bucket]
    n_reference: int
    n_current: int

    def to_json(self) -> str:
        """The buckets as compact JSON (a list of objects), what `monitoring.drift_distributions.bins` holds."""
        return json.dumps([{k: v for k, v in vars(b).items() if v is not None} for b in self.buckets],
                          separators=(",", ":"))

    @staticmethod
    def buckets_from_json(text: str) -> list[Bucket]:
        return [Bucket(**d) for d in json.loads(text)]


def _share(count: int, n: int) -> float:
    return count / n if n else 0.0


def _bucket(label: str, ref: int, cur: int, n_ref: int, n_cur: int, lo=None, hi=None) -> Bucket:
    return Bucket(label, int(ref), int(cur), _share(ref, n_ref), _share(cur, n_cur),
                  None if lo is None else float(lo), None if hi is None else float(hi))


def _num_text(x: float) -> str:
    return f"{x:.4g}"


def reference_edges(values: np.ndarray, max_bins: int = MAX_BINS) -> np.ndarray:
    """Bin edges at the finite values' quantiles 0, 1/max_bins, ..., 1, repeats dropped (a discrete feature gets
    fewer, wider bins); a constant: [c, the next double above c], one bin holding exactly c; none: empty."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.empty(0)
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, max_bins + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    return edges


def _numeric_counts(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """(counts per bin as numpy.histogram gives them, below, above, missing)."""
    missing = int(np.isnan(values).sum())
    present = values[~np.isnan(values)]
    counts, _ = np.histogram(present[np.isfinite(present)], bins=edges)
    return counts, int((present < edges[0]).sum()), int((present > edges[-1]).sum()), missing


def compare_numeric(reference: Iterable[float], current: Iterable[float], max_bins: int = MAX_BINS) -> Comparison:
    """The two sides on the reference's quantile bins, with below-range, above-range and missing buckets."""
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    edges = reference_edges(ref, max_bins)
    if not len(edges):  # no finite reference value: the day's own quantiles at least show its shape
        edges = reference_edges(cur, max_bins)
    n_ref, n_cur = len(ref), len(cur)
    if not len(edges):  # nothing finite on either side: only the missing (and infinite) values remain
        buckets = [_bucket(label, int(f(ref)), int(f(cur)), n_ref, n_cur) for label, f in (
            (BELOW, lambda v: (v == -np.inf).sum()), (ABOVE, lambda v: (v == np.inf).sum()),
            (MISSING, lambda v: np.isnan(v).sum()))]
        return Comparison("numeric", [b for b in buckets if b.reference_count or b.current_count], n_ref, n_cur)
    ref_counts, ref_below, ref_above, ref_missing = _numeric_counts(ref, edges)
    cur_counts, cur_below, cur_above, cur_missing = _numeric_counts(cur, edges)
    constant = len(edges) == 2 and edges[1] == np.nextafter(edges[0], np.inf)
    buckets = []
    if ref_below or cur_below:
        buckets.append(_bucket(BELOW, ref_below, cur_below, n_ref, n_cur, None, edges[0]))
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        close = "]" if i == len(edges) - 2 else ")"
        label = _num_text(lo) if constant else f"[{_num_text(lo)}, {_num_text(hi)}{close}"
        buckets.append(_bucket(label, ref_counts[i], cur_counts[i], n_ref, n_cur, lo, hi))
    for label, r, c, lo in ((ABOVE, ref_above, cur_above, edges[-1]), (MISSING, ref_missing, cur_missing, None)):
        if r or c:
            buckets.append(_bucket(label, r, c, n_ref, n_cur, lo, None))
    return Comparison("numeric", buckets, n_ref, n_cur)


def _is_missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def compare_categorical(reference: Iterable, current: Iterable, top_k: int = TOP_K) -> Comparison:
    """The `top_k` categories of largest share on either side (in the reference's order of frequency, then the
    day's, then by name), the rest as "other", missing values as "missing". Categories compare as text."""
    ref_values, cur_values = list(reference), list(current)
    ref = Counter(str(v) for v in ref_values if not _is_missing(v))
    cur = Counter(str(v) for v in cur_values if not _is_missing(v))
    n_ref, n_cur = len(ref_values), len(cur_values)
    share = {c: max(_share(ref[c], n_ref), _share(cur[c], n_cur)) for c in ref.keys() | cur.keys()}
    kept = sorted(share, key=lambda c: (-share[c], c))[:top_k]
    kept.sort(key=lambda c: (-ref[c], -cur[c], c))
    buckets = [_bucket(c, ref[c], cur[c], n_ref, n_cur) for c in kept]
    other_ref = sum(ref.values()) - sum(ref[c] for c in kept)
    other_cur = sum(cur.values()) - sum(cur[c] for c in kept)
    missing_ref, missing_cur = n_ref - sum(ref.values()), n_cur - sum(cur.values())
    for label, r, c in ((OTHER, other_ref, other_cur), (MISSING, missing_ref, missing_cur)):
        if r or c:
            buckets.append(_bucket(label, r, c, n_ref, n_cur))
    return Comparison("categorical", buckets, n_ref, n_cur)


def compare(reference: Iterable, current: Iterable, kind: str, max_bins: int = MAX_BINS,
            top_k: int = TOP_K) -> Comparison:
    """`compare_numeric` or `compare_categorical` by the feature's kind."""
    if kind == "numeric":
        return compare_numeric(reference, current, max_bins)
    if kind == "categorical":
        return compare_categorical(reference, current, top_k)
    raise ValueError(f"kind must be numeric or categorical, got {kind!r}")


def drift_evidence(drift: pd.DataFrame) -> np.ndarray:
    """Per drift row, how strongly it says "drifted" relative to its own threshold, on one scale for every
    method (1 = at the threshold, > 1 drifted). A distance flags at statistic >= threshold: statistic /
    threshold. A test flags at p < threshold, where the threshold is a p-value, so the statistic says
    nothing comparable (a stable KS day at 500 rows has statistic 0.03 against 0.01): log(p) / log(threshold),
    with the BH-adjusted p where there is one (what `drifted` is decided on). A test row the table calls not
    drifted stays below 1 (the constant check also needs enough differing values). Rows without `method`
    are read as distances (frames of the first release)."""
    stat = drift.statistic.to_numpy(dtype=float)
    threshold = drift.threshold.to_numpy(dtype=float)
    if "method" not in drift or "p_value" not in drift:
        with np.errstate(divide="ignore", invalid="ignore"):
            return stat / threshold
    return evidence_of(stat, threshold, drift.method.to_numpy(object), drift.drifted.fillna(False).to_numpy(bool),
                       drift.p_value.to_numpy(dtype=float),
                       drift.p_value_adjusted.to_numpy(dtype=float) if "p_value_adjusted" in drift else None)


def evidence_of(statistic: np.ndarray, threshold: np.ndarray, method: np.ndarray, drifted: np.ndarray,
                p_value: np.ndarray, p_adjusted: np.ndarray | None = None) -> np.ndarray:
    """`drift_evidence` on arrays (a frame costs about a millisecond to build, and segment drift judges
    thousands of small families)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = statistic / threshold
        p = p_value if p_adjusted is None else np.where(np.isnan(p_adjusted), p_value, p_adjusted)
        usable = (threshold > 0) & (threshold < 1)
        evidence = np.where(usable, np.log(np.clip(p, P_FLOOR, 1.0)) / np.log(np.where(usable, threshold, 0.5)),
                            np.nan)
        test = np.fromiter((m in P_VALUE_METHODS for m in method), bool, len(method))
        evidence = np.where(drifted, evidence, np.minimum(evidence, 0.99))
        return np.where(test, evidence, out)
