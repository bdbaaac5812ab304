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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.sim.server")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--unplugged", action="store_true")
    parser.add_argument("--unauthorized", action="store_true", help="never accept the host's key (tests)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return parser.parse_args(argv)


class _Phone:
    """One emulated phone: its sandbox, its physical state and physics loop, its ADB link."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.state_dir: Path = args.state_dir
        self.profile = load_profile(args.profile, parse_overrides(args.set))
        cpus = os.cpu_count() or 1
        self.sandbox = Sandbox(self.state_dir / "root", cpus, args.replay, abi=abi(self.profile), su=self.profile.su,
                               qemu_cpu=self.profile.qemu_cpu, vulkan=self.profile.gpu_vulkan)
        self.sandbox.create()
        self.sandbox.set_quota(self.profile.data_quota_bytes)
        self.sandbox.start(pid_namespace=self.profile.pid_namespace)
        if self.profile.adjustable_clock:
            self.sandbox.adjustable_clock()
        self.state = PhoneState(self.profile, cpus, usb_plugged=not args.unplugged)
        self.sandbox.publish(self.state)
        self.physics = PhysicsLoop(self.state, self.sandbox.mount_ns, self.sandbox.own_pids, self.sandbox.publish,
                                   lmkd=Lmkd(self.profile.lmk_kill_above_bytes, self.sandbox.append_log))
        self.physics_thread = threading.Thread(target=self.physics.run, args=(self.apply_commands,), name="physics",
                                               daemon=True)
        self.link = Link()
        self.faults_dir = self.state_dir / "faults"
        self.faults_dir.mkdir(exist_ok=True)

    def banner(self) -> Banner:
        props = self.profile.props
        return Banner(product=props.get("ro.product.name", "bench_sim"),
                      model=props.get("ro.product.model", "Bench Sim").replace(" ", "_"),
                      device=props.get("ro.product.device", "benchsim"))

    def apply_commands(self) -> None:
        """`cmd` and `dumpsys battery` commands the sandbox's shims queued for the phone's state."""
        for path, words in self.sandbox.take_commands():
            if words[:1] == ["drop_caches"]:
                output = ""
                self.sandbox.drop_page_cache()
            elif words[:1] == ["cmd"]:
                output = self.state.cmd_command(words[1:])
            else:
                output = self.state.battery_command(words[1:] if words[:1] == ["battery"] else words)
            if output:
                path.with_suffix(".out").write_text(output)
            path.unlink(missing_ok=True)

    def kill_sandbox_processes(self) -> int:
        """Everything that runs inside the sandbox is ours: resume it (the throttle may have stopped
        it) and kill it by PID. Returns how many there were."""
        self.physics.throttle.resume()
        members = namespace_members(self.sandbox.mount_ns, self.sandbox.own_pids)
        for pid in members:
            for signum in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
        return len(members)

    def apply_fault(self, fault: dict) -> None:
        """Injected by tests (control.inject): what a pulled cable, a reboot or a full disk does."""
        kind = fault.get("fault")
        offline_s = float(fault.get("offline_s", 3.0))
        if kind == "cable":
            self.link.cut(offline_s)
        elif kind == "reboot":
            self.link.cut(offline_s)
            self.kill_sandbox_processes()
            self.sandbox.clear_log()
            self.state.battery_command(["reset"])
        elif kind == "disk-full":
            self.sandbox.set_quota(self.sandbox.data_used_bytes())
        elif kind == "memory-pressure":  # free memory drops: lmkd now kills past limit_mb
            self.physics.lmkd.limit_bytes = int(float(fault.get("limit_mb", 64)) * 2**20)
        elif kind == "rail-glitch":  # the dumpsys shim fails this many energy-meter dumps
            self.sandbox.write_state("rail_glitch", f"{int(fault.get('count', 1))}\n")
        elif kind == "performance-stuck":  # the power HAL fails this many requests to leave fixed performance
            self.sandbox.write_state("performance_stuck", f"{int(fault.get('count', 1))}\n")
        elif kind == "tokens-corrupt":  # llama-server's token ids reach the host altered (a broken backend)
            self.sandbox.write_state("tokens_corrupt", "1\n")
        elif kind == "clock-jump":  # network time or a user moves the wall clock
            self.sandbox.jump_clock(float(fault.get("seconds", 5.0)))
        elif kind == "stall":
            self.stall(str(fault.get("match", "telemetry.sh")), float(fault.get("seconds_s", 2.0)))

    def stall(self, match: str, seconds_s: float) -> None:
        """Freeze the sandbox's processes whose command line holds `match` for seconds_s."""
        frozen = []
        for pid in namespace_members(self.sandbox.mount_ns, self.sandbox.own_pids):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if match.encode() not in handle.read():
                        continue
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            except OSError:
                continue
        self.sandbox.append_log("bench.sim", f"stall: froze {frozen} ({match}) for {seconds_s:.1f} s")

        def thaw() -> None:
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass
        timer = threading.Timer(seconds_s, thaw)
        timer.daemon = True
        timer.start()

    async def watch_faults(self) -> None:
        while True:
            for path in sorted(self.faults_dir.glob("*.json")):
                try:
                    self.apply_fault(json.loads(path.read_text()))
                finally:
                    path.unlink(missing_ok=True)
            await asyncio.sleep(0.05)

    def write_info(self) -> None:
        args, sandbox = self.args, self.sandbox
        atomic_write_json(self.state_dir / "sim.json", {
            "schema_version": 1, "name": args.name, "port": args.port, "serial": f"127.0.0.1:{args.port}",
            "pid": os.getpid(), "profile": self.profile.name, "replay": str(args.replay) if args.replay else None,
            "replay_missing": sandbox.missing_replay, "unplugged": args.unplugged, "root": str(sandbox.root),
            "shell": sandbox.shell, "holder_pid": sandbox.init_pid, "pid_namespace": sandbox.pid_namespace, "started_at": time.time(),
        })

    async def serve_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await serve("127.0.0.1", self.args.port, self.banner(), Services(self.sandbox, set()),
                             self.args.unauthorized, self.link)
        self.physics_thread.start()
        watcher = asyncio.create_task(self.watch_faults())
        self.write_info()
        await stop.wait()
        watcher.cancel()
        server.close()

    def shut_down(self) -> None:
        self.physics.stop()
        if self.physics_thread.is_alive():
            self.physics_thread.join(timeout=5)
        self.physics.throttle.resume()
        if self.sandbox.mount_ns:  # before the namespace goes
            for _ in range(3):
                if not self.kill_sandbox_processes():
                    break
                time.sleep(0.1)
        self.sandbox.stop()
        shutil.rmtree(self.sandbox.root, ignore_errors=True)
        (self.state_dir / "sim.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    phone = _Phone(_parse_args(argv))
    try:
        asyncio.run(phone.serve_until_stopped())
    finally:
        phone.shut_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
