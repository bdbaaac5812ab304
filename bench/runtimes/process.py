"""A child process of bench's own whose stdout is read line by line with timeouts, and whose end is
diagnosed (signal, exit status, log tail) rather than shared: the host runtime's worker and a host
llama-bench both run this way."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from ..parse import log_excerpt, parse_meminfo, parse_proc_status


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def memory_available_bytes() -> int | None:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text()).get("MemAvailable")
    except OSError:
        return None


class LineReader:
    """Lines out of a byte stream read in chunks, each stamped with perf_counter_ns when it was
    complete; a last line without a newline comes at the end of the stream."""

    def __init__(self, read_chunk: Callable[[float], bytes | None]):
        # read_chunk(timeout_s): bytes; b"" at the end of the stream; None when nothing came in time
        self._read_chunk = read_chunk
        self._buffer = b""

    def read_line(self, timeout_s: float) -> tuple[int, bytes] | None:
        """(arrival perf_counter_ns, line) or None at the end of the stream; TimeoutError when no
        line came within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no output within {timeout_s:.0f} s")
            chunk = self._read_chunk(remaining)
            if chunk is None:
                continue
            if not chunk:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return time.perf_counter_ns(), line
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return time.perf_counter_ns(), line


class LineProcess:
    """Popen with stdout read by lines (arrival time stamped on perf_counter_ns) and stderr into a log."""

    def __init__(self, argv: list[str], log_path: Path, *, stdin: bool = False, cwd: str | None = None,
                 affinity: tuple[int, ...] | None = None, model_bytes: int | None = None):
        self.log_path, self.model_bytes = log_path, model_bytes
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=log, cwd=cwd)
        if affinity is not None:
            # its threads inherit it: set before the model loads and the thread pool starts
            os.sched_setaffinity(self.process.pid, set(affinity))
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)
        self._lines = LineReader(self._read_chunk)
        self._last_peak: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_line(self, timeout_s: float) -> tuple[int, bytes] | None:
        """(arrival perf_counter_ns, line) or None at end of output; TimeoutError when none came."""
        return self._lines.read_line(timeout_s)

    def _read_chunk(self, timeout_s: float) -> bytes | None:
        if not self._selector.select(min(timeout_s, 1.0)):
            return None
        return os.read(self.process.stdout.fileno(), 1 << 20)

    def send(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def failure(self) -> str:
        """Why it ended: exit status or signal, memory for a SIGKILL, the log's last lines."""
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"no exit status yet; {self.log_tail()}"
        if code < 0:
            parts = [f"killed by {signal_name(-code)} (signal {-code})"]
            if -code == signal.SIGKILL:
                available = memory_available_bytes()
                size = f"model {self.model_bytes / 2**20:.0f} MiB vs " if self.model_bytes else ""
                parts.append(f"the kernel's OOM killer sends SIGKILL: {size}MemAvailable "
                             f"{'?' if available is None else f'{available / 2**20:.0f} MiB'} now")
        else:
            parts = [f"exit status {code}"]
        parts.append(self.log_tail())
        return "; ".join(parts)

    def log_tail(self, lines: int = 3) -> str:
        try:
            tail = log_excerpt(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            tail = []
        return ("log " + str(self.log_path) + ": " + " | ".join(tail)) if tail else f"log {self.log_path} is empty"

    def peak_rss_bytes(self) -> int | None:
        """VmHWM read from /proc while it runs (the last reading once it is gone)."""
        try:
            self._last_peak = parse_proc_status(Path(f"/proc/{self.pid}/status").read_text()).get("VmHWM") or self._last_peak
        except OSError:
            pass
        return self._last_peak

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # our own child, by its PID
            self.process.wait(timeout=10)

    def close(self, wait_s: float = 10) -> None:
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self._selector.close()
