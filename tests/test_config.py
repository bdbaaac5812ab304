from pathlib import Path

import pytest

from bench.config import known_scenarios, parse_scenario, resolve_scenario
from bench.errors import ConfigError, UsageError

REQUIRED = {"quick", "chat", "long-prompt", "sustained", "pp512-tg128"}


def test_shipped_scenarios_parse():
    known = known_scenarios()
    assert REQUIRED <= set(known)
    for name in REQUIRED:
        scenario = parse_scenario(known[name])
        assert scenario.name == name
        assert scenario.repetitions >= 1 and scenario.n_predict >= 1
        assert len(scenario.content_hash) == 64


def test_quick_is_the_documented_default():
    quick = resolve_scenario("quick")
    assert (quick.warmup, quick.repetitions, quick.n_predict, quick.temperature) == (1, 3, 64, 0.0)


def test_shapes_of_special_scenarios():
    assert resolve_scenario("pp512-tg128").prompts[0].synthetic_tokens == 512
    assert resolve_scenario("pp512-tg128").n_predict == 128
    assert resolve_scenario("chat").keep_history and len(resolve_scenario("chat").prompts) > 1
    assert resolve_scenario("sustained").duration_s == 600
    long_prompt = resolve_scenario("long-prompt").prompts[0].text
    assert long_prompt and len(long_prompt.split()) > 700  # read from the prompt file


def test_hash_changes_with_content_not_description(tmp_path: Path):
    base = 'name = "x"\nprompts = ["hi"]\nn_predict = 8\n'
    a = tmp_path / "a.toml"
    a.write_text(base + 'description = "one"\n')
    b = tmp_path / "b.toml"
    b.write_text(base + 'description = "two"\n')
    c = tmp_path / "c.toml"
    c.write_text(base.replace("8", "9"))
    assert parse_scenario(a).content_hash == parse_scenario(b).content_hash
    assert parse_scenario(a).content_hash != parse_scenario(c).content_hash


@pytest.mark.parametrize("body, message, line", [
    ('name = "x"\nprompts = ["a"]\nrepetitions = "three"\n', "'repetitions' must be int", 3),
    ('name = "x"\nprompts = ["a"]\nrepetitions = 0\n', "'repetitions' must be >= 1", 3),
    ('name = "x"\nprompts = ["a"]\nrepetitons = 2\n', "unknown key 'repetitons'", 3),
    ('name = "x"\nprompts = ["a"]\nthreads = true\n', "'threads' must be int", 3),
    ('name = "x"\nprompts = []\n', "'prompts' is empty", 2),
    ('name = "x"\nprompts = ["a"]\n\n[cooldown]\nmode = "ice"\n', "'cooldown.mode' must be", 5),
    ('name = "x"\nprompts = ["a"\n', "malformed TOML", 2),
    ('name = "x"\nprompts = [{ file = "missing.txt" }]\n', "cannot be read", 2),
])
def test_errors_name_file_key_and_line(tmp_path: Path, body, message, line):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        parse_scenario(path)
    assert message in str(caught.value)
    assert f"bad.toml:{line}" in str(caught.value)


def test_missing_prompts_is_named(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="missing key 'prompts'"):
        parse_scenario(path)


def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "new.toml"
    path.write_text('schema_version = 99\nprompts = ["a"]\n')
    with pytest.raises(ConfigError, match="newer"):
        parse_scenario(path)


def test_unknown_scenario_suggests_closest():
    with pytest.raises(UsageError) as caught:
        resolve_scenario("quik")
    assert "quick" in str(caught.value)


def test_overrides():
    quick = resolve_scenario("quick").with_overrides(repetitions=7, threads=2)
    assert (quick.repetitions, quick.threads) == (7, 2)


def test_idle_s_defaults_to_ten_seconds_and_leaves_the_hash_alone(tmp_path: Path):
    plain, idle = tmp_path / "plain.toml", tmp_path / "idle.toml"
    plain.write_text('name = "x"\nprompts = ["a"]\n')
    idle.write_text('name = "x"\nprompts = ["a"]\nidle_s = 2\n')
    assert parse_scenario(plain).idle_s == 10.0 and parse_scenario(idle).idle_s == 2.0
    assert parse_scenario(plain).content_hash == parse_scenario(idle).content_hash  # runs still match in compare
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nprompts = ["a"]\nidle_s = -1\n')
    with pytest.raises(ConfigError, match="idle_s"):
        parse_scenario(bad)
