"""Realized model performance, computed in one DuckDB pass per group of rows.

The input relation has one row per logged prediction with the columns: the group keys, `is_ok`
(served without error), `latency_ms`, `score` (probability for classifiers, the predicted value for
regressors), `label` (NULL until it arrives), `threshold` (decision threshold) and `task`.
Metrics use only labelled, served rows; label coverage is reported beside them, and a metric that
cannot be known yet is NULL, never zero. Definitions follow scikit-learn's (tests compare), except
MAPE, which leaves out zero labels and says how many (`mape_zero_labels`).

The predicted class is the logged decision when the caller names one (`decision`), else
`score >= threshold`. The metrics' names and which way is better are in `metrics_spec`.
"""

from __future__ import annotations

import math

import duckdb
import pandas as pd

from monitor_assets.stats.categories import ONE_ZERO, category_sql
from monitor_assets.stats.metrics_spec import HIGHER, METRIC_DIRECTION

# scikit-learn clips probabilities for log loss.
EPS = 2.220446049250313e-16


def degradation(metric: str, baseline: float | None, current: float | None) -> float | None:
    """How much worse `current` is than `baseline` for `metric` (positive: worse, negative: better);
    None when either is unknown."""
    if baseline is None or current is None or math.isnan(baseline) or math.isnan(current):
        return None
    return baseline - current if METRIC_DIRECTION[metric] == HIGHER else current - baseline


def share_of_baseline(metric: str, baseline: float | None, value: float | None) -> float | None:
    """`value` as a share of the baseline in the metric's good direction, 1 - degradation / |baseline| (for a
    higher-is-better metric, current / baseline): what the performance checks compare with `min_metric_ratio`.
    None when either is unknown or not finite, or the baseline is 0."""
    if baseline is None or value is None or not math.isfinite(baseline) or not math.isfinite(value) or baseline == 0:
        return None
    return 1 - degradation(metric, baseline, value) / abs(baseline)


def metric_floor(metric: str, reference: float, ratio: float) -> float:
    """The floor a metric is held to: `ratio` x its reference value, or for a lower-is-better metric the ceiling
    (2 - ratio) x (a 5% worse MAE, not a MAE divided by 0.95)."""
    return ratio * reference if METRIC_DIRECTION[metric] == HIGHER else (2 - ratio) * reference


def decision_class_sql(expr: str) -> str:
    """SQL reading a logged decision as the predicted class 1 / 0: booleans in any spelling, 1 / 0
    as numbers or text ('1.0'); anything else is NULL (unknown)."""
    return f"CASE {category_sql(expr, ONE_ZERO)} WHEN '1' THEN 1 WHEN '0' THEN 0 END"


def predicted_class_sql(decision: str | None = None, score: str = "score", threshold: str = "threshold") -> str:
    """SQL for the predicted class: the logged `decision` expression where it says 1 or 0, else
    `score >= threshold`."""
    rule = f"({score} >= {threshold})::INT"
    return f"coalesce({decision_class_sql(decision)}, {rule})" if decision else rule


def performance_sql(source_sql: str, keys: list[str], decision: str | None = None) -> str:
    """SQL computing every metric per `keys` group of `source_sql` (see the module docstring).

    `decision`: an SQL expression over the source's columns holding the logged decision (predicted
    class); where it is given and readable it replaces `score >= threshold` for the class metrics,
    and `n_decision_missing` counts the served, scored rows that fell back to the threshold (NULL
    without `decision`). MAPE leaves out rows whose label is 0 (their error ratio is infinite;
    scikit-learn's guarded form gives 1e15-scale numbers); `mape_zero_labels` counts them."""
    k = ", ".join(keys)
    on = " AND ".join(f"b.{c} IS NOT DISTINCT FROM a.{c}" for c in keys)
    logged = decision_class_sql(decision) if decision else "NULL::INT"
    return f"""
    WITH src AS (SELECT *, {predicted_class_sql(decision)} AS y_pred, {logged} AS logged_class,
                        (is_ok AND label IS NOT NULL AND score IS NOT NULL) AS labelled FROM ({source_sql})),
    base AS (
        SELECT {k}, any_value(task) AS task,
            count(*) AS volume,
            count(*) FILTER (WHERE is_ok) AS n_ok,
            count(*) FILTER (WHERE NOT is_ok) AS n_errors,
            count(*) FILTER (WHERE NOT is_ok) / count(*) AS error_rate,
            quantile_cont(latency_ms, 0.5) AS latency_p50_ms,
            quantile_cont(latency_ms, 0.95) AS latency_p95_ms,
            quantile_cont(latency_ms, 0.99) AS latency_p99_ms,
            count(*) FILTER (WHERE labelled) AS n_labelled,
            count(*) FILTER (WHERE labelled) / nullif(count(*) FILTER (WHERE is_ok), 0) AS label_coverage,
            avg(score) FILTER (WHERE is_ok) AS mean_score,
            -- classification, on labelled rows
            avg((y_pred = label)::INT) FILTER (WHERE labelled) AS accuracy,
            count(*) FILTER (WHERE labelled AND y_pred = 1 AND label = 1) AS tp,
            count(*) FILTER (WHERE labelled AND y_pred = 1 AND label = 0) AS fp,
            count(*) FILTER (WHERE labelled AND y_pred = 0 AND label = 1) AS fn,
            -avg(label * ln(least(greatest(score, {EPS}), 1 - {EPS}))
                 + (1 - label) * ln(1 - least(greatest(score, {EPS}), 1 - {EPS}))) FILTER (WHERE labelled)
                AS log_loss,
            avg((score - label) ^ 2) FILTER (WHERE labelled) AS brier_score,
            avg(label) FILTER (WHERE labelled) AS positive_rate,
            avg(y_pred) FILTER (WHERE is_ok AND score IS NOT NULL) AS predicted_positive_rate,
            -- regression, on labelled rows
            avg(abs(label - score)) FILTER (WHERE labelled) AS mae,
            sqrt(avg((label - score) ^ 2) FILTER (WHERE labelled)) AS rmse,
            avg(abs(label - score) / abs(label)) FILTER (WHERE labelled AND label <> 0) AS mape,
            count(*) FILTER (WHERE labelled AND label = 0) AS mape_zero_labels,
            count(*) FILTER (WHERE is_ok AND score IS NOT NULL AND logged_class IS NULL) AS n_decision_missing,
            sum((label - score) ^ 2) FILTER (WHERE labelled) AS ss_res,
            var_pop(label) FILTER (WHERE labelled) * count(*) FILTER (WHERE labelled) AS ss_tot,
            avg(score - label) FILTER (WHERE labelled) AS mean_error
        FROM src GROUP BY {k}
    ),
    auc AS (  -- Mann-Whitney U with average ranks for ties, as roc_auc_score computes it
        SELECT {k},
            (sum(r) FILTER (WHERE label = 1) - n_pos * (n_pos + 1) / 2.0) / nullif(n_pos * (n - n_pos), 0) AS roc_auc
        FROM (SELECT {k}, label, count(*) OVER g AS n, sum(label) OVER g AS n_pos,
                     rank() OVER (PARTITION BY {k} ORDER BY score) + (count(*) OVER (PARTITION BY {k}, score) - 1) / 2.0 AS r
              FROM src WHERE labelled AND task = 'binary_classification'
              WINDOW g AS (PARTITION BY {k}))
        GROUP BY {k}, n, n_pos
    )
    SELECT a.{k.replace(", ", ", a.")}, a.task, volume, n_ok, n_errors, error_rate,
        latency_p50_ms, latency_p95_ms, latency_p99_ms, n_labelled, label_coverage, mean_score,
        CASE WHEN task = 'binary_classification' THEN accuracy END AS accuracy,
        CASE WHEN task = 'binary_classification' THEN tp / nullif(tp + fp, 0) END AS "precision",
        CASE WHEN task = 'binary_classification' THEN tp / nullif(tp + fn, 0) END AS recall,
        CASE WHEN task = 'binary_classification' THEN 2 * tp / nullif(2 * tp + fp + fn, 0) END AS f1,
        b.roc_auc,
        CASE WHEN task = 'binary_classification' THEN log_loss END AS log_loss,
        CASE WHEN task = 'binary_classification' THEN brier_score END AS brier_score,
        CASE WHEN task = 'binary_classification' THEN positive_rate END AS positive_rate,
        CASE WHEN task = 'binary_classification' THEN predicted_positive_rate END AS predicted_positive_rate,
        CASE WHEN task = 'regression' THEN mae END AS mae,
        CASE WHEN task = 'regression' THEN rmse END AS rmse,
        CASE WHEN task = 'regression' THEN mape END AS mape,
        CASE WHEN task = 'regression' THEN 1 - ss_res / nullif(ss_tot, 0) END AS r2,
        CASE WHEN task = 'regression' THEN mean_error END AS mean_error,
        CASE WHEN task = 'regression' THEN mape_zero_labels END AS mape_zero_labels,
        {'n_decision_missing' if decision else 'NULL::BIGINT'} AS n_decision_missing
    FROM base AS a LEFT JOIN auc AS b ON {on}
    """


def compute_performance(con: duckdb.DuckDBPyConnection, source_sql: str, keys: list[str],
                        params: list | None = None, decision: str | None = None) -> pd.DataFrame:
    return con.execute(performance_sql(source_sql, keys, decision), params or []).df()


def _known_number(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def metric_standard_error(metric: str, value: float, n: int, positive_rate: float | None = None,
                          predicted_positive_rate: float | None = None) -> float:
    """Approximate standard error of a day's metric on `n` labelled rows, for the guard that keeps a
    noisy day from alerting: Hanley & McNeil (1982) for ROC AUC; a binomial proportion for accuracy,
    precision and recall (on the rows each is a share of) and F1 (on the smaller of those); for MAE and
    MAPE that of a mean of absolute errors, taking their spread as for normal errors
    (sd = mean * sqrt(pi/2 - 1)); RMSE / sqrt(2n); for Brier the largest a mean of values in [0, 1]
    can have; R² by Olkin-Finn, 2|R²|(1 - R²)/sqrt(n). Log loss: 0 (no bound; judged on the value)."""
    n = max(int(n), 1)
    pos = max(round(n * positive_rate), 1) if _known_number(positive_rate) else n
    sel = max(round(n * predicted_positive_rate), 1) if _known_number(predicted_positive_rate) else n

    def binomial(m: int) -> float:
        return math.sqrt(max(value * (1 - value), 0.0) / max(m, 1))

    if metric == "roc_auc":
        if not _known_number(positive_rate):
            return 0.0
        n_neg = max(n - pos, 1)
        a = value
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        var = (a * (1 - a) + (pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (pos * n_neg)
        return math.sqrt(max(var, 0.0))
    if metric == "accuracy":
        return binomial(n)
    if metric == "recall":
        return binomial(pos)
    if metric == "precision":
        return binomial(sel)
    if metric == "f1":
        return binomial(min(pos, sel))
    if metric in ("mae", "mape"):
        return value * math.sqrt(math.pi / 2 - 1) / math.sqrt(n)
    if metric == "rmse":
        return value / math.sqrt(2 * n)
    if metric == "brier_score":
        return binomial(n)
    if metric == "r2":
        return 2 * abs(value) * abs(1 - value) / math.sqrt(n)
    return 0.0


def class_rows(metric: str, n: int, positive_rate: float | None = None,
               predicted_positive_rate: float | None = None) -> int | None:
    """The rows of the scarcer class a binary classifier's `metric` rests on, as `metric_standard_error` counts
    them on `n` labelled rows; None for a metric that needs no minimum of either class. Under a few of them the
    normal approximation's standard error means nothing (300 rows with 3 positives), so a caller should not judge.

    * roc_auc: positives and negatives (Hanley-McNeil's variance has both in its denominator);
    * recall: positives (a share of them); precision: predicted positives; f1: the fewer of the two;
    * accuracy and brier_score: none (a share, or a mean in [0, 1], of every labelled row);
    * log_loss: none (it has no standard error, so it is never judged on one)."""
    if metric not in ("roc_auc", "recall", "precision", "f1"):
        return None
    n = max(int(n), 0)
    pos = round(n * positive_rate) if _known_number(positive_rate) else None
    sel = round(n * predicted_positive_rate) if _known_number(predicted_positive_rate) else None
    counts = {"roc_auc": (pos, None if pos is None else n - pos), "recall": (pos,), "precision": (sel,),
              "f1": (pos, sel)}[metric]
    return min(c for c in counts if c is not None) if any(c is not None for c in counts) else 0
