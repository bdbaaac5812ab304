"""Issue 23.2: load time cold and warm. --load-times drops the model from the page cache before
the first load (the host always; a phone only with root, else it says so), reloads warm after the
measured requests, and adds the first token to each; load_mode picks mmap or a copy."""

import json
from pathlib import Path

import pytest

from bench.config import parse_scenario
from bench.errors import ConfigError
from bench.host.device import drop_from_page_cache, page_cache_resident
from bench.runtimes import llama_bench
from bench.store import load_run
from conftest import bench_cli


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "load.toml"
    path.write_text('name = "load"\nrepetitions = 1\nwarmup = 1\nn_predict = 8\nn_ctx = 256\n'
                    f'prompts = ["Tell me about the sea."]\n{extra}')
    return path


def test_the_page_cache_of_a_file_is_measured_and_dropped(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\1" * (4 << 20))
    path.read_bytes()  # read: in the page cache
    assert page_cache_resident(str(path)) == pytest.approx(1.0)
    drop_from_page_cache(str(path))
    assert page_cache_resident(str(path)) == pytest.approx(0.0, abs=0.01)


def test_load_mode_key_and_its_flags(tmp_path):
    assert parse_scenario(_scenario(tmp_path)).load_mode == "mmap"
    read = parse_scenario(_scenario(tmp_path, 'load_mode = "read"\n'))
    assert read.load_mode == "read" and read.content_hash != parse_scenario(_scenario(tmp_path)).content_hash
    with pytest.raises(ConfigError, match="'load_mode' must be one of mmap, read"):
        parse_scenario(_scenario(tmp_path, 'load_mode = "mlock"\n'))
    assert llama_bench.command("b", "m", pp=8, tg=8, repetitions=1, threads=1, mmap=False)[-2:] == ["-lm", "none"]
    lb = tmp_path / "lb.toml"
    lb.write_text('name = "lb"\nkind = "llama-bench"\npp = 16\n')
    refused = bench_cli("run", "--scenario", str(lb), "--load-times", "--out", str(tmp_path / "out"))
    assert refused.returncode == 2 and "llama-bench loads the model itself" in refused.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_host_run_times_a_cold_load_and_a_warm_reload(smollm2_path, tmp_path):
    result = bench_cli("run", "--scenario", str(_scenario(tmp_path, 'load_mode = "read"\n')), "--load-times",
                       "--out", str(tmp_path), "--json", "--no-correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    run = load_run(run_dir).run
    cold, warm = run["load"]["cold"], run["load"]["warm"]
    assert cold["dropped"] and cold["resident_after"] <= 0.05 and cold["load_ms"] > 0
    values = run["summary"]["per_repetition"]
    assert values["load_cold_ms"] == [cold["load_ms"]] and values["load_warm_ms"] == [warm["load_ms"]]
    assert values["first_token_warm_ms"][0] == pytest.approx(warm["load_ms"] + warm["first_request_ttft_ms"])
    assert values["first_token_cold_ms"][0] > values["load_cold_ms"][0]
    # the copy into memory llama.cpp was asked for, as its log says
    assert run["memory"]["load_mode"] == "none" and run["runtime"]["load_mode"] == "read"
    report = (run_dir / "report.md").read_text()
    assert "| cold (the run's first load) |" in report and "| warm (reload after the measured requests) |" in report


@pytest.mark.slow
def test_a_phone_without_root_says_its_first_load_is_not_cold_and_reloads_warm(sim, host_runtime, smollm2_path,
                                                                               tmp_path):
    result = bench_cli("run", "--device", sim.serial, "--scenario", str(_scenario(tmp_path)), "--load-times",
                       "--out", str(tmp_path), "--json", "--no-correctness", "--telemetry-hz", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    cold = run["load"]["cold"]
    assert not cold["dropped"] and "no root" in cold["how"]
    assert any("the first load is not a cold one" in w for w in run["warnings"])
    values = run["summary"]["per_repetition"]
    assert values["load_cold_ms"] == [] and values["first_token_cold_ms"] == []  # never a cold figure that is not
    assert values["load_warm_ms"][0] > 0 and values["first_token_warm_ms"][0] > values["load_warm_ms"][0]
    assert run["memory"]["load_mode"] == "mmap"


@pytest.mark.slow
def test_a_rooted_phone_drops_its_page_cache_through_su(start_sim, host_runtime, smollm2_path, tmp_path):
    rooted = start_sim(settings=("shell.su=true",))
    result = bench_cli("run", "--device", rooted.serial, "--scenario", str(_scenario(tmp_path)), "--load-times",
                       "--out", str(tmp_path), "--json", "--no-correctness", "--no-telemetry")
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(json.loads(result.stdout)["run_dir"]).run
    cold = run["load"]["cold"]
    assert cold["dropped"] and cold["how"].endswith("as root (su)")
    values = run["summary"]["per_repetition"]
    assert values["load_cold_ms"] == [cold["load_ms"]] and values["first_token_cold_ms"][0] > cold["load_ms"]
