"""Multiclass classification metrics from class codes (pure: numpy, scipy and pandas).

Inputs are integer codes 0..K-1 (the model's classes, in the order of its probability columns), the true
code of each labelled row, the predicted code, and optionally the probability matrix (n x K). Every figure
follows scikit-learn's definition (tests compare):

* accuracy: share of rows whose predicted code equals the label;
* per class k: precision tp / predicted k, recall tp / labelled k, F1 2 tp / (labelled k + predicted k);
  NaN where the denominator is 0 (unknown, never a zero);
* macro F1: the mean F1 over the classes present in these rows (labelled or predicted at least once), so a
  class absent from a day neither counts as 0 nor as perfect; weighted F1: weighted by each class's labels;
* log loss: mean of -ln p(true class), p clipped to [eps, 1 - eps] as scikit-learn does, not renormalised;
* ROC AUC, one-vs-rest, macro: per class, the Mann-Whitney AUC of p_k for rows labelled k against all
  other labelled rows (ties count one half), averaged over the classes with both positives and negatives
  (a class absent from a day has no AUC and is left out; `n_auc_classes` says how many counted);
* selection rate per class (and per group): share of scored rows predicted k; labels are not needed.

Unknown classes: a code outside 0..K-1 (a class the model does not know, e.g. -1 for a name missing from
its class list) is kept, not dropped. An unknown label is an error in accuracy and a false positive of the
predicted class, and a negative for every class's AUC; it has no probability column, so log loss leaves it
out (row loss NaN) and `unknown_label_share` reports it as a signal of its own. An unknown prediction is an
error and a false negative of the true class. Scikit-learn agrees when given `labels` = the present known
classes.

Per-row loss for the retraining trigger (`row_loss`): log loss where probabilities exist, else the 0/1
error. `MulticlassSums` (confusion matrix, log-loss sums, per-class histograms of p_k) adds across days;
its AUC is binned (`AUC_BINS` bins on [0, 1], pairs within one bin count one half; `auc_tie_share` bounds
the difference from the exact value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from monitor_assets.stats.performance import metric_standard_error

EPS = float(np.finfo(np.float64).eps)  # scikit-learn's clipping for float64 probabilities
AUC_BINS = 1000
# The figures `daily_metrics` returns (monitoring.performance_daily's multiclass columns).
MULTICLASS_COLUMNS = ("accuracy", "precision", "recall", "f1", "f1_macro", "f1_weighted", "log_loss", "roc_auc")


def _codes(values, n_classes: int, name: str) -> np.ndarray:
    """Codes as int64 with every code outside 0..K-1 mapped to K (the unknown column)."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if v.dtype.kind == "f":
        if not np.isfinite(v).all() or (v != np.floor(v)).any():
            raise ValueError(f"{name} must be integer class codes (drop unlabelled rows first)")
    elif v.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer class codes, got dtype {v.dtype}")
    v = v.astype(np.int64)
    return np.where((v >= 0) & (v < n_classes), v, n_classes)


def _check(y_true, y_pred, n_classes: int, proba) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if n_classes < 2:
        raise ValueError(f"a multiclass model has at least 2 classes, got {n_classes}")
    t, p = _codes(y_true, n_classes, "y_true"), _codes(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {len(t)} vs {len(p)}")
    if proba is not None:
        proba = np.asarray(proba, dtype=float)
        if proba.shape != (len(t), n_classes):
            raise ValueError(f"probabilities have shape {proba.shape}, expected ({len(t)}, {n_classes})")
        if not np.isfinite(proba).all() or (proba < 0).any():
            raise ValueError("probabilities must be finite and >= 0")
    return t, p, proba


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(K + 1) x (K + 1) counts, true code by row and predicted code by column; row and column K hold
    the unknown codes."""
    t, p, _ = _check(y_true, y_pred, n_classes, None)
    k1 = n_classes + 1
    return np.bincount(t * k1 + p, minlength=k1 * k1).reshape(k1, k1)


def _true_class_proba(t: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """p(true class) per row, NaN where the label is unknown (no column)."""
    known = t < proba.shape[1]
    out = np.full(len(t), np.nan)
    out[known] = proba[np.flatnonzero(known), t[known]]
    return out


def row_loss(y_true, y_pred, n_classes: int, proba=None, eps: float = EPS) -> np.ndarray:
    """Per-row loss for the retraining trigger: -ln p(true class) (clipped to [eps, 1 - eps]) where
    `proba` is given, NaN for an unknown label; else 1 for a wrong prediction and 0 for a right one
    (an unknown label or prediction is wrong)."""
    t, p, proba = _check(y_true, y_pred, n_classes, proba)
    if proba is None:
        return ((t != p) | (t == n_classes)).astype(float)
    return -np.log(np.clip(_true_class_proba(t, proba), eps, 1 - eps))


def _auc_exact(t: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest Mann-Whitney AUC per class (average ranks for ties), NaN without positives or negatives."""
    n, k = proba.shape
    ranks = stats.rankdata(proba, axis=0)
    known = np.flatnonzero(t < k)
    n_pos = np.bincount(t[known], minlength=k).astype(float)
    rank_sum = np.bincount(t[known], ranks[known, t[known]], minlength=k)
    n_neg = n - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)


def _auc_binned(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class (rows of `pos`/`neg`, histograms of p_k): the AUC with pairs in one bin counted one half,
    and the share of positive-negative pairs sharing a bin (the most the AUC can be off by)."""
    n_pos, n_neg = pos.sum(axis=1).astype(float), neg.sum(axis=1).astype(float)
    below = np.cumsum(neg, axis=1) - neg
    same = (pos * neg.astype(float)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pairs = n_pos * n_neg
        auc = ((pos * below.astype(float)).sum(axis=1) + 0.5 * same) / pairs
        tie = same / pairs
    ok = (n_pos > 0) & (n_neg > 0)
    return np.where(ok, auc, np.nan), np.where(ok, tie, np.nan)


@dataclass(frozen=True)
class MulticlassMetrics:
    """Scalars for the history table (`scalars()`) and a per-class frame (class code, support,
    predicted, precision, recall, f1, roc_auc)."""

    n: int
    n_unknown_label: int
    n_unknown_prediction: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    log_loss: float
    roc_auc: float
    n_auc_classes: int
    per_class: pd.DataFrame

    def scalars(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "weighted_f1": self.weighted_f1,
                "log_loss": self.log_loss, "roc_auc": self.roc_auc, "n_labelled": float(self.n),
                "unknown_label_share": self.n_unknown_label / self.n if self.n else math.nan,
                "unknown_prediction_share": self.n_unknown_prediction / self.n if self.n else math.nan}


def _metrics(cm: np.ndarray, loss_n: int, loss_sum: float, auc: np.ndarray | None) -> MulticlassMetrics:
    k = cm.shape[0] - 1
    n = int(cm.sum())
    tp = np.diag(cm)[:k].astype(float)
    support = cm[:k, :].sum(axis=1).astype(float)
    predicted = cm[:, :k].sum(axis=0).astype(float)
    present = (support + predicted) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(present, 2 * tp / (support + predicted), np.nan)
    auc = np.full(k, np.nan) if auc is None else auc
    per_class = pd.DataFrame({"class": np.arange(k), "support": support.astype(np.int64),
                              "predicted": predicted.astype(np.int64), "precision": precision, "recall": recall,
                              "f1": f1, "roc_auc": auc})
    defined = ~np.isnan(auc)
    return MulticlassMetrics(
        n=n, n_unknown_label=int(cm[k, :].sum()), n_unknown_prediction=int(cm[:, k].sum()),
        accuracy=float(tp.sum() / n) if n else math.nan,
        macro_f1=float(f1[present].mean()) if present.any() else math.nan,
        weighted_f1=float(np.dot(support[present], f1[present]) / support.sum()) if support.sum() else math.nan,
        log_loss=loss_sum / loss_n if loss_n else math.nan,
        roc_auc=float(auc[defined].mean()) if defined.any() else math.nan, n_auc_classes=int(defined.sum()),
        per_class=per_class)


def multiclass_metrics(y_true, y_pred, n_classes: int, proba=None, eps: float = EPS) -> MulticlassMetrics:
    """Every metric of the module docstring on these labelled rows, AUC exact (when `proba` is given)."""
    t, p, proba = _check(y_true, y_pred, n_classes, proba)
    cm = confusion(t, p, n_classes)
    if proba is None:
        return _metrics(cm, 0, 0.0, None)
    loss = row_loss(t, p, n_classes, proba, eps)
    known = ~np.isnan(loss)
    return _metrics(cm, int(known.sum()), float(loss[known].sum()), _auc_exact(t, proba))


@dataclass(frozen=True)
class MulticlassSums:
    """Sufficient statistics of labelled rows that add across days (`+`): the confusion matrix, the log
    loss's count, sum and sum of squares, and per class histograms of p_k among rows labelled k (`pos`)
    and among the other rows (`neg`)."""

    confusion: np.ndarray
    loss_n: int = 0
    loss_sum: float = 0.0
    loss_sq: float = 0.0
    pos: np.ndarray | None = None
    neg: np.ndarray | None = None

    @classmethod
    def of(cls, y_true, y_pred, n_classes: int, proba=None, bins: int = AUC_BINS, eps: float = EPS) -> MulticlassSums:
        t, p, proba = _check(y_true, y_pred, n_classes, proba)
        cm = confusion(t, p, n_classes)
        if proba is None:
            return cls(cm)
        loss = row_loss(t, p, n_classes, proba, eps)
        known = ~np.isnan(loss)
        b = np.minimum((np.clip(proba, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
        offset = np.arange(n_classes) * bins
        every = np.bincount((b + offset).ravel(), minlength=n_classes * bins).reshape(n_classes, bins)
        rows = np.flatnonzero(t < n_classes)
        pos = np.bincount(offset[t[rows]] + b[rows, t[rows]], minlength=n_classes * bins).reshape(n_classes, bins)
        return cls(cm, int(known.sum()), float(loss[known].sum()), float((loss[known] ** 2).sum()), pos, every - pos)

    @property
    def n_classes(self) -> int:
        return self.confusion.shape[0] - 1

    def __add__(self, other: MulticlassSums) -> MulticlassSums:
        if self.confusion.shape != other.confusion.shape:
            raise ValueError("cannot add sums of models with different numbers of classes")
        both = self.pos is not None and other.pos is not None
        if both and self.pos.shape != other.pos.shape:
            raise ValueError("cannot add AUC histograms with different bins")
        # Days without probabilities add nothing to the loss or the AUC.
        pos = (self.pos + other.pos) if both else (self.pos if self.pos is not None else other.pos)
        neg = (self.neg + other.neg) if both else (self.neg if self.neg is not None else other.neg)
        return MulticlassSums(self.confusion + other.confusion, self.loss_n + other.loss_n,
                              self.loss_sum + other.loss_sum, self.loss_sq + other.loss_sq, pos, neg)

    def metrics(self) -> MulticlassMetrics:
        """The metrics of all rows added so far; the AUC binned (`auc_tie_share` bounds its error)."""
        auc = None if self.pos is None else _auc_binned(self.pos, self.neg)[0]
        return _metrics(self.confusion, self.loss_n, self.loss_sum, auc)

    def auc_tie_share(self) -> np.ndarray:
        """Per class, the share of positive-negative pairs in one bin: the most the binned AUC is off."""
        return np.full(self.n_classes, np.nan) if self.pos is None else _auc_binned(self.pos, self.neg)[1]


def daily_metrics(y_true, y_pred, n_classes: int, proba=None, eps: float = EPS) -> dict[str, float]:
    """The figures of `monitoring.performance_daily` for a multiclass model's labelled rows: accuracy, macro
    and weighted F1 (`f1_macro`, `f1_weighted`; `f1` repeats the macro value), macro `precision` and `recall`
    (over the classes present, a present class never predicted or never labelled counting 0, as
    scikit-learn's `precision_score(..., labels=present, average='macro')`), and with probabilities
    `log_loss` and `roc_auc` (one-vs-rest, macro). NaN where unknown."""
    return figures(multiclass_metrics(y_true, y_pred, n_classes, proba, eps))


def figures(m: MulticlassMetrics) -> dict[str, float]:
    """`daily_metrics`'s figures of metrics already computed."""
    present = (m.per_class.support + m.per_class.predicted) > 0
    macro = {k: float(m.per_class[k][present].fillna(0.0).mean()) if present.any() else math.nan
             for k in ("precision", "recall")}
    return {"accuracy": m.accuracy, "precision": macro["precision"], "recall": macro["recall"], "f1": m.macro_f1,
            "f1_macro": m.macro_f1, "f1_weighted": m.weighted_f1, "log_loss": m.log_loss, "roc_auc": m.roc_auc}


def labelled_metrics(rows: pd.DataFrame, n_classes: int) -> tuple[dict[str, float], MulticlassMetrics | None]:
    """One day's (or segment-day's) figures from its served rows (`code` predicted, `proba` a list or None,
    `label` NaN until it arrives): `n_labelled`, `label_coverage` and `daily_metrics` on the labelled rows, with
    the metrics they came from (None without labelled rows). Log loss and ROC AUC only when every labelled row
    has probabilities (a mean over a part would not be the day's)."""
    labelled = rows[rows.label.notna()]
    out = {"n_labelled": len(labelled), "label_coverage": len(labelled) / len(rows) if len(rows) else math.nan}
    if labelled.empty:
        return out | dict.fromkeys(MULTICLASS_COLUMNS, math.nan), None
    proba = np.array(labelled.proba.tolist(), dtype=float) if labelled.proba.notna().all() else None
    m = multiclass_metrics(labelled.label.to_numpy(np.int64), labelled.code.to_numpy(np.int64), n_classes, proba)
    return out | figures(m), m


# The macro figures' per-class parts, each with the binary rule of the rows it is a share of (`performance`).
_PER_CLASS = {"precision": "precision", "recall": "recall", "f1": "f1", "f1_macro": "f1", "f1_weighted": "f1",
              "roc_auc": "roc_auc"}


def _class_parts(m: MulticlassMetrics, metric: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The classes a figure averages (per-class columns as arrays) and their weights: present classes equally for
    the macro means (a missing precision or recall counting 0, as `figures`), by support for weighted F1, the
    classes with an AUC for ROC AUC."""
    pc = m.per_class
    used = pc.roc_auc.notna() if metric == "roc_auc" else (pc.support + pc.predicted) > 0
    parts = {c: pc[c].to_numpy(float)[used.to_numpy()] for c in ("support", "predicted", "precision", "recall", "f1",
                                                                  "roc_auc")}
    parts["precision"], parts["recall"] = np.nan_to_num(parts["precision"]), np.nan_to_num(parts["recall"])
    k = len(parts["support"])
    if metric == "f1_weighted":
        return parts, parts["support"] / max(float(pc.support.sum()), 1.0)
    return parts, np.full(k, 1 / max(k, 1))


def standard_error(m: MulticlassMetrics, metric: str) -> float:
    """Approximate standard error of a `figures` metric on these rows (NaN where there is none). Accuracy: the
    binomial one on every labelled row. A macro or weighted mean of per-class figures: the delta method for a
    weighted mean, sqrt(sum w_k^2 se_k^2), each class's se by the binary rule on its own counts
    (`performance.metric_standard_error`: binomial on predicted k for precision, on labelled k for recall, on the
    fewer for F1, Hanley-McNeil for one-vs-rest AUC), the classes taken as independent (they share rows, but a
    row moves at most two classes' counts by one, small beside each class's own variance; tests compare with the
    spread of scikit-learn's figures over samples). Log loss: NaN, not judged (a mean of per-row losses up to
    -ln(eps) ~ 36, whose normal approximation holds poorly at segment sizes; binary models' log loss is not
    judged on a standard error either)."""
    if not m.n or metric == "log_loss":
        return math.nan
    if metric == "accuracy":
        return metric_standard_error("accuracy", m.accuracy, m.n)
    parts, weights = _class_parts(m, metric)
    if not len(weights):
        return math.nan
    rule = _PER_CLASS[metric]
    se = [metric_standard_error(rule, value, m.n, support / m.n, predicted / m.n)
          for value, support, predicted in zip(parts[rule], parts["support"], parts["predicted"], strict=True)]
    return float(math.sqrt(np.sum((weights * np.asarray(se)) ** 2)))


def class_rows(m: MulticlassMetrics, metric: str) -> int | None:
    """The fewest rows of one class a macro figure's standard error rests on (the multiclass counterpart of
    `performance.class_rows`): for precision the classes' predicted rows, recall their labelled rows, macro F1 the
    fewer of both, ROC AUC the fewer of each class's positives and negatives. None for accuracy, weighted F1 (a
    rare class weighs its share of the rows) and log loss (not judged)."""
    if metric not in ("precision", "recall", "f1", "f1_macro", "roc_auc"):
        return None
    parts, weights = _class_parts(m, metric)
    if not len(weights):
        return 0
    if metric == "roc_auc":
        return int(np.minimum(parts["support"], m.n - parts["support"]).min())
    counts = {"precision": ["predicted"], "recall": ["support"]}.get(metric, ["support", "predicted"])
    return int(min(parts[c].min() for c in counts))


def selection_rates(y_pred, n_classes: int, group=None, y_true=None, labelled=None) -> pd.DataFrame:
    """Per (group, class): `n` scored rows of the group, `selected` (predicted k) and `selection_rate`;
    an unknown prediction selects no known class. With `y_true` (and `labelled`, a mask of rows whose
    label has arrived; default all), the one-vs-rest confusion counts `n_labelled`, `tp`, `fp`, `fn`, `tn`:
    per class the shape `fairness.fairness_table` reads (with `attribute` and `grp` columns added)."""
    p = _codes(y_pred, n_classes, "y_pred")
    g_codes, groups = (np.zeros(len(p), np.int64), np.array([None])) if group is None else pd.factorize(
        np.asarray(group), use_na_sentinel=False)
    g_codes = np.asarray(g_codes, dtype=np.int64)
    n_g, k1 = len(groups), n_classes + 1
    n = np.bincount(g_codes, minlength=n_g)
    sel = np.bincount(g_codes * k1 + p, minlength=n_g * k1).reshape(n_g, k1)[:, :n_classes]
    out = pd.DataFrame({"grp": np.repeat(groups, n_classes), "class": np.tile(np.arange(n_classes), n_g),
                        "n": np.repeat(n, n_classes), "selected": sel.ravel()})
    with np.errstate(invalid="ignore", divide="ignore"):
        out["selection_rate"] = np.where(out.n > 0, out.selected / out.n.where(out.n > 0, 1), np.nan)
    if y_true is not None:
        t = _codes(y_true, n_classes, "y_true")
        if len(t) != len(p):
            raise ValueError(f"labels and predictions differ in length: {len(t)} vs {len(p)}")
        m = np.ones(len(t), bool) if labelled is None else np.asarray(labelled, bool)
        gl, tl, pl = g_codes[m], t[m], p[m]
        n_lab = np.bincount(gl, minlength=n_g)
        cube = np.bincount((gl * k1 + tl) * k1 + pl, minlength=n_g * k1 * k1).reshape(n_g, k1, k1)
        tp = np.einsum("gkk->gk", cube)[:, :n_classes]
        pos = cube.sum(axis=2)[:, :n_classes]  # labelled k
        pred = cube.sum(axis=1)[:, :n_classes]  # predicted k
        out["n_labelled"] = np.repeat(n_lab, n_classes)
        out["tp"], out["fn"], out["fp"] = tp.ravel(), (pos - tp).ravel(), (pred - tp).ravel()
        out["tn"] = out.n_labelled - out.tp - out.fn - out.fp
    if group is None:
        out = out.drop(columns="grp")
    return out


# -- the same definitions as DuckDB SQL over logged rows (the pipeline's reads) ------------------------------

PROBABILITY_SUM_TOLERANCE = 0.01  # logged probabilities are rounded; more than this off 1 is a broken record


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def classes_sql(classes: tuple[str, ...]) -> str:
    """The class names as a DuckDB VARCHAR[] literal (index i + 1 holds code i)."""
    # parenthesised: a subscript right after the type (`VARCHAR[][i]`) would parse as an array type
    return "([" + ", ".join(_literal(c) for c in classes) + "]::VARCHAR[])"


def probabilities_sql(classes: tuple[str, ...], text: str) -> str:
    """SQL: logged probabilities (`text`, VARCHAR: a JSON array in class order, or an object {class: p}) as a
    DOUBLE[] in class order; NULL when `text` is not JSON, or not an array or object. An object's missing
    class, and an array entry that is not a number, become NULL elements (callers reject both)."""
    def path(c: str) -> str:
        return _literal('$."' + c.replace("\\", "\\\\").replace('"', '\\"') + '"')
    picks = ", ".join(f"TRY_CAST(json_extract_string({text}, {path(c)}) AS DOUBLE)" for c in classes)
    return (f"CASE WHEN NOT coalesce(json_valid({text}), false) THEN NULL "
            f"WHEN json_type({text}) = 'OBJECT' THEN list_value({picks}) "
            f"WHEN json_type({text}) = 'ARRAY' THEN TRY_CAST({text} AS DOUBLE[]) END)").replace("CASE WHEN NOT", "(CASE WHEN NOT", 1)


def class_code_sql(classes: tuple[str, ...], name: str, probabilities: str) -> str:
    """SQL: the predicted class code 0..K-1: the class `name` (a logged class name), else the most probable
    class of `probabilities` (DOUBLE[]; the first of ties); NULL when neither is known."""
    return (f"(coalesce(list_position({classes_sql(classes)}, {name}), "
            f"list_position({probabilities}, list_max({probabilities}))) - 1)::DOUBLE")


def probabilities_problem_sql(classes: tuple[str, ...], text: str, probabilities: str) -> str:
    """SQL: why logged probabilities (`text`, parsed as `probabilities`) cannot be used, NULL when they can
    (or are not logged): not JSON numbers, the wrong length or keys, outside [0, 1], not summing to 1."""
    k = len(classes)
    shown = f"left({text}, 80)"
    return f"""CASE WHEN {text} IS NULL THEN NULL
        WHEN {probabilities} IS NULL THEN {shown} || ' is not a JSON array or object of numbers'
        WHEN json_type({text}) = 'OBJECT' AND (list_count({probabilities}) < {k} OR len(json_keys({text})) <> {k})
            THEN 'the keys of ' || {shown} || ' are not the {k} classes'
        WHEN len({probabilities}) <> {k} THEN len({probabilities}) || ' values, expected {k} (one per class)'
        WHEN list_count({probabilities}) < {k} THEN {shown} || ' has values that are not numbers'
        WHEN list_min({probabilities}) < 0 OR list_max({probabilities}) > 1 THEN {shown} || ' has values outside [0, 1]'
        WHEN abs(list_sum({probabilities}) - 1) > {PROBABILITY_SUM_TOLERANCE}
            THEN 'they sum to ' || round(list_sum({probabilities}), 4) || ', expected 1' END"""
