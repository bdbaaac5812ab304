"""Throttling, one notion of it: when a device was throttled (thermal status above NONE, or a
cluster's frequency cap below the cap in force when the run started), time to first throttle (a
lower bound when the run never throttled), and a stress run's thermal profile. Pure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import measured_requests, request_windows, sample_series


SUSTAINED_SHARE = 0.2            # sustained decode: the median of the loops in the last 20% of the run


STEADY_SLOPE_C_PER_MIN = 0.5     # steady state: the hottest zone's slope stays under this ...


STEADY_HOLD_S = 60.0             # ... for this long


CAPPED_BELOW = 0.99              # a cluster whose frequency cap is below 99% of its maximum is throttled


def frequency_caps(samples: pd.DataFrame) -> pd.DataFrame:
    """Each cluster's frequency cap (`cpu/cap_cpuN`, a ratio of its maximum) as sampled."""
    if samples.empty:
        return samples
    return samples[(samples["source"] == "cpu") & samples["name"].astype(str).str.startswith("cap_")]


def throttle_times(samples: pd.DataFrame, *, fixed_performance: bool = False) -> np.ndarray | None:
    """Sample times at which the device was throttled: thermal status above NONE, or a cluster's
    frequency cap below CAPPED_BELOW of the cap in force when the run began: its maximum, or, in
    fixed-performance mode (which lowers scaling_max_freq itself), the cap that mode set, as first
    sampled. None when the device reports neither."""
    status, caps = sample_series(samples, "thermal", "status"), frequency_caps(samples)
    if status.empty and caps.empty:
        return None
    capped = np.zeros(0)
    if not caps.empty:
        caps = caps.sort_values("t_s", kind="stable")
        values = caps["value"].to_numpy(dtype=float)
        reference = caps.groupby("name")["value"].transform("first").to_numpy(dtype=float) if fixed_performance \
            else np.ones_like(values)
        capped = caps["t_s"].to_numpy(dtype=float)[values < CAPPED_BELOW * reference]
    times = np.concatenate([status["t_s"].to_numpy(dtype=float)[status["value"].to_numpy(dtype=float) > 0], capped])
    return np.sort(times)


def loops(requests: pd.DataFrame) -> list[dict]:
    """Each measured repetition (a loop of a stress run): when it started and its median decode t/s."""
    frame = measured_requests(requests)
    if frame.empty:
        return []
    starts, ends = request_windows(frame)
    decode = pd.to_numeric(frame["decode_tps"], errors="coerce").to_numpy(dtype=float)
    repetitions = frame["repetition"].to_numpy()
    found = []
    for repetition in np.unique(repetitions):
        mask = repetitions == repetition
        rates = decode[mask][np.isfinite(decode[mask])]
        if rates.size:
            found.append({"repetition": int(repetition), "start_s": float(starts[mask].min()),
                          "end_s": float(np.nanmax(ends[mask])), "decode_tps": float(np.median(rates))})
    return found


def time_to_throttle(run_loops: list[dict], samples: pd.DataFrame, *,
                     fixed_performance: bool = False) -> tuple[float | None, float | None]:
    """Seconds from the first measured request (of `loops()`) to the first throttled sample at or
    after it (0 when the device was still throttled when it began; a throttle that ended before it,
    in the idle baseline or warmup, does not count), and when that sample was (s since run start).
    A run that never throttled gets the load's whole length and None: a lower bound, never a
    measurement. None, None without thermal status or frequency caps."""
    throttled = throttle_times(samples, fixed_performance=fixed_performance)
    if not run_loops or throttled is None:
        return None, None
    start, end = run_loops[0]["start_s"], max(loop["end_s"] for loop in run_loops)
    throttled = throttled[(throttled >= start) & (throttled <= end)]
    if throttled.size == 0:
        return end - start, None
    return float(throttled[0]) - start, float(throttled[0])


def hottest_zone(samples: pd.DataFrame) -> str | None:
    """The temperature sensor that read the highest value in the run."""
    thermal = sample_series(samples, "thermal")
    thermal = thermal[thermal["unit"] == "C"] if not thermal.empty else thermal
    return None if thermal.empty else str(thermal.loc[thermal["value"].idxmax(), "name"])


def steady_state(samples: pd.DataFrame) -> dict | None:
    """The first time the hottest zone's temperature slope (least squares over STEADY_HOLD_S) is under
    STEADY_SLOPE_C_PER_MIN, and its temperature then; None if it never settles in the run."""
    hottest = hottest_zone(samples)
    if hottest is None:
        return None
    zone = sample_series(samples, "thermal", hottest).sort_values("t_s")
    times, temps = zone["t_s"].to_numpy(dtype=float), zone["value"].to_numpy(dtype=float)
    for first, start in enumerate(times):
        last = np.searchsorted(times, start + STEADY_HOLD_S, "right")  # times are sorted: the window is a slice
        if times[last - 1] - start < STEADY_HOLD_S * 0.95:
            break  # too little run left to hold for STEADY_HOLD_S
        slope_per_min = float(np.polyfit(times[first:last], temps[first:last], 1)[0]) * 60
        if abs(slope_per_min) < STEADY_SLOPE_C_PER_MIN:
            return {"zone": hottest, "at_s": float(start), "temperature_c": float(np.mean(temps[first:last])),
                    "slope_c_per_min": slope_per_min}
    return None


def _last(samples: pd.DataFrame, source: str, match) -> dict | None:
    series = sample_series(samples, source)
    if series.empty:
        return None
    series = series[series["name"].astype(str).map(match) & (series["unit"] == "C")]
    if series.empty:
        return None
    row = series.sort_values("t_s").iloc[-1]
    return {"sensor": f"{source}/{row['name']}", "temperature_c": float(row["value"])}


def stress_profile(requests: pd.DataFrame, samples: pd.DataFrame, *, fixed_performance: bool = False) -> dict:
    """A stress (timed) run's thermal profile: peak and sustained decode, stability (slowest loop /
    fastest), time to first throttle, the hottest zone's steady state, skin and battery at the end."""
    run_loops = loops(requests)
    if len(run_loops) < 2:
        return {"available": False, "reason": "fewer than two measured loops"}
    rates = np.array([loop["decode_tps"] for loop in run_loops])
    first, last = run_loops[0]["start_s"], max(loop["end_s"] for loop in run_loops)
    tail = [loop["decode_tps"] for loop in run_loops if loop["start_s"] >= last - SUSTAINED_SHARE * (last - first)]
    throttle_s, throttled_at = time_to_throttle(run_loops, samples, fixed_performance=fixed_performance)
    battery = _last(samples, "thermal", lambda name: name.lower() == "battery") or \
        _last(samples, "battery", lambda name: name == "temperature")
    return {
        "available": True, "loops": run_loops, "seconds": last - first,
        "peak_decode_tps": float(rates.max()), "sustained_decode_tps": float(np.median(tail or [rates[-1]])),
        "stability": float(rates.min() / rates.max()),
        "time_to_first_throttle_s": throttle_s, "never_throttled": throttle_s is not None and throttled_at is None,
        "first_throttle_at_s": throttled_at,
        "steady_state": steady_state(samples),
        "skin_end": _last(samples, "thermal", lambda name: "skin" in name.lower()),
        "battery_end": battery,
    }

