"""The host runtime: llama-cpp-python in a worker process (bench/runtimes/llama_cpp_worker.py), one
model load per run. bench talks to it over pipes and never shares its fate: a worker that crashes,
is OOM-killed or hangs becomes a diagnosed failed run (signal, log tail), as a crashed
llama-server on a phone does."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Sequence

from ..correctness import Position, Scores
from ..errors import ModelError, RunFailed
from ..records import ModelInfo
from .base import Completion, RuntimeFacts
from .process import LineProcess

START_TIMEOUT_S = 60


class WorkerDied(RunFailed):
    """The llama-cpp-python worker ended (signal, exit) or stopped answering."""


class LlamaCppRuntime:
    kind = "llama-cpp-python"

    def __init__(self, model: ModelInfo, *, n_ctx: int, n_batch: int, threads: int, seed: int,
                 log_path: Path, repack: str = "auto", llama_cpp_commit: tuple[str | None, str] = (None, "unknown"),
                 request_timeout_s: float = 600.0, affinity: tuple[int, ...] | None = None, load_mode: str = "mmap"):
        self.model, self.request_timeout_s, self.affinity = model, request_timeout_s, affinity
        self.n_ctx, self.n_batch, self.threads, self.seed = n_ctx, n_batch, threads, seed
        self.log_path, self.repack, self.commit, self.load_mode = log_path, repack, llama_cpp_commit, load_mode
        self._process: LineProcess | None = None
        self._loaded: dict = {}
        self._last_peak: int | None = None
        self._last_pid: int | None = None
        self.load_ms: float | None = None

    # -- the worker ------------------------------------------------------------------------------
    def _start(self) -> None:
        self._process = LineProcess([sys.executable, "-m", "bench.runtimes.llama_cpp_worker"], self.log_path,
                                    stdin=True, cwd=str(Path(__file__).resolve().parents[2]), affinity=self.affinity,
                                    model_bytes=self.model.bytes)
        hello = self._read(START_TIMEOUT_S, "start")
        if "error" in hello:
            self.close()
            raise RunFailed(hello["error"], hint=hello.get("hint"))

    def _read(self, timeout_s: float, what: str) -> dict:
        try:
            line = self._process.read_line(timeout_s)
        except TimeoutError:
            self._process.kill()
            raise WorkerDied(f"the llama-cpp-python worker gave no answer to {what} within {timeout_s:.0f} s "
                             f"and was killed (hang); {self._process.log_tail()}") from None
        if line is None:
            raise WorkerDied(f"the llama-cpp-python worker died during {what}: {self._process.failure()}")
        try:
            return json.loads(line[1])
        except ValueError:  # a reply cut short: the worker was killed while writing it
            raise WorkerDied(f"the llama-cpp-python worker's reply during {what} was cut short: "
                             f"{self._process.failure()}") from None

    def _call(self, command: str, timeout_s: float, **arguments) -> dict:
        if self._process is None:
            raise WorkerDied(f"the llama-cpp-python worker is not running ({command})")
        try:
            self._process.send((json.dumps({"command": command, **arguments}) + "\n").encode())
        except (BrokenPipeError, OSError):
            raise WorkerDied(f"the llama-cpp-python worker died before {command}: {self._process.failure()}") from None
        return self._read(timeout_s, command)

    # -- the Runtime interface ---------------------------------------------------------------------
    def load(self) -> float:
        self._start()
        answer = self._call("load", START_TIMEOUT_S + self.model.bytes / 20e6, model_path=self.model.path,
                            n_ctx=self.n_ctx, n_batch=self.n_batch, threads=self.threads, seed=self.seed,
                            repack=self.repack, use_mmap=self.load_mode == "mmap")
        if "error" in answer:
            self.close()
            raise ModelError(f"llama.cpp could not load {self.model.path}: {answer['error']}")
        self._loaded = answer
        self.load_ms = answer["load_ms"]
        return self.load_ms

    def facts(self) -> RuntimeFacts:
        commit, commit_source = self.commit
        return RuntimeFacts(
            kind=self.kind, process="worker", pid=self.process_id(), threads=self.threads, affinity=self.affinity,
            n_ctx=self.n_ctx, n_batch=self.n_batch, version=importlib.metadata.version("llama-cpp-python"),
            llama_cpp_commit=commit, build_flags=self._loaded.get("system_info"), repack=self._loaded.get("repack"),
            repack_reason=self._loaded.get("repack_reason"), load_ms=self.load_ms, log=str(self.log_path),
            details=(("llama_cpp_commit_source", commit_source), ("load_mode", self.load_mode),
                     ("amx_in_build", self._loaded.get("amx_in_build")),
                     ("use_extra_bufts", self._loaded.get("use_extra_bufts")),  # what llama_model_load was given
                     ("rss_before_load_bytes", self._loaded.get("rss_before_load_bytes"))))

    def tokenize(self, text: str) -> list[int]:
        return list(self._call("tokenize", 60, text=text)["tokens"])

    def process_id(self) -> int | None:
        return self._process.pid if self._process is not None else self._last_pid

    def peak_rss_bytes(self) -> float | None:
        """VmHWM of the worker, read from /proc while it runs (the last reading once it is gone)."""
        if self._process is not None:
            self._last_peak = self._process.peak_rss_bytes() or self._last_peak
        return self._last_peak

    def complete(self, prompt: str | Sequence[int], *, n_predict: int, ignore_eos: bool, keep_cache: bool,
                 temperature: float, seed: int) -> Completion:
        answer = self._call("complete", self.request_timeout_s, prompt=prompt if isinstance(prompt, str) else list(prompt),
                            n_predict=n_predict, ignore_eos=ignore_eos, keep_cache=keep_cache,
                            temperature=temperature, seed=seed)
        self.peak_rss_bytes()
        if "error" in answer and "token_ns" not in answer:
            raise RunFailed(answer["error"], hint=answer.get("hint"))
        answer["token_ns"] = tuple(answer["token_ns"])
        return Completion(**answer)

    def score(self, tokens: Sequence[int]) -> Scores:
        answer = self._call("score", self.request_timeout_s, tokens=list(tokens))
        if "error" in answer:
            raise RunFailed(answer["error"], hint="raise n_ctx in the scenario")
        return Scores(tuple(tokens), tuple(Position(*item) for item in answer["positions"]), answer["vocab"],
                      f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')} on the host's CPU")

    def interrupt(self) -> None:
        """Stop the worker now (a run guard tripped, or Ctrl-C): the request in flight fails."""
        if self._process is not None:
            self._process.kill()

    def close(self) -> None:
        if self._process is None:
            return
        self.peak_rss_bytes()
        try:
            self._process.send(b'{"command": "exit"}\n')
        except (BrokenPipeError, OSError):
            pass
        self._process.close()
        self._last_pid = self._process.pid
        self._process = None
