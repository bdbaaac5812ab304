"""Comparisons of stored runs, as `bench compare` and `bench ab` make them: run folders grouped by
setup (device, model, scenario, runtime, threads, ...), a `bench ab` folder's pairs compared paired,
and a side of one run gated by the run-to-run noise of earlier runs of the base's setup and build
found under the results root. Callable without the command line; the CLI only prints."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .ab import load_pairs
from .compare import (MATCH_KEYS, MIN_NOISE_RUNS, Comparison, RunValues, build_key, compare_sides, make_side,
                      noise_from_medians, run_host, run_key)
from .errors import BenchError, StoreError, UsageError
from .metrics import COMPARED, PRIMARY
from .store import find_runs, load_run_meta
from .summary import run_repetition_values


def gate_metrics(text: str | None) -> tuple[str, ...]:
    """--gate: the metrics whose regression fails the gate; the primary ones when not given."""
    if not text:
        return PRIMARY
    names = {metric.name for metric in COMPARED}
    if text == "all":
        return tuple(metric.name for metric in COMPARED)
    picked = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in picked if name not in names]
    if unknown or not picked:
        raise UsageError(f"--gate names no compared metric: {', '.join(unknown) or text!r}",
                         f"use 'all' or a comma list of: {', '.join(sorted(names))}")
    return picked


def point_label(run: dict, with_host: bool = False) -> str:
    """Which point of a folder of runs (a matrix) a group is: device, model, scenario, threads, and
    the host that drove it when several did."""
    device, runtime = run.get("device") or {}, run.get("runtime") or {}
    return (f"{device.get('profile')} {device.get('serial') or ''}".strip() + f", {(run.get('model') or {}).get('alias')}, "
            f"{(run.get('scenario') or {}).get('name')}, {runtime.get('threads')} threads"
            + (f", depth {(run.get('scenario') or {}).get('depth')}" if (run.get("scenario") or {}).get("depth") else "")
            + (f", {(run.get('scenario') or {}).get('parallel')} parallel" if (run.get("scenario") or {}).get("parallel") else "")
            + (f", draft {((run.get('model') or {}).get('draft') or {}).get('alias')}" if (run.get("model") or {}).get("draft")
               else ", no draft" if (run.get("scenario") or {}).get("drafts") else "")
            + (f", on {run_host(run)}" if with_host else ""))


def run_values(run_dir: Path) -> RunValues:
    run = load_run_meta(run_dir)
    found = run_repetition_values(run_dir, run)
    return RunValues(str(run_dir), run, found.values, found.censored)


def noise_bands(root: Path, base_run: dict, exclude: set[Path], before: str | None) -> dict:
    """Run-to-run noise per metric for one setup: the complete runs under root of the base's setup
    and runtime build (so runs of a changed head never widen the band that judges it), started
    before the compared runs (the history that existed then), the compared runs left out. {} when
    root holds too few of them."""
    key, build = run_key(base_run), build_key(base_run)
    try:
        candidates = [d for d in find_runs(root) if d.resolve() not in exclude]
    except StoreError:
        return {}
    same = []
    for run_dir in candidates:
        try:
            run = load_run_meta(run_dir)
        except (BenchError, OSError, ValueError):
            continue  # a broken or foreign folder in the history is no evidence either way
        if run.get("status") == "complete" and run_key(run) == key and build_key(run) == build and \
                (before is None or str(run.get("started_at") or "") < before):
            same.append((run_dir, run))
    if len(same) < MIN_NOISE_RUNS:
        return {}
    medians: dict[str, list[float]] = {}
    for run_dir, run in same:  # run.json is read once: its per-repetition values come with it
        for name, values in run_repetition_values(run_dir, run).values.items():
            if values:
                medians.setdefault(name, []).append(float(np.median(values)))
    source = f"complete earlier runs of the base's setup and build in {root}"
    return {name: band for name, values in medians.items() if (band := noise_from_medians(values, source))}


def _ab_folder(path: Path, *, threshold: float, ignore: Sequence[str], gate: tuple[str, ...]) -> list[Comparison] | None:
    """A `bench ab` folder compared paired; None when the folder is not one."""
    loaded = load_pairs(path)
    if loaded is None:
        return None
    pairs, record = loaded
    base_runs = [run_values(Path(pair.base)) for pair in pairs]
    head_runs = [run_values(Path(pair.head)) for pair in pairs]
    ignore = sorted(set(ignore) | ({record["differs_in"]} if record.get("differs_in") else set()))
    incomplete = None
    if record.get("status") != "complete":
        asked = record.get("pairs_asked")
        incomplete = (f"{len(pairs)} of {asked or '?'} pairs, {record.get('status')}: "
                      f"{record.get('reason') or 'no reason recorded'}")
    return [compare_sides(make_side(f"base {Path(str(record.get('base', 'base'))).name}", base_runs, incomplete),
                          make_side(f"head {Path(str(record.get('head', 'head'))).name}", head_runs, incomplete),
                          threshold=threshold, ignore=ignore, paired=True, gate=gate)]


def compare_stored(paths: Sequence[Path], *, threshold: float, ignore: Sequence[str] = (),
                   gate: tuple[str, ...] = PRIMARY, results: Path = Path("results")) -> list[Comparison]:
    """Base (paths[0]) against each head; one path: a `bench ab` folder. `results`: where earlier
    runs give the run-to-run noise that gates a side of one run."""
    if len(paths) == 1:
        found = _ab_folder(paths[0], threshold=threshold, ignore=ignore, gate=gate)
        if found is None:
            raise UsageError("compare needs a base and at least one head",
                             "bench compare BASE HEAD [MORE...], --baseline NAME HEAD, or a `bench ab` folder")
        return found

    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = [list(pool.map(run_values, find_runs(path))) for path in paths]
    # Folders from several hosts (a sharded matrix's, or one merged from them): the same phone
    # model on two hosts is two phones, so within a side each host's runs are a group of their own,
    # paired with the base's runs from the same host.
    by_host = any(len({run_host(item.run) for item in side}) > 1 for side in loaded)

    def groups(side: list[RunValues]) -> dict[tuple, list]:
        found: dict[tuple, list] = {}
        for item in side:
            key = run_key(item.run)
            group = tuple(key[k] for k in MATCH_KEYS if k not in ignore) + ((run_host(item.run),) if by_host else ())
            found.setdefault(group, []).append(item)
        return found

    base_groups = groups(loaded[0])
    comparisons = []
    for head_path, head_side in zip(paths[1:], loaded[1:]):
        head_groups = groups(head_side)
        for key, head_runs in head_groups.items():
            # Without a base of the same key, pair with the first base set so the rows show the mismatch.
            base_runs = base_groups.get(key) or next(iter(base_groups.values()))
            suffix = f" ({point_label(head_runs[0].run, by_host)})" if len(head_groups) > 1 else ""
            base, head = (make_side(f"base {paths[0].name}{suffix}", base_runs),
                          make_side(f"head {head_path.name}{suffix}", head_runs))
            noise = {}
            if min(len(base.runs), len(head.runs)) < 2:
                started = [str(item.run.get("started_at")) for item in (*base_runs, *head_runs) if item.run.get("started_at")]
                noise = noise_bands(results, base_runs[0].run, {Path(d).resolve() for d in base.runs + head.runs},
                                    min(started) if started else None)
            comparisons.append(compare_sides(base, head, threshold=threshold, ignore=ignore, noise=noise, gate=gate))
    return comparisons
