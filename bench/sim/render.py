"""Text the sandbox's shims print, in the formats of the real captures in
shared/fixtures/android (AOSP BatteryService, ThermalHAL 2.0 dumps, sysfs uevent, getprop)."""

from __future__ import annotations

from dataclasses import dataclass

STATUS_CHARGING, STATUS_DISCHARGING, STATUS_NOT_CHARGING, STATUS_FULL = 2, 3, 4, 5
_STATUS_WORDS = {STATUS_CHARGING: "Charging", STATUS_DISCHARGING: "Discharging",
                 STATUS_NOT_CHARGING: "Not charging", STATUS_FULL: "Full"}


@dataclass(frozen=True)
class BatteryView:
    """What BatteryService reports (possibly faked by `dumpsys battery set/unplug`)."""

    ac: bool
    usb: bool
    wireless: bool
    status: int
    level: int
    voltage_mv: int
    temperature_dc: int  # tenths of a degree C
    charge_counter_uah: int
    max_charging_ua: int


def dumpsys_battery(view: BatteryView) -> str:
    def flag(value: bool) -> str:
        return "true" if value else "false"

    return ("Current Battery Service state:\n"
            f"  AC powered: {flag(view.ac)}\n"
            f"  USB powered: {flag(view.usb)}\n"
            f"  Wireless powered: {flag(view.wireless)}\n"
            "  Dock powered: false\n"
            f"  Max charging current: {view.max_charging_ua}\n"
            f"  Max charging voltage: {5000000 if view.max_charging_ua else 0}\n"
            f"  Charge counter: {view.charge_counter_uah}\n"
            f"  status: {view.status}\n"
            "  health: 2\n"
            "  present: true\n"
            f"  level: {view.level}\n"
            "  scale: 100\n"
            f"  voltage: {view.voltage_mv}\n"
            f"  temperature: {view.temperature_dc}\n"
            "  technology: Li-ion\n")


def _temperature_line(value: float, kind: int, name: str, status: int) -> str:
    return f"\tTemperature{{mValue={value!r}, mType={kind}, mName={name}, mStatus={status}}}\n"


def dumpsys_thermalservice(zones: list[tuple[str, int, float]], thermal_status: int,
                           cached: list[tuple[str, int, float]] | None = None) -> str:
    """zones: (name, type, celsius). Battery-limit entries (types 6/7/8, mV/mA/%) are included as
    on Pixels so parsers must learn to drop them."""
    limits = [("vdroop1", 6, 1050.0), ("ocp_cpu1", 7, 6900.0), ("soc", 8, 19.0)]
    current = "".join(_temperature_line(round(c, 6), t, n, min(thermal_status, 6)) for n, t, c in zones + limits)
    stale = "".join(_temperature_line(round(c, 6), t, n, 0) for n, t, c in (cached or zones) + limits)
    return ("IsStatusOverride: false\n"
            "ThermalEventListeners:\n\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n"
            "ThermalStatusListeners:\n\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n"
            f"Thermal Status: {thermal_status}\n"
            "Cached temperatures:\n" + stale +
            "HAL Ready: true\nHAL connection:\n\tThermalHAL 2.0 connected: yes\n"
            "Current temperatures from HAL:\n" + current +
            "Current cooling devices from HAL:\n")


def battery_uevent(*, capacity: int, status: int, current_ua: int, voltage_uv: int, charge_counter_uah: int,
                   temp_dc: int, charge_full_uah: int) -> str:
    return ("POWER_SUPPLY_NAME=battery\nPOWER_SUPPLY_TYPE=Battery\n"
            f"POWER_SUPPLY_CAPACITY={capacity}\n"
            f"POWER_SUPPLY_CHARGE_COUNTER={charge_counter_uah}\n"
            f"POWER_SUPPLY_CHARGE_FULL={charge_full_uah}\n"
            f"POWER_SUPPLY_CURRENT_NOW={current_ua}\n"
            "POWER_SUPPLY_HEALTH=Good\nPOWER_SUPPLY_PRESENT=1\n"
            f"POWER_SUPPLY_STATUS={_STATUS_WORDS.get(status, 'Unknown')}\n"
            f"POWER_SUPPLY_TEMP={temp_dc}\n"
            "POWER_SUPPLY_TECHNOLOGY=Li-ion\n"
            f"POWER_SUPPLY_VOLTAGE_NOW={voltage_uv}\n")


def status_word(status: int) -> str:
    return _STATUS_WORDS.get(status, "Unknown")


def getprop(props: dict[str, str]) -> str:
    return "".join(f"[{key}]: [{value}]\n" for key, value in sorted(props.items()))
