"""The truth suite (issue 20): every metric of the catalogue (bench.metrics) has a known-answer test
here, on synthetic requests and samples whose right answer is worked out by hand, and the cases
that made figures or verdicts untrue each have one: cooldown gaps, a run that never throttled, a
throttle before the first request, fixed-performance caps, llama-bench rows, partial coverage, a
dumpsys-only phone, history that holds the head's own build, an A/A over every metric, a change
far beyond any noise with no history. The last test fails when a catalogue metric has none."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.compare import RunValues, compare_sides, make_side
from bench.energy import energy_phases, energy_summary
from bench.metrics import BY_NAME, CATALOGUE, PRIMARY
from bench.placement import thread_placement
from bench.records import RequestRecord
from bench.runtimes.base import Completion
from bench.summary import (aggregate_decode, draft_acceptance, gpu_figures, load_values, per_repetition,
                           repetition_values, request_metrics, validity_from_samples)
from bench.throttle import time_to_throttle, loops
from bench.workload import to_record
from conftest import bench_cli
from synth import noisy, write_run


class _Clock:
    def to_run_s(self, ns: int) -> float:
        return ns / 1e9


def _requests(rows: list[dict]) -> pd.DataFrame:
    base = {"step": 0, "warmup": False, "error": None, "cached_tokens": 0, "prompt_tokens": 200, "ttft_ms": np.nan}
    return pd.DataFrame([{**base, **row} for row in rows])


def _samples(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["t_s", "source", "name", "value", "unit"])


def _values(found: dict) -> dict:
    return {k: v for k, v in found.items() if k != "censored"}


# -- one known answer per metric ------------------------------------------------------------------

def _completion() -> Completion:
    """Sent at 0; tokens at 100, 150, 200 and 250 ms; done at 260 ms; the runtime timed 20 prompt
    tokens in 80 ms and 3 decode steps in 150 ms."""
    ms = 1_000_000
    return Completion(prompt_tokens=20, cached_tokens=0, gen_tokens=4, sent_ns=0,
                      token_ns=(100 * ms, 150 * ms, 200 * ms, 250 * ms), done_ns=260 * ms, prefill_ms=80.0,
                      prefill_n=20, decode_ms=150.0, decode_n=3, stop_reason="length", text="abcd", streamed_tokens=4)


def test_request_metrics_known_answers():
    record = to_record(_completion(), repetition=0, step=0, warmup=False, clock=_Clock())
    assert record.prefill_tps == pytest.approx(250.0)       # 20 tokens / 80 ms
    assert record.decode_tps == pytest.approx(20.0)         # (4 - 1) tokens / 150 ms from first token to last
    assert record.ttft_ms == pytest.approx(100.0)
    assert record.itl_p50_ms == pytest.approx(50.0) and record.itl_p95_ms == pytest.approx(50.0)
    assert record.e2e_ms == pytest.approx(260.0)
    # per repetition: the median over its requests (chat turns), warmup and failed requests left out
    frame = _requests([{"repetition": 0, "decode_tps": 10.0}, {"repetition": 0, "decode_tps": 30.0},
                       {"repetition": 0, "decode_tps": 20.0}, {"repetition": 1, "decode_tps": 40.0},
                       {"repetition": 1, "decode_tps": 99.0, "warmup": True},
                       {"repetition": 1, "decode_tps": 1.0, "error": "boom"}])
    assert per_repetition(frame, "decode_tps") == [20.0, 40.0]


def _two_repetitions() -> pd.DataFrame:
    """Two requests of 64 tokens: 10-15 s and 20-25 s (first token 1 s in)."""
    return _requests([{"repetition": r, "t_start_s": t, "e2e_ms": 5000.0, "ttft_ms": 1000.0, "gen_tokens": 64,
                       "prefill_tps": 200.0, "decode_tps": d, "itl_p95_ms": 30.0}
                      for r, t, d in ((0, 10.0, 20.0), (1, 20.0, 10.0))])


def test_sample_metrics_known_answers():
    samples = _samples(
        [(t, "process", "rss", 1e8 + (5e7 if 12 <= t <= 13 else 0), "B") for t in np.arange(0, 30, 0.5)] +
        [(t, "process", "swap", 2e6, "B") for t in np.arange(0, 30, 0.5)] +
        [(t, "thermal", "BIG", 40.0 + (t > 20) * 5 + (t == 8) * 30, "C") for t in np.arange(0, 30, 0.5)] +
        [(t, "thermal", "status", float(11 <= t < 14), "level") for t in np.arange(0, 30, 0.5)])
    values = repetition_values(_two_repetitions(), samples)
    assert values["peak_rss_bytes"] == [1.5e8 + 2e6, 1e8 + 2e6]      # VmRSS + VmSwap, max in each window
    assert values["max_temperature_c"] == [40.0, 45.0]              # the 70 C reading at 8 s is outside both
    assert values["time_throttled_s"] == [3.0, 0.0]                 # status above NONE from 11 s to 14 s
    assert values["stability"] == [0.5]                             # slowest 10 / fastest 20
    assert values["decode_tps"] == [20.0, 10.0] and values["prefill_tps"] == [200.0, 200.0]
    assert values["ttft_ms"] == [1000.0, 1000.0] and values["itl_p95_ms"] == [30.0, 30.0]


def _power(watts, until: float = 40.0, step: float = 0.1) -> pd.DataFrame:
    times = np.arange(0, until, step)
    return _samples([(t, "battery", "power", watts(t), "W") for t in times] +
                    [(t, "battery", "current", watts(t) / 4.0, "A") for t in times] +
                    [(t, "battery", "voltage", 4.0, "V") for t in times])


def test_energy_per_token_has_one_definition():
    """3 W throughout, 1 W idle before: each request 5 s, first token at 1 s, 64 tokens."""
    requests = _two_repetitions()
    samples = _power(lambda t: 3.0 if t >= 10 else 1.0)
    phases = energy_phases(requests, samples, idle={"start_s": 0.0, "end_s": 9.0}, capacity_mah=None, charging=False)
    table = energy_summary(requests, samples, charging=False)
    values = repetition_values(requests, samples)
    assert phases["j_per_token"] == pytest.approx(15 / 64, rel=1e-3)        # whole window / generated tokens
    assert table["j_per_token"] == pytest.approx(phases["j_per_token"], rel=1e-3)
    assert values["j_per_token"] == pytest.approx([15 / 64] * 2, rel=1e-3)
    assert phases["decode_j_per_token"] == pytest.approx(12 / 63, rel=1e-3)  # the decode window made 63 tokens
    assert phases["prefill_j_per_prompt_token"] == pytest.approx(3 / 200, rel=1e-3)
    assert phases["j_per_token_above_idle"] == pytest.approx((15 - 5) / 64, rel=1e-2)
    # mAh per 1,000 tokens is J/token's charge: (J/token) / V / 3.6 x 1000
    assert table["mah_per_1k_tokens"] == pytest.approx(phases["j_per_token"] / 4.0 / 3.6 * 1000, rel=1e-3)


def test_llama_bench_rows_keep_prompt_energy_out_of_j_per_generated_token():
    """pp512 (2 s) then tg128 (6 s) at 3 W: rows carry no first-token time."""
    requests = _requests([{"repetition": 0, "t_start_s": 10.0, "e2e_ms": 2000.0, "gen_tokens": 0, "prompt_tokens": 512},
                          {"repetition": 0, "t_start_s": 13.0, "e2e_ms": 6000.0, "gen_tokens": 128, "prompt_tokens": 0}])
    samples = _power(lambda t: 3.0)
    phases = energy_phases(requests, samples, idle=None, capacity_mah=4000.0, charging=False)
    table = energy_summary(requests, samples, charging=False)
    assert phases["j_per_token"] == pytest.approx(18 / 128, rel=1e-3) == table["j_per_token"]
    assert phases["decode_j_per_token"] == pytest.approx(18 / 128, rel=1e-3)  # tg has no prompt phase: all of it
    assert phases["prefill_j_per_prompt_token"] == pytest.approx(6 / 512, rel=1e-3)
    assert table["mah_per_1k_tokens"] == pytest.approx(18 / 128 / 4.0 / 3.6 * 1000, rel=1e-3)
    assert phases["projection"]["tokens_per_full_charge"] == pytest.approx(4.0 * 4.0 * 3600 / (18 / 128), rel=1e-3)


def test_partial_coverage_is_invalid_and_not_compared():
    requests = _requests([{"repetition": r, "t_start_s": 10.0 * (r + 1), "e2e_ms": 5000.0, "ttft_ms": 1000.0,
                           "gen_tokens": 64} for r in range(3)])
    samples = _power(lambda t: 3.0, until=26.0)  # the third request (30-35 s) has no power reading
    phases = energy_phases(requests, samples, idle=None, capacity_mah=None, charging=False)
    assert phases["valid"] is False and "2 of 3" in phases["reason"]
    assert all(values == [] for values in phases["per_repetition"].values())


def test_a_dumpsys_only_phone_with_one_rail_reading_uses_battery_power():
    requests = _requests([{"repetition": 0, "t_start_s": 10.0, "e2e_ms": 2000.0, "gen_tokens": 0, "prompt_tokens": 512},
                          {"repetition": 0, "t_start_s": 13.0, "e2e_ms": 6000.0, "gen_tokens": 128, "prompt_tokens": 0}])
    samples = pd.concat([_power(lambda t: 3.0), _samples([(9.0, "rail", "CPU_BIG", 100.0, "J")])])
    phases = energy_phases(requests, samples, idle=None, capacity_mah=None, charging=False)
    assert phases["available"] and phases["source"].startswith("battery") and phases["requests_covered"] == 2


def _throttle_run(status_at, caps=None, *, until: float = 60.0) -> tuple[list[dict], pd.DataFrame]:
    """Loops 10-20, 20-30, 30-40 s; status and caps sampled every 0.5 s."""
    requests = _requests([{"repetition": r, "t_start_s": 10.0 * (r + 1), "e2e_ms": 9000.0, "gen_tokens": 64,
                           "decode_tps": 20.0} for r in range(3)])
    times = np.arange(0, until, 0.5)
    rows = [(t, "thermal", "status", float(status_at(t)), "level") for t in times]
    if caps:
        rows += [(t, "cpu", "cap_cpu4", caps(t), "ratio") for t in times]
    return loops(requests), _samples(rows)


def test_time_to_first_throttle_known_answer_and_lower_bound():
    run_loops, samples = _throttle_run(lambda t: t >= 25)
    assert time_to_throttle(run_loops, samples) == (15.0, 25.0)        # 10 s -> 25 s
    run_loops, samples = _throttle_run(lambda t: False)
    assert time_to_throttle(run_loops, samples) == (29.0, None)        # at least the load's 29 s: a bound


def test_a_throttle_that_ended_before_the_first_request_does_not_count():
    # hot during the idle baseline and warmup (0-5 s), cool from then on
    run_loops, samples = _throttle_run(lambda t: t < 5)
    assert time_to_throttle(run_loops, samples) == (29.0, None)
    still = _throttle_run(lambda t: t < 12)  # still throttled when the load began: 0 s
    assert time_to_throttle(*still) == (0.0, 10.0)


def test_fixed_performance_caps_are_not_throttling():
    held = lambda t: 0.6  # noqa: E731  the mode lowers scaling_max_freq for the whole run
    run_loops, samples = _throttle_run(lambda t: False, held)
    assert time_to_throttle(run_loops, samples, fixed_performance=True) == (29.0, None)
    assert validity_from_samples(samples, fixed_performance=True)["throttled"] is False
    assert validity_from_samples(samples)["throttled"] is True  # without the mode, a 60% cap is throttling
    run_loops, samples = _throttle_run(lambda t: False, lambda t: 0.6 if t < 30 else 0.5)
    assert time_to_throttle(run_loops, samples, fixed_performance=True) == (20.0, 30.0)


def test_a_never_throttled_run_stores_its_time_as_a_lower_bound():
    requests = _requests([{"repetition": r, "t_start_s": 10.0 * (r + 1), "e2e_ms": 9000.0, "gen_tokens": 64,
                           "decode_tps": 20.0, "prefill_tps": 100.0, "itl_p95_ms": 50.0} for r in range(3)])
    found = repetition_values(requests, _throttle_run(lambda t: False)[1])
    assert found["time_to_throttle_s"] == [29.0] and found["censored"] == {"time_to_throttle_s": [True]}
    found = repetition_values(requests, _throttle_run(lambda t: t >= 25)[1])
    assert found["time_to_throttle_s"] == [15.0] and found["censored"] == {"time_to_throttle_s": [False]}


def _placement_samples(threads_busy_in_windows: int) -> pd.DataFrame:
    """CPU 0 runs 0.1 s of the runtime every 0.1 s tick inside the requests (10-12 s, 20-22 s), CPU 1
    0.3 s (three threads there); between them (cooldown) nothing runs and no thread is busy."""
    rows, cpu0, cpu1 = [], 0.0, 0.0
    windows = [(10.0, 12.0), (20.0, 22.0)]
    for t in np.round(np.arange(0, 30, 0.1), 3):
        inside = any(start < t <= end for start, end in windows)
        if inside:
            cpu0, cpu1 = cpu0 + 0.1, cpu1 + 0.3
        rows += [(t, "threads", "cpu0", cpu0, "s"), (t, "threads", "cpu1", cpu1, "s"),
                 (t, "threads", "busy", float(threads_busy_in_windows if inside else 0), "count")]
    return _samples(rows)


def test_off_affinity_share_and_busy_threads_cover_the_requests_only():
    requests = _requests([{"repetition": r, "t_start_s": t, "e2e_ms": 2000.0, "gen_tokens": 64}
                          for r, t in ((0, 10.0), (1, 20.0))])
    placed = thread_placement(requests, _placement_samples(4), clusters=[], affinity=[1], threads=4)
    assert placed["off_affinity_share"] == pytest.approx(0.25, abs=0.01)   # 1 of every 4 CPU seconds on CPU 0
    assert placed["cpu_seconds"] == pytest.approx(16.0, rel=0.03)          # 0.4 s a tick, 40 ticks of requests
    # an 8 s cooldown between 2 s requests is not "0 threads busy": the median is over the requests
    assert placed["busy_threads_median"] == 4.0
    assert not any("threads" in warning and "busy" in warning for warning in placed["warnings"])


# -- verdicts --------------------------------------------------------------------------------------

def _run_values(name: str, values: dict, censored: dict | None = None, run: dict | None = None) -> RunValues:
    run = run or {"status": "complete", "device": {"kind": "host"}, "model": {"sha256": "m"}, "scenario": {"hash": "s"},
                  "runtime": {"kind": "llama-server", "threads": 4}}
    return RunValues(name, run, values, censored or {})


def _ab(base_values, head_values, base_censored, head_censored):
    base = [_run_values(f"b{i}", {"time_to_throttle_s": [v]}, {"time_to_throttle_s": [c]})
            for i, (v, c) in enumerate(zip(base_values, base_censored))]
    head = [_run_values(f"h{i}", {"time_to_throttle_s": [v]}, {"time_to_throttle_s": [c]})
            for i, (v, c) in enumerate(zip(head_values, head_censored))]
    comparison = compare_sides(make_side("base", base), make_side("head", head), paired=True)
    return next(m for m in comparison.metrics if m.spec.name == "time_to_throttle_s")


def test_a_faster_build_that_never_throttled_does_not_regress_on_time_to_throttle():
    # the case: 8 ABBA pairs, head 15% faster, nothing throttles: each load's length is a bound
    rng = np.random.default_rng(3)
    base = list(300 * (1 + rng.normal(0, 0.01, 8)))
    head = [value * 0.92 for value in base]
    result = _ab(base, head, [True] * 8, [True] * 8)
    assert result.verdict == "not compared" and "lower bounds" in result.reason


def test_one_censored_side_gets_a_verdict_only_where_the_bound_decides():
    rng = np.random.default_rng(4)
    base = list(120 * (1 + rng.normal(0, 0.02, 8)))            # base throttled at ~120 s every pair
    later = [300.0 + i for i in range(8)]                      # head never did, over 300 s of load
    decided = _ab(base, later, [False] * 8, [True] * 8)
    assert decided.verdict == "improved" and "at least" in decided.reason
    early = [60.0 + i for i in range(8)]                       # head's load lasted 60 s without throttling
    undecided = _ab(base, early, [False] * 8, [True] * 8)
    assert undecided.verdict == "inconclusive" and "does not decide" in undecided.reason


def _synthetic_pair(rng, level: float, slowdown: float = 1.0) -> tuple[RunValues, RunValues]:
    def values(scale: float) -> dict:
        return {"prefill_tps": list(level * 5 * scale * (1 + rng.normal(0, 0.03, 4))),
                "decode_tps": list(level * scale * (1 + rng.normal(0, 0.03, 4))),
                "ttft_ms": list(200 / scale * (1 + rng.normal(0, 0.03, 4))),
                "itl_p95_ms": list(40 / scale * (1 + rng.normal(0, 0.05, 4))),
                "peak_rss_bytes": list(3e8 * (1 + rng.normal(0, 0.001, 4))),
                "max_temperature_c": list(45 + rng.normal(0, 1, 4)),
                "j_per_token": list(0.2 * (1 + rng.normal(0, 0.05, 4))),
                "time_throttled_s": list(np.abs(rng.normal(0, 1, 4))),
                "stability": [float(rng.uniform(0.85, 1.0))],
                "decode_j_per_token": list(0.15 * (1 + rng.normal(0, 0.05, 4))),
                "prefill_j_per_prompt_token": list(0.01 * (1 + rng.normal(0, 0.05, 4))),
                "j_per_token_above_idle": list(0.1 * (1 + rng.normal(0, 0.08, 4))),
                "off_affinity_share": [float(rng.uniform(0, 0.05))]}
    return _run_values("b", values(1.0)), _run_values("h", values(slowdown))


def test_an_a_a_over_every_metric_reads_no_change_at_the_stated_rate():
    """100 A/A comparisons of 8 ABBA pairs, 13 metrics each, the pairs drifting by ±10%: a gating
    verdict in at most 5% of them, and any verdict on any row in at most 5% per family."""
    rng = np.random.default_rng(20)
    gate_alarms = reported_alarms = 0
    for _ in range(100):
        pairs = [_synthetic_pair(rng, 50 * (1 + rng.normal(0, 0.1))) for _ in range(8)]
        comparison = compare_sides(make_side("base", [b for b, _ in pairs]), make_side("head", [h for _, h in pairs]),
                                   paired=True)
        verdicts = [(m.gating, m.verdict) for m in comparison.metrics]
        gate_alarms += any(g and v in ("improved", "regressed") for g, v in verdicts)
        reported_alarms += any(not g and v in ("improved", "regressed") for g, v in verdicts)
    assert gate_alarms <= 5 and reported_alarms <= 5, (gate_alarms, reported_alarms)


def test_the_gate_is_the_primary_set_and_a_15_percent_slowdown_is_found():
    rng = np.random.default_rng(21)
    pairs = [_synthetic_pair(rng, 50 * (1 + rng.normal(0, 0.1)), slowdown=0.85) for _ in range(8)]
    comparison = compare_sides(make_side("base", [b for b, _ in pairs]), make_side("head", [h for _, h in pairs]),
                               paired=True)
    gating = {m.spec.name for m in comparison.metrics if m.gating}
    assert gating == set(PRIMARY) == {"prefill_tps", "decode_tps", "ttft_ms"}
    decode = next(m for m in comparison.metrics if m.spec.name == "decode_tps")
    assert decode.verdict == "regressed" and decode.alpha == pytest.approx(0.05 / 3) and comparison.regressed


def test_strict_without_fail_on_regression_is_bad_input(tmp_path: Path):
    run = write_run(tmp_path / "a", [50] * 5, name="a")
    result = bench_cli("compare", str(run), str(run), "--strict")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--fail-on-regression" in lines[0], result.stderr
    unknown = bench_cli("compare", str(run), str(run), "--gate", "decode,speed")
    assert unknown.returncode == 2 and "--gate" in unknown.stderr


def test_history_holding_the_heads_own_build_does_not_hide_its_regression(tmp_path: Path):
    """Base on build A, head on build B 15% slower. The results folder holds three earlier runs of
    A (±1% apart) and one earlier run of B: the band comes from A's runs alone."""
    base = write_run(tmp_path / "base", noisy(50, 8, 0.01, 1), name="a", build="A", started_at="2026-01-05T00:00:00")
    head = write_run(tmp_path / "head", noisy(42.5, 8, 0.01, 2), name="b", build="B", started_at="2026-01-05T01:00:00")
    history = tmp_path / "results"
    for index, median in enumerate((50, 50.4, 49.7)):
        write_run(history, noisy(median, 8, 0.01, 10 + index), name=f"a{index}", build="A",
                  started_at=f"2026-01-0{index + 1}T00:00:00")
    write_run(history, noisy(42.5, 8, 0.01, 20), name="b-earlier", build="B", started_at="2026-01-04T00:00:00")
    result = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--ignore", "runtime",
                       "--results", str(history), "--format", "json")
    decode = next(m for m in json.loads(result.stdout)["comparisons"][0]["metrics"] if m["metric"] == "decode_tps")
    assert result.returncode == 1 and decode["verdict"] == "regressed", result.stdout
    assert "3 earlier runs" in decode["reason"]
    # runs of the base's build taken after the compared runs are not the history they had
    for index, median in enumerate((40, 60, 45)):
        write_run(history, noisy(median, 8, 0.01, 30 + index), name=f"a-later{index}", build="A",
                  started_at=f"2026-02-0{index + 1}T00:00:00")
    again = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--results", str(history))
    assert again.returncode == 1, again.stdout


def test_a_change_far_beyond_any_noise_is_a_regression_without_history(tmp_path: Path):
    # the case: the head beside a CPU burner, decode -70%, TTFT +238%, no run-to-run history
    base = write_run(tmp_path / "base", noisy(50, 6, 0.02, 1), ttft_ms=noisy(50, 6, 0.02, 3), name="a")
    head = write_run(tmp_path / "head", noisy(14.7, 6, 0.02, 2), ttft_ms=noisy(169, 6, 0.02, 4), name="b")
    empty = tmp_path / "history"
    empty.mkdir()
    result = bench_cli("compare", str(base), str(head), "--fail-on-regression", "--results", str(empty),
                       "--format", "json")
    assert result.returncode == 1, result.stdout
    metrics = {m["metric"]: m for m in json.loads(result.stdout)["comparisons"][0]["metrics"]}
    assert metrics["decode_tps"]["verdict"] == "regressed" and "default run-to-run bound" in metrics["decode_tps"]["reason"]
    assert metrics["ttft_ms"]["verdict"] == "regressed"


def test_correctness_figures_known_answers():
    from bench.correctness import Position, Scores, evaluate

    tokens = tuple(range(21))
    # 20 positions: 10 decisive (margin 1 nat), 10 near-ties; the reference gives every target ln p = -1
    reference = Scores(tokens, tuple(Position(i, -1.0, 1.0 if i < 10 else 0.2) for i in range(20)), 1000, "ref")
    # the runtime misses decisive position 0 and near-tie 15; its targets are at ln p = -1.05
    run = Scores(tokens, tuple(Position(i + (i in (0, 15)), -1.05) for i in range(20)), 0, "run")
    verdict = evaluate(run, reference)
    assert verdict.decisive == 10 and verdict.agreement == pytest.approx(0.9)  # correctness_top1_agreement
    assert verdict.perplexity == pytest.approx(math.exp(1.05))
    assert math.exp(verdict.log_perplexity_ratio) == pytest.approx(math.exp(0.05))  # correctness_perplexity_ratio
    assert verdict.chance_fraction == pytest.approx(1 / math.log(1000)) and verdict.passed


def test_aggregate_decode_known_answer():
    # Two concurrent sequences a step. Step 0: both sent at 10.0 s; first tokens after 100 and 200
    # ms, done after 1100 and 1200 ms, 11 and 21 tokens: 10 + 20 decoded from 10.1 s to 11.2 s.
    # Step 1: both from 12.0 s, first tokens at 12.5 s, done at 13.5 s, 41 tokens each: 80 in 1 s.
    rows = [{"repetition": 0, "step": 0, "sequence": 0, "t_start_s": 10.0, "ttft_ms": 100.0, "e2e_ms": 1100.0, "gen_tokens": 11},
            {"repetition": 0, "step": 0, "sequence": 1, "t_start_s": 10.0, "ttft_ms": 200.0, "e2e_ms": 1200.0, "gen_tokens": 21},
            *({"repetition": 0, "step": 1, "sequence": s, "t_start_s": 12.0, "ttft_ms": 500.0, "e2e_ms": 1500.0,
               "gen_tokens": 41} for s in (0, 1))]
    requests = _requests([{**row, "prefill_tps": 1.0, "decode_tps": 1.0, "itl_p95_ms": 1.0} for row in rows])
    step_0, step_1 = 30 / 1.1, 80 / 1.0
    assert aggregate_decode(requests) == pytest.approx([(step_0 + step_1) / 2])  # the median of two steps
    assert repetition_values(requests, _samples([]))["aggregate_decode_tps"] == pytest.approx([(step_0 + step_1) / 2])
    # a run that asked for no parallel sequences has no aggregate figure, whatever its rows say
    assert aggregate_decode(requests.assign(sequence=None)) == []
    assert aggregate_decode(requests.drop(columns=["sequence"])) == []


def test_draft_acceptance_known_answer():
    # repetition 0: 5 of 10 and 25 of 30 drafted tokens accepted = 30 / 40 (not the mean of 0.5
    # and 0.83); repetition 1: 20 of 20; the warmup and a request with no draft counts are not in it
    base = {"step": 0, "error": None, "prompt_tokens": 8, "cached_tokens": 0, "gen_tokens": 24, "t_start_s": 1.0,
            "ttft_ms": 10.0, "e2e_ms": 100.0, "prefill_tps": 100.0, "decode_tps": 50.0, "itl_p50_ms": 2.0,
            "itl_p95_ms": 5.0}
    rows = pd.DataFrame([{**base, "repetition": -1, "warmup": True, "draft_tokens": 10, "draft_accepted": 0},
                         {**base, "repetition": 0, "warmup": False, "draft_tokens": 10, "draft_accepted": 5},
                         {**base, "repetition": 0, "warmup": False, "draft_tokens": 30, "draft_accepted": 25},
                         {**base, "repetition": 0, "warmup": False, "draft_tokens": None, "draft_accepted": None},
                         {**base, "repetition": 1, "warmup": False, "draft_tokens": 20, "draft_accepted": 20}])
    assert draft_acceptance(rows) == pytest.approx([0.75, 1.0])
    assert request_metrics(rows)["draft_acceptance"].summary.median == pytest.approx(0.875)
    assert draft_acceptance(rows.drop(columns=["draft_tokens", "draft_accepted"])) == []  # no draft: no figure
    assert "draft_acceptance" not in request_metrics(rows.assign(draft_tokens=None))
    # llama-server's counts travel from its timings to the request's row
    ms = 1_000_000
    completion = Completion(prompt_tokens=8, cached_tokens=0, gen_tokens=4, sent_ns=0, token_ns=(ms, 2 * ms, 3 * ms, 4 * ms),
                            done_ns=5 * ms, prefill_ms=1.0, prefill_n=8, decode_ms=3.0, decode_n=3, stop_reason="length",
                            text="abcd", draft_tokens=6, draft_accepted=3)
    record = to_record(completion, repetition=0, step=0, warmup=False, clock=_Clock())
    assert (record.draft_tokens, record.draft_accepted) == (6, 3)


def test_gpu_figures_known_answer():
    # two measured requests, 1.0-3.0 s and 5.0-6.0 s (a warmup before them); GPU busy 50 % before
    # them, 10, 20, 30 % in the first, 60 % in the second, 90 % after; the clock cap 1.0, 0.75 in
    # the first, 0.5 only after both
    requests = _requests([{"repetition": -1, "warmup": True, "t_start_s": 0.0, "e2e_ms": 500.0},
                          {"repetition": 0, "t_start_s": 1.0, "e2e_ms": 2000.0},
                          {"repetition": 0, "t_start_s": 5.0, "e2e_ms": 1000.0}])
    busy = [(0.2, 50.0), (1.5, 10.0), (2.0, 20.0), (2.5, 30.0), (5.5, 60.0), (8.0, 90.0)]
    cap = [(0.2, 1.0), (2.0, 0.75), (5.5, 1.0), (8.0, 0.5)]
    samples = _samples([(t, "gpu", "busy", v, "%") for t, v in busy] + [(t, "gpu", "cap", v, "ratio") for t, v in cap])
    assert gpu_figures(requests, samples) == {"gpu_busy_pct": pytest.approx((10 + 20 + 30 + 60) / 4), "gpu_cap_min": 0.75}
    # a phone whose GPU is hidden, a host: no figure, not a zero
    assert gpu_figures(requests, _samples([])) == {"gpu_busy_pct": None, "gpu_cap_min": None}


def test_load_figures_known_answer():
    # cold: the page cache dropped, a 800 ms load, the run's first request (a warmup, sent first)
    # took 150 ms to its first token; warm: a 300 ms reload, then 40 ms to the first token
    requests = _requests([{"repetition": 0, "t_start_s": 20.0, "ttft_ms": 90.0, "warmup": False},
                          {"repetition": -1, "t_start_s": 12.0, "ttft_ms": 150.0, "warmup": True}])
    load = {"cold": {"dropped": True, "load_ms": 800.0}, "warm": {"load_ms": 300.0, "first_request_ttft_ms": 40.0}}
    assert load_values(load, requests) == {"load_cold_ms": [800.0], "first_token_cold_ms": [950.0],
                                           "load_warm_ms": [300.0], "first_token_warm_ms": [340.0]}
    # a first load that found the file cached is no cold figure; a run without --load-times has none
    found = load_values({**load, "cold": {"dropped": False, "load_ms": 120.0}}, requests)
    assert found["load_cold_ms"] == found["first_token_cold_ms"] == [] and found["load_warm_ms"] == [300.0]
    assert all(v == [] for v in load_values(None, requests).values())


def test_kv_cache_bytes_at_depth_known_answer():
    from bench.gguf import kv_cache_bytes
    from bench.records import GGUFInfo

    # Llama 3.2 1B's shapes: 16 layers, 2048 wide, 32 query heads, 8 key/value heads of 64 dimensions
    llama = GGUFInfo(3, "llama", None, None, None, 1_236_000_000, 147, 131072, 16, 2048, 32, 8, None, None, 0)
    assert kv_cache_bytes(llama, 4096) == 4096 * 16 * 8 * (64 + 64) * 2 == 128 * 2**20  # 128 MiB at depth 4096
    assert kv_cache_bytes(llama, 0) == 0
    assert kv_cache_bytes(GGUFInfo(3, "x", None, None, None, 0, 0, None, None, None, None, None, None, None, 0), 512) is None


# -- every metric has its known answer -------------------------------------------------------------

KNOWN_ANSWERS = {
    "prefill_tps": test_request_metrics_known_answers,
    "decode_tps": test_request_metrics_known_answers,
    "ttft_ms": test_request_metrics_known_answers,
    "itl_p50_ms": test_request_metrics_known_answers,
    "itl_p95_ms": test_request_metrics_known_answers,
    "e2e_ms": test_request_metrics_known_answers,
    "peak_rss_bytes": test_sample_metrics_known_answers,
    "max_temperature_c": test_sample_metrics_known_answers,
    "time_throttled_s": test_sample_metrics_known_answers,
    "stability": test_sample_metrics_known_answers,
    "j_per_token": test_energy_per_token_has_one_definition,
    "decode_j_per_token": test_energy_per_token_has_one_definition,
    "prefill_j_per_prompt_token": test_energy_per_token_has_one_definition,
    "j_per_token_above_idle": test_energy_per_token_has_one_definition,
    "time_to_throttle_s": test_time_to_first_throttle_known_answer_and_lower_bound,
    "off_affinity_share": test_off_affinity_share_and_busy_threads_cover_the_requests_only,
    "correctness_top1_agreement": test_correctness_figures_known_answers,
    "correctness_perplexity_ratio": test_correctness_figures_known_answers,
    "kv_cache_bytes_at_depth": test_kv_cache_bytes_at_depth_known_answer,
    "aggregate_decode_tps": test_aggregate_decode_known_answer,
    "draft_acceptance": test_draft_acceptance_known_answer,
    "gpu_busy_pct": test_gpu_figures_known_answer,
    "gpu_cap_min": test_gpu_figures_known_answer,
    "load_cold_ms": test_load_figures_known_answer,
    "first_token_cold_ms": test_load_figures_known_answer,
    "load_warm_ms": test_load_figures_known_answer,
    "first_token_warm_ms": test_load_figures_known_answer,
}


def test_every_metric_of_the_catalogue_has_a_known_answer_test():
    missing = [metric.name for metric in CATALOGUE if metric.name not in KNOWN_ANSWERS]
    assert not missing, f"metrics without a known-answer test: {missing}"
    assert set(KNOWN_ANSWERS) <= set(BY_NAME)
    for metric in CATALOGUE:  # and each says what it is
        assert metric.unit and metric.windows and metric.definition and metric.level in ("repetition", "run")
        assert not metric.censored or metric.level == "run"


def test_request_records_carry_every_request_metric():
    columns = set(RequestRecord.__dataclass_fields__)
    assert {m.name for m in CATALOGUE if m.computed_by == "summary.per_repetition"} <= columns


# -- the roofline is a ceiling ---------------------------------------------------------------------

def test_the_roofline_ceiling_holds_a_many_core_host_and_spares_a_model_in_cache():
    from bench.checks import self_checks
    from bench.summary import run_summary

    # the workstation: 8 threads decode a 4.4 GB model at 13 t/s, ~57 GB/s; all cores copy 60 GB/s
    requests = _requests([{"repetition": r, "t_start_s": 10.0 * r, "e2e_ms": 5000.0, "ttft_ms": 100.0, "gen_tokens": 64,
                           "decode_tps": 13.0, "prefill_tps": 100.0, "itl_p50_ms": 70.0,
                           "itl_p95_ms": 80.0} for r in range(3)])
    summary = run_summary(requests, pd.DataFrame(columns=["t_s", "source", "name", "value", "unit"]),
                          bandwidth_gbs=60.0, model_bytes=4_400_000_000)
    assert summary["roofline_ceiling_tps"] == pytest.approx(60e9 / 4.4e9)
    check = self_checks(requests, pd.DataFrame(), decode_median=13.0, ceiling_tps=summary["roofline_ceiling_tps"],
                        telemetry_hz=None, clock=None)[0]
    assert check["ok"] is True
    # a one-thread figure (25 GB/s) would call the same honest run impossible
    assert self_checks(requests, pd.DataFrame(), decode_median=13.0, ceiling_tps=25e9 / 4.4e9, telemetry_hz=None,
                       clock=None)[0]["ok"] is False
    # a 20 MiB model on a 32 MiB last-level cache is not held to DRAM bandwidth
    small = run_summary(requests, pd.DataFrame(columns=["t_s", "source", "name", "value", "unit"]), bandwidth_gbs=1.0,
                        model_bytes=20 * 2**20, last_level_cache_bytes=32 * 2**20)
    assert small["roofline_ceiling_tps"] is None and "last-level cache" in small["roofline_note"]
    check = self_checks(requests, pd.DataFrame(), decode_median=13.0, ceiling_tps=None, telemetry_hz=None, clock=None,
                        roofline_note=small["roofline_note"])[0]
    assert check["ok"] is None and "last-level cache" in check["detail"]


def test_host_bandwidth_is_all_cores_and_a_busy_measurement_is_not_cached(tmp_path: Path):
    import subprocess
    import sys

    from bench.host.membw import host_bandwidth_gbs, last_level_cache_bytes, usable_cpus

    assert last_level_cache_bytes() is None or last_level_cache_bytes() > 0
    # other work on every CPU, as on a shared machine: one spinning process per CPU (threads would
    # share one interpreter lock and load one core), stopped by their PIDs
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cpus())]
    try:
        gbs, source = host_bandwidth_gbs(tmp_path)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(timeout=10)
    assert gbs and gbs > 0 and "not cached" in source and not (tmp_path / "host-bandwidth.json").exists(), source
    quiet, source = host_bandwidth_gbs(tmp_path)
    if "not cached" not in source:  # a quiet moment: cached, and it names the method
        assert (tmp_path / "host-bandwidth.json").exists() and f"all {usable_cpus()} usable CPUs" in source
