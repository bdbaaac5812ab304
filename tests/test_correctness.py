"""The correctness gate (issue 21): every run scores bench's probe against the host CPU reference.
Known answers for the statistics, then the real paths: the CPU runtime passes; a model with one
quantized block corrupted (header intact, a local unpinned path) fails while its speed is the same,
and `bench compare` fails the gate on it; llama-server on the emulated phone passes, and fails when
the sim corrupts its tokens."""

import json
import math
import subprocess
import sys

import pytest

from bench.correctness import (DECISIVE_MARGIN_NATS, MAX_CHANCE_FRACTION, UNSCORED_LOGPROB, Position, Scores,
                               evaluate, probe_text)
from bench.sim import control
from bench.store import load_run
from conftest import bench_cli, corrupt_first_block

TOKENS = tuple(range(101))  # 100 positions


def _reference(decisive: int = 40, logprob: float = -2.0, vocab: int = 50_000) -> Scores:
    """Positions 0..decisive-1 decisive (margin 2 nats), the rest near-ties (margin 0.1)."""
    return Scores(TOKENS, tuple(Position(top=i, target_logprob=logprob, margin=2.0 if i < decisive else 0.1)
                                for i in range(100)), vocab, "reference")


def _run(reference: Scores, flipped: set[int] = frozenset(), logprob: float | None = None) -> Scores:
    return Scores(TOKENS, tuple(Position(top=p.top + 1 if i in flipped else p.top,
                                         target_logprob=p.target_logprob if logprob is None else logprob)
                                for i, p in enumerate(reference.positions)), 0, "runtime")


def test_the_same_scores_pass_with_full_agreement_and_a_perplexity_ratio_of_one():
    reference = _reference()
    verdict = evaluate(_run(reference), reference)
    assert verdict.passed and verdict.agreement == 1.0 and verdict.decisive == 40
    assert verdict.perplexity == pytest.approx(math.exp(2.0)) and verdict.log_perplexity_ratio == pytest.approx(0.0)


def test_agreement_counts_decisive_positions_only():
    reference = _reference()
    near_ties = set(range(40, 100))  # rounding may flip these: never counted
    assert evaluate(_run(reference, near_ties), reference).agreement == 1.0
    four_of_forty = {0, 1, 2, 3}  # 90% agreement: the threshold itself passes
    assert evaluate(_run(reference, four_of_forty), reference).agreement == pytest.approx(0.90)
    assert evaluate(_run(reference, four_of_forty), reference).passed
    five = evaluate(_run(reference, {0, 1, 2, 3, 4}), reference)
    assert not five.passed and five.agreement == pytest.approx(35 / 40) and "5 of 40 positions" in five.reason
    assert [d["position"] for d in five.disagreements] == [1, 2, 3, 4, 5]  # token k is predicted at position k
    few = evaluate(_run(_reference(decisive=5), {0, 1, 2}), _reference(decisive=5))
    assert few.agreement is None and few.passed  # too few decisive positions to judge agreement


def test_the_perplexity_ratio_has_a_known_answer_and_a_band():
    reference = _reference(logprob=-2.0)
    within = evaluate(_run(reference, logprob=-2.09), reference)  # ppl e^2.09 / e^2 = e^0.09: +9.4%
    assert within.passed and math.exp(within.log_perplexity_ratio) == pytest.approx(math.exp(0.09))
    beyond = evaluate(_run(reference, logprob=-2.2), reference)
    assert not beyond.passed and "+22%" in beyond.reason
    lower = evaluate(_run(reference, logprob=-1.8), reference)  # far more sure than the reference: not the same model
    assert not lower.passed and "-18%" in lower.reason


def test_an_unscorable_position_counts_at_the_floor():
    reference = _reference()
    run = Scores(TOKENS, tuple(Position(p.top, None if i == 0 else float("nan") if i == 1 else p.target_logprob)
                               for i, p in enumerate(reference.positions)), 0, "runtime")
    assert run.logprobs()[:3] == [UNSCORED_LOGPROB, UNSCORED_LOGPROB, -2.0]
    assert not evaluate(run, reference).passed  # two positions at -30: the perplexity ratio is e^0.56


def test_a_reference_near_chance_says_the_model_file_is_broken():
    vocab = 50_000
    broken = _reference(logprob=-math.log(vocab) * (MAX_CHANCE_FRACTION + 0.05), vocab=vocab)
    verdict = evaluate(_run(broken), broken)  # the runtime agrees with its broken reference: still a failure
    assert not verdict.passed and "model file itself is broken" in verdict.reason
    assert verdict.chance_fraction == pytest.approx(MAX_CHANCE_FRACTION + 0.05)


def test_scores_of_another_token_sequence_are_refused():
    reference = _reference()
    with pytest.raises(ValueError):
        evaluate(Scores(TOKENS[:-1], reference.positions[:-1], 0, "runtime"), reference)


def test_the_probe_is_plain_english_of_a_useful_length():
    text = probe_text()
    assert 300 < len(text) < 1000 and text.isascii() and DECISIVE_MARGIN_NATS > 0


# -- the real paths ----------------------------------------------------------------------------------

def _run_json(*args: str) -> dict:
    result = bench_cli("run", "--json", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_corrupted_block_fails_correctness_at_the_same_speed_and_fails_the_gate(smollm2_path, tmp_path):
    good = _run_json("--repetitions", "2", "--out", str(tmp_path / "r"))
    good_run = load_run(good["run_dir"]).run
    assert good_run["correctness"]["verdict"] == "pass" and good_run["summary"]["validity"]["valid"]
    assert good_run["correctness"]["value"]["top1_agreement"] == 1.0  # the CPU runtime is the reference's own
    assert 0 < good_run["correctness"]["seconds"] < 60

    broken = tmp_path / "smollm2-corrupt.gguf"
    corrupt_first_block(smollm2_path, broken, "blk.0.ffn_down.weight")
    bad = _run_json("--model", str(broken), "--repetitions", "2", "--out", str(tmp_path / "r"))
    bad_run = load_run(bad["run_dir"]).run
    assert bad_run["status"] == "complete" and bad_run["correctness"]["verdict"] == "fail"
    assert "model file itself is broken" in bad_run["correctness"]["reason"]
    assert bad_run["summary"]["validity"]["valid"] is False and "wrong output" in bad_run["summary"]["validity"]["invalid_reason"]
    ratio = bad["summary"]["decode_tps_median"] / good["summary"]["decode_tps_median"]
    assert 0.5 < ratio < 2.0  # as fast as the good one (within this machine's noise): speed says nothing
    report = open(f"{bad['run_dir']}/report.md").read()
    assert "## Correctness" in report and "FAILED" in report

    compared = bench_cli("compare", good["run_dir"], bad["run_dir"], "--fail-on-regression", "--ignore", "model")
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "wrong output" in compared.stdout and "the base's was right" in compared.stdout

    skipped = _run_json("--repetitions", "1", "--no-correctness", "--out", str(tmp_path / "r"))
    record = load_run(skipped["run_dir"]).run["correctness"]
    assert record == {"schema_version": 1, "verdict": "skipped", "reason": "--no-correctness"}


@pytest.mark.slow
def test_llama_server_on_the_phone_passes_and_a_sim_that_corrupts_its_tokens_fails(start_sim, host_runtime,
                                                                                    smollm2_path, tmp_path):
    info = start_sim(name="correct")
    honest = _run_json("--device", info.serial, "--repetitions", "1", "--no-telemetry", "--out", str(tmp_path / "r"))
    record = load_run(honest["run_dir"]).run["correctness"]
    # another build than the reference's wheel, with flash attention on (llama-server's auto; the wheel's
    # is off): honest differences only, measured at +2.4% perplexity and every decisive position agreeing
    assert record["verdict"] == "pass", record
    assert record["runtime"].startswith("llama-server") and record["reference"]["source"].startswith("llama-cpp-python")
    assert record["value"]["top1_agreement"] >= 0.9 and abs(record["value"]["perplexity_ratio"] - 1) < 0.05

    control.inject(info, "tokens-corrupt")
    corrupted = _run_json("--device", info.serial, "--repetitions", "1", "--no-telemetry", "--out", str(tmp_path / "r"))
    run = load_run(corrupted["run_dir"]).run
    assert run["correctness"]["verdict"] == "fail" and "computes something else" in run["correctness"]["reason"]
    assert run["summary"]["validity"]["valid"] is False
    assert corrupted["summary"]["decode_tps_median"] > 0  # the speed figures are kept, for diagnosis


def test_the_sim_fault_moves_every_token_id_and_keeps_the_length():
    from bench.sim.services import corrupt_token_ids

    chunk = b'{"id":12,"logprob":-0.5,"top_logprobs":[{"id": 9,"logprob":-0.5}],"content":"id"}'
    moved = corrupt_token_ids(chunk)
    assert moved == b'{"id":13,"logprob":-0.5,"top_logprobs":[{"id": 0,"logprob":-0.5}],"content":"id"}'
    assert len(moved) == len(chunk)


def test_no_correctness_is_a_flag_of_run_ab_and_matrix():
    for command in ("run", "ab", "matrix"):
        text = subprocess.run([sys.executable, "-m", "bench.cli", command, "--help"], capture_output=True, text=True).stdout
        assert "--no-correctness" in text, command
