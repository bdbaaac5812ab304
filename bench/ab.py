"""Interleaved A/B on one device (`bench ab`): base and head alternate in ABBA order (pair 0 runs
base then head, pair 1 head then base, ...), each run an ordinary run with its own cooldown gate,
stored under DIR/base and DIR/head, with DIR/ab.json naming the pairs as they finish. Drift of the
machine or the phone (heat, charge, background load) then hits both sides of a pair alike, and
`bench compare DIR` tests the per-pair ratios (asv and pyperf interleave for the same reason)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BenchError, StoreError
from .files import atomic_write_json
from .progress import Progress
from .runner import RunOptions, Target, run_benchmark

AB_FILE = "ab.json"
SCHEMA_VERSION = 1
SIDES = ("base", "head")


@dataclass(frozen=True)
class Pair:
    index: int
    order: tuple[str, str]   # which side ran first
    base: str                # run directories
    head: str


@dataclass(frozen=True)
class AbResult:
    directory: Path
    pairs: tuple[Pair, ...]
    status: str              # complete | partial | failed
    reason: str | None


def abba_order(pairs: int) -> list[tuple[str, str]]:
    """base-head, head-base, base-head, ...: every side runs first as often as second."""
    return [SIDES if index % 2 == 0 else SIDES[::-1] for index in range(pairs)]


def new_directory(root: Path, label: str) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    root.mkdir(parents=True, exist_ok=True)
    candidate, suffix = root / f"{stamp}-ab-{label}", 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, suffix = root / f"{stamp}-ab-{label}-{suffix}", suffix + 1


def load_pairs(directory: Path) -> tuple[list[Pair], dict] | None:
    """The complete pairs of an A/B folder and its record (what base and head were), or None when
    the folder is no A/B folder."""
    path = directory / AB_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema_version {data['schema_version']}, newer than this bench reads",
                             "upgrade bench")
        pairs = [Pair(int(item["index"]), tuple(item["order"]), str(directory / item["base"]),
                      str(directory / item["head"])) for item in data["pairs"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(f"{path} is not a readable A/B record: {error}", "rerun `bench ab`") from None
    if not pairs:
        raise StoreError(f"{path} holds no complete pair", "rerun `bench ab` with more time or fewer failures")
    return pairs, data


def run_ab(directory: Path, pairs: int, make_run: Callable[[str, int], tuple[RunOptions, Target]],
           progress: Progress, meta: dict) -> AbResult:
    """Run `pairs` ABBA pairs; ab.json is rewritten after every pair, "running" until the last.
    A run that does not complete or cannot start (a failure, a preflight such as the battery guard
    tripping mid-way, Ctrl-C) ends the A/B there: the complete pairs are kept and compared, and
    ab.json says "partial" with why, so a later `bench compare` says so too."""
    done: list[Pair] = []
    status, reason = "complete", None
    task = progress.task(f"A/B: {pairs} pairs, ABBA order", pairs)
    _write(directory, meta, done, "running", None)
    try:
        for index, order in enumerate(abba_order(pairs)):
            dirs: dict[str, Path] = {}
            for side in order:
                try:
                    options, target = make_run(side, index)
                    try:
                        result = run_benchmark(options, target, progress)
                    finally:
                        target.release()
                except BenchError as error:
                    status, reason = "partial", f"pair {index} ({side}): {error}"
                    break
                dirs[side] = result.run_dir
                if result.status != "complete":
                    status, reason = "partial", f"pair {index} ({side}): run {result.status}: {result.reason}"
                    break
            if reason is not None:
                break
            done.append(Pair(index, order, str(dirs["base"].relative_to(directory)),
                             str(dirs["head"].relative_to(directory))))
            _write(directory, meta, done, "running", None)
            task.advance(1)
    except BaseException:  # Ctrl-C, SIGTERM: the record says the A/B stopped, then the signal goes on
        _write(directory, meta, done, "partial" if done else "failed", f"interrupted after {len(done)} of {pairs} pairs")
        raise
    task.done()
    if not done:
        status = "failed"
    _write(directory, meta, done, status, reason)
    return AbResult(directory, tuple(done), status, reason)


def _write(directory: Path, meta: dict, pairs: list[Pair], status: str, reason: str | None) -> None:
    atomic_write_json(directory / AB_FILE, {
        "schema_version": SCHEMA_VERSION, **meta, "status": status, "reason": reason,
        "pairs": [{"index": p.index, "order": list(p.order), "base": p.base, "head": p.head} for p in pairs]})
