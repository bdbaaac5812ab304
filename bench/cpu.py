"""What a llama.cpp build for this host CPU must be compiled with, and the cache key that says so.

Standard library only: `dev.sh` builds the host's llama.cpp (bench.runtimes.host_wheel) before
bench or its dependencies are installed; `python -m bench.cpu key|cmake-args|json` shows what a host
build on this machine is compiled with.

Why explicit flags and not GGML_NATIVE: a `-march=native` build carries every instruction of the
build machine, so a cached wheel or runtime copied to an older CPU dies with SIGILL, and on CPUs with
AMX it compiles llama.cpp's AMX weight-repacking path, which crashes on the first multi-token batch at
the llama.cpp commit we vendor (upstream issue 20824, `ggml_backend_amx_mul_mat`). So x86 builds list
the ISA extensions the CPU has, AMX always off, and the cache key is derived from that list. ARM
repacking (the one that matters on phones) is untouched: it is not an x86 flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# cpuinfo flag(s) -> the ggml option that uses them. Order is the order cmake prints them.
X86_OPTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GGML_SSE42", ("sse4_2",)),
    ("GGML_F16C", ("f16c",)),
    ("GGML_FMA", ("fma",)),
    ("GGML_BMI2", ("bmi2",)),
    ("GGML_AVX", ("avx",)),
    ("GGML_AVX2", ("avx2",)),
    ("GGML_AVX_VNNI", ("avx_vnni",)),
    ("GGML_AVX512", ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    ("GGML_AVX512_VBMI", ("avx512vbmi",)),
    ("GGML_AVX512_VNNI", ("avx512_vnni",)),
    ("GGML_AVX512_BF16", ("avx512_bf16",)),
)
AMX_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
X86_MACHINES = ("x86_64", "amd64", "i686", "i386")


@dataclass(frozen=True)
class CpuBuild:
    """The CPU a llama.cpp build targets: its architecture, the ISA features the build uses, and
    whether the CPU has AMX (which the build leaves out)."""

    machine: str
    features: tuple[str, ...]   # ggml options turned on (x86), or the CPU's feature flags (other arches)
    amx_present: bool
    native: bool                # True off x86: the compiler's -mcpu=native is trusted there

    def cmake_args(self) -> tuple[str, ...]:
        if self.native:
            return ("-DGGML_NATIVE=ON",)
        on = set(self.features)
        args = ["-DGGML_NATIVE=OFF"]
        args += [f"-D{option}={'ON' if option in on else 'OFF'}" for option, _ in X86_OPTIONS]
        args += [f"-D{option}=OFF" for option in AMX_OPTIONS]
        return tuple(args)

    @property
    def key(self) -> str:
        """A cache-folder name: the same on two hosts only if the build is valid on both."""
        material = json.dumps({"machine": self.machine, "features": self.features, "args": self.cmake_args()})
        return f"{self.machine}-{hashlib.sha256(material.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict:
        return {"machine": self.machine, "features": list(self.features), "amx_present": self.amx_present,
                "amx_compiled": False, "cmake_args": list(self.cmake_args()), "key": self.key}


def cpuinfo_flags(cpuinfo_text: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text ("flags" on x86, "Features" on ARM)."""
    for line in cpuinfo_text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


# -march extensions -> the /proc/cpuinfo "Features" a phone must list to run code built with them.
ARM_EXTENSION_FEATURES = {"dotprod": ("asimddp",), "i8mm": ("i8mm",), "fp16": ("fphp", "asimdhp"), "bf16": ("bf16",),
                          "sve": ("sve",), "sve2": ("sve2",), "crypto": ("aes", "sha2"), "rcpc": ("lrcpc",)}
# What each base architecture implies, as GCC enables it (armv8.4-a brings dotprod, armv8.6-a i8mm + bf16).
ARM_BASE_FEATURES = {"armv8.4-a": ("asimddp",), "armv8.5-a": ("asimddp",), "armv8.6-a": ("asimddp", "i8mm", "bf16"),
                     "armv9-a": ("asimddp", "sve", "sve2"), "armv9.2-a": ("asimddp", "i8mm", "bf16", "sve", "sve2")}
# The phone runtime variants bench builds, best first: current phones (Tensor G3, Snapdragon 8 Gen 2+)
# have i8mm; Pixel 6/7, Snapdragon 865/888 and most phones since 2019 have dotprod only.
ARM_VARIANTS = (("i8mm", "armv8.2-a+dotprod+i8mm+fp16"), ("dotprod", "armv8.2-a+dotprod"))


def arm_arch_features(arch: str) -> frozenset[str]:
    """The cpuinfo features a GGML_CPU_ARM_ARCH (-march) value needs, e.g. armv8.2-a+dotprod -> asimddp."""
    base, *extensions = arch.strip().lower().split("+")
    needed = set(ARM_BASE_FEATURES.get(base, ()))
    for extension in extensions:
        if extension.startswith("no"):
            needed -= set(ARM_EXTENSION_FEATURES.get(extension[2:], ()))
        else:
            needed |= set(ARM_EXTENSION_FEATURES.get(extension, ()))
    return frozenset(needed)


def arm_variant_for(features: frozenset[str]) -> tuple[str, str] | None:
    """The best of ARM_VARIANTS a phone with these cpuinfo features runs: (name, -march), or None."""
    return next(((name, arch) for name, arch in ARM_VARIANTS if arm_arch_features(arch) <= features), None)


def arm_variant_name(arch: str | None) -> str | None:
    """"i8mm" or "dotprod" for the -march of one of ARM_VARIANTS; the -march itself for any other."""
    return next((name for name, variant in ARM_VARIANTS if variant == arch), arch)


def cpu_build(machine: str, flags: frozenset[str]) -> CpuBuild:
    machine = machine.lower()
    amx = any(flag in flags for flag in AMX_FLAGS)
    if machine in X86_MACHINES:
        machine = "x86_64" if machine in ("x86_64", "amd64") else machine
        features = tuple(option for option, needs in X86_OPTIONS if all(flag in flags for flag in needs))
        return CpuBuild(machine, features, amx, native=False)
    return CpuBuild(machine, tuple(sorted(flags)), amx, native=True)


def host_cpu_build(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuBuild:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""  # not Linux: the key still separates machines by architecture
    return cpu_build(platform.machine() or "unknown", cpuinfo_flags(text))


def main(argv: list[str]) -> int:
    build = host_cpu_build()
    what = argv[0] if argv else "json"
    if what == "key":
        print(build.key)
    elif what == "cmake-args":
        print(" ".join(build.cmake_args()))
    elif what == "json":
        print(json.dumps(build.to_dict(), indent=2))
    else:
        print("usage: python -m bench.cpu key|cmake-args|json", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def parse_cpus(text: str) -> tuple[int, ...]:
    """"4-7", "0,2,4", "0-3,8" -> sorted CPU numbers; ValueError for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"'{text}' is not a CPU list (e.g. 4-7 or 0,2,4)")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(f"'{part}' runs backwards")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def cpu_mask(cpus: tuple[int, ...]) -> str:
    """A CPU set as a hex mask, bit N for CPU N: llama.cpp's --cpu-mask and taskset both take it."""
    return f"{sum(1 << cpu for cpu in cpus):x}"


def format_cpus(cpus: tuple[int, ...]) -> str:
    ranges, start = [], None
    for index, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if index + 1 == len(cpus) or cpus[index + 1] != cpu + 1:
            ranges.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(ranges)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
