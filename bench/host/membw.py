"""Host memory bandwidth, measured once per machine and cached: the roofline's numerator.

A copy of a buffer far larger than the caches reads and writes every byte once; the best of a few
tries is the sustained bandwidth a decode step (which streams the weights) can hope for."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..files import atomic_write_json

BUFFER_BYTES = 256 * 1024 * 1024
TRIES = 5


def measure_copy_bandwidth_gbs(buffer_bytes: int = BUFFER_BYTES, tries: int = TRIES) -> float:
    source = np.ones(buffer_bytes // 8, dtype=np.float64)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9  # read + write


def host_bandwidth_gbs(cache_dir: Path) -> tuple[float | None, str]:
    """(GB/s, where it came from). Cached per host name and CPU so each run does not pay for it."""
    cache = cache_dir / "host-bandwidth.json"
    key = f"{platform.node()}|{platform.machine()}|{platform.processor()}"
    try:
        stored = json.loads(cache.read_text())
        if stored.get("schema_version") == 1 and stored.get("key") == key:
            return float(stored["gbs"]), f"measured {stored['measured_at']} (numpy copy, cached in {cache})"
    except (OSError, ValueError, KeyError):
        pass
    # In a child process: the 512 MiB of buffers must not land in the run's peak RSS.
    result = subprocess.run([sys.executable, "-m", "bench.host.membw"], capture_output=True, text=True, timeout=120)
    try:
        gbs = float(result.stdout.strip())
    except ValueError:
        return None, f"bandwidth measurement failed: {result.stderr.strip()[-200:]}"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_json(cache, {"schema_version": 1, "key": key, "gbs": gbs, "measured_at": when,
                              "method": f"numpy copyto of {BUFFER_BYTES >> 20} MiB, best of {TRIES}, read+write"})
    return gbs, f"measured {when} (numpy copy)"


if __name__ == "__main__":
    print(measure_copy_bandwidth_gbs())
