"""Our one runtime process on the device (llama-server or llama-bench): started in a shell that
prints its PID first and writes it to a PID file, alive or not, why it ended, and stopped by PID
only while that PID still runs one of our binaries (a PID a process left behind may belong to
another program by now), also when an earlier run left it."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Iterator

from ..errors import RunFailed
from ..parse import log_excerpt
from ..runtimes.base import RuntimeFacts
from ..runtimes.process import LineReader
from .adb import AdbFailure, Device, runs_ours

PORT_ATTEMPTS = 5


class PortTaken(RunFailed):
    """llama-server could not bind its port on the device: another program holds it."""


def device_ports() -> Iterator[int]:
    """Ports for llama-server on the device's loopback, at random below Linux's ephemeral range
    (32768-60999), where the phone's own outgoing connections take theirs."""
    while True:
        yield random.randint(20000, 32000)


class DeviceProcess:
    def __init__(self, device: Device, root: str):
        self.device, self.root = device, root
        self.pid_file = f"{root}/run/llama-server.pid"  # llama-bench's too: one runtime process at a time
        self.stream = None
        self.pid: int | None = None

    def launch(self, command: str):
        """Run `command` (with its redirections) from the bench folder; the shell's first line is
        `PID n`, which the caller reads from the returned stream."""
        self.stream = self.device.open_shell_stream(
            f"mkdir -p {self.root}/run && cd {self.root} && echo $$ > {self.pid_file} && echo PID $$ && exec {command}")
        return self.stream

    def alive(self) -> bool:
        if self.pid is None:
            return self.stream is not None and self.stream.exit_code is None
        try:
            return self.device.shell(f"kill -0 {self.pid} 2>/dev/null && echo alive", timeout=10).stdout.strip() == "alive"
        except AdbFailure:
            return False

    def failure(self, log_name: str, memory_hint: str, stream=None) -> str:
        """Why it died: exit status or signal, its log's last lines, low-memory-killer lines."""
        stream = stream if stream is not None else self.stream
        parts = []
        code = stream.wait_exit(3) if stream is not None else None
        if code is not None:
            signal_number = code - 128 if code > 128 else None
            parts.append(f"exit status {code}" + (f" (signal {signal_number})" if signal_number else ""))
            if signal_number == 9:  # how the low-memory killer ends a process
                parts.append(f"killed: {memory_hint}")
        try:
            tail = self.device.shell(f"tail -n 40 {self.root}/run/{log_name} 2>/dev/null", timeout=10).stdout.strip()
            if tail:
                parts.append("log: " + " | ".join(log_excerpt(tail)))
            lmk = self.device.shell("logcat -d -b main,system,events 2>/dev/null | grep -i -m3 -E 'lowmemorykiller|lmkd'",
                                    timeout=20).stdout.strip()
            if lmk:
                parts.append(f"low-memory killer: {lmk.splitlines()[-1]} ({memory_hint})")
        except AdbFailure:
            parts.append("the device stopped answering")
        return "; ".join(parts) or "no exit status or log"

    def stop(self) -> None:
        """Always safe to call: stops the process by PID while it still runs one of our binaries,
        closes its shell, removes the PID file."""
        if self.pid is not None:
            pid = self.pid
            ours = runs_ours(pid, f"{self.root}/bin/")
            try:
                self.device.shell(f"if {ours}; then kill {pid}; sleep 0.3; {ours} && kill -9 {pid}; fi 2>/dev/null; true",
                                  timeout=10)
            except AdbFailure:
                pass  # the device is gone; adbd ends the shell's processes when the stream drops
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.pid is not None:
            try:
                self.device.shell(f"rm -f {self.pid_file}", timeout=10)
            except AdbFailure:
                pass
        self.pid = None

    def kill(self) -> None:
        """A run guard tripped: end it at once, so the request in flight ends."""
        if self.pid is not None:
            self.device.shell(f"kill -9 {self.pid} 2>/dev/null; true", timeout=10)

    def kill_stale(self) -> int | None:
        """A run that lost its device can leave its process behind; the PID file names it. Killed
        only if that PID still runs our binary from the bench folder; its PID when it was."""
        out = self.device.shell(f"cat {self.pid_file} 2>/dev/null", timeout=10).stdout.strip()
        if not out.isdigit():
            return None
        killed = self.device.shell(f"rm -f {self.pid_file}; if {runs_ours(int(out), self.root + '/')}; then kill -9 {out} "
                                   f"2>/dev/null; echo killed; fi", timeout=10).stdout.strip() == "killed"
        return int(out) if killed else None


class DeviceBench:
    """llama-bench running in a device shell: its stdout lines, its PID, and its end diagnosed."""

    kind = "llama-bench"

    def __init__(self, process: DeviceProcess, memory_hint: str, *, facts: RuntimeFacts):
        self.process, self.stream, self.memory_hint = process, process.stream, memory_hint
        self._lines = LineReader(self._read_chunk)
        pid: int | None = None
        try:
            first = self.read_line(60)
        except TimeoutError:  # the target closes its shell in cleanup
            raise RunFailed(f"llama-bench printed no PID within 60 s on {process.device.serial}: {self.failure()}",
                            hint="the device may be overloaded; retry, or check `adb shell` works") from None
        if first and first[1].startswith("PID ") and first[1].split()[1].isdigit():
            pid = int(first[1].split()[1])
        self._facts = replace(facts, pid=pid)

    def read_line(self, timeout_s: float) -> tuple[int, str] | None:
        found = self._lines.read_line(timeout_s)
        return None if found is None else (found[0], found[1].decode(errors="replace"))

    def _read_chunk(self, timeout_s: float) -> bytes | None:
        try:
            self.stream.connection.conn.settimeout(timeout_s)
        except OSError:
            pass
        chunk = self.stream.read_stdout()
        if chunk is None:  # the end of the stream, or no output in time (socket.timeout is TimeoutError)
            if isinstance(self.stream.error, TimeoutError):
                raise TimeoutError(f"no output within {timeout_s:.0f} s")
            return b""
        return chunk or None  # an empty stdout packet is not the end

    def exit_status(self) -> int | None:
        return self.stream.wait_exit(10)

    def failure(self) -> str:
        return self.process.failure("llama-bench.log", self.memory_hint, self.stream)

    def facts(self) -> RuntimeFacts:
        return self._facts

    def peak_rss_bytes(self) -> float | None:
        return None  # on the device: the telemetry loop samples its VmHWM

    def interrupt(self) -> None:
        self.process.kill()

    def close(self) -> None:
        pass  # the target stops it by PID and closes its shell in cleanup
