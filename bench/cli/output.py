"""What the command prints: the consoles (stdout for results, stderr for bars and the one-line
errors), live progress bars, JSON, and the exit code of a run."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress as RichBar, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class _BarTask:
    def __init__(self, bar: RichBar, task_id):
        self.bar, self.id = bar, task_id

    def advance(self, amount: float = 1) -> None:
        self.bar.advance(self.id, amount)

    def update(self, *, completed=None, total=None, label=None) -> None:
        fields = {k: v for k, v in (("completed", completed), ("total", total), ("description", label)) if v is not None}
        self.bar.update(self.id, **fields)

    def done(self) -> None:
        task = next(t for t in self.bar.tasks if t.id == self.id)
        total = task.total if task.total else 1
        self.bar.update(self.id, total=total, completed=total)
        self.bar.stop_task(self.id)


class BarProgress:
    """Live bars on stderr for every step a user waits for (downloads, load, repetitions). A console
    shows one live display at a time (rich raises LiveError on a second): a BarProgress opened while
    another is live on the same console adds its bars to the live one, so a step that opens its own
    (a phone runtime built inside `bench ab` or a matrix once did) cannot end the run."""

    _open: dict[int, "BarProgress"] = {}  # console id -> the outermost BarProgress open on it

    def __init__(self, console: Console):
        self.console = console
        self.bar = RichBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                           TimeElapsedColumn(), console=console, transient=False)
        self.bytes_bar = RichBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=False)
        self._live: list[RichBar] = []
        self._outer: BarProgress | None = None

    def __enter__(self):
        self._outer = BarProgress._open.setdefault(id(self.console), self)
        if self._outer is self:
            self._outer = None
        return self

    def __exit__(self, *exc):
        if self._outer is None:
            BarProgress._open.pop(id(self.console), None)
        for bar in self._live:
            bar.stop()

    def _start(self, bar: RichBar) -> RichBar:
        if bar not in self._live:
            for other in self._live:
                other.stop()
            self._live = [bar]
            bar.start()
        return bar

    def task(self, label: str, total: float | None = None, unit: str = "") -> _BarTask:
        if self._outer is not None:
            return self._outer.task(label, total, unit)
        bar = self._start(self.bytes_bar if unit == "B" else self.bar)
        return _BarTask(bar, bar.add_task(label, total=total))


def print_json(value, **dumps_options) -> None:
    # Plain stdout, not rich: a console may wrap long strings and break the JSON.
    sys.stdout.write(json.dumps(value, indent=2, **dumps_options) + "\n")


def run_exit_code(status: str, reason: str | None, where) -> int:
    if status == "complete":
        return 0
    if reason and "interrupted" in reason:
        return 130
    err.print(f"run {status}: {reason}; measured rows are kept in {where}", markup=False, soft_wrap=True)
    return 3
