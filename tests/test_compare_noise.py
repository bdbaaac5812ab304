"""Comparisons that do not cry wolf (issue 16): drift between runs is not a regression, run-to-run
noise gates single runs, several runs a side count their between-run variance, and interleaved
pairs are tested pair by pair. Synthetic run sets with known truth, through the real CLI."""

import math
import json
from pathlib import Path

import numpy as np
import pytest

from bench.compare import METRICS, compare_paired, compare_runs, run_to_run_band
from bench.stats import wilcoxon_signed_rank_p
from conftest import bench_cli
from synth import noisy, write_run

DECODE = next(m for m in METRICS if m.name == "decode_tps")


def test_wilcoxon_signed_rank_matches_scipy():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(3)
    for n in (6, 7, 10, 20):
        d = rng.normal(0.2, 1, n)
        assert wilcoxon_signed_rank_p(d) == pytest.approx(wilcoxon(d).pvalue, rel=1e-9)
    tied = np.round(rng.normal(0.3, 1, 30), 1)
    assert wilcoxon_signed_rank_p(tied) == pytest.approx(wilcoxon(tied, method="approx", correction=True).pvalue, rel=1e-9)
    assert wilcoxon_signed_rank_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)  # the smallest p of 6 pairs


def _drifting_runs(medians, n=6, cv=0.01, seed=0):
    return [noisy(m, n, cv, seed + i) for i, m in enumerate(medians)]


def test_drift_between_runs_is_not_regressed_when_runs_are_counted():
    rng = np.random.default_rng(7)
    false_alarms = 0
    for trial in range(100):
        # every run drifts as a whole by up to ±8%; repetitions inside a run are tight (1%)
        base = _drifting_runs(50 * (1 + rng.normal(0, 0.04, 3)), seed=trial * 10)
        head = _drifting_runs(50 * (1 + rng.normal(0, 0.04, 3)), seed=trial * 10 + 5)
        false_alarms += compare_runs(DECODE, base, head, threshold=0.05).verdict in ("regressed", "improved")
    assert false_alarms <= 5


def test_a_real_effect_across_several_runs_is_found():
    found = sum(compare_runs(DECODE, _drifting_runs([50, 50.5, 49.5, 50.2], seed=s),
                             _drifting_runs([40, 40.4, 39.6, 40.1], seed=s + 50), threshold=0.05).verdict == "regressed"
                for s in range(20))
    assert found == 20


def test_paired_ratios_cancel_drift_between_pairs():
    rng = np.random.default_rng(11)
    drift = 50 * (1 + rng.normal(0, 0.10, 8))  # the machine wanders ±10% from pair to pair
    base = [noisy(d, 5, 0.01, i) for i, d in enumerate(drift)]
    slower = [noisy(d * 0.9, 5, 0.01, 100 + i) for i, d in enumerate(drift)]
    same = [noisy(d, 5, 0.01, 200 + i) for i, d in enumerate(drift)]
    regressed = compare_paired(DECODE, base, slower, threshold=0.05)
    assert regressed.verdict == "regressed" and regressed.method == "paired" and regressed.p_value < 0.05
    assert regressed.change == pytest.approx(-0.1, abs=0.02)
    assert compare_paired(DECODE, base, same, threshold=0.05).verdict in ("unchanged", "inconclusive")
    few = compare_paired(DECODE, base[:4], slower[:4], threshold=0.05)
    assert few.verdict == "inconclusive" and "fewer than 6 pairs" in few.reason


def test_run_to_run_band_is_a_t_prediction_interval_with_n_minus_1_degrees_of_freedom():
    assert run_to_run_band([50, 51]) is None  # too few runs to know
    medians = [50, 51, 49, 50.5, 49.5]
    sd = float(np.std(np.log(medians), ddof=1))
    # t(0.975, 4) = 2.776, not 1.96: with 5 runs the spread itself is uncertain
    assert run_to_run_band(medians) == pytest.approx(math.exp(2.7764 * math.sqrt(2) * sd) - 1, rel=1e-3)
    three = [50, 51, 49]
    sd3 = float(np.std(np.log(three), ddof=1))
    assert run_to_run_band(three) == pytest.approx(math.exp(4.3027 * math.sqrt(2) * sd3) - 1, rel=1e-3)


def _setup(root: Path, medians, name: str, cv=0.01):
    for index, median in enumerate(medians):
        write_run(root, noisy(median, 8, cv, hash((name, index)) % 1000), name=f"{name}{index}")


def test_one_run_a_side_is_suspected_without_known_noise_and_the_gate_stays_open(tmp_path: Path):
    # the case: two plain runs of one build, the second on a drifted machine
    base = write_run(tmp_path / "base", noisy(50, 6, 0.01, 1), name="a")
    head = write_run(tmp_path / "head", noisy(45, 6, 0.01, 2), name="b")
    empty = tmp_path / "history"
    empty.mkdir()
    result = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--results", str(empty))
    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert "Suspected regression" in first and "Decode" in first and "1 vs 1 run" in first and "no run-to-run noise" in first
    strict = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--strict", "--results", str(empty),
                       "--format", "json")
    assert strict.returncode == 1
    decode = next(m for m in json.loads(strict.stdout)["comparisons"][0]["metrics"] if m["metric"] == "decode_tps")
    assert decode["verdict"] == "suspected" and decode["worse"] and "default run-to-run bound" in decode["reason"]


def test_one_run_a_side_is_gated_by_the_noise_of_earlier_runs(tmp_path: Path):
    base = write_run(tmp_path / "base", noisy(50, 8, 0.01, 1), name="a")
    head = write_run(tmp_path / "head", noisy(44, 8, 0.01, 2), name="b")
    _setup(tmp_path / "quiet", [50, 50.4, 49.7, 50.2, 49.9], "q")      # ±1% between runs
    loud = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--results", str(tmp_path / "quiet"))
    assert loud.returncode == 1 and "Regression" in loud.stdout.splitlines()[0], loud.stdout
    assert "run-to-run noise of 5 earlier runs" in loud.stdout.splitlines()[0]
    _setup(tmp_path / "noisy", [50, 44, 55, 47, 53, 42], "n")          # ±10% between runs
    calm = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--results", str(tmp_path / "noisy"),
                     "--format", "json")
    assert calm.returncode == 0, calm.stdout
    decode = next(m for m in json.loads(calm.stdout)["comparisons"][0]["metrics"] if m["metric"] == "decode_tps")
    assert decode["verdict"] == "suspected" and "within the run-to-run noise" in decode["reason"]


def test_an_ab_folder_compares_its_pairs(tmp_path: Path):
    ab = tmp_path / "ab"
    rng = np.random.default_rng(5)
    pairs = []
    for index in range(8):
        level = 50 * (1 + rng.normal(0, 0.1))
        base = write_run(ab / "base", noisy(level, 5, 0.01, index), name=f"b{index}")
        head = write_run(ab / "head", noisy(level * 0.88, 5, 0.01, 50 + index), name=f"h{index}")
        order = ["base", "head"] if index % 2 == 0 else ["head", "base"]
        pairs.append({"index": index, "order": order, "base": str(base.relative_to(ab)), "head": str(head.relative_to(ab))})
    (ab / "ab.json").write_text(json.dumps({"schema_version": 1, "status": "complete", "pairs": pairs}))
    result = bench_cli("compare", str(ab), "--fail-on-regression")
    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert "Regression" in first and "paired and interleaved: 8 ABBA pairs" in first
    assert "Wilcoxon signed-rank over 8 pairs" in bench_cli("compare", str(ab), "--format", "json").stdout
    # six pairs: the best exact p (2/64) is above 0.05 / 3 gating metrics, and the row says so
    record = json.loads((ab / "ab.json").read_text())
    (ab / "ab.json").write_text(json.dumps({**record, "pairs": record["pairs"][:6]}))
    six = bench_cli("compare", str(ab), "--fail-on-regression")
    assert six.returncode == 0 and "6 pairs cannot reach p < 0.017" in six.stdout, six.stdout


def test_stored_runs_compare_without_the_command_line(tmp_path: Path):
    """bench.comparisons is the decision; the CLI only prints: the same verdict from Python."""
    from bench.comparisons import compare_stored, gate_metrics
    from bench.errors import UsageError

    base = write_run(tmp_path / "base", noisy(50, 8, 0.01, 1), name="a")
    head = write_run(tmp_path / "head", noisy(44, 8, 0.01, 2), name="b")
    _setup(tmp_path / "quiet", [50, 50.4, 49.7, 50.2, 49.9], "q")
    (comparison,) = compare_stored([base, head], threshold=0.05, results=tmp_path / "quiet")
    assert comparison.regressed and comparison.noise["decode_tps"].runs == 5
    assert gate_metrics("all")[0] == "prefill_tps" and gate_metrics(None) == ("prefill_tps", "decode_tps", "ttft_ms")
    with pytest.raises(UsageError):
        gate_metrics("nonsense")
    with pytest.raises(UsageError):
        compare_stored([base], threshold=0.05)  # one folder that is no `bench ab` folder
