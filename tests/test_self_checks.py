"""Self-checks on every number (issue 14.4): decode above the roofline is impossible and invalidates
the run; streamed tokens must equal generated tokens; a device clock that jumps and telemetry that
stops are reported with where. Pure checks on known inputs, then the emulated phone, whose
telemetry loop the `stall` fault freezes for a known time."""

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import markdown
from bench.sim import control
from bench.store import load_run
from bench.checks import self_checks, telemetry_gaps
from conftest import REPO


def _samples(times: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"t_s": times, "source": "process", "name": "rss", "value": 1.0, "unit": "B"})


def _requests(gen_tokens: list[int], streamed: list[int | None]) -> pd.DataFrame:
    return pd.DataFrame({"repetition": range(len(gen_tokens)), "warmup": False, "error": None,
                         "gen_tokens": gen_tokens, "streamed_tokens": streamed})


def _by_name(checks: list[dict]) -> dict:
    return {check["name"]: check for check in checks}


def test_a_gap_longer_than_five_periods_is_reported_with_where_it_was():
    ticks = [i * 0.1 for i in range(30)] + [2.9 + 0.6, 3.6, 3.7]  # 0.6 s is 6 periods at 10 Hz
    assert telemetry_gaps(_samples(ticks), 10.0) == [{"start_s": 2.9, "end_s": 3.5, "seconds": 0.6}]
    assert telemetry_gaps(_samples([i * 0.1 for i in range(30)] + [2.9 + 0.45]), 10.0) == []  # 4.5 periods


def test_decode_above_the_roofline_fails_and_invalidates():
    checks = _by_name(self_checks(_requests([64], [64]), _samples([0, 0.1]), decode_median=1500.0,
                                  ceiling_tps=9.7, telemetry_hz=10.0, clock=None))
    assert checks["roofline"]["ok"] is False and checks["roofline"]["invalidates"]
    assert "1,500.0 tokens/s is above the memory-bandwidth ceiling of 9.7" in checks["roofline"]["detail"]
    fine = _by_name(self_checks(_requests([64], [64]), _samples([0, 0.1]), decode_median=9.0, ceiling_tps=9.7,
                                telemetry_hz=10.0, clock=None))
    assert fine["roofline"]["ok"] is True and fine["token_count"]["ok"] is True
    assert fine["device_clock"]["ok"] is None  # host clock: nothing to check


def test_streamed_tokens_that_differ_from_the_runtime_count_fail():
    check = _by_name(self_checks(_requests([64, 64, 64], [64, 60, 64]), _samples([0]), decode_median=None,
                                 ceiling_tps=None, telemetry_hz=None, clock=None))["token_count"]
    assert check["ok"] is False and check["requests"] == 1 and "60 streamed, 64 generated" in check["detail"]
    unknown = _by_name(self_checks(_requests([64], [None]), _samples([0]), decode_median=None, ceiling_tps=None,
                                   telemetry_hz=None, clock=None))["token_count"]
    assert unknown["ok"] is None  # llama-bench rows stream nothing


@pytest.mark.parametrize("end_offset, ok", [(1000.03, True), (1002.5, False)])
def test_a_device_clock_that_jumps_fails(end_offset, ok):
    clock = {"offset_start_s": 1000.0, "offset_end_s": end_offset, "uncertainty_s": 0.01, "seconds": 60.0}
    check = _by_name(self_checks(_requests([1], [1]), _samples([0]), decode_median=None, ceiling_tps=None,
                                 telemetry_hz=10.0, clock=clock))["device_clock"]
    assert check["ok"] is ok and (ok or "jumped +2.50 s" in check["detail"])


def test_the_report_names_an_invalid_run_and_every_check():
    checks = self_checks(_requests([64], [64]), _samples([0, 0.1]), decode_median=1500.0, ceiling_tps=9.7,
                         telemetry_hz=10.0, clock=None)
    run = {"run_id": "x", "status": "complete", "summary": {"validity": {
        "checks": checks, "valid": False, "invalid_reason": checks[0]["detail"]}}}
    text = markdown(run, pd.DataFrame(columns=["decode_tps"]), pd.DataFrame(), [], [])
    assert "**Invalid: median decode 1,500.0 tokens/s is above" in text
    assert "| self-check: decode within the roofline | **FAILED** |" in text
    assert "| self-check: no telemetry gaps | passed |" in text


def _hurt_mid_run(serial: str, tmp_path: Path, hurt, duration_s: float) -> tuple[dict, float]:
    """A short timed run on the phone; once its first request is stored, `hurt()`. Returns the
    stored run.json and when (host epoch) the hurt came."""
    scenario = tmp_path / "short.toml"
    scenario.write_text(f'name = "short"\nrepetitions = 1\nwarmup = 0\nn_predict = 32\nduration_s = {duration_s}\n'
                        'idle_s = 1\nprompts = ["Go on."]\n[cooldown]\nmode = "none"\n')
    out = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--device", serial, "--out", str(out),
                                "--scenario", str(scenario), "--json"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob("*/requests.csv")) or len(next(out.glob("*/requests.csv")).read_text().splitlines()) < 3:
        assert time.time() < deadline and process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.1)
    hurt_at = time.time()
    hurt()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    return load_run(json.loads(stdout)["run_dir"]).run, hurt_at


@pytest.mark.slow
def test_a_frozen_telemetry_loop_on_the_phone_is_a_gap_where_it_happened(start_sim, host_runtime, smollm2_path,
                                                                         tmp_path):
    info = start_sim(name="stall")
    run, frozen_at = _hurt_mid_run(info.serial, tmp_path, lambda: control.inject(
        info, "stall", match="telemetry.sh", seconds_s=2.0), duration_s=8)
    checks = _by_name(run["summary"]["validity"]["checks"])
    gap_check = checks["telemetry_gaps"]
    assert gap_check["ok"] is False, gap_check
    started = dt.datetime.fromisoformat(run["started_at"]).timestamp()
    gap = max(gap_check["gaps"], key=lambda g: g["seconds"])
    assert 1.7 <= gap["seconds"] <= 2.6  # frozen 2 s; the loop's next tick lands within a period after
    assert abs(gap["start_s"] - (frozen_at - started)) < 0.5
    # the rest of the phone path passes: real tokens, a steady clock, decode under the ceiling
    assert checks["token_count"]["ok"] is True and checks["device_clock"]["ok"] is True
    assert checks["roofline"]["ok"] is True and run["summary"]["validity"]["valid"] is True
    report = (tmp_path / "r" / run["run_id"] / "report.md").read_text()
    assert "self-check: no telemetry gaps | **FAILED**" in report


@pytest.mark.slow
@pytest.mark.skipif(not list(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")),
                    reason="needs libfaketime (./dev.sh test installs it)")
def test_a_device_clock_that_jumps_mid_run_is_caught(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim(name="clock", settings=["clock.adjustable=true"])
    # network time sets the phone's clock 3 s ahead
    run, _ = _hurt_mid_run(info.serial, tmp_path, lambda: control.inject(info, "clock-jump", seconds=3.0),
                           duration_s=6)
    check = _by_name(run["summary"]["validity"]["checks"])["device_clock"]
    assert check["ok"] is False and check["moved_s"] == pytest.approx(3.0, abs=0.1), check
    assert "jumped +3.0" in check["detail"]


@pytest.mark.slow
def test_a_wall_clock_step_back_moves_no_telemetry_stamp(start_sim, host_runtime, smollm2_path, tmp_path):
    """Issue 20.12: network time steps the phone's wall clock back 4 s mid-run. The check reports
    the step, and the samples, stamped on the boot-time clock, keep their pace: no tick lands on an
    earlier one, and no gap or overlap appears where the step was."""
    info = start_sim(name="clockback", settings=["clock.adjustable=true"])
    run, _ = _hurt_mid_run(info.serial, tmp_path, lambda: control.inject(info, "clock-jump", seconds=-4.0),
                           duration_s=6)
    check = _by_name(run["summary"]["validity"]["checks"])["device_clock"]
    assert check["ok"] is False and check["moved_s"] == pytest.approx(-4.0, abs=0.1), check
    samples = load_run(tmp_path / "r" / run["run_id"]).samples
    ticks = np.unique(samples[samples["source"] == "system"]["t_s"].to_numpy(dtype=float))
    steps = np.diff(ticks)
    assert steps.min() > 0.02 and steps.max() < 1.0, (steps.min(), steps.max())  # 10 Hz, stepped by nothing
    assert _by_name(run["summary"]["validity"]["checks"])["telemetry_gaps"]["ok"] is True
