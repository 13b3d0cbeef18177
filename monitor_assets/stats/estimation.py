"""Performance estimated before the labels arrive: confidence-based estimation (CBPE) for binary classifiers
and direct loss estimation (DLE) for regressors, each with a 95% band, and the sequential test the
`estimated_performance_within_baseline` check runs on the daily estimates.

CBPE. Scores are calibrated on the reference set (isotonic regression, kept only where 5-fold
cross-validation on the reference shows it lowers the Brier score; otherwise the score is the probability).
With calibrated probabilities p_i and the day's decisions d_i the expected confusion matrix is
TP = sum p_i d_i, FP = sum (1 - p_i) d_i, FN = sum p_i (1 - d_i), TN = sum (1 - p_i)(1 - d_i), and the
metrics follow from it. ROC AUC is the expected AUC with p_i as soft labels:
sum_{i != j} p_i (1 - p_j) [s_i > s_j] / sum_{i != j} p_i (1 - p_j) (ties count one half), in O(n log n).

DLE. Two `HistGradientBoostingRegressor`s, cross-fitted on the reference halves, predict each row's |error|
and error² from its features and prediction; their out-of-fold bias is added back. MAE is the mean predicted
|error|, RMSE the root of the mean predicted error².

The band. Realized = estimate + sampling noise + the estimator's own error. The sampling variance at the day's
row count treats each row's outcome as independent given its probability (analytic for accuracy, precision,
recall, specificity and, by the delta method, F1; seeded simulations for AUC; the predicted conditional spread
for MAE and RMSE). The estimator's own error is what the residuals (estimate - realized) on held-out reference
chunks show beyond their sampling variance. Both add; the band is estimate ± 1.96 sd.

Assumptions: no concept shift (P(label | score) or P(error | features) is as in the reference), the reference's
calibration holds on the day, rows are independent. A covariate shift is followed; a concept shift is not.

No Dagster, no I/O: arrays in, dataclasses out.
"""

from __future__ import annotations

import base64
import math
import pickle
from dataclasses import dataclass, field

import numpy as np

Z95 = 1.959963984540054
CLASSIFIER_METRICS = ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc")
REGRESSOR_METRICS = ("mae", "rmse")
CONFIDENCE, LOSS_MODEL = "confidence", "loss_model"
AUC_SIMULATIONS = 64  # seeded draws of the labels for the AUC's sampling error
FOLDS = 5  # cross-validation folds of the calibration choice and of the chunk residuals
MIN_CHUNKS = 10


@dataclass(frozen=True)
class Estimate:
    """One estimated metric of one model-day: the value, its 95% band, the rows it rests on, the method."""

    metric: str
    estimate: float
    lower: float
    upper: float
    n_rows: int
    method: str

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


def _average_ranks(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group id per sorted row) of scores `s` ascending, equal scores in one group."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    group = np.concatenate([[0], np.cumsum(sorted_s[1:] != sorted_s[:-1])])
    return order, group


def expected_auc(p: np.ndarray, s: np.ndarray) -> float:
    """sum_{i != j} p_i (1 - p_j) [s_i > s_j] (ties one half) / sum_{i != j} p_i (1 - p_j), in O(n log n)."""
    p, s = np.asarray(p, float), np.asarray(s, float)
    if len(p) < 2:
        return math.nan
    order, group = _average_ranks(s)
    ps, qs = p[order], 1 - p[order]
    n_groups = int(group[-1]) + 1
    pg = np.bincount(group, ps, n_groups)
    qg = np.bincount(group, qs, n_groups)
    selfg = np.bincount(group, ps * qs, n_groups)
    q_before = np.concatenate([[0.0], np.cumsum(qg)[:-1]])
    numerator = np.sum(pg * q_before) + 0.5 * np.sum(pg * qg - selfg)
    denominator = p.sum() * (1 - p).sum() - np.sum(p * (1 - p))
    return float(numerator / denominator) if denominator > 0 else math.nan


def _auc_of_labels(y: np.ndarray, order: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The ROC AUC of each row of 0/1 labels `y` (simulations x rows) with scores ranked by `order`/`group`
    (mid-ranks for ties): the Mann-Whitney form."""
    n = y.shape[1]
    counts = np.bincount(group)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mid = (first + (counts + 1) / 2.0)[group]  # 1-based mid-rank of each sorted row
    ranks = np.empty(n)
    ranks[order] = mid
    n1 = y.sum(axis=1)
    n0 = n - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)


def classifier_point_estimates(p: np.ndarray, d: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """Every classifier metric expected from probabilities `p`, decisions `d` and raw scores `s`."""
    out = confusion_metrics(expected_confusion(p, d))
    out["roc_auc"] = expected_auc(p, s)
    return out


def classifier_sampling_sd(p: np.ndarray, d: np.ndarray, s: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Standard deviation of each realized metric when each row's label is an independent Bernoulli(p_i):
    analytic for the shares, the delta method for recall, specificity and F1, seeded simulations for AUC."""
    p, d = np.asarray(p, float), np.asarray(d, float) > 0.5
    v = p * (1 - p)
    n, n_sel = len(p), int(d.sum())
    a, va = p[d].sum(), v[d].sum()  # positives among the selected: TP
    b, vb = p[~d].sum(), v[~d].sum()  # positives among the rest: FN
    neg_sel = n_sel - a  # FP
    neg_rest = (n - n_sel) - b  # TN

    def ratio_sd(x, vx, y, vy):  # sd of X / (X + Y), X and Y independent sums
        total = x + y
        return math.sqrt((y * y * vx + x * x * vy) / total ** 4) if total > 0 else math.nan

    out = {"accuracy": math.sqrt(v.sum()) / n if n else math.nan,
           "precision": math.sqrt(va) / n_sel if n_sel else math.nan,
           "recall": ratio_sd(a, va, b, vb),
           "specificity": ratio_sd(neg_rest, vb, neg_sel, va)}
    denominator = n_sel + a + b
    out["f1"] = (math.sqrt(4 * (n_sel + b) ** 2 * va + 4 * a * a * vb) / denominator ** 2
                 if denominator > 0 else math.nan)
    order, group = _average_ranks(np.asarray(s, float))
    rng = np.random.default_rng(seed)
    draws = (rng.random((AUC_SIMULATIONS, n)) < p[order][None, :]).astype(float)
    sorted_order = np.arange(n)  # the draws are already in sorted order
    aucs = _auc_of_labels(draws, sorted_order, group)
    aucs = aucs[np.isfinite(aucs)]
    out["roc_auc"] = float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan
    return out


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


def fit_isotonic(s: np.ndarray, y: np.ndarray) -> Calibration:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(np.clip(s, 0, 1), y)
    return Calibration([float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_])


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
class ConfidenceEstimator:
    """CBPE fitted on a reference set: the calibration, the decision threshold, and the estimator's own error
    variance per metric (from held-out reference chunks)."""

    calibration: Calibration
    threshold: float
    bias_var: dict[str, float]
    chunk_rows: int
    brier_identity: float
    brier_isotonic: float
    method: str = CONFIDENCE

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, decisions: np.ndarray | None = None,
            threshold: float = 0.5, chunk_rows: int | None = None, seed: int = 0) -> ConfidenceEstimator:
        s, y = np.asarray(scores, float), np.asarray(labels, float)
        d = predicted_class(s, decisions, threshold)
        fold = _folds(len(s), FOLDS, seed)
        held = {"identity": np.clip(s, 0, 1), "isotonic": np.empty(len(s))}
        for k in range(FOLDS):
            train = fold != k
            held["isotonic"][~train] = fit_isotonic(s[train], y[train])(s[~train])
        brier = {name: float(np.mean((q - y) ** 2)) for name, q in held.items()}
        use_isotonic = brier["isotonic"] < brier["identity"]
        calibration = fit_isotonic(s, y) if use_isotonic else Calibration()
        p = held["isotonic" if use_isotonic else "identity"]
        size = chunk_rows or max(50, len(s) // 20)
        chunks = np.random.default_rng(seed + 1).permutation(len(s))
        est, real, samp = [], [], []
        for start in range(0, len(s) - size + 1, size):
            i = chunks[start:start + size]
            est.append(classifier_point_estimates(p[i], d[i], s[i]))
            real.append(realized_classifier_metrics(y[i], d[i], s[i]))
            samp.append(classifier_sampling_sd(p[i], d[i], s[i], seed=seed))
        return cls(calibration, threshold, _chunk_bias_var(est, real, samp, CLASSIFIER_METRICS), size,
                   brier["identity"], brier["isotonic"])

    def estimate(self, scores: np.ndarray, decisions: np.ndarray | None = None,
                 metrics: tuple[str, ...] = CLASSIFIER_METRICS, seed: int = 0) -> list[Estimate]:
        s = np.asarray(scores, float)
        d = predicted_class(s, decisions, self.threshold)
        p = self.calibration(s)
        point = classifier_point_estimates(p, d, s)
        sd = classifier_sampling_sd(p, d, s, seed=seed)
        return [_band(m, point[m], sd[m], self.bias_var.get(m, 0.0), len(s), self.method, (0.0, 1.0))
                for m in metrics]

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
class LossEstimator:
    """DLE fitted on a reference set: two cross-fitted loss models per loss (|error|, error²), their
    out-of-fold bias, and the estimator's own error variance per metric."""

    models: dict[str, list]  # loss -> the two fold models
    bias: dict[str, float]
    bias_var: dict[str, float]
    categorical: list[bool]
    chunk_rows: int
    method: str = LOSS_MODEL
    categories: dict[int, list[str]] = field(default_factory=dict)  # column -> the reference's categories

    @classmethod
    def fit(cls, features: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
            categorical: list[bool] | None = None, chunk_rows: int | None = None, seed: int = 0,
            max_iter: int = 100) -> LossEstimator:
        from sklearn.ensemble import HistGradientBoostingRegressor

        x = _design(features, predictions)
        cats = list(categorical or [False] * (x.shape[1] - 1)) + [False]
        error = np.asarray(labels, float) - np.asarray(predictions, float)
        targets = {"abs": np.abs(error), "sq": error ** 2}
        half = _folds(len(x), 2, seed)
        models: dict[str, list] = {}
        held: dict[str, np.ndarray] = {}
        for loss, target in targets.items():
            models[loss], held[loss] = [], np.empty(len(x))
            for k in (0, 1):
                model = HistGradientBoostingRegressor(max_iter=max_iter, random_state=seed,
                                                      categorical_features=np.array(cats) if any(cats) else None)
                model.fit(x[half == k], target[half == k])
                held[loss][half != k] = np.maximum(model.predict(x[half != k]), 0.0)
                models[loss].append(model)
        bias = {loss: float(np.mean(targets[loss] - held[loss])) for loss in targets}
        size = chunk_rows or max(50, len(x) // 20)
        order = np.random.default_rng(seed + 1).permutation(len(x))
        est, real, samp = [], [], []
        for start in range(0, len(x) - size + 1, size):
            i = order[start:start + size]
            pa, ps = held["abs"][i] + bias["abs"], held["sq"][i] + bias["sq"]
            point, sd = _loss_point(pa, ps), _loss_sd(pa, ps)
            est.append(point)
            samp.append(sd)
            real.append({"mae": float(np.mean(targets["abs"][i])), "rmse": float(np.sqrt(np.mean(targets["sq"][i])))})
        return cls(models, bias, _chunk_bias_var(est, real, samp, REGRESSOR_METRICS), cats, size)

    def estimate(self, features: np.ndarray, predictions: np.ndarray,
                 metrics: tuple[str, ...] = REGRESSOR_METRICS) -> list[Estimate]:
        x = _design(features, predictions)
        pred = {loss: np.maximum(np.mean([m.predict(x) for m in ms], axis=0), 0.0) + self.bias[loss]
                for loss, ms in self.models.items()}
        point, sd = _loss_point(pred["abs"], pred["sq"]), _loss_sd(pred["abs"], pred["sq"])
        return [_band(m, point[m], sd[m], self.bias_var.get(m, 0.0), len(x), self.method, (0.0, math.inf))
                for m in metrics]

    def to_bytes(self) -> bytes:
        return _dump(self)


def encode_categories(values, categories: list[str]) -> np.ndarray:
    """Category values as codes into the reference's `categories` (NaN for one it never saw, or missing)."""
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(str(v), np.nan) if v is not None else np.nan for v in values], float)


def _design(features: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    f = np.asarray(features, float)
    f = f.reshape(len(f), -1) if f.ndim == 1 else f
    return np.column_stack([f, np.asarray(predictions, float)])


def _loss_point(pa: np.ndarray, ps: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.mean(pa)), "rmse": float(math.sqrt(max(float(np.mean(ps)), 0.0)))}


def _loss_sd(pa: np.ndarray, ps: np.ndarray) -> dict[str, float]:
    """Sampling sd of the mean |error| (each row's spread: E e² - (E|e|)²) and of RMSE (delta method,
    Var(e²) = 2 (E e²)² as for normal errors)."""
    n = len(pa)
    if not n:
        return {"mae": math.nan, "rmse": math.nan}
    var_abs = np.maximum(ps - pa * pa, 0.0)
    mean_sq = max(float(np.mean(ps)), 1e-300)
    sd_m2 = math.sqrt(float(np.sum(2 * ps * ps))) / n
    return {"mae": math.sqrt(float(var_abs.sum())) / n, "rmse": sd_m2 / (2 * math.sqrt(mean_sq))}


# -- storing a fitted estimator ----------------------------------------------------------------------------

def _dump(estimator) -> bytes:
    return pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)


def to_text(estimator: ConfidenceEstimator | LossEstimator) -> str:
    """A fitted estimator as text (base64 pickle) for a table cell. Only the pipeline's own writes are read back."""
    return base64.b64encode(estimator.to_bytes()).decode("ascii")


def from_text(text: str) -> ConfidenceEstimator | LossEstimator:
    estimator = pickle.loads(base64.b64decode(text))  # noqa: S301 - written by this pipeline, in its own lake
    if not isinstance(estimator, ConfidenceEstimator | LossEstimator):
        raise ValueError(f"not a fitted estimator: {type(estimator).__name__}")
    return estimator


# -- the check: a level test and a one-sided CUSUM on the daily shortfall -----------------------------------

CUSUM_DAYS = 7  # the window the sequential sum looks back over
CUSUM_K = 0.25  # allowance per day, in standard errors
CUSUM_H = 4.0  # alarm level


@dataclass(frozen=True)
class Shortfall:
    """The check's verdict on one day: level test, CUSUM statistic, and whether it fails."""

    level_fails: bool
    cusum: float
    cusum_fails: bool

    @property
    def fails(self) -> bool:
        return self.level_fails or self.cusum_fails


def shortfall_test(estimates: list[float], standard_errors: list[float], floor: float, higher_is_better: bool = True,
                   k: float = CUSUM_K, h: float = CUSUM_H) -> Shortfall:
    """Judge the last of a model's daily estimates (oldest first, at most CUSUM_DAYS, NaN for a day without one)
    against `floor` (min_metric_ratio x baseline).

    Level: the day's estimate and its band's good end are both on the wrong side of the floor (a one-sided
    2.5% test each day). CUSUM: S_t = max(0, S_{t-1} + z_t - k) with z_t = (floor - estimate_t) / se_t (sign
    flipped for lower-is-better metrics), over the window; it fails when S passes h. With k = 0.25 and h = 4
    a model sitting half a standard error above its floor raises a CUSUM alarm in about 0.5% of 60-day runs,
    and a shortfall of about 1 se a day (a 3-point accuracy drop at 300 rows a day against a floor of 0.99 x
    baseline) is found within 7 days in about 85% of runs (simulated in the tests). Days count as
    independent; the band's se includes the estimator's own error, which makes the sum conservative."""
    s, z_last = 0.0, math.nan
    for e, se in zip(estimates[-CUSUM_DAYS:], standard_errors[-CUSUM_DAYS:], strict=True):
        if not (np.isfinite(e) and np.isfinite(se)) or se <= 0:
            continue
        z_last = ((floor - e) if higher_is_better else (e - floor)) / se
        s = max(0.0, s + z_last - k)
    last_e, last_se = estimates[-1], standard_errors[-1]
    level = bool(np.isfinite(last_e) and np.isfinite(last_se)
                 and ((last_e + Z95 * last_se < floor) if higher_is_better else (last_e - Z95 * last_se > floor)))
    return Shortfall(level, s, s > h)
