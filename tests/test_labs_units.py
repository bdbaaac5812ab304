"""Issue 13's defects that need no phone: CPU-feature fit of phone runtimes, every power-rail source,
rail coverage, llama-bench energy, compare keys, cut JSON lines, adb environment, file modes."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import bench_cli

FIXTURES = Path(__file__).resolve().parent / "data" / "android"


# -- the runtime must fit the phone's CPU -----------------------------------------------------------

def test_arm_arch_features_and_the_variant_a_phone_gets():
    from bench.cpu import arm_arch_features, arm_variant_for, cpuinfo_flags

    assert arm_arch_features("armv8.2-a+dotprod") == {"asimddp"}
    assert arm_arch_features("armv8.2-a+dotprod+i8mm+fp16") == {"asimddp", "i8mm", "fphp", "asimdhp"}
    assert arm_arch_features("armv8.6-a+dotprod+i8mm") >= {"asimddp", "i8mm", "bf16"}
    pixel8 = cpuinfo_flags((FIXTURES / "proc-cpuinfo_pixel8-shiba-tensor-g3_android14_pytorch-cpuinfo-mock.txt").read_text())
    assert {"asimddp", "i8mm"} <= pixel8
    assert arm_variant_for(pixel8)[0] == "i8mm"  # Tensor G3 runs the i8mm build
    pixel6_mid = frozenset("fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp".split())
    assert arm_variant_for(pixel6_mid) == ("dotprod", "armv8.2-a+dotprod")  # Tensor G1/G2: no i8mm
    assert arm_variant_for(frozenset({"fp", "asimd"})) is None  # Cortex-A53: nothing bench builds fits


def test_required_features_come_from_runtime_json_or_its_flags():
    from bench.runtimes.build import required_cpu_features

    assert required_cpu_features({"cpu_features_required": ["asimddp"]}) == {"asimddp"}
    old = {"cmake_flags": ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+i8mm+fp16"]}  # before the field
    assert "i8mm" in required_cpu_features(old)
    assert required_cpu_features({"cmake_flags": None}) == frozenset()  # a prebuilt release: nothing known


# -- power rails from every source ------------------------------------------------------------------

# An older PowerStats HAL: plain channel names, no "[...]:Subsystem" (the AIDL format strings with
# the rail name alone, as `dumpsys android.hardware.power.stats.IPowerStats/default` prints them).
PLAIN_HAL = (
    "\n============= PowerStats HAL 2.0 energy meter ==============\n"
    + "  %32s   %18s\n" % ("Channel", "Cumulative Energy")
    + "".join("  %32s   %14.2f mWs\n" % row for row in (
        ("S2M_VDD_CPUCL2", 5123456.25), ("S3M_VDD_CPUCL1", 2100000.0), ("S4M_VDD_CPUCL0", 900000.5),
        ("S1M_VDD_MIF", 1800000.0), ("S8S_VDD_G3D_L2", 400000.0), ("VSYS_PWR_DISPLAY", 7000000.0)))
    + "========== End of PowerStats HAL 2.0 energy meter ==========\n")

IIO = ("t=1234567\n"
       "CH0(T=1234560)[S4M_VDD_CPUCL0], 900000500\n"
       "CH1(T=1234561)[S2M_VDD_CPUCL2], 5123456250\n"
       "CH2(T=1234562)[VSYS_PWR_DISPLAY], 7000000000\n")


def test_older_hal_plain_channel_names_are_a_meter():
    from bench.parse import RAILS_COMMAND, parse_power_stats, rail_group

    reading = parse_power_stats(PLAIN_HAL)
    assert reading is not None and len(reading.channels) == 6
    assert reading.channels["S2M_VDD_CPUCL2"] == pytest.approx(5123.45625)
    groups = {name: rail_group(name) for name in reading.channels}
    assert groups == {"S2M_VDD_CPUCL2": "cpu_big", "S3M_VDD_CPUCL1": "cpu_mid", "S4M_VDD_CPUCL0": "cpu_little",
                      "S1M_VDD_MIF": "memory", "S8S_VDD_G3D_L2": "gpu", "VSYS_PWR_DISPLAY": None}
    assert "delta" not in RAILS_COMMAND  # it would reset the HAL's one global previous reading


def test_iio_energy_value_blocks_keep_the_meters_own_time_stamps():
    from bench.parse import parse_iio_energy

    stamp, readings = parse_iio_energy(IIO)
    assert stamp == 1234567
    assert [(r.rail, r.t_boot_ms) for r in readings] == [("S4M_VDD_CPUCL0", 1234560), ("S2M_VDD_CPUCL2", 1234561),
                                                         ("VSYS_PWR_DISPLAY", 1234562)]
    assert readings[1].joules == pytest.approx(5123.45625)  # uWs -> J
    assert parse_iio_energy("garbage\n") == (None, [])


def _requests(windows, gen=(10,), prompt=(5,)):
    rows = []
    for index, (start, end) in enumerate(windows):
        rows.append({"repetition": index, "step": 0, "warmup": False, "t_start_s": start, "e2e_ms": (end - start) * 1000,
                     "gen_tokens": gen[index % len(gen)], "prompt_tokens": prompt[index % len(prompt)], "error": None})
    return pd.DataFrame(rows)


def _rail_samples(readings: dict[str, list[tuple[float, float]]]):
    return pd.DataFrame([{"t_s": t, "source": "rail", "name": name, "value": joules, "unit": "J"}
                         for name, points in readings.items() for t, joules in points])


def test_rail_with_fewer_readings_is_uncovered_not_zero_and_partial_is_invalid():
    from bench.energy import rail_energy_summary

    requests = _requests([(1.0, 2.0), (3.0, 4.0)])
    # 1 W on both rails; the memory rail's reading after the second request failed
    big = [(t, t * 1.0) for t in (0.5, 2.5, 4.5)]
    mif = [(t, t * 1.0) for t in (0.5, 2.5)]
    summary = rail_energy_summary(requests, _rail_samples({"[B]:CPU(BIG)": big, "[M]:MIF": mif}))
    assert summary["available"] and summary["valid"] is False and "1 of 2" in summary["reason"]
    assert summary["requests_covered"] == 1 and summary["channel_coverage"] == {"[B]:CPU(BIG)": 2, "[M]:MIF": 1}
    # the covered request: 1 s at 1 W on each rail, cut at its start and end
    assert summary["channels"]["[M]:MIF"]["joules"] == pytest.approx(1.0)
    assert summary["groups"]["total"]["joules"] == pytest.approx(2.0)
    assert summary["groups"]["total"]["j_per_token"] == pytest.approx(0.2)
    whole = rail_energy_summary(requests, _rail_samples({"[B]:CPU(BIG)": big, "[M]:MIF": big}))
    assert whole["valid"] is True and whole["groups"]["total"]["joules"] == pytest.approx(4.0)


def test_llama_bench_j_per_token_counts_tg_rows_only_and_prefill_per_prompt_token():
    from bench.energy import energy_summary, rail_energy_summary

    # a pp512 row (1 s, no generated tokens) then a tg128 row (2 s, 128 tokens), 3 W throughout
    requests = _requests([(1.0, 2.0), (3.0, 5.0)], gen=(0, 128), prompt=(512, 0))
    times = np.arange(0.0, 6.01, 0.1)
    power = pd.DataFrame({"t_s": times, "source": "battery", "name": "power", "value": 3.0, "unit": "W"})
    energy = energy_summary(requests, power, charging=False)
    assert energy["energy_j"] == pytest.approx(9.0, rel=1e-3)
    assert energy["j_per_token"] == pytest.approx(6.0 / 128, rel=1e-3)  # not 9 J / 128
    assert energy["prefill_j_per_prompt_token"] == pytest.approx(3.0 / 512, rel=1e-3)
    rails = rail_energy_summary(requests, _rail_samples({"[B]:CPU(BIG)": [(t, 3.0 * t) for t in times]}))
    assert rails["groups"]["total"]["j_per_token"] == pytest.approx(6.0 / 128, rel=1e-3)
    assert rails["groups"]["total"]["prefill_j_per_prompt_token"] == pytest.approx(3.0 / 512, rel=1e-3)


# -- compare and history keys -----------------------------------------------------------------------

def test_sweep_points_with_equal_threads_do_not_match():
    from bench.compare import run_key, setup_label

    def run(affinity, fixed=False, repack=True):
        return {"device": {"kind": "android", "profile": "pixel8"}, "model": {"sha256": "m"}, "scenario": {"hash": "s"},
                "runtime": {"kind": "llama-server", "threads": 4, "affinity": affinity, "fixed_performance": fixed,
                            "repack": repack}}

    big, little = run_key(run([4, 5, 6, 7])), run_key(run([0, 1, 2, 3]))
    assert big != little and big["threads"] == little["threads"]
    assert run_key(run([4, 5, 6, 7], fixed=True)) != big and run_key(run([4, 5, 6, 7], repack=False)) != big
    assert setup_label(big) == "4 threads, CPUs 4,5,6,7"
    assert run_key({"runtime": {"threads": 4}})["affinity"] == "unpinned"  # runs from before the key


# -- no tracebacks ------------------------------------------------------------------------------------

def test_a_llama_bench_line_cut_by_a_kill_is_no_test():
    from bench.runtimes.llama_bench import parse_line

    assert parse_line('{"n_prompt": 512, "n_gen": 0, "samples_ns": [1, 2', 0) is None
    assert parse_line('{"n_prompt": "x"}', 0) is None
    assert parse_line('{"n_prompt": 512, "n_gen": 0, "samples_ns": [1000], "samples_ts": [5.0]}', 0).n_prompt == 512


def test_a_non_numeric_adb_server_port_is_one_line_exit_2(tmp_path):
    result = bench_cli("devices", env={"ANDROID_ADB_SERVER_PORT": "fivethousand"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "ANDROID_ADB_SERVER_PORT='fivethousand' is not a port number" in lines[0]


# -- results a team can read --------------------------------------------------------------------------

def test_atomic_writes_follow_the_umask(tmp_path):
    from bench.files import atomic_write_json

    previous = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "run.json", {"schema_version": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "run.json").read_text()) == {"schema_version": 1}


def test_a_worker_reply_cut_by_a_kill_is_a_diagnosed_failure(tmp_path):
    import sys

    from bench.runtimes.llama_cpp import LlamaCppRuntime, WorkerDied
    from bench.runtimes.process import LineProcess

    runtime = LlamaCppRuntime(None, n_ctx=64, n_batch=32, threads=1, seed=0, log_path=tmp_path / "runtime.log")
    # a real process that is killed halfway through writing its JSON reply
    runtime._process = LineProcess([sys.executable, "-c", "import os, sys; sys.stdout.write('{\"ok\": tr'); "
                                    "sys.stdout.flush(); os.kill(os.getpid(), 9)"], tmp_path / "runtime.log")
    with pytest.raises(WorkerDied) as caught:
        runtime._read(30, "load")
    assert "cut short" in str(caught.value) and "SIGKILL" in str(caught.value)
