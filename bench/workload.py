"""One scenario repetition on one runtime -> RequestRecords (DESIGN section 5 metrics)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from .clock import RunClock
from .records import PromptSpec, RequestRecord, Scenario
from .runtimes.base import Completion, Runtime
from .stats import percentile

# Deterministic filler for synthetic prompts (llama-bench's pp shapes): ordinary English, so the
# tokenizer sees realistic tokens, cut to exactly N tokens.
_FILLER = ("The quick brown fox jumps over the lazy dog while the morning sun rises above the quiet "
           "village, and the baker opens the shop to sell fresh bread to the people who pass by. ")


def synthetic_prompt(runtime: Runtime, n_tokens: int) -> list[int]:
    text = _FILLER
    tokens = runtime.tokenize(text)
    while len(tokens) < n_tokens:
        text += _FILLER
        tokens = runtime.tokenize(text)
    return tokens[:n_tokens]


def resolve_prompts(runtime: Runtime, prompts: Sequence[PromptSpec], depth: int = 0) -> list[str | list[int]]:
    """The requests as the runtime gets them. At a depth, each is token ids: `depth` filler tokens
    (what the KV cache holds first) followed by the prompt's own tokens (its BOS dropped), so the
    cached prefix and the new tokens are exact."""
    resolved = [synthetic_prompt(runtime, p.synthetic_tokens) if p.synthetic_tokens else p.text for p in prompts]
    if not depth:
        return resolved
    prefix = synthetic_prompt(runtime, depth)
    start = runtime.tokenize("")  # [BOS] where the model adds one, else []
    requests = []
    for prompt in resolved:
        tokens = runtime.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        requests.append(prefix + tokens[len(start):] if tokens[:len(start)] == start else prefix + tokens)
    return requests


def to_record(completion: Completion, *, repetition: int, step: int, warmup: bool, clock: RunClock,
              sequence: int | None = None) -> RequestRecord:
    times = completion.token_ns
    gaps_ms = [(b - a) / 1e6 for a, b in zip(times, times[1:])]

    def rate(count: int | None, ms: float | None) -> float | None:
        return count / ms * 1000 if count and ms else None

    return RequestRecord(
        repetition=repetition,
        step=step,
        warmup=warmup,
        t_start_s=clock.to_run_s(completion.sent_ns),
        prompt_tokens=completion.prompt_tokens,
        cached_tokens=completion.cached_tokens,
        gen_tokens=completion.gen_tokens,
        ttft_ms=(times[0] - completion.sent_ns) / 1e6 if times else None,
        prefill_ms=completion.prefill_ms,
        decode_ms=completion.decode_ms,
        prefill_tps=rate(completion.prefill_n, completion.prefill_ms),
        decode_tps=rate(completion.decode_n, completion.decode_ms),
        itl_p50_ms=percentile(gaps_ms, 50),
        itl_p95_ms=percentile(gaps_ms, 95),
        e2e_ms=(completion.done_ns - completion.sent_ns) / 1e6,
        stop_reason=completion.stop_reason,
        error=completion.error,
        streamed_tokens=completion.streamed_tokens,
        sequence=sequence,
        draft_tokens=completion.draft_tokens,
        draft_accepted=completion.draft_accepted,
    )


def run_repetition(runtime: Runtime, scenario: Scenario, prompts: Sequence[str | list[int]], *, repetition: int,
                   warmup: bool, clock: RunClock, on_request: Callable[[RequestRecord], None],
                   around_request: Callable[[], None] | None = None) -> list[RequestRecord]:
    """Send the scenario's prompts in order. With keep_history each turn carries the transcript so
    far, and the runtime may reuse the cached prefix; otherwise every prompt starts cold. With
    `parallel` N, each step sends its prompt as N concurrent sequences (each with its own history
    and seed + its index) and the next step starts when all N are done, as llama-batched-bench's
    sequences run in lockstep. `around_request` runs right before and right after each step
    (energy-counter readings)."""
    records = []
    sequences = scenario.sequences
    histories = [""] * sequences
    for step, prompt in enumerate(prompts):
        if scenario.keep_history and isinstance(prompt, str):
            requests: list[str | list[int]] = [f"{history}User: {prompt}\nAssistant:" for history in histories]
        else:
            requests = [prompt] * sequences
        if scenario.depth:
            # The KV cache is filled with the depth's tokens first, outside every window (as
            # llama-bench's n_depth does); the measured request reuses them and evaluates only its own.
            runtime.complete(list(requests[0][:scenario.depth]), n_predict=1, ignore_eos=True, keep_cache=False,
                             temperature=scenario.temperature, seed=scenario.seed)
        keep_cache = bool(scenario.depth) or (scenario.keep_history and step > 0)

        def send(sequence: int) -> Completion:
            return runtime.complete(requests[sequence], n_predict=scenario.n_predict, ignore_eos=scenario.ignore_eos,
                                    keep_cache=keep_cache, temperature=scenario.temperature,
                                    seed=scenario.seed + sequence)

        if around_request:
            around_request()
        if sequences == 1:
            completions = [send(0)]
        else:
            with ThreadPoolExecutor(sequences, thread_name_prefix="sequence") as pool:
                completions = list(pool.map(send, range(sequences)))
        if around_request:
            around_request()
        for sequence, completion in enumerate(completions):
            if scenario.keep_history and isinstance(requests[sequence], str):
                histories[sequence] = f"{requests[sequence]}{completion.text}\n"
            record = to_record(completion, repetition=repetition, step=step, warmup=warmup, clock=clock,
                               sequence=sequence if scenario.parallel else None)
            on_request(record)
            records.append(record)
        if any(completion.error for completion in completions):
            break
    return records
