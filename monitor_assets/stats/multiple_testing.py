"""Multiple-testing corrections shared by the drift tests and the retraining trigger."""

from __future__ import annotations

import numpy as np

CORRECTIONS = ("benjamini_hochberg", "bonferroni")


def adjust_p_values(p_values, correction: str = "benjamini_hochberg", family_size: float | None = None) -> np.ndarray:
    """p-values adjusted for the family, capped at 1: `benjamini_hochberg` or Bonferroni, with `family_size`
    tests counted (default: the p-values given; NaN stays NaN and is not counted)."""
    if correction == "bonferroni":
        p = np.asarray(p_values, dtype=float)
        ok = ~np.isnan(p)
        out = np.full(p.shape, np.nan)
        out[ok] = np.minimum(p[ok] * float(ok.sum() if family_size is None else family_size), 1.0)
        return out
    if correction != "benjamini_hochberg":
        raise ValueError(f"unknown correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
    return benjamini_hochberg(p_values, family_size)


def benjamini_hochberg(p_values, family_size: float | None = None) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values, capped at 1; NaN stays NaN and is not counted.

    With `family_size` None (the number of p-values given) this is exactly
    `scipy.stats.false_discovery_control(p, method="bh")`, down to the last bit: the same products
    (p * (m / rank)) in the same order. A larger `family_size` counts tests that were not run
    (e.g. every monitored model, not only those evaluated today)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    size = float(m if family_size is None else family_size)
    values = p[ok]
    order = np.argsort(values)
    ranked = values[order] * (size / np.arange(1, m + 1, dtype=float))
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.clip(ranked, 0.0, 1.0)
    out[ok] = adjusted
    return out
