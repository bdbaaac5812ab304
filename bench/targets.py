"""What a run runs on: adb servers and the devices they list, the host, and the llama.cpp build a
target runs (a phone's pushed build, or the host's llama-bench). Callable without argparse: the
command layer parses, this module decides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .progress import NullProgress, Progress

HOST = "host"


@dataclass(frozen=True)
class TargetChoice:
    """What a command asks of every target it opens."""

    model: str  # as given (alias or path): names the phone's lock holder
    scenario: str
    runtime: Path | None = None  # a prebuilt llama.cpp folder (--runtime)
    repack: str = "auto"
    fixed_performance: bool = False
    backend: str = "cpu"  # the ggml backend the model runs on: cpu, vulkan, opencl
    gpu_layers: int | None = None  # layers to offload to the GPU backend (None: all)
    serve: bool = False  # run in llama-server whatever the backend (a backend sweep's CPU point, on the host)


def adb_servers(addresses: tuple[str, ...] | list[str] = ()) -> list:
    """The adb servers named (HOST:PORT each: a matrix file's and --adb-server's); none named: the
    server adb's environment names."""
    from .android.adb import default_server, parse_server

    return [parse_server(text) for text in addresses] or [default_server()]


def connect(addresses, servers: list) -> None:
    """`adb connect` each network endpoint (Wi-Fi adb, a device farm's host:port) on the first server."""
    from .android import adb

    for address in addresses or []:
        adb.connect(address, server=servers[0])
        adb.wait_for_state(address, "device", timeout=20, server=servers[0])


def device_ids(selectors: list[str], servers: list) -> dict[str, object]:
    """Device selectors -> {id: Listed, or None for the host}; ids are serials (server/serial when
    several adb servers are in play)."""
    from .android.discovery import resolve_many

    found: dict[str, object] = {}
    phones = [s for s in selectors if s != HOST]
    if len(phones) < len(selectors):
        found[HOST] = None
    if phones:
        for listed in resolve_many(phones, servers):
            found[f"{listed.server.label}/{listed.serial}" if len(servers) > 1 else listed.serial] = listed
    return found


def devices_by_selector(selectors: list[str], servers: list) -> tuple[dict[str, list[str]], dict[str, object]]:
    """(selector -> the device ids it names, id -> Listed or None for the host): `all` names every
    usable device, any other selector exactly one."""
    found = device_ids(selectors, servers)
    phones = [selector for selector in selectors if selector != HOST]
    ids = [device for device in found if device != HOST]
    named: dict[str, list[str]] = {HOST: [HOST]} if HOST in found else {}
    if phones == ["all"]:
        named["all"] = ids
    else:
        named.update({selector: [device] for selector, device in zip(phones, ids)})
    return named, found


def usable_runtimes(cache: Path, backend: str = "cpu") -> list[dict]:
    """Cached builds of this backend, newest first; a host build counts only on the CPU it was built
    for. A build from before backends were recorded is a CPU build."""
    from .cpu import host_cpu_build
    from .runtimes.build import list_runtimes

    key = host_cpu_build().key
    return [meta for meta in reversed(list_runtimes(cache)) if (meta.get("backend") or "cpu") == backend
            and (meta.get("target") != "host" or (meta.get("cpu") or {}).get("key") == key)]


def phone_runtime(explicit: Path | None, abi: str | None, features: frozenset[str] = frozenset(),
                  progress: Progress | None = None, backend: str = "cpu"):
    """The llama.cpp build to push: `explicit` (preflight checks that it fits), else the cached build
    for the device's ABI that needs the most of the CPU features the device has. An arm64 phone
    that no cached build fits gets one built now when the cross compiler is here."""
    from .android.device import RuntimeBundle
    from .catalog import cache_root
    from .runtimes.build import describe_runtime_dir, required_cpu_features

    if explicit is not None:
        meta = describe_runtime_dir(explicit)
        return RuntimeBundle(Path(meta["bin"]) / "llama-server", meta)

    def bundle(meta: dict) -> RuntimeBundle:
        return RuntimeBundle(Path(meta["path"]) / "bin" / "llama-server", meta)

    same_abi = [meta for meta in usable_runtimes(cache_root(), backend) if meta.get("abi") == abi]
    fitting = [meta for meta in same_abi if required_cpu_features(meta) <= features]
    if fitting:  # max() keeps the first of equals: the newest
        return bundle(max(fitting, key=lambda meta: len(required_cpu_features(meta))))
    built = (_build_phone_runtime(features, progress or NullProgress())
             if abi == "arm64-v8a" and backend == "cpu" else None)
    if built is not None:
        return bundle(built)
    # none fits: preflight names the missing feature and the build command
    return bundle(same_abi[0]) if same_abi else None


def _build_phone_runtime(features: frozenset[str], progress: Progress) -> dict | None:
    """The best static aarch64 variant for these CPU features, built once into the cache; None when
    no variant fits or no cross compiler is installed."""
    import shutil

    from .catalog import cache_root
    from .cpu import arm_variant_for
    from .runtimes import build as builder

    variant = arm_variant_for(features)
    if variant is None or shutil.which(f"{builder.CROSS_PREFIX}g++") is None:
        return None
    progress.task(f"no cached runtime fits this phone's CPU: building the {variant[0]} variant ({variant[1]}) once").done()
    plan = builder.plan_build("linux-arm64", cache_root(), arm_arch=variant[1], progress=progress)
    return builder.describe_runtime_dir(builder.build(plan, progress))


def host_tools(explicit: Path | None, backend: str = "cpu") -> dict | None:
    """The host llama.cpp build whose llama-bench a llama-bench scenario runs, and whose llama-server
    runs parallel sequences, draft models and GPU backends: `explicit`, or the cached build of this
    backend for this CPU."""
    from .catalog import cache_root
    from .runtimes.build import describe_runtime_dir

    if explicit is not None:
        return describe_runtime_dir(explicit)
    for meta in usable_runtimes(cache_root(), backend):
        if meta.get("target") == "host":
            return {**meta, "bin": str(Path(meta["path"]) / "bin")}
    return None


def open_target(choice: TargetChoice, listed=None, affinity: tuple[int, ...] | None = None, scenario=None,
                progress: Progress | None = None):
    """(label for the run id, target) for the host (listed None) or an attached device; unknown
    names fail before anything is written. On a phone this takes the device's lock, which the
    caller gives back with target.release()."""
    from .catalog import cache_root
    from .host.membw import host_bandwidth_gbs

    if listed is None:
        from .host.target import HostTarget
        from .runtimes.build import installed_llama_cpp_commit

        if choice.fixed_performance:
            raise UsageError("--fixed-performance needs a phone (Android 11+)", "drop it for host runs, or pass --device")
        serve = choice.serve or choice.backend != "cpu"
        tools = scenario is not None and (scenario.kind == "llama-bench" or scenario.serves) or serve
        return HOST, HostTarget(host_bandwidth_gbs(cache_root()), llama_cpp_commit=installed_llama_cpp_commit(cache_root()),
                                repack=choice.repack, affinity=affinity,
                                tools=host_tools(choice.runtime, choice.backend) if tools else None,
                                backend=choice.backend, gpu_layers=choice.gpu_layers, serve=serve)
    from .android.device import AndroidTarget

    target = AndroidTarget(listed.serial, None, host_bandwidth=host_bandwidth_gbs(cache_root()),
                           run_label=f"{choice.model} / {choice.scenario}", repack=choice.repack,
                           fixed_performance=choice.fixed_performance, affinity=affinity, server=listed.server,
                           backend=choice.backend, gpu_layers=choice.gpu_layers)
    try:
        target.runtime = phone_runtime(choice.runtime, target.snap.props.get("ro.product.cpu.abi"),
                                       target.snap.cpu_features, progress, choice.backend)
    except BaseException:
        target.release()
        raise
    return target.profile.id, target


def describe_devices(servers: list) -> list[dict]:
    """Every device the servers list: what it is and its state now, who holds it; one that is not
    ready says how to fix that."""
    from .android.adb import Device
    from .android.discovery import STATE_FIXES, attached, describe, snapshot
    from .android.lock import live_lock

    entries = []
    for item in attached(servers):
        if item.state != "device":
            entries.append({"serial": item.serial, "state": item.state, "adb_server": item.server.label,
                            "fix": STATE_FIXES.get(item.state, "check `adb devices`")})
            continue
        device = Device(item.serial, server=item.server)
        owner = live_lock(device)
        entries.append({**describe(snapshot(device)), "adb_server": item.server.label,
                        "in_use_by": owner.describe() if owner else None})
    return entries


def reset_devices(selector: str | None, servers: list) -> list[dict]:
    """Each idle device (the selected one, else all ready ones) loses what a dead run left: its lock,
    its llama-server, fixed performance mode; a live run's device is refused (UsageError)."""
    from .android.device import AndroidTarget
    from .android.discovery import attached, resolve_many

    listed = resolve_many([selector], servers) if selector else [d for d in attached(servers) if d.state == "device"]
    entries = []
    for item in listed:
        target = AndroidTarget(item.serial, None, run_label="bench devices --reset", server=item.server)
        entries.append({"serial": item.serial, "adb_server": item.server.label, "done": target.reset()})
    return entries
