"""Shared set-up for the harness benchmarks: the default model and a run through the library."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog import model_info  # noqa: E402
from bench.config import resolve_scenario  # noqa: E402
from bench.runner import RunOptions, run_benchmark  # noqa: E402


def bench_decode_tps(model_alias: str, scenario_name: str, *, telemetry_hz: float | None, repetitions: int,
                     threads: int | None = None) -> float:
    """Median decode t/s of one full `bench run` done through the library."""
    scenario = resolve_scenario(scenario_name).with_overrides(repetitions=repetitions, threads=threads)
    with tempfile.TemporaryDirectory() as out:
        result = run_benchmark(RunOptions(device="host", scenario=scenario, model=model_info(model_alias),
                                          out_root=Path(out), telemetry_hz=telemetry_hz))
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    return result.summary["decode_tps_median"]
