"""Summary statistics over repetitions, and the two-sample tools `compare` uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def finite(values: Sequence[float | None]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


@dataclass(frozen=True)
class Summary:
    n: int
    median: float | None
    mean: float | None
    stdev: float | None
    minimum: float | None
    maximum: float | None
    p25: float | None
    p75: float | None
    cv: float | None  # stdev / mean, None below 2 values

    @property
    def iqr(self) -> float | None:
        return None if self.p25 is None else self.p75 - self.p25


def summarize(values: Sequence[float | None]) -> Summary:
    data = finite(values)
    if data.size == 0:
        return Summary(0, None, None, None, None, None, None, None, None)
    stdev = float(np.std(data, ddof=1)) if data.size > 1 else None
    mean = float(np.mean(data))
    return Summary(
        n=int(data.size), median=float(np.median(data)), mean=mean, stdev=stdev,
        minimum=float(data.min()), maximum=float(data.max()),
        p25=float(np.percentile(data, 25)), p75=float(np.percentile(data, 75)),
        cv=stdev / abs(mean) if stdev is not None and mean else None,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    data = finite(values)
    return float(np.percentile(data, q)) if data.size else None


def _bootstrap_medians(data: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of `resamples` resamples with replacement. Indices into the sorted data keep its
    order, so partitioning the small integer indices finds each median without sorting values."""
    ordered = np.sort(data)
    n = ordered.size
    indices = rng.integers(0, n, (resamples, n))
    middle = ((n - 1) // 2, n // 2)
    picked = np.partition(indices, middle, axis=1)
    return (ordered[picked[:, middle[0]]] + ordered[picked[:, middle[1]]]) / 2


def bootstrap_ratio_ci(base: Sequence[float], head: Sequence[float], *, confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of median(head) / median(base), resampling each side."""
    base_data, head_data = finite(base), finite(head)
    if base_data.size == 0 or head_data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    base_medians = _bootstrap_medians(base_data, resamples, rng)
    head_medians = _bootstrap_medians(head_data, resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = head_medians / base_medians
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


EXACT_MAX_N = 20


def _average_ranks(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks with ties averaged, and the tie group sizes."""
    _, inverse, counts = np.unique(data, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse], counts


def _exact_u_cdf(m: int, n: int) -> np.ndarray:
    """P(U <= u) for u = 0..m*n under the null without ties (Mann and Whitney's recurrence)."""
    # ways[j][u]: arrangements of i x's and j y's with U = u, built up over i.
    ways = [np.zeros(m * n + 1) for _ in range(n + 1)]
    for j in range(n + 1):
        ways[j][0] = 1
    for _ in range(m):
        new = [np.zeros(m * n + 1) for _ in range(n + 1)]
        new[0][0] = 1
        for j in range(1, n + 1):
            shifted = np.zeros(m * n + 1)
            shifted[j:] = ways[j][: m * n + 1 - j]  # the new x is largest: it beats all j y's
            new[j] = shifted + new[j - 1]
        ways = new
    counts = ways[n]
    return np.cumsum(counts) / counts.sum()


def mann_whitney_p(base: Sequence[float], head: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value: exact null distribution when there are no ties and both
    samples have at most EXACT_MAX_N values, else the normal approximation with tie and continuity
    corrections (the same choices as scipy.stats.mannwhitneyu, without importing scipy.stats,
    which costs more than a whole comparison)."""
    x, y = finite(base), finite(head)
    m, n = x.size, y.size
    if m == 0 or n == 0:
        return None
    data = np.concatenate([x, y])
    if np.ptp(data) == 0:
        return 1.0
    ranks, ties = _average_ranks(data)
    u = float(ranks[:m].sum() - m * (m + 1) / 2)
    if ties.max() == 1 and max(m, n) <= EXACT_MAX_N:
        cdf = _exact_u_cdf(m, n)
        low = cdf[int(round(u))]
        high = 1 - (cdf[int(round(u)) - 1] if u >= 1 else 0.0)
        return float(min(1.0, 2 * min(low, high)))
    total = m + n
    tie_term = float(np.sum(ties ** 3 - ties)) / (total * (total - 1))
    sigma = math.sqrt(m * n / 12 * ((total + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = (abs(u - m * n / 2) - 0.5) / sigma
    return float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def trapezoid(times: Sequence[float], values: Sequence[float]) -> float:
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if t.size < 2:
        return 0.0
    return float(np.sum((t[1:] - t[:-1]) * (v[1:] + v[:-1]) / 2))


def integrate_window(times: Sequence[float], values: Sequence[float], start: float, end: float) -> float | None:
    """Trapezoid integral of a sampled signal over [start, end], interpolating at the edges so a
    window between two samples still gets its share. None when the samples do not cover it."""
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if t.size < 2 or end <= start or start < t[0] - 1e-9 or end > t[-1] + 1e-9:
        return None
    inner = (t > start) & (t < end)
    grid = np.concatenate([[start], t[inner], [end]])
    return trapezoid(grid, np.interp(grid, t, v))
