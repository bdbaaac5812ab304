"""Device profiles (devices/*.toml): matched to a phone by getprop, they give its SoC, clusters,
threads and affinity, theoretical memory bandwidth, thermal zones and battery quirks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import load_toml
from .errors import ConfigError

PROFILE_SCHEMA_VERSION = 1
FALLBACK = "generic-android"


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    core: str | None
    cpus: tuple[int, ...]
    max_khz: int | None


@dataclass(frozen=True)
class DeviceProfile:
    id: str
    name: str
    soc: str
    abi: str
    threads: int | None
    affinity: tuple[int, ...]
    memory_bandwidth_gbs: float | None
    memory_bandwidth_source: str | None
    thermal_zones: tuple[str, ...]
    clusters: tuple[ClusterSpec, ...]
    match: dict[str, tuple[str, ...]]
    current_unit: str    # auto | uA | mA
    current_sign: str    # auto | negative_discharge | positive_discharge
    path: str

    def matches(self, props: dict[str, str]) -> bool:
        return bool(self.match) and all(props.get(key) in values for key, values in self.match.items())


def profiles_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "devices"


def _profile(path: Path) -> DeviceProfile:
    data, _ = load_toml(path)
    if data.get("schema_version", 1) > PROFILE_SCHEMA_VERSION:
        raise ConfigError(str(path), "schema_version is newer than this bench understands", None, "upgrade bench")
    try:
        battery = data.get("battery", {})
        return DeviceProfile(
            id=str(data["id"]), name=str(data.get("name", data["id"])), soc=str(data.get("soc", "")),
            abi=str(data.get("abi", "")), threads=data.get("threads"), affinity=tuple(data.get("affinity", ())),
            memory_bandwidth_gbs=data.get("memory_bandwidth_gbs"), memory_bandwidth_source=data.get("memory_bandwidth_source"),
            thermal_zones=tuple(data.get("thermal_zones", ())),
            clusters=tuple(ClusterSpec(str(c["name"]), c.get("core"), tuple(c["cpus"]), c.get("max_khz"))
                           for c in data.get("clusters", ())),
            match={str(k): tuple(v) if isinstance(v, list) else (str(v),) for k, v in data.get("match", {}).items()},
            current_unit=str(battery.get("current_unit", "auto")), current_sign=str(battery.get("current_sign", "auto")),
            path=str(path),
        )
    except (KeyError, TypeError) as error:
        raise ConfigError(str(path), f"device profile lacks or mistypes {error}") from None


def load_profiles() -> dict[str, DeviceProfile]:
    profiles = {}
    for path in sorted(profiles_dir().glob("*.toml")):
        profile = _profile(path)
        profiles[profile.id] = profile
    return profiles


def match_profile(props: dict[str, str], profiles: dict[str, DeviceProfile]) -> DeviceProfile:
    for profile in profiles.values():
        if profile.matches(props):
            return profile
    return profiles[FALLBACK]
