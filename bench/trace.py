"""trace.json: a run in the Chrome / Perfetto trace-event JSON format (the "Trace Event Format"
document), so it opens in ui.perfetto.dev or chrome://tracing. Pure: run data in, a dict out.

Requests are complete ("X") slices with their prefill and decode inside (host clock: TTFT, then
first token to last); cooldown waits are slices too; phases, warnings and errors are instant ("i")
events; temperature, power, RSS/PSS and CPU frequency are counter ("C") tracks. Timestamps are
microseconds since run start, the run's one clock."""

from __future__ import annotations

import math

import pandas as pd

SCHEMA_VERSION = 1
PID = 1
TID_REQUESTS, TID_EVENTS, TID_COOLDOWN = 1, 2, 3
TID_SEQUENCE_BASE = 10  # parallel sequences overlap: one track each (a track's slices must nest)
# (source, unit) of the samples drawn as counter tracks, with the track's name and scale
COUNTERS = {("thermal", "C"): ("temperature (C)", 1.0), ("battery", "W"): ("power (W)", 1.0),
            ("process", "B"): ("memory (MiB)", 1 / 2**20), ("cpu", "MHz"): ("CPU frequency (MHz)", 1.0),
            ("rail", "J"): ("rail energy (J, cumulative)", 1.0), ("gpu", "%"): ("GPU busy (%)", 1.0),
            ("gpu", "MHz"): ("GPU clock (MHz)", 1.0)}


def _us(seconds: float, origin_s: float = 0.0) -> float:
    return round((float(seconds) - origin_s) * 1e6, 3)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def trace_events(run: dict, requests: pd.DataFrame, samples: pd.DataFrame, events: tuple[dict, ...]) -> dict:
    # A device's samples can predate the run clock's zero by a little (its clock offset): the trace
    # starts at the earliest moment, so every timestamp is >= 0 as the format expects.
    times = [0.0] + ([float(samples["t_s"].min())] if not samples.empty else []) + \
        ([float(pd.to_numeric(requests["t_start_s"]).min())] if not requests.empty else [])
    origin = min(t for t in times if not math.isnan(t))

    def us(seconds: float) -> float:
        return _us(seconds, origin)

    out: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": f"bench run {run.get('run_id')}"}},
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": TID_REQUESTS, "args": {"name": "requests"}},
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": TID_EVENTS, "args": {"name": "phases and events"}},
        {"name": "thread_name", "ph": "M", "pid": PID, "tid": TID_COOLDOWN, "args": {"name": "cooldown"}},
    ]
    sequences = sorted({int(s) for s in pd.to_numeric(requests.get("sequence", pd.Series(dtype=float)),
                                                       errors="coerce").dropna()})
    out += [{"name": "thread_name", "ph": "M", "pid": PID, "tid": TID_SEQUENCE_BASE + sequence,
             "args": {"name": f"requests, sequence {sequence}"}} for sequence in sequences]
    for row in requests.to_dict("records"):
        start, e2e = _number(row.get("t_start_s")), _number(row.get("e2e_ms"))
        if start is None or e2e is None:
            continue
        sequence = _number(row.get("sequence"))
        tid = TID_REQUESTS if sequence is None else TID_SEQUENCE_BASE + int(sequence)
        warm = str(row.get("warmup")).lower() in ("true", "1")
        label = f"{'warmup' if warm else 'request'} rep {row.get('repetition')} step {row.get('step')}"
        args = {key: row.get(key) for key in ("prompt_tokens", "cached_tokens", "gen_tokens", "prefill_tps",
                                               "decode_tps", "ttft_ms", "stop_reason", "error")
                if _number(row.get(key)) is not None or isinstance(row.get(key), str)}
        out.append({"name": label, "cat": "request", "ph": "X", "pid": PID, "tid": tid, "ts": us(start),
                    "dur": round(e2e * 1000, 3), "args": args})
        ttft = _number(row.get("ttft_ms"))
        if ttft is not None and 0 <= ttft <= e2e:
            out.append({"name": "prefill", "cat": "request", "ph": "X", "pid": PID, "tid": tid,
                        "ts": us(start), "dur": round(ttft * 1000, 3), "args": {"prompt_tokens": row.get("prompt_tokens")}})
            out.append({"name": "decode", "cat": "request", "ph": "X", "pid": PID, "tid": tid,
                        "ts": us(start + ttft / 1000), "dur": round((e2e - ttft) * 1000, 3),
                        "args": {"gen_tokens": row.get("gen_tokens")}})
    for event in events:
        t_s = _number(event.get("t_s"))
        if t_s is None:
            continue
        if event.get("kind") == "cooldown" and _number(event.get("waited_s")):
            waited = float(event["waited_s"])
            out.append({"name": "cooldown wait", "cat": "cooldown", "ph": "X", "pid": PID, "tid": TID_COOLDOWN,
                        "ts": us(max(0.0, t_s - waited)), "dur": us(waited),
                        "args": {"target_c": event.get("target_c"), "reached": event.get("reached")}})
            continue
        out.append({"name": str(event.get("message", event.get("kind"))), "cat": str(event.get("kind")), "ph": "i",
                    "s": "g" if event.get("kind") == "error" else "t", "pid": PID, "tid": TID_EVENTS, "ts": us(t_s)})
    if not samples.empty:
        for (source, unit), frame in samples.groupby(["source", "unit"]):
            track = COUNTERS.get((str(source), str(unit)))
            if track is None:
                continue
            name, scale = track
            for t_s, group in frame.groupby("t_s"):
                values = {str(k): round(float(v) * scale, 4) for k, v in zip(group["name"], group["value"])
                          if _number(v) is not None}
                if values:
                    out.append({"name": name, "ph": "C", "pid": PID, "tid": 0, "ts": us(t_s), "args": values})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"schema_version": SCHEMA_VERSION, "run_id": run.get("run_id"), "status": run.get("status"),
                          "clock": "microseconds on the run clock (host perf_counter) from origin_offset_s; 0 s = run start",
                          "origin_offset_s": origin}}
