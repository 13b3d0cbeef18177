"""Drift of the recommended items, judged without labels: a ranker whose lists fill with the same few popular
items (a popularity collapse) shows it the day it happens, days before the clicks that would lower its NDCG land.

Two statistics per ranker-day, both computed by the ranking stage against the reference (`stats.ranking`):
`item_drift_js`, the Jensen-Shannon distance between the shares of impressions per item (top items and an other
bucket), and `popularity_concentration`, the share of impressions going to the top 1% of the reference's items.
Each is noisy at a day's size, and how noisy depends on the catalogue, so the thresholds are calibrated as
multivariate drift does (`stats.multivariate`): the reference, in its own order, is cut into chunks of as many
requests as the day has; each chunk's statistic is computed against the rest of the reference (the drift), or over
the whole reference's catalogue (the concentration); the threshold is the upper prediction bound
mean + t(m - 1, 1 - ALPHA) sd sqrt(1 + 1/m) over the m chunks. With fewer than MIN_CHUNKS whole chunks, the chunks
shrink to the reference's requests / MIN_CHUNKS: smaller chunks are noisier, so the threshold errs wide. Only a rise
alarms (a drop of concentration or drift is not a collapse).

No Dagster, no I/O: arrays in, thresholds out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from monitor_assets.stats import ranking as R

STATISTICS = ("item_drift_js", "popularity_concentration")
ALPHA = 0.00135  # one-sided false-alarm rate per statistic and day (the normal's mean + 3 sd), as multivariate drift
MIN_CHUNKS = 5  # fewer whole chunks than this: the chunks shrink so there are this many
MAX_CHUNKS = 30  # calibration cost is bounded: at most this many chunks, spread over the reference
MIN_REQUESTS = 20  # a reference chunk of fewer requests is too small to calibrate on


@dataclass(frozen=True)
class Threshold:
    """A statistic's threshold for a day of `chunk_requests` requests: the chunks' mean, sd and multiplier."""

    statistic: str
    mean: float
    sd: float
    multiplier: float
    chunk_requests: int
    values: tuple[float, ...]  # the chunks' statistics (for the record and the tests)

    @property
    def value(self) -> float:
        return self.mean + self.multiplier * self.sd


def prediction_multiplier(m: int, alpha: float = ALPHA) -> float:
    """t(m - 1, 1 - alpha) sqrt(1 + 1/m): the upper prediction bound of one more draw, from m draws."""
    return float(stats.t.isf(alpha, m - 1)) * math.sqrt(1 + 1 / m)


def chunk_statistics(request_index: np.ndarray, item: np.ndarray, size: int) -> dict[str, list[float]]:
    """Each statistic on contiguous chunks of `size` requests (at most MAX_CHUNKS, spread over the reference).
    `request_index`: each impression's request, 0.. in the reference's order; `item`: its item id."""
    n = int(request_index.max()) + 1 if len(request_index) else 0
    m = n // size
    codes, items = R.item_codes(item)  # the ids hashed once: each chunk and its rest count integer codes
    whole = R.ItemCounts.of_coded(codes, items)
    out: dict[str, list[float]] = {s: [] for s in STATISTICS}
    for i in np.unique(np.linspace(0, m - 1, min(m, MAX_CHUNKS)).round().astype(int)):
        inside = (request_index >= i * size) & (request_index < (i + 1) * size)
        chunk, rest = R.ItemCounts.of_coded(codes[inside], items), R.ItemCounts.of_coded(codes[~inside], items)
        out["item_drift_js"].append(R.item_distribution_drift(chunk, rest))
        # the day's concentration counts the top 1% of the whole reference's items: so does the chunk's
        out["popularity_concentration"].append(R.catalogue_metrics(chunk, whole)["concentration"])
    return out


def calibrate(request_index: np.ndarray, item: np.ndarray, n_requests: int) -> dict[str, Threshold]:
    """The thresholds for a day of `n_requests` requests, from the reference's impressions (see the module)."""
    n = int(request_index.max()) + 1 if len(request_index) else 0
    size = min(n_requests, n // MIN_CHUNKS)
    if size < MIN_REQUESTS:
        raise ValueError(f"a reference of {n:,} requests is too small to calibrate item drift "
                         f"(at least {MIN_REQUESTS * MIN_CHUNKS})")
    out = {}
    for statistic, values in chunk_statistics(request_index, item, size).items():
        v = np.asarray(values, float)
        out[statistic] = Threshold(statistic, float(v.mean()), float(v.std(ddof=1)), prediction_multiplier(len(v)),
                                   size, tuple(float(x) for x in v))
    return out
