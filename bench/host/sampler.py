"""Host telemetry on its own thread: process RSS and peak, available memory, CPU use and
frequency, temperatures and battery where the OS has them. A sensor the OS lacks is listed in
`absent` with the reason and never written as zero."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import psutil

from ..clock import RunClock
from ..parse import ThreadPlacement, parse_proc_status, parse_smaps_rollup, parse_task_stat
from ..records import Sample
from .device import temperatures

Sink = Callable[[list[Sample]], None]


def proc_status_bytes(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """VmRSS/VmHWM/VmSwap from /proc/PID/status in bytes; empty off Linux."""
    try:
        values = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return {}
    return {key: values[key] for key in keys if key in values}


def task_stats(pid: int) -> list[tuple[int, int, int]]:
    """(tid, last CPU, CPU ticks) of each of the process's threads; empty off Linux."""
    readings = []
    for path in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            found = parse_task_stat(path.read_text())
        except OSError:  # the thread ended between listing and reading
            continue
        if found:
            readings.append(found)
    return readings


PSS_EVERY_S = 1.0  # smaps_rollup walks the page tables: about once a second is enough


def smaps_pss_bytes(pid: int) -> int | None:
    try:
        return parse_smaps_rollup(Path(f"/proc/{pid}/smaps_rollup").read_text()).get("Pss")
    except OSError:
        return None


class HostSampler:
    rail_source = None  # a host has no power-rail energy meter
    gpu = None  # nor GPU telemetry (phones' kgsl and devfreq GPUs only)
    last_rail_s = None
    clock_check = None  # stamped on the host's own clock: nothing to check
    cpus = ()  # a thread of bench's own process: where the scheduler puts it

    def __init__(self, clock: RunClock, sink: Sink, hz: float, pid: int):
        self.clock, self.sink, self.interval_s, self.pid = clock, sink, 1.0 / hz, pid
        self._last_pss_s = float("-inf")
        self.placement = ThreadPlacement()
        self.process = psutil.Process(pid)
        self.absent: dict[str, str] = {}
        self.ticks = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-host-sampler", daemon=True)
        self._probe()

    def _probe(self) -> None:
        """Decide once which sources exist so absence is recorded, not sampled as zero."""
        if smaps_pss_bytes(self.pid) is None:
            self.absent["process/pss"] = "no /proc/PID/smaps_rollup (Linux 4.14+) on this OS"
        if not proc_status_bytes(self.pid, ("VmHWM",)):
            self.absent["process/peak_rss"] = "no /proc/PID/status VmHWM on this OS; peak is the max sampled RSS"
        try:
            frequency = psutil.cpu_freq()
        except (OSError, NotImplementedError):
            frequency = None
        if not frequency or not frequency.current:
            self.absent["cpu/freq"] = "psutil.cpu_freq() reports no frequency (common in VMs)"
        if not temperatures():
            self.absent["thermal/*"] = "psutil.sensors_temperatures() reports no sensors"
        battery = getattr(psutil, "sensors_battery", lambda: None)()
        if battery is None:
            self.absent["battery/*"] = "psutil.sensors_battery() reports no battery"
        psutil.cpu_percent(interval=None)
        self.process.cpu_percent(interval=None)

    def start(self) -> "HostSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def finish(self, load_windows: list[tuple[float, float]]) -> tuple[list[Sample], dict]:
        """Samples derived after the run (none on the host) and notes for run.json."""
        return [], {}

    def sample_once(self) -> list[Sample]:
        t_s = self.clock.now_s()
        samples: list[Sample] = []

        def add(source: str, name: str, value: float, unit: str) -> None:
            samples.append(Sample(t_s, source, name, float(value), unit))

        status = proc_status_bytes(self.pid, ("VmRSS", "VmHWM", "VmSwap"))
        rss = status.get("VmRSS") or self.process.memory_info().rss
        add("process", "rss", rss, "B")
        if "VmHWM" in status:
            add("process", "peak_rss", status["VmHWM"], "B")
        if "VmSwap" in status:
            add("process", "swap", status["VmSwap"], "B")
        if "process/pss" not in self.absent and t_s - self._last_pss_s >= PSS_EVERY_S:
            pss = smaps_pss_bytes(self.pid)
            if pss is not None:
                add("process", "pss", pss, "B")
                self._last_pss_s = t_s
        add("process", "cpu", self.process.cpu_percent(interval=None), "%")
        samples += self.placement.samples(t_s, task_stats(self.pid))
        add("system", "mem_available", psutil.virtual_memory().available, "B")
        add("cpu", "utilization", psutil.cpu_percent(interval=None), "%")
        if "cpu/freq" not in self.absent:
            frequency = psutil.cpu_freq()
            if frequency and frequency.current:
                add("cpu", "freq", frequency.current, "MHz")
        if "thermal/*" not in self.absent:
            for sensor, celsius in temperatures().items():
                add("thermal", sensor, celsius, "C")
        if "battery/*" not in self.absent:
            battery = psutil.sensors_battery()
            if battery is not None:
                add("battery", "level", battery.percent, "%")
                add("battery", "plugged", 1.0 if battery.power_plugged else 0.0, "bool")
        return samples

    def _loop(self) -> None:
        next_tick = self.clock.now_s()
        while not self._stop.is_set():
            try:
                self.sink(self.sample_once())
                self.ticks += 1
            except (psutil.Error, OSError):
                self.errors += 1
            next_tick += self.interval_s
            # Fixed-rate schedule: a slow tick is not followed by a burst to catch up.
            delay = next_tick - self.clock.now_s()
            if delay < 0:
                next_tick = self.clock.now_s()
                delay = 0
            self._stop.wait(delay)
