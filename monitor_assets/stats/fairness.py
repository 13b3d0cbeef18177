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


# The disparity columns `fairness_table` adds, each attribute's values repeated on its rows, and their values
# when an attribute has fewer than two eligible groups (or the model is a regressor).
DISPARITIES = {"demographic_parity_difference": np.nan, "demographic_parity_ratio": np.nan,
               "equalized_odds_difference": np.nan, "passes_four_fifths": None, "disparity_p_value": np.nan,
               "n_eligible_groups": 0, "demographic_parity_p_value": np.nan,
               "most_favoured_group": None, "most_favoured_n": np.nan, "most_favoured_selection_rate": np.nan,
               "least_favoured_group": None, "least_favoured_n": np.nan, "least_favoured_selection_rate": np.nan,
               "true_positive_rate_difference": np.nan, "true_positive_rate_p_value": np.nan,
               "false_positive_rate_difference": np.nan, "false_positive_rate_p_value": np.nan,
               "equalized_odds_rate": None, "equalized_odds_p_value": np.nan,
               "equalized_odds_max_group": None, "equalized_odds_max_n": np.nan,
               "equalized_odds_min_group": None, "equalized_odds_min_n": np.nan}


def fairness_table(counts: pd.DataFrame, classifier: bool, min_group_size: int = MIN_GROUP_SIZE) -> pd.DataFrame:
    """Rates per group and disparities per attribute (repeated on each of its rows; the rows grouped by
    attribute, in the order the attributes first appear).

    Only groups of at least `min_group_size` rows (eligible) enter the disparities, their tests and
    the named groups: the most and least favoured (highest and lowest selection rate) and, for
    equalized odds, the groups at the ends of the larger of the TPR and FPR gaps. Plain arrays per
    attribute (a pandas frame per attribute cost about 18 ms a model-day, most of the fairness step)."""
    if counts.empty:
        return counts
    codes = pd.factorize(counts["attribute"])[0]  # -1: no attribute, left out as a groupby leaves it
    order = np.argsort(np.where(codes < 0, codes.max() + 1, codes), kind="stable")[: int((codes >= 0).sum())]
    df = counts.take(order).reset_index(drop=True)
    codes = codes[order]
    # The new columns made as arrays and the frame built once: a column set on a frame costs ~0.2 ms.
    out: dict = {c: df[c] for c in df.columns}
    for c in ("n", "selected", "n_labelled", "tp", "fp", "fn", "tn", "abs_error"):
        out[c] = df[c].astype(float).to_numpy()
    n = out["n"]
    out["below_min_size"] = n < min_group_size
    if classifier:
        tp, fp, fn, tn = out["tp"], out["fp"], out["fn"], out["tn"]
        out["selection_rate"] = _ratio(out["selected"], n)
        out["true_positive_rate"] = _ratio(tp, tp + fn)
        out["false_positive_rate"] = _ratio(fp, fp + tn)
        out["accuracy"] = _ratio(tp + tn, out["n_labelled"])
        out["mae"] = np.full(len(df), np.nan)
    else:
        for c in ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy"):
            out[c] = np.full(len(df), np.nan)
        out["mae"] = _ratio(out["abs_error"], out["n_labelled"])
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)])
    col = {c: out[c].to_numpy() if isinstance(out[c], pd.Series) else out[c]
           for c in ("grp", "n", "selected", "tp", "fp", "fn", "tn", "below_min_size", "selection_rate",
                     "true_positive_rate", "false_positive_rate")}
    values = [_disparities(col, slice(a, a + k), classifier) for a, k in zip(starts, sizes, strict=True)]
    for key, empty in DISPARITIES.items():
        per = [v.get(key, empty) for v in values]
        if any(p is None for p in per) or any(isinstance(p, str) for p in per):
            column = np.empty(len(df), dtype=object)  # names, and a verdict that may be None
            column[:] = np.repeat(np.array(per, dtype=object), sizes)
        elif all(isinstance(p, (bool, np.bool_)) for p in per):
            column = np.repeat(np.array(per, dtype=bool), sizes)
        else:
            column = np.repeat(np.array(per, dtype=np.int64 if key == "n_eligible_groups" else float), sizes)
        out[key] = column
    return pd.DataFrame(out)


def _disparities(col: dict[str, np.ndarray], rows: slice, classifier: bool) -> dict:
    """One attribute's disparities (`rows` of the columns `col`); the keys left out keep DISPARITIES' values."""
    eligible = np.flatnonzero(~col["below_min_size"][rows].astype(bool)) + rows.start
    out: dict = {"n_eligible_groups": len(eligible)}
    if not (classifier and len(eligible) >= 2):
        return out
    grp, n, rate = col["grp"], col["n"], col["selection_rate"]
    sel = eligible[~np.isnan(rate[eligible])]
    if len(sel) >= 2:
        hi, lo = sel[np.argmax(rate[sel])], sel[np.argmin(rate[sel])]  # the first of ties, as idxmax
        out["demographic_parity_difference"] = float(rate[hi] - rate[lo])
        ratio = float(rate[lo] / rate[hi]) if rate[hi] > 0 else np.nan
        out["demographic_parity_ratio"] = ratio
        if not np.isnan(ratio):
            out["passes_four_fifths"] = bool(ratio >= FOUR_FIFTHS)
        out.update(most_favoured_group=grp[hi], most_favoured_n=n[hi], most_favoured_selection_rate=rate[hi],
                   least_favoured_group=grp[lo], least_favoured_n=n[lo], least_favoured_selection_rate=rate[lo])
    p = selection_independence_p(col["selected"][eligible], n[eligible])
    out["disparity_p_value"] = out["demographic_parity_p_value"] = p
    gaps = {}
    for name, hit, miss in (("true_positive_rate", "tp", "fn"), ("false_positive_rate", "fp", "tn")):
        r = col[name]
        known = eligible[~np.isnan(r[eligible])]
        if len(known) < 2:
            continue
        hi, lo = known[np.argmax(r[known])], known[np.argmin(r[known])]
        gap = float(r[hi] - r[lo])
        p = selection_independence_p(col[hit][known], col[hit][known] + col[miss][known])
        out[f"{name}_difference"], out[f"{name}_p_value"] = gap, p
        gaps[name] = (gap, p, hi, lo, col[hit] + col[miss])
    if gaps:
        name = max(gaps, key=lambda r: gaps[r][0])  # ties: the TPR gap (first)
        gap, p, hi, lo, base = gaps[name]
        out.update(equalized_odds_difference=gap, equalized_odds_rate=name, equalized_odds_p_value=p,
                   equalized_odds_max_group=grp[hi], equalized_odds_max_n=base[hi],
                   equalized_odds_min_group=grp[lo], equalized_odds_min_n=base[lo])
    return out


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
