"""The run's one clock: every request timestamp and telemetry sample is seconds since run start
on the same monotonic counter."""

from __future__ import annotations

import time


class RunClock:
    def __init__(self) -> None:
        self._origin_ns = time.perf_counter_ns()

    def now_s(self) -> float:
        return (time.perf_counter_ns() - self._origin_ns) / 1e9

    def to_run_s(self, perf_counter_ns: int) -> float:
        return (perf_counter_ns - self._origin_ns) / 1e9
