"""Sweeps: the same workload at several thread counts and CPU sets, one run per point, and a table
and plot of decode and prefill against threads. On big.LITTLE phones decode collapses once threads
spill onto the little cores (llama.cpp issue 21763); a sweep shows where.

A sweep folder holds its runs (each an ordinary run directory, so `bench compare` and `bench report`
read them) and sweep.json, sweep.md and sweep.png."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BenchError
from .files import atomic_write_bytes, atomic_write_json
from .progress import Progress
from .runner import RunOptions, RunResult, Target, run_benchmark
from .store import make_run_id

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SweepPoint:
    threads: int | None
    affinity: tuple[int, ...] | None   # CPUs the runtime is pinned to; None = the target's default

    @property
    def label(self) -> str:
        cpus = "default CPUs" if self.affinity is None else f"cpus {format_cpus(self.affinity)}"
        return f"{self.threads if self.threads else 'default'} threads, {cpus}"


def parse_cpus(text: str) -> tuple[int, ...]:
    """"4-7", "0,2,4", "0-3,8" -> sorted CPU numbers; ValueError for anything else."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"'{text}' is not a CPU list (e.g. 4-7 or 0,2,4)")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(f"'{part}' runs backwards")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpus(cpus: tuple[int, ...]) -> str:
    ranges, start = [], None
    for index, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if index + 1 == len(cpus) or cpus[index + 1] != cpu + 1:
            ranges.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(ranges)


def points(threads: list[int] | None, affinities: list[tuple[int, ...]] | None) -> list[SweepPoint]:
    return [SweepPoint(t, a) for a in (affinities or [None]) for t in (threads or [None])]


@dataclass(frozen=True)
class SweepResult:
    directory: Path
    rows: tuple[dict, ...]

    @property
    def status(self) -> str:
        statuses = {row["status"] for row in self.rows}
        return "complete" if statuses == {"complete"} else "failed" if statuses <= {"failed"} else "partial"


def run_sweep(sweep_points: list[SweepPoint], base: RunOptions, make_target: Callable[[SweepPoint], Target],
              progress: Progress) -> SweepResult:
    """Each point is its own run (a fresh target, so the device is cleaned between points); a point
    that fails is recorded and the sweep goes on."""
    started = dt.datetime.now(dt.timezone.utc)
    directory = base.out_root / (make_run_id(started, base.device, base.model.alias, base.scenario.name) + "-sweep")
    directory.mkdir(parents=True, exist_ok=False)
    rows: list[dict] = []
    task = progress.task(f"sweep of {len(sweep_points)} points", len(sweep_points))
    for point in sweep_points:
        task.update(label=f"sweep: {point.label}")
        scenario = base.scenario.with_overrides(threads=point.threads)
        options = dataclasses.replace(base, scenario=scenario, out_root=directory)
        try:
            target = make_target(point)
        except BenchError as error:
            rows.append(_row(point, None, error=str(error)))
            task.advance(1)
            continue
        try:
            result = run_benchmark(options, target, progress)
        finally:
            target.release()
        rows.append(_row(point, result))
        _write(directory, base, rows)
        task.advance(1)
    task.done()
    _write(directory, base, rows)
    return SweepResult(directory, tuple(rows))


def _row(point: SweepPoint, result: RunResult | None, error: str | None = None) -> dict:
    summary = result.summary if result else {}
    return {
        "threads": point.threads, "affinity": list(point.affinity) if point.affinity is not None else None,
        "label": point.label, "run_dir": str(result.run_dir) if result else None,
        "status": result.status if result else "failed", "reason": result.reason if result else error,
        **{key: summary.get(key) for key in ("decode_tps_median", "decode_tps_iqr", "prefill_tps_median",
                                             "prefill_tps_iqr", "ttft_ms_median", "peak_rss_bytes")},
    }


def _write(directory: Path, base: RunOptions, rows: list[dict]) -> None:
    atomic_write_json(directory / "sweep.json", {
        "schema_version": SCHEMA_VERSION, "device": base.device, "model": base.model.alias,
        "scenario": base.scenario.name, "points": rows})
    atomic_write_bytes(directory / "sweep.md", markdown(base, rows).encode())
    if any(row.get("decode_tps_median") for row in rows):
        from .plots import write_sweep_plot

        write_sweep_plot(directory / "sweep.png", rows)


def markdown(base: RunOptions, rows: list[dict]) -> str:
    def number(value, digits=1) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = [f"# Sweep: {base.model.alias} on {base.device}, scenario `{base.scenario.name}`", "",
             "One run per point; medians over repetitions, spread is the IQR. Decode: (generated - 1) / "
             "first-to-last token time; prefill: prompt tokens / prompt eval time, both tokens/s.", "",
             "| threads | CPUs | decode t/s | IQR | prefill t/s | IQR | TTFT ms | peak RSS MiB | status | run |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        cpus = "default" if row["affinity"] is None else format_cpus(tuple(row["affinity"]))
        rss = row.get("peak_rss_bytes")
        lines.append(f"| {row['threads'] or 'default'} | {cpus} | {number(row.get('decode_tps_median'))} | "
                     f"{number(row.get('decode_tps_iqr'))} | {number(row.get('prefill_tps_median'))} | "
                     f"{number(row.get('prefill_tps_iqr'))} | {number(row.get('ttft_ms_median'))} | "
                     f"{number(rss / 2**20 if rss else None)} | {row['status']} | "
                     f"{Path(row['run_dir']).name if row['run_dir'] else row['reason']} |")
    best = max((r for r in rows if r.get("decode_tps_median")), key=lambda r: r["decode_tps_median"], default=None)
    if best:
        lines += ["", f"Fastest decode: **{best['label']}** at {best['decode_tps_median']:.1f} tokens/s."]
    return "\n".join(lines) + "\n"
