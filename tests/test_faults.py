"""Fault injection on the emulated phone: each fault hits a real run (real adb server, real
llama-server, SmolLM2) and must end with nothing lost (every measured row kept, run.json partial or
failed, a report) and nothing left on the device (no llama-server, telemetry loop or lock holder
running, no forward, no lock). The tally is printed at the end of the session (conftest)."""

import json
import signal
import subprocess
from pathlib import Path

import pytest

from bench.android import adb
from bench.android.device import ROOT
from bench.android.lock import LOCK_DIR
from bench.sim import control
from bench.store import load_run
from conftest import bench_cli, long_run

pytestmark = pytest.mark.slow
# what of ours runs on the device: llama-server and the scripts all run from under ROOT (the sim
# shares the host's process table, so names alone would also match a host build's make)
OURS = (f"{ROOT}/bin/", "telemetry.sh", "lock-holder.sh")


@pytest.fixture
def ready(host_runtime, smollm2_path):
    """The runtime and the model, built and pulled once before any fault is timed."""


def leftovers(serial: str) -> list[str]:
    """What of ours is still on the device or in the adb server: should be nothing."""
    device = adb.Device(serial)
    processes = [line for line in device.shell("ps -A -o pid,args", timeout=20).stdout.splitlines()
                 if any(name in line for name in OURS)]
    forwards = [f"forward {item.local} -> {item.remote}" for item in adb.client().forward_list() if item.serial == serial]
    lock = device.shell(f"ls -d {LOCK_DIR} 2>/dev/null", timeout=20).stdout.split()
    partial = device.shell(f"ls {ROOT}/models {ROOT}/bin/* 2>/dev/null | grep -F .partial", timeout=20).stdout.split()
    return processes + forwards + [f"lock {path}" for path in lock] + [f"half-pushed {p}" for p in partial]


def finished(process: subprocess.Popen, expected_code: int = 3) -> dict:
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == expected_code, stderr[-3000:]
    return json.loads(stdout)


def nothing_lost(payload: dict, rows: int) -> None:
    run_dir = Path(payload["run_dir"])
    data = load_run(run_dir)
    assert data.run["status"] == payload["status"] and data.run["status"] in ("partial", "failed")
    assert len(data.requests) >= rows and (run_dir / "report.md").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] != "running"


def device_pid(serial: str, name: str) -> str:
    pid = adb.Device(serial).shell(f"cat {ROOT}/run/{name}.pid").stdout.strip()
    assert pid.isdigit()
    return pid


def fault_mid_run(start_sim, tmp_path: Path, hurt, *, rows: int = 2, expected_code: int = 3, **sim_options) -> dict:
    """A soak on a fresh sim; once `rows` requests are stored, `hurt(info, process)`; then the run must
    end with every row kept and nothing of ours left on the device. Returns the run's JSON."""
    info = start_sim(**sim_options)
    process, run_dir = long_run(info.serial, tmp_path, rows)
    before = measured_rows(run_dir, rows)
    hurt(info, process)
    payload = finished(process, expected_code)
    nothing_lost(payload, rows)
    assert measured_rows(run_dir, rows) == before  # what was measured before the fault is kept as it was
    assert leftovers(info.serial) == []
    return payload


def measured_rows(run_dir: Path, rows: int) -> list[str]:
    """The first `rows` request rows as stored (schema line and header skipped); each error-free."""
    lines = (run_dir / "requests.csv").read_text().splitlines()
    header = lines[1].split(",")
    kept = lines[2:2 + rows]
    assert len(kept) == rows
    for line in kept:
        assert line.split(",")[header.index("error")] == "", line
    return kept


@pytest.mark.fault("USB cable pulled mid-run (3 s)")
def test_usb_drop(start_sim, ready, tmp_path):
    payload = fault_mid_run(start_sim, tmp_path, lambda info, _: control.inject(info, "cable", offline_s=3))
    reason = payload["reason"]
    assert payload["status"] == "partial" and "llama-server" in reason, reason
    assert "offline" in reason or "the device stopped answering" in reason, reason


@pytest.mark.fault("device reboot mid-run")
def test_device_reboot(start_sim, ready, tmp_path):
    payload = fault_mid_run(start_sim, tmp_path, lambda info, _: control.inject(info, "reboot", offline_s=3))
    reason = payload["reason"]
    assert payload["status"] == "partial" and "llama-server" in reason, reason
    assert "offline" in reason or "the device stopped answering" in reason or "exit status" in reason, reason


@pytest.mark.fault("runtime crash (SIGSEGV)")
def test_runtime_crash(start_sim, ready, tmp_path):
    def segfault(info, _):
        adb.Device(info.serial).shell(f"kill -SEGV {device_pid(info.serial, 'llama-server')}")

    payload = fault_mid_run(start_sim, tmp_path, segfault)
    assert "signal 11" in payload["reason"], payload["reason"]


@pytest.mark.fault("runtime OOM kill by the low-memory killer")
def test_runtime_oom_kill(start_sim, ready, tmp_path):
    # llama-server holds ~100 MiB: once free memory drops, lmkd kills it
    payload = fault_mid_run(start_sim, tmp_path, lambda info, _: control.inject(info, "memory-pressure", limit_mb=16))
    reason = payload["reason"]
    assert "signal 9" in reason and "low-memory killer" in reason and "Kill 'llama-server'" in reason, reason


@pytest.mark.fault("Ctrl-C")
def test_ctrl_c(start_sim, ready, tmp_path):
    payload = fault_mid_run(start_sim, tmp_path, lambda _, process: process.send_signal(signal.SIGINT), expected_code=130)
    assert payload["status"] == "partial" and "Ctrl-C" in payload["reason"]


@pytest.mark.fault("disk full on the device during the push")
def test_disk_full_during_push(start_sim, ready, tmp_path):
    info = start_sim(settings=("storage.data_quota_mb=40",))  # the model alone is 94 MiB
    refused = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "preflight 'storage' failed" in refused.stderr
    assert not (tmp_path / "refused").exists()
    result = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "r"), "--allow", "storage", "--json")
    assert result.returncode == 3, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    assert payload["status"] == "failed" and "No space left on device" in payload["reason"], payload["reason"]
    nothing_lost(payload, 0)
    assert leftovers(info.serial) == []


@pytest.mark.fault("thermal runaway (abort past --max-temp)")
def test_thermal_runaway(start_sim, ready, tmp_path):
    # The hot profile starts at 63 C; throttled to its full duty, a decode load holds it near 68 C
    # (ambient 52 + 9 C/W x about 1.8 W), so the limit sits below that, where the load must take it.
    info = start_sim(profile="hot")
    process, run_dir = long_run(info.serial, tmp_path, 1, "--allow", "thermal", "--max-temp", "66")
    payload = finished(process)
    assert "thermal runaway" in payload["reason"] and "66.0 C" in payload["reason"], payload["reason"]
    nothing_lost(payload, 1)
    temps = load_run(run_dir).samples
    assert (temps[(temps["source"] == "thermal") & (temps["unit"] == "C")]["value"] > 66).any()
    assert leftovers(info.serial) == []


@pytest.mark.fault("battery falls below the threshold mid-run")
def test_battery_below_threshold(start_sim, ready, tmp_path):
    # A small battery that drains fast under load: 28% at the start, under 25% within seconds of decode.
    info = start_sim(unplugged=True, settings=("battery.level_pct=28", "battery.capacity_mah=30"))
    process, _ = long_run(info.serial, tmp_path, 1)
    payload = finished(process)
    assert "battery fell to" in payload["reason"] and "below the 25%" in payload["reason"], payload["reason"]
    nothing_lost(payload, 1)
    assert leftovers(info.serial) == []


@pytest.mark.fault("adb server restart mid-run")
def test_adb_server_restart(start_sim, ready, adb_server, tmp_path):
    def restart(info, _):
        subprocess.run([adb.adb_binary(), "-P", str(adb_server), "kill-server"], capture_output=True, timeout=30)

    payload = fault_mid_run(start_sim, tmp_path, restart)  # bench starts the server again and reconnects to clean up
    reason = payload["reason"]
    assert payload["status"] == "partial" and "llama-server" in reason, reason
    assert "not found" in reason or "the device stopped answering" in reason or "offline" in reason, reason


@pytest.mark.fault("two runs on one device")
def test_two_runs_on_one_device(start_sim, ready, tmp_path):
    info = start_sim()
    first, _ = long_run(info.serial, tmp_path / "a", 1)
    second = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "b"))
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(lines) == 1 and "is in use by run" in lines[0], second.stderr
    assert not (tmp_path / "b").exists()
    assert first.poll() is None  # the first run's server was left alone
    listed = json.loads(bench_cli("devices", "--json").stdout)["devices"]
    assert "pid" in next(d for d in listed if d["serial"] == info.serial)["in_use_by"]
    rows_before = len(list((tmp_path / "a" / "r").glob("*/requests.csv"))[0].read_text().splitlines())
    first.send_signal(signal.SIGINT)
    payload = finished(first, 130)
    nothing_lost(payload, rows_before - 2)
    assert leftovers(info.serial) == []


@pytest.mark.fault("bench killed outright: the next run takes over its lock")
def test_stale_lock_of_a_killed_run_is_taken_over(start_sim, ready, tmp_path):
    info = start_sim()
    first, run_dir = long_run(info.serial, tmp_path / "a", 1)
    first.kill()  # SIGKILL: no cleanup at all; its adb streams close with it
    first.communicate(timeout=30)
    assert load_run(run_dir).run["status"] == "failed"  # shown failed: its process is gone
    assert f"lock {LOCK_DIR}" in leftovers(info.serial)  # its lock is still there, stale
    result = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "b"), "--repetitions", "1",
                       "--no-telemetry", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    assert any("took over a stale device lock" in w for w in run["warnings"]), run["warnings"]
    assert leftovers(info.serial) == []
