"""Synthetic stored runs with known truth, written through the real RunWriter."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from bench.records import RequestRecord, Sample
from bench.store import RunWriter, load_run
from bench.summary import run_summary


def write_run(root: Path, decode_tps: Sequence[float], *, ttft_ms: Sequence[float] | None = None,
              model_sha: str = "a" * 64, scenario_hash: str = "s" * 64, charging: bool = False,
              power_w: float | None = None, samples_per_rep: int = 5, rss_bytes: float = 3e8,
              name: str = "run", build: str = "0.3.36", started_at: str | None = None) -> Path:
    writer = RunWriter(root, f"20260101T000000Z-host-{name}-quick")
    t = 0.0
    samples: list[Sample] = []
    for rep, decode in enumerate(decode_tps):
        e2e = 64 / decode * 1000
        ttft = ttft_ms[rep] if ttft_ms is not None else 50.0
        writer.request(RequestRecord(rep, 0, False, t, 12, 0, 64, ttft, ttft * 0.9, e2e - ttft, 12 / ttft * 1000,
                                     decode, 1000 / decode, 1100 / decode, e2e, "length"))
        for i in range(samples_per_rep):
            ts = t - 0.1 + (e2e / 1000 + 0.2) * i / max(1, samples_per_rep - 1)
            samples.append(Sample(ts, "process", "rss", rss_bytes, "B"))
            if power_w is not None:
                samples.append(Sample(ts, "battery", "power", power_w, "W"))
        t += e2e / 1000 + 0.5
    writer.samples(samples)
    meta = {
        "status": "complete",
        "device": {"kind": "host", "profile": "host", "manufacturer": None, "model": "cpu", "device": "box"},
        "model": {"alias": "m", "sha256": model_sha, "quant": "Q4_0"},
        "runtime": {"kind": "llama-cpp-python", "version": build, "threads": 2},
        **({"started_at": started_at} if started_at else {}),
        "scenario": {"name": "quick", "hash": scenario_hash},
        "harness": {"version": "test"},
    }
    writer.write_run(meta)
    writer.close()
    # As the runner does: the summary is computed from the stored tables.
    data = load_run(writer.dir)
    writer.write_run({**meta, "summary": run_summary(data.requests, data.samples, charging=charging, throttled=False)})
    return writer.dir


def noisy(median: float, n: int, cv: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * (1 + rng.normal(0, cv, n)))
