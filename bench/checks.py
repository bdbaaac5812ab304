"""Self-checks every run's numbers must pass (summary.validity.checks): the roofline, streamed
token counts, the device clock and telemetry gaps. Pure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tables import measured_requests


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
                ceiling_tps: float | None, telemetry_hz: float | None, clock: dict | None,
                roofline_note: str | None = None, correctness: dict | None = None, depth: int = 0) -> list[dict]:
    """Checks every run's numbers must pass, each {name, ok (None: could not be checked), detail,
    invalidates}: a failed check that invalidates makes the run's figures invalid."""
    return [_roofline_check(decode_median, ceiling_tps, roofline_note), _token_count_check(requests),
            _clock_check(clock), _gap_check(samples, telemetry_hz), _correctness_check(correctness),
            _depth_check(requests, depth)]


def _depth_check(requests: pd.DataFrame, depth: int) -> dict:
    """A figure at depth D is one only if the KV cache held D tokens when the request came: the
    runtime's own count of the prompt tokens it reused says so. A runtime that dropped the cache
    measured a cold prompt of D more tokens, and its prefill rate is not the one at depth."""
    check = {"name": "depth", "invalidates": True}
    if not depth:
        return {**check, "ok": None, "detail": "not checked: the run asked for no depth"}
    frame = measured_requests(requests)
    cached = pd.to_numeric(frame.get("cached_tokens", pd.Series(dtype=float)), errors="coerce").to_numpy(dtype=float)
    if frame.empty or not np.isfinite(cached).any():
        return {**check, "ok": None, "detail": f"not checked: no request reports its cached tokens (llama-bench fills "
                                               f"depth {depth} itself)"}
    short = np.isfinite(cached) & (cached < depth)
    if not short.any():
        return {**check, "ok": True, "detail": f"every measured request found the {depth} tokens of its depth in the "
                                               "KV cache and evaluated only its own"}
    return {**check, "ok": False, "requests": int(short.sum()), "detail": (
        f"{int(short.sum())} of {len(frame)} requests found fewer than the depth's {depth} tokens in the KV cache "
        f"(fewest {int(np.nanmin(cached))}): they were measured from a colder cache than depth {depth}")}


def _correctness_check(record: dict | None) -> dict:
    """Fast but wrong output is a failed run, not a fast one: a run whose model computes something
    else than the host CPU reference (bench.correctness) is invalid."""
    check = {"name": "correctness", "invalidates": True}
    verdict = (record or {}).get("verdict")
    if verdict == "pass":
        value = record["value"]
        agreement, decisive = value.get("top1_agreement"), value.get("decisive_positions")
        where = f" at {agreement:.0%} of {decisive} decisive positions" if agreement is not None else ""
        return {**check, "ok": True, "detail": (
            f"the probe's next-token choices agree with the host CPU reference{where}, "
            f"perplexity {value['perplexity']:,.2f} vs {record['reference']['perplexity']:,.2f}")}
    if verdict == "fail":
        return {**check, "ok": False, "detail": f"wrong output: {record['reason']}"}
    why = (record or {}).get("reason") or "the run stored no correctness check"
    return {**check, "ok": None, "detail": f"not checked: {why}"}


def _roofline_check(decode_median: float | None, ceiling_tps: float | None, note: str | None = None) -> dict:
    check = {"name": "roofline", "invalidates": True}
    if note:
        return {**check, "ok": None, "detail": f"not checked: {note}"}
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
        return {**check, "ok": True, "detail": f"all {int(known.sum())} streamed requests delivered every token the "
                "runtime counted, each at most one character's tokens at a time"}
    worst = int(np.argmax(np.where(off, np.abs(streamed - counted), -1)))
    return {**check, "ok": False, "requests": int(off.sum()), "detail": (
        f"{int(off.sum())} of {int(known.sum())} requests did not stream every token the runtime counted one "
        f"character at a time (worst: {int(streamed[worst])} streamed, {int(counted[worst])} generated): tokens were "
        "lost or held back in bursts, so TTFT and inter-token latency, taken from the stream, are suspect")}


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

