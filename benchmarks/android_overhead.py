"""What bench's Android path costs the phone it measures, part by part, on the emulated phone.
Each round measures every part, alternating the order; printed as medians and ratios to llama-bench:

  A. llama-bench tg64 at the request's depth, same model, threads and CPU mask (the reference)
  B. llama-server, one request not streamed, decode from the server's own timings (the server path)
  C. the same request streamed to the host through the adb server (bench's client, the relay)
  D. a whole `bench run` (quick), telemetry off
  E. the same with the telemetry loop at 10 Hz
  G. llama-bench tg64 run through `bench run` with the telemetry loop at 10 Hz: the cost of
     telemetry and the sim alone, with no server in the way
  F. (with --affinity) C while a busy loop holds another CPU at 10% duty: whether work on other
     cores slows the runtime's at all on this machine (on a phone, cores share no pipeline)

During E it also counts the CPU time of each process, split into what a real phone runs
(llama-server, the telemetry loop) and what only the emulation puts on the phone's cores (the sim's
adbd relay and physics, the adb server, bench's own host process): on a real phone those run on
the host. `--affinity` pins the runtime as a phone's big cores are pinned, leaving the other CPUs
for the rest, as a phone's little cores are.

    .venv/bin/python benchmarks/android_overhead.py [--rounds 4] [--threads N --affinity CPUS] [--push]
Needs the host runtime (`bench runtime build --target host`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import adb, adb_push, emulated_phone, interleaved

from bench.android.device import ROOT, AndroidTarget, RuntimeBundle
from bench.catalog import cache_root, model_info
from bench.config import resolve_scenario
from bench.cpu import cpu_mask, parse_cpus
from bench.host.membw import host_bandwidth_gbs
from bench.progress import NullProgress
from bench.runner import RunOptions, run_benchmark
from bench.runtimes.build import build, plan_build

TICK_S = os.sysconf("SC_CLK_TCK")


class CpuTime:
    """CPU seconds per process group while it runs, from /proc (the sim's phone is on this host)."""

    def __init__(self, sim_pid: int):
        self.sim_pid, self.first, self.last = sim_pid, {}, {}
        self._scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _group(self, pid: int) -> str | None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"llama-server" in cmdline:
            return "phone: llama-server"
        if b"telemetry.sh" in cmdline:
            return "phone: telemetry loop"
        if pid == self.sim_pid:
            return "sim only: adbd relay, physics"
        if b"fork-server" in cmdline:
            return "host: adb server"
        if pid == os.getpid():
            return "host: bench (client, parser)"
        return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                group = self._group(pid)
                if group is None:
                    continue
                try:
                    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
                except OSError:
                    continue
                ticks = int(fields[11]) + int(fields[12])
                # a process already running counts from the first scan; one started later, from its start
                self.first.setdefault((group, pid), ticks if self._scans == 0 else 0)
                self.last[(group, pid)] = ticks
            self._scans += 1
            self._stop.wait(0.1)

    def __enter__(self) -> "CpuTime":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self.started

    def shares(self) -> dict[str, float]:
        """CPU seconds per second of the run, per group (1.0 = one core busy throughout)."""
        used: dict[str, float] = {}
        for (group, pid), ticks in self.last.items():
            used[group] = used.get(group, 0.0) + (ticks - self.first[(group, pid)]) / TICK_S
        return {group: seconds / self.seconds for group, seconds in sorted(used.items())}


def pin_host_side(sim_pid: int, runtime_cpus: tuple[int, ...]) -> list[int]:
    """On a real phone bench, its HTTP client and telemetry parser and the adb server run on the
    host, never on the phone's cores: keep them (and the sim's own relay and physics) off the
    runtime's CPUs. Threads and children started later inherit the mask."""
    spare = sorted(set(os.sched_getaffinity(0)) - set(runtime_cpus))
    pids = [os.getpid(), sim_pid] + [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()
                                      and b"fork-server" in _read(f"/proc/{e.name}/cmdline")]
    for pid in pids:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(task.name), spare)
            except OSError:
                pass
    return spare


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def bench_run(serial: str, bundle: RuntimeBundle, model, scenario, affinity, telemetry_hz: float | None) -> float:
    target = AndroidTarget(serial, bundle, host_bandwidth=host_bandwidth_gbs(cache_root()), affinity=affinity)
    with tempfile.TemporaryDirectory() as out:
        result = run_benchmark(RunOptions("sim", scenario, model, Path(out), telemetry_hz=telemetry_hz,
                                          allow=frozenset({"thermal"}), correctness=False), target)
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    return result.summary["decode_tps_median"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--affinity", type=parse_cpus, default=None, help="CPUs to pin the runtime to, e.g. 1 or 2-3")
    parser.add_argument("--push", action="store_true", help="also compare the model push with adb push")
    args = parser.parse_args()
    runtime_dir = build(plan_build("host", cache_root()))
    bundle = RuntimeBundle(runtime_dir / "bin" / "llama-server", json.loads((runtime_dir / "runtime.json").read_text()))
    model = model_info("smollm2-135m")
    scenario = resolve_scenario("quick").with_overrides(repetitions=args.repetitions, threads=args.threads)
    affinity = tuple(args.affinity) if args.affinity else None
    # the sim's thermal model throttles a hot phone (two busy cores heat it past throttle_start_c):
    # off here, so that the parts differ only by what bench does
    with emulated_phone("bench-android", settings=("thermal.throttle_start_c=500",)) as info:
        device = adb.Device(info.serial)
        if affinity:
            host_side = pin_host_side(info.pid, affinity)
            print(f"the host side (this process, the sim's adbd and physics, the adb server) pinned to CPUs "
                  f"{host_side}, as if it ran on another machine")
        results: dict[str, list[float]] = {part: [] for part in "ABCDEFG"}
        shares: list[dict[str, float]] = []
        facts: dict = {}

        def server_parts(index: int) -> None:
            """A, B and C share one server (idle, it uses no CPU), in alternating order."""
            target = AndroidTarget(info.serial, bundle, affinity=affinity)
            try:
                target.push_artifacts(model, NullProgress(), with_bench=True)
                bench_binary, model_remote = target.pushed["runtime"]["path"], target.pushed["model"]["path"]
                server = target.prepare(model, scenario, NullProgress())
                threads, cpus = target.threads(scenario), target.cpus(scenario)
                prompt = scenario.prompts[0].text
                depth = len(server.tokenize(prompt))
                facts.update(threads=threads, cpus=cpus, depth=depth)
                mask = f" --cpu-mask {cpu_mask(cpus)} --cpu-strict 1" if cpus else ""

                def llama_bench() -> None:
                    out = device.shell(f"{bench_binary} -m {model_remote} -p 0 -n 64 -d {depth} -t {threads}{mask} "
                                       f"-r {args.repetitions} -o json", timeout=600)
                    results["A"].append(json.loads(out.stdout)[0]["avg_ts"])

                def server_requests(stream: bool) -> None:
                    values = []
                    for _ in range(args.repetitions):
                        if stream:
                            done = server.complete(prompt, n_predict=scenario.n_predict, ignore_eos=True,
                                                   keep_cache=False, temperature=0.0, seed=scenario.seed)
                            values.append(done.decode_n / done.decode_ms * 1000)
                        else:
                            body = {"prompt": prompt, "n_predict": scenario.n_predict, "ignore_eos": True,
                                    "seed": scenario.seed, "cache_prompt": False, "temperature": 0.0, "top_k": 40,
                                    "top_p": 0.95, "min_p": 0.05}
                            values.append(server._post("/completion", body)["timings"]["predicted_per_second"])
                    results["C" if stream else "B"].append(statistics.median(values))

                def coupled() -> None:
                    """C with a busy loop on another CPU at 10% duty: does work elsewhere slow the
                    runtime's core at all? (On a phone, cores share no pipeline.)"""
                    spare = sorted(set(os.sched_getaffinity(0)) - set(cpus))[:1]
                    code = ("import os, time\nos.sched_setaffinity(0, %r)\nwhile True:\n    t = time.perf_counter()\n"
                            "    while time.perf_counter() - t < 0.001: pass\n    time.sleep(0.009)" % (set(spare),))
                    burner = subprocess.Popen([sys.executable, "-c", code])
                    try:
                        time.sleep(0.3)
                        before = len(results["C"])
                        server_requests(True)
                        results["F"].append(results["C"].pop(before))
                    finally:
                        burner.kill()
                        burner.wait()

                parts = [llama_bench, lambda: server_requests(False), lambda: server_requests(True)]
                if cpus:
                    parts.append(coupled)
                for part in parts if index % 2 == 0 else parts[::-1]:
                    part()
            finally:
                target.release()

        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
            handle.write(f'name = "tg64"\nkind = "llama-bench"\ntg = 64\nrepetitions = {args.repetitions}\n')
        bench_tg = resolve_scenario(handle.name).with_overrides(threads=args.threads)
        os.unlink(handle.name)

        def llama_bench_through_bench() -> None:
            results["G"].append(bench_run(info.serial, bundle, model, bench_tg, affinity, 10.0))

        def full_run(hz: float | None) -> None:
            if hz is None:
                results["D"].append(bench_run(info.serial, bundle, model, scenario, affinity, None))
                return
            with CpuTime(info.pid) as cpu:
                results["E"].append(bench_run(info.serial, bundle, model, scenario, affinity, hz))
            shares.append(cpu.shares())

        for index in range(args.rounds):  # every part in every round: the shared machine drifts
            server_parts(index)
            for run in ((lambda: full_run(None)), (lambda: full_run(10.0)), llama_bench_through_bench)[::1 if index % 2 == 0 else -1]:
                run()
        threads, cpus, depth = facts["threads"], facts["cpus"], facts["depth"]

        names = {"A": f"llama-bench tg64 at depth {depth}", "B": "llama-server, not streamed (server timings)",
                 "C": "llama-server, streamed to the host", "D": "bench run, telemetry off",
                 "E": "bench run, telemetry 10 Hz", "F": "C with a 10% busy loop on another CPU",
                 "G": "llama-bench tg64 (depth 0) through bench, 10 Hz"}
        print(f"{threads} threads{f' pinned to CPUs {list(cpus)}' if cpus else ', not pinned'} on a "
              f"{os.cpu_count()}-CPU host; {args.rounds} rounds, decode t/s")
        print("  (ratio: the median over rounds of each round's value / that round's A, so that the machine's "
              "drift between rounds cancels)")
        for part, values in results.items():
            if not values:
                continue
            paired = statistics.median(value / base for value, base in zip(values, results["A"]))
            print(f"  {part}. {names[part]:47s} {statistics.median(values):7.2f}  ratio {paired:.3f}  "
                  f"({', '.join(f'{v:.1f}' for v in values)})")
        print("CPU during E, cores busy on average (1.0 = one core throughout):")
        for group in sorted({g for s in shares for g in s}):
            print(f"  {group:35s} {statistics.median(s.get(group, 0.0) for s in shares):.3f}")

        if args.push:
            measure_push(info, device, model, bundle)


def measure_push(info, device, model, bundle) -> None:
    """The model push through bench (temp name, on-device sha256, rename) vs adb push."""
    target = AndroidTarget(info.serial, bundle)
    rates_bench, rates_adb = [], []

    def push_bench():
        device.shell(f"rm -rf {ROOT}/models", check=True)
        started = time.perf_counter()
        target.push_artifacts(model, NullProgress())
        rates_bench.append(model.bytes / 1e6 / (time.perf_counter() - started))

    def push_adb():
        started = time.perf_counter()
        adb_push(info.serial, model.path, f"{ROOT}/adb-push.gguf")
        rates_adb.append(model.bytes / 1e6 / (time.perf_counter() - started))

    try:
        interleaved(2, push_bench, push_adb)
    finally:
        target.release()  # the device lock
    print(f"push {model.bytes / 1e6:.0f} MB: bench {statistics.median(rates_bench):.1f} MB/s (including the "
          f"on-device sha256 and rename) vs adb push {statistics.median(rates_adb):.1f} MB/s: "
          f"ratio {statistics.median(rates_bench) / statistics.median(rates_adb):.2f}")


if __name__ == "__main__":
    main()
