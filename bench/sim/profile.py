"""Sim profiles (bench/sim/profiles/*.toml): props, CPU, GPU, power, thermal zones, battery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import closest, load_toml
from ..errors import ConfigError, UsageError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class Zone:
    name: str
    type: int
    gain_c_per_w: float
    tau_s: float


@dataclass(frozen=True)
class SimProfile:
    name: str
    props: dict[str, str]
    min_khz: int
    max_khz: int
    idle_w: float
    per_core_w: float
    ambient_c: float
    initial_c: float | None  # None: each zone starts at its idle steady state
    throttle_start_c: float
    status_step_c: float
    throttle_span_c: float
    max_duty: float
    zones: tuple[Zone, ...]
    capacity_mah: float
    level_pct: float
    charge_current_a: float
    voltage_empty_v: float
    voltage_full_v: float
    qemu_cpu: str | None = None               # [emulation] qemu_cpu: QEMU_CPU for an arm64 sim's binaries
    pid_namespace: bool = True                # [emulation] pid_namespace: false plays a host that cannot give a sim its own process table
    rails: str = "hal"                        # [power] rails: hal ([RAIL]:Subsystem), plain (older HALs), iio (+ the iio file), none
    lmk_kill_above_bytes: int | None = None   # [memory] lmk_kill_above_mb: the sim's lmkd kills past it
    data_quota_bytes: int | None = None       # [storage] data_quota_mb: /data fills up past it
    ignore_affinity: bool = False             # [cpu] ignore_affinity: threads' CPU masks are undone (as some phones do)
    adjustable_clock: bool = False            # [clock] adjustable: the wall clock can jump (libfaketime; `clock-jump` fault)
    su: bool = False                          # [shell] su: a rooted phone, whose su grants root (else no su, as on retail phones)
    gpu: str = "none"                         # [gpu] kind: kgsl (Adreno's files), devfreq (a Mali: clock only), none (hidden)
    gpu_model: str = ""                       # [gpu] model: what kgsl's gpu_model says
    gpu_frequencies_hz: tuple[int, ...] = ()  # [gpu] frequencies_mhz: its clock levels
    gpu_vulkan: str = "none"                  # [gpu] vulkan: lavapipe (Mesa's Vulkan on the CPU plays its GPU), none


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _raw(name: str, seen: tuple[str, ...] = ()) -> tuple[dict, Path]:
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise UsageError(f"unknown sim profile '{name}'", f"closest known: {closest(name, known_profiles())}")
    data, _ = load_toml(path)
    parent = data.pop("inherit", None)
    if parent:
        if parent in seen:
            raise ConfigError(str(path), f"inherit loop through '{parent}'")
        base, _ = _raw(parent, seen + (name,))
        data = _merge(base, data)
    return data, path


def parse_overrides(items: list[str]) -> dict:
    """`--set SECTION.KEY=VALUE` pairs -> a nested dict merged over the profile (numbers stay numbers)."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or not section or not field:
            raise UsageError(f"--set {item!r} is not SECTION.KEY=VALUE", "e.g. --set battery.level_pct=26")
        try:
            parsed: object = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            parsed = value
        overrides.setdefault(section, {})[field] = parsed
    return overrides


def load_profile(name: str, overrides: dict | None = None) -> SimProfile:
    data, path = _raw(name)
    data = _merge(data, overrides or {})
    memory, storage, emulation, gpu = data.get("memory", {}), data.get("storage", {}), data.get("emulation", {}), data.get("gpu", {})
    try:
        cpu, power, thermal, battery = data["cpu"], data["power"], data["thermal"], data["battery"]
        return SimProfile(
            name=data.get("name", name), props={str(k): str(v) for k, v in data.get("props", {}).items()},
            min_khz=int(cpu["min_khz"]), max_khz=int(cpu["max_khz"]),
            idle_w=float(power["idle_w"]), per_core_w=float(power["per_core_w"]),
            ambient_c=float(thermal["ambient_c"]), initial_c=float(thermal["initial_c"]) if "initial_c" in thermal else None,
            throttle_start_c=float(thermal["throttle_start_c"]),
            status_step_c=float(thermal["status_step_c"]), throttle_span_c=float(thermal["throttle_span_c"]),
            max_duty=float(thermal["max_duty"]),
            zones=tuple(Zone(str(z["name"]), int(z["type"]), float(z["gain_c_per_w"]), float(z["tau_s"]))
                        for z in thermal["zones"]),
            capacity_mah=float(battery["capacity_mah"]), level_pct=float(battery["level_pct"]),
            charge_current_a=float(battery["charge_current_a"]), voltage_empty_v=float(battery["voltage_empty_v"]),
            voltage_full_v=float(battery["voltage_full_v"]),
            qemu_cpu=str(emulation["qemu_cpu"]) if "qemu_cpu" in emulation else None,
            pid_namespace=str(emulation.get("pid_namespace", True)).lower() in ("true", "1"),
            rails=_choice(str(power.get("rails", "hal")), RAIL_FORMATS, "power.rails", path),
            lmk_kill_above_bytes=int(float(memory["lmk_kill_above_mb"]) * 2**20) if "lmk_kill_above_mb" in memory else None,
            data_quota_bytes=int(float(storage["data_quota_mb"]) * 2**20) if "data_quota_mb" in storage else None,
            ignore_affinity=str(cpu.get("ignore_affinity", False)).lower() in ("true", "1"),
            adjustable_clock=str(data.get("clock", {}).get("adjustable", False)).lower() in ("true", "1"),
            su=str(data.get("shell", {}).get("su", False)).lower() in ("true", "1"),
            gpu=_choice(str(gpu.get("kind", "none")), GPU_KINDS, "gpu.kind", path),
            gpu_model=str(gpu.get("model", "")),
            gpu_frequencies_hz=tuple(sorted(int(float(mhz) * 1e6) for mhz in gpu.get("frequencies_mhz", ()))),
            gpu_vulkan=_choice(str(gpu.get("vulkan", "none")), VULKAN_KINDS, "gpu.vulkan", path),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(str(path), f"sim profile is missing or has a bad value: {error}") from None


RAIL_FORMATS = ("hal", "plain", "iio", "none")
GPU_KINDS = ("kgsl", "devfreq", "none")  # a profile without a [gpu] section has none
VULKAN_KINDS = ("lavapipe", "none")


def _choice(value: str, allowed: tuple[str, ...], key: str, path: Path) -> str:
    if value not in allowed:
        raise ConfigError(str(path), f"{key} = '{value}' is not one of {', '.join(allowed)}")
    return value


def abi(profile: SimProfile) -> str:
    return profile.props.get("ro.product.cpu.abi", "x86_64")
