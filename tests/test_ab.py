"""`bench ab` for real: interleaved ABBA pairs on the emulated phone (two runtime folders) and on
the host (two models), stored as ordinary runs, compared pair by pair."""

import json
from pathlib import Path

import pytest

from bench.android import adb
from bench.store import load_run
from conftest import bench_cli

pytestmark = pytest.mark.slow
TINY = 'name = "tiny"\nrepetitions = 2\nwarmup = 0\nn_predict = 8\nidle_s = 1\nprompts = ["Hello there."]\n[cooldown]\nmode = "temperature"\nmax_wait_s = 5\n'


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_interleaved_ab_on_the_emulated_phone(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim()
    result = bench_cli("ab", "--device", info.serial, "--base", str(host_runtime), "--head", str(host_runtime),
                       "--pairs", "2", "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path / "r"),
                       "--telemetry-hz", "5", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    comparison = payload["comparisons"][0]
    assert comparison["paired"] and "paired and interleaved: 2 ABBA pairs" in payload["method"]
    decode = next(m for m in comparison["metrics"] if m["metric"] == "decode_tps")
    assert decode["verdict"] == "inconclusive" and "fewer than 6 pairs" in decode["reason"]
    # every run of both sides checked its output against the host CPU reference
    correctness = comparison["correctness"]
    assert correctness["base"]["verdict"] == correctness["head"]["verdict"] == "pass" and correctness["wrong"] is None
    assert correctness["head"]["detail"].startswith("2 runs: top-1 agreement")
    (ab_dir,) = (tmp_path / "r").glob("*-ab-tiny")
    record = json.loads((ab_dir / "ab.json").read_text())
    assert record["schema_version"] == 1 and record["status"] == "complete"
    assert [p["order"] for p in record["pairs"]] == [["base", "head"], ["head", "base"]]
    started = {}
    for pair in record["pairs"]:
        for side in ("base", "head"):
            run = load_run(ab_dir / pair[side]).run
            assert run["status"] == "complete" and run["device"]["kind"] == "android"
            started[(pair["index"], side)] = run["started_at"]
    # ABBA: base, head, head, base
    assert started[(0, "base")] < started[(0, "head")] < started[(1, "head")] < started[(1, "base")]
    phone = adb.Device(info.serial)
    assert "/data/local/tmp/bench/" not in phone.shell("ps -A -o args").stdout
    again = bench_cli("compare", str(ab_dir))  # the folder compares again later, paired
    assert again.returncode == 0 and "paired and interleaved" in again.stdout.splitlines()[0]


def test_ab_of_two_models_on_the_host_and_bad_arms(smollm2_path, tmp_path):
    result = bench_cli("ab", "--base", "smollm2-135m", "--head", str(smollm2_path), "--pairs", "2",
                       "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path / "r"), "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "paired and interleaved: 2 ABBA pairs" in result.stdout.splitlines()[0]
    (ab_dir,) = (tmp_path / "r").glob("*-ab-tiny")
    again = bench_cli("compare", str(ab_dir))  # two models on purpose: the record says so, no --ignore needed
    assert again.returncode == 0 and "### base smollm2-135m" in again.stdout, again.stdout + again.stderr
    assert "| head " in again.stdout and "🟢 pass: 2 runs" in again.stdout  # each side's correctness verdict
    mixed = bench_cli("ab", "--base", "smollm2-135m", "--head", str(tmp_path), "--out", str(tmp_path / "bad"))
    lines = [line for line in mixed.stderr.splitlines() if line.strip()]
    assert mixed.returncode == 2 and len(lines) == 1 and not (tmp_path / "bad").exists(), mixed.stderr
    assert "runtime folder" in lines[0]
