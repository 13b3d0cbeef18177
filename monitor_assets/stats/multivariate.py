"""Multivariate drift: changes in how features go together that every per-feature test misses (a correlation that
flips leaves each marginal as it was). Two statistics per model-day, each against a threshold calibrated once per
reference version on the reference's own chunks:

* Domain classifier: a `HistGradientBoostingClassifier` (few, shallow trees: it sees interactions, which a linear
  or quadratic model of the features cannot) tells at most `max_rows` reference rows from at most `max_rows`
  current rows; the statistic is its cross-validated ROC AUC (0.5: indistinguishable). Every row is scored by a
  model that never saw it (`CV_FOLDS`-fold cross-fitting). The features it leaned on: permutation importance on
  the held-out folds (the AUC lost when one column is shuffled), computed when the day is flagged (or on request),
  so a quiet day costs the fits alone.
* PCA reconstruction error: reference-standardized numeric features (missing values at the reference median),
  principal components explaining `PCA_VARIANCE` of the reference's variance; the statistic is the current rows'
  mean Euclidean distance to their reconstruction. A joint change moves mass onto the components left out. The
  features: the rise of each feature's mean squared residual over the reference's.

Thresholds. The reference is cut, in its own order (time order, so day-to-day variation counts), into chunks of
`chunk_rows` (the size of a day's sample); each statistic is computed chunk against the rest of the reference
(never a chunk against itself: the PCA is refitted without the chunk). The threshold is the upper prediction bound
mean + t(m - 1, 1 - ALPHA) * sd * sqrt(1 + 1/m) over the m chunks: for many chunks mean + 3 sd, wider when the
chunks are few (the small-sample correction). A day of fewer rows than a chunk gets the spread widened (by the AUC's
Mann-Whitney variance, by 1/n for a mean error; a larger day keeps the chunks' threshold, since their spread also
holds day-to-day variation that more rows do not average away); the AUC threshold never sits below 0.5 plus 3 of
its theoretical null standard deviations.

Categorical features are coded against the reference's categories (its commonest `MAX_CODES`; the rest of the
reference's categories one code, categories it never saw another, missing values NaN, which the trees route on
their own). Numeric NaN and +-inf are missing. Pass categories normalised as the drift counts are
(`categories.category_sql`), so a '1' and a '1.0' are one category.

`fit_reference` does the calibration once per reference version; the result pickles and round-trips through
text (`to_text` / `from_text`, as `estimation.py`'s estimators do). No Dagster, no I/O: frames in, dataclasses out.
"""

from __future__ import annotations

import base64
import math
import pickle
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from monitor_assets.stats.density_ratio import one_thread, rank_auc, sample_rows
from monitor_assets.stats.drift import FeatureSpec
from monitor_assets.stats.profiles import as_text

MAX_ROWS = 5000  # rows of each side a comparison sees
CHUNK_ROWS = 2000  # reference chunk size for the calibration: the size of a day's sample
MIN_CHUNKS = 5  # fewer whole chunks than this: the chunks shrink so there are this many
MIN_ROWS = 20  # a day with fewer rows gets no verdict (NaN statistic, not drifted)
MAX_CHUNKS = 30  # calibration cost is bounded: at most this many chunks, spread over the reference
ALPHA = 0.00135  # one-sided false-alarm rate per statistic and day (the normal's mean + 3 sd)
CV_FOLDS = 2
# Boosting iterations and leaves per tree, measured on 5,000 + 2,000 rows, 12 features: 20 trees of 8 leaves find a
# correlation flip (AUC ~0.87, null 0.50 +- 0.008) in about a third of the time of 15-leaf trees.
TREES = 20
LEAVES = 8
LEARNING_RATE = 0.2
MAX_CODES = 250  # category codes per feature (HistGradientBoosting takes at most 255 per categorical feature)
PCA_VARIANCE = 0.9
PCA_FIT_ROWS = 50_000
Z_CLIP = 10.0  # standardized values are clipped: one wild value must not carry a day's mean error
TOP_FEATURES = 3
PERMUTATION_ROWS = 50_000  # rows per prediction call of the permutation importance (bounds its memory)
DOMAIN_CLASSIFIER, RECONSTRUCTION = "domain_classifier_auc", "pca_reconstruction_error"


@dataclass(frozen=True)
class Encoder:
    """Features as one float matrix: numeric values (NaN missing), categories as codes into the reference's."""

    features: tuple[FeatureSpec, ...]
    codes: dict[str, dict[str, int]]  # categorical feature -> category -> code (0 .. MAX_CODES - 1)
    other: dict[str, int]  # code of the reference's categories beyond the commonest
    unseen: dict[str, int]  # code of categories the reference never had

    @classmethod
    def fit(cls, reference: pd.DataFrame, features: list[FeatureSpec], max_codes: int = MAX_CODES) -> Encoder:
        codes, other, unseen = {}, {}, {}
        for f in features:
            if f.kind != "categorical":
                continue
            counts = as_text(reference[f.name]).value_counts(dropna=True)
            top = list(counts.index[:max_codes - 2])
            codes[f.name] = {c: i for i, c in enumerate(top)}
            other[f.name], unseen[f.name] = len(top), len(top) + 1
        return cls(tuple(features), codes, other, unseen)

    @property
    def categorical(self) -> np.ndarray:
        return np.array([f.kind == "categorical" for f in self.features])

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def transform(self, frame: pd.DataFrame, known: dict[str, set] | None = None) -> np.ndarray:
        cols = []
        for f in self.features:
            if f.kind == "categorical":
                text = as_text(frame[f.name])
                code = text.map(self.codes[f.name]).to_numpy(float)
                # arrays, not Series: a masked Series assignment costs milliseconds (pandas tries it as a label)
                rest = np.isnan(code) & text.notna().to_numpy()
                in_ref = text.isin(known[f.name]).to_numpy() if known is not None else np.zeros(len(text), bool)
                code[rest & in_ref] = self.other[f.name]
                code[rest & ~in_ref] = self.unseen[f.name]
                cols.append(code)
            else:
                v = pd.to_numeric(frame[f.name], errors="coerce").to_numpy(float)
                cols.append(np.where(np.isfinite(v), v, np.nan))
        return np.column_stack(cols) if cols else np.empty((len(frame), 0))


@dataclass(frozen=True)
class Threshold:
    """A statistic's calibrated threshold: the chunks' mean and sd at `chunk_rows`, and the multiplier."""

    mean: float
    sd: float
    k: float  # t(m - 1, 1 - ALPHA) * sqrt(1 + 1/m)
    chunk_rows: int
    n_chunks: int
    values: tuple[float, ...]  # the chunk statistics (kept for the record and the tests)


@dataclass
class MultivariateDrift:
    """One statistic for one model-day: the value, its threshold at this day's row count, the verdict, and the
    features that carried it (name, importance), largest first (empty on a quiet day unless asked for)."""

    method: str
    statistic: float
    threshold: float
    drifted: bool
    n_current: int
    n_reference: int
    top_features: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Pca:
    """Standardize (reference mean and sd, clipped at +-Z_CLIP), impute the reference median, project on the
    components that explain `PCA_VARIANCE` of the variance."""

    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray  # k x p, orthonormal rows

    @classmethod
    def fit(cls, x: np.ndarray, variance: float = PCA_VARIANCE) -> Pca:
        median = np.nanmedian(x, axis=0) if len(x) else np.zeros(x.shape[1])
        median = np.where(np.isfinite(median), median, 0.0)
        filled = np.where(np.isnan(x), median, x)
        mean = filled.mean(axis=0)
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: an infinite sd standardizes to 0
            scale = filled.std(axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.inf)
        z = np.clip((filled - mean) / scale, -Z_CLIP, Z_CLIP)
        # eigenvectors of the p x p covariance: the same components as an SVD of the rows, at a fraction of the cost
        values, vectors = np.linalg.eigh(np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]))
        values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
        share = np.cumsum(values) / max(float(np.sum(values)), 1e-300)
        k = int(np.searchsorted(share, variance - 1e-12) + 1)  # smallest k explaining at least `variance`
        return cls(median, mean, scale, vectors[:, :min(k, len(values))].T.copy())

    def residuals(self, x: np.ndarray) -> np.ndarray:
        z = np.clip((np.where(np.isnan(x), self.median, x) - self.mean) / self.scale, -Z_CLIP, Z_CLIP)
        return z - (z @ self.components.T) @ self.components

    def error(self, x: np.ndarray) -> float:
        return float(np.mean(np.sqrt(np.sum(self.residuals(x) ** 2, axis=1))))


@dataclass
class MultivariateReference:
    """What a day is compared with, fitted once per reference version (`fit_reference`)."""

    encoder: Encoder
    known: dict[str, set]  # every reference category per categorical feature (unseen vs other)
    sample: np.ndarray  # at most max_rows encoded reference rows
    pca: Pca | None  # None without numeric features
    pca_reference_residual: np.ndarray | None  # mean squared residual per numeric feature on reference chunks
    thresholds: dict[str, Threshold]
    n_reference: int
    max_rows: int
    seed: int

    @property
    def numeric(self) -> np.ndarray:
        return ~self.encoder.categorical

    def threshold(self, method: str, n: int) -> float:
        """The threshold for a day of `n` rows (sampled to max_rows): the chunks' spread rescaled to n."""
        t = self.thresholds[method]
        n = max(min(n, self.max_rows), 1)
        m = len(self.sample)
        # Wider for a smaller day; never narrower for a larger one (the chunks' spread also holds day-to-day
        # variation, which more rows do not average away).
        if method == DOMAIN_CLASSIFIER:
            ratio = math.sqrt((1 / n + 1 / m) / (1 / t.chunk_rows + 1 / m))
            return max(t.mean + t.k * t.sd * max(ratio, 1.0), 0.5 + 3 * _mann_whitney_sd(n, m))
        return t.mean + t.k * t.sd * max(math.sqrt(t.chunk_rows / n), 1.0)

    def to_text(self) -> str:
        """The fitted reference as text (base64 pickle) for a table cell. Only the pipeline's own writes are read."""
        return base64.b64encode(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")

    @staticmethod
    def from_text(text: str) -> MultivariateReference:
        ref = pickle.loads(base64.b64decode(text))  # noqa: S301 - written by this pipeline, in its own lake
        if not isinstance(ref, MultivariateReference):
            raise ValueError(f"not a fitted multivariate reference: {type(ref).__name__}")
        return ref


def _mann_whitney_sd(n1: int, n0: int) -> float:
    """Standard deviation of the AUC of an uninformative score (Mann-Whitney U / n1 n0, no ties)."""
    return math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))


def _prediction_multiplier(m: int, alpha: float = ALPHA) -> float:
    return float(stats.t.isf(alpha, m - 1)) * math.sqrt(1 + 1 / m)


def _classifier(categorical: np.ndarray | None = None):
    from monitor_assets.stats.boosting import coded_classifier  # scikit-learn loads on first use

    return coded_classifier(max_iter=TREES, max_leaf_nodes=LEAVES, learning_rate=LEARNING_RATE,
                            early_stopping=False, random_state=0, categorical_features=categorical)


def domain_auc(reference: np.ndarray, current: np.ndarray, categorical: np.ndarray, seed: int = 0,
               explain_above: float = math.inf) -> tuple[float, np.ndarray | None]:
    """Cross-validated AUC of a classifier telling `current` rows (1) from `reference` rows (0), and, when the AUC
    reaches `explain_above`, each column's permutation importance: the AUC lost on the held-out rows when that
    column is shuffled, from the same fitted models (no refit)."""
    x = np.vstack([reference, current])
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    rng = np.random.default_rng(seed)
    fold = np.r_[rng.permutation(len(reference)) % CV_FOLDS, rng.permutation(len(current)) % CV_FOLDS]
    q = np.empty(len(y))
    cat = categorical if categorical.any() else None
    with one_thread():  # per model-day work is parallel already; a spinning pool per fit is 20x slower here
        models = []
        for k in range(CV_FOLDS):
            model = _classifier(cat).fit(x[fold != k], y[fold != k])
            q[fold == k] = model.predict_proba(x[fold == k])[:, 1]
            models.append(model)
        auc = rank_auc(y, q)
        if not auc >= explain_above:
            return auc, None
        width = x.shape[1]
        q_perm = np.empty((width, len(y)))
        for k, model in enumerate(models):
            held = x[fold == k]
            # Predicted in a few large calls, not one per column: each call costs ~10 ms before its first row.
            step = max(1, PERMUTATION_ROWS // max(len(held), 1))
            for first in range(0, width, step):
                columns = range(first, min(first + step, width))
                block = np.repeat(held[None], len(columns), axis=0)  # a copy per column, that column shuffled
                for i, j in enumerate(columns):
                    block[i][:, j] = rng.permutation(held[:, j])
                q_perm[first:columns.stop, fold == k] = model.predict_proba(
                    block.reshape(-1, width))[:, 1].reshape(len(columns), -1)
    return auc, np.array([auc - rank_auc(y, q_perm[j]) for j in range(width)])


def _chunks(n: int, chunk_rows: int) -> tuple[list[np.ndarray], int]:
    """Contiguous chunks of the reference in its own order (at most MAX_CHUNKS, spread evenly) and their size;
    chunks shrink when fewer than MIN_CHUNKS whole ones fit."""
    size = min(chunk_rows, n // MIN_CHUNKS)
    if size < MIN_ROWS:
        raise ValueError(f"a reference of {n:,} rows is too small to calibrate multivariate drift "
                         f"(at least {MIN_ROWS * MIN_CHUNKS} rows)")
    m = n // size
    picked = np.unique(np.linspace(0, m - 1, min(m, MAX_CHUNKS)).round().astype(int))
    return [np.arange(i * size, (i + 1) * size) for i in picked], size


def _threshold(values: list[float], chunk_rows: int) -> Threshold:
    v = np.asarray(values, float)
    return Threshold(float(v.mean()), float(v.std(ddof=1)), _prediction_multiplier(len(v)), chunk_rows, len(v),
                     tuple(float(a) for a in v))


def fit_reference(reference: pd.DataFrame, features: list[FeatureSpec], chunk_rows: int = CHUNK_ROWS,
                  max_rows: int = MAX_ROWS, pca_variance: float = PCA_VARIANCE, seed: int = 0) -> MultivariateReference:
    """Encode the reference (rows in time order), fit the PCA, and calibrate both thresholds on its chunks."""
    encoder = Encoder.fit(reference, features)
    known = {f.name: set(as_text(reference[f.name]).dropna().unique()) for f in features if f.kind == "categorical"}
    x = encoder.transform(reference, known)
    n = len(x)
    numeric = ~encoder.categorical
    chunks, size = _chunks(n, chunk_rows)
    aucs, errors, residuals = [], [], []
    for i, rows in enumerate(chunks):
        rest = np.setdiff1d(np.arange(n), rows, assume_unique=True)
        rest_sample = x[rest[sample_rows(len(rest), max_rows, seed + i)]]
        aucs.append(domain_auc(rest_sample, x[rows], encoder.categorical, seed=seed + i)[0])
        if numeric.any():
            pca = Pca.fit(x[rest[sample_rows(len(rest), PCA_FIT_ROWS, seed + i)]][:, numeric], pca_variance)
            r = pca.residuals(x[rows][:, numeric])
            errors.append(float(np.mean(np.sqrt(np.sum(r * r, axis=1)))))
            residuals.append(np.mean(r * r, axis=0))
    thresholds = {DOMAIN_CLASSIFIER: _threshold(aucs, size)}
    pca, ref_residual = None, None
    if numeric.any():
        pca = Pca.fit(x[sample_rows(n, PCA_FIT_ROWS, seed)][:, numeric], pca_variance)
        thresholds[RECONSTRUCTION] = _threshold(errors, size)
        ref_residual = np.mean(residuals, axis=0)
    return MultivariateReference(encoder, known, x[sample_rows(n, max_rows, seed)], pca, ref_residual, thresholds,
                                 n, max_rows, seed)


def _top(names: list[str], importance: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-importance, kind="stable")[:k]
    return [(names[j], float(importance[j])) for j in order]


def _encoded_sample(ref: MultivariateReference, current: pd.DataFrame, seed: int) -> np.ndarray:
    """At most max_rows of the day's rows, sampled before encoding (a 50,000-row day is never encoded whole)."""
    return ref.encoder.transform(current.iloc[sample_rows(len(current), ref.max_rows, seed)], ref.known)


def _domain(ref: MultivariateReference, cur: np.ndarray, n: int, explain: bool | None, top_k: int,
            seed: int) -> MultivariateDrift:
    threshold = ref.threshold(DOMAIN_CLASSIFIER, len(cur))
    if len(cur) < MIN_ROWS:  # too few rows to train on: no verdict
        return MultivariateDrift(DOMAIN_CLASSIFIER, math.nan, threshold, False, n, ref.n_reference)
    explain_above = {True: -math.inf, False: math.inf, None: threshold}[explain]
    auc, importance = domain_auc(ref.sample, cur, ref.encoder.categorical, seed, explain_above)
    top = _top(ref.encoder.names, importance, top_k) if importance is not None else []
    return MultivariateDrift(DOMAIN_CLASSIFIER, auc, threshold, bool(auc >= threshold), n, ref.n_reference, top)


def _reconstruction(ref: MultivariateReference, cur: np.ndarray, n: int, top_k: int) -> MultivariateDrift | None:
    if ref.pca is None:
        return None
    cur = cur[:, ref.numeric]
    threshold = ref.threshold(RECONSTRUCTION, len(cur))
    if len(cur) < MIN_ROWS:
        return MultivariateDrift(RECONSTRUCTION, math.nan, threshold, False, n, ref.n_reference)
    r = ref.pca.residuals(cur)
    error = float(np.mean(np.sqrt(np.sum(r * r, axis=1))))
    names = [name for name, num in zip(ref.encoder.names, ref.numeric, strict=True) if num]
    top = _top(names, np.mean(r * r, axis=0) - ref.pca_reference_residual, top_k)
    return MultivariateDrift(RECONSTRUCTION, error, threshold, bool(error >= threshold), n, ref.n_reference, top)


def domain_classifier_drift(ref: MultivariateReference, current: pd.DataFrame, explain: bool | None = None,
                            top_k: int = TOP_FEATURES, seed: int = 0) -> MultivariateDrift:
    """The domain classifier's AUC for one model-day against its threshold; the top features when flagged
    (`explain=None`), always (`True`) or never (`False`)."""
    return _domain(ref, _encoded_sample(ref, current, seed), len(current), explain, top_k, seed)


def reconstruction_drift(ref: MultivariateReference, current: pd.DataFrame, top_k: int = TOP_FEATURES,
                         seed: int = 0) -> MultivariateDrift | None:
    """The PCA reconstruction error of one model-day against its threshold (None without numeric features), with
    the features whose mean squared residual rose most over the reference's."""
    return _reconstruction(ref, _encoded_sample(ref, current, seed), len(current), top_k)


def multivariate_drift(ref: MultivariateReference, current: pd.DataFrame, explain: bool | None = None,
                       top_k: int = TOP_FEATURES, seed: int = 0) -> list[MultivariateDrift]:
    """Both statistics for one model-day (the reconstruction error only with numeric features), on one sample."""
    cur = _encoded_sample(ref, current, seed)
    pca = _reconstruction(ref, cur, len(current), top_k)
    return [_domain(ref, cur, len(current), explain, top_k, seed)] + ([pca] if pca is not None else [])
