"""How often does `bench compare` cry wolf, and does it still find a real slowdown?

On the host (llama-cpp-python) and on the emulated phone (llama-server behind a private adb
server), with tiny shapes:
- A/A: base and head are the same build and model, run as interleaved ABBA pairs (what `bench ab`
  does). Each comparison is `--pairs` pairs; the share called regressed or improved is the false-
  alarm rate of the paired design (goal <= 5%). The same runs, taken one pair at a time as single
  runs, show the rate of the old within-run rule and of the new run-to-run noise gate.
- A/B: the head runs with less CPU: held to `--head-cpu-share` of the machine by a cgroup quota
  where one can be made (root, cgroup v1 cpu controller), else beside a CPU burner (a process of
  ours that spins `--burn-duty` of every 10 ms on every core): a real slowdown of roughly 15%; the
  share found regressed is the power (goal >= 90%). The measured slowdown is printed beside it.

    .venv/bin/python benchmarks/compare_false_alarms.py [--comparisons 20] [--pairs 6] [--only host|sim]
                                                        [--designs A/A,A/B] [--head-cpu-share 0.92]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emulated_phone

from bench.catalog import cache_root, model_info
from bench.compare import METRICS, against_noise, compare_metric, compare_paired, noise_from_medians
from bench.config import resolve_scenario
from bench.host.membw import host_bandwidth_gbs
from bench.host.target import HostTarget
from bench.runner import RunOptions, run_benchmark

DECODE = next(m for m in METRICS if m.name == "decode_tps")
TINY = 'name = "tiny-ab"\nrepetitions = 4\nwarmup = 1\nn_predict = 16\nprompts = ["Hello there."]\n[cooldown]\nmode = "none"\n'
BURNER = ("import time, sys\nduty = float(sys.argv[1])\n"
          "while True:\n    t = time.perf_counter()\n    while time.perf_counter() - t < duty * 0.01: pass\n"
          "    time.sleep((1 - duty) * 0.01)\n")


@contextlib.contextmanager
def burner(duty: float):
    """A CPU burner on every core for the duration, stopped by its PID (ours) afterwards."""
    processes = [subprocess.Popen([sys.executable, "-c", BURNER, str(duty)]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


@contextlib.contextmanager
def cpu_quota(pid: int, share: float):
    """The process `pid` (and what it starts meanwhile) gets `share` of this machine's CPUs: a
    cgroup (v1 cpu controller) with a CFS quota over 10 ms periods, made and removed here. The
    steady slowdown a burner only approximates: the scheduler decides how much a burner steals."""
    group = CGROUP_V1_CPU / f"bench-ab-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("10000")
        (group / "cpu.cfs_quota_us").write_text(str(int(10000 * share * (os.cpu_count() or 1))))
        (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        (CGROUP_V1_CPU / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def quota_available() -> bool:
    return os.access(CGROUP_V1_CPU / "cgroup.procs", os.W_OK)


def decode_values(make_target, scenario, model, out: Path) -> list[float]:
    target = make_target()
    try:
        result = run_benchmark(RunOptions(device="ab", scenario=scenario, model=model, out_root=out, telemetry_hz=None),
                               target)
    finally:
        target.release()
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    return list(result.summary["per_repetition"]["decode_tps"])


def comparisons(label: str, make_target, count: int, pairs: int, slow_head, slowdown_label: str, out: Path,
                designs: tuple[str, ...] = ("A/A", "A/B")) -> None:
    scenario_path = out / "tiny.toml"
    scenario_path.write_text(TINY)
    scenario, model = resolve_scenario(str(scenario_path)), model_info("smollm2-135m")
    started = time.monotonic()
    aa_paired, ab_paired, slowdowns = [], [], []
    single_runs: list[tuple[list[float], list[float]]] = []
    for design in designs:
        for index in range(count):
            base_runs, head_runs = [], []
            for pair in range(pairs):
                for side in (("base", "head") if pair % 2 == 0 else ("head", "base")):
                    loaded = slow_head() if design == "A/B" and side == "head" else contextlib.nullcontext()
                    with loaded:
                        values = decode_values(make_target, scenario, model, out / "runs")
                    (base_runs if side == "base" else head_runs).append(values)
            result = compare_paired(DECODE, base_runs, head_runs, threshold=0.05, seed=index)
            if design == "A/A":
                aa_paired.append(result.verdict)
                single_runs += list(zip(base_runs, head_runs))
            else:
                ab_paired.append(result.verdict)
                slowdowns.append(result.change)
            print(f"  {label} {design} {index + 1}/{count}: {result.verdict} ({result.change:+.1%})", flush=True)
    # The same A/A runs one pair at a time, as two single runs: the old rule, and the noise gate,
    # whose noise comes from the other A/A runs (what a results folder holds).
    medians = [float(np.median(v)) for pair in single_runs for v in pair]
    old = new = 0
    for index, (base, head) in enumerate(single_runs):
        others = medians[:2 * index] + medians[2 * index + 2:]
        single = compare_metric(DECODE, base, head, threshold=0.05, seed=index)
        gated = against_noise(single, noise_from_medians(others, "the other A/A runs"))
        old += single.verdict in ("regressed", "improved")
        new += gated.verdict in ("regressed", "improved")
    if aa_paired:
        alarms = sum(v in ("regressed", "improved") for v in aa_paired)
        print(f"{label}: {count} A/A comparisons of {pairs} interleaved pairs: false alarms {alarms}/{count} = "
              f"{alarms / count:.0%} (goal <= 5%)")
        print(f"{label}: the same A/A runs as {len(single_runs)} single-run comparisons: false alarms "
              f"{old / len(single_runs):.0%} with the within-run rule alone, {new / len(single_runs):.0%} with the "
              f"run-to-run noise gate")
    if ab_paired:
        found = sum(v == "regressed" for v in ab_paired)
        print(f"{label}: {count} A/B comparisons, head {slowdown_label} (median slowdown "
              f"{np.median(slowdowns):+.1%}): found regressed {found}/{count} = {found / count:.0%} (goal >= 90%)")
    print(f"{label}: {time.monotonic() - started:.0f} s")


def main() -> None:
    # SIGTERM ends it like Ctrl-C: the finally blocks stop the sim, the adb server and the quota group
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparisons", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--burn-duty", type=float, default=0.1, help="share of each 10 ms the burner spins")
    parser.add_argument("--head-cpu-share", type=float, default=0.92,
                        help="the A/B head's share of the CPUs, by a cgroup quota where one can be made (else the burner)")
    parser.add_argument("--designs", default="A/A,A/B", help="A/A, A/B or both (default)")
    parser.add_argument("--only", choices=("host", "sim"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        designs = tuple(args.designs.split(","))

        def slowdown(pid: int):
            if quota_available():
                return (lambda: cpu_quota(pid, args.head_cpu_share)), f"held to {args.head_cpu_share:.0%} of the CPUs (cgroup quota)"
            return (lambda: burner(args.burn_duty)), f"beside a CPU burner (duty {args.burn_duty:.0%})"

        if args.only in (None, "host"):
            bandwidth = host_bandwidth_gbs(cache_root())
            slow_head, how = slowdown(os.getpid())  # the worker each run starts inherits the quota
            comparisons("host", lambda: HostTarget(bandwidth), args.comparisons, args.pairs, slow_head, how, out, designs)
        if args.only in (None, "sim"):
            import json

            from bench.android.device import AndroidTarget, RuntimeBundle
            from bench.runtimes.build import build, plan_build

            runtime_dir = build(plan_build("host", cache_root()))
            bundle = RuntimeBundle(runtime_dir / "bin" / "llama-server", json.loads((runtime_dir / "runtime.json").read_text()))
            with emulated_phone("false-alarms") as info:
                slow_head, how = slowdown(info.pid)  # the sim's adbd: the llama-server it starts inherits the quota
                comparisons("sim", lambda: AndroidTarget(info.serial, bundle), args.comparisons, args.pairs, slow_head,
                            how, out, designs)


if __name__ == "__main__":
    main()
