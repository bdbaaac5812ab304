"""Telemetry overhead on the host: decode t/s with the sampler at 10 Hz vs off, interleaved so that
machine noise hits both sides alike. Prints each pair and the ratio of medians.

    .venv/bin/python benchmarks/telemetry_overhead.py [--pairs 4] [--hz 10]
"""

from __future__ import annotations

import argparse
import statistics

from _common import bench_decode_tps, interleaved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--scenario", default="quick")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    on, off = [], []

    def measure(hz, bucket):
        return lambda: bucket.append(bench_decode_tps(args.model, args.scenario, telemetry_hz=hz, repetitions=args.repetitions))

    interleaved(args.pairs, measure(args.hz, on), measure(None, off),
                lambda index: print(f"pair {index + 1}: sampler {args.hz:g} Hz {on[-1]:.2f} t/s, off {off[-1]:.2f} t/s"))
    ratio = statistics.median(on) / statistics.median(off)
    print(f"median decode t/s: sampler on {statistics.median(on):.2f}, off {statistics.median(off):.2f}")
    print(f"ratio on/off = {ratio:.3f} (overhead {1 - ratio:+.1%})")


if __name__ == "__main__":
    main()
