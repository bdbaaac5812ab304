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


def bootstrap_ratio_ci(base: Sequence[float], head: Sequence[float], *, confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of median(head) / median(base), resampling each side."""
    base_data, head_data = finite(base), finite(head)
    if base_data.size == 0 or head_data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    base_medians = np.median(rng.choice(base_data, (resamples, base_data.size)), axis=1)
    head_medians = np.median(rng.choice(head_data, (resamples, head_data.size)), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = head_medians / base_medians
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def mann_whitney_p(base: Sequence[float], head: Sequence[float]) -> float | None:
    from scipy.stats import mannwhitneyu

    base_data, head_data = finite(base), finite(head)
    if base_data.size == 0 or head_data.size == 0:
        return None
    if np.ptp(np.concatenate([base_data, head_data])) == 0:
        return 1.0
    result = mannwhitneyu(base_data, head_data, alternative="two-sided")
    return float(result.pvalue) if math.isfinite(result.pvalue) else None


def trapezoid(times: Sequence[float], values: Sequence[float]) -> float:
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if t.size < 2:
        return 0.0
    return float(np.sum((t[1:] - t[:-1]) * (v[1:] + v[:-1]) / 2))
