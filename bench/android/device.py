"""A phone (or the emulated phone) over ADB as the runner's target: its facts, the preflight, the
runtime it runs (llama-server reached through adb streams to its device port, or llama-bench), its
telemetry and energy meter, and cleanup that always runs. The parts live beside it: what a device
is (discovery), the pushed files (artifacts), our process on it (processes), clocks held
(performance) and the lock (lock).
The same code path serves a Pixel and `bench sim`; nothing here knows which it talks to."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .. import parse
from ..cpu import arm_variant_for, arm_variant_name, cpu_mask
from ..errors import PreflightError, RunFailed
from ..gguf import memory_needed
from ..progress import Progress
from ..records import DeviceFacts, ModelInfo, PreflightCheck, Sample, Scenario
from ..runtimes import llama_bench
from ..runtimes.base import RuntimeFacts
from ..runtimes.build import arm_arch_of, build_command, required_cpu_features
from ..runtimes.llama_server import (LOG_HEAD_BYTES, LOG_LEVEL, LlamaServerRuntime, draft_args, draft_details, gpu_args,
                                     gpu_details, load_mode_args,
                                     slot_args)
from .adb import AdbFailure, Device, Server, connect, default_server, ensure_server, wait_for_state
from .artifacts import ArtifactCache, artifacts
from .discovery import DEVICE_TMP, snapshot
from .lock import DeviceLock
from .performance import FixedPerformance
from .processes import PORT_ATTEMPTS, DeviceBench, DeviceProcess, PortTaken, device_ports

ROOT = f"{DEVICE_TMP}/bench"
DROP_CACHES = "sync; echo 1 > /proc/sys/vm/drop_caches"  # the page cache, as root
RUNTIME_OVERHEAD_BYTES = 256 * 1024 * 1024
MIN_BATTERY_PCT = 25
# Where Android's loaders find a GPU API's driver: the Vulkan HAL (hw/vulkan.<ro.hardware.vulkan>.so)
# and the vendor's OpenCL library, which llama.cpp's OpenCL backend opens through the ICD loader.
GPU_DRIVER_FILES = {"vulkan": "/vendor/lib64/hw/vulkan.*.so /system/lib64/hw/vulkan.*.so",
                    "opencl": "/vendor/lib64/libOpenCL.so /system/vendor/lib64/libOpenCL.so"}
RECONNECT_TIMEOUT_S = 20.0

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
                 server: Server | None = None, backend: str = "cpu", gpu_layers: int | None = None):
        self.host_bandwidth, self.repack, self.fixed_performance = host_bandwidth, repack, fixed_performance
        self.backend, self.gpu_layers = backend, gpu_layers
        self.affinity = affinity
        self.server = server or default_server()
        self.device = Device(serial, server=self.server)
        self.serial = serial
        self.runtime = runtime
        self.event = event or (lambda *args, **kwargs: None)
        self.run_dir = None
        self.snap = snapshot(self.device)
        self.profile = self.snap.profile
        self.process = DeviceProcess(self.device, ROOT)
        self.artifact_cache = ArtifactCache(self.device, self._emit)
        self._runtime_cpus: tuple[int, ...] = ()  # the CPUs the runtime is pinned to; () = not pinned
        self.device_ports = device_ports()
        self.pushed: dict[str, dict] = {}
        self._has_rails: bool | None = None  # decided by the first energy-meter reading
        # The lock comes first: only a run that holds the device may kill a server left on it.
        self.lock = DeviceLock(self.device, run_label)
        self.lock_note = self.lock.acquire()
        self.performance = FixedPerformance(self.device, self.lock, self._emit)
        try:
            self.stale_killed = self.process.kill_stale()
            self.restored_performance = self.performance.restore_stale()
        except BaseException:
            self.lock.release()
            raise
        stale = self.lock.taken_over
        self.setup_notes = tuple(note for note in (
            self.lock_note,
            self.stale_killed and f"killed llama-server {self.stale_killed} left over from an earlier run",
            self.restored_performance and f"turned off fixed performance mode left on by {stale.describe() if stale else '?'}",
        ) if note)

    def _emit(self, *args, **kwargs) -> None:
        # the parts report through whatever event sink the runner gives the target later
        self.event(*args, **kwargs)

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
        needed, parts = memory_needed(model, scenario, RUNTIME_OVERHEAD_BYTES)
        available = snap.meminfo.get("MemAvailable")
        checks.append(PreflightCheck(
            "memory", available is None or needed <= available,
            f"{parts} = {needed / 2**20:.0f} MiB; MemAvailable "
            f"{'?' if available is None else f'{available / 2**20:.0f} MiB'} of {snap.meminfo.get('MemTotal', 0) / 2**20:.0f} MiB"))
        with_bench = scenario.kind == "llama-bench"
        storage_needed = self._bytes_to_push(model, with_bench)
        free = snap.free_tmp_bytes
        checks.append(PreflightCheck("storage", free is None or storage_needed <= free,
                                     f"{storage_needed / 2**20:.0f} MiB to push, {'?' if free is None else f'{free / 2**20:.0f} MiB'} free in /data/local/tmp"))
        abi = snap.props.get("ro.product.cpu.abi", "")
        runtime_abi = (self.runtime.meta.get("abi") if self.runtime else None) or ""
        abi_ok = self.runtime is not None and runtime_abi == abi
        build = build_command("android-arm64", self.backend)
        checks.append(PreflightCheck("runtime", abi_ok,
                                     f"device ABI {abi or '?'}; runtime {runtime_abi or 'none'}"
                                     + (f" ({self.backend} build)" if self.backend != "cpu" else "")
                                     + ("" if abi_ok else f" (build one: `{build}`, or pass --runtime DIR)")))
        if abi_ok:
            checks.append(self._cpu_fit_check())
        if self.backend != "cpu":
            checks.append(self._gpu_driver_check())
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

    def _gpu_driver_check(self) -> PreflightCheck:
        """A GPU backend needs the phone's driver for its API: a Vulkan HAL (hw/vulkan.*.so) or the
        vendor's libOpenCL.so, where Android's loaders look for them."""
        pattern = GPU_DRIVER_FILES[self.backend]
        listing = self.device.shell(f"ls {pattern} 2>/dev/null", timeout=10).stdout.split()
        return PreflightCheck("gpu", bool(listing), (f"{self.backend} driver {listing[0]}" if listing else
                              f"{self.serial} has no {self.backend} driver (none of {pattern}): this phone cannot run "
                              f"the {self.backend} backend; run --backend cpu"))

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
    def _artifacts(self, model: ModelInfo, with_bench: bool = False):
        binary = None if self.runtime is None else self.runtime.bench if with_bench else self.runtime.server
        return artifacts(ROOT, model, binary)

    def _bytes_to_push(self, model: ModelInfo, with_bench: bool = False) -> int:
        return self.artifact_cache.bytes_to_push(self._artifacts(model, with_bench))

    def push_artifacts(self, model: ModelInfo, progress: Progress, with_bench: bool = False) -> dict[str, dict]:
        """Push what the device lacks (the model, the runtime's binary); `pushed` records each."""
        self.pushed.update(self.artifact_cache.push(self._artifacts(model, with_bench), progress))
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
        draft = draft_args(self.pushed["draft"]["path"], scenario.draft_max) if model.draft is not None else []
        server_flags = "".join(f" {arg}" for arg in ([] if repack else ["--no-repack"]) + load_mode_args(scenario.load_mode)
                               + gpu_args(self.backend, self.gpu_layers) + draft)
        log = f"{ROOT}/run/llama-server.log"
        task = progress.task(f"load {model.alias} in llama-server on {self.serial}"
                             + (f", draft {model.draft.alias}" if model.draft is not None else "")
                             + (f", {self.backend}" if self.backend != "cpu" else ""))
        for attempt in range(PORT_ATTEMPTS):
            device_port = next(self.device_ports)
            command = (f"{server_remote} -m {model_remote} --host 127.0.0.1 --port {device_port} "
                       f"{' '.join(slot_args(scenario.sequences, scenario.n_ctx))} -b {scenario.n_batch}"
                       f" -t {threads} -tb {threads}{mask}{server_flags} --seed {scenario.seed} {LOG_LEVEL} > {log} 2>&1")
            self.event("phase", "llama-server starting", threads=threads, affinity=list(affinity), device_port=device_port)
            try:
                server = self._await_server(command, model, scenario, device_port, replace(
                    self._runtime_facts("llama-server", scenario, threads, affinity, repack, repack_reason,
                                        parallel=scenario.sequences, device_port=device_port,
                                        load_mode=scenario.load_mode, **draft_details(model, scenario),
                                        **gpu_details(self.backend, self.gpu_layers)),
                    n_ctx=scenario.n_ctx))
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
        first = (self.process.launch(command).read_stdout() or b"").decode(errors="replace")
        if first.startswith("PID "):
            self.process.pid = int(first.split()[1])
        server = LlamaServerRuntime(lambda timeout: self.device.open_tcp(device_port, timeout),
                                    facts=replace(facts, pid=self.process.pid),
                                    request_timeout_s=scenario.request_timeout_s)
        deadline = started + 60 + (model.bytes + (model.draft.bytes if model.draft else 0)) / 1e8
        while True:
            status = server.health(timeout=5)
            if status == 200:
                break
            if not self.process.alive() or time.monotonic() > deadline:
                failure = self.process.failure("llama-server.log", self.memory_hint(model))
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
            details=(("runtime_target", self.runtime.meta.get("target")), ("fixed_performance", self.performance.enabled),
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

    def runtime_log_head(self) -> str:
        """The start of llama-server's log (its load: the buffers llama.cpp allocated)."""
        return self.device.shell(f"head -c {LOG_HEAD_BYTES} {ROOT}/run/llama-server.log 2>/dev/null",
                                 timeout=30).stdout

    def diagnose(self, model: ModelInfo) -> str | None:
        """After a failed request: why llama-server is gone, or None while it still runs."""
        if self.process.stream is None or self.process.alive():
            return None
        return self.process.failure("llama-server.log", self.memory_hint(model))

    def stop_server(self) -> None:
        """Always safe to call: our llama-server or llama-bench stopped, its shell closed."""
        self.process.stop()

    # -- the runner's Target interface ---------------------------------------------------------
    def prepare(self, model: ModelInfo, scenario: Scenario, progress: Progress,
                before_start: Callable[[], None] = lambda: None) -> "LlamaServerRuntime | DeviceBench":
        with_bench = scenario.kind == "llama-bench"
        self.push_artifacts(model, progress, with_bench)
        if self.fixed_performance:
            self.performance.set(True)
        before_start()  # after the push, right before the runtime starts (the cooldown gate, a cold cache)
        if with_bench:
            return self.start_bench(model, scenario)
        return self.start_server(model, scenario, progress)

    def drop_page_cache(self, model: ModelInfo) -> dict:
        """Before a cold load: the page cache dropped, which on Android takes root (adb root on a
        userdebug build, or su); else not, and why. Nothing on the phone tells what was cached."""
        record = {"dropped": False, "resident_before": None, "resident_after": None}
        try:
            rooted = self.device.shell("id -u", timeout=10).stdout.strip() == "0"
            attempts = [("adb root", f"sh -c {shlex.quote(DROP_CACHES)}")] if rooted else \
                [("su", f"su 0 sh -c {shlex.quote(DROP_CACHES)}"), ("su -c", f"su -c {shlex.quote(DROP_CACHES)}")]
            for how, command in attempts:
                if self.device.shell(f"{command} 2>/dev/null && echo dropped", timeout=20).stdout.strip() == "dropped":
                    return {**record, "dropped": True, "how": f"{DROP_CACHES} as root ({how})"}
        except AdbFailure as error:
            return {**record, "how": f"not dropped: {error}"}
        return {**record, "how": "not dropped: the device has no root (adb root or su), which dropping the page cache "
                                 "needs; the first load found the model file as the push left it"}

    def restart(self, model: ModelInfo, scenario: Scenario, progress: Progress) -> LlamaServerRuntime:
        """llama-server stopped and started again (a warm reload: the file is in the page cache now)."""
        self.stop_server()
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
                                   n_batch=scenario.n_batch, repack=repack, depth=scenario.depth,
                                   mmap=scenario.load_mode == "mmap",
                                   cpu_mask=cpu_mask(affinity) if affinity else None)
        self.process.launch(f"{' '.join(shlex.quote(a) for a in argv)} 2> {ROOT}/run/llama-bench.log")
        bench = DeviceBench(self.process, self.memory_hint(model), facts=self._runtime_facts(
            "llama-bench", scenario, threads, affinity, repack, repack_reason, pp=scenario.pp, tg=scenario.tg,
            repetitions=scenario.repetitions, command=argv, load_mode=scenario.load_mode))
        self.process.pid = bench.facts().pid
        self.event("phase", "llama-bench started", pid=self.process.pid, threads=threads)
        return bench

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
        self.process.kill()

    def cleanup(self) -> None:
        """Stop the server, release the device lock: every step is tried. When
        adb or the device went away (server restart, cable, reboot), reconnect first, briefly."""
        failures = []
        if not self.reachable() and not self.reconnect():
            failures.append(f"the device did not come back within {RECONNECT_TIMEOUT_S:.0f} s, so llama-server "
                            f"(pid {self.process.pid}) could not be confirmed stopped; adbd ends it with its shell")
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
            self.performance.force_off()
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
        for name, step in (("stop_server", self.process.stop), ("restore_performance", self.performance.restore)):
            try:
                step()
            except (AdbFailure, RunFailed) as error:
                failures.append(f"{name}: {error}")
        try:
            if self.performance.enabled:
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
                for part in (self.lock, self.process, self.artifact_cache, self.performance):
                    part.device = self.device
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


