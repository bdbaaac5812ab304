"""Push throughput through the emulated phone: bench's push (sync SEND through the adb server in
64 KiB chunks; adbutils' own sync push uses 4 KiB and ran at 0.26x adb push here) vs `adb push` of
the same file, side by side in one run, alternating order. Prints MB/s for each and the ratio.

    .venv/bin/python benchmarks/sim_push.py [--mb 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.android import adb  # noqa: E402
from bench.catalog import cache_root  # noqa: E402
from bench.sim import control  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    own_server = adb.SERVER_PORT_ENV not in os.environ
    os.environ.setdefault(adb.SERVER_PORT_ENV, "5139")  # a private adb server, not the user's
    info = control.start(cache_root(), name=f"bench-push-{os.getpid()}")
    try:
        adb.connect(info.serial)
        adb.wait_for_state(info.serial)
        device = adb.Device(info.serial)
        with tempfile.TemporaryDirectory() as scratch:
            payload = Path(scratch) / "payload.bin"
            payload.write_bytes(os.urandom(args.mb * 1024 * 1024))
            rates = {"bench push": [], "adb push": []}

            def via_adbutils() -> None:
                started = time.perf_counter()
                device.push(payload, "/data/local/tmp/push-a.bin")
                rates["bench push"].append(args.mb * 1.048576 / (time.perf_counter() - started))

            def via_adb() -> None:
                started = time.perf_counter()
                subprocess.run([adb.adb_binary(), "-P", os.environ[adb.SERVER_PORT_ENV], "-s", info.serial, "push",
                                str(payload), "/data/local/tmp/push-b.bin"], check=True, capture_output=True, timeout=600)
                rates["adb push"].append(args.mb * 1.048576 / (time.perf_counter() - started))

            for round_index in range(args.rounds):
                for measure in (via_adbutils, via_adb) if round_index % 2 == 0 else (via_adb, via_adbutils):
                    measure()
                print(f"round {round_index + 1}: bench push {rates['bench push'][-1]:.1f} MB/s, "
                      f"adb push {rates['adb push'][-1]:.1f} MB/s")
        ours, theirs = statistics.median(rates["bench push"]), statistics.median(rates["adb push"])
        print(f"{args.mb} MB through the sim: bench (sync SEND, 64 KiB chunks) {ours:.1f} MB/s, adb push {theirs:.1f} MB/s, ratio {ours / theirs:.2f}")
    finally:
        adb.disconnect(info.serial)
        control.stop(info)
        if own_server:
            subprocess.run([adb.adb_binary(), "-P", os.environ[adb.SERVER_PORT_ENV], "kill-server"], capture_output=True, timeout=30)


if __name__ == "__main__":
    main()
