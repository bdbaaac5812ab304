"""The host runtime: llama-cpp-python in a worker process (bench/runtimes/llama_cpp_worker.py), one
model load per run. bench talks to it over pipes and never shares its fate: a worker that crashes,
is OOM-killed or hangs becomes a diagnosed failed run (signal, log tail), as a crashed
llama-server on a phone does."""

from __future__ import annotations

import importlib.metadata
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import ModelError, RunFailed
from ..parse import parse_meminfo, parse_proc_status
from ..records import ModelInfo
from .base import Completion

START_TIMEOUT_S = 60


class WorkerDied(RunFailed):
    """The llama-cpp-python worker ended (signal, exit) or stopped answering."""


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _memory_available_bytes() -> int | None:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text()).get("MemAvailable")
    except OSError:
        return None


class LlamaCppRuntime:
    kind = "llama-cpp-python"

    def __init__(self, model: ModelInfo, *, n_ctx: int, n_batch: int, threads: int, seed: int,
                 log_path: Path, repack: str = "auto", llama_cpp_commit: tuple[str | None, str] = (None, "unknown"),
                 request_timeout_s: float = 600.0, affinity: tuple[int, ...] | None = None):
        self.model, self.request_timeout_s, self.affinity = model, request_timeout_s, affinity
        self.n_ctx, self.n_batch, self.threads, self.seed = n_ctx, n_batch, threads, seed
        self.log_path, self.repack, self.commit = log_path, repack, llama_cpp_commit
        self._process: subprocess.Popen | None = None
        self._loaded: dict = {}
        self._last_peak: int | None = None
        self.load_ms: float | None = None

    # -- the worker ------------------------------------------------------------------------------
    def _start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "bench.runtimes.llama_cpp_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, cwd=str(Path(__file__).resolve().parents[2]))
        if self.affinity is not None:
            # llama.cpp's threads inherit it: set before the model loads and the pool starts
            os.sched_setaffinity(self._process.pid, set(self.affinity))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        self._buffer = b""
        hello = self._read(START_TIMEOUT_S, "start")
        if "error" in hello:
            self.close()
            raise RunFailed(hello["error"], hint=hello.get("hint"))

    def _read(self, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise WorkerDied(f"the llama-cpp-python worker gave no answer to {what} within {timeout_s:.0f} s "
                                 f"and was killed (hang); {self._log_tail()}")
            if not self._selector.select(min(remaining, 1.0)):
                continue
            chunk = os.read(self._process.stdout.fileno(), 1 << 20)
            if not chunk:
                raise WorkerDied(f"the llama-cpp-python worker died during {what}: {self.failure()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _call(self, command: str, timeout_s: float, **arguments) -> dict:
        if self._process is None:
            raise WorkerDied(f"the llama-cpp-python worker is not running ({command})")
        try:
            self._process.stdin.write((json.dumps({"command": command, **arguments}) + "\n").encode())
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(f"the llama-cpp-python worker died before {command}: {self.failure()}") from None
        return self._read(timeout_s, command)

    def failure(self) -> str:
        """Why the worker ended: exit status or signal, memory for a SIGKILL, the log's last lines."""
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"no exit status yet; {self._log_tail()}"
        if code < 0:
            parts = [f"killed by {signal_name(-code)} (signal {-code})"]
            if -code == signal.SIGKILL:
                available = _memory_available_bytes()
                parts.append(f"the kernel's OOM killer sends SIGKILL: model {self.model.bytes / 2**20:.0f} MiB vs "
                             f"MemAvailable {'?' if available is None else f'{available / 2**20:.0f} MiB'} now")
        else:
            parts = [f"exit status {code}"]
        parts.append(self._log_tail())
        return "; ".join(parts)

    def _log_tail(self, lines: int = 3) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            tail = []
        return ("log " + str(self.log_path) + ": " + " | ".join(tail)) if tail else f"log {self.log_path} is empty"

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()  # our own child, by its PID
            self._process.wait(timeout=10)

    # -- the Runtime interface ---------------------------------------------------------------------
    def load(self) -> float:
        self._start()
        answer = self._call("load", START_TIMEOUT_S + self.model.bytes / 20e6, model_path=self.model.path,
                            n_ctx=self.n_ctx, n_batch=self.n_batch, threads=self.threads, seed=self.seed,
                            repack=self.repack)
        if "error" in answer:
            self.close()
            raise ModelError(f"llama.cpp could not load {self.model.path}: {answer['error']}")
        self._loaded = answer
        self.load_ms = answer["load_ms"]
        return self.load_ms

    def info(self) -> dict:
        version = importlib.metadata.version("llama-cpp-python")
        commit, commit_source = self.commit
        return {
            "kind": self.kind,
            "version": version,
            "llama_cpp_commit": commit,
            "llama_cpp_commit_source": commit_source,
            "build_flags": self._loaded.get("system_info"),
            "repack": self._loaded.get("repack"),
            "repack_reason": self._loaded.get("repack_reason"),
            "amx_in_build": self._loaded.get("amx_in_build"),
            "use_extra_bufts": self._loaded.get("use_extra_bufts"),  # what llama_model_load was given
            "process": "worker",
            "worker_pid": self.process_id(),
            "log": str(self.log_path),
            "threads": self.threads,
            "affinity": list(self.affinity) if self.affinity is not None else None,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "load_ms": self.load_ms,
            "rss_before_load_bytes": self._loaded.get("rss_before_load_bytes"),
        }

    def tokenize(self, text: str) -> list[int]:
        return list(self._call("tokenize", 60, text=text)["tokens"])

    def process_id(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def peak_rss_bytes(self) -> float | None:
        """VmHWM of the worker, read from /proc while it runs (the last reading once it is gone)."""
        pid = self.process_id()
        if pid is not None:
            try:
                self._last_peak = parse_proc_status(Path(f"/proc/{pid}/status").read_text()).get("VmHWM") or self._last_peak
            except OSError:
                pass
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

    def interrupt(self) -> None:
        """Stop the worker now (a run guard tripped, or Ctrl-C): the request in flight fails."""
        self._kill()

    def close(self) -> None:
        if self._process is None:
            return
        self.peak_rss_bytes()
        if self._process.poll() is None:
            try:
                self._process.stdin.write(b'{"command": "exit"}\n')
                self._process.stdin.flush()
                self._process.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self._kill()
        for pipe in (self._process.stdin, self._process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        self._selector.close()
        self._process = None
