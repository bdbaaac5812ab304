"""The host runtime: llama-cpp-python in this process, one model load per run.

Tokens are timed from llama-cpp-python's low-level `generate()` loop (not
`create_completion(stream=True)`, which re-detokenizes the whole text per token), and
prefill/decode come from llama.cpp's own perf counters, reset before each request."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import ModelError, RunFailed
from ..parse import parse_proc_status
from ..records import ModelInfo
from .base import VENDORED_LLAMA_CPP, Completion


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs straight to fd 2 during load; keep the user's terminal clean."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _own_status() -> dict[str, int]:
    try:
        return parse_proc_status(Path(f"/proc/{os.getpid()}/status").read_text())
    except OSError:
        return {}


class LlamaCppRuntime:
    kind = "llama-cpp-python"

    def __init__(self, model: ModelInfo, *, n_ctx: int, n_batch: int, threads: int, seed: int):
        self.model = model
        self.n_ctx, self.n_batch, self.threads, self.seed = n_ctx, n_batch, threads, seed
        self._llm = None
        self._eos: int | None = None
        self.load_ms: float | None = None
        self.rss_before_load: int | None = None

    def load(self) -> float:
        try:
            import llama_cpp
        except ImportError as error:
            raise RunFailed(f"llama-cpp-python is not importable: {error}", hint="run the README's set-up command") from None
        self._lib = llama_cpp
        self.rss_before_load = _own_status().get("VmRSS")
        started = time.perf_counter()
        try:
            with _quiet_stderr():
                self._llm = llama_cpp.Llama(
                    model_path=self.model.path, n_ctx=self.n_ctx, n_batch=self.n_batch, n_threads=self.threads,
                    n_threads_batch=self.threads, seed=self.seed, verbose=False, logits_all=False,
                )
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"llama.cpp could not load {self.model.path}: {error}") from None
        self._eos = self._llm.token_eos()
        self.load_ms = (time.perf_counter() - started) * 1000
        return self.load_ms

    def info(self) -> dict:
        version = importlib.metadata.version("llama-cpp-python")
        system_info = None
        if self._llm is not None:
            raw = self._lib.llama_print_system_info()
            system_info = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)
        return {
            "kind": self.kind,
            "version": version,
            "llama_cpp_commit": VENDORED_LLAMA_CPP.get(version),
            "llama_cpp_commit_source": "llama-cpp-python CHANGELOG" if version in VENDORED_LLAMA_CPP else None,
            "build_flags": system_info,
            "threads": self.threads,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "load_ms": self.load_ms,
            "rss_before_load_bytes": self.rss_before_load,
        }

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def process_id(self) -> int | None:
        return os.getpid()

    def peak_rss_bytes(self) -> float | None:
        """VmHWM of this process (llama-cpp-python runs in it); None off Linux."""
        return _own_status().get("VmHWM")

    def complete(self, prompt: str | Sequence[int], *, n_predict: int, ignore_eos: bool, keep_cache: bool,
                 temperature: float, seed: int) -> Completion:
        llm, lib = self._llm, self._lib
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if len(tokens) + n_predict > self.n_ctx:
            raise RunFailed(f"prompt ({len(tokens)} tokens) + n_predict ({n_predict}) exceeds n_ctx {self.n_ctx}",
                            hint="raise n_ctx in the scenario or shorten the prompt")
        cached = self._reusable_prefix(tokens) if keep_cache else 0
        if not keep_cache:
            llm.reset()  # n_tokens = 0, so eval() drops the whole KV cache: a cold prompt
        llm.set_seed(seed)
        lib.llama_perf_context_reset(llm._ctx.ctx)
        token_ns: list[int] = []
        generated: list[int] = []
        stop_reason, error = "length", None
        sent_ns = time.perf_counter_ns()
        try:
            for token in llm.generate(tokens, temp=temperature, top_k=40, top_p=0.95, min_p=0.05,
                                      repeat_penalty=1.0, reset=True):
                token_ns.append(time.perf_counter_ns())
                if token == self._eos and not ignore_eos:
                    stop_reason = "eos"
                    break
                generated.append(token)
                if len(generated) >= n_predict:
                    break
        except RuntimeError as failure:  # llama_decode failures surface as RuntimeError
            stop_reason, error = "error", str(failure)
        done_ns = time.perf_counter_ns()
        perf = lib.llama_perf_context(llm._ctx.ctx)
        prefill_n, decode_n = int(perf.n_p_eval), int(perf.n_eval)
        return Completion(
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            gen_tokens=len(generated),
            sent_ns=sent_ns,
            token_ns=tuple(token_ns[: len(generated)]),
            done_ns=done_ns,
            prefill_ms=float(perf.t_p_eval_ms),
            prefill_n=prefill_n,
            decode_ms=float(perf.t_eval_ms),
            decode_n=decode_n,
            stop_reason=stop_reason,
            text=llm.detokenize(generated).decode("utf-8", errors="replace"),
            error=error,
        )

    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many prompt tokens generate() will take from the KV cache (its own rule: a fully
        cached prompt replays its last token to refresh the logits)."""
        common = 0
        for cached_token, token in zip(self._llm._input_ids, tokens):
            if cached_token != token:
                break
            common += 1
        return common - 1 if common == len(tokens) and common else common

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
