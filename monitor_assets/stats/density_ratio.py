"""Density-ratio weights between a reference sample and one day's rows, from a domain classifier: what lets an
estimate fitted on the reference hold when the inputs have shifted (a covariate shift).

A logistic regression tells reference rows (0) from current rows (1) on standardized numeric columns and their
squares (a quadratic log density ratio: exact for Gaussian shifts of location and scale) and one-hot categories.
Two-fold cross-fitting gives every reference row a probability q from a model that never saw it, and an honest
AUC. The weight w = q / (1 - q) * n_ref / n_cur estimates p_cur(x) / p_ref(x); weights are renormalised to mean
1 and clipped at `clip` so a few rows cannot carry the day. Below `auc_floor` the two sets are not told apart and
the weights are 1 (nothing is refitted downstream: a stable day costs one small logistic fit).

Measured once on 5,000 + 5,000 rows of 10 features (a mean shift of 0.5 sd and a scale change to 0.5 in one
feature), two-fold: the quadratic logistic model reached AUC 0.64 / 0.70 against 0.63 / 0.69 for a 20-iteration
HistGradientBoostingClassifier, in 0.14 / 0.26 s against 1.9 / 1.6 s on a busy two-core machine, so it is the
domain classifier here. It is solved by Newton steps in numpy (`logistic_fit`, scikit-learn's solution to 1e-6):
scikit-learn's own solver spent most of a shifted day's 60 ms on validation and set-up.

No Dagster, no I/O: arrays in, a dataclass out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_ROWS = 5000  # rows of each side the domain classifier learns from
SAMPLE_ROWS = 20_000  # reference rows a reweighted estimator keeps (and weights): at 5,000 the weighted
# calibration's effective rows fell below 1,000 on a 1.5 sd shift and its small-sample bias showed
AUC_FLOOR = 0.55  # below: no shift worth reweighting for
CLIP = 20.0  # largest weight, in units of the mean weight
MAX_CATEGORIES = 20  # one-hot columns per categorical feature (the reference's most frequent codes)


@dataclass(frozen=True)
class DensityRatio:
    """Weights of the reference rows (mean 1), the domain classifier's cross-validated AUC, whether the weights
    are applied (AUC at or above the floor), and their effective sample size (sum w)^2 / sum w^2."""

    weights: np.ndarray
    auc: float
    applied: bool

    @property
    def effective_rows(self) -> float:
        w = self.weights
        return float(w.sum() ** 2 / np.sum(w * w)) if len(w) else 0.0


_CONTROLLER = []  # threadpoolctl's controller, found once: looking the libraries up costs about 2 ms a call


def one_thread():
    """A context with one thread for OpenMP and BLAS pools. The loss models' gradient boosting and the domain
    classifier are small per model-day; on a busy two-core machine their spinning pools made a 20,000-row DLE
    fit take 84 s against 2 to 3 s on one thread (measured here at load 17)."""
    if not _CONTROLLER:
        # scikit-learn's gradient boosting loads its OpenMP library on import: a controller made before that
        # does not know the library and limits nothing (a DLE fit then took 54 ms instead of 30, most of the
        # difference joblib polling the binning threads every 10 ms).
        import sklearn.ensemble  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """At most `size` row indices out of `n`, seeded, in ascending order (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def rank_auc(y: np.ndarray, q: np.ndarray) -> float:
    """ROC AUC of 0/1 labels `y` against scores `q` (Mann-Whitney, mid-ranks for ties)."""
    y, q = np.asarray(y), np.asarray(q, float)
    n1 = float(np.sum(y))
    n0 = len(y) - n1
    if not (n1 and n0):
        return math.nan
    order = np.argsort(q)
    sorted_q = q[order]
    group = np.r_[0, np.cumsum(sorted_q[1:] != sorted_q[:-1])]  # equal scores share their mid-rank
    counts = np.bincount(group)
    mid = (np.cumsum(counts) - counts + (counts + 1) / 2.0)[group]
    return float((np.sum(mid[y[order] > 0.5]) - n1 * (n1 + 1) / 2) / (n1 * n0))


def logistic_fit(x: np.ndarray, y: np.ndarray, c: float = 1.0, tol: float = 1e-7,
                 max_iter: int = 50) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of L2-penalised logistic regression, minimising sum log-loss + |w|² / (2c) (the
    intercept unpenalised): scikit-learn's `LogisticRegression(C=c)` solution (checked in the tests), by damped
    Newton steps in numpy. A domain classifier has a handful of columns; scikit-learn's validation and solver
    set-up cost several times the arithmetic."""
    design = np.column_stack([x, np.ones(len(x))])
    penalty = np.r_[np.full(x.shape[1], 1.0 / c), 0.0]
    theta, z = np.zeros(design.shape[1]), np.zeros(len(x))

    def objective(t: np.ndarray, z: np.ndarray) -> float:
        return float(np.sum(np.logaddexp(0.0, z)) - y @ z + 0.5 * np.sum(penalty * t * t))

    current = objective(theta, z)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-z))
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design
        hessian[np.diag_indices_from(hessian)] += penalty + 1e-12
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while True:  # backtracking: a full Newton step can overshoot far from the optimum
            candidate = theta - size * step
            z_candidate = design @ candidate
            value = objective(candidate, z_candidate)
            if value <= current or size < 1e-6:
                break
            size /= 2
        theta, z, current = candidate, z_candidate, value
        if float(np.max(np.abs(size * step))) < tol:
            break
    return theta[:-1], float(theta[-1])


@dataclass(frozen=True)
class Columns:
    """The domain classifier's column layout, learnt from the reference once: per numeric column its mean and
    sd (values standardized, clipped at 10 sd, and squared), per categorical column its most frequent codes
    (one-hot). Also the loss models' cheap surrogate reads the same columns (`estimation.LossEstimator`)."""

    numeric: list[tuple[int, float, float]]  # (column, mean, sd)
    categorical: list[tuple[int, np.ndarray]]  # (column, codes)

    @classmethod
    def of(cls, reference: np.ndarray, categorical: list[bool] | None) -> Columns:
        flags = list(categorical or [False] * reference.shape[1])
        numeric, cats = [], []
        for j in range(reference.shape[1]):
            ref = reference[:, j][np.isfinite(reference[:, j])]
            if flags[j]:
                codes, counts = np.unique(ref, return_counts=True)
                cats.append((j, codes[np.argsort(-counts, kind="stable")][:MAX_CATEGORIES]))
            else:
                numeric.append((j, *((float(np.mean(ref)), float(np.std(ref))) if len(ref) else (0.0, 0.0))))
        return cls(numeric, cats)

    def transform(self, rows: np.ndarray, flag_missing=()) -> np.ndarray:
        """The design of `rows`: standardized values (missing -> 0) and their squares, one-hot categories, and a
        missing flag for each column in `flag_missing` (a constant column counts as standardized by 1)."""
        columns = []
        for j, mu, sd in self.numeric:
            v = rows[:, j]
            z = np.where(np.isfinite(v), (v - mu) / (sd if sd > 0 else 1.0), 0.0)
            z = np.clip(z, -10, 10)  # a wild value should not dominate the fit
            columns += [z, z * z / math.sqrt(2)]
        for j, codes in self.categorical:
            columns += [(rows[:, j] == c).astype(float) for c in codes]
        columns += [(~np.isfinite(rows[:, j])).astype(float) for j in flag_missing]
        return np.column_stack(columns) if columns else np.zeros((len(rows), 1))


class PreparedReference:
    """A reference sample with what does not change from day to day computed once: its column layout, its
    design matrix and which of its columns have missing values (a day only adds missing flags of its own)."""

    def __init__(self, reference: np.ndarray, categorical: list[bool] | None = None):
        self.rows = np.asarray(reference, float).reshape(len(reference), -1)
        self.categorical = categorical
        self.columns = Columns.of(self.rows, categorical)
        self.missing = ~np.isfinite(self.rows).all(axis=0)
        self.design = self.columns.transform(self.rows)

    def designs(self, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reference design, current design) with a missing flag for every column missing on either side."""
        flag = np.flatnonzero(self.missing | ~np.isfinite(current).all(axis=0))
        if not len(flag):
            return self.design, self.columns.transform(current)
        ref_flags = (~np.isfinite(self.rows[:, flag])).astype(float)
        return np.column_stack([self.design, ref_flags]), self.columns.transform(current, flag)


def density_ratio(reference: np.ndarray | PreparedReference, current: np.ndarray,
                  categorical: list[bool] | None = None, seed: int = 0, max_rows: int = MAX_ROWS,
                  auc_floor: float = AUC_FLOOR, clip: float = CLIP) -> DensityRatio:
    """Weights p_cur(x) / p_ref(x) for every row of `reference` (rows x columns, or a `PreparedReference` kept from
    an earlier day): the classifier learns from at most `max_rows` rows of each side, then weighs every reference
    row. Both are float matrices with the same columns (categories as codes)."""
    prepared = reference if isinstance(reference, PreparedReference) else None
    reference = prepared.rows if prepared else np.asarray(reference, float).reshape(len(reference), -1)
    current = np.asarray(current, float).reshape(len(current), -1)
    n_ref = len(reference)
    if n_ref < 20 or len(current) < 20:
        return DensityRatio(np.ones(n_ref), math.nan, False)
    with one_thread():
        return _density_ratio(prepared or PreparedReference(reference, categorical), current, seed, max_rows,
                              auc_floor, clip)


def _density_ratio(prepared: PreparedReference, current, seed, max_rows, auc_floor, clip) -> DensityRatio:
    n_ref = len(prepared.rows)
    learn = sample_rows(n_ref, max_rows, seed + 1)  # the reference rows the classifier learns from
    cur = current[sample_rows(len(current), max_rows, seed)]
    ref_design, cur_design = prepared.designs(cur)
    x = np.vstack([ref_design[learn], cur_design])
    n_learn = len(learn)
    y = np.r_[np.zeros(n_learn), np.ones(len(cur))]
    rng = np.random.default_rng(seed)
    fold = np.r_[rng.permutation(n_learn) % 2, rng.permutation(len(cur)) % 2]
    q = np.full(len(y), np.nan)
    models = []
    for k in (1, 0):
        train = fold != k
        # Newton steps: a handful of columns, and a day without shift converges in one or two iterations
        models.append(logistic_fit(x[train], y[train]))
        q[~train] = 1.0 / (1.0 + np.exp(-(x[~train] @ models[-1][0] + models[-1][1])))
        auc = rank_auc(y[~np.isnan(q)], q[~np.isnan(q)])
        if k == 1 and auc < auc_floor - 0.02:  # plainly no shift on the first held-out half: skip the second fit
            return DensityRatio(np.ones(n_ref), auc, False)
    if auc < auc_floor:
        return DensityRatio(np.ones(n_ref), auc, False)
    # log odds of every reference row: out of fold for the rows learnt from, else the two models' mean
    log_odds = np.mean([ref_design @ w + b for w, b in models], axis=0)
    qr = np.clip(q[:n_learn], 1e-6, 1 - 1e-6)
    log_odds[learn] = np.log(qr / (1 - qr))
    w = np.exp(np.clip(log_odds, -30, 30)) * n_learn / len(cur)
    w = w / w.mean()
    for _ in range(3):  # clipping moves the mean: clip, renormalise, a few times
        w = np.minimum(w, clip)
        w = w / w.mean()
    return DensityRatio(w, auc, True)
