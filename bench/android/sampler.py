"""Telemetry on the device: one long-lived adb shell running a fork-free mksh loop (builtin `read`
from sysfs and /proc, boot-clock stamps from /proc/uptime, `read -t` on a FIFO as the sleep), parsed
on the host into samples on the run's clock. The wall clock, which phones step, is only checked. Only `dumpsys thermalservice` forks, about once a second.

The loop script is generated from paths the device itself listed and pushed as a file: no text
from users or files is interpolated into a device shell."""

from __future__ import annotations

import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import parse
from ..clock import RunClock
from ..cpu import cpu_mask
from ..profiles import DeviceProfile
from ..records import Sample
from .adb import AdbFailure, Device

BATTERY = "/sys/class/power_supply/battery"
BATTERY_FIELDS = ("current_now", "voltage_now", "capacity", "charge_counter", "status", "temp")
STATUS_CODES = {"Charging": 2, "Discharging": 3, "Not charging": 4, "Full": 5}
SCRIPT_PATH = "/data/local/tmp/bench/run/telemetry.sh"


SUPPLY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # device-given names that may enter the loop script
IIO_PATH = re.compile(r"^/sys/bus/iio/devices/iio:device\d{1,3}/energy_value$")
DEVFREQ_NAME = re.compile(r"^[A-Za-z0-9_.,:-]{1,64}$")  # a devfreq device's name (1c00000.qcom,kgsl-3d0)
KGSL = "/sys/class/kgsl/kgsl-3d0"
KGSL_FILES = ("gpu_busy_percentage", "gpubusy", "devfreq/cur_freq", "gpuclk", "max_gpuclk", "thermal_pwrlevel")


@dataclass(frozen=True)
class GpuFiles:
    """The GPU's files the loop reads (paths the device itself listed): Adreno's kgsl-3d0, else a
    GPU under devfreq (Mali, Adreno on a mainline kernel), which tells its clock but not how busy."""
    name: str                  # kgsl-3d0, or the devfreq device (ff9a0000.gpu)
    model: str | None          # kgsl's gpu_model (Adreno740v2)
    busy: str | None           # gpu_busy_percentage ("37 %") or gpubusy ("busy total")
    freq: str | None           # the clock now, Hz
    cap: str | None            # the highest clock allowed now (thermal limits lower it), Hz
    top_hz: int | None         # the highest clock the GPU has
    pwrlevel: str | None = None  # kgsl's thermal_pwrlevel: 0 = no thermal limit, higher = slower levels only

    def describe(self) -> str:
        return f"{self.name}{f' ({self.model})' if self.model else ''}"


@dataclass(frozen=True)
class Layout:
    zones: tuple[tuple[int, str], ...]        # (thermal_zone index, type) of temperature zones
    clusters: tuple[tuple[int, int], ...]     # (first cpu, cpuinfo_max_freq kHz)
    battery_fields: tuple[str, ...]
    absent: dict[str, str] = field(default_factory=dict)
    supplies: tuple[str, ...] = ()            # external supplies (usb, ac, wireless...) with an `online` file
    energy_meters: tuple[str, ...] = ()       # readable iio energy_value files (the power monitor's own)
    gpu: GpuFiles | None = None


def discover(device: Device) -> Layout:
    """Which zones are temperatures (types read once), which clusters and battery files exist."""
    output = device.shell(
        "for z in /sys/class/thermal/thermal_zone*; do [ -r $z/temp ] && echo Z ${z##*thermal_zone} $(cat $z/type) $(cat $z/temp); done; "
        "for c in /sys/devices/system/cpu/cpu*/cpufreq; do [ -r $c/related_cpus ] && echo C $(cat $c/related_cpus) - $(cat $c/cpuinfo_max_freq); done; "
        f"for f in {' '.join(BATTERY_FIELDS)}; do [ -r {BATTERY}/$f ] && echo B $f; done; "
        "for s in /sys/class/power_supply/*; do [ -r $s/online ] && echo P ${s##*/} $(cat $s/type 2>/dev/null); done; "
        f"for e in {parse.IIO_ENERGY_GLOB}; do [ -r $e ] && head -c 1 $e >/dev/null 2>&1 && echo E $e; done; "
        # a file SELinux hides can still pass -r: each is read once here, as the loop will
        f"if [ -d {KGSL} ]; then echo K $(cat {KGSL}/gpu_model 2>/dev/null); "
        f"for f in {' '.join(KGSL_FILES)}; do head -c 1 {KGSL}/$f >/dev/null 2>&1 && echo KF $f; done; "
        f"echo KA $(cat {KGSL}/devfreq/available_frequencies 2>/dev/null || cat {KGSL}/gpu_available_frequencies 2>/dev/null); fi; "
        "for d in /sys/class/devfreq/*; do case ${d##*/} in *gpu*|*mali*|*kgsl*|*g3d*|*G3D*) "
        "head -c 1 $d/cur_freq >/dev/null 2>&1 && echo D ${d##*/} $(cat $d/available_frequencies 2>/dev/null);; esac; done",
        timeout=30).stdout
    zones, clusters, battery, absent, supplies, meters = [], {}, [], {}, [], []
    gpu = _gpu_files(output)
    for line in output.splitlines():
        parts = line.split()
        if parts[:1] == ["Z"] and len(parts) >= 4 and parts[1].isdigit():
            if parse.thermal_zone_celsius(parts[2], parts[3]) is not None:
                zones.append((int(parts[1]), parts[2]))
        elif parts[:1] == ["C"] and "-" in parts:
            cpus = [int(p) for p in parts[1:parts.index("-")] if p.isdigit()]
            tail = parts[parts.index("-") + 1:]
            if cpus:
                clusters.setdefault(cpus[0], int(tail[0]) if tail and tail[0].isdigit() else 0)
        elif parts[:1] == ["B"] and len(parts) == 2:
            battery.append(parts[1])
        elif parts[:1] == ["P"] and len(parts) >= 2 and SUPPLY_NAME.match(parts[1]) and parts[2:3] != ["Battery"]:
            supplies.append(parts[1])
        elif parts[:1] == ["E"] and len(parts) == 2 and IIO_PATH.match(parts[1]):
            meters.append(parts[1])
    if not zones:
        absent["thermal/*"] = "no readable thermal_zone reports a temperature"
    if not clusters:
        absent["cpu/freq"] = "no readable cpufreq policy"
    for name in BATTERY_FIELDS:
        if name not in battery:
            absent[f"battery/{name}"] = f"{BATTERY}/{name} is not readable"
    if not supplies:
        absent["battery/plugged"] = "no /sys/class/power_supply/*/online: external power is told by battery status alone"
    if gpu is None:
        absent["gpu/*"] = (f"no readable {KGSL} (Adreno) nor GPU under /sys/class/devfreq (SELinux hides them on "
                           "many retail builds; a rooted or userdebug phone shows them)")
    elif gpu.busy is None:
        absent["gpu/busy"] = (f"{gpu.describe()} tells its clock but not how busy it is" if gpu.name != "kgsl-3d0"
                              else f"{KGSL}/gpu_busy_percentage and gpubusy are not readable")
    return Layout(tuple(zones), tuple(sorted(clusters.items())), tuple(battery), absent, tuple(supplies), tuple(meters),
                  gpu)


def _gpu_files(output: str) -> GpuFiles | None:
    """The GPU discover() found: kgsl-3d0 when its files read, else the first GPU under devfreq."""
    lines = [line.split() for line in output.splitlines()]
    kgsl = [parts for parts in lines if parts[:1] == ["K"]]
    readable = {parts[1] for parts in lines if parts[:1] == ["KF"] and len(parts) == 2}
    if kgsl and readable:
        top = max(parse.parse_frequencies_hz(" ".join(next((p[1:] for p in lines if p[:1] == ["KA"]), []))), default=None)

        def path(*names: str) -> str | None:
            return next((f"{KGSL}/{name}" for name in names if name in readable), None)

        return GpuFiles("kgsl-3d0", " ".join(kgsl[0][1:]) or None, path("gpu_busy_percentage", "gpubusy"),
                        path("devfreq/cur_freq", "gpuclk"), path("max_gpuclk"), top, path("thermal_pwrlevel"))
    for parts in lines:
        if parts[:1] == ["D"] and len(parts) >= 2 and DEVFREQ_NAME.match(parts[1]):
            folder = f"/sys/class/devfreq/{parts[1]}"
            return GpuFiles(parts[1], None, None, f"{folder}/cur_freq", f"{folder}/max_freq",
                            max(parse.parse_frequencies_hz(" ".join(parts[2:])), default=None))
    return None


UPTIME_STEP_S = 0.01  # /proc/uptime's resolution


def loop_script(layout: Layout) -> str:
    reads = [f'read -r b_{name} < {BATTERY}/{name}' for name in layout.battery_fields]
    fields = [f'b_{name}=$b_{name}' for name in layout.battery_fields]
    for index, _ in layout.zones:
        reads.append(f"read -r z{index} < /sys/class/thermal/thermal_zone{index}/temp")
        fields.append(f"z{index}=$z{index}")
    for index, name in enumerate(layout.supplies):
        reads.append(f"read -r p{index} < /sys/class/power_supply/{name}/online")
        fields.append(f"p{index}=$p{index}")
    for cpu, _ in layout.clusters:
        reads.append(f"read -r f{cpu} < /sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq")
        reads.append(f"read -r m{cpu} < /sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq")
        fields += [f"f{cpu}=$f{cpu}", f"m{cpu}=$m{cpu}"]
    gpu = layout.gpu
    if gpu is not None:
        # kgsl's busy file is one line of two words ("37 %", or gpubusy's "busy total"): both kept;
        # emptied first, so a read that fails mid-run leaves no stale value
        reads.append("gb=; gt=; gf=; gc=; gl=")
        for key, path in (("gb gt", gpu.busy), ("gf", gpu.freq), ("gc", gpu.cap), ("gl", gpu.pwrlevel)):
            if path:
                reads.append(f"read -r {key} < {path}")
                fields += [f"{name}=${name}" for name in key.split()]
    body = "\n  ".join(reads)
    line = " ".join(fields)
    # the power monitor's files, whole: each line keeps the meter's own time stamp
    meters = "".join(f"\n  while read -r l; do echo \"E{index} $l\"; done < {path}" for index, path in enumerate(layout.energy_meters))
    return f"""# bench telemetry loop (generated; see bench/android/sampler.py)
interval=$1; pid=$2; every=$3
fifo=/data/local/tmp/bench/run/telemetry.$$.fifo
rm -f $fifo; mkfifo $fifo; exec 3<>$fifo; rm -f $fifo
n=0
while :; do
  read -r t _ < /proc/uptime
  {body}
  rss=; hwm=; swp=; ut=; st=
  if [ -r /proc/$pid/status ]; then
    while read -r k v u; do case $k in VmRSS:) rss=$v;; VmHWM:) hwm=$v;; VmSwap:) swp=$v;; esac; done < /proc/$pid/status
    read -r _p _c _s _1 _2 _3 _4 _5 _6 _7 _8 _9 _10 ut st _r < /proc/$pid/stat
  fi
  while read -r k v u; do case $k in MemAvailable:) ma=$v; break;; esac; done < /proc/meminfo
  echo "S $t {line} rss=$rss hwm=$hwm swap=$swp ut=$ut st=$st ma=$ma"{meters}
  th="H $t"
  for f in /proc/$pid/task/*/stat; do
    read -r l < $f 2>/dev/null && th="$th
h $l"
  done
  echo "$th"
  n=$((n+1))
  if [ $((n % every)) -eq 1 ] || [ $every -eq 1 ]; then
    ts=$(dumpsys thermalservice 2>/dev/null | grep -m1 'Thermal Status')
    read -r tu _ < /proc/uptime
    echo "T $tu ${{ts##*: }}"
    pss=
    if [ -r /proc/$pid/smaps_rollup ]; then
      while read -r k v u; do case $k in Pss:) pss=$v; break;; esac; done < /proc/$pid/smaps_rollup
    fi
    read -r tu _ < /proc/uptime
    echo "M $tu $pss"
  fi
  read -t $interval -u 3 _ 2>/dev/null
done
"""


class AndroidSampler:
    """Runs the loop on the device and turns its lines into samples, on its own thread."""

    _threads: tuple[float, list] | None = None  # the tick whose thread ("h") lines are being read

    def __init__(self, device: Device, clock: RunClock, sink: Callable[[list[Sample]], None], hz: float, pid: int,
                 profile: DeviceProfile, cpus: tuple[int, ...] = ()):
        self.device, self.clock, self.sink, self.hz, self.pid, self.profile = device, clock, sink, hz, pid, profile
        self.cpus = cpus  # where the loop runs (taskset); () = where the scheduler puts it
        self.layout = discover(device)
        self.absent = dict(self.layout.absent)
        self.gpu = self.layout.gpu.describe() if self.layout.gpu else None  # what run.json's telemetry names
        self.zone_names = {index: kind for index, kind in self.layout.zones}
        self.cluster_max = dict(self.layout.clusters)
        self.raw_current: list[tuple[float, float]] = []      # (t_s, raw current_now)
        self.raw_voltage: list[tuple[float, float]] = []      # (t_s, volts)
        self.statuses: list[tuple[float, str]] = []
        self.ticks = 0
        self.errors = 0
        self.offset_s = 0.0       # device boot clock - run clock: every sample's stamp
        self.wall_offset_s = 0.0  # device wall clock - run clock, for the clock check only
        self.offset_uncertainty_s = 0.0
        self.placement = parse.ThreadPlacement()
        self.clock_check: dict | None = None  # device clock vs the host's at start and end (see _check_clock)
        self._started_s = 0.0
        self._meter_ms: dict[str, int] = {}  # rail -> the meter's last time stamp seen
        self.last_rail_s: float | None = None  # run time of the meter's newest reading
        self._stream = None
        self._thread = threading.Thread(target=self._loop, name="bench-android-sampler", daemon=True)
        self._lines = b""

    def _clock_offsets(self) -> tuple[float, float, float]:
        """(device wall clock - run clock, device boot clock - run clock, uncertainty) from one round
        trip; half the round trip is the uncertainty."""
        before = self.clock.now_s()
        out = self.device.shell("echo $EPOCHREALTIME; read -r up _ < /proc/uptime; echo $up", timeout=10).stdout.split()
        after = self.clock.now_s()
        middle = (before + after) / 2
        # /proc/uptime truncates to 10 ms: the offset and every stamp read it, each centred on its
        # step, so a stamp is within UPTIME_STEP_S of the boot time it stands for
        return float(out[0]) - middle, float(out[1]) + UPTIME_STEP_S / 2 - middle, (after - before) / 2 + UPTIME_STEP_S

    def _check_clock(self) -> None:
        """The same round trip at the end: the wall clock that phones step (network time, a user)
        against the host's. Telemetry is stamped on the boot clock, which does not step, so a jump
        moves no figure; the check says it happened."""
        self.clock_check = {"offset_start_s": self.wall_offset_s, "offset_end_s": None,
                            "uncertainty_s": self.offset_uncertainty_s, "seconds": self.clock.now_s() - self._started_s}
        try:
            wall, _, uncertainty = self._clock_offsets()
        except (AdbFailure, ValueError, IndexError):
            return
        self.clock_check.update(offset_end_s=wall, uncertainty_s=self.offset_uncertainty_s + uncertainty)

    def start(self) -> "AndroidSampler":
        # the loop stamps with /proc/uptime (CLOCK_BOOTTIME, 10 ms steps), as the power monitor
        # stamps its readings: mapped to the run clock once, here
        self.wall_offset_s, self.offset_s, self.offset_uncertainty_s = self._clock_offsets()
        self._started_s = self.clock.now_s()
        with tempfile.TemporaryDirectory() as scratch:
            script = Path(scratch) / "telemetry.sh"
            script.write_text(loop_script(self.layout))
            self.device.shell("mkdir -p /data/local/tmp/bench/run", check=True)
            self.device.push(script, SCRIPT_PATH)
        interval = f"{1 / self.hz:.3f}"
        every = max(1, round(self.hz))  # thermal status about once a second
        # pinned off the runtime's cores: toybox and util-linux taskset both take a hex mask and a command
        pin = f"taskset {cpu_mask(self.cpus)} " if self.cpus else ""
        self._stream = self.device.open_shell_stream(f"exec {pin}sh {SCRIPT_PATH} {interval} {int(self.pid)} {every}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stream is not None:
            self._check_clock()
            self._stream.close()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            chunk = self._stream.read_stdout()
            if chunk is None:
                break
            self._lines += chunk
            *complete, self._lines = self._lines.split(b"\n")
            samples: list[Sample] = []
            for raw in complete:
                try:
                    samples += self.parse_line(raw.decode(errors="replace"))
                except (ValueError, IndexError):
                    self.errors += 1
            if samples:
                self.sink(samples)
        if samples := self._thread_samples():
            self.sink(samples)

    def parse_line(self, line: str) -> list[Sample]:
        if line.startswith("h ") and self._threads is not None:
            # a thread's stat line whole: parsed here, since splitting 52 fields in mksh cost the phone
            # more than all its other reads together
            reading = parse.parse_task_stat(line[2:])
            if reading is not None:
                self._threads[1].append(reading)
            return []
        return self._thread_samples() + self._parse_record(line)

    def _thread_samples(self) -> list[Sample]:
        """The threads' readings of one tick, once its last "h" line has passed."""
        if self._threads is None:
            return []
        (t_s, readings), self._threads = self._threads, None
        return self.placement.samples(t_s, readings)

    def _parse_record(self, line: str) -> list[Sample]:
        parts = line.split()
        if len(parts) < 2:
            return []
        if parts[0][:1] == "E" and parts[0][1:].isdigit():
            return self._energy_line(line.split(None, 1)[1])
        t_s = float(parts[1]) + UPTIME_STEP_S / 2 - self.offset_s
        if parts[0] == "T":
            if len(parts) >= 3 and parts[2].isdigit():
                return [Sample(t_s, "thermal", "status", float(parts[2]), "level")]
            return []
        if parts[0] == "H":  # the runtime's threads: their stat lines follow, one "h" line each
            self._threads = (t_s, [])
            return []
        if parts[0] == "M":  # PSS, about once a second: smaps_rollup costs a page-table walk
            if len(parts) >= 3 and parts[2].isdigit():
                return [Sample(t_s, "process", "pss", float(parts[2]) * 1024, "B")]
            return []
        if parts[0] != "S":
            return []
        self.ticks += 1
        values = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        return [*self._thermal_and_cpu(t_s, values), *self._gpu(t_s, values), *self._battery(t_s, values),
                *self._process(t_s, values)]

    def _gpu(self, t_s: float, values: dict[str, str]) -> list[Sample]:
        gpu, samples = self.layout.gpu, []
        if gpu is None:
            return samples
        busy = parse.parse_gpu_busy(f"{values.get('gb', '')} {values.get('gt', '')}") if gpu.busy else None
        if busy is not None:
            samples.append(Sample(t_s, "gpu", "busy", busy, "%"))
        freq, cap, level = _number(values, "gf"), _number(values, "gc"), _number(values, "gl")
        if freq:
            samples.append(Sample(t_s, "gpu", "freq", freq / 1e6, "MHz"))
        if cap and gpu.top_hz:
            samples.append(Sample(t_s, "gpu", "cap", min(1.0, cap / gpu.top_hz), "ratio"))
        if level is not None:
            samples.append(Sample(t_s, "gpu", "thermal_pwrlevel", level, "level"))
        return samples

    def _thermal_and_cpu(self, t_s: float, values: dict[str, str]) -> list[Sample]:
        samples: list[Sample] = []
        for index, kind in self.zone_names.items():
            raw = values.get(f"z{index}")
            celsius = parse.thermal_zone_celsius(kind, raw) if raw else None
            if celsius is not None:
                samples.append(Sample(t_s, "thermal", kind, celsius, "C"))
        for cpu, max_khz in self.cluster_max.items():
            cur, cap = _number(values, f"f{cpu}"), _number(values, f"m{cpu}")
            if cur is not None:
                samples.append(Sample(t_s, "cpu", f"freq_cpu{cpu}", cur / 1000, "MHz"))
            if cap is not None and max_khz:
                samples.append(Sample(t_s, "cpu", f"cap_cpu{cpu}", cap / max_khz, "ratio"))
        return samples

    def _battery(self, t_s: float, values: dict[str, str]) -> list[Sample]:
        samples: list[Sample] = []
        current = _number(values, "b_current_now")
        if current is not None:
            self.raw_current.append((t_s, current))
            samples.append(Sample(t_s, "battery", "current_now_raw", current, "raw"))
        volts = parse.battery_voltage_v(_number(values, "b_voltage_now"))
        if volts is not None:
            self.raw_voltage.append((t_s, volts))
            samples.append(Sample(t_s, "battery", "voltage", volts, "V"))
        online = [_number(values, f"p{index}") for index in range(len(self.layout.supplies))]
        if any(value is not None for value in online):
            samples.append(Sample(t_s, "battery", "plugged", float(any(value for value in online if value)), "bool"))
        for key, name, unit, scale in (("b_capacity", "level", "%", 1), ("b_charge_counter", "charge_counter", "uAh", 1),
                                       ("b_temp", "temperature", "C", 0.1)):
            value = _number(values, key)
            if value is not None:
                samples.append(Sample(t_s, "battery", name, value * scale, unit))
        status = values.get("b_status")
        if status:
            self.statuses.append((t_s, status))
            samples.append(Sample(t_s, "battery", "status_code", float(STATUS_CODES.get(status, 1)), "code"))
        return samples

    @staticmethod
    def _process(t_s: float, values: dict[str, str]) -> list[Sample]:
        samples: list[Sample] = []
        for key, name in (("rss", "rss"), ("hwm", "peak_rss"), ("swap", "swap")):
            value = _number(values, key)
            if value is not None:
                samples.append(Sample(t_s, "process", name, value * 1024, "B"))
        user, system = _number(values, "ut"), _number(values, "st")
        if user is not None and system is not None:
            samples.append(Sample(t_s, "process", "cpu_time", (user + system) / 100, "s"))  # USER_HZ = 100
        available = _number(values, "ma")
        if available is not None:
            samples.append(Sample(t_s, "system", "mem_available", available * 1024, "B"))
        return samples

    def _energy_line(self, text: str) -> list[Sample]:
        """One line of an iio energy_value file: a channel's cumulative energy at the meter's own time."""
        _, readings = parse.parse_iio_energy(text)
        if not readings:
            return []
        # the loop reads the file every tick; the meter updates at its own pace: keep new readings only
        fresh = [r for r in readings if self._meter_ms.get(r.rail) != r.t_boot_ms]
        self._meter_ms.update((r.rail, r.t_boot_ms) for r in fresh)
        samples = [Sample(r.t_boot_ms / 1000 - self.offset_s, "rail", r.rail, r.joules, "J")
                   for r in fresh]
        if samples:
            self.last_rail_s = max(self.last_rail_s or 0.0, *(sample.t_s for sample in samples))
        return samples

    @property
    def rail_source(self) -> str | None:
        """"iio" when the loop reads the power monitor's files itself (no dumpsys around requests)."""
        return "iio" if self.layout.energy_meters else None

    def finish(self, load_windows: list[tuple[float, float]]) -> tuple[list[Sample], dict]:
        """After the run: normalised current and power samples, and how they were decided."""
        power, how = self.normalised_power(load_windows)
        return power, {"current_normalisation": how, "clock_offset_uncertainty_s": self.offset_uncertainty_s}

    def normalised_power(self, load_windows: list[tuple[float, float]]) -> tuple[list[Sample], dict]:
        """Current in A (discharge positive) and power in W, decided after the run from all raw
        readings: unit by magnitude unless pinned, sign from a discharging status or from idle vs
        load (load draws more), unless pinned. Returns the samples and how it was decided."""
        if not self.raw_current:
            return [], {"decided": "no current readings"}
        values = [v for _, v in self.raw_current]
        pinned_unit = None if self.profile.current_unit == "auto" else self.profile.current_unit
        scale, unit_how = parse.current_unit_scale(values, pinned_unit)
        discharging = bool(self.statuses) and all(s == "Discharging" for _, s in self.statuses)
        pinned_sign = None if self.profile.current_sign == "auto" else self.profile.current_sign
        sign, sign_how = parse.current_discharge_sign(values, discharging=discharging or None, pinned=pinned_sign)
        if pinned_sign is None and not discharging and load_windows:
            in_load = [v for t, v in self.raw_current if any(a <= t <= b for a, b in load_windows)]
            idle = [v for t, v in self.raw_current if not any(a <= t <= b for a, b in load_windows)]
            if in_load and idle:
                delta = sorted(in_load)[len(in_load) // 2] - sorted(idle)[len(idle) // 2]
                if abs(delta) * scale > 0.02:  # load must move the reading by 20 mA to tell the sign
                    sign, sign_how = (1 if delta > 0 else -1), "detected: the reading moved this way under load"
        voltages = dict(self.raw_voltage)
        samples = []
        for t_s, raw in self.raw_current:
            amps = raw * scale * sign
            samples.append(Sample(t_s, "battery", "current", amps, "A"))
            if t_s in voltages:
                samples.append(Sample(t_s, "battery", "power", amps * voltages[t_s], "W"))
        return samples, {"unit": unit_how, "sign": sign_how, "scale_to_A": scale, "discharge_sign": sign}


def _number(values: dict[str, str], key: str) -> float | None:
    try:
        return float(values.get(key, ""))
    except ValueError:
        return None

