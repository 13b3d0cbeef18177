"""Group fairness from confusion counts per group, with fairlearn's definitions.

DuckDB counts (`monitor_assets.analysis.queries.group_counts`), per sensitive attribute and group, the rows, the selected (predicted positive) rows
and the confusion matrix on labelled rows; the rates and disparities are then a few divisions:

* selection rate: share predicted positive (on every scored row: labels are not needed for it);
* true / false positive rate and accuracy on labelled rows; MAE by group for regressors;
* demographic parity difference and ratio: max - min and min / max of the selection rates;
* equalized odds difference: the larger of the TPR and FPR gaps (fairlearn's "between_groups");
* the four-fifths rule: the demographic parity ratio is at least 0.8;
* significance guards, so an alert can ask for a disparity that is also unlikely to be noise (small
  groups swing widely): `demographic_parity_p_value` (also `disparity_p_value`) tests that selection
  does not depend on the group; `true_positive_rate_p_value` the same among labelled positives,
  `false_positive_rate_p_value` among labelled negatives, and `equalized_odds_p_value` is the one
  of the two whose gap is the equalized odds difference. Chi-square test of independence, or
  Fisher's exact test for two groups with an expected cell under 5.
* the groups a message names: `most_favoured_*` / `least_favoured_*` (highest / lowest selection
  rate, with sizes) and `equalized_odds_max_*` / `equalized_odds_min_*` (the ends of the larger gap,
  sized by the positives or negatives the rate is computed on).

Groups with fewer than `min_group_size` rows (default `MIN_GROUP_SIZE`, 30) are reported but left
out of the disparities, the tests and the named groups, so a handful of customers cannot raise an
alert or be its comparison group. On the eligible groups' rows, the numbers equal fairlearn's
`MetricFrame` / `demographic_parity_*` / `equalized_odds_difference`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from monitor_assets.stats.drift import chisquare_counts

FOUR_FIFTHS = 0.8
MIN_GROUP_SIZE = 30  # groups with fewer rows are reported but left out of disparities, tests and messages


def _ratio(num, den):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def fairness_table(counts: pd.DataFrame, classifier: bool, min_group_size: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """Rates per group and disparities per attribute (repeated on each of its rows).

    Only groups of at least `min_group_size` rows (eligible) enter the disparities, their tests and
    the named groups: the most and least favoured (highest and lowest selection rate) and, for
    equalized odds, the groups at the ends of the larger of the TPR and FPR gaps."""
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
               "equalized_odds_difference": np.nan, "passes_four_fifths": None, "disparity_p_value": np.nan,
               "n_eligible_groups": len(eligible), "demographic_parity_p_value": np.nan,
               "most_favoured_group": None, "most_favoured_n": np.nan, "most_favoured_selection_rate": np.nan,
               "least_favoured_group": None, "least_favoured_n": np.nan, "least_favoured_selection_rate": np.nan,
               "true_positive_rate_difference": np.nan, "true_positive_rate_p_value": np.nan,
               "false_positive_rate_difference": np.nan, "false_positive_rate_p_value": np.nan,
               "equalized_odds_rate": None, "equalized_odds_p_value": np.nan,
               "equalized_odds_max_group": None, "equalized_odds_max_n": np.nan,
               "equalized_odds_min_group": None, "equalized_odds_min_n": np.nan}
        if classifier and len(eligible) >= 2:
            sel = eligible.dropna(subset=["selection_rate"])
            if len(sel) >= 2:
                hi, lo = sel.loc[sel.selection_rate.idxmax()], sel.loc[sel.selection_rate.idxmin()]
                out["demographic_parity_difference"] = float(hi.selection_rate - lo.selection_rate)
                out["demographic_parity_ratio"] = (float(lo.selection_rate / hi.selection_rate)
                                                   if hi.selection_rate > 0 else np.nan)
                if not np.isnan(out["demographic_parity_ratio"]):
                    out["passes_four_fifths"] = bool(out["demographic_parity_ratio"] >= FOUR_FIFTHS)
                out.update(most_favoured_group=hi.grp, most_favoured_n=hi.n, most_favoured_selection_rate=hi.selection_rate,
                           least_favoured_group=lo.grp, least_favoured_n=lo.n,
                           least_favoured_selection_rate=lo.selection_rate)
            p = selection_independence_p(eligible.selected.to_numpy(), eligible.n.to_numpy())
            out["disparity_p_value"] = out["demographic_parity_p_value"] = p
            gaps = {}
            for rate, hit, miss in (("true_positive_rate", "tp", "fn"), ("false_positive_rate", "fp", "tn")):
                known = eligible.dropna(subset=[rate])
                if len(known) < 2:
                    continue
                hi, lo = known.loc[known[rate].idxmax()], known.loc[known[rate].idxmin()]
                gap = float(hi[rate] - lo[rate])
                p = selection_independence_p(known[hit].to_numpy(), (known[hit] + known[miss]).to_numpy())
                short = "true_positive_rate" if rate == "true_positive_rate" else "false_positive_rate"
                out[f"{short}_difference"], out[f"{short}_p_value"] = gap, p
                gaps[rate] = (gap, p, hi, lo, hit, miss)
            if gaps:
                rate = max(gaps, key=lambda r: gaps[r][0])  # ties: the TPR gap (first)
                gap, p, hi, lo, hit, miss = gaps[rate]
                out.update(equalized_odds_difference=gap, equalized_odds_rate=rate, equalized_odds_p_value=p,
                           equalized_odds_max_group=hi.grp, equalized_odds_max_n=hi[hit] + hi[miss],
                           equalized_odds_min_group=lo.grp, equalized_odds_min_n=lo[hit] + lo[miss])
        rows.append(part.assign(**out))
    return pd.concat(rows, ignore_index=True)


def selection_independence_p(selected: np.ndarray, n: np.ndarray) -> float:
    """p-value of the test that the share selected (of `n` per group) does not depend on the group:
    Fisher's exact test for two groups with an expected cell under 5, else scipy's chi-square test
    of independence. Also used for TPR (tp of tp + fn) and FPR (fp of fp + tn)."""
    table = np.vstack([selected, n - selected]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    if table.shape[1] == 2 and expected.min() < 5:
        return float(stats.fisher_exact(table.astype(np.int64)).pvalue)
    return chisquare_counts(table[0], table[1])[1]  # scipy's chi2_contingency, computed without its overhead
