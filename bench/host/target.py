"""The host as a run target: llama-cpp-python in a worker process (or llama.cpp's llama-bench for
llama-bench scenarios), psutil telemetry."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..clock import RunClock
from ..cpu import cpu_mask, usable_cpus
from ..errors import UsageError
from ..gguf import memory_needed
from ..progress import Progress
from ..records import DeviceFacts, ModelInfo, PreflightCheck, Scenario, to_dict
from ..runtimes import llama_bench
from ..runtimes.base import RuntimeFacts
from ..runtimes.build import build_command
from ..runtimes.llama_bench import LocalBench
from ..runtimes.llama_cpp import LlamaCppRuntime
from ..runtimes.llama_server import (GPU_DEVICES, LOG_HEAD_BYTES, LocalLlamaServer, draft_args, draft_details, gpu_args,
                                     gpu_details, gpu_devices_problem, list_host_devices, load_mode_args)
from . import device as host_device
from .sampler import HostSampler

RUNTIME_OVERHEAD_BYTES = 256 * 1024 * 1024
COLD_RESIDENT_SHARE = 0.05  # at most this share of the model file still in the page cache: a cold load


class HostTarget:
    kind = "host"
    min_battery_pct = None  # a laptop's battery is not what is measured
    setup_notes: tuple[str, ...] = ()  # a host is not locked: nothing to take over

    def __init__(self, bandwidth: tuple[float | None, str], *, llama_cpp_commit: tuple[str | None, str] = (None, "unknown"),
                 repack: str = "auto", affinity: tuple[int, ...] | None = None, tools: dict | None = None,
                 backend: str = "cpu", gpu_layers: int | None = None, serve: bool = False):
        self.bandwidth, self.llama_cpp_commit, self.repack = bandwidth, llama_cpp_commit, repack
        # a host llama.cpp build (runtime.json + "bin"): for llama-bench scenarios, and llama-server's
        self.tools = tools
        self.backend, self.gpu_layers = backend, gpu_layers
        self.serve = serve  # every scenario in llama-server (a GPU backend, a backend sweep's CPU point)
        self.gpu_driver: str | None = None  # the GPU device's driver, as preflight's device listing named it
        if affinity is not None:
            usable = os.sched_getaffinity(0)
            missing = [cpu for cpu in affinity if cpu not in usable]
            if missing:
                raise UsageError(f"--affinity names CPUs this host cannot run on: {missing}",
                                 f"use CPUs from {sorted(usable)}")
        self.affinity = affinity
        self.pushed: dict = {}
        self.event = lambda *args, **kwargs: None
        self.run_dir: Path | None = None  # the runner sets it: the worker's log goes there
        self.runtime: LlamaCppRuntime | LocalBench | LocalLlamaServer | None = None

    def facts(self) -> DeviceFacts:
        facts = host_device.host_facts()
        return DeviceFacts(**{**to_dict(facts), "memory_bandwidth_gbs": self.bandwidth[0],
                              "memory_bandwidth_source": self.bandwidth[1]})

    def threads(self, scenario: Scenario) -> int:
        if scenario.threads:
            return scenario.threads
        if self.affinity is not None:
            return len(self.affinity)
        return usable_cpus()

    def preflight(self, model: ModelInfo, scenario: Scenario) -> list[PreflightCheck]:
        needed, parts = memory_needed(model, scenario, RUNTIME_OVERHEAD_BYTES)
        available = host_device.memory_available_bytes()
        checks = [PreflightCheck("memory", needed <= available,
                                 f"{parts} = {needed / 2**20:.0f} MiB; available {available / 2**20:.0f} MiB")]
        cores = host_device.host_facts().cores_logical or 1
        threads = self.threads(scenario)
        if threads > cores:
            checks.append(PreflightCheck("threads", False, f"{threads} threads on {cores} logical CPUs oversubscribes them",
                                         "warning"))
        tool = ("llama-bench" if scenario.kind == "llama-bench" else
                "llama-server" if scenario.serves or self.serve else None)
        if tool:
            binary = self._tool(tool)
            why = (" (parallel sequences run in its slots)" if scenario.parallel else
                   " (a draft model, with and without, runs in it)" if scenario.drafts else
                   f" (the {self.backend} backend runs in it)" if self.backend != "cpu" else
                   " (every point of a backend sweep runs in it)" if tool == "llama-server" else "")
            build = build_command("host", self.backend)
            checks.append(PreflightCheck("runtime", binary is not None,
                                         f"{tool} for the host{why}: {binary or f'none built (run `{build}`, or pass --runtime DIR)'}"))
            if binary is not None and self.backend != "cpu":
                listed, drivers = list_host_devices(binary)
                problem = gpu_devices_problem(self.backend, listed)
                device = GPU_DEVICES[self.backend]
                described = next((name for listed_device, name in listed if listed_device == device), "")
                self.gpu_driver = drivers.get(device)
                checks.append(PreflightCheck("gpu", problem is None, problem or
                                             f"{device}: {described}" + (f", driver {self.gpu_driver}" if self.gpu_driver else "")
                                             + f", as {binary.name} --list-devices lists it"))
        return checks

    def _tool(self, name: str) -> Path | None:
        """One of the host llama.cpp build's tools (llama-bench, llama-server), if it was built."""
        if not self.tools:
            return None
        binary = Path(self.tools["bin"]) / name
        return binary if binary.is_file() else None

    def _tool_facts(self, kind: str, process: str, threads: int, scenario: Scenario, **details) -> RuntimeFacts:
        return RuntimeFacts(kind=kind, process=process, pid=None, threads=threads, affinity=self.affinity,
                            n_batch=scenario.n_batch, llama_cpp_commit=self.tools.get("llama_cpp_commit"),
                            build_flags=self.tools.get("cmake_flags"), repack=self.repack != "off",
                            details=(("llama_cpp_commit_source", "runtime.json of the host build"), *details.items()))

    def prepare(self, model: ModelInfo, scenario: Scenario, progress: Progress,
                before_start: Callable[[], None] = lambda: None) -> LlamaCppRuntime | LocalBench | LocalLlamaServer:
        log_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="bench-host-"))
        before_start()  # right before the runtime starts (the cooldown gate for llama-bench, a cold cache)
        if scenario.kind == "llama-bench":
            threads = self.threads(scenario)
            argv = llama_bench.command(str(self._tool("llama-bench")), model.path, pp=scenario.pp, tg=scenario.tg,
                                       repetitions=scenario.repetitions, threads=threads, n_batch=scenario.n_batch,
                                       repack=self.repack != "off", depth=scenario.depth, mmap=scenario.load_mode == "mmap")
            self.runtime = LocalBench(argv, log_dir / "runtime.log", model_bytes=model.bytes, facts=self._tool_facts(
                "llama-bench", "llama-bench", threads, scenario, pp=scenario.pp, tg=scenario.tg,
                repetitions=scenario.repetitions, load_mode=scenario.load_mode))
            return self.runtime
        if scenario.serves or self.serve:
            threads = self.threads(scenario)
            extra = ["-b", str(scenario.n_batch), "-tb", str(threads), "--seed", str(scenario.seed)]
            if self.affinity is not None:
                extra += ["--cpu-mask", cpu_mask(self.affinity), "--cpu-strict", "1"]
            if self.repack == "off":
                extra.append("--no-repack")
            extra += load_mode_args(scenario.load_mode) + gpu_args(self.backend, self.gpu_layers)
            if model.draft is not None:
                extra += draft_args(model.draft.path, scenario.draft_max)
            slots = scenario.sequences
            task = progress.task(f"load {model.alias} ({model.bytes / 2**20:.0f} MiB) in llama-server, "
                                 f"{slots} slot{'s' if slots > 1 else ''}"
                                 + (f", draft {model.draft.alias}" if model.draft is not None else "")
                                 + (f", {self.backend}" if self.backend != "cpu" else ""))
            self.runtime = LocalLlamaServer(
                self._tool("llama-server"), model.path, threads=threads, n_ctx=scenario.n_ctx,
                parallel=slots, extra_args=extra, log_path=log_dir / "runtime.log",
                request_timeout_s=scenario.request_timeout_s,
                facts=replace(self._tool_facts("llama-server", "server", threads, scenario, parallel=scenario.parallel,
                                               load_mode=scenario.load_mode, **draft_details(model, scenario),
                                               **gpu_details(self.backend, self.gpu_layers, self.gpu_driver)),
                              n_ctx=scenario.n_ctx))
            task.done()
            return self.runtime
        runtime = LlamaCppRuntime(model, n_ctx=scenario.n_ctx, n_batch=scenario.n_batch, threads=self.threads(scenario),
                                  seed=scenario.seed, log_path=log_dir / "runtime.log", repack=self.repack,
                                  llama_cpp_commit=self.llama_cpp_commit, request_timeout_s=scenario.request_timeout_s,
                                  affinity=self.affinity, load_mode=scenario.load_mode)
        self.runtime = runtime
        task = progress.task(f"load {model.alias} ({model.bytes / 2**20:.0f} MiB) in a llama-cpp-python worker")
        runtime.load()
        task.done()
        return runtime

    def drop_page_cache(self, model: ModelInfo) -> dict:
        """Before a cold load: the model file out of the page cache (posix_fadvise, no root needed),
        and how much of it was there before and is after (mincore)."""
        before = host_device.page_cache_resident(model.path)
        host_device.drop_from_page_cache(model.path)
        after = host_device.page_cache_resident(model.path)
        dropped = after is not None and after <= COLD_RESIDENT_SHARE
        return {"dropped": dropped, "resident_before": before, "resident_after": after,
                "how": "posix_fadvise(DONTNEED) on the model file, checked with mincore" if dropped else
                       f"posix_fadvise(DONTNEED) left {after:.0%} of the model file in the page cache (another process "
                       "maps it?)" if after is not None else "mincore could not tell what is in the page cache"}

    def restart(self, model: ModelInfo, scenario: Scenario, progress: Progress):
        """The runtime stopped and loaded again (a warm reload: the file is in the page cache now)."""
        self.runtime.close()
        return self.prepare(model, scenario, progress)

    def scoring_runtime(self, model: ModelInfo, scenario: Scenario, progress: Progress) -> LocalLlamaServer:
        """llama-bench cannot score text: llama-server of the same host build does."""
        binary, threads = Path(self.tools["bin"]) / "llama-server", self.threads(scenario)
        task = progress.task(f"load {model.alias} in llama-server (the llama-bench build) for the correctness probe")
        log_dir = self.run_dir or Path(tempfile.mkdtemp(prefix="bench-host-"))
        server = LocalLlamaServer(binary, model.path, threads=threads, n_ctx=scenario.n_ctx, parallel=1,
                                  log_path=log_dir / "scoring-server.log", facts=RuntimeFacts(
                                      kind="llama-server", process="server", pid=None, threads=threads,
                                      affinity=None, n_batch=scenario.n_batch))
        task.done()
        return server

    def runtime_log_head(self) -> str:
        """The start of the runtime's log (its load: the buffers llama.cpp allocated)."""
        with open(self.runtime.log_path, "rb") as log:
            return log.read(LOG_HEAD_BYTES).decode(errors="replace")

    def sampler(self, clock: RunClock, sink, hz: float, pid: int | None):
        return HostSampler(clock, sink, hz, pid or os.getpid())

    def cpu_temperature(self) -> tuple[float | None, int | None]:
        return max(host_device.temperatures().values(), default=None), None

    def diagnose(self, model: ModelInfo) -> str | None:
        return None  # the worker's failure is diagnosed where it is seen, in the runtime's error

    def rail_samples(self, clock: RunClock) -> list:
        return []  # no power-rail energy meter on a host

    def abort(self) -> None:
        """A run guard tripped: stop the worker so the request in flight ends now."""
        if self.runtime is not None:
            self.runtime.interrupt()

    def cleanup(self) -> None:
        pass  # the runner closes the runtime (the worker); nothing else runs on the host

    def release(self) -> None:
        if self.runtime is not None:
            self.runtime.close()  # only does something when the run never reached its own cleanup

