"""Start, stop and list emulated phones as background processes (`bench sim`). Process
management only: connecting them to the adb server is the CLI's job, through android/adb."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchError, UsageError
from .profile import known_profiles

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADB_SCAN_PORTS = range(5555, 5586)  # the adb server probes these by itself: keep sims off them
FIRST_PORT = 6520
START_TIMEOUT_S = 30


class SimError(BenchError):
    exit_code = 3


@dataclass(frozen=True)
class SimInfo:
    name: str
    port: int
    serial: str
    pid: int
    profile: str
    state_dir: Path
    replay: str | None
    replay_missing: tuple[str, ...]
    unplugged: bool


def check_name(name: str) -> str:
    """A sim's name becomes a folder under the cache: letters, digits, '.', '_' and '-' only,
    never '..' (a name like ../.. would reach outside the cache)."""
    if not NAME.match(name) or ".." in name:
        raise UsageError(f"invalid sim name {name!r}",
                         "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (no '..')")
    return name


def sims_root(cache: Path) -> Path:
    return cache / "sim"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _info(state_dir: Path) -> SimInfo | None:
    try:
        data = json.loads((state_dir / "sim.json").read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(data["pid"])):
        return None
    return SimInfo(data["name"], int(data["port"]), data["serial"], int(data["pid"]), data["profile"], state_dir,
                   data.get("replay"), tuple(data.get("replay_missing") or ()), bool(data.get("unplugged")))


def running(cache: Path) -> list[SimInfo]:
    root = sims_root(cache)
    found = [_info(d) for d in sorted(root.iterdir())] if root.is_dir() else []
    return [info for info in found if info is not None]


def plan_start(cache: Path, *, name: str = "sim", port: int | None = None, profile: str = "default",
               replay: Path | None = None, passed: frozenset[int] = frozenset()) -> int:
    """Check a start request (one-line UsageError for each problem) and return the port to use
    (the first free one not in `passed` when none is asked for)."""
    check_name(name)
    if profile not in known_profiles():
        from ..config import closest

        raise UsageError(f"unknown sim profile '{profile}'", f"closest known: {closest(profile, known_profiles())}")
    current = running(cache)
    for info in current:
        if info.name == name:
            raise UsageError(f"a sim named '{name}' is already running on port {info.port}",
                             f"stop it with `bench sim stop --name {name}` or pick another --name")
    if replay is not None and not replay.is_dir():
        raise UsageError(f"replay folder {replay} does not exist", "give a folder written by `bench capture`")
    if port is not None:
        if port in ADB_SCAN_PORTS:
            raise UsageError(f"port {port} is in 5555-5585, which the adb server scans on its own",
                             "pick a port outside that range, e.g. --port 6520")
        if any(info.port == port for info in current):
            raise UsageError(f"port {port} is used by another sim", "pick another --port")
        if not _port_free(port):
            raise UsageError(f"port {port} is in use on 127.0.0.1", "pick another --port")
        return port
    taken = {info.port for info in current} | passed
    free = next((p for p in range(FIRST_PORT, FIRST_PORT + 500) if p not in taken and _port_free(p)), None)
    if free is None:
        raise UsageError(f"no free port in {FIRST_PORT}-{FIRST_PORT + 499} on 127.0.0.1", "stop a sim or pass --port")
    return free


FAULTS = ("cable", "reboot", "disk-full", "memory-pressure", "rail-glitch", "performance-stuck", "stall", "clock-jump",
          "tokens-corrupt")


def inject(info: SimInfo, fault: str, timeout: float = 5.0, **params) -> None:
    """Make the running sim suffer a fault now: `cable` (the cable is pulled for offline_s),
    `reboot` (every process on the phone dies and it is unreachable for offline_s), `disk-full`
    (/data has no room left), `memory-pressure` (the low-memory killer kills any process above
    limit_mb), `rail-glitch` (the next `count` energy-meter dumps fail, as a busy HAL's do),
    `performance-stuck` (the next `count` requests to turn fixed performance off fail), `stall`
    (the processes whose command line holds `match` are frozen for seconds_s, as a starved or dozing
    phone's are), `clock-jump` (a sim started with clock.adjustable=true moves its wall clock by
    `seconds`, as network time or a user does), `tokens-corrupt` (every token id llama-server sends
    reaches the host altered, as from a backend that computes the wrong tokens). Returns once the sim
    has applied it."""
    if fault not in FAULTS:
        raise UsageError(f"unknown fault '{fault}'", f"use one of: {', '.join(FAULTS)}")
    folder = info.state_dir / "faults"
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.monotonic_ns()}.json"
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"fault": fault, **params}))
    temp.rename(path)
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            raise SimError(f"sim '{info.name}' did not apply the fault '{fault}' within {timeout:.0f} s")
        time.sleep(0.02)


def start(cache: Path, *, name: str = "sim", port: int | None = None, profile: str = "default",
          replay: Path | None = None, unplugged: bool = False, unauthorized: bool = False,
          settings: tuple[str, ...] = ()) -> SimInfo:
    chosen = plan_start(cache, name=name, port=port, profile=profile, replay=replay)
    from .profile import abi, load_profile, parse_overrides

    loaded = load_profile(profile, parse_overrides(list(settings)))  # a bad --set fails here, in one line
    from .sandbox import QEMU_CANDIDATES

    if abi(loaded) == "arm64-v8a" and platform.machine() not in ("aarch64", "arm64") and \
            not any(shutil.which(name) for name in QEMU_CANDIDATES):
        raise UsageError(f"sim profile '{profile}' runs aarch64 binaries under qemu-user, which is not installed",
                         "apt-get install qemu-user-static")
    state_dir = sims_root(cache) / name
    state_dir.mkdir(parents=True, exist_ok=True)
    passed: set[int] = set()
    while True:
        try:
            return _launch(state_dir, name, chosen, profile, replay, unplugged, unauthorized, settings)
        except PortTaken:
            # a free port chosen here can be taken before the sim binds it (another sim starting
            # at the same moment): the next one is tried; a port the user asked for is theirs to change
            if port is not None:
                raise SimError(f"port {port} was taken while the sim started", "pick another --port") from None
            passed.add(chosen)
            chosen = plan_start(cache, name=name, profile=profile, replay=replay, passed=frozenset(passed))


class PortTaken(SimError):
    """The sim could not listen on the port chosen for it: something else took it first."""


def _launch(state_dir: Path, name: str, port: int, profile: str, replay: Path | None, unplugged: bool,
            unauthorized: bool, settings: tuple[str, ...]) -> SimInfo:
    log = state_dir / "sim.log"
    command = [sys.executable, "-m", "bench.sim.server", "--name", name, "--port", str(port), "--profile", profile,
               "--state-dir", str(state_dir)]
    if replay is not None:
        command += ["--replay", str(replay.resolve())]
    if unplugged:
        command.append("--unplugged")
    if unauthorized:
        command.append("--unauthorized")
    for setting in settings:
        command += ["--set", setting]
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle,
                                   start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = _info(state_dir)
        if info is not None and info.pid == process.pid:
            return info
        if process.poll() is not None:
            tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
            if "address already in use" in tail[0].lower():
                raise PortTaken(f"port {port} is in use on 127.0.0.1")
            raise SimError(f"the sim exited during start-up: {tail[0]}", f"see {log}")
        time.sleep(0.05)
    stop_process(process.pid)
    raise SimError(f"the sim did not start within {START_TIMEOUT_S} s", f"see {log}")


def stop_process(pid: int, timeout: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(info: SimInfo) -> None:
    stop_process(info.pid)
