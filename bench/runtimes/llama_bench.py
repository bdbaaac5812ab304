"""llama.cpp's llama-bench as a workload: its `-o jsonl` lines -> request rows.

llama-bench prints one JSON line per test (pp N or tg N) when the test's repetitions are done,
with each repetition's duration (`samples_ns`) and rate (`samples_ts`). Each repetition becomes one
row; its time window is rebuilt backwards from when the line arrived on the host, using those
durations (the repetitions of a test run back to back just before it prints). Rates keep
llama-bench's own definition, tokens / repetition time, so published pp512/tg128 tables can be
reproduced; the report says so."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, replace
from typing import Protocol

from ..clock import RunClock
from ..records import RequestRecord
from .base import RuntimeFacts
from .process import LineProcess


def command(binary: str, model: str, *, pp: int | None, tg: int | None, repetitions: int, threads: int,
            cpu_mask: str | None = None, repack: bool = True, n_batch: int | None = None, depth: int = 0,
            mmap: bool = True) -> list[str]:
    """The llama-bench command line. Every value is a number or a path bench chose: nothing from
    a user's file reaches it."""
    args = [binary, "-m", model, "-p", str(pp or 0), "-n", str(tg or 0), "-r", str(repetitions), "-t", str(threads),
            "-o", "jsonl"]
    if n_batch:
        args += ["-b", str(n_batch)]
    if depth:
        args += ["-d", str(depth)]  # the KV cache holds this many tokens before each test (n_depth)
    if cpu_mask:
        args += ["-C", cpu_mask, "--cpu-strict", "1"]
    if not repack:
        args += ["--repack", "0"]
    if not mmap:
        args += ["-lm", "none"]  # load_mode = "read": the weights copied into memory
    return args


@dataclass(frozen=True)
class BenchTest:
    step: int                      # order of the test in this run (pp before tg)
    n_prompt: int
    n_gen: int
    samples_ns: tuple[int, ...]
    samples_ts: tuple[float, ...]
    raw: dict


def parse_line(line: str, step: int) -> BenchTest | None:
    """One `-o jsonl` line; None for anything else (llama-bench prints nothing else on stdout, but
    a device shell may)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
        return BenchTest(step, int(data.get("n_prompt") or 0), int(data.get("n_gen") or 0),
                         tuple(int(v) for v in data.get("samples_ns") or ()),
                         tuple(float(v) for v in data.get("samples_ts") or ()), data)
    except (ValueError, TypeError, AttributeError):
        # a line cut short (llama-bench killed mid-write) is no test: the run ends short of its
        # tests and is diagnosed from the process's end, as any death is
        return None


def to_records(test: BenchTest, arrived_ns: int, clock: RunClock) -> list[RequestRecord]:
    """One row per repetition, its window rebuilt backwards from the line's arrival."""
    records = []
    end_ns = arrived_ns - sum(test.samples_ns)
    for repetition, (ns, rate) in enumerate(zip(test.samples_ns, test.samples_ts)):
        start_ns, end_ns = end_ns, end_ns + ns
        ms = ns / 1e6
        prompt = test.n_prompt > 0 and test.n_gen == 0
        records.append(RequestRecord(
            repetition=repetition, step=test.step, warmup=False, t_start_s=clock.to_run_s(start_ns),
            prompt_tokens=test.n_prompt, cached_tokens=0, gen_tokens=test.n_gen, ttft_ms=None,
            prefill_ms=ms if prompt else None, decode_ms=None if prompt else ms,
            prefill_tps=rate if prompt else None, decode_tps=None if prompt else rate,
            itl_p50_ms=None, itl_p95_ms=None, e2e_ms=ms, stop_reason="llama-bench", error=None))
    return records


class BenchProcess(Protocol):
    """A llama-bench running on the target (a host subprocess, or a device shell)."""

    kind: str

    def read_line(self, timeout_s: float) -> tuple[int, str] | None: ...   # (arrival perf_counter_ns, line)
    def exit_status(self) -> int | None: ...
    def failure(self) -> str: ...
    def facts(self) -> RuntimeFacts: ...
    def peak_rss_bytes(self) -> float | None: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


class LocalBench:
    """llama-bench as a child process of bench on the host."""

    kind = "llama-bench"

    def __init__(self, argv: list[str], log_path, *, facts: RuntimeFacts, model_bytes: int | None):
        self._process = LineProcess(argv, log_path, affinity=facts.affinity, model_bytes=model_bytes)
        self._facts = replace(facts, pid=self._process.pid, log=str(log_path)).with_details(command=argv)

    def read_line(self, timeout_s: float) -> tuple[int, str] | None:
        found = self._process.read_line(timeout_s)
        return None if found is None else (found[0], found[1].decode(errors="replace"))

    def exit_status(self) -> int | None:
        try:
            return self._process.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # still running after its output closed: unknown
            return None

    def failure(self) -> str:
        return self._process.failure()

    def facts(self) -> RuntimeFacts:
        return self._facts

    def peak_rss_bytes(self) -> float | None:
        return self._process.peak_rss_bytes()

    def interrupt(self) -> None:
        self._process.kill()

    def close(self) -> None:
        self.peak_rss_bytes()
        self._process.kill()
        self._process.close(wait_s=0)
