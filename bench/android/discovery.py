"""What devices there are and what each is now: the devices adb servers list, a --device selector
resolved to one of them, and one shell call's snapshot of a device (properties, memory, storage,
battery, thermal state, CPU clusters and features)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import parse
from ..cpu import cpuinfo_flags
from ..errors import UsageError
from ..profiles import DeviceProfile, load_profiles, match_profile
from .adb import Device, Listed, Server, default_server, list_devices

DEVICE_TMP = "/data/local/tmp"  # where shell-user files may live on any Android device
_MARK = "@@bench@@"

STATE_FIXES = {
    "unauthorized": "unlock the phone and accept the 'Allow USB debugging' prompt, then retry",
    "offline": "reconnect the cable or run `adb reconnect`, then retry",
    "no permissions": "add a udev rule for the phone (see `adb devices` output) and replug it",
    "authorizing": "accept the prompt on the phone and retry in a few seconds",
}


@dataclass(frozen=True)
class Snapshot:
    serial: str
    props: dict[str, str]
    profile: DeviceProfile
    meminfo: dict[str, int]
    free_tmp_bytes: int | None
    battery: parse.BatteryReport
    battery_sysfs: dict[str, str]
    thermal: parse.ThermalReport
    clusters: tuple[parse.Cluster, ...]
    screen_on: bool | None
    battery_uevent: dict[str, str]
    cpu_features: frozenset[str] = frozenset()  # /proc/cpuinfo "Features" (ARM) or "flags" (x86)


def _sections(output: str) -> dict[str, str]:
    sections = {}
    for block in output.split(_MARK)[1:]:
        name, _, body = block.partition("\n")
        sections[name.strip()] = body
    return sections


_SNAPSHOT_SCRIPT = " ; ".join([
    f"echo {_MARK}getprop; getprop",
    f"echo {_MARK}meminfo; cat /proc/meminfo",
    f"echo {_MARK}df; df -k {DEVICE_TMP}",
    f"echo {_MARK}battery; dumpsys battery",
    f"echo {_MARK}thermal; dumpsys thermalservice",
    f"echo {_MARK}power; dumpsys power | grep -m1 mWakefulness=",
    f"echo {_MARK}sysbattery; for f in status current_now voltage_now capacity charge_counter temp; do "
    "[ -r /sys/class/power_supply/battery/$f ] && echo $f=$(cat /sys/class/power_supply/battery/$f); done",
    f"echo {_MARK}uevent; cat /sys/class/power_supply/battery/uevent 2>/dev/null",
    f"echo {_MARK}cpuinfo; cat /proc/cpuinfo",
    f"echo {_MARK}cpufreq; for f in /sys/devices/system/cpu/cpu*/cpufreq/related_cpus /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq; do "
    "[ -r $f ] && echo $f: $(cat $f); done",
])


def snapshot(device: Device, profiles: dict[str, DeviceProfile] | None = None) -> Snapshot:
    sections = _sections(device.shell(_SNAPSHOT_SCRIPT, timeout=60).stdout)
    props = parse.parse_getprop(sections.get("getprop", ""))
    profile = match_profile(props, profiles or load_profiles())
    power = sections.get("power", "")
    return Snapshot(
        serial=device.serial, props=props, profile=profile, meminfo=parse.parse_meminfo(sections.get("meminfo", "")),
        free_tmp_bytes=parse.parse_df_available_bytes(sections.get("df", "")),
        battery=parse.parse_dumpsys_battery(sections.get("battery", "")),
        battery_sysfs=dict(line.split("=", 1) for line in sections.get("sysbattery", "").splitlines() if "=" in line),
        thermal=parse.parse_thermalservice(sections.get("thermal", "")),
        clusters=parse.parse_cpufreq_topology(sections.get("cpufreq", "")),
        screen_on=None if "mWakefulness=" not in power else "Awake" in power,
        battery_uevent=parse.parse_uevent(sections.get("uevent", "")),
        cpu_features=cpuinfo_flags(sections.get("cpuinfo", "")),
    )


def battery_current_a(snap: Snapshot) -> float | None:
    raw = parse.parse_number(snap.battery_sysfs.get("current_now"))
    if raw is None:
        return None
    scale, _ = parse.current_unit_scale([raw], None if snap.profile.current_unit == "auto" else snap.profile.current_unit)
    sign, _ = parse.current_discharge_sign([raw], discharging=snap.battery_sysfs.get("status") == "Discharging",
                                           pinned=None if snap.profile.current_sign == "auto" else snap.profile.current_sign)
    return raw * scale * sign


def describe(snap: Snapshot) -> dict:
    """The `bench devices --json` entry for a connected device."""
    props, battery = snap.props, snap.battery
    return {
        "serial": snap.serial, "state": "device", "profile": snap.profile.id,
        "manufacturer": props.get("ro.product.manufacturer"), "model": props.get("ro.product.model"),
        "device": props.get("ro.product.device"), "soc": props.get("ro.soc.model") or snap.profile.soc or None,
        "abi": props.get("ro.product.cpu.abi"), "sdk": int(props["ro.build.version.sdk"]) if props.get("ro.build.version.sdk", "").isdigit() else None,
        "ram_total_bytes": snap.meminfo.get("MemTotal"), "ram_available_bytes": snap.meminfo.get("MemAvailable"),
        "free_tmp_bytes": snap.free_tmp_bytes,
        "battery": {"level_pct": battery.level_pct, "status": battery.status, "plugged": battery.plugged,
                    "temperature_c": battery.temperature_c, "voltage_v": battery.voltage_v,
                    "current_a": battery_current_a(snap), "charge_counter_uah": battery.charge_counter_uah},
        "thermal": {"status": snap.thermal.status,
                    "sensors": [{"name": s.name, "type": s.type, "celsius": s.celsius} for s in snap.thermal.sensors]},
        "screen_on": snap.screen_on,
    }


def attached(servers: list[Server] | None = None) -> list[Listed]:
    """Every device on every adb server given (default: the one adb's environment names)."""
    found: list[Listed] = []
    for server in servers or [default_server()]:
        found += list_devices(server=server)
    return found


def resolve(selector: str, servers: list[Server] | None = None) -> Listed:
    """--device: a profile id, a serial, or `any` -> the one attached device it names."""
    matches = resolve_many([selector], servers)
    return matches[0]


def resolve_many(selectors: list[str], servers: list[Server] | None = None) -> list[Listed]:
    """--device a,b,... or `all`: each selector names exactly one attached device (a serial, a
    profile id, or `any`); `all` is every usable device on every server. No device twice."""
    devices = attached(servers)
    if selectors == ["all"]:
        usable = [d for d in devices if d.state == "device"]
        if not usable:
            listing = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
            raise UsageError(f"no usable device attached (attached: {listing})",
                             "connect phones and enable USB debugging, or start sims with `bench sim start`")
        return usable
    profiles = load_profiles()
    for selector in selectors:  # every name is checked before any is matched
        _check_name(selector, devices, profiles)
    chosen: list[Listed] = []
    for selector in selectors:
        item = _resolve_one(selector, devices, profiles)
        if any(c.serial == item.serial and c.server == item.server for c in chosen):
            raise UsageError(f"'{selector}' names {item.serial} again", "name each device once")
        chosen.append(item)
    return chosen


def _check_name(selector: str, devices: list[Listed], profiles: dict[str, DeviceProfile]) -> None:
    if selector == "any" or selector in profiles or any(item.serial == selector for item in devices):
        return
    from ..config import closest

    names = ["host", "any", "all", *profiles, *(d.serial for d in devices)]
    raise UsageError(f"unknown device '{selector}'", f"closest known: {closest(selector, names)} (see `bench devices`)")


def _resolve_one(selector: str, devices: list[Listed], profiles: dict[str, DeviceProfile]) -> Listed:
    for item in devices:
        if item.serial == selector:
            _usable(item)
            return item
    candidates = []
    for item in devices:
        if item.state != "device":
            continue
        props = parse.parse_getprop(Device(item.serial, server=item.server).shell("getprop", timeout=20).stdout)
        if selector == "any" or match_profile(props, profiles).id == selector:
            candidates.append(item)
    if not candidates:
        unusable = [d for d in devices if d.state != "device"]
        if unusable:
            _usable(unusable[0])
        listing = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
        raise UsageError(f"no attached device matches '{selector}' (attached: {listing})",
                         "connect the phone and enable USB debugging, or start one with `bench sim start`")
    if len(candidates) > 1:
        raise UsageError(f"{len(candidates)} devices match '{selector}': {', '.join(d.serial for d in candidates)}",
                         "pass --device SERIAL, or several: --device SERIAL,SERIAL")
    return candidates[0]


def _usable(item: Listed) -> None:
    if item.state != "device":
        raise UsageError(f"device {item.serial} is {item.state}", STATE_FIXES.get(item.state, "check `adb devices`"))
