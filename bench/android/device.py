"""A phone (or the emulated phone) over ADB: facts, preflight, the artifact cache under
/data/local/tmp/bench, llama-server start/stop (reached through adb streams to its device port),
and cleanup that always runs.
The same code path serves a Pixel and `bench sim`; nothing here knows which it talks to."""

from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from .. import parse
from ..catalog import cached_sha256
from ..cpu import arm_variant_for, arm_variant_name, cpu_mask, cpuinfo_flags
from ..errors import PreflightError, RunFailed, UsageError
from ..gguf import kv_cache_bytes
from ..profiles import DeviceProfile, load_profiles, match_profile
from ..progress import Progress
from ..records import DeviceFacts, ModelInfo, PreflightCheck, Sample, Scenario
from ..runtimes import llama_bench
from ..runtimes.base import RuntimeFacts
from ..runtimes.build import arm_arch_of, required_cpu_features
from ..runtimes.llama_server import LlamaServerRuntime
from ..runtimes.process import LineReader
from .adb import (AdbFailure, Device, Listed, Server, connect, default_server, ensure_server, list_devices, runs_ours,
                  wait_for_state)
from .lock import DeviceLock

ROOT = "/data/local/tmp/bench"
RUNTIME_OVERHEAD_BYTES = 256 * 1024 * 1024
MIN_BATTERY_PCT = 25
RECONNECT_TIMEOUT_S = 20.0
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
    f"echo {_MARK}df; df -k {ROOT.rsplit('/', 1)[0]}",
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


PORT_ATTEMPTS = 5


class PortTaken(RunFailed):
    """llama-server could not bind its port on the device: another program holds it."""


def device_ports() -> Iterator[int]:
    """Ports for llama-server on the device's loopback, at random below Linux's ephemeral range
    (32768-60999), where the phone's own outgoing connections take theirs."""
    while True:
        yield random.randint(20000, 32000)


@dataclass(frozen=True)
class RuntimeBundle:
    """A llama.cpp build for the device's ABI: its llama-server and what runtime.json says."""

    server: Path
    meta: dict

    @property
    def bench(self) -> Path:
        return self.server.parent / "llama-bench"


class AndroidTarget:
    kind = "android"
    min_battery_pct = MIN_BATTERY_PCT  # the preflight's threshold also ends a run that drains below it

    def __init__(self, serial: str, runtime: RuntimeBundle | None, event: Callable[..., None] | None = None,
                 host_bandwidth: tuple[float | None, str] | None = None, *, run_label: str = "bench run",
                 repack: str = "auto", fixed_performance: bool = False, affinity: tuple[int, ...] | None = None,
                 server: Server | None = None):
        self.host_bandwidth, self.repack, self.fixed_performance = host_bandwidth, repack, fixed_performance
        self.affinity = affinity
        self._fixed_enabled = False
        self.server = server or default_server()
        self.device = Device(serial, server=self.server)
        self.serial = serial
        self.runtime = runtime
        self.event = event or (lambda *args, **kwargs: None)
        self.run_dir = None
        self.snap = snapshot(self.device)
        self.profile = self.snap.profile
        self._server_stream = None
        self._server_pid: int | None = None
        self._runtime_cpus: tuple[int, ...] = ()  # the CPUs the runtime is pinned to; () = not pinned
        self.device_ports = device_ports()
        self.pushed: dict[str, dict] = {}
        self._has_rails: bool | None = None  # decided by the first energy-meter reading
        # The lock comes first: only a run that holds the device may kill a server left on it.
        self.lock = DeviceLock(self.device, run_label)
        self.lock_note = self.lock.acquire()
        try:
            self.stale_killed = self._kill_stale_server()
            self.restored_performance = self._restore_stale_performance()
        except BaseException:
            self.lock.release()
            raise
        stale = self.lock.taken_over
        self.setup_notes = tuple(note for note in (
            self.lock_note,
            self.stale_killed and f"killed llama-server {self.stale_killed} left over from an earlier run",
            self.restored_performance and f"turned off fixed performance mode left on by {stale.describe() if stale else '?'}",
        ) if note)

    def _restore_stale_performance(self) -> bool:
        """A run that died holding the phone in fixed performance mode could not turn it off; its
        owner record says so, and the run that took its lock over does it."""
        stale = self.lock.taken_over
        if stale is None or not stale.fixed_performance:
            return False
        self._fixed_enabled = True  # as the dead run left it: set_fixed_performance turns it off
        try:
            self.set_fixed_performance(False)
        except RunFailed:
            self._fixed_enabled = False  # it was never on (the dead run's command failed after its record)
            return False
        return True

    def _kill_stale_server(self) -> int | None:
        """A run that lost its device can leave llama-server behind; its PID file names it. Kill it
        only if that PID still runs our binary from /data/local/tmp/bench."""
        pidfile = f"{ROOT}/run/llama-server.pid"
        out = self.device.shell(f"cat {pidfile} 2>/dev/null", timeout=10).stdout.strip()
        if not out.isdigit():
            return None
        killed = self.device.shell(f"rm -f {pidfile}; if {runs_ours(int(out), ROOT + '/')}; then kill -9 {out} "
                                   f"2>/dev/null; echo killed; fi", timeout=10).stdout.strip() == "killed"
        return int(out) if killed else None

    # -- facts and checks ----------------------------------------------------------------------
    def facts(self) -> DeviceFacts:
        props, profile, host_bandwidth = self.snap.props, self.profile, self.host_bandwidth
        clusters = [{"cpus": list(c.cpus), "max_khz": c.max_khz} for c in self.snap.clusters] or \
                   [{"cpus": list(c.cpus), "max_khz": c.max_khz, "name": c.name, "core": c.core} for c in profile.clusters]
        bandwidth, source = profile.memory_bandwidth_gbs, profile.memory_bandwidth_source
        if bandwidth is None and host_bandwidth and profile.id == "sim":
            bandwidth, source = host_bandwidth[0], f"the host's, since the sim runs on it: {host_bandwidth[1]}"
        return DeviceFacts(
            kind="android", profile=profile.id, serial=self.serial, manufacturer=props.get("ro.product.manufacturer"),
            model=props.get("ro.product.model"), device=props.get("ro.product.device"),
            soc=props.get("ro.soc.model") or profile.soc or None, abi=props.get("ro.product.cpu.abi"),
            os=f"Android {props.get('ro.build.version.release', '?')} (SDK {props.get('ro.build.version.sdk', '?')})",
            cpu_model=props.get("ro.soc.model") or profile.soc or None,
            cores_logical=sum(len(c["cpus"]) for c in clusters) or None, cores_physical=None,
            ram_bytes=self.snap.meminfo.get("MemTotal"), memory_bandwidth_gbs=bandwidth,
            memory_bandwidth_source=source,
            extra={"build_fingerprint": props.get("ro.build.fingerprint"), "sdk": props.get("ro.build.version.sdk"),
                   "kernel": None, "clusters": clusters, "profile_file": profile.path, "adb_server": self.server.label,
                   "screen_on": self.snap.screen_on, "cpu_features": sorted(self.snap.cpu_features),
                   **dict(zip(("battery_capacity_mah", "battery_capacity_source"),
                              parse.battery_capacity_mah(self.snap.battery_uevent)))},
        )

    def cpus(self, scenario: Scenario) -> tuple[int, ...]:
        """The CPUs the runtime is pinned to: --affinity, else the profile's (big cores) unless the
        scenario sets its own thread count; () = not pinned."""
        if self.affinity is not None:
            return tuple(self.affinity)
        return tuple(self.profile.affinity) if not scenario.threads else ()

    def threads(self, scenario: Scenario) -> int:
        if scenario.threads:
            return scenario.threads
        if self.affinity is not None:
            return len(self.affinity)
        if self.profile.threads:
            return self.profile.threads
        clusters = self.snap.clusters
        if len(clusters) > 1:  # every cluster but the slowest: llama.cpp's default includes little cores
            slowest = min(clusters, key=lambda c: c.max_khz or 0)
            return max(1, sum(len(c.cpus) for c in clusters if c is not slowest))
        return max(1, sum(len(c.cpus) for c in clusters) or 4)

    def preflight(self, model: ModelInfo, scenario: Scenario) -> list[PreflightCheck]:
        snap, checks = self.snap, []
        level = snap.battery.level_pct
        checks.append(PreflightCheck("battery", level is None or level >= MIN_BATTERY_PCT,
                                     f"battery at {level if level is not None else '?'}% (need >= {MIN_BATTERY_PCT}%)"))
        status = snap.thermal.status
        checks.append(PreflightCheck("thermal", status in (None, 0), f"thermal status {status} (0 = NONE)"))
        kv = kv_cache_bytes(model.gguf, scenario.n_ctx) or 0
        needed = model.bytes + kv + RUNTIME_OVERHEAD_BYTES
        available = snap.meminfo.get("MemAvailable")
        checks.append(PreflightCheck(
            "memory", available is None or needed <= available,
            f"model {model.bytes / 2**20:.0f} MiB + KV {kv / 2**20:.0f} MiB at n_ctx {scenario.n_ctx} + "
            f"{RUNTIME_OVERHEAD_BYTES >> 20} MiB = {needed / 2**20:.0f} MiB; MemAvailable "
            f"{'?' if available is None else f'{available / 2**20:.0f} MiB'} of {snap.meminfo.get('MemTotal', 0) / 2**20:.0f} MiB"))
        with_bench = scenario.kind == "llama-bench"
        storage_needed = self._bytes_to_push(model, with_bench)
        free = snap.free_tmp_bytes
        checks.append(PreflightCheck("storage", free is None or storage_needed <= free,
                                     f"{storage_needed / 2**20:.0f} MiB to push, {'?' if free is None else f'{free / 2**20:.0f} MiB'} free in /data/local/tmp"))
        abi = snap.props.get("ro.product.cpu.abi", "")
        runtime_abi = (self.runtime.meta.get("abi") if self.runtime else None) or ""
        abi_ok = self.runtime is not None and runtime_abi == abi
        checks.append(PreflightCheck("runtime", abi_ok,
                                     f"device ABI {abi or '?'}; runtime {runtime_abi or 'none'}"
                                     + ("" if abi_ok else " (build one: `bench runtime build --target android-arm64`, or pass --runtime DIR)")))
        if abi_ok:
            checks.append(self._cpu_fit_check())
        if with_bench and abi_ok:
            checks.append(PreflightCheck("runtime", self.runtime.bench.is_file(),
                                         f"llama-bench beside llama-server in {self.runtime.server.parent}"))
        charging = snap.battery.plugged != "none" or snap.battery_sysfs.get("status") in ("Charging", "Full", "Not charging")
        checks.append(PreflightCheck("charging", not charging,
                                     f"battery {snap.battery.status}, plugged {snap.battery.plugged}: energy figures will be "
                                     "invalid (use Wi-Fi adb with the cable out, or a rooted input suspend)", "warning"))
        checks.append(PreflightCheck("screen", snap.screen_on is not True, "the screen is on (it draws power and heat)", "warning"))
        if self.fixed_performance:
            sdk = snap.props.get("ro.build.version.sdk", "")
            checks.append(PreflightCheck("fixed_performance", sdk.isdigit() and int(sdk) >= 30,
                                         f"--fixed-performance needs Android 11 (SDK 30) or later; the device is SDK {sdk or '?'}"))
        return checks

    def _cpu_fit_check(self) -> PreflightCheck:
        """An ARM runtime built for features the phone's CPU lacks dies with SIGILL mid-run: refuse it."""
        missing = sorted(required_cpu_features(self.runtime.meta) - self.snap.cpu_features)
        arch = arm_arch_of(self.runtime.meta.get("cmake_flags")) or "?"
        if not missing:
            return PreflightCheck("cpu_features", True, f"the runtime ({arch}) needs CPU features the device has")
        fitting = arm_variant_for(self.snap.cpu_features)
        build = (f"build one that fits: `bench runtime build --target linux-arm64 --arm-arch {fitting[1]}`" if fitting
                 else "no runtime variant bench builds fits this CPU (it lacks dotprod): pass --runtime DIR")
        return PreflightCheck("cpu_features", False, f"the runtime ({arch}) needs CPU feature {', '.join(missing)}, which "
                              f"{self.serial}'s CPU lacks (it would die with SIGILL); {build}")

    def memory_hint(self, model: ModelInfo) -> str:
        available = self.snap.meminfo.get("MemAvailable")
        return (f"model {model.bytes / 2**20:.0f} MiB vs MemAvailable "
                f"{'?' if available is None else f'{available / 2**20:.0f} MiB'} at start")

    # -- artifacts -----------------------------------------------------------------------------
    def _artifacts(self, model: ModelInfo, with_bench: bool = False) -> list[tuple[str, Path, str, str]]:
        """(kind, local file, sha256, device path). Device names are derived from hashes, never
        from file names, so nothing a user named reaches a device shell."""
        items = [("model", Path(model.path), model.sha256, f"{ROOT}/models/{model.sha256[:32]}.gguf")]
        if self.runtime is not None:
            binary = self.runtime.bench if with_bench else self.runtime.server
            digest = cached_sha256(binary)
            items.append(("runtime", binary, digest, f"{ROOT}/bin/{digest[:16]}/{binary.name}"))
        return items

    def _remote_digest(self, remote: str) -> tuple[str | None, int | None]:
        result = self.device.shell(f"cat {remote}.sha256 2>/dev/null; stat -c %s {remote} 2>/dev/null", timeout=20)
        lines = result.stdout.split()
        digest = lines[0] if lines and len(lines[0]) == 64 else None
        size = int(lines[-1]) if lines and lines[-1].isdigit() else None
        return digest, size

    def _bytes_to_push(self, model: ModelInfo, with_bench: bool = False) -> int:
        total = 0
        for _, local, digest, remote in self._artifacts(model, with_bench):
            cached, size = self._remote_digest(remote)
            if cached != digest or size != local.stat().st_size:
                total += local.stat().st_size
        return total

    def push_artifacts(self, model: ModelInfo, progress: Progress, with_bench: bool = False) -> dict[str, dict]:
        """Push what the device lacks: temp name, verify sha256 on the device, rename, sidecar."""
        for kind, local, digest, remote in self._artifacts(model, with_bench):
            size = local.stat().st_size
            cached, remote_size = self._remote_digest(remote)
            if cached == digest and remote_size == size:
                self.pushed[kind] = {"bytes_pushed": 0, "cached": True, "path": remote, "sha256": digest}
                continue
            folder = remote.rsplit("/", 1)[0]
            partial = f"{remote}.partial"
            self.device.shell(f"mkdir -p {folder} && rm -f {partial}", check=True)
            task = progress.task(f"push {kind} {local.name}", size, "B")
            started = time.monotonic()
            try:
                self.device.push(local, partial, on_bytes=task.advance, timeout=max(120, size / 5e6))
            except AdbFailure as error:
                task.done()
                try:
                    self.device.shell(f"rm -f {partial}", timeout=20)  # no half file left behind
                except AdbFailure:
                    pass
                raise RunFailed(f"pushing the {kind} ({size / 2**20:.0f} MiB) to {self.serial} failed: {error}",
                                hint="check free space in /data/local/tmp (`bench devices`) and the cable") from None
            task.done()
            seconds = time.monotonic() - started
            check = self.device.shell(f"sha256sum {partial}", timeout=max(60, size / 50e6)).stdout.split()
            if not check or check[0] != digest:
                self.device.shell(f"rm -f {partial}")
                raise RunFailed(f"{kind} arrived corrupt on {self.serial} (sha256 mismatch after push)", hint="retry the run")
            self.device.shell(f"chmod 755 {partial} && mv {partial} {remote} && echo {digest} > {remote}.sha256", check=True)
            self.pushed[kind] = {"bytes_pushed": size, "cached": False, "path": remote, "sha256": digest,
                                 "seconds": round(seconds, 3), "mb_per_s": round(size / 1e6 / seconds, 1) if seconds else None}
            self.event("push", f"pushed {kind} {size / 1e6:.1f} MB at {size / 1e6 / seconds:.1f} MB/s", **self.pushed[kind])
        return self.pushed

    # -- runtime -------------------------------------------------------------------------------
    def start_server(self, model: ModelInfo, scenario: Scenario, progress: Progress,
                     server_remote: str | None = None) -> LlamaServerRuntime:
        if self.runtime is None:
            raise PreflightError(f"no llama.cpp runtime for {self.serial}", "pass --runtime DIR or run `bench runtime build`")
        model_remote = self.pushed["model"]["path"]
        server_remote = server_remote or self.pushed["runtime"]["path"]
        threads = self.threads(scenario)
        affinity = self._runtime_cpus = self.cpus(scenario)
        mask = f" --cpu-mask {cpu_mask(affinity)} --cpu-strict 1" if affinity else ""
        repack, repack_reason = self.repack_choice()
        no_repack = "" if repack else " --no-repack"
        log = f"{ROOT}/run/llama-server.log"
        task = progress.task(f"load {model.alias} in llama-server on {self.serial}")
        for attempt in range(PORT_ATTEMPTS):
            device_port = next(self.device_ports)
            command = (f"mkdir -p {ROOT}/run && cd {ROOT} && echo $$ > run/llama-server.pid && echo PID $$ && exec {server_remote} -m {model_remote}"
                       f" --host 127.0.0.1 --port {device_port} -np 1 -c {scenario.n_ctx} -b {scenario.n_batch}"
                       f" -t {threads} -tb {threads}{mask}{no_repack} --seed {scenario.seed} > {log} 2>&1")
            self.event("phase", "llama-server starting", threads=threads, affinity=list(affinity), device_port=device_port)
            try:
                server = self._await_server(command, model, scenario, device_port, replace(
                    self._runtime_facts("llama-server", scenario, threads, affinity, repack, repack_reason,
                                        parallel=1, device_port=device_port), n_ctx=scenario.n_ctx))
                break
            except PortTaken:
                self.stop_server()
                self.event("warning", f"port {device_port} on {self.serial} is taken; llama-server tries another")
        else:
            raise RunFailed(f"llama-server found no free port on {self.serial} in {PORT_ATTEMPTS} tries",
                            hint="something on the phone holds many ports; reboot it")
        task.done()
        self.event("phase", "llama-server healthy", load_ms=server.load())
        return server

    def _await_server(self, command: str, model: ModelInfo, scenario: Scenario, device_port: int,
                      facts: RuntimeFacts) -> LlamaServerRuntime:
        """Start llama-server with `command` and wait for /health; PortTaken when its port was in use."""
        started = time.monotonic()
        self._server_stream = self.device.open_shell_stream(command)
        first = (self._server_stream.read_stdout() or b"").decode(errors="replace")
        if first.startswith("PID "):
            self._server_pid = int(first.split()[1])
        server = LlamaServerRuntime(lambda timeout: self.device.open_tcp(device_port, timeout),
                                    facts=replace(facts, pid=self._server_pid),
                                    request_timeout_s=scenario.request_timeout_s)
        deadline = started + 60 + model.bytes / 1e8
        while True:
            status = server.health(timeout=5)
            if status == 200:
                break
            if not self.server_alive() or time.monotonic() > deadline:
                failure = self.server_failure(model)
                if "couldn't bind" in failure:
                    raise PortTaken(failure)
                raise RunFailed(f"llama-server did not become healthy on {self.serial}: {failure}",
                                hint="see the log tail above; a smaller model or n_ctx may fit")
            time.sleep(0.2)
        server.loaded((time.monotonic() - started) * 1000)
        return server

    def _runtime_facts(self, kind: str, scenario: Scenario, threads: int, affinity: tuple[int, ...], repack: bool,
                       repack_reason: str, **details) -> RuntimeFacts:
        """What run.json says of the runtime on the device, llama-server's or llama-bench's (its PID
        is added once the process runs)."""
        flags = self.runtime.meta.get("cmake_flags")
        return RuntimeFacts(
            kind=kind, process="server" if kind == "llama-server" else "llama-bench", pid=None, threads=threads,
            affinity=affinity, n_batch=scenario.n_batch, llama_cpp_commit=self.runtime.meta.get("llama_cpp_commit"),
            build_flags=flags, repack=repack, repack_reason=repack_reason,
            details=(("runtime_target", self.runtime.meta.get("target")), ("fixed_performance", self._fixed_enabled),
                     ("arm_arch", arm_arch_of(flags)), ("runtime_variant", arm_variant_name(arm_arch_of(flags))),
                     ("cpu_features_required", sorted(required_cpu_features(self.runtime.meta))),
                     *details.items()))

    def repack_choice(self) -> tuple[bool, str]:
        """Weight repacking (llama-server's default) stays on, except for an x86 runtime that may use
        AMX on a CPU that has it (llama.cpp issue 20824); ARM repacking is what phones need."""
        if self.repack in ("on", "off"):
            return self.repack == "on", f"weight repacking {self.repack} (asked for)"
        flags = (self.runtime.meta.get("cmake_flags") or []) if self.runtime else []
        if not self.snap.props.get("ro.product.cpu.abi", "").startswith("x86") or "-DGGML_AMX_INT8=OFF" in flags:
            return True, "weight repacking on (llama-server's default)"
        if self.snap.cpu_features & {"amx_tile", "amx_int8", "amx_bf16"}:
            return False, ("weight repacking off (--no-repack): the device CPU has AMX and the runtime may use it; its "
                           "repacked matmul crashes at the vendored commit (llama.cpp issue 20824)")
        return True, "weight repacking on (llama-server's default; the device CPU has no AMX)"

    def server_alive(self) -> bool:
        if self._server_pid is None:
            return self._server_stream is not None and self._server_stream.exit_code is None
        try:
            return self.device.shell(f"kill -0 {self._server_pid} 2>/dev/null && echo alive", timeout=10).stdout.strip() == "alive"
        except AdbFailure:
            return False

    def diagnose(self, model: ModelInfo) -> str | None:
        """After a failed request: why llama-server is gone, or None while it still runs."""
        if self._server_stream is None or self.server_alive():
            return None
        return self.server_failure(model)

    def server_failure(self, model: ModelInfo) -> str:
        return self.process_failure(self._server_stream, "llama-server.log", model)

    def process_failure(self, stream, log_name: str, model: ModelInfo) -> str:
        """Why a process of ours died: exit status or signal, its log's last lines, low-memory-killer lines."""
        parts = []
        code = stream.wait_exit(3) if stream is not None else None
        if code is not None:
            signal_number = code - 128 if code > 128 else None
            parts.append(f"exit status {code}" + (f" (signal {signal_number})" if signal_number else ""))
            if signal_number == 9:  # how the low-memory killer ends a process
                parts.append(f"killed: {self.memory_hint(model)}")
        try:
            tail = self.device.shell(f"tail -n 5 {ROOT}/run/{log_name} 2>/dev/null", timeout=10).stdout.strip()
            if tail:
                parts.append("log: " + " | ".join(tail.splitlines()[-3:]))
            lmk = self.device.shell("logcat -d -b main,system,events 2>/dev/null | grep -i -m3 -E 'lowmemorykiller|lmkd'",
                                    timeout=20).stdout.strip()
            if lmk:
                parts.append(f"low-memory killer: {lmk.splitlines()[-1]} ({self.memory_hint(model)})")
        except AdbFailure:
            parts.append("the device stopped answering")
        return "; ".join(parts) or "no exit status or log"

    def stop_server(self) -> None:
        """Always safe to call: stops our llama-server (or llama-bench) by PID and closes its
        shell. The PID is killed only while it still runs one of our binaries: a PID
        the process left behind may belong to another program by now."""
        if self._server_pid is not None:
            pid = self._server_pid
            ours = runs_ours(pid, f"{ROOT}/bin/")
            try:
                self.device.shell(f"if {ours}; then kill {pid}; sleep 0.3; {ours} && kill -9 {pid}; fi 2>/dev/null; true",
                                  timeout=10)
            except AdbFailure:
                pass  # the device is gone; adbd ends the shell's processes when the stream drops
        if self._server_stream is not None:
            self._server_stream.close()
            self._server_stream = None
        if self._server_pid is not None:
            try:
                self.device.shell(f"rm -f {ROOT}/run/llama-server.pid", timeout=10)
            except AdbFailure:
                pass
        self._server_pid = None

    # -- the runner's Target interface ---------------------------------------------------------
    def prepare(self, model: ModelInfo, scenario: Scenario, progress: Progress,
                before_start: Callable[[], None] = lambda: None) -> "LlamaServerRuntime | DeviceBench":
        with_bench = scenario.kind == "llama-bench"
        self.push_artifacts(model, progress, with_bench)
        if self.fixed_performance:
            self.set_fixed_performance(True)
        if with_bench:
            before_start()  # llama-bench runs its tests at once: the cooldown gate holds here
            return self.start_bench(model, scenario)
        return self.start_server(model, scenario, progress)

    def scoring_runtime(self, model: ModelInfo, scenario: Scenario, progress: Progress) -> LlamaServerRuntime:
        """llama-bench cannot score text: llama-server of the same build does, once llama-bench has
        ended. Its push is recorded apart from the measured runtime's."""
        self.stop_server()
        measured = dict(self.pushed)
        self.push_artifacts(model, progress)
        self.pushed = {**measured, "scoring_runtime": self.pushed["runtime"]}
        server_path = self.pushed["scoring_runtime"]["path"]
        return self.start_server(model, scenario, progress, server_remote=server_path)

    def start_bench(self, model: ModelInfo, scenario: Scenario) -> "DeviceBench":
        """llama-bench on the device, its jsonl on the stream's stdout, stderr into run/llama-bench.log."""
        threads = self.threads(scenario)
        affinity = self._runtime_cpus = self.cpus(scenario)
        repack, repack_reason = self.repack_choice()
        argv = llama_bench.command(self.pushed["runtime"]["path"], self.pushed["model"]["path"], pp=scenario.pp,
                                   tg=scenario.tg, repetitions=scenario.repetitions, threads=threads,
                                   n_batch=scenario.n_batch, repack=repack,
                                   cpu_mask=cpu_mask(affinity) if affinity else None)
        # The same PID file as llama-server's: a run that loses the device leaves it for the next one.
        command = (f"mkdir -p {ROOT}/run && cd {ROOT} && echo $$ > run/llama-server.pid && echo PID $$ && exec "
                   f"{' '.join(shlex.quote(a) for a in argv)} 2> {ROOT}/run/llama-bench.log")
        self._server_stream = self.device.open_shell_stream(command)
        bench = DeviceBench(self, self._server_stream, model, facts=self._runtime_facts(
            "llama-bench", scenario, threads, affinity, repack, repack_reason, pp=scenario.pp, tg=scenario.tg,
            repetitions=scenario.repetitions, command=argv))
        self._server_pid = bench.facts().pid
        self.event("phase", "llama-bench started", pid=self._server_pid, threads=threads)
        return bench

    def set_fixed_performance(self, enabled: bool) -> None:
        """`cmd power set-fixed-performance-mode-enabled` (API 30+): clocks held at a level the phone
        can sustain, so runs compare without boost and throttling noise. Always turned off again."""
        word = "true" if enabled else "false"
        if enabled:  # recorded before it is turned on: a run killed in between leaves a record, not a phone stuck fast
            self.lock.record_fixed_performance(True)
        result = self.device.shell(f"cmd power set-fixed-performance-mode-enabled {word}", timeout=15)
        if result.returncode != 0:
            if enabled:
                self.lock.record_fixed_performance(False)
            raise RunFailed(f"fixed performance mode could not be {'enabled' if enabled else 'disabled'} on "
                            f"{self.serial}: {(result.stdout + result.stderr).strip()[:200] or f'exit {result.returncode}'}",
                            hint="it needs Android 11+; run without --fixed-performance")
        self._fixed_enabled = enabled
        if not enabled:
            self.lock.record_fixed_performance(False)
        self.event("phase", f"fixed performance mode {'on' if enabled else 'off'}")

    def restore_performance(self) -> None:
        if self._fixed_enabled:
            self.set_fixed_performance(False)

    def telemetry_cpus(self) -> tuple[int, ...]:
        """The CPUs the telemetry loop may use: those the runtime is not pinned to, so the loop
        never takes a core from the threads it measures; () = no such CPU (or the runtime is not
        pinned), and the loop goes where the scheduler puts it."""
        every = {cpu for cluster in self.snap.clusters for cpu in cluster.cpus}
        return tuple(sorted(every - set(self._runtime_cpus))) if self._runtime_cpus else ()

    def sampler(self, clock, sink, hz: float, pid: int | None):
        from .sampler import AndroidSampler

        return AndroidSampler(self.device, clock, sink, hz, pid or 0, self.profile, cpus=self.telemetry_cpus())

    def rail_samples(self, clock) -> list[Sample]:
        """One dump of the PowerStats HAL energy meter as samples (cumulative J per channel),
        stamped at the middle of the dumpsys call; [] when the device has no meter. Only the first
        reading decides that: a later one that fails is a warning, and the next one is tried."""
        if self._has_rails is False:
            return []
        before = clock.now_s()
        try:
            reading = parse.parse_power_stats(self.device.shell(parse.RAILS_COMMAND, timeout=15).stdout)
            why = "no energy meter in the output"
        except AdbFailure as error:
            reading, why = None, str(error)
        if reading is None:
            if self._has_rails is None:
                self._has_rails = False
            else:
                self.event("warning", f"a power-rail reading failed ({why}); the requests around it are cut from "
                                      "the readings on either side of the gap")
            return []
        self._has_rails = True
        t_s = (before + clock.now_s()) / 2
        return [Sample(t_s, "rail", channel, joules, "J") for channel, joules in reading.channels.items()]

    def abort(self) -> None:
        """A run guard tripped (from the telemetry thread): kill the server so the request in flight ends."""
        if self._server_pid is not None:
            self.device.shell(f"kill -9 {self._server_pid} 2>/dev/null; true", timeout=10)

    def cleanup(self) -> None:
        """Stop the server, release the device lock: every step is tried. When
        adb or the device went away (server restart, cable, reboot), reconnect first, briefly."""
        failures = []
        if not self.reachable() and not self.reconnect():
            failures.append(f"the device did not come back within {RECONNECT_TIMEOUT_S:.0f} s, so llama-server "
                            f"(pid {self._server_pid}) could not be confirmed stopped; adbd ends it with its shell")
        failures += self._teardown()
        if failures:
            raise AdbFailure("cleanup incomplete: " + "; ".join(failures), serial=self.serial,
                             hint="a lock whose run is gone is taken over by the next run")

    def release(self) -> None:
        """After the run, or when it never started: nothing of ours stays on the device. Quiet:
        cleanup already reported what failed."""
        self._teardown()

    def reset(self) -> list[str]:
        """`bench devices --reset`, with the lock held: what a dead run left is undone (its lock and
        server by the constructor); fixed performance mode is turned off even when no record says
        it is on, then the lock is released. Returns what was done."""
        done = list(self.setup_notes)
        sdk = self.snap.props.get("ro.build.version.sdk", "")
        if not self.restored_performance and sdk.isdigit() and int(sdk) >= 30:
            self._fixed_enabled = True
            self.set_fixed_performance(False)
            done.append("fixed performance mode off")
        failures = self._teardown()
        if failures:
            raise AdbFailure("reset incomplete: " + "; ".join(failures), serial=self.serial)
        return done

    def _teardown(self) -> list[str]:
        """Server, performance mode, lock: each step is tried; returns what failed. When fixed
        performance mode could not be turned off, the lock stays as the record that says it is on
        (its holder ended, so it is stale): the next run takes it over and turns the mode off,
        where a released lock would leave later runs reading clocks held with no record of it."""
        failures = []
        for step in (self.stop_server, self.restore_performance):
            try:
                step()
            except (AdbFailure, RunFailed) as error:
                failures.append(f"{step.__name__}: {error}")
        try:
            if self._fixed_enabled:
                self.lock.leave_as_record()
                failures.append("fixed performance mode is still on: the device lock is left as its record, and "
                                "the next run or `bench devices --reset` turns it off")
            else:
                self.lock.release()
        except (AdbFailure, RunFailed) as error:
            failures.append(f"release: {error}")
        return failures

    def reachable(self) -> bool:
        try:
            return self.device.shell("echo ok", timeout=5).stdout.strip() == "ok"
        except AdbFailure:
            return False

    def reconnect(self, timeout_s: float = RECONNECT_TIMEOUT_S) -> bool:
        """Bring adb back to the device: start the server if it died, `adb connect` a network
        serial, wait for it. True when the device answers again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ensure_server(server=self.server)
                if ":" in self.serial:
                    connect(self.serial, timeout=5, server=self.server)
                wait_for_state(self.serial, "device", timeout=min(5.0, max(0.5, deadline - time.monotonic())),
                               server=self.server)
                self.device = Device(self.serial, server=self.server)
                self.lock.device = self.device
                if self.reachable():
                    self.event("warning", f"reconnected to {self.serial} for cleanup")
                    return True
            except AdbFailure:
                time.sleep(0.5)
        return False

    # -- thermal -------------------------------------------------------------------------------
    def cpu_temperature(self) -> tuple[float | None, int | None]:
        """Hottest CPU sensor (C) and the thermal status, for the cooldown gate."""
        report = parse.parse_thermalservice(self.device.shell("dumpsys thermalservice", timeout=20).stdout)
        cpu = [s.celsius for s in report.sensors if s.type == "cpu"]
        return (max(cpu) if cpu else max((s.celsius for s in report.sensors), default=None)), report.status


class DeviceBench:
    """llama-bench running in a device shell: its stdout lines, its PID, and its end diagnosed."""

    kind = "llama-bench"

    def __init__(self, target: AndroidTarget, stream, model: ModelInfo, *, facts: RuntimeFacts):
        self.target, self.stream, self.model = target, stream, model
        self._lines = LineReader(self._read_chunk)
        pid: int | None = None
        try:
            first = self.read_line(60)
        except TimeoutError:  # the target closes its shell in cleanup
            raise RunFailed(f"llama-bench printed no PID within 60 s on {target.serial}: "
                            f"{target.process_failure(stream, 'llama-bench.log', model)}",
                            hint="the device may be overloaded; retry, or check `adb shell` works") from None
        if first and first[1].startswith("PID ") and first[1].split()[1].isdigit():
            pid = int(first[1].split()[1])
        self._facts = replace(facts, pid=pid)

    def read_line(self, timeout_s: float) -> tuple[int, str] | None:
        found = self._lines.read_line(timeout_s)
        return None if found is None else (found[0], found[1].decode(errors="replace"))

    def _read_chunk(self, timeout_s: float) -> bytes | None:
        try:
            self.stream.connection.conn.settimeout(timeout_s)
        except OSError:
            pass
        chunk = self.stream.read_stdout()
        if chunk is None:  # the end of the stream, or no output in time (socket.timeout is TimeoutError)
            if isinstance(self.stream.error, TimeoutError):
                raise TimeoutError(f"no output within {timeout_s:.0f} s")
            return b""
        return chunk or None  # an empty stdout packet is not the end

    def exit_status(self) -> int | None:
        return self.stream.wait_exit(10)

    def failure(self) -> str:
        return self.target.process_failure(self.stream, "llama-bench.log", self.model)

    def facts(self) -> RuntimeFacts:
        return self._facts

    def peak_rss_bytes(self) -> float | None:
        return None  # on the device: the telemetry loop samples its VmHWM

    def interrupt(self) -> None:
        self.target.abort()

    def close(self) -> None:
        pass  # the target stops it by PID and closes its shell in cleanup
