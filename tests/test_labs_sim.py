"""Issue 13 on the emulated phone, as real labs and phones differ from the default sim: an adb server
whose loopback is not ours, an adb client that asks what a phone answers (reverse, logcat, log,
/sdcard), older and newer power meters, a run killed in fixed performance mode, and two runs racing
for a stale lock."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.android import adb
from bench.android.lock import LOCK_DIR, DeviceBusy, DeviceLock, LockOwner
from bench.sim import control
from bench.store import load_run
from conftest import REPO, bench_cli, long_run
from netns_lab import relay

TINY = 'name = "tiny"\nrepetitions = 2\nwarmup = 0\nn_predict = 12\nidle_s = 1\nprompts = ["Hello there."]\n[cooldown]\nmode = "none"\n'


def _scenario(tmp_path: Path, n_predict: int = 12) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("n_predict = 12", f"n_predict = {n_predict}"))
    return path


# -- the emulated phone answers adb clients as a phone does -----------------------------------------

def test_adb_reverse_carries_a_device_connection_to_the_host(sim):
    device = adb.client().device(sim.serial)
    with socket.socket() as host_side:
        host_side.bind(("127.0.0.1", 0))
        host_side.listen(1)
        host_port = host_side.getsockname()[1]

        def answer():
            client, _ = host_side.accept()
            with client:
                client.sendall(b"pong:" + client.recv(100))

        threading.Thread(target=answer, daemon=True).start()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            device_port = probe.getsockname()[1]
        device.reverse(f"tcp:{device_port}", f"tcp:{host_port}")
        assert (f"tcp:{device_port}", f"tcp:{host_port}") in [(r.remote, r.local) for r in device.reverse_list()]
        # a program on the phone connects to its own loopback; adbd carries it to the host's port
        client = ("import socket; s = socket.create_connection(('127.0.0.1', %d), timeout=10); s.sendall(b'ping'); "
                  "print(s.recv(100).decode())" % device_port)
        out = adb.Device(sim.serial).shell(f"python3 -c \"{client}\"", timeout=30)
        assert out.stdout.strip() == "pong:ping", out
        device.reverse_remove(f"tcp:{device_port}")
        assert device.reverse_list() == []


def test_logcat_follows_until_stopped_and_log_writes_to_it(sim):
    phone = adb.Device(sim.serial)
    assert phone.shell("logcat -c").returncode == 0
    assert phone.shell("logcat -d -v threadtime").stdout == ""
    stream = phone.open_shell_stream("logcat -v threadtime")
    try:
        phone.shell("log -p w -t benchtest 'hello from the phone'")
        seen, deadline = b"", time.monotonic() + 15
        stream.connection.conn.settimeout(15)
        while b"benchtest: hello from the phone" not in seen and time.monotonic() < deadline:
            chunk = stream.read_stdout()
            assert chunk is not None, "logcat exited instead of following"
            seen += chunk
        assert b" W benchtest: hello from the phone" in seen
    finally:
        stream.close()
    assert "benchtest" in phone.shell("logcat -d").stdout and "benchtest" in phone.shell("logcat -t 5").stdout


def test_shared_storage_and_the_shell_look_like_androids(sim, tmp_path):
    phone = adb.Device(sim.serial)
    assert phone.shell("echo $0").stdout.strip() == "/system/bin/sh"
    note = tmp_path / "note.txt"
    note.write_text("on the sdcard\n")
    phone.push(note, "/sdcard/note.txt", mode=0o644)
    assert phone.shell("cat /storage/emulated/0/note.txt").stdout == "on the sdcard\n"
    assert phone.shell("cd /sdcard && ls").stdout.split() == ["note.txt"]


# -- the device lock's takeover race ------------------------------------------------------------------

def _owner(phone: adb.Device) -> LockOwner | None:
    return LockOwner.from_json(phone.shell(f"cat {LOCK_DIR}/owner.json 2>/dev/null").stdout)


def _holders(phone: adb.Device, token: str) -> list[str]:
    return [line for line in phone.shell("ps -A -o args").stdout.splitlines() if token in line]


def test_two_runs_that_found_one_stale_lock_cannot_both_hold_the_phone(sim):
    phone = adb.Device(sim.serial)
    dead = DeviceLock(phone, "a run killed outright")
    dead.acquire()
    phone.shell(f"kill -9 {dead.holder_pid}")  # its adb session is gone: the lock is stale
    stale = _owner(phone)
    assert stale is not None and stale.token == dead.token
    first, second = DeviceLock(phone, "A"), DeviceLock(phone, "B")
    # Both read the stale owner. The worst interleaving: A removes the stale lock and takes a fresh
    # one before B acts on what it read.
    assert first.take_over(stale) is True
    assert first.acquire() is None and first.held
    assert second.take_over(stale) is False  # B's claim on that stale owner finds A's lock, not it
    assert _owner(phone).token == first.token
    with pytest.raises(DeviceBusy):
        second.acquire()
    assert _holders(phone, second.token) == []  # B's holder shell closed on the error path
    first.release()
    assert phone.shell(f"ls -d {LOCK_DIR}* 2>/dev/null").stdout.strip() == ""  # no claim dirs left either


# -- real runs on sims that differ from the default ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rails, source", [("plain", "dumpsys"), ("iio", "iio")])
def test_power_rails_from_an_older_hal_and_from_the_iio_meter(start_sim, host_runtime, smollm2_path, tmp_path,
                                                               rails, source):
    info = start_sim(settings=(f"power.rails={rails}",))
    # the sim's meter, like a HAL's, moves once a physics step (0.2 s): a request must outlast a few
    # of them for its energy, read by dumpsys right before and after it, to be more than 0 J
    result = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path, n_predict=96)),
                       "--out", str(tmp_path),
                       "--json", "--telemetry-hz", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    run = load_run(payload["run_dir"]).run
    assert run["telemetry"]["rail_source"] == source
    energy = payload["summary"]["rail_energy"]
    assert energy["available"] and energy["valid"], energy
    assert energy["requests_covered"] == energy["requests"] == 2
    assert energy["groups"]["cpu_big"]["joules"] > energy["groups"]["cpu_little"]["joules"] > 0
    assert "S2M_VDD_CPUCL2" in energy["channels"]  # the plain rail names, no [..]:Subsystem
    assert source in energy["source"] or "IPowerStats" in energy["source"]


@pytest.mark.slow
def test_fixed_performance_left_by_a_killed_run_is_turned_off(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim()
    phone = adb.Device(info.serial)
    mode = lambda: phone.shell("cat /sim/state/fixed_performance.txt").stdout.strip()  # noqa: E731
    first, _ = long_run(info.serial, tmp_path / "a", 1, "--fixed-performance")
    assert mode() == "true" and _owner(phone).fixed_performance
    first.kill()  # SIGKILL: bench cannot turn it off
    first.communicate(timeout=30)
    time.sleep(1)
    assert mode() == "true"
    result = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out",
                       str(tmp_path / "b"), "--json", "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = load_run(json.loads(result.stdout)["run_dir"]).run["warnings"]
    assert any("turned off fixed performance mode left on by" in w for w in warnings), warnings
    assert mode() == "false"

    second, _ = long_run(info.serial, tmp_path / "c", 1, "--fixed-performance")
    second.kill()
    second.communicate(timeout=30)
    time.sleep(1)
    reset = bench_cli("devices", "--reset", "--device", info.serial)
    assert reset.returncode == 0, reset.stderr
    assert "took over a stale device lock" in reset.stdout and "fixed performance mode" in reset.stdout, reset.stdout
    assert mode() == "false" and phone.shell(f"ls -d {LOCK_DIR} 2>/dev/null").stdout.strip() == ""


@pytest.mark.slow
def test_an_adb_server_on_a_lab_host_whose_loopback_is_not_ours(host_runtime, smollm2_path, tmp_path):
    """The adb server and the phone live in another network namespace; we reach the server only
    through a relay (local TCP port -> Unix socket -> the server), as a lab host is reached. An
    `adb forward` would listen on the lab's loopback, never ours: the run must not need one."""
    socket_path = tmp_path / "lab.sock"
    with socket.socket() as free:  # a port free on our loopback too: nothing of ours answers there
        free.bind(("127.0.0.1", 0))
        lab_port = free.getsockname()[1]
    prefix = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    lab = subprocess.Popen([*prefix, sys.executable, str(REPO / "tests" / "netns_lab.py"), str(socket_path),
                            str(tmp_path / "lab"), str(lab_port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = lab.stdout.readline()
        if not line:
            pytest.fail(f"the lab namespace did not start: {lab.stderr.read()[-2000:]}")
        serial, sim_port = json.loads(line)["serial"], json.loads(line)["sim_port"]
        with socket.socket() as probe:  # the lab's phone is not on our loopback
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.1", sim_port)) != 0
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        relay(listener, lambda: _unix(socket_path))
        server = f"127.0.0.1:{listener.getsockname()[1]}"

        devices = bench_cli("devices", "--adb-server", server, "--json")
        assert devices.returncode == 0, devices.stderr
        assert [d["serial"] for d in json.loads(devices.stdout)["devices"]] == [serial]
        result = bench_cli("run", "--adb-server", server, "--device", serial, "--scenario", str(_scenario(tmp_path)),
                           "--out", str(tmp_path / "r"), "--json", "--telemetry-hz", "5")
        assert result.returncode == 0, result.stderr[-3000:]
        payload = json.loads(result.stdout)
        assert payload["status"] == "complete" and payload["summary"]["decode_tps_median"] > 0
        data = load_run(payload["run_dir"])
        assert (data.requests["gen_tokens"] == 12).all() and (data.samples["source"] == "thermal").any()
        lab_client = adb.client(server=adb.parse_server(server))
        assert lab_client.forward_list() == []  # no forward was ever made
        phone = adb.Device(serial, server=adb.parse_server(server))
        assert "/data/local/tmp/bench/bin/" not in phone.shell("ps -A -o args").stdout
        assert phone.shell(f"ls -d {LOCK_DIR} 2>/dev/null").stdout.strip() == ""
        listener.close()
    finally:
        lab.stdin.close()
        try:
            lab.wait(timeout=60)
        except subprocess.TimeoutExpired:
            lab.kill()


def _unix(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(path))
    return connection


@pytest.mark.slow
def test_the_cooldown_gate_holds_before_llama_bench_starts(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim(profile="hot")  # throttled from the first second: the gate has to wait (and time out)
    scenario = tmp_path / "lb.toml"
    scenario.write_text('name = "lb"\nkind = "llama-bench"\npp = 16\ntg = 8\nrepetitions = 1\n'
                        '[cooldown]\nmode = "temperature"\nmax_wait_s = 2\npoll_s = 0.5\n')
    result = bench_cli("run", "--device", info.serial, "--scenario", str(scenario), "--out", str(tmp_path), "--json",
                       "--allow", "thermal", "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    gate = next(e for e in events if e["kind"] == "cooldown")
    first_test = next(e for e in events if "llama-bench test 0 done" in e.get("message", ""))
    started = next(e for e in events if e.get("message") == "llama-bench started")
    assert gate["t_s"] < first_test["t_s"] and "before repetition 0" in gate["message"] and gate["waited_s"] >= 2
    assert gate["t_s"] < started["t_s"]  # the gate holds before llama-bench starts, not while it runs


@pytest.mark.slow
def test_a_failed_rail_reading_is_a_warning_and_rails_go_on(start_sim, host_runtime, smollm2_path, tmp_path):
    from bench.sim import control

    info = start_sim()
    process, run_dir = long_run(info.serial, tmp_path, 1)
    control.inject(info, "rail-glitch", count=1)  # the next energy-meter dump fails
    deadline = time.monotonic() + 120
    while len((run_dir / "requests.csv").read_text().splitlines()) < 2 + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(2)  # SIGINT: the soak ends partial, as Ctrl-C would
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    data = load_run(run_dir)
    warnings = [w for w in data.run["warnings"] if "power-rail reading failed" in w]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    failed_at = next(e["t_s"] for e in events if "power-rail reading failed" in e.get("message", ""))
    rails = data.samples[data.samples["source"] == "rail"]
    assert (rails["t_s"] > failed_at).any(), "rails were turned off after one failed reading"
    assert rails.groupby("name").size().nunique() == 1  # every channel has the same readings
    energy = json.loads(stdout)["summary"]["rail_energy"]
    # the request whose closing reading failed is cut from the readings on either side of the gap
    assert energy["available"] and energy["requests_covered"] == energy["requests"] >= 4, energy
    assert warnings or any("power-rail" in e.get("message", "") for e in events)


@pytest.mark.slow
def test_a_device_port_already_taken_is_not_a_failed_run(start_sim, host_runtime, smollm2_path, tmp_path):
    """Found by the false-alarm benchmark: llama-server's port on the phone was picked at random and
    could be one another program (or an adb connection's ephemeral port) holds."""
    from bench.android.device import AndroidTarget, RuntimeBundle
    from bench.catalog import model_info
    from bench.config import resolve_scenario
    from bench.progress import NullProgress

    info = start_sim()
    with socket.socket() as taken, socket.socket() as free:  # the sim's loopback is ours
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        meta = json.loads((host_runtime / "runtime.json").read_text())
        target = AndroidTarget(info.serial, RuntimeBundle(host_runtime / "bin" / "llama-server", meta))
        target.device_ports = iter([taken.getsockname()[1], free_port])
        try:
            scenario, model = resolve_scenario(str(_scenario(tmp_path))), model_info("smollm2-135m")
            runtime = target.prepare(model, scenario, NullProgress())
            assert dict(runtime.facts().details)["device_port"] == free_port
            assert runtime.complete("Hi", n_predict=4, ignore_eos=True, keep_cache=False, temperature=0, seed=1).gen_tokens == 4
        finally:
            target.release()


@pytest.mark.slow
def test_fixed_performance_that_could_not_be_turned_off_keeps_its_record(start_sim, host_runtime, smollm2_path, tmp_path):
    """Issue 20.15: turning the mode off fails at the end of a run (a busy power HAL) but the lock
    release would succeed: the record must survive, so the next run turns the mode off."""
    info = start_sim()
    phone = adb.Device(info.serial)
    mode = lambda: phone.shell("cat /sim/state/fixed_performance.txt").stdout.strip()  # noqa: E731
    control.inject(info, "performance-stuck", count=2)  # the run's cleanup and its release both fail
    first = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out",
                      str(tmp_path / "a"), "--json", "--no-telemetry", "--fixed-performance")
    assert mode() == "true" and "Traceback" not in first.stderr, first.stderr[-2000:]
    owner = _owner(phone)
    assert owner is not None and owner.fixed_performance, "the record that the mode is on was lost"
    second = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out",
                       str(tmp_path / "b"), "--json", "--no-telemetry")
    assert second.returncode == 0, second.stderr[-3000:]
    warnings = load_run(json.loads(second.stdout)["run_dir"]).run["warnings"]
    assert any("turned off fixed performance mode left on by" in w for w in warnings), warnings
    assert mode() == "false" and phone.shell(f"ls -d {LOCK_DIR} 2>/dev/null").stdout.strip() == ""
