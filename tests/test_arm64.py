"""A real arm64 runtime on the emulated phone: llama.cpp cross-built for aarch64 (`bench runtime
build --target linux-arm64`), pushed like any runtime, run under qemu-user that the sim registers
in its own user namespace. Tiny shapes: qemu is about 30x slower than native."""

import json
from pathlib import Path

import pytest

from bench.android import adb
from bench.store import load_run
from conftest import bench_cli

pytestmark = pytest.mark.slow
TINY = 'name = "tiny"\nrepetitions = 1\nwarmup = 0\nn_predict = 8\nn_ctx = 256\nprompts = ["Hi."]\n'


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_arm64_build_is_aarch64_and_static(arm64_runtime):
    meta = json.loads((arm64_runtime / "runtime.json").read_text())
    assert meta["target"] == "linux-arm64" and meta["abi"] == "arm64-v8a"
    assert "-DCMAKE_EXE_LINKER_FLAGS=-static" in meta["cmake_flags"]
    assert any(flag.startswith("-DGGML_CPU_ARM_ARCH=") and "i8mm" in flag for flag in meta["cmake_flags"])


def test_arm64_sim_runs_the_arm64_llama_server(start_sim, arm64_runtime, smollm2_path, tmp_path):
    info = start_sim(profile="arm64")
    device = adb.Device(info.serial)
    assert device.shell("getprop ro.product.cpu.abi").stdout.strip() == "arm64-v8a"
    result = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path),
                       "--json", "--telemetry-hz", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    data = load_run(payload["run_dir"])
    assert data.run["device"]["abi"] == "arm64-v8a" and data.run["runtime"]["runtime_target"] == "linux-arm64"
    assert payload["summary"]["decode_tps_median"] > 0 and (data.requests["gen_tokens"] == 8).all()
    # aarch64 kernels (i8mm, repacked weights) against the x86 CPU reference: honest differences pass
    assert data.run["correctness"]["verdict"] == "pass", data.run["correctness"]
    assert "/data/local/tmp/bench/" not in device.shell("ps -A -o args").stdout  # nothing of ours runs


def test_a_phone_without_i8mm_gets_the_dotprod_variant_and_completes(start_sim, dotprod_runtime, smollm2_path, tmp_path):
    info = start_sim(profile="arm64", settings=("emulation.qemu_cpu=cortex-a76",))  # dotprod, no i8mm
    result = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path),
                       "--json", "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    run = load_run(payload["run_dir"]).run
    assert "asimddp" in run["device"]["extra"]["cpu_features"] and "i8mm" not in run["device"]["extra"]["cpu_features"]
    assert run["runtime"]["arm_arch"] == "armv8.2-a+dotprod" and run["runtime"]["cpu_features_required"] == ["asimddp"]
    assert run["runtime"]["runtime_variant"] == "dotprod"
    assert run["correctness"]["verdict"] == "pass", run["correctness"]
    assert payload["summary"]["decode_tps_median"] > 0


def test_an_i8mm_runtime_is_refused_on_a_phone_without_i8mm(start_sim, arm64_runtime, smollm2_path, tmp_path):
    info = start_sim(profile="arm64", settings=("emulation.qemu_cpu=cortex-a76",))
    refused = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out",
                        str(tmp_path / "refused"), "--runtime", str(arm64_runtime))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "needs CPU feature" in lines[0] and "i8mm" in lines[0] and "--arm-arch armv8.2-a+dotprod" in lines[0], lines[0]
    assert not (tmp_path / "refused").exists()
    # forced past the check, it dies as it would on such a phone: SIGILL, an instruction this CPU lacks
    forced = bench_cli("run", "--device", info.serial, "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path),
                       "--runtime", str(arm64_runtime), "--allow", "cpu_features", "--json", "--no-telemetry")
    assert forced.returncode == 3, forced.stderr[-3000:]
    reason = json.loads(forced.stdout)["reason"]
    assert "signal 4" in reason, reason
