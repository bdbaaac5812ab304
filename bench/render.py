"""Write report.md and plots/ for a stored run (end of `bench run`, and `bench report`)."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write_bytes
from .plots import write_plots
from .report import markdown
from .store import load_run


def write_report(run_dir: str | Path) -> Path:
    data = load_run(run_dir)
    plots = write_plots(data.dir, data.requests, data.samples)
    text = markdown(data.run, data.requests, data.samples, data.events, plots)
    path = data.dir / "report.md"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
