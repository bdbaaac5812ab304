"""Push throughput through the emulated phone: bench's push (sync SEND through the adb server in
64 KiB chunks; adbutils' own sync push uses 4 KiB and ran at 0.26x adb push here) vs `adb push` of
the same file, side by side in one run, alternating order. Prints MB/s for each and the ratio.

    .venv/bin/python benchmarks/sim_push.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import adb, adb_push, emulated_phone, interleaved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with emulated_phone("bench-push") as info, tempfile.TemporaryDirectory() as scratch:
        device = adb.Device(info.serial)
        payload = Path(scratch) / "payload.bin"
        payload.write_bytes(os.urandom(args.mb * 1024 * 1024))
        ours, theirs = [], []

        def timed(bucket, push):
            def run():
                started = time.perf_counter()
                push()
                bucket.append(args.mb * 1.048576 / (time.perf_counter() - started))
            return run

        interleaved(args.rounds, timed(ours, lambda: device.push(payload, "/data/local/tmp/push-a.bin")),
                    timed(theirs, lambda: adb_push(info.serial, str(payload), "/data/local/tmp/push-b.bin")),
                    lambda index: print(f"round {index + 1}: bench push {ours[-1]:.1f} MB/s, adb push {theirs[-1]:.1f} MB/s"))
        print(f"{args.mb} MB through the sim: bench push {statistics.median(ours):.1f} MB/s, "
              f"adb push {statistics.median(theirs):.1f} MB/s, ratio {statistics.median(ours) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
