"""Where the threads really ran (issue 14.2): the runtime's /proc/PID/task/*/stat in every telemetry
tick. A phone that ignores llama.cpp's CPU mask (the sim's cpu.ignore_affinity undoes every
thread's mask, as some phones' cpusets do) must draw the warning; one that honours it must not."""

import json
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest

from bench.cpu import parse_cpus
from bench.parse import ThreadPlacement, parse_task_stat
from bench.store import load_run
from bench.placement import thread_placement
from conftest import bench_cli

STAT = "{tid} (llama server) R 1 1 1 0 -1 4194368 500 0 0 0 {utime} {stime} 0 0 20 0 6 0 100 9000 300 1 1 1 0 0 0 0 0 0 0 0 0 0 -1 {cpu} 0 0 0 0 0"


def test_a_task_stat_line_gives_thread_cpu_and_ticks_even_with_spaces_in_the_name():
    assert parse_task_stat(STAT.format(tid=42, utime=250, stime=30, cpu=6)) == (42, 6, 280)
    assert parse_task_stat("garbage") is None


def test_new_cpu_time_goes_to_the_cpu_the_thread_was_last_seen_on():
    placement = ThreadPlacement()
    assert placement.update([(1, 4, 100), (2, 5, 100)]) == 0  # the first reading only sets the baseline
    assert placement.update([(1, 4, 150), (2, 1, 100)]) == 1
    assert placement.update([(1, 0, 170), (2, 1, 130)]) == 2
    assert placement.cpu_seconds == {4: 0.5, 0: 0.2, 1: 0.3}


def _tables(per_cpu_seconds: dict[int, float], busy: int):
    requests = pd.DataFrame({"repetition": [0], "warmup": False, "error": None, "t_start_s": [1.0], "e2e_ms": [8000.0]})
    rows = [(t, "threads", "busy", float(busy), "count") for t in range(10)]
    rows += [(t, "threads", f"cpu{cpu}", seconds * t / 9, "s") for cpu, seconds in per_cpu_seconds.items() for t in range(10)]
    return requests, pd.DataFrame(rows, columns=["t_s", "source", "name", "value", "unit"])


def test_time_spilled_off_the_asked_cores_is_a_warning_per_cluster():
    clusters = [{"cpus": [0, 1, 2, 3], "name": "little"}, {"cpus": [4, 5, 6, 7], "name": "big"}]
    requests, samples = _tables({0: 2.0, 1: 1.1, 4: 3.0, 5: 3.9}, busy=4)
    placement = thread_placement(requests, samples, clusters=clusters, affinity=[4, 5, 6, 7], threads=4)
    assert placement["cluster_shares"]["little"] == pytest.approx(0.31) and placement["busy_threads_median"] == 4
    assert placement["warnings"] == ["asked for cores 4-7, 31% of the runtime's CPU time ran on cores 0-1"]
    pinned = thread_placement(*_tables({4: 3.0, 5: 3.0}, busy=2), clusters=clusters, affinity=[4, 5, 6, 7], threads=4)
    assert pinned["warnings"] == ["asked for 4 threads, 2 were busy per telemetry tick (median over the measured requests)"]


def _placement_of(result) -> tuple[dict, list[str]]:
    assert result.returncode == 0, result.stderr[-2000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    placement = run["summary"]["threads"]
    assert placement["available"] and placement["cpu_seconds"] > 0.5
    # what `bench compare` weighs (lower is better, one value a run)
    assert run["summary"]["per_repetition"]["off_affinity_share"] == [placement["off_affinity_share"]]
    return placement, [w for w in run["warnings"] if w.startswith("where the threads ran: asked for cores 1,")]


@pytest.mark.slow
def test_a_phone_that_ignores_the_cpu_mask_is_caught(start_sim, host_runtime, smollm2_path, tmp_path):
    info = start_sim(name="mask-ignored", settings=["cpu.ignore_affinity=true"])
    # an unpinned thread may happen to stay on CPU 1 of this 2-CPU host; a busy loop held there makes
    # the scheduler move it, as a phone's other load does, so an ignored mask always shows
    hog = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {1})\nwhile True: pass"])
    try:
        placement, warned = _placement_of(bench_cli("run", "--device", info.serial, "--affinity", "1", "--threads",
                                                    "1", "--repetitions", "3", "--out", str(tmp_path / "r"), "--json"))
    finally:
        hog.kill()
        hog.wait(timeout=10)
    assert placement["off_affinity_share"] > 0.2 and warned and "ran on cores 0" in warned[0], placement


@pytest.mark.slow
def test_a_mask_that_holds_draws_no_warning(host_runtime, smollm2_path, tmp_path):
    # the host pins the llama-cpp-python worker itself (sched_setaffinity before the model loads)
    placement, warned = _placement_of(bench_cli("run", "--affinity", "1", "--threads", "1", "--repetitions", "3",
                                                "--out", str(tmp_path / "r"), "--json"))
    assert placement["off_affinity_share"] < 0.05 and not warned, placement
    assert placement["cluster_shares"]["cpu1"] > 0.95


def _telemetry_loop_masks(mount_ns: str, seen: set[str], stop) -> None:
    """Cpus_allowed_list of every telemetry loop of one sim (it runs the phone's processes on this
    host; another test's sim, beside it under pytest -n, runs loops of its own)."""
    from bench.sim.physics import namespace_members

    while not stop.is_set():
        for pid in namespace_members(mount_ns, set()):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                # the shell running the loop, `sh .../telemetry.sh ...`: not adbd's `sh -c "exec taskset ..."`
                # nor taskset itself, for the instants before each execs the next
                if len(argv) > 1 and argv[1].endswith(b"telemetry.sh"):
                    status = open(f"/proc/{pid}/status").read()
                    seen.add(status.split("Cpus_allowed_list:")[1].split()[0])
            except (OSError, IndexError):
                continue
        stop.wait(0.2)


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a CPU the runtime is not pinned to")
def test_the_telemetry_loop_runs_off_the_cores_the_runtime_is_pinned_to(start_sim, host_runtime, smollm2_path, tmp_path):
    # item 20.13: the loop must not take a core from the threads it measures when the phone has others
    info = start_sim(name="loop-pinned")
    holder = json.loads((info.state_dir / "sim.json").read_text())["holder_pid"]
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_telemetry_loop_masks, args=(os.readlink(f"/proc/{holder}/ns/mnt"), seen, stop),
                               daemon=True)
    watcher.start()
    try:
        result = bench_cli("run", "--device", info.serial, "--affinity", "1", "--threads", "1", "--repetitions", "1",
                           "--out", str(tmp_path / "r"), "--json")
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert result.returncode == 0, result.stderr[-2000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    others = sorted(set(range(os.cpu_count())) - {1})
    assert run["telemetry"]["cpus"] == others and run["telemetry"]["ticks"] > 0
    assert seen and all(list(parse_cpus(mask)) == others for mask in seen), seen


def test_the_loop_sends_thread_stat_lines_whole_and_the_host_groups_them_by_tick():
    from bench.android.sampler import AndroidSampler, Layout

    sampler = AndroidSampler.__new__(AndroidSampler)
    sampler.offset_s, sampler.ticks, sampler.placement = 0.0, 0, ThreadPlacement()
    sampler.layout, sampler.zone_names, sampler.cluster_max = Layout((), (), ()), {}, {}
    sampler.raw_current, sampler.raw_voltage, sampler.statuses = [], [], []
    lines = ["H 10.00", "h " + STAT.format(tid=7, utime=100, stime=0, cpu=4), "h " + STAT.format(tid=8, utime=50, stime=0, cpu=5),
             "H 11.00", "h " + STAT.format(tid=7, utime=180, stime=10, cpu=4), "h " + STAT.format(tid=8, utime=50, stime=0, cpu=5),
             "T 11.00 0"]
    samples = [s for line in lines for s in sampler.parse_line(line)]
    busy = [s for s in samples if s.name == "busy"]
    # the second tick: thread 7 used 90 ticks on CPU 4, thread 8 nothing; stamped at its own H line
    assert [(round(s.t_s, 3), s.value) for s in busy][-1] == (11.005, 1.0)
    assert any(s.name == "cpu4" and s.value > 0 for s in samples) and not any(s.name == "cpu5" and s.value > 0 for s in samples)
