"""The emulated phone's process: `python -m bench.sim.server --name N --port P ...`, started in the
background by `bench sim start`. It serves ADB on 127.0.0.1:PORT, runs the physics loop, and on
SIGTERM resumes and kills every process of its sandbox, ends the namespace and removes its root."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from ..files import atomic_write_json
from .adbd import Banner, Link, serve
from .physics import Lmkd, PhoneState, PhysicsLoop, namespace_members
from .profile import abi, load_profile, parse_overrides
from .sandbox import Sandbox
from .services import Services


def sim_dir(cache: Path, name: str) -> Path:
    return cache / "sim" / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sim.server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--unplugged", action="store_true")
    parser.add_argument("--unauthorized", action="store_true", help="never accept the host's key (tests)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    state_dir: Path = args.state_dir
    profile = load_profile(args.profile, parse_overrides(args.set))
    cpus = os.cpu_count() or 1
    sandbox = Sandbox(state_dir / "root", cpus, args.replay, abi=abi(profile), qemu_cpu=profile.qemu_cpu)
    sandbox.create()
    sandbox.set_quota(profile.data_quota_bytes)
    sandbox.start()
    state = PhoneState(profile, cpus, usb_plugged=not args.unplugged)
    sandbox.publish(state)
    serial = f"127.0.0.1:{args.port}"
    props = profile.props
    banner = Banner(product=props.get("ro.product.name", "bench_sim"), model=props.get("ro.product.model", "Bench Sim").replace(" ", "_"),
                    device=props.get("ro.product.device", "benchsim"))

    def apply_commands() -> None:
        for path, words in sandbox.take_commands():
            if words[:1] == ["cmd"]:
                output = state.cmd_command(words[1:])
            else:
                output = state.battery_command(words[1:] if words[:1] == ["battery"] else words)
            if output:
                path.with_suffix(".out").write_text(output)
            path.unlink(missing_ok=True)

    physics = PhysicsLoop(state, sandbox.mount_ns, {sandbox.holder.pid}, sandbox.publish,
                          lmkd=Lmkd(profile.lmk_kill_above_bytes, sandbox.append_log))
    link = Link()
    faults_dir = state_dir / "faults"
    faults_dir.mkdir(exist_ok=True)

    def kill_sandbox_processes() -> int:
        """Everything that runs inside the sandbox is ours: resume it (the throttle may have stopped
        it) and kill it by PID. Returns how many there were."""
        physics.throttle.resume()
        members = namespace_members(sandbox.mount_ns, {sandbox.holder.pid})
        for pid in members:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        return len(members)

    def apply_fault(fault: dict) -> None:
        """Injected by tests (control.inject): what a pulled cable, a reboot or a full disk does."""
        kind = fault.get("fault")
        offline_s = float(fault.get("offline_s", 3.0))
        if kind == "cable":
            link.cut(offline_s)
        elif kind == "reboot":
            link.cut(offline_s)
            kill_sandbox_processes()
            sandbox.clear_log()
            state.battery_command(["reset"])
        elif kind == "disk-full":
            sandbox.set_quota(sandbox.data_used_bytes())
        elif kind == "memory-pressure":  # free memory drops: lmkd now kills past limit_mb
            physics.lmkd.limit_bytes = int(float(fault.get("limit_mb", 64)) * 2**20)
        elif kind == "rail-glitch":  # the dumpsys shim fails this many energy-meter dumps
            sandbox.write_state("rail_glitch", f"{int(fault.get('count', 1))}\n")

    async def watch_faults() -> None:
        while True:
            for path in sorted(faults_dir.glob("*.json")):
                try:
                    apply_fault(json.loads(path.read_text()))
                finally:
                    path.unlink(missing_ok=True)
            await asyncio.sleep(0.05)

    physics_thread = threading.Thread(target=physics.run, args=(apply_commands,), name="physics", daemon=True)
    processes: set = set()

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await serve("127.0.0.1", args.port, banner, Services(sandbox, processes), args.unauthorized, link)
        physics_thread.start()
        watcher = asyncio.create_task(watch_faults())
        atomic_write_json(state_dir / "sim.json", {
            "schema_version": 1, "name": args.name, "port": args.port, "serial": serial, "pid": os.getpid(),
            "profile": profile.name, "replay": str(args.replay) if args.replay else None,
            "replay_missing": sandbox.missing_replay, "unplugged": args.unplugged, "root": str(sandbox.root),
            "shell": sandbox.shell, "holder_pid": sandbox.holder.pid, "started_at": time.time(),
        })
        await stop.wait()
        watcher.cancel()
        server.close()

    try:
        asyncio.run(amain())
    finally:
        physics.stop()
        physics_thread.join(timeout=5) if physics_thread.is_alive() else None
        physics.throttle.resume()
        if sandbox.mount_ns:  # before the namespace goes
            for _ in range(3):
                if not kill_sandbox_processes():
                    break
                time.sleep(0.1)
        sandbox.stop()
        shutil.rmtree(sandbox.root, ignore_errors=True)
        (state_dir / "sim.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
