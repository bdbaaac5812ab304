"""Run summary from the stored tables: per-repetition values, then median and spread over
repetitions. Pure: DataFrames in, plain values out; report, compare and `--json` all read this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .cpu import format_cpus
from .records import request_end_s
from .store import load_run
from .stats import Summary, bootstrap_median_ci, integrate_window, summarize

# metric -> (requests column, unit, higher_is_better, label)
REQUEST_METRICS = {
    "prefill_tps": ("prefill_tps", "tokens/s", True, "Prefill"),
    "decode_tps": ("decode_tps", "tokens/s", True, "Decode"),
    "ttft_ms": ("ttft_ms", "ms", False, "Time to first token"),
    "itl_p50_ms": ("itl_p50_ms", "ms", False, "Inter-token latency p50"),
    "itl_p95_ms": ("itl_p95_ms", "ms", False, "Inter-token latency p95"),
    "e2e_ms": ("e2e_ms", "ms", False, "End-to-end request"),
}
UNSTABLE_CV = 0.10


def measured_requests(requests: pd.DataFrame) -> pd.DataFrame:
    """Requests that count: not warmup, no error."""
    if requests.empty:
        return requests
    return requests[~warmup_mask(requests) & ~failed_mask(requests)]


def request_windows(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each request's (start, end) in seconds since run start, as arrays."""
    starts = pd.to_numeric(requests["t_start_s"]).to_numpy(dtype=float)
    return starts, request_end_s(starts, pd.to_numeric(requests["e2e_ms"]).to_numpy(dtype=float))


def warmup_mask(requests: pd.DataFrame) -> np.ndarray:
    column = requests["warmup"]
    if column.dtype == bool:
        return column.to_numpy()
    return column.astype(str).str.lower().isin(["true", "1"]).to_numpy()


def failed_mask(requests: pd.DataFrame) -> np.ndarray:
    column = requests["error"]
    present = column.notna().to_numpy()
    if not present.any():
        return present
    return present & (column.astype(str) != "").to_numpy()


def per_repetition(requests: pd.DataFrame, column: str) -> list[float]:
    """One value per repetition: the median over that repetition's requests (chat turns)."""
    frame = measured_requests(requests)
    if frame.empty:
        return []
    values = pd.to_numeric(frame[column], errors="coerce")
    grouped = values.groupby(frame["repetition"]).median().dropna()
    return [float(v) for v in grouped.values]


@dataclass(frozen=True)
class MetricSummary:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    values: tuple[float, ...]
    summary: Summary


def request_metrics(requests: pd.DataFrame) -> dict[str, MetricSummary]:
    metrics = {}
    for name, (column, unit, higher, label) in REQUEST_METRICS.items():
        values = per_repetition(requests, column)
        metrics[name] = MetricSummary(name, label, unit, higher, tuple(values), summarize(values))
    return metrics


def sample_series(samples: pd.DataFrame, source: str, name: str | None = None) -> pd.DataFrame:
    if samples.empty:
        return samples
    mask = samples["source"] == source
    if name is not None:
        mask &= samples["name"] == name
    return samples[mask]


def peak_rss_bytes(samples: pd.DataFrame, fallback: float | None = None) -> float | None:
    """max(VmHWM, VmRSS + VmSwap) over the run (DESIGN section 5), or the runner's final reading."""
    candidates = [fallback] if fallback else []
    process = sample_series(samples, "process")
    if not process.empty:
        for name in ("peak_rss", "rss"):
            series = process[process["name"] == name]["value"]
            if not series.empty:
                candidates.append(float(series.max()))
        rss = process[process["name"] == "rss"].set_index("t_s")["value"]
        swap = process[process["name"] == "swap"].set_index("t_s")["value"]
        if not rss.empty and not swap.empty:
            joined = rss.add(swap.reindex(rss.index).fillna(0))
            candidates.append(float(joined.max()))
    return max(candidates) if candidates else None


def max_temperature_c(samples: pd.DataFrame) -> float | None:
    thermal = sample_series(samples, "thermal")
    thermal = thermal[thermal["unit"] == "C"] if not thermal.empty else thermal
    return float(thermal["value"].max()) if not thermal.empty else None


def run_summary(requests: pd.DataFrame, samples: pd.DataFrame, *, final_peak_rss: float | None = None,
                bandwidth_gbs: float | None = None, model_bytes: int | None = None,
                charging: bool | None = None, throttled: bool | None = None) -> dict:
    metrics = request_metrics(requests)
    decode = metrics["decode_tps"].summary
    measured = measured_requests(requests)
    summary: dict = {
        "repetitions_measured": int(measured["repetition"].nunique()) if not measured.empty else 0,
        "requests_measured": int(len(measured)),
        "requests_failed": int(failed_mask(requests).sum()) if not requests.empty else 0,
        "gen_tokens_total": int(pd.to_numeric(measured["gen_tokens"]).sum()) if not measured.empty else 0,
    }
    for name, metric in metrics.items():
        summary[f"{name}_median"] = metric.summary.median
        summary[f"{name}_iqr"] = metric.summary.iqr
        summary[f"{name}_cv"] = metric.summary.cv
    summary["peak_rss_bytes"] = peak_rss_bytes(samples, final_peak_rss)
    pss = sample_series(samples, "process", "pss")
    summary["peak_pss_bytes"] = float(pss["value"].max()) if not pss.empty else None
    summary["per_repetition"] = repetition_values(requests, samples, summary["peak_rss_bytes"])
    summary["max_temperature_c"] = max_temperature_c(samples)
    if bandwidth_gbs and model_bytes and decode.median:
        ceiling = bandwidth_gbs * 1e9 / model_bytes
        summary["roofline_ceiling_tps"] = ceiling
        summary["roofline_efficiency"] = decode.median / ceiling
    else:
        summary["roofline_ceiling_tps"] = summary["roofline_efficiency"] = None
    cv = decode.cv
    summary["validity"] = {
        "charging": charging,
        "throttled": throttled,
        "unstable": None if cv is None else bool(cv > UNSTABLE_CV),
        "unstable_rule": f"decode t/s CV over repetitions > {UNSTABLE_CV:.0%}",
    }
    return summary


GAP_PERIODS = 5          # a telemetry gap longer than this many sampling periods is reported
CLOCK_TOLERANCE_S = 0.1  # clock movement allowed beyond the round trips' own uncertainty
CLOCK_DRIFT = 2e-4       # and beyond two quartz clocks' drift (200 ppm) over the run
_TICK_SOURCES = ("process", "system", "cpu", "battery", "thermal")  # one sample or more per telemetry tick


def telemetry_gaps(samples: pd.DataFrame, hz: float | None) -> list[dict]:
    """Stretches longer than GAP_PERIODS sampling periods without a telemetry tick, and where they
    were (seconds since run start). A power meter's readings keep their own pace and do not count."""
    if not hz or samples.empty:
        return []
    ticking = samples[samples["source"].isin(_TICK_SOURCES)]
    times = np.unique(pd.to_numeric(ticking["t_s"]).to_numpy(dtype=float))
    gaps = np.diff(times)
    return [{"start_s": round(float(times[i]), 3), "end_s": round(float(times[i + 1]), 3),
             "seconds": round(float(gaps[i]), 3)} for i in np.flatnonzero(gaps > GAP_PERIODS / hz)]


def self_checks(requests: pd.DataFrame, samples: pd.DataFrame, *, decode_median: float | None,
                ceiling_tps: float | None, telemetry_hz: float | None, clock: dict | None) -> list[dict]:
    """Checks every run's numbers must pass, each {name, ok (None: could not be checked), detail,
    invalidates}: a failed check that invalidates makes the run's figures invalid."""
    return [_roofline_check(decode_median, ceiling_tps), _token_count_check(requests), _clock_check(clock),
            _gap_check(samples, telemetry_hz)]


def _roofline_check(decode_median: float | None, ceiling_tps: float | None) -> dict:
    check = {"name": "roofline", "invalidates": True}
    if not (ceiling_tps and decode_median):
        return {**check, "ok": None, "detail": "not checked: memory bandwidth or decode speed unknown"}
    if decode_median <= ceiling_tps:
        return {**check, "ok": True, "detail": f"median decode {decode_median:,.1f} tokens/s is below the "
                f"memory-bandwidth ceiling of {ceiling_tps:,.1f} tokens/s"}
    return {**check, "ok": False, "detail": (
        f"median decode {decode_median:,.1f} tokens/s is above the memory-bandwidth ceiling of {ceiling_tps:,.1f} "
        "tokens/s, which is impossible: the token count, the timing, the model size or the bandwidth figure is wrong")}


def _token_count_check(requests: pd.DataFrame) -> dict:
    check = {"name": "token_count", "invalidates": False}
    frame = measured_requests(requests)
    if frame.empty or "streamed_tokens" not in frame:
        return {**check, "ok": None, "detail": "not checked: no streamed requests"}
    streamed = pd.to_numeric(frame["streamed_tokens"], errors="coerce").to_numpy(dtype=float)
    counted = pd.to_numeric(frame["gen_tokens"], errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(streamed)
    if not known.any():
        return {**check, "ok": None, "detail": "not checked: the runtime does not stream tokens (llama-bench)"}
    off = known & (streamed != counted)
    if not off.any():
        return {**check, "ok": True, "detail": f"all {int(known.sum())} streamed requests delivered as many token "
                "events as the runtime says it generated"}
    worst = int(np.argmax(np.where(off, np.abs(streamed - counted), -1)))
    return {**check, "ok": False, "requests": int(off.sum()), "detail": (
        f"{int(off.sum())} of {int(known.sum())} requests streamed a different number of tokens than the runtime "
        f"counted (worst: {int(streamed[worst])} streamed, {int(counted[worst])} generated): TTFT and inter-token "
        "latency come from the streamed tokens and are suspect")}


def _clock_check(clock: dict | None) -> dict:
    check = {"name": "device_clock", "invalidates": False}
    if not clock:
        return {**check, "ok": None, "detail": "not checked: telemetry off, or stamped on the host's own clock"}
    if clock.get("offset_end_s") is None:
        return {**check, "ok": None, "detail": "not checked: the device did not answer at the end of the run"}
    moved = clock["offset_end_s"] - clock["offset_start_s"]
    allowed = clock["uncertainty_s"] + CLOCK_TOLERANCE_S + CLOCK_DRIFT * clock.get("seconds", 0.0)
    if abs(moved) <= allowed:
        return {**check, "ok": True, "moved_s": moved, "detail": f"the device clock kept pace with the host's "
                f"({moved * 1000:+.0f} ms over the run)"}
    return {**check, "ok": False, "moved_s": moved, "detail": (
        f"the device clock jumped {moved:+.2f} s against the host's during the run (more than the {allowed:.2f} s "
        "the round trips and drift allow): telemetry times may be off by that much")}


def _gap_check(samples: pd.DataFrame, hz: float | None) -> dict:
    check = {"name": "telemetry_gaps", "invalidates": False}
    if not hz:
        return {**check, "ok": None, "detail": "not checked: telemetry off"}
    gaps = telemetry_gaps(samples, hz)
    if not gaps:
        return {**check, "ok": True, "gaps": [], "detail": f"no gap longer than {GAP_PERIODS} sampling periods "
                f"({GAP_PERIODS / hz:.2f} s)"}
    where = "; ".join(f"{g['seconds']:.1f} s from {g['start_s']:.1f} s" for g in gaps[:5])
    return {**check, "ok": False, "gaps": gaps, "detail": f"{len(gaps)} telemetry gap(s) longer than {GAP_PERIODS} "
            f"sampling periods: {where}" + (" ..." if len(gaps) > 5 else "")}


REPETITION_METRICS = ("prefill_tps", "decode_tps", "ttft_ms", "itl_p95_ms", "peak_rss_bytes", "max_temperature_c",
                      "j_per_token", "time_throttled_s", "stability", "time_to_throttle_s",
                      # from the run's idle window and thread readings: set by the runner, absent from
                      # runs stored before them (then not compared)
                      "decode_j_per_token", "prefill_j_per_prompt_token", "j_per_token_above_idle",
                      "off_affinity_share")
SUSTAINED_SHARE = 0.2            # sustained decode: the median of the loops in the last 20% of the run
STEADY_SLOPE_C_PER_MIN = 0.5     # steady state: the hottest zone's slope stays under this ...
STEADY_HOLD_S = 60.0             # ... for this long
CAPPED_BELOW = 0.99              # a cluster whose frequency cap is below 99% of its maximum is throttled


def frequency_caps(samples: pd.DataFrame) -> pd.DataFrame:
    """Each cluster's frequency cap (`cpu/cap_cpuN`, a ratio of its maximum) as sampled."""
    if samples.empty:
        return samples
    return samples[(samples["source"] == "cpu") & samples["name"].astype(str).str.startswith("cap_")]


def throttle_times(samples: pd.DataFrame) -> np.ndarray | None:
    """Sample times at which the device was throttled: thermal status above NONE, or a cluster's
    frequency cap below CAPPED_BELOW of its maximum. None when it reports neither."""
    status, caps = sample_series(samples, "thermal", "status"), frequency_caps(samples)
    if status.empty and caps.empty:
        return None
    times = np.concatenate([status["t_s"].to_numpy(dtype=float)[status["value"].to_numpy(dtype=float) > 0],
                            caps["t_s"].to_numpy(dtype=float)[caps["value"].to_numpy(dtype=float) < CAPPED_BELOW]])
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


def time_to_throttle(run_loops: list[dict], samples: pd.DataFrame) -> tuple[float | None, float | None]:
    """Seconds from the first measured request (of `loops()`) to the first throttled sample (0 when
    the device was throttled from the start), and when that sample was (s since run start; None if
    it never throttled: then the figure is the load's whole length, a lower bound). None, None
    without thermal status or frequency caps."""
    throttled = throttle_times(samples)
    if not run_loops or throttled is None:
        return None, None
    start, end = run_loops[0]["start_s"], max(loop["end_s"] for loop in run_loops)
    throttled = throttled[throttled <= end]
    if throttled.size == 0:
        return end - start, None
    return max(0.0, float(throttled[0]) - start), float(throttled[0])


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
    starts, ends = request_windows(frame)
    start, end = float(starts.min()), float(np.nanmax(ends))
    per_cpu: dict[int, float] = {}
    for name, series in counters[counters["name"] != "busy"].groupby("name"):
        times, values = series["t_s"].to_numpy(dtype=float), series["value"].to_numpy(dtype=float)
        order = np.argsort(times)
        used = float(np.interp(end, times[order], values[order], left=0.0) -
                     np.interp(start, times[order], values[order], left=0.0))
        if used > 0:
            per_cpu[int(str(name)[3:])] = used
    total = sum(per_cpu.values())
    busy = counters[(counters["name"] == "busy") & (counters["t_s"] >= start) & (counters["t_s"] <= end)]["value"]
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


def stress_profile(requests: pd.DataFrame, samples: pd.DataFrame) -> dict:
    """A stress (timed) run's thermal profile: peak and sustained decode, stability (slowest loop /
    fastest), time to first throttle, the hottest zone's steady state, skin and battery at the end."""
    run_loops = loops(requests)
    if len(run_loops) < 2:
        return {"available": False, "reason": "fewer than two measured loops"}
    rates = np.array([loop["decode_tps"] for loop in run_loops])
    first, last = run_loops[0]["start_s"], max(loop["end_s"] for loop in run_loops)
    tail = [loop["decode_tps"] for loop in run_loops if loop["start_s"] >= last - SUSTAINED_SHARE * (last - first)]
    throttle_s, throttled_at = time_to_throttle(run_loops, samples)
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


def _series(samples: pd.DataFrame) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, str]]:
    """(source, name) -> (t_s sorted, value, unit), split once per run."""
    if samples.empty:
        return {}
    times = samples["t_s"].to_numpy(dtype=float)
    values = samples["value"].to_numpy(dtype=float)
    units = samples["unit"].to_numpy()
    source_codes, sources = pd.factorize(samples["source"])
    name_codes, names = pd.factorize(samples["name"])
    codes = source_codes * len(names) + name_codes
    order = np.lexsort((times, codes))  # by series, then by time
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    found = {}
    for index in np.split(order, boundaries):
        code = codes[index[0]]
        key = (str(sources[code // len(names)]), str(names[code % len(names)]))
        found[key] = (times[index], values[index], str(units[index[0]]))
    return found


def _window(series: tuple[np.ndarray, np.ndarray, str], start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    times, values, _ = series
    low, high = np.searchsorted(times, start, "left"), np.searchsorted(times, end, "right")
    return times[low:high], values[low:high]


def repetition_values(requests: pd.DataFrame, samples: pd.DataFrame, run_peak_rss: float | None = None) -> dict[str, list[float]]:
    """Per-repetition values of every compared metric (empty list = not measured). Sample-based
    metrics are taken over each repetition's window, first request sent to last token."""
    values: dict[str, list[float]] = {name: [] for name in REPETITION_METRICS}
    requests = measured_requests(requests)
    if not requests.empty:
        repetitions = requests["repetition"].to_numpy()
        starts, ends = request_windows(requests)
        tokens = pd.to_numeric(requests["gen_tokens"]).to_numpy(dtype=float)
        columns = {name: pd.to_numeric(requests[name], errors="coerce").to_numpy(dtype=float)
                   for name in ("prefill_tps", "decode_tps", "ttft_ms", "itl_p95_ms")}
        series = _series(samples)
        thermal = [s for (source, _), s in series.items() if source == "thermal" and s[2] == "C"]
        for repetition in np.unique(repetitions):
            mask = repetitions == repetition
            for name, column in columns.items():
                picked = column[mask]
                picked = picked[np.isfinite(picked)]
                if picked.size:
                    values[name].append(float(np.median(picked)))
            start, end = float(starts[mask].min()), float(np.nanmax(ends[mask]))
            if ("process", "rss") in series:
                _, rss = _window(series[("process", "rss")], start, end)
                if rss.size:
                    swap = 0.0
                    if ("process", "swap") in series:
                        _, swap_values = _window(series[("process", "swap")], start, end)
                        swap = float(swap_values.max()) if swap_values.size else 0.0
                    values["peak_rss_bytes"].append(float(rss.max()) + swap)
            window_temps = [w.max() for w in (_window(s, start, end)[1] for s in thermal) if w.size]
            if window_temps:
                values["max_temperature_c"].append(float(max(window_temps)))
            if ("battery", "power") in series:
                times, power, _ = series[("battery", "power")]
                figure = window_energy(times, power, list(zip(starts[mask], ends[mask])), tokens[mask])
                if figure.complete and figure.j_per_token is not None:
                    values["j_per_token"].append(figure.j_per_token)
            if ("thermal", "status") in series:
                times, status = _window(series[("thermal", "status")], start, end)
                if times.size >= 2:
                    values["time_throttled_s"].append(float(np.sum(np.diff(times)[status[:-1] > 0])))
    if not values["peak_rss_bytes"] and run_peak_rss:
        values["peak_rss_bytes"] = [float(run_peak_rss)]  # no telemetry: one figure for the whole run
    # run-level figures, one value a run: compared across run sets, as llama-bench users compare tables
    decode = values["decode_tps"]
    if len(decode) >= 2 and max(decode) > 0:
        values["stability"] = [min(decode) / max(decode)]
    throttle_s, _ = time_to_throttle(loops(requests), samples)
    if throttle_s is not None:
        values["time_to_throttle_s"] = [throttle_s]
    return values


def decode_drift(requests: pd.DataFrame) -> float | None:
    """Sustained runs: last repetition's decode t/s relative to the first (-0.2 = 20% slower)."""
    values = per_repetition(requests, "decode_tps")
    if len(values) < 2 or not values[0]:
        return None
    return values[-1] / values[0] - 1


@dataclass(frozen=True)
class WindowEnergy:
    """Energy over request windows: the one definition the summary, the report and compare use.
    J/token divides the energy of the covered windows that generated tokens by those tokens: a
    prompt-only window (llama-bench's pp rows) adds to the energy, never to J/token."""

    joules: float
    tokens: float            # generated tokens in the covered windows
    windows_covered: int
    windows: int
    token_joules: float = 0.0  # energy of the covered windows that generated tokens

    @property
    def complete(self) -> bool:
        return self.windows > 0 and self.windows_covered == self.windows

    @property
    def coverage(self) -> float | None:
        return self.windows_covered / self.windows if self.windows else None

    @property
    def j_per_token(self) -> float | None:
        return self.token_joules / self.tokens if self.tokens and self.windows_covered else None


def window_energy(times: np.ndarray, watts: np.ndarray, windows: list[tuple[float, float]],
                  tokens: np.ndarray) -> WindowEnergy:
    joules = token_joules = covered_tokens = 0.0
    covered = 0
    for (start, end), count in zip(windows, tokens):
        energy = integrate_window(times, watts, float(start), float(end))
        if energy is not None:
            joules += energy
            if count > 0:
                token_joules += energy
                covered_tokens += float(count)
            covered += 1
    return WindowEnergy(joules, covered_tokens, covered, len(windows), token_joules)


ON_EXTERNAL_POWER_CODES = (2.0, 4.0, 5.0)  # charging, not charging (Android says it only when plugged), full


def validity_from_samples(samples: pd.DataFrame, *, declared_unplugged: bool = False) -> dict:
    """charging: on external power at any sample: battery status Charging, Not charging (a plugged
    phone whose charger paused) or Full, or any supply (USB, AC, wireless) online, unless the user
    declared the phone ran on its battery; throttled: thermal status above NONE, or a CPU's frequency
    cap below its maximum. None where the device gave no such samples."""
    status = sample_series(samples, "battery", "status_code")
    plugged = sample_series(samples, "battery", "plugged")
    detected = None
    if not status.empty or not plugged.empty:
        detected = bool(status["value"].isin(ON_EXTERNAL_POWER_CODES).any() if not status.empty else False) or \
            bool((plugged["value"] > 0).any() if not plugged.empty else False)
    throttled = throttle_times(samples)
    return {"charging": False if declared_unplugged else detected, "external_power_detected": detected,
            "declared_unplugged": declared_unplugged, "throttled": None if throttled is None else bool(throttled.size)}


def energy_summary(requests: pd.DataFrame, samples: pd.DataFrame, *, charging: bool | None,
                   declared_unplugged: bool = False) -> dict:
    """Energy over the measured generation windows from battery power (W, discharge positive):
    J, J/token, mAh per 1,000 tokens, and the charge-counter drop as a cross-check. Valid only
    when not on external power and every window is covered by power samples."""
    power = sample_series(samples, "battery", "power")
    current = sample_series(samples, "battery", "current")
    frame = measured_requests(requests)
    if power.empty or frame.empty:
        return {"valid": False, "reason": "no battery power samples"}
    starts, ends = request_windows(frame)
    tokens = pd.to_numeric(frame["gen_tokens"]).to_numpy(dtype=float)
    windows = list(zip(starts, ends))
    energy = window_energy(power["t_s"].to_numpy(dtype=float), power["value"].to_numpy(dtype=float), windows, tokens)
    charge = window_energy(current["t_s"].to_numpy(dtype=float), current["value"].to_numpy(dtype=float), windows,
                           tokens) if not current.empty else None
    prompt_only = tokens == 0
    prefill = window_energy(power["t_s"].to_numpy(dtype=float), power["value"].to_numpy(dtype=float),
                            [w for w, only in zip(windows, prompt_only) if only],
                            pd.to_numeric(frame["prompt_tokens"]).to_numpy(dtype=float)[prompt_only]) if prompt_only.any() else None
    counter = sample_series(samples, "battery", "charge_counter")
    counter_drop = float(counter["value"].iloc[0] - counter["value"].iloc[-1]) / 1000 if len(counter) >= 2 else None
    result = {
        "energy_j": energy.joules, "j_per_token": energy.j_per_token,
        # prompt-only windows (llama-bench pp rows): their energy per prompt token, apart from J/token
        "prefill_j_per_prompt_token": prefill.j_per_token if prefill is not None else None,
        "mah_per_1k_tokens": charge.joules / 3.6 / charge.tokens * 1000 if charge and charge.tokens else None,
        "windows_covered": energy.windows_covered, "windows": energy.windows, "coverage": energy.coverage,
        "tokens_covered": energy.tokens,
        "charge_counter_drop_mah_whole_run": counter_drop,
        "source": "battery voltage x current (discharge positive), trapezoid over each request's window; "
                  "J/token = energy of the covered windows that generated tokens / those tokens",
        "declared_unplugged": declared_unplugged,
        "valid": not charging and energy.complete,
    }
    if charging:
        result["reason"] = ("the device was on external power (charging, or plugged with charging paused) during the "
                            "run, so battery current does not measure the load; use Wi-Fi adb with the cable out, or "
                            "a rooted input suspend with --declare-unplugged")
    elif not energy.complete:
        result["reason"] = (f"power samples cover {energy.windows_covered} of {energy.windows} request windows; "
                            "partial coverage is not a measurement of the run")
    return result


RAIL_SOURCES = {
    "dumpsys": "PowerStats HAL energy meter (dumpsys android.hardware.power.stats.IPowerStats/default), "
               "cumulative counters read right before and after each request",
    "iio": "the on-device power monitor's own file (/sys/bus/iio/devices/iio:device*/energy_value) read by the "
           "telemetry loop, with the meter's own time stamps",
}


def rail_energy_summary(requests: pd.DataFrame, samples: pd.DataFrame, source: str = "dumpsys") -> dict:
    """Energy per power rail over the measured requests, from cumulative energy counters: each
    request's window is cut out of each channel's counter by linear interpolation at its start and
    end. J, mean W and J/token per channel and per group (CPU big/mid/little, memory, GPU, total).
    A request counts only when every channel has readings on both sides of it; partial coverage is
    reported and makes the figures invalid, as for battery energy (a channel is never 0 J for lack
    of readings). The rails measure the SoC's supplies, so the figures stay valid while charging."""
    from .parse import RAIL_GROUPS, rail_group

    rails = sample_series(samples, "rail")
    frame = measured_requests(requests)
    if rails.empty or frame.empty:
        return {"available": False, "reason": "no power-rail readings (the device has no PowerStats HAL energy meter)"}
    starts, ends = request_windows(frame)
    tokens = pd.to_numeric(frame["gen_tokens"]).to_numpy(dtype=float)
    prompt_tokens = pd.to_numeric(frame["prompt_tokens"]).to_numpy(dtype=float)
    energies: dict[str, np.ndarray] = {}
    covered = np.ones(starts.size, dtype=bool)
    channel_coverage: dict[str, int] = {}
    for name, group in rails.sort_values("t_s").groupby("name"):
        times, values = group["t_s"].to_numpy(dtype=float), group["value"].to_numpy(dtype=float)
        inside = (starts >= times[0]) & (ends <= times[-1]) if times.size >= 2 else np.zeros(starts.size, dtype=bool)
        energies[str(name)] = np.interp(ends, times, values) - np.interp(starts, times, values)
        channel_coverage[str(name)] = int(inside.sum())
        covered &= inside
    if not covered.any():
        return {"available": False, "reason": "no request lies between two power-rail readings of every channel",
                "requests": int(starts.size), "channel_coverage": channel_coverage}
    seconds = float((ends - starts)[covered].sum())
    decode = covered & (tokens > 0)
    prefill = covered & (tokens == 0) & (prompt_tokens > 0)
    covered_tokens = float(tokens[decode].sum())

    def figures(per_request: np.ndarray) -> dict:
        energy = float(per_request[covered].sum())
        return {"joules": energy, "watts": energy / seconds if seconds else None,
                "j_per_token": float(per_request[decode].sum()) / covered_tokens if covered_tokens else None,
                "prefill_j_per_prompt_token": (float(per_request[prefill].sum()) / float(prompt_tokens[prefill].sum())
                                               if prefill.any() else None)}

    groups: dict[str, np.ndarray] = {}
    for name, per_request in energies.items():
        group = rail_group(name)
        if group:
            groups[group] = groups.get(group, 0.0) + per_request
    complete = bool(covered.all())
    result = {
        "available": True, "valid": complete, "valid_while_charging": True,
        "requests_covered": int(covered.sum()), "requests": int(starts.size), "seconds": seconds, "tokens": covered_tokens,
        "channel_coverage": channel_coverage,
        "channels": {name: figures(per_request) for name, per_request in sorted(energies.items())},
        "groups": {**{group: figures(groups[group]) for group in RAIL_GROUPS if group in groups},
                   "total": figures(sum(energies.values()))},
        "source": RAIL_SOURCES.get(source, source),
    }
    if not complete:
        result["reason"] = (f"rail readings cover {int(covered.sum())} of {starts.size} requests on every channel; "
                            "partial coverage is not a measurement of the run")
    return result


def run_repetition_values(run_dir: str | Path, run: dict) -> dict[str, list[float]]:
    """Per-repetition values of every compared metric: finished runs store them in run.json;
    older ones are recomputed from their tables."""
    summary = run.get("summary") or {}
    stored = summary.get("per_repetition")
    if isinstance(stored, dict) and all(isinstance(stored.get(k), list) for k in REPETITION_METRICS):
        return stored
    data = load_run(run_dir)
    return repetition_values(data.requests, data.samples, summary.get("peak_rss_bytes"))


def _energy_meter(samples: pd.DataFrame):
    """(source, joules(start, end) or None when not covered): the power rails' counters summed when
    the device has them (they stay valid while charging), else battery power integrated."""
    rails = sample_series(samples, "rail")
    if not rails.empty:
        counters = [(g["t_s"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float))
                    for _, g in rails.sort_values("t_s").groupby("name")]

        def rail_joules(start: float, end: float) -> float | None:
            if any(times.size < 2 or start < times[0] or end > times[-1] for times, _ in counters):
                return None
            return float(sum(np.interp(end, times, values) - np.interp(start, times, values) for times, values in counters))
        return "power rails (sum of every channel)", rail_joules
    power = sample_series(samples, "battery", "power")
    if power.empty:
        return None, None
    times, watts = power["t_s"].to_numpy(dtype=float), power["value"].to_numpy(dtype=float)
    order = np.argsort(times)
    return "battery power (V x I)", lambda start, end: integrate_window(times[order], watts[order], start, end)


@dataclass
class _Phase:
    """Energy, time and tokens summed over the request windows of one phase."""
    joules: float = 0.0
    seconds: float = 0.0
    tokens: float = 0.0

    def add(self, joules: float, seconds: float, tokens: float) -> None:
        self.joules, self.seconds, self.tokens = self.joules + joules, self.seconds + seconds, self.tokens + tokens

    def above(self, idle_w: float | None) -> float | None:
        return self.joules - idle_w * self.seconds if idle_w is not None else None

    def per_token(self, joules: float | None) -> float | None:
        return joules / self.tokens if joules is not None and self.tokens else None


def _phase_energy(frame: pd.DataFrame, joules) -> tuple[_Phase, _Phase, _Phase, dict, int]:
    """Whole requests, prefill (sent to first token, per evaluated prompt token), decode (first
    token to last, per generated token), each repetition's (whole, prefill, decode), and how many
    windows were covered."""
    starts, ends = request_windows(frame)
    ttft = pd.to_numeric(frame["ttft_ms"], errors="coerce").to_numpy(dtype=float) / 1000
    tokens = pd.to_numeric(frame["gen_tokens"]).to_numpy(dtype=float)
    evaluated = (pd.to_numeric(frame["prompt_tokens"]) - pd.to_numeric(frame["cached_tokens"])).to_numpy(dtype=float)
    repetitions = frame["repetition"].to_numpy()
    whole, prefill, decode, per_repetition, covered = _Phase(), _Phase(), _Phase(), {}, 0
    for i, (start, end) in enumerate(zip(starts, ends)):
        energy = joules(start, end)
        if energy is None:
            continue
        covered += 1
        phases = per_repetition.setdefault(repetitions[i], (_Phase(), _Phase(), _Phase()))
        for phase in (whole, phases[0]):
            phase.add(energy, end - start, tokens[i])
        first = joules(start, start + ttft[i]) if np.isfinite(ttft[i]) and 0 < ttft[i] < end - start and tokens[i] else None
        if first is not None:
            for phase in (prefill, phases[1]):
                phase.add(first, ttft[i], evaluated[i])
            for phase in (decode, phases[2]):
                phase.add(energy - first, end - start - ttft[i], tokens[i])
    return whole, prefill, decode, per_repetition, covered


def energy_phases(requests: pd.DataFrame, samples: pd.DataFrame, *, idle: dict | None,
                  capacity_mah: float | None, charging: bool | None, rail_source: str | None = None) -> dict:
    """Energy above idle, split at each request's first token: prefill J per evaluated prompt token
    and decode J per generated token, total and above the idle power measured before the first
    request; a 95% bootstrap interval of J/token over repetitions; and, from the battery's capacity,
    tokens per full charge and hours of continuous generation, as a projection."""
    source, joules = _energy_meter(samples)
    frame = measured_requests(requests)
    if joules is None or frame.empty:
        return {"available": False, "reason": "no power rails and no battery power samples"}
    result: dict = {"available": True, "source": source}
    if source.startswith("power rails") and rail_source == "dumpsys":
        result["split"] = ("by time: dumpsys reads the rails only before and after each request, so the energy "
                           "between is shared out in proportion to prefill and decode time")
    if source.startswith("battery") and charging:
        result.update(valid=False, reason="on external power: the battery's power is not the device's")
    idle_j = joules(idle["start_s"], idle["end_s"]) if idle and idle.get("end_s") is not None else None
    idle_w = idle_j / (idle["end_s"] - idle["start_s"]) if idle_j is not None else None
    result.update(idle_w=idle_w, idle_s=idle["end_s"] - idle["start_s"] if idle_w is not None else None,
                  screen_on=(idle or {}).get("screen_on"))
    whole, prefill, decode, per_repetition, covered = _phase_energy(frame, joules)
    if not covered:
        return {**result, "available": False, "reason": "no request window is covered by the power readings"}
    repetition_jpt = [whole_r.joules / whole_r.tokens for whole_r, _, _ in per_repetition.values() if whole_r.tokens > 0]
    ci = bootstrap_median_ci(repetition_jpt) if len(repetition_jpt) >= 2 else None
    result.update(
        requests_covered=covered, requests=int(len(frame)), seconds=whole.seconds, energy_j=whole.joules,
        energy_above_idle_j=whole.above(idle_w), mean_power_w=whole.joules / whole.seconds if whole.seconds else None,
        j_per_token=whole.per_token(whole.joules), j_per_token_above_idle=whole.per_token(whole.above(idle_w)),
        j_per_token_ci95=list(ci) if ci else None, j_per_token_repetitions=len(repetition_jpt),
        prefill_j=prefill.joules, prefill_j_per_prompt_token=prefill.per_token(prefill.joules),
        prefill_j_per_prompt_token_above_idle=prefill.per_token(prefill.above(idle_w)),
        decode_j=decode.joules, decode_j_per_token=decode.per_token(decode.joules),
        decode_j_per_token_above_idle=decode.per_token(decode.above(idle_w)))
    result["projection"] = _battery_projection(samples, capacity_mah, result["j_per_token"], result["mean_power_w"])
    result["per_repetition"] = {  # compared by `bench compare` like the other per-repetition metrics
        "decode_j_per_token": _finite(d.per_token(d.joules) for _, _, d in per_repetition.values()),
        "prefill_j_per_prompt_token": _finite(p.per_token(p.joules) for _, p, _ in per_repetition.values()),
        "j_per_token_above_idle": _finite(w.per_token(w.above(idle_w)) for w, _, _ in per_repetition.values())}
    return result


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(v)]


NOMINAL_CELL_V = 3.85  # a Li-ion cell's nominal voltage, when the run sampled none


def _battery_projection(samples: pd.DataFrame, capacity_mah: float | None, j_per_token: float | None,
                        watts: float | None) -> dict | None:
    if not capacity_mah or not j_per_token or not watts:
        return None
    voltage = sample_series(samples, "battery", "voltage")
    volts = float(voltage["value"].mean()) if not voltage.empty else NOMINAL_CELL_V
    capacity_j = capacity_mah / 1000 * volts * 3600
    return {"capacity_mah": capacity_mah, "volts": volts, "capacity_j": capacity_j,
            "tokens_per_full_charge": capacity_j / j_per_token, "hours_of_generation": capacity_j / watts / 3600}
