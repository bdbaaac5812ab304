"""One benchmark run: preflight, load, warmup, cooldown-gated repetitions with telemetry, and the
store, which is written as the run goes. Whatever happens after the run directory exists, the
runtime is closed, the sampler stopped, and run.json says complete, partial or failed."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from . import __version__
from .catalog import cache_root
from .clock import RunClock
from .errors import BenchError, PreflightError, RunFailed
from .gguf import kv_cache_bytes
from .host import device as host_device
from .host.membw import host_bandwidth_gbs
from .host.sampler import HostSampler, proc_status_bytes
from .progress import NullProgress, Progress
from .records import CooldownRule, DeviceFacts, ModelInfo, RequestRecord, Scenario, to_dict
from .render import write_report
from .runtimes.llama_cpp import LlamaCppRuntime
from .store import RunWriter, make_run_id
from .summary import decode_drift, run_summary, sample_series
from .workload import resolve_prompts, run_repetition

# Runtime overhead beyond weights + KV cache (compute buffers, interpreter): a conservative margin.
RUNTIME_OVERHEAD_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RunOptions:
    device: str
    scenario: Scenario
    model: ModelInfo
    out_root: Path
    telemetry_hz: float | None = 10.0
    allow: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PreflightCheck:
    name: str
    ok: bool
    detail: str
    severity: str = "error"  # error | warning


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str
    summary: dict
    reason: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def memory_needed_bytes(model: ModelInfo, scenario: Scenario) -> tuple[int, int | None]:
    kv = kv_cache_bytes(model.gguf, scenario.n_ctx)
    return model.bytes + (kv or 0) + RUNTIME_OVERHEAD_BYTES, kv


def host_preflight(model: ModelInfo, scenario: Scenario, threads: int) -> list[PreflightCheck]:
    needed, kv = memory_needed_bytes(model, scenario)
    available = host_device.memory_available_bytes()
    kv_text = f"{kv / 2**20:.0f} MiB KV at n_ctx {scenario.n_ctx}" if kv is not None else "KV size unknown"
    checks = [PreflightCheck(
        "memory", needed <= available,
        f"model {model.bytes / 2**20:.0f} MiB + {kv_text} + {RUNTIME_OVERHEAD_BYTES >> 20} MiB overhead "
        f"= {needed / 2**20:.0f} MiB; available {available / 2**20:.0f} MiB")]
    cores = host_device.host_facts().cores_logical or 1
    if threads > cores:
        checks.append(PreflightCheck("threads", False, f"{threads} threads on {cores} logical CPUs oversubscribes them",
                                     "warning"))
    return checks


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _scenario_record(scenario: Scenario) -> dict:
    record = to_dict(scenario)
    record["hash"] = record.pop("content_hash")
    return record


class _Run:
    def __init__(self, options: RunOptions, progress: Progress):
        self.options, self.progress = options, progress
        self.clock = RunClock()
        self.started = dt.datetime.now(dt.timezone.utc)
        self.scenario = options.scenario
        self.requests: list[RequestRecord] = []
        self.warnings: list[str] = []
        self.meta: dict = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def event(self, kind: str, message: str, **data) -> None:
        self.writer.event(self.clock.now_s(), kind, message, **data)

    def warn(self, message: str, **data) -> None:
        self.warnings.append(message)
        self.event("warning", message, **data)

    def on_request(self, record: RequestRecord) -> None:
        self.requests.append(record)
        self.writer.request(record)
        if record.error:
            self.event("error", f"request failed: {record.error}", repetition=record.repetition, step=record.step)

    def write_meta(self, status: str, **extra) -> None:
        self.meta.update(status=status, **extra)
        self.writer.write_run(self.meta)

    # -- phases ----------------------------------------------------------------------------
    def cooldown(self, rule: CooldownRule, baseline_c: float | None, repetition: int) -> None:
        if rule.mode == "none":
            return
        if baseline_c is None:
            if repetition == 0:
                self.event("cooldown", "cooldown skipped: no temperature sensor on this device")
            return
        target = baseline_c + rule.idle_delta_c
        if rule.max_temp_c is not None:
            target = max(target, rule.max_temp_c)
        hottest = max(host_device.temperatures().values(), default=None)
        if hottest is None or hottest <= target:
            return
        task = self.progress.task(f"cooldown to {target:.1f} C (now {hottest:.1f} C)", rule.max_wait_s, "s")
        started = self.clock.now_s()
        while hottest is not None and hottest > target and self.clock.now_s() - started < rule.max_wait_s:
            time.sleep(rule.poll_s)
            hottest = max(host_device.temperatures().values(), default=None)
            task.update(completed=self.clock.now_s() - started,
                        label=f"cooldown to {target:.1f} C (now {hottest:.1f} C)" if hottest else None)
        task.done()
        waited = self.clock.now_s() - started
        reached = hottest is None or hottest <= target
        self.event("cooldown", f"waited {waited:.1f} s before repetition {repetition}", waited_s=waited,
                   target_c=target, reached=reached, temperature_c=hottest)
        if not reached:
            self.warn(f"cooldown timed out after {waited:.0f} s at {hottest:.1f} C (target {target:.1f} C)")

    def execute(self) -> RunResult:
        options, scenario, model = self.options, self.scenario, self.options.model
        runtime = LlamaCppRuntime(model, n_ctx=scenario.n_ctx, n_batch=scenario.n_batch,
                                  threads=scenario.threads, seed=scenario.seed)
        checks = host_preflight(model, scenario, runtime.threads)
        failed = [c for c in checks if not c.ok and c.severity == "error" and c.name not in options.allow]
        if failed:
            raise PreflightError(f"preflight '{failed[0].name}' failed: {failed[0].detail}",
                                 f"use a smaller model or n_ctx, or pass --allow {failed[0].name}")
        facts = host_device.host_facts()
        bandwidth, bandwidth_source = host_bandwidth_gbs(cache_root())
        facts = DeviceFacts(**{**to_dict(facts), "memory_bandwidth_gbs": bandwidth,
                               "memory_bandwidth_source": bandwidth_source})

        run_id = make_run_id(self.started, options.device, model.alias, scenario.name)
        self.writer = RunWriter(options.out_root, run_id)
        self.meta = {
            "run_id": self.writer.run_id, "status": "running",
            "started_at": self.started.isoformat(), "finished_at": None,
            "harness": {"name": "ondevice-bench", "version": __version__, "git_commit": _git_commit()},
            "device": to_dict(facts),
            "model": {"alias": model.alias, "file": Path(model.path).name, "path": model.path,
                      "sha256": model.sha256, "pinned": model.pinned, "bytes": model.bytes,
                      "params": model.gguf.parameters, "quant": model.gguf.quantization,
                      "arch": model.gguf.architecture, "name": model.gguf.name,
                      "context_length": model.gguf.context_length},
            "runtime": runtime.info(),
            "scenario": _scenario_record(scenario),
            "telemetry": {"enabled": options.telemetry_hz is not None, "hz": options.telemetry_hz,
                          "clock": "host perf_counter, seconds since run start", "absent": {}},
            "preflight": [to_dict(c) for c in checks],
            "summary": {},
        }
        for check in checks:
            if not check.ok:
                self.warnings.append(f"preflight {check.name}: {check.detail}")
        self.write_meta("running")
        self.event("phase", "run started", device=options.device, model=model.alias, scenario=scenario.name)

        sampler = None
        status, reason = "failed", None
        try:
            if options.telemetry_hz:
                sampler = HostSampler(self.clock, self.writer.samples, options.telemetry_hz, runtime.process_id()).start()
                self.meta["telemetry"]["absent"] = sampler.absent
            baseline = max(host_device.temperatures().values(), default=None)
            rss_before_load = proc_status_bytes(runtime.process_id(), ("VmRSS",)).get("VmRSS")
            load_task = self.progress.task(f"load {model.alias} ({model.bytes / 2**20:.0f} MiB)")
            self.event("phase", "model load started")
            load_ms = runtime.load()
            load_task.done()
            self.event("phase", "model loaded", load_ms=load_ms)
            self.meta["runtime"] = {**runtime.info(), "load_ms": load_ms, "rss_before_load_bytes": rss_before_load}
            self.write_meta("running")
            prompts = resolve_prompts(runtime, scenario.prompts)
            self._repetitions(runtime, prompts, baseline)
            status = "complete" if not any(r.error for r in self.requests) else "partial"
            reason = None if status == "complete" else "some requests failed"
        except KeyboardInterrupt:
            status, reason = "partial", "interrupted (Ctrl-C)"
            self.event("error", "interrupted by the user")
        except BenchError as error:
            status, reason = ("partial" if self.requests else "failed"), str(error)
            self.event("error", str(error))
        finally:
            if sampler is not None:
                sampler.stop()
                self.meta["telemetry"].update(ticks=sampler.ticks, errors=sampler.errors)
            final_peak = proc_status_bytes(os.getpid(), ("VmHWM",)).get("VmHWM")
            runtime.close()
            self.event("phase", "run finished", status=status)
            self.writer.close()
            summary = self._summary(facts, final_peak)
            self.write_meta(status, finished_at=dt.datetime.now(dt.timezone.utc).isoformat(), reason=reason,
                            summary=summary, warnings=self.warnings)
            write_report(self.writer.dir)
        return RunResult(self.writer.dir, status, summary, reason, tuple(self.warnings))

    def _repetitions(self, runtime, prompts, baseline: float | None) -> None:
        scenario = self.scenario
        for index in range(scenario.warmup):
            task = self.progress.task(f"warmup {index + 1}/{scenario.warmup}")
            run_repetition(runtime, scenario, prompts, repetition=-(index + 1), warmup=True, clock=self.clock,
                           on_request=self.on_request)
            task.done()
        deadline = self.clock.now_s() + scenario.duration_s if scenario.duration_s else None
        total = None if deadline else scenario.repetitions
        task = self.progress.task("repetitions", total)
        repetition = 0
        while True:
            if deadline is None and repetition >= scenario.repetitions:
                break
            if deadline is not None and repetition >= scenario.repetitions and self.clock.now_s() >= deadline:
                break
            self.cooldown(scenario.cooldown, baseline, repetition)
            self.event("phase", f"repetition {repetition} started", repetition=repetition)
            records = run_repetition(runtime, scenario, prompts, repetition=repetition, warmup=False,
                                     clock=self.clock, on_request=self.on_request)
            last = records[-1] if records else None
            rate = f"{last.decode_tps:.1f} t/s" if last and last.decode_tps else ""
            task.advance(1)
            task.update(label=f"repetition {repetition + 1}" + (f"/{total}" if total else "") + f" {rate}")
            if last and last.error:
                raise RunFailed(f"request failed in repetition {repetition}: {last.error}", str(self.writer.dir))
            repetition += 1
        task.done()

    def _summary(self, facts: DeviceFacts, final_peak: float | None) -> dict:
        from .store import load_run  # the stored tables are the truth the summary is taken from

        data = load_run(self.writer.dir)
        battery = sample_series(data.samples, "battery", "plugged")
        charging = bool((battery["value"] > 0).any()) if not battery.empty else None
        summary = run_summary(data.requests, data.samples, final_peak_rss=final_peak,
                              bandwidth_gbs=facts.memory_bandwidth_gbs, model_bytes=self.options.model.bytes,
                              charging=charging, throttled=None)
        if self.scenario.duration_s:
            summary["decode_tps_drift"] = decode_drift(data.requests)
        return summary


def run_benchmark(options: RunOptions, progress: Progress | None = None) -> RunResult:
    return _Run(options, progress or NullProgress()).execute()
