#!/usr/bin/env bash
# Set-up and entry points. Every command first makes sure .venv is ready:
#   ./dev.sh run [bench run flags]   set up, then `bench run` on the host (default model + scenario)
#   ./dev.sh test [pytest flags]     set up (+ mksh, Debian adb, the host llama.cpp runtime), then the tests
#   ./dev.sh setup                   set up only
# llama-cpp-python is sdist-only and takes ~13 minutes to compile on 2 cores, so its wheel is
# built once into ~/.cache/bench/wheels and reused by every later set-up.
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_CPP_PYTHON_VERSION=0.3.36
CACHE="${BENCH_CACHE_DIR:-$HOME/.cache/bench}"
WHEELS="$CACHE/wheels"
PYTHON="${PYTHON:-python3}"
VENV=.venv

say() { printf '[dev.sh] %s\n' "$*" >&2; }

build_llama_wheel() {
  if ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl >/dev/null 2>&1; then
    return
  fi
  mkdir -p "$WHEELS" "$CACHE/logs"
  local log="$CACHE/logs/llama-cpp-python-wheel.log"
  say "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION once (about 13 min on 2 cores); log: $log"
  local started=$SECONDS
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" wheel --no-deps \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$WHEELS" >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && say "  still compiling llama.cpp... $(( (SECONDS - started) / 60 )) min"
  done
  if ! wait "$pid"; then
    tail -20 "$log" >&2
    say "llama-cpp-python build failed; see $log (needs gcc, g++ and cmake)"
    exit 1
  fi
  say "llama-cpp-python wheel cached in $WHEELS after $(( (SECONDS - started) / 60 )) min"
}

system_packages() {
  # The emulated phone's shell is mksh (Android's); its tests also drive it with Debian's adb 29.
  # Without them the sim falls back to bash and that one test is skipped.
  local missing=()
  command -v mksh >/dev/null || missing+=(mksh)
  command -v adb >/dev/null || missing+=(adb)
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || say "could not install ${missing[*]}; continuing without"
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
  want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)-$LLAMA_CPP_PYTHON_VERSION"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing bench and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --find-links "$WHEELS" -e '.[dev]'
    echo "$want" >"$stamp"
  fi
}

command="${1:-setup}"
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  run) setup; exec "$VENV/bin/bench" run "$@" ;;
  test)
    setup
    system_packages
    # llama-server & co. for the emulated phone, from the same llama.cpp as the wheel (cached).
    "$VENV/bin/bench" runtime build --target host
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *) say "usage: ./dev.sh run|test|setup [args]"; exit 2 ;;
esac
