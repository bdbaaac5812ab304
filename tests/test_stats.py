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


def test_integrate_window_interpolates_edges():
    from bench.stats import integrate_window

    assert integrate_window([0, 1, 2], [2, 2, 2], 0.25, 1.75) == 1.5 * 2
    assert abs(integrate_window([0, 2], [0, 4], 1, 2) - 3.0) < 1e-12  # v = 2t over [1, 2]
    assert integrate_window([0, 1], [1, 1], 0.5, 3) is None  # not covered


def test_mann_whitney_matches_scipy_exact_and_asymptotic():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(7)
    for trial in range(60):
        m, n = rng.integers(2, 15, 2)
        x, y = rng.normal(0, 1, m), rng.normal(rng.uniform(-1, 1), 1, n)
        expected = mannwhitneyu(x, y, alternative="two-sided", method="exact").pvalue
        assert abs(mann_whitney_p(x, y) - expected) < 1e-9, (m, n)
    for trial in range(30):  # ties and large samples: normal approximation with corrections
        x, y = rng.integers(0, 6, 30).astype(float), rng.integers(1, 7, 25).astype(float)
        expected = mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=True).pvalue
        assert abs(mann_whitney_p(x, y) - expected) < 1e-9


def test_bootstrap_medians_are_resample_medians():
    from bench.stats import _bootstrap_medians

    data = np.random.default_rng(3).normal(10, 2, 9)
    rng = np.random.default_rng(4)
    fast = _bootstrap_medians(data, 50, rng)
    rng = np.random.default_rng(4)
    indices = rng.integers(0, data.size, (50, data.size))
    slow = np.median(np.sort(data)[indices], axis=1)
    assert np.allclose(fast, slow)
