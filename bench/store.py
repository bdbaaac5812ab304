"""Results layout (DESIGN section 4): one directory per run, written as the run goes.

- run.json: rewritten atomically at each phase.
- requests.csv, samples.csv: first line `#schema_version=N`, then a CSV header, then rows appended
  and flushed as they are measured, so a crash keeps every finished row.
- events.jsonl: a header object with schema_version, then one event per line.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from .errors import StoreError
from .files import atomic_write_json
from .records import OPTIONAL_COLUMNS, REQUEST_COLUMNS, SAMPLE_COLUMNS, RequestRecord, Sample, to_dict

SCHEMA_VERSION = 1
RUN_FILE, REQUESTS_FILE, SAMPLES_FILE, EVENTS_FILE = "run.json", "requests.csv", "samples.csv", "events.jsonl"
PARQUET_VERSION_KEY = b"bench.schema_version"


def make_run_id(when: dt.datetime, device: str, model: str, scenario: str) -> str:
    stamp = when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part).strip("_") or "x"
                    for part in (stamp, device, model, scenario))


class _Table:
    def __init__(self, path: Path, columns: Sequence[str]):
        self.columns = list(columns)
        self.lock = threading.Lock()
        self.handle = path.open("x", newline="", encoding="utf-8")
        self.handle.write(f"#schema_version={SCHEMA_VERSION}\n")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(self.columns)
        self.handle.flush()

    def append(self, rows: Iterable[Sequence[Any]]) -> None:
        with self.lock:
            self.writer.writerows(["" if v is None else v for v in row] for row in rows)
            self.handle.flush()

    def close(self) -> None:
        with self.lock:
            self.handle.close()


class RunWriter:
    """Appends one run's rows as they happen. Thread-safe: the sampler writes from its thread."""

    def __init__(self, root: Path, run_id: str):
        root.mkdir(parents=True, exist_ok=True)
        candidate, suffix = root / run_id, 2
        while True:
            try:
                candidate.mkdir()
                break
            except FileExistsError:
                candidate, suffix = root / f"{run_id}-{suffix}", suffix + 1
        self.dir = candidate
        self.run_id = candidate.name
        self._requests = _Table(self.dir / REQUESTS_FILE, REQUEST_COLUMNS)
        self._samples = _Table(self.dir / SAMPLES_FILE, SAMPLE_COLUMNS)
        self._events_lock = threading.Lock()
        self._events = (self.dir / EVENTS_FILE).open("x", encoding="utf-8")
        self._write_event_line({"schema_version": SCHEMA_VERSION, "kind": "header", "run_id": self.run_id})

    def _write_event_line(self, value: dict[str, Any]) -> None:
        with self._events_lock:
            self._events.write(json.dumps(value, default=str) + "\n")
            self._events.flush()

    def event(self, t_s: float, kind: str, message: str, **data: Any) -> None:
        self._write_event_line({"t_s": round(t_s, 6), "kind": kind, "message": message, **data})

    def request(self, record: RequestRecord) -> None:
        row = to_dict(record)
        self._requests.append([[row[c] for c in REQUEST_COLUMNS]])

    def samples(self, samples: Iterable[Sample]) -> None:
        self._samples.append([(round(s.t_s, 6), s.source, s.name, s.value, s.unit) for s in samples])

    def write_run(self, run: dict[str, Any]) -> None:
        atomic_write_json(self.dir / RUN_FILE, {"schema_version": SCHEMA_VERSION, **run})

    def close(self) -> None:
        self._requests.close()
        self._samples.close()
        with self._events_lock:
            self._events.close()


@dataclass(frozen=True)
class RunData:
    dir: Path
    run: dict[str, Any]
    requests: pd.DataFrame
    samples: pd.DataFrame
    events: tuple[dict[str, Any], ...]


def _check_version(path: Path, version: Any) -> None:
    if not isinstance(version, int):
        raise StoreError(f"{path}: no schema_version", "this is not a bench result file")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema_version {version} is newer than this bench reads ({SCHEMA_VERSION})",
                         "upgrade bench to read it")


def _check_table_header(path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"{path} is missing", "the run directory is incomplete")
    with path.open("rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace").strip()
    match = re.fullmatch(r"#schema_version=(\d+)", first)
    _check_version(path, int(match.group(1)) if match else None)


def write_parquet(run_dir: str | Path, frames: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> list[Path]:
    """The finished run's CSV tables also as Parquet (typed, compressed, fast to read), each with
    its schema_version in the file's metadata; written atomically. `frames` are (requests, samples)
    as already read from the CSV, so the caller need not read them twice. Returns the files written."""
    import pyarrow.parquet as pq

    written = []
    tables = ((REQUESTS_FILE, REQUEST_COLUMNS), (SAMPLES_FILE, SAMPLE_COLUMNS))
    for index, (name, columns) in enumerate(tables):
        source = Path(run_dir) / name
        frame = frames[index] if frames is not None else _read_csv_table(source, columns)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               PARQUET_VERSION_KEY: str(SCHEMA_VERSION).encode()})
        target = source.with_suffix(".parquet")
        temp = target.with_name(f".{target.name}.partial")
        pq.write_table(table, temp, compression="zstd")
        temp.replace(target)
        written.append(target)
    return written


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A run's table: its Parquet copy when the run wrote one, else the CSV it appended."""
    parquet = path.with_suffix(".parquet")
    if parquet.is_file():
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(parquet)
        except (pa.ArrowInvalid, OSError) as error:
            raise StoreError(f"{parquet} is corrupt: {str(error).splitlines()[0]}", "delete it to read the CSV") from None
        version = (table.schema.metadata or {}).get(PARQUET_VERSION_KEY)
        _check_version(parquet, int(version) if version and version.isdigit() else None)
        return _with_columns(table.to_pandas(), columns, parquet)
    return _read_csv_table(path, columns)


def _read_csv_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    _check_table_header(path)
    try:
        # pyarrow's reader is several times faster than pandas' on the long samples table.
        frame = pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(skip_rows=1)).to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as error:
        raise StoreError(f"{path} is corrupt: {str(error).splitlines()[0]}") from None
    return _with_columns(frame, columns, path)


def _with_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if [c for c in missing if c not in OPTIONAL_COLUMNS]:
        raise StoreError(f"{path} lacks columns {', '.join(c for c in missing if c not in OPTIONAL_COLUMNS)}")
    for column in missing:
        frame[column] = None
    return frame


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def load_run_meta(run_dir: str | Path) -> dict[str, Any]:
    """run.json, checked, with the tables' schema lines checked too (cheap: no table is parsed)."""
    directory = Path(run_dir)
    run = _load_run_json(directory)
    for name in (REQUESTS_FILE, SAMPLES_FILE):
        _check_table_header(directory / name)
    return run


def _load_run_json(directory: Path) -> dict[str, Any]:
    run_path = directory / RUN_FILE
    if not run_path.is_file():
        raise StoreError(f"{directory} is not a run directory (no {RUN_FILE})", "give a directory under results/")
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise StoreError(f"{run_path} is corrupt: {error}") from None
    if not isinstance(run, dict):
        raise StoreError(f"{run_path} is corrupt: not a JSON object")
    _check_version(run_path, run.get("schema_version"))
    return settle_status(run) if run.get("status") == "running" else run


def _this_boot() -> tuple[str | None, str]:
    import socket

    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return boot_id, socket.gethostname()


def run_owner() -> dict[str, Any]:
    """Who writes a run (this process): settle_status reads it back to tell a live run from a dead one."""
    boot_id, host = _this_boot()
    return {"host": host, "pid": os.getpid(), "boot_id": boot_id, "process_started": _process_started(os.getpid())}


def _process_started(pid: int) -> float | None:
    """The start time of a live process (psutil's create_time), None if no such process."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # NoSuchProcess, AccessDenied, or no psutil: treat as gone
        return None


def settle_status(run: dict[str, Any]) -> dict[str, Any]:
    """A run.json still at `running`: if the bench process that wrote it is gone (same host, and
    it is not running, or the host rebooted since), the run is shown as failed. A run owned by
    another host cannot be checked from here and is left as it is."""
    owner = run.get("owner") or {}
    boot_id, host = _this_boot()
    if owner and owner.get("host") != host:
        return run
    if owner and owner.get("boot_id") == boot_id and owner.get("pid"):
        started = _process_started(int(owner["pid"]))
        recorded = owner.get("process_started")
        if started is not None and (recorded is None or abs(started - float(recorded)) < 1.0):
            return run  # still running
    who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "a bench without owner records"
    return {**run, "status": "failed", "status_inferred": True,
            "reason": f"the bench process ({who}) ended without finishing the run (killed, crashed or the host "
                      "rebooted); the rows it measured are kept"}


def persist_settled_status(run_dir: str | Path) -> bool:
    """Write a settled status back to run.json (bench report does): True when it changed."""
    path = Path(run_dir) / RUN_FILE
    run = _load_run_json(Path(run_dir))
    if not run.get("status_inferred"):
        return False
    atomic_write_json(path, run)
    return True


def load_run(run_dir: str | Path) -> RunData:
    directory = Path(run_dir)
    run = _load_run_json(directory)
    requests = _read_table(directory / REQUESTS_FILE, REQUEST_COLUMNS)
    samples = _read_table(directory / SAMPLES_FILE, SAMPLE_COLUMNS)
    events = []
    events_path = directory / EVENTS_FILE
    if events_path.is_file():
        lines = events_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                # A crash can cut the last line short; anything earlier is corruption.
                if number == len(lines):
                    break
                raise StoreError(f"{events_path}:{number} is not JSON") from None
        if events and events[0].get("kind") == "header":
            _check_version(events_path, events[0].get("schema_version"))
            events = events[1:]
    return RunData(directory, run, requests, samples, tuple(events))


def find_runs(path: str | Path) -> list[Path]:
    """A run directory, or every run directory below a folder of runs (sorted by name = time)."""
    root = Path(path)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        raise StoreError(f"{root} does not exist", "give a run directory or a folder of runs")
    runs = sorted(p.parent for p in root.rglob(RUN_FILE))
    if not runs:
        raise StoreError(f"{root} holds no runs (no {RUN_FILE} below it)", "run `bench run` first or check the path")
    return runs
