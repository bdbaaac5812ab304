"""Builds for the CPU they run on: explicit ISA flags with AMX off, cache keys that differ by
CPU, and the llama.cpp commit read from the source tree that is built."""

import subprocess
import sys
from pathlib import Path

from bench import cpu
from bench.runtimes import build as builder
from conftest import DATA, REPO

# /proc/cpuinfo "flags" of two x86 server generations (abridged to what ggml looks at).
SAPPHIRE_RAPIDS = ("flags\t\t: fpu sse4_2 fma f16c bmi2 avx avx2 avx512f avx512cd avx512vl avx512dq avx512bw "
                   "avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8\n")
HASWELL = "flags\t\t: fpu sse4_2 fma f16c bmi2 avx avx2\n"


def test_amx_cpu_builds_without_amx_and_keeps_the_rest():
    build = cpu.cpu_build("x86_64", cpu.cpuinfo_flags(SAPPHIRE_RAPIDS))
    args = build.cmake_args()
    assert build.amx_present and "-DGGML_NATIVE=OFF" in args
    for option in ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert f"-D{option}=OFF" in args
    for option in ("GGML_AVX512", "GGML_AVX512_BF16", "GGML_AVX_VNNI", "GGML_AVX2"):
        assert f"-D{option}=ON" in args
    assert not any("native" in a.lower() and a.endswith("=ON") for a in args)


def test_older_cpu_gets_only_what_it_has_and_another_key():
    old = cpu.cpu_build("x86_64", cpu.cpuinfo_flags(HASWELL))
    new = cpu.cpu_build("x86_64", cpu.cpuinfo_flags(SAPPHIRE_RAPIDS))
    assert "-DGGML_AVX512=OFF" in old.cmake_args() and "-DGGML_AVX2=ON" in old.cmake_args()
    assert old.key != new.key  # a cache built on the newer CPU is never reused on the older one
    assert old.key == cpu.cpu_build("amd64", cpu.cpuinfo_flags(HASWELL)).key


def test_arm_cpu_from_a_pixel_capture_builds_native_keyed_by_its_features():
    text = (DATA / "android" / "proc-cpuinfo_pixel8-shiba-tensor-g3_android14_pytorch-cpuinfo-mock.txt").read_text()
    flags = cpu.cpuinfo_flags(text)
    assert "asimddp" in flags and "i8mm" in flags
    build = cpu.cpu_build("aarch64", flags)
    assert build.cmake_args() == ("-DGGML_NATIVE=ON",) and not build.amx_present
    assert build.key != cpu.cpu_build("aarch64", flags - {"i8mm"}).key


def test_dev_sh_and_runtime_build_use_the_same_flags():
    printed = subprocess.run([sys.executable, "-m", "bench.cpu", "cmake-args"], cwd=REPO, capture_output=True,
                             text=True, timeout=30).stdout.split()
    assert tuple(printed) == cpu.host_cpu_build().cmake_args()
    host = builder.cmake_flags("host", None)
    assert host[-len(printed):] == tuple(printed)
    assert "-DGGML_NATIVE=ON" not in host or cpu.host_cpu_build().native
    assert "bench.runtimes.host_wheel" in (REPO / "dev.sh").read_text()  # the wheel is the host build's


def _submodule(tmp_path: Path, head: str, packed: str | None = None) -> Path:
    root = tmp_path / "sdist"
    tree = root / "vendor" / "llama.cpp"
    gitdir = root / ".git" / "modules" / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    gitdir.mkdir(parents=True)
    (tree / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")
    (gitdir / "HEAD").write_text(head + "\n")
    if packed:
        (gitdir / "packed-refs").write_text(f"# pack-refs with: peeled\n{packed} refs/heads/master\n")
    return tree


def test_commit_is_read_from_the_tree_not_a_table(tmp_path):
    detached = _submodule(tmp_path / "a", "1234567890abcdef1234567890abcdef12345678")
    assert builder.source_commit(detached) == "123456789"
    branch = _submodule(tmp_path / "b", "ref: refs/heads/master", packed="fedcba9876543210fedcba9876543210fedcba98")
    assert builder.source_commit(branch) == "fedcba987"
    bare = tmp_path / "c"
    bare.mkdir()
    (bare / "CMakeLists.txt").write_text("project(x)\n")
    assert builder.source_commit(bare).startswith("src-")  # named by its content, never guessed


def test_no_hard_coded_commit_table_is_left():
    sources = "".join(p.read_text() for p in (REPO / "bench").rglob("*.py"))
    assert "0c1e57098" not in sources and "VENDORED_LLAMA_CPP" not in sources
