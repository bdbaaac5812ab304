"""Device text -> records. Pure functions: no I/O, unknown lines ignored, vendor variants handled
(DESIGN section 6; every capture in tests/data/android must parse)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .records import Sample

# -- getprop -------------------------------------------------------------------------------------

_PROP = re.compile(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$")


def parse_getprop(text: str) -> dict[str, str]:
    props = {}
    for line in text.splitlines():
        match = _PROP.match(line.strip())
        if match:
            props[match.group(1)] = match.group(2)
    return props


# -- dumpsys battery -----------------------------------------------------------------------------

STATUS_NAMES = {1: "unknown", 2: "charging", 3: "discharging", 4: "not_charging", 5: "full"}
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 _]*?)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class BatteryReport:
    level_pct: float | None
    status: str                  # charging | discharging | not_charging | full | unknown
    plugged: str                 # ac | usb | wireless | dock | none
    temperature_c: float | None
    voltage_v: float | None
    charge_counter_uah: float | None
    current_ma_vendor: float | None  # Samsung's `current now:` (mA), sign as printed


def parse_number(text: str | None) -> float | None:
    """The leading number of a value ("19", "[-42]", "3.7 V"), or None."""
    if text is None:
        return None
    match = re.match(r"^\[?\s*(-?\d+(?:\.\d+)?)", text.strip())
    return float(match.group(1)) if match else None


def battery_voltage_v(raw: float | None) -> float | None:
    """Volts from a battery voltage in whatever unit the device chose, decided by plausible range:
    cells sit between 2.5 and 5 V (two in series under 10 V), so 100,000 and up is uV (the
    kernel ABI), 100 and up is mV (dumpsys, some vendors' sysfs), and below that volts."""
    if raw is None or raw <= 0:
        return None  # 0 is what emulators and stubs print: absent, not a reading
    if raw >= 100_000:
        return raw / 1e6
    if raw >= 100:
        return raw / 1e3
    return float(raw)


def parse_dumpsys_battery(text: str) -> BatteryReport:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_VALUE.match(line)
        if match:
            fields.setdefault(match.group(1).lower(), match.group(2))  # first occurrence wins

    def flag(key: str) -> bool:
        return fields.get(key, "").strip().lower() == "true"

    plugged = next((name for name, key in (("ac", "ac powered"), ("usb", "usb powered"), ("wireless", "wireless powered"),
                                            ("dock", "dock powered")) if flag(key)), "none")
    level, scale = parse_number(fields.get("level")), parse_number(fields.get("scale")) or 100.0
    status_code = parse_number(fields.get("status"))
    voltage_mv = parse_number(fields.get("voltage"))
    temperature = parse_number(fields.get("temperature"))
    counter = parse_number(fields.get("charge counter"))
    if counter is not None and 0 < counter < 20_000:
        counter *= 1000  # some vendors print mAh; a phone battery holds at least 1,000 mAh = 1e6 uAh
    return BatteryReport(
        level_pct=None if level is None else level * 100.0 / scale,
        status=STATUS_NAMES.get(int(status_code), "unknown") if status_code is not None else "unknown",
        plugged=plugged,
        # 0 mV / 0 tenths-of-C is what emulators and stubs print: absent, not a reading.
        temperature_c=temperature / 10 if temperature else None,
        voltage_v=battery_voltage_v(voltage_mv),
        charge_counter_uah=counter if counter else None,
        current_ma_vendor=parse_number(fields.get("current now")),
    )


# -- dumpsys thermalservice ----------------------------------------------------------------------

# android.os.Temperature types; 6/7/8 are battery limits (mV, mA, %), not temperatures.
TEMPERATURE_TYPES = {-1: "unknown", 0: "cpu", 1: "gpu", 2: "battery", 3: "skin", 4: "usb_port", 5: "power_amplifier",
                     9: "npu", 10: "tpu", 11: "display", 12: "modem", 13: "soc", 14: "wifi", 15: "camera",
                     16: "flashlight", 17: "speaker", 18: "ambient", 19: "pogo"}
NON_TEMPERATURE_TYPES = {6, 7, 8}
_TEMPERATURE = re.compile(r"Temperature\{mValue=(-?[\d.eE+-]+),\s*mType=(-?\d+),\s*mName=([^,]*),\s*mStatus=(-?\d+)\}")


@dataclass(frozen=True)
class ThermalSensor:
    name: str
    type: str
    celsius: float
    status: int


@dataclass(frozen=True)
class ThermalReport:
    status: int | None              # 0 NONE .. 6 SHUTDOWN
    hal_connected: bool | None
    sensors: tuple[ThermalSensor, ...]


def parse_thermalservice(text: str) -> ThermalReport:
    status = None
    match = re.search(r"^\s*Thermal Status:\s*(\d+)", text, re.MULTILINE)
    if match:
        status = int(match.group(1))
    hal = re.search(r"ThermalHAL[^\n]*?connected:\s*(yes|no)", text)
    sensors = []
    in_current = False
    for line in text.splitlines():
        if not line[:1].isspace():
            # Only "Current temperatures from HAL:"; "Cached temperatures:" can be minutes old.
            in_current = line.strip().startswith("Current temperatures from HAL")
            continue
        if not in_current:
            continue
        found = _TEMPERATURE.search(line)
        if not found:
            continue
        kind = int(found.group(2))
        if kind in NON_TEMPERATURE_TYPES:
            continue
        sensors.append(ThermalSensor(found.group(3).strip(), TEMPERATURE_TYPES.get(kind, f"type{kind}"),
                                     float(found.group(1)), int(found.group(4))))
    return ThermalReport(status, None if hal is None else hal.group(1) == "yes", tuple(sensors))


# -- sysfs ---------------------------------------------------------------------------------------

def parse_uevent(text: str) -> dict[str, str]:
    """POWER_SUPPLY_X=value (or X=value, as some tools print it) -> {"X": value}."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and key.replace("_", "").isalnum() and key.isupper():
            values[key.removeprefix("POWER_SUPPLY_")] = value.strip()
    return values


def battery_capacity_mah(uevent: dict[str, str]) -> tuple[float | None, str]:
    """The battery's full capacity from its uevent: CHARGE_FULL (what the fuel gauge learned, uAh),
    unless it is absent or implausible (some kernels report more than 125% of the design), then
    CHARGE_FULL_DESIGN. (None, why) when neither is there."""
    full, design = parse_number(uevent.get("CHARGE_FULL")), parse_number(uevent.get("CHARGE_FULL_DESIGN"))
    if full and full > 0 and (not design or full <= 1.25 * design):
        return full / 1000, "charge_full in the battery's uevent (the fuel gauge's learned capacity)"
    if design and design > 0:
        why = f"charge_full {full / 1000:.0f} mAh is implausible" if full else "no charge_full"
        return design / 1000, f"charge_full_design in the battery's uevent ({why})"
    return None, "the battery's uevent has neither charge_full nor charge_full_design"


def thermal_zone_celsius(zone_type: str, raw: str) -> float | None:
    """A thermal_zone*/temp reading in C, or None when it is a placeholder or not a temperature.
    Millidegrees by the kernel ABI; a few zones report whole degrees; -40000-style values and
    zones named for current, voltage or capacity are not temperatures."""
    value = parse_number(raw)
    if value is None:
        return None
    lowered = zone_type.lower()
    if any(word in lowered for word in ("ocp", "vdroop", "soc_", "batoilo", "smpl", "cycle", "ibat", "vbat")) or lowered == "soc":
        return None
    celsius = value / 1000 if abs(value) >= 200 else value
    if celsius <= -30 or celsius >= 150:
        return None
    return celsius


# -- the GPU: Adreno's kgsl, and GPUs under devfreq (Mali, Adreno on mainline kernels) -------------

def parse_gpu_busy(text: str) -> float | None:
    """GPU busy in percent from kgsl: gpu_busy_percentage ("37 %", the driver's "%d %%\n") or
    gpubusy, the busy and total counters of the driver's last window ("  1234  5678"; "0 0": the
    GPU was powered down, so idle). None when the text is neither."""
    parts = text.split()
    if len(parts) == 2 and parts[1] == "%" and parts[0].isdigit():
        return float(parts[0])
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        busy, total = int(parts[0]), int(parts[1])
        return 100.0 * busy / total if total else 0.0 if busy == 0 else None
    if len(parts) == 1 and parts[0].endswith("%") and parts[0][:-1].isdigit():
        return float(parts[0][:-1])
    return None


def parse_frequencies_hz(text: str) -> tuple[int, ...]:
    """devfreq's available_frequencies (or kgsl's gpu_available_frequencies): Hz, ascending."""
    return tuple(sorted({int(word) for word in text.split() if word.isdigit() and int(word) > 0}))


def parse_devfreq_listing(text: str) -> dict[str, str]:
    """`grep . *` in a devfreq folder ("name:value" lines) -> file -> its first line."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name and name not in found and "/" not in name:
            found[name.strip()] = value.strip()
    return found


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> bytes per key."""
    values = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1)
    return values


def parse_proc_status(text: str) -> dict[str, int]:
    """/proc/PID/status memory lines (VmRSS, VmHWM, VmSwap, ...) -> bytes; other lines ignored."""
    values = {}
    for line in text.splitlines():
        key, sep, rest = line.strip().partition(":")
        parts = rest.split()
        if sep and key.startswith(("Vm", "Rss")) and parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values


def parse_task_stat(text: str) -> tuple[int, int, int] | None:
    """A /proc/PID/task/TID/stat line -> (tid, last CPU, utime + stime in clock ticks). The thread's
    name sits in parentheses and may hold spaces: fields are counted from its closing one."""
    head, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 37 or not head.split("(")[0].strip().isdigit():
        return None
    try:  # after the name: state is field 3, utime 14, stime 15, processor 39
        return int(head.split("(")[0]), int(fields[36]), int(fields[11]) + int(fields[12])
    except ValueError:
        return None


class ThreadPlacement:
    """Where a process's threads ran, from successive readings of their task stat lines: each tick's
    new CPU time of a thread is put on the CPU it was last seen on (the kernel's `processor` field),
    into cumulative per-CPU seconds; `busy` counts the threads that used CPU since the last tick."""

    def __init__(self, ticks_per_s: float = 100.0):  # USER_HZ: 100 on Linux and Android
        self.ticks_per_s = ticks_per_s
        self._last: dict[int, int] = {}
        self.cpu_seconds: dict[int, float] = {}

    def samples(self, t_s: float, readings: list[tuple[int, int, int]]) -> list[Sample]:
        """One tick's readings as samples: busy threads, and each CPU's cumulative seconds of the
        runtime's CPU time (a counter, cut by request windows as the energy counters are)."""
        busy = self.update(readings)
        return [Sample(t_s, "threads", "busy", float(busy), "count"),
                *(Sample(t_s, "threads", f"cpu{cpu}", seconds, "s") for cpu, seconds in sorted(self.cpu_seconds.items()))]

    def update(self, readings: list[tuple[int, int, int]]) -> int:
        busy = 0
        seen = {}
        for tid, cpu, ticks in readings:
            used = ticks - self._last.get(tid, ticks)  # a thread's time before its first reading is not placed
            if used > 0:
                busy += 1
                self.cpu_seconds[cpu] = self.cpu_seconds.get(cpu, 0.0) + used / self.ticks_per_s
            seen[tid] = ticks
        self._last = seen
        return busy


def parse_smaps_rollup(text: str) -> dict[str, int]:
    """/proc/PID/smaps_rollup -> bytes per field (Rss, Pss, Pss_Anon, Pss_File, Swap, SwapPss...).
    PSS divides each shared page among the processes mapping it, so it does not over-count a
    model file mapped by several processes as RSS does."""
    values = {}
    for line in text.splitlines():
        key, sep, rest = line.strip().partition(":")
        parts = rest.split()
        if sep and parts and parts[0].isdigit() and parts[1:2] == ["kB"]:
            values[key] = int(parts[0]) * 1024
    return values


def parse_dumpsys_meminfo_total_kb(text: str) -> dict[str, int] | None:
    """TOTAL row of `dumpsys meminfo PID` (PSS and RSS in kB); None for "No process found"."""
    if "No process found" in text:
        return None
    header_rss = None
    for line in text.splitlines():
        if "Rss" in line and "Pss" in line:
            header_rss = True
        stripped = line.strip()
        if stripped.startswith("TOTAL") and not stripped.startswith("TOTAL PSS"):
            numbers = [int(n) for n in re.findall(r"-?\d+", stripped)]
            if numbers:
                result = {"pss_kb": numbers[0]}
                if header_rss and len(numbers) >= 5:
                    result["rss_kb"] = numbers[4]
                return result
        match = re.match(r"TOTAL PSS:\s*(\d+)", stripped)
        if match:
            return {"pss_kb": int(match.group(1))}
    return None


@dataclass(frozen=True)
class Cluster:
    cpus: tuple[int, ...]
    max_khz: int | None


def parse_cpufreq_topology(text: str) -> tuple[Cluster, ...]:
    """`path: value` lines (or shell output of `grep -H . .../cpufreq/*`) -> clusters by related_cpus."""
    related: dict[int, tuple[int, ...]] = {}
    max_khz: dict[int, int] = {}
    for line in text.splitlines():
        match = re.match(r"^/sys/devices/system/cpu/cpu(\d+)/cpufreq/(\w+):\s*(.*)$", line.strip())
        if not match:
            continue
        cpu, name, value = int(match.group(1)), match.group(2), match.group(3).strip()
        if name == "related_cpus":
            related[cpu] = tuple(int(c) for c in value.split() if c.isdigit())
        elif name == "cpuinfo_max_freq" and value.isdigit():
            max_khz[cpu] = int(value)
    clusters = {}
    for cpu, group in sorted(related.items()):
        clusters.setdefault(group, Cluster(group, max_khz.get(cpu)))
    return tuple(sorted(clusters.values(), key=lambda c: c.cpus[0]))


def parse_df_available_bytes(text: str) -> int | None:
    """`df -k PATH` (toybox or coreutils): available kB of the last data line."""
    lines = [l for l in text.splitlines() if l.strip()]
    if len(lines) < 2:
        return None
    header = lines[0].replace("Mounted on", "Mounted_on").split()
    values = lines[-1].split()
    for name in ("Available", "Avail"):
        if name in header:
            index = header.index(name)
            # toybox can wrap a long filesystem name onto its own line
            offset = len(header) - len(values)
            try:
                return int(values[index - offset]) * 1024
            except (ValueError, IndexError):
                return None
    return None


# -- battery current normalisation ---------------------------------------------------------------

def current_unit_scale(raw_values: list[float], pinned: str | None = None) -> tuple[float, str]:
    """(factor to amperes, how it was decided). The kernel ABI says uA; some vendors (Samsung)
    report mA. Phones draw 10 mA to 6 A, so readings whose magnitude reaches 10,000 are uA."""
    if pinned in ("uA", "mA"):
        return (1e-6 if pinned == "uA" else 1e-3), f"pinned by the profile ({pinned})"
    magnitudes = [abs(v) for v in raw_values if v]
    if not magnitudes:
        return 1e-6, "assumed uA (no non-zero readings)"
    return (1e-6, "detected uA (readings of 10,000 or more)") if max(magnitudes) >= 10_000 else \
        (1e-3, "detected mA (all readings under 10,000)")


def current_discharge_sign(raw_values: list[float], *, discharging: bool | None, pinned: str | None = None) -> tuple[int, str]:
    """Multiplier that makes discharge positive, and how it was decided. A profile can pin it
    ("negative_discharge": kernel ABI, Pixels; "positive_discharge"). Otherwise, readings taken
    while the phone is really discharging tell the sign; failing that, the kernel ABI is assumed."""
    if pinned == "negative_discharge":
        return -1, "pinned by the profile (negative while discharging)"
    if pinned == "positive_discharge":
        return 1, "pinned by the profile (positive while discharging)"
    values = sorted(v for v in raw_values if v)
    if discharging and values:
        median = values[len(values) // 2]
        return (1, "detected: positive while discharging") if median > 0 else (-1, "detected: negative while discharging")
    return -1, "assumed kernel ABI (negative while discharging)"


# -- power rails (PowerStats HAL energy meter) ----------------------------------------------------

# No "delta": it resets the HAL's one global previous reading, which other tools on the phone rely
# on, and bench takes differences of the cumulative column itself.
RAILS_COMMAND = "dumpsys android.hardware.power.stats.IPowerStats/default"
# "[RAIL]:Subsystem" (AIDL HALs) or a plain "RAIL" (older HALs), cumulative mWs, an optional (delta)
_RAIL_LINE = re.compile(r"^\s*(\[[^\]]+\]:\S+|[A-Za-z0-9_.\-]+)\s+(-?\d+(?:\.\d+)?)\s+mWs(?:\s*\(\s*(-?\d+(?:\.\d+)?)\s*\))?\s*$")


@dataclass(frozen=True)
class RailReading:
    """One dump of the PowerStats HAL energy meter: cumulative energy per channel in joules
    (the HAL prints mWs = mJ), and the HAL's own elapsed time since the previous delta dump."""

    channels: dict[str, float]          # "[RAIL]:Subsystem" or "RAIL" -> cumulative J
    elapsed_ms: int | None


def parse_power_stats(text: str) -> RailReading | None:
    """`dumpsys android.hardware.power.stats.IPowerStats/default` (Pixel 6 and later): the lines
    between the "energy meter" banners. None when there is no meter."""
    inside, channels, elapsed = False, {}, None
    for line in text.splitlines():
        if "energy meter" in line and "PowerStats HAL" in line:
            if "End of" in line:
                break
            inside = True
            continue
        if not inside:
            continue
        found = re.search(r"Elapsed time:\s*(\d+)\s*ms", line)
        if found:
            elapsed = int(found.group(1))
            continue
        match = _RAIL_LINE.match(line)
        if match:
            channels[match.group(1)] = float(match.group(2)) / 1000.0
    return RailReading(channels, elapsed) if channels else None


# The on-device power monitor's own file (Pixel 6+: /sys/bus/iio/devices/iio:deviceN/energy_value):
# "t=<ms since boot>" then "CH<n>(T=<ms since boot>)[<RAIL>], <cumulative uWs>", one block per PMIC.
IIO_ENERGY_GLOB = "/sys/bus/iio/devices/iio:device*/energy_value"
_IIO_LINE = re.compile(r"^CH\d+\(T=(\d+)\)\[([^\]]+)\],\s*(\d+)\s*$")


@dataclass(frozen=True)
class IioEnergy:
    """One channel's reading from an iio energy_value file: the meter's own time stamp."""

    rail: str
    t_boot_ms: int
    joules: float


def parse_iio_energy(text: str) -> tuple[int | None, list[IioEnergy]]:
    """An energy_value file -> (the block's t= in ms since boot, its channel readings in J)."""
    stamp, readings = None, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("t="):
            stamp = int(line[2:]) if line[2:].isdigit() else None
            continue
        match = _IIO_LINE.match(line)
        if match:
            readings.append(IioEnergy(match.group(2), int(match.group(1)), int(match.group(3)) / 1e6))
    return stamp, readings


RAIL_GROUPS = ("cpu_big", "cpu_mid", "cpu_little", "memory", "gpu")


def rail_group(channel: str) -> str | None:
    """Which summary group a channel counts in: the subsystem after ']:' decides (Pixels name the
    memory interface MIF; other HALs say Memory or DDR); a plain rail name (older HALs, the iio
    meter) by the rail: Pixel's CPUCL0/1/2 are the little/mid/big clusters."""
    rail, _, subsystem = channel.partition("]:")
    subsystem, rail = subsystem.upper(), rail.upper()
    if subsystem.startswith("CPU("):
        return {"CPU(BIG)": "cpu_big", "CPU(MID)": "cpu_mid", "CPU(LITTLE)": "cpu_little"}.get(subsystem)
    if not subsystem:
        for key, group in (("CPUCL2", "cpu_big"), ("CPUCL1", "cpu_mid"), ("CPUCL0", "cpu_little")):
            if key in rail:
                return group
    if subsystem in ("MIF", "MEMORY", "DDR", "MEM") or any(key in rail for key in ("MIF", "DDR", "VDDQ")):
        return "memory"
    if subsystem in ("GPU", "G3D") or (not subsystem and "G3D" in rail):
        return "gpu"
    return None


# -- llama.cpp's load log: where its memory goes ---------------------------------------------------

MIB = 2**20
# One line per buffer llama.cpp allocates at load, in every build since 2024 (libllama's own log:
# llama-server shows it at -lv 4 and above, llama-cpp-python with verbose=True):
#   load_tensors:   CPU_Mapped model buffer size =    92.10 MiB     (older: llm_load_tensors:  CPU buffer size)
#   llama_kv_cache:        CPU KV buffer size =    11.25 MiB      (older: llama_kv_cache_init:)
#   sched_reserve:        CPU compute buffer size =    14.01 MiB  (older: llama_new_context_with_model:)
#   llama_context:        CPU  output buffer size =     0.19 MiB
_BUFFER = re.compile(r"(?P<where>\w+):\s+(?P<buffer>[\w.\-]+)\s+(?P<part>model |KV |compute |output |)buffer size\s*=\s*"
                     r"(?P<mib>[\d.]+) MiB")
_PARTS = {"model ": "weights", "KV ": "kv_cache", "compute ": "compute", "output ": "output"}
_WEIGHT_LOADERS = ("load_tensors", "llm_load_tensors")


# load_tensors: loading model tensors, this can take a while... (load_mode = mmap)   [older: (mmap = true)]
_LOAD_MODE = re.compile(r"loading model tensors.*\((?:load_mode = (?P<mode>[\w+]+)|mmap = (?P<mmap>true|false))\)")


def parse_llama_load_mode(log: str) -> str | None:
    """How llama.cpp says it read the weights ("mmap", "none" for a copy into memory, ...), or None."""
    match = _LOAD_MODE.search(log)
    if not match:
        return None
    return match["mode"] or ("mmap" if match["mmap"] == "true" else "none")


@dataclass(frozen=True)
class LlamaBuffers:
    """The buffers llama.cpp reported at one model load: (part, buffer type, bytes) each, part one
    of weights, kv_cache, compute, output. The log prints MiB with two decimals, so each figure is
    within 0.005 MiB of the allocation."""

    buffers: tuple[tuple[str, str, float], ...]

    def total(self, part: str | None = None) -> float | None:
        picked = [size for name, _, size in self.buffers if part is None or name == part]
        return float(sum(picked)) if picked else None

    def as_record(self) -> dict:
        return {"weights_bytes": self.total("weights"), "kv_cache_bytes": self.total("kv_cache"),
                "compute_bytes": self.total("compute"), "output_bytes": self.total("output"),
                "total_bytes": self.total(),
                "buffers": [{"part": part, "buffer": buffer, "bytes": size} for part, buffer, size in self.buffers]}


def parse_llama_loads(log: str) -> list[LlamaBuffers]:
    """The buffer lines of each model load in a llama.cpp log, in order: a draft model's load
    follows its model's in the same process, and a process started again logs its loads again. A
    load ends where weights follow the context's buffers. Empty when the log has none (llama-bench,
    or a server below -lv 4)."""
    loads: list[list[tuple[str, str, float]]] = []
    found: list[tuple[str, str, float]] = []
    for line in log.splitlines():
        match = _BUFFER.search(line)
        if not match:
            continue
        part = _PARTS.get(match["part"]) or ("weights" if match["where"] in _WEIGHT_LOADERS else None)
        if part is None:
            continue
        if part == "weights" and found and any(name != "weights" for name, _, _ in found):
            loads.append(found)  # weights after the context's buffers: the next load
            found = []
        found.append((part, match["buffer"], float(match["mib"]) * MIB))
    return [LlamaBuffers(tuple(load)) for load in loads + ([found] if found else [])]


def parse_llama_buffers(log: str) -> LlamaBuffers | None:
    """The buffers of the first model load in a llama.cpp log (a later load is a draft model's, or
    a process started again); None when the log has none."""
    loads = parse_llama_loads(log)
    return loads[0] if loads else None


def log_excerpt(text: str, lines: int = 3) -> list[str]:
    """A failed process's log as a failure reason: its last lines, and before them its last line
    that names an error when the tail does not (llama.cpp prints its usage after a bad argument)."""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    tail = kept[-lines:]
    if any("error" in line.lower() for line in tail):
        return tail
    error = next((line for line in reversed(kept[:-lines]) if "error" in line.lower()), None)
    return ([error] if error else []) + tail


# -- where the model ran: the GPU devices llama.cpp found, used, and the layers it offloaded ---------

_VULKAN_DEVICE = re.compile(r"ggml_vulkan: (?P<index>\d+) = (?P<name>.+?) \((?P<driver>[^()]*)\) \|")
_USING_DEVICE = re.compile(r"using device (?P<device>\S+) \((?P<name>.*)\) \((?P<id>[^()]*)\) - (?P<free>\d+) MiB free")
_OFFLOADED = re.compile(r"offloaded (?P<done>\d+)/(?P<total>\d+) layers to GPU")


@dataclass(frozen=True)
class LlamaOffload:
    """What a llama.cpp load log says of the GPU: the devices its GPU backends found (Vulkan's
    "ggml_vulkan: N = NAME (DRIVER)"), the ones the model was loaded onto ("using device Vulkan0
    (NAME)"), and the layers offloaded of those that could be. A CPU-only build logs none of it."""

    devices: tuple[tuple[str, str], ...]   # (name, driver) per device found
    used: tuple[tuple[str, str], ...]      # (backend device, name) per device used
    layers_offloaded: int | None
    layers_total: int | None

    def weights_on_device(self, buffers: "LlamaBuffers | None") -> tuple[float, float] | None:
        """(bytes of the weights in device buffers, bytes of all weights); None without buffer lines."""
        weights = [(buffer, size) for part, buffer, size in (buffers.buffers if buffers else ()) if part == "weights"]
        if not weights:
            return None
        return (sum(size for buffer, size in weights if not buffer.upper().startswith("CPU")),
                sum(size for _, size in weights))

    def problem(self, backend: str, gpu_layers: int | None, buffers: "LlamaBuffers | None") -> str | None:
        """Why a run that asked for a GPU backend did not run on a GPU device (None: it did): no
        device found, none used, no layer (or fewer than asked) offloaded, or every weight left in
        CPU buffers. `gpu_layers`: the layers asked for (None: all)."""
        if not self.used:
            found = (f"it found {', '.join(name for name, _ in self.devices)} and used none" if self.devices else
                     f"it found no {backend} device")
            hint = (" (ggml-vulkan skips a CPU-type device such as lavapipe unless GGML_VK_VISIBLE_DEVICES names it)"
                    if backend == "vulkan" and not self.devices else "")
            return f"llama.cpp loaded the model on the CPU: {found}{hint}"
        if self.layers_offloaded is None or self.layers_total is None:
            return "llama.cpp's log has no 'offloaded N/M layers to GPU' line, so the offload cannot be verified"
        wanted = self.layers_total if gpu_layers is None else min(gpu_layers, self.layers_total)
        if self.layers_offloaded < wanted:
            return (f"llama.cpp offloaded {self.layers_offloaded} of {self.layers_total} layers to "
                    f"{self.used[0][0]}, {wanted} were asked for")
        weights = self.weights_on_device(buffers)
        if weights is not None and weights[0] == 0:
            return f"llama.cpp counted {self.layers_offloaded} layers as offloaded and kept every weight in CPU buffers"
        return None

    def as_record(self, buffers: "LlamaBuffers | None") -> dict:
        """run.json's memory.offload; with the load's buffers, how much of the weights the devices
        hold: a backend can count layers as offloaded and still keep their weights in CPU memory
        (the Hexagon log of llama.cpp#13179: 29/29 layers, 0.16 of 3390 MiB on the device)."""
        weights = self.weights_on_device(buffers)
        return {"devices": [{"name": name, "driver": driver, "software": software_device(name, driver)}
                            for name, driver in self.devices],
                "used": [{"device": device, "name": name, "software": software_device(name)} for device, name in self.used],
                "layers_offloaded": self.layers_offloaded, "layers_total": self.layers_total,
                "weights_on_device_bytes": weights[0] if weights else None,
                "weights_bytes": weights[1] if weights else None,
                "source": "llama.cpp's log at load: its GPU backends' device lines, 'using device', 'offloaded N/M "
                          "layers to GPU', and the weights' buffer types (CPU* buffers are host memory)"}


# Vulkan implementations that run on the CPU: Mesa's lavapipe (its device is named llvmpipe) and
# Google's SwiftShader. What they measure is the CPU, through a GPU API.
_SOFTWARE_DEVICES = ("llvmpipe", "lavapipe", "swiftshader")


def software_device(name: str, driver: str = "") -> bool:
    """A GPU API's device that is software on the CPU (lavapipe, SwiftShader), by its name or driver."""
    text = f"{name} {driver}".lower()
    return any(word in text for word in _SOFTWARE_DEVICES)


_LISTED_DEVICE = re.compile(r"^\s+(?P<device>\S+): (?P<name>.*) \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$")


def parse_device_list(text: str) -> list[tuple[str, str]]:
    """`llama-server --list-devices`: (backend device, description) of each non-CPU device, e.g.
    ("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)"); empty when it lists "(none)"."""
    return [(match["device"], match["name"].strip()) for line in text.splitlines()
            if (match := _LISTED_DEVICE.match(line))]


def parse_llama_offload(log: str) -> LlamaOffload:
    """The first load's devices and offload in a llama.cpp log (a second load is a draft model's
    or a restart's)."""
    devices: list[tuple[str, str]] = []
    used: list[tuple[str, str]] = []
    offloaded = total = None
    for line in log.splitlines():
        if (match := _VULKAN_DEVICE.search(line)) and int(match["index"]) == len(devices):
            devices.append((match["name"].strip(), match["driver"].strip()))
        elif (match := _USING_DEVICE.search(line)) and offloaded is None:
            used.append((match["device"], match["name"].strip()))
        elif (match := _OFFLOADED.search(line)) and offloaded is None:
            offloaded, total = int(match["done"]), int(match["total"])
    return LlamaOffload(tuple(devices), tuple(used), offloaded, total)
