"""The host as a device: facts, temperatures, and memory, through psutil and /proc."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import psutil

from .membw import last_level_cache_bytes

from ..records import DeviceFacts


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def temperatures() -> dict[str, float]:
    """Current temperatures in degrees C by sensor, empty where the OS exposes none."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return {}
    try:
        groups = reader()
    except (OSError, RuntimeError):
        return {}
    found: dict[str, float] = {}
    for group, entries in groups.items():
        for index, entry in enumerate(entries):
            label = f"{group}/{entry.label or index}"
            if entry.current is not None and -40 < entry.current < 150:
                found[label] = float(entry.current)
    return found


def memory_available_bytes() -> int:
    return int(psutil.virtual_memory().available)


def host_facts() -> DeviceFacts:
    uname = platform.uname()
    cpu_model = _cpu_model()
    frequency = None
    try:
        frequency = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        pass
    return DeviceFacts(
        kind="host",
        profile="host",
        serial=uname.node,
        manufacturer=None,
        model=cpu_model,
        device=uname.node,
        soc=None,
        abi=uname.machine,
        os=platform.platform(),
        cpu_model=cpu_model,
        cores_logical=psutil.cpu_count(logical=True),
        cores_physical=psutil.cpu_count(logical=False),
        ram_bytes=int(psutil.virtual_memory().total),
        extra={
            "python": platform.python_version(),
            "llama_cpp_python": _package_version("llama-cpp-python"),
            "cpu_max_mhz": frequency.max if frequency and frequency.max else None,
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "last_level_cache_bytes": last_level_cache_bytes(),
        },
    )
