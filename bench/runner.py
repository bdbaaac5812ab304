"""One benchmark run on a target (the host, or a phone over ADB): preflight, prepare (push, load),
warmup, cooldown-gated repetitions with telemetry, and the store, written as the run goes.
Whatever happens after the run directory exists, the runtime is closed, the sampler stopped, the
device cleaned (server, forward), and run.json says complete, partial or failed."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from . import __version__, correctness, parse
from .clock import RunClock
from .errors import BenchError, PreflightError, RunFailed
from .gguf import kv_cache_bytes
from .progress import NullProgress, Progress
from .records import CooldownRule, DeviceFacts, ModelInfo, PreflightCheck, RequestRecord, Scenario, to_dict
from .render import write_report
from .store import RunWriter, load_run, make_run_id, run_owner, write_parquet
from .checks import self_checks
from .energy import energy_phases, energy_summary, rail_energy_summary
from .placement import thread_placement
from .summary import decode_drift, load_values, run_summary, validity_from_samples
from .throttle import stress_profile
from .runtimes import llama_bench
from .runtimes.llama_server import DRAFT_FAILED
from .workload import resolve_prompts, run_repetition


class Target(Protocol):
    kind: str
    pushed: dict          # artifact -> bytes pushed, cached or not (empty on the host)
    event: Callable[..., None]
    run_dir: Path | None  # set by the runner: where the target may keep logs
    setup_notes: tuple[str, ...]  # what taking the device undid (a stale lock, server, clock mode): run warnings

    def facts(self) -> DeviceFacts: ...
    def threads(self, scenario: Scenario) -> int: ...
    def preflight(self, model: ModelInfo, scenario: Scenario) -> list[PreflightCheck]: ...
    def prepare(self, model: ModelInfo, scenario: Scenario, progress: Progress,
                before_start: Callable[[], None] = ...): ...  # called after any push, right before the runtime starts
    def drop_page_cache(self, model: ModelInfo) -> dict: ...  # {dropped, how, resident_before, resident_after}
    def restart(self, model: ModelInfo, scenario: Scenario, progress: Progress): ...  # stop, load again
    def sampler(self, clock: RunClock, sink, hz: float, pid: int | None): ...
    def cpu_temperature(self) -> tuple[float | None, int | None]: ...
    def diagnose(self, model: ModelInfo) -> str | None: ...
    def runtime_log_head(self) -> str: ...  # the start of the loaded runtime's log
    def rail_samples(self, clock: RunClock) -> list: ...
    def abort(self) -> None: ...
    def cleanup(self) -> None: ...
    def scoring_runtime(self, model: ModelInfo, scenario: Scenario, progress: Progress): ...
    def release(self) -> None: ...


METER_WAIT_S = 3.0  # the longest wait for a power monitor's reading past the last request


@dataclass(frozen=True)
class RunOptions:
    device: str
    scenario: Scenario
    model: ModelInfo
    out_root: Path
    telemetry_hz: float | None = 10.0
    allow: frozenset[str] = frozenset()
    max_temp_c: float | None = None
    min_battery_pct: float | None = None
    declare_unplugged: bool = False   # the user says the phone ran on its battery whatever it reported
    correctness: bool = True          # score bench's probe against the host CPU reference after measuring
    load_times: bool = False          # a cold first load (page cache dropped where the device lets us) and a warm reload


class RunGuard:
    """Limits watched on every telemetry batch (from the sampler's thread): the first one crossed
    aborts the run, which then ends partial with the reason."""

    def __init__(self, max_temp_c: float | None, min_battery_pct: float | None):
        self.max_temp_c, self.min_battery_pct = max_temp_c, min_battery_pct
        self.tripped: str | None = None

    def check(self, samples) -> str | None:
        if self.tripped:
            return None
        for sample in samples:
            if self.max_temp_c is not None and sample.source == "thermal" and sample.unit == "C" \
                    and sample.value > self.max_temp_c:
                self.tripped = (f"thermal runaway: {sample.name} reached {sample.value:.1f} C, above the "
                                f"--max-temp limit of {self.max_temp_c:.1f} C")
            elif self.min_battery_pct is not None and sample.source == "battery" and sample.name == "level" \
                    and sample.value < self.min_battery_pct:
                self.tripped = (f"battery fell to {sample.value:.0f}%, below the {self.min_battery_pct:.0f}% "
                                "threshold (pass --allow battery to run on)")
            if self.tripped:
                return self.tripped
        return None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str
    summary: dict
    reason: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _model_record(model: ModelInfo) -> dict:
    record = {"alias": model.alias, "file": Path(model.path).name, "path": model.path,
              "sha256": model.sha256, "pinned": model.pinned, "bytes": model.bytes,
              "params": model.gguf.parameters, "quant": model.gguf.quantization,
              "arch": model.gguf.architecture, "name": model.gguf.name,
              "context_length": model.gguf.context_length}
    if model.draft is not None:
        record["draft"] = _model_record(model.draft)
    return record


def _scenario_record(scenario: Scenario) -> dict:
    record = to_dict(scenario)
    record["hash"] = record.pop("content_hash")
    return record


def _kv_cache_record(model: ModelInfo, scenario: Scenario) -> dict:
    """What the KV cache takes at the run's depth and at its n_ctx, from the model's shapes."""
    return {"depth_tokens": scenario.depth, "bytes_at_depth": kv_cache_bytes(model.gguf, scenario.depth),
            "n_ctx": scenario.n_ctx, "bytes_at_n_ctx": kv_cache_bytes(model.gguf, scenario.n_ctx),
            "slots": scenario.sequences, "bytes_all_slots": kv_cache_bytes(model.gguf, scenario.n_ctx * scenario.sequences),
            "source": "f16 K and V of every layer, computed from the model's GGUF shapes, not measured (an upper "
                      "bound where layers use a sliding window)"}


def check_preflight(checks: list[PreflightCheck], allow: frozenset[str]) -> list[str]:
    """Raise on the first failed error-level check not allowed; return warnings for the rest."""
    failed = [c for c in checks if not c.ok and c.severity == "error" and c.name not in allow]
    if failed:
        raise PreflightError(f"preflight '{failed[0].name}' failed: {failed[0].detail}",
                             f"fix it, or pass --allow {failed[0].name} to run anyway")
    return [f"preflight {c.name}: {c.detail}" for c in checks if not c.ok]


class _Run:
    def __init__(self, options: RunOptions, target: Target, progress: Progress):
        self.options, self.target, self.progress = options, target, progress
        self.clock = RunClock()
        self.started = dt.datetime.now(dt.timezone.utc)
        self.scenario = options.scenario
        self.requests: list[RequestRecord] = []
        self.warnings: list[str] = []
        self.meta: dict = {}
        self.cooldown_waits: list[float] = []
        self.guard = RunGuard(options.max_temp_c, options.min_battery_pct)
        self.rails = False  # power rails are read around each request (dumpsys)
        self.rail_source: str | None = None

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

    def on_samples(self, samples) -> None:
        self.writer.samples(samples)
        reason = self.guard.check(samples)
        if reason:
            self.event("error", f"run guard: {reason}")
            try:
                self.target.abort()  # the request in flight ends now, not when it finishes
            except BenchError as error:
                self.event("warning", f"could not stop the runtime after the guard tripped: {error}")

    def _rail_mark(self) -> int:
        """One reading of the device's power-rail energy counters into the samples table."""
        samples = self.target.rail_samples(self.clock)
        if samples:
            self.writer.samples(samples)
        return len(samples)

    def write_meta(self, status: str, **extra) -> None:
        self.meta.update(status=status, **extra)
        self.writer.write_run(self.meta)

    def cooldown(self, rule: CooldownRule, baseline_c: float | None, repetition: int) -> None:
        """Wait until the hottest CPU sensor is back near its idle baseline (or under max_temp_c)
        and the thermal status is NONE, for at most max_wait_s."""
        if rule.mode == "none":
            return
        hottest, status = self.target.cpu_temperature()
        if baseline_c is None or hottest is None:
            if repetition == 0:
                self.event("cooldown", "cooldown skipped: no temperature sensor on this device")
            return
        target = baseline_c + rule.idle_delta_c
        if rule.max_temp_c is not None:
            target = max(target, rule.max_temp_c)

        def cool(temp, level) -> bool:
            return (temp is None or temp <= target) and level in (None, 0)

        if cool(hottest, status):
            return
        task = self.progress.task(f"cooldown to {target:.1f} C (now {hottest:.1f} C)", rule.max_wait_s, "s")
        started = self.clock.now_s()
        while not cool(hottest, status) and self.clock.now_s() - started < rule.max_wait_s:
            time.sleep(rule.poll_s)
            hottest, status = self.target.cpu_temperature()
            task.update(completed=self.clock.now_s() - started,
                        label=f"cooldown to {target:.1f} C (now {hottest:.1f} C, status {status})" if hottest else None)
        task.done()
        waited = self.clock.now_s() - started
        self.cooldown_waits.append(waited)
        reached = cool(hottest, status)
        self.event("cooldown", f"waited {waited:.1f} s before repetition {repetition}", waited_s=waited,
                   target_c=target, reached=reached, temperature_c=hottest, thermal_status=status)
        if not reached:
            self.warn(f"cooldown timed out after {waited:.0f} s at {hottest:.1f} C, thermal status {status} "
                      f"(target {target:.1f} C and status 0)")

    def execute(self) -> RunResult:
        """preflight -> prepare -> measure -> finish. Nothing is written before preflight passes;
        after that, whatever happens, the run ends with run.json saying how it ended."""
        checks, facts = self._preflight()
        self.sampler = self.runtime = None
        status, reason = "failed", None
        try:
            baseline, _ = self.target.cpu_temperature()
            self._prepare(baseline)
            self._measure(baseline)
            status = "complete" if not any(r.error for r in self.requests) else "partial"
            reason = None if status == "complete" else "some requests failed"
        except KeyboardInterrupt as interrupt:
            how = "SIGTERM" if str(interrupt) == "SIGTERM" else "Ctrl-C"
            status, reason = "partial", f"interrupted ({how})"
            self.event("error", f"interrupted by {how}")
        except BenchError as error:
            status = "partial" if self._measured() else "failed"
            reason = self._failure_reason(error)
            self.event("error", reason)
        finally:
            summary = self._finish_run(facts, status, reason)
        return RunResult(self.writer.dir, status, summary, reason, tuple(self.warnings))

    def _preflight(self) -> tuple[list[PreflightCheck], DeviceFacts]:
        """Check the device, then open the run directory and write run.json as "running"."""
        options, scenario, model, target = self.options, self.scenario, self.options.model, self.target
        checks = target.preflight(model, scenario)
        preflight_warnings = check_preflight(checks, options.allow)
        facts = target.facts()
        run_id = make_run_id(self.started, options.device, model.alias, scenario.name)
        self.writer = RunWriter(options.out_root, run_id)
        target.event = self.event  # the target reports pushes and server phases into this run's events
        target.run_dir = self.writer.dir  # logs of the runtime go beside the tables
        self.meta = {
            "run_id": self.writer.run_id, "status": "running", "owner": run_owner(),
            "started_at": self.started.isoformat(), "finished_at": None,
            "harness": {"name": "ondevice-bench", "version": __version__, "git_commit": _git_commit()},
            "device": to_dict(facts),
            "model": _model_record(model),
            "runtime": {"kind": None, "threads": target.threads(scenario), "n_ctx": scenario.n_ctx, "n_batch": scenario.n_batch},
            "scenario": _scenario_record(scenario),
            "kv_cache": _kv_cache_record(model, scenario),
            "telemetry": {"enabled": options.telemetry_hz is not None, "hz": options.telemetry_hz,
                          "clock": "host perf_counter, seconds since run start", "absent": {}},
            "preflight": [to_dict(c) for c in checks],
            "guards": {"max_temp_c": options.max_temp_c, "min_battery_pct": options.min_battery_pct},
            "pushed": {},
            "summary": {},
        }
        self.warnings += preflight_warnings
        self.write_meta("running")
        self.event("phase", "run started", device=options.device, model=model.alias, scenario=scenario.name)
        for note in target.setup_notes:
            self.warn(note)
        return checks, facts

    def _prepare(self, baseline: float | None) -> None:
        """Push and load the model, then start telemetry and find the device's power-rail source."""
        scenario, target = self.scenario, self.target
        self.event("phase", "prepare started (push, load)")
        def before_start() -> None:
            if self.options.load_times:
                self._drop_page_cache()
            if scenario.kind == "llama-bench":  # it runs all its tests once started: the cooldown gate holds here
                self.cooldown(scenario.cooldown, baseline, 0)

        self.runtime = target.prepare(self.options.model, scenario, self.progress, before_start=before_start)
        facts = self.runtime.facts()
        self.meta["runtime"] = facts.as_record()
        self.event("phase", "model loaded", load_ms=facts.load_ms)
        if "load" in self.meta:
            self.meta["load"]["cold"]["load_ms"] = facts.load_ms
        self.meta["memory"] = self._memory_record(facts.kind)
        if self.options.telemetry_hz:
            self.sampler = target.sampler(self.clock, self.on_samples, self.options.telemetry_hz, facts.pid)
            self.sampler.start()
            self.meta["telemetry"]["absent"] = self.sampler.absent
            self.meta["telemetry"]["cpus"] = list(self.sampler.cpus)
            self.meta["telemetry"]["gpu"] = self.sampler.gpu
        if self.sampler is not None and self.sampler.rail_source:
            self.rail_source = self.sampler.rail_source  # the telemetry loop reads the meter itself
        else:
            self.rails = bool(self._rail_mark())  # a first reading says whether the device has rails
            self.rail_source = "dumpsys" if self.rails else None
        self.meta["telemetry"]["rail_source"] = self.rail_source
        if not self.rail_source and target.kind == "android":
            self.meta["telemetry"]["absent"]["rail/*"] = ("no PowerStats HAL energy meter (Pixel 6 and later have one): "
                                                         "energy comes from battery current only")
        self.write_meta("running")

    def _memory_record(self, runtime_kind: str) -> dict:
        """Where the memory goes, as llama.cpp reported it when it loaded the model (weights, KV
        cache, compute and output buffers). Its KV cache larger than the preflight counted (the
        model's shapes at n_ctx, every slot: kv_cache.bytes_all_slots) is a warning: the preflight's
        memory check was too low."""
        scenario = self.scenario
        expected = self.meta["kv_cache"]["bytes_all_slots"]
        record: dict = {"reported": False}
        if runtime_kind == "llama-bench":
            return {**record, "reason": "llama-bench logs no buffer sizes"}
        try:
            log = self.target.runtime_log_head()
        except (BenchError, OSError) as error:
            if self._backend() != "cpu":
                raise RunFailed(f"the runtime's log could not be read, so the {self._backend()} offload cannot be "
                                f"verified: {error}") from None
            return {**record, "reason": f"the runtime's log could not be read: {error}"}
        record["load_mode"] = parse.parse_llama_load_mode(log)  # as llama.cpp says it read the weights
        if record["load_mode"] and (record["load_mode"] == "none") != (scenario.load_mode == "read"):
            self.warn(f"the scenario asked for load_mode {scenario.load_mode!r}, and llama.cpp loaded with "
                      f"{record['load_mode']!r}")
        self._check_draft_loaded(log)
        loads = parse.parse_llama_loads(log)
        buffers = loads[0] if loads else None
        self._check_offload(parse.parse_llama_offload(log), buffers)
        if buffers is None:
            return {**record, "reason": "the runtime's log has no buffer sizes (a llama.cpp that logs them only at "
                                        "another verbosity?)"}
        record.update(reported=True, **buffers.as_record(),
                      source="llama.cpp's own log at load (its 'model/KV/compute/output buffer size' lines, MiB to two "
                             "decimals); weights in a *_Mapped buffer are the model file mapped, shared with the page "
                             "cache, and count in RSS only as far as they were touched")
        if self.options.model.draft is not None and len(loads) > 1:  # the draft loads after its model
            record["draft"] = loads[1].as_record()
        offload = parse.parse_llama_offload(log)
        if offload.devices or offload.used or offload.layers_total is not None:  # a CPU build logs none of it
            record["offload"] = offload.as_record(buffers)
        kv = record["kv_cache_bytes"]
        if kv and expected and kv > expected * 1.01 + parse.MIB:
            self.warn(f"llama.cpp's KV cache ({kv / parse.MIB:,.1f} MiB) is larger than the preflight counted "
                      f"({expected / parse.MIB:,.1f} MiB): its memory check was too low")
        return record

    def _backend(self) -> str:
        """The ggml backend the runtime was asked to run the model on (run.json's runtime.backend)."""
        return self.meta["runtime"].get("backend") or "cpu"

    def _check_offload(self, offload: parse.LlamaOffload, buffers) -> None:
        """A run asked for a GPU backend that llama.cpp ran on the CPU (no device, none used, no
        layer offloaded, the weights left in CPU memory) fails here, at load, with the reason: its
        figures would be the CPU's under a GPU's name. A device that is software on the CPU
        (lavapipe) runs, with a warning that its figures are not a GPU's."""
        backend = self._backend()
        if backend == "cpu":
            return
        layers = self.meta["runtime"].get("gpu_layers")
        problem = offload.problem(backend, layers if isinstance(layers, int) else None, buffers)
        if problem:
            raise RunFailed(f"the {backend} backend did not run the model: {problem}")
        software = [name for _, name in offload.used if parse.software_device(name)]
        if software:
            self.warn(f"the {backend} device is {software[0]}, a software implementation on the CPU: this run checks "
                      "the backend's plumbing and output, and its speed is not a GPU's")

    def _check_draft_loaded(self, log: str) -> None:
        """llama-server that could not set up the draft (its vocabulary differs past what the
        headers showed) logs it and serves on without speculating: a run that would store the model
        alone's figures as the draft's. It fails here, with llama-server's own line."""
        draft = self.options.model.draft
        failed = next((line.strip() for line in log.splitlines() if DRAFT_FAILED in line), None)
        if draft is not None and failed:
            raise RunFailed(f"llama-server did not speculate with draft model '{draft.alias}': {failed}",
                            hint="give a draft model of the model's own family (the same tokenizer)")

    def _check_drafted(self) -> None:
        """A run with a draft model whose requests report no drafted token measured the model alone."""
        draft = self.options.model.draft
        measured = [r for r in self.requests if not r.warmup and not r.error]
        if draft is not None and measured and not any(r.draft_tokens for r in measured):
            raise RunFailed(f"llama-server loaded draft model '{draft.alias}' and drafted no token in "
                            f"{len(measured)} measured requests: these figures are the model's alone",
                            hint="check llama-server's log in the run folder (runtime.log or llama-server.log)")

    def _drop_page_cache(self) -> None:
        """Before the first load of a --load-times run: the model file out of the page cache."""
        task = self.progress.task("dropping the model from the page cache (a cold load)")
        cold = self.target.drop_page_cache(self.options.model)
        task.done()
        self.meta["load"] = {"cold": cold}
        self.event("phase", "page cache " + ("dropped" if cold["dropped"] else "not dropped"), **cold)
        if not cold["dropped"]:
            self.warn(f"the first load is not a cold one: {cold['how']}")

    def _warm_reload(self) -> None:
        """After everything measured, outside every window: the runtime stopped and loaded again
        with the model file in the page cache, then one request of the scenario's first prompt, whose
        first token ends what an app's user waits for."""
        task = self.progress.task("warm reload (load time with the model in the page cache)")
        self.runtime = self.target.restart(self.options.model, self.scenario, self.progress)
        load_ms = self.runtime.facts().load_ms
        prompt = resolve_prompts(self.runtime, self.scenario.prompts[:1])[0]
        completion = self.runtime.complete(prompt, n_predict=1, ignore_eos=True, keep_cache=False,
                                           temperature=self.scenario.temperature, seed=self.scenario.seed)
        task.done()
        ttft_ms = (completion.token_ns[0] - completion.sent_ns) / 1e6 if completion.token_ns else None
        self.meta.setdefault("load", {})["warm"] = {"load_ms": load_ms, "first_request_ttft_ms": ttft_ms}
        self.event("phase", "warm reload", load_ms=load_ms, ttft_ms=ttft_ms)

    def _measure(self, baseline: float | None) -> None:
        if self.scenario.kind == "llama-bench":
            self._llama_bench(self.runtime)
        else:
            self._idle_power()
            self._repetitions(self.runtime, resolve_prompts(self.runtime, self.scenario.prompts, self.scenario.depth),
                              baseline)
            self._check_drafted()
        self._correctness()
        if self.options.load_times:
            try:
                self._warm_reload()
            except BenchError as error:  # what was measured stands; the reload's figures are missing
                self.meta.setdefault("load", {})["warm"] = {"error": str(error)}
                self.warn(f"the warm reload failed: {error}")

    def _correctness(self) -> None:
        """After the measured requests, outside every window: the probe scored by the runtime that
        ran them (for llama-bench, llama-server of the same build) against the host CPU reference."""
        if not self.options.correctness:
            self.meta["correctness"] = correctness.skipped("--no-correctness")
            return
        from .catalog import cache_root
        from .runtimes.reference import reference_scores

        model = self.options.model
        # a host run's worker is the reference's own engine: it computes the reference when none is
        # cached, and that scoring is the run's (no second copy of the model in memory)
        own = self.runtime if getattr(self.runtime, "kind", None) == "llama-cpp-python" else None
        started = time.monotonic()
        try:
            reference, cached = reference_scores(model, cache_root(), self.progress, loaded=own)
            reference_s = 0.0 if cached else time.monotonic() - started
            if own is not None and not cached:
                scores, probe_s = reference, reference_s
            else:
                started = time.monotonic()
                task = self.progress.task(f"correctness probe ({len(reference.positions)} positions)")
                scorer = (self.runtime if hasattr(self.runtime, "score")
                          else self.target.scoring_runtime(model, self.scenario, self.progress))
                try:
                    scores = scorer.score(reference.tokens)
                finally:
                    if scorer is not self.runtime:
                        scorer.close()
                task.done()
                probe_s = time.monotonic() - started
        except BenchError as error:
            self.meta["correctness"] = correctness.unchecked(str(error), time.monotonic() - started)
            self.warn(f"correctness could not be checked: {error}")
            return
        verdict = correctness.evaluate(replace(scores, vocab=reference.vocab), reference)
        self.meta["correctness"] = correctness.record(verdict, reference, runtime=scores.source, seconds=probe_s,
                                                      reference_cached=cached, reference_seconds=reference_s)
        self.event("phase", f"correctness {self.meta['correctness']['verdict']}", **self.meta["correctness"]["value"])
        if not verdict.passed:
            self.warn(f"correctness failed: {verdict.reason}")

    def _idle_power(self) -> None:
        """With the model loaded and nothing asked of it, hold still for idle_s so the energy
        figures can say what the requests cost above the phone's idle draw."""
        idle_s = self.scenario.idle_s
        why = ("idle_s is 0" if not idle_s else "telemetry is off" if self.sampler is None else
               "a host has no power meter" if self.target.kind != "android" else None)
        if why:
            self.meta["idle"] = {"skipped": why}
            return
        screen_on = (self.meta["device"].get("extra") or {}).get("screen_on")
        screen = {True: "on", False: "off"}.get(screen_on, "state unknown")
        task = self.progress.task(f"idle power baseline ({idle_s:.0f} s, screen {screen})", idle_s, "s")
        if self.rails:
            self._rail_mark()
        start = self.clock.now_s()
        while (elapsed := self.clock.now_s() - start) < idle_s:
            self._check([], 0)
            time.sleep(min(0.2, idle_s - elapsed))
            task.update(completed=min(idle_s, self.clock.now_s() - start))
        end = self.clock.now_s()
        if self.rails:
            self._rail_mark()
        task.done()
        self.meta["idle"] = {"start_s": start, "end_s": end, "screen_on": screen_on}
        self.event("phase", f"idle power baseline from {start:.1f} s to {end:.1f} s", start_s=start, end_s=end,
                   screen_on=screen_on)

    def _failure_reason(self, error: BenchError) -> str:
        if self.guard.tripped:
            return f"aborted: {self.guard.tripped}"
        try:
            diagnosis = self.target.diagnose(self.options.model)
        except BenchError:
            diagnosis = None  # the device itself is gone: the error says so
        return f"{error}; llama-server: {diagnosis}" if diagnosis else str(error)

    def _finish_run(self, facts: DeviceFacts, status: str, reason: str | None) -> dict:
        """Stop everything, then summarise the stored tables and write run.json, Parquet and the
        report. Each of the last three failing is a warning, never a run left at "running"."""
        self.meta["pushed"] = dict(self.target.pushed)  # also what was pushed before a failure
        self._finish(self.sampler, self.runtime)
        data = None  # the stored tables, final from here on: read once for the summary and Parquet
        try:
            data = load_run(self.writer.dir)
            summary = self._summary(facts, data)
        except Exception as error:  # a run.json left at "running" is worse than one without a summary
            summary = {}
            self.warn(f"the summary could not be computed: {type(error).__name__}: {error}")
        self.event("phase", "run finished", status=status)
        # what the target does after the run (its release, a retried restore) has no run to report into
        self.target.event = lambda *args, **kwargs: None
        self.writer.close()
        try:
            write_parquet(self.writer.dir, (data.requests, data.samples) if data is not None else None)
        except Exception as error:  # the CSV tables are the record; Parquet is a faster copy
            # events.jsonl is closed by now: the warning goes to run.json only
            self.warnings.append(f"the Parquet copy of the tables could not be written: {type(error).__name__}: {error}")
        self.write_meta(status, finished_at=dt.datetime.now(dt.timezone.utc).isoformat(), reason=reason,
                        summary=summary, warnings=self.warnings)
        try:
            write_report(self.writer.dir)
        except Exception as error:
            self.warnings.append(f"the report could not be written: {type(error).__name__}: {error}")
            self.write_meta(status)
        return summary

    def _measured(self) -> bool:
        return any(not r.warmup and not r.error for r in self.requests)

    def _finish(self, sampler, runtime) -> None:
        """Stop everything we started, whatever state the run is in. Every step runs even when an
        earlier one fails; failures are recorded in run.json (cleanup_errors) and as warnings."""
        self._final_peak = None
        failures: list[str] = []

        def step(name: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as error:  # noqa: BLE001 - one broken step must not skip the others
                failures.append(f"{name}: {type(error).__name__}: {error}")

        def stop_sampler() -> None:
            # One more tick, so the samples cover the end of the last request's window; a power
            # monitor read by the loop stamps readings at its own pace: wait (briefly) for one past it.
            time.sleep(min(1.0, 1.5 / (self.options.telemetry_hz or 10)))
            last_end = max((r.window_s[1] for r in self.requests), default=None)
            deadline = time.monotonic() + METER_WAIT_S
            while (sampler.rail_source and last_end is not None and (sampler.last_rail_s or 0.0) < last_end
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            try:
                sampler.stop()
            finally:
                self.meta["telemetry"].update(ticks=sampler.ticks, errors=sampler.errors, clock_check=sampler.clock_check)

        def final_peak() -> None:
            self._final_peak = runtime.peak_rss_bytes()

        def derived_samples() -> None:
            windows = [r.window_s for r in self.requests]
            derived, how = sampler.finish(windows)
            if derived:
                self.writer.samples(derived)
            self.meta["telemetry"].update(how)

        if sampler is not None:
            step("stop telemetry", stop_sampler)
        if runtime is not None:
            step("read peak RSS", final_peak)
            step("close the runtime", runtime.close)
        step("clean up the device", self.target.cleanup)
        if sampler is not None:
            step("normalise battery current", derived_samples)
        self.meta["cleanup_errors"] = failures
        for failure in failures:
            self.warn(f"cleanup step failed: {failure}")

    def _repetitions(self, runtime, prompts, baseline: float | None) -> None:
        scenario = self.scenario
        for index in range(scenario.warmup):
            task = self.progress.task(f"warmup {index + 1}/{scenario.warmup}")
            self._check(run_repetition(runtime, scenario, prompts, repetition=-(index + 1), warmup=True,
                                       clock=self.clock, on_request=self.on_request), -(index + 1))
            task.done()
        deadline = self.clock.now_s() + scenario.duration_s if scenario.duration_s else None
        total = None if deadline else scenario.repetitions
        task = self.progress.task("repetitions" + (f" for {scenario.duration_s:.0f} s" if deadline else ""), total)
        repetition = 0
        while repetition < scenario.repetitions or (deadline is not None and self.clock.now_s() < deadline):
            self._check([], repetition)
            self.cooldown(scenario.cooldown, baseline, repetition)
            self.event("phase", f"repetition {repetition} started", repetition=repetition)
            records = run_repetition(runtime, scenario, prompts, repetition=repetition, warmup=False,
                                     clock=self.clock, on_request=self.on_request,
                                     around_request=self._rail_mark if self.rails else None)
            self._check(records, repetition)
            last = records[-1]
            rate = f" {last.decode_tps:.1f} t/s" if last.decode_tps else ""
            task.advance(1)
            task.update(label=f"repetition {repetition + 1}" + (f"/{total}" if total else "") + rate)
            repetition += 1
        task.done()

    def _llama_bench(self, runtime: llama_bench.BenchProcess) -> None:
        """llama-bench runs its own repetitions (and a warmup per test); each test's line becomes
        rows as it arrives. A run with no line within request_timeout_s is a hang."""
        scenario = self.scenario
        tests = [shape for shape in (scenario.pp, scenario.tg) if shape]
        task = self.progress.task(f"llama-bench: {' and '.join(f'{k}{v}' for k, v in zip(('pp', 'tg'), (scenario.pp, scenario.tg)) if v)}"
                                  f" x {scenario.repetitions}", len(tests))
        step = 0
        while True:
            self._check([], step)
            try:
                found = runtime.read_line(scenario.request_timeout_s)
            except TimeoutError:
                runtime.interrupt()
                raise RunFailed(f"llama-bench printed nothing for {scenario.request_timeout_s:.0f} s and was stopped "
                                "(hang)", str(self.writer.dir)) from None
            if found is None:
                break
            arrived_ns, line = found
            test = llama_bench.parse_line(line, step)
            if test is None:
                continue
            for record in llama_bench.to_records(test, arrived_ns, self.clock):
                self.on_request(record)
            self.event("phase", f"llama-bench test {step} done", n_prompt=test.n_prompt, n_gen=test.n_gen,
                       avg_ts=test.raw.get("avg_ts"))
            step += 1
            task.advance(1)
        task.done()
        status = runtime.exit_status()
        if status != 0 or step < len(tests):
            raise RunFailed(f"llama-bench ended after {step} of {len(tests)} tests: {runtime.failure()}",
                            str(self.writer.dir))

    def _check(self, records: list[RequestRecord], repetition: int) -> None:
        if self.guard.tripped:
            raise RunFailed(self.guard.tripped, str(self.writer.dir))
        if records and records[-1].error:
            raise RunFailed(f"request failed in repetition {repetition}: {records[-1].error}", str(self.writer.dir))

    def _summary(self, facts: DeviceFacts, data) -> dict:
        """From the stored tables, the truth the summary is taken from."""
        fixed = bool((self.meta.get("runtime") or {}).get("fixed_performance"))
        validity = validity_from_samples(data.samples, declared_unplugged=self.options.declare_unplugged,
                                         fixed_performance=fixed)
        summary = run_summary(data.requests, data.samples, final_peak_rss=self._final_peak,
                              bandwidth_gbs=facts.memory_bandwidth_gbs, model_bytes=self.options.model.bytes,
                              charging=validity["charging"], throttled=validity["throttled"], fixed_performance=fixed,
                              last_level_cache_bytes=facts.extra.get("last_level_cache_bytes"))
        summary["validity"].update(external_power_detected=validity["external_power_detected"],
                                   declared_unplugged=validity["declared_unplugged"])
        summary["energy"] = energy_summary(data.requests, data.samples, charging=validity["charging"],
                                           declared_unplugged=self.options.declare_unplugged)
        summary["rail_energy"] = rail_energy_summary(data.requests, data.samples, self.rail_source or "dumpsys")
        checks = self_checks(data.requests, data.samples, decode_median=summary.get("decode_tps_median"),
                             ceiling_tps=summary.get("roofline_ceiling_tps"), telemetry_hz=self.options.telemetry_hz,
                             clock=self.meta["telemetry"].get("clock_check"), roofline_note=summary.get("roofline_note"),
                             correctness=self.meta.get("correctness"), depth=self.scenario.depth)
        failed = [c for c in checks if c["ok"] is False and c["invalidates"]]
        summary["validity"].update(checks=checks, valid=not failed,
                                   invalid_reason="; ".join(c["detail"] for c in failed) or None)
        runtime = self.meta.get("runtime") or {}
        summary["threads"] = thread_placement(data.requests, data.samples, clusters=facts.extra.get("clusters") or [],
                                              affinity=runtime.get("affinity"), threads=runtime.get("threads"))
        for warning in summary["threads"].get("warnings", []):
            self.warn(f"where the threads ran: {warning}")
        summary["energy_phases"] = energy_phases(
            data.requests, data.samples, idle=self.meta.get("idle"), charging=validity["charging"],
            capacity_mah=facts.extra.get("battery_capacity_mah"), rail_source=self.rail_source)
        summary["per_repetition"].update(summary["energy_phases"].pop("per_repetition", {}))
        if summary["threads"].get("off_affinity_share") is not None:
            summary["per_repetition"]["off_affinity_share"] = [summary["threads"]["off_affinity_share"]]
        summary["per_repetition"].update(load_values(self.meta.get("load"), data.requests))
        summary["cooldown_waits_s"] = self.cooldown_waits
        summary["bytes_pushed"] = sum(item.get("bytes_pushed", 0) for item in self.meta.get("pushed", {}).values())
        if self.scenario.duration_s:
            summary["decode_tps_drift"] = decode_drift(data.requests)
            summary["stress"] = stress_profile(data.requests, data.samples, fixed_performance=fixed)
        return summary


def run_benchmark(options: RunOptions, target: Target, progress: Progress | None = None) -> RunResult:
    return _Run(options, target, progress or NullProgress()).execute()
