"""Per-prediction loss: what the retraining trigger and the version comparison test.

Log loss for classifiers (the probability clipped to [EPS, 1 - EPS], as scikit-learn does, so a
confidently wrong prediction costs at most -log(EPS) instead of infinity), squared or absolute error
for regressors. `loss_values` works on arrays, `loss_sql` is the same formula as a DuckDB expression
(tests check that both agree), so the heavy part runs where the rows are.
"""

from __future__ import annotations

import numpy as np

# scikit-learn's clipping for log loss (float64 machine epsilon): the largest loss is about 36.04.
EPS = float(np.finfo(np.float64).eps)
LOSSES = ("log_loss", "squared_error", "absolute_error")
# Multiclass log_loss is -ln p(true class), or the 0/1 error for a row logged without probabilities
# (`stats.multiclass.row_loss`, and `multiclass_loss_sql` in the same form for DuckDB).
DEFAULT_LOSS = {"binary_classification": "log_loss", "regression": "squared_error",
                "multiclass_classification": "log_loss"}


def ranking_loss(k: int) -> str:
    """The name of a ranker's per-request loss (`stats.ranking.request_losses`): 1 - NDCG@k."""
    return f"1-ndcg@{k}"


def default_loss(task: str) -> str:
    """The loss a model of `task` uses unless its config says otherwise."""
    return DEFAULT_LOSS[task]


def check_loss(loss: str, task: str) -> None:
    """Log loss needs probabilities: it is for classifiers only."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    if loss == "log_loss" and task not in ("binary_classification", "multiclass_classification"):
        raise ValueError("log_loss needs probabilities: it is for binary_classification and "
                         "multiclass_classification models")


def loss_values(loss: str, label, score, eps: float = EPS) -> np.ndarray:
    """Per-prediction losses of `score` against `label` (arrays of the same length).

    log_loss: -(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]; labels are 0 or 1.
    squared_error: (y - s)²; absolute_error: |y - s|."""
    y = np.asarray(label, dtype=float)
    s = np.asarray(score, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in shape: {y.shape} vs {s.shape}")
    if loss == "log_loss":
        p = np.clip(s, eps, 1 - eps)
        return -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if loss == "squared_error":
        return (y - s) ** 2
    if loss == "absolute_error":
        return np.abs(y - s)
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


def loss_sql(loss: str, label: str = "label", score: str = "score", eps: float = EPS) -> str:
    """The same loss as a DuckDB expression over the columns `label` and `score` (trusted SQL names)."""
    if loss == "log_loss":
        p = f"least(greatest({score}::DOUBLE, {eps!r}), {1 - eps!r})"
        return f"(-({label}::DOUBLE * ln({p}) + (1 - {label}::DOUBLE) * ln(1 - {p})))"
    if loss == "squared_error":
        return f"(({label}::DOUBLE - {score}::DOUBLE) ^ 2)"
    if loss == "absolute_error":
        return f"abs({label}::DOUBLE - {score}::DOUBLE)"
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")


def multiclass_loss_sql(label: str, code: str, probabilities: str, eps: float = EPS) -> str:
    """DuckDB expression of `multiclass.row_loss` for one row: `label` and `code` (predicted) are class codes,
    `probabilities` a DOUBLE[] in class order (NULL when not logged: the 0/1 error). A label outside the
    list has no probability: NULL (the row is left out, as `row_loss` gives NaN)."""
    p = f"least(greatest({probabilities}[({label})::BIGINT + 1], {eps!r}), {1 - eps!r})"
    return (f"(CASE WHEN {probabilities} IS NULL THEN ((({label})::BIGINT) IS DISTINCT FROM (({code})::BIGINT))::DOUBLE "
            f"WHEN ({label}) >= 0 AND ({label}) < len({probabilities}) THEN -ln({p}) END)")


def expected_losses(loss: str, probability, score, cap: float = float("inf"), eps: float = EPS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the expected loss and expected squared loss of a classifier's `score` when its label is 1 with
    `probability` (a calibrated score: what the retraining trigger counts for rows whose labels have not
    arrived). Each outcome's loss is capped at `cap` first, as the trigger caps realized losses."""
    if loss != "log_loss":
        raise ValueError(f"expected losses from probabilities are defined for log_loss only, not {loss!r}")
    p = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    one = np.minimum(loss_values(loss, np.ones(len(p)), score, eps), cap)
    zero = np.minimum(loss_values(loss, np.zeros(len(p)), score, eps), cap)
    return p * one + (1 - p) * zero, p * one ** 2 + (1 - p) * zero ** 2
