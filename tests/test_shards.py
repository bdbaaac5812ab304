"""Issue 23.6: one matrix spread over several hosts by their own scheduler: `bench matrix --shard
K/N` runs the K-th of N disjoint slices, and results merged from several hosts are told apart."""

import json
import shutil
from pathlib import Path

import pytest

from bench.comparisons import compare_stored
from bench.history import collect
from bench.matrix import MatrixPoint, MatrixSpec, Shard, parse_shard
from conftest import assert_one_line_exit_2, bench_cli

TINY = 'name = "tiny"\nrepetitions = 1\nwarmup = 0\nn_predict = 8\nprompts = ["Hello there."]\n'


def test_shards_are_disjoint_stable_and_cover_every_point_once():
    spec = MatrixSpec(devices=("pixel8", "s24"), models=("a", "b", "c"), scenarios=("quick",), threads=(1, 2, 4))
    points = spec.points()
    for count in (1, 2, 3, 4, 5, 18, 25):
        slices = [Shard(index, count).take(points) for index in range(1, count + 1)]
        assert sorted(p.key for part in slices for p in part) == sorted(p.key for p in points)  # each point once
        assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
        assert [Shard(index, count).take(spec.points()) for index in range(1, count + 1)] == slices  # stable
    assert Shard(2, 3).take(points)[0] == MatrixPoint("pixel8", "a", "quick", 2, None)
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.slow
def test_two_shards_on_two_sims_cover_the_matrix_once_and_hosts_are_told_apart(start_sim, host_runtime, smollm2_path,
                                                                              tmp_path):
    one, two = start_sim(), start_sim()
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    matrix = tmp_path / "lab.toml"
    matrix.write_text(f'name = "lab"\ndevices = ["{one.serial}", "{two.serial}"]\nmodels = ["smollm2-135m"]\n'
                      f'scenarios = ["{scenario}"]\nthreads = [1, 2]\ntelemetry_hz = 2\n')
    folders = []
    for index in (1, 2):  # as two CI jobs on two hosts would, one after the other here
        result = bench_cli("matrix", str(matrix), "--shard", f"{index}/2", "--out", str(tmp_path / f"host{index}"),
                           "--json", "--no-correctness")
        assert result.returncode == 0, result.stderr[-3000:]
        payload = json.loads(result.stdout)
        assert payload["status"] == "complete" and len(payload["points"]) == 2
        stored = json.loads((Path(payload["matrix_dir"]) / "matrix.json").read_text())
        assert stored["shard"]["index"] == index and stored["shard"]["points_in_matrix"] == 4
        assert f"shard {index}/2 (2 of 4 points)" in stored["title"]
        folders.append(Path(payload["matrix_dir"]))
    rows = [row for folder in folders for row in json.loads((folder / "matrix.json").read_text())["points"]]
    covered = sorted((row["selector"], row["model"], row["threads"]) for row in rows)
    assert covered == sorted((serial, "smollm2-135m", threads) for serial in (one.serial, two.serial) for threads in (1, 2))
    assert all(row["status"] == "complete" for row in rows)

    # The second shard's results as if another host had run them, merged with the first's.
    merged = tmp_path / "merged"
    for folder in folders:
        shutil.copytree(folder, merged / folder.name)
    for run_json in (merged / folders[1].name).glob("*/run.json"):
        run = json.loads(run_json.read_text())
        run["owner"]["host"] = "lab-host-2"
        run_json.write_text(json.dumps(run))
    labels = list(collect(merged))
    assert any(label.endswith("on lab-host-2") for label in labels) and not all("lab-host-2" in x for x in labels)
    comparisons = compare_stored([merged, merged], threshold=0.05)
    assert {c.head.label.rsplit(", on ", 1)[1].rstrip(")") for c in comparisons} >= {"lab-host-2"}
    for comparison in comparisons:  # each host's runs compared with the same host's, never mixed
        hosts = {json.loads((Path(d) / "run.json").read_text())["owner"]["host"]
                 for d in (*comparison.base.runs, *comparison.head.runs)}
        assert len(hosts) == 1, comparison.head.label


def test_bad_shards_get_one_line_and_exit_2(tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text('devices = ["all"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\n')
    for shard, message in (("3/2", "K must be 1 to N"), ("half", "is not K/N"),
                           ("1/2", "--shard needs") ):
        result = bench_cli("matrix", str(matrix), "--shard", shard, "--out", str(tmp_path / "out"))
        assert_one_line_exit_2(result, message)
    assert not (tmp_path / "out").exists()
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "matrix.json").write_text(json.dumps({"schema_version": 1, "title": "t", "shard": {"index": 1, "count": 2},
                                                     "points": []}))
    matrix.write_text('devices = ["host"]\nmodels = ["smollm2-135m"]\nscenarios = ["quick"]\n')
    result = bench_cli("matrix", str(matrix), "--shard", "2/2", "--resume", str(earlier))
    assert result.returncode == 2 and "ran shard 1/2, not shard 2/2" in result.stderr and "--shard 1/2" in result.stderr
