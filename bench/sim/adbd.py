"""Device side of the ADB transport protocol over TCP (what adbd speaks to the host's adb server).

Messages are a 24-byte header (command, arg0, arg1, data length, data checksum, magic = command ^
0xffffffff) plus payload. Since version 0x01000001 checksums are optional, so none are checked and
0 is sent. Each stream allows one WRTE in flight until the peer's OKAY; services are plugged in
through `ServiceFactory`, which gets a Stream to read from and write to.
"""

from __future__ import annotations

import asyncio
import os
import time
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH, A_STLS = (
    int.from_bytes(name, "little") for name in (b"CNXN", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"AUTH", b"STLS"))
A_VERSION = 0x01000001
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
MAX_PAYLOAD = 256 * 1024
HEADER = struct.Struct("<6I")


@dataclass(frozen=True)
class Banner:
    product: str
    model: str
    device: str
    features: tuple[str, ...] = ("shell_v2", "fixed_push_mkdir")

    def encode(self) -> bytes:
        # Do not advertise stat_v2/ls_v2/sendrecv_v2/delayed_ack: they are not implemented and
        # the host would use them.
        return (f"device::ro.product.name={self.product};ro.product.model={self.model};"
                f"ro.product.device={self.device};features={','.join(self.features)}").encode()


class StreamClosed(Exception):
    pass


class Stream:
    """One ADB stream: bytes from the host arrive in `incoming`; `write` respects flow control."""

    def __init__(self, connection: "Connection", local_id: int, remote_id: int):
        self.connection, self.local_id, self.remote_id = connection, local_id, remote_id
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self._may_send = asyncio.Event()
        self._may_send.set()
        self.closed = False
        self._buffer = bytearray()
        self.opened = asyncio.Event()  # a stream the device opened: set when the host answered

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await self._may_send.wait()
            if self.closed:
                raise StreamClosed()
            chunk, view = view[: self.connection.max_payload], view[self.connection.max_payload:]
            self._may_send.clear()
            await self.connection.send(A_WRTE, self.local_id, self.remote_id, bytes(chunk))

    async def read(self) -> bytes | None:
        """Next chunk from the host, or None once the host closed the stream."""
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        return await self.incoming.get()

    async def read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = await self.incoming.get()
            if chunk is None:
                raise StreamClosed()
            self._buffer += chunk
        data, self._buffer = bytes(self._buffer[:count]), self._buffer[count:]
        return data

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._may_send.set()
            await self.connection.send(A_CLSE, self.local_id, self.remote_id)
            self.connection.streams.pop(self.local_id, None)

    # -- called by the connection --------------------------------------------------------------
    def acked(self, remote_id: int) -> None:
        if not self.remote_id:  # the host's answer to an OPEN the device sent
            self.remote_id = remote_id
            self.opened.set()
        self._may_send.set()

    def host_closed(self) -> None:
        self.closed = True
        self.opened.set()
        self._may_send.set()
        try:
            self.incoming.put_nowait(None)
        except asyncio.QueueFull:
            pass


ServiceFactory = Callable[[str], "Callable[[Stream], Awaitable[None]] | None"]


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, banner: Banner,
                 services: ServiceFactory, unauthorized: bool = False):
        self.reader, self.writer, self.banner, self.services = reader, writer, banner, services
        self.unauthorized = unauthorized
        self.streams: dict[int, Stream] = {}
        self.max_payload = MAX_PAYLOAD
        self._next_id = 1
        self._send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()

    async def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        async with self._send_lock:
            self.writer.write(HEADER.pack(command, arg0, arg1, len(data), 0, command ^ 0xFFFFFFFF) + data)
            await self.writer.drain()

    async def run(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(HEADER.size)
                command, arg0, arg1, length, _checksum, magic = HEADER.unpack(header)
                if magic != command ^ 0xFFFFFFFF:
                    break  # not ADB: drop the connection as adbd does
                data = await self.reader.readexactly(length) if length else b""
                await self.dispatch(command, arg0, arg1, data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for stream in list(self.streams.values()):
                stream.host_closed()
            for task in list(self.tasks):
                task.cancel()
            self.writer.close()

    async def open_to_host(self, service: str, timeout_s: float = 10) -> Stream | None:
        """A stream the device opens toward the host (what adbd does for `adb reverse`): the host's
        adb server connects `service` (tcp:PORT) on its side. None when it refuses."""
        local_id = self._next_id
        self._next_id += 1
        stream = Stream(self, local_id, 0)
        self.streams[local_id] = stream
        await self.send(A_OPEN, local_id, 0, service.encode() + b"\0")
        try:
            await asyncio.wait_for(stream.opened.wait(), timeout_s)
        except asyncio.TimeoutError:
            stream.closed = True
        if stream.closed:
            self.streams.pop(local_id, None)
            return None
        return stream

    async def dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = min(MAX_PAYLOAD, arg1 or MAX_PAYLOAD)
            if self.unauthorized:
                # A phone whose user has not accepted this host's key: ask for a signature, and
                # never accept one. The adb server then lists the device as "unauthorized".
                await self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            await self.send(A_CNXN, A_VERSION, self.max_payload, self.banner.encode())
        elif command == A_AUTH:
            if arg0 == AUTH_SIGNATURE:
                await self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            # AUTH_RSAPUBLICKEY: a real phone shows its prompt now; nobody accepts it here.
        elif command == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", errors="replace")
            handler = self.services(service)
            if handler is None:
                await self.send(A_CLSE, 0, arg0)
                return
            local_id = self._next_id
            self._next_id += 1
            stream = Stream(self, local_id, arg0)
            self.streams[local_id] = stream
            await self.send(A_OKAY, local_id, arg0)
            task = asyncio.create_task(self._serve(handler, stream))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is None:
                await self.send(A_CLSE, arg1, arg0)
                return
            # Acknowledge only once the service has room: this is the flow control back to the host.
            await stream.incoming.put(data)
            await self.send(A_OKAY, arg1, arg0)
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.acked(arg0)
        elif command == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.host_closed()
                if not stream.closed:
                    stream.closed = True
                await self.send(A_CLSE, arg1, arg0)
        # STLS is never asked for: the banner answers CNXN directly.

    async def _serve(self, handler, stream: Stream) -> None:
        try:
            await handler(stream)
        except (StreamClosed, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not stream.closed and not self.writer.is_closing():
                try:
                    await stream.close()
                except ConnectionError:
                    pass


class Link:
    """The "cable": the live connections, and whether the phone can be reached at all. Faults
    (a pulled cable, a reboot) cut it for a while."""

    def __init__(self):
        self.connections: set[Connection] = set()
        self.down_until = 0.0

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        for connection in list(self.connections):
            connection.writer.close()

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until


async def serve(host: str, port: int, banner: Banner, services: ServiceFactory,
                unauthorized: bool = False, link: Link | None = None) -> asyncio.base_events.Server:
    link = link or Link()

    async def on_connect(reader, writer):
        if link.down:
            writer.close()  # no phone at the other end of the cable right now
            return
        connection = Connection(reader, writer, banner, services, unauthorized)
        link.connections.add(connection)
        try:
            await connection.run()
        finally:
            link.connections.discard(connection)

    return await asyncio.start_server(on_connect, host, port, reuse_address=True)
