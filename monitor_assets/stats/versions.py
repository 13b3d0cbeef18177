"""Champion vs challenger: two-sample tests on the same days, and the canary gates.

Rates (accuracy, error rate) are compared with the pooled two-proportion z-test (as statsmodels'
`proportions_ztest`), losses with Mann-Whitney U (robust to the few huge losses a confidently wrong
classifier makes; the two versions serve the same days, so ranks compare like with like). The gates
recommend what to do with the challenger:

* rollback: a gate fails with evidence: the challenger's latency p95 or error rate is over the SLA,
  its error rate or its loss is significantly worse than the champion's (one-sided p below `alpha`),
  or its latency p95 is more than `latency_tolerance` above the champion's;
* promote: every gate passes and the challenger has at least `min_labelled` labelled rows;
* hold: no gate fails, but there is not enough data yet.

A ranker's versions are compared on their requests (whose interactions are all read): the loss 1 - NDCG@k
per request as a model's loss, and the main metric's per-request values (`MetricSample`) with Welch's
one-sided t-test on their means (the means are what the ranking stage reports); a ranker's log has no status
or latency, so those gates are left out (`served=False`).

No Dagster, no I/O.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass(frozen=True)
class ProportionTest:
    z: float
    p_two_sided: float
    p_greater: float  # one-sided: the second proportion is larger than the first


def two_proportion_ztest(count1: int, n1: int, count2: int, n2: int) -> ProportionTest:
    """Pooled two-proportion z-test of p2 vs p1: z = (p2 - p1) / sqrt(p (1 - p) (1/n1 + 1/n2)) with
    p = (count1 + count2) / (n1 + n2). Equal proportions with no spread (both 0% or both 100%) give z = 0."""
    if n1 <= 0 or n2 <= 0:
        return ProportionTest(math.nan, math.nan, math.nan)
    p1, p2 = count1 / n1, count2 / n2
    pooled = (count1 + count2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return ProportionTest(0.0, 1.0, 0.5 if p1 == p2 else (0.0 if p2 > p1 else 1.0))
    z = (p2 - p1) / se
    return ProportionTest(z, float(2 * stats.norm.sf(abs(z))), float(stats.norm.sf(z)))


@dataclass(frozen=True)
class VersionStats:
    """What the gates need about one version over the compared days."""

    version: str
    n: int  # predictions served or failed
    n_errors: int
    latency_p95_ms: float | None
    n_labelled: int
    n_correct: int | None  # classifiers: labelled rows predicted right; None for regressors
    losses: np.ndarray = field(default_factory=lambda: np.array([]))
    # Requests slower than the *champion's* p95 (for the challenger; None if not counted).
    n_over_champion_p95: int | None = None

    @property
    def error_rate(self) -> float:
        return self.n_errors / self.n if self.n else math.nan

    @property
    def accuracy(self) -> float | None:
        return None if self.n_correct is None or not self.n_labelled else self.n_correct / self.n_labelled

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.losses)) if len(self.losses) else math.nan


@dataclass(frozen=True)
class Gates:
    latency_p95_ms: float  # SLA
    error_rate: float  # SLA
    alpha: float = 0.05
    latency_tolerance: float = 0.10  # challenger p95 may be this much above the champion's
    min_labelled: int = 500  # labelled challenger rows before it can be promoted


def latency_p_value(challenger: VersionStats) -> float | None:
    """One-sided exact binomial test that more than 5% of the challenger's requests are slower than the
    champion's p95 (which 5% of the champion's own requests exceed)."""
    if challenger.n_over_champion_p95 is None or not challenger.n:
        return None
    k = min(challenger.n_over_champion_p95, challenger.n)
    return float(stats.binomtest(k, challenger.n, 0.05, alternative="greater").pvalue)


@dataclass(frozen=True)
class MetricSample:
    """Per-request values of one metric for both versions over the compared days (a ranker's main metric)."""

    name: str
    champion: np.ndarray
    challenger: np.ndarray
    higher_is_better: bool = True


def welch_worse(sample: MetricSample) -> float:
    """One-sided p-value of Welch's t-test that the challenger's mean is worse than the champion's (lower, or
    higher when lower is better); NaN with fewer than two values on a side or no spread at all."""
    a, b = np.asarray(sample.challenger, float), np.asarray(sample.champion, float)
    if len(a) < 2 or len(b) < 2 or (a.var() == 0 and b.var() == 0):
        return math.nan
    test = stats.ttest_ind(a, b, equal_var=False, alternative="less" if sample.higher_is_better else "greater")
    return float(test.pvalue)


COMPARISON_COLUMNS = ["metric", "champion_value", "challenger_value", "difference", "p_value", "gate", "reason"]


def compare_versions(champion: VersionStats, challenger: VersionStats, gates: Gates,
                     samples: tuple[MetricSample, ...] = (), served: bool = True) -> tuple[str, list[dict]]:
    """The verdict (promote / hold / rollback) and one row per compared metric: values, difference
    (challenger - champion), the one-sided p-value of "challenger is worse" and the gate's outcome.
    `samples`: further per-request metrics, gated like the loss (Welch); `served` False leaves out the latency
    and error-rate gates (a log without them)."""
    rows = []

    def add(metric, champ, chall, p, gate, reason):
        diff = None if champ is None or chall is None else chall - champ
        rows.append({"metric": metric, "champion_value": champ, "challenger_value": chall, "difference": diff,
                     "p_value": p, "gate": gate, "reason": reason})

    # Latency p95: over the SLA fails; above the champion's by more than the tolerance fails only when the
    # challenger is also significantly slower: more than 5% of its requests over the champion's p95
    # (exact binomial test). A canary's p95 from a few hundred requests is noisy.
    lc, lh = champion.latency_p95_ms, challenger.latency_p95_ms
    slower_p = latency_p_value(challenger)
    if not served:
        pass
    elif lh is None or (isinstance(lh, float) and math.isnan(lh)):
        add("latency_p95_ms", lc, None, None, WAIT, "no latency logged for the challenger")
    elif lh > gates.latency_p95_ms:
        add("latency_p95_ms", lc, lh, slower_p, FAIL, f"over the SLA of {gates.latency_p95_ms:g} ms")
    elif (lc is not None and not math.isnan(lc) and lh > lc * (1 + gates.latency_tolerance)
          and slower_p is not None and slower_p < gates.alpha):
        add("latency_p95_ms", lc, lh, slower_p, FAIL,
            f"more than {gates.latency_tolerance:.0%} above the champion's, and significantly slower")
    else:
        add("latency_p95_ms", lc, lh, slower_p, PASS, "within the SLA, not significantly slower than the champion")

    # Error rate: SLA, and not significantly above the champion's.
    err = two_proportion_ztest(champion.n_errors, champion.n, challenger.n_errors, challenger.n)
    ec, eh = champion.error_rate, challenger.error_rate
    if not served:
        pass
    elif not challenger.n:
        add("error_rate", ec, None, None, WAIT, "no challenger traffic")
    elif eh > gates.error_rate:
        add("error_rate", ec, eh, err.p_greater, FAIL, f"over the SLA of {gates.error_rate:.2%}")
    elif err.p_greater < gates.alpha:
        add("error_rate", ec, eh, err.p_greater, FAIL, "significantly above the champion's")
    else:
        add("error_rate", ec, eh, err.p_greater, PASS, "within the SLA, not worse than the champion's")

    # Loss: Mann-Whitney, one-sided "challenger's losses are larger".
    if len(challenger.losses) >= 2 and len(champion.losses) >= 2:
        p = float(stats.mannwhitneyu(challenger.losses, champion.losses, alternative="greater").pvalue)
        if p < gates.alpha:
            add("mean_loss", champion.mean_loss, challenger.mean_loss, p, FAIL, "significantly worse than the champion's")
        elif challenger.n_labelled < gates.min_labelled:
            add("mean_loss", champion.mean_loss, challenger.mean_loss, p, WAIT,
                f"{challenger.n_labelled} labelled rows, {gates.min_labelled} needed")
        else:
            add("mean_loss", champion.mean_loss, challenger.mean_loss, p, PASS, "not worse than the champion's")
    else:
        add("mean_loss", champion.mean_loss if len(champion.losses) else None, None, None, WAIT, "no labels yet")

    # Accuracy (classifiers): reported with its test; the loss gate decides.
    if champion.n_correct is not None and challenger.n_correct is not None and champion.n_labelled and challenger.n_labelled:
        acc = two_proportion_ztest(challenger.n_correct, challenger.n_labelled, champion.n_correct, champion.n_labelled)
        add("accuracy", champion.accuracy, challenger.accuracy, acc.p_greater, PASS if acc.p_greater >= gates.alpha
            else FAIL, "not significantly lower" if acc.p_greater >= gates.alpha else "significantly lower")

    for sample in samples:
        champ, chall = (float(np.mean(v)) if len(v) else None for v in (sample.champion, sample.challenger))
        p = welch_worse(sample)
        if not math.isnan(p) and p < gates.alpha:
            add(sample.name, champ, chall, p, FAIL, "significantly worse than the champion's (Welch)")
        elif len(sample.challenger) < gates.min_labelled:
            add(sample.name, champ, chall, None if math.isnan(p) else p, WAIT,
                f"{len(sample.challenger)} labelled requests, {gates.min_labelled} needed")
        else:
            add(sample.name, champ, chall, None if math.isnan(p) else p, PASS, "not worse than the champion's (Welch)")

    gates_seen = [r["gate"] for r in rows]
    verdict = ROLLBACK if FAIL in gates_seen else (HOLD if WAIT in gates_seen else PROMOTE)
    return verdict, rows


# -- champions ----------------------------------------------------------------------------------------

def champions(daily: pd.DataFrame) -> pd.DataFrame:
    """The champion of each model on each day with traffic: the version serving the most predictions
    (ties: the one seen first, then by name)."""
    if daily.empty:
        return pd.DataFrame(columns=["partition_date", "model_id", "model_version", "share"])
    first = daily.groupby(["model_id", "model_version"]).partition_date.min().rename("first_seen")
    d = daily.join(first, on=["model_id", "model_version"])
    d["share"] = d.volume / d.groupby(["partition_date", "model_id"]).volume.transform("sum")
    d = d.sort_values(["partition_date", "model_id", "volume", "first_seen", "model_version"],
                      ascending=[True, True, False, True, True])
    return d.groupby(["partition_date", "model_id"], as_index=False).first()[
        ["partition_date", "model_id", "model_version", "share"]]


def current_champions(days: pd.DataFrame) -> dict[str, tuple[str, dt.date]]:
    """Per model: its latest champion and the first day of that version's current, unbroken reign (a day
    another version was champion resets it; days without traffic do not)."""
    out: dict[str, tuple[str, dt.date]] = {}
    for r in days.sort_values("partition_date", kind="stable").itertuples(index=False):
        version, since = out.get(r.model_id, (None, None))
        out[r.model_id] = (r.model_version, since if version == r.model_version else pd.Timestamp(r.partition_date).date())
    return out
