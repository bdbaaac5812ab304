"""The Android path on the emulated phone, one run each side, printed as ratios:
- bench's decode t/s (llama-server, tokens timed on the host) vs llama-bench tg with the same model
  and threads, run on the same "phone";
- decode t/s with the device-side telemetry loop at 10 Hz vs telemetry off;
- model push MB/s through bench (temp name, sha256 on the device, rename) vs `adb push`.

    .venv/bin/python benchmarks/android_overhead.py [--rounds 2]
Needs the host runtime (`bench runtime build --target host`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import adb, adb_push, emulated_phone, interleaved

from bench.android.device import ROOT, AndroidTarget, RuntimeBundle
from bench.catalog import cache_root, model_info
from bench.config import resolve_scenario
from bench.host.membw import host_bandwidth_gbs
from bench.progress import NullProgress
from bench.runner import RunOptions, run_benchmark
from bench.runtimes.build import build, plan_build


def bench_decode(serial: str, bundle: RuntimeBundle, model, telemetry_hz: float | None, repetitions: int) -> float:
    scenario = resolve_scenario("quick").with_overrides(repetitions=repetitions)
    target = AndroidTarget(serial, bundle, host_bandwidth=host_bandwidth_gbs(cache_root()))
    with tempfile.TemporaryDirectory() as out:
        result = run_benchmark(RunOptions("sim", scenario, model, Path(out), telemetry_hz=telemetry_hz,
                                          allow=frozenset({"thermal"})), target)
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    return result.summary["decode_tps_median"], target.threads(scenario)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    runtime_dir = build(plan_build("host", cache_root()))
    bundle = RuntimeBundle(runtime_dir / "bin" / "llama-server", json.loads((runtime_dir / "runtime.json").read_text()))
    model = model_info("smollm2-135m")
    with emulated_phone("bench-android") as info:
        device = adb.Device(info.serial)

        # 1. decode: bench vs llama-bench tg64, same model, threads, phone
        ours, threads = bench_decode(info.serial, bundle, model, None, args.repetitions)
        device.push(runtime_dir / "bin" / "llama-bench", f"{ROOT}/llama-bench")
        model_remote = next(iter(device.shell(f"ls {ROOT}/models/*.gguf").stdout.split()))
        out = device.shell(f"chmod 755 {ROOT}/llama-bench && {ROOT}/llama-bench -m {model_remote} -p 0 -n 64 "
                           f"-t {threads} -r {args.repetitions} -o json", timeout=600)
        tg = json.loads(out.stdout)[0]["avg_ts"]
        print(f"decode: bench {ours:.2f} t/s (llama-server, quick, n_predict 64) vs llama-bench tg64 {tg:.2f} t/s "
              f"({threads} threads): ratio {ours / tg:.3f}")

        # 2. telemetry at 10 Hz vs off, interleaved
        on, off = [], []
        interleaved(args.rounds, lambda: on.append(bench_decode(info.serial, bundle, model, 10.0, args.repetitions)[0]),
                    lambda: off.append(bench_decode(info.serial, bundle, model, None, args.repetitions)[0]))
        print(f"telemetry: decode {statistics.median(on):.2f} t/s at 10 Hz vs {statistics.median(off):.2f} t/s off: "
              f"ratio {statistics.median(on) / statistics.median(off):.3f}")

        # 3. model push through bench (temp name, on-device sha256, rename) vs adb push
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
            interleaved(args.rounds, push_bench, push_adb)
        finally:
            target.release()  # the device lock
        print(f"push {model.bytes / 1e6:.0f} MB: bench {statistics.median(rates_bench):.1f} MB/s (including the "
              f"on-device sha256 and rename) vs adb push {statistics.median(rates_adb):.1f} MB/s: "
              f"ratio {statistics.median(rates_bench) / statistics.median(rates_adb):.2f}")


if __name__ == "__main__":
    main()
