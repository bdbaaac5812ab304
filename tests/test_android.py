"""The Android path for real: the emulated phone behind the real adb server, the real
llama-server built by `bench runtime build --target host`, and SmolLM2 from PyPI."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from bench.android import adb
from bench.android.device import ROOT, AndroidTarget
from bench.catalog import cache_root
from bench.sim import control
from bench.store import load_run
from conftest import bench_cli, long_run, write_gguf

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parent / "data" / "android"


@pytest.fixture
def phone(start_sim, host_runtime, smollm2_path):
    return start_sim()


def _run(serial: str, out: Path, *args: str) -> dict:
    result = bench_cli("run", "--device", serial, "--out", str(out), "--json", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _samples(run_dir: str):
    data = load_run(run_dir)
    return data, {(s, n) for s, n in zip(data.samples["source"], data.samples["name"])}


def test_quick_run_on_the_sim_then_cached_push(phone, tmp_path):
    first = _run("sim", tmp_path, "--repetitions", "2")
    assert first["status"] == "complete"
    data, kinds = _samples(first["run_dir"])
    assert data.run["device"]["kind"] == "android" and data.run["device"]["profile"] == "sim"
    assert data.run["runtime"]["kind"] == "llama-server" and data.run["runtime"]["llama_cpp_commit"] == "0c1e57098"
    measured = data.requests[data.requests["warmup"] == False]  # noqa: E712
    assert (measured["gen_tokens"] == 64).all() and (measured["decode_tps"] > 0).all() and (measured["prefill_tps"] > 0).all()
    # the one decode definition, as on the host: (generated - 1) / first-to-last token time
    expected = (measured["gen_tokens"] - 1) / measured["decode_ms"] * 1000
    assert ((measured["decode_tps"] - expected).abs() < 1e-6 * expected).all()
    assert data.run["runtime"]["repack"] is True and data.run["runtime"]["repack_reason"]
    assert "lock-holder.sh" in adb.Device(phone.serial).shell(f"ls {ROOT}/run").stdout
    for expected in (("thermal", "BIG"), ("battery", "current"), ("battery", "power"), ("battery", "level"),
                     ("cpu", "freq_cpu0"), ("process", "rss"), ("process", "peak_rss"), ("thermal", "status"),
                     ("process", "pss"), ("battery", "plugged")):
        assert expected in kinds, expected
    rss = data.samples[(data.samples["source"] == "process") & (data.samples["name"] == "rss")]["value"]
    assert rss.max() > 50 * 2**20  # llama-server holding a 94 MiB model
    # where the memory goes, from llama-server's own log on the phone: its KV cache is the one the
    # preflight counted from the model's shapes, to the byte
    memory = data.run["memory"]
    assert memory["reported"] and memory["kv_cache_bytes"] == data.run["kv_cache"]["bytes_all_slots"]
    assert memory["weights_bytes"] > 90 * 2**20 and memory["compute_bytes"] > 0
    summary = first["summary"]
    assert 0 < summary["peak_pss_bytes"] <= summary["peak_rss_bytes"]
    assert summary["bytes_pushed"] > 98_000_000
    assert summary["validity"]["charging"] is True  # a sim on USB, like a phone on a cable
    assert summary["energy"]["valid"] is False and "charging" in summary["energy"]["reason"]
    assert (Path(first["run_dir"]) / "plots" / "power.png").is_file()
    from test_trace import validate

    trace = json.loads((Path(first["run_dir"]) / "trace.json").read_text())
    assert validate(trace) == [] and any(e["ph"] == "C" and e["name"] == "temperature (C)" for e in trace["traceEvents"])
    assert "Invalid:" in (Path(first["run_dir"]) / "report.md").read_text()

    second = _run("sim", tmp_path, "--repetitions", "2")
    assert second["status"] == "complete" and second["summary"]["bytes_pushed"] == 0
    pushed = load_run(second["run_dir"]).run["pushed"]
    assert pushed["model"]["cached"] and pushed["runtime"]["cached"]
    device = adb.Device(phone.serial)
    assert f"{ROOT}/" not in device.shell("ps -A -o args").stdout  # nothing of ours left running
    assert not device.forwards()


def test_unplugged_sim_gives_valid_energy(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim(unplugged=True)
    result = _run(info.serial, tmp_path, "--repetitions", "2")
    energy = result["summary"]["energy"]
    assert result["summary"]["validity"]["charging"] is False
    assert energy["valid"] and energy["j_per_token"] > 0 and energy["mah_per_1k_tokens"] > 0


def test_sustained_on_a_hot_sim_is_flagged_throttled_with_cooldown_waits(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim(profile="hot")
    scenario = tmp_path / "soak.toml"
    scenario.write_text('name = "hot-soak"\nrepetitions = 3\nwarmup = 0\nn_predict = 16\nduration_s = 6\nidle_s = 1\n'
                        'prompts = ["Tell me about lighthouses."]\n[cooldown]\nmode = "temperature"\nmax_wait_s = 1.5\npoll_s = 0.5\n')
    result = bench_cli("run", "--device", info.serial, "--out", str(tmp_path), "--scenario", str(scenario), "--json",
                       "--allow", "thermal")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    assert payload["summary"]["validity"]["throttled"] is True
    assert len(payload["summary"]["cooldown_waits_s"]) >= 2 and min(payload["summary"]["cooldown_waits_s"]) > 1
    data = load_run(payload["run_dir"])
    assert any(e["kind"] == "cooldown" and not e.get("reached") for e in data.events)
    assert "decode_tps_drift" in payload["summary"]
    assert "throttled | yes" in (Path(payload["run_dir"]) / "report.md").read_text()


def test_hot_sim_fails_the_thermal_preflight(start_sim, host_runtime, tmp_path):
    info = start_sim(profile="hot")
    result = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "preflight 'thermal'" in result.stderr and "--allow thermal" in result.stderr
    assert not (tmp_path / "r").exists()


def test_devices_json_on_a_replayed_capture(start_sim, tmp_path):
    replay = tmp_path / "capture"
    replay.mkdir()
    (replay / "dumpsys_battery.txt").write_text((FIXTURES / "dumpsys-battery_samsung-oneui_zebrunner-mcloud-device-150.txt").read_text())
    (replay / "dumpsys_thermalservice.txt").write_text(
        (FIXTURES / "dumpsys-thermalservice_pixel-tensor-gs101-class_thermalhal2_skia-buildbot.txt").read_text())
    info = start_sim(replay=replay)
    result = bench_cli("devices", "--json")
    assert result.returncode == 0, result.stderr
    entry = next(d for d in json.loads(result.stdout)["devices"] if d["serial"] == info.serial)
    battery, thermal = entry["battery"], entry["thermal"]
    assert (battery["level_pct"], battery["status"], battery["plugged"]) == (100.0, "full", "usb")
    assert battery["temperature_c"] == 30.9 and battery["voltage_v"] == 4.312 and battery["charge_counter_uah"] == 2967000
    sensors = {s["name"]: s for s in thermal["sensors"]}
    assert thermal["status"] == 0 and sensors["TPU"]["celsius"] == 25.000002 and "soft_ocp_gpu" not in sensors
    assert entry["profile"] == "sim" and entry["model"] == "Bench Sim"


def test_unauthorized_device_gets_one_line_with_the_fix(start_sim, tmp_path):
    info = start_sim(unauthorized=True)
    result = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "r"))
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "unauthorized" in lines[0] and "Allow USB debugging" in lines[0]
    assert not (tmp_path / "r").exists()
    listed = json.loads(bench_cli("devices", "--json").stdout)["devices"]
    assert any(d["serial"] == info.serial and d["state"] == "unauthorized" and d["fix"] for d in listed)


def test_model_larger_than_device_ram_fails_before_any_push(start_sim, host_runtime, tmp_path):
    replay = tmp_path / "capture"
    replay.mkdir()
    (replay / "proc_meminfo.txt").write_text((FIXTURES / "proc-meminfo_device-unknown-arm64-3GB_aosp-libmeminfo-test.txt").read_text())
    info = start_sim(replay=replay)
    big = write_gguf(tmp_path / "big.gguf", {"general.architecture": "llama", "general.file_type": 1},
                     [("w", [1024, 1024, 1600], 1)], sparse=True)  # 3.2 GB of f16
    result = bench_cli("run", "--device", info.serial, "--model", str(big), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "preflight 'memory'" in result.stderr and "MemAvailable 2487 MiB" in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()
    assert adb.Device(info.serial).shell(f"ls {ROOT}/models 2>/dev/null | wc -l").stdout.strip() in ("", "0")


def test_hostile_prompt_reaches_the_model_verbatim_and_runs_nothing(phone, tmp_path):
    import llama_cpp

    prompt = ("He said \"hi\" and 'bye'; touch /data/local/tmp/pwned1\n$(touch /data/local/tmp/pwned2) "
              "`touch /data/local/tmp/pwned3` && echo $HOME | sh\n\\n %s {} ;;")
    scenario = tmp_path / "hostile.toml"
    scenario.write_text("name = \"hostile\"\nrepetitions = 1\nwarmup = 0\nn_predict = 4\nidle_s = 1\nprompts = [" + json.dumps(prompt) + "]\n")
    result = _run(phone.serial, tmp_path, "--scenario", str(scenario), "--no-telemetry")
    requests = load_run(result["run_dir"]).requests
    llm = llama_cpp.Llama(model_path=str(Path(load_run(result["run_dir"]).run["model"]["path"])), vocab_only=True, verbose=False)
    assert int(requests["prompt_tokens"].iloc[0]) == len(llm.tokenize(prompt.encode(), add_bos=True))
    listing = adb.Device(phone.serial).shell("ls /data/local/tmp").stdout
    assert "pwned" not in listing


def _long_run_with_rows(serial: str, tmp_path: Path, rows: int) -> subprocess.Popen:
    return long_run(serial, tmp_path, rows)[0]


def test_device_disappearing_mid_run_keeps_rows_and_leaves_nothing(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim()
    process = _long_run_with_rows(info.serial, tmp_path, 3)
    control.stop(info)  # the phone goes away mid-run
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    payload = json.loads(stdout)
    assert payload["status"] == "partial"
    data = load_run(payload["run_dir"])
    assert data.run["status"] == "partial" and len(data.requests) >= 3
    assert (Path(payload["run_dir"]) / "report.md").is_file()
    # it comes back: nothing of ours runs there, and no forward of ours is left on the host
    back = start_sim(name=info.name, port=info.port)
    device = adb.Device(back.serial)
    assert f"{ROOT}/" not in device.shell("ps -A -o args").stdout
    assert not any(item for item in adb.client().forward_list() if item.serial == back.serial)


def test_stale_server_from_a_lost_run_is_killed_by_pid(phone):
    device = adb.Device(phone.serial)
    device.shell(f"mkdir -p {ROOT}/bin/stale {ROOT}/run && cp /usr/bin/sleep {ROOT}/bin/stale/llama-server", check=True)
    stream = device.open_shell_stream(f"{ROOT}/bin/stale/llama-server 600 & echo $! > {ROOT}/run/llama-server.pid; wait")
    time.sleep(0.5)
    pid = device.shell(f"cat {ROOT}/run/llama-server.pid").stdout.strip()
    assert device.shell(f"kill -0 {pid} && echo alive").stdout.strip() == "alive"
    target = AndroidTarget(phone.serial, None)
    assert target.stale_killed == int(pid)
    target.release()
    time.sleep(0.3)
    assert device.shell(f"kill -0 {pid} 2>/dev/null && echo alive").stdout.strip() == ""
    stream.close()


def test_capture_then_replay_round_trip(start_sim, tmp_path):
    source = start_sim()
    device = adb.Device(source.serial)
    device.shell("dumpsys battery set level 33")  # something the replay must carry over
    capture = tmp_path / "capture"
    result = bench_cli("capture", "--device", source.serial, str(capture))
    assert result.returncode == 0, result.stderr
    for name in ("getprop.txt", "dumpsys_battery.txt", "dumpsys_thermalservice.txt", "proc_meminfo.txt"):
        assert (capture / name).is_file(), name
    assert (capture / "sys/class/thermal/thermal_zone0/temp").is_file()
    assert (capture / "sys/class/power_supply/battery/uevent").is_file()
    replayed = start_sim(replay=capture)
    assert not replayed.replay_missing
    again = adb.Device(replayed.serial)
    assert again.shell("dumpsys battery").stdout == (capture / "dumpsys_battery.txt").read_text()
    assert "level: 33" in again.shell("dumpsys battery").stdout
    assert again.shell("cat /sys/class/thermal/thermal_zone0/temp").stdout == \
        (capture / "sys/class/thermal/thermal_zone0/temp").read_text()


def test_low_battery_fails_the_preflight_unless_allowed(start_sim, host_runtime, smollm2_path, tmp_path):
    replay = tmp_path / "capture"
    replay.mkdir()
    (replay / "dumpsys_battery.txt").write_text((FIXTURES / "dumpsys-battery_pixel-c-dragon_android7_syzkaller-79.txt")
                                                .read_text().split("\n", 1)[1])  # level 19, on AC
    info = start_sim(replay=replay)
    refused = bench_cli("run", "--device", info.serial, "--out", str(tmp_path / "r"))
    assert refused.returncode == 2 and "preflight 'battery' failed: battery at 19.0%" in refused.stderr
    assert not (tmp_path / "r").exists()
    allowed = _run(info.serial, tmp_path / "r", "--allow", "battery", "--repetitions", "1", "--no-telemetry")
    assert allowed["status"] == "complete"
    assert any("battery" in w for w in load_run(allowed["run_dir"]).run["warnings"])


def test_runtime_for_another_abi_fails_the_preflight(start_sim, smollm2_path, tmp_path):
    release = tmp_path / "llama-b9999-bin-android-arm64"
    (release / "bin").mkdir(parents=True)
    header = bytearray(64)
    header[:4], header[4], header[5], header[18:20] = b"\x7fELF", 2, 1, (0xB7).to_bytes(2, "little")  # aarch64
    (release / "bin" / "llama-server").write_bytes(bytes(header))
    info = start_sim()
    result = bench_cli("run", "--device", info.serial, "--runtime", str(release), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "preflight 'runtime' failed" in result.stderr
    assert "device ABI x86_64; runtime arm64-v8a" in result.stderr and not (tmp_path / "r").exists()


def test_two_matching_devices_is_an_error_listing_serials(start_sim, tmp_path):
    first, second = start_sim(), start_sim()
    result = bench_cli("run", "--device", "sim", "--out", str(tmp_path / "r"))
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "2 devices match 'sim'" in lines[0]
    assert first.serial in lines[0] and second.serial in lines[0] and "--device SERIAL" in lines[0]
    unknown = bench_cli("run", "--device", "pixle8", "--out", str(tmp_path / "r"))
    assert unknown.returncode == 2 and "pixel8" in unknown.stderr


def test_server_killed_mid_run_is_reported_with_signal_and_memory(phone, tmp_path):
    process = _long_run_with_rows(phone.serial, tmp_path, 2)
    device = adb.Device(phone.serial)
    pid = device.shell(f"cat {ROOT}/run/llama-server.pid").stdout.strip()
    assert pid.isdigit()
    device.shell(f"kill -9 {pid}")  # what the low-memory killer does
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    payload = json.loads(stdout)
    assert payload["status"] == "partial"
    assert "signal 9" in payload["reason"] and "MemAvailable" in payload["reason"], payload["reason"]
    assert not device.forwards() and f"{ROOT}/" not in device.shell("ps -A -o args").stdout


def test_power_rails_give_energy_per_rail_even_while_charging(phone, tmp_path):
    result = _run(phone.serial, tmp_path, "--repetitions", "2")
    summary = result["summary"]
    assert summary["validity"]["charging"] is True and summary["energy"]["valid"] is False  # battery: invalid on USB
    rails = summary["rail_energy"]
    assert rails["available"] and rails["valid_while_charging"] and rails["requests_covered"] == rails["requests"] == 2
    groups = rails["groups"]
    for group in ("cpu_big", "cpu_mid", "cpu_little", "memory", "total"):
        assert groups[group]["joules"] > 0 and groups[group]["watts"] > 0 and groups[group]["j_per_token"] > 0, group
    # the sim's CPU rails take most of the load: big > little under a decode
    assert groups["cpu_big"]["joules"] > groups["cpu_little"]["joules"]
    total = groups["total"]
    assert total["joules"] == pytest.approx(sum(c["joules"] for c in rails["channels"].values()))
    samples = load_run(result["run_dir"]).samples
    rail_rows = samples[samples["source"] == "rail"]
    assert (rail_rows["unit"] == "J").all() and rail_rows["name"].str.contains("CPU(BIG)", regex=False).any()
    report = (Path(result["run_dir"]) / "report.md").read_text()
    assert "Energy from power rails" in report and "stay valid while the phone charges" in report


def test_fixed_performance_is_on_for_the_run_and_off_after(phone, tmp_path):
    info = next(i for i in control.running(cache_root()) if i.serial == phone.serial)
    flag = info.state_dir / "root" / "sim" / "state" / "fixed_performance.txt"
    result = _run(phone.serial, tmp_path, "--repetitions", "1", "--fixed-performance")
    data = load_run(result["run_dir"])
    assert data.run["runtime"]["fixed_performance"] is True
    freqs = data.samples[(data.samples["source"] == "cpu") & (data.samples["name"] == "freq_cpu0")]["value"]
    assert freqs.nunique() <= 2 and freqs.max() <= 2800 * 0.6 + 1  # held at the sim's fixed level (MHz)
    assert any(e["message"] == "fixed performance mode off" for e in data.events)
    time.sleep(0.5)
    assert flag.read_text().strip() == "false"  # always turned off again
    host = bench_cli("run", "--fixed-performance", "--out", str(tmp_path / "h"))
    assert host.returncode == 2 and "needs a phone" in host.stderr


def test_sweep_over_cpu_sets_on_the_sim(phone, tmp_path):
    result = bench_cli("run", "--device", phone.serial, "--threads", "1", "--affinity", "0", "--affinity", "0-1",
                       "--repetitions", "1", "--no-telemetry", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    assert [p["affinity"] for p in payload["points"]] == [[0], [0, 1]]
    for point in payload["points"]:
        runtime = load_run(point["run_dir"]).run["runtime"]
        assert runtime["affinity"] == point["affinity"] and runtime["threads"] == 1
    assert "| 1 | 0-1 |" in (Path(payload["matrix_dir"]) / "matrix.md").read_text()
    device = adb.Device(phone.serial)
    assert f"{ROOT}/" not in device.shell("ps -A -o args").stdout and not device.forwards()


def test_llama_bench_on_the_device_with_telemetry(phone, tmp_path):
    scenario = tmp_path / "lb.toml"
    scenario.write_text('name = "lb"\nkind = "llama-bench"\npp = 64\ntg = 16\nrepetitions = 2\n')
    result = _run(phone.serial, tmp_path, "--scenario", str(scenario))
    data, kinds = _samples(result["run_dir"])
    runtime = data.run["runtime"]
    assert runtime["kind"] == "llama-bench" and "-o" in runtime["command"] and runtime["process_pid"]
    rows = data.requests
    assert len(rows) == 4 and set(rows["stop_reason"]) == {"llama-bench"}
    assert (rows[rows["step"] == 0]["prefill_tps"] > 0).all() and (rows[rows["step"] == 1]["decode_tps"] > 0).all()
    assert ("process", "rss") in kinds and ("thermal", "BIG") in kinds  # the same telemetry as the server path
    assert result["summary"]["decode_tps_median"] > 0 and result["summary"]["prefill_tps_median"] > 0
    assert "keep llama-bench's own definition" in (Path(result["run_dir"]) / "report.md").read_text()
    correctness = data.run["correctness"]  # scored by llama-server of the same build, pushed after llama-bench
    assert correctness["verdict"] == "pass" and correctness["runtime"].startswith("llama-server"), correctness
    assert data.run["pushed"]["scoring_runtime"]["path"].endswith("/llama-server")
    device = adb.Device(phone.serial)
    assert f"{ROOT}/" not in device.shell("ps -A -o args").stdout and not device.forwards()
