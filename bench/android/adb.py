"""The only module that talks to adbutils (and the adb server). Every call has a timeout; errors
come out as AdbFailure with the serial, the command and what adb said."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BenchError

DEFAULT_TIMEOUT_S = 30.0
SYNC_CHUNK = 64 * 1024  # the sync protocol's largest DATA payload
SERVER_PORT_ENV = "ANDROID_ADB_SERVER_PORT"
SERVER_ADDRESS_ENV = "ANDROID_ADB_SERVER_ADDRESS"
SERVER_SOCKET_ENV = "ADB_SERVER_SOCKET"   # tcp:HOST:PORT, as adb itself reads it
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What adbutils raises when adb or the device goes away mid-call: its own errors, socket errors,
    and EOFError from a connection closed under a read."""
    import adbutils

    return (adbutils.AdbError, adbutils.AdbTimeout, OSError, EOFError)


class AdbFailure(BenchError):
    """adb or the device did not do what was asked."""

    exit_code = 3

    def __init__(self, message: str, serial: str | None = None, command: str | None = None, output: str = "",
                 hint: str | None = None):
        detail = f"{message}" + (f" [{serial}]" if serial else "") + (f" running `{command}`" if command else "")
        if output:
            detail += f": {output.strip().splitlines()[-1][:200]}" if output.strip() else ""
        super().__init__(detail, hint)
        self.serial, self.command, self.output = serial, command, output


class AdbServerUnreachable(AdbFailure):
    """A remote adb server named by the user does not answer: bad input, nothing was written."""

    exit_code = 2


@dataclass(frozen=True)
class Server:
    """An adb server: the local one, or one on another machine (a device farm's, a lab host's)."""

    host: str
    port: int

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS


def parse_server(text: str) -> Server:
    """HOST:PORT, tcp:HOST:PORT (ADB_SERVER_SOCKET's form) or PORT (on this machine)."""
    value = text.strip()
    if value.startswith("tcp:"):
        value = value[4:]
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"'{text}' is not an adb server address", "give HOST:PORT, e.g. 127.0.0.1:5037")
    return Server(host or "127.0.0.1", int(port))


def default_server() -> Server:
    """adb's own conventions: ADB_SERVER_SOCKET=tcp:HOST:PORT, else ANDROID_ADB_SERVER_ADDRESS and
    ANDROID_ADB_SERVER_PORT (default 127.0.0.1:5037)."""
    socket_spec = os.environ.get(SERVER_SOCKET_ENV)
    if socket_spec:
        return parse_server(socket_spec)
    port = os.environ.get(SERVER_PORT_ENV, "5037").strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"{SERVER_PORT_ENV}='{port}' is not a port number",
                         "set it to the adb server's port (1-65535, adb's default is 5037) or unset it")
    return Server(os.environ.get(SERVER_ADDRESS_ENV) or "127.0.0.1", int(port))


def adb_binary() -> str:
    explicit = os.environ.get("BENCH_ADB")
    if explicit:
        return explicit
    try:
        import adbutils

        bundled = adbutils.adb_path()
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except Exception:  # adbutils raises its own error types when no binary is bundled
        pass
    found = shutil.which("adb")
    if found:
        return found
    raise AdbFailure("no adb binary", hint="pip install adbutils (it bundles adb) or apt-get install adb")


def _server_up(server: Server) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=1):
            return True
    except OSError:
        return False


def ensure_server(timeout: float = DEFAULT_TIMEOUT_S, server: Server | None = None) -> None:
    """The adb server answers; a local one is started if needed, a remote one is only checked."""
    server = server or default_server()
    if _server_up(server):
        return
    if not server.local:
        raise AdbServerUnreachable(f"no adb server answers at {server.label}",
                                   hint="start one there (`adb -a -P PORT nodaemon server`) or check --adb-server")
    port = server.port
    command = [adb_binary(), "-P", str(port), "start-server"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AdbFailure("adb start-server timed out", command=" ".join(command)) from None
    if result.returncode != 0 or not _server_up(server):
        raise AdbFailure("the adb server did not start", command=" ".join(command), output=result.stderr)


def client(timeout: float = DEFAULT_TIMEOUT_S, server: Server | None = None):
    import adbutils

    server = server or default_server()
    ensure_server(timeout, server)
    return adbutils.AdbClient(host=server.host, port=server.port, socket_timeout=timeout)


@dataclass(frozen=True)
class Listed:
    serial: str
    state: str  # device | unauthorized | offline | ...
    server: Server | None = None  # None: the default server


def list_devices(timeout: float = 10, server: Server | None = None) -> list[Listed]:
    server = server or default_server()
    try:
        return [Listed(d.serial, d.state, server) for d in client(timeout, server).list()]
    except _transport_errors() as error:
        raise AdbFailure(f"adb devices failed on the adb server at {server.label}", output=str(error)) from None


def connect(address: str, timeout: float = 10, server: Server | None = None) -> str:
    """`adb connect HOST:PORT`: a network device (Wi-Fi adb, a device farm's endpoint) joins the server."""
    try:
        return client(timeout, server).connect(address, timeout=timeout)
    except _transport_errors() as error:
        raise AdbFailure("adb connect failed", serial=address, output=str(error)) from None


def disconnect(address: str, timeout: float = 10, server: Server | None = None) -> None:
    if not _server_up(server or default_server()):
        return  # no server, no connection to undo: never start one just to disconnect
    try:
        client(timeout, server).disconnect(address)
    except _transport_errors():
        pass  # not connected: nothing to undo


def wait_for_state(serial: str, state: str = "device", timeout: float = 20, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        found = {d.serial: d.state for d in list_devices(timeout=5, server=server)}
        last = found.get(serial)
        if last == state:
            return
        time.sleep(0.2)
    raise AdbFailure(f"device is '{last or 'absent'}', not '{state}', after {timeout:.0f} s", serial=serial)


@dataclass(frozen=True)
class ShellResult:
    returncode: int
    stdout: str
    stderr: str


def runs_ours(pid: int, marker: str) -> str:
    """A device-shell condition: process PID is alive and its command line contains `marker`. A
    PID a process left behind may belong to another program by now; only ours gets killed."""
    return f"tr '\\0' ' ' < /proc/{int(pid)}/cmdline 2>/dev/null | grep -qF -- {shlex.quote(marker)}"


class Device:
    """One device by serial. Commands go through shell v2 (exit codes, separate stderr)."""

    def __init__(self, serial: str, timeout: float = DEFAULT_TIMEOUT_S, server: Server | None = None):
        self.serial, self.timeout, self.server = serial, timeout, server or default_server()
        self._device = client(timeout, self.server).device(serial)

    def shell(self, command: str, timeout: float | None = None, check: bool = False) -> ShellResult:
        try:
            result = self._device.shell2(command, timeout=timeout or self.timeout, v2=True)
        except _transport_errors() as error:
            raise AdbFailure("shell failed", serial=self.serial, command=command, output=str(error)) from None
        out = ShellResult(result.returncode, result.stdout, result.stderr)
        if check and out.returncode != 0:
            raise AdbFailure(f"exit {out.returncode}", serial=self.serial, command=command, output=out.stderr or out.stdout)
        return out

    def process_runs(self, pid: int, marker: str, timeout: float = 10) -> bool:
        """Whether PID is alive with `marker` in its command line (see runs_ours)."""
        return self.shell(f"if {runs_ours(pid, marker)}; then echo yes; fi", timeout=timeout).stdout.strip() == "yes"

    def push(self, local: Path, remote: str, on_bytes: Callable[[int], None] | None = None,
             timeout: float | None = None, mode: int = 0o755) -> int:
        """Push a file with the sync protocol's SEND in 64 KiB DATA chunks (adb push's size;
        adbutils' own push sends 4 KiB chunks, about 4x slower); returns bytes sent."""
        size = local.stat().st_size
        command = f"push {local} {remote}"
        try:
            connection = self._device.open_transport(timeout=timeout or self.timeout)
            try:
                connection.send_command("sync:")
                connection.check_okay()
                target = f"{remote},{0o100000 | mode}".encode()
                socket_ = connection.conn
                socket_.sendall(b"SEND" + struct.pack("<I", len(target)) + target)
                with local.open("rb") as handle:
                    while chunk := handle.read(SYNC_CHUNK):
                        socket_.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                socket_.sendall(b"DONE" + struct.pack("<I", int(time.time())))
                reply = connection.read_exact(8)
                if reply[:4] != b"OKAY":
                    length = struct.unpack("<I", reply[4:])[0]
                    message = connection.read_exact(length).decode(errors="replace") if reply[:4] == b"FAIL" else repr(reply)
                    raise AdbFailure("push refused", serial=self.serial, command=command, output=message)
            finally:
                connection.close()
        except _transport_errors() as error:
            raise AdbFailure("push failed", serial=self.serial, command=command, output=str(error)) from None
        return size

    def pull_text(self, remote: str) -> str:
        try:
            return self._device.sync.read_text(remote)
        except _transport_errors() as error:
            raise AdbFailure("pull failed", serial=self.serial, command=f"pull {remote}", output=str(error)) from None

    def open_tcp(self, port: int, timeout: float | None = None) -> socket.socket:
        """A socket to 127.0.0.1:PORT on the device, carried by the adb server's own transport: it
        works the same whether the adb server runs here or on a lab host (where an `adb forward`
        would listen on the lab host's loopback, not ours). ConnectionError when nothing answers."""
        try:
            connection = self._device.open_transport(timeout=timeout or self.timeout)
        except _transport_errors() as error:
            raise ConnectionError(f"no transport to {self.serial}: {error}") from None
        try:
            connection.send_command(f"tcp:{int(port)}")
            connection.check_okay()
        except _transport_errors() as error:
            connection.close()
            raise ConnectionError(f"{self.serial} refused tcp:{port}: {error}") from None
        return connection.conn

    def forward(self, local_port: int, remote_port: int) -> None:
        try:
            self._device.forward(f"tcp:{local_port}", f"tcp:{remote_port}")
        except _transport_errors() as error:
            raise AdbFailure("forward failed", serial=self.serial, output=str(error)) from None

    def forward_remove(self, local_port: int) -> None:
        try:
            self._device.forward_remove(f"tcp:{local_port}", raise_non_found=False)
        except _transport_errors():
            pass  # gone with the device: nothing left to remove

    def forwards(self) -> list[tuple[str, str]]:
        try:
            return [(f.local, f.remote) for f in self._device.forward_list()]
        except _transport_errors():
            return []

    def open_shell_stream(self, command: str, timeout: float | None = None) -> "ShellStream":
        """A long-lived shell v2 session whose stdout is read as it comes (telemetry, servers)."""
        try:
            connection = self._device.open_transport(timeout=timeout or self.timeout)
            connection.send_command(f"shell,v2:{command}")
            connection.check_okay()
        except _transport_errors() as error:
            raise AdbFailure("shell failed", serial=self.serial, command=command, output=str(error)) from None
        return ShellStream(connection)


class ShellStream:
    """Reads shell v2 packets: stdout chunks, stderr chunks, then the exit code."""

    def __init__(self, connection):
        self.connection = connection
        self.exit_code: int | None = None
        self.stderr = bytearray()
        self.error: BaseException | None = None  # why the last read ended without data (a timeout, a drop)

    def read_stdout(self) -> bytes | None:
        """The next stdout bytes; None when the shell has exited or the stream broke."""
        while True:
            try:
                header = self.connection.read_exact(5)
                kind, length = header[0], int.from_bytes(header[1:5], "little")
                data = self.connection.read_exact(length) if length else b""
            except Exception as error:  # adbutils raises AdbError/OSError/socket.timeout when the device goes
                self.error = error
                return None
            if kind == 1:
                return data
            if kind == 2:
                self.stderr += data
            elif kind == 3:
                self.exit_code = data[0] if data else 255
                return None

    def wait_exit(self, timeout: float) -> int | None:
        """Drain the stream until the exit packet; the exit code, or None if none came in time."""
        try:
            self.connection.conn.settimeout(timeout)
        except OSError:
            return self.exit_code
        while self.exit_code is None and self.read_stdout() is not None:
            pass
        return self.exit_code

    def close(self) -> None:
        try:
            self.connection.close()
        except OSError:
            pass
