"""Issue 22.2 and 22.3 (telemetry): the phone's GPU in the fork-free telemetry loop. Adreno's kgsl
(busy, clock, clock cap, thermal power level) and GPUs under devfreq (Mali: clock and cap), parsed
from real captures; on the emulated phone as kgsl, devfreq or hidden, into samples, the report,
the plots and trace.json."""

import json
from pathlib import Path

import pytest

from bench import parse
from bench.android.sampler import KGSL, GpuFiles, Layout, _gpu_files, loop_script
from bench.store import load_run
from conftest import DATA, bench_cli

ANDROID = DATA / "android"


def _capture(name: str) -> str:
    return (ANDROID / name).read_text()


def test_gpu_captures_parse_to_their_values():
    # kgsl's gpubusy on an idle, powered-down GPU: both counters 0 (OnePlus One, KernelAdiutor#450)
    assert parse.parse_gpu_busy(_capture("excerpt_kgsl-gpubusy-idle_oneplus-one_kerneladiutor-450.txt")) == 0.0
    # gpu_busy_percentage as kgsl_pwrctrl.c prints it: "%d %%"
    assert parse.parse_gpu_busy(_capture("constructed_kgsl-gpu_busy_percentage-format_kgsl-pwrctrl-c.txt")) == 37.0
    assert parse.parse_gpu_busy("   1234    5678\n") == pytest.approx(100 * 1234 / 5678)
    for nonsense in ("", "12 0", "busy", "-3 %", "1 2 3"):
        assert parse.parse_gpu_busy(nonsense) is None, nonsense
    # a GPU under devfreq on a mainline kernel (Adreno 306, msm8916-mainline#332)
    listing = parse.parse_devfreq_listing(
        _capture("devfreq-grep_adreno306-msm8916-samsung-j5_mainline-kernel_msm8916-linux-pr332.txt"))
    assert (listing["cur_freq"], listing["max_freq"], listing["name"]) == ("400000000", "400000000", "1c00000.gpu")
    assert parse.parse_frequencies_hz(listing["available_frequencies"]) == (19_200_000, 400_000_000)
    assert listing["trans_stat"] == "From  :   To"  # a multi-line file keeps its first line only
    # a Mali-T860 under devfreq (RK3399, ComputeLibrary#225): the clock now and the levels
    mali = _capture("devfreq-mali-t860_rk3399-firefly_computelibrary-225.txt").splitlines()
    assert int(mali[mali.index(next(l for l in mali if l.endswith("cat cur_freq "))) + 1]) == 200_000_000
    assert max(parse.parse_frequencies_hz(mali[-1])) == 800_000_000 and len(parse.parse_frequencies_hz(mali[-1])) == 6
    # kgsl's devfreq max_freq as a kernel manager lowered it (Redmi Note 4, FK Kernel Manager#50)
    assert int(_capture("devfreq-kgsl-max_freq_xiaomi-mido_fk-kernel-manager-50.txt").splitlines()[-1]) == 400_000_000


def test_discovery_prefers_kgsl_and_refuses_names_that_could_reach_the_shell():
    found = _gpu_files("Z 0 cpu 40000\nK Adreno740v2\nKF gpu_busy_percentage\nKF devfreq/cur_freq\nKF max_gpuclk\n"
                       "KF thermal_pwrlevel\nKA 220000000 680000000 350000000\nD 3d00000.qcom,kgsl-3d0 220000000\n")
    assert found == GpuFiles("kgsl-3d0", "Adreno740v2", f"{KGSL}/gpu_busy_percentage", f"{KGSL}/devfreq/cur_freq",
                             f"{KGSL}/max_gpuclk", 680_000_000, f"{KGSL}/thermal_pwrlevel")
    # SELinux: kgsl-3d0 is there but none of its files reads; a Mali under devfreq does
    mali = _gpu_files("K \nKA\nD 13000000.mali 100000000 848000000\n")
    assert (mali.name, mali.busy, mali.freq, mali.top_hz) == ("13000000.mali", None, "/sys/class/devfreq/13000000.mali/cur_freq",
                                                              848_000_000)
    assert _gpu_files("D x;reboot 1\nD $(id) 1\n") is None  # a device-given name enters the loop script only if plain
    assert _gpu_files("") is None
    script = loop_script(Layout((), (), (), gpu=found))
    assert f"read -r gb gt < {KGSL}/gpu_busy_percentage" in script and "gc=$gc" in script and "gl=$gl" in script


@pytest.mark.slow
def test_a_sim_run_samples_its_kgsl_gpu_into_the_report_plots_and_trace(start_sim, host_runtime, smollm2_path, tmp_path):
    # hot from the start: the SoC's thermal mitigation lowers the GPU's highest allowed clock too
    sim = start_sim(settings=["thermal.initial_c=70"])
    scenario = tmp_path / "gpu.toml"
    # each request (about 0.6 s, 4 samples at 10 Hz) spans several sampling periods: a request shorter than one can fall
    # between two samples, and then the windowed figures are rightly None
    scenario.write_text('name = "gpu"\nrepetitions = 2\nwarmup = 0\nn_predict = 48\nidle_s = 0\n'
                        'prompts = ["Tell me about the sea."]\n')
    result = bench_cli("run", "--device", sim.serial, "--scenario", str(scenario), "--out", str(tmp_path), "--json",
                       "--no-correctness", "--telemetry-hz", "10", "--allow", "thermal")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    stored = load_run(run_dir)
    run, samples = stored.run, stored.samples
    assert run["telemetry"]["gpu"] == "kgsl-3d0 (SimAdreno)" and "gpu/*" not in run["telemetry"]["absent"]
    gpu = samples[samples["source"] == "gpu"]
    units = dict(zip(gpu["name"], gpu["unit"]))
    assert units == {"busy": "%", "freq": "MHz", "cap": "ratio", "thermal_pwrlevel": "level"}
    # the sim's runtimes run on its CPU: its GPU idles at its lowest clock
    assert set(gpu[gpu["name"] == "busy"]["value"]) == {0.0} and set(gpu[gpu["name"] == "freq"]["value"]) == {220.0}
    caps = gpu[gpu["name"] == "cap"]["value"]
    levels = gpu[gpu["name"] == "thermal_pwrlevel"]["value"]
    assert caps.min() < 1.0 and levels.max() >= 1  # mitigated: a slower level is the fastest allowed
    assert all(round(cap * 680) in (220, 350, 500, 680) for cap in caps)  # each cap is one of the GPU's levels
    summary = run["summary"]
    assert summary["gpu_busy_pct"] == 0.0 and summary["gpu_cap_min"] < 1.0
    report = (run_dir / "report.md").read_text()
    assert "| GPU busy, mean in the requests | 0.0 |" in report and "| GPU clock cap, lowest in the requests |" in report
    assert "GPU kgsl-3d0 (SimAdreno)" in report
    assert (run_dir / "plots" / "gpu_busy.png").is_file() and (run_dir / "plots" / "gpu_freq.png").is_file()
    trace = json.loads((run_dir / "trace.json").read_text())
    assert {"GPU busy (%)", "GPU clock (MHz)"} <= {event["name"] for event in trace["traceEvents"] if event.get("ph") == "C"}
    # a capture for a bug report (or --replay) carries the GPU's files too
    captured = bench_cli("capture", "--device", sim.serial, str(tmp_path / "capture"))
    assert captured.returncode == 0, captured.stderr[-2000:]
    assert (tmp_path / "capture/sys/class/kgsl/kgsl-3d0/gpu_busy_percentage").read_text() == "0 %\n"
    assert (tmp_path / "capture/sys/class/kgsl/kgsl-3d0/gpu_model").read_text() == "SimAdreno\n"


@pytest.mark.slow
def test_a_mali_under_devfreq_tells_its_clock_and_a_hidden_gpu_is_absent_with_why(start_sim, adb_server):
    from bench.android.adb import Device
    from bench.android.sampler import discover

    mali = discover(Device(start_sim(settings=["gpu.kind=devfreq"]).serial))
    assert mali.gpu == GpuFiles("13000000.mali", None, None, "/sys/class/devfreq/13000000.mali/cur_freq",
                                "/sys/class/devfreq/13000000.mali/max_freq", 680_000_000)
    assert "tells its clock but not how busy" in mali.absent["gpu/busy"]
    hidden = discover(Device(start_sim(settings=["gpu.kind=none"]).serial))
    assert hidden.gpu is None and "SELinux hides them" in hidden.absent["gpu/*"]


def test_a_gpu_sampled_only_outside_the_requests_is_told_not_left_out():
    """Requests shorter than the telemetry period can fall between two samples: the GPU was sampled,
    yet its figures are None. The report says so and how to get them, rather than dropping the rows."""
    import pandas as pd

    from bench.report import markdown

    run = {"run_id": "x", "status": "complete", "summary": {"gpu_busy_pct": None, "gpu_cap_min": None},
           "telemetry": {"hz": 5.0, "gpu": "kgsl-3d0 (SimAdreno)", "absent": {}}}
    requests = pd.DataFrame(columns=["decode_tps"])
    outside = pd.DataFrame({"t_s": [1.55, 1.80], "source": ["gpu", "gpu"], "name": ["busy", "cap"],
                            "value": [0.0, 0.5], "unit": ["%", "ratio"]})
    text = markdown(run, requests, outside, [], [])
    assert ("| GPU busy and clock cap, in the requests | n/a | | | | | | | kgsl-3d0 (SimAdreno) was sampled at 5 Hz, "
            "but no sample fell inside a measured request (each was shorter than 200 ms): raise --telemetry-hz or "
            "n_predict |") in text
    # not sampled at all (the loop never ran), or figures present: no such row
    assert "no sample fell inside" not in markdown(run, requests, pd.DataFrame(), [], [])
    sampled = {**run, "summary": {"gpu_busy_pct": 3.0, "gpu_cap_min": 0.5}}
    text = markdown(sampled, requests, outside, [], [])
    assert "no sample fell inside" not in text and "| GPU busy, mean in the requests | 3.0 |" in text
    # a GPU that tells only its clock has neither figure anywhere: nothing to explain
    clock_only = outside.assign(name=["freq", "freq"], unit=["MHz", "MHz"])
    assert "no sample fell inside" not in markdown(run, requests, clock_only, [], [])
