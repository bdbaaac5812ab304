"""The faults found in review (issue 8), each pinned by a test that failed before its fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import parse
from bench.android.capture import safe_sys_path
from bench.android.sampler import AndroidSampler, Layout
from bench.clock import RunClock
from bench.profiles import load_profiles
from bench.store import RunWriter, load_run, load_run_meta, persist_settled_status
from bench.energy import energy_summary
from bench.summary import repetition_values, validity_from_samples
from conftest import bench_cli


def _requests(windows: list[tuple[float, float, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"repetition": i, "step": 0, "warmup": False, "t_start_s": start,
                          "e2e_ms": (end - start) * 1000, "gen_tokens": tokens, "error": None,
                          "prefill_tps": 1.0, "decode_tps": 1.0, "ttft_ms": 1.0, "itl_p95_ms": 1.0}
                         for i, (start, end, tokens) in enumerate(windows)])


def _power(times: list[float], watts: float) -> pd.DataFrame:
    return pd.DataFrame([{"t_s": t, "source": "battery", "name": "power", "value": watts, "unit": "W"} for t in times])


def test_j_per_token_uses_the_tokens_of_the_covered_windows_and_partial_coverage_is_invalid():
    # Two 1 s windows of 10 tokens at 2 W; power samples cover only the first.
    requests = _requests([(0.0, 1.0, 10), (5.0, 6.0, 10)])
    samples = _power([0.0, 0.5, 1.0], 2.0)
    energy = energy_summary(requests, samples, charging=False)
    assert energy["windows_covered"] == 1 and energy["windows"] == 2 and energy["coverage"] == 0.5
    assert energy["energy_j"] == pytest.approx(2.0)
    assert energy["j_per_token"] == pytest.approx(0.2)  # 2 J / 10 tokens, not / 20
    assert energy["valid"] is False and "cover 1 of 2" in energy["reason"]
    full = energy_summary(requests, _power([0.0, 3.0, 6.0], 2.0), charging=False)
    assert full["valid"] and full["j_per_token"] == pytest.approx(0.2)


def test_summary_and_compare_share_one_energy_definition():
    requests = _requests([(0.0, 1.0, 10), (2.0, 3.0, 30)])
    samples = _power([0.0, 1.0, 2.0, 3.0], 2.0)
    per_repetition = repetition_values(requests, samples)["j_per_token"]
    assert per_repetition == [pytest.approx(0.2), pytest.approx(2 / 30)]
    # a repetition whose window is not covered gives no value rather than a diluted one
    assert repetition_values(requests, _power([0.0, 1.0], 2.0))["j_per_token"] == [pytest.approx(0.2)]


def _status_samples(codes: list[float], plugged: list[float] | None = None) -> pd.DataFrame:
    rows = [{"t_s": float(i), "source": "battery", "name": "status_code", "value": c, "unit": "code"}
            for i, c in enumerate(codes)]
    rows += [{"t_s": float(i), "source": "battery", "name": "plugged", "value": p, "unit": "bool"}
             for i, p in enumerate(plugged or [])]
    return pd.DataFrame(rows)


def test_not_charging_on_usb_is_external_power():
    assert validity_from_samples(_status_samples([4.0, 4.0]))["charging"] is True       # "Not charging"
    assert validity_from_samples(_status_samples([3.0], plugged=[1.0]))["charging"] is True  # USB online
    assert validity_from_samples(_status_samples([3.0], plugged=[0.0]))["charging"] is False
    declared = validity_from_samples(_status_samples([4.0], plugged=[1.0]), declared_unplugged=True)
    assert declared["charging"] is False and declared["external_power_detected"] is True
    assert declared["declared_unplugged"] is True


def test_voltage_unit_is_decided_by_plausible_range():
    assert parse.battery_voltage_v(3_850_000) == pytest.approx(3.85)   # uV, the kernel ABI
    assert parse.battery_voltage_v(3850) == pytest.approx(3.85)        # mV, some vendors
    assert parse.battery_voltage_v(3.85) == pytest.approx(3.85)        # V
    assert parse.battery_voltage_v(7700) == pytest.approx(7.7)         # two cells, mV
    assert parse.battery_voltage_v(0) is None


def test_sampler_line_with_millivolts_gives_volts():
    sampler = AndroidSampler.__new__(AndroidSampler)
    sampler.offset_s, sampler.ticks = 0.0, 0
    sampler.layout = Layout((), (), ("voltage_now",), {}, ("usb",))
    sampler.zone_names, sampler.cluster_max = {}, {}
    sampler.raw_current, sampler.raw_voltage, sampler.statuses = [], [], []
    samples = sampler.parse_line("S 100.0 b_voltage_now=3850 p0=1")
    values = {(s.source, s.name): s.value for s in samples}
    assert values[("battery", "voltage")] == pytest.approx(3.85)
    assert values[("battery", "plugged")] == 1.0


def test_capture_paths_from_the_device_cannot_climb_out():
    assert safe_sys_path("/sys/class/thermal/thermal_zone0/temp") == Path("sys/class/thermal/thermal_zone0/temp")
    for hostile in ("/sys/../../etc/passwd", "/sys/class/../../x", "/etc/passwd", "/sys//x", "/sys/./x",
                    "/sys/a\nb"):
        assert safe_sys_path(hostile) is None, hostile


def test_sim_names_that_leave_the_cache_are_refused(tmp_path):
    marker = tmp_path / "keep"
    marker.mkdir()
    for verb in ("start", "stop"):
        for name in ("../..", "..", "a/b", ".hidden", "x" * 65):
            result = bench_cli("sim", verb, "--name", name, env={"BENCH_CACHE_DIR": str(tmp_path / "cache")})
            assert result.returncode == 2 and "invalid sim name" in result.stderr, (verb, name, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
    assert marker.is_dir()


def _running_run(root: Path, owner: dict) -> Path:
    writer = RunWriter(root, "20260101T000000Z-host-m-quick")
    writer.write_run({"status": "running", "owner": owner, "summary": {}})
    writer.close()
    return writer.dir


def _this_owner(pid: int) -> dict:
    import socket

    import psutil

    return {"host": socket.gethostname(), "pid": pid,
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "process_started": psutil.Process(pid).create_time() if psutil.pid_exists(pid) else 0.0}


def test_a_run_whose_process_died_is_shown_as_failed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = _this_owner(dead.pid)
    dead.wait()
    run_dir = _running_run(tmp_path / "dead", owner)
    run = load_run(run_dir).run
    assert run["status"] == "failed" and run["status_inferred"] and f"pid {dead.pid}" in run["reason"]
    assert load_run_meta(run_dir)["status"] == "failed"  # what compare reads
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # reading changes nothing
    result = bench_cli("report", str(run_dir))
    assert result.returncode == 0 and "marked failed" in result.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert "**Status: failed**" in (run_dir / "report.md").read_text()

    alive = _running_run(tmp_path / "alive", _this_owner(os.getpid()))
    assert load_run(alive).run["status"] == "running" and not persist_settled_status(alive)
    rebooted = _running_run(tmp_path / "rebooted", {**_this_owner(os.getpid()), "boot_id": "another-boot"})
    assert load_run(rebooted).run["status"] == "failed"
    elsewhere = _running_run(tmp_path / "elsewhere", {**_this_owner(os.getpid()), "host": "another-host"})
    assert load_run(elsewhere).run["status"] == "running"  # cannot be checked from here


def test_profiles_still_load():
    assert "pixel8" in load_profiles()
    assert RunClock().now_s() >= 0


def test_adb_server_address_conventions(monkeypatch):
    from bench.android.adb import SERVER_ADDRESS_ENV, SERVER_PORT_ENV, SERVER_SOCKET_ENV, Server, default_server, parse_server

    for name in (SERVER_SOCKET_ENV, SERVER_ADDRESS_ENV, SERVER_PORT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert default_server() == Server("127.0.0.1", 5037)
    monkeypatch.setenv(SERVER_ADDRESS_ENV, "lab-host")
    monkeypatch.setenv(SERVER_PORT_ENV, "6037")
    assert default_server() == Server("lab-host", 6037) and not default_server().local
    monkeypatch.setenv(SERVER_SOCKET_ENV, "tcp:farm:7037")  # adb's own variable wins
    assert default_server() == Server("farm", 7037)
    assert parse_server("5038") == Server("127.0.0.1", 5038) and parse_server("localhost:5039").local
    with pytest.raises(Exception, match="not an adb server address"):
        parse_server("farm:port")
