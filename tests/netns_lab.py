"""A lab host in a box: an adb server and an emulated phone in their own network namespace, whose
loopback is not ours. The only way in is a Unix socket (file systems are shared, networks are not)
relayed to the adb server inside, as a lab's adb server is reached over the network.

Run inside `unshare --net` by tests/test_labs_sim.py: `python netns_lab.py SOCKET STATE_DIR SIM_PORT`.
It prints one JSON line ({"serial": ...}) once the phone is attached, then serves until its stdin
closes, and stops everything it started."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """A new network namespace starts with lo down: bring it up (what `ip link set lo up` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(probe, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(listener: socket.socket, connect) -> threading.Thread:
    """Accept on `listener`; for each client, `connect()` the other side and copy bytes both ways."""

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = connect()
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # connected: an idle stream (a held shell) stays open, as through socat
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def main(socket_path: str, state_dir: str, sim_port: str) -> int:
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from bench.android import adb
    from bench.sim import control

    loopback_up()
    server = adb.Server("127.0.0.1", 5037)  # the lab's own default port, on the lab's own loopback
    os.environ[adb.SERVER_PORT_ENV] = "5037"
    adb.ensure_server(server=server)
    info = control.start(Path(state_dir), name=f"lab-{os.getpid()}", port=int(sim_port), settings=())
    try:
        adb.connect(info.serial, server=server)
        adb.wait_for_state(info.serial, server=server)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        listener.listen(16)
        relay(listener, lambda: socket.create_connection(("127.0.0.1", 5037), timeout=10))
        print(json.dumps({"serial": info.serial, "sim_port": info.port}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
        listener.close()
    finally:
        adb.disconnect(info.serial, server=server)
        control.stop(info)
        subprocess.run([adb.adb_binary(), "-P", "5037", "kill-server"], capture_output=True, timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
