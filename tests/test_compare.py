import json
from pathlib import Path


from bench.compare import METRICS, NoiseBand, RunValues, compare_metric, compare_sides, make_side
from bench.store import load_run
from bench.summary import RepetitionValues, repetition_values
from conftest import bench_cli
from synth import noisy, write_run

DECODE = next(m for m in METRICS if m.name == "decode_tps")
TTFT = next(m for m in METRICS if m.name == "ttft_ms")


def test_ten_percent_slower_is_regressed():
    found = 0
    for seed in range(20):
        base = noisy(50, 10, 0.03, seed)
        head = noisy(45, 10, 0.03, seed + 1000)
        result = compare_metric(DECODE, base, head, threshold=0.05, seed=seed)
        found += result.verdict == "regressed"
        assert result.verdict != "improved"
    assert found >= 19


def test_same_distribution_is_unchanged_or_inconclusive_in_95_percent_of_seeds():
    false_verdicts = 0
    for seed in range(200):
        result = compare_metric(DECODE, noisy(50, 8, 0.04, seed), noisy(50, 8, 0.04, seed + 10_000),
                                threshold=0.05, seed=seed)
        false_verdicts += result.verdict in ("regressed", "improved")
    assert false_verdicts <= 10


def test_too_few_repetitions_are_inconclusive_never_regressed():
    for seed in range(50):
        result = compare_metric(DECODE, noisy(50, 3, 0.02, seed), noisy(35, 3, 0.02, seed + 1), threshold=0.05)
        assert result.verdict == "inconclusive" and result.p_value is None and "fewer than" in result.reason


def test_direction_lower_is_better():
    result = compare_metric(TTFT, noisy(100, 10, 0.02, 1), noisy(120, 10, 0.02, 2), threshold=0.05)
    assert result.verdict == "regressed" and result.change > 0.1
    result = compare_metric(TTFT, noisy(100, 10, 0.02, 1), noisy(80, 10, 0.02, 2), threshold=0.05)
    assert result.verdict == "improved"


def test_tight_equal_sides_are_unchanged():
    result = compare_metric(DECODE, noisy(50, 12, 0.005, 3), noisy(50, 12, 0.005, 4), threshold=0.05)
    assert result.verdict == "unchanged"
    assert result.ci[0] > 0.95 and result.ci[1] < 1.05


def _values(run_dir: Path) -> RunValues:
    data = load_run(run_dir)
    found = RepetitionValues.from_stored(repetition_values(data.requests, data.samples))
    return RunValues(str(run_dir), data.run, found.values, found.censored)


def test_stored_per_repetition_values_match_the_tables(tmp_path: Path):
    run_dir = write_run(tmp_path, noisy(50, 6, 0.02, 1), power_w=3.0)
    stored = load_run(run_dir).run["summary"]["per_repetition"]
    assert {k: v for k, v in stored.items() if k != "censored"} == _values(run_dir).values and len(stored["decode_tps"]) == 6 and len(stored["j_per_token"]) == 6


def test_sides_from_stored_runs_and_energy_rules(tmp_path: Path):
    base = _values(write_run(tmp_path / "a", noisy(50, 8, 0.02, 1), power_w=3.0, name="a"))
    head = _values(write_run(tmp_path / "b", noisy(44, 8, 0.02, 2), power_w=3.3, name="b"))
    # one run a side: the verdicts stand only beyond the setup's run-to-run noise (here known: ±2%)
    quiet = {name: NoiseBand(5, "earlier runs", fixed=0.02) for name in ("decode_tps", "j_per_token")}
    assert compare_sides(make_side("base", [base]), make_side("head", [head])).metrics[1].verdict == "suspected"
    comparison = compare_sides(make_side("base", [base]), make_side("head", [head]), noise=quiet)
    by_name = {m.spec.name: m for m in comparison.metrics}
    assert by_name["decode_tps"].verdict == "regressed"
    assert by_name["j_per_token"].base_n == 8 and by_name["j_per_token"].verdict == "regressed"  # more W, fewer t/s
    assert by_name["peak_rss_bytes"].verdict == "unchanged"
    charging = _values(write_run(tmp_path / "c", noisy(44, 8, 0.02, 2), power_w=3.3, charging=True, name="c"))
    comparison = compare_sides(make_side("base", [base]), make_side("head", [charging]))
    energy = next(m for m in comparison.metrics if m.spec.name == "j_per_token")
    assert energy.verdict == "not compared" and "charging" in energy.reason
    assert "head charging" in next(m for m in comparison.metrics if m.spec.name == "decode_tps").flags


def test_mismatched_model_is_not_comparable(tmp_path: Path):
    base = _values(write_run(tmp_path / "a", [50] * 5, name="a"))
    head = _values(write_run(tmp_path / "b", [50] * 5, model_sha="b" * 64, name="b"))
    comparison = compare_sides(make_side("base", [base]), make_side("head", [head]))
    assert not comparison.comparable and "model differs" in comparison.mismatches[0]
    assert all(m.verdict == "not compared" for m in comparison.metrics)
    assert compare_sides(make_side("base", [base]), make_side("head", [head]), ignore=["model"]).comparable


def test_cli_markdown_json_and_fail_on_regression(tmp_path: Path):
    write_run(tmp_path / "base", noisy(50, 8, 0.02, 1), name="a")
    write_run(tmp_path / "base", noisy(50, 8, 0.02, 5), name="a2")  # a folder of runs is pooled
    write_run(tmp_path / "head", noisy(40, 8, 0.02, 2), name="b")
    for index, median in enumerate((50, 50.5, 49.6, 50.2)):  # earlier runs of the setup: ±1% run to run
        write_run(tmp_path / "history", noisy(median, 8, 0.02, 40 + index), name=f"h{index}")
    history = ("--results", str(tmp_path / "history"))
    result = bench_cli("compare", str(tmp_path / "base"), str(tmp_path / "head"), "--plot", str(tmp_path / "cmp.png"), *history)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "Regression" in first and "Decode" in first
    assert "| Decode (tokens/s" in result.stdout and "<details>" in result.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    failing = bench_cli("compare", str(tmp_path / "base"), str(tmp_path / "head"), "--fail-on-regression", "--format", "json",
                        *history)
    assert failing.returncode == 1
    payload = json.loads(failing.stdout)
    decode = next(m for m in payload["comparisons"][0]["metrics"] if m["metric"] == "decode_tps")
    assert decode["verdict"] == "regressed" and decode["base_n"] == 16 and decode["test"].startswith("Mann-Whitney")
    same = bench_cli("compare", str(tmp_path / "base"), str(tmp_path / "base"), "--fail-on-regression")
    assert same.returncode == 0


def test_cli_baseline(tmp_path: Path):
    write_run(tmp_path / "results" / "baselines" / "main", noisy(50, 6, 0.02, 1), name="a")
    head = write_run(tmp_path / "head", noisy(50, 6, 0.02, 2), name="b")
    result = bench_cli("compare", "--baseline", "main", "--results", str(tmp_path / "results"), str(head))
    assert result.returncode == 0, result.stderr
    missing = bench_cli("compare", "--baseline", "nope", "--results", str(tmp_path / "results"), str(head))
    assert missing.returncode == 2 and "no baseline 'nope'" in missing.stderr


def _exit_2_one_line(result, needle):
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_bad_inputs(tmp_path: Path):
    good = write_run(tmp_path / "good", [50] * 5, name="g")
    corrupt = write_run(tmp_path / "corrupt", [50] * 5, name="c")
    (corrupt / "requests.csv").write_bytes(b"\xff\xfe garbage")
    _exit_2_one_line(bench_cli("compare", str(good), str(corrupt)), "requests.csv")
    newer = write_run(tmp_path / "newer", [50] * 5, name="n")
    run = json.loads((newer / "run.json").read_text())
    (newer / "run.json").write_text(json.dumps({**run, "schema_version": 7}))
    _exit_2_one_line(bench_cli("compare", str(good), str(newer)), "newer")
    (tmp_path / "empty").mkdir()
    _exit_2_one_line(bench_cli("compare", str(good), str(tmp_path / "empty")), "holds no runs")
    other = write_run(tmp_path / "other", [50] * 5, scenario_hash="z" * 64, name="o")
    _exit_2_one_line(bench_cli("compare", str(good), str(other)), "scenario differs")
