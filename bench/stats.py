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


def _exact_signed_rank_cdf(n: int) -> np.ndarray:
    """P(W+ <= w) for w = 0..n(n+1)/2 under the null without ties: W+ is the sum of a random subset
    of the ranks 1..n, each in or out with probability 1/2."""
    total = n * (n + 1) // 2
    ways = np.zeros(total + 1)
    ways[0] = 1
    for rank in range(1, n + 1):
        shifted = np.zeros(total + 1)
        shifted[rank:] = ways[: total + 1 - rank]
        ways = ways + shifted
    return np.cumsum(ways) / ways.sum()


def wilcoxon_signed_rank_p(differences: Sequence[float]) -> float | None:
    """Two-sided p of Wilcoxon's signed-rank test that paired differences are centred on zero
    (zeros dropped, as Wilcoxon did): exact null distribution up to EXACT_MAX_N differences without
    ties among their sizes, else the normal approximation with tie and continuity corrections."""
    d = finite(differences)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return None if finite(differences).size == 0 else 1.0
    ranks, ties = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    if ties.max() == 1 and n <= EXACT_MAX_N:
        cdf = _exact_signed_rank_cdf(n)
        w = int(round(w_plus))
        low = cdf[w]
        high = 1 - (cdf[w - 1] if w >= 1 else 0.0)
        return float(min(1.0, 2 * min(low, high)))
    mean = n * (n + 1) / 4
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(ties ** 3 - ties)) / 48)
    if sigma == 0:
        return 1.0
    z = (abs(w_plus - mean) - 0.5) / sigma
    return float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def bootstrap_median_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the median of one sample (e.g. per-pair ratios)."""
    data = finite(values)
    if data.size == 0:
        return None
    medians = _bootstrap_medians(data, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(medians, tail)), float(np.percentile(medians, 100 - tail))


def _hierarchical_medians(runs: Sequence[Sequence[float]], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of two-level resamples: the runs with replacement, then each chosen run's values
    with replacement, pooled. Run-to-run variance enters the interval, not only the repetitions'."""
    arrays = [finite(run) for run in runs]
    arrays = [a for a in arrays if a.size]
    lengths = np.array([a.size for a in arrays])
    width = int(lengths.max())
    table = np.full((len(arrays), width), np.nan)
    for row, values in enumerate(arrays):
        table[row, : values.size] = values
    chosen = rng.integers(0, len(arrays), (resamples, len(arrays)))
    picks = (rng.random((resamples, len(arrays), width)) * lengths[chosen][:, :, None]).astype(int)
    values = table[chosen[:, :, None], picks]
    values[np.arange(width)[None, None, :] >= lengths[chosen][:, :, None]] = np.nan
    return np.nanmedian(values.reshape(resamples, -1), axis=1)


def hierarchical_ratio_ci(base_runs: Sequence[Sequence[float]], head_runs: Sequence[Sequence[float]], *,
                          confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of median(head) / median(base) from the two-level bootstrap of each side."""
    if not any(finite(r).size for r in base_runs) or not any(finite(r).size for r in head_runs):
        return None
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = _hierarchical_medians(head_runs, resamples, rng) / _hierarchical_medians(base_runs, resamples, rng)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


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
