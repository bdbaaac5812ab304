"""trace.json against the Trace Event Format (the JSON that chrome://tracing and the Perfetto UI
import): the checks below are the format's rules, written from its specification, not from
bench's writer."""

import json
from pathlib import Path

from bench.render import write_report
from synth import write_run

PHASES = {"B", "E", "X", "i", "I", "C", "M", "b", "e", "n", "s", "t", "f", "P", "O", "N", "D"}


def validate(trace) -> list[str]:
    problems = []
    json.dumps(trace, allow_nan=False)  # NaN and Infinity are not JSON
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        return ["the top level must be an object with a traceEvents array"]
    if trace.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        problems.append("displayTimeUnit must be ms or ns")
    open_slices: dict[tuple, list[tuple[float, float]]] = {}
    for index, event in enumerate(trace["traceEvents"]):
        where = f"event {index}"
        if event.get("ph") not in PHASES:
            problems.append(f"{where}: unknown ph {event.get('ph')!r}")
            continue
        if not isinstance(event.get("name"), str) or not isinstance(event.get("pid"), int) or not isinstance(event.get("tid"), int):
            problems.append(f"{where}: name (string), pid and tid (integers) are required")
        ph = event["ph"]
        if ph == "M":
            if event["name"] in ("process_name", "thread_name") and not isinstance(event.get("args", {}).get("name"), str):
                problems.append(f"{where}: {event['name']} needs args.name")
            continue
        if not isinstance(event.get("ts"), (int, float)) or event["ts"] < 0:
            problems.append(f"{where}: ts must be a number of microseconds >= 0")
        if ph == "X":
            if not isinstance(event.get("dur"), (int, float)) or event["dur"] < 0:
                problems.append(f"{where}: a complete event needs dur >= 0")
            else:
                open_slices.setdefault((event["pid"], event["tid"]), []).append((event["ts"], event["ts"] + event["dur"]))
        if ph == "C" and (not isinstance(event.get("args"), dict) or not event["args"]
                          or not all(isinstance(v, (int, float)) for v in event["args"].values())):
            problems.append(f"{where}: a counter needs numeric args")
        if ph in ("i", "I") and event.get("s", "t") not in ("g", "p", "t"):
            problems.append(f"{where}: instant scope must be g, p or t")
    # complete events on one thread must nest: a slice lies inside the one enclosing it, or after it
    for thread, slices in open_slices.items():
        stack: list[float] = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while stack and start >= stack[-1] - 1e-3:
                stack.pop()
            if stack and end > stack[-1] + 1e-3:
                problems.append(f"thread {thread}: slice {start}-{end} overlaps its parent ending at {stack[-1]}")
            stack.append(end)
    return problems


def test_validator_catches_what_the_format_forbids():
    bad = {"traceEvents": [{"name": "a", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
                           {"name": "b", "ph": "X", "pid": 1, "tid": 1, "ts": 5, "dur": 10},
                           {"name": "c", "ph": "C", "pid": 1, "tid": 0, "ts": 1, "args": {"x": "hot"}},
                           {"name": "d", "ph": "Q", "pid": 1, "tid": 0, "ts": 1}]}
    problems = validate(bad)
    assert any("overlaps" in p for p in problems) and any("numeric" in p for p in problems)
    assert any("unknown ph" in p for p in problems)


def test_trace_of_a_stored_run_is_valid_and_complete(tmp_path: Path):
    run_dir = write_run(tmp_path, [60.0, 62.0, 61.0], power_w=2.0)
    write_report(run_dir)
    trace = json.loads((run_dir / "trace.json").read_text())
    assert validate(trace) == []
    assert trace["otherData"]["schema_version"] == 1
    names = [e["name"] for e in trace["traceEvents"]]
    assert sum(n.startswith("request rep") for n in names) == 3
    assert names.count("prefill") == 3 and names.count("decode") == 3
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert {"power (W)", "memory (MiB)"} <= counters
