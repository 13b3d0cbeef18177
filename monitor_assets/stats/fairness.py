"""Group fairness from confusion counts per group, with fairlearn's definitions.

DuckDB counts, per sensitive attribute and group, the rows, the selected (predicted positive) rows
and the confusion matrix on labelled rows; the rates and disparities are then a few divisions:

* selection rate: share predicted positive (on every scored row: labels are not needed for it);
* true / false positive rate and accuracy on labelled rows; MAE by group for regressors;
* demographic parity difference and ratio: max - min and min / max of the selection rates;
* equalized odds difference: the larger of the TPR and FPR gaps (fairlearn's "between_groups");
* the four-fifths rule: the demographic parity ratio is at least 0.8;
* `disparity_p_value`: scipy's chi-square test of independence between group and selection, so an
  alert can ask for a disparity that is also unlikely to be noise (small groups swing widely).

Groups with fewer than `min_group_size` rows are reported but left out of the disparities, so a
handful of customers cannot raise an alert. With every group large enough and every row labelled,
the numbers equal fairlearn's `MetricFrame` / `demographic_parity_*` / `equalized_odds_difference`.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from monitor_assets.storage.sql import quote_ident, sql_str

FOUR_FIFTHS = 0.8


def group_counts(con: duckdb.DuckDBPyConnection, relation: str, attributes: list[str],
                 params: list | None = None) -> pd.DataFrame:
    """Per attribute and group: n, selected, n_labelled, tp, fp, fn, tn and the absolute error sum.

    `relation` has `y_pred` (0/1 for classifiers, the prediction for regressors), `y_true`
    (NULL until labelled) and the attribute columns; a missing attribute value is its own group."""
    parts = []
    for attr in attributes:
        parts.append(f"""
            SELECT {sql_str(attr)} AS attribute, coalesce({quote_ident(attr)}::VARCHAR, '(missing)') AS grp,
                   count(*) AS n, sum(y_pred) AS selected, count(y_true) AS n_labelled,
                   count(*) FILTER (WHERE y_pred = 1 AND y_true = 1) AS tp,
                   count(*) FILTER (WHERE y_pred = 1 AND y_true = 0) AS fp,
                   count(*) FILTER (WHERE y_pred = 0 AND y_true = 1) AS fn,
                   count(*) FILTER (WHERE y_pred = 0 AND y_true = 0) AS tn,
                   sum(abs(y_pred - y_true)) AS abs_error
            FROM src GROUP BY grp""")
    sql = f"WITH src AS MATERIALIZED ({relation}) " + " UNION ALL ".join(parts) + " ORDER BY attribute, grp"
    return con.execute(sql, params or []).df() if parts else pd.DataFrame()


def _ratio(num, den):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def fairness_table(counts: pd.DataFrame, classifier: bool, min_group_size: int) -> pd.DataFrame:
    """Rates per group and disparities per attribute (repeated on each of its rows)."""
    if counts.empty:
        return counts
    df = counts.copy()
    for col in ("n", "selected", "n_labelled", "tp", "fp", "fn", "tn", "abs_error"):
        df[col] = df[col].astype(float)
    df["below_min_size"] = df["n"] < min_group_size
    if classifier:
        df["selection_rate"] = _ratio(df.selected, df.n)
        df["true_positive_rate"] = _ratio(df.tp, df.tp + df.fn)
        df["false_positive_rate"] = _ratio(df.fp, df.fp + df.tn)
        df["accuracy"] = _ratio(df.tp + df.tn, df.n_labelled)
        df["mae"] = np.nan
    else:
        df["selection_rate"] = df["true_positive_rate"] = df["false_positive_rate"] = df["accuracy"] = np.nan
        df["mae"] = _ratio(df.abs_error, df.n_labelled)
    rows = []
    for _, part in df.groupby("attribute", sort=False):
        eligible = part[~part.below_min_size]
        out = {"demographic_parity_difference": np.nan, "demographic_parity_ratio": np.nan,
               "equalized_odds_difference": np.nan, "passes_four_fifths": None, "disparity_p_value": np.nan}
        if classifier and len(eligible) >= 2:
            sel = eligible.selection_rate.dropna()
            if len(sel) >= 2:
                out["demographic_parity_difference"] = float(sel.max() - sel.min())
                out["demographic_parity_ratio"] = float(sel.min() / sel.max()) if sel.max() > 0 else np.nan
                if not np.isnan(out["demographic_parity_ratio"]):
                    out["passes_four_fifths"] = bool(out["demographic_parity_ratio"] >= FOUR_FIFTHS)
            out["disparity_p_value"] = selection_independence_p(eligible.selected.to_numpy(), eligible.n.to_numpy())
            tpr, fpr = eligible.true_positive_rate.dropna(), eligible.false_positive_rate.dropna()
            gaps = [s.max() - s.min() for s in (tpr, fpr) if len(s) >= 2]
            if gaps:
                out["equalized_odds_difference"] = float(max(gaps))
        rows.append(part.assign(**out))
    return pd.concat(rows, ignore_index=True)


def selection_independence_p(selected: np.ndarray, n: np.ndarray) -> float:
    """p-value of scipy's chi-square test that selection does not depend on the group."""
    table = np.vstack([selected, n - selected])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(stats.chi2_contingency(table).pvalue)
