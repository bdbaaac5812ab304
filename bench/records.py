"""Frozen records passed between layers. Dicts appear only at file boundaries (`to_dict`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


@dataclass(frozen=True)
class CooldownRule:
    """Before each repetition: wait until the hottest sensor is within `idle_delta_c` of the
    baseline taken before warmup, or under `max_temp_c`, for at most `max_wait_s`."""

    mode: str = "none"  # none | temperature
    max_wait_s: float = 120.0
    idle_delta_c: float = 3.0
    max_temp_c: float | None = None
    poll_s: float = 1.0


@dataclass(frozen=True)
class PromptSpec:
    """Either literal text, or a synthetic prompt of exactly `synthetic_tokens` tokens (the
    llama-bench pp shapes), built by the runtime from its own tokenizer."""

    text: str | None = None
    synthetic_tokens: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    description: str
    repetitions: int
    warmup: int
    seed: int
    temperature: float
    n_ctx: int
    n_batch: int
    threads: int | None
    n_predict: int
    ignore_eos: bool
    prompts: tuple[PromptSpec, ...]
    keep_history: bool
    duration_s: float | None
    cooldown: CooldownRule
    content_hash: str
    request_timeout_s: float = 600.0  # a request with no answer by then is a hang: the runtime is stopped
    kind: str = "generate"            # or "llama-bench": llama.cpp's own pp/tg benchmark on the target
    pp: int | None = None             # llama-bench prompt tokens (-p)
    tg: int | None = None             # llama-bench generated tokens (-n)
    idle_s: float = 10.0              # idle power measured this long before the first request (phones)
    # Tokens the KV cache holds before each measured request (llama-bench's n_depth): prefill and
    # decode at that depth. `depths` is the file's list when it asks for a sweep (one run each).
    depth: int = 0
    depths: tuple[int, ...] = ()
    # Concurrent sequences, each in a llama-server slot of its own (llama-batched-bench's -npl): every
    # step sends its prompt N times at once. None: one sequence, in the target's own runtime (on the
    # host, llama-cpp-python); any number, even 1, runs llama-server, so a sweep's points share it.
    parallel: int | None = None
    parallels: tuple[int, ...] = ()
    # How the runtime reads the weights: "mmap" maps the file (pages fault in as the model first
    # touches them, shared with the page cache; llama.cpp's default), "read" copies it into memory
    load_mode: str = "mmap"
    # Speculative decoding: a draft model (catalog alias or .gguf path) proposes up to draft_max
    # tokens a step for the model to verify. A draft is measured with and without: `drafts` is the
    # sweep (NO_DRAFT first, one run each; empty: none asked), `draft` the one this run uses (None:
    # none). Every run of a draft sweep, the one without too, runs llama-server.
    draft: str | None = None
    drafts: tuple[str, ...] = ()
    draft_max: int = 3

    def with_overrides(self, repetitions: int | None = None, threads: int | None = None,
                       depth: int | None = None, parallel: int | None = None, draft: str | None = None,
                       drafts: Sequence[str] | None = None) -> "Scenario":
        """None keeps the scenario's value; draft NO_DRAFT asks for none."""
        return dataclasses.replace(
            self,
            repetitions=self.repetitions if repetitions is None else repetitions,
            threads=self.threads if threads is None else threads,
            depth=self.depth if depth is None else depth,
            parallel=self.parallel if parallel is None else parallel,
            draft=self.draft if draft is None else None if draft == NO_DRAFT else draft,
            drafts=self.drafts if drafts is None else tuple(drafts),
        )

    @property
    def sequences(self) -> int:
        return self.parallel or 1

    @property
    def serves(self) -> bool:
        """Whether the scenario needs llama-server on every target (slots, a draft model), also
        where another runtime runs plain generation (the host's llama-cpp-python)."""
        return self.kind != "llama-bench" and (self.parallel is not None or bool(self.drafts))


NO_DRAFT = "none"  # the point of a draft sweep that runs the model alone


def slots_text(scenario: Scenario) -> str:
    """How a memory check words the KV cache of parallel sequences ("" for one)."""
    return f" x {scenario.parallel} slots" if scenario.sequences > 1 else ""


@dataclass(frozen=True)
class ModelEntry:
    """One catalog alias: where the file comes from and what its publisher states about it."""

    alias: str
    description: str
    source: str  # path | pypi | pypi_chunks | hf
    filename: str
    sha256: str | None = None
    size_bytes: int | None = None
    approx_bytes: int | None = None
    path: str | None = None
    package: str | None = None
    version: str | None = None
    member: str | None = None
    chunks: tuple[tuple[str, str], ...] = ()  # (package==version, member) in order
    repo: str | None = None
    revision: str | None = None
    catalog_file: str = ""

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    architecture: str | None
    name: str | None
    file_type: int | None
    quantization: str | None
    parameters: int
    tensor_count: int
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    file_bytes: int
    # the tokenizer, for a draft model's fit (llama.cpp speculates only with the same vocabulary)
    vocab_type: str | None = None     # tokenizer.ggml.model: gpt2 (BPE), llama (SentencePiece), ...
    vocab_size: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    path: str
    sha256: str
    pinned: bool
    bytes: int
    gguf: GGUFInfo
    draft: "ModelInfo | None" = None  # the draft model that proposes tokens for this one (speculative decoding)


@dataclass(frozen=True)
class RequestRecord:
    repetition: int
    step: int
    warmup: bool
    t_start_s: float
    prompt_tokens: int
    cached_tokens: int
    gen_tokens: int
    ttft_ms: float | None
    prefill_ms: float | None
    decode_ms: float | None
    prefill_tps: float | None
    decode_tps: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    e2e_ms: float | None
    stop_reason: str
    error: str | None = None
    streamed_tokens: int | None = None  # tokens the stream delivered a character at a time; the runtime counted gen_tokens
    sequence: int | None = None  # which of the step's concurrent sequences (0..N-1); None: the run asked for no parallel
    draft_tokens: int | None = None    # tokens the draft model proposed, as llama-server counted (None: no draft)
    draft_accepted: int | None = None  # of those, how many the model accepted

    @property
    def window_s(self) -> tuple[float, float]:
        return self.t_start_s, request_end_s(self.t_start_s, self.e2e_ms or 0.0)


def request_end_s(t_start_s, e2e_ms):
    """Where a request's window ends (seconds since run start): sent plus end-to-end time. The one
    definition of the window that telemetry, energy and the trace cut by; numbers or numpy arrays."""
    return t_start_s + e2e_ms / 1000


REQUEST_COLUMNS = tuple(f.name for f in dataclasses.fields(RequestRecord))
# added after runs were first stored: a table without them still loads, with the column empty
OPTIONAL_COLUMNS = ("streamed_tokens", "sequence", "draft_tokens", "draft_accepted")


@dataclass(frozen=True)
class Sample:
    t_s: float
    source: str
    name: str
    value: float
    unit: str


SAMPLE_COLUMNS = ("t_s", "source", "name", "value", "unit")


@dataclass(frozen=True)
class DeviceFacts:
    kind: str  # host | android
    profile: str
    serial: str
    manufacturer: str | None
    model: str | None
    device: str | None
    soc: str | None
    abi: str | None
    os: str | None
    cpu_model: str | None
    cores_logical: int | None
    cores_physical: int | None
    ram_bytes: int | None
    memory_bandwidth_gbs: float | None = None
    memory_bandwidth_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightCheck:
    name: str
    ok: bool
    detail: str
    severity: str = "error"  # error | warning
