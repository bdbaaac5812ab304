"""Issue 23.4: N concurrent sequences in llama-server's slots (llama-batched-bench's -npl), on the
host and on the emulated phone: each sequence's own decode and TTFT, the aggregate decode of all
of them, a sweep over N with its plot, and energy that counts each stretch of time once."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.config import parse_scenario
from bench.energy import energy_phases, window_energy
from bench.errors import ConfigError
from bench.matrix import load_matrix_file
from bench.runtimes.llama_server import slot_args
from bench.store import load_run
from bench.tables import merge_concurrent
from conftest import assert_one_line_exit_2, bench_cli


def _scenario(tmp_path: Path, extra: str = "", name: str = "together") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nrepetitions = 2\nwarmup = 0\nn_predict = 16\nn_ctx = 256\nidle_s = 0\n'
                    f'prompts = ["Tell me about the sea."]\n{extra}')
    return path


def _rows(rows: list[dict]) -> pd.DataFrame:
    base = {"warmup": False, "error": None, "cached_tokens": 0, "prompt_tokens": 10, "step": 0, "prefill_tps": 100.0,
            "decode_tps": 10.0, "itl_p95_ms": 5.0}
    return pd.DataFrame([{**base, **row} for row in rows])


# Two steps of two sequences each. Step 0: sequence 0 sent at 10.0 s, first token after 100 ms,
# done after 1100 ms with 11 tokens; sequence 1 sent at 10.0 s, first token after 200 ms, done
# after 1200 ms with 21 tokens. Decode of both: 10 + 20 tokens from 10.1 s to 11.2 s.
STEP_0 = [{"repetition": 0, "step": 0, "sequence": 0, "t_start_s": 10.0, "ttft_ms": 100.0, "e2e_ms": 1100.0, "gen_tokens": 11},
          {"repetition": 0, "step": 0, "sequence": 1, "t_start_s": 10.0, "ttft_ms": 200.0, "e2e_ms": 1200.0, "gen_tokens": 21}]
# Step 1: both from 12.0 s, first tokens at 12.5 s, done at 13.5 s, 41 tokens each: 80 / 1 s.
STEP_1 = [{"repetition": 0, "step": 1, "sequence": s, "t_start_s": 12.0, "ttft_ms": 500.0, "e2e_ms": 1500.0, "gen_tokens": 41}
          for s in (0, 1)]


def test_energy_of_concurrent_sequences_counts_each_second_once():
    # 2 W throughout: step 0's windows overlap (10.0-11.1 and 10.0-11.2), so the energy is 2 W over
    # 1.2 s = 2.4 J for 30 + ... tokens, never 2.2 + 2.4 J
    times, watts = np.arange(9.0, 14.01, 0.05), np.full(101, 2.0)
    energy = window_energy(times, watts, [(10.0, 11.1), (10.0, 11.2)], np.array([11.0, 21.0]))
    assert energy.joules == pytest.approx(2.4) and energy.windows == 1 and energy.tokens == 32
    assert energy.j_per_token == pytest.approx(2.4 / 32)
    merged = merge_concurrent(_rows(STEP_0 + STEP_1))
    assert list(merged["sequences"]) == [2, 2] and list(merged["gen_tokens"]) == [32, 82]
    assert list(merged["e2e_ms"]) == pytest.approx([1200.0, 1500.0]) and list(merged["ttft_ms"]) == pytest.approx([100.0, 500.0])
    apart = _rows([{**STEP_0[0], "t_start_s": 20.0}, STEP_0[1]])
    assert list(merge_concurrent(apart)["sequences"]) == [1, 1]  # windows that do not overlap stay apart
    samples = pd.DataFrame({"t_s": times, "source": "battery", "name": "power", "value": watts, "unit": "W"})
    phases = energy_phases(_rows(STEP_0 + STEP_1), samples, idle=None, capacity_mah=None, charging=False)
    assert phases["energy_j"] == pytest.approx(2.4 + 3.0) and phases["j_per_token"] == pytest.approx(5.4 / 114)
    # one sequence's prefill runs while another decodes: no energy is either phase's alone
    assert phases["split"].startswith("none") and phases["decode_j_per_token"] is None
    assert phases["prefill_j_per_prompt_token"] is None


def test_parallel_keys_and_their_bad_values(tmp_path):
    assert parse_scenario(_scenario(tmp_path, "parallel = 4\n")).parallel == 4
    sweep = parse_scenario(_scenario(tmp_path, "parallel = [1, 2, 4]\n"))
    assert (sweep.parallel, sweep.parallels) == (1, (1, 2, 4))
    plain = parse_scenario(_scenario(tmp_path))
    assert (plain.parallel, plain.sequences) == (None, 1)
    assert sweep.content_hash == plain.content_hash  # a match key of its own, as threads and depth
    assert slot_args(4, 256) == ["-np", "4", "-c", "1024"]  # every slot gets the scenario's n_ctx
    for extra, message in (("parallel = 0\n", "must be a number of sequences from 1 to 64"),
                           ("parallel = [2, 2]\n", "repeats a value"),
                           ("parallel = 65\n", "from 1 to 64"),
                           ('parallel = "4"\n', "must be a number of sequences"),
                           ("parallel = 2\ndepth = 64\n", "'parallel' with 'depth' is not supported"),
                           ('parallel = 2\nkind = "llama-bench"\npp = 16\n', "llama-bench has none")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            parse_scenario(_scenario(tmp_path, extra))
    matrix = tmp_path / "m.toml"
    matrix.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nparallel = [1, 4]\n')
    spec = load_matrix_file(matrix)
    assert [point.parallel for point in spec.points()] == [1, 4] and "parallel 4" in spec.points()[1].key
    matrix.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nparallel = [0]\n')
    with pytest.raises(ConfigError, match="'parallel' must be a number of sequences"):
        load_matrix_file(matrix)


def test_bad_parallel_flags_get_one_line_and_exit_2(tmp_path):
    for args, message in ((("--parallel", "0"), "must be a number of sequences from 1 to 64"),
                          (("--parallel", "two"), "'two' is not a number of sequences"),
                          (("--parallel", "2", "--depth", "64"), "'parallel' with 'depth' is not supported")):
        result = bench_cli("run", "--scenario", str(_scenario(tmp_path)), *args, "--out", str(tmp_path / "out"))
        assert_one_line_exit_2(result, message)
    ab = bench_cli("ab", "--base", "smollm2-135m", "--head", "smollm2-135m", "--out", str(tmp_path / "out"),
                   "--scenario", str(_scenario(tmp_path, "parallel = [1, 2]\n")))
    assert ab.returncode == 2 and "an A/B compares at one count" in ab.stderr
    assert not (tmp_path / "out").exists()


def _concurrent(requests: pd.DataFrame) -> bool:
    """Every step's sequences decoded at the same time: each one's first token came before any
    of them finished (one slot would have served them one after the other)."""
    start = requests["t_start_s"]
    first, last = start + requests["ttft_ms"] / 1000, start + requests["e2e_ms"] / 1000
    return all(first[group.index].max() < last[group.index].min()
               for _, group in requests.groupby(["repetition", "step"]))


def _measured(run_dir) -> pd.DataFrame:
    requests = load_run(run_dir).requests
    return requests[~requests["warmup"].astype(bool)].reset_index(drop=True)


@pytest.mark.slow
def test_a_host_parallel_run_serves_its_sequences_together_in_llama_server(host_runtime, smollm2_path, tmp_path):
    result = bench_cli("run", "--scenario", str(_scenario(tmp_path)), "--parallel", "3", "--out", str(tmp_path),
                       "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = json.loads(result.stdout)["run_dir"]
    run = load_run(run_dir).run
    assert run["runtime"]["kind"] == "llama-server" and run["runtime"]["parallel"] == 3
    assert run["scenario"]["parallel"] == 3 and run["kv_cache"]["slots"] == 3
    assert run["kv_cache"]["bytes_all_slots"] == 3 * run["kv_cache"]["bytes_at_n_ctx"]
    requests = _measured(run_dir)
    assert sorted(requests["sequence"].astype(int)) == [0, 0, 1, 1, 2, 2] and _concurrent(requests)
    summary = run["summary"]
    # three sequences decoding together: more tokens a second than each one gets on its own
    assert summary["aggregate_decode_tps_median"] > summary["decode_tps_median"]
    assert run["correctness"]["verdict"] == "pass"  # llama-server with three slots scores the probe
    report = (Path(run_dir) / "report.md").read_text()
    assert "| parallel | 3 concurrent sequences" in report and "| Aggregate decode (all sequences) |" in report
    alone = bench_cli("run", "--scenario", str(_scenario(tmp_path)), "--parallel", "1", "--out", str(tmp_path),
                      "--json", "--no-correctness")
    assert alone.returncode == 0, alone.stderr[-3000:]
    compared = bench_cli("compare", json.loads(alone.stdout)["run_dir"], run_dir)
    assert compared.returncode == 2 and "parallel differs: 1 vs 3" in compared.stderr  # not the same setup


@pytest.mark.slow
def test_a_parallel_sweep_on_the_sim_runs_slots_on_the_phone_with_its_plot(sim, host_runtime, smollm2_path, tmp_path):
    result = bench_cli("run", "--device", sim.serial, "--scenario", str(_scenario(tmp_path, "parallel = [1, 2]\n")),
                       "--out", str(tmp_path), "--json", "--no-correctness", "--telemetry-hz", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    rows = payload["points"]
    assert [row["parallel"] for row in rows] == [1, 2] and all(row["status"] == "complete" for row in rows)
    two = load_run(rows[1]["run_dir"]).run
    assert two["runtime"]["kind"] == "llama-server" and two["runtime"]["parallel"] == 2
    assert two["memory"]["kv_cache_bytes"] == two["kv_cache"]["bytes_all_slots"] == 2 * two["kv_cache"]["bytes_at_n_ctx"]
    requests = _measured(rows[1]["run_dir"])
    assert sorted(requests["sequence"].astype(int)) == [0, 0, 1, 1] and _concurrent(requests)
    # the phone's energy meters: each stretch of time once, and no prefill/decode split of it
    energy = two["summary"]["energy_phases"]
    assert energy["available"] and energy["requests"] == 2 and energy["split"].startswith("none")
    assert energy["decode_j_per_token"] is None and two["summary"]["rail_energy"]["requests"] == 2
    matrix_dir = Path(payload["matrix_dir"])
    assert (matrix_dir / "parallel.png").stat().st_size > 10_000
    table = (matrix_dir / "matrix.md").read_text()
    assert "| parallel | aggregate t/s |" in table


@pytest.mark.slow
def test_a_sweep_over_threads_keeps_the_parallel_asked_for_at_every_point(host_runtime, smollm2_path, tmp_path):
    """A sweep runs as a matrix, which reads the scenario again by name: --parallel (and --depth)
    must travel with it, not fall back to the scenario's own."""
    result = bench_cli("run", "--scenario", str(_scenario(tmp_path)), "--threads", "1,2", "--parallel", "2",
                       "--repetitions", "1", "--out", str(tmp_path), "--json", "--no-correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["points"]
    assert [row["parallel"] for row in rows] == [2, 2]
    assert [load_run(row["run_dir"]).run["runtime"]["parallel"] for row in rows] == [2, 2]


def test_concurrent_sequences_get_a_trace_track_each_so_their_slices_nest():
    from bench.trace import trace_events

    trace = trace_events({"run_id": "r"}, _rows(STEP_0 + STEP_1), pd.DataFrame(columns=["t_s", "source", "name", "value", "unit"]), ())
    slices = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["name"].startswith("request")]
    tracks = {e["tid"] for e in slices}
    assert len(tracks) == 2  # one track a sequence
    for tid in tracks:  # on each track, no two requests overlap
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices if e["tid"] == tid)
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert {"requests, sequence 0", "requests, sequence 1"} <= names
