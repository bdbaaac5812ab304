"""What a runtime gives the workload, whichever engine runs the model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Completion:
    prompt_tokens: int
    cached_tokens: int
    gen_tokens: int
    sent_ns: int                  # host perf_counter_ns when the request was issued
    token_ns: tuple[int, ...]     # host perf_counter_ns as each token arrived
    done_ns: int
    prefill_ms: float | None      # the runtime's own timings
    prefill_n: int | None
    decode_ms: float | None
    decode_n: int | None
    stop_reason: str              # length | eos | error
    text: str
    error: str | None = None
    streamed_tokens: int | None = None  # tokens the stream delivered one by one (None: not streamed)
    draft_tokens: int | None = None     # tokens the draft model proposed (None: the runtime ran no draft)
    draft_accepted: int | None = None   # of those, how many the model accepted


# run.json named the PID after the process before `pid` existed; stored runs and scripts read these
_PID_KEYS = {"worker": "worker_pid", "server": "server_pid", "llama-bench": "process_pid"}


@dataclass(frozen=True)
class RuntimeFacts:
    """What run.json's "runtime" says of the engine that ran the model, the same fields for the
    llama-cpp-python worker, llama-server and llama-bench; `details` holds what only one of them has
    (the device port, the arm arch, llama-bench's command line, ...)."""
    kind: str                         # llama-cpp-python | llama-server | llama-bench
    process: str                      # which process `pid` is: worker | server | llama-bench
    pid: int | None                   # the process that runs the model: telemetry reads its /proc
    threads: int
    affinity: tuple[int, ...] | None  # CPUs the runtime was pinned to; None: not pinned
    n_batch: int
    n_ctx: int | None = None
    version: str | None = None
    llama_cpp_commit: str | None = None
    build_flags: str | tuple[str, ...] | None = None
    repack: bool | None = None
    repack_reason: str | None = None
    load_ms: float | None = None
    log: str | None = None
    details: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def __post_init__(self):
        # cmake flags arrive as a list from runtime.json; frozen means tuples inside
        if isinstance(self.build_flags, list):
            object.__setattr__(self, "build_flags", tuple(self.build_flags))
        if isinstance(self.affinity, list):
            object.__setattr__(self, "affinity", tuple(self.affinity))

    def with_details(self, **details) -> "RuntimeFacts":
        return replace(self, details=self.details + tuple(details.items()))

    def as_record(self) -> dict:
        record = {"kind": self.kind, "version": self.version, "llama_cpp_commit": self.llama_cpp_commit,
                  "build_flags": list(self.build_flags) if isinstance(self.build_flags, tuple) else self.build_flags,
                  "threads": self.threads, "affinity": list(self.affinity) if self.affinity is not None else None,
                  "n_ctx": self.n_ctx, "n_batch": self.n_batch, "repack": self.repack,
                  "repack_reason": self.repack_reason, "load_ms": self.load_ms, "log": self.log,
                  "process": self.process, "pid": self.pid, _PID_KEYS[self.process]: self.pid}
        record.update(self.details)
        return record


class Runtime(Protocol):
    kind: str

    def load(self) -> float: ...
    def facts(self) -> RuntimeFacts: ...
    def tokenize(self, text: str) -> list[int]: ...
    def complete(self, prompt: str | Sequence[int], *, n_predict: int, ignore_eos: bool,
                 keep_cache: bool, temperature: float, seed: int) -> Completion: ...
    def peak_rss_bytes(self) -> float | None: ...
    def close(self) -> None: ...
