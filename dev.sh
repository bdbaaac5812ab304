#!/usr/bin/env bash
# Set-up and entry points. Every command first makes sure .venv is ready:
#   ./dev.sh run [bench run flags]   set up, then `bench run` on the host (default model + scenario)
#   ./dev.sh test [pytest flags]     set up (+ mksh, Debian adb, the llama.cpp runtimes), then the tests
#   ./dev.sh setup                   set up only
# llama-cpp-python is sdist-only: its wheel carries the host's llama.cpp build (compiled once, for
# it and for the host tools), cached under ~/.cache/bench and reused by every later set-up.
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_CPP_PYTHON_VERSION=0.3.36
CACHE="${BENCH_CACHE_DIR:-$HOME/.cache/bench}"
PYTHON="${PYTHON:-python3}"
VENV=.venv

say() { printf '[dev.sh] %s\n' "$*" >&2; }

build_llama_wheel() {
  # llama-cpp-python around the host's one llama.cpp build (bench/runtimes/host_wheel.py): its
  # libllama.so is compiled for this CPU's ISA extensions (AMX off: llama.cpp issue 20824) and
  # cached under a key derived from them, so a cache copied to another CPU is rebuilt, never run.
  # The host tools (`./dev.sh test`) are built later in the same tree, reusing its objects.
  WHEEL="$("$VENV/bin/python" -m bench.runtimes.host_wheel --llama-cpp-python "$LLAMA_CPP_PYTHON_VERSION" --cache "$CACHE")"
}

system_packages() {
  # The emulated phone's shell is mksh (Android's); its tests also drive it with Debian's adb 29.
  # The arm64 sim runs a cross-built aarch64 llama.cpp under qemu-user. Without these the sim falls
  # back to bash and the tests that need the rest are skipped.
  local missing=()
  command -v mksh >/dev/null || missing+=(mksh)
  command -v adb >/dev/null || missing+=(adb)
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v chromium >/dev/null || missing+=(chromium)  # renders `bench history`'s page in a test
  # lets a sim's wall clock jump (clock.adjustable), for the device-clock self-check's test
  compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(libfaketime)
  # the host's Vulkan variant (headers, SPIR-V headers, shader compiler) and Mesa's lavapipe, a
  # Vulkan device on the CPU, on which its tests run the GPU path end to end
  [ -f /usr/include/vulkan/vulkan.hpp ] || missing+=(libvulkan-dev)
  [ -f /usr/include/spirv/unified1/spirv.hpp ] || missing+=(spirv-headers)
  command -v glslc >/dev/null || missing+=(glslc)
  compgen -G "/usr/share/vulkan/icd.d/lvp_icd.*.json" >/dev/null || missing+=(mesa-vulkan-drivers)
  # a compiler cache: the Vulkan variant takes llama, common and the tools from the CPU build's objects
  command -v ccache >/dev/null || missing+=(ccache)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || say "could not install ${missing[*]}; continuing without"
  else
    say "optional: install ${missing[*]} (Debian: sudo apt-get install ${missing[*]})"
  fi
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  build_llama_wheel
  local stamp="$VENV/.bench-installed"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)-$WHEEL"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing bench and its dependencies into $VENV"
    # --force-reinstall of the wheel alone: a venv moved from another CPU must not keep its build.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEEL"
    "$VENV/bin/pip" install -q --disable-pip-version-check --find-links "$(dirname "$WHEEL")" -e '.[dev]'
    echo "$want" >"$stamp"
  fi
}

command="${1:-setup}"
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  run) setup; exec "$VENV/bin/bench" run "$@" ;;
  test)
    system_packages  # first: ccache then sees the first compile (the library in setup)
    setup
    # llama-server & co. for the emulated phone, from the same llama.cpp as the wheel (cached).
    "$VENV/bin/bench" runtime build --target host
    if command -v aarch64-linux-gnu-g++ >/dev/null; then
      # the arm64 sim's (cached): both phone variants, i8mm (the default) and dotprod-only
      "$VENV/bin/bench" runtime build --target linux-arm64
      "$VENV/bin/bench" runtime build --target linux-arm64 --arm-arch armv8.2-a+dotprod
    fi
    if [ -f /usr/include/vulkan/vulkan.hpp ] && command -v glslc >/dev/null; then
      "$VENV/bin/bench" runtime build --target host --backend vulkan  # cached, like the others
    fi
    # Side by side where there are cores to spare: two workers from 4 CPUs up (tests that time the
    # machine take their turn alone: the `alone` marker). On 2 cores it does not pay: paired, the
    # tests ran 1.7x slower each, and the suite only 14% faster (docs/testing.md). -n of your own wins.
    case " $* " in
      *" -n"*|*" --numprocesses"*|*"no:xdist"*) ;;
      *) if [ "$(nproc)" -ge 4 ]; then set -- -n 2 --dist loadfile "$@"; fi ;;
    esac
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) say "usage: ./dev.sh run|test|setup [args]"; exit 2 ;;
esac
