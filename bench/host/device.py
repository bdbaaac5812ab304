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


# -- the page cache: a cold load needs the model file out of it ------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    return ctypes, libc


def page_cache_resident(path: str) -> float | None:
    """The share of the file's pages in the page cache (mincore(2) on a mapping that touches
    nothing), or None where it cannot be told."""
    size = os.path.getsize(path)
    if not size:
        return None
    ctypes, libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(address, size, vector) != 0:
                return None
            return sum(byte & 1 for byte in vector) / pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def drop_from_page_cache(path: str) -> None:
    """Ask the kernel to drop the file's clean pages (posix_fadvise DONTNEED): no root needed, and
    nothing but this file leaves the cache. Pages another process has mapped stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
