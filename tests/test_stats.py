import numpy as np

from bench.stats import bootstrap_ratio_ci, mann_whitney_p, percentile, summarize, trapezoid


def test_summary_of_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert s.n == 4 and s.median == 2.5 and s.minimum == 1 and s.maximum == 4
    assert abs(s.iqr - 1.5) < 1e-9
    assert abs(s.cv - np.std([1, 2, 3, 4], ddof=1) / 2.5) < 1e-9


def test_empty_and_single():
    assert summarize([]).median is None
    one = summarize([5.0])
    assert one.median == 5.0 and one.cv is None and one.stdev is None


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([], 95) is None


def test_bootstrap_interval_contains_true_ratio():
    rng = np.random.default_rng(1)
    base = rng.normal(100, 2, 30)
    head = rng.normal(90, 2, 30)
    low, high = bootstrap_ratio_ci(base, head)
    assert low < 0.9 < high and high < 1.0


def test_mann_whitney_separates_shifted_samples():
    rng = np.random.default_rng(2)
    assert mann_whitney_p(rng.normal(0, 1, 20), rng.normal(3, 1, 20)) < 0.001
    assert mann_whitney_p([1, 1, 1], [1, 1, 1]) == 1.0


def test_trapezoid():
    assert trapezoid([0, 1, 2], [0, 2, 2]) == 3.0
    assert trapezoid([0], [5]) == 0.0
