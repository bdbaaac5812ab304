"""Bad input: one line naming the problem and the fix, exit 2, and no results directory."""

from pathlib import Path

import pytest

from conftest import assert_one_line_exit_2, bench_cli, write_gguf


@pytest.mark.parametrize("args, needles", [
    (["--device", "pixle8"], ["unknown device 'pixle8'"]),
    (["--model", "smollm3-135m"], ["unknown model 'smollm3-135m'", "smollm2-135m"]),
    (["--scenario", "quik"], ["unknown scenario 'quik'", "quick"]),
    (["--threads", "0"], ["--threads", "must be >= 1"]),
    (["--threads", "-2"], ["--threads"]),
    (["--repetitions", "x"], ["--repetitions", "not an integer"]),
    (["--telemetry-hz", "0"], ["--telemetry-hz"]),
    (["--adb-server", "nowhere"], ["'nowhere' is not an adb server address", "HOST:PORT"]),
    (["--device", "any", "--adb-server", "127.0.0.2:9"], ["no adb server answers at 127.0.0.2:9"]),
    (["--device", "pixel8,pixle8"], ["unknown device 'pixle8'"]),
    (["--affinity", "2-1"], ["--affinity", "backwards"]),
    (["--repack", "maybe"], ["--repack", "invalid choice"]),
])
def test_run_bad_flags(tmp_path: Path, adb_server, args, needles):  # a private adb server answers --device
    out = tmp_path / "results"
    result = bench_cli("run", "--out", str(out), *args)
    assert_one_line_exit_2(result, *needles)
    assert not out.exists()


def test_malformed_scenario_names_file_and_line(tmp_path: Path):
    scenario = tmp_path / "broken.toml"
    scenario.write_text('name = "broken"\nprompts = ["a"]\nn_predict = "many"\n')
    out = tmp_path / "results"
    result = bench_cli("run", "--out", str(out), "--scenario", str(scenario))
    assert_one_line_exit_2(result, "broken.toml:3", "n_predict")
    assert not out.exists()


def test_not_gguf_model(tmp_path: Path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"\x89PNG" + b"\0" * 64)
    out = tmp_path / "results"
    result = bench_cli("run", "--out", str(out), "--model", str(fake))
    assert_one_line_exit_2(result, "not a GGUF")
    assert not out.exists()


def test_truncated_gguf_model(tmp_path: Path):
    meta = {"general.architecture": "llama", "general.file_type": 2}
    cut = write_gguf(tmp_path / "cut.gguf", meta, [("w", [1024, 1024], 0)], data_bytes=4096)
    out = tmp_path / "results"
    result = bench_cli("run", "--out", str(out), "--model", str(cut))
    assert_one_line_exit_2(result, "truncated")
    assert not out.exists()


def test_missing_model_file(tmp_path: Path):
    out = tmp_path / "results"
    result = bench_cli("run", "--out", str(out), "--model", str(tmp_path / "nope.gguf"))
    assert_one_line_exit_2(result, "does not exist")
    assert not out.exists()


def test_report_on_missing_dir(tmp_path: Path):
    result = bench_cli("report", str(tmp_path / "nothing"))
    assert_one_line_exit_2(result, "not a run directory")


def test_unknown_model_pull():
    result = bench_cli("models", "pull", "7b-q5")
    assert_one_line_exit_2(result, "unknown model '7b-q5'", "7b-q4")


def test_listing_commands_json():
    import json

    models = json.loads(bench_cli("models", "--json").stdout)
    assert models["schema_version"] == 1 and any(m["alias"] == "smollm2-135m" for m in models["models"])
    scenarios = json.loads(bench_cli("scenarios", "--json").stdout)
    assert {s["name"] for s in scenarios["scenarios"]} >= {"quick", "chat", "long-prompt", "sustained", "pp512-tg128"}


def test_matrix_file_bad_input(tmp_path: Path, adb_server):
    out = tmp_path / "results"
    missing = bench_cli("matrix", str(tmp_path / "none.toml"), "--out", str(out))
    assert_one_line_exit_2(missing, "none.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\nthread = [1]\n')
    assert_one_line_exit_2(bench_cli("matrix", str(unknown), "--out", str(out)), "unknown.toml:4", "unknown key 'thread'")
    empty = tmp_path / "empty.toml"
    empty.write_text('devices = []\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\n')
    assert_one_line_exit_2(bench_cli("matrix", str(empty), "--out", str(out)), "empty.toml:1", "'devices'")
    model = tmp_path / "model.toml"
    model.write_text('devices = ["host"]\nmodels = ["smollm3"]\nscenarios = ["quick"]\n')
    assert_one_line_exit_2(bench_cli("matrix", str(model), "--out", str(out)), "unknown model 'smollm3'")
    resume = bench_cli("matrix", str(model), "--resume", str(tmp_path), "--out", str(out))
    assert_one_line_exit_2(resume, "holds no matrix.json")
    assert not out.exists()
