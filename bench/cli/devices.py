"""`bench devices`, `bench sim` and `bench capture`: the phones attached, the emulated phone, and a
device's text for a bug report."""

from __future__ import annotations

from pathlib import Path

from ..errors import BenchError
from ..targets import connect
from .flags import Parser, adb_servers_of, positive_int, server_flags
from .output import BarProgress, err, out, print_json


def add_devices(commands) -> None:
    """`bench devices`: what is attached, and --reset."""
    devices = commands.add_parser("devices", help="attached devices: profile, battery, thermal")
    devices.add_argument("--json", action="store_true")
    devices.add_argument("--reset", action="store_true",
                         help="undo what a dead run left on each idle device: its lock, its llama-server, fixed performance mode")
    devices.add_argument("--device", default=None, help="with --reset: only this device (serial or profile)")
    server_flags(devices)


def add_sim(commands) -> None:
    """`bench sim start|stop|status`."""
    sim = commands.add_parser("sim", help="an emulated Android phone on loopback, behind the real adb server")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, parser_class=Parser)
    sim_start = sim_sub.add_parser("start", help="start a sim in the background and connect it to adb")
    sim_start.add_argument("--name", default="sim")
    sim_start.add_argument("--port", type=positive_int, help="loopback port (default: first free from 6520)")
    sim_start.add_argument("--profile", default="default", help="sim profile (default, hot)")
    sim_start.add_argument("--replay", type=Path, metavar="DIR", help="answer with captured text from DIR")
    sim_start.add_argument("--unplugged", action="store_true", help="battery really discharges (default: on USB)")
    sim_start.add_argument("--unauthorized", action="store_true", help="act like a phone that never accepts this host's key")
    sim_start.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override a profile value, e.g. battery.level_pct=30, memory.lmk_kill_above_mb=500, "
                                "storage.data_quota_mb=2048")
    sim_stop = sim_sub.add_parser("stop", help="disconnect and stop a sim")
    sim_stop.add_argument("--name", default=None)
    sim_stop.add_argument("--all", action="store_true")
    sim_sub.add_parser("status", help="list running sims")


def add_capture(commands) -> None:
    """`bench capture`."""
    capture = commands.add_parser("capture", help="save a device's getprop/dumpsys/sysfs text for --replay")
    capture.add_argument("--device", required=True, help="serial")
    capture.add_argument("dir", type=Path)


def cmd_devices(args) -> int:
    from ..targets import describe_devices, reset_devices

    servers = adb_servers_of(args)
    connect(args.connect, servers)
    if args.reset:
        entries = reset_devices(args.device, servers)
        if args.json:
            print_json({"schema_version": 1, "reset": entries})
        for entry in entries if not args.json else []:
            out.print(f"{entry['serial']}: {'; '.join(entry['done']) or 'nothing left over'}", markup=False)
        return 0
    entries = describe_devices(servers)
    if args.json:
        print_json({"schema_version": 1, "devices": entries})
        return 0
    if not entries:
        out.print("no device attached (`bench run` without --device runs on the host; `bench sim start` gives an emulated phone)")
    for entry in entries:
        if entry["state"] != "device":
            out.print(f"{entry['serial']}\t{entry['state']}\t{entry['fix']}")
            continue
        battery, thermal = entry["battery"], entry["thermal"]
        hottest = max((s["celsius"] for s in thermal["sensors"]), default=None)
        out.print(f"{entry['serial']}\t{entry['profile']}\t{entry['manufacturer']} {entry['model']} ({entry['device']}), "
                  f"{entry['soc']}, {entry['abi']}, SDK {entry['sdk']}, RAM {(entry['ram_available_bytes'] or 0) / 2**30:.1f}/"
                  f"{(entry['ram_total_bytes'] or 0) / 2**30:.1f} GiB free; battery {battery['level_pct']}% {battery['status']} "
                  f"({battery['plugged']}); thermal status {thermal['status']}, hottest {hottest} C"
                  + (f"; in use by {entry['in_use_by']}" if entry.get("in_use_by") else ""), markup=False)
    return 0


def cmd_sim(args) -> int:
    from ..android import adb
    from ..catalog import cache_root
    from ..sim import control

    cache = cache_root()
    if args.sim_command == "start":
        port = control.plan_start(cache, name=args.name, port=args.port, profile=args.profile, replay=args.replay)
        with BarProgress(err) as progress:
            task = progress.task(f"starting sim '{args.name}' on 127.0.0.1:{port}")
            info = control.start(cache, name=args.name, port=port, profile=args.profile, replay=args.replay,
                                 unplugged=args.unplugged, unauthorized=args.unauthorized, settings=tuple(args.set))
            try:
                adb.connect(info.serial)
                adb.wait_for_state(info.serial, "unauthorized" if args.unauthorized else "device", timeout=20)
            except BenchError:
                control.stop(info)
                raise
            task.done()
        if info.replay_missing:
            err.print(f"replay: not in {info.replay}, simulated instead: {', '.join(info.replay_missing)}")
        out.print(f"sim '{info.name}' ({info.profile}{', unplugged' if info.unplugged else ', on USB'}) "
                  f"on 127.0.0.1:{info.port}, pid {info.pid}")
        out.print(info.serial)
        return 0
    if getattr(args, "name", None):
        control.check_name(args.name)
    sims = control.running(cache)
    if args.sim_command == "status":
        if not sims:
            out.print("no sim is running")
        for info in sims:
            out.print(f"{info.name}\t{info.serial}\tpid {info.pid}\tprofile {info.profile}")
        return 0
    targets = sims if args.all else [s for s in sims if s.name == (args.name or "sim")]
    if not targets:
        out.print("no sim is running" if not sims else f"no sim named '{args.name or 'sim'}' is running "
                  f"(running: {', '.join(s.name for s in sims)})")
        return 0
    for info in targets:
        adb.disconnect(info.serial)
        control.stop(info)
        out.print(f"stopped sim '{info.name}' ({info.serial})")
    return 0


def cmd_capture(args) -> int:
    from ..android.adb import Device
    from ..android.capture import capture

    written = capture(Device(args.device), args.dir)
    out.print(f"wrote {len(written)} files to {args.dir} (replay with `bench sim start --replay {args.dir}`)")
    return 0
