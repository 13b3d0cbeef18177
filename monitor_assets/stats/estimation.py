"""Performance estimated before the labels arrive: confidence-based estimation (CBPE) for binary classifiers
and direct loss estimation (DLE) for regressors, each with a 95% band (the test the
`estimated_performance_within_baseline` check runs on the daily estimates is `stats.shortfall`).

CBPE. Scores are calibrated on the reference set (isotonic regression, kept only where 5-fold
cross-validation on the reference shows it lowers the Brier score; otherwise the score is the probability).
The reference is sorted by score once: every isotonic fit (scipy's, pooled like scikit-learn's) and every
chunk's ranks read that order.
With calibrated probabilities p_i and the day's decisions d_i the expected confusion matrix is
TP = sum p_i d_i, FP = sum (1 - p_i) d_i, FN = sum p_i (1 - d_i), TN = sum (1 - p_i)(1 - d_i), and the
metrics follow from it. ROC AUC is the expected AUC with p_i as soft labels:
sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j) (ties count one half), in O(n log n).

DLE. One `HistGradientBoostingRegressor` per loss, fitted on half the reference (at most FIT_ROWS rows of it),
predicts each row's |error| and error² from its features and prediction; its bias on the other half (at most
HELD_ROWS rows), which it never saw, is added back, and that half's out-of-fold residuals give the chunk errors,
the reweighting sample, the surrogate and the loss ratios (a reference of at most CROSS_FIT_ROWS rows cross-fits a
second model per loss on the other half, so all its rows serve, and the two models' mean predicts). MAE is the
mean predicted |error|, RMSE the root of the mean predicted error². On a day of many rows the trees run on a
sample and an additive surrogate on every row (a difference estimate, unbiased, its extra variance in the band).

The band. Realized = estimate + sampling noise + the estimator's own error. The sampling variance at the day's
row count treats each row's outcome as independent given its probability (analytic for accuracy, precision,
recall, specificity and, by the delta method, F1 and AUC; the predicted conditional spread
for MAE and RMSE). The estimator's own error is what the residuals (estimate - realized) on held-out reference
chunks show beyond their sampling variance, and for DLE the uncertainty of its bias correction (a mean over the
held rows, which the chunks, judged against that same mean, cannot show; without it the band covered the realized
MAE on about 75% of simulated 50,000-row days). They add; the band is estimate ± 1.96 sd.

Reweighted (`confidence_reweighted`, `loss_model_reweighted`): on a day whose inputs a domain classifier tells
apart from the reference's (`density_ratio`), the reference sample is weighted by the density ratio: CBPE
corrects P(label | score) by the weighted-minus-unweighted isotonic fit, DLE takes the weighted out-of-fold bias;
the band grows by the correction's own spread. Stable days are estimated exactly as without it.

Multiclass (pure functions; the task comes later): the expected K x K confusion matrix from per-class
probabilities, its accuracy, per-class precision and recall, macro and weighted F1, one-vs-rest AUC.

Assumptions: no concept shift (P(label | inputs) or P(error | features) is as in the reference), for plain CBPE
the reference's calibration P(label | score) holds on the day, rows are independent. A covariate shift is
followed; a concept shift is not.

No Dagster, no I/O: arrays in, dataclasses out.
"""

from __future__ import annotations

import base64
import math
import pickle
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from monitor_assets.stats.density_ratio import (
    MAX_ROWS,
    SAMPLE_ROWS,
    Columns,
    PreparedReference,
    density_ratio,
    one_thread,
    sample_rows,
)

Z95 = 1.959963984540054
CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc")
REGRESSOR_METRICS = ("mae", "rmse")
CONFIDENCE, LOSS_MODEL = "confidence", "loss_model"
# The same estimators with the reference reweighted by a density ratio on days whose inputs have shifted.
CONFIDENCE_REWEIGHTED, LOSS_MODEL_REWEIGHTED = "confidence_reweighted", "loss_model_reweighted"
# `estimation.method` per task; `auto` is the one that measured best (benchmarks/estimation_bench.py).
METHODS = {"binary_classification": ("auto", CONFIDENCE, CONFIDENCE_REWEIGHTED, "none"),
           "regression": ("auto", LOSS_MODEL, LOSS_MODEL_REWEIGHTED, "none"),
           "multiclass_classification": ("auto", CONFIDENCE, "none")}
AUTO_METHOD = {"binary_classification": CONFIDENCE, "regression": LOSS_MODEL_REWEIGHTED,
               "multiclass_classification": CONFIDENCE}
REWEIGHTED = (CONFIDENCE_REWEIGHTED, LOSS_MODEL_REWEIGHTED)
BOOTSTRAPS = 16  # refits of the weighted calibration behind the reweighted band
MULTICLASS_SIMULATIONS = 200  # seeded draws of the labels for the multiclass sampling error
FOLDS = 5  # cross-validation folds of the calibration choice and of the chunk residuals
MIN_CHUNKS = 10
# DLE on a day of more rows than EXACT_ROWS runs the loss models on a sample of max(SAMPLED_ROWS, n /
# SUBSAMPLE_FRACTION) rows and an additive surrogate on all (`LossEstimator`): the trees were 95% of a day's time.
# An eighth, not a tenth: the cheaper trees (LOSS_TREES) are rougher, so f - g spreads more than it did.
EXACT_ROWS = 5000
SAMPLED_ROWS = 2000
SUBSAMPLE_FRACTION = 8
SURROGATE_BINS = 16
LOSS_TREES, LOSS_LEARNING_RATE, LOSS_LEAVES = 8, 0.6, 15  # each loss model's boosting (`_loss_model`)
CROSS_FIT_ROWS = 10_000  # references up to this size cross-fit two loss models per loss (`LossEstimator.fit`)
FIT_ROWS = 10_000  # a larger reference's loss models learn from at most this many rows of one half
HELD_ROWS = SAMPLE_ROWS  # and at most this many of the other half give the out-of-fold residuals
RATIO_BINS, RATIO_LEVELS = 5, 50  # the shape of a row's loss around its predicted loss (expected losses)


@dataclass(frozen=True)
class Estimate:
    """One estimated metric of one model-day: the value, its 95% band, the rows it rests on, the method."""

    metric: str
    estimate: float
    lower: float
    upper: float
    n_rows: int
    method: str
    shift_auc: float = math.nan  # the domain classifier's AUC (reweighted methods; NaN otherwise)
    reweighted: bool = False  # the reference was reweighted for this day

    @property
    def standard_error(self) -> float:
        return band_standard_error(self.lower, self.upper)


def band_standard_error(lower: float, upper: float) -> float:
    """The standard error a stored 95% band stands for (the band is estimate ± Z95 sd)."""
    return (upper - lower) / (2 * Z95)


# -- classifiers: the expected confusion matrix -----------------------------------------------------------

def expected_confusion(p: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """Expected TP, FP, FN, TN of rows with probability `p` of being positive and decision `d` (0/1)."""
    p, d = np.asarray(p, float), np.asarray(d, float)
    return {"tp": float(np.sum(p * d)), "fp": float(np.sum((1 - p) * d)), "fn": float(np.sum(p * (1 - d))),
            "tn": float(np.sum((1 - p) * (1 - d)))}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def confusion_metrics(c: dict[str, float]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and specificity of a (possibly expected) confusion matrix."""
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    return {"accuracy": _ratio(tp + tn, tp + fp + fn + tn), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn), "specificity": _ratio(tn, tn + fp)}


class Ranking(NamedTuple):
    """Scores ranked once: `order` sorts them ascending (None: they are sorted already), `group` numbers the
    distinct scores along that order (None: no two are equal, the common case, which skips per-group sums)."""

    order: np.ndarray | None
    group: np.ndarray | None
    n: int


def _average_ranks(s: np.ndarray) -> Ranking:
    """The ranking of scores `s` (sorted input is recognised and not sorted again)."""
    s = np.asarray(s, float)
    order = None if len(s) < 2 or bool(np.all(s[1:] >= s[:-1])) else np.argsort(s)  # ties: any order
    sorted_s = s if order is None else s[order]
    step = sorted_s[1:] != sorted_s[:-1]
    return Ranking(order, None if bool(step.all()) else np.concatenate([[0], np.cumsum(step)]), len(s))


def _mid_ranks(r: Ranking) -> np.ndarray:
    """Each row's 1-based rank among the scores, ties sharing their mid-rank (rows in their original order)."""
    if r.group is None:
        sorted_ranks = np.arange(1.0, r.n + 1)
    else:
        counts = np.bincount(r.group)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sorted_ranks = (first + (counts + 1) / 2.0)[r.group]
    if r.order is None:
        return sorted_ranks
    ranks = np.empty(r.n)
    ranks[r.order] = sorted_ranks
    return ranks


def expected_auc(p: np.ndarray, s: np.ndarray, ranking: Ranking | None = None) -> float:
    """sum_{i != j} p_i (1 - p_j) [s_i > s_j] (ties one half) / sum_{i != j} p_i (1 - p_j), in O(n log n).
    `ranking`: `_average_ranks(s)` when the caller has it already."""
    p = np.asarray(p, float)
    if len(p) < 2:
        return math.nan
    r = ranking or _average_ranks(s)
    ps = p if r.order is None else p[r.order]
    qs = 1 - ps
    if r.group is None:  # no ties: each row against the rows below it
        numerator = float(np.sum(ps * (np.cumsum(qs) - qs)))
    else:
        n_groups = int(r.group[-1]) + 1
        pg = np.bincount(r.group, ps, n_groups)
        qg = np.bincount(r.group, qs, n_groups)
        selfg = np.bincount(r.group, ps * qs, n_groups)
        q_before = np.concatenate([[0.0], np.cumsum(qg)[:-1]])
        numerator = np.sum(pg * q_before) + 0.5 * np.sum(pg * qg - selfg)
    denominator = ps.sum() * qs.sum() - np.sum(ps * qs)
    return float(numerator / denominator) if denominator > 0 else math.nan


def auc_sampling_sd(p: np.ndarray, ranks: np.ndarray) -> float:
    """sd of the realized ROC AUC when each row's label is an independent Bernoulli(p_i), by the delta method
    on the Mann-Whitney form A = (S - n1 (n1 + 1) / 2) / (n1 (n - n1)), S = sum y_i r_i, n1 = sum y_i: both
    sums of independent terms, Var S = sum v r², Var n1 = sum v, Cov = sum v r (v = p (1 - p), r the mid-ranks).
    O(n) once the ranks are known; checked against simulated labels in the tests."""
    p = np.asarray(p, float)
    n, v = len(p), p * (1 - p)
    n1 = float(p.sum())
    big_s = float(np.sum(p * ranks))  # elementwise: a BLAS dot wakes its thread pool, slow on a busy machine
    d = n1 * (n - n1)
    if n < 2 or d <= 0:
        return math.nan
    num = big_s - n1 * (n1 + 1) / 2
    da_ds = 1 / d
    da_dn1 = (-(n1 + 0.5) * d - num * (n - 2 * n1)) / (d * d)
    vr = v * ranks
    var = (da_ds ** 2 * float(np.sum(vr * ranks)) + 2 * da_ds * da_dn1 * float(vr.sum())
           + da_dn1 ** 2 * float(v.sum()))
    return math.sqrt(max(var, 0.0))


def classifier_point_estimates(p: np.ndarray, d: np.ndarray, s: np.ndarray,
                               ranking: Ranking | None = None) -> dict[str, float]:
    """Every classifier metric expected from probabilities `p`, decisions `d` and raw scores `s`."""
    return _classifier_estimates(p, d, s, ranking, with_sd=False)[0]


def classifier_sampling_sd(p: np.ndarray, d: np.ndarray, s: np.ndarray, seed: int = 0,
                           ranking: Ranking | None = None) -> dict[str, float]:
    """Standard deviation of each realized metric when each row's label is an independent Bernoulli(p_i):
    analytic for the shares, the delta method for recall, specificity, F1 and ROC AUC. (`seed` is kept for
    callers; nothing here is simulated.)"""
    return _classifier_estimates(p, d, s, ranking)[1]


def _classifier_estimates(p: np.ndarray, d: np.ndarray, s: np.ndarray, ranking: Ranking | None = None,
                          with_sd: bool = True) -> tuple[dict, dict]:
    """Point estimates and (`with_sd`) sampling sd of one set of rows from one pass of sums, the scores ranked
    once (`ranking`, else here)."""
    p = np.asarray(p, float)
    sel = (np.asarray(d, float) > 0.5).astype(float)
    n, n_sel = len(p), float(sel.sum())
    total, a = float(p.sum()), float(np.sum(p * sel))  # expected positives; among the selected: TP
    b = total - a  # FN
    point = confusion_metrics({"tp": a, "fp": n_sel - a, "fn": b, "tn": (n - n_sel) - b})
    ranking = ranking or _average_ranks(s)
    point["roc_auc"] = expected_auc(p, s, ranking)
    if not with_sd:
        return point, {}
    v = p * (1 - p)
    vt, va = float(v.sum()), float(np.sum(v * sel))
    vb = vt - va
    neg_sel, neg_rest = n_sel - a, (n - n_sel) - b  # FP, TN

    def ratio_sd(x, vx, y, vy):  # sd of X / (X + Y), X and Y independent sums
        total = x + y
        return math.sqrt(max(y * y * vx + x * x * vy, 0.0) / total ** 4) if total > 0 else math.nan

    sd = {"accuracy": math.sqrt(vt) / n if n else math.nan,
          "precision": math.sqrt(max(va, 0.0)) / n_sel if n_sel else math.nan,
          "recall": ratio_sd(a, va, b, vb),
          "specificity": ratio_sd(neg_rest, vb, neg_sel, va)}
    denominator = n_sel + a + b
    sd["f1"] = (math.sqrt(max(4 * (n_sel + b) ** 2 * va + 4 * a * a * vb, 0.0)) / denominator ** 2
                if denominator > 0 else math.nan)
    sd["roc_auc"] = auc_sampling_sd(p, _mid_ranks(ranking))
    return point, sd


def realized_classifier_metrics(y: np.ndarray, d: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """The same metrics on labels `y` (the realized values the estimates are judged against)."""
    y = np.asarray(y, float)
    out = confusion_metrics(expected_confusion(y, d))
    out["roc_auc"] = expected_auc(y, s) if 0 < y.sum() < len(y) else math.nan
    return out


# -- calibration --------------------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Score -> probability: isotonic steps (interpolated) or the clipped score itself (identity)."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    @property
    def identity(self) -> bool:
        return not self.x

    def __call__(self, s: np.ndarray) -> np.ndarray:
        s = np.clip(np.asarray(s, float), 0.0, 1.0)
        return s if self.identity else np.interp(s, self.x, self.y)


def fit_isotonic(s: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> Calibration:
    """The (weighted) isotonic calibration of labels `y` on scores `s` clipped to [0, 1]: scikit-learn's
    `IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")` as a function (checked in the tests), without
    its per-fit overhead."""
    s = np.clip(np.asarray(s, float), 0.0, 1.0)
    order = np.argsort(s)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, float)[order]
    return _calibration(s[order], np.asarray(y, float)[order], w)


def _calibration(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Calibration:
    """`fit_isotonic` on scores already clipped and sorted ascending."""
    x, fitted = _isotonic_steps(x, y, w)
    # only the points where the steps change are needed to interpolate (scikit-learn keeps the same)
    keep = np.ones(len(x), bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return Calibration([float(v) for v in x[keep]], [float(v) for v in fitted[keep]])


def _isotonic_steps(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct x, the weighted isotonic fit at each) of `y` on `x` sorted ascending (rows of weight 0 left out;
    equal x pooled by their weighted mean, as scikit-learn does)."""
    from scipy.optimize import isotonic_regression

    keep = w > 0
    if not keep.all():
        x, y, w = x[keep], y[keep], w[keep]
    start = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])  # one point per distinct x
    ws = np.add.reduceat(w, start)
    fitted = np.clip(isotonic_regression(np.add.reduceat(w * y, start) / ws, weights=ws).x, 0.0, 1.0)
    return x[start], fitted


def _isotonic_at(x: np.ndarray, y: np.ndarray, w: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The weighted isotonic fit of `y` on `x` (x sorted ascending, within [0, 1]), evaluated at `at` by linear
    interpolation and clipped at the ends: `fit_isotonic(x, y, w)(at)` for a caller that has sorted once."""
    xs, fitted = _isotonic_steps(x, y, w)
    return np.interp(np.clip(at, 0.0, 1.0), xs, fitted)


def _folds(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % k


def _chunk_bias_var(estimates: list[dict], realized: list[dict], sampling: list[dict],
                    metrics: tuple[str, ...]) -> dict[str, float]:
    """Per metric, the estimator's own error variance: mean squared residual (estimate - realized) over the
    held-out chunks less their mean sampling variance (never below 0)."""
    out = {}
    for m in metrics:
        res = [(e[m] - r[m], sd[m] ** 2) for e, r, sd in zip(estimates, realized, sampling, strict=True)
               if np.isfinite(e[m]) and np.isfinite(r[m]) and np.isfinite(sd[m])]
        out[m] = max(float(np.mean([r * r - v for r, v in res])), 0.0) if len(res) >= 3 else 0.0
    return out


@dataclass
class ReferenceSample:
    """At most `density_ratio.SAMPLE_ROWS` reference rows kept with a reweighted estimator: the domain classifier's
    columns (features, then the score or prediction), and per row what the estimator reweights (for CBPE the
    score, label and decision; for DLE the out-of-fold residual of each loss model)."""

    x: np.ndarray
    categorical: list[bool]
    values: dict[str, np.ndarray]

    def prepared(self) -> PreparedReference:
        """The sample's domain-classifier design, built on the first day and kept in memory (not stored: it is
        a function of the rows)."""
        if "_prepared" not in self.__dict__:
            self.__dict__["_prepared"] = PreparedReference(self.x, self.categorical)
        return self.__dict__["_prepared"]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_prepared"}


def _sample(x: np.ndarray, categorical: list[bool], seed: int, **values: np.ndarray) -> ReferenceSample:
    i = sample_rows(len(x), SAMPLE_ROWS, seed + 2)
    return ReferenceSample(x[i].astype(np.float32), list(categorical), {k: np.asarray(v, float)[i] for k, v in values.items()})


def _shift(sample: ReferenceSample | None, x: np.ndarray | None, seed: int):
    """The density ratio of the sample against the day's columns `x` (None when the estimator does not reweight)."""
    if sample is None:
        return None
    if x is None or x.shape[1] != sample.x.shape[1]:
        raise ValueError(f"a reweighted estimator needs the day's {sample.x.shape[1] - 1} feature column(s)")
    return density_ratio(sample.prepared(), x, seed=seed)


@dataclass
class ConfidenceEstimator:
    """CBPE fitted on a reference set: the calibration, the decision threshold, and the estimator's own error
    variance per metric (from held-out reference chunks). Reweighted (`sample` set): on a day whose inputs the
    domain classifier tells apart from the reference's, the calibration P(y | score) is refitted on the
    reference sample weighted by the density ratio, and the band widens by the spread of that refit over
    bootstrap resamples."""

    calibration: Calibration
    threshold: float
    bias_var: dict[str, float]
    chunk_rows: int
    brier_identity: float
    brier_isotonic: float
    method: str = CONFIDENCE
    sample: ReferenceSample | None = None
    categories: dict[int, list[str]] = field(default_factory=dict)  # column -> the reference's categories

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, decisions: np.ndarray | None = None,
            threshold: float = 0.5, chunk_rows: int | None = None, seed: int = 0,
            features: np.ndarray | None = None, categorical: list[bool] | None = None,
            reweight: bool = False) -> ConfidenceEstimator:
        s, y = np.asarray(scores, float), np.asarray(labels, float)
        d = predicted_class(s, decisions, threshold)
        n = len(s)
        # Sorted by score once: every isotonic fit below and every chunk's ranks read the same order.
        order = np.argsort(s)  # equal scores are pooled by the isotonic fits and share a rank: any order
        ss, ys, ds = s[order], y[order], d[order]
        clipped = np.clip(ss, 0.0, 1.0)
        fold = _folds(n, FOLDS, seed)[order]
        held = {"identity": clipped, "isotonic": np.empty(n)}
        for k in range(FOLDS):
            train = fold != k
            held["isotonic"][~train] = _isotonic_at(clipped[train], ys[train], np.ones(int(train.sum())),
                                                    clipped[~train])
        brier = {name: float(np.mean((q - ys) ** 2)) for name, q in held.items()}
        use_isotonic = brier["isotonic"] < brier["identity"]
        calibration = _calibration(clipped, ys, np.ones(n)) if use_isotonic else Calibration()
        p = held["isotonic" if use_isotonic else "identity"]
        size = chunk_rows or max(50, n // 20)
        chunk = np.full(n, -1)
        permuted = np.random.default_rng(seed + 1).permutation(n)
        whole = (n // size) * size
        chunk[permuted[:whole]] = np.arange(whole) // size
        chunk = chunk[order]
        est, real, samp = [], [], []
        for c in range(n // size):
            i = np.flatnonzero(chunk == c)  # the chunk's rows, still sorted by score
            ranking = _average_ranks(ss[i])
            point, sd = _classifier_estimates(p[i], ds[i], ss[i], ranking)
            est.append(point)
            samp.append(sd)
            real.append(realized_classifier_metrics(ys[i], ds[i], ss[i]))  # sorted: no second sort
        sample = None
        if reweight:
            x, flags = _design(features, s, categorical)
            # drawn from the sorted rows, the sample is sorted by score too, as the isotonic refits want it
            sample = _sample(x[order], flags, seed, score=ss, label=ys, decision=ds)
        return cls(calibration, threshold, _chunk_bias_var(est, real, samp, CLASSIFIER_METRICS), size,
                   brier["identity"], brier["isotonic"], CONFIDENCE_REWEIGHTED if reweight else CONFIDENCE, sample)

    def estimate(self, scores: np.ndarray, decisions: np.ndarray | None = None,
                 metrics: tuple[str, ...] = CLASSIFIER_METRICS, seed: int = 0,
                 features: np.ndarray | None = None) -> list[Estimate]:
        s = np.asarray(scores, float)
        d = predicted_class(s, decisions, self.threshold)
        shift = _shift(self.sample, _design(features, s)[0] if self.sample is not None else None, seed)
        # Every metric is a function of the rows as a set: sorted by score once, the calibration's lookups
        # walk forward (np.interp is several times faster on sorted input) and the AUC needs no second sort.
        if np.array_equal(d, s >= self.threshold):
            s = np.sort(s)  # the decisions follow the threshold: they follow the sorted scores too
            d = (s >= self.threshold).astype(float)
        else:
            order = np.argsort(s)  # equal scores share a rank group: their order is free
            s, d = s[order], d[order]
        extra = {}
        p = self.calibration(s)
        if shift is not None and shift.applied:
            p = np.clip(p + self._weighting_effect(shift.weights, s), 0.0, 1.0)
            extra = self._refit_spread(shift.weights, s, d, seed)
        ranking = _average_ranks(s)  # sorted: only the ties are looked for
        point, sd = _classifier_estimates(p, d, s, ranking)
        auc, applied = (shift.auc, shift.applied) if shift is not None else (math.nan, False)
        return [replace(_band(m, point[m], sd[m], self.bias_var.get(m, 0.0) + extra.get(m, 0.0), len(s),
                              self.method, (0.0, 1.0)), shift_auc=auc, reweighted=applied)
                for m in metrics]

    def _weighting_effect(self, weights: np.ndarray, s: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        """How the density-ratio weights move P(y | score) at scores `s`: weighted minus unweighted isotonic fit
        on the same sample rows (`counts`: each row's multiplicity in a bootstrap resample, default 1). The
        difference, added to the full reference's calibration, cancels the small-sample bias an isotonic fit on
        a few thousand rows has on its own (measured: +0.8 points of expected accuracy at 5,000 rows, +0.2 at
        20,000)."""
        rs, ry = self.sample.values["score"], self.sample.values["label"]
        c = np.ones(len(rs)) if counts is None else counts
        return _isotonic_at(rs, ry, c * weights, s) - _isotonic_at(rs, ry, c, s)

    def _refit_spread(self, weights: np.ndarray, s: np.ndarray, d: np.ndarray, seed: int) -> dict[str, float]:
        """Variance of each point estimate over bootstrap resamples of the weighted reference sample (the
        weighting rests on the sample's effective rows only), judged on at most 5,000 of the day's rows."""
        j = sample_rows(len(s), MAX_ROWS, seed + 3)
        sj, dj = s[j], d[j]
        base, ranking = self.calibration(sj), _average_ranks(sj)
        rng = np.random.default_rng(seed + 4)
        n = len(weights)
        draws = []
        for _ in range(BOOTSTRAPS):
            counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
            p = np.clip(base + self._weighting_effect(weights, sj, counts), 0.0, 1.0)
            draws.append(classifier_point_estimates(p, dj, sj, ranking))
        return {m: float(np.nanvar([b[m] for b in draws], ddof=1)) for m in draws[0]}

    def to_bytes(self) -> bytes:
        return _dump(self)


def predicted_class(s: np.ndarray, decisions: np.ndarray | None, threshold: float) -> np.ndarray:
    """The logged decision where there is one (0/1, NaN for none), else score >= threshold."""
    rule = (s >= threshold).astype(float)
    if decisions is None:
        return rule
    d = np.asarray(decisions, float)
    return np.where(np.isfinite(d), (d > 0.5).astype(float), rule)


def _band(metric: str, value: float, sampling_sd: float, bias_var: float, n: int, method: str,
          bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    if not (np.isfinite(value) and np.isfinite(sampling_sd)):
        return Estimate(metric, float(value), math.nan, math.nan, n, method)
    half = Z95 * math.sqrt(sampling_sd ** 2 + bias_var)
    return Estimate(metric, float(value), float(max(value - half, bounds[0])), float(min(value + half, bounds[1])),
                    n, method)


# -- regressors: direct loss estimation ---------------------------------------------------------------------

@dataclass
class AdditiveSurrogate:
    """g(x) = mean + sum_j (a_j z_j + b_j z_j² + table_j[bin_j(x_j)]): per numeric column a quadratic in its
    standardized value (what carries the tails) plus, as for a categorical column, a step function (the
    reference's quantile bins, or its codes; one bin more for missing or unseen values), each stage fitted by
    ridge least squares on the reference. Evaluating it is a lookup per column: a small fraction of a tree
    ensemble's cost. It need only be close to the loss models, never right: the difference estimate stays
    unbiased."""

    edges: list[np.ndarray]  # per column: inner bin edges (numeric) or sorted codes (categorical)
    categorical: list[bool]
    columns: Columns | None = None
    quadratic: dict[str, np.ndarray] = field(default_factory=dict)  # loss -> coefficients on `columns`
    tables: dict[str, list[np.ndarray]] = field(default_factory=dict)  # loss -> per column, a value per bin
    means: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, x: np.ndarray, categorical: list[bool], targets: dict[str, np.ndarray],
            bins: int = SURROGATE_BINS, penalty: float = 1e-3) -> AdditiveSurrogate:
        edges = []
        for j, cat in enumerate(categorical):
            v = x[:, j][np.isfinite(x[:, j])]
            edges.append(np.unique(v) if cat else np.unique(_quantiles(np.sort(v), np.arange(1, bins) / bins))
                         if len(v) else np.empty(0))
        numeric = np.flatnonzero(~np.array(categorical, bool))
        out = cls(edges, list(categorical), Columns.of(x[:, numeric], None))
        design = out.columns.transform(x[:, numeric])
        quad_gram = design.T @ design + penalty * len(x) * np.eye(design.shape[1])
        index, sizes = out._bins(x), [len(e) + 2 for e in edges]
        offsets = np.r_[0, np.cumsum(sizes)]
        gram = np.zeros((offsets[-1], offsets[-1]))
        for j in range(len(sizes)):  # the one-hot design's Gram matrix, block by block, without the design
            for k in range(j, len(sizes)):
                block = np.bincount(index[j] * sizes[k] + index[k], minlength=sizes[j] * sizes[k])
                gram[offsets[j]:offsets[j + 1], offsets[k]:offsets[k + 1]] = block.reshape(sizes[j], sizes[k])
                gram[offsets[k]:offsets[k + 1], offsets[j]:offsets[j + 1]] = block.reshape(sizes[j], sizes[k]).T
        gram += penalty * len(x) * np.eye(len(gram))
        for loss, t in targets.items():
            out.means[loss] = float(np.mean(t))
            out.quadratic[loss] = np.linalg.solve(quad_gram, design.T @ (t - out.means[loss]))
            rest = t - out.means[loss] - design @ out.quadratic[loss]
            rhs = np.concatenate([np.bincount(index[j], rest, sizes[j]) for j in range(len(sizes))])
            beta = np.linalg.solve(gram, rhs)
            out.tables[loss] = [beta[offsets[j]:offsets[j + 1]] for j in range(len(sizes))]
        return out

    def _bins(self, x: np.ndarray, columns: list[int] | None = None) -> list[np.ndarray]:
        """Per column (all, or `columns`), each row's bin: 0..len(edges) for values, len(edges) + 1 for missing or
        unseen ones."""
        out = []
        for j in range(len(self.edges)) if columns is None else columns:
            e, cat, v = self.edges[j], self.categorical[j], x[:, j]
            b = np.searchsorted(e, v, side="left" if cat else "right")
            bad = ~np.isfinite(v)
            if cat:
                bad |= e[np.minimum(b, len(e) - 1)] != v if len(e) else True
            out.append(np.where(bad, len(e) + 1, b))
        return out

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.mean_and_rows(x, np.arange(len(x)))[1]

    def mean_and_rows(self, x: np.ndarray, rows: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(per loss, the mean of g over every row of `x`; g at `rows`). The mean needs no g of every row: each
        numeric column's mean standardized value and square (`Columns.transform`'s) and every column's bin
        counts (one sort of a numeric column, not a bin search per row) are enough."""
        numeric = np.flatnonzero(~np.array(self.categorical, bool))
        n = len(x)
        column_means = []
        for j, mu, sd in self.columns.numeric:  # the design's columns, as `Columns.transform` builds them
            v = x[:, numeric[j]]
            z = np.clip(np.where(np.isfinite(v), (v - mu) / (sd if sd > 0 else 1.0), 0.0), -10, 10)
            column_means += [float(z.mean()), float(np.mean(z * z)) / math.sqrt(2)]
        column_means = np.array(column_means) if column_means else np.zeros(1)
        counts = []
        for j, (e, cat) in enumerate(zip(self.edges, self.categorical, strict=True)):
            if cat:
                counts.append(np.bincount(self._bins(x, [j])[0], minlength=len(e) + 2))
            else:
                v = np.sort(x[:, j])  # missing values last
                finite = int(np.count_nonzero(np.isfinite(v)))
                below = np.searchsorted(v[:finite], e, side="left")  # rows below each edge
                counts.append(np.diff(np.r_[0, below, finite, n]))  # bin b: edges[b - 1] <= v < edges[b]
        design = self.columns.transform(x[rows][:, numeric])
        index = self._bins(x[rows])
        means, at = {}, {}
        for loss, tables in self.tables.items():
            means[loss] = (self.means[loss] + float(column_means @ self.quadratic[loss])
                           + sum(float(c @ t) for c, t in zip(counts, tables, strict=True)) / n)
            at[loss] = self.means[loss] + design @ self.quadratic[loss] + sum(
                t[b] for t, b in zip(tables, index, strict=True))
        return means, at


@dataclass
class LossEstimator:
    """DLE fitted on a reference set: one loss model per loss (|error|, error²) fitted on half the reference (a
    sample of at most FIT_ROWS rows), its bias on the other half (at most HELD_ROWS), an additive surrogate of it,
    and the estimator's own error variance per metric (two cross-fitted models per loss on a reference of at most
    CROSS_FIT_ROWS rows, and in fits stored before this scheme: their mean is the prediction). The band carries the
    bias's own variance (`bias_spread`). Reweighted (`sample` set): on a day whose inputs have shifted, the bias
    correction is the density-ratio-weighted mean of the sample's out-of-fold residuals, and that weighted mean's
    variance takes the place of `bias_spread`.

    A day of more than `EXACT_ROWS` rows is estimated by difference (two-phase sampling): the surrogate g on every
    row, the loss models f on a seeded sample of m = max(SAMPLED_ROWS, n / SUBSAMPLE_FRACTION) rows, and
    mean f = mean_all g + mean_sample (f - g). Unbiased whatever g is; its own variance (1 - m/n) Var(f - g) / m,
    measured on the sample, joins the band. Measured on the tests' regressor at 50,000 rows: the band widens by
    at most about 20% on a stable day (1 to 2% on a shifted one, where the estimator's own error dominates it)
    while the trees run on an eighth of the rows; since the band carries the bias's own variance, 2 to 3% on the
    benchmark's regressor."""

    models: dict[str, list]  # loss -> its loss model, or two cross-fitted ones (small references, older fits)
    bias: dict[str, float]
    bias_var: dict[str, float]
    categorical: list[bool]
    chunk_rows: int
    method: str = LOSS_MODEL
    categories: dict[int, list[str]] = field(default_factory=dict)  # column -> the reference's categories
    sample: ReferenceSample | None = None
    surrogate: AdditiveSurrogate | None = None
    # loss -> (inner edges of the predicted loss's bins, per bin the quantiles of realized / predicted loss)
    ratios: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # loss -> the variance of `bias` itself (the held residuals' variance / their count); None in older fits
    bias_spread: dict[str, float] | None = None

    @classmethod
    def fit(cls, features: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
            categorical: list[bool] | None = None, chunk_rows: int | None = None, seed: int = 0,
            max_iter: int | None = None, reweight: bool = False) -> LossEstimator:
        with one_thread():
            return cls._fit(features, predictions, labels, categorical, chunk_rows, seed, max_iter or LOSS_TREES,
                            reweight)

    @classmethod
    def _fit(cls, features, predictions, labels, categorical, chunk_rows, seed, max_iter, reweight) -> LossEstimator:
        x, cats = _design(features, predictions, categorical)
        error = np.asarray(labels, float) - np.asarray(predictions, float)
        targets = {"abs": np.abs(error), "sq": error ** 2}
        # One loss model per loss, fitted on half the reference; the other half, which it never saw, gives the
        # out-of-fold bias, the chunk residuals, the reweighting sample, the surrogate and the loss ratios. A small
        # reference (CROSS_FIT_ROWS) cross-fits a second model on the other half, so every row has its held-out
        # prediction: half of it would be too few rows for those. A larger reference is sampled: at most FIT_ROWS
        # rows of one half train, at most HELD_ROWS of the other are held out (at 50,000 rows the fit took 117 ms,
        # 35 of them predicting 25,000 held rows; now 36 ms, both at load 4 to 5).
        half = _folds(len(x), 2, seed)
        if len(x) <= CROSS_FIT_ROWS:
            train, held_rows = [np.flatnonzero(half == 0), np.flatnonzero(half == 1)], np.arange(len(x))
        else:
            train = [_subset(np.flatnonzero(half == 0), FIT_ROWS, seed + 6)]
            held_rows = _subset(np.flatnonzero(half == 1), HELD_ROWS, seed + 7)
        xh, where = x[held_rows], half[held_rows]
        models: dict[str, list] = {}
        held: dict[str, np.ndarray] = {}
        bins = [None] * len(train)  # per training fold, its binned rows: the losses' models share them
        for loss, target in targets.items():
            held[loss], models[loss] = np.empty(len(held_rows)), []
            for k, rows in enumerate(train):
                model = _loss_model(x[rows], target[rows], cats, seed, max_iter, bins[k])
                bins[k] = model.take_bins()
                held[loss][where != k] = np.maximum(model.predict(xh[where != k]), 0.0)
                models[loss].append(model)
        targets = {loss: t[held_rows] for loss, t in targets.items()}
        bias = {loss: float(np.mean(targets[loss] - held[loss])) for loss in targets}
        # chunks of a twentieth of the reference, as many as MIN_CHUNKS when the held rows are a sample
        size = chunk_rows or max(50, min(len(x) // 20, len(xh) // MIN_CHUNKS))
        order = np.random.default_rng(seed + 1).permutation(len(xh))
        est, real, samp = [], [], []
        for start in range(0, len(xh) - size + 1, size):
            i = order[start:start + size]
            pa, ps = held["abs"][i] + bias["abs"], held["sq"][i] + bias["sq"]
            point, sd = _loss_point(pa, ps), _loss_sd(pa, ps)
            est.append(point)
            samp.append(sd)
            real.append({"mae": float(np.mean(targets["abs"][i])), "rmse": float(np.sqrt(np.mean(targets["sq"][i])))})
        sample = (_sample(xh, cats, seed, **{loss: targets[loss] - held[loss] for loss in targets})
                  if reweight else None)
        # the surrogate follows the out-of-fold predictions (what the loss models say of rows they never saw)
        surrogate = AdditiveSurrogate.fit(xh, cats, held)
        ratios = {loss: _loss_ratios(held[loss] + bias[loss], targets[loss]) for loss in targets}
        # The bias is a mean over the held rows, uncertain by their residuals' spread: every chunk residual above is
        # measured against this same bias, so they cannot show it. It joins the band as the weighted bias's
        # variance does on a reweighted day (equal weights give this), and it grows as the held rows are fewer.
        spread = {loss: float(np.var(targets[loss] - held[loss], ddof=1)) / len(held_rows) for loss in targets}
        return cls(models, bias, _chunk_bias_var(est, real, samp, REGRESSOR_METRICS), cats, size,
                   LOSS_MODEL_REWEIGHTED if reweight else LOSS_MODEL, sample=sample,
                   surrogate=surrogate, ratios=ratios, bias_spread=spread)

    def estimate(self, features: np.ndarray, predictions: np.ndarray,
                 metrics: tuple[str, ...] = REGRESSOR_METRICS, seed: int = 0,
                 losses: dict[str, np.ndarray] | None = None) -> list[Estimate]:
        """`losses`: these rows' `model_losses`, when already predicted (a segment's rows are a day's)."""
        with one_thread():
            return self._estimate(features, predictions, metrics, seed, losses)

    def model_losses(self, features: np.ndarray, predictions: np.ndarray) -> dict[str, np.ndarray]:
        """Every row's |error| ("abs") and error² ("sq") as the loss models predict them, before the bias
        correction: row by row, so a subset's are the subset of these."""
        with one_thread():
            x, _ = _design(features, predictions)
            return {loss: _predict(ms, x) for loss, ms in self.models.items()}

    def _biases(self, x: np.ndarray, seed: int):
        """(bias per loss, its variance per loss, the density ratio or None): the reference's out-of-fold bias,
        weighted by the density ratio on a day whose inputs have shifted."""
        shift = _shift(self.sample, x, seed)
        bias, bias_var = dict(self.bias), dict(self.bias_spread or {})
        if shift is not None and shift.applied:
            w = shift.weights / shift.weights.sum()
            for loss in bias:
                r = self.sample.values[loss]
                bias[loss] = float(np.sum(w * r))
                bias_var[loss] = float(np.sum(w * w * (r - bias[loss]) ** 2))
        return bias, bias_var, shift

    def _estimate(self, features, predictions, metrics, seed, losses=None) -> list[Estimate]:
        x, _ = _design(features, predictions)
        n = len(x)
        bias, bias_var, shift = self._biases(x, seed)
        extra = {"abs": bias_var.get("abs", 0.0), "sq": bias_var.get("sq", 0.0)}
        if n <= EXACT_ROWS or self.surrogate is None:  # (None: a fit stored before the surrogate existed)
            pred = {loss: (_predict(ms, x) if losses is None else losses[loss]) + bias[loss]
                    for loss, ms in self.models.items()}
            mean = {loss: float(np.mean(p)) for loss, p in pred.items()}
        else:  # by difference: the surrogate on every row, the loss models on the sampled rows
            rows = sample_rows(n, max(SAMPLED_ROWS, n // SUBSAMPLE_FRACTION), seed + 5)
            m = len(rows)
            g_mean, g = self.surrogate.mean_and_rows(x, rows)
            pred, mean = {}, {}
            for loss, ms in self.models.items():
                f = np.mean([model.predict(x[rows]) for model in ms], axis=0)
                diff = np.maximum(f, 0.0) - g[loss]
                pred[loss] = np.maximum(f, 0.0) + bias[loss]
                mean[loss] = g_mean[loss] + float(np.mean(diff)) + bias[loss]
                extra[loss] += (1 - m / n) * float(np.var(diff, ddof=1)) / m
        point = {"mae": max(mean["abs"], 0.0), "rmse": math.sqrt(max(mean["sq"], 0.0))}
        sd = _loss_sd(pred["abs"], pred["sq"], n, mean["sq"])
        # the bias's and the sampling's own variance, carried to each metric (RMSE by the delta method)
        extra = {"mae": extra["abs"], "rmse": extra["sq"] / (4 * max(mean["sq"], 1e-300))}
        auc, applied = (shift.auc, shift.applied) if shift is not None else (math.nan, False)
        return [replace(_band(m, point[m], sd[m], self.bias_var.get(m, 0.0) + extra[m], n, self.method,
                              (0.0, math.inf)), shift_auc=auc, reweighted=applied)
                for m in metrics]

    def row_losses(self, features: np.ndarray, predictions: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """Every row's predicted |error| ("abs") and error² ("sq"), bias-corrected (by the density ratio where the
        day's inputs have shifted): what the retraining trigger counts for rows whose labels have not landed."""
        with one_thread():
            x, _ = _design(features, predictions)
            bias = self._biases(x, seed)[0]
            return {loss: _predict(ms, x) + bias[loss] for loss, ms in self.models.items()}

    def expected_losses(self, features: np.ndarray, predictions: np.ndarray, loss: str, cap: float = math.inf,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the expected loss and expected squared loss (`squared_error` or `absolute_error`), each
        outcome capped at `cap` first, as the retraining trigger caps realized losses.

        Assumption (stated where the trigger reports it): a row's loss is its predicted loss times a ratio drawn
        from the reference's realized losses over their mean prediction among rows of similar predicted loss
        (RATIO_BINS bins, RATIO_LEVELS quantiles each). That carries the reference's tails, so the capped mean is not overstated
        (min(E l, cap) would be, by Jensen) and the second moment keeps the heavy tail a normal approximation
        would miss; beyond the reference's largest ratios it cannot see (the cap bounds them anyway)."""
        key = {"absolute_error": "abs", "squared_error": "sq"}.get(loss)
        if key is None:
            raise ValueError(f"a loss model's expected losses are for squared_error or absolute_error, not {loss!r}")
        predicted = np.maximum(self.row_losses(features, predictions, seed)[key], 0.0)
        edges, quantiles = self.ratios[key]
        mean, square = np.empty(len(predicted)), np.empty(len(predicted))
        for start in range(0, len(predicted), 20_000):  # bounded memory: rows x levels at a time
            part = predicted[start:start + 20_000]
            values = np.minimum(part[:, None] * quantiles[np.searchsorted(edges, part, side="right")], cap)
            mean[start:start + 20_000], square[start:start + 20_000] = values.mean(axis=1), (values ** 2).mean(axis=1)
        return mean, square

    def to_bytes(self) -> bytes:
        return _dump(self)


def _quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile's (linear) `q` quantiles of values sorted ascending, read off the sorted values: np.quantile
    partitions once per quantile, several times slower than one sort (measured: 15 quantiles of 10,000 values)."""
    return np.interp(q * (len(ordered) - 1), np.arange(len(ordered)), ordered)


def _loss_ratios(predicted: np.ndarray, realized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner edges of RATIO_BINS bins of the predicted loss, per bin RATIO_LEVELS mid-quantiles of realized loss
    / the bin's mean predicted loss): the shape of a row's loss around its prediction, as the reference shows it.
    Divided by the bin's mean, not each row's own prediction: a row predicted near 0 would make its ratio
    explode (seen on the demo's forecaster: expected squared errors of 1e11)."""
    predicted = np.maximum(predicted, 0.0)
    edges = np.unique(_quantiles(np.sort(predicted), np.arange(1, RATIO_BINS) / RATIO_BINS))
    which = np.searchsorted(edges, predicted, side="right")
    levels = (np.arange(RATIO_LEVELS) + 0.5) / RATIO_LEVELS
    floor = 1e-9 * max(float(np.mean(predicted)), 1e-300)

    def shape(rows: np.ndarray) -> np.ndarray:
        ratio = np.sort(realized[rows]) / max(float(np.mean(predicted[rows])), floor)
        q = _quantiles(ratio, levels)
        # mid-quantiles miss a heavy tail's mass: scaled so their mean is the ratios' mean (the uncapped
        # expected loss stays exactly the bin's realized / predicted)
        return q * (float(np.mean(ratio)) / float(np.mean(q))) if np.mean(q) > 0 else q

    pooled = shape(np.ones(len(predicted), bool))
    quantiles = np.array([shape(which == b) if np.sum(which == b) >= 50 else pooled for b in range(len(edges) + 1)])
    return edges, quantiles


def feature_matrix(frame, features: list[tuple[str, bool]], categories: dict[int, list[str]]) -> np.ndarray:
    """A frame's feature columns (name, is categorical) as the float matrix a fitted estimator reads: numeric as
    numbers (anything else NaN), categories as codes into the reference's `categories` (by column position)."""
    if not features:
        return np.empty((len(frame), 0))
    columns = []
    for i, (name, categorical) in enumerate(features):
        values = frame[name].to_numpy(object)
        if categorical:
            columns.append(encode_categories([None if v is None or v != v else v for v in values],
                                             categories.get(i, [])))
        else:
            try:  # numbers (None as NaN) in one pass; a stray text value sends the column the slow way
                columns.append(np.asarray(values, float))
            except (TypeError, ValueError):
                columns.append(np.array([_number(v) for v in values], float))
    return np.column_stack(columns)


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _subset(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most `size` of `rows`, a seeded sample kept in their order."""
    return rows[sample_rows(len(rows), size, seed)]


def _predict(models: list, x: np.ndarray) -> np.ndarray:
    """The loss models' mean prediction (never below 0)."""
    return np.maximum(np.mean([m.predict(x) for m in models], axis=0), 0.0)


def _loss_model(x: np.ndarray, target: np.ndarray, cats: list[bool], seed: int, max_iter: int, bins=None):
    """A loss model: gradient boosting, `max_iter` (LOSS_TREES) trees of LOSS_LEAVES leaves at LOSS_LEARNING_RATE,
    no early stopping (stopping on a held-out tenth once moved the MAE estimate under a covariate shift about 1%
    further from the truth: the later trees extrapolate better). Few, large steps: a fit's time goes to
    scikit-learn's per-fit binning and per-split work, hardly to the rows, and the loss is a smooth, noisy function
    of the inputs. 8 trees at 0.6 against the former 30 at 0.3 (both of 15 leaves, 10,000 training rows), mean
    |estimate - realized| (MAE / RMSE) on 5,000-row days: the benchmark's regressor (8 reference seeds x 20 days)
    stable 0.0106 / 0.0185 (was 0.0105 / 0.0183), shifted plain 0.0190 / 0.0436 (0.0195 / 0.0410), shifted
    reweighted 0.0268 / 0.0503 (0.0270 / 0.0498); a harder loss (six numeric features and a categorical one,
    interactions, three of them shifted; 20 seeds x 10 days) stable 0.0202 / 0.0312 (0.0191 / 0.0307), shifted
    plain 0.038 / 0.061 (0.038 / 0.060), shifted reweighted 0.043 / 0.067 (0.041 / 0.068); band coverage the same
    within noise. 10 trees at 0.5 or 12 at 0.45 measured the same; 7 leaves were too coarse on the harder loss
    (shifted plain MAE 0.062), and 5,000 training rows too few on the benchmark's (shifted plain MAE 0.027)."""
    from monitor_assets.stats.boosting import LossBooster

    model = LossBooster(max_iter=max_iter, learning_rate=LOSS_LEARNING_RATE, max_leaf_nodes=LOSS_LEAVES,
                        random_state=seed, early_stopping=False,
                        categorical_features=np.array(cats) if any(cats) else None)
    model.given_bins = bins
    return model.fit(x, target)


def encode_categories(values, categories: list[str]) -> np.ndarray:
    """Category values as codes into the reference's `categories` (NaN for one it never saw, or missing)."""
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(str(v), np.nan) if v is not None else np.nan for v in values], float)


def _design(features: np.ndarray | None, predictions: np.ndarray,
            categorical: list[bool] | None = None) -> tuple[np.ndarray, list[bool]]:
    """The features (none allowed) with the score or prediction as the last column, and which are categorical."""
    p = np.asarray(predictions, float)
    f = np.empty((len(p), 0)) if features is None else np.asarray(features, float)
    f = f.reshape(len(f), -1) if f.ndim == 1 else f
    return np.column_stack([f, p]), list(categorical or [False] * f.shape[1]) + [False]


def _loss_point(pa: np.ndarray, ps: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.mean(pa)), "rmse": float(math.sqrt(max(float(np.mean(ps)), 0.0)))}


def _loss_sd(pa: np.ndarray, ps: np.ndarray, n: int | None = None, mean_sq: float | None = None
             ) -> dict[str, float]:
    """Sampling sd of the mean |error| over `n` rows (default: these rows; each row's spread: E e² - (E|e|)²) and
    of RMSE (delta method, Var(e²) = 2 (E e²)² as for normal errors). `pa`, `ps` may be a sample of the `n` rows
    (their mean spread stands for every row's)."""
    n = len(pa) if n is None else n
    if not n or not len(pa):
        return {"mae": math.nan, "rmse": math.nan}
    var_abs = float(np.mean(np.maximum(ps - pa * pa, 0.0)))
    mean_sq = max(float(np.mean(ps)) if mean_sq is None else mean_sq, 1e-300)
    sd_m2 = math.sqrt(float(np.mean(2 * ps * ps)) / n)
    return {"mae": math.sqrt(var_abs / n), "rmse": sd_m2 / (2 * math.sqrt(mean_sq))}


# -- multiclass classifiers: the expected K x K confusion matrix ---------------------------------------------
# The multiclass task lands with a later issue; these are its pure functions. Rows of `probs` are calibrated
# class probabilities (n x K), `predicted` the class each row was given (argmax or logged), `scores` the raw
# per-class scores the one-vs-rest AUC ranks by.

MULTICLASS_METRICS = ("accuracy", "f1_macro", "f1_weighted", "roc_auc")


def multiclass_predicted(scores: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
    """The logged class where there is one (0..K-1, NaN or negative for none), else the argmax of `scores`."""
    top = np.argmax(np.asarray(scores, float), axis=1)
    if predicted is None:
        return top
    logged = np.asarray(predicted, float)
    return np.where(np.isfinite(logged) & (logged >= 0), np.nan_to_num(logged, nan=-1), top).astype(int)


def expected_multiclass_confusion(probs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """M[a, b] = sum_i P(y_i = a) [predicted_i = b]: rows true class, columns predicted (as scikit-learn's
    confusion_matrix), each row's probabilities spread over its true-class cells."""
    probs = np.asarray(probs, float)
    k = probs.shape[1]
    onehot = np.eye(k)[np.asarray(predicted, int)]
    return probs.T @ onehot


def multiclass_confusion_metrics(m: np.ndarray) -> dict[str, float]:
    """Accuracy, macro and support-weighted F1, and per class precision, recall and F1 (`precision_<k>`, ...)
    of a (possibly expected) K x K confusion matrix. A class never predicted and never true has F1 0 and
    undefined precision and recall (scikit-learn's zero_division default for F1)."""
    return {key: float(value) for key, value in _confusion_figures(np.asarray(m, float)).items()}


def _confusion_figures(m: np.ndarray) -> dict[str, np.ndarray]:
    """`multiclass_confusion_metrics` of a K x K matrix or of a stack of them (..., K, K), each figure an array
    over the stack (`multiclass_sampling_sd` judges 200 draws at once)."""
    total, tp = m.sum(axis=(-2, -1)), np.diagonal(m, axis1=-2, axis2=-1)
    true, pred = m.sum(axis=-1), m.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, np.nan)
        recall = np.where(true > 0, tp / true, np.nan)
        f1 = np.where(true + pred > 0, 2 * tp / (true + pred), 0.0)
        out = {"accuracy": np.where(total > 0, tp.sum(axis=-1) / total, np.nan), "f1_macro": f1.mean(axis=-1),
               "f1_weighted": np.where(total > 0, (true * f1).sum(axis=-1) / total, np.nan)}
    for c in range(m.shape[-1]):
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = precision[..., c], recall[..., c], f1[..., c]
    return out


def multiclass_point_estimates(probs: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Every multiclass metric expected from calibrated `probs`: those of the expected confusion matrix, and the
    one-vs-rest ROC AUC per class (`roc_auc_<k>`, the expected AUC with P(y = k) as soft labels) and their
    macro mean (`roc_auc`, as scikit-learn's multi_class='ovr', average='macro')."""
    probs, scores = np.asarray(probs, float), np.asarray(scores, float)
    out = multiclass_confusion_metrics(expected_multiclass_confusion(probs, predicted))
    aucs = [expected_auc(probs[:, c], scores[:, c]) for c in range(probs.shape[1])]
    out.update({f"roc_auc_{c}": a for c, a in enumerate(aucs)})
    out["roc_auc"] = float(np.mean(aucs))
    return out


def realized_multiclass_metrics(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The same metrics on realized class labels (0..K-1)."""
    scores = np.asarray(scores, float)
    return multiclass_point_estimates(np.eye(scores.shape[1])[np.asarray(labels, int)], predicted, scores)


def multiclass_sampling_sd(probs: np.ndarray, predicted: np.ndarray, scores: np.ndarray, seed: int = 0,
                           simulations: int = MULTICLASS_SIMULATIONS) -> dict[str, float]:
    """Standard deviation of each realized metric when each row's label is drawn from its probabilities
    independently: analytic for accuracy, seeded simulations for the rest (ratios of sums and AUCs). Each draw
    keeps only its confusion matrix and per-class rank sums; the metrics of all draws are computed at once after
    (`multiclass_confusion_metrics`' definitions, over a stack of matrices)."""
    probs, scores = np.asarray(probs, float), np.asarray(scores, float)
    predicted = np.asarray(predicted, int)
    n, k = probs.shape
    hit = probs[np.arange(n), predicted]
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probs, axis=1)
    cumulative[:, -1] = np.inf  # rounding must not leave a row without a class
    ranks = np.column_stack([_mid_ranks(_average_ranks(scores[:, c])) for c in range(k)]) if n else np.zeros((0, k))
    rows = np.arange(n)
    m = np.empty((simulations, k, k))
    positives, rank_sums = np.empty((simulations, k)), np.empty((simulations, k))
    for s in range(simulations):
        y = (rng.random(n)[:, None] > cumulative).sum(axis=1)
        m[s] = np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
        positives[s] = np.bincount(y, minlength=k)
        rank_sums[s] = np.bincount(y, weights=ranks[rows, y], minlength=k)  # each class's rows' ranks by its score
    figures = _confusion_figures(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((positives > 0) & (positives < n),
                       (rank_sums - positives * (positives + 1) / 2) / (positives * (n - positives)), np.nan)
    for c in range(k):
        figures[f"roc_auc_{c}"] = auc[:, c]
    figures["roc_auc"] = auc.mean(axis=1)
    sd = {key: float(np.nanstd(values, ddof=1)) for key, values in figures.items()}
    sd["accuracy"] = math.sqrt(float(np.sum(hit * (1 - hit)))) / n if n else math.nan
    return sd


@dataclass
class MulticlassCalibration:
    """Per-class scores -> probabilities: each class's one-vs-rest calibration, then rows renormalised to 1."""

    classes: list[Calibration]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, float)
        p = np.column_stack([cal(scores[:, c]) for c, cal in enumerate(self.classes)])
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])


def fit_multiclass_calibration(scores: np.ndarray, labels: np.ndarray, seed: int = 0) -> MulticlassCalibration:
    """One-vs-rest calibration per class on the reference, each isotonic only where 5-fold cross-validation
    shows it lowers that class's Brier score (as for binary CBPE)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    fold = _folds(len(labels), FOLDS, seed)
    out = []
    for c in range(scores.shape[1]):
        s, y = scores[:, c], (labels == c).astype(float)
        held = np.empty(len(s))
        for k in range(FOLDS):
            train = fold != k
            held[~train] = fit_isotonic(s[train], y[train])(s[~train])
        better = np.mean((held - y) ** 2) < np.mean((np.clip(s, 0, 1) - y) ** 2)
        out.append(fit_isotonic(s, y) if better else Calibration())
    return MulticlassCalibration(out)


def estimate_multiclass(calibration: MulticlassCalibration, scores: np.ndarray, predicted: np.ndarray | None = None,
                        metrics: tuple[str, ...] = MULTICLASS_METRICS, seed: int = 0) -> list[Estimate]:
    """The day's multiclass estimates with 95% bands from the sampling sd alone (the estimator's own error
    from reference chunks comes with the multiclass task's estimator)."""
    scores = np.asarray(scores, float)
    d = multiclass_predicted(scores, predicted)
    p = calibration(scores)
    point, sd = multiclass_point_estimates(p, d, scores), multiclass_sampling_sd(p, d, scores, seed=seed)
    return [_band(m, point[m], sd[m], 0.0, len(scores), CONFIDENCE, (0.0, 1.0)) for m in metrics]


# -- storing a fitted estimator ----------------------------------------------------------------------------

def _dump(estimator) -> bytes:
    return pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class MulticlassEstimator:
    """A multiclass model's estimator: per-class calibration of its logged probabilities fitted on the reference
    (`fit_multiclass_calibration`); the day's estimate is the expected confusion matrix's."""

    calibration: MulticlassCalibration
    categories: dict = field(default_factory=dict)
    sample: None = None

    def to_bytes(self) -> bytes:
        return _dump(self)


def to_text(estimator: ConfidenceEstimator | LossEstimator | MulticlassEstimator) -> str:
    """A fitted estimator as text (base64 pickle) for a table cell. Only the pipeline's own writes are read back."""
    return base64.b64encode(estimator.to_bytes()).decode("ascii")


def from_text(text: str) -> ConfidenceEstimator | LossEstimator | MulticlassEstimator:
    estimator = pickle.loads(base64.b64decode(text))  # noqa: S301 - written by this pipeline, in its own lake
    if not isinstance(estimator, ConfidenceEstimator | LossEstimator | MulticlassEstimator):
        raise ValueError(f"not a fitted estimator: {type(estimator).__name__}")
    return estimator
