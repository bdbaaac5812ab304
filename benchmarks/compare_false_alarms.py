"""How often does `bench compare` cry wolf, and does it still find a real slowdown?

On the host (llama-cpp-python) and on the emulated phone (llama-server behind a private adb
server), with tiny shapes:
- A/A: base and head are the same build and model, run as interleaved ABBA pairs (what `bench ab`
  does). Each comparison is `--pairs` pairs through `compare_sides`, every metric, with the gate's
  correction; a gating verdict either way is a false alarm (goal <= 5%).
- Single runs (`bench compare BASE HEAD`): the same runs one pair at a time, gated by the run-to-run
  noise of a history (the other A/A runs: the base's build), or by the default bound with none;
  for the A/B runs also with the head's own slow runs in the history, as the old match allowed.
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
from bench.compare import METRICS, RunValues, compare_sides, make_side, noise_from_medians
from bench.summary import RepetitionValues
from bench.config import resolve_scenario
from bench.host.membw import host_bandwidth_gbs
from bench.host.target import HostTarget
from bench.runner import RunOptions, run_benchmark

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


def run_values(make_target, scenario, model, out: Path) -> RunValues:
    """One real run; what compare sees of it (every metric, per repetition)."""
    target = make_target()
    try:
        result = run_benchmark(RunOptions(device="ab", scenario=scenario, model=model, out_root=out, telemetry_hz=None),
                               target)
    finally:
        target.release()
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    found = RepetitionValues.from_stored(result.summary["per_repetition"])
    run = {"status": "complete", "device": {"kind": "ab"}, "model": {"sha256": "m"}, "scenario": {"hash": "s"},
           "runtime": {"kind": "same"}}
    return RunValues(str(result.run_dir), run, found.values, found.censored)


def _alarm(comparison) -> bool:
    """A gating verdict either way: what fails (or would pass) a PR gate."""
    return any(m.gating and m.verdict in ("regressed", "improved") for m in comparison.metrics)


def single(base: RunValues, head: RunValues, history: list[RunValues] | None):
    """`bench compare BASE HEAD` with one run a side: the noise band of each metric from the
    history's run medians (a results folder), or, with none, bench's default bound."""
    noise = {}
    for spec in METRICS:
        medians = [float(np.median(run.values[spec.name])) for run in history or [] if run.values.get(spec.name)]
        band = noise_from_medians(medians, "earlier runs")
        if band is not None:
            noise[spec.name] = band
    return compare_sides(make_side("base", [base]), make_side("head", [head]), noise=noise)


def rate(hits: int, total: int) -> str:
    return f"{hits}/{total} = {hits / total:.0%}" if total else "n/a"


def comparisons(label: str, make_target, count: int, pairs: int, slow_head, slowdown_label: str, out: Path,
                designs: tuple[str, ...] = ("A/A", "A/B")) -> None:
    scenario_path = out / "tiny.toml"
    scenario_path.write_text(TINY)
    scenario, model = resolve_scenario(str(scenario_path)), model_info("smollm2-135m")
    started = time.monotonic()
    aa_alarms, ab_found, slowdowns = [], [], []
    aa_single: list[tuple[RunValues, RunValues]] = []
    ab_single: list[tuple[RunValues, RunValues]] = []
    for design in designs:
        for index in range(count):
            base_runs, head_runs = [], []
            for pair in range(pairs):
                for side in (("base", "head") if pair % 2 == 0 else ("head", "base")):
                    loaded = slow_head() if design == "A/B" and side == "head" else contextlib.nullcontext()
                    with loaded:
                        values = run_values(make_target, scenario, model, out / "runs")
                    (base_runs if side == "base" else head_runs).append(values)
            result = compare_sides(make_side("base", base_runs), make_side("head", head_runs), paired=True)
            decode = next(m for m in result.metrics if m.spec.name == "decode_tps")
            if design == "A/A":
                aa_alarms.append(_alarm(result))
                aa_single += list(zip(base_runs, head_runs))
            else:
                ab_found.append(result.regressed)
                slowdowns.append(decode.change)
                ab_single += list(zip(base_runs, head_runs))
            alarms = [f"{m.spec.name} {m.verdict} {m.change:+.1%} p={m.p_value:.3g}" for m in result.metrics
                      if m.gating and m.verdict in ("regressed", "improved")]
            print(f"  {label} {design} {index + 1}/{count}: decode {decode.verdict} ({decode.change:+.1%}), gate "
                  f"{'; '.join(alarms) or 'quiet'}", flush=True)
    gate = "prefill, decode and TTFT, each at 0.05/3"
    if aa_alarms:
        print(f"{label} paired: {count} A/A comparisons of {pairs} interleaved pairs, gate ({gate}): false alarms "
              f"{rate(sum(aa_alarms), count)} (goal <= 5%)")
    if ab_found:
        print(f"{label} paired: {count} A/B comparisons, head {slowdown_label} (median decode change "
              f"{np.median(slowdowns):+.1%}): found regressed {rate(sum(ab_found), count)} (goal >= 90%)")
    # One pair at a time as two single runs (`bench compare BASE HEAD`), with what a results folder holds.
    aa_runs = [run for pair in aa_single for run in pair]
    for name in ("prefill_tps", "decode_tps", "ttft_ms", "itl_p95_ms"):  # what the default bounds rest on
        medians = np.array([np.median(run.values[name]) for run in aa_runs if run.values.get(name)])
        if medians.size >= 2:
            ratios = np.abs(np.log(medians[:, None] / medians[None, :]))[np.triu_indices(medians.size, 1)]
            print(f"{label} run-to-run spread of {name} over {medians.size} A/A runs: two runs differ by up to "
                  f"{np.exp(ratios.max()) - 1:.1%} (95th percentile {np.exp(np.percentile(ratios, 95)) - 1:.1%})")
    if aa_single:
        clean = [single(b, h, [r for r in aa_runs if r is not b and r is not h]) for b, h in aa_single]
        bare = [single(b, h, None) for b, h in aa_single]
        print(f"{label} single runs, A/A ({len(aa_single)} comparisons): false alarms with the history of the base's "
              f"build {rate(sum(map(_alarm, clean)), len(clean))}, with no history (default bound) "
              f"{rate(sum(map(_alarm, bare)), len(bare))} (goal <= 5%)")
    if ab_single and aa_runs:
        slow_runs = [head for _, head in ab_single]
        clean = [single(b, h, aa_runs) for b, h in ab_single]
        # the old rule: every earlier complete run of the setup, the head's own slow runs among them
        mixed = [single(b, h, aa_runs + [r for r in slow_runs if r is not h]) for b, h in ab_single]
        bare = [single(b, h, None) for b, h in ab_single]
        print(f"{label} single runs, A/B ({len(ab_single)} comparisons): found regressed with the history of the base's "
              f"build {rate(sum(c.regressed for c in clean), len(clean))}, with no history (default bound) "
              f"{rate(sum(c.regressed for c in bare), len(bare))}; with the head's own runs in the history (the old "
              f"match, which the build key now excludes) {rate(sum(c.regressed for c in mixed), len(mixed))} "
              "(goal >= 90%)")
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
