"""The emulated phone behind the real adb server: protocol, sandbox, physics, clean stop."""

import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bench.android import adb
from bench.sim.physics import namespace_members
from conftest import bench_cli

FIXTURES = Path(__file__).resolve().parent / "data" / "android"


def _adb_devices(binary: str, port: int) -> str:
    return subprocess.run([binary, "-P", str(port), "devices", "-l"], capture_output=True, text=True, timeout=30).stdout


def test_adb_devices_shows_the_profile(sim, adb_server):
    listing = _adb_devices(adb.adb_binary(), adb_server)
    line = next(l for l in listing.splitlines() if l.startswith(sim.serial))
    assert " device " in line and "model:Bench_Sim" in line and "device:benchsim" in line


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is not installed (.ci/run installs it)")
def test_debian_adb_29_drives_it_too(sim, adb_server):
    debian = shutil.which("adb")
    assert "Version 29" in subprocess.run([debian, "version"], capture_output=True, text=True).stdout
    result = subprocess.run([debian, "-P", str(adb_server), "-s", sim.serial, "shell", "getprop ro.product.model; exit 4"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "Bench Sim" and result.returncode == 4


def test_shell_exit_codes_stderr_and_android_paths(sim):
    device = adb.Device(sim.serial)
    result = device.shell("echo out; echo err >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert device.shell("test -d /data/local/tmp && test -x /system/bin/getprop && echo yes").stdout == "yes\n"
    assert device.shell("ls /root 2>/dev/null; ls /work 2>/dev/null; echo done").stdout == "done\n"  # host is hidden
    assert device.shell("touch /usr/bench-probe").returncode != 0  # host folders are read-only
    assert int(device.shell("cat /sys/class/thermal/thermal_zone0/temp").stdout) > 10000
    assert device.shell("getprop ro.product.model").stdout == "Bench Sim\n"


def test_push_and_pull_100_mb_byte_identical(sim, tmp_path):
    import adbutils

    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(100 * 1024 * 1024))
    device = adbutils.AdbClient(port=int(os.environ["ANDROID_ADB_SERVER_PORT"])).device(sim.serial)
    device.sync.push(str(payload), "/data/local/tmp/payload.bin")
    back = tmp_path / "back.bin"
    device.sync.pull("/data/local/tmp/payload.bin", str(back))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert adb.Device(sim.serial).shell("sha256sum /data/local/tmp/payload.bin").stdout.split()[0] == digest
    assert device.sync.stat("/data/local/tmp/payload.bin").size == payload.stat().st_size
    with pytest.raises(adbutils.AdbError):
        device.sync.read_bytes("/data/local/tmp/missing.bin")  # RECV of a missing file answers FAIL


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3 to serve from the sandbox")
def test_forward_to_a_server_inside_the_sandbox(sim):
    device = adb.Device(sim.serial)
    remote = 18080 + os.getpid() % 1000
    stream = device.open_shell_stream(f"cd /data/local/tmp && exec /usr/bin/python3 -m http.server {remote} --bind 127.0.0.1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    try:
        device.forward(local, remote)
        deadline = time.time() + 20
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        assert b"Directory listing" in body
    finally:
        device.forward_remove(local)
        stream.close()
    assert all(l != f"tcp:{local}" for l, _ in device.forwards())


def test_replay_answers_verbatim_and_names_what_it_simulates(start_sim, tmp_path):
    replay = tmp_path / "capture"
    replay.mkdir()
    battery = (FIXTURES / "dumpsys-battery_samsung-oneui_zebrunner-mcloud-device-150.txt").read_text()
    (replay / "dumpsys_battery.txt").write_text(battery)
    thermal = (FIXTURES / "dumpsys-thermalservice_pixel-tensor-gs101-class_thermalhal2_skia-buildbot.txt").read_text()
    (replay / "dumpsys_thermalservice.txt").write_text(thermal)
    (replay / "sys/class/power_supply/battery").mkdir(parents=True)
    (replay / "sys/class/power_supply/battery/current_now").write_text("-268750\n")
    info = start_sim(replay=replay)
    assert set(info.replay_missing) == {"getprop.txt", "proc_meminfo.txt"}
    device = adb.Device(info.serial)
    assert device.shell("dumpsys battery").stdout == battery
    assert device.shell("dumpsys thermalservice").stdout == thermal
    assert device.shell("cat /sys/class/power_supply/battery/current_now").stdout == "-268750\n"
    assert device.shell("getprop ro.product.model").stdout == "Bench Sim\n"  # still simulated


def _temp_c(device) -> float:
    return int(device.shell("cat /sys/class/thermal/thermal_zone0/temp").stdout) / 1000


def test_temperature_rises_under_load_and_falls_after(sim):
    device = adb.Device(sim.serial)
    time.sleep(1)
    before = _temp_c(device)
    burner = device.open_shell_stream("i=0; while [ $i -lt 100000000 ]; do i=$((i+1)); done")
    time.sleep(10)
    hot = _temp_c(device)
    burner.close()
    assert hot > before + 1.5, (before, hot)
    time.sleep(10)
    assert _temp_c(device) < hot - 1.0
    status = device.shell("dumpsys thermalservice").stdout
    assert "Current temperatures from HAL:" in status and "Thermal Status: 0" in status


def _loop_seconds(device, iterations: int = 150000) -> float:
    started = time.perf_counter()
    device.shell(f"i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done", timeout=120)
    return time.perf_counter() - started


def test_throttling_makes_cpu_bound_work_slower(start_sim):
    cool = start_sim(profile="default")
    cool_time = min(_loop_seconds(adb.Device(cool.serial)) for _ in range(2))
    hot = start_sim(profile="hot")
    device = adb.Device(hot.serial)
    time.sleep(0.5)
    hot_time = min(_loop_seconds(device) for _ in range(2))
    assert hot_time > cool_time * 1.3, (cool_time, hot_time)
    thermal = device.shell("dumpsys thermalservice").stdout
    assert "Thermal Status: 0" not in thermal
    max_khz = int(device.shell("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq").stdout)
    assert max_khz < int(device.shell("cat /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").stdout)


def test_battery_commands_fake_the_state_but_not_the_current(sim):
    device = adb.Device(sim.serial)
    assert "USB powered: true" in device.shell("dumpsys battery").stdout
    device.shell("dumpsys battery unplug")
    faked = device.shell("dumpsys battery").stdout
    assert "USB powered: false" in faked and "AC powered: false" in faked
    time.sleep(0.5)
    assert int(device.shell("cat /sys/class/power_supply/battery/current_now").stdout) > -10**6  # still on USB
    device.shell("dumpsys battery set level 42")
    assert "level: 42" in device.shell("dumpsys battery").stdout
    device.shell("dumpsys battery reset")
    assert "USB powered: true" in device.shell("dumpsys battery").stdout


def test_stop_leaves_no_process_port_or_device(start_sim, adb_server):
    info = start_sim()
    device = adb.Device(info.serial)
    sleepers = device.open_shell_stream("sleep 1000 & sleep 1000; wait")  # kept open: adbd ends a closed shell
    time.sleep(0.5)
    sim_data = __import__("json").loads((info.state_dir / "sim.json").read_text())
    mount_ns = os.readlink(f"/proc/{sim_data['holder_pid']}/ns/mnt")
    commands = []
    for pid in namespace_members(mount_ns, set()):
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:  # a process that ended between the listing and the read
            continue
    assert sum(command.startswith(b"sleep\x001000") for command in commands) == 2  # the phone's processes, by host PID
    result = bench_cli("sim", "stop", "--name", info.name)
    assert result.returncode == 0 and "stopped" in result.stdout
    time.sleep(0.3)
    assert not namespace_members(mount_ns, set())
    for pid in (info.pid, sim_data["holder_pid"]):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", info.port))  # the port is free again
    assert info.serial not in _adb_devices(adb.adb_binary(), adb_server)
    assert not Path(sim_data["root"]).exists()
    sleepers.close()


def test_cli_bad_input(start_sim, adb_server, tmp_path):
    info = start_sim()
    same_name = bench_cli("sim", "start", "--name", info.name)
    assert same_name.returncode == 2 and "already running" in same_name.stderr
    busy = bench_cli("sim", "start", "--name", "other", "--port", str(info.port))
    assert busy.returncode == 2 and f"port {info.port}" in busy.stderr
    scanned = bench_cli("sim", "start", "--name", "other", "--port", "5557")
    assert scanned.returncode == 2 and "5555-5585" in scanned.stderr
    missing = bench_cli("sim", "start", "--name", "other", "--replay", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    for result in (same_name, busy, scanned, missing):
        assert len([l for l in result.stderr.splitlines() if l.strip()]) == 1
    nothing = bench_cli("sim", "stop", "--name", "never-started")
    assert nothing.returncode == 0 and "no sim" in nothing.stdout


def test_stdin_reaches_the_shell_through_both_adbs(sim, adb_server):
    for binary in filter(None, (adb.adb_binary(), shutil.which("adb"))):
        result = subprocess.run([binary, "-P", str(adb_server), "-s", sim.serial, "shell", "cat; echo done"],
                                input="line one\nline two\n", capture_output=True, text=True, timeout=30)
        assert result.stdout == "line one\nline two\ndone\n", (binary, result)


def test_a_free_port_taken_before_the_sim_binds_it_moves_the_sim_to_the_next(start_sim, monkeypatch):
    """Two sims started at one moment (two test workers, two lab scripts) can both find the same
    port free; the one that binds second must not fail."""
    from bench.sim import control

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        # the race, replayed: the check says the port is free, and another process holds it
        monkeypatch.setattr(control, "FIRST_PORT", taken)
        real_check = control._port_free
        monkeypatch.setattr(control, "_port_free", lambda port: port == taken or real_check(port))
        info = start_sim(port=None)  # an automatic port, not the test worker's own
        assert info.port > taken
        # a port the user named is not moved: the start fails and says which
        with pytest.raises(control.SimError, match=f"port {taken} was taken"):
            start_sim(name=f"asked-{os.getpid()}", port=taken)


def test_each_sim_has_its_own_process_table(start_sim):
    """A phone's `ps -A` shows the phone: two sims on one host do not see each other's processes,
    and a process whose parent exits is reaped (not a zombie that `kill -0` calls alive)."""
    first, second = adb.Device(start_sim().serial), adb.Device(start_sim().serial)
    stream = first.open_shell_stream("exec sleep 1000")  # kept open: adbd ends a closed shell's processes
    try:
        deadline = time.monotonic() + 10
        while "sleep 1000" not in first.shell("ps -A -o args").stdout:
            assert time.monotonic() < deadline, "the sleeper never showed in its own sim's ps"
            time.sleep(0.1)
        assert "sleep 1000" not in second.shell("ps -A -o args").stdout
        assert first.shell("ps -o pid= -p 1").stdout.strip() == "1"  # the phone's own PID 1
        orphan = first.shell("sh -c 'sleep 0.2 & echo $!'").stdout.strip()  # its parent exits at once
        time.sleep(1.5)
        assert first.shell(f"kill -0 {orphan} 2>/dev/null && echo alive").stdout.strip() == ""
    finally:
        stream.close()


def test_a_host_that_cannot_give_a_sim_its_own_process_table_still_runs_it(start_sim):
    """Played with emulation.pid_namespace=false (as where a container's /proc is masked): the sim
    shares the host's process table, says so in sim.json, and its shell and stop still work."""
    import json

    shared, own = start_sim(settings=["emulation.pid_namespace=false"]), start_sim()
    assert json.loads((shared.state_dir / "sim.json").read_text())["pid_namespace"] is False
    assert json.loads((own.state_dir / "sim.json").read_text())["pid_namespace"] is True
    listed = adb.Device(shared.serial).shell("ps -A -o pid").stdout.split()
    assert str(shared.pid) in listed  # the host's table: the sim's own server shows
    assert str(shared.pid) not in adb.Device(own.serial).shell("ps -A -o pid").stdout.split()
