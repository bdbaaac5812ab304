"""Beyond one desk: several phones at once, several adb servers, device-farm endpoints reached by
`adb connect`, and matrix files that resume. Emulated phones behind real adb servers prove it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.android import adb
from bench.catalog import cache_root
from bench.sim import control
from bench.store import load_run
from conftest import REPO, _free_port, bench_cli

pytestmark = pytest.mark.slow
TINY = 'name = "tiny"\nrepetitions = 1\nwarmup = 0\nn_predict = 16\nprompts = ["Hello there."]\n'


@pytest.fixture
def second_adb_server(adb_server):
    """Another real adb server on its own port, as a lab machine or a device farm would run."""
    port = _free_port(adb_server + 50)
    server = adb.Server("127.0.0.1", port)
    adb.ensure_server(server=server)
    yield server
    subprocess.run([adb.adb_binary(), "-P", str(port), "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def sims_on(adb_server):
    """Sims connected to the adb server given (or to none): all stopped after the test."""
    started = []

    def start(server: adb.Server | None, **options):
        info = control.start(cache_root(), name=f"fleet-{os.getpid()}-{len(started)}", **options)
        started.append((info, server))
        if server is not None:
            adb.connect(info.serial, server=server)
            adb.wait_for_state(info.serial, server=server)
        return info

    yield start
    for info, server in started:
        if server is not None:
            adb.disconnect(info.serial, server=server)
        control.stop(info)


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _overlap(runs: list[dict]) -> bool:
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    return spans[1][0] < spans[0][1]


def test_one_run_across_two_sims_behind_two_adb_servers(sims_on, second_adb_server, host_runtime, smollm2_path,
                                                         tmp_path):
    first_server = adb.default_server()
    one = sims_on(first_server)
    two = sims_on(second_adb_server)
    assert one.serial not in {d.serial for d in adb.list_devices(server=second_adb_server)}
    result = bench_cli("run", "--adb-server", first_server.label, "--adb-server", second_adb_server.label,
                       "--device", "all", "--scenario", str(_scenario(tmp_path)), "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["status"] == "complete" and len(payload["points"]) == 2
    runs = [load_run(point["run_dir"]).run for point in payload["points"]]
    assert {r["device"]["serial"] for r in runs} == {one.serial, two.serial}
    assert {r["device"]["extra"]["adb_server"] for r in runs} == {first_server.label, second_adb_server.label}
    assert _overlap(runs)  # the phones ran at the same time
    table = (Path(payload["matrix_dir"]) / "matrix.md").read_text()
    assert f"{first_server.label}/{one.serial}" in table and f"{second_adb_server.label}/{two.serial}" in table


def test_one_failing_phone_does_not_stop_the_others(sims_on, host_runtime, smollm2_path, tmp_path):
    good = sims_on(adb.default_server())
    hot = sims_on(adb.default_server(), profile="hot")  # fails the thermal preflight
    result = bench_cli("run", "--device", f"{good.serial},{hot.serial}", "--scenario", str(_scenario(tmp_path)),
                       "--out", str(tmp_path), "--json")
    assert result.returncode == 3, result.stderr[-3000:]
    points = {p["device"]: p for p in json.loads(result.stdout)["points"]}
    assert points[good.serial]["status"] == "complete" and points[good.serial]["decode_tps_median"] > 0
    assert points[hot.serial]["status"] == "failed" and "preflight 'thermal'" in points[hot.serial]["reason"]


def test_device_farm_endpoint_by_adb_connect_and_server_socket_convention(sims_on, adb_server, host_runtime,
                                                                          smollm2_path, tmp_path):
    farm = sims_on(None)  # like an STF endpoint: nobody has connected it yet
    assert farm.serial not in {d.serial for d in adb.list_devices()}
    result = bench_cli("run", "--connect", farm.serial, "--device", farm.serial, "--scenario", str(_scenario(tmp_path)),
                       "--out", str(tmp_path), "--json", "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["status"] == "complete"
    env = {k: v for k, v in os.environ.items() if k != adb.SERVER_PORT_ENV}
    listed = subprocess.run([sys.executable, "-m", "bench.cli", "devices", "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**env, adb.SERVER_SOCKET_ENV: f"tcp:127.0.0.1:{adb_server}"})
    assert listed.returncode == 0, listed.stderr
    assert any(d["serial"] == farm.serial for d in json.loads(listed.stdout)["devices"])
    adb.disconnect(farm.serial)
    refused = bench_cli("devices", "--adb-server", "127.0.0.2:1")  # loopback, but not this machine's server
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "no adb server answers at 127.0.0.2:1" in lines[0]


def test_matrix_file_resumes_where_it_stopped_and_compares_whole(tmp_path, smollm2_path):
    scenario = tmp_path / "soak.toml"
    scenario.write_text('name = "soak"\nrepetitions = 4\nwarmup = 0\nn_predict = 48\nprompts = ["Go on."]\n')
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(f'schema_version = 1\nname = "host-threads"\ndevices = ["host"]\nmodels = ["smollm2-135m"]\n'
                      f'scenarios = ["{scenario}"]\nthreads = [1, 2]\ntelemetry_hz = 0\n')
    out = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", "matrix", str(matrix), "--out", str(out), "--json"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # interrupt once the first point is done and the second has rows
        found = list(out.glob("*/matrix.json"))
        if found and sum(p["status"] == "complete" for p in json.loads(found[0].read_text())["points"]) == 1 and \
                len(list(found[0].parent.glob("*/requests.csv"))) == 2 and \
                len(sorted(found[0].parent.glob("*/requests.csv"))[-1].read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    first = json.loads(stdout)
    directory = Path(first["matrix_dir"])
    assert [p["status"] for p in first["points"]] == ["complete", "partial"]
    done_run = first["points"][0]["run_dir"]

    resumed = bench_cli("matrix", str(matrix), "--resume", str(directory), "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    points = json.loads(resumed.stdout)["points"]
    assert [p["status"] for p in points] == ["complete", "complete"] and points[0]["run_dir"] == done_run
    assert len(list(directory.glob("*/run.json"))) == 3  # the interrupted run is kept beside its rerun

    compared = bench_cli("compare", str(directory), str(directory), "--format", "json")
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert len(json.loads(compared.stdout)["comparisons"]) == 2  # one per matrix point (threads 1 and 2)
    bad = tmp_path / "bad.toml"
    bad.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nthreads = [0]\n')
    refused = bench_cli("matrix", str(bad), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "bad.toml:4" in refused.stderr and not (tmp_path / "no").exists()
