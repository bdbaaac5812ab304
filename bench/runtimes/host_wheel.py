"""llama-cpp-python's wheel around the host's one llama.cpp build: the package built from its sdist
without compiling llama.cpp (LLAMA_BUILD=OFF), with the host build's libllama.so put where it loads
its library from (llama_cpp/lib/). The host compiles llama.cpp once, for the wheel and the tools;
`./dev.sh` runs this before bench is installed, so it uses only the standard library and bench's
own lower layers.

    python -m bench.runtimes.host_wheel --llama-cpp-python 0.3.36   # prints the wheel's path
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ..catalog import cache_root
from ..cpu import host_cpu_build
from ..errors import BenchError
from ..files import atomic_write_json
from ..progress import Progress
from .build import BuildError, plan_build, sdist_archive, shared_library

LIBRARY_IN_WHEEL = "llama_cpp/lib/libllama.so"
# llama-cpp-python's own CMake options: build neither llama.cpp nor its multimodal library
# (loaded lazily, and only by the llava chat handlers, which bench does not use).
PURE_WHEEL_CMAKE_ARGS = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def with_library(pure_wheel: Path, library: Path, out_dir: Path) -> Path:
    """A copy of `pure_wheel` in out_dir (same name) holding `library` at llama_cpp/lib/libllama.so,
    its RECORD rewritten to list it (what pip checks on install)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / pure_wheel.name
    library_bytes = library.read_bytes()
    with zipfile.ZipFile(pure_wheel) as source:
        names = source.namelist()
        record_name = next((name for name in names if name.endswith(".dist-info/RECORD")), None)
        if record_name is None:
            raise BuildError(f"{pure_wheel.name} has no RECORD", "rebuild the wheel")
        rows = [row for row in csv.reader(io.StringIO(source.read(record_name).decode())) if row and row[0] != LIBRARY_IN_WHEEL]
        with zipfile.ZipFile(target.with_suffix(".partial"), "w", zipfile.ZIP_DEFLATED) as merged:
            for info in source.infolist():
                if info.filename in (record_name, LIBRARY_IN_WHEEL):
                    continue
                merged.writestr(info, source.read(info.filename))
            library_info = zipfile.ZipInfo(LIBRARY_IN_WHEEL, date_time=time.gmtime(library.stat().st_mtime)[:6])
            library_info.external_attr = 0o755 << 16
            library_info.compress_type = zipfile.ZIP_DEFLATED
            merged.writestr(library_info, library_bytes)
            rows = [row for row in rows if row[0] != record_name]
            rows += [[LIBRARY_IN_WHEEL, _record_hash(library_bytes), str(len(library_bytes))], [record_name, "", ""]]
            record = io.StringIO()
            csv.writer(record, lineterminator="\n").writerows(rows)
            merged.writestr(record_name, record.getvalue())
    target.with_suffix(".partial").replace(target)
    return target


def wheel_dir(cache: Path, version: str, plan_key: str) -> Path:
    """Where the wheel for one host build is cached: its key names the llama.cpp commit and the
    flags, which name the CPU features it was compiled for."""
    return cache / "wheels" / version / plan_key


def host_wheel(version: str, cache: Path, progress: Progress) -> Path:
    """The cached wheel for this CPU, built when missing: the host build's shared library (compiled
    now if the build tree lacks it), the package built without llama.cpp, the two put together."""
    plan = plan_build("host", cache, llama_cpp_python=version, progress=progress)
    directory = wheel_dir(cache, version, plan.key)
    cached = sorted(directory.glob(f"llama_cpp_python-{version}-*.whl"))
    if cached:
        return cached[0]
    library = shared_library(plan, progress)
    sdist = sdist_archive(cache, version, progress)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench-wheel-") as scratch:
        task = progress.task(f"llama-cpp-python {version}: the package around it (no second compile)")
        log = cache / "logs" / f"llama-cpp-python-{version}-{plan.key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                                     "--disable-pip-version-check", str(sdist), "-w", scratch],
                                    stdout=handle, stderr=subprocess.STDOUT, timeout=1800,
                                    env={**os.environ, "CMAKE_ARGS": PURE_WHEEL_CMAKE_ARGS})
        task.done()
        pure = sorted(Path(scratch).glob(f"llama_cpp_python-{version}-*.whl"))
        if result.returncode != 0 or not pure:
            raise BuildError(f"building the llama-cpp-python {version} package failed (exit {result.returncode})",
                             f"see {log}")
        wheel = with_library(pure[0], library, staging)
    atomic_write_json(staging / "build.json", {"schema_version": 1, "runtime_key": plan.key,
                                               "cpu": host_cpu_build().to_dict(), "library": str(library)})
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory / wheel.name


class _LineProgress:
    """Progress as plain lines on stderr (dev.sh has no live display): each step when it starts and
    ends, a compile at every tenth of the way."""

    def task(self, label: str, total: float | None = None, unit: str = ""):
        return _LineTask(label, total)


class _LineTask:
    def __init__(self, label: str, total: float | None):
        self.label, self.total, self.completed, self.shown = label, total, 0.0, -1
        self.started = time.monotonic()
        print(f"[dev.sh] {label}", file=sys.stderr, flush=True)

    def advance(self, amount: float = 1) -> None:
        self.update(completed=self.completed + amount)

    def update(self, *, completed=None, total=None, label=None) -> None:
        self.total = total if total is not None else self.total
        self.completed = completed if completed is not None else self.completed
        if self.total:
            tenth = int(10 * self.completed / self.total)
            if tenth > self.shown:
                self.shown = tenth
                print(f"[dev.sh]   {10 * tenth}% after {(time.monotonic() - self.started) / 60:.1f} min",
                      file=sys.stderr, flush=True)

    def done(self) -> None:
        print(f"[dev.sh]   done in {(time.monotonic() - self.started) / 60:.1f} min", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runtimes.host_wheel")
    parser.add_argument("--llama-cpp-python", required=True, metavar="VERSION")
    parser.add_argument("--cache", type=Path, default=cache_root())
    args = parser.parse_args(argv)
    try:
        print(host_wheel(args.llama_cpp_python, args.cache.expanduser(), _LineProgress()))
    except BenchError as error:
        print(f"[dev.sh] {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
