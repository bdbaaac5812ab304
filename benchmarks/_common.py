"""Shared pieces of the harness benchmarks: interleaved measurement, the default model run through
the library, and an emulated phone behind a private adb server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.android import adb  # noqa: E402
from bench.catalog import cache_root, model_info  # noqa: E402
from bench.config import resolve_scenario  # noqa: E402
from bench.host.membw import host_bandwidth_gbs  # noqa: E402
from bench.host.target import HostTarget  # noqa: E402
from bench.runner import RunOptions, run_benchmark  # noqa: E402
from bench.sim import control  # noqa: E402


def interleaved(rounds: int, first: Callable[[], None], second: Callable[[], None],
                after_round: Callable[[int], None] | None = None) -> None:
    """Each round measures both sides, alternating which goes first, so the drift of a shared,
    noisy machine hits both alike."""
    for index in range(rounds):
        for measure in (first, second) if index % 2 == 0 else (second, first):
            measure()
        if after_round:
            after_round(index)


def bench_decode_tps(model_alias: str, scenario_name: str, *, telemetry_hz: float | None, repetitions: int,
                     threads: int | None = None) -> float:
    """Median decode t/s of one full host `bench run` done through the library."""
    scenario = resolve_scenario(scenario_name).with_overrides(repetitions=repetitions, threads=threads)
    with tempfile.TemporaryDirectory() as out:
        result = run_benchmark(RunOptions(device="host", scenario=scenario, model=model_info(model_alias),
                                          out_root=Path(out), telemetry_hz=telemetry_hz),
                               HostTarget(host_bandwidth_gbs(cache_root())))
    if result.status != "complete":
        raise SystemExit(f"run {result.status}: {result.reason}")
    return result.summary["decode_tps_median"]


@contextlib.contextmanager
def emulated_phone(name: str, settings: tuple[str, ...] = ()) -> Iterator[control.SimInfo]:
    """A sim connected to a private adb server (not the user's on 5037); all of it stopped after."""
    own_server = adb.SERVER_PORT_ENV not in os.environ
    os.environ.setdefault(adb.SERVER_PORT_ENV, "5139")
    info = control.start(cache_root(), name=f"{name}-{os.getpid()}", settings=settings)
    try:
        adb.connect(info.serial)
        adb.wait_for_state(info.serial)
        yield info
    finally:
        adb.disconnect(info.serial)
        control.stop(info)
        if own_server:
            subprocess.run([adb.adb_binary(), "-P", os.environ[adb.SERVER_PORT_ENV], "kill-server"],
                           capture_output=True, timeout=30)


def adb_push(serial: str, local: str, remote: str) -> None:
    subprocess.run([adb.adb_binary(), "-P", os.environ[adb.SERVER_PORT_ENV], "-s", serial, "push", local, remote],
                   check=True, capture_output=True, timeout=600)
