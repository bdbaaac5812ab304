"""Heat and battery of the emulated phone, driven by the CPU time its sandbox really uses.

Each tick: CPU seconds of the sandbox's processes -> power P = idle + per_core * cores busy; each
zone relaxes toward ambient + gain * P with its time constant; the battery charges from USB (unless
unplugged) and discharges with P / V. Past throttle_start_c the thermal status rises and the
sandbox's processes are really slowed by a SIGSTOP/SIGCONT duty cycle, with scaling_cur_freq
capped to match, so throttling shows up in decode t/s as on a phone."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from .profile import SimProfile
from .render import STATUS_CHARGING, STATUS_DISCHARGING, STATUS_FULL, BatteryView

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The sim's PowerStats energy meter: (rail, subsystem, share of idle power, share of the load's
# power), named as on a Tensor phone. The idle shares leave out what is not on a SoC rail (PMIC and
# battery losses), so the rails sum to less than the battery's power, as on a phone.
SIM_RAILS = (
    ("S2M_VDD_CPUCL2", "CPU(BIG)", 0.05, 0.55),
    ("S3M_VDD_CPUCL1", "CPU(MID)", 0.05, 0.20),
    ("S4M_VDD_CPUCL0", "CPU(LITTLE)", 0.10, 0.05),
    ("S1M_VDD_MIF", "MIF", 0.10, 0.15),
    ("S5M_VDD_INT", "INT", 0.10, 0.05),
    ("VSYS_PWR_MODEM", "Modem", 0.10, 0.0),
)
FIXED_PERFORMANCE_SHARE = 0.6  # fixed performance mode holds clocks at a sustainable fraction of max
FIRST_STEP = 0.2  # a mitigation's first step, as a share of max_duty: status LIGHT and a CPU cap together


def namespace_members(mount_ns: str, exclude: set[int]) -> list[int]:
    """PIDs whose mount namespace is the sandbox's: every process started inside it, daemons too."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/mnt") == mount_ns:
                members.append(pid)
        except OSError:
            continue
    return members


def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class BatteryOverride:
    """`dumpsys battery unplug/set/reset`: what BatteryService reports instead of the hardware."""

    frozen: bool = False
    ac: bool | None = None
    usb: bool | None = None
    wireless: bool | None = None
    level: int | None = None
    status: int | None = None


@dataclass
class PhoneState:
    profile: SimProfile
    cpus: int
    usb_plugged: bool
    temps: dict[str, float] = field(default_factory=dict)
    level_pct: float = 0.0
    power_w: float = 0.0
    energy_j: float = 0.0         # everything the phone has drawn since it started (the energy log's truth)
    current_a: float = 0.0        # + into the battery
    cpu_load: float = 0.0         # cores busy
    duty: float = 0.0
    thermal_status: int = 0
    override: BatteryOverride = field(default_factory=BatteryOverride)
    frozen_view: BatteryView | None = None
    rail_uws: dict[str, float] = field(default_factory=dict)   # cumulative energy per rail, uWs
    fixed_performance: bool = False
    gpu_busy_pct: float = 0.0     # lavapipe as its GPU: the cores' share its processes used

    def __post_init__(self):
        p = self.profile
        # A phone lying idle sits at its idle steady state, not at ambient.
        self.temps = {zone.name: p.initial_c if p.initial_c is not None else p.ambient_c + zone.gain_c_per_w * p.idle_w
                      for zone in p.zones}
        self.level_pct = self.profile.level_pct

    # -- derived -----------------------------------------------------------------------------
    @property
    def voltage_v(self) -> float:
        p = self.profile
        return p.voltage_empty_v + (p.voltage_full_v - p.voltage_empty_v) * self.level_pct / 100

    @property
    def charge_counter_uah(self) -> int:
        return int(self.profile.capacity_mah * 1000 * self.level_pct / 100)

    @property
    def hardware_status(self) -> int:
        if not self.usb_plugged:
            return STATUS_DISCHARGING
        return STATUS_FULL if self.level_pct >= 100 else STATUS_CHARGING

    @property
    def hottest_cpu_c(self) -> float:
        cpu_zones = [self.temps[z.name] for z in self.profile.zones if z.type == 0]
        return max(cpu_zones or self.temps.values())

    @property
    def cur_khz(self) -> int:
        """What a governor would pick: min when idle, scaling with load, never above the thermal cap."""
        p = self.profile
        busy = min(1.0, self.cpu_load / max(1, self.cpus))
        khz = p.min_khz + (p.max_khz - p.min_khz) * (busy if busy > 0.05 else 0)
        if self.fixed_performance:
            khz = p.max_khz * FIXED_PERFORMANCE_SHARE
        return int(min(khz, p.max_khz * (1 - self.duty)) // 1000 * 1000)

    def view(self) -> BatteryView:
        if self.override.frozen and self.frozen_view is not None:
            base = self.frozen_view
        else:
            base = BatteryView(ac=False, usb=self.usb_plugged, wireless=False, status=self.hardware_status,
                               level=int(round(self.level_pct)), voltage_mv=int(self.voltage_v * 1000),
                               temperature_dc=int(round(self.temps.get("battery", self.profile.ambient_c) * 10)),
                               charge_counter_uah=self.charge_counter_uah,
                               max_charging_ua=int(self.profile.charge_current_a * 1e6) if self.usb_plugged else 0)
        o = self.override
        return BatteryView(
            ac=base.ac if o.ac is None else o.ac, usb=base.usb if o.usb is None else o.usb,
            wireless=base.wireless if o.wireless is None else o.wireless,
            status=base.status if o.status is None else o.status, level=base.level if o.level is None else o.level,
            voltage_mv=base.voltage_mv, temperature_dc=base.temperature_dc,
            charge_counter_uah=base.charge_counter_uah, max_charging_ua=base.max_charging_ua)

    # -- dynamics ----------------------------------------------------------------------------
    def step(self, dt: float, cpu_seconds: float) -> None:
        p = self.profile
        self.cpu_load = max(0.0, cpu_seconds / dt) if dt > 0 else 0.0
        self.power_w = p.idle_w + p.per_core_w * self.cpu_load
        self.energy_j += self.power_w * dt
        for rail, subsystem, idle_share, load_share in SIM_RAILS:
            watts = p.idle_w * idle_share + p.per_core_w * self.cpu_load * load_share
            key = f"[{rail}]:{subsystem}"
            self.rail_uws[key] = self.rail_uws.get(key, 0.0) + watts * dt * 1e6
        for zone in p.zones:
            target = p.ambient_c + zone.gain_c_per_w * self.power_w
            self.temps[zone.name] += (target - self.temps[zone.name]) * min(1.0, dt / zone.tau_s)
        load_a = self.power_w / self.voltage_v
        charge_a = p.charge_current_a if self.usb_plugged and self.level_pct < 100 else 0.0
        self.current_a = charge_a - load_a
        self.level_pct = min(100.0, max(0.0, self.level_pct + self.current_a * dt / 3600 / (p.capacity_mah / 1000) * 100))
        excess = self.hottest_cpu_c - p.throttle_start_c
        self.thermal_status = 0 if excess < 0 else min(6, 1 + int(excess // p.status_step_c))
        # a governor's mitigation starts with a step (status LIGHT and a cap at once), then scales
        self.duty = 0.0 if excess < 0 else min(p.max_duty, max(FIRST_STEP, excess / p.throttle_span_c) * p.max_duty)

    def cmd_command(self, words: list[str]) -> str:
        """`cmd power set-fixed-performance-mode-enabled true|false` (API 30+)."""
        if words[:2] == ["power", "set-fixed-performance-mode-enabled"] and words[2:3] in (["true"], ["false"]):
            self.fixed_performance = words[2] == "true"
            return ""
        return f"Unknown command: {' '.join(words)}\n"

    def battery_command(self, words: list[str]) -> str:
        """Apply `dumpsys battery ...` arguments; returns what the shim prints (usually nothing)."""
        if not words:
            return ""
        verb = words[0]
        if verb == "reset":
            self.override = BatteryOverride()
            self.frozen_view = None
            return ""
        if not self.override.frozen:
            self.frozen_view = self.view()
            self.override.frozen = True
        if verb == "unplug":
            self.override.ac = self.override.usb = self.override.wireless = False
            return ""
        if verb == "set" and len(words) == 3:
            key, value = words[1], words[2]
            try:
                number = int(value)
            except ValueError:
                return f"Bad value: {value}\n"
            if key in ("ac", "usb", "wireless"):
                setattr(self.override, key, bool(number))
            elif key in ("level", "status"):
                setattr(self.override, key, number)
            else:
                return f"Unknown set option: {key}\n"
            return ""
        return f"Unknown option: {verb}\n"


class Throttle:
    """Duty-cycles the sandbox's processes: stopped for `duty` of each period."""

    def __init__(self):
        self.stopped: set[int] = set()

    def stop(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.add(pid)
            except ProcessLookupError:
                pass

    def resume(self) -> None:
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped.clear()


def process_rss_kb(pid: int) -> tuple[str, int] | None:
    try:
        name, rss = "?", None
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("Name:"):
                name = line.split(None, 1)[1].strip()
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return (name, rss) if rss is not None else None
    except (OSError, ValueError, IndexError):
        return None


class Lmkd:
    """The sim's low-memory killer: a sandbox process whose RSS passes the profile's limit is
    killed with SIGKILL and logged as Android's lmkd logs it."""

    def __init__(self, limit_bytes: int | None, log: Callable[[str, str], None]):
        self.limit_bytes, self.log = limit_bytes, log

    def check(self, members: list[int]) -> None:
        if self.limit_bytes is None:
            return
        for pid in members:
            found = process_rss_kb(pid)
            if found is None or found[1] * 1024 <= self.limit_bytes:
                continue
            name, rss_kb = found
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.log("lowmemorykiller", f"Kill '{name}' ({pid}), uid 2000, oom_score_adj 0 to free {rss_kb}kB rss, "
                                        f"0kB swap; reason: device memory limit of {self.limit_bytes // 1024}kB reached")


def unpin(pids: list[int]) -> None:
    """Every thread of these processes may run on every CPU again: what a phone whose cpuset or
    scheduler overrides sched_setaffinity does to llama.cpp's --cpu-mask (llama.cpp issue 26836)."""
    every = set(range(os.cpu_count() or 1))
    for pid in pids:
        try:
            tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, every)
            except OSError:
                pass


class PhysicsLoop:
    def __init__(self, state: PhoneState, mount_ns: str, exclude: set[int], publish: Callable[[PhoneState], None],
                 period_s: float = 0.2, lmkd: Lmkd | None = None):
        self.state, self.mount_ns, self.exclude, self.publish, self.period_s = state, mount_ns, exclude, publish, period_s
        self.lmkd = lmkd
        self.throttle = Throttle()
        self._last_ticks: dict[int, int] = {}
        self._last_gpu_ticks: dict[int, int] = {}
        self._running = True

    def _gpu_busy_pct(self, members: list[int], dt: float) -> float:
        """A sim whose GPU is lavapipe: the share of the phone's cores that the processes with
        lavapipe loaded used in the last tick. lavapipe runs compute shaders in the thread that
        submits them, so no thread is the GPU's alone; with every layer offloaded, such a process's
        CPU time is the GPU's work (its CPU backend only samples). What the kgsl files say is busy."""
        used, seen = 0, {}
        for pid in members:
            if pid not in self._last_gpu_ticks:  # a process that has loaded lavapipe keeps it: its maps are read until then
                try:
                    with open(f"/proc/{pid}/maps") as handle:
                        if "libvulkan_lvp" not in handle.read():
                            continue
                except OSError:
                    continue
            ticks = cpu_ticks(pid)
            if ticks is not None:
                used += max(0, ticks - self._last_gpu_ticks.get(pid, ticks))  # a process counts from when it loaded lavapipe
                seen[pid] = ticks
        self._last_gpu_ticks = seen
        if dt <= 0:
            return 0.0
        return min(100.0, used / CLOCK_TICKS / (dt * self.state.cpus) * 100)

    def _cpu_seconds(self) -> tuple[float, list[int]]:
        members = namespace_members(self.mount_ns, self.exclude)
        used = 0
        seen = {}
        for pid in members:
            ticks = cpu_ticks(pid)
            if ticks is None:
                continue
            used += max(0, ticks - self._last_ticks.get(pid, 0))  # a new process counts from its start
            seen[pid] = ticks
        self._last_ticks = seen
        return used / CLOCK_TICKS, list(seen)

    def run(self, before_tick: Callable[[], None] | None = None) -> None:
        last = time.monotonic()
        self._cpu_seconds()  # baseline: CPU used before the sim started does not count as heat
        while self._running:
            started = time.monotonic()
            if before_tick:
                before_tick()
            cpu_seconds, members = self._cpu_seconds()
            if self.state.profile.ignore_affinity:
                unpin(members)
            if self.lmkd is not None:
                self.lmkd.check(members)
            now = time.monotonic()
            if self.state.profile.gpu_vulkan == "lavapipe":
                self.state.gpu_busy_pct = self._gpu_busy_pct(members, now - last)
            self.state.step(now - last, cpu_seconds)
            last = now
            self.publish(self.state)
            remaining = self.period_s - (time.monotonic() - started)
            if self.state.duty > 0 and members:
                pause = min(max(0.0, remaining), self.period_s * self.state.duty)
                self.throttle.stop(members)
                time.sleep(pause)
                self.throttle.resume()
                remaining -= pause
            if remaining > 0:
                time.sleep(remaining)
        self.throttle.resume()

    def stop(self) -> None:
        self._running = False
