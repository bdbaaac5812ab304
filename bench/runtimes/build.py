"""`bench runtime build`: llama-server, llama-bench and llama-completion from the llama.cpp tree that
the installed llama-cpp-python's sdist vendors (or from --src), cached per commit + target + flags."""

from __future__ import annotations

import contextlib
import fcntl

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import BenchError, UsageError
from ..files import atomic_write_bytes, atomic_write_json
from ..progress import NullProgress, Progress
from ..cpu import arm_arch_features, host_cpu_build

TOOLS = ("llama-server", "llama-bench", "llama-completion")
TARGETS = ("host", "android-arm64", "linux-arm64")
# ggml backends a runtime variant is built with: the CPU alone, or a GPU backend beside it (the CPU
# backend is always there: it runs what the GPU does not). Vulkan for the host (a GPU, or Mesa's
# lavapipe on the CPU) and for phones; OpenCL for Adreno phones.
BACKENDS = ("cpu", "vulkan", "opencl")
GPU_BACKENDS = {"vulkan": ("host", "android-arm64"), "opencl": ("android-arm64",)}


def backends_problem(names: list[str]) -> str | None:
    """What is wrong with a list of backends (--backend, a matrix file's backend), or None."""
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        return f"unknown backend '{unknown[0]}' (use {', '.join(BACKENDS)})"
    if len(set(names)) != len(names):
        return "repeats a backend"
    return None

# A vulkan.hpp for installed headers that predate VK_EXT_layer_settings (see the header); a Vulkan
# build gets it through an overlay folder in the cache, so the flags name a stable path.
VULKAN_COMPAT = Path(__file__).resolve().parent.parent / "data" / "vulkan_compat"
# linux-arm64: static aarch64 Linux binaries from Debian's cross compiler, for the emulated phone's
# arm64 profile (run under qemu-user there); Android's bionic is not needed by a static binary.
CROSS_PREFIX = "aarch64-linux-gnu-"
ANDROID_ABI, ANDROID_PLATFORM = "arm64-v8a", "android-28"
# Phones since 2019 (Cortex-A76/A55 and later, Tensor, Snapdragon 8xx) have dotprod; the i8mm
# kernels need armv8.6-a, which Tensor G3 and Snapdragon 8 Gen 2+ have. The default picks dotprod
# + i8mm + fp16 for current phones; `--arm-arch armv8.2-a+dotprod` builds for older ones.
DEFAULT_ARM_ARCH = "armv8.2-a+dotprod+i8mm+fp16"
BUILD_TIMEOUT_S = 3 * 3600
COMPILER_CACHE_SIZE = "3G"  # the host's CPU and Vulkan builds and two arm64 builds fit, compressed
# The host build is configured through this wrapper: llama.cpp's tree plus libllama.so for
# llama-cpp-python, from the same objects (see the file); staged into the cache for CMake.
HOST_PROJECT = Path(__file__).resolve().parent.parent / "data" / "host_build"
SHARED_LIBRARY = "llama-shared"  # the wrapper's target: lib/libllama.so

COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI at configure time
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)


class BuildError(BenchError):
    """A runtime build failed after it started."""

    exit_code = 3


class MissingPrerequisite(BenchError):
    """Nothing was built: a compiler, cmake or the NDK is missing (the message names it)."""


@dataclass(frozen=True)
class BuildPlan:
    target: str
    backend: str
    source: Path
    commit: str
    configure: tuple[str, ...]
    build_dir: Path
    install_dir: Path
    jobs: int
    compiler_cache: Path | None = None  # ccache's folder, when ccache is installed
    project: Path | None = None  # the host's wrapper project, as staged in the cache (host builds)

    @property
    def key(self) -> str:
        return self.install_dir.name

    @property
    def shared_library(self) -> bool:
        """The host's CPU build also links libllama.so, which llama-cpp-python's wheel carries."""
        return self.target == "host" and self.backend == "cpu"

    def cmake_configure(self) -> list[str]:
        # the launcher is not part of the variant's flags (it changes no object): set, or cleared
        # where an earlier configure of this tree had ccache and it is gone now
        launcher = "ccache" if self.compiler_cache else ""
        launchers = [f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}"]
        if self.project is not None:  # every host variant through the wrapper; only the CPU build links libllama.so
            return ["cmake", "-S", str(self.project), "-B", str(self.build_dir), f"-DBENCH_LLAMA_SOURCE={self.source}",
                    *self.configure, *launchers]
        return ["cmake", "-S", str(self.source), "-B", str(self.build_dir), *self.configure, *launchers]

    def environment(self) -> dict[str, str]:
        """The compile's environment: ccache's folder in bench's cache. Its preprocessor mode hashes
        the preprocessed source and not the -D flags, so the files of a GPU variant that its public
        GGML_USE_<BACKEND> define does not change (llama, common, the tools: most of it) come from the
        CPU build's objects instead of compiling again."""
        if self.compiler_cache is None:
            return dict(os.environ)
        return {**os.environ, "CCACHE_DIR": str(self.compiler_cache), "CCACHE_MAXSIZE": COMPILER_CACHE_SIZE}


def runtimes_root(cache: Path) -> Path:
    return cache / "runtimes"


def cmake_flags(target: str, ndk: Path | None, arm_arch: str = DEFAULT_ARM_ARCH, backend: str = "cpu",
                cache: Path | None = None) -> tuple[str, ...]:
    """The configuration of one runtime variant: the target's CPU flags, then its GPU backend's."""
    return _cpu_flags(target, ndk, arm_arch) + backend_flags(backend, target, ndk, cache)


def _cpu_flags(target: str, ndk: Path | None, arm_arch: str) -> tuple[str, ...]:
    if target == "host":
        # This CPU's ISA extensions, listed (AMX off); never -march=native: see bench/cpu.py.
        # Position-independent objects serve the static tools and the shared library alike; as a
        # subdirectory of the wrapper, llama.cpp builds its common library only when asked.
        return COMMON_FLAGS + ("-DCMAKE_POSITION_INDEPENDENT_CODE=ON", "-DLLAMA_BUILD_COMMON=ON") + host_cpu_build().cmake_args()
    if target == "android-arm64":
        if ndk is None:
            raise MissingPrerequisite("android-arm64 needs the Android NDK",
                             "pass --ndk PATH or set ANDROID_NDK_HOME (install it with Android Studio's SDK manager or sdkmanager 'ndk;27.2.12479018')")
        toolchain = ndk / "build" / "cmake" / "android.toolchain.cmake"
        return COMMON_FLAGS + (
            f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
            f"-DANDROID_ABI={ANDROID_ABI}",
            f"-DANDROID_PLATFORM={ANDROID_PLATFORM}",
            "-DGGML_NATIVE=OFF",
            "-DGGML_OPENMP=OFF",
            "-DGGML_LLAMAFILE=OFF",
            f"-DGGML_CPU_ARM_ARCH={arm_arch}",
        )
    if target == "linux-arm64":
        return COMMON_FLAGS + (
            "-DCMAKE_SYSTEM_NAME=Linux",
            "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
            f"-DCMAKE_C_COMPILER={CROSS_PREFIX}gcc",
            f"-DCMAKE_CXX_COMPILER={CROSS_PREFIX}g++",
            "-DCMAKE_EXE_LINKER_FLAGS=-static",
            "-DGGML_NATIVE=OFF",
            "-DGGML_OPENMP=OFF",
            "-DGGML_LLAMAFILE=OFF",
            f"-DGGML_CPU_ARM_ARCH={arm_arch}",
        )
    raise UsageError(f"unknown target '{target}'", f"use one of: {', '.join(TARGETS)}")


def backend_flags(backend: str, target: str, ndk: Path | None, cache: Path | None) -> tuple[str, ...]:
    """A GPU backend's configuration; MissingPrerequisite names what it needs and is not here."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")
    if backend == "cpu":
        return ()
    if target not in GPU_BACKENDS[backend]:
        raise UsageError(f"no {backend} variant for {target}",
                         f"build it for {' or '.join(GPU_BACKENDS[backend])}" if target != "linux-arm64" else
                         "the emulated arm64 phone runs under qemu-user, with no GPU: build --backend vulkan for the host")
    if backend == "opencl":
        return _opencl_flags(ndk)
    if target == "android-arm64":
        return _android_vulkan_flags(ndk)
    return _host_vulkan_flags(cache)


VULKAN_PACKAGES = "libvulkan-dev spirv-headers glslc"


def vulkan_headers() -> Path | None:
    """The include folder of the Vulkan SDK or of the system's Vulkan headers (vulkan/vulkan.hpp)."""
    sdk = os.environ.get("VULKAN_SDK")
    for folder in ([Path(sdk) / "include"] if sdk else []) + [Path("/usr/include"), Path("/usr/local/include")]:
        if (folder / "vulkan" / "vulkan.hpp").is_file():
            return folder
    return None


def _host_vulkan_flags(cache: Path | None) -> tuple[str, ...]:
    headers = vulkan_headers()
    if headers is None:
        raise MissingPrerequisite("the Vulkan backend needs Vulkan's C++ headers (vulkan/vulkan.hpp), and there are none",
                                  f"install them (Debian: apt-get install {VULKAN_PACKAGES}), or set VULKAN_SDK")
    sdk = os.environ.get("VULKAN_SDK")
    if shutil.which("glslc") is None and not (sdk and (Path(sdk) / "bin" / "glslc").is_file()):
        raise MissingPrerequisite("the Vulkan backend compiles its shaders with glslc, and there is none on PATH",
                                  f"install it (Debian: apt-get install {VULKAN_PACKAGES}), or set VULKAN_SDK")
    if not any((folder / "spirv" / "unified1" / "spirv.hpp").is_file() for folder in (headers, Path("/usr/include"))):
        raise MissingPrerequisite("the Vulkan backend needs the SPIR-V headers (spirv/unified1/spirv.hpp)",
                                  f"install them (Debian: apt-get install {VULKAN_PACKAGES})")
    flags = ("-DGGML_VULKAN=ON",)
    core = headers / "vulkan" / "vulkan_core.h"
    if cache is not None and "VK_EXT_layer_settings" not in (core.read_text(errors="replace") if core.is_file() else ""):
        # as Vulkan's include folder it reaches ggml-vulkan's compile alone: no other file's flags change
        flags += (f"-DVulkan_INCLUDE_DIR={_vulkan_compat(cache, headers)}",)
    return flags


def _vulkan_compat(cache: Path, headers: Path) -> Path:
    """An include folder in the cache that is `headers`' vulkan/ with the compatibility vulkan.hpp
    (which includes the real one next): the other headers are links to the real ones. Named by the
    header's content and the headers' place, so the flags name a stable path."""
    text = (VULKAN_COMPAT / "vulkan" / "vulkan.hpp").read_bytes()
    digest = hashlib.sha256(text + str(headers).encode()).hexdigest()[:10]
    folder = cache / "compat" / f"vulkan-{digest}"
    if not (folder / "vulkan" / "vulkan.hpp").is_file():
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "vulkan").mkdir(parents=True)
        for real in (headers / "vulkan").iterdir():
            if real.name != "vulkan.hpp":
                (staging / "vulkan" / real.name).symlink_to(real)
        (staging / "vulkan" / "vulkan.hpp").write_bytes(text)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return folder


def _ndk_sysroot(ndk: Path) -> Path:
    return ndk / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "sysroot"


def _android_vulkan_flags(ndk: Path | None) -> tuple[str, ...]:
    """The NDK has Vulkan's C headers and loader, and glslc among its shader tools; Vulkan's C++
    header (vulkan.hpp) it does not ship: it must be added to its sysroot."""
    if ndk is None:
        return ()  # _cpu_flags has already said that the NDK is needed
    glslc = ndk / "shader-tools" / "linux-x86_64" / "glslc"
    if not (_ndk_sysroot(ndk) / "usr" / "include" / "vulkan" / "vulkan.hpp").is_file():
        raise MissingPrerequisite(f"the NDK at {ndk} has no vulkan/vulkan.hpp, which ggml-vulkan includes",
                                  "copy Vulkan-Hpp's include/vulkan/*.hpp of your NDK's Vulkan version into "
                                  f"{_ndk_sysroot(ndk) / 'usr' / 'include' / 'vulkan'}")
    return ("-DGGML_VULKAN=ON", f"-DVulkan_GLSLC_EXECUTABLE={glslc}")


def _opencl_flags(ndk: Path | None) -> tuple[str, ...]:
    """llama.cpp's OpenCL backend with its Adreno kernels, embedded in the binary. The NDK has no
    OpenCL: its headers and ICD loader must be built into the NDK's sysroot first (llama.cpp's
    docs/backend/OPENCL.md); on the phone the loader finds the vendor's libOpenCL."""
    if ndk is None:
        return ()
    sysroot = _ndk_sysroot(ndk)
    if not (sysroot / "usr" / "include" / "CL" / "cl.h").is_file() or not any(
            (sysroot / "usr" / "lib" / "aarch64-linux-android").glob("libOpenCL.so*")):
        raise MissingPrerequisite(f"the NDK at {ndk} has no OpenCL headers and ICD loader in its sysroot",
                                  "build and install Khronos' OpenCL-Headers and OpenCL-ICD-Loader into it, as llama.cpp's "
                                  "docs/backend/OPENCL.md says")
    return ("-DGGML_OPENCL=ON", "-DGGML_OPENCL_USE_ADRENO_KERNELS=ON", "-DGGML_OPENCL_EMBED_KERNELS=ON")


def build_command(target: str, backend: str = "cpu") -> str:
    """The `bench runtime build` that makes a variant, for the messages that ask for one."""
    return f"bench runtime build --target {target}" + (f" --backend {backend}" if backend != "cpu" else "")


def find_ndk(explicit: str | None) -> Path | None:
    for candidate in (explicit, os.environ.get("ANDROID_NDK_HOME"), os.environ.get("ANDROID_NDK_ROOT")):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path / "build" / "cmake" / "android.toolchain.cmake").is_file():
                raise MissingPrerequisite(f"{path} is not an Android NDK (no build/cmake/android.toolchain.cmake)",
                                 "point --ndk at the NDK's root folder")
            return path
    return None


def _installed_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise MissingPrerequisite("llama-cpp-python is not installed, so there is no vendored llama.cpp to build",
                                  "run the README's set-up, or pass --src PATH to a llama.cpp checkout") from None


# The sdist keeps the submodule's git dir beside the tree; its HEAD names the vendored commit.
_SUBMODULE_GITDIR = ".git/modules/vendor/llama.cpp"


def fetch_vendored_source(cache: Path, progress: Progress, version: str | None = None) -> tuple[Path, str]:
    """The llama.cpp tree inside the sdist of llama-cpp-python (the installed one, or `version`
    before it is installed), extracted once, and the commit it was taken from (read from the tree,
    not assumed)."""
    version = version or _installed_version()
    source_root = cache / "src" / f"llama-cpp-python-{version}"
    tree = source_root / "vendor" / "llama.cpp"
    git_dir = _git_dir(tree)
    if not (tree / "CMakeLists.txt").is_file() or git_dir is None or not git_dir.is_dir():
        archive_path = sdist_archive(cache, version, progress)
        task = progress.task(f"extract {archive_path.name}")
        staging = source_root.with_name(source_root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        top = f"llama_cpp_python-{version}/"
        wanted = (top + "vendor/llama.cpp/", top + _SUBMODULE_GITDIR + "/HEAD", top + _SUBMODULE_GITDIR + "/packed-refs",
                  top + _SUBMODULE_GITDIR + "/refs/")
        with tarfile.open(archive_path) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(wanted)]
            archive.extractall(staging, members=members, filter="data")
        shutil.rmtree(source_root, ignore_errors=True)
        (staging / f"llama_cpp_python-{version}").rename(source_root)
        staging.rmdir()
        task.done()
    return tree, source_commit(tree)


def sdist_archive(cache: Path, version: str, progress: Progress) -> Path:
    """The llama-cpp-python sdist in the cache (dev.sh leaves there the one it built the wheel from)."""
    sdist_dir = cache / "sdist"
    archive = sdist_dir / f"llama_cpp_python-{version}.tar.gz"
    if archive.is_file():
        return archive
    sdist_dir.mkdir(parents=True, exist_ok=True)
    task = progress.task(f"pip download llama-cpp-python=={version} (sdist)")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             "-q", "-d", str(sdist_dir), f"llama-cpp-python=={version}"],
                            capture_output=True, text=True, timeout=1800)
    task.done()
    if result.returncode != 0 or not archive.is_file():
        raise BuildError(f"cannot download the llama-cpp-python {version} sdist: "
                         f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}", "check the package index")
    return archive


def _git_dir(tree: Path) -> Path | None:
    dot_git = tree / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a submodule: "gitdir: ../../.git/modules/..."
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir:"):
            return (tree / text.split(":", 1)[1].strip()).resolve()
    return None


def head_commit(git_dir: Path) -> str | None:
    """The commit HEAD names in a git dir, read from its files (no git needed): a detached hash, or
    a branch resolved through refs/ or packed-refs."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head if re.fullmatch(r"[0-9a-f]{40}", head) else None
    ref = head.split(":", 1)[1].strip()
    try:
        return (git_dir / ref).read_text().strip()
    except OSError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    except OSError:
        pass
    return None


def source_commit(tree: Path) -> str:
    """The llama.cpp commit of a source tree (9 hex digits, as llama.cpp prints it); a tree with no
    git metadata is named by a hash of its sources instead ("src-..."), never by a guess."""
    git_dir = _git_dir(tree)
    commit = head_commit(git_dir) if git_dir is not None else None
    if commit:
        return commit[:9]
    try:
        result = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=9", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    digest = hashlib.sha256()
    for name in ("CMakeLists.txt", "include/llama.h", "src/llama.cpp"):
        path = tree / name
        if path.is_file():
            digest.update(path.read_bytes())
    return "src-" + digest.hexdigest()[:10]


def installed_llama_cpp_commit(cache: Path) -> tuple[str | None, str]:
    """(commit, where it was read) of the llama.cpp inside the installed llama-cpp-python: from the
    extracted sdist tree, else from the cached sdist's submodule HEAD; (None, why) if neither."""
    try:
        version = _installed_version()
    except MissingPrerequisite:
        return None, "llama-cpp-python is not installed"
    tree = cache / "src" / f"llama-cpp-python-{version}" / "vendor" / "llama.cpp"
    git_dir = _git_dir(tree)
    if git_dir is not None and head_commit(git_dir):
        return source_commit(tree), f"HEAD of vendor/llama.cpp in the llama-cpp-python {version} sdist"
    archive_path = cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    head = ""
    if archive_path.is_file():
        try:
            with tarfile.open(archive_path) as archive:
                member = archive.extractfile(f"llama_cpp_python-{version}/{_SUBMODULE_GITDIR}/HEAD")
                head = member.read().decode().strip() if member else ""
        except (OSError, KeyError, tarfile.TarError):
            head = ""
    if re.fullmatch(r"[0-9a-f]{40}", head):
        return head[:9], f"HEAD of vendor/llama.cpp in the llama-cpp-python {version} sdist"
    return None, f"no llama-cpp-python {version} sdist in {cache / 'sdist'} to read it from (./dev.sh setup keeps one)"


def plan_build(target: str, cache: Path, *, src: str | None = None, ndk: str | None = None, jobs: int | None = None,
               arm_arch: str = DEFAULT_ARM_ARCH, progress: Progress | None = None,
               llama_cpp_python: str | None = None, backend: str = "cpu") -> BuildPlan:
    progress = progress or NullProgress()
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}'", f"use one of: {', '.join(TARGETS)}")
    ndk_path = find_ndk(ndk) if target == "android-arm64" else None
    flags = cmake_flags(target, ndk_path, arm_arch, backend, cache)  # fails early when the NDK is missing
    compiler = os.environ.get("CXX", "c++")
    needed = {"host": (("cmake", "cmake"), (compiler, "g++")),
              "linux-arm64": (("cmake", "cmake"), (f"{CROSS_PREFIX}g++", "g++-aarch64-linux-gnu libc6-dev-arm64-cross"))
              }.get(target, (("cmake", "cmake"),))
    for tool, package in needed:
        if shutil.which(tool) is None:
            raise MissingPrerequisite(f"no {tool} on PATH, so nothing can be built", f"install it (Debian: apt-get install {package})")
    if src:
        tree = Path(src).expanduser().resolve()
        if not (tree / "CMakeLists.txt").is_file() or not (tree / "tools" / "server").is_dir():
            raise UsageError(f"{tree} is not a llama.cpp source tree (no CMakeLists.txt and tools/server)",
                             "pass the root of a llama.cpp checkout")
        commit = source_commit(tree)
    else:
        tree, commit = fetch_vendored_source(cache, progress, llama_cpp_python)
    root = runtimes_root(cache)
    # Variants that differ only in ggml-cpu's -march share one build tree: building the second
    # recompiles ggml-cpu and relinks, nothing else. A GPU backend's variant has a tree of its own:
    # ggml makes its GGML_USE_<BACKEND> define public, so every file that includes ggml (llama,
    # common, the tools) compiles again for it, and a shared tree would recompile it all at each switch.
    tree_flags = tuple(flag for flag in flags if not flag.startswith("-DGGML_CPU_ARM_ARCH="))
    variant = target if backend == "cpu" else f"{target}-{backend}"
    return BuildPlan(target, backend, tree, commit, flags, root / "build" / f"{commit}-{variant}-{_flags_hash(tree_flags)}",
                     root / f"{commit}-{variant}-{_flags_hash(flags)}", jobs or os.cpu_count() or 1,
                     cache / "ccache" if shutil.which("ccache") else None,
                     _staged_host_project(cache) if target == "host" else None)


def _staged_host_project(cache: Path) -> Path:
    """The wrapper project copied into the cache, named by its text: CMake configures a build tree
    only from the source folder it was made from, and each clone of bench has its own, while the
    tree (begun by one clone's `./dev.sh run`, finished by another's `./dev.sh test`) is shared."""
    text = (HOST_PROJECT / "CMakeLists.txt").read_bytes()
    folder = runtimes_root(cache) / "build" / f"host_project-{hashlib.sha256(text).hexdigest()[:10]}"
    if not (folder / "CMakeLists.txt").is_file():
        atomic_write_bytes(folder / "CMakeLists.txt", text)  # two set-ups at once: each its own temp file
    return folder


def _flags_hash(flags: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(flags).encode()).hexdigest()[:10]


def installed(plan: BuildPlan) -> bool:
    return (all((plan.install_dir / "bin" / tool).is_file() for tool in TOOLS)
            and (not plan.shared_library or (plan.install_dir / "lib" / "libllama.so").is_file())
            and (plan.install_dir / "runtime.json").is_file())


def _run_logged(command: list[str], log: Path, on_line: Callable[[str], None], env: dict[str, str]) -> int:
    with log.open("a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        started = time.monotonic()
        for line in process.stdout:
            handle.write(line)
            handle.flush()
            on_line(line)
            if time.monotonic() - started > BUILD_TIMEOUT_S:
                process.kill()
                break
        return process.wait()


def build(plan: BuildPlan, progress: Progress | None = None) -> Path:
    """Configure and build the tools (and the host's shared library), then install them atomically
    into the cache."""
    progress = progress or NullProgress()
    if installed(plan):
        return plan.install_dir
    with build_lock(plan.build_dir):
        if installed(plan):  # another run (a matrix's other device) built it while this one waited
            return plan.install_dir
        return _build(plan, progress)


def shared_library(plan: BuildPlan, progress: Progress | None = None) -> Path:
    """The host build's libllama.so, for llama-cpp-python's wheel: the installed one, else built
    alone in the build tree, whose objects the tools' build reuses later."""
    if not plan.shared_library:
        raise UsageError(f"a {plan.target} build has no shared library for llama-cpp-python", "plan a host build")
    installed_library = plan.install_dir / "lib" / "libllama.so"
    if installed_library.is_file():
        return installed_library
    with build_lock(plan.build_dir):
        _compile(plan, progress or NullProgress(), (SHARED_LIBRARY,))
    return plan.build_dir / "lib" / "libllama.so"


@contextlib.contextmanager
def build_lock(build_dir: Path):
    """One build in a build tree at a time (the variants that share it too), across threads and
    processes: an exclusive lock on a file beside the tree, held until the build is installed or
    has failed."""
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir.with_name(build_dir.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CompileProgress:
    """How far a build is, from make's "[ NN%]" lines: never back (make counts again from 0 for each
    target asked for), below 100 until the build has ended, and blind to the percentages of a
    sub-build (an ExternalProject such as ggml-vulkan's shader generator, whose own make reaches
    100% while llama.cpp's is at 4%). The outer build names a sub-build in quotes ("Performing build
    step for 'X'"); the sub-build's own lines name it bare, in its paths and targets."""

    _PERCENT = re.compile(r"^\[\s*(\d+)%\]")
    _SUB_BUILD = re.compile(r"Performing build step for '([^']+)'")

    def __init__(self):
        self.shown = 0
        self.sub_builds: set[str] = set()

    def percent(self, line: str) -> int | None:
        """The percentage to show after this line, or None where the line changes nothing."""
        started = self._SUB_BUILD.search(line)
        if started:
            self.sub_builds.add(started.group(1))
        match = self._PERCENT.match(line)
        if match is None or any(name in line and f"'{name}'" not in line for name in self.sub_builds):
            return None
        new = min(99, int(match.group(1)))
        if new <= self.shown:
            return None
        self.shown = new
        return new


def _compile(plan: BuildPlan, progress: Progress, targets: tuple[str, ...]) -> Path:
    """Configure the build tree with the plan's flags (a tree shared by variants is reconfigured
    for this one) and build these targets; the log's path."""
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    log = plan.build_dir / "build.log"
    environment = plan.environment()
    configure = progress.task(f"cmake configure ({plan.target})")
    code = _run_logged(plan.cmake_configure(), log, lambda _: None, environment)
    configure.done()
    if code != 0:
        raise BuildError(f"cmake configure failed (exit {code})", f"see {log}")
    task = progress.task(f"compile llama.cpp {plan.commit} for {plan.target} ({plan.jobs} jobs)", 100, "%")
    compile_progress = CompileProgress()

    def on_line(line: str) -> None:
        shown = compile_progress.percent(line)
        if shown is not None:
            task.update(completed=shown)

    code = _run_logged(["cmake", "--build", str(plan.build_dir), "--config", "Release", "-j", str(plan.jobs),
                        "--target", *targets], log, on_line, environment)
    task.done()
    if code != 0:
        raise BuildError(f"build failed (exit {code})", f"see {log}")
    return log


def _build(plan: BuildPlan, progress: Progress) -> Path:
    log = _compile(plan, progress, TOOLS + ((SHARED_LIBRARY,) if plan.shared_library else ()))
    staging = plan.install_dir.with_name(plan.install_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    for tool in TOOLS:
        built = next((p for p in (plan.build_dir / "bin" / tool, plan.build_dir / tool) if p.is_file()), None)
        if built is None:
            raise BuildError(f"the build produced no {tool}", f"see {log}")
        shutil.copy2(built, staging / "bin" / tool)
    if plan.shared_library:
        (staging / "lib").mkdir()
        shutil.copy2(plan.build_dir / "lib" / "libllama.so", staging / "lib" / "libllama.so")
    atomic_write_json(staging / "runtime.json", {
        "schema_version": 1, "target": plan.target, "backend": plan.backend, "llama_cpp_commit": plan.commit,
        "source": str(plan.source),
        "cmake_flags": list(plan.configure), "tools": list(TOOLS),
        "shared_library": "lib/libllama.so" if plan.shared_library else None,
        "cpu": host_cpu_build().to_dict() if plan.target == "host" else None,
        "abi": elf_abi(staging / "bin" / "llama-server"),
        "arm_arch": arm_arch_of(plan.configure),
        "cpu_features_required": sorted(required_cpu_features({"cmake_flags": list(plan.configure)})),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    shutil.rmtree(plan.install_dir, ignore_errors=True)
    staging.rename(plan.install_dir)
    return plan.install_dir


def arm_arch_of(flags) -> str | None:
    """The GGML_CPU_ARM_ARCH an arm build was configured with (None for other builds)."""
    for flag in flags or ():
        if flag.startswith("-DGGML_CPU_ARM_ARCH="):
            return flag.split("=", 1)[1]
    return None


def required_cpu_features(meta: dict) -> frozenset[str]:
    """The /proc/cpuinfo features a device must list to run this build (ARM builds; a prebuilt
    folder with no flags and x86 builds, which are matched by CPU key, need none here)."""
    if meta.get("cpu_features_required") is not None:
        return frozenset(meta["cpu_features_required"])
    arch = arm_arch_of(meta.get("cmake_flags"))
    return arm_arch_features(arch) if arch else frozenset()


def list_runtimes(cache: Path) -> list[dict]:
    found = []
    root = runtimes_root(cache)
    for meta in sorted(root.glob("*/runtime.json")):
        try:
            found.append({**json.loads(meta.read_text()), "path": str(meta.parent)})
        except (OSError, ValueError):
            continue
    return found


_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "arm64-v8a", 0x28: "armeabi-v7a", 0x03: "x86"}


def elf_abi(binary: Path) -> str | None:
    """The Android ABI name of an ELF executable, from its e_machine field; None if not ELF."""
    try:
        with binary.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little"))


def describe_runtime_dir(path: Path) -> dict:
    """A prebuilt runtime folder passed with --runtime: our cache layout, or an extracted llama.cpp
    release (binaries in bin/ or at the top, shared libraries beside them)."""
    path = path.expanduser().resolve()
    meta_file = path / "runtime.json"
    if meta_file.is_file():
        return {**json.loads(meta_file.read_text()), "path": str(path), "bin": str(path / "bin")}
    for bin_dir in (path / "bin", path, path / "build" / "bin"):
        if (bin_dir / "llama-server").is_file():
            return {"schema_version": 1, "target": "prebuilt", "llama_cpp_commit": None, "source": str(path),
                    "cmake_flags": None, "tools": [t for t in TOOLS if (bin_dir / t).is_file()], "path": str(path),
                    "bin": str(bin_dir), "abi": elf_abi(bin_dir / "llama-server")}
    raise UsageError(f"{path} holds no llama-server (looked in bin/, the folder itself and build/bin/)",
                     "pass a folder from `bench runtime build` or an extracted llama.cpp release")
