"""Run summary from the stored tables: per-repetition values, then median and spread over
repetitions. Pure: DataFrames in, plain values out; report, compare and `--json` all read this.
The figures' definitions are in bench.metrics; energy, throttling, thread placement and the
self-checks each have a module of their own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .energy import window_energy
from .metrics import BY_NAME, CENSORED_KEY, COMPARED, REQUEST_COLUMNS
from .stats import Summary, summarize
from .store import load_run
from .records import request_end_s
from .tables import failed_mask, measured_requests, request_windows, sample_series, series_window, split_series
from .throttle import loops, throttle_times, time_to_throttle


# the request-level metrics, as the catalogue defines them: (requests column, unit, higher is better, label)
REQUEST_METRICS = {name: (name, BY_NAME[name].unit, BY_NAME[name].higher_is_better, BY_NAME[name].label)
                   for name in REQUEST_COLUMNS}


UNSTABLE_CV = 0.10


def per_repetition(requests: pd.DataFrame, column: str) -> list[float]:
    """One value per repetition: the median over that repetition's requests (chat turns)."""
    frame = measured_requests(requests)
    if frame.empty:
        return []
    values = pd.to_numeric(frame[column], errors="coerce")
    grouped = values.groupby(frame["repetition"]).median().dropna()
    return [float(v) for v in grouped.values]


def aggregate_decode(requests: pd.DataFrame) -> list[float]:
    """Per repetition, the median over its steps of the concurrent sequences' decode throughput
    (catalogue: aggregate_decode_tps). Only rows with a sequence number count: a run that asked for
    no parallel sequences has no aggregate figure."""
    frame = measured_requests(requests)
    if frame.empty or "sequence" not in frame:
        return []
    frame = frame[pd.to_numeric(frame["sequence"], errors="coerce").notna()]
    if frame.empty:
        return []
    start = pd.to_numeric(frame["t_start_s"]).to_numpy(dtype=float)
    first = start + pd.to_numeric(frame["ttft_ms"], errors="coerce").to_numpy(dtype=float) / 1000
    last = request_end_s(start, pd.to_numeric(frame["e2e_ms"], errors="coerce").to_numpy(dtype=float))
    decoded = np.maximum(pd.to_numeric(frame["gen_tokens"]).to_numpy(dtype=float) - 1, 0)
    steps = pd.DataFrame({"repetition": frame["repetition"].to_numpy(), "step": frame["step"].to_numpy(),
                          "first": first, "last": last, "decoded": decoded})
    values = []
    for _, repetition in steps.groupby("repetition", sort=True):
        rates = []
        for _, step in repetition.groupby("step"):
            span = float(step["last"].max() - step["first"].min())
            if step["first"].notna().all() and span > 0 and step["decoded"].sum() > 0:
                rates.append(float(step["decoded"].sum()) / span)
        if rates:
            values.append(float(np.median(rates)))
    return values


def draft_acceptance(requests: pd.DataFrame) -> list[float]:
    """Per repetition, the tokens the model accepted over those the draft model proposed, summed
    over its requests (catalogue: draft_acceptance). Requests without draft counts (no draft model)
    give no value, nor does a repetition whose draft proposed nothing."""
    frame = measured_requests(requests)
    if frame.empty or "draft_tokens" not in frame:
        return []
    drafted = pd.to_numeric(frame["draft_tokens"], errors="coerce")
    accepted = pd.to_numeric(frame["draft_accepted"], errors="coerce")
    known = drafted.notna() & accepted.notna()
    sums = pd.DataFrame({"repetition": frame["repetition"][known], "drafted": drafted[known],
                         "accepted": accepted[known]}).groupby("repetition", sort=True).sum()
    return [float(row.accepted / row.drafted) for row in sums.itertuples() if row.drafted > 0]


# figures only some runs have (parallel sequences, a draft model): metric -> its one computation
OPTIONAL_REQUEST_METRICS = {"aggregate_decode_tps": aggregate_decode, "draft_acceptance": draft_acceptance}


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
    for name, compute in OPTIONAL_REQUEST_METRICS.items():
        values = compute(requests)
        if values:
            metric = BY_NAME[name]
            metrics[name] = MetricSummary(name, metric.label, metric.unit, metric.higher_is_better, tuple(values),
                                          summarize(values))
    return metrics


def gpu_figures(requests: pd.DataFrame, samples: pd.DataFrame) -> dict:
    """What the GPU did while the measured requests ran (catalogue: gpu_busy_pct, gpu_cap_min):
    the mean busy sample and the lowest clock cap inside their windows; None where not sampled."""
    figures: dict = {"gpu_busy_pct": None, "gpu_cap_min": None}
    requests = measured_requests(requests)
    if requests.empty or samples.empty:
        return figures
    starts, ends = request_windows(requests)
    series = split_series(samples)
    for key, name, reduce in (("gpu_busy_pct", "busy", np.mean), ("gpu_cap_min", "cap", np.min)):
        if ("gpu", name) in series:
            inside = [values for start, end in zip(starts, ends)
                      for values in [series_window(series[("gpu", name)], start, end)[1]] if values.size]
            if inside:
                figures[key] = float(reduce(np.concatenate(inside)))
    return figures


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
                charging: bool | None = None, throttled: bool | None = None, fixed_performance: bool = False,
                last_level_cache_bytes: int | None = None) -> dict:
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
    # what the rest of the device had left: MemAvailable when the run began and at its lowest
    available = sample_series(samples, "system", "mem_available")
    available = available.sort_values("t_s") if not available.empty else available
    summary["mem_available_first_bytes"] = float(available["value"].iloc[0]) if not available.empty else None
    summary["mem_available_min_bytes"] = float(available["value"].min()) if not available.empty else None
    summary["per_repetition"] = repetition_values(requests, samples, summary["peak_rss_bytes"],
                                                  fixed_performance=fixed_performance)
    summary["max_temperature_c"] = max_temperature_c(samples)
    summary.update(gpu_figures(requests, samples))
    summary["roofline_ceiling_tps"] = summary["roofline_efficiency"] = summary["roofline_note"] = None
    if model_bytes and last_level_cache_bytes and model_bytes <= last_level_cache_bytes:
        # its weights can stay in the cache between tokens: DRAM bandwidth does not bound it
        summary["roofline_note"] = (f"the model ({model_bytes / 2**20:,.1f} MiB) fits in the last-level cache "
                                    f"({last_level_cache_bytes / 2**20:,.1f} MiB), so memory bandwidth is no ceiling")
    elif bandwidth_gbs and model_bytes and decode.median:
        ceiling = bandwidth_gbs * 1e9 / model_bytes
        summary["roofline_ceiling_tps"] = ceiling
        summary["roofline_efficiency"] = decode.median / ceiling
    cv = decode.cv
    summary["validity"] = {
        "charging": charging,
        "throttled": throttled,
        "unstable": None if cv is None else bool(cv > UNSTABLE_CV),
        "unstable_rule": f"decode t/s CV over repetitions > {UNSTABLE_CV:.0%}",
    }
    return summary


# every compared metric of the catalogue; the energy phases' and thread placement's are set by the
# runner, and absent from runs stored before them (then not compared)
REPETITION_METRICS = tuple(metric.name for metric in COMPARED)


@dataclass(frozen=True)
class RepetitionValues:
    """A run's values of every compared metric (one per repetition, or one a run), and for a
    metric that can be censored, which values are lower bounds."""

    values: dict[str, list[float]]
    censored: dict[str, list[bool]]

    @classmethod
    def from_stored(cls, stored: dict) -> "RepetitionValues":
        """From run.json's per_repetition (or repetition_values()), where the flags sit under CENSORED_KEY."""
        censored = {name: [bool(flag) for flag in flags] for name, flags in (stored.get(CENSORED_KEY) or {}).items()}
        return cls({name: [float(v) for v in stored.get(name) or []] for name in REPETITION_METRICS}, censored)


def repetition_values(requests: pd.DataFrame, samples: pd.DataFrame, run_peak_rss: float | None = None, *,
                      fixed_performance: bool = False) -> dict:
    """Per-repetition values of every compared metric (empty list = not measured), as stored in
    run.json: sample-based metrics are taken over each repetition's window, first request sent to
    last token; `censored` flags the values that are lower bounds."""
    values: dict[str, list[float]] = {name: [] for name in REPETITION_METRICS}
    requests = measured_requests(requests)
    if not requests.empty:
        repetitions = requests["repetition"].to_numpy()
        starts, ends = request_windows(requests)
        tokens = pd.to_numeric(requests["gen_tokens"]).to_numpy(dtype=float)
        columns = {name: pd.to_numeric(requests[name], errors="coerce").to_numpy(dtype=float)
                   for name in ("prefill_tps", "decode_tps", "ttft_ms", "itl_p95_ms")}
        series = split_series(samples)
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
                _, rss = series_window(series[("process", "rss")], start, end)
                if rss.size:
                    swap = 0.0
                    if ("process", "swap") in series:
                        _, swap_values = series_window(series[("process", "swap")], start, end)
                        swap = float(swap_values.max()) if swap_values.size else 0.0
                    values["peak_rss_bytes"].append(float(rss.max()) + swap)
            window_temps = [w.max() for w in (series_window(s, start, end)[1] for s in thermal) if w.size]
            if window_temps:
                values["max_temperature_c"].append(float(max(window_temps)))
            if ("battery", "power") in series:
                times, power, _ = series[("battery", "power")]
                figure = window_energy(times, power, list(zip(starts[mask], ends[mask])), tokens[mask])
                if figure.complete and figure.j_per_token is not None:
                    values["j_per_token"].append(figure.j_per_token)
            if ("thermal", "status") in series:
                times, status = series_window(series[("thermal", "status")], start, end)
                if times.size >= 2:
                    values["time_throttled_s"].append(float(np.sum(np.diff(times)[status[:-1] > 0])))
    for name, compute in OPTIONAL_REQUEST_METRICS.items():
        values[name] = compute(requests)
    if not values["peak_rss_bytes"] and run_peak_rss:
        values["peak_rss_bytes"] = [float(run_peak_rss)]  # no telemetry: one figure for the whole run
    # run-level figures, one value a run: compared across run sets, as llama-bench users compare tables
    decode = values["decode_tps"]
    if len(decode) >= 2 and max(decode) > 0:
        values["stability"] = [min(decode) / max(decode)]
    throttle_s, throttled_at = time_to_throttle(loops(requests), samples, fixed_performance=fixed_performance)
    censored = {}
    if throttle_s is not None:
        values["time_to_throttle_s"] = [throttle_s]
        censored["time_to_throttle_s"] = [throttled_at is None]
    return {**values, CENSORED_KEY: censored}


def load_values(load: dict | None, requests: pd.DataFrame) -> dict[str, list[float]]:
    """The load metrics of a --load-times run (catalogue: load_cold_ms, first_token_cold_ms,
    load_warm_ms, first_token_warm_ms), one value a run. Cold figures only where the page cache
    was dropped before the first load; "first token" adds the first request's TTFT after that load
    (the run's first request, warmup included; for the warm reload, its own request) to the load:
    the two waits an app's user sees, without the harness's pauses between them."""
    load = load or {}
    values: dict[str, list[float]] = {"load_cold_ms": [], "first_token_cold_ms": [], "load_warm_ms": [],
                                      "first_token_warm_ms": []}
    cold, warm = load.get("cold") or {}, load.get("warm") or {}
    if cold.get("dropped") and cold.get("load_ms") is not None:
        values["load_cold_ms"] = [float(cold["load_ms"])]
        ttft = pd.to_numeric(requests.sort_values("t_start_s")["ttft_ms"], errors="coerce").iloc[0] \
            if not requests.empty else np.nan
        if np.isfinite(ttft):
            values["first_token_cold_ms"] = [float(cold["load_ms"]) + float(ttft)]
    if warm.get("load_ms") is not None:
        values["load_warm_ms"] = [float(warm["load_ms"])]
        if warm.get("first_request_ttft_ms") is not None:
            values["first_token_warm_ms"] = [float(warm["load_ms"]) + float(warm["first_request_ttft_ms"])]
    return values


def decode_drift(requests: pd.DataFrame) -> float | None:
    """Sustained runs: last repetition's decode t/s relative to the first (-0.2 = 20% slower)."""
    values = per_repetition(requests, "decode_tps")
    if len(values) < 2 or not values[0]:
        return None
    return values[-1] / values[0] - 1


ON_EXTERNAL_POWER_CODES = (2.0, 4.0, 5.0)  # charging, not charging (Android says it only when plugged), full


def validity_from_samples(samples: pd.DataFrame, *, declared_unplugged: bool = False,
                          fixed_performance: bool = False) -> dict:
    """charging: on external power at any sample: battery status Charging, Not charging (a plugged
    phone whose charger paused) or Full, or any supply (USB, AC, wireless) online, unless the user
    declared the phone ran on its battery; throttled: thermal status above NONE, or a CPU's frequency
    cap below the cap in force when the run began (throttle.throttle_times). None where the device
    gave no such samples."""
    status = sample_series(samples, "battery", "status_code")
    plugged = sample_series(samples, "battery", "plugged")
    detected = None
    if not status.empty or not plugged.empty:
        detected = bool(status["value"].isin(ON_EXTERNAL_POWER_CODES).any() if not status.empty else False) or \
            bool((plugged["value"] > 0).any() if not plugged.empty else False)
    throttled = throttle_times(samples, fixed_performance=fixed_performance)
    return {"charging": False if declared_unplugged else detected, "external_power_detected": detected,
            "declared_unplugged": declared_unplugged, "throttled": None if throttled is None else bool(throttled.size)}


def run_repetition_values(run_dir: str | Path, run: dict) -> RepetitionValues:
    """Per-repetition values of every compared metric: finished runs store them in run.json;
    older ones are recomputed from their tables. A run stored before censoring was recorded has
    its time to first throttle recomputed, since it may hold a lower bound as if measured."""
    summary = run.get("summary") or {}
    stored = summary.get("per_repetition")
    fixed = bool((run.get("runtime") or {}).get("fixed_performance"))
    if not (isinstance(stored, dict) and all(isinstance(stored.get(k), list) for k in REPETITION_METRICS)):
        data = load_run(run_dir)
        stored = repetition_values(data.requests, data.samples, summary.get("peak_rss_bytes"), fixed_performance=fixed)
    elif not isinstance(stored.get(CENSORED_KEY), dict):
        stored = dict(stored)
        if stored.get("time_to_throttle_s"):
            data = load_run(run_dir)
            fresh = repetition_values(data.requests, data.samples, fixed_performance=fixed)
            stored["time_to_throttle_s"] = fresh["time_to_throttle_s"]
            stored[CENSORED_KEY] = fresh[CENSORED_KEY]
        else:
            stored[CENSORED_KEY] = {}
    return RepetitionValues.from_stored(stored)
