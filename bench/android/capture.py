"""`bench capture --device ID DIR`: the text a device shows the harness, in the layout
`bench sim start --replay DIR` reads, so a user can attach it to a bug report."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..files import atomic_write_bytes
from .adb import Device

TEXT_COMMANDS = {
    "getprop.txt": "getprop",
    "dumpsys_battery.txt": "dumpsys battery",
    "dumpsys_thermalservice.txt": "dumpsys thermalservice",
    "proc_meminfo.txt": "cat /proc/meminfo",
}
SYS_GLOBS = (
    "/sys/class/thermal/thermal_zone*/type",
    "/sys/class/thermal/thermal_zone*/temp",
    "/sys/class/power_supply/battery/capacity",
    "/sys/class/power_supply/battery/status",
    "/sys/class/power_supply/battery/current_now",
    "/sys/class/power_supply/battery/voltage_now",
    "/sys/class/power_supply/battery/charge_counter",
    "/sys/class/power_supply/battery/temp",
    "/sys/class/power_supply/battery/uevent",
    "/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq",
    "/sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq",
    "/sys/devices/system/cpu/cpu*/cpufreq/related_cpus",
    # the GPU, where the phone lets a shell read it: Adreno's kgsl, and GPUs under devfreq
    "/sys/class/kgsl/kgsl-3d0/gpu_model",
    "/sys/class/kgsl/kgsl-3d0/gpu_busy_percentage",
    "/sys/class/kgsl/kgsl-3d0/gpubusy",
    "/sys/class/kgsl/kgsl-3d0/gpuclk",
    "/sys/class/kgsl/kgsl-3d0/max_gpuclk",
    "/sys/class/kgsl/kgsl-3d0/thermal_pwrlevel",
    "/sys/class/kgsl/kgsl-3d0/devfreq/cur_freq",
    "/sys/class/kgsl/kgsl-3d0/devfreq/available_frequencies",
    "/sys/class/devfreq/*/name",
    "/sys/class/devfreq/*/cur_freq",
    "/sys/class/devfreq/*/max_freq",
    "/sys/class/devfreq/*/available_frequencies",
)
# One marker line per file, so a single shell call returns the whole tree.
_MARK = "@@bench-capture@@"


def safe_sys_path(device_path: str) -> Path | None:
    """sys/... for a device path under /sys/ made only of plain names; None for anything else
    ("..", ".", empty parts, control characters): paths come from the device and are not trusted."""
    if not device_path.startswith("/sys/"):
        return None
    parts = device_path[len("/sys/"):].split("/")
    if any(part in ("", ".", "..") or any(ord(c) < 32 for c in part) for part in parts):
        return None
    return Path("sys", *parts)


def capture(device: Device, directory: Path) -> list[str]:
    """Write the capture; returns the files written (relative to DIR)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, command in TEXT_COMMANDS.items():
        result = device.shell(command, timeout=30)
        if result.returncode == 0 and result.stdout:
            atomic_write_bytes(directory / name, result.stdout.encode())
            written.append(name)
    script = "for f in " + " ".join(SYS_GLOBS) + "; do [ -r \"$f\" ] || continue; echo " + shlex.quote(_MARK) + \
             "\"$f\"; cat \"$f\" 2>/dev/null; done"
    output = device.shell(script, timeout=60).stdout
    root = directory.resolve()
    for block in output.split(_MARK)[1:]:
        path, _, content = block.partition("\n")
        relative = safe_sys_path(path)
        if relative is None or root not in (root / relative).resolve().parents:
            continue  # the device named a path outside /sys, or one that climbs out of DIR
        atomic_write_bytes(directory / relative, content.encode())
        written.append(str(relative))
    return written
