"""An A/B cut short by a failure that is not a run's own (issue 20.9): a preflight check that fails
before the third pair (as the battery guard does mid-way on a phone) ends the A/B with the two
complete pairs kept; ab.json says "partial" and why, and `bench compare` says it on its first line."""

import json
from pathlib import Path

import pytest

from bench.ab import run_ab
from bench.catalog import model_info
from bench.config import resolve_scenario
from bench.errors import PreflightError
from bench.host.target import HostTarget
from bench.progress import NullProgress
from bench.runner import RunOptions
from conftest import bench_cli

TINY = 'name = "tiny-ab"\nrepetitions = 1\nwarmup = 0\nn_predict = 4\nprompts = ["Hello there."]\n[cooldown]\nmode = "none"\n'


@pytest.mark.slow
def test_a_preflight_failure_mid_way_leaves_a_partial_record_that_compare_reports(tmp_path: Path, smollm2_path):
    scenario_file = tmp_path / "tiny.toml"
    scenario_file.write_text(TINY)
    scenario, model = resolve_scenario(str(scenario_file)), model_info("smollm2-135m")
    directory = tmp_path / "ab"
    directory.mkdir()

    def make_run(side: str, index: int):
        if index == 2:
            raise PreflightError("preflight 'battery' failed: 14% is below the 20% guard", "charge the phone")
        return RunOptions(device="host", scenario=scenario, model=model, out_root=directory / side,
                          telemetry_hz=None), HostTarget((None, "not measured in this test"))

    result = run_ab(directory, 4, make_run, NullProgress(), meta={"base": "a", "head": "b", "pairs_asked": 4})
    record = json.loads((directory / "ab.json").read_text())
    assert result.status == "partial" and len(result.pairs) == 2
    assert record["status"] == "partial" and "battery" in record["reason"] and len(record["pairs"]) == 2
    compared = bench_cli("compare", str(directory))
    first = compared.stdout.splitlines()[0]
    assert "A/B cut short: 2 of 4 pairs" in first and "battery" in first, compared.stdout + compared.stderr
