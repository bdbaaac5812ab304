"""adbd services of the emulated phone: shell (v1 and v2), exec, sync, tcp: for forwards, and
reverse: (device ports whose connections adbd carries back to the host, as `adb reverse` asks)."""

from __future__ import annotations

import asyncio
import os
import re
import struct
from typing import Callable

from .adbd import Stream, StreamClosed
from .sandbox import Sandbox

SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = range(6)
SYNC_DATA_MAX = 64 * 1024


def _packet(kind: int, data: bytes) -> bytes:
    return struct.pack("<BI", kind, len(data)) + data


_TOKEN_ID = re.compile(rb'("id":\s*)(\d+)')


def corrupt_token_ids(chunk: bytes) -> bytes:
    """The `tokens-corrupt` fault: every token id llama-server sends has its last digit moved by one,
    as a backend that computes the wrong tokens would send them. Lengths stay, so HTTP framing holds."""
    return _TOKEN_ID.sub(lambda m: m.group(1) + m.group(2)[:-1] + str((int(m.group(2)[-1:]) + 1) % 10).encode(), chunk)


class Services:
    def __init__(self, sandbox: Sandbox, processes: set[asyncio.subprocess.Process]):
        self.sandbox, self.processes = sandbox, processes
        self.reverses: dict[str, tuple[asyncio.base_events.Server, str]] = {}  # "tcp:DEV" -> (listener, "tcp:HOST")

    def __call__(self, service: str):
        if service.startswith("shell") and ":" in service:
            options, command = service.split(":", 1)
            v2 = "v2" in options.split(",")[1:]
            return lambda stream: self.shell(stream, command or None, v2)
        if service.startswith("exec:"):
            return lambda stream: self.shell(stream, service[5:] or None, False, merge_stderr=False)
        if service == "sync:":
            return self.sync
        if service.startswith("tcp:"):
            parts = service.split(":")
            try:
                port = int(parts[1])
            except (IndexError, ValueError):
                return None
            return lambda stream: self.tcp(stream, port)
        if service.startswith("reverse:"):
            return lambda stream: self.reverse(stream, service[len("reverse:"):])
        if service.split(":", 1)[0] in ("root", "unroot", "remount", "reboot", "disable-verity", "enable-verity"):
            return lambda stream: stream.write(b"adbd cannot do that on the bench sim\n")
        return None

    # -- shell -----------------------------------------------------------------------------------
    async def shell(self, stream: Stream, command: str | None, v2: bool, merge_stderr: bool = True) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.sandbox.argv(command), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if v2 or not merge_stderr else asyncio.subprocess.STDOUT,
            start_new_session=True)
        self.processes.add(process)
        try:
            pumps = [asyncio.create_task(self._pump_out(process.stdout, stream, SHELL_STDOUT if v2 else None))]
            if process.stderr is not None:
                pumps.append(asyncio.create_task(self._pump_out(process.stderr, stream, SHELL_STDERR if v2 else None)))
            feeder = asyncio.create_task(self._feed_in(stream, process, v2))
            await asyncio.gather(*pumps)
            code = await process.wait()
            feeder.cancel()
            if v2:
                # adbd reports a signal as 128 + signal number, like a shell's $?
                status = 128 - code if code < 0 else code
                await stream.write(_packet(SHELL_EXIT, bytes([status & 0xFF])))
        finally:
            if process.returncode is None:
                # The host went away (adb killed, Ctrl-C): end what this shell started.
                try:
                    os.killpg(process.pid, 9)
                except ProcessLookupError:
                    pass
                await process.wait()
            self.processes.discard(process)

    async def _pump_out(self, pipe: asyncio.StreamReader, stream: Stream, kind: int | None) -> None:
        while chunk := await pipe.read(64 * 1024):
            await stream.write(_packet(kind, chunk) if kind is not None else chunk)

    async def _feed_in(self, stream: Stream, process, v2: bool) -> None:
        try:
            while True:
                if v2:
                    kind, length = struct.unpack("<BI", await stream.read_exactly(5))
                    data = await stream.read_exactly(length) if length else b""
                    if kind == SHELL_STDIN and data:
                        process.stdin.write(data)
                        await process.stdin.drain()
                    elif kind == SHELL_CLOSE_STDIN:
                        process.stdin.close()
                else:
                    data = await stream.read()
                    if data is None:
                        break
                    process.stdin.write(data)
                    await process.stdin.drain()
        except (StreamClosed, ConnectionError, BrokenPipeError):
            pass
        if stream.closed and process.returncode is None:
            try:
                os.killpg(process.pid, 9)  # the host closed the stream: like adbd, end the shell
            except ProcessLookupError:
                pass

    # -- sync v1 ---------------------------------------------------------------------------------
    async def sync(self, stream: Stream) -> None:
        while True:
            try:
                header = await stream.read_exactly(8)
            except StreamClosed:
                return
            command, length = header[:4], struct.unpack("<I", header[4:])[0]
            argument = (await stream.read_exactly(length)).decode("utf-8", errors="replace") if length else ""
            if command == b"QUIT":
                return
            if command == b"STAT":
                await stream.write(b"STAT" + self._stat(argument))
            elif command == b"LIST":
                await self._list(stream, argument)
            elif command == b"SEND":
                await self._receive_file(stream, argument)
            elif command == b"RECV":
                await self._send_file(stream, argument)
            else:
                await self._fail(stream, f"unknown sync command {command!r}")
                return

    def _stat(self, device_path: str) -> bytes:
        path = self.sandbox.host_path(device_path)
        try:
            info = os.stat(path) if path is not None else None
        except OSError:
            info = None
        if info is None:
            return struct.pack("<III", 0, 0, 0)
        return struct.pack("<III", info.st_mode & 0xFFFFFFFF, info.st_size & 0xFFFFFFFF, int(info.st_mtime))

    async def _list(self, stream: Stream, device_path: str) -> None:
        path = self.sandbox.host_path(device_path)
        if path is not None and path.is_dir():
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                name = entry.name.encode()
                await stream.write(b"DENT" + struct.pack("<IIII", info.st_mode & 0xFFFFFFFF, info.st_size & 0xFFFFFFFF,
                                                         int(info.st_mtime), len(name)) + name)
        await stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    async def _fail(self, stream: Stream, message: str) -> None:
        data = message.encode()
        await stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    async def _receive_file(self, stream: Stream, argument: str) -> None:
        device_path, _, mode_text = argument.rpartition(",")
        if not device_path:
            device_path, mode_text = argument, "33188"
        path = self.sandbox.host_path(device_path)
        error = None
        handle = None
        temp = None
        if path is None:
            error = f"secure_mkdirs failed: Read-only file system ({device_path})"
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # fixed_push_mkdir
                temp = path.with_name(f".{path.name}.adbpush")
                handle = open(temp, "wb")
            except OSError as failure:
                error = f"couldn't create file: {failure.strerror}"
        mtime = None
        quota = self.sandbox.data_quota_bytes
        room = quota - self.sandbox.data_used_bytes() if quota is not None else None
        while True:
            kind = await stream.read_exactly(4)
            size = struct.unpack("<I", await stream.read_exactly(4))[0]
            if kind == b"DATA":
                data = await stream.read_exactly(size)
                if room is not None and handle is not None and len(data) > room:
                    # /data is full: the write fails, the rest of the transfer is drained, then FAIL
                    handle.close()
                    handle = None
                    temp.unlink(missing_ok=True)
                    error = f"write failed: No space left on device ({device_path})"
                if handle is not None:
                    handle.write(data)
                    if room is not None:
                        room -= len(data)
            elif kind == b"DONE":
                mtime = size
                break
            else:
                error = error or f"unexpected {kind!r} during SEND"
                break
        if handle is not None:
            handle.close()
            if error is None:
                try:
                    mode = int(mode_text) & 0o7777 if mode_text.isdigit() else 0o644
                    os.chmod(temp, mode or 0o644)
                    os.replace(temp, path)
                    if mtime:
                        os.utime(path, (mtime, mtime))
                except OSError as failure:
                    error = f"couldn't write file: {failure.strerror}"
            if temp is not None and temp.exists():
                temp.unlink()
        if error:
            await self._fail(stream, error)
        else:
            await stream.write(b"OKAY" + struct.pack("<I", 0))

    async def _send_file(self, stream: Stream, device_path: str) -> None:
        path = self.sandbox.host_path(device_path)
        if path is None or not path.is_file():
            await self._fail(stream, f"remote object '{device_path}' does not exist")
            return
        try:
            handle = open(path, "rb")
        except OSError as failure:
            await self._fail(stream, f"remote open failed: {failure.strerror}")
            return
        with handle:
            while chunk := handle.read(SYNC_DATA_MAX):
                await stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        await stream.write(b"DONE" + struct.pack("<I", 0))

    # -- forward ---------------------------------------------------------------------------------
    async def tcp(self, stream: Stream, port: int) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, asyncio.TimeoutError):
            return  # closing the stream tells the host the connect failed
        corrupt = self.sandbox.read_state("tokens_corrupt").strip() == "1"
        await self._bridge(stream, reader, writer, rewrite=corrupt_token_ids if corrupt else None)

    # -- reverse -------------------------------------------------------------------------------
    async def reverse(self, stream: Stream, request: str) -> None:
        """adbd's reverse service: forward:[norebind:]tcp:DEV;tcp:HOST, killforward:tcp:DEV,
        killforward-all, list-forward. adb.cpp's handle_forward_request answers with one OKAY (the
        host's adb server sends the other, for the connect) and the listing without one."""
        okay = b"OKAY"
        if request == "list-forward":
            listing = "".join(f"host {device} {host}\n" for device, (_, host) in self.reverses.items()).encode()
            await stream.write(f"{len(listing):04x}".encode() + listing)
        elif request == "killforward-all":
            for device in list(self.reverses):
                self._stop_reverse(device)
            await stream.write(okay)
        elif request.startswith("killforward:"):
            device = request[len("killforward:"):]
            if device not in self.reverses:
                await self._fail_reply(stream, f"listener '{device}' not found")
                return
            self._stop_reverse(device)
            await stream.write(okay)
        elif request.startswith("forward:"):
            spec = request[len("forward:"):]
            norebind = spec.startswith("norebind:")
            device, _, host = spec.removeprefix("norebind:").partition(";")
            if not device.startswith("tcp:") or not device[4:].isdigit() or not host:
                await self._fail_reply(stream, f"cannot bind listener: unsupported '{spec}' (the sim does tcp:PORT)")
                return
            if device in self.reverses:
                if norebind:
                    await self._fail_reply(stream, "cannot rebind existing socket")
                    return
                self._stop_reverse(device)
            connection = stream.connection

            async def on_connect(reader, writer):
                carried = await connection.open_to_host(host)
                if carried is None:
                    writer.close()
                    return
                await self._bridge(carried, reader, writer)
                if not carried.closed:
                    await carried.close()

            try:
                listener = await asyncio.start_server(on_connect, "127.0.0.1", int(device[4:]), reuse_address=True)
            except OSError as error:
                await self._fail_reply(stream, f"cannot bind listener: {error.strerror}")
                return
            self.reverses[device] = (listener, host)
            await stream.write(okay)
        else:
            await self._fail_reply(stream, f"unknown reverse request '{request}'")

    def _stop_reverse(self, device: str) -> None:
        listener, _ = self.reverses.pop(device)
        listener.close()

    def stop_reverses(self) -> None:
        for device in list(self.reverses):
            self._stop_reverse(device)

    @staticmethod
    async def _fail_reply(stream: Stream, message: str) -> None:
        data = message.encode()
        await stream.write(b"FAIL" + f"{len(data):04x}".encode() + data)

    async def _bridge(self, stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      rewrite: Callable[[bytes], bytes] | None = None) -> None:
        """Bytes both ways between an ADB stream and a TCP connection, until either side ends;
        `rewrite` alters what the device's side sends (a fault)."""
        async def upstream():
            try:
                while (data := await stream.read()) is not None:
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        async def downstream():
            while chunk := await reader.read(64 * 1024):
                await stream.write(rewrite(chunk) if rewrite else chunk)

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        writer.close()
