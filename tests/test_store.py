import datetime as dt
import json
from pathlib import Path

import pytest

from bench.errors import StoreError
from bench.records import RequestRecord, Sample
from bench.store import RunWriter, find_runs, load_run, make_run_id


def _request(rep: int, decode: float) -> RequestRecord:
    return RequestRecord(repetition=rep, step=0, warmup=rep < 0, t_start_s=float(rep), prompt_tokens=10,
                         cached_tokens=0, gen_tokens=64, ttft_ms=12.0, prefill_ms=10.0, decode_ms=630.0,
                         prefill_tps=1000.0, decode_tps=decode, itl_p50_ms=10.0, itl_p95_ms=12.0, e2e_ms=650.0,
                         stop_reason="length")


def _write(root: Path) -> Path:
    writer = RunWriter(root, make_run_id(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "host", "m/x", "quick"))
    writer.write_run({"status": "running"})
    writer.request(_request(-1, 90.0))
    writer.request(_request(0, 100.0))
    writer.samples([Sample(0.1, "process", "rss", 1e8, "B"), Sample(0.2, "thermal", "cpu, 0", 40.5, "C")])
    writer.event(0.3, "warning", "a \"quoted\", message")
    writer.write_run({"status": "complete"})
    writer.close()
    return writer.dir


def test_run_id_is_safe():
    run_id = make_run_id(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "host", "m/x y", "quick")
    assert run_id == "20260102T030405Z-host-m_x_y-quick"


def test_roundtrip(tmp_path: Path):
    run_dir = _write(tmp_path)
    data = load_run(run_dir)
    assert data.run["status"] == "complete" and data.run["schema_version"] == 1
    assert list(data.requests["decode_tps"]) == [90.0, 100.0]
    assert list(data.samples["name"]) == ["rss", "cpu, 0"]
    assert data.events[0]["message"] == 'a "quoted", message'
    assert (run_dir / "requests.csv").read_text().startswith("#schema_version=1\n")


def test_second_run_same_second_gets_new_dir(tmp_path: Path):
    assert _write(tmp_path) != _write(tmp_path)
    assert len(find_runs(tmp_path)) == 2


def test_newer_schema_refused(tmp_path: Path):
    run_dir = _write(tmp_path)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "schema_version": 99}))
    with pytest.raises(StoreError, match="newer"):
        load_run(run_dir)


def test_corrupt_run_json(tmp_path: Path):
    run_dir = _write(tmp_path)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        load_run(run_dir)


def test_table_without_schema_line(tmp_path: Path):
    run_dir = _write(tmp_path)
    path = run_dir / "samples.csv"
    path.write_text("\n".join(path.read_text().splitlines()[1:]))
    with pytest.raises(StoreError, match="schema_version"):
        load_run(run_dir)


def test_cut_last_event_line_is_tolerated(tmp_path: Path):
    run_dir = _write(tmp_path)
    with (run_dir / "events.jsonl").open("a") as handle:
        handle.write('{"t_s": 1.0, "kind": "pha')
    assert len(load_run(run_dir).events) == 1


def test_find_runs_errors(tmp_path: Path):
    with pytest.raises(StoreError, match="holds no runs"):
        find_runs(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        find_runs(tmp_path / "nope")


def test_parquet_copy_reads_the_same_and_is_versioned(tmp_path: Path):
    import pyarrow.parquet as pq

    from bench.store import write_parquet

    run_dir = _write(tmp_path)
    from_csv = load_run(run_dir)
    written = write_parquet(run_dir)
    assert [p.name for p in written] == ["requests.parquet", "samples.parquet"]
    assert pq.read_schema(run_dir / "samples.parquet").metadata[b"bench.schema_version"] == b"1"
    (run_dir / "requests.csv").write_text("#schema_version=1\nbroken\n")  # the Parquet copy is what is read now
    from_parquet = load_run(run_dir)
    assert list(from_parquet.requests["decode_tps"]) == list(from_csv.requests["decode_tps"])
    assert list(from_parquet.samples["name"]) == list(from_csv.samples["name"])
    (run_dir / "samples.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StoreError, match="samples.parquet is corrupt"):
        load_run(run_dir)
