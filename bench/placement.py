"""Where the runtime's threads really ran during the measured requests. Pure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .cpu import format_cpus
from .tables import measured_requests, request_windows, sample_series


OFF_AFFINITY_SHARE = 0.10  # more of the runtime's CPU time than this outside the asked-for CPUs is a warning


def thread_placement(requests: pd.DataFrame, samples: pd.DataFrame, *, clusters: list[dict],
                     affinity: list[int] | None, threads: int | None) -> dict:
    """Where the runtime's threads really ran during the measured requests: each cluster's (or, with
    no cluster list, each CPU's) share of its CPU time, the busy threads per telemetry tick, and a
    warning when that differs from the CPUs and thread count asked for (llama.cpp's mask is
    ignored on some phones; threads spilling onto little cores collapse decode)."""
    frame = measured_requests(requests)
    counters = sample_series(samples, "threads")
    if frame.empty or counters.empty:
        return {"available": False, "reason": "no thread readings (telemetry off, or no /proc/PID/task)"}
    # only the requests' own windows: cooldown waits and think time between them are idle by design,
    # and would read as threads not busy
    starts, ends = request_windows(frame)
    per_cpu: dict[int, float] = {}
    for name, series in counters[counters["name"] != "busy"].groupby("name"):
        times, values = series["t_s"].to_numpy(dtype=float), series["value"].to_numpy(dtype=float)
        order = np.argsort(times)
        used = float(np.sum(np.interp(ends, times[order], values[order], left=0.0) -
                            np.interp(starts, times[order], values[order], left=0.0)))
        if used > 0:
            per_cpu[int(str(name)[3:])] = used
    total = sum(per_cpu.values())
    # a tick counts the threads that ran since the tick before: only a tick whose whole interval lies
    # inside one request's window says how many threads that request kept busy
    busy_rows = counters[counters["name"] == "busy"].sort_values("t_s")
    stamps = busy_rows["t_s"].to_numpy(dtype=float)
    previous = np.concatenate([[-np.inf], stamps[:-1]])
    inside = ((previous[:, None] >= starts[None, :]) & (stamps[:, None] <= ends[None, :])).any(axis=1)
    busy = busy_rows["value"][inside]
    groups = [(c.get("name") or f"cpu{format_cpus(tuple(c['cpus']))}", tuple(c["cpus"])) for c in clusters] or \
        [(f"cpu{cpu}", (cpu,)) for cpu in sorted(per_cpu)]
    shares = {name: (sum(per_cpu.get(cpu, 0.0) for cpu in cpus) / total if total else None) for name, cpus in groups}
    result = {"available": True, "cpu_seconds": total, "per_cpu_seconds": {str(k): v for k, v in sorted(per_cpu.items())},
              "cluster_shares": shares, "clusters": {name: list(cpus) for name, cpus in groups},
              "busy_threads_median": float(busy.median()) if not busy.empty else None,
              "busy_threads_max": int(busy.max()) if not busy.empty else None, "warnings": []}
    if affinity and total:
        outside = sum(seconds for cpu, seconds in per_cpu.items() if cpu not in affinity)
        result["off_affinity_share"] = outside / total
        if outside / total > OFF_AFFINITY_SHARE:
            elsewhere = sorted(cpu for cpu in per_cpu if cpu not in affinity)
            result["warnings"].append(f"asked for cores {format_cpus(tuple(affinity))}, {outside / total:.0%} of the "
                                      f"runtime's CPU time ran on cores {format_cpus(tuple(elsewhere))}")
    median_busy = result["busy_threads_median"]
    # llama.cpp's pool is `threads` busy threads; the server's HTTP and the sampler may add two
    if threads and median_busy is not None and (median_busy < threads - 0.5 or median_busy > threads + 2):
        result["warnings"].append(f"asked for {threads} threads, {median_busy:.0f} were busy per telemetry tick "
                                  "(median over the measured requests)")
    return result

