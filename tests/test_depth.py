"""Issue 23.1: prefill and decode with the KV cache already holding D tokens (llama-bench's n_depth),
on the host and on the emulated phone, a sweep over depths with its plot, and the KV cache's size
at each depth from the model's shapes."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.checks import _depth_check
from bench.runtimes import llama_bench
from bench.store import load_run
from conftest import assert_one_line_exit_2, bench_cli

# SmolLM2-135M as its model card and config.json state it: 30 layers, 3 key/value heads of 64
# dimensions; f16 K and V take 30 x 3 x (64 + 64) x 2 bytes per token.
SMOLLM2_KV_BYTES_PER_TOKEN = 30 * 3 * (64 + 64) * 2


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "deep.toml"
    path.write_text('name = "deep"\nrepetitions = 2\nwarmup = 0\nn_predict = 8\nn_ctx = 1024\nidle_s = 0\n'
                    f'prompts = ["Tell me about the sea."]\n{extra}')
    return path


def _requests(run_dir: str) -> pd.DataFrame:
    data = load_run(run_dir)
    return data.requests[~data.requests["warmup"].astype(bool)]


def test_the_depth_check_knows_a_held_cache_from_a_dropped_one():
    rows = {"warmup": [False, False], "error": [None, None], "repetition": [0, 1]}
    held = pd.DataFrame({**rows, "cached_tokens": [256, 256]})
    dropped = pd.DataFrame({**rows, "cached_tokens": [256, 0]})
    assert _depth_check(held, 256)["ok"] is True
    failed = _depth_check(dropped, 256)
    assert failed["ok"] is False and failed["invalidates"] and "1 of 2 requests" in failed["detail"]
    assert _depth_check(held, 0)["ok"] is None
    assert llama_bench.command("b", "m", pp=64, tg=16, repetitions=2, threads=2, depth=512)[-2:] == ["-d", "512"]
    assert "-d" not in llama_bench.command("b", "m", pp=64, tg=16, repetitions=2, threads=2)


@pytest.mark.slow
def test_a_host_run_at_depth_measures_only_its_own_tokens_on_a_held_cache(smollm2_path, tmp_path):
    result = bench_cli("run", "--scenario", str(_scenario(tmp_path, "depth = 256\n")), "--out", str(tmp_path),
                       "--json", "--no-correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = json.loads(result.stdout)["run_dir"]
    run = load_run(run_dir).run
    requests = _requests(run_dir)
    assert run["scenario"]["depth"] == 256
    assert (requests["cached_tokens"] >= 256).all() and (requests["prompt_tokens"] > 256).all()
    assert (requests["prompt_tokens"] - requests["cached_tokens"] < 32).all()  # the prompt's own tokens only
    depth_check = next(c for c in run["summary"]["validity"]["checks"] if c["name"] == "depth")
    assert depth_check["ok"] is True and run["summary"]["validity"]["valid"]
    assert run["kv_cache"]["bytes_at_depth"] == 256 * SMOLLM2_KV_BYTES_PER_TOKEN  # 5.6 MiB
    assert run["kv_cache"]["bytes_at_n_ctx"] == 1024 * SMOLLM2_KV_BYTES_PER_TOKEN
    assert "| depth | 256 tokens in the KV cache" in (Path(run_dir) / "report.md").read_text()


@pytest.mark.slow
def test_a_depth_sweep_on_the_sim_is_one_run_a_depth_with_its_plot(sim, host_runtime, smollm2_path, tmp_path):
    result = bench_cli("run", "--device", sim.serial, "--scenario", str(_scenario(tmp_path)), "--depth", "0,384",
                       "--out", str(tmp_path), "--json", "--no-correctness", "--telemetry-hz", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    rows = payload["points"]
    assert [row["depth"] for row in rows] == [0, 384] and all(row["status"] == "complete" for row in rows)
    assert rows[1]["kv_cache_bytes_at_depth"] == 384 * SMOLLM2_KV_BYTES_PER_TOKEN
    deep = _requests(rows[1]["run_dir"])
    assert (deep["cached_tokens"] >= 384).all()  # llama-server reused the depth's tokens (timings.cache_n)
    shallow = _requests(rows[0]["run_dir"])
    assert (shallow["cached_tokens"] == 0).all()
    matrix_dir = Path(payload["matrix_dir"])
    assert (matrix_dir / "depth.png").stat().st_size > 10_000
    table = (matrix_dir / "matrix.md").read_text()
    assert "| depth | KV MiB |" in table and f"| 384 | {384 * SMOLLM2_KV_BYTES_PER_TOKEN / 2**20:,.1f} |" in table
    compared = bench_cli("compare", rows[0]["run_dir"], rows[1]["run_dir"])
    assert compared.returncode == 2 and "depth differs: 0 vs 384" in compared.stderr  # not the same setup


def test_bad_depths_get_one_line_and_exit_2(tmp_path):
    for extra, message in (("depth = -1\n", "'depth' must be a number of tokens"),
                           ("depth = [0, 0]\n", "repeats a value"),
                           ("depth = 1020\n", "depth 1020 + n_predict 8 leave no room"),
                           ("depth = 64\nkeep_history = true\n", "both fill the KV cache")):
        result = bench_cli("run", "--scenario", str(_scenario(tmp_path, extra)), "--out", str(tmp_path / "out"))
        assert_one_line_exit_2(result, message)
    flag = bench_cli("run", "--scenario", str(_scenario(tmp_path)), "--depth", "2000", "--out", str(tmp_path / "out"))
    assert flag.returncode == 2 and "depth 2000 + n_predict 8 leave no room for a prompt in n_ctx 1024" in flag.stderr
    word = bench_cli("run", "--depth", "deep", "--out", str(tmp_path / "out"))
    assert word.returncode == 2 and "'deep' is not a number of tokens" in word.stderr
    assert not (tmp_path / "out").exists()
