"""Host memory bandwidth, the roofline's numerator: a ceiling, so it must be one.

A copy of a buffer far larger than the caches reads and writes every byte once. One thread's copy
is not the machine's bandwidth (all cores decoding together beat it on any desktop), so every
usable CPU copies its own slice at once, and the best of a few tries is the figure. A figure taken
while other work kept the CPUs busy is lower than the machine's: it is used for that run but never
cached, so a busy moment cannot lower the ceiling for good."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..cpu import usable_cpus
from ..files import atomic_write_json

BUFFER_BYTES = 256 * 1024 * 1024   # in all, at least: 4x the last-level cache where that is larger
TRIES = 5
BUSY_SHARE = 0.25                  # more of the CPUs than this busy with other work: not cached
SCHEMA_VERSION = 2


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The size of the largest (highest-level) cache cpu0 has, from sysfs; None where it is not told."""
    best: tuple[int, int] | None = None
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
        if best is None or level > best[0]:
            best = (level, size)
    return best[1] if best else None


def measure_copy_bandwidth_gbs(threads: int | None = None, buffer_bytes: int | None = None, tries: int = TRIES) -> float:
    """GB/s of `threads` simultaneous copies (numpy releases the GIL for them), each of its own
    slice of `buffer_bytes`; read + write counted; the best of `tries`."""
    threads = threads or usable_cpus()
    llc = last_level_cache_bytes() or 0
    total = max(buffer_bytes or BUFFER_BYTES, 4 * llc)
    sources = [np.ones(total // threads // 8, dtype=np.float64) for _ in range(threads)]
    targets = [np.empty_like(source) for source in sources]
    best = float("inf")
    for _ in range(tries):
        barrier = threading.Barrier(threads + 1)

        def copy(index: int) -> None:
            barrier.wait()
            np.copyto(targets[index], sources[index])
            barrier.wait()

        workers = [threading.Thread(target=copy, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        started = time.perf_counter()
        barrier.wait()
        best = min(best, time.perf_counter() - started)
        for worker in workers:
            worker.join()
    return 2 * sum(source.nbytes for source in sources) / best / 1e9


def _busy_share(seconds: float = 0.5) -> float:
    """The share of the CPUs that other work kept busy over `seconds` (from /proc/stat)."""
    def read() -> tuple[float, float]:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return sum(fields), idle
    try:
        total_a, idle_a = read()
        time.sleep(seconds)
        total_b, idle_b = read()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (idle_b - idle_a) / (total_b - total_a) if total_b > total_a else 0.0


def host_bandwidth_gbs(cache_dir: Path) -> tuple[float | None, str]:
    """(GB/s, where it came from): all usable CPUs copying at once. Cached per host, CPU and CPU
    count; a measurement on a busy machine is used once, not cached."""
    cache = cache_dir / "host-bandwidth.json"
    threads = usable_cpus()
    key = f"{platform.node()}|{platform.machine()}|{platform.processor()}|{threads} cpus"
    stored = None
    try:
        stored = json.loads(cache.read_text())
        if stored.get("schema_version") == SCHEMA_VERSION and stored.get("key") == key:
            return float(stored["gbs"]), f"measured {stored['measured_at']} ({stored['method']}, cached in {cache})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    busy = _busy_share()
    # In a child process: the buffers must not land in the run's peak RSS.
    result = subprocess.run([sys.executable, "-m", "bench.host.membw", str(threads)], capture_output=True, text=True,
                            timeout=300)
    try:
        gbs = float(result.stdout.strip())
    except ValueError:
        return None, f"bandwidth measurement failed: {result.stderr.strip()[-200:]}"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    method = (f"numpy copy, the better of all {threads} usable CPUs at once and one alone, best of {TRIES} each, "
              "read+write")
    if busy > BUSY_SHARE:
        return gbs, (f"measured {when} ({method}) while {busy:.0%} of the CPUs were busy with other work, so it may be "
                     "below the machine's ceiling; not cached")
    atomic_write_json(cache, {"schema_version": SCHEMA_VERSION, "key": key, "gbs": gbs, "measured_at": when,
                              "method": method})
    return gbs, f"measured {when} ({method})"


def ceiling_gbs(threads: int) -> float:
    """The best of all CPUs copying at once and one alone: the machine moves at least that much."""
    return max(measure_copy_bandwidth_gbs(count) for count in {threads, 1})


if __name__ == "__main__":
    print(ceiling_gbs(int(sys.argv[1]) if len(sys.argv) > 1 else usable_cpus()))
