"""Energy, one definition per figure (see bench.metrics): J per generated token counts only the
windows that generated tokens; a prompt-only window (llama-bench pp) gives J per prompt token;
decode J/token covers the decode t/s window (first token to last) and divides by the tokens it
produced. Three meters: battery power, power rails from dumpsys, rails from an iio monitor. Pure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import bootstrap_median_ci, integrate_window
from .tables import measured_requests, merge_concurrent, overlap_groups, request_windows, sample_series


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
    """Energy over the windows, each stretch of time once: overlapping windows (concurrent
    sequences) count as one, with their tokens summed."""
    if windows:
        starts, ends = (np.asarray(side, dtype=float) for side in zip(*windows))
        groups = overlap_groups(starts, ends)
        if np.unique(groups).size < groups.size:
            count = groups.max() + 1
            windows = [(float(starts[groups == g].min()), float(ends[groups == g].max())) for g in range(count)]
            tokens = np.bincount(groups, weights=np.asarray(tokens, dtype=float), minlength=count)
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
        # the charge of the same windows J/token counts (those that generated tokens), per 1,000 of their tokens
        "mah_per_1k_tokens": charge.token_joules / 3.6 / charge.tokens * 1000 if charge and charge.tokens else None,
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
    frame = merge_concurrent(measured_requests(requests))
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


def _rail_meter(samples: pd.DataFrame):
    rails = sample_series(samples, "rail")
    if rails.empty:
        return None
    counters = [(g["t_s"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float))
                for _, g in rails.sort_values("t_s").groupby("name")]

    def rail_joules(start: float, end: float) -> float | None:
        if any(times.size < 2 or start < times[0] or end > times[-1] for times, _ in counters):
            return None
        return float(sum(np.interp(end, times, values) - np.interp(start, times, values) for times, values in counters))
    return "power rails (sum of every channel)", rail_joules


def _battery_meter(samples: pd.DataFrame):
    power = sample_series(samples, "battery", "power")
    if power.empty:
        return None
    times, watts = power["t_s"].to_numpy(dtype=float), power["value"].to_numpy(dtype=float)
    order = np.argsort(times)
    return "battery power (V x I)", lambda start, end: integrate_window(times[order], watts[order], start, end)


def _energy_meter(samples: pd.DataFrame, windows: list[tuple[float, float]]):
    """(source, joules(start, end) or None when not covered): of the power rails' counters summed
    (they stay valid while charging) and battery power integrated, the meter that covers the most
    request windows, the rails on a tie. A dumpsys-only phone can have a single rail reading, which
    covers nothing, while its battery power covers every window."""
    meters = [meter for meter in (_rail_meter(samples), _battery_meter(samples)) if meter is not None]
    if not meters:
        return None, None
    covered = [sum(meter[1](start, end) is not None for start, end in windows) for meter in meters]
    return meters[int(np.argmax(covered))]  # argmax keeps the first (rails) on a tie


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


@dataclass
class _Phases:
    """One set of phases (the run's, or one repetition's): every covered window (whole), the windows
    that generated tokens (J per generated token: the one definition), prefill and decode."""
    whole: _Phase
    generating: _Phase
    prefill: _Phase
    decode: _Phase

    @classmethod
    def empty(cls) -> "_Phases":
        return cls(_Phase(), _Phase(), _Phase(), _Phase())


def _phase_energy(frame: pd.DataFrame, joules, split: bool = True) -> tuple[_Phases, dict, int]:
    """The run's phases, each repetition's, and how many windows were covered. A request that
    generated tokens: prefill is sent to first token (per evaluated prompt token), decode is first
    token to last, per the tokens that window produced (generated - 1: the first belongs to
    prefill, as decode t/s counts it). A request with no first-token time (a llama-bench tg row)
    has no prompt phase: all of it is decode, per its tokens. A prompt-only window (a llama-bench
    pp row) is prefill, per prompt token, and never in J per generated token. Without `split`
    (concurrent sequences), only the whole windows and those that generated tokens."""
    starts, ends = request_windows(frame)
    ttft = pd.to_numeric(frame["ttft_ms"], errors="coerce").to_numpy(dtype=float) / 1000
    tokens = pd.to_numeric(frame["gen_tokens"]).to_numpy(dtype=float)
    evaluated = (pd.to_numeric(frame["prompt_tokens"]) - pd.to_numeric(frame["cached_tokens"])).to_numpy(dtype=float)
    repetitions = frame["repetition"].to_numpy()
    run, per_repetition, covered = _Phases.empty(), {}, 0
    for i, (start, end) in enumerate(zip(starts, ends)):
        energy = joules(start, end)
        if energy is None:
            continue
        covered += 1
        targets = (run, per_repetition.setdefault(repetitions[i], _Phases.empty()))
        seconds = end - start
        first = None
        if tokens[i] > 0 and np.isfinite(ttft[i]) and 0 < ttft[i] < seconds:
            first = joules(start, start + ttft[i])
        for phases in targets:
            phases.whole.add(energy, seconds, tokens[i])
            if tokens[i] <= 0:
                phases.prefill.add(energy, seconds, evaluated[i])
                continue
            phases.generating.add(energy, seconds, tokens[i])
            if not split:
                continue
            if first is not None:
                phases.prefill.add(first, ttft[i], evaluated[i])
                phases.decode.add(energy - first, seconds - ttft[i], tokens[i] - 1)
            elif not np.isfinite(ttft[i]):
                phases.decode.add(energy, seconds, tokens[i])
    return run, per_repetition, covered


def energy_phases(requests: pd.DataFrame, samples: pd.DataFrame, *, idle: dict | None,
                  capacity_mah: float | None, charging: bool | None, rail_source: str | None = None) -> dict:
    """Energy above idle, split at each request's first token: prefill J per evaluated prompt token
    and decode J per token of the decode window, total and above the idle power measured before the
    first request; J per generated token over the windows that generated tokens; a 95% bootstrap
    interval of J/token over repetitions; and, from the battery's capacity, tokens per full charge
    and hours of continuous generation, as a projection. Valid only when every request window is
    covered (and, from the battery, not on external power); otherwise nothing is compared."""
    frame = merge_concurrent(measured_requests(requests))
    windows = list(zip(*request_windows(frame))) if not frame.empty else []
    source, joules = _energy_meter(samples, windows)
    if joules is None or frame.empty:
        return {"available": False, "reason": "no power rails and no battery power samples"}
    result: dict = {"available": True, "source": source, "valid": True}
    concurrent = bool((frame["sequences"] > 1).any())
    if concurrent:
        result["split"] = ("none: concurrent sequences overlap, one's prefill with another's decode, so no energy is "
                           "prefill's or decode's alone; J per generated token counts each stretch of time once")
    elif source.startswith("power rails") and rail_source == "dumpsys":
        result["split"] = ("by time: dumpsys reads the rails only before and after each request, so the energy "
                           "between is shared out in proportion to prefill and decode time")
    idle_j = joules(idle["start_s"], idle["end_s"]) if idle and idle.get("end_s") is not None else None
    idle_w = idle_j / (idle["end_s"] - idle["start_s"]) if idle_j is not None else None
    result.update(idle_w=idle_w, idle_s=idle["end_s"] - idle["start_s"] if idle_w is not None else None,
                  screen_on=(idle or {}).get("screen_on"))
    run, per_repetition, covered = _phase_energy(frame, joules, split=not concurrent)
    if not covered:
        return {**result, "available": False, "reason": "no request window is covered by the power readings"}
    if source.startswith("battery") and charging:
        result.update(valid=False, reason="on external power: the battery's power is not the device's")
    elif covered < len(frame):
        result.update(valid=False, reason=f"the power readings cover {covered} of {len(frame)} request windows; "
                                          "partial coverage is not a measurement of the run")
    generating, prefill, decode = run.generating, run.prefill, run.decode
    repetition_jpt = [p.generating.per_token(p.generating.joules) for p in per_repetition.values()]
    repetition_jpt = _finite(repetition_jpt)
    ci = bootstrap_median_ci(repetition_jpt) if len(repetition_jpt) >= 2 else None
    result.update(
        requests_covered=covered, requests=int(len(frame)), seconds=run.whole.seconds, energy_j=run.whole.joules,
        energy_above_idle_j=run.whole.above(idle_w),
        mean_power_w=run.whole.joules / run.whole.seconds if run.whole.seconds else None,
        j_per_token=generating.per_token(generating.joules),
        j_per_token_above_idle=generating.per_token(generating.above(idle_w)),
        j_per_token_ci95=list(ci) if ci else None, j_per_token_repetitions=len(repetition_jpt),
        prefill_j=prefill.joules, prefill_j_per_prompt_token=prefill.per_token(prefill.joules),
        prefill_j_per_prompt_token_above_idle=prefill.per_token(prefill.above(idle_w)),
        decode_j=decode.joules, decode_j_per_token=decode.per_token(decode.joules),
        decode_j_per_token_above_idle=decode.per_token(decode.above(idle_w)))
    result["projection"] = _battery_projection(samples, capacity_mah, result["j_per_token"],
                                               generating.joules / generating.seconds if generating.seconds else None)
    # compared by `bench compare` like the other per-repetition metrics; never from a run whose
    # windows are not all covered (a part of a run is not a measurement of it)
    compared = result["valid"] or (source.startswith("battery") and charging)  # charging: compare skips energy itself
    phases = list(per_repetition.values()) if compared and covered == len(frame) else []
    result["per_repetition"] = {
        "decode_j_per_token": _finite(p.decode.per_token(p.decode.joules) for p in phases),
        "prefill_j_per_prompt_token": _finite(p.prefill.per_token(p.prefill.joules) for p in phases),
        "j_per_token_above_idle": _finite(p.generating.per_token(p.generating.above(idle_w)) for p in phases)}
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

