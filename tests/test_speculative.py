"""Issue 23.5: speculative decoding. A draft model (catalog alias) in a scenario or `--draft`:
measured with and without on the same device in one `bench run` (llama-server both times), with
the share of drafted tokens the model accepted, the speed-up, a plot, and a run that fails rather
than store the model alone's figures as the draft's."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench import parse
from bench.config import parse_scenario, sweep_drafts
from bench.errors import ConfigError, UsageError
from bench.gguf import draft_vocabulary_problem, read_gguf
from bench.matrix import MatrixPoint, _row, draft_speedups, load_matrix_file, markdown
from bench.records import NO_DRAFT
from bench.runner import RunResult
from bench.runtimes.llama_server import draft_args
from bench.store import load_run
from conftest import assert_one_line_exit_2, bench_cli, write_gguf

LOGS = Path(__file__).parent / "data" / "llama-logs"
DRAFT_LOG = LOGS / "host-x86-llama-server-lv4-draft_smollm2-135m-q4_1-drafting-itself_bench-build-0c1e57098.txt"
MIB = 2**20


def _scenario(tmp_path: Path, extra: str = "", name: str = "drafted") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nrepetitions = 2\nwarmup = 0\nn_predict = 24\nn_ctx = 256\nidle_s = 0\n'
                    f'prompts = ["Once upon a time, there was a little"]\n{extra}')
    return path


def test_draft_keys_sweep_with_and_without_and_their_bad_values(tmp_path):
    one = parse_scenario(_scenario(tmp_path, 'draft = "smollm2-135m"\ndraft_max = 5\n'))
    assert (one.draft, one.drafts, one.draft_max) == (None, (NO_DRAFT, "smollm2-135m"), 5)
    assert one.serves  # every point of the sweep runs llama-server, the one without a draft too
    assert sweep_drafts(one) == [NO_DRAFT, "smollm2-135m"]
    assert one.with_overrides(draft="smollm2-135m").draft == "smollm2-135m"
    assert one.with_overrides(draft=NO_DRAFT).draft is None
    plain = parse_scenario(_scenario(tmp_path))
    assert (plain.drafts, plain.draft_max, plain.serves) == ((), 3, False) and sweep_drafts(plain) == [None]
    assert sweep_drafts(plain, ["a.gguf", NO_DRAFT]) == [NO_DRAFT, "a.gguf"]  # the model alone always comes first
    # a match key of its own, as depth: the draft does not change the workload's hash; draft_max does
    assert parse_scenario(_scenario(tmp_path, 'draft = "smollm2-135m"\n')).content_hash == plain.content_hash
    assert one.content_hash != plain.content_hash
    assert draft_args("/m/d.gguf", 5) == ["-md", "/m/d.gguf", "--spec-type", "draft-simple", "--spec-draft-n-max", "5"]
    for extra, message in (('draft = 3\n', "must be a catalog alias or .gguf path"),
                           ('draft = []\n', "must be a catalog alias"),
                           ('draft = ["a", "a"]\n', "repeats a value"),
                           ('draft = "a"\ndraft_max = 0\n', "'draft_max' must be >= 1"),
                           ('draft = "a"\ndraft_max = 65\n', "from 1 to 64"),
                           ('draft = "a"\ndepth = 64\n', "'draft' with 'depth' is not supported"),
                           ('draft = "a"\nparallel = 2\n', "'draft' with 'parallel' is not supported"),
                           ('draft = "a"\nkind = "llama-bench"\npp = 16\n', "this llama-bench has no draft model")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            parse_scenario(_scenario(tmp_path, extra))
    with pytest.raises(UsageError, match="'draft' with 'parallel'"):
        sweep_drafts(plain, ["a"], parallels=[2])
    matrix = tmp_path / "m.toml"
    matrix.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\ndraft = ["smollm2-135m"]\n')
    points = load_matrix_file(matrix).points()
    assert [point.draft for point in points] == [NO_DRAFT, "smollm2-135m"]
    assert points[1].key.endswith("|draft smollm2-135m") and points[0].label.endswith("no draft")
    matrix.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\ndraft = [""]\n')
    with pytest.raises(ConfigError, match="'draft' must be a catalog alias"):
        load_matrix_file(matrix)


def _tokenizer(path: Path, model: str, tokens: int, bos: int = 1) -> Path:
    return write_gguf(path, {"general.architecture": "llama", "tokenizer.ggml.model": model,
                             "tokenizer.ggml.bos_token_id": bos, "tokenizer.ggml.eos_token_id": 2},
                      [("token_embd.weight", [8, 4], 0)], string_array=[f"t{i}" for i in range(tokens)])


def test_a_draft_must_share_the_model_s_vocabulary_as_llama_cpp_checks_it(tmp_path, smollm2_path):
    smollm = read_gguf(smollm2_path)
    assert (smollm.vocab_type, smollm.vocab_size, smollm.bos_token_id, smollm.eos_token_id, smollm.add_bos) == \
        ("gpt2", 49152, 1, 2, False)
    assert draft_vocabulary_problem(smollm, smollm) is None
    base = read_gguf(_tokenizer(tmp_path / "base.gguf", "gpt2", 300))
    assert base.vocab_size == 300
    assert draft_vocabulary_problem(base, read_gguf(_tokenizer(tmp_path / "near.gguf", "gpt2", 300 + 128))) is None
    assert "vocabulary has 429 tokens and the model's 300" in draft_vocabulary_problem(
        base, read_gguf(_tokenizer(tmp_path / "far.gguf", "gpt2", 300 + 129)))
    assert "its tokenizer is 'llama' and the model's is 'gpt2'" in draft_vocabulary_problem(
        base, read_gguf(_tokenizer(tmp_path / "spm.gguf", "llama", 300)))
    adds = replace(base, add_bos=True)
    assert "BOS token is 7 and the model's is 1" in draft_vocabulary_problem(adds, replace(adds, bos_token_id=7))
    assert "the model adds a BOS token and the draft does not" in draft_vocabulary_problem(adds, replace(base, add_bos=False))


def test_bad_drafts_get_one_line_and_exit_2_before_anything_is_written(tmp_path, smollm2_path):
    spm = _tokenizer(tmp_path / "other-family.gguf", "llama", 32000)
    for args, message in ((("--draft", str(spm)), "cannot draft for 'smollm2-135m': its tokenizer is 'llama'"),
                          (("--draft", "no-such-model"), "unknown model 'no-such-model'"),
                          (("--draft", ""), "must be a catalog alias or .gguf path"),
                          (("--draft", "smollm2-135m", "--depth", "64"), "'draft' with 'depth' is not supported"),
                          (("--draft", "smollm2-135m", "--parallel", "2"), "'draft' with 'parallel' is not supported")):
        result = bench_cli("run", "--scenario", str(_scenario(tmp_path)), *args, "--out", str(tmp_path / "out"))
        assert_one_line_exit_2(result, message)
    ab = bench_cli("ab", "--base", "smollm2-135m", "--head", "smollm2-135m", "--out", str(tmp_path / "out"),
                   "--scenario", str(_scenario(tmp_path, 'draft = "smollm2-135m"\n')))
    assert ab.returncode == 2 and "an A/B compares one setup" in ab.stderr
    assert not (tmp_path / "out").exists()


def test_the_speed_up_is_decode_with_the_draft_over_the_same_point_without():
    def row(device: str, draft: str, decode: float) -> dict:
        summary = {"decode_tps_median": decode, "decode_tps_iqr": 1.0,
                   "draft_acceptance_median": None if draft == NO_DRAFT else 0.8}
        return _row(MatrixPoint(device, "m", "s", None, None, draft=draft),
                    RunResult(Path(f"/r/{device}-{draft}"), "complete", summary))
    rows = [row("host", NO_DRAFT, 40.0), row("host", "d", 60.0), row("pixel8", NO_DRAFT, 10.0), row("pixel8", "d", 5.0)]
    assert rows[1]["without_draft_key"] == rows[0]["key"]
    assert draft_speedups(rows) == {rows[1]["key"]: pytest.approx(1.5), rows[3]["key"]: pytest.approx(0.5)}
    table = markdown("t", rows)
    assert "| draft | accepted | speed-up |" in table and "| d | 80% | 1.50x |" in table and "| d | 80% | 0.50x |" in table
    assert draft_speedups(rows[1:2]) == {}  # no point without the draft: no speed-up claimed


def test_the_draft_s_buffers_are_the_second_load_in_the_log():
    loads = parse.parse_llama_loads(DRAFT_LOG.read_text())
    assert len(loads) == 2  # the model's, then the draft's, in one process
    for load in loads:
        assert load.total("weights") == pytest.approx(92.10 * MIB) and load.total("kv_cache") == pytest.approx(11.25 * MIB)
    assert parse.parse_llama_buffers(DRAFT_LOG.read_text()) == loads[0]


@pytest.mark.slow
def test_a_host_draft_run_measures_with_and_without_in_llama_server(host_runtime, smollm2_path, tmp_path):
    result = bench_cli("run", "--scenario", str(_scenario(tmp_path)), "--draft", "smollm2-135m", "--out", str(tmp_path),
                       "--json", "--no-correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    rows = payload["points"]
    assert [row["draft"] for row in rows] == [NO_DRAFT, "smollm2-135m"]
    assert all(row["status"] == "complete" for row in rows)
    alone, drafted = (load_run(row["run_dir"]) for row in rows)
    assert alone.run["runtime"]["kind"] == drafted.run["runtime"]["kind"] == "llama-server"  # the same runtime
    assert alone.run["runtime"]["draft"] is None and "draft" not in alone.run["model"]
    assert drafted.run["runtime"]["draft"] == "smollm2-135m" and drafted.run["runtime"]["draft_max"] == 3
    assert drafted.run["model"]["draft"]["sha256"] == drafted.run["model"]["sha256"]
    measured = drafted.requests[~drafted.requests["warmup"].astype(bool)]
    assert (measured["draft_tokens"] > 0).all() and (measured["draft_accepted"] <= measured["draft_tokens"]).all()
    assert alone.requests["draft_tokens"].isna().all()
    # the model drafting for itself at temperature 0 proposes exactly what it then picks
    assert drafted.run["summary"]["draft_acceptance_median"] == pytest.approx(1.0)
    memory = drafted.run["memory"]
    assert memory["draft"]["weights_bytes"] == pytest.approx(memory["weights_bytes"])
    assert "draft" in next(c for c in drafted.run["preflight"] if c["name"] == "memory")["detail"]
    matrix_dir = Path(payload["matrix_dir"])
    assert (matrix_dir / "draft.png").stat().st_size > 10_000
    table = (matrix_dir / "matrix.md").read_text()
    speedup = rows[1]["decode_tps_median"] / rows[0]["decode_tps_median"]
    assert f"| smollm2-135m | 100% | {speedup:.2f}x |" in table
    report = (Path(rows[1]["run_dir"]) / "report.md").read_text()
    assert "| draft | speculative decoding: `smollm2-135m`" in report and "| Draft tokens accepted |" in report
    assert "| draft model, all its buffers |" in report
    compared = bench_cli("compare", rows[0]["run_dir"], rows[1]["run_dir"])
    assert compared.returncode == 2 and "draft differs" in compared.stderr  # not the same setup


@pytest.mark.slow
def test_a_draft_llama_server_refuses_fails_the_run_instead_of_measuring_the_model_alone(host_runtime, smollm2_path,
                                                                                          tmp_path):
    """Past bench's header check (here: skipped, as a vocabulary that differs only in its token
    texts would pass it), llama-server logs that it cannot speculate and serves on without: the
    run must fail, not store the model alone's figures as the draft's."""
    from bench.catalog import model_info
    from bench.runner import RunOptions, run_benchmark
    from bench.targets import TargetChoice, open_target

    scenario = parse_scenario(_scenario(tmp_path, 'draft = "gemma3-270m"\n')).with_overrides(draft="gemma3-270m")
    model = replace(model_info("smollm2-135m"), draft=model_info("gemma3-270m"))
    _, target = open_target(TargetChoice(model="smollm2-135m", scenario="drafted"), None, None, scenario)
    try:
        result = run_benchmark(RunOptions(device="host", scenario=scenario, model=model, out_root=tmp_path,
                                          telemetry_hz=None, correctness=False), target)
    finally:
        target.release()
    assert result.status == "failed"
    assert "did not speculate with draft model 'gemma3-270m'" in result.reason
    assert "failed to initialize speculative decoding" in result.reason
    assert load_run(result.run_dir).run["status"] == "failed"


@pytest.mark.slow
def test_a_draft_sweep_on_the_sim_pushes_the_draft_and_speculates_on_the_phone(sim, host_runtime, smollm2_path, tmp_path):
    scenario = _scenario(tmp_path, 'draft = "smollm2-135m"\n').read_text().replace("repetitions = 2", "repetitions = 1")
    path = tmp_path / "drafted-sim.toml"
    path.write_text(scenario.replace("n_predict = 24", "n_predict = 12"))
    result = bench_cli("run", "--device", sim.serial, "--scenario", str(path), "--out", str(tmp_path), "--json",
                       "--no-correctness", "--telemetry-hz", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["points"]
    assert [row["draft"] for row in rows] == [NO_DRAFT, "smollm2-135m"]
    assert all(row["status"] == "complete" for row in rows), rows
    drafted = load_run(rows[1]["run_dir"]).run
    # the draft is the model's own file: pushed once, named twice on the phone
    assert drafted["pushed"]["draft"]["path"] == drafted["pushed"]["model"]["path"]
    assert drafted["pushed"]["draft"]["cached"] is True
    assert drafted["runtime"]["kind"] == "llama-server" and drafted["runtime"]["draft"] == "smollm2-135m"
    assert drafted["summary"]["draft_acceptance_median"] == pytest.approx(1.0)
    assert drafted["memory"]["draft"]["kv_cache_bytes"] == pytest.approx(drafted["memory"]["kv_cache_bytes"])
