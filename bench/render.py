"""Write report.md, plots/ and trace.json for a stored run (end of `bench run`, and `bench report`)."""

from __future__ import annotations

from pathlib import Path

import json

from .files import atomic_write_bytes
from .plots import write_plots
from .report import markdown
from .store import load_run
from .trace import trace_events


def write_report(run_dir: str | Path) -> Path:
    data = load_run(run_dir)
    plots = write_plots(data.dir, data.requests, data.samples, (data.run.get("summary") or {}).get("stress"),
                        data.run.get("memory"))
    text = markdown(data.run, data.requests, data.samples, data.events, plots)
    path = data.dir / "report.md"
    atomic_write_bytes(path, text.encode("utf-8"))
    trace = trace_events(data.run, data.requests, data.samples, data.events)
    atomic_write_bytes(data.dir / "trace.json", json.dumps(trace, default=str).encode("utf-8"))
    return path
