"""Mergeable daily profiles: one small record per model, day, version and segment from which any window (week,
month, quarter, rolling N days) is computed by adding, never by scanning the rows again.

Everything in a profile is a count or a sum on a layout fixed by the reference (`ProfileBins`, one per reference
version), so `merge` is addition: counts add exactly; float sums are added with `math.fsum` (correctly rounded,
so a merge of many profiles does not depend on their order; merging in steps differs in the last bits at most).

Per numeric feature: rows, missing, min, max, sum and sum of squares (scaled by a power of 2 for huge values, as
drift.py's `NumericCounter` does: the counting is its own), and counts on `bins` bins (default `BINS`) whose edges
are the reference's quantiles snapped to drift.py's fine grid, with the out-of-range rows (below the grid, above
it) apart. The bins include drift.py's PSI bins, so from a profile, against the reference's profile on the same bins:

* PSI and Jensen-Shannon equal drift.py's on the raw rows (error 0);
* Kolmogorov-Smirnov at the bin edges is at most the exact statistic and at most `ks_bound` = the largest share
  of either side in one bin below it;
* Wasserstein-1 / reference std puts each bin's mass at its centre (each side's out-of-range mass at its own
  mean); it is within `wasserstein_bound` = sum over bins of (reference share + current share) * bin width / 2,
  over the reference std, of scipy's on the raw rows (bins below and above the grid span min..lo and hi..max);
* a quantile lies in the returned [lower, upper] (the bins holding its order statistics), the estimate
  interpolates inside it.

Per categorical feature (values normalised as the drift counts are: `categories.category_sql`): rows, missing,
counts of the reference's `top_k` commonest categories, one count for the reference's other categories and one
for categories it never had. Jensen-Shannon and chi-square equal drift.py's when the reference's categories are all
tracked (top_k at least its cardinality; categories it never had pool without loss for these two, PSI is exact
only when there are none); otherwise JS is at most `jensenshannon_bound` below the exact value (pooling only
loses divergence, at most half the pooled mass in bits).

Performance, as sufficient statistics: binary classifiers keep the confusion counts at the threshold, a score
histogram per label on the reference's score quantiles (ROC AUC within +- half the share of positive-negative
pairs that share a bin, returned as `roc_auc_bound`), the log-loss and Brier sums; regressors keep n and the
sums of errors, absolute errors, squared errors and of the label, shifted by the reference's label mean (for a
stable R^2); multiclass models keep `multiclass.MulticlassSums` (confusion matrix; log-loss sums and per-class
histograms of p_k over the labelled rows that logged probabilities: log loss is exact over those rows, ROC AUC
binned within `roc_auc_bound`) and the predicted class's distribution over the class names (a categorical with
every class tracked, so its drift is exact); fairness is not kept for them. Fairness keeps per attribute and group n, selected, labelled, tp, fp, fn, tn and the absolute error.
Accuracy, precision, recall, F1, MAE, RMSE and R^2 from a merged profile equal scikit-learn's on the rows.

A window's drift verdict per feature (`window_drift`) is drift.py's decision made on these figures, and its picture
(`window_comparison`) the two sides' counts on the profile bins, in `distributions.Comparison`'s form.

No Dagster, no I/O: arrays in, dataclasses and JSON-able dicts out.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from scipy.interpolate import PchipInterpolator

from monitor_assets.stats import drift as D
from monitor_assets.stats.categories import MISSING
from monitor_assets.stats.distributions import ABOVE, BELOW, OTHER, Comparison, evidence_of
from monitor_assets.stats.distributions import MISSING as MISSING_LABEL
from monitor_assets.stats.distributions import _bucket as bucket
from monitor_assets.stats.multiclass import MulticlassSums

BINS = 20  # numeric bins of a profile (plus the out-of-range two; drift's PSI bins are added where they differ)
TOP_K = 20  # tracked categories per categorical feature
SCORE_BINS = 100  # bins of the score histograms (at the reference's score quantiles)
EPS = float(np.finfo(float).eps)  # probabilities are clipped to [EPS, 1 - EPS] for the log loss, as scikit-learn does
PROFILE_FORMAT = 1
MULTICLASS = "multiclass_classification"
FAIRNESS_FIELDS = ("n", "selected", "n_labelled", "tp", "fp", "fn", "tn", "abs_error")


def as_text(values) -> pd.Series:
    """Category values as text, None where missing (None, NaN, '')."""
    s = pd.Series(values)
    text = s.astype(str).astype(object)  # pandas' C loop; str() of each value
    return text.where(s.notna().to_numpy() & (text != "").to_numpy(), None)


def category_text(values) -> pd.Series:
    """Category values as profiles count them: text, missing ones as `categories.MISSING`."""
    return as_text(values).fillna(MISSING)


@dataclass(frozen=True)
class CategoryCodes:
    """Category values factorized once: each row's code into `names`, numbered in order of first appearance (as
    `pd.factorize` numbers them). `part` recodes some rows as factorizing those rows alone would, so the parts of a
    frame are counted with `np.bincount` instead of pandas per part."""

    codes: np.ndarray
    names: np.ndarray  # object

    @classmethod
    def of(cls, values) -> CategoryCodes:
        codes, names = pd.factorize(category_text(values))
        return cls(codes, np.asarray(names, dtype=object))

    def part(self, rows: np.ndarray | None) -> CategoryCodes:
        """The rows at positions `rows` (ascending, no repeats; None: all), numbered in their own order of first
        appearance: the order in which their pandas path (value_counts, factorize) met the names."""
        if rows is None or len(rows) == len(self.codes):  # all the rows, in order: numbered as they are
            return self
        codes = self.codes[rows]
        present, first = np.unique(codes, return_index=True)
        order = present[np.argsort(first)]
        local = np.empty(len(self.names), np.intp)
        local[order] = np.arange(len(order))
        return CategoryCodes(local[codes], self.names[order])

    def counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=len(self.names))


def by_count(counts: np.ndarray) -> np.ndarray:
    """Positions of `counts` (one per name, in order of first appearance) from the largest count down, ties where
    pandas' `value_counts` leaves them: its `sort_values(ascending=False)` (`pandas.core.sorting.nargsort`) argsorts
    the reversed counts with numpy's quicksort, which is not stable past 16 values, and reverses the result. A
    profile keeps its category counts in this order, so its JSON text does not depend on how they were counted."""
    at = np.arange(len(counts))[::-1]
    return at[np.ascontiguousarray(counts)[::-1].argsort(kind="quicksort")][::-1]


# ---------------------------------------------------------------------------------------------------------------
# The layout a reference fixes


@dataclass(frozen=True)
class NumericBins:
    """One numeric feature's bins: drift.py's fine grid (lo, hi, fine) and the fine-count indices where each
    profile bin starts (0: below the grid, fine + 1: above it), a superset of drift's PSI cuts."""

    lo: float
    hi: float
    fine: int
    cuts: tuple[int, ...]
    psi_cuts: tuple[int, ...]

    @classmethod
    def from_reference(cls, profile: D.NumericProfile, bins: int = BINS) -> NumericBins:
        """Bins at the reference's quantiles (on its fine grid), plus its PSI bins' edges."""
        fine = profile.bins
        cuts = {0, 1, fine + 1, *D._quantile_cuts(profile.counts.counts, bins), *profile.psi_cuts}
        return cls(profile.lo, profile.hi, fine, tuple(sorted(c for c in cuts if c <= fine + 1)),
                   tuple(profile.psi_cuts))

    @classmethod
    def from_values(cls, values: np.ndarray, bins: int = BINS, fine: int = D.FINE_BINS) -> NumericBins:
        """The same from raw reference values (grid from their 0.1% and 99.9% quantiles, as the reference profile)."""
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        q = list(np.quantile(v, [0.001, 0.999])) if len(v) else None
        lo, hi, fine = D.grid_bounds(q, float(v.min()) if len(v) else None, float(v.max()) if len(v) else None, fine)
        counter = D.NumericCounter(lo, hi, fine)
        counter.add(v)
        counts = counter.result()
        return cls.from_reference(D.NumericProfile(lo, hi, fine, counts, D._quantile_cuts(counts.counts, D.PSI_BINS)),
                                  bins)

    @property
    def edges(self) -> np.ndarray:
        """Value edges between the profile bins (len(cuts) - 1 of them: lo, ..., hi)."""
        width = D._span(self.lo, self.hi) / self.fine
        return np.array([self.lo + (c - 1) * width if c <= self.fine else self.hi for c in self.cuts[1:]])

    def to_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "fine": self.fine, "cuts": list(self.cuts), "psi_cuts": list(self.psi_cuts)}

    @classmethod
    def from_dict(cls, d: dict) -> NumericBins:
        return cls(d["lo"], d["hi"], d["fine"], tuple(d["cuts"]), tuple(d["psi_cuts"]))


@dataclass(frozen=True)
class CategoricalBins:
    """One categorical feature's tracked categories (the reference's commonest) and every category it had."""

    tracked: tuple[str, ...]
    known: frozenset[str]

    @classmethod
    def from_values(cls, values, top_k: int = TOP_K) -> CategoricalBins:
        counts = as_text(values).value_counts(dropna=True)
        return cls(tuple(counts.index[:top_k]), frozenset(counts.index))

    def to_dict(self) -> dict:
        return {"tracked": list(self.tracked), "known": sorted(self.known)}

    @classmethod
    def from_dict(cls, d: dict) -> CategoricalBins:
        return cls(tuple(d["tracked"]), frozenset(d["known"]))


@dataclass(frozen=True)
class ProfileBins:
    """The layout of one model's profiles, fixed per reference version: feature bins, the task, the decision
    threshold and score edges (binary), the label shift (regression), the sensitive attributes."""

    numeric: dict[str, NumericBins]
    categorical: dict[str, CategoricalBins]
    task: str | None = None  # binary_classification | regression | None (features only)
    threshold: float = 0.5
    score_edges: tuple[float, ...] = ()
    label_shift: float = 0.0
    attributes: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # multiclass: the class names, code k is classes[k]

    @classmethod
    def from_reference(cls, reference: pd.DataFrame, features: list[D.FeatureSpec], task: str | None = None,
                       score: str = "score", label: str = "label", threshold: float = 0.5,
                       attributes: tuple[str, ...] = (), bins: int = BINS, top_k: int = TOP_K,
                       score_bins: int = SCORE_BINS, classes: tuple[str, ...] = ()) -> ProfileBins:
        """The layout from the reference rows (drift's reference profiles give the same numeric bins through
        `NumericBins.from_reference`)."""
        numeric = {f.name: NumericBins.from_values(reference[f.name].to_numpy(float), bins)
                   for f in features if f.kind == "numeric"}
        categorical = {f.name: CategoricalBins.from_values(reference[f.name], top_k)
                       for f in features if f.kind == "categorical"}
        edges, shift = (), 0.0
        if task == "binary_classification":
            s = reference[score].to_numpy(float)
            s = s[np.isfinite(s)]
            edges = tuple(float(e) for e in np.unique(np.quantile(s, np.linspace(0, 1, score_bins + 1)[1:-1])))
        elif task == "regression":
            y = reference[label].to_numpy(float)
            shift = float(np.mean(y[np.isfinite(y)])) if np.isfinite(y).any() else 0.0
        if task == MULTICLASS and len(classes) < 2:
            raise ValueError(f"a multiclass layout needs at least 2 class names, got {list(classes)}")
        # multiclass: no fairness counts (see the module docstring), so no attributes
        return cls(numeric, categorical, task, threshold, edges, shift,
                   () if task == MULTICLASS else tuple(attributes), tuple(classes) if task == MULTICLASS else ())

    @property
    def prediction(self) -> CategoricalBins | None:
        """Multiclass: the predicted class's categories, every class tracked (so its drift is exact)."""
        return CategoricalBins(self.classes, frozenset(self.classes)) if self.classes else None

    def to_dict(self) -> dict:
        out = {"numeric": {k: v.to_dict() for k, v in self.numeric.items()},
               "categorical": {k: v.to_dict() for k, v in self.categorical.items()},
               "task": self.task, "threshold": self.threshold, "score_edges": list(self.score_edges),
               "label_shift": self.label_shift, "attributes": list(self.attributes)}
        if self.classes:  # only then: the other layouts keep the fingerprint they were stored with
            out["classes"] = list(self.classes)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> ProfileBins:
        return cls({k: NumericBins.from_dict(v) for k, v in d["numeric"].items()},
                   {k: CategoricalBins.from_dict(v) for k, v in d["categorical"].items()},
                   d["task"], d["threshold"], tuple(d["score_edges"]), d["label_shift"], tuple(d["attributes"]),
                   tuple(d.get("classes", ())))

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the layout: profiles merge only with profiles on the same layout."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Columns


@dataclass
class NumericColumn:
    n: int
    n_missing: int
    minimum: float | None
    maximum: float | None
    total: float  # in units of `scale` (drift.py's NumericCounts convention)
    total_sq: float
    under_sum: float
    over_sum: float
    scale: float
    counts: np.ndarray  # one per profile bin: below the grid, the bins, above the grid

    @classmethod
    def build(cls, values: np.ndarray, bins: NumericBins) -> NumericColumn:
        x = np.asarray(values, float)
        counter = D.NumericCounter(bins.lo, bins.hi, bins.fine)  # the drift counts' own binning, so PSI is exact
        counter.add(x)
        finite = x[np.isfinite(x)]
        return cls.from_counts(counter.result(), bins, float(finite.min()) if len(finite) else None,
                               float(finite.max()) if len(finite) else None)

    @classmethod
    def from_counts(cls, c: D.NumericCounts, bins: NumericBins, minimum: float | None,
                    maximum: float | None) -> NumericColumn:
        """From drift's fine counts on the bins' grid (what `analysis.queries.count_histograms` returns for
        {name: (bins.lo, bins.hi, bins.fine)}) and the finite minimum and maximum."""
        return cls(c.n, c.n_missing, minimum, maximum, c.total, c.total_sq, c.under_sum, c.over_sum, c.scale,
                   np.add.reduceat(c.counts, list(bins.cuts)))

    @property
    def n_valid(self) -> int:
        return self.n - self.n_missing

    def summary(self) -> D.NumericCounts:
        """drift.py's counts record (mean and std with its overflow guard; `counts` are the profile bins)."""
        return D.NumericCounts(self.n, self.n_missing, self.total, self.total_sq, self.counts, self.under_sum,
                               self.over_sum, self.scale)

    @staticmethod
    def merge(columns: list[NumericColumn]) -> NumericColumn:
        unit = max(c.scale for c in columns)  # powers of 2: rescaling is exact

        def add(attr: str, power: int = 1) -> float:
            return math.fsum(getattr(c, attr) * (c.scale / unit) ** power for c in columns)

        mins = [c.minimum for c in columns if c.minimum is not None]
        maxs = [c.maximum for c in columns if c.maximum is not None]
        return NumericColumn(sum(c.n for c in columns), sum(c.n_missing for c in columns),
                             min(mins) if mins else None, max(maxs) if maxs else None, add("total"),
                             add("total_sq", 2), add("under_sum"), add("over_sum"), unit,
                             np.sum([c.counts for c in columns], axis=0))

    def to_dict(self) -> dict:
        return {"n": self.n, "n_missing": self.n_missing, "min": self.minimum, "max": self.maximum,
                "sum": self.total, "sum_sq": self.total_sq, "under_sum": self.under_sum, "over_sum": self.over_sum,
                "scale": self.scale, "counts": [int(v) for v in self.counts]}

    @classmethod
    def from_dict(cls, d: dict) -> NumericColumn:
        return cls(d["n"], d["n_missing"], d["min"], d["max"], d["sum"], d["sum_sq"], d["under_sum"], d["over_sum"],
                   d["scale"], np.asarray(d["counts"], dtype=np.int64))


@dataclass
class CategoricalColumn:
    n: int
    n_missing: int
    counts: dict[str, int]  # tracked categories seen
    other: int  # the reference's categories beyond the tracked ones
    unseen: int  # categories the reference never had

    @classmethod
    def build(cls, values, bins: CategoricalBins) -> CategoricalColumn:
        return cls.from_codes(CategoryCodes.of(values), bins)

    @classmethod
    def from_codes(cls, values: CategoryCodes, bins: CategoricalBins) -> CategoricalColumn:
        """From factorized values: `from_counts` of their counts in `value_counts`' order (`by_count`)."""
        counts = values.counts()
        order = by_count(counts)
        return cls.from_counts(dict(zip(values.names[order].tolist(), counts[order].tolist(), strict=True)), bins)

    @classmethod
    def from_counts(cls, counts: dict[str, int], bins: CategoricalBins) -> CategoricalColumn:
        """From category counts with missing values under `categories.MISSING` (as drift counts them)."""
        tracked = set(bins.tracked)
        out = {str(c): int(v) for c, v in counts.items() if c in tracked and v}
        missing = int(counts.get(MISSING, 0))
        other = int(sum(v for c, v in counts.items() if c not in tracked and c in bins.known))
        n = int(sum(counts.values()))
        return cls(n, missing, out, other, n - missing - other - sum(out.values()))

    def vector(self, bins: CategoricalBins) -> np.ndarray:
        """[tracked..., other, unseen, missing]."""
        return np.array([self.counts.get(c, 0) for c in bins.tracked] + [self.other, self.unseen, self.n_missing],
                        dtype=float)

    @staticmethod
    def merge(columns: list[CategoricalColumn]) -> CategoricalColumn:
        counts: dict[str, int] = {}
        for c in columns:
            for k, v in c.counts.items():
                counts[k] = counts.get(k, 0) + v
        return CategoricalColumn(sum(c.n for c in columns), sum(c.n_missing for c in columns), counts,
                                 sum(c.other for c in columns), sum(c.unseen for c in columns))

    def to_dict(self) -> dict:
        return {"n": self.n, "n_missing": self.n_missing, "counts": self.counts, "other": self.other,
                "unseen": self.unseen}

    @classmethod
    def from_dict(cls, d: dict) -> CategoricalColumn:
        return cls(d["n"], d["n_missing"], {k: int(v) for k, v in d["counts"].items()}, d["other"], d["unseen"])


# ---------------------------------------------------------------------------------------------------------------
# Performance and fairness


@dataclass
class BinaryStats:
    n: int  # scored rows
    predicted_positive: int
    n_labelled: int
    tp: int
    fp: int
    fn: int
    tn: int
    log_loss_sum: float
    brier_sum: float
    positives: np.ndarray  # labelled positives per score bin (len(score_edges) + 1)
    negatives: np.ndarray

    @classmethod
    def build(cls, scores: np.ndarray, labels: np.ndarray, bins: ProfileBins,
              predicted: np.ndarray | None = None) -> BinaryStats:
        """`labels`: 1, 0 or NaN (not known yet); `predicted`: the logged class, else score >= threshold."""
        s, y = np.asarray(scores, float), np.asarray(labels, float)
        scored = np.isfinite(s)
        d = (s >= bins.threshold) if predicted is None else np.asarray(predicted, float) == 1
        lab = scored & np.isfinite(y)
        yl, dl, sl = y[lab] == 1, d[lab], s[lab]
        p = np.clip(sl, EPS, 1 - EPS)
        edges = np.asarray(bins.score_edges)
        idx = np.searchsorted(edges, sl, side="right")
        return cls(int(scored.sum()), int(np.sum(d & scored)), int(lab.sum()), int(np.sum(yl & dl)),
                   int(np.sum(~yl & dl)), int(np.sum(yl & ~dl)), int(np.sum(~yl & ~dl)),
                   float(-np.sum(np.where(yl, np.log(p), np.log1p(-p)))), float(np.sum((sl - yl) ** 2)),
                   np.bincount(idx[yl], minlength=len(edges) + 1), np.bincount(idx[~yl], minlength=len(edges) + 1))

    @staticmethod
    def merge(parts: list[BinaryStats]) -> BinaryStats:
        ints = {k: sum(getattr(p, k) for p in parts) for k in ("n", "predicted_positive", "n_labelled", "tp", "fp",
                                                                 "fn", "tn")}
        return BinaryStats(**ints, log_loss_sum=math.fsum(p.log_loss_sum for p in parts),
                           brier_sum=math.fsum(p.brier_sum for p in parts),
                           positives=np.sum([p.positives for p in parts], axis=0),
                           negatives=np.sum([p.negatives for p in parts], axis=0))

    def metrics(self) -> dict[str, float]:
        """scikit-learn's definitions on the labelled rows (NaN where undefined); AUC with its error bound."""
        auc, bound = auc_from_histograms(self.positives, self.negatives)
        n = self.n_labelled
        return {"accuracy": _div(self.tp + self.tn, n), "precision": _div(self.tp, self.tp + self.fp),
                "recall": _div(self.tp, self.tp + self.fn), "f1": _div(2 * self.tp, 2 * self.tp + self.fp + self.fn),
                "roc_auc": auc, "roc_auc_bound": bound, "log_loss": _div(self.log_loss_sum, n),
                "brier_score": _div(self.brier_sum, n), "positive_rate": _div(self.tp + self.fn, n),
                "predicted_positive_rate": _div(self.predicted_positive, self.n), "n_labelled": float(n)}

    def to_dict(self) -> dict:
        return {"n": self.n, "predicted_positive": self.predicted_positive, "n_labelled": self.n_labelled,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn, "log_loss_sum": self.log_loss_sum,
                "brier_sum": self.brier_sum, "positives": [int(v) for v in self.positives],
                "negatives": [int(v) for v in self.negatives]}

    @classmethod
    def from_dict(cls, d: dict) -> BinaryStats:
        return cls(**{**d, "positives": np.asarray(d["positives"], np.int64),
                      "negatives": np.asarray(d["negatives"], np.int64)})


def auc_from_histograms(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """ROC AUC from score histograms per label (pairs in one bin count one half) and the bound on its error:
    the exact AUC is within +- half the share of positive-negative pairs that share a bin."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    n1, n0 = pos.sum(), neg.sum()
    if not (n1 and n0):
        return math.nan, math.nan
    below = np.cumsum(neg) - neg
    auc = float(np.sum(pos * (below + neg / 2)) / (n1 * n0))
    return auc, float(np.sum(pos * neg) / (2 * n1 * n0))


@dataclass
class RegressionStats:
    n_labelled: int
    shift: float  # labels are summed as y - shift (the reference's mean label): R^2 without cancellation
    sum_error: float  # prediction - label
    sum_abs_error: float
    sum_sq_error: float
    sum_y: float  # of y - shift
    sum_y_sq: float

    @classmethod
    def build(cls, predictions: np.ndarray, labels: np.ndarray, bins: ProfileBins) -> RegressionStats:
        p, y = np.asarray(predictions, float), np.asarray(labels, float)
        ok = np.isfinite(p) & np.isfinite(y)
        e, yc = p[ok] - y[ok], y[ok] - bins.label_shift
        return cls(int(ok.sum()), bins.label_shift, float(e.sum()), float(np.abs(e).sum()), float(np.dot(e, e)),
                   float(yc.sum()), float(np.dot(yc, yc)))

    @staticmethod
    def merge(parts: list[RegressionStats]) -> RegressionStats:
        return RegressionStats(sum(p.n_labelled for p in parts), parts[0].shift,
                               *(math.fsum(getattr(p, k) for p in parts)
                                 for k in ("sum_error", "sum_abs_error", "sum_sq_error", "sum_y", "sum_y_sq")))

    def metrics(self) -> dict[str, float]:
        n = self.n_labelled
        ss_tot = self.sum_y_sq - self.sum_y * self.sum_y / n if n else math.nan
        return {"mae": _div(self.sum_abs_error, n), "rmse": math.sqrt(self.sum_sq_error / n) if n else math.nan,
                "r2": 1 - self.sum_sq_error / ss_tot if n and ss_tot > 0 else math.nan,
                "mean_error": _div(self.sum_error, n), "n_labelled": float(n)}

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> RegressionStats:
        return cls(**d)


def _sparse(counts: np.ndarray) -> list[list[int]]:
    """[flat indices, counts] of the nonzero cells: a day's AUC histograms are mostly empty."""
    flat = np.asarray(counts).ravel()
    at = np.flatnonzero(flat)
    return [at.tolist(), flat[at].tolist()]


def _dense(pair: list[list[int]], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape[0] * shape[1], np.int64)
    out[np.asarray(pair[0], np.int64)] = np.asarray(pair[1], np.int64)
    return out.reshape(shape)


@dataclass
class MulticlassStats:
    """A multiclass model's labelled rows as `multiclass.MulticlassSums`: the confusion matrix of every labelled
    row with a predicted class, and the log-loss sums and AUC histograms of those that also logged usable
    probabilities (so log loss and ROC AUC are over the rows that have them)."""

    sums: MulticlassSums

    @classmethod
    def build(cls, labels: np.ndarray, predicted: np.ndarray, probabilities, n_classes: int) -> MulticlassStats:
        """`labels` and `predicted`: codes (NaN: not known); a code outside 0..K-1 is an unknown class, as
        stats.multiclass counts it. `probabilities`: per row a sequence of K numbers, or None; or all rows' as
        `probability_matrix` gives them (checked once for many parts of a frame)."""
        y, d = np.asarray(labels, float), np.asarray(predicted, float)
        lab = np.isfinite(y) & np.isfinite(d)
        # a non-integer label code names no class: unknown (-1) rather than an error
        yl = np.where(y[lab] == np.floor(y[lab]), y[lab], -1).astype(np.int64)
        dl = np.where(d[lab] == np.floor(d[lab]), d[lab], -1).astype(np.int64)
        everything = MulticlassSums.of(yl, dl, n_classes)
        if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2 and probabilities.shape[1] == n_classes:
            proba = np.asarray(probabilities[lab], float)
        else:
            proba = probability_matrix([probabilities[i] for i in np.flatnonzero(lab)] if probabilities is not None
                                       else [None] * len(yl), n_classes)
        usable = np.isfinite(proba).all(axis=1) & (proba >= 0).all(axis=1)  # `_usable`'s test, row by row
        if not usable.any():
            return cls(everything)
        part = MulticlassSums.of(yl[usable], dl[usable], n_classes, proba[usable])
        return cls(MulticlassSums(everything.confusion, part.loss_n, part.loss_sum, part.loss_sq, part.pos, part.neg))

    @property
    def n_labelled(self) -> int:
        return int(self.sums.confusion.sum())

    @staticmethod
    def merge(parts: list[MulticlassStats]) -> MulticlassStats:
        total = parts[0].sums
        for p in parts[1:]:
            total = total + p.sums
        # `+` adds the loss sums in order; fsum keeps a window's value independent of the order of its days
        return MulticlassStats(MulticlassSums(total.confusion, total.loss_n, math.fsum(p.sums.loss_sum for p in parts),
                                              math.fsum(p.sums.loss_sq for p in parts), total.pos, total.neg))

    def metrics(self) -> dict[str, float]:
        """stats.multiclass's figures, named as performance_daily names them (`daily_metrics`): accuracy, macro
        precision and recall (a present class never predicted or never labelled counting 0), f1 (= f1_macro),
        f1_weighted, log_loss and roc_auc (one-vs-rest, macro, binned) with `roc_auc_bound`: the exact AUC is
        within it (the mean over the classes counted of half the share of their pairs sharing a bin)."""
        m = self.sums.metrics()
        present = (m.per_class.support + m.per_class.predicted) > 0
        macro = {k: float(m.per_class[k][present].fillna(0.0).mean()) if present.any() else math.nan
                 for k in ("precision", "recall")}
        ties = self.sums.auc_tie_share()
        defined = np.isfinite(ties) & np.isfinite(m.per_class.roc_auc.to_numpy(float))
        return {"accuracy": m.accuracy, "precision": macro["precision"], "recall": macro["recall"], "f1": m.macro_f1,
                "f1_macro": m.macro_f1, "f1_weighted": m.weighted_f1, "log_loss": m.log_loss, "roc_auc": m.roc_auc,
                "roc_auc_bound": float(np.mean(ties[defined]) / 2) if defined.any() else math.nan,
                "n_labelled": float(m.n)}

    def to_dict(self) -> dict:
        s = self.sums
        return {"confusion": s.confusion.tolist(), "loss_n": s.loss_n, "loss_sum": s.loss_sum, "loss_sq": s.loss_sq,
                "bins": None if s.pos is None else s.pos.shape[1],
                "pos": None if s.pos is None else _sparse(s.pos), "neg": None if s.neg is None else _sparse(s.neg)}

    @classmethod
    def from_dict(cls, d: dict) -> MulticlassStats:
        cm = np.asarray(d["confusion"], np.int64)
        shape = (cm.shape[0] - 1, d["bins"]) if d["bins"] else None
        return cls(MulticlassSums(cm, d["loss_n"], d["loss_sum"], d["loss_sq"],
                                  _dense(d["pos"], shape) if shape else None, _dense(d["neg"], shape) if shape else None))


def probability_matrix(rows, n_classes: int) -> np.ndarray:
    """Logged probabilities (per row a sequence of K numbers, or None) as an (n, K) float array, a row of NaN where
    they are not usable (`_usable`)."""
    out = np.full((len(rows), n_classes), np.nan)
    for i, row in enumerate(rows):
        if _usable(row, n_classes):
            out[i] = np.asarray(row, float)
    return out


def _usable(row, n_classes: int) -> bool:
    """Logged probabilities stats.multiclass can take: K finite numbers >= 0 (others: as if not logged)."""
    if row is None or (isinstance(row, float) and math.isnan(row)):
        return False
    try:
        v = np.asarray(row, float)
    except (TypeError, ValueError):
        return False
    return v.shape == (n_classes,) and bool(np.isfinite(v).all()) and bool((v >= 0).all())


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def fairness_counts(groups: dict[str, np.ndarray | CategoryCodes], predicted: np.ndarray, labels: np.ndarray,
                    predictions: np.ndarray | None = None) -> dict[str, dict[str, list]]:
    """Per attribute and group: n, selected, n_labelled, tp, fp, fn, tn, abs_error (`predictions` for regressors:
    the absolute error on labelled rows). Missing group values are a group of their own (MISSING); groups in order
    of first appearance (`groups`' values, or their `CategoryCodes` made once for many parts)."""
    d = np.asarray(predicted, float) == 1
    y = np.asarray(labels, float)
    lab = np.isfinite(y)
    err = np.abs(np.asarray(predictions, float) - y) if predictions is not None else np.zeros(len(y))
    cells = {"n": np.ones(len(y), bool), "selected": d, "n_labelled": lab, "tp": lab & d & (y == 1),
             "fp": lab & d & (y == 0), "fn": lab & ~d & (y == 1), "tn": lab & ~d & (y == 0)}
    out: dict[str, dict[str, list]] = {}
    for attribute, values in groups.items():
        found = values if isinstance(values, CategoryCodes) else CategoryCodes.of(values)
        codes, names = found.codes, found.names
        k = len(names)
        sums = [np.bincount(codes, weights=cells[f], minlength=k) for f in FAIRNESS_FIELDS[:-1]]
        errors = np.bincount(codes, weights=np.where(lab, err, 0.0), minlength=k)
        out[attribute] = {str(name): [int(v[i]) for v in sums] + [float(errors[i])] for i, name in enumerate(names)}
    return out


def _merge_fairness(parts: list[dict[str, dict[str, list]]]) -> dict[str, dict[str, list]]:
    out: dict[str, dict[str, list]] = {}
    for attribute in sorted({a for p in parts for a in p}):
        groups = sorted({g for p in parts for g in p.get(attribute, {})})
        out[attribute] = {}
        for grp in groups:
            rows = [p[attribute][grp] for p in parts if grp in p.get(attribute, {})]
            out[attribute][grp] = [sum(r[i] for r in rows) for i in range(7)] + [math.fsum(r[7] for r in rows)]
    return out


def fairness_summary(counts: dict[str, dict[str, list]], classifier: bool, min_group_size: int
                     ) -> dict[str, dict[str, float]]:
    """Per attribute, the disparities `fairness.fairness_table` gives for these counts, among groups of at least
    `min_group_size` rows, without its per-group frame (it costs ~40 ms an attribute in pandas, which a model's
    segments times its windows multiply; tests check the figures equal): classifiers demographic_parity_ratio,
    demographic_parity_difference, equalized_odds_difference and the p-values of both tests; regressors
    mae_ratio (smallest over largest group MAE)."""
    from monitor_assets.stats.fairness import selection_independence_p

    out: dict[str, dict[str, float]] = {}
    for attribute, groups in counts.items():
        v = np.array([groups[g] for g in groups], float).reshape(-1, len(FAIRNESS_FIELDS))
        n, selected, n_labelled, tp, fp, fn, tn, abs_error = v[v[:, 0] >= min_group_size].T
        if not classifier:
            mae = abs_error[n_labelled > 0] / n_labelled[n_labelled > 0]
            hi = float(mae.max()) if len(mae) else math.nan
            out[attribute] = {"mae_ratio": float(mae.min()) / hi if len(n) > 1 and hi > 0 else math.nan}
            continue
        figures = dict.fromkeys(("demographic_parity_ratio", "demographic_parity_difference",
                                 "equalized_odds_difference", "demographic_parity_p_value",
                                 "equalized_odds_p_value"), math.nan)
        out[attribute] = figures
        if len(n) < 2:
            continue
        rate = selected[n > 0] / n[n > 0]
        if len(rate) >= 2:
            figures["demographic_parity_difference"] = float(rate.max() - rate.min())
            figures["demographic_parity_ratio"] = float(rate.min() / rate.max()) if rate.max() > 0 else math.nan
        figures["demographic_parity_p_value"] = selection_independence_p(selected, n)
        gaps = []
        for hit, miss in ((tp, fn), (fp, tn)):  # TPR first: it wins a tie, as in fairness_table
            known = (hit + miss) > 0
            if known.sum() >= 2:
                r = hit[known] / (hit[known] + miss[known])
                gaps.append((float(r.max() - r.min()),
                             selection_independence_p(hit[known], (hit + miss)[known])))
        if gaps:
            gap, p = max(gaps, key=lambda g: g[0])
            figures["equalized_odds_difference"], figures["equalized_odds_p_value"] = gap, p
    return out


def fairness_frame(counts: dict[str, dict[str, list]]) -> pd.DataFrame:
    """The counts in the form `fairness.fairness_table` takes (attribute, grp, n, selected, ...)."""
    rows = [{"attribute": a, "grp": g, **dict(zip(FAIRNESS_FIELDS, v, strict=True))}
            for a, groups in counts.items() for g, v in groups.items()]
    return pd.DataFrame(rows, columns=["attribute", "grp", *FAIRNESS_FIELDS])


# ---------------------------------------------------------------------------------------------------------------
# The profile


@dataclass
class Profile:
    """One model-day (or, merged, a window): keys, the days it covers, and the mergeable parts."""

    layout: str  # ProfileBins.fingerprint
    keys: dict[str, str]  # model_id, model_version, segment ...: '*' once profiles that differ are merged
    start: str  # first day (ISO)
    end: str  # last day
    days: int  # daily profiles merged into it
    n_rows: int
    numeric: dict[str, NumericColumn]
    categorical: dict[str, CategoricalColumn]
    binary: BinaryStats | None = None
    regression: RegressionStats | None = None
    fairness: dict[str, dict[str, list]] = field(default_factory=dict)
    multiclass: MulticlassStats | None = None
    prediction: CategoricalColumn | None = None  # multiclass: the predicted class's distribution over the names

    def to_dict(self) -> dict:
        extra = {} if self.multiclass is None else {"multiclass": self.multiclass.to_dict(),
                                                    "prediction": self.prediction.to_dict()}
        return {**extra, "format": PROFILE_FORMAT, "layout": self.layout, "keys": self.keys, "start": self.start,
                "end": self.end, "days": self.days, "n_rows": self.n_rows,
                "numeric": {k: v.to_dict() for k, v in self.numeric.items()},
                "categorical": {k: v.to_dict() for k, v in self.categorical.items()},
                "binary": self.binary.to_dict() if self.binary else None,
                "regression": self.regression.to_dict() if self.regression else None, "fairness": self.fairness}

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        if d.get("format") != PROFILE_FORMAT:
            raise ValueError(f"profile format {d.get('format')!r}, this code reads {PROFILE_FORMAT}")
        return cls(d["layout"], dict(d["keys"]), d["start"], d["end"], d["days"], d["n_rows"],
                   {k: NumericColumn.from_dict(v) for k, v in d["numeric"].items()},
                   {k: CategoricalColumn.from_dict(v) for k, v in d["categorical"].items()},
                   BinaryStats.from_dict(d["binary"]) if d["binary"] else None,
                   RegressionStats.from_dict(d["regression"]) if d["regression"] else None,
                   {a: {g: list(v) for g, v in groups.items()} for a, groups in d["fairness"].items()},
                   MulticlassStats.from_dict(d["multiclass"]) if d.get("multiclass") else None,
                   CategoricalColumn.from_dict(d["prediction"]) if d.get("prediction") else None)

    @property
    def performance(self) -> BinaryStats | RegressionStats | MulticlassStats | None:
        return self.binary or self.regression or self.multiclass

    @property
    def n_labelled(self) -> int:
        return self.performance.n_labelled if self.performance is not None else 0

    def metrics(self) -> dict[str, float]:
        return self.performance.metrics() if self.performance is not None else {}


def build_profile(rows: pd.DataFrame, bins: ProfileBins, keys: dict[str, str], day: str, score: str = "score",
                  label: str = "label", predicted: str | None = None, probabilities: str = "proba") -> Profile:
    """One model-day's (segment's) profile of `rows`: the features in `bins`, the score and label (NaN label: not
    known yet), the logged class in `predicted` (else score >= threshold), the sensitive attributes.
    Multiclass: `predicted` and `label` hold class codes, `probabilities` the logged probabilities (a sequence
    per row or None); no score and no fairness counts (the multiclass fairness of analysis is per class and day,
    not kept here). Many parts of one frame: `ProfileColumns.of` once, then `profile_of` per part."""
    return profile_of(ProfileColumns.of(rows, bins, score, label, predicted, probabilities), None, keys, day)


@dataclass
class ProfileColumns:
    """The columns of a frame that its profiles read (`build_profile`'s arguments), as arrays made once, the
    categories factorized once: each part's profile (`profile_of`) then costs numpy on its rows, not the pandas
    objects a sub-frame's profile made (about 5 ms a profile, whatever its rows)."""

    bins: ProfileBins
    n: int
    numeric: dict[str, np.ndarray]
    categorical: dict[str, CategoryCodes]
    score: np.ndarray | None = None
    label: np.ndarray | None = None
    predicted: np.ndarray | None = None  # binary: the logged class (None: score >= threshold); multiclass: codes
    probabilities: np.ndarray | None = None  # multiclass: `probability_matrix`
    shown: CategoryCodes | None = None  # multiclass: the predicted class's name
    attributes: dict[str, CategoryCodes] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: pd.DataFrame, bins: ProfileBins, score: str = "score", label: str = "label",
           predicted: str | None = None, probabilities: str = "proba") -> ProfileColumns:
        """`rows`' columns as `build_profile` reads them (see there); elementwise, so a part's values are the
        frame's at its rows."""
        out = cls(bins, len(rows), {k: rows[k].to_numpy(float) for k in bins.numeric},
                  {k: CategoryCodes.of(rows[k]) for k in bins.categorical})
        if bins.task not in (MULTICLASS, "binary_classification", "regression"):
            return out
        out.label = (pd.to_numeric(rows[label], errors="coerce").to_numpy(float) if label in rows
                     else np.full(len(rows), np.nan))
        if bins.task == MULTICLASS:
            d = pd.to_numeric(rows[predicted], errors="coerce").to_numpy(float)
            names = np.asarray(bins.classes, dtype=object)
            known = np.isfinite(d) & (d >= 0) & (d < len(names)) & (d == np.floor(d))
            # an unknown code is a category the reference never had; no code at all is missing
            shown = np.where(known, names[np.where(known, d, 0).astype(np.int64)],
                             np.where(np.isfinite(d), "code " + pd.Series(d).astype(str).to_numpy(object), None))
            out.predicted, out.shown = d, CategoryCodes.of(shown)
            if probabilities in rows:  # checked once here, not once a part
                out.probabilities = probability_matrix(rows[probabilities].tolist(), len(bins.classes))
        else:
            out.score = rows[score].to_numpy(float)
            out.predicted = rows[predicted].to_numpy(float) if predicted else None
            out.attributes = {a: CategoryCodes.of(rows[a]) for a in bins.attributes}
        return out


def profile_of(columns: ProfileColumns, rows: np.ndarray | None, keys: dict[str, str], day: str) -> Profile:
    """The profile of the rows of `columns` at positions `rows` (None: all). Positions ascending, as a sub-frame
    of the rows holds them: float sums depend on the order (and, for `NumericCounter`, on contiguity: a part's
    values are a fresh contiguous array, as a groupby's sub-frame of a frame's own blocks gives them)."""
    def take(values):
        return values if rows is None or values is None else values[rows]

    bins = columns.bins
    n = columns.n if rows is None else len(rows)
    numeric = {k: NumericColumn.build(take(columns.numeric[k]), b) for k, b in bins.numeric.items()}
    categorical = {k: CategoricalColumn.from_codes(columns.categorical[k].part(rows), b)
                   for k, b in bins.categorical.items()}
    binary = regression = multiclass = prediction = None
    fairness: dict = {}
    if bins.task == MULTICLASS:
        prediction = CategoricalColumn.from_codes(columns.shown.part(rows), bins.prediction)
        multiclass = MulticlassStats.build(take(columns.label), take(columns.predicted), take(columns.probabilities),
                                           len(bins.classes))
    if bins.task in ("binary_classification", "regression"):
        s, y, d = take(columns.score), take(columns.label), take(columns.predicted)
        groups = {a: codes.part(rows) for a, codes in columns.attributes.items()}
        if bins.task == "binary_classification":
            binary = BinaryStats.build(s, y, bins, d)
            cls = (s >= bins.threshold).astype(float) if d is None else (d == 1).astype(float)
            fairness = fairness_counts(groups, cls, y)
        else:
            regression = RegressionStats.build(s, y, bins)
            fairness = fairness_counts(groups, np.zeros(n), y, s)
    return Profile(bins.fingerprint, {k: str(v) for k, v in keys.items()}, day, day, 1, n, numeric,
                   categorical, binary, regression, fairness, multiclass, prediction)


def merge(profiles: list[Profile]) -> Profile:
    """One profile of all of them (a window, or segments into a total): counts add exactly, float sums are
    `math.fsum`med (order-independent). Refuses profiles on different layouts (reference versions)."""
    if not profiles:
        raise ValueError("nothing to merge")
    layouts = {p.layout for p in profiles}
    if len(layouts) > 1:
        raise ValueError(f"profiles on different layouts (reference versions) cannot be merged: {sorted(layouts)}")
    first = profiles[0]
    keys = {k: v if all(p.keys.get(k) == v for p in profiles) else "*" for k, v in first.keys.items()}
    binaries = [p.binary for p in profiles if p.binary is not None]
    regressions = [p.regression for p in profiles if p.regression is not None]
    multiclass = [p.multiclass for p in profiles if p.multiclass is not None]
    predictions = [p.prediction for p in profiles if p.prediction is not None]
    return Profile(first.layout, keys, min(p.start for p in profiles), max(p.end for p in profiles),
                   sum(p.days for p in profiles), sum(p.n_rows for p in profiles),
                   {k: NumericColumn.merge([p.numeric[k] for p in profiles]) for k in first.numeric},
                   {k: CategoricalColumn.merge([p.categorical[k] for p in profiles]) for k in first.categorical},
                   BinaryStats.merge(binaries) if binaries else None,
                   RegressionStats.merge(regressions) if regressions else None,
                   _merge_fairness([p.fairness for p in profiles]),
                   MulticlassStats.merge(multiclass) if multiclass else None,
                   CategoricalColumn.merge(predictions) if predictions else None)


# ---------------------------------------------------------------------------------------------------------------
# Figures from a profile: quantiles and drift distances with their error bounds


def _bin_ranges(col: NumericColumn, bins: NumericBins) -> tuple[np.ndarray, np.ndarray]:
    """Each profile bin's value range: below the grid from the minimum, above it to the maximum."""
    edges = bins.edges
    lo = np.r_[min(col.minimum, bins.lo) if col.minimum is not None else bins.lo, edges]
    hi = np.r_[edges, max(col.maximum, bins.hi) if col.maximum is not None else bins.hi]
    return lo, hi


def quantile(col: NumericColumn, bins: NumericBins, q: float) -> tuple[float, float, float]:
    """(estimate, lower, upper) of numpy's (linear) q-quantile of the valid values: it lies in [lower, upper],
    the ranges of the bins holding the two order statistics it interpolates; the estimate interpolates within."""
    n = col.n_valid
    if not n:
        return math.nan, math.nan, math.nan
    lo, hi = _bin_ranges(col, bins)
    cum = np.cumsum(col.counts)
    pos = (n - 1) * q
    b_low = int(np.searchsorted(cum, math.floor(pos), side="right"))
    b_high = int(np.searchsorted(cum, math.ceil(pos), side="right"))
    pad = D._span(bins.lo, bins.hi) * 1e-9  # a value on an edge may be binned either side of it
    lower = max(lo[b_low] - pad, col.minimum)
    upper = min(hi[b_high] + pad, col.maximum)
    before = cum[b_low] - col.counts[b_low]
    share = (pos + 0.5 - before) / col.counts[b_low]  # the order statistic's place among its bin's values
    estimate = lo[b_low] + min(max(share, 0.0), 1.0) * (hi[b_low] - lo[b_low])
    return float(min(max(estimate, lower), upper)), float(lower), float(upper)


def numeric_distances(reference: NumericColumn, current: NumericColumn, bins: NumericBins,
                      p_values: bool = True, only: str | None = None) -> dict[str, float]:
    """drift.py's distances of `current` from `reference` (both profiled on `bins`), with their error bounds
    against the same statistics on the raw rows (see the module docstring). `p_values=False` leaves out the KS
    p-value (NaN): scipy's exact distribution costs about 10 ms a feature at large n, most of a window's time.
    `only`: that statistic alone (and the KS p-value with 'ks'), as a verdict needs: the same value, a third of
    the work."""
    want = lambda name: only is None or only == name  # noqa: E731
    out: dict[str, float] = {}
    if want("psi") or want("jensenshannon"):
        cuts = list(bins.cuts)
        psi_groups = [cuts.index(c) for c in bins.psi_cuts]  # PSI bins start at these profile bins
        ref_psi = np.append(np.add.reduceat(reference.counts, psi_groups), reference.n_missing)
        cur_psi = np.append(np.add.reduceat(current.counts, psi_groups), current.n_missing)
        if want("psi"):
            out["psi"] = D.psi(ref_psi, cur_psi)
        if want("jensenshannon"):
            out["jensenshannon"] = D.js_distance(ref_psi, cur_psi)
    if want("ks"):
        if p_values:
            ks, ks_p = D.ks_binned(reference.counts, current.counts)
        else:  # ks_binned's statistic without its p-value
            n, m = reference.n_valid, current.n_valid
            ks = (float(np.max(np.abs(np.cumsum(reference.counts) / n - np.cumsum(current.counts) / m)))
                  if n and m else math.nan)
            ks_p = math.nan
        out.update(ks=ks, ks_p_value=ks_p)
    if only is not None and only != "wasserstein":
        return out
    p = reference.counts / max(reference.n_valid, 1)
    q = current.counts / max(current.n_valid, 1)
    if only is None:
        out["ks_bound"] = float(np.max(np.maximum(p, q))) if reference.n_valid and current.n_valid else math.nan
    std = reference.summary().std
    if not (reference.n_valid and current.n_valid and std and math.isfinite(std) and std > 0):
        return {**out, "wasserstein": math.nan, "wasserstein_bound": math.nan}
    # masses: inner bins at their centres, each side's out-of-range rows at that side's own mean
    edges = bins.edges
    centres = (edges[:-1] + edges[1:]) / 2
    w = np.diff(edges)
    position, ref_mass, cur_mass = [centres], [p[1:-1]], [q[1:-1]]
    bound = float(np.sum((p[1:-1] + q[1:-1]) * w)) / 2
    for col, share, side in ((reference, p, 0), (current, q, 1)):
        for b, total, edge, extreme in ((0, col.under_sum, bins.lo, col.minimum), (-1, col.over_sum, bins.hi,
                                                                                  col.maximum)):
            if col.counts[b]:
                position.append([total * col.scale / col.counts[b]])
                ref_mass.append([share[b] if side == 0 else 0.0])
                cur_mass.append([share[b] if side == 1 else 0.0])
                bound += share[b] * abs(edge - extreme) / 2
    pos = np.concatenate(position)
    order = np.argsort(pos, kind="stable")  # by position; equal ones in the order above
    w1 = D.wasserstein_binned(pos[order], np.concatenate(ref_mass)[order], np.concatenate(cur_mass)[order])
    return {**out, "wasserstein": w1 / std, "wasserstein_bound": bound / std}


def categorical_distances(reference: CategoricalColumn, current: CategoricalColumn,
                          bins: CategoricalBins) -> dict[str, float]:
    """drift.py's categorical statistics on [tracked..., other, unseen, missing], and the JS bound (0 when the
    reference's categories are all tracked)."""
    ref, cur = reference.vector(bins), current.vector(bins)
    keep = (ref + cur) > 0  # drift.py sees only categories present on either side
    ref, cur = ref[keep], cur[keep]
    chi, p = D.chisquare_counts(*D.pool_sparse(ref, cur))
    js = D.js_distance(ref, cur)
    pooled = (reference.other / max(reference.n, 1) + current.other / max(current.n, 1)) / 2  # bits at most
    return {"psi": D.psi(ref, cur), "jensenshannon": js, "chisquare": chi, "chisquare_p_value": p,
            "jensenshannon_bound": math.sqrt(js * js + pooled) - js if pooled else 0.0,
            "exact_psi": bool(reference.other == current.other == current.unseen == 0)}


def profile_size(profile: Profile) -> int:
    """Bytes of the profile as compact JSON (what a table cell holds)."""
    return len(json.dumps(profile.to_dict(), separators=(",", ":")).encode())


# ---------------------------------------------------------------------------------------------------------------
# A window's drift verdict and its picture, from the merged profile and the reference's profile


def wasserstein_scale(col: NumericColumn, bins: NumericBins) -> float | None:
    """drift.py's `wasserstein_scale` (the integral of sqrt(F (1 - F)) over the reference's CDF, over its std)
    from profile bins: F exact at the bin edges and a monotone cubic (PCHIP) between them, each out-of-range
    side's mass at its own mean as drift.py has it. An approximation (the inner bins are coarse: it overstates
    the fine grid's figure by up to 5% on normal, exponential, uniform and count data, up to 20% under a heavy
    right tail such as a lognormal's), used only for the noise floor of a feature whose fine reference counts are
    not at hand. None without spread."""
    std = col.summary().std
    n = col.n_valid
    if not n or col.minimum == col.maximum or not std or not std > 0 or not math.isfinite(std):
        return None
    edges = bins.edges
    cdf = np.cumsum(col.counts) / n
    at_edges = np.r_[cdf[0], cdf[1:-1]]  # F at each edge: below the grid, then after each inner bin
    keep = np.r_[True, np.diff(edges) > 0]
    grid = np.linspace(edges[0], edges[-1], 4001)
    u = np.clip(PchipInterpolator(edges[keep], at_edges[keep])(grid), 0.0, 1.0)
    inner = float(np.trapezoid(np.sqrt(u * (1 - u)), grid))
    under_mean = col.under_sum * col.scale / col.counts[0] if col.counts[0] else bins.lo
    over_mean = col.over_sum * col.scale / col.counts[-1] if col.counts[-1] else bins.hi
    above = 1 - col.counts[-1] / n
    tails = (math.sqrt(cdf[0] * (1 - cdf[0])) * max(bins.lo - under_mean, 0.0)
             + math.sqrt(above * (1 - above)) * max(over_mean - bins.hi, 0.0))
    return (inner + tails) / std


@dataclass
class WindowVerdict:
    """One feature's drift on a window, decided as drift.py decides a day's (`DriftResult` fields), with
    `evidence` on `distributions.drift_evidence`'s scale (1 = at the threshold)."""

    feature: str
    kind: str
    method: str
    statistic: float
    p_value: float | None
    p_value_adjusted: float | None
    threshold: float
    drifted: bool
    n_current: int
    n_reference: int
    evidence: float


def _constant_share(reference: NumericColumn, current: NumericColumn) -> tuple[float, float, int]:
    """A constant reference: (share of current values outside the reference's bin, binomial p-value, differing)."""
    k = int(np.flatnonzero(reference.counts)[0])
    differ = int(current.n_valid - current.counts[k])
    share = differ / current.n_valid if current.n_valid else math.nan
    p = float(scipy_stats.binom.sf(differ - 1, current.n_valid, 1 / (reference.n_valid + 1))) if current.n_valid else math.nan
    return share, p, differ


def window_drift(specs: list[D.FeatureSpec], reference: Profile, current: Profile, bins: ProfileBins,
                 alpha: float = D.P_VALUE_ALPHA, scales: dict[str, float | None] | None = None
                 ) -> dict[str, WindowVerdict]:
    """Each feature's drift verdict on a merged window profile, made as the daily drift makes it: the method
    chosen by kind and sample size (or the feature's own), the threshold raised to the noise floor for these
    sample sizes (or the feature's own), p-value tests corrected together by Benjamini-Hochberg
    (`drift.control_false_alarms`). From profile bins, so: Wasserstein within `wasserstein_bound`, KS at the bin
    edges, a categorical noise floor counted on the tracked categories, a constant reference judged on its bin;
    missing and unseen shares are not judged here (`drift.<f>.missing_share` is in the store). `scales`: the
    reference's Wasserstein noise scale per numeric feature from its fine counts (`drift.wasserstein_scale`, what
    the daily drift uses); a feature without one gets `wasserstein_scale` from the profile bins (coarser: it
    overstates it by up to 5-20%, so the floor sits a little higher)."""
    results: list[D.DriftResult] = []
    for spec in specs:
        if spec.kind == "numeric" and spec.name in current.numeric:
            ref, cur, b = reference.numeric[spec.name], current.numeric[spec.name], bins.numeric[spec.name]
            if not ref.n_valid or not cur.n_valid:
                continue
            method = D.choose_method("numeric", cur.n_valid, spec.method)
            constant = ref.minimum is not None and ref.minimum == ref.maximum  # (sums give no exact std 0)
            if constant and (method == "wasserstein" or spec.method == "auto"):
                method = "constant"
            if method == "constant":
                statistic, p_value, _ = _constant_share(ref, cur)
            else:
                d = numeric_distances(ref, cur, b, p_values=method == "ks", only=method)
                statistic, p_value = d[method], d["ks_p_value"] if method == "ks" else None
            scale = (scales or {}).get(spec.name) if spec.name in (scales or {}) else wasserstein_scale(ref, b)
            threshold = D._threshold(spec, method, ref.n_valid, cur.n_valid, len(b.psi_cuts) + 1, scale)
            results.append(D.DriftResult(spec.name, "numeric", method, statistic, p_value, threshold,
                                         D._flagged(method, statistic, p_value, threshold), cur.n, ref.n))
        elif spec.kind == "categorical" and spec.name in current.categorical:
            ref, cur, b = reference.categorical[spec.name], current.categorical[spec.name], bins.categorical[spec.name]
            n_valid = cur.n - cur.n_missing
            if not cur.n or not ref.n:
                continue
            method = D.choose_method("categorical", n_valid, spec.method)
            d = categorical_distances(ref, cur, b)
            statistic = d[method]
            p_value = d["chisquare_p_value"] if method == "chisquare" else None
            cells = int(np.sum((ref.vector(b) + cur.vector(b)) > 0))
            threshold = D._threshold(spec, method, ref.n, cur.n, cells)
            all_unseen = n_valid > 0 and cur.unseen == n_valid
            results.append(D.DriftResult(spec.name, "categorical", method, statistic, p_value, threshold,
                                         D._flagged(method, statistic, p_value, threshold) or all_unseen, cur.n,
                                         ref.n, all_unseen=all_unseen))
    D.control_false_alarms(results, alpha)
    evidence = _evidence(results)
    return {r.feature: WindowVerdict(r.feature, r.kind, r.method, float(r.statistic), r.p_value, r.p_value_adjusted,
                                     float(r.threshold), bool(r.drifted), r.n_current, r.n_reference, float(e))
            for r, e in zip(results, evidence, strict=True)}


def _evidence(results: list[D.DriftResult]) -> np.ndarray:
    """`distributions.drift_evidence` of the results."""
    nan = math.nan
    return evidence_of(np.array([r.statistic for r in results], dtype=float),
                       np.array([r.threshold for r in results], dtype=float),
                       np.array([r.method for r in results], dtype=object),
                       np.array([bool(r.drifted) for r in results], dtype=bool),
                       np.array([nan if r.p_value is None else r.p_value for r in results], dtype=float),
                       np.array([nan if r.p_value_adjusted is None else r.p_value_adjusted for r in results],
                                dtype=float))


def window_comparison(kind: str, reference: NumericColumn | CategoricalColumn,
                      current: NumericColumn | CategoricalColumn,
                      bins: NumericBins | CategoricalBins) -> Comparison:
    """The reference's and the window's distributions side by side (`distributions.Comparison`, the daily
    pictures' format) from the two profile columns: numerics on the profile bins (below the grid, the bins,
    above it, missing), categories as the tracked ones, the reference's others, categories it never had and
    missing. Buckets empty on both sides are left out, as the daily pictures do; shares are of all rows."""
    n_ref, n_cur = reference.n, current.n
    buckets = []
    if kind == "numeric":
        edges = bins.edges
        for i, (r, c) in enumerate(zip(reference.counts, current.counts, strict=True)):
            if i == 0:
                label, lo, hi = BELOW, None, bins.lo
            elif i == len(reference.counts) - 1:
                label, lo, hi = ABOVE, bins.hi, None
            else:
                lo, hi = edges[i - 1], edges[i]
                label = f"[{lo:.4g}, {hi:.4g})"
            if r or c or 0 < i < len(reference.counts) - 1:
                buckets.append(bucket(label, r, c, n_ref, n_cur, lo, hi))
        tail = [(MISSING_LABEL, reference.n_missing, current.n_missing)]
    else:
        for name in bins.tracked:
            buckets.append(bucket(name, reference.counts.get(name, 0), current.counts.get(name, 0), n_ref, n_cur))
        tail = [(OTHER, reference.other, current.other), ("never in the reference", reference.unseen, current.unseen),
                (MISSING_LABEL, reference.n_missing, current.n_missing)]
        buckets = [b for b in buckets if b.reference_count or b.current_count]
    buckets += [bucket(label, r, c, n_ref, n_cur) for label, r, c in tail if r or c]
    return Comparison(kind, buckets, n_ref, n_cur)
