"""`bench runtime build`: the generated configurations, prerequisites, and the real host build."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.progress import NullProgress
from bench.runtimes import build as builder
from conftest import bench_cli


def _fake_ndk(tmp_path: Path) -> Path:
    ndk = tmp_path / "ndk"
    (ndk / "build" / "cmake").mkdir(parents=True)
    (ndk / "build" / "cmake" / "android.toolchain.cmake").write_text("# stand-in: only the path is checked\n")
    return ndk


def test_android_configuration(tmp_path):
    ndk = _fake_ndk(tmp_path)
    result = bench_cli("runtime", "build", "--target", "android-arm64", "--ndk", str(ndk), "--print-plan")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    flags = plan["cmake_flags"]
    for expected in (f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake", "-DANDROID_ABI=arm64-v8a",
                     "-DANDROID_PLATFORM=android-28", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DGGML_LLAMAFILE=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF"):
        assert expected in flags
    arch = next(f for f in flags if f.startswith("-DGGML_CPU_ARM_ARCH="))
    assert "dotprod" in arch and "i8mm" in arch
    assert plan["commit"] == "0c1e57098" and "android-arm64" in plan["install_dir"]
    older = bench_cli("runtime", "build", "--target", "android-arm64", "--ndk", str(ndk), "--arm-arch",
                      "armv8.2-a+dotprod", "--print-plan")
    assert json.loads(older.stdout)["install_dir"] != plan["install_dir"]  # flags are part of the cache key


def test_missing_ndk_and_compiler_are_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDROID_NDK")}
    no_ndk = bench_cli("runtime", "build", "--target", "android-arm64", env={**env, "ANDROID_NDK_HOME": ""})
    assert no_ndk.returncode == 2 and "needs the Android NDK" in no_ndk.stderr and "--ndk" in no_ndk.stderr
    not_ndk = bench_cli("runtime", "build", "--target", "android-arm64", "--ndk", str(tmp_path))
    assert not_ndk.returncode == 2 and "is not an Android NDK" in not_ndk.stderr
    no_compiler = bench_cli("runtime", "build", "--target", "host", env={"CXX": "no-such-compiler++"})
    assert no_compiler.returncode == 2 and "no no-such-compiler++ on PATH" in no_compiler.stderr
    bad_src = bench_cli("runtime", "build", "--target", "host", "--src", str(tmp_path))
    assert bad_src.returncode == 2 and "not a llama.cpp source tree" in bad_src.stderr


def test_prebuilt_runtime_dir(tmp_path):
    release = tmp_path / "llama-b1234-bin-android-arm64"
    (release / "bin").mkdir(parents=True)
    (release / "bin" / "llama-server").write_text("#!/bin/sh\n")
    described = builder.describe_runtime_dir(release)
    assert described["bin"] == str(release / "bin") and described["tools"] == ["llama-server"]
    with pytest.raises(Exception, match="holds no llama-server"):
        builder.describe_runtime_dir(tmp_path / "empty")


@pytest.mark.slow
def test_host_build_is_real_and_cached(host_runtime):
    meta = json.loads((host_runtime / "runtime.json").read_text())
    assert meta["schema_version"] == 1 and meta["target"] == "host" and meta["llama_cpp_commit"] == "0c1e57098"
    for tool in builder.TOOLS:
        assert os.access(host_runtime / "bin" / tool, os.X_OK)
    again = bench_cli("runtime", "build", "--target", "host")
    assert again.returncode == 0 and again.stdout.startswith("cached:")
    listed = bench_cli("runtime", "list")
    assert str(host_runtime) in listed.stdout


@pytest.mark.slow
def test_llama_cpp_python_runs_the_host_builds_library(host_runtime):
    """Issue 24: llama.cpp is compiled once for the host: the library llama-cpp-python loads is the
    host build's libllama.so, byte for byte, not a second compile inside the wheel."""
    import llama_cpp

    meta = json.loads((host_runtime / "runtime.json").read_text())
    assert meta["shared_library"] == "lib/libllama.so"
    loaded = Path(llama_cpp.llama_cpp._lib._name)
    assert loaded.name == "libllama.so" and loaded.parent.parent.name == "llama_cpp"
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digest(loaded) == digest(host_runtime / "lib" / "libllama.so")
    assert llama_cpp.llama_supports_mmap() and b"CPU" in llama_cpp.llama_print_system_info()


def test_arm_variants_share_one_build_tree_and_keep_their_own_installs(tmp_path):
    cache, ndk = tmp_path / "cache", str(_fake_ndk(tmp_path))
    plans = [builder.plan_build("android-arm64", cache, src=str(_vendored_tree()), ndk=ndk, arm_arch=arch)
             for arch in ("armv8.2-a+dotprod+i8mm+fp16", "armv8.2-a+dotprod")]
    assert plans[0].build_dir == plans[1].build_dir and plans[0].install_dir != plans[1].install_dir
    host = builder.plan_build("host", cache, src=str(_vendored_tree()))
    assert host.build_dir != plans[0].build_dir and host.shared_library and not plans[0].shared_library
    assert (Path(host.cmake_configure()[2]) / "CMakeLists.txt").read_text() == \
        (builder.HOST_PROJECT / "CMakeLists.txt").read_text()


def test_two_clones_sharing_one_cache_configure_the_host_tree_from_one_place(tmp_path, monkeypatch):
    """CMake refuses to configure a build tree from another source folder than the one it was made
    from: the host tree, begun by one clone's `./dev.sh run` (the library), must still take the
    tools' build from a second clone's `./dev.sh test`."""
    cache, planned = tmp_path / "cache", []
    for clone in ("one", "two"):
        copy = tmp_path / clone / "host_build"
        copy.mkdir(parents=True)
        (copy / "CMakeLists.txt").write_text((builder.HOST_PROJECT / "CMakeLists.txt").read_text())
        monkeypatch.setattr(builder, "HOST_PROJECT", copy)
        planned.append(builder.plan_build("host", cache, src=str(_vendored_tree())).cmake_configure()[2])
    assert planned[0] == planned[1] and Path(planned[0]).is_relative_to(cache)


def _vendored_tree() -> Path:
    from bench.catalog import cache_root

    from bench.progress import NullProgress

    tree, _ = builder.fetch_vendored_source(cache_root(), NullProgress())
    return tree


def test_elf_abi(tmp_path):
    header = bytearray(64)
    header[:4], header[18:20] = b"\x7fELF", (0xB7).to_bytes(2, "little")
    (tmp_path / "arm").write_bytes(bytes(header))
    (tmp_path / "text").write_text("#!/bin/sh\n")
    assert builder.elf_abi(tmp_path / "arm") == "arm64-v8a"
    assert builder.elf_abi(tmp_path / "text") is None
    import platform
    import sys

    expected = {"x86_64": "x86_64", "aarch64": "arm64-v8a"}[platform.machine()]
    assert builder.elf_abi(Path(os.path.realpath(sys.executable))) == expected


def test_the_wheel_carries_the_library_and_records_it(tmp_path):
    """The package built without llama.cpp, with the host build's library added: pip checks each
    file against RECORD, so the library must be listed there with its hash and size."""
    import zipfile

    from bench.catalog import _record_sha256
    from bench.runtimes.host_wheel import LIBRARY_IN_WHEEL, with_library

    pure = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(pure, "w") as wheel:
        wheel.writestr("llama_cpp/__init__.py", "")
        wheel.writestr("llama_cpp_python-0.3.36.dist-info/RECORD",
                       "llama_cpp/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
                       "llama_cpp_python-0.3.36.dist-info/RECORD,,\n")
    library = tmp_path / "libllama.so"
    library.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    merged = with_library(pure, library, tmp_path / "out")
    assert merged.name == pure.name
    with zipfile.ZipFile(merged) as wheel:
        assert wheel.read(LIBRARY_IN_WHEEL) == library.read_bytes()
        assert _record_sha256(wheel, LIBRARY_IN_WHEEL) == hashlib.sha256(library.read_bytes()).hexdigest()
        rows = wheel.read("llama_cpp_python-0.3.36.dist-info/RECORD").decode().splitlines()
        assert rows[-1] == "llama_cpp_python-0.3.36.dist-info/RECORD,," and len(rows) == 3
        assert f"{LIBRARY_IN_WHEEL},sha256=" in rows[1] and rows[1].endswith(f",{library.stat().st_size}")
        assert wheel.getinfo(LIBRARY_IN_WHEEL).external_attr >> 16 == 0o755


@pytest.mark.skipif(shutil.which("ccache") is None, reason="no ccache (./dev.sh test installs it)")
def test_a_define_that_changes_no_file_costs_no_compile_in_a_second_tree(tmp_path):
    """Why a GPU variant compiles little more than its backend: a tree configured with one more
    public define (as GGML_USE_VULKAN is) reuses, through ccache, every object whose preprocessed
    source that define does not change, and compiles again the ones it does."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.14)\nproject(tiny C)\n"
                                           "add_library(tiny STATIC plain.c uses_define.c)\n"
                                           "target_compile_definitions(tiny PUBLIC ${TINY_DEFINES})\n")
    (source / "plain.c").write_text("int plain(int x) { return x * 3; }\n")
    (source / "uses_define.c").write_text("#ifdef GPU\nint uses(void) { return 1; }\n#else\nint uses(void) { return 0; }\n#endif\n")
    cache = tmp_path / "ccache"

    def compile_tree(name: str, defines: str) -> dict[str, int]:
        plan = builder.BuildPlan("tiny", "cpu", source, "0", (f"-DTINY_DEFINES={defines}",), tmp_path / name,
                                 tmp_path / f"{name}-install", 1, cache)
        assert "-DCMAKE_C_COMPILER_LAUNCHER=ccache" in plan.cmake_configure()
        builder._compile(plan, NullProgress(), ("tiny",))
        stats = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True, env=plan.environment(),
                               check=True).stdout
        return {key: int(value) for key, value in (line.split("\t") for line in stats.splitlines())}

    first = compile_tree("cpu", "CPU_ONLY")
    assert first["cache_miss"] == 2
    second = compile_tree("gpu", "CPU_ONLY;GPU")
    assert second["cache_miss"] - first["cache_miss"] == 1  # uses_define.c: GPU changes it
    hits = sum(second[key] - first.get(key, 0) for key in ("direct_cache_hit", "preprocessed_cache_hit"))
    assert hits == 1  # plain.c: the same object, not compiled again


def test_without_ccache_a_tree_s_launcher_is_cleared(tmp_path, monkeypatch):
    monkeypatch.setattr(builder.shutil, "which", lambda tool: None if tool == "ccache" else f"/usr/bin/{tool}")
    plan = builder.plan_build("linux-arm64", tmp_path / "cache", src=str(_vendored_tree()))
    assert plan.compiler_cache is None and "-DCMAKE_CXX_COMPILER_LAUNCHER=" in plan.cmake_configure()
    assert plan.environment() == dict(os.environ)


def test_compile_progress_never_goes_back_nor_reads_a_sub_build_s_own_percentages():
    """Lines of a real Vulkan build's log (with -j2 and three targets): ggml-vulkan's shader
    generator is a CMake project of its own whose make prints its own [100%] while llama.cpp's build
    is at 4%, and make's count starts again for each target. A bar that followed them would read
    100% minutes before the end (and rich stops its clock there)."""
    lines = ["[  4%] Performing build step for 'vulkan-shaders-gen'",
             "[ 50%] Building CXX object CMakeFiles/vulkan-shaders-gen.dir/vulkan-shaders-gen.cpp.o",
             "[  6%] Building CXX object llama.cpp/ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o",
             "In file included from /src/ggml/src/ggml.c:1:",
             "[100%] Linking CXX executable vulkan-shaders-gen",
             "[100%] Built target vulkan-shaders-gen",
             "[ 10%] Performing install step for 'vulkan-shaders-gen'",
             "[ 57%] Building CXX object llama.cpp/src/CMakeFiles/llama.dir/llama-model.cpp.o",
             "[100%] Built target llama-server",
             "[  3%] Performing build step for 'vulkan-shaders-gen'",
             "[100%] Built target llama-bench"]
    progress = builder.CompileProgress()
    assert [progress.percent(line) for line in lines] == [4, None, 6, None, None, None, 10, 57, 99, None, None]
