"""Data drift between a reference profile and current data, from histograms (pure: numpy and scipy).

The heavy part is one scan of the current rows (DuckDB, in `monitor_assets.analysis.queries`, feeding
`NumericCounter` batch by batch) that counts, for every numeric feature, a fine
equal-width histogram (`FINE_BINS` bins between the reference's 0.1% and 99.9% quantiles, plus an
underflow and an overflow bin that keep their sums) and, for every categorical feature, the count
per category (missing values and categories the reference never saw are counted, not dropped).
The reference is profiled the same way once, and every statistic is then computed from the two
small count vectors:

* PSI: on 10 reference-quantile bins (snapped to the fine grid) plus a bin for missing values.
* Jensen-Shannon distance (base 2, so in [0, 1]): on the same bins, or the categories.
* Wasserstein-1 distance divided by the reference standard deviation: each fine bin's mass at its
  centre (each side's under- and overflow at that side's own mean), so the error is at most half a fine
  bin width plus the spread within the tails. Huge values (1e154 and up overflow when squared) are
  summed scaled down by a power of 2 (`NumericCounts.scale`): every figure stays finite and equals
  scipy's on the scaled data.
* Kolmogorov-Smirnov: the largest gap between the two CDFs at the fine-bin edges (exact when no two
  distinct values share a fine bin), p-value from scipy's asymptotic distribution (`kstwo`).
* Chi-square: scipy's `chi2_contingency` on the reference-versus-current category counts, with
  categories too rare to expect `MIN_EXPECTED` current rows pooled into one (the test is not valid
  on near-empty cells: one unseen value among 150 rows would otherwise give p < 1e-10).
* Constant reference (std 0, where Wasserstein/std is undefined): the share of current values that
  differ from the constant, with a binomial p-value against the reference's own rate (< 1/n).

Automatic choice (overridable per feature): p-value tests on small samples, where they are
calibrated; distances on large ones, where any p-value test flags trivial shifts.

False alarms are controlled at every sample size (measured in `benchmarks/drift_false_alarms.py`):

* p-value tests flag at p < `P_VALUE_ALPHA` (0.01), not 0.05: a stable feature alone is flagged on
  about 1 day in 100;
* across the features of one model-day, `control_false_alarms` applies Benjamini-Hochberg to the
  p-values (`compute_drift` does it by default): when nothing moved, the chance that any feature of
  the model is flagged stays near `P_VALUE_ALPHA`, however many features it has;
* a distance threshold never sits below its noise floor (`noise_floor`), the distance that
  sampling noise alone reaches with probability about 1e-3 for these two sample sizes, and never
  above the distance's maximum (Jensen-Shannon distance <= 1);
* the Jensen-Shannon default is 0.08, not 0.1: the standard reweighting (the two commonest of 8
  levels lose half their share) is 0.127, and at 2,000 rows one day in 1,000 measures it under 0.102.

Beside the distribution test, two signals of their own: the missing share against the reference's
(Fisher's exact test, and a change of at least `MISSING_MIN_CHANGE`), and the share of categories
the reference never saw against the Good-Turing estimate of the reference's unseen mass (binomial
test, and an excess of at least `UNSEEN_MIN_EXCESS`). A feature whose values are all unseen or all
missing says so in `DriftResult.message`.

Categorical values are normalised by one SQL expression (`category_sql`) in the reference profile
and in the current counts: booleans in any spelling, numbers written as text ('1' and '1.0'), blank
and 'NaN' as missing; for a boolean-like reference, 1/0 and true/false are one category.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import special, stats
from scipy.spatial import distance

from monitor_assets.stats.categories import MISSING
from monitor_assets.stats.multiple_testing import benjamini_hochberg

FINE_BINS = 2000
PSI_BINS = 10
SMALL_SAMPLE = 500  # at most this many current values: p-value tests; above: distances
P_VALUE_ALPHA = 0.01  # p-value tests flag below this (after Benjamini-Hochberg across a model's features)
DEFAULT_THRESHOLDS = {"ks": P_VALUE_ALPHA, "chisquare": P_VALUE_ALPHA, "constant": P_VALUE_ALPHA,
                      "wasserstein": 0.1, "jensenshannon": 0.08, "psi": 0.2}
P_VALUE_METHODS = ("ks", "chisquare", "constant")
METHOD_MAX = {"jensenshannon": 1.0, "ks": 1.0, "chisquare": 1.0, "constant": 1.0}  # thresholds never above
NOISE_ALPHA = 1e-3  # a distance's noise floor is its (approximate) 1 - NOISE_ALPHA quantile under no change
WASSERSTEIN_NOISE_SCALES = 2.5  # floor: this many times the null scale of sqrt(n_eff) * W1 / std
NORMAL_WASSERSTEIN_SCALE = 1.6147  # integral of sqrt(F (1 - F)) for the standard normal
MIN_EXPECTED = 5.0  # chi-square pools categories expected fewer times than this in the current rows
MISSING_MIN_CHANGE = 0.05  # missing share must move at least this much (and significantly) to flag
UNSEEN_MIN_EXCESS = 0.05  # unseen share must exceed the reference's expected unseen mass by this much
CONSTANT_MIN_SHARE = 0.01  # a constant reference flags when at least this share of values differ
# Sums are scaled down (by a power of 2) once a |value| passes this: squares stay below 2**960 (~1e289),
# so a sum of squares of up to 1e19 such values is still finite.
SCALE_ABOVE = 2.0 ** 480
FLOAT_MAX = float(np.finfo(float).max)
PROFILE_VERSION = 2  # 2: categories normalised by `category_sql`; version 1 profiles are counted raw


@dataclass
class NumericCounts:
    """Counts of one numeric feature on the fine grid [lo, hi]: under, FINE_BINS bins, over.

    The sums are in units of `scale` (a power of two, 1 unless some |value| passed `SCALE_ABOVE`): the
    real sum is `total * scale`, the real sum of squares `total_sq * scale * scale`. A finite value of
    1e154 and up overflows when squared, so huge data is summed scaled down (exactly, by a power of 2)."""

    n: int  # all rows, missing included
    n_missing: int
    total: float
    total_sq: float
    counts: np.ndarray  # length bins + 2
    under_sum: float
    over_sum: float
    scale: float = 1.0

    @property
    def n_valid(self) -> int:
        return self.n - self.n_missing

    @property
    def mean(self) -> float:
        return self.total / self.n_valid * self.scale if self.n_valid else math.nan

    @property
    def std(self) -> float:
        if self.n_valid < 2:
            return math.nan
        # No `**` on Python floats: it raises OverflowError where a product gives inf.
        var = (self.total_sq - self.total * self.total / self.n_valid) / (self.n_valid - 1)
        return math.sqrt(max(var, 0.0)) * self.scale if math.isfinite(var) else math.inf


@dataclass
class NumericProfile:
    lo: float
    hi: float
    bins: int
    counts: NumericCounts
    psi_cuts: list[int]  # fine-bin indices (into counts, 0 = underflow) where PSI bins start

    @property
    def width(self) -> float:
        return _span(self.lo, self.hi) / self.bins

    @property
    def is_constant(self) -> bool:
        """Every reference value in one fine bin: the grid is then the constant +- 0.5, since any two
        distinct values would sit at the two ends of a min..max grid. (The standard deviation from
        running sums is not exactly 0 for a constant, so it cannot tell.)"""
        return self.counts.n_valid > 0 and int(np.count_nonzero(self.counts.counts)) == 1

    def to_json(self) -> dict:
        c = self.counts
        out = {"lo": self.lo, "hi": self.hi, "bins": self.bins, "psi_cuts": self.psi_cuts,
               "n": c.n, "n_missing": c.n_missing, "total": c.total, "total_sq": c.total_sq,
               "counts": c.counts.tolist(), "under_sum": c.under_sum, "over_sum": c.over_sum}
        if c.scale != 1.0:  # profiles of ordinary data keep their old form
            out["scale"] = c.scale
        return out

    @classmethod
    def from_json(cls, d: dict) -> NumericProfile:
        counts = NumericCounts(d["n"], d["n_missing"], d["total"], d["total_sq"],
                               np.asarray(d["counts"], dtype=np.int64), d["under_sum"], d["over_sum"],
                               float(d.get("scale", 1.0)))
        return cls(d["lo"], d["hi"], d["bins"], counts, d["psi_cuts"])


@dataclass
class CategoricalProfile:
    counts: dict[str, int]  # category -> count, MISSING for missing values
    normalized: bool = False  # counted through `category_sql` (False: a version 1 profile, raw text)
    booleans: tuple[str, str] | None = None  # boolean-like: the (true, false) spelling both sides use

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        out: dict = {"counts": self.counts}
        if self.normalized:
            out["normalized"] = True
            out["booleans"] = list(self.booleans) if self.booleans else None
        return out

    @classmethod
    def from_json(cls, d: dict) -> CategoricalProfile:
        booleans = d.get("booleans")
        return cls({k: int(v) for k, v in d["counts"].items()}, bool(d.get("normalized", False)),
                   tuple(booleans) if booleans else None)


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
    # p_value after Benjamini-Hochberg across the model-day's features (None: not a p-value test,
    # or not controlled yet); `drifted` of a p-value test is decided on it.
    p_value_adjusted: float | None = None
    # Missing share against the reference's: Fisher's exact test and a change of MISSING_MIN_CHANGE.
    reference_missing_share: float = 0.0
    missing_p_value: float | None = None
    missing_drift: bool = False
    # Categories the reference never saw (categorical only), against the Good-Turing estimate of
    # the reference's unseen mass: binomial test and an excess of UNSEEN_MIN_EXCESS.
    expected_unseen_share: float = 0.0
    unseen_p_value: float | None = None
    unseen_drift: bool = False
    all_unseen: bool = False  # every current value is a category the reference never saw
    all_missing: bool = False  # every current value is missing
    unseen_summary: str = ""  # the commonest unseen categories with their shares
    message: str = ""  # what a person must hear about this feature, '' when nothing stands out


# ---------------------------------------------------------------------------------------------
# Counting: the fine grid and its counts, from values handed over in batches (the SQL that reads
# them, `profile_reference` and `compute_drift`, is in `monitor_assets.analysis.queries`).


class NumericCounter:
    """Running counts of one numeric feature on the fine grid [lo, hi] (`bins` bins), fed batch by
    batch (memory stays bounded by the batch, whatever the row count); numpy's bincount bins them,
    faster than any SQL aggregate for this. NaN and +-inf count as missing."""

    def __init__(self, lo: float, hi: float, bins: int):
        self.lo, self.hi, self.bins = lo, hi, bins
        self.n = 0
        self.n_valid = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.counts = np.zeros(bins + 2, dtype=np.int64)
        self.under_sum = 0.0
        self.over_sum = 0.0
        self.scale = 1.0

    def add(self, x: np.ndarray) -> None:
        """Count one batch of values (a float array, NaN for missing)."""
        self.n += len(x)
        finite = np.isfinite(x, out=_scratch(len(x))[2])
        if not finite.all():
            x = x[finite]  # NaN and +-inf count as missing (inf has no place on any grid)
        self.n_valid += len(x)
        if len(x):
            self._rescale(max(float(x.max()), -float(x.min())))
        xs = x / self.scale if self.scale != 1.0 else x
        self.total += float(xs.sum())
        self.total_sq += float(np.dot(xs, xs))
        at, idx, mask = _scratch(len(x))
        _bin_index(x, self.lo, self.hi, self.bins, out=at)
        at += 1  # -1 (underflow) .. bins (overflow) as 0 .. bins + 1
        np.copyto(idx, at, casting="unsafe")
        counts = np.bincount(idx, minlength=self.bins + 2)
        self.counts += counts
        if counts[0]:
            self.under_sum += float(xs[np.equal(at, 0, out=mask)].sum())
        if counts[-1]:
            self.over_sum += float(xs[np.equal(at, self.bins + 1, out=mask)].sum())

    def _rescale(self, largest: float) -> None:
        """Raise the scale to a power of 2 above `largest` when it passes SCALE_ABOVE, rescaling the sums
        kept so far (exact: powers of 2)."""
        if largest <= SCALE_ABOVE or largest <= self.scale:
            return
        scale = math.ldexp(1.0, math.frexp(largest)[1] - 1)  # |x / scale| < 2; 2**1024 would overflow
        factor = self.scale / scale
        self.total *= factor
        self.total_sq *= factor * factor
        self.under_sum *= factor
        self.over_sum *= factor
        self.scale = scale

    def result(self) -> NumericCounts:
        return NumericCounts(self.n, self.n - self.n_valid, self.total, self.total_sq, self.counts,
                             self.under_sum, self.over_sum, self.scale)


def _span(lo: float, hi: float) -> float:
    """hi - lo, finite even when the difference of two huge floats is not (halves first)."""
    span = hi - lo
    return span if math.isfinite(span) else min(2.0 * (hi / 2 - lo / 2), FLOAT_MAX)


# Work arrays reused batch after batch (one set per thread): allocating fresh ones for every
# batch and column made counting 4x slower (page faults on each new block).
_SCRATCH = threading.local()
SCRATCH_MAX = 1 << 20  # rows; a larger batch gets arrays of its own, not kept


def _scratch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float, index and mask work arrays of length n."""
    if n > SCRATCH_MAX:
        return np.empty(n), np.empty(n, dtype=np.intp), np.empty(n, dtype=bool)
    held = getattr(_SCRATCH, "arrays", None)
    if held is None or len(held[0]) < n:
        size = min(max(n, 1 << 16), SCRATCH_MAX)
        held = _SCRATCH.arrays = (np.empty(size), np.empty(size, dtype=np.intp), np.empty(size, dtype=bool))
    return held[0][:n], held[1][:n], held[2][:n]


def _bin_index(x: np.ndarray, lo: float, hi: float, bins: int, out: np.ndarray) -> np.ndarray:
    """Fine-bin index of each value (as floats, written to `out`, a float array of x's length), -1 for
    underflow and `bins` for overflow; no NaN for huge values."""
    span = hi - lo
    with np.errstate(over="ignore"):  # a huge value's index overflows to inf: clipped to overflow below
        if math.isfinite(span):
            np.subtract(x, lo, out=out)
            out *= bins / span
        else:  # a grid wider than the largest float: work in halves
            np.divide(x, 2, out=out)
            out -= lo / 2
            out *= bins / (hi / 2 - lo / 2)
    np.floor(out, out=out)
    return np.clip(out, -1, bins, out=out)


def grid_bounds(quantiles: list[float] | None, lo_all: float | None, hi_all: float | None,
                bins: int = FINE_BINS) -> tuple[float, float, int]:
    """A numeric feature's fine grid (lo, hi, bins) from the reference's 0.1% and 99.9% quantiles (None:
    no values), falling back to its min..max under heavy ties and to the constant +- 0.5."""
    lo, hi = (quantiles or [None, None])
    if lo is None:  # no values at all
        lo, hi = 0.0, 1.0
    if not hi > lo:  # heavy ties at the quantiles: use the sample's min..max
        lo, hi = lo_all, hi_all
    if not hi > lo:  # a constant feature
        lo, hi = lo - 0.5, lo + 0.5
    # The grid is [lo, hi] with hi itself inside (x >= the grid's end is overflow).
    end = float(hi) + _span(float(lo), float(hi)) * 1e-9
    return float(lo), end if math.isfinite(end) else FLOAT_MAX, bins


def build_profiles(features: list[FeatureSpec], bounds: dict[str, tuple[float, float, int]],
                   numeric: dict[str, NumericCounts], categories: dict[str, dict[str, int]],
                   booleans: dict[str, tuple[str, str] | None]) -> dict[str, Profile]:
    """The reference's profiles from its counts: numeric counts on their grids (`bounds`) with PSI bins
    at the reference's deciles; categories normalised (`category_sql`) with their boolean spelling."""
    profiles: dict[str, Profile] = {}
    for f in features:
        if f.kind == "numeric":
            lo, hi, b = bounds[f.name]
            counts = numeric[f.name]
            profiles[f.name] = NumericProfile(lo, hi, b, counts, _quantile_cuts(counts.counts, PSI_BINS))
        else:
            profiles[f.name] = CategoricalProfile(categories[f.name], normalized=True, booleans=booleans[f.name])
    return profiles


def counting_plan(specs: list[FeatureSpec], profiles: dict[str, Profile]
                  ) -> tuple[dict[str, tuple[float, float, int]], list[str], dict[str, tuple[str, str] | None]]:
    """What to count in the current rows to compare them with `profiles`: each numeric feature's grid
    {name: (lo, hi, bins)}, the categorical features, and those to normalise {name: booleans} as their
    profile was (a version 1 profile counted raw text)."""
    numeric = {s.name: (profiles[s.name].lo, profiles[s.name].hi, profiles[s.name].bins)
               for s in specs if isinstance(profiles[s.name], NumericProfile)}
    categorical = [s.name for s in specs if isinstance(profiles[s.name], CategoricalProfile)]
    normalize = {c: profiles[c].booleans for c in categorical if profiles[c].normalized}
    return numeric, categorical, normalize


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
    table = np.vstack([ref, cur]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    # scipy's `chi2_contingency` (Pearson, Yates' correction at one degree of freedom) step by step: the same
    # values, without its ~1 ms of checks a call (segment drift makes thousands of these calls).
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    dof = table.shape[1] - 1
    if dof == 1:
        diff = expected - table
        table = table + np.minimum(0.5, np.abs(diff)) * np.sign(diff)
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(special.chdtrc(dof, statistic))


def pool_sparse(ref: np.ndarray, cur: np.ndarray, min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, np.ndarray]:
    """The categories expected fewer than `min_expected` times in the current rows (reference share
    times current size; unseen ones expect 0) pooled into one last column. Keeps the chi-square
    test valid: its approximation fails on near-empty cells. A pooled column still expected fewer
    than `min_expected` times joins the smallest of the others."""
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return ref, cur
    expected = ref / n_ref * n_cur
    sparse = expected < min_expected
    if sparse.sum() <= 1 and not (sparse & (ref == 0)).any():
        return ref, cur
    ref_p, cur_p = ref[~sparse], cur[~sparse]
    pooled_ref, pooled_cur = ref[sparse].sum(), cur[sparse].sum()
    if pooled_ref / n_ref * n_cur < min_expected and len(ref_p) >= 2:  # still sparse: into the smallest
        ref_p, cur_p = ref_p.copy(), cur_p.copy()
        smallest = int(np.argmin(ref_p))
        ref_p[smallest] += pooled_ref
        cur_p[smallest] += pooled_cur
        return ref_p, cur_p
    return np.append(ref_p, pooled_ref), np.append(cur_p, pooled_cur)


def _n_eff(n_reference: int, n_current: int) -> float:
    return n_reference * n_current / (n_reference + n_current)


@lru_cache(maxsize=256)
def _chi2_noise_quantile(df: int) -> float:
    """chi2(df)'s 1 - NOISE_ALPHA quantile: cached, as a segmented model-day asks for the same few thousands of times."""
    return float(stats.chi2.isf(NOISE_ALPHA, df))


def noise_floor(method: str, n_reference: int, n_current: int, categories: int = 2,
                scale: float | None = None) -> float:
    """A distance that sampling noise alone reaches with probability about `NOISE_ALPHA` for these
    sample sizes; 0 for p-value tests.

    Jensen-Shannon (base 2) and PSI on k categories: about chi2(k - 1) / (8 ln 2 n_eff) squared
    distance, and chi2(k - 1) / n_eff, at chi2's 1 - NOISE_ALPHA quantile. Wasserstein/std:
    sqrt(n_eff) W1 / std tends to the integral of |B(F(x))| / std for a Brownian bridge B, whose
    scale is `scale` = integral of sqrt(F (1 - F)) / std (1.61 for a normal; `wasserstein_scale`
    computes it from a profile); the floor is `WASSERSTEIN_NOISE_SCALES` such scales (4 / sqrt(n_eff)
    for a normal: 99.9% of stable normal days stay under 2.9)."""
    if n_reference <= 0 or n_current <= 0:
        return 0.0
    n_eff = _n_eff(n_reference, n_current)
    if method == "wasserstein":
        return WASSERSTEIN_NOISE_SCALES * (scale or NORMAL_WASSERSTEIN_SCALE) / math.sqrt(n_eff)
    chi = _chi2_noise_quantile(max(categories - 1, 1))
    if method == "jensenshannon":
        return math.sqrt(chi / (8 * math.log(2) * n_eff))
    if method == "psi":
        return chi / n_eff
    return 0.0


def wasserstein_scale(profile: NumericProfile) -> float | None:
    """Integral of sqrt(F (1 - F)) dx over the reference's CDF, divided by its std (see `noise_floor`);
    None when undefined (no spread)."""
    c = profile.counts
    std = c.std
    if not c.n_valid or not std or not std > 0 or profile.is_constant:
        return None
    cdf = np.cumsum(c.counts)[:-1] / c.n_valid  # at the right edge of the underflow and each inner bin
    spread = np.sqrt(cdf * (1 - cdf))
    inner = float(spread[1:].sum() * profile.width)
    under = spread[0] * max(profile.lo - (c.under_sum / c.counts[0] * c.scale if c.counts[0] else profile.lo), 0.0)
    over_cdf = 1 - c.counts[-1] / c.n_valid
    over = math.sqrt(over_cdf * (1 - over_cdf)) * max((c.over_sum / c.counts[-1] * c.scale if c.counts[-1]
                                                        else profile.hi) - profile.hi, 0.0)
    return (inner + float(under) + over) / std


def _threshold(spec: FeatureSpec, method: str, n_ref: int, n_cur: int, categories: int = 2,
               scale: float | None = None) -> float:
    """The user's threshold as given (but never above the method's maximum; not for the constant
    fallback, which replaced the method it was meant for); else the default, raised to the noise
    floor and capped at the maximum."""
    if spec.threshold is not None and method != "constant":
        return min(spec.threshold, METHOD_MAX.get(method, math.inf))
    threshold = max(DEFAULT_THRESHOLDS[method], noise_floor(method, n_ref, n_cur, categories, scale))
    return min(threshold, METHOD_MAX.get(method, math.inf))


def choose_method(kind: str, n_current: int, method: str = "auto") -> str:
    if method != "auto":
        return method
    if kind == "numeric":
        return "ks" if n_current <= SMALL_SAMPLE else "wasserstein"
    return "chisquare" if n_current <= SMALL_SAMPLE else "jensenshannon"


def _flagged(method: str, statistic: float, p_value: float | None, threshold: float) -> bool:
    """A p-value test flags below its threshold (a constant reference also needs
    `CONSTANT_MIN_SHARE` of values to differ); a distance flags at or above it."""
    if method in P_VALUE_METHODS:
        if p_value is None or math.isnan(p_value) or not p_value < threshold:
            return False
        return method != "constant" or statistic >= CONSTANT_MIN_SHARE
    return bool(not math.isnan(statistic) and statistic >= threshold * (1 - 1e-12))


def missing_p_value(n_reference: int, missing_reference: int, n_current: int, missing_current: int) -> float:
    """Fisher's exact two-sided p-value that the missing share is the same in both sets."""
    if n_reference <= 0 or n_current <= 0:
        return 1.0
    table = [[missing_current, n_current - missing_current], [missing_reference, n_reference - missing_reference]]
    return float(stats.fisher_exact(table).pvalue)


def _missing_flag(share: float, reference_share: float, p_value: float | None, alpha: float = P_VALUE_ALPHA) -> bool:
    return p_value is not None and p_value < alpha and abs(share - reference_share) >= MISSING_MIN_CHANGE


def _unseen_flag(share: float, expected: float, p_value: float | None, alpha: float = P_VALUE_ALPHA) -> bool:
    return p_value is not None and p_value < alpha and share - expected >= UNSEEN_MIN_EXCESS


def _psi_vectors(profile: NumericProfile, current: NumericCounts) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts on the PSI bins, with missing values as one more bin."""
    cuts = profile.psi_cuts
    ref = np.add.reduceat(profile.counts.counts, cuts)
    cur = np.add.reduceat(current.counts, cuts)
    return np.append(ref, profile.counts.n_missing), np.append(cur, current.n_missing)


def numeric_drift(spec: FeatureSpec, profile: NumericProfile, current: NumericCounts) -> DriftResult:
    constant = profile.is_constant
    method = choose_method("numeric", current.n_valid, spec.method)
    if constant and method == "wasserstein" or constant and spec.method == "auto":
        method = "constant"  # Wasserstein / std is undefined; KS, PSI and JS still work if asked for
    scale = wasserstein_scale(profile)
    threshold = _threshold(spec, method, profile.counts.n_valid, current.n_valid, len(profile.psi_cuts) + 1, scale)
    ref_psi, cur_psi = _psi_vectors(profile, current)
    ref_std = profile.counts.std
    # W1 in units of `unit` (a power of 2: 1 for ordinary data), so huge values give a huge, finite figure.
    positions, ref_counts, cur_counts, unit = _positions(profile, current)
    w1_units = wasserstein_binned(positions, ref_counts, cur_counts)
    values = {
        "psi": psi(ref_psi, cur_psi),
        "jensenshannon": js_distance(ref_psi, cur_psi),
        "wasserstein": w1_units * (unit / ref_std) if ref_std and 0 < ref_std < math.inf and not constant
        else math.nan,
        "wasserstein_absolute": w1_units * unit,
    }
    d, p = ks_binned(profile.counts.counts, current.counts)
    values["ks"] = d
    p_value = p if method == "ks" else None
    if constant:
        # Values outside the constant's fine bin differ from it; the reference's own rate of such
        # values is below 1 / (n + 1) (rule of succession), the binomial test asks for more.
        k_bin = int(np.flatnonzero(profile.counts.counts)[0])
        differ = int(current.n_valid - current.counts[k_bin])
        share = differ / current.n_valid if current.n_valid else math.nan
        p_const = float(stats.binom.sf(differ - 1, current.n_valid, 1 / (profile.counts.n_valid + 1))) \
            if current.n_valid else math.nan
        values.update(constant=share, constant_p_value=p_const,
                      mean_absolute_change=abs(current.mean - profile.counts.mean) if current.n_valid else math.nan)
        if method == "constant":
            p_value = p_const
    statistic = values[method]
    ref_missing = profile.counts.n_missing / profile.counts.n if profile.counts.n else 0.0
    cur_missing = current.n_missing / current.n if current.n else 0.0
    p_missing = missing_p_value(profile.counts.n, profile.counts.n_missing, current.n, current.n_missing)
    result = DriftResult(
        spec.name, "numeric", method, statistic, p_value, threshold, _flagged(method, statistic, p_value, threshold),
        current.n, profile.counts.n,
        current_mean=current.mean, reference_mean=profile.counts.mean,
        missing_share=cur_missing,
        current_summary=_numeric_summary(current), reference_summary=_numeric_summary(profile.counts),
        all_statistics={**values, "ks_p_value": p},
        reference_missing_share=ref_missing, missing_p_value=p_missing,
        missing_drift=_missing_flag(cur_missing, ref_missing, p_missing),
        all_missing=current.n > 0 and current.n_valid == 0,
    )
    result.message = _message(result)
    return result


def _positions(profile: NumericProfile, current: NumericCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mass positions and the two count vectors on them, in units of the returned power of 2 (1 for
    ordinary data; the larger of the two sums' scales for huge data, so that no difference overflows):
    bin centres, and each side's under- and overflow at that side's own mean (pooled, one far outlier
    would be averaged with the other side's tail and its distance shrunk by their count)."""
    ref = profile.counts
    unit = max(ref.scale, current.scale)
    r, c = ref.scale / unit, current.scale / unit
    lo, hi = profile.lo / unit, profile.hi / unit
    inner = lo + (np.arange(profile.bins) + 0.5) * (profile.width / unit)

    def tail(total: float, n: int, edge: float, low: bool) -> float:
        mean = total / n if n else edge
        return min(mean, edge) if low else max(mean, edge)

    under = sorted([(tail(ref.under_sum * r, ref.counts[0], lo, True), ref.counts[0], 0),
                    (tail(current.under_sum * c, current.counts[0], lo, True), 0, current.counts[0])])
    over = sorted([(tail(ref.over_sum * r, ref.counts[-1], hi, False), ref.counts[-1], 0),
                   (tail(current.over_sum * c, current.counts[-1], hi, False), 0, current.counts[-1])])
    positions = np.concatenate([[u[0] for u in under], inner, [o[0] for o in over]])
    ref_counts = np.concatenate([[u[1] for u in under], ref.counts[1:-1], [o[1] for o in over]])
    cur_counts = np.concatenate([[u[2] for u in under], current.counts[1:-1], [o[2] for o in over]])
    return positions, ref_counts, cur_counts, unit


def expected_unseen_share(counts: dict[str, int]) -> float:
    """Good-Turing estimate of the share of future values in categories the reference never saw
    (categories seen once, plus one, over the rows plus one: never 0, so a test stays defined)."""
    n = sum(counts.values())
    singletons = sum(1 for c, v in counts.items() if v == 1 and c != MISSING)
    return (singletons + 1) / (n + 1)


def categorical_drift(spec: FeatureSpec, profile: CategoricalProfile, current: dict[str, int]) -> DriftResult:
    n_cur = sum(current.values())
    n_valid = n_cur - current.get(MISSING, 0)
    method = choose_method("categorical", n_valid, spec.method)
    categories = sorted(set(profile.counts) | set(current))
    threshold = _threshold(spec, method, profile.n, n_cur, len(categories))
    ref = np.array([profile.counts.get(c, 0) for c in categories], dtype=float)
    cur = np.array([current.get(c, 0) for c in categories], dtype=float)
    chi, p = chisquare_counts(*pool_sparse(ref, cur))
    values = {"psi": psi(ref, cur), "jensenshannon": js_distance(ref, cur), "chisquare": chi}
    statistic = values[method]
    p_value = p if method == "chisquare" else None
    unseen = {c: v for c, v in current.items() if c not in profile.counts and c != MISSING}
    n_unseen = sum(unseen.values())
    all_unseen = n_valid > 0 and n_unseen == n_valid
    expected = expected_unseen_share(profile.counts)
    unseen_share = n_unseen / n_cur if n_cur else 0.0
    p_unseen = float(stats.binom.sf(n_unseen - 1, n_cur, expected)) if n_cur else None
    ref_missing = profile.counts.get(MISSING, 0) / profile.n if profile.n else 0.0
    cur_missing = current.get(MISSING, 0) / n_cur if n_cur else 0.0
    p_missing = missing_p_value(profile.n, profile.counts.get(MISSING, 0), n_cur, current.get(MISSING, 0))
    result = DriftResult(
        spec.name, "categorical", method, statistic, p_value, threshold,
        _flagged(method, statistic, p_value, threshold) or all_unseen, n_cur, profile.n,
        missing_share=cur_missing, unseen_share=unseen_share,
        current_summary=_top_categories(current), reference_summary=_top_categories(profile.counts),
        all_statistics={**values, "chisquare_p_value": p},
        reference_missing_share=ref_missing, missing_p_value=p_missing,
        missing_drift=_missing_flag(cur_missing, ref_missing, p_missing),
        expected_unseen_share=expected, unseen_p_value=p_unseen,
        unseen_drift=_unseen_flag(unseen_share, expected, p_unseen) or all_unseen,
        all_unseen=all_unseen, all_missing=n_cur > 0 and n_valid == 0,
        unseen_summary=_top_categories(unseen, n=n_cur) if unseen else "",
    )
    result.message = _message(result)
    return result


def feature_drift(spec: FeatureSpec, profile: Profile, current) -> DriftResult:
    if isinstance(profile, NumericProfile):
        return numeric_drift(spec, profile, current)
    return categorical_drift(spec, profile, current)


def _message(r: DriftResult) -> str:
    """The loud part of a result: all values unseen or missing, a missing-share or unseen-share
    change, a constant reference that moved. '' when none applies."""
    parts = []
    if r.all_missing:
        parts.append(f"all {r.n_current} values are missing (reference: {r.reference_missing_share:.1%} missing)")
    elif r.missing_drift:
        parts.append(f"missing share {r.missing_share:.1%} against {r.reference_missing_share:.1%} in the reference")
    if r.all_unseen:
        parts.append(f"all {r.n_current - round(r.missing_share * r.n_current)} values are categories the reference "
                     f"never saw ({r.unseen_summary}; reference: {r.reference_summary})")
    elif r.unseen_drift:
        parts.append(f"{r.unseen_share:.1%} of values are categories the reference never saw ({r.unseen_summary}; "
                     f"about {r.expected_unseen_share:.1%} expected)")
    if r.method == "constant" and r.drifted:
        parts.append(f"the reference is constant at {r.reference_mean:.6g}; {r.statistic:.1%} of values differ "
                     f"(mean {r.current_mean:.6g})")
    return "; ".join(parts)


def control_false_alarms(results: list[DriftResult], alpha: float = P_VALUE_ALPHA) -> list[DriftResult]:
    """Benjamini-Hochberg across one model-day's results, separately for the distribution tests
    (each against its own threshold), the missing-share tests and the unseen-share tests (against
    `alpha`). Sets `p_value_adjusted` and re-decides `drifted`, `missing_drift`, `unseen_drift` and
    `message` in place from the raw p-values (so applying it twice changes nothing); distances keep
    their noise-floored decision. Returns `results`."""
    tests = [r for r in results if r.method in P_VALUE_METHODS and r.p_value is not None and not math.isnan(r.p_value)]
    for r, q in zip(tests, _bh([r.p_value for r in tests]), strict=True):
        r.p_value_adjusted = q
        r.drifted = _flagged(r.method, r.statistic, q, r.threshold) or r.all_unseen
    missing = [r for r in results if r.missing_p_value is not None]
    for r, q in zip(missing, _bh([r.missing_p_value for r in missing]), strict=True):
        r.missing_drift = _missing_flag(r.missing_share, r.reference_missing_share, q, alpha)
    unseen = [r for r in results if r.unseen_p_value is not None]
    for r, q in zip(unseen, _bh([r.unseen_p_value for r in unseen]), strict=True):
        r.unseen_drift = _unseen_flag(r.unseen_share, r.expected_unseen_share, q, alpha) or r.all_unseen
    for r in results:
        r.message = _message(r)
    return results


def _bh(p_values: list[float]) -> list[float]:
    if not p_values:
        return []
    return [float(q) for q in benjamini_hochberg(np.clip(p_values, 0.0, 1.0))]


def _numeric_summary(c: NumericCounts) -> str:
    if not c.n_valid:
        return "no values"
    return f"mean {c.mean:.4g}, std {c.std:.4g}"


def _top_categories(counts: dict[str, int], k: int = 3, n: int | None = None) -> str:
    n = n or sum(counts.values())
    if not n:
        return "no values"
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{'(missing)' if c == MISSING else c} {v / n:.0%}" for c, v in top)


def drift_from_counts(specs: list[FeatureSpec], profiles: dict[str, Profile], counted: dict[str, NumericCounts | dict],
                      control_across_features: bool = True) -> list[DriftResult]:
    """Compare each feature's current counts (`counting_plan` says what to count) with its reference profile.

    Give it all of one model-day's features: with `control_across_features` (default) the p-value tests
    are corrected together (`control_false_alarms`)."""
    results = [feature_drift(s, profiles[s.name], counted[s.name]) for s in specs]
    return control_false_alarms(results) if control_across_features else results


# ---------------------------------------------------------------------------------------------
# Strong drift and the features that matter most (for the alerts that need no tuning).

STRONG_DISTANCE_FACTOR = 2.0  # a distance is strong drift at twice its (noise-floored) threshold
STRONG_P_FACTOR = 0.01  # a p-value test is strong drift at 1/100 of its threshold (1e-4 at the default 0.01)
KEY_MIN_ASSOCIATION = 0.1  # a measured key feature is associated with the score at least this much


def strong_drift(method: str, statistic: float | None, p_value_adjusted: float | None, p_value: float | None,
                 threshold: float, drifted: bool) -> bool:
    """Drift well beyond the threshold: a distance at `STRONG_DISTANCE_FACTOR` times it, a p-value test
    (Benjamini-Hochberg adjusted where available) at `STRONG_P_FACTOR` times it."""
    if not drifted:
        return False
    if method in P_VALUE_METHODS:
        p = p_value_adjusted if p_value_adjusted is not None and not math.isnan(p_value_adjusted) else p_value
        return p is not None and not math.isnan(p) and p <= threshold * STRONG_P_FACTOR
    return statistic is not None and not math.isnan(statistic) and statistic >= threshold * STRONG_DISTANCE_FACTOR


def key_features(declared: tuple[str, ...] | list[str], importance: dict[str, float], top_k: int) -> list[str]:
    """The features whose strong drift alerts on its own: those declared (config `key_features`), else the
    `top_k` most associated with the score on the reference (at least `KEY_MIN_ASSOCIATION`)."""
    if declared:
        return list(declared)
    ranked = sorted(((v, k) for k, v in importance.items() if v is not None and not math.isnan(v)
                     and v >= KEY_MIN_ASSOCIATION), reverse=True)
    return [k for _, k in ranked[:top_k]]
