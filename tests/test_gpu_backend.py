"""GPU backends as runtime variants (issue 22 item 1): the Vulkan build (and the OpenCL and phone
variants' plans and prerequisites), `bench run --backend`, llama.cpp's device selection, and the
offload check that fails a run asked for a GPU that ran on the CPU. The host's Vulkan runs use Mesa's
lavapipe: the plumbing and the output, never a GPU speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import parse
from bench.compare import MATCH_KEYS, run_key
from bench.runtimes import build as builder
from bench.runtimes.llama_server import gpu_args, gpu_devices_problem
from bench.store import load_run
from conftest import assert_one_line_exit_2, bench_cli

LOGS = Path(__file__).parent / "data" / "llama-logs"
LAVAPIPE_LOG = LOGS / "host-x86-llama-server-lv4-vulkan-lavapipe_smollm2-135m-q4_1_vendored-0c1e57098.txt"
CPU_LOG = LOGS / "host-x86-llama-server-lv4_smollm2-135m-q4_1_bench-build-0c1e57098.txt"
NO_LAYERS_LOG = LOGS / "reconstructed_freebsd-vulkan-rtx2060-no-layers-offloaded_llama.cpp-11367.txt"
ADRENO_LOG = LOGS / "excerpt_android-termux-vulkan-adreno732_lfm2-8b_llama.cpp-16881.txt"
VISIBLE = {"GGML_VK_VISIBLE_DEVICES": "0"}  # lavapipe is a CPU-type device: ggml-vulkan skips it unless named


def _problem(log_path: Path, backend: str = "vulkan", layers: int | None = None, text: str | None = None) -> str | None:
    log = text if text is not None else log_path.read_text()
    return parse.parse_llama_offload(log).problem(backend, layers, parse.parse_llama_buffers(log))


def test_the_offload_check_passes_real_gpu_loads_and_names_each_way_a_gpu_run_ends_on_the_cpu():
    assert _problem(LAVAPIPE_LOG) is None  # 31/31 layers on lavapipe's Vulkan0
    # a phone's Adreno under Vulkan, the excerpt cut before its offload line: used, and not verifiable
    assert "cannot be verified" in _problem(ADRENO_LOG)
    cpu = _problem(CPU_LOG)                # a CPU build asked for Vulkan: nothing found
    assert cpu.startswith("llama.cpp loaded the model on the CPU: it found no vulkan device") and "GGML_VK_VISIBLE" in cpu
    # the RTX 2060 user's log: a device found, the model loaded on none, no layer offloaded
    assert _problem(NO_LAYERS_LOG).endswith("it found NVIDIA GeForce RTX 2060 and used none")
    none_offloaded = LAVAPIPE_LOG.read_text().replace("offloaded 31/31 layers", "offloaded 0/31 layers")
    assert _problem(LAVAPIPE_LOG, text=none_offloaded) == "llama.cpp offloaded 0 of 31 layers to Vulkan0, 31 were asked for"
    # every layer counted as offloaded, every weight in a CPU buffer
    host_weights = LAVAPIPE_LOG.read_text().replace("Vulkan0 model buffer size", "CPU model buffer size")
    assert _problem(LAVAPIPE_LOG, text=host_weights) == ("llama.cpp counted 31 layers as offloaded and kept every weight "
                                                         "in CPU buffers")
    fewer = LAVAPIPE_LOG.read_text().replace("offloaded 31/31 layers", "offloaded 5/31 layers")
    assert _problem(LAVAPIPE_LOG, text=fewer) == "llama.cpp offloaded 5 of 31 layers to Vulkan0, 31 were asked for"
    assert _problem(LAVAPIPE_LOG, layers=5, text=fewer) is None  # -ngl 5: five is all that was asked
    unverifiable = "\n".join(line for line in LAVAPIPE_LOG.read_text().splitlines() if "offloaded" not in line)
    assert "cannot be verified" in _problem(LAVAPIPE_LOG, text=unverifiable)


def test_software_vulkan_devices_are_told_from_gpus_by_name_and_driver():
    offload = parse.parse_llama_offload(LAVAPIPE_LOG.read_text()).as_record(None)
    assert offload["used"][0]["software"] is True  # "using device Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))"
    assert parse.software_device("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert parse.software_device("SwiftShader Device (Subzero)", "SwiftShader driver")
    assert not parse.software_device("Adreno (TM) 732", "Qualcomm Technologies Inc. Adreno Vulkan Driver")
    adreno = parse.parse_llama_offload(ADRENO_LOG.read_text()).as_record(None)
    assert not any(device["software"] for device in adreno["devices"] + adreno["used"])


def test_device_selection_and_the_listed_devices():
    assert gpu_args("cpu", None) == []  # the CPU path passes what it always did
    assert gpu_args("vulkan", None) == ["-dev", "Vulkan0", "-ngl", "all"]
    assert gpu_args("opencl", 12) == ["-dev", "GPUOpenCL", "-ngl", "12"]
    listed = parse.parse_device_list("Available devices:\n  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) (24032 MiB, 24032 MiB free)\n")
    assert listed == [("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)")]
    assert gpu_devices_problem("vulkan", listed) is None
    assert parse.parse_device_list("Available devices:\n  (none)\n") == []
    none = gpu_devices_problem("vulkan", [])
    assert none.startswith("llama.cpp's vulkan build lists no GPU device, not Vulkan0") and "GGML_VK_VISIBLE_DEVICES" in none


def test_compare_never_matches_a_gpu_run_with_a_cpu_run():
    assert "backend" in MATCH_KEYS
    cpu = {"runtime": {"kind": "llama-server"}}  # a run from before backends were recorded is a CPU run
    assert run_key(cpu)["backend"] == run_key({"runtime": {"kind": "llama-server", "backend": "cpu"}})["backend"]
    vulkan = run_key({"runtime": {"kind": "llama-server", "backend": "vulkan", "gpu_layers": "all"}})
    assert vulkan["backend"] == "vulkan/all" != run_key(cpu)["backend"]
    assert run_key({"runtime": {"backend": "vulkan", "gpu_layers": 10}})["backend"] != vulkan["backend"]


def _plan(*args: str):
    result = bench_cli("runtime", "build", *args, "--print-plan")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(builder.vulkan_headers() is None or shutil.which("glslc") is None,
                    reason="no Vulkan headers or glslc (./dev.sh test installs libvulkan-dev spirv-headers glslc)")
def test_the_vulkan_variant_is_its_own_build_and_the_cpu_build_is_unchanged():
    cpu, vulkan = _plan("--target", "host"), _plan("--target", "host", "--backend", "vulkan")
    assert "-DGGML_VULKAN=ON" in vulkan["cmake_flags"] and not any("VULKAN" in flag for flag in cpu["cmake_flags"])
    assert cpu["backend"] == "cpu" and vulkan["backend"] == "vulkan"
    assert "-host-vulkan-" in Path(vulkan["install_dir"]).name and "-host-" in Path(cpu["install_dir"]).name
    assert vulkan["cmake_flags"][: len(cpu["cmake_flags"])] == cpu["cmake_flags"]  # the same CPU backend beside it


@pytest.mark.skipif(builder.vulkan_headers() is None or shutil.which("g++") is None, reason="no Vulkan headers or g++")
def test_the_compatibility_header_gives_old_headers_the_layer_settings_types_with_their_registry_layout(tmp_path):
    """ggml-vulkan chains a vk::LayerSettingsCreateInfoEXT into its instance: with headers older
    than the extension the compatibility header defines it, laid out as VkLayerSettingsCreateInfoEXT
    (sType, pNext, settingCount, pSettings) with its structure type; with newer headers it adds nothing."""
    source = tmp_path / "layout.cpp"
    source.write_text("""
#include <vulkan/vulkan.hpp>
#include <cstddef>
static_assert(sizeof(vk::LayerSettingsCreateInfoEXT) == 32, "four members, 8-byte aligned");
static_assert(offsetof(vk::LayerSettingsCreateInfoEXT, settingCount) == 16, "after sType and pNext");
static_assert(offsetof(vk::LayerSettingsCreateInfoEXT, pSettings) == 24, "last");
static_assert(sizeof(vk::LayerSettingEXT) == 32, "two names, type, count, values");
int main() {
    VkBool32 on = 1;
    std::vector<vk::LayerSettingEXT> settings = {{"VK_LAYER_KHRONOS_validation", "validate_best_practices",
                                                 vk::LayerSettingTypeEXT::eBool32, 1, &on}};
    vk::LayerSettingsCreateInfoEXT info(settings);
    return static_cast<int>(info.sType) == 1000496000 && info.settingCount == 1 ? 0 : 1;
}
""")
    binary = tmp_path / "layout"
    compiled = subprocess.run(["g++", "-std=gnu++17", f"-I{builder.VULKAN_COMPAT}", str(source), "-o", str(binary)],
                              capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert subprocess.run([str(binary)], timeout=30).returncode == 0


def test_gpu_variants_that_cannot_be_built_here_get_one_line_and_exit_2(tmp_path):
    assert_one_line_exit_2(bench_cli("runtime", "build", "--target", "linux-arm64", "--backend", "vulkan"),
                           "no vulkan variant for linux-arm64", "qemu-user")
    assert_one_line_exit_2(bench_cli("runtime", "build", "--target", "host", "--backend", "opencl"),
                           "no opencl variant for host", "android-arm64")
    no_ndk = bench_cli("runtime", "build", "--target", "android-arm64", "--backend", "opencl",
                       env={"ANDROID_NDK_HOME": "", "ANDROID_NDK_ROOT": ""})
    assert_one_line_exit_2(no_ndk, "needs the Android NDK", "--ndk")
    # an NDK as it comes: no OpenCL in its sysroot, and no Vulkan C++ header
    ndk = tmp_path / "ndk"
    (ndk / "build" / "cmake").mkdir(parents=True)
    (ndk / "build" / "cmake" / "android.toolchain.cmake").write_text("")
    (ndk / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "sysroot" / "usr" / "include" / "vulkan").mkdir(parents=True)
    assert_one_line_exit_2(bench_cli("runtime", "build", "--target", "android-arm64", "--backend", "opencl", "--ndk", str(ndk)),
                           "no OpenCL headers and ICD loader", "OPENCL.md")
    assert_one_line_exit_2(bench_cli("runtime", "build", "--target", "android-arm64", "--backend", "vulkan", "--ndk", str(ndk)),
                           "no vulkan/vulkan.hpp", "Vulkan-Hpp")


def test_bad_gpu_run_flags_get_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    assert_one_line_exit_2(bench_cli("run", "--gpu-layers", "8", "--out", str(out)), "--gpu-layers", "--backend vulkan")
    assert_one_line_exit_2(bench_cli("run", "--backend", "vulkan", "--gpu-layers", "0", "--out", str(out)),
                           "--backend cpu")
    assert_one_line_exit_2(bench_cli("run", "--backend", "vulkan", "--gpu-layers", "many", "--out", str(out)), "'many'")
    assert_one_line_exit_2(bench_cli("run", "--backend", "vulkan", "--scenario", "llama-bench", "--out", str(out)),
                           "llama-bench", "generate scenario")
    assert not out.exists()


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "gpu.toml"
    path.write_text('name = "gpu"\nrepetitions = 1\nwarmup = 0\nn_predict = 8\nn_ctx = 256\nidle_s = 0\n'
                    'prompts = ["Once upon a time, there was a little"]\n')
    return path


@pytest.fixture(scope="session")
def vulkan_runtime() -> Path:
    """The host's Vulkan variant (./dev.sh test builds it where the Vulkan headers and glslc are)."""
    from bench.catalog import cache_root

    if builder.vulkan_headers() is None or shutil.which("glslc") is None:
        pytest.skip("no Vulkan headers or glslc (./dev.sh test installs libvulkan-dev spirv-headers glslc)")
    return builder.build(builder.plan_build("host", cache_root(), backend="vulkan"))


def _lavapipe(vulkan_runtime: Path) -> None:
    listed = subprocess.run([str(vulkan_runtime / "bin" / "llama-server"), "--list-devices"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **VISIBLE})
    if not any(parse.software_device(name) for _, name in parse.parse_device_list(listed.stdout)):
        pytest.skip("no lavapipe (./dev.sh test installs mesa-vulkan-drivers)")


def test_a_vulkan_run_on_lavapipe_offloads_every_layer_says_so_and_is_not_called_a_gpu_figure(
        vulkan_runtime, host_runtime, smollm2_path, tmp_path):
    _lavapipe(vulkan_runtime)
    result = bench_cli("run", "--backend", "vulkan", "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path),
                       "--json", env=VISIBLE)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    run = load_run(payload["run_dir"]).run
    runtime, offload = run["runtime"], run["memory"]["offload"]
    assert runtime["kind"] == "llama-server" and runtime["backend"] == "vulkan" and runtime["gpu_layers"] == "all"
    assert runtime["gpu_device"] == "Vulkan0" and "-DGGML_VULKAN=ON" in runtime["build_flags"]
    assert offload["used"][0]["device"] == "Vulkan0" and offload["used"][0]["software"] is True
    assert offload["layers_offloaded"] == offload["layers_total"] > 0 and offload["weights_on_device_bytes"] > 0
    assert any("software implementation on the CPU" in warning for warning in run["warnings"])
    listed = next(check for check in run["preflight"] if check["name"] == "gpu")
    assert listed["ok"] and listed["detail"].startswith("Vulkan0: llvmpipe") and ", driver llvmpipe," in listed["detail"]
    assert runtime["gpu_driver"] == "llvmpipe"  # ggml-vulkan's own debug line names the driver
    assert run["correctness"]["verdict"] == "pass", run["correctness"]  # its output matches the CPU reference
    report = (Path(payload["run_dir"]) / "report.md").read_text()
    assert "vulkan backend on Vulkan0 (driver llvmpipe), all layers asked" in report and "software on the CPU" in report


def test_fewer_gpu_layers_are_offloaded_as_asked(vulkan_runtime, host_runtime, smollm2_path, tmp_path):
    _lavapipe(vulkan_runtime)
    result = bench_cli("run", "--backend", "vulkan", "--gpu-layers", "10", "--scenario", str(_scenario(tmp_path)),
                       "--out", str(tmp_path), "--json", "--no-correctness", env=VISIBLE)
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    assert run["runtime"]["gpu_layers"] == 10 and run["memory"]["offload"]["layers_offloaded"] == 10


def test_a_vulkan_run_that_finds_no_device_fails_in_preflight_and_one_that_runs_on_the_cpu_fails_at_load(
        vulkan_runtime, host_runtime, smollm2_path, tmp_path):
    hidden = {"GGML_VK_VISIBLE_DEVICES": ""}  # lavapipe skipped, as on a machine without a GPU
    out = tmp_path / "out"
    refused = bench_cli("run", "--backend", "vulkan", "--scenario", str(_scenario(tmp_path)), "--out", str(out),
                        env=hidden)
    assert_one_line_exit_2(refused, "preflight 'gpu' failed", "not Vulkan0", "GGML_VK_VISIBLE_DEVICES")
    assert not out.exists()
    # told to go on anyway: llama-server refuses the device it was named (its own error line, not
    # its usage text, is the reason), and no CPU figure is stored under Vulkan's name
    forced = bench_cli("run", "--backend", "vulkan", "--allow", "gpu", "--scenario", str(_scenario(tmp_path)),
                       "--out", str(out), "--json", env=hidden)
    payload = json.loads(forced.stdout)
    assert forced.returncode != 0 and payload["status"] == "failed"
    assert 'error while handling argument "-dev": invalid device: Vulkan0' in payload["reason"]
    run = load_run(payload["run_dir"])
    assert run.requests.empty and run.run["status"] == "failed"


def test_a_failed_process_s_log_gives_its_error_line_before_its_last_lines():
    usage = ('error while handling argument "-dev": invalid device: Vulkan0\n\nusage:\n-dev,  --device <dev1,dev2,..>  '
             'comma-separated list\n     (env: LLAMA_ARG_DEVICE)\n\n\nto show complete usage, run with -h\n')
    assert parse.log_excerpt(usage) == ['error while handling argument "-dev": invalid device: Vulkan0',
                                        "-dev,  --device <dev1,dev2,..>  comma-separated list",
                                        "(env: LLAMA_ARG_DEVICE)", "to show complete usage, run with -h"]
    assert parse.log_excerpt("a\nb\nerror: out of memory\n") == ["a", "b", "error: out of memory"]  # already there
    assert parse.log_excerpt("one\ntwo\nthree\nfour\n") == ["two", "three", "four"]  # no error line: the tail
    assert parse.log_excerpt("") == []


def test_on_the_emulated_phone_the_vulkan_build_runs_on_its_lavapipe_gpu_whose_kgsl_files_follow_the_work(
        start_sim, vulkan_runtime, host_runtime, smollm2_path, tmp_path):
    """The Android path end to end: the Vulkan build chosen for the phone and pushed, -dev/-ngl,
    the offload check, the kgsl files following lavapipe's threads, the output against the CPU."""
    _lavapipe(vulkan_runtime)
    sim = start_sim(settings=["gpu.vulkan=lavapipe"])
    result = bench_cli("run", "--device", sim.serial, "--backend", "vulkan", "--scenario", str(_scenario(tmp_path)),
                       "--out", str(tmp_path), "--json", "--telemetry-hz", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = load_run(json.loads(result.stdout)["run_dir"])
    run, samples = stored.run, stored.samples
    assert run["runtime"]["backend"] == "vulkan" and "-DGGML_VULKAN=ON" in run["runtime"]["build_flags"]
    assert next(c for c in run["preflight"] if c["name"] == "gpu")["detail"].startswith("vulkan driver /vendor/lib64/hw/")
    offload = run["memory"]["offload"]
    assert offload["used"][0]["software"] is True and offload["layers_offloaded"] == offload["layers_total"]
    busy = samples[(samples["source"] == "gpu") & (samples["name"] == "busy")]["value"]
    assert busy.max() > 0  # the GPU's busy share is lavapipe's work, not a constant
    assert run["correctness"]["verdict"] == "pass", run["correctness"]


def test_a_phone_without_a_vulkan_driver_is_refused_in_preflight(start_sim, vulkan_runtime, smollm2_path, tmp_path):
    sim = start_sim()  # the default profile: kgsl telemetry, no Vulkan driver
    out = tmp_path / "out"
    result = bench_cli("run", "--device", sim.serial, "--backend", "vulkan", "--scenario", str(_scenario(tmp_path)),
                       "--out", str(out))
    assert_one_line_exit_2(result, "preflight 'gpu' failed", "has no vulkan driver", "--backend cpu")
    assert not out.exists()


def test_backend_sweeps_and_their_bad_values(tmp_path):
    from bench.matrix import load_matrix_file

    path = tmp_path / "m.toml"
    path.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nbackend = ["cpu", "vulkan"]\n')
    points = load_matrix_file(path).points()
    assert [point.backend for point in points] == ["cpu", "vulkan"]
    assert points[0].key.endswith("|backend cpu") and points[1].label.endswith(", vulkan backend")
    for bad in ('["cpu", "cuda"]', '["vulkan", "vulkan"]'):
        path.write_text(f'devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nbackend = {bad}\n')
        assert_one_line_exit_2(bench_cli("matrix", str(path), "--out", str(tmp_path / "out")), "'backend' must list", "m.toml:4")
    out = tmp_path / "out"
    assert_one_line_exit_2(bench_cli("run", "--backend", "cpu,cpu", "--out", str(out)), "repeats a backend")
    assert_one_line_exit_2(bench_cli("run", "--backend", "cpu,metal", "--out", str(out)), "unknown backend 'metal'")
    assert_one_line_exit_2(bench_cli("ab", "--base", "smollm2-135m", "--head", "smollm2-135m", "--backend", "cpu,vulkan",
                                     "--out", str(out)), "an A/B compares base and head on one backend")
    assert not out.exists()


def test_a_backend_sweep_runs_cpu_and_vulkan_in_llama_server_on_one_device_and_says_which_is_software(
        vulkan_runtime, host_runtime, smollm2_path, tmp_path):
    _lavapipe(vulkan_runtime)
    result = bench_cli("run", "--backend", "cpu,vulkan", "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path),
                       "--json", "--no-correctness", env=VISIBLE)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    cpu, vulkan = payload["points"]
    assert (cpu["backend"], vulkan["backend"]) == ("cpu", "vulkan") and vulkan["cpu_backend_key"] == cpu["key"]
    runs = [load_run(row["run_dir"]).run for row in (cpu, vulkan)]
    assert [run["runtime"]["kind"] for run in runs] == ["llama-server", "llama-server"]  # one runtime, compared with itself
    assert [run["runtime"]["backend"] for run in runs] == ["cpu", "vulkan"] and "offload" not in runs[0]["memory"]
    device = vulkan["gpu_device"]
    assert device["name"].startswith("llvmpipe") and device["software"] is True
    table = (Path(payload["matrix_dir"]) / "matrix.md").read_text()
    ratio = vulkan["decode_tps_median"] / cpu["decode_tps_median"]
    assert f"| vulkan | {device['name']} (software) | {ratio:.2f}x |" in table
    assert "| cpu | CPU | n/a |" in table


def test_vs_cpu_is_a_gpu_point_s_decode_over_the_same_point_s_on_the_cpu_backend():
    from bench.matrix import MatrixPoint, RunResult, _row, backend_ratios, markdown

    def row(device: str, backend: str, decode: float) -> dict:
        return _row(MatrixPoint(device, "m", "s", None, None, backend=backend),
                    RunResult(Path(f"/r/{device}-{backend}"), "complete", {"decode_tps_median": decode}))
    rows = [row("host", "cpu", 120.0), row("host", "vulkan", 30.0), row("pixel8", "cpu", 10.0),
            row("pixel8", "opencl", 25.0)]
    assert rows[1]["cpu_backend_key"] == rows[0]["key"] and rows[0]["cpu_backend_key"] is None
    assert backend_ratios(rows) == {rows[1]["key"]: pytest.approx(0.25), rows[3]["key"]: pytest.approx(2.5)}
    assert backend_ratios(rows[1:2]) == {}  # no CPU point beside it: no ratio claimed
    table = markdown("t", rows)
    assert "| backend | device | vs CPU |" in table and "| vulkan | n/a | 0.25x |" in table and "| opencl | n/a | 2.50x |" in table
