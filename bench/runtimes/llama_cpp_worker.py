"""The host runtime's worker: llama-cpp-python in a process of its own (pyperf's runner/worker
split), so a crash, OOM kill or hang of llama.cpp ends this process, never bench.

`python -m bench.runtimes.llama_cpp_worker` reads one JSON command per line on stdin and answers
each with one JSON line on the protocol pipe (the original stdout; fd 1 and 2 then go to the log,
which is where llama.cpp writes). Tokens are timed here, in llama-cpp-python's low-level
`generate()` loop (not `create_completion(stream=True)`, which re-detokenizes the whole text per
token), on CLOCK_MONOTONIC, which the parent's run clock shares."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

from ..parse import parse_proc_status

COMMANDS = ("load", "tokenize", "complete", "score")
AMX_MARKER = "AMX_INT8 = 1"
AMX_REASON = ("weight repacking off: this llama.cpp build uses AMX, whose repacked matmul crashes on multi-token "
              "batches at the vendored commit (llama.cpp issue 20824)")


def _die_with_parent() -> None:
    """If bench is killed outright, the worker must not run on (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _vm_status() -> dict[str, int]:
    try:
        return parse_proc_status(Path("/proc/self/status").read_text())
    except OSError:
        return {}


class Worker:
    def __init__(self):
        import llama_cpp

        self.lib = llama_cpp
        raw = llama_cpp.llama_print_system_info()
        self.system_info = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)
        self.llm = None
        self.eos = None
        self.n_ctx = 0

    def load(self, model_path: str, n_ctx: int, n_batch: int, threads: int, seed: int, repack: str,
             use_mmap: bool = True) -> dict:
        """repack: "auto" (off only where the build uses AMX), "on" or "off"."""
        amx = AMX_MARKER in self.system_info
        use_repack = {"on": True, "off": False}.get(repack, not amx)
        reason = ("weight repacking on (llama.cpp's default)" if use_repack else
                  AMX_REASON if repack == "auto" else "weight repacking off (asked for)")
        rss_before = _vm_status().get("VmRSS")
        started = time.perf_counter()
        with self._repack(use_repack):
            self.llm = self.lib.Llama(model_path=model_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=threads,
                                      n_threads_batch=threads, seed=seed, logits_all=False, use_mmap=use_mmap,
                                      verbose=True)  # llama.cpp's load log (its buffers) goes to runtime.log
        self.eos = self.llm.token_eos()
        self.n_ctx = n_ctx
        return {"load_ms": (time.perf_counter() - started) * 1000, "rss_before_load_bytes": rss_before,
                "system_info": self.system_info, "repack": use_repack, "repack_reason": reason,
                "amx_in_build": amx, "use_extra_bufts": bool(self.llm.model_params.use_extra_bufts)}

    @contextlib.contextmanager
    def _repack(self, enabled: bool):
        """Llama() takes llama_model_default_params() and offers no switch for use_extra_bufts, so
        the default is wrapped while the model loads."""
        if enabled:
            yield
            return
        from llama_cpp import llama as llama_module

        original = llama_module.llama_cpp.llama_model_default_params

        def without_extra_buffers():
            params = original()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = original

    def tokenize(self, text: str) -> dict:
        return {"tokens": self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)}

    def complete(self, prompt, n_predict: int, ignore_eos: bool, keep_cache: bool, temperature: float,
                 seed: int) -> dict:
        llm, lib = self.llm, self.lib
        tokens = self.tokenize(prompt)["tokens"] if isinstance(prompt, str) else list(prompt)
        if len(tokens) + n_predict > self.n_ctx:
            return {"error": f"prompt ({len(tokens)} tokens) + n_predict ({n_predict}) exceeds n_ctx {self.n_ctx}",
                    "hint": "raise n_ctx in the scenario or shorten the prompt"}
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
                if token == self.eos and not ignore_eos:
                    stop_reason = "eos"
                    break
                generated.append(token)
                if len(generated) >= n_predict:
                    break
        except RuntimeError as failure:  # llama_decode failures surface as RuntimeError
            stop_reason, error = "error", str(failure)
        done_ns = time.perf_counter_ns()
        perf = lib.llama_perf_context(llm._ctx.ctx)
        token_ns = token_ns[: len(generated)]
        # llama.cpp's own count of the tokens it sampled (each decode step but the last is one more
        # eval; an EOS is sampled, not generated), against which the loop's timed tokens are checked.
        # A prompt evaluated as a single token (all the rest cached) counts in n_eval, not n_p_eval.
        single_token_prompt = int(perf.n_p_eval) == 0
        sampled = (int(perf.n_eval) + 1 - (stop_reason == "eos") - single_token_prompt if error is None
                   else len(generated))
        # Decode: (generated - 1) / first-to-last generated token, the definition llama-server's
        # predicted_ms uses on the phone; the prompt's own eval is prefill.
        decode_ms = (token_ns[-1] - token_ns[0]) / 1e6 if len(token_ns) >= 2 else None
        return {
            "prompt_tokens": len(tokens), "cached_tokens": cached, "gen_tokens": sampled,
            "sent_ns": sent_ns, "token_ns": token_ns, "done_ns": done_ns,
            "prefill_ms": float(perf.t_p_eval_ms), "prefill_n": int(perf.n_p_eval),
            "decode_ms": decode_ms, "decode_n": len(generated) - 1 if decode_ms else None,
            "stop_reason": stop_reason, "streamed_tokens": len(token_ns),
            "text": llm.detokenize(generated).decode("utf-8", errors="replace"), "error": error,
        }

    def score(self, tokens: list[int]) -> dict:
        """Teacher-forced, one token evaluated at a time (the context keeps logits for the last token
        only): at each position the most likely next token, the ln-probability of the given next
        token and the margin of the top token over the second (bench.correctness)."""
        import numpy as np

        llm = self.llm
        if len(tokens) > self.n_ctx:
            return {"error": f"the correctness probe ({len(tokens)} tokens) exceeds n_ctx {self.n_ctx}"}
        llm.reset()
        positions = []
        for index, token in enumerate(tokens[:-1]):
            llm.eval([token])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
            finite = np.isfinite(logits)
            if not finite.all():  # a broken backend: its top token (NaN never wins), no probabilities
                positions.append([int(np.argmax(np.where(np.isnan(logits), -np.inf, logits))) if finite.any() else -1,
                                  None, None])
                continue
            shifted = logits - logits.max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
            first, second = np.argpartition(-logprobs, 1)[:2]
            if logprobs[second] > logprobs[first]:
                first, second = second, first
            positions.append([int(first), float(logprobs[tokens[index + 1]]), float(logprobs[first] - logprobs[second])])
        llm.reset()
        return {"positions": positions, "vocab": int(llm.n_vocab())}

    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many prompt tokens generate() will take from the KV cache (its own rule: a fully
        cached prompt replays its last token to refresh the logits)."""
        common = 0
        for cached_token, token in zip(self.llm._input_ids, tokens):
            if cached_token != token:
                break
            common += 1
        return common - 1 if common == len(tokens) and common else common


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed goes to the log, never into the protocol
    try:
        worker = Worker()
    except ImportError as error:
        protocol.write(json.dumps({"error": f"llama-cpp-python is not importable: {error}",
                                   "hint": "run the README's set-up command"}) + "\n")
        return 1
    protocol.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("command")
        if command == "exit":
            break
        if command not in COMMANDS:
            answer = {"error": f"unknown worker command {command!r}", "kind": "run"}
            protocol.write(json.dumps(answer) + "\n")
            continue
        try:
            answer = getattr(worker, command)(**request)
        except (ValueError, RuntimeError) as error:
            answer = {"error": str(error), "kind": "model" if command == "load" else "run"}
        protocol.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
