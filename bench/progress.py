"""How the library reports long steps without printing: callers pass a Progress; the CLI's
implementation draws bars, the default draws nothing."""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    def advance(self, amount: float = 1) -> None: ...
    def update(self, *, completed: float | None = None, total: float | None = None,
               label: str | None = None) -> None: ...
    def done(self) -> None: ...


class Progress(Protocol):
    def task(self, label: str, total: float | None = None, unit: str = "") -> Task: ...


class _NullTask:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, *, completed=None, total=None, label=None) -> None:
        pass

    def done(self) -> None:
        pass


class NullProgress:
    def task(self, label: str, total: float | None = None, unit: str = "") -> Task:
        return _NullTask()
