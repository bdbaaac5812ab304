"""What a runtime gives the workload, whichever engine runs the model."""

from __future__ import annotations

from dataclasses import dataclass
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


class Runtime(Protocol):
    kind: str

    def load(self) -> float: ...
    def info(self) -> dict: ...
    def tokenize(self, text: str) -> list[int]: ...
    def complete(self, prompt: str | Sequence[int], *, n_predict: int, ignore_eos: bool,
                 keep_cache: bool, temperature: float, seed: int) -> Completion: ...
    def process_id(self) -> int | None: ...
    def peak_rss_bytes(self) -> float | None: ...
    def close(self) -> None: ...
