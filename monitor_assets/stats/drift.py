"""Data drift between a reference profile and current data, from histograms counted in DuckDB.

The heavy part is one DuckDB scan of the current rows that counts, for every numeric feature, a fine
equal-width histogram (`FINE_BINS` bins between the reference's 0.1% and 99.9% quantiles, plus an
underflow and an overflow bin that keep their sums) and, for every categorical feature, the count
per category (missing values and categories the reference never saw are counted, not dropped).
The reference is profiled the same way once, and every statistic is then computed from the two
small count vectors:

* PSI: on 10 reference-quantile bins (snapped to the fine grid) plus a bin for missing values.
* Jensen-Shannon distance (base 2, so in [0, 1]): on the same bins, or the categories.
* Wasserstein-1 distance divided by the reference standard deviation: each fine bin's mass at its
  centre (under- and overflow at their mean), so the error is at most half a fine bin width.
* Kolmogorov-Smirnov: the largest gap between the two CDFs at the fine-bin edges (exact when no two
  distinct values share a fine bin), p-value from scipy's asymptotic distribution (`kstwo`).
* Chi-square: scipy's `chi2_contingency` on the reference-versus-current category counts.

Automatic choice (overridable per feature): p-value tests on small samples, where they are
calibrated; distances on large ones, where any p-value test flags trivial shifts. A default distance
threshold also grows for smaller samples to stay above sampling noise (`noise_floor`): a few hundred
rows of an unchanged feature already give a Wasserstein/std of 0.1 now and then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import duckdb
import numpy as np
from scipy import stats
from scipy.spatial import distance

from monitor_assets.storage.sql import quote_ident

FINE_BINS = 2000
PSI_BINS = 10
MISSING = "\x00missing"  # a category name no real data uses
SMALL_SAMPLE = 500  # at most this many current values: p-value tests; above: distances
DEFAULT_THRESHOLDS = {"ks": 0.05, "chisquare": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.2}
P_VALUE_METHODS = ("ks", "chisquare")


@dataclass
class NumericCounts:
    """Counts of one numeric feature on the fine grid [lo, hi]: under, FINE_BINS bins, over."""

    n: int  # all rows, missing included
    n_missing: int
    total: float
    total_sq: float
    counts: np.ndarray  # length bins + 2
    under_sum: float
    over_sum: float

    @property
    def n_valid(self) -> int:
        return self.n - self.n_missing

    @property
    def mean(self) -> float:
        return self.total / self.n_valid if self.n_valid else math.nan

    @property
    def std(self) -> float:
        if self.n_valid < 2:
            return math.nan
        var = (self.total_sq - self.total ** 2 / self.n_valid) / (self.n_valid - 1)
        return math.sqrt(max(var, 0.0))


@dataclass
class NumericProfile:
    lo: float
    hi: float
    bins: int
    counts: NumericCounts
    psi_cuts: list[int]  # fine-bin indices (into counts, 0 = underflow) where PSI bins start

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def to_json(self) -> dict:
        c = self.counts
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins, "psi_cuts": self.psi_cuts,
                "n": c.n, "n_missing": c.n_missing, "total": c.total, "total_sq": c.total_sq,
                "counts": c.counts.tolist(), "under_sum": c.under_sum, "over_sum": c.over_sum}

    @classmethod
    def from_json(cls, d: dict) -> NumericProfile:
        counts = NumericCounts(d["n"], d["n_missing"], d["total"], d["total_sq"],
                               np.asarray(d["counts"], dtype=np.int64), d["under_sum"], d["over_sum"])
        return cls(d["lo"], d["hi"], d["bins"], counts, d["psi_cuts"])


@dataclass
class CategoricalProfile:
    counts: dict[str, int]  # category -> count, MISSING for missing values

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"counts": self.counts}

    @classmethod
    def from_json(cls, d: dict) -> CategoricalProfile:
        return cls({k: int(v) for k, v in d["counts"].items()})


Profile = NumericProfile | CategoricalProfile


@dataclass
class FeatureSpec:
    name: str
    kind: str  # numeric | categorical
    method: str = "auto"
    threshold: float | None = None


@dataclass
class DriftResult:
    feature: str
    kind: str
    method: str
    statistic: float
    p_value: float | None
    threshold: float
    drifted: bool
    n_current: int
    n_reference: int
    current_mean: float | None = None
    reference_mean: float | None = None
    missing_share: float = 0.0
    unseen_share: float = 0.0
    current_summary: str = ""
    reference_summary: str = ""
    all_statistics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Counting (the only part that touches data; one scan per call).


def _numeric_value(name: str) -> str:
    return f"nullif({quote_ident(name)}::DOUBLE, 'NaN'::DOUBLE)"  # NaN counts as missing


def count_histograms(con: duckdb.DuckDBPyConnection, relation: str, numeric: dict[str, tuple[float, float, int]],
                     categorical: list[str], params: list | None = None,
                     batch_rows: int = 1 << 18) -> dict[str, NumericCounts | dict]:
    """Fine histograms for `numeric` {name: (lo, hi, bins)} and category counts for `categorical`.

    DuckDB scans and casts; numeric columns stream out in Arrow batches (memory stays bounded by
    the batch, whatever the row count) and are binned with numpy's bincount, which is faster than
    any SQL aggregate for this; categories are counted by DuckDB's `histogram`. NaN counts as missing."""
    out: dict[str, NumericCounts | dict] = {}
    names = list(numeric)
    if names:
        cols = ", ".join(f"{quote_ident(n)}::DOUBLE AS v{i}" for i, n in enumerate(names))
        state = {n: [0, 0, 0.0, 0.0, np.zeros(numeric[n][2] + 2, dtype=np.int64), 0.0, 0.0] for n in names}
        reader = con.sql(f"SELECT {cols} FROM ({relation})", params=params or None).to_arrow_reader(batch_rows)
        for batch in reader:
            for i, name in enumerate(names):
                lo, hi, bins = numeric[name]
                st = state[name]
                x = batch.column(i).to_numpy(zero_copy_only=False)
                st[0] += len(x)
                x = x[~np.isnan(x)]
                st[1] += len(x)
                st[2] += float(x.sum())
                st[3] += float(np.dot(x, x))
                idx = np.floor((x - lo) * (bins / (hi - lo)))
                np.clip(idx, -1, bins, out=idx)
                st[4] += np.bincount(idx.astype(np.int64) + 1, minlength=bins + 2)
                st[5] += float(x[idx < 0].sum())
                st[6] += float(x[idx >= bins].sum())
        for name in names:
            n, valid, total, total_sq, counts, under, over = state[name]
            out[name] = NumericCounts(n, n - valid, total, total_sq, counts, under, over)
    if categorical or not names:
        exprs = ", ".join(["count(*)"] + [f"histogram(coalesce({quote_ident(c)}::VARCHAR, '{MISSING}'))" for c in categorical])
        row = con.execute(f"SELECT {exprs} FROM ({relation})", params or []).fetchall()[0]
        for name, hist in zip(categorical, row[1:], strict=True):
            out[name] = dict(hist or {})
    return out


def profile_reference(con: duckdb.DuckDBPyConnection, relation: str, features: list[FeatureSpec],
                      params: list | None = None, bins: int = FINE_BINS) -> dict[str, Profile]:
    """Profile a reference set once: grid bounds from its quantiles, then its counts on that grid."""
    numeric = [f.name for f in features if f.kind == "numeric"]
    bounds: dict[str, tuple[float, float, int]] = {}
    if numeric:
        parts = ", ".join(f"quantile_cont({_numeric_value(n)}, [0.001, 0.999]), min({_numeric_value(n)}), "
                          f"max({_numeric_value(n)})" for n in numeric)
        # Grid bounds need not be exact: quantiles of a fixed 100k-row sample (exact for smaller sets).
        columns = ", ".join(quote_ident(n) for n in numeric)
        row = con.execute(f"SELECT {parts} FROM (SELECT {columns} FROM ({relation})) "
                          "USING SAMPLE reservoir(100000 ROWS) REPEATABLE (7)", params or []).fetchall()[0]
        for i, name in enumerate(numeric):
            qs, lo_all, hi_all = row[3 * i: 3 * i + 3]
            lo, hi = (qs or [None, None])
            if lo is None:  # no values at all
                lo, hi = 0.0, 1.0
            if not hi > lo:  # heavy ties at the quantiles: use the sample's min..max
                lo, hi = lo_all, hi_all
            if not hi > lo:  # a constant feature
                lo, hi = lo - 0.5, lo + 0.5
            # The grid is [lo, hi] with hi itself inside (x >= the grid's end is overflow).
            bounds[name] = (float(lo), float(hi) + (float(hi) - float(lo)) * 1e-9, bins)
    counted = count_histograms(con, relation, bounds, [f.name for f in features if f.kind == "categorical"], params)
    profiles: dict[str, Profile] = {}
    for f in features:
        if f.kind == "numeric":
            lo, hi, b = bounds[f.name]
            counts = counted[f.name]
            profiles[f.name] = NumericProfile(lo, hi, b, counts, _quantile_cuts(counts.counts, PSI_BINS))
        else:
            profiles[f.name] = CategoricalProfile(counted[f.name])
    return profiles


def _quantile_cuts(counts: np.ndarray, k: int) -> list[int]:
    """Indices into `counts` where each of ~k equal-frequency bins starts (always 0 first)."""
    cum = np.cumsum(counts)
    total = cum[-1] if len(cum) else 0
    if total == 0:
        return [0]
    cuts = {0}
    for j in range(1, k):
        cuts.add(int(np.searchsorted(cum, total * j / k, side="right")))
    return sorted(c for c in cuts if c < len(counts))


# ---------------------------------------------------------------------------------------------
# Statistics from counts (pure numpy/scipy).


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of two count vectors; empty bins get `eps` share."""
    p = np.maximum(expected / max(expected.sum(), 1), eps)
    q = np.maximum(actual / max(actual.sum(), 1), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count vectors."""
    if expected.sum() == 0 or actual.sum() == 0:
        return math.nan
    return float(distance.jensenshannon(expected, actual, base=2))


def wasserstein_binned(positions: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """W1 between two distributions with masses at the same sorted `positions`."""
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return math.nan
    cdf_gap = np.abs(np.cumsum(ref_counts) / ref_counts.sum() - np.cumsum(cur_counts) / cur_counts.sum())
    return float(np.sum(cdf_gap[:-1] * np.diff(positions)))


def ks_binned(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic at the bin edges and scipy's asymptotic two-sided p-value."""
    n, m = int(ref_counts.sum()), int(cur_counts.sum())
    if n == 0 or m == 0:
        return math.nan, math.nan
    d = float(np.max(np.abs(np.cumsum(ref_counts) / n - np.cumsum(cur_counts) / m)))
    en = n * m / (n + m)
    return d, float(stats.kstwo.sf(d, np.round(en)))


def chisquare_counts(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """scipy's chi-square test of independence on the 2 x k table of reference and current counts."""
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    res = stats.chi2_contingency(table)
    return float(res.statistic), float(res.pvalue)


def noise_floor(method: str, n_reference: int, n_current: int, categories: int = 2) -> float:
    """A distance that sampling noise alone rarely reaches for these sample sizes (about 4 standard
    errors for Wasserstein/std, 2 for Jensen-Shannon with `categories` levels); 0 for other methods."""
    if n_reference <= 0 or n_current <= 0:
        return 0.0
    n_eff = n_reference * n_current / (n_reference + n_current)
    if method == "wasserstein":
        return 4.0 / math.sqrt(n_eff)
    if method == "jensenshannon":
        return 2.0 * math.sqrt(max(categories - 1, 1) / (5.5 * n_eff))
    return 0.0


def _threshold(spec: FeatureSpec, method: str, n_ref: int, n_cur: int, categories: int = 2) -> float:
    if spec.threshold is not None:  # the user's threshold is used as given
        return spec.threshold
    return max(DEFAULT_THRESHOLDS[method], noise_floor(method, n_ref, n_cur, categories))


def choose_method(kind: str, n_current: int, method: str = "auto") -> str:
    if method != "auto":
        return method
    if kind == "numeric":
        return "ks" if n_current <= SMALL_SAMPLE else "wasserstein"
    return "chisquare" if n_current <= SMALL_SAMPLE else "jensenshannon"


def _psi_vectors(profile: NumericProfile, current: NumericCounts) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts on the PSI bins, with missing values as one more bin."""
    cuts = profile.psi_cuts
    ref = np.add.reduceat(profile.counts.counts, cuts)
    cur = np.add.reduceat(current.counts, cuts)
    return np.append(ref, profile.counts.n_missing), np.append(cur, current.n_missing)


def numeric_drift(spec: FeatureSpec, profile: NumericProfile, current: NumericCounts) -> DriftResult:
    method = choose_method("numeric", current.n_valid, spec.method)
    threshold = _threshold(spec, method, profile.counts.n_valid, current.n_valid)
    ref_psi, cur_psi = _psi_vectors(profile, current)
    ref_std = profile.counts.std
    w1 = wasserstein_binned(_positions(profile, current), profile.counts.counts, current.counts)
    values = {
        "psi": psi(ref_psi, cur_psi),
        "jensenshannon": js_distance(ref_psi, cur_psi),
        "wasserstein": w1 / ref_std if ref_std and ref_std > 0 else math.nan,
    }
    d, p = ks_binned(profile.counts.counts, current.counts)
    values["ks"] = d
    statistic = values[method]
    p_value = p if method == "ks" else None
    drifted = bool(p_value < threshold) if p_value is not None and not math.isnan(p_value) else (
        bool(statistic >= threshold) if not math.isnan(statistic) else False)
    return DriftResult(
        spec.name, "numeric", method, statistic, p_value, threshold, drifted, current.n, profile.counts.n,
        current_mean=current.mean, reference_mean=profile.counts.mean,
        missing_share=current.n_missing / current.n if current.n else 0.0,
        current_summary=_numeric_summary(current), reference_summary=_numeric_summary(profile.counts),
        all_statistics={**values, "ks_p_value": p},
    )


def _positions(profile: NumericProfile, current: NumericCounts) -> np.ndarray:
    """Mass positions shared by both histograms: bin centres, and under/overflow at the pooled mean."""
    ref = profile.counts
    inner = profile.lo + (np.arange(profile.bins) + 0.5) * profile.width
    under_n = ref.counts[0] + current.counts[0]
    over_n = ref.counts[-1] + current.counts[-1]
    under = (ref.under_sum + current.under_sum) / under_n if under_n else profile.lo
    over = (ref.over_sum + current.over_sum) / over_n if over_n else profile.hi
    return np.concatenate([[min(under, profile.lo)], inner, [max(over, profile.hi)]])


def categorical_drift(spec: FeatureSpec, profile: CategoricalProfile, current: dict[str, int]) -> DriftResult:
    n_cur = sum(current.values())
    n_valid = n_cur - current.get(MISSING, 0)
    method = choose_method("categorical", n_valid, spec.method)
    categories = sorted(set(profile.counts) | set(current))
    threshold = _threshold(spec, method, profile.n, n_cur, len(categories))
    ref = np.array([profile.counts.get(c, 0) for c in categories], dtype=float)
    cur = np.array([current.get(c, 0) for c in categories], dtype=float)
    chi, p = chisquare_counts(ref, cur)
    values = {"psi": psi(ref, cur), "jensenshannon": js_distance(ref, cur), "chisquare": chi}
    statistic = values[method]
    p_value = p if method == "chisquare" else None
    drifted = bool(p_value < threshold) if p_value is not None else (
        bool(statistic >= threshold) if not math.isnan(statistic) else False)
    unseen = sum(v for c, v in current.items() if c not in profile.counts and c != MISSING)
    return DriftResult(
        spec.name, "categorical", method, statistic, p_value, threshold, drifted, n_cur, profile.n,
        missing_share=current.get(MISSING, 0) / n_cur if n_cur else 0.0,
        unseen_share=unseen / n_cur if n_cur else 0.0,
        current_summary=_top_categories(current), reference_summary=_top_categories(profile.counts),
        all_statistics={**values, "chisquare_p_value": p},
    )


def feature_drift(spec: FeatureSpec, profile: Profile, current) -> DriftResult:
    if isinstance(profile, NumericProfile):
        return numeric_drift(spec, profile, current)
    return categorical_drift(spec, profile, current)


def _numeric_summary(c: NumericCounts) -> str:
    if not c.n_valid:
        return "no values"
    return f"mean {c.mean:.4g}, std {c.std:.4g}"


def _top_categories(counts: dict[str, int], k: int = 3) -> str:
    n = sum(counts.values())
    if not n:
        return "no values"
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{'(missing)' if c == MISSING else c} {v / n:.0%}" for c, v in top)


def compute_drift(con: duckdb.DuckDBPyConnection, relation: str, specs: list[FeatureSpec],
                  profiles: dict[str, Profile], params: list | None = None) -> list[DriftResult]:
    """Count the current rows in one scan and compare each feature with its reference profile."""
    numeric = {s.name: (profiles[s.name].lo, profiles[s.name].hi, profiles[s.name].bins)
               for s in specs if isinstance(profiles[s.name], NumericProfile)}
    categorical = [s.name for s in specs if isinstance(profiles[s.name], CategoricalProfile)]
    counted = count_histograms(con, relation, numeric, categorical, params)
    return [feature_drift(s, profiles[s.name], counted[s.name]) for s in specs]
